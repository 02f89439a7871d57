"""One notebook's page body, made in the notebook's own process: run it as nbdev_test does, document it with nbdev's
processors, convert it with nbconvert. Its output (body HTML, executed copy, meta JSON, log) goes to the cache folder
named in the job; a change of this file or of `apidoc.py` invalidates every cached copy (see `render_docs.py`)."""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import resource
import sys
import time
import traceback
from pathlib import Path

import book

SKIP_FLAGS = {"slow", "notest"}        # plus settings.ini's tst_flags, as nbdev_test
# Imported by the parent before it forks the notebook processes (see `warm_up`), so that each starts with them loaded.
PRELOAD = ["numpy", "pandas", "matplotlib", "matplotlib.pyplot", "scipy.special", "scipy.stats", "pydantic", "yaml",
           "httpx", "fastapi", "uvicorn", "tqdm.auto", "IPython", "execnb.shell", "nbdev.processors", "nbdev.showdoc",
           "nbconvert", "nbformat", "apidoc"]
# The heavy libraries that many notebooks import (keras/TensorFlow in 13, ~5 CPU-s each; statsforecast in 7, ~1.4 CPU-s
# each): loaded once before the fork. Safe for TensorFlow and numba: their thread pools start at the first operation
# (TensorFlow) or the first parallel call (numba), which happen in the notebook's own process; none starts a thread on import.
PRELOAD_HEAVY = ["tensorflow", "keras", "sklearn", "onnx", "onnxruntime", "tf2onnx", "statsforecast", "statsforecast.models"]
_HEAVY = ("keras", "tensorflow", "statsforecast", "onnxruntime", "tf2onnx", "papermill", "dask", "numba", "sklearn",
          "ai_edge_litert", "onnx", "bokeh", "distributed")        # recorded per notebook, to see what it costs
_PRELOADED: set[str] = set()           # heavy modules the parent loaded (not charged to any notebook)
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")
_QUARTO_DIR = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


def cache_path(cache: Path, rel: str, ext: str) -> Path:
    "Where the cached `ext` (`.ipynb`, `.json`, `.body.html`, `.log`) of notebook `rel` lives."
    return cache / Path(rel).with_suffix(ext)


def atomic_write(path: Path, text: str) -> None:
    "Write `text` to `path` through a temporary file and a rename."
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def front_matter(nb) -> dict:
    "Title and summary (H1 and its `>` line, or YAML front matter); removes them, keeps the rest of their cell."
    from nbdev.frontmatter import _fm2dict
    fm: dict = {}
    for c in nb.cells:
        if c.cell_type == "raw" and (d := _fm2dict(c.source or "")): fm.update(d); c.source = None
    for c in nb.cells:
        if c.cell_type != "markdown" or not c.source: continue
        lines = c.source.splitlines()
        i = next((k for k, ln in enumerate(lines) if ln.strip()), None)
        if i is None or not re.match(r"^#\s+\S", lines[i]): break
        fm.setdefault("title", lines[i].lstrip("#").strip())
        rest = lines[i + 1:]
        j = next((k for k, ln in enumerate(rest) if ln.strip()), None)
        if j is not None and rest[j].startswith(">"):
            end = next((k for k in range(j, len(rest)) if not rest[k].startswith(">")), len(rest))
            fm.setdefault("description", " ".join(ln.lstrip("> ").strip() for ln in rest[j:end]))
            rest = rest[:j] + rest[end:]
        c.source = "\n".join(lines[:i] + rest).strip() or None
        break
    nb.cells = [c for c in nb.cells if c.source is not None]
    return fm


def skip_cell(cell, flags: set[str]) -> bool:
    "What nbdev_test skips: markdown, the export cell, `#| eval: false`, and cells with a skip flag."
    from nbdev.process import extract_directives
    if cell.cell_type != "code": return True
    if "nbdev_export" + "(" in cell.source: return True
    d = extract_directives(cell, remove=False)
    return d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())


