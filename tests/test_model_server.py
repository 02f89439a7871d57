"""The model server over real HTTP on 127.0.0.1, driven by the project's TollamaAdapter (never patched)."""
import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pytest

from tsfm_wb.tsfm.baselines import inv_logit, logit
from tsfm_wb.tsfm.model_server import model_server_process, serve_models
from tsfm_wb.tsfm.schemas import FallbackReason
from tsfm_wb.tsfm.served_models import default_registry
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig
from tsfm_wb.tsfm.tollama_protocol import (BackendRequestError, BackendTimeoutError, BackendUnavailableError, ModelNotFoundError,
                                          TollamaSeries)

MODELS = default_registry().names()
QUANTILES = [0.05, 0.1, 0.5, 0.9, 0.95]
T0 = datetime(2026, 2, 20, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def server():
    with serve_models(workers=2) as srv:
        yield srv.wait_ready()


@pytest.fixture()
def srv(server):
    yield server
    server.set(api_key=None, default_timeout_s=300.0, latency_s=0.0)


def _series(n_series: int = 3, n: int = 80, seed: int = 0) -> list[TollamaSeries]:
    """Logit-space series of simulated probabilities on a 5-minute grid, as the runner sends them."""
    rng = np.random.default_rng(seed)
    ts = tuple(T0 + timedelta(minutes=5 * i) for i in range(n))
    out = []
    for i in range(n_series):
        p = inv_logit(np.cumsum(rng.normal(0, 0.08, n)) + rng.uniform(-3, 3))
        out.append(TollamaSeries(f"m-{i}", tuple(float(v) for v in logit(p)), ts))
    return out


def _forecast(url: str, series, model: str, horizon: int = 6, quantiles=QUANTILES, **cfg):
    async def go():
        async with TollamaAdapter(TollamaConfig(base_url=url, deadline_s=120.0, max_retries=0, api_key_env=None, **cfg)) as ad:
            return await ad.forecast(series, model=model, horizon=horizon, quantiles=quantiles, freq="5m", request_id="rid-test")
    return asyncio.run(go())


@pytest.mark.parametrize("endpoint, stream", [("/v1/forecast", False), ("/api/forecast", True), ("/api/forecast", False)])
@pytest.mark.parametrize("model", MODELS)
def test_every_model_answers_a_multi_series_request(srv, model, endpoint, stream):
    series = _series()
    fc = _forecast(srv.url, series, model, endpoint=endpoint, stream=stream)
    assert fc.model == model and fc.request_id == "rid-test" and sorted(fc.forecasts) == ["m-0", "m-1", "m-2"]
    assert not [w for w in fc.warnings if "did not echo" in w or "neither" in w]
    for s in series:
        q = inv_logit(fc.forecasts[s.id].as_array(QUANTILES))          # [Q, H] probabilities
        assert q.shape == (5, 6) and ((q > 0) & (q < 1)).all()
        assert (np.diff(q, axis=0) >= 0).all(), "quantiles cross"
        assert (q[-1] - q[0] > 0).all(), "zero-width band"
        assert fc.forecasts[s.id].timestamps[0] == s.timestamps[-1] + timedelta(minutes=5)


def test_statistical_bands_follow_their_series(srv):
    """Each answer is the fit of its own series: a calm and a jumpy series get different band widths."""
    ts = tuple(T0 + timedelta(minutes=5 * i) for i in range(120))
    rng = np.random.default_rng(3)
    calm = TollamaSeries("calm", tuple(np.cumsum(rng.normal(0, 0.01, 120)).tolist()), ts)
    jumpy = TollamaSeries("jumpy", tuple(np.cumsum(rng.normal(0, 0.3, 120)).tolist()), ts)
    for model in ("auto-ets", "auto-theta", "naive"):
        fc = _forecast(srv.url, [calm, jumpy], model)
        width = {k: v.quantiles["0.95"][0] - v.quantiles["0.05"][0] for k, v in fc.forecasts.items()}
        assert width["jumpy"] > 5 * width["calm"], (model, width)


def test_per_series_warnings_reach_the_client(srv):
    short = _series(1, n=4)[0]
    flat = TollamaSeries("flat", (-2.0,) * 40, tuple(T0 + timedelta(minutes=5 * i) for i in range(40)))
    fc = _forecast(srv.url, [short, flat], "auto-ets")
    assert any(w.startswith("tollama: auto-ets: series 'm-0': AutoETS could not fit 4 points") for w in fc.warnings), fc.warnings
    assert any("series 'flat'" in w and "heuristic" in w for w in fc.warnings), fc.warnings


def test_unknown_model_is_404_with_the_served_models_in_the_hint(srv):
    with pytest.raises(ModelNotFoundError) as ei:
        _forecast(srv.url, _series(1), "chronos2")
    e = ei.value
    assert e.status_code == 404 and e.reason is FallbackReason.MODEL_NOT_FOUND and e.detail == "model 'chronos2' is not installed"
    assert "tollama pull" in e.hint and e.hint.endswith("Models served here: " + ", ".join(MODELS) + ".")


def test_bearer_auth_on_every_route(srv):
    srv.set(api_key="s3cret")
    with pytest.raises(BackendRequestError) as ei:
        _forecast(srv.url, _series(1), "naive")
    assert ei.value.status_code == 401 and ei.value.detail == "missing bearer token"
    assert httpx.get(f"{srv.url}/health/ready").status_code == 401
    fc = _forecast(srv.url, _series(1), "naive", api_key="s3cret")
    assert list(fc.forecasts) == ["m-0"]


def test_timeout_is_the_daemons_503_and_the_worker_is_replaced(srv):
    before = srv.backend.pool.status()["restart_total"]
    srv.set(default_timeout_s=1.0)                      # the timeout of requests that send none
    with pytest.raises(BackendTimeoutError) as ei:      # 30 ARIMA fits take several seconds
        _forecast(srv.url, _series(30, n=300), "auto-arima", send_daemon_timeout=False)
    assert ei.value.status_code == 503 and ei.value.detail == "runner call timed out after 1.00s"
    assert srv.backend.pool.status()["restart_total"] == before + 1, "the worker busy with the abandoned fit was not killed"
    srv.set(default_timeout_s=300.0)
    srv.wait_ready()
    assert list(_forecast(srv.url, _series(1), "auto-arima").forecasts) == ["m-0"]


def test_request_timeout_field_is_honoured(srv):
    s = _series(30, n=300)
    body = {"model": "auto-arima", "horizon": 6, "quantiles": QUANTILES, "timeout": 0.5,
            "series": [{"id": x.id, "freq": "5min", "timestamps": [t.isoformat().replace("+00:00", "Z") for t in x.timestamps],
                        "target": list(x.values)} for x in s]}
    before = srv.backend.pool.status()["restart_total"]
    r = httpx.post(f"{srv.url}/v1/forecast", json=body, timeout=60)
    assert (r.status_code, r.json()) == (503, {"detail": "runner call timed out after 0.50s",
                                              "hint": "Retry after daemon dependencies are available."})
    assert srv.backend.pool.status()["restart_total"] == before + 1
    srv.wait_ready()


def test_a_long_fit_does_not_stall_other_requests(srv):
    """While one worker fits for seconds, health, tags, mock and a fit on the other worker are answered."""
    done, failed = threading.Event(), []
    def slow():
        try: _forecast(srv.url, _series(20, n=300, seed=1), "auto-arima")
        except Exception as e: failed.append(e)
        finally: done.set()
    t = threading.Thread(target=slow); t.start()
    try:
        while srv.stats.in_flight == 0 and not done.is_set(): time.sleep(0.005)
        assert httpx.get(f"{srv.url}/v1/health").json() == {"status": "ok"}
        assert list(_forecast(srv.url, _series(1), "mock").forecasts) == ["m-0"]
        assert list(_forecast(srv.url, _series(1), "naive").forecasts) == ["m-0"]
        assert not done.is_set(), f"the long fit finished before the other requests: the test proved nothing {failed}"
    finally: t.join(120)
    assert not failed


def test_readiness_and_tags(srv):
    ready = httpx.get(f"{srv.url}/health/ready").json()
    assert ready["status"] == "ok" and ready["healthy"] and set(ready["models"]) == set(MODELS)
    assert ready["runner_manager"]["running_runners"] == 2
    tags = httpx.get(f"{srv.url}/api/tags").json()["models"]
    assert [t["name"] for t in tags] == list(MODELS)
    installed = httpx.get(f"{srv.url}/v1/models").json()["installed"]
    assert {m["name"]: m["license"]["type"] for m in installed}["auto-ets"] == "apache-2.0"


def test_own_process_with_token():
    with model_server_process("--models", "naive,mock", "--workers", "1", "--token", "tok") as p:
        async def go():
            async with TollamaAdapter(TollamaConfig(base_url=p.url, api_key="tok", deadline_s=60, max_retries=0)) as ad:
                end = time.monotonic() + 120
                while (await ad._get_json("/health/ready", 5))["status"] != "ok" and time.monotonic() < end: await asyncio.sleep(0.1)
                return await ad.models(), await ad.forecast(_series(2), model="naive", horizon=3, quantiles=[0.1, 0.9], freq="5m")
        models, fc = asyncio.run(go())
    assert models == ["naive", "mock"] and sorted(fc.forecasts) == ["m-0", "m-1"]


def test_fault_options_stay_available(srv):
    """The fake daemon's knobs work on the model server: a daemon that goes away and comes back (workers kept), injected 503s."""
    pids = srv.backend.pool.status()
    srv.set(down=True)
    with pytest.raises(BackendUnavailableError):
        _forecast(srv.url, _series(1), "naive")
    srv.set(down=False)
    assert srv.backend.pool.status() == pids                   # the workers were not touched
    assert list(_forecast(srv.url, _series(1), "naive").forecasts) == ["m-0"]
    srv.set(fail_next_n=1, fail_status=503)
    with pytest.raises(BackendUnavailableError) as ei:
        _forecast(srv.url, _series(1), "auto-ets")
    assert ei.value.status_code == 503
    assert list(_forecast(srv.url, _series(1), "auto-ets").forecasts) == ["m-0"]
