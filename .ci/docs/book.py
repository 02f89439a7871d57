"""The book of `make docs`: which notebooks, in which order, under which group; the sidebar, the search index
and the check that every public function and class has its own entry. Standard library only, so that
`tests/test_docs.py` can import it in milliseconds."""
from __future__ import annotations

import html
import json
import posixpath
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# Sidebar labels of the book's folders (relative to nbs/); other folders get their name, capitalised.
GROUP_LABELS = {"": "Foundation", "lab": "Lab", "tsfm": "TSFM", "tsfm/runner": "TSFM runner",
                "experiments": "Experiments", "papermill": "Papermill notebooks", "docs": "Guides"}
# Notebooks without a numeric prefix follow the numbered book: prose guides first, papermill notebooks last.
_TAIL_RANK = {"docs": 0, "papermill": 2}
_OTHER_TAIL_RANK = 1
_PREFIX = re.compile(r"^(\d+)[a-zA-Z0-9]*_")


@dataclass(frozen=True)
class Page:
    "One notebook of the book: its path relative to nbs/ and the page it renders to."
    rel: str                      # "lab/10_spline.ipynb" (posix)

    @property
    def folder(self) -> str: return posixpath.dirname(self.rel)
    @property
    def name(self) -> str: return posixpath.basename(self.rel)
    @property
    def prefix(self) -> int | None:
        m = _PREFIX.match(self.name)
        return int(m.group(1)) if m else None
    @property
    def url(self) -> str:
        "The page nbdev's doc links point to: lower case, no numeric prefix (`lab/10_spline` -> `lab/spline.html`)."
        stem = _PREFIX.sub("", self.name.lower()).rsplit(".", 1)[0]
        return posixpath.join(self.folder, stem + ".html")
    @property
    def is_index(self) -> bool: return self.rel == "index.ipynb"


def book_key(page: Page) -> tuple:
    "Book order: index first, then by numeric prefix (global), then unnumbered notebooks by group and name."
    if page.is_index: return (0,)
    if page.prefix is not None: return (1, page.prefix, page.rel)
    top = page.folder.split("/")[0]
    return (2, _TAIL_RANK.get(top, _OTHER_TAIL_RANK), page.rel)


def _skipped(rel_parts: tuple[str, ...]) -> bool:
    "nbdev's nbglob rules: nothing whose name starts with `.` or `_` (checkpoints, _proc, drafts)."
    return any(p.startswith((".", "_")) for p in rel_parts)


def discover(nbs: Path) -> list[Page]:
    "Every notebook under `nbs`, recursively, in book order; fails if two render to the same page."
    pages = [Page(p.relative_to(nbs).as_posix()) for p in nbs.rglob("*.ipynb")
             if not _skipped(p.relative_to(nbs).parts)]
    pages.sort(key=book_key)
    seen: dict[str, str] = {}
    for p in pages:
        if p.url in seen:
            raise ValueError(f"docs: {seen[p.url]} and {p.rel} both render to {p.url}; rename one of them")
        seen[p.url] = p.rel
    return pages


def group_label(folder: str) -> str:
    "Readable sidebar label of a folder of nbs/."
    return GROUP_LABELS.get(folder) or posixpath.basename(folder).replace("_", " ").capitalize()


@dataclass
class Group:
    "A folder of the book in the sidebar: its pages and sub-folders, in book order."
    folder: str
    items: list = field(default_factory=list)   # Page | Group

    @property
    def label(self) -> str: return group_label(self.folder)


def book_tree(pages: list[Page]) -> list:
    "Top-level sidebar items (the index page, then one group per folder), sub-folders nested, in book order."
    top: list = []
    groups: dict[str, Group] = {}

    def group(folder: str) -> Group:
        if folder not in groups:
            groups[folder] = g = Group(folder)
            parent = posixpath.dirname(folder) if "/" in folder else None
            (group(parent).items if parent is not None else top).append(g)
        return groups[folder]

    for p in pages:
        (top if p.is_index else group(p.folder).items).append(p)
    return top


def rel_url(target: str, current: str) -> str:
    "Link from page `current` to `target` (both relative to the docs root), working from file://."
    frag = ""
    if "#" in target: target, frag = target.split("#", 1); frag = "#" + frag
    if not target: return frag
    return posixpath.relpath(target, posixpath.dirname(current) or ".") + frag


