"""The book renderer on small inputs: book order and groups, links from file://, the search index, the check that
every public function and class has an entry of its own, and the notebook run itself (a failing cell fails it).
`make test` runs the full render as its notebook step (`make nbtest`), so `make docs` afterwards reuses it."""
import importlib.util
import json
import re
import sys

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("docs_book", REPO_ROOT / ".ci" / "docs" / "book.py")
book = importlib.util.module_from_spec(_spec)
sys.modules["docs_book"] = book
_spec.loader.exec_module(book)

_NBS = ["index.ipynb", "02_metrics.ipynb", "00_core.ipynb", "01_data.ipynb", "lab/10_spline.ipynb",
        "lab/12_models.ipynb", "tsfm/41_replay.ipynb", "tsfm/20_schemas.ipynb", "tsfm/runner/30_runner.ipynb",
        "tsfm/40_api.ipynb", "experiments/50_workbench.ipynb", "papermill/report.ipynb", "papermill/edge_parity.ipynb",
        "docs/operations.ipynb", "tsfm/.ipynb_checkpoints/20_schemas-checkpoint.ipynb", "_draft.ipynb"]


@pytest.fixture()
def nbs(tmp_path):
    for rel in _NBS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    return tmp_path


def _entry(name: str) -> str:
    return f'<div class="doc-entry" data-name="{name}"><h3 class="doc-name" id="{name.lower()}">{name}</h3></div>'


def test_book_order_is_by_number_then_guides_then_papermill(nbs):
    order = [p.rel for p in book.discover(nbs)]
    assert order == ["index.ipynb", "00_core.ipynb", "01_data.ipynb", "02_metrics.ipynb", "lab/10_spline.ipynb",
                     "lab/12_models.ipynb", "tsfm/20_schemas.ipynb", "tsfm/runner/30_runner.ipynb", "tsfm/40_api.ipynb",
                     "tsfm/41_replay.ipynb", "experiments/50_workbench.ipynb", "docs/operations.ipynb",
                     "papermill/edge_parity.ipynb", "papermill/report.ipynb"]


def test_page_urls_are_nbdevs():
    assert book.Page("lab/10_spline.ipynb").url == "lab/spline.html"          # what _modidx's doc links use
    assert book.Page("tsfm/runner/30_runner.ipynb").url == "tsfm/runner/runner.html"
    assert book.Page("papermill/train_eval.ipynb").url == "papermill/train_eval.html"
    assert book.Page("index.ipynb").url == "index.html"


def test_two_notebooks_on_one_page_are_refused(nbs):
    (nbs / "lab" / "11_spline.ipynb").write_text("{}")
    with pytest.raises(ValueError, match="spline.html"): book.discover(nbs)


def test_sidebar_groups_nest_folders_in_book_order_and_mark_the_current_page(nbs):
    pages = book.discover(nbs)
    side = book.sidebar_html(book.book_tree(pages), "tsfm/runner/runner.html", {})
    labels = re.findall(r"<summary>([^<]+)</summary>", side)
    assert labels == ["Foundation", "Lab", "TSFM", "TSFM runner", "Experiments", "Guides", "Papermill notebooks"]
    tsfm = side[side.index("<summary>TSFM</summary>"):side.index("<summary>Experiments</summary>")]
    assert tsfm.index("20_schemas") < tsfm.index("TSFM runner") < tsfm.index("40_api") < tsfm.index("41_replay")
    assert re.findall(r'<a href="([^"]+)" class="current"', side) == ["runner.html"]
    assert 'href="../../lab/spline.html"' in side and 'href="../../index.html"' in side


def test_relative_links_work_from_any_folder():
    assert book.rel_url("lab/spline.html#splinex", "tsfm/runner/runner.html") == "../../lab/spline.html#splinex"
    assert book.rel_url("index.html", "index.html") == "index.html"
    assert book.root_of("tsfm/runner/runner.html") == "../../" and book.root_of("index.html") == ""
    body = '<a href="https://tsfm-wb.local/tsfm/schemas.html#tsfmforecastrequest">x</a> <a href="https://x.org/a">y</a>'
    out = book.relative_doc_links(body, "https://tsfm-wb.local", "lab/train.html")
    assert 'href="../tsfm/schemas.html#tsfmforecastrequest"' in out and 'href="https://x.org/a"' in out


def test_a_name_only_inside_another_word_is_missing():
    public = {"m.metrics": ["mae", "rmse"]}
    modidx = {"m.metrics": {"m.metrics.mae": ("metrics.html#mae", "m/metrics.py"),
                            "m.metrics.rmse": ("metrics.html#rmse", "m/metrics.py")}}
    body = "<p>the summae of all errors; rmse and mae are both reported</p>" + _entry("rmse") + _entry("smae")
    entries = {"metrics.html": book.doc_entries(body)}
    assert book.missing_public_names(public, modidx, {"m.metrics": {"metrics.html"}}, entries) == ["m.metrics.mae"]
    entries["metrics.html"] |= book.doc_entries(_entry("mae"))
    assert book.missing_public_names(public, modidx, {"m.metrics": {"metrics.html"}}, entries) == []


def test_an_entry_on_another_page_does_not_count():
    public = {"m.a": ["f"], "m.b": ["g"]}
    modidx = {"m.a": {"m.a.f": ("a.html#f", "m/a.py")}, "m.b": {}}    # g: no index row, found via its module's pages
    entries = {"a.html": set(), "b.html": {"f"}, "c.html": {"g"}}
    module_pages = {"m.a": {"a.html"}, "m.b": {"b.html"}}
    assert book.missing_public_names(public, modidx, module_pages, entries) == ["m.a.f", "m.b.g"]
    entries["b.html"].add("g")
    assert book.missing_public_names(public, modidx, module_pages, entries) == ["m.a.f"]


