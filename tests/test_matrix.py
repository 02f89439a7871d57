"""The experiment matrix: deterministic run ids, failure records, resuming after a kill, Dask = process pool.

The tests run a tiny grid of *toy* notebooks (papermill, real kernels, milliseconds of work each) that log
every execution to a file, so re-executions are counted exactly; the same grid through the process pool and a
Dask LocalCluster gives the same results. The real `nbs/papermill/train_eval.ipynb` runs through the matrix in
test_report.py (and training determinism is checked in test_train.py).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

from conftest import REPO_ROOT

from tsfm_wb.core import ConfigError, read_json
from tsfm_wb.experiments.grid import ERROR_FILE, METRICS_FILE, PARITY_OUTPUT, SPEC_FILE, expand_grid, load_matrix_config
from tsfm_wb.experiments.matrix import run_matrix, run_status

LOG = "executions.log"
# Toy step notebooks: log the execution, fail when the model type says so, write the step's output.
_TRAIN = """import json, pathlib, random
run = pathlib.Path(run_dir); run.mkdir(parents=True, exist_ok=True)
with open(pathlib.Path(run).parent.parent / 'executions.log', 'a') as f: f.write(f'{run.name} train_eval\\n')
if config['model_type'] == 'boom': raise ValueError('boom model cannot train')
rng = random.Random(f"{config['model_type']}-{config['seed']}")
(run / 'metrics.json').write_text(json.dumps({'test': {'model': {'rmse': rng.random()}}, 'seed': config['seed']}))"""
_EDGE = """import json, pathlib
run = pathlib.Path(run_dir)
with open(run.parent.parent / 'executions.log', 'a') as f: f.write(f'{run.name} edge_parity\\n')
(run / 'edge').mkdir(exist_ok=True); (run / 'edge' / 'parity.json').write_text(json.dumps({'gate': options}))"""


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def _toy_repo(root: Path, model_types=("lstm", "gru"), seeds=(1, 2), artifacts="artifacts") -> Path:
    "A scratch repository: toy notebooks, a base train config and a matrix config; returns the config path."
    (root / "nbs").mkdir(parents=True, exist_ok=True)
    _notebook(root / "nbs" / "train_eval.ipynb", "run_dir = ''\nconfig = {}", _TRAIN)
    _notebook(root / "nbs" / "edge_parity.ipynb", "run_dir = ''\ngate_config = None\noptions = {}", _EDGE)
    (root / "train.yaml").write_text("dataset: co2\nepochs: 50\n")
    cfg = {"name": "toy", "artifacts_dir": artifacts, "notebooks_dir": "nbs", "edge_gate": None, "workers": 2,
           "spline": {"data_modes": {"univariate": "train.yaml"}, "model_types": list(model_types), "seeds": list(seeds),
                      "check_train": False},                       # the toy notebook reads its own config
           "profiles": {"quick": {"train": {"epochs": 2}, "edge": {"n_latency_runs": 100}}, "full": {}}}
    path = root / f"matrix_{artifacts}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _executions(root: Path) -> list[str]:
    p = root / LOG
    return p.read_text().splitlines() if p.exists() else []


def test_grid_ids_are_deterministic_and_config_sensitive(tmp_path):
    cfg_path = _toy_repo(tmp_path)
    a, b = expand_grid(cfg_path, "quick", tmp_path), expand_grid(cfg_path, "quick", tmp_path)
    assert [s.run_id for s in a] == [s.run_id for s in b] and len({s.run_id for s in a}) == 4
    assert a[0].run_id.startswith("lstm-univariate-s1-") and a[0].steps[0].parameters["config"]["epochs"] == 2
    full = expand_grid(cfg_path, "full", tmp_path)                        # 50 epochs: other runs
    assert not {s.run_id for s in a} & {s.run_id for s in full}
    (tmp_path / "train.yaml").write_text("dataset: co2\nepochs: 50\nlookback: 9\n")   # editing the base config changes every id
    assert not {s.run_id for s in a} & {s.run_id for s in expand_grid(cfg_path, "quick", tmp_path)}
    with pytest.raises(ConfigError, match="unknown profile 'slow'"):
        expand_grid(cfg_path, "slow", tmp_path)
    shipped = expand_grid(load_matrix_config(REPO_ROOT / "configs" / "matrix.yaml"), "quick", REPO_ROOT)
    assert sum(s.kind == "spline" for s in shipped) == 12 and sum(s.kind == "tsfm" for s in shipped) >= 1


def test_failing_run_leaves_error_record_and_others_finish(tmp_path):
    cfg_path = _toy_repo(tmp_path, model_types=("lstm", "boom"), seeds=(1,))
    res = run_matrix(cfg_path, "quick", root=tmp_path, progress=False)
    status = {o["run_id"].split("-")[0]: o for o in res.outcomes}
    assert status["lstm"]["status"] == "done" and status["boom"]["status"] == "failed"
    boom = next(s for s in res.specs if s.labels["model_type"] == "boom")
    err = read_json(Path(boom.run_dir) / ERROR_FILE)
    assert (err["step"], err["exception"], err["cell_index"]) == ("train_eval", "ValueError", 2)   # after the injected parameters
    assert err["notebook"] == str(tmp_path / "nbs" / "train_eval.ipynb") and "boom model cannot train" in err["message"]
    assert "raise ValueError" in err["cell_source"] and "ValueError" in err["traceback"]
    assert Path(err["executed_notebook"]).exists() and not (Path(boom.run_dir) / METRICS_FILE).exists()
    assert (Path(boom.run_dir) / "kernel.log").is_file()                 # the kernels' own output, kept off the terminal
    assert run_status(boom) == "failed" and read_json(res.manifest)["counts"] == {"done": 1, "skipped": 0, "failed": 1}
    again = run_matrix(cfg_path, "quick", root=tmp_path, progress=False)   # the failed run is retried, the done one skipped
    assert sorted(o["status"] for o in again.outcomes) == ["failed", "skipped"]
    assert sorted(_executions(tmp_path)) == sorted([f"{res.specs[0].run_id} train_eval", f"{res.specs[0].run_id} edge_parity",
                                                    f"{boom.run_id} train_eval", f"{boom.run_id} train_eval"])


def _descendants_kill(proc: subprocess.Popen) -> None:
    "Kill the matrix process and everything it started (kernels run in their own sessions), by pid."
    try: tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess: tree = []
    for p in [psutil.Process(proc.pid), *tree]:
        try: p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess: pass
    proc.wait(timeout=30)
    psutil.wait_procs(tree, timeout=10)


def test_killed_matrix_resumes_only_missing_runs(tmp_path):
    cfg_path = _toy_repo(tmp_path, model_types=("lstm",), seeds=(1, 2, 3))
    specs = expand_grid(cfg_path, "quick", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tsfm_wb.experiments.matrix", "--config", str(cfg_path), "--profile", "quick", "--workers", "1",
                             "--no-report"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while sum(run_status(s) == "done" for s in specs) < 2:             # kill once two runs are finished
            assert proc.poll() is None, "the matrix finished before it could be killed"
            assert time.monotonic() < deadline, "no run finished in 120 s"
            time.sleep(0.05)
    finally:
        _descendants_kill(proc)
    finished = [s for s in specs if run_status(s) == "done"]
    assert 2 <= len(finished) < len(specs)
    man = read_json(tmp_path / "artifacts" / "matrix-toy-quick.json")  # the killed matrix left its manifest (up to its last recorded run)
    assert {o["run_id"] for o in man["outcomes"]} <= {s.run_id for s in finished} and man["counts"]["done"] >= 1
    mtimes = {s.run_id: (Path(s.run_dir) / METRICS_FILE).stat().st_mtime_ns for s in finished}
    before = _executions(tmp_path)
    res = run_matrix(cfg_path, "quick", root=tmp_path, max_workers=2, progress=False)
    assert all(run_status(s) == "done" for s in specs)
    assert {o["run_id"] for o in res.outcomes if o["status"] == "skipped"} >= {s.run_id for s in finished}
    after = _executions(tmp_path)[len(before):]
    assert not [line for line in after if line.split()[0] in mtimes], "a finished run was executed again"
    assert mtimes == {s.run_id: (Path(s.run_dir) / METRICS_FILE).stat().st_mtime_ns for s in finished}
    for s in specs:                                                        # every step of every run ran at least once, finished ones once
        n = [line.split()[1] for line in _executions(tmp_path) if line.split()[0] == s.run_id]
        assert set(n) == {"train_eval", "edge_parity"} and (s not in finished or len(n) == 2), (s.run_id, n)


def test_stale_folder_is_cleared_and_rerun(tmp_path):
    cfg_path = _toy_repo(tmp_path, model_types=("lstm",), seeds=(1,))
    spec = expand_grid(cfg_path, "quick", tmp_path)[0]
    d = Path(spec.run_dir); (d / "edge").mkdir(parents=True)
    (d / METRICS_FILE).write_text("{}"); (d / PARITY_OUTPUT).write_text("{}")
    (d / SPEC_FILE).write_text(json.dumps({**spec.model_dump(mode="json"), "config_hash": "0" * 64}))
    assert run_status(spec) == "stale"
    run_matrix(cfg_path, "quick", root=tmp_path, progress=False)
    assert run_status(spec) == "done" and "rmse" in read_json(d / METRICS_FILE)["test"]["model"]


def test_dask_local_gives_the_same_metrics_as_the_process_pool(tmp_path):
    proc = _toy_repo(tmp_path, model_types=("lstm",), seeds=(1, 2), artifacts="art_process")
    dask = _toy_repo(tmp_path, model_types=("lstm",), seeds=(1, 2), artifacts="art_dask")
    a = run_matrix(proc, "quick", root=tmp_path, progress=False)
    b = run_matrix(dask, "quick", root=tmp_path, dask_address="local", max_workers=1, progress=False)
    assert [o["status"] for o in a.outcomes] == [o["status"] for o in b.outcomes] == ["done", "done"], (a.outcomes, b.outcomes)
    assert [s.run_id for s in a.specs] == [s.run_id for s in b.specs]    # same config -> same ids, whatever the folder
    for sa, sb in zip(a.specs, b.specs):                                 # the same parameters reached the notebooks
        assert read_json(Path(sa.run_dir) / METRICS_FILE) == read_json(Path(sb.run_dir) / METRICS_FILE)
        assert (Path(sb.run_dir) / "executed_train_eval.ipynb").exists()
    assert read_json(b.manifest)["executor"] == "dask" and read_json(a.manifest)["executor"] != "dask"