def root_of(current: str) -> str:
    "Relative path from page `current` back to the docs root (`''` or `../`...)."
    depth = current.count("/")
    return "../" * depth


def sidebar_html(tree: list, current: str, titles: dict[str, str]) -> str:
    "The whole book as nested lists, links relative to `current`, the current page marked."
    def item(p: Page) -> str:
        cur = ' class="current" aria-current="page"' if p.url == current else ""
        num = f'<span class="num">{p.name.split("_")[0]}</span> ' if p.prefix is not None else ""
        return (f'<li><a href="{html.escape(rel_url(p.url, current))}"{cur}>'
                f'{num}{html.escape(titles.get(p.url, p.name))}</a></li>')

    def node(x) -> str:
        if isinstance(x, Page): return item(x)
        inner = "".join(node(i) for i in x.items)
        return (f'<li class="group"><details open><summary>{html.escape(x.label)}</summary>'
                f'<ul>{inner}</ul></details></li>')
    return '<ul class="book">' + "".join(node(x) for x in tree) + "</ul>"


def book_map_html(tree: list, descriptions: dict[str, str], titles: dict[str, str]) -> str:
    "The landing page's map of the book: every group with its pages and their one-sentence summaries, in book order."
    def page(x: Page) -> str:
        return (f'<dt><a href="{html.escape(x.url)}">{html.escape(titles.get(x.url, x.name))}</a>'
                f' <small>nbs/{html.escape(x.rel)}</small></dt><dd>{inline_md(descriptions.get(x.url, ""))}</dd>')

    def group(g: Group, level: int) -> str:
        out, run = [f'<h{level}>{html.escape(g.label)}</h{level}>'], []
        for x in g.items + [None]:
            if isinstance(x, Page): run.append(page(x)); continue
            if run: out.append('<dl class="book-map">' + "".join(run) + "</dl>"); run = []
            if x is not None: out.append(group(x, min(level + 1, 4)))
        return "".join(out)
    return ('<section class="book-map"><h2 id="the-book">The book</h2>'
            + "".join(group(g, 3) for g in tree if isinstance(g, Group)) + "</section>")


