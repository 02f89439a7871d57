"""TollamaAdapter against the fake tollama daemon over real HTTP on 127.0.0.1 (nothing patched). The config, the
typed errors, series, payloads and answer parsing on their own are tested in nbs/tsfm/22_tollama.ipynb."""
from __future__ import annotations

import asyncio
import math
import socket
from datetime import datetime, timedelta, timezone
from statistics import NormalDist

import httpx
import pytest

from tsfm_wb.core import BackendError, ConfigError, DataValidationError, LicenseError
from tsfm_wb.tsfm.fake_tollama import FakeTollama, serve_fake_tollama
from tsfm_wb.tsfm.schemas import FallbackReason, TSFMForecastRequest
from tsfm_wb.tsfm.tollama import (BackendHTTPError, BackendLicenseError, BackendProtocolError, BackendRateLimitError,
                             BackendRequestError, BackendTimeoutError, BackendUnavailableError, ModelNotFoundError,
                             TollamaAdapter, TollamaConfig, TollamaForecast, TollamaSeries)

T0 = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
QS = [0.1, 0.5, 0.9]
SPREAD = 0.1


@pytest.fixture(scope="module")
def server():
    with serve_fake_tollama() as fake:
        yield fake
    assert not fake.running


@pytest.fixture
def fake(server: FakeTollama) -> FakeTollama:
    """The shared fake, reset to default behaviour and zero counters before each test, settled after it (see conftest)."""
    yield server.reset(spread=SPREAD)
    if not server.settle(): server.stop()


def _series(n: int = 3, irregular: bool = True) -> list[TollamaSeries]:
    """n series with distinct last values; irregular (real, gappy) timestamps."""
    offsets = [-17, -12, -5, 0] if irregular else [-15, -10, -5, 0]
    ts = tuple(T0 + timedelta(minutes=m) for m in offsets)
    return [TollamaSeries(f"s{i}", (0.0, 0.1, 0.2, float(i) - 1.0), ts) for i in range(n)]


def _run(fake: FakeTollama, series=None, horizon: int = 4, model: str = "chronos2", rid: str | None = None,
         deadline_s: float | None = None, **cfg) -> TollamaForecast:
    async def go():
        async with TollamaAdapter(TollamaConfig(**{"base_url": fake.url, **cfg})) as ad:
            return await ad.forecast(series or _series(), model=model, horizon=horizon, quantiles=QS, freq="5m",
                                     request_id=rid, deadline_s=deadline_s)
    return asyncio.run(go())


def _fail(fake: FakeTollama, exc_type: type, **kw) -> BackendError:
    with pytest.raises(exc_type) as ei:
        _run(fake, **kw)
    return ei.value


def _expected(last: float, q: float, k: int) -> float:
    return last + NormalDist().inv_cdf(q) * SPREAD * math.sqrt(k)


# ------------------------------------------------------------------ happy paths

@pytest.mark.parametrize("cfg", [{}, {"endpoint": "/api/forecast"}, {"endpoint": "/api/forecast", "stream": True}],
                         ids=["v1", "api-json", "api-ndjson"])
def test_multi_series_answers_map_back_by_id(fake, cfg):
    out = _run(fake, rid="req-42", **cfg)
    assert set(out.forecasts) == {"s0", "s1", "s2"} and out.attempts == 1 and out.warnings == ()
    for i in range(3):
        r = out.forecasts[f"s{i}"]
        for q in QS:
            assert r.quantiles[str(q)].tolist() == pytest.approx([_expected(i - 1.0, q, k) for k in range(1, 5)])
        assert r.as_array(QS).shape == (3, 4)
        assert r.timestamps == [T0 + timedelta(minutes=5 * k) for k in range(1, 5)]
    assert fake.stats.series_per_request == [3] and fake.stats.forecast_requests == 1
    assert fake.stats.endpoints[cfg.get("endpoint", "/v1/forecast")] == 1
    assert out.endpoint == cfg.get("endpoint", "/v1/forecast") and out.model == "chronos2"


def test_request_body_carries_real_timestamps_and_pandas_freq(fake):
    _run(fake)
    body = fake.stats.last_body
    s0 = body["series"][0]
    assert s0["timestamps"] == ["2026-02-20T11:43:00Z", "2026-02-20T11:48:00Z", "2026-02-20T11:55:00Z", "2026-02-20T12:00:00Z"]
    assert s0["freq"] == "5min" and s0["target"] == [0.0, 0.1, 0.2, -1.0]
    assert (body["model"], body["horizon"], body["quantiles"]) == ("chronos2", 4, QS)
    assert "stream" not in body   # /v1/forecast refuses `stream`


