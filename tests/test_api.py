"""The FastAPI service against the fake tollama daemon: 422 naming the field, /health, /metrics, a real uvicorn server
on 127.0.0.1, the `serve` command line started as a subprocess from an empty folder (one worker and two), and a
property test: 1,000 random requests give either 422 or a valid, bounded forecast. The error-status table, the lazy
module-level app and the command line's argument checks are tested in nbs/tsfm/40_api.ipynb."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tsfm_wb.tsfm.api import create_app
from tsfm_wb.tsfm.fake_tollama import FakeTollama
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.schemas import TSFMForecastRequest, TSFMForecastResponse
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig

REPO = Path(__file__).resolve().parent.parent
T_END = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
PP = PostprocessSettings()
REGISTRY = ModelsRegistry(models={"chronos2": {"license_tag": "apache-2.0"}, "not-installed": {"license_tag": "apache-2.0"},
                                  "moirai-2.0-R-small": {"license_tag": "cc-by-nc-4.0", "research_only": True}},
                          prod={"allowed_models": ["chronos2", "not-installed"]})


class Clock:
    def __init__(self) -> None: self.t = 0.0
    def __call__(self) -> float: return self.t


def body(n: int = 64, **kw) -> dict:
    ts = [(T_END - timedelta(minutes=5 * (n - 1 - i))).isoformat() for i in range(n)]
    return {"market_id": "m-1", "as_of_ts": T_END.isoformat(), "y": [round(0.4 + 0.002 * i, 4) for i in range(n)], "y_ts": ts,
            "liquidity_bucket": "high", **kw}


class Service:
    """The app in-process (ASGITransport) on one event loop, its runner talking to the fake daemon over HTTP."""
    def __init__(self, fake: FakeTollama):
        self.fake, self.clock, self.loop = fake, Clock(), asyncio.Runner()
        adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=10.0, max_retries=0))
        self.runner = TSFMRunner(RunnerConfig(), adapter=adapter, guard=LicenseGuard(REGISTRY), postprocess=PP, clock=self.clock)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runner=self.runner)), base_url="http://svc")

    def post(self, payload: dict | None = None, content: bytes | None = None) -> httpx.Response:
        if content is None: content = json.dumps(payload).encode()
        return self.loop.run(self.client.post("/tsfm/forecast", content=content, headers={"content-type": "application/json"}))

    def get(self, path: str) -> httpx.Response:
        return self.loop.run(self.client.get(path))

    def close(self) -> None:
        self.loop.run(self.client.aclose()); self.loop.run(self.runner.aclose()); self.loop.close()


@pytest.fixture(scope="module")
def fake():
    with FakeTollama() as f:
        yield f


@pytest.fixture(scope="module")
def svc(fake):
    s = Service(fake)
    yield s
    s.close()


# --- contract -----------------------------------------------------------------------------------------------

def test_forecast_ok(svc):
    svc.fake.reset()
    r = svc.post(body())
    assert r.status_code == 200
    resp = TSFMForecastResponse.model_validate_json(r.content)
    assert (resp.meta.runtime, resp.meta.fallback_used, len(resp.band(0.9)), resp.yhat_q_raw is not None) == ("tollama", False, 12, True)


@pytest.mark.parametrize("change, loc", [
    ({"quantiles": [0.9, 0.1]}, ["body", "quantiles"]),
    ({"quantiles": [0.0, 0.5]}, ["body", "quantiles", 0]),
    ({"horizon_steps": 0}, ["body", "horizon_steps"]),
    ({"horizon_steps": 10_000}, ["body", "horizon_steps"]),
    ({"y": [0.5, 1.2]}, ["body", "y"]),
    ({"y_ts": ["2026-02-20T12:00:00Z"]}, ["body"]),
    ({"freq": "5M"}, ["body", "freq"]),
    ({"horizon": 12}, ["body", "horizon"]),
    ({"as_of_ts": "2026-02-20T12:00:00"}, ["body", "as_of_ts"]),
    ({"market_id": None}, ["body", "market_id"]),
])
def test_invalid_request_is_422_naming_the_field(svc, change, loc):
    r = svc.post(body(**change))
    assert r.status_code == 422
    assert any(d["loc"][:len(loc)] == loc for d in r.json()["detail"]), r.json()


def test_nan_and_broken_json_are_422_not_500(svc):
    r = svc.post(content=b'{"market_id": "m", "as_of_ts": 0, "y": [0.1, NaN]}')
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "y"]
    assert "not finite" in r.json()["detail"][0]["msg"]
    assert svc.post(content=b'{"market_id": ').status_code == 422


def test_failures_still_answer_200_with_the_reason(svc):
    svc.fake.reset(error_status=503); svc.clock.t += 1000
    r = svc.post(body(market_id="down"))
    svc.fake.reset()
    resp = TSFMForecastResponse.model_validate_json(r.content)
    assert r.status_code == 200 and (resp.meta.fallback_used, resp.meta.fallback_reason) == (True, "unavailable")


def test_health_and_metrics(svc):
    svc.fake.reset(); svc.clock.t += 1000
    svc.post(body(market_id="h1")); svc.post(body(market_id="h1")); svc.post(body(market_id="h2", liquidity_bucket="low"))
    h = svc.get("/health").json()
    assert (h["status"], h["backend"], h["breaker"], h["env"]) == ("ok", "up", "closed", "prod")
    assert (h["mode"], h["rollout"], h["monitor"]) == ("tsfm", None, None)      # no rollout_config: no rollout, no monitor
    m = svc.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain; version=0.0.4")
    from prometheus_client.parser import text_string_to_metric_families   # the reference parser (pinned test dependency)
    families = {f.name: f for f in text_string_to_metric_families(m.text)}
    assert {"tsfm_requests", "tsfm_cache_hits", "tsfm_fallbacks", "tsfm_breaker_state", "tsfm_request_latency_seconds"} <= set(families)
    low = [s for s in families["tsfm_fallbacks"].samples if s.labels.get("reason") == "low_liquidity"]
    assert low and low[0].value >= 1
    svc.fake.set(down=True)
    try: assert svc.get("/health").json()["status"] == "degraded"
    finally: svc.fake.reset()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_served_by_uvicorn_on_localhost(fake, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                                # no config file anywhere: the built-in defaults
    fake.reset()
    server = uvicorn.Server(uvicorn.Config(create_app(tollama_url=fake.url), host="127.0.0.1", port=_free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True); thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started and time.monotonic() < end: time.sleep(0.01)
        url = f"http://{server.config.host}:{server.config.port}"
        r = httpx.post(f"{url}/tsfm/forecast", json=body(), timeout=5)
        assert r.status_code == 200 and r.json()["meta"]["runtime"] == "tollama" and r.json()["meta"]["served_by"] == "tsfm"
        assert httpx.get(f"{url}/health", timeout=5).json()["backend"] == "up"
    finally:
        server.should_exit = True; thread.join(10)
    assert fake.stats.forecast_requests == 1


# --- the `serve` command line, as a subprocess -------------------------------------------------------------

def _pythonpath() -> str:
    "This checkout's package first on the path of a child process."
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _serve(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    "`python -m tsfm_wb.tsfm.api serve ARGS` started in `cwd`, its output (the log lines) to `log`."
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "tsfm_wb.tsfm.api", "serve", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": _pythonpath(), **(env or {})})


def _wait_for_health(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> dict:
    "Poll /health until it answers (the limit only bounds a hung start; nothing is asserted about the time taken)."
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try: return httpx.get(f"{url}/health", timeout=5).json()
        except httpx.HTTPError: time.sleep(0.2)
    raise AssertionError(f"no answer on {url}/health:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> int:
    "Stop the service as Ctrl-C would; its exit status."
    proc.send_signal(signal.SIGINT)
    try: return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill(); return proc.wait()


def test_serve_from_an_empty_folder_answers_through_the_daemon(fake, tmp_path):
    fake.reset(api_key="s3cret-token")                         # the daemon wants a bearer token
    port, cwd, log = _free_port(), tmp_path / "empty", tmp_path / "service.log"
    cwd.mkdir()
    proc = _serve(["--tollama-url", fake.url, "--port", str(port), "--log-format", "json"], cwd, log,
                  env={"TSFM_WB_TOLLAMA_TOKEN": "s3cret-token"})
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_for_health(proc, url, log)
        r = httpx.post(f"{url}/tsfm/forecast", json=body(), timeout=30)
    finally:
        code = _stop(proc); fake.reset()
    assert (health["status"], health["backend"], health["env"]) == ("ok", "up", "prod")
    meta = r.json()["meta"]
    assert r.status_code == 200 and (meta["fallback_used"], meta["runtime"], meta["served_by"]) == (False, "tollama", "tsfm")
    assert code == 0 and list(cwd.iterdir()) == []             # nothing read or written where it was started
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]   # every line a JSON object
    assert any(x["msg"] == "forecast" and x["market_id"] == "m-1" and x["runtime"] == "tollama" for x in lines)
    assert "s3cret-token" not in log.read_text()


def test_serve_passes_its_settings_to_worker_processes(fake, tmp_path):
    fake.reset(api_key="t0ken")
    svc = tmp_path / "svc"; svc.mkdir()
    (svc / "models.yaml").write_text("models:\n  chronos2: {license_tag: apache-2.0}\nprod:\n  allowed_models: [chronos2]\n")
    (svc / "runner.yaml").write_text("models_config: models.yaml\ninput: {min_points: 100}\n")   # a path relative to the file
    port, log = _free_port(), tmp_path / "service.log"
    proc = _serve(["--config", "svc/runner.yaml", "--tollama-url", fake.url, "--tollama-token", "t0ken", "--port", str(port),
                   "--workers", "2", "--log-level", "WARNING"], tmp_path, log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(proc, url, log)
        short, long = (httpx.post(f"{url}/tsfm/forecast", json=body(n), timeout=30).json()["meta"] for n in (64, 120))
    finally:
        code = _stop(proc); fake.reset()
    assert (short["fallback_used"], short["fallback_reason"]) == (True, "too_few_points")    # the worker read --config
    assert (long["fallback_used"], long["runtime"]) == (False, "tollama")                      # ... and the URL and token
    assert code == 0 and "t0ken" not in log.read_text()


def test_serve_refuses_bad_settings_before_serving(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tsfm_wb.tsfm.api", "serve", "--config", "missing.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": _pythonpath()})
    assert out.returncode == 2 and "missing.yaml: config file not found" in out.stderr


@pytest.mark.parametrize("args, says", [(["--port", "-5"], "port -5 is outside 0..65535"), (["--workers", "0"], "0 is not a count")])
def test_serve_and_serve_models_refuse_bad_numbers_in_one_line(args, says, capsys):
    from tsfm_wb.tsfm import api, model_server
    assert api.main(args) == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop: model_server.main(args)          # argparse's usage error, as any CLI
    assert stop.value.code == 2 and says in capsys.readouterr().err


# --- property: 1,000 random requests --------------------------------------------------------------------------

FREQS = {"5m": 300, "1h": 3600, "30s": 30, "5min": 300, "1d": 86400}
FREQ_CHOICES = ("5m", "5m", "5m", "5min", "1h", "30s", "1d")
BAD_VALUES = (float("nan"), float("inf"), -0.01, 1.01)
BREAKS = ("market_id", "horizon", "quantiles", "freq", "y_ts_len", "y_ts_late", "y_ts_order", "liquidity", "transform",
          "bad_value", "empty_y", "unknown_field", "model")


def _series(draw, n: int) -> list[float]:
    "A probability path: random walk, flat at 0 or 1, values at the edges, noise, or jumps."
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["walk", "walk", "zeros", "ones", "edges", "noise", "jumpy"]))
    if shape == "walk": return (1 / (1 + np.exp(-(rng.normal(0, 2) + np.cumsum(rng.normal(0, 0.1, n)))))).tolist()
    if shape == "zeros": return [0.0] * n
    if shape == "ones": return [1.0] * n
    if shape == "edges": return rng.choice([0.0, 1e-12, 1 - 1e-12, 1.0], n).tolist()
    if shape == "noise": return rng.random(n).tolist()
    return np.where(rng.random(n) < 0.5, 0.01, 0.99).tolist()


@st.composite
def payloads(draw) -> dict:
    """Valid requests of every kind, and about half the time one thing broken."""
    brk = draw(st.sampled_from((None,) * len(BREAKS) + BREAKS))
    n = 0 if brk == "empty_y" else draw(st.one_of(st.sampled_from([1, 31, 32, 64, 288, 289, 320]), st.integers(33, 320)))
    y = _series(draw, n)
    if brk == "bad_value": y[draw(st.integers(0, n - 1))] = draw(st.sampled_from(BAD_VALUES))
    freq = draw(st.sampled_from(FREQ_CHOICES)) if brk != "freq" else draw(st.sampled_from(["5M", "weekly", "0m", ""]))
    p = {"market_id": draw(st.sampled_from(["m-1", "m-2"])) if brk != "market_id" else draw(st.sampled_from(["", "x" * 201])),
         "as_of_ts": T_END.isoformat(), "freq": freq, "y": y}
    p["horizon_steps"] = draw(st.integers(1, 48)) if brk != "horizon" else draw(st.sampled_from([0, -1, 289, 12.5]))
    p["quantiles"] = (draw(st.one_of(st.just([0.1, 0.5, 0.9]), st.lists(st.floats(0.001, 0.999), min_size=1, max_size=5, unique=True).map(sorted)))
                      if brk != "quantiles" else draw(st.sampled_from([[], [0.9, 0.1], [0.0, 0.5], [0.5, 1.0], [0.2, 0.2]])))
    step = FREQS.get(freq, 300)
    if draw(st.booleans()) or brk in ("y_ts_len", "y_ts_late", "y_ts_order"):
        secs = [-step * (n - 1 - i) for i in range(n)]
        if draw(st.sampled_from([False] * 4 + [True])) and n > 2: secs = [s - 7200 if i < n // 2 else s for i, s in enumerate(secs)]   # a gap
        if brk == "y_ts_len": secs = secs + [step]
        if brk == "y_ts_late": secs = [s + step for s in secs]
        if brk == "y_ts_order": secs = secs[::-1] if n > 1 else secs + secs
        p["y_ts"] = [(T_END + timedelta(seconds=s)).isoformat() for s in secs]
    p["liquidity_bucket"] = draw(st.sampled_from([None, "high", "high", "mid", "low"])) if brk != "liquidity" else "bogus"
    p["model"] = {"model_name": draw(st.sampled_from(["chronos2"] * 8 + ["not-installed", "moirai-2.0-R-small", "unlisted"]))}
    if brk == "model": p["model"] = {"model_name": ""}
    p["transform"] = draw(st.sampled_from([{"kind": "logit"}, {"kind": "none"}, {"kind": "logit", "eps": 1e-3}])) if brk != "transform" else {"kind": "probit"}
    if brk == "unknown_field": p["horizon"] = 12
    return {**{k: v for k, v in p.items() if v is not None}, "__break__": brk}


FAULT_OPTIONS = [{}] * 8 + [{"error_status": 500}, {"malformed_json": True}, {"wrong_shapes": "short"}, {"error_status": 429}]


# 400 examples in the suite (every broken field and fault option is drawn many times); TSFM_WB_API_EXAMPLES for more.
@settings(max_examples=int(os.environ.get("TSFM_WB_API_EXAMPLES", "400")), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(payload=payloads(), fault=st.sampled_from(range(len(FAULT_OPTIONS))))
def test_random_requests_get_422_or_a_valid_bounded_forecast(svc, payload, fault):
    svc.fake.reset(**FAULT_OPTIONS[fault])
    svc.clock.t += 1000                                        # every example starts with a closed breaker and a cold cache
    payload = dict(payload); brk = payload.pop("__break__")    # what the generator broke on purpose (None: nothing)
    content = json.dumps(payload, allow_nan=True).encode()
    try: TSFMForecastRequest.model_validate(json.loads(content)); valid = True
    except ValidationError: valid = False
    r = svc.post(content=content)
    event(f"status {r.status_code}")
    if brk is not None:                                        # independent of the schema under test: must be refused
        assert not valid and r.status_code == 422, f"broken field {brk!r} was accepted: {r.status_code}"
    if not valid:
        assert r.status_code == 422 and r.json()["detail"] and all(d["loc"][0] == "body" for d in r.json()["detail"])
        return
    assert r.status_code == 200, r.text
    resp = TSFMForecastResponse.model_validate_json(r.content)
    event(f"answered by {resp.meta.runtime} ({resp.meta.fallback_reason})")
    for bands in (resp.yhat_q, resp.yhat_q_raw):
        q = np.array([bands[k] for k in bands]).T                                      # [H, Q]
        assert q.shape == (payload.get("horizon_steps", 12), len(payload.get("quantiles", [0.1, 0.5, 0.9])))
        assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all() and (np.diff(q, axis=1) >= 0).all()
        if q.shape[1] >= 2:
            width = q[:, -1] - q[:, 0]
            assert (width >= PP.min_width - 1e-9).all() and (width <= PP.max_width + 1e-9).all(), width
    assert resp.meta.fallback_used == (resp.meta.fallback_reason is not None)
