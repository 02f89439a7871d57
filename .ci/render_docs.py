"""Render the book to static HTML in _docs/, without quarto (its installer downloads a binary we cannot fetch).

Every notebook under nbs/ (recursively, in book order) is executed the way nbdev_test runs it (its own process,
cwd = its folder, the same skip flags), `--workers` at a time, and gets nbdev's doc processors (a `show_doc` entry
for every exported name, hidden and export cells removed); notebooks with `skip_exec` front matter are rendered
without running (.ci/docs/execute.py). Executed copies are kept in _proc/executed/ with the hash they were made from
(notebook + tsfm_wb/ + the execution code) and reused while it matches. Each page gets the book in a sidebar, an
offline search over an index of titles, headings, names and text, and no prompts (.ci/docs/book.py, page.html.j2).
Exit code 1 when a notebook fails (the others still render) or a public function or class of tsfm_wb has no entry of
its own on the page of the notebook that exports it.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import importlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, OUT, PROC = ROOT / "nbs", ROOT / "_docs", ROOT / "_proc" / "executed"
ASSETS = ROOT / ".ci" / "docs"
sys.path.insert(0, str(ASSETS))
import book  # noqa: E402  (.ci/docs: book order, sidebar, search index, coverage check)
import execute  # noqa: E402  (.ci/docs: what runs in each notebook's process)

# Headless and quiet, one compute thread per notebook process (the pool is the parallelism).
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "",
       "PYDEVD_DISABLE_FILE_VALIDATION": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
# What a page body is made with: a change re-executes every notebook. (Page assembly here does not count.)
EXECUTION_FILES = [ASSETS / "execute.py", ASSETS / "apidoc.py"]


# ---- cache keys ---------------------------------------------------------------------------------------------------

def _tree_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def code_hash() -> str:
    """Hash of what the notebooks run and read: the package (tsfm_wb/, with its bundled data), configs/, and the code
    that executes and converts them. (reports/ and artifacts/ are not in it: use --force after `make run`.)"""
    files = sorted(p for d in ("tsfm_wb", "configs") for p in (ROOT / d).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    return _tree_hash(files + EXECUTION_FILES)


def page_key(src: Path, code: str) -> str:
    "What an executed copy was made from: the notebook's bytes and `code_hash()`."
    return hashlib.sha256(src.read_bytes() + code.encode()).hexdigest()


def _cache(page: book.Page, ext: str) -> Path: return execute.cache_path(PROC, page.rel, ext)


def _read_meta(page: book.Page) -> dict:
    try: return json.loads(_cache(page, ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError): return {}


# ---- the pool ----------------------------------------------------------------------------------------------------

def _expected_seconds(page: book.Page, src: Path) -> float:
    "Longest first: the last measured time, else the notebook's code size as a stand-in."
    if (s := _read_meta(page).get("seconds")) is not None: return float(s)
    return src.stat().st_size / 10_000


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    "End a notebook's process group: the notebook's process and whatever it started and left running."
    try: os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError): pass


def run_pool(jobs: list[dict], workers: int, timeout: float) -> dict[str, str]:
    "Run each job in its own process, `workers` at a time, longest first; returns rel -> error of crashed jobs."
    ctx = mp.get_context("fork")      # from this process, warmed up: each notebook's process starts loaded
    pending = sorted(jobs, key=lambda j: j["expect"], reverse=True)
    running: dict[int, tuple] = {}
    crashed: dict[str, str] = {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                proc = ctx.Process(target=execute.render_notebook, args=(job,), name=f"docs:{job['rel']}")
                proc.start()
                running[proc.sentinel] = (proc, job, time.monotonic())
            for s in mp.connection.wait(list(running), timeout=2):
                proc, job, t0 = running.pop(s)
                proc.join()
                _kill_group(proc.pid, signal.SIGTERM)     # servers a notebook left behind
                meta = _read_meta(book.Page(job["rel"]))
                if proc.exitcode != 0 or meta.get("key") != job["key"]:
                    crashed[job["rel"]] = (f"its process exited with code {proc.exitcode} "
                                           f"(log: {_cache(book.Page(job['rel']), '.log')})")
                status = "FAILED" if job["rel"] in crashed or meta.get("error") else "ok"
                print(f"docs: {status:6s} {job['rel']} ({time.monotonic() - t0:.1f} s, "
                      f"cpu {meta.get('cpu_seconds', 0):.1f} s)", flush=True)
            for s, (proc, job, t0) in list(running.items()):
                if time.monotonic() - t0 > timeout:
                    _kill_group(proc.pid); proc.kill(); proc.join(); running.pop(s)
                    crashed[job["rel"]] = f"timed out after {timeout:.0f} s"
                    print(f"docs: FAILED {job['rel']} (timed out)", flush=True)
    finally:
        for proc, _, _ in running.values(): _kill_group(proc.pid); proc.kill(); proc.join()
    return crashed


# ---- pages ---------------------------------------------------------------------------------------------------------

def _template():
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ASSETS)), autoescape=False)
    return env.get_template("page.html.j2")


def write_assets() -> None:
    "CSS (ours plus pygments' code colours) and the search script, under _docs/_static/."
    from pygments.formatters import HtmlFormatter
    static = OUT / "_static"
    static.mkdir(parents=True, exist_ok=True)
    css = (ASSETS / "style.css").read_text(encoding="utf-8") + "\n/* code colours (pygments) */\n"
    css += HtmlFormatter(style="friendly").get_style_defs(".highlight")
    execute.atomic_write(static / "style.css", css)
    shutil.copyfile(ASSETS / "search.js", static / "search.js")


def write_pages(pages: list[book.Page], metas: dict[str, dict], bodies: dict[str, str], doc_host: str) -> list[str]:
    "Every page with sidebar, header, prev/next links and footer; the index gets the book map. Returns broken links."
    tpl = _template()
    tree = book.book_tree(pages)
    titles = {p.url: metas[p.rel]["title"] for p in pages}
    descs = {p.url: metas[p.rel]["description"] for p in pages}
    bodies = {p.rel: book.relative_doc_links(bodies[p.rel], doc_host, p.url)
              + (book.book_map_html(tree, descs, titles) if p.is_index else "") for p in pages}
    ids = {p.url: book.page_ids(bodies[p.rel]) | {"page-title"} for p in pages}
    out = {}
    for i, p in enumerate(pages):
        meta, body = metas[p.rel], book.retarget_anchors(bodies[p.rel], p.url, ids)
        nav = [(pages[k], lbl) for k, lbl in ((i - 1, "prev"), (i + 1, "next")) if 0 <= k < len(pages)]
        out[p.url] = tpl.render(
            title=meta["title"], description=book.inline_md(meta["description"]), body=body, root=book.root_of(p.url),
            sidebar=book.sidebar_html(tree, p.url, titles), group=book.group_label(p.folder) if not p.is_index else "",
            source=f"nbs/{p.rel}", executed=meta["executed"], error=meta.get("error"),
            nav=[(lbl, book.rel_url(q.url, p.url), titles[q.url]) for q, lbl in nav], esc=html.escape)
        execute.atomic_write(OUT / p.url, out[p.url])
    for old in OUT.rglob("*.html"):             # pages of notebooks that were renamed or removed
        if old.relative_to(OUT).as_posix() not in out and "_static" not in old.parts: old.unlink()
    static = {f.relative_to(OUT).as_posix() for f in (OUT / "_static").iterdir()} | {"_static/search_index.js"}
    return book.broken_links(out, static)


def write_search(pages: list[book.Page], metas: dict[str, dict], bodies: dict[str, str]) -> int:
    "_docs/search.json and the same rows as _docs/_static/search_index.js (loadable from file://)."
    rows = []
    for p in pages:
        m = metas[p.rel]
        rows += book.search_records(p.url, m["title"], "" if p.is_index else book.group_label(p.folder),
                                    m["description"], bodies[p.rel])
    execute.atomic_write(OUT / "search.json", json.dumps(rows, ensure_ascii=False))
    execute.atomic_write(OUT / "_static" / "search_index.js", book.search_index_js(rows))
    return len(rows)


def check_coverage(pages: list[book.Page], metas: dict[str, dict], bodies: dict[str, str]) -> list[str]:
    "Public functions and classes of every indexed module without their own entry on their notebook's page."
    modidx = importlib.import_module("tsfm_wb._modidx").d["syms"]
    public: dict[str, list[str]] = {}
    module_pages: dict[str, set[str]] = {}
    for p in pages:
        for mod in metas[p.rel].get("modules", []): module_pages.setdefault(mod, set()).add(p.url)
        public.update(metas[p.rel].get("public", {}))
    for mod in modidx:                      # a module no notebook exports into: nothing documents it
        if mod not in public: public[mod] = execute.public_callables(mod)
    entries = {p.url: book.doc_entries(bodies[p.rel]) for p in pages}
    return book.missing_public_names({m: public[m] for m in modidx}, modidx, module_pages, entries)


def main(argv: list[str] | None = None) -> int:
    "Render the book; return a process exit code."
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # one process more than cores: some notebooks wait on servers they start, and the third process fills that time
    # (measured on 2 cores: 137 s with 3 processes, 164 s with 2)
    ap.add_argument("--workers", type=int, default=int(os.environ.get("DOCS_WORKERS", (os.cpu_count() or 1) + 1)),
                    help="notebook processes")
    ap.add_argument("--force", action="store_true", help="execute every notebook, ignoring _proc/executed/")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one notebook may take")
    args = ap.parse_args(argv)
    for k, v in ENV.items(): os.environ.setdefault(k, v)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    t0 = time.time()
    pages = book.discover(NBS)
    code = code_hash()
    jobs, fresh = [], 0
    for p in pages:
        src = NBS / p.rel
        key = page_key(src, code)
        meta = _read_meta(p)
        if not args.force and meta.get("key") == key and not meta.get("error") and _cache(p, ".body.html").exists():
            fresh += 1; continue
        _cache(p, ".log").parent.mkdir(parents=True, exist_ok=True)
        jobs.append({"src": str(src), "rel": p.rel, "key": key, "execute": not (src.parent / ".notest").exists(),
                     "expect": _expected_seconds(p, src), "cache": str(PROC), "root": str(ROOT)})
    print(f"docs: {len(pages)} notebooks, {fresh} up to date, {len(jobs)} to render with {args.workers} workers",
          flush=True)
    if jobs:
        t = time.time(); execute.warm_up()
        print(f"docs: warmed up in {time.time() - t:.1f} s (imports and templates every notebook process starts with)",
              flush=True)
    crashed = run_pool(jobs, args.workers, args.timeout) if jobs else {}
    metas = {p.rel: _read_meta(p) for p in pages}
    if jobs:
        cpu = sum(metas[j["rel"]].get("cpu_seconds", 0) for j in jobs if j["rel"] not in crashed)
        print(f"docs: notebooks done after {time.time() - t0:.1f} s (their processes used {cpu:.0f} s of CPU)",
              flush=True)
    for rel, why in crashed.items():
        p = book.Page(rel)
        metas[rel] = {"title": metas[rel].get("title") or p.name, "description": "", "executed": True,
                      "error": f"The notebook's process failed: {why}", "modules": [], "public": {}}
        execute.atomic_write(_cache(p, ".body.html"), "")
        execute.atomic_write(_cache(p, ".json"), json.dumps(metas[rel]))      # no key: rendered again next time
    bodies = {p.rel: _cache(p, ".body.html").read_text(encoding="utf-8") for p in pages}
    OUT.mkdir(exist_ok=True)
    write_assets()
    doc_host = importlib.import_module("tsfm_wb._modidx").d["settings"]["doc_host"]
    broken = write_pages(pages, metas, bodies, doc_host)
    n_rows = write_search(pages, metas, bodies)
    if broken:      # reported, not fatal: usually a notebook's link to a file outside the docs
        print(f"docs: warning: {len(broken)} links point nowhere: " + "; ".join(broken), file=sys.stderr)
    failed = [p.rel for p in pages if metas[p.rel].get("error")]
    for rel in failed:
        print(f"docs: notebook failed: nbs/{rel}\n{metas[rel]['error'].rstrip()}\n", file=sys.stderr)
    missing = check_coverage(pages, metas, bodies)
    if missing:
        print(f"docs: {len(missing)} public names have no entry of their own in the docs: " + ", ".join(missing),
              file=sys.stderr)
    print(f"docs: {len(pages)} pages, {n_rows} search rows -> {OUT / 'index.html'} in {time.time() - t0:.1f} s"
          + (f"; FAILED: {len(failed)} notebook(s): {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
