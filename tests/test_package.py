"""Package-level contracts: the export is in sync with the notebooks, the public API is pinned and documented."""
import importlib
import inspect
import json
import os
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
    return {m: sorted(importlib.import_module(m).__all__) for m in MODULES}


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


def test_no_pickle_anywhere():
    """Nothing in the package may unpickle: no pickle imports and no allow_pickle=True."""
    for py in (REPO_ROOT / "tsfm_wb").glob("*.py"):
        src = py.read_text()
        assert "import pickle" not in src and "allow_pickle=True" not in src and "joblib" not in src, py.name