def test_series_from_request_uses_y_ts_and_warns_when_it_must_assume(fake):
    y_ts = ["2026-02-20T11:31:00Z", "2026-02-20T11:47:00Z", "2026-02-20T11:58:00Z"]
    req = TSFMForecastRequest(market_id="m-1", as_of_ts=T0, y=[0.2, 0.3, 0.4], y_ts=y_ts)
    real = TollamaSeries.from_request(req)
    out = _run(fake, series=[real])
    assert fake.stats.last_body["series"][0]["timestamps"] == y_ts and out.warnings == ()
    assert out.forecasts["m-1"].timestamps[0] == datetime(2026, 2, 20, 12, 3, tzinfo=timezone.utc)
    assumed = TollamaSeries.from_request(req.model_copy(update={"y_ts": None}))
    out = _run(fake, series=[assumed])
    assert fake.stats.last_body["series"][0]["timestamps"] == ["2026-02-20T11:50:00Z", "2026-02-20T11:55:00Z", "2026-02-20T12:00:00Z"]
    assert any("y_ts not given" in w for w in out.warnings)


def test_request_id_is_sent_and_echoed_or_generated(fake):
    out = _run(fake, rid="abc-123")
    assert out.request_id == "abc-123" and fake.stats.request_ids == ["abc-123"]
    out = _run(fake)
    assert len(out.request_id) == 32 and fake.stats.request_ids[-1] == out.request_id
    r = httpx.get(f"{fake.url}/v1/health", headers={"X-Request-ID": "probe-1"})
    assert r.headers["X-Request-ID"] == "probe-1"
    assert len(httpx.get(f"{fake.url}/v1/health").headers["X-Request-ID"]) == 16   # the daemon's own ids


def test_health_version_and_models(fake):
    async def go():
        async with TollamaAdapter(base_url=fake.url) as ad:
            return await ad.health(), await ad.version(), await ad.models()
    ok, version, models = asyncio.run(go())
    assert ok and version.startswith("0.0.0") and "chronos2" in models


# ------------------------------------------------------------------ auth

def test_bearer_auth(fake, monkeypatch):
    monkeypatch.delenv("TOLLAMA_API_KEY", raising=False)
    fake.set(api_key="s3cret")
    e = _fail(fake, BackendRequestError)
    assert (e.status_code, e.detail, e.reason, e.attempts) == (401, "missing bearer token", FallbackReason.BACKEND_MISCONFIGURED, 1)
    e = _fail(fake, BackendRequestError, api_key="wrong")
    assert e.detail == "invalid api key"
    assert _run(fake, api_key="s3cret").attempts == 1
    monkeypatch.setenv("TOLLAMA_API_KEY", "s3cret")
    assert _run(fake).attempts == 1                      # read from the environment variable
    monkeypatch.delenv("TOLLAMA_API_KEY")

    async def health(**kw):
        async with TollamaAdapter(base_url=fake.url, **kw) as ad:
            return await ad.health()
    assert asyncio.run(health(api_key="s3cret")) and not asyncio.run(health())
    assert fake.stats.forecast_requests == 2             # 401s never reach the forecast


# ------------------------------------------------------------------ error codes -> typed errors

@pytest.mark.parametrize("status,exc_type,reason,retried", [
    (400, BackendRequestError, FallbackReason.REQUEST_REJECTED, False),
    (429, BackendRateLimitError, FallbackReason.RATE_LIMITED, True),
    (500, BackendHTTPError, FallbackReason.ADAPTER_ERROR, True),
    (502, BackendHTTPError, FallbackReason.ADAPTER_ERROR, True),
    (503, BackendUnavailableError, FallbackReason.UNAVAILABLE, True),
])
def test_injected_status_maps_to_typed_error_and_retries_only_when_allowed(fake, status, exc_type, reason, retried):
    fake.set(error_status=status)
    e = _fail(fake, exc_type, deadline_s=5.0)
    assert e.status_code == status and e.reason is reason and isinstance(e, BackendError)
    assert e.attempts == fake.stats.forecast_requests == (2 if retried else 1)
    assert e.request_id == fake.stats.request_ids[0] == fake.stats.request_ids[-1]   # same id on the retry


def test_unknown_model_is_404_model_not_found_with_hint(fake):
    e = _fail(fake, ModelNotFoundError, model="not-a-model")
    assert e.status_code == 404 and e.detail == "model 'not-a-model' is not installed"
    assert "tollama pull" in e.hint and e.reason is FallbackReason.MODEL_NOT_FOUND and e.attempts == 1


