"""Package-level contracts: the export is in sync with the notebooks, the public API is pinned and documented."""
import ast
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

import tsfm_wb
from tsfm_wb._modidx import d as MODIDX

MODULES = sorted(MODIDX["syms"])
API_PIN = REPO_ROOT / "tests" / "public_api.json"


def _run_check(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TSFM_WB_VENV_BIN": str(Path(sys.executable).parent)}
    return subprocess.run(["bash", str(root / ".ci" / "check_export.sh")], capture_output=True, text=True, env=env)


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    for name in ("nbs", "tsfm_wb", ".ci"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
    shutil.copy(REPO_ROOT / "settings.ini", tmp_path / "settings.ini")
    return tmp_path


def test_export_in_sync(repo_copy: Path):
    res = _run_check(repo_copy)
    assert res.returncode == 0, res.stderr
    assert "export in sync" in res.stdout


def test_hand_edit_is_caught(repo_copy: Path):
    core = repo_copy / "tsfm_wb" / "core.py"
    core.write_text(core.read_text() + "\nHAND_EDITED = True\n")
    res = _run_check(repo_copy)
    assert res.returncode == 1
    assert "export out of sync" in res.stderr and "HAND_EDITED" in res.stderr


def _public_api() -> dict[str, list[str]]:
    "Each module's __all__, and the front door's (key 'tsfm_wb')."
    return {m: sorted(importlib.import_module(m).__all__) for m in MODULES} | {"tsfm_wb": sorted(tsfm_wb.__all__)}


def test_public_api_pinned():
    """Like httpx's test_exported_members: the public surface changes only on purpose (`make api-pin`)."""
    pinned = json.loads(API_PIN.read_text())
    assert _public_api() == pinned, "public API changed: review it, then run `make api-pin`"


@pytest.mark.parametrize("module", MODULES)
def test_public_callables_have_docstrings(module: str):
    mod = importlib.import_module(module)
    undocumented = [n for n in mod.__all__ if callable(obj := getattr(mod, n))
                    and not (obj.__doc__ or "").strip()]
    assert not undocumented, f"{module}: public names without a docstring: {undocumented}"


def test_module_docstrings_and_version():
    assert tsfm_wb.__version__
    for m in MODULES:
        assert (importlib.import_module(m).__doc__ or "").strip(), f"{m} has no module docstring (notebook blockquote)"


_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "torch"}
_PICKLE_CALLS = {"read_pickle", "to_pickle", "loads", "dumps"}


def _pickle_uses(src: str) -> list[str]:
    """Every place in `src` that could pickle or unpickle, found on the syntax tree."""
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, kw = node.func.attr, {k.arg: k.value for k in node.keywords}
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if name in _PICKLE_CALLS and owner not in ("json", "orjson"):
                found.append(f"{owner}.{name}(...) line {node.lineno}")
            if name == "load" and owner in ("np", "numpy") and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                found.append(f"np.load without allow_pickle=False line {node.lineno}")
            if name == "load_model" and isinstance(kw.get("safe_mode"), ast.Constant) and kw["safe_mode"].value is False:
                found.append(f"load_model(safe_mode=False) line {node.lineno}")
    return found


def test_pickle_detector_catches_each_form():
    bad = ("import pickle", "from joblib import load", "df.to_pickle('x')", "pd.read_pickle('x')",
           "np.load('a.npz')", "np.load('a.npz', allow_pickle=True)", "keras.models.load_model(p, safe_mode=False)")
    for src in bad: assert _pickle_uses(src), src
    assert not _pickle_uses("np.load('a.npz', allow_pickle=False); json.loads('{}')")


def test_no_pickle_anywhere():
    """Nothing in the package may pickle or unpickle: state is JSON, npz (allow_pickle=False), .keras, ONNX."""
    offenders = {py.name: uses for py in sorted((REPO_ROOT / "tsfm_wb").rglob("*.py")) if (uses := _pickle_uses(py.read_text()))}
    assert not offenders, offenders


# ---- the book's order is the import order --------------------------------------------------------------------------
_NB_NUMBER = re.compile(r"^(\d+)([a-z]?)_")
_IMPORTS = re.compile(r"(?:from|import)\s+(tsfm_wb(?:\.[a-z_]+)+)")


def _book() -> list[tuple[tuple[int, str], Path, dict]]:
    "Numbered notebooks of the book (not the unnumbered index tour, not the papermill notebooks), in book order."
    out = []
    for nb in sorted(REPO_ROOT.joinpath("nbs").rglob("*.ipynb")):
        m = _NB_NUMBER.match(nb.name)
        if m and "papermill" not in nb.parts and ".ipynb_checkpoints" not in nb.parts:
            out.append(((int(m.group(1)), m.group(2)), nb, json.loads(nb.read_text())))
    return sorted(out, key=lambda t: t[0])


def _defined_module(nb: dict) -> str | None:
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("#| default_exp"):
            mod = src.split()[2].removesuffix(".__init__")
            return "tsfm_wb" if mod == "__init__" else f"tsfm_wb.{mod}"
    return None


def test_book_order_is_import_order():
    """No notebook imports a module that a later notebook defines (the package root, the lazy front door, aside)."""
    book = _book()
    order = {mod: key for key, _, nb in book if (mod := _defined_module(nb))}
    assert len(order) >= 20, order
    late = []
    for key, path, nb in book:
        src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        for mod in set(_IMPORTS.findall(src)):
            owner = next((m for m in sorted(order, key=len, reverse=True) if mod == m or mod.startswith(m + ".")), None)
            if owner not in (None, "tsfm_wb") and order[owner] > key:
                late.append(f"{path.relative_to(REPO_ROOT)} imports {mod} (defined later, in notebook {order[owner]})")
    assert not late, "\n".join(late)


def test_book_numbers_are_unique():
    keys = [key for key, _, _ in _book()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_every_notebook_names_its_kernel():
    """papermill and JupyterLab read the kernel and language from the notebook: no -k/--language needed."""
    for nb in sorted(REPO_ROOT.joinpath("nbs").rglob("*.ipynb")):
        meta = json.loads(nb.read_text())["metadata"]
        assert meta.get("kernelspec", {}).get("name") == "python3", nb
        assert meta.get("kernelspec", {}).get("language") == "python" and meta.get("language_info", {}).get("name") == "python", nb


MAX_MODULE_LINES = 400
PACKAGE = REPO_ROOT / "tsfm_wb"


def _package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py" and "__pycache__" not in p.parts)


def test_no_module_over_400_lines():
    """One concern per module: none of tsfm_wb/ (the generated _modidx.py aside) is longer than 400 lines."""
    long = {str(p.relative_to(REPO_ROOT)): n for p in _package_modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by concern: {long}"


def _assigned_methods(source: str) -> list[str]:
    """Module-level `Class.name = function` statements (a function, lambda or other callable attached by assignment)."""
    tree = ast.parse(source)
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None: continue
        if not isinstance(node.value, (ast.Name, ast.Lambda, ast.Attribute)): continue   # a docstring or a constant is data
        for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and (t.value.id in classes or t.value.id[:1].isupper()):
                found.append(f"{t.value.id}.{t.attr} (line {node.lineno})")
    return found


def test_assigned_method_detector_catches_it():
    src = "class A:\n    pass\n\ndef _f(self):\n    return 1\n\nA.f = _f\nB.g = lambda self: 2\nA.__doc__ = 'data'\nx = 1\n"
    assert _assigned_methods(src) == ["A.f (line 7)", "B.g (line 8)"]
    assert _assigned_methods("class A:\n    x = 1\n") == []


def test_no_method_attached_by_assignment():
    """Methods live in the class or under fastcore's @patch with their public names, never `Class.m = _fn`."""
    found = {str(p.relative_to(REPO_ROOT)): hits for p in _package_modules()
             if (hits := _assigned_methods(p.read_text(encoding="utf-8")))}
    assert not found, found


def test_index_maps_every_notebook():
    """The book's first page lists every notebook, so a reader can find any part from it."""
    index = json.loads((REPO_ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in index["cells"] if c["cell_type"] == "markdown")
    nbs = REPO_ROOT / "nbs"
    missing = [str(p.relative_to(nbs).with_suffix("")) for p in sorted(nbs.rglob("*.ipynb"))
               if p.name != "index.ipynb" and ".ipynb_checkpoints" not in p.parts
               and f"`{p.relative_to(nbs).with_suffix('')}`" not in text]
    assert not missing, f"add these notebooks to the map in nbs/index.ipynb: {missing}"