def inline_md(s: str) -> str:
    "A one-line summary with its markdown code spans, bold and italics as HTML (everything else escaped)."
    s = html.escape(s, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", s)


# ---- reading rendered pages -------------------------------------------------------------------------------------

_HEADINGS = {"h1", "h2", "h3", "h4"}
_SKIP_TEXT = {"script", "style"}


class _PageReader(HTMLParser):
    "Collects the doc entries (`data-name`) and the sections (heading, anchor, text) of a page body."
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.entries: list[tuple[str, str]] = []          # (name, anchor)
        self.sections: list[dict] = [{"h": "", "a": "", "text": [], "api": ""}]
        self._in_heading: str | None = None
        self._heading: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag in _SKIP_TEXT: self._skip += 1
        if "doc-entry" in classes and a.get("data-name"): self.entries.append((a["data-name"], a.get("id", "")))
        if tag in _HEADINGS and self._in_heading is None:
            self._in_heading, self._heading = tag, []
            api = self.entries[-1][0] if "doc-name" in classes and self.entries else ""
            self.sections.append({"h": "", "a": a.get("id", ""), "text": [], "api": api})

    def handle_endtag(self, tag):
        if tag in _SKIP_TEXT and self._skip: self._skip -= 1
        if tag == self._in_heading:
            self.sections[-1]["h"] = _squash("".join(self._heading))
            self._in_heading = None

    def handle_data(self, data):
        if not self._skip: (self._heading if self._in_heading else self.sections[-1]["text"]).append(data)


def _squash(s: str) -> str: return " ".join(s.replace("\u00b6", " ").split())


def doc_entries(body: str) -> set[str]:
    "Names that have their own entry (a `doc-entry` element with that exact `data-name`) in a page body."
    r = _PageReader(); r.feed(body)
    return {n for n, _ in r.entries}


def missing_public_names(public: dict[str, list[str]], modidx: dict[str, dict], module_pages: dict[str, set[str]],
                         page_entries: dict[str, set[str]]) -> list[str]:
    """`module.name` of every public function or class without its own entry on the page that documents it.

    public: module -> public function and class names (from its `__all__`); modidx: `_modidx.d["syms"]`, whose
    `module.name` rows give the page of the notebook that exports the name; module_pages: module -> the pages of the
    notebooks exporting into it (for names the index lacks); page_entries: page -> names with their own entry.
    """
    missing = []
    for mod in sorted(public):
        for name in public[mod]:
            row = modidx.get(mod, {}).get(f"{mod}.{name}")
            pages = {row[0].split("#")[0]} if row else module_pages.get(mod, set())
            if not any(name in page_entries.get(p, set()) for p in pages): missing.append(f"{mod}.{name}")
    return missing


def search_records(url: str, title: str, group: str, description: str, body: str, max_text: int = 400) -> list[dict]:
    "Search index rows of one page: the page itself, each section and each API entry (text shortened)."
    r = _PageReader(); r.feed(body)
    rows = []
    for i, s in enumerate(r.sections):
        text = _squash("".join(s["text"]))
        if i == 0: text = _squash(f"{description} {text}")
        kind = "api" if s["api"] else ("page" if i == 0 else "section")
        rows.append({"u": url + (f"#{s['a']}" if s["a"] else ""), "t": title, "g": group, "k": kind,
                     "h": s["api"] or s["h"], "x": text[:max_text]})
    return rows


def search_index_js(rows: list[dict]) -> str:
    "The search index as a script (a `fetch` of JSON is refused on file://, a script tag is not)."
    return "window.TSFM_DOCS_INDEX = " + json.dumps(rows, ensure_ascii=False, separators=(",", ":")) + ";\n"


_ABS_DOC_LINK = r'href="{host}/?([^"#]*)(#[^"]*)?"'


def relative_doc_links(body: str, doc_host: str, current: str) -> str:
    "Rewrite nbdev's absolute doc links (`doc_host` + page) into links relative to `current` that work offline."
    pat = re.compile(_ABS_DOC_LINK.format(host=re.escape(doc_host.rstrip("/"))))
    def sub(m): return f'href="{html.escape(rel_url(m.group(1) + (m.group(2) or ""), current))}"'
    return pat.sub(sub, body)


_LINK = re.compile(r'\b(href|src)="([^"]*)"')
_ID = re.compile(r'\bid="([^"]+)"')


def page_ids(page_html: str) -> set[str]:
    "Every element id of a page (the anchors links can point to)."
    return set(_ID.findall(page_html))


def _target(href: str, current: str) -> tuple[str, str] | None:
    "(page, fragment) a relative link of page `current` points to; None for external, data and mail links."
    if re.match(r"^[a-z][a-z0-9+.-]*:", href, re.I) or href.startswith("//"): return None
    path, _, frag = href.partition("#")
    page = current if not path else posixpath.normpath(posixpath.join(posixpath.dirname(current), path))
    return page, frag


def retarget_anchors(body: str, current: str, ids: dict[str, set[str]]) -> str:
    "A link to `Class.method` that has no entry of its own points to the entry of `Class` instead."
    def sub(m):
        t = _target(m.group(2), current)
        if not t or not t[1] or t[0] not in ids or t[1] in ids[t[0]]: return m.group(0)
        frag = t[1]
        while "." in frag and frag not in ids[t[0]]: frag = frag.rsplit(".", 1)[0]
        if frag not in ids[t[0]]: return m.group(0)
        return f'{m.group(1)}="{m.group(2).partition("#")[0]}#{frag}"'
    return _LINK.sub(sub, body)


def broken_links(pages: dict[str, str], files: set[str]) -> list[str]:
    "`page: href` of every relative link whose file (a page or one of `files`) or anchor does not exist."
    ids = {u: page_ids(h) for u, h in pages.items()}
    bad = []
    for u, h in pages.items():
        for _, href in _LINK.findall(h):
            t = _target(href, u)
            if t is None: continue
            page, frag = t
            if page not in pages and page not in files: bad.append(f"{u}: {href}")
            elif frag and page in pages and frag not in ids[page]: bad.append(f"{u}: {href}")
    return bad