def test_license_gated_model_is_409(fake):
    e = _fail(fake, BackendLicenseError, model="moirai-2.0-R-small")
    assert isinstance(e, LicenseError) and e.status_code == 409 and "license" in e.hint
    assert e.reason is FallbackReason.LICENSE_REFUSED and e.attempts == 1


def test_body_too_large_is_413(fake):
    fake.set(max_body_bytes=200)
    e = _fail(fake, BackendRequestError)
    assert e.status_code == 413 and "request body too large" in e.detail and fake.stats.forecast_requests == 0


def test_daemon_validation_400_carries_detail_and_hint(fake):
    e = _fail(fake, BackendRequestError, model="")
    assert e.status_code == 400 and e.detail[0]["loc"] == ["body", "model"]
    assert e.hint == "Fix request payload or parameters and retry." and "body.model" in str(e)


def test_wrong_route_is_not_mistaken_for_a_missing_model(fake):
    e = _fail(fake, BackendHTTPError, base_url=fake.url + "/nope")
    assert type(e) is BackendHTTPError and e.status_code == 404 and "check base_url and endpoint" in str(e)


# ------------------------------------------------------------------ retries and the deadline

def test_retry_once_on_503_then_success(fake):
    fake.set(fail_next_n=1, fail_status=503)
    out = _run(fake, deadline_s=5.0)
    assert out.attempts == 2 and fake.stats.forecast_requests == 2 and fake.stats.ok == 1


def test_retry_after_is_honoured_when_it_fits(fake):
    fake.set(fail_next_n=1, fail_status=429, retry_after_s=0.05)
    assert _run(fake, deadline_s=5.0).attempts == 2


def test_retry_skipped_when_retry_after_exceeds_the_remaining_budget(fake):
    fake.set(error_status=503, retry_after_s=30)
    e = _fail(fake, BackendUnavailableError, deadline_s=5.0, retry_after_max_s=60)   # Retry-After 30 s > the 5 s budget
    assert e.attempts == 1 and fake.stats.forecast_requests == 1


def test_no_retry_when_max_retries_is_zero(fake):
    fake.set(error_status=503)
    assert _fail(fake, BackendUnavailableError, max_retries=0).attempts == 1


def test_slow_daemon_times_out_without_retry(fake):
    fake.set(latency_s=30.0)
    e = _fail(fake, BackendTimeoutError, deadline_s=0.3)
    assert e.reason is FallbackReason.TIMEOUT and e.attempts == 1 and fake.stats.forecast_requests == 1


def test_deadline_covers_the_retry(fake):
    # attempt 1 fails fast with 503, the retry meets a slow daemon: the same deadline ends the call
    fake.set(fail_next_n=1, fail_status=503, latency_s=30.0)
    e = _fail(fake, BackendTimeoutError, deadline_s=1.0, max_retries=3)
    assert e.attempts == 2 and fake.stats.forecast_requests == 2


def test_spent_budget_makes_no_request_and_daemon_timeout_is_optional(fake):
    e = _fail(fake, BackendTimeoutError, deadline_s=0.0)
    assert e.attempts == 1 and fake.stats.forecast_requests == 0
    _run(fake, send_daemon_timeout=False)
    assert "timeout" not in fake.stats.last_body
    _run(fake, deadline_s=2.0)                                    # sent by default
    assert 0 < fake.stats.last_body["timeout"] <= 2.0


def test_hanging_daemon_times_out(fake):
    fake.set(hang_s=30.0)
    e = _fail(fake, BackendTimeoutError, deadline_s=0.3, endpoint="/api/forecast", stream=True)
    assert e.attempts == 1


def test_down_then_back(fake):
    fake.set(down=True)
    e = _fail(fake, BackendUnavailableError, deadline_s=5.0)
    assert e.status_code is None and e.attempts == 2 and e.reason is FallbackReason.UNAVAILABLE

    async def go():
        async with TollamaAdapter(base_url=fake.url) as ad:
            before = await ad.health()
            fake.set(down=False)
            after = await ad.health()
            out = await ad.forecast(_series(1), model="chronos2", horizon=2, quantiles=QS, freq="5m")
            return before, after, out
    before, after, out = asyncio.run(go())
    assert (before, after, out.attempts) == (False, True, 1)



