"""`show_doc` for the offline docs: nbdev's signature and docstring in an entry of its own (an anchor that nbdev's doc
links point to, no link to a source host), and for a pydantic model the table of its fields, which nbdev renders
as a bare `X(**data: Any)`."""
from __future__ import annotations

import ast
import functools
import html
import importlib
import inspect
import re
import textwrap
import tokenize
import types
import typing
from io import StringIO
from typing import Any

from fastcore.docments import MarkdownRenderer
from nbdev.showdoc import show_doc as _nbdev_show_doc

_MAX_DEFAULT = 60


def _code(s: str) -> str:
    "Inline markdown code spans (`x`) of a comment or description as HTML."
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s, quote=False))


def _short(s: str, n: int = _MAX_DEFAULT) -> str: return s if len(s) <= n else s[: n - 1] + "\u2026"


def _class_source(cls, modules: tuple[str, ...] = ()) -> str | None:
    "The source of `cls`; for a class a notebook defined (no file), that of its exported twin in `modules`."
    try: return inspect.getsource(cls)
    except (OSError, TypeError): pass
    for mod in modules:
        try: twin = getattr(importlib.import_module(mod), cls.__qualname__, None)
        except ImportError: continue
        if inspect.isclass(twin) and twin is not cls:
            try: return inspect.getsource(twin)
            except (OSError, TypeError): continue
    return None


def _class_fields_source(cls, modules: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    "For each field assigned in the class body: its annotation as written and the comment on its line(s)."
    src = _class_source(cls, modules)
    if src is None: return {}
    src = textwrap.dedent(src)
    try: tree = ast.parse(src)
    except SyntaxError: return {}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(StringIO(src).readline):
            if tok.type == tokenize.COMMENT: comments[tok.start[0]] = tok.string.lstrip("#").strip()
    except tokenize.TokenError: pass
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            out[node.target.id] = {"type": ast.unparse(node.annotation),
                                   "comment": " ".join(comments[i] for i in lines if i in comments)}
    return out


def _type_name(t: Any) -> str:
    "A readable annotation when the source is not available (Annotated's metadata dropped)."
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated: return _type_name(args[0])
    if origin in (typing.Union, types.UnionType): return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal: return f"Literal[{', '.join(map(repr, args))}]"
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if t is type(None): return "None"
    if isinstance(t, type): return t.__name__
    return re.sub(r"\b(typing|datetime|collections\.abc)\.", "", str(t))


def _default(info) -> str:
    "The default of a pydantic field as a reader would write it."
    from pydantic_core import PydanticUndefined
    from pydantic import BaseModel
    if info.is_required(): return "required"
    if info.default_factory is not None:
        try: val = info.default_factory()
        except Exception: return f"{getattr(info.default_factory, '__name__', 'factory')}()"
    elif info.default is PydanticUndefined: return "required"
    else: val = info.default
    if isinstance(val, BaseModel) and _is_default_instance(val): return f"{type(val).__name__}()"
    return _short(repr(val))


def _is_default_instance(m) -> bool:
    "Whether a model instance equals its class's all-defaults instance (shown as `Cls()`)."
    try: return type(m)() == m
    except Exception: return False


_CONSTRAINTS = {"ge": "\u2265 {}", "gt": "> {}", "le": "\u2264 {}", "lt": "< {}", "multiple_of": "multiple of {}",
                "min_length": "min length {}", "max_length": "max length {}", "pattern": "pattern {!r}"}


def _constraints(info) -> str:
    "The validation rules of a field (bounds, lengths, pattern, strict)."
    out = []
    for m in info.metadata:
        for attr, fmt in _CONSTRAINTS.items():
            v = getattr(m, attr, None)
            if v is not None: out.append(fmt.format(v))
        if getattr(m, "strict", None): out.append("strict")
    return ", ".join(dict.fromkeys(out))


def pydantic_fields_table(cls, modules: tuple[str, ...] = ()) -> str:
    """An HTML table of a pydantic model's fields: name, type, default (or required), rules and description.

    Type and description come from the class source (the annotation as written, the comment on the field's line)
    where it can be found, else from pydantic (`Field(description=...)` always wins)."""
    src: dict[str, dict[str, str]] = {}
    for klass in reversed(cls.__mro__):          # a subclass's comment wins over its parent's
        if hasattr(klass, "model_fields") and klass.__module__ != "pydantic.main":
            src.update(_class_fields_source(klass, modules))
    rows = []
    for name, info in cls.model_fields.items():
        s = src.get(name, {})
        typ = s.get("type") or _type_name(info.annotation)
        desc = info.description or s.get("comment", "")
        default = _default(info)
        default = "<em>required</em>" if default == "required" else f"<code>{html.escape(default)}</code>"
        rows.append(f"<tr><td><code>{html.escape(name)}</code></td><td><code>{html.escape(typ)}</code></td>"
                    f"<td>{default}</td><td>{html.escape(_constraints(info))}</td><td>{_code(desc)}</td></tr>")
    if not rows: return '<p class="fields-none">No fields.</p>'
    return ('<table class="fields"><thead><tr><th>field</th><th>type</th><th>default</th><th>rules</th>'
            '<th>description</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def is_pydantic_model(sym) -> bool:
    "Whether `sym` is a pydantic model class (v2)."
    try: from pydantic import BaseModel
    except ImportError: return False
    return inspect.isclass(sym) and issubclass(sym, BaseModel) and sym is not BaseModel


def anchor_of(name: str) -> str:
    "The anchor nbdev's doc links use for a documented name (`_modidx`: the name lower-cased)."
    return name.lower()


class DocsRenderer(MarkdownRenderer):
    "nbdev's markdown for `show_doc`, as a `doc-entry` element whose `data-name` and anchor name the symbol."
    modules: tuple[str, ...] = ()      # where a notebook-defined class's exported twin (and its source) lives
    def _signature_md(self) -> str:
        if is_pydantic_model(self.sym):
            bases = ", ".join(b.__name__ for b in self.sym.__bases__)
            return f"```python\nclass {self.sym.__name__}({bases})\n```"
        sig = str(self.dm)
        if inspect.isclass(self.sym) and sig.startswith("def "): sig = "class " + sig[4:]
        return f"```python\n{sig}\n```"

    def _repr_markdown_(self) -> str:
        a, lvl, nm = anchor_of(self.nm), self.title_level, html.escape(self.nm)
        head = (f'<h{lvl} class="doc-name" id="{html.escape(a)}"><code>{nm}</code>'
                f'<a class="anchor-link" href="#{html.escape(a)}">\u00b6</a></h{lvl}>')
        parts = [f'<div class="doc-entry" data-name="{nm}" id="entry-{html.escape(a)}">\n{head}', self._signature_md()]
        if self.docs: parts.append(re.sub(r"^(\s*)(.+)", r"\1*\2*", self.docs, count=1))  # nbdev's italic summary
        if is_pydantic_model(self.sym): parts.append(pydantic_fields_table(self.sym, self.modules))
        return "\n\n".join(parts) + "\n\n</div>"


def show_doc(sym, renderer=None, name: str | None = None, title_level: int = 3):
    "nbdev's `show_doc` with the offline renderer."
    return _nbdev_show_doc(sym, renderer=renderer or DocsRenderer, name=name, title_level=title_level)


def make_show_doc(modules: list[str]):
    "`show_doc` for a notebook exporting into `modules` (where its classes' sources are read from)."
    renderer = type("DocsRenderer", (DocsRenderer,), {"modules": tuple(modules)})
    return functools.partial(show_doc, renderer=renderer)