def _link_processor(page: book.Page):
    "nbdev's `add_links` with tsfm_wb's own index: backticked names link to their entry, relative to this page."
    from nbdev.doclinks import NbdevLookup
    from nbdev.processors import add_links
    syms: dict[str, str] = {}
    for mod, dets in importlib.import_module("tsfm_wb._modidx").d["syms"].items():
        for qual, (url, _) in dets.items():
            if qual.rsplit(".", 1)[-1].startswith("_"): continue
            rel = book.rel_url(url, page.url)
            syms[qual] = rel
            syms.setdefault(qual[len(mod) + 1:], rel)
            syms.setdefault(mod, book.rel_url(url.split("#")[0], page.url))
    lookup = NbdevLookup.__new__(NbdevLookup)       # its linkify, over our index (nbdev's reads installed libs)
    lookup.entries, lookup.syms, lookup.aliases = {}, syms, {}

    def link_names(cell):   # no trailing _: nbdev treats such processors as directives
        "Link backticked names of markdown cells and markdown outputs to their doc entries."
        if cell.cell_type == "markdown": cell.source = lookup.linkify(cell.source)
        for o in cell.get("outputs", []):
            md = o.get("data", {}).get("text/markdown") if hasattr(o, "get") else None
            if md is not None:
                o["data"]["text/markdown"] = ([lookup.link_line(s) for s in md] if isinstance(md, list)
                                              else lookup.linkify(md))
    return add_links, link_names


def doc_processors(shell, page: book.Page) -> list:
    "nbdev's doc processors; `show_doc` runs in `shell` (the one that ran the notebook) or, unexecuted, a fresh one."
    from execnb.shell import CaptureShell
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import Processor
    from nbdev.processors import FilterDefaults, clean_show_doc, exec_show_docs, insert_warning

    class ShowDocsInShell(Processor):
        "Run nbdev's inserted `show_doc` cells in the shell that ran the whole notebook."
        def __call__(self, cell):
            if cell.cell_type == "code" and getattr(cell, "has_sd", False): shell.cell(cell)

    class ExecShowDocs(exec_show_docs):
        "nbdev's fresh-shell `show_doc` execution (exports and imports only), with the offline renderer."
        def begin(self):
            if not self.nb.has_docs_: return          # nothing exported: no shell needed
            self.k = CaptureShell()
            self.k.run_cell("from apidoc import show_doc")

    nbdev_links, our_links = _link_processor(page)
    procs = [p for p in FilterDefaults().procs() if p not in (FrontmatterProc, insert_warning, exec_show_docs)]
    procs = [our_links if p is nbdev_links else p for p in procs]
    at = procs.index(clean_show_doc) + 1
    return procs[:at] + [ShowDocsInShell if shell is not None else ExecShowDocs] + procs[at:]


def html_body(nb) -> str:
    "The page body: quarto cell options applied (echo, output, include), no prompts, nbconvert's basic template."
    import nbformat
    from execnb.nbio import nb2str
    keep = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            opts = {}
            while lines and (m := _QUARTO_DIR.match(lines[0])): opts[m.group(1)] = m.group(2).strip("'\""); lines.pop(0)
            cell.source = "\n".join(lines).strip("\n")
            if opts.get("include") == "false": continue
            if opts.get("output") == "false": cell.outputs = []
            tags = cell.metadata.setdefault("tags", [])
            if opts.get("echo") == "false" or not cell.source.strip(): tags.append("remove-input")
            if "remove-input" in tags and not cell.get("outputs"): continue
        keep.append(cell)
    nb.cells = keep
    body, _ = _exporter().from_notebook_node(nbformat.reads(nb2str(nb), as_version=4))
    return body


@functools.lru_cache(maxsize=None)
def _exporter():
    "nbconvert's basic HTML template without prompts; made once (in the parent, see `warm_up`) for every page."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    hide_input = TagRemovePreprocessor(remove_input_tags={"remove-input"}, enabled=True)
    exporter.register_preprocessor(hide_input, enabled=True)
    return exporter