def test_connect_timeout_fired_by_a_blocked_loop_is_not_an_outage(fake, blocked_loop, caplog):
    # the loop sleeps 0.6 s through the 0.25 s connect timer: the connect is tried again, not reported unavailable
    out = _run(fake, max_retries=0, deadline_s=5.0)
    assert blocked_loop.fired and out.attempts == 1 and fake.stats.forecast_requests == 1
    assert "connect timed out while the event loop was blocked" in caplog.text


def test_health_probe_survives_a_blocked_loop(fake, blocked_loop, caplog):
    async def go():
        async with TollamaAdapter(base_url=fake.url, health_timeout_s=0.3) as ad: return await ad.health(), ad.stalled_connects
    healthy, stalls = asyncio.run(go())
    assert healthy and blocked_loop.fired and stalls == 1
    assert f"connect to {fake.url}/v1/health timed out while the event loop was blocked" in caplog.text   # as the POST path says


def test_daemon_that_accepts_no_connection_is_unavailable():
    # a listener whose accept queue is full drops new connects: a real connect timeout, whatever the loop does
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0)); listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for s in queued: s.setblocking(False); s.connect_ex(("127.0.0.1", port))   # fill the queue
        try:
            e = _fail_at(f"http://127.0.0.1:{port}", BackendUnavailableError, connect_timeout_s=0.1, max_retries=1)
        finally:
            for s in queued: s.close()
    assert e.reason is FallbackReason.UNAVAILABLE and e.attempts == 2 and "ConnectTimeout" in str(e)


def _fail_at(url: str, exc_type: type, **cfg) -> BackendError:
    async def go():
        async with TollamaAdapter(TollamaConfig(base_url=url, deadline_s=5.0, **cfg)) as ad:
            return await ad.forecast(_series(1), model="chronos2", horizon=2, quantiles=QS, freq="5m")
    with pytest.raises(exc_type) as ei:
        asyncio.run(go())
    return ei.value


# ------------------------------------------------------------------ bad answers

@pytest.mark.parametrize("cfg", [{}, {"endpoint": "/api/forecast"}, {"endpoint": "/api/forecast", "stream": True}],
                         ids=["v1", "api-json", "api-ndjson"])
def test_malformed_json_is_a_protocol_error(fake, cfg):
    fake.set(malformed_json=True)
    e = _fail(fake, BackendProtocolError, **cfg)
    assert e.reason is FallbackReason.BAD_RESPONSE and "not JSON" in str(e) and e.attempts == 1


@pytest.mark.parametrize("kind,message", [
    ("short", "has 3 values; expected horizon = 4"),
    ("missing_series", "missing series ['s2']"),
    ("unknown_id", "series 's2-unknown' that was not asked for"),
    ("null_values", "[0] = None is not a finite number"),
    ("missing_quantile", "quantile 0.1 missing from the answer"),
    ("not_a_list", "answer has no 'forecasts' list"),
])
def test_wrong_shapes_are_protocol_errors(fake, kind, message):
    fake.set(wrong_shapes=kind)
    e = _fail(fake, BackendProtocolError)
    assert message in str(e) and e.attempts == 1 and e.request_id is not None


# ------------------------------------------------------------------ serving model, validation, config

def test_one_at_a_time_serialises_concurrent_requests(fake):
    async def burst():
        async with TollamaAdapter(base_url=fake.url, deadline_s=10.0) as ad:
            return await asyncio.gather(*[ad.forecast(_series(2), model="chronos2", horizon=2, quantiles=QS, freq="5m")
                                          for _ in range(5)])
    fake.set(one_at_a_time=True, latency_s=0.05)
    assert len(asyncio.run(burst())) == 5 and fake.stats.max_in_flight == 1
    fake.reset(latency_s=0.2)
    asyncio.run(burst())
    assert fake.stats.max_in_flight > 1


def test_bad_input_is_refused_before_any_request(fake):
    ts = _series(1)[0].timestamps
    with pytest.raises(DataValidationError, match="values\\[1\\] = nan is not finite"):
        TollamaSeries("a", (0.0, math.nan, 0.0, 0.0), ts)
    with pytest.raises(DataValidationError, match="ids must be unique"):
        _run(fake, series=_series(1) * 2)
    with pytest.raises(DataValidationError, match="strictly increasing"):
        TollamaSeries("a", (0.0, 0.0), (T0, T0))
    assert fake.stats.forecast_requests == 0


def test_fake_daemon_refuses_unknown_options():
    with pytest.raises(ConfigError, match="unknown fake tollama option"):
        with serve_fake_tollama(latency=1):
            pass
