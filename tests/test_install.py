"""A regular (non-editable) install, used from an empty directory: the package is a library, not a folder.

Builds a wheel of the clone, installs it without dependencies into a fresh virtual environment whose
dependencies come from the project's own environment (a `.pth` line; nothing is downloaded), and runs
everything from an empty temporary working directory: the front door, every default config, a
`TSFMRunner` forecast against the fake tollama daemon, and the service started with
`python -m tsfm_wb serve --tollama-url ...`.
"""
import json
import os
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    "(python of a fresh venv with the wheel installed, an empty working directory)."
    root = tmp_path_factory.mktemp("install")
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO_ROOT)],
                   check=True, capture_output=True, text=True, cwd=root)
    wheel = next(dist.glob("tsfm_wb-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # dependencies, not tsfm_wb itself
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True)
    work = root / "empty"; work.mkdir()
    return py, work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSFM_WB_", "PYTHONPATH"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(py: Path, cwd: Path, code: str) -> str:
    res = subprocess.run([str(py), "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_the_wheel_is_what_gets_imported(installed):
    py, work = installed
    out = json.loads(_run(py, work, """
        import json, tsfm_wb, tsfm_wb.core
        from tsfm_wb.experiments.grid import papermill_dir
        print(json.dumps({"file": tsfm_wb.core.__file__, "version": tsfm_wb.__version__, "papermill": str(papermill_dir()),
                          "names": len(tsfm_wb.__all__)}))"""))
    assert "site-packages" in out["file"] and str(REPO_ROOT) not in out["file"]
    assert "site-packages" in out["papermill"] and out["version"] != "0+unknown" and out["names"] > 20


def test_every_default_config_loads_from_an_empty_directory(installed):
    py, work = installed
    out = json.loads(_run(py, work, """
        import json
        from tsfm_wb.tsfm.runner.settings import RunnerConfig, load_runner_config
        from tsfm_wb.tsfm.runner.licensing import LicenseGuard
        from tsfm_wb.tsfm.tollama import load_tollama_config
        from tsfm_wb.tsfm.postprocess import load_postprocess_settings
        from tsfm_wb.tsfm.conformal import load_conformal_settings
        from tsfm_wb.tsfm.alerts import load_alert_settings
        from tsfm_wb.tsfm.rollout import load_rollout_settings
        from tsfm_wb.lab.edge_gate import load_gate
        loaded = {"runner": load_runner_config(), "tollama": load_tollama_config(), "postprocess": load_postprocess_settings(),
                  "conformal": load_conformal_settings(), "alerts": load_alert_settings(), "rollout": load_rollout_settings(),
                  "edge_gate": load_gate()}
        guard = LicenseGuard.from_yaml()
        print(json.dumps({"loaded": sorted(loaded), "runner_is_default": loaded["runner"] == RunnerConfig(),
                          "models": sorted(guard.registry.models)}))"""))
    assert out["loaded"] == sorted(["runner", "tollama", "postprocess", "conformal", "alerts", "rollout", "edge_gate"])
    assert out["runner_is_default"] and "mock" in out["models"]


def test_a_runner_forecast_against_the_fake_daemon(installed):
    py, work = installed
    out = json.loads(_run(py, work, """
        import asyncio, json
        import tsfm_wb
        from tsfm_wb.tsfm.fake_tollama import serve_fake_tollama
        async def main(url):
            cfg = tsfm_wb.RunnerConfig(env="research")
            async with tsfm_wb.TSFMRunner(cfg, adapter=tsfm_wb.TollamaAdapter(tsfm_wb.TollamaConfig(base_url=url))) as runner:
                req = tsfm_wb.TSFMForecastRequest(market_id="m1", as_of_ts="2026-01-01T00:00:00Z", y=[0.4 + 0.001 * i for i in range(64)],
                                                 model={"model_name": "mock"})
                return (await runner.forecast(req)).meta
        with serve_fake_tollama() as fake: meta = asyncio.run(main(fake.url))
        print(json.dumps({"fallback": meta.fallback_used, "runtime": meta.runtime}))"""))
    assert out == {"fallback": False, "runtime": "tollama"}


def test_the_service_starts_with_one_flag_pointing_at_a_daemon(installed):
    py, work = installed
    fake = subprocess.Popen([str(py), "-c", textwrap.dedent("""
        import sys, time
        from tsfm_wb.tsfm.fake_tollama import serve_fake_tollama
        with serve_fake_tollama() as f:
            print(f.url, flush=True); time.sleep(600)""")], cwd=work, stdout=subprocess.PIPE, text=True, env=_env())
    port, service = _free_port(), None
    try:
        url = fake.stdout.readline().strip()
        service = subprocess.Popen([str(py), "-m", "tsfm_wb", "serve", "--tollama-url", url, "--port", str(port)], cwd=work,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120   # liveness allowance, not a speed claim
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200: break
            except httpx.TransportError: pass
            assert service.poll() is None and time.monotonic() < deadline, service.stderr.read() if service.poll() is not None else "no /health"
            time.sleep(0.2)
        body = {"market_id": "m1", "as_of_ts": "2026-01-01T00:00:00Z", "y": [0.4 + 0.001 * i for i in range(64)],
                "model": {"model_name": "chronos2"}}
        resp = httpx.post(f"{base}/tsfm/forecast", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        meta = resp.json()["meta"]
        assert not meta["fallback_used"] and meta["runtime"] == "tollama", meta
    finally:
        for p in (service, fake):
            if p is not None: p.terminate(); p.wait(timeout=30)


def test_plain_papermill_runs_a_matrix_notebook(tmp_path: Path):
    """`papermill in.ipynb out.ipynb -p k v`, no -k and no --language: the notebook names its kernel and language."""
    config = {"config": {"backend": "baseline", "dataset": "polymarket", "horizon": 6, "min_context": 16, "seeds": [0],
                         "calibrator": {"min_samples": 100}}}
    cmd = [sys.executable, "-m", "papermill", str(REPO_ROOT / "nbs" / "papermill" / "tsfm_eval.ipynb"), "out.ipynb",
           "-p", "run_dir", str(tmp_path / "run"), "-y", json.dumps(config)]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) and (tmp_path / "out.ipynb").is_file()