def warm_up() -> None:
    "Import what every notebook process needs and compile nbconvert's templates once, before forking them."
    import nbformat
    for m in PRELOAD + PRELOAD_HEAVY: importlib.import_module(m)
    _PRELOADED.update(m for m in _HEAVY if m in sys.modules)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# x\n`y`"), nbformat.v4.new_code_cell("1")])
    _exporter().from_notebook_node(nb)


def exported_modules(nb, default: str | None) -> list[str]:
    "The modules a notebook exports into (`default_exp` and `#| export <module>` targets)."
    mods = {default} if default else set()
    for c in nb.cells:
        if c.cell_type == "code":
            targets = re.finditer(r"^#\|\s*export[si]?\s+([\w.]+)\s*$", c.source or "", re.MULTILINE)
            mods.update(m.group(1) for m in targets)
    return sorted(f"tsfm_wb.{m}" for m in mods)


def public_callables(module: str) -> list[str]:
    "A module's own public functions and classes (not re-exports): the names of its `__all__` that the docs must cover."
    m = importlib.import_module(module)
    own = lambda o: getattr(o, "__module__", module) == module     # a re-export is documented (and checked) where it is defined
    return [n for n in getattr(m, "__all__", []) if (inspect.isfunction(o := getattr(m, n)) or inspect.isclass(o)) and own(o)]


def render_notebook(job: dict) -> None:
    """In its own process: execute (unless skip_exec) and document one notebook, then write its body, executed copy
    and meta to the cache. A failing cell is recorded (the outputs before it are kept), never raised."""
    src, page, cache = Path(job["src"]), book.Page(job["rel"]), Path(job["cache"])
    os.setpgrp()                              # its own process group: the parent can end what the notebook started
    log = os.open(cache_path(cache, page.rel, ".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1); os.dup2(log, 2)          # TensorFlow's C++ logs too; the console shows only the summary
    os.environ["IN_TEST"] = "1"
    sys.path.insert(0, job["root"])
    os.chdir(src.parent)                      # notebooks use paths relative to their folder, as under nbdev_test
    start, error, phases = time.time(), None, {}
    def lap(name): phases[name] = time.process_time() - sum(phases.values())   # CPU seconds of each phase
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.processors import _default_exp
    nb = read_nb(src)
    fm = front_matter(nb)
    execute = job["execute"] and str(fm.get("skip_exec", "")).lower() not in ("true", "1", "yes")
    shell = None
    lap("start")
    if execute:
        shell = CaptureShell(src)
        flags = SKIP_FLAGS | set(get_config().get("tst_flags", "").split())
        try: shell.run_all(nb, exc_stop=True, preproc=lambda c: skip_cell(c, flags))
        except BaseException: error = _ANSI.sub("", shell.prettytb(fname=page.rel))
        lap("execute")
    mods = exported_modules(nb, _default_exp(nb))
    if shell is not None: shell.user_ns["show_doc"] = importlib.import_module("apidoc").make_show_doc(mods)
    body = ""
    try:
        NBProcessor(nb=nb, procs=doc_processors(shell, page), process=True)
        write_nb(nb, cache_path(cache, page.rel, ".ipynb"))
        lap("document")
        body = html_body(nb)
        lap("html")
    except Exception:
        error = (error or "") + "Documenting the notebook failed:\n" + traceback.format_exc()
    public = {}
    for mod in mods:
        try: public[mod] = public_callables(mod)
        except Exception as e: public[mod] = []; error = error or f"import {mod}: {type(e).__name__}: {e}"
    atomic_write(cache_path(cache, page.rel, ".body.html"), body)
    cpu = sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    meta = {"key": job["key"], "title": fm.get("title") or page.name, "description": fm.get("description", ""),
            "executed": execute, "seconds": round(time.time() - start, 2), "cpu_seconds": round(cpu, 2),
            "cpu_phases": {k: round(v, 2) for k, v in phases.items()}, "error": error, "modules": mods,
            "public": public, "heavy_imports": sorted(m for m in _HEAVY if m in sys.modules and m not in _PRELOADED)}
    atomic_write(cache_path(cache, page.rel, ".json"), json.dumps(meta, indent=1))
