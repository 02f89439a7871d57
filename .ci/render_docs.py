"""Render the docs from the notebooks, without quarto (its installer downloads a binary we cannot fetch).

For each notebook in nbs/ (not experiments/): execute it (so plots and tables appear), apply nbdev's
doc processors (show_doc for every exported name, hidden cells removed), export HTML to _docs/, then
write _docs/index.html linking the pages. Fails if a public name of tsfm_wb is missing from the docs.
"""
from __future__ import annotations

import html
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

import nbformat
import yaml
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.process import NBProcessor, Processor
from nbdev.processors import FilterDefaults, clean_show_doc, exec_show_docs
import re

ROOT = Path(__file__).resolve().parent.parent
NBS, OUT, WORK = ROOT / "nbs", ROOT / "_docs", ROOT / "_proc" / "executed"
_SKIP = re.compile(r"^#\|\s*(eval:\s*false|slow|notest)\s*$", re.MULTILINE)


def _no_eval(cell) -> bool:
    "Skip what nbdev_test skips: markdown, the export cell, `eval: false` and flagged slow cells."
    return cell.cell_type != "code" or "nbdev_export(" in cell.source or bool(_SKIP.search(cell.source))


class _ShowDocsInShell(Processor):
    "Run nbdev's inserted show_doc cells in the shell that already ran the notebook (not in a fresh one)."
    def __init__(self, nb, shell: CaptureShell):
        super().__init__(nb); self.k = shell

    def __call__(self, cell):
        if cell.cell_type == "code" and getattr(cell, "has_sd", False): self.k.cell(cell)


class _DocProcessors(FilterDefaults):
    """nbdev's doc processors, with show_doc run in our executed shell.

    nbdev's own `exec_show_docs` re-runs every cell that imports something in a fresh shell, which fails
    on cells that mix imports with code using earlier variables; our shell has run the whole notebook.
    """
    def __init__(self, shell: CaptureShell):
        self.shell = shell

    def nb_proc(self, nb):
        procs = [p for p in self.procs() if p is not exec_show_docs]
        procs.insert(procs.index(clean_show_doc) + 1, _ShowDocsInShell(nb, self.shell))
        return NBProcessor(nb=nb, procs=procs)


def _execute(src: Path) -> Path:
    "Run a notebook top to bottom in nbs/ (like nbdev_test) and save the executed copy."
    nb = read_nb(src)
    os.environ["IN_TEST"] = "1"
    cwd = os.getcwd()
    os.chdir(src.parent)  # notebooks use paths relative to nbs/, as under nbdev_test
    try:
        shell = CaptureShell(path=src.parent)
        shell.run_cell("import matplotlib; matplotlib.use('Agg'); get_ipython().run_line_magic('matplotlib', 'inline')")
        shell.run_all(nb, exc_stop=True, preproc=_no_eval)
        shell.run_cell("from nbdev.showdoc import show_doc")
        _DocProcessors(shell)(nb)
    finally:
        os.chdir(cwd)
    dst = WORK / src.relative_to(NBS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)
    return dst


def _to_html(executed: Path) -> tuple[str, str]:
    "HTML of a processed notebook; cells nbdev marks `echo: false` lose their source."
    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "#| echo: false" in cell.source:
            cell.metadata.setdefault("tags", []).append("hide-input")
    front = next((yaml.safe_load(c.source.strip().strip("-")) for c in nb.cells if c.cell_type == "raw" and "title:" in c.source), {})
    title = front.get("title") or next((c.source.split("\n")[0].lstrip("# ") for c in nb.cells
                                        if c.cell_type == "markdown" and c.source.startswith("# ")), executed.stem)
    desc = front.get("description", "")
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n> {desc}" if desc else f"# {title}")] + \
               [c for c in nb.cells if c.cell_type != "raw"]  # quarto front matter becomes a visible title
    exporter = HTMLExporter(template_name="lab")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"hide-input"}, enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    return title, body


def _public_names() -> dict[str, list[str]]:
    "Every module's public functions and classes (the API the docs must cover)."
    idx = importlib.import_module("tsfm_wb._modidx").d["syms"]
    out = {}
    for mod in idx:
        m = importlib.import_module(mod)
        out[mod] = [n for n in getattr(m, "__all__", []) if callable(getattr(m, n))]
    return out


def main() -> int:
    "Render every notebook and the index; return a process exit code."
    warnings.filterwarnings("ignore", message="Found cells containing imports")
    sys.path.insert(0, str(ROOT))
    OUT.mkdir(exist_ok=True)
    pages = []
    for src in sorted(NBS.glob("*.ipynb")):
        print(f"docs: {src.name}", flush=True)
        title, body = _to_html(_execute(src))
        page = src.with_suffix(".html").name
        (OUT / page).write_text(body, encoding="utf-8")
        pages.append((page, title, body))
    links = "\n".join(f'<li><a href="{p}">{html.escape(t)}</a> <small>({p})</small></li>' for p, t, _ in pages)
    (OUT / "index.html").write_text(f"<!doctype html><meta charset='utf-8'><title>tsfm-wb docs</title>"
                                    f"<h1>tsfm-wb documentation</h1><p>Rendered from nbs/ by <code>make docs</code>.</p><ul>{links}</ul>",
                                    encoding="utf-8")
    alltext = "\n".join(b for _, _, b in pages)
    missing = [f"{m}.{n}" for m, names in _public_names().items() for n in names if n not in alltext]
    if missing:
        print("docs: public names missing from the rendered docs: " + ", ".join(missing), file=sys.stderr)
        return 1
    print(f"docs: {len(pages)} pages -> {OUT / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