def test_search_rows_cover_page_sections_and_api_entries():
    body = ("<p>intro text</p><h2 id='Usage'>Usage<a class='anchor-link' href='#Usage'>\u00b6</a></h2><p>how to</p>"
            + _entry("fit").replace("</h3>", "</h3><p>Fit the model.</p>") + "<script>var x;</script>")
    rows = book.search_records("lab/x.html", "x", "Lab", "A `summary`.", body)
    assert [(r["k"], r["h"], r["u"]) for r in rows] == [
        ("page", "", "lab/x.html"), ("section", "Usage", "lab/x.html#Usage"), ("api", "fit", "lab/x.html#fit")]
    assert rows[0]["x"].startswith("A `summary`. intro text") and rows[2]["x"] == "Fit the model."
    assert "var x" not in json.dumps(rows) and "\u00b6" not in json.dumps(rows)
    js = book.search_index_js(rows)
    assert js.startswith("window.TSFM_DOCS_INDEX = ") and json.loads(js.split("= ", 1)[1].rstrip(";\n")) == rows


def test_method_links_fall_back_to_the_class_entry_and_broken_links_are_found():
    pages = {"a.html": '<h3 id="runner">R</h3><a href="a.html#runner.from_config">m</a><a href="b.html#nope">n</a>',
             "b.html": '<a href="a.html#runner">ok</a><a href="_static/style.css">css</a><a href="c.html">gone</a>'}
    ids = {u: book.page_ids(h) for u, h in pages.items()}
    pages["a.html"] = book.retarget_anchors(pages["a.html"], "a.html", ids)
    assert 'href="a.html#runner"' in pages["a.html"]
    assert book.broken_links(pages, {"_static/style.css"}) == ["a.html: b.html#nope", "b.html: c.html"]


def test_inline_markdown_of_summaries_is_escaped():
    assert book.inline_md("`POST /x` <b> **bold** and *it*") == \
        "<code>POST /x</code> &lt;b&gt; <strong>bold</strong> and <em>it</em>"


def test_pydantic_models_get_a_table_of_their_fields(tmp_path, monkeypatch):
    (tmp_path / "docs_demo_models.py").write_text(
        "from typing import Literal\nfrom pydantic import BaseModel, Field\n"
        "class Inner(BaseModel):\n    k: int = 1\n"
        "class Demo(BaseModel):\n    'A demo model.'\n"
        "    name: str                                  # who it is\n"
        "    mode: Literal['a', 'b'] | None = None\n"
        "    n: int = Field(3, ge=1, description='how many')\n"
        "    inner: Inner = Field(default_factory=Inner)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO_ROOT / ".ci" / "docs"))
    apidoc = importlib.import_module("apidoc")
    demo = importlib.import_module("docs_demo_models")
    table = apidoc.pydantic_fields_table(demo.Demo)
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", "".join(rows))]
    assert cells == ["name", "str", "required", "", "who it is",
                     "mode", "Literal[&#x27;a&#x27;, &#x27;b&#x27;] | None", "None", "", "",
                     "n", "int", "3", "\u2265 1", "how many",
                     "inner", "Inner", "Inner()", "", ""]
    md = apidoc.show_doc(demo.Demo)._repr_markdown_()
    assert 'data-name="Demo"' in md and "class Demo(BaseModel)" in md and "**data" not in md
    assert book.doc_entries(md) == {"Demo"}


def _demo_notebook(path, *sources: str) -> None:
    cells = [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
             for i, s in enumerate(sources)]
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": "# demo\n> A demo."},
                                          *cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def _render(tmp_path, *notebooks: tuple[str, ...]) -> list[dict]:
    "Render each notebook (a tuple of cell sources) as `make nbtest` does, one after the other in one fresh process; their metas."
    import shutil, subprocess
    (tmp_path / "nbs").mkdir(exist_ok=True); shutil.copy(REPO_ROOT / "settings.ini", tmp_path / "settings.ini")
    (tmp_path / "cache").mkdir(exist_ok=True)
    jobs = []
    for i, sources in enumerate(notebooks):
        src = tmp_path / "nbs" / f"9{i}_demo.ipynb"; _demo_notebook(src, *sources)
        jobs.append({"src": str(src), "rel": src.name, "key": "k", "execute": True, "expect": 1, "cache": str(tmp_path / "cache"),
                     "root": str(REPO_ROOT)})
    code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT / '.ci' / 'docs')!r}); import execute; "
            f"[execute.render_notebook(job) for job in {jobs!r}]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    return [json.loads((tmp_path / "cache" / f"9{i}_demo.json").read_text()) for i in range(len(notebooks))]


def test_a_failing_cell_fails_the_notebook_and_skip_flags_are_honoured(tmp_path):
    """The book build is the notebook test run: a failing assert must be reported, a `#| slow` cell skipped."""
    ok, bad = _render(tmp_path, ("x = 1", "#| slow\nassert False, 'slow cells are skipped'", "#| eval: false\n1 / 0", "assert x == 1"),
                      ("x = 1", "assert x == 2, 'x must be two'"))
    assert ok["error"] is None, ok["error"]
    assert "AssertionError" in bad["error"] and "x must be two" in bad["error"]
