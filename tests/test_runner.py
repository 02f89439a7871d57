"""TSFMRunner against the fake tollama daemon over real HTTP on 127.0.0.1 (nothing patched).

Faults, breaker, coalescing, cache and stale-if-error, the license guard at request time, batched cycles that
degrade per market, and the online conformal feed. Time is a fake clock: no test sleeps, though one blocks the
event loop on purpose. The parts on their own (settings, breaker, cache keys, license registry, responses) are
tested in the notebooks nbs/tsfm/runner/30-37.
"""
from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tsfm_wb.tsfm.conformal import ConformalCalibrator, ConformalRecord
from tsfm_wb.tsfm.fake_tollama import FakeTollama
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.schemas import TSFMForecastRequest, TSFMForecastResponse
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig

T_END = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
REGISTRY = ModelsRegistry(models={"chronos2": {"license_tag": "apache-2.0"}, "not-installed": {"license_tag": "apache-2.0"},
                                  "moirai-2.0-R-small": {"license_tag": "cc-by-nc-4.0", "research_only": True}},
                          prod={"allowed_models": ["chronos2", "not-installed"]})
PP = PostprocessSettings()


class Clock:
    """A clock the tests move by hand."""
    def __init__(self) -> None: self.t = 10_000.0
    def __call__(self) -> float: return self.t


def market(i: int, n: int = 64, **kw: Any) -> TSFMForecastRequest:
    """A 5-minute market ending at T_END whose last value identifies it."""
    y = 0.5 + 0.3 * np.sin(np.arange(n) / 9 + i)
    ts = [T_END - timedelta(minutes=5 * (n - 1 - k)) for k in range(n)]
    fields = {"market_id": f"m-{i}", "as_of_ts": T_END, "y": y.round(5).tolist(), "y_ts": ts, "liquidity_bucket": "high", **kw}
    return TSFMForecastRequest(**fields)


UNBATCHED = {"batching": {"enabled": False}, "limiter": {"algorithm": "fixed", "initial_limit": 64}}   # one call per request, all at once


def make_runner(fake: FakeTollama, clock: Clock | None = None, env: str = "prod", deadline_s: float = 10.0,
                max_retries: int = 0, calibrator: ConformalCalibrator | None = None, feed_calibrator: bool | None = None,
                **cfg: Any) -> TSFMRunner:
    adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=deadline_s, max_retries=max_retries, backoff_base_s=0.01))
    return TSFMRunner(RunnerConfig(env=env, **cfg), adapter=adapter, guard=LicenseGuard(REGISTRY, env), postprocess=PP,
                      clock=clock or Clock(), calibrator=calibrator, feed_calibrator=feed_calibrator)


def check_valid(resp: TSFMForecastResponse, req: TSFMForecastRequest) -> None:
    """Round-trips through JSON validation; bands finite, in [0, 1], non-crossing, widths within bounds."""
    again = TSFMForecastResponse.model_validate_json(resp.model_dump_json())
    assert again.market_id == req.market_id and len(again.timestamps) == req.horizon_steps
    for bands in (resp.yhat_q, resp.yhat_q_raw):
        q = np.array([bands[k] for k in bands]).T
        assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all() and (np.diff(q, axis=1) >= 0).all()
        width = q[:, -1] - q[:, 0]
        assert (width >= PP.min_width - 1e-9).all() and (width <= PP.max_width + 1e-9).all()


def run(coro):
    return asyncio.run(coro)


# --- happy path, slicing -------------------------------------------------------------------------

def test_tsfm_answer_maps_back_to_probabilities(fake):
    async def go():
        async with make_runner(fake) as r: return await r.forecast(market(1, n=400))
    resp = run(go())
    req = market(1, n=400)
    check_valid(resp, req)
    assert (resp.meta.runtime, resp.meta.fallback_used, resp.meta.band_source, resp.meta.input_len) == ("tollama", False, "tsfm_raw", 288)
    assert (resp.meta.served_by, resp.meta.phase) == ("tsfm", None)         # no rollout configured: the TSFM band, no phase
    assert resp.band(0.5) == pytest.approx([req.y[-1]] * 12, abs=1e-9)       # fake median = last value (logit space)
    assert resp.timestamps[0] == T_END + timedelta(minutes=5)
    assert any("sliced to the last 288 of 400" in w for w in resp.meta.warnings)
    assert resp.conformal.applied is False and "fewer than 500" in resp.conformal.reason   # online calibrator, still empty
    assert fake.stats.forecast_requests == 1 and fake.stats.series == 1


# --- faults: every one is a valid baseline answer with its reason ------------------------------------------

FAULTS = {
    "down": ({"down": True}, "unavailable"),
    "5xx": ({"error_status": 500}, "adapter_error"),
    "502": ({"error_status": 502}, "adapter_error"),
    "503": ({"error_status": 503}, "unavailable"),
    "429": ({"error_status": 429}, "rate_limited"),
    "malformed_json": ({"malformed_json": True}, "bad_response"),
    "short": ({"wrong_shapes": "short"}, "bad_response"),
    "missing_series": ({"wrong_shapes": "missing_series"}, "bad_response"),
    "unknown_id": ({"wrong_shapes": "unknown_id"}, "bad_response"),
    "null_values": ({"wrong_shapes": "null_values"}, "bad_response"),
    "missing_quantile": ({"wrong_shapes": "missing_quantile"}, "bad_response"),
    "not_a_list": ({"wrong_shapes": "not_a_list"}, "bad_response"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_backend_fault_gives_valid_fallback(fake, fault):
    options, reason = FAULTS[fault]
    fake.set(**options)
    async def go():
        async with make_runner(fake, max_retries=1) as r: return await r.forecast(market(2)), r.metrics.value("tsfm_backend_errors_total", reason=reason)
    resp, errors = run(go())
    check_valid(resp, market(2))
    assert (resp.meta.runtime, resp.meta.fallback_used, resp.meta.fallback_reason) == ("baseline", True, reason)
    assert (resp.meta.band_source, resp.meta.served_by) == ("baseline", "baseline") and errors == 1
    assert any(w.startswith(f"fallback ({reason})") for w in resp.meta.warnings)


def test_slow_backend_beyond_deadline_times_out(fake):
    fake.set(latency_s=3.0)
    async def go():
        async with make_runner(fake, deadline_s=0.2, max_retries=1) as r: return await r.forecast(market(3))
    resp = run(go())
    check_valid(resp, market(3))
    assert (resp.meta.fallback_used, resp.meta.fallback_reason) == (True, "timeout")


@pytest.mark.parametrize("model, env, reason, calls", [
    ("not-installed", "prod", "model_not_found", 1),            # in the registry, not installed in the daemon: 404
    ("moirai-2.0-R-small", "research", "license_refused", 1),   # daemon refuses the license: 409
    ("moirai-2.0-R-small", "prod", "license_refused", 0),       # our guard refuses research-only in prod, at runtime
    ("some-unlisted-model", "prod", "license_refused", 0),      # not in prod.allowed_models
])
def test_model_and_license_refusals(fake, model, env, reason, calls):
    req = market(4, model={"model_name": model})
    async def go():
        async with make_runner(fake, env=env) as r: return await r.forecast(req), r.breaker.state
    resp, state = run(go())
    check_valid(resp, req)
    assert (resp.meta.fallback_used, resp.meta.fallback_reason, fake.stats.forecast_requests) == (True, reason, calls)
    assert state == "closed"                                       # the daemon answered: not a breaker failure


@pytest.mark.parametrize("change, reason", [
    ({"liquidity_bucket": "low"}, "low_liquidity"),
    ({"volume_24h": 10.0}, "low_liquidity"),
    ({"y": [0.5] * 31, "y_ts": None}, "too_few_points"),
])
def test_policy_fallbacks_never_call_the_backend(fake, change, reason):
    req = market(5).model_copy(update=change)
    async def go():
        async with make_runner(fake) as r: return await r.forecast(req)
    resp = run(go())
    check_valid(resp, req)
    assert (resp.meta.fallback_reason, fake.stats.forecast_requests) == (reason, 0)


def test_gap_and_stale_last_point_fall_back(fake):
    base = market(6)
    gappy = base.model_copy(update={"y_ts": [t - timedelta(minutes=61) if k < 10 else t for k, t in enumerate(base.y_ts)]})
    stale = base.model_copy(update={"as_of_ts": T_END + timedelta(minutes=90)})
    async def go():
        async with make_runner(fake) as r: return [await r.forecast(q) for q in (gappy, stale)]
    for resp in run(go()): assert resp.meta.fallback_reason == "data_gap"
    assert fake.stats.forecast_requests == 0


# --- breaker ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batching", [False, True])
def test_breaker_opens_after_five_failures_and_recovers_through_one_probe(fake, batching):
    clock = Clock()
    fake.set(error_status=500)
    async def go():
        async with make_runner(fake, clock, **{**UNBATCHED, "batching": {"enabled": batching}}) as r:
            first = [await r.forecast(market(i)) for i in range(7)]
            calls_open = fake.stats.forecast_requests
            clock.t += 119
            still = await r.forecast(market(20))
            clock.t += 1                                           # cooldown over: half-open
            fake.set(error_status=None, latency_s=0.2)
            burst = await asyncio.gather(*(r.forecast(market(30 + i)) for i in range(8)))
            return first, calls_open, still, burst, r.breaker.state, fake.stats.forecast_requests, r.metrics_text()
    first, calls_open, still, burst, state, calls, text = run(go())
    assert [x.meta.fallback_reason for x in first] == ["adapter_error"] * 5 + ["breaker_open"] * 2
    assert calls_open == 5 and still.meta.fallback_reason == "breaker_open"
    reasons = sorted(str(x.meta.fallback_reason) for x in burst)
    if batching:                                                   # the burst is one batch: the probe carries all 8 series
        assert reasons == ["None"] * 8
    else: assert reasons == ["None"] + ["breaker_open"] * 7        # exactly one probe went through, and succeeded
    assert state == "closed" and calls == 6                        # one call either way
    assert "tsfm_breaker_opened_total 1.0" in text and "tsfm_breaker_state 0.0" in text


def test_failed_probe_reopens_for_a_full_cooldown(fake):
    clock = Clock()
    fake.set(error_status=503)
    async def go():
        async with make_runner(fake, clock, breaker={"failures": 2, "cooldown_s": 100}) as r:
            for i in range(2): await r.forecast(market(i))
            clock.t += 100
            probe = await r.forecast(market(10))
            clock.t += 99
            refused = await r.forecast(market(11))
            return probe, refused, r.breaker.state, r.breaker.opened_count, fake.stats.forecast_requests
    probe, refused, state, opened, calls = run(go())
    assert probe.meta.fallback_reason == "unavailable" and refused.meta.fallback_reason == "breaker_open"
    assert (state, opened, calls) == ("open", 2, 3)


@pytest.mark.parametrize("blocked", [False, True], ids=["free-loop", "blocked-loop"])
def test_breaker_is_correct_under_a_concurrent_burst(fake, blocked, request):
    # blocked: the loop stalls past the connect timeout while connects are in flight, as on a loaded machine;
    # the daemon still answers every request, so none may be reported as an outage
    stall = request.getfixturevalue("blocked_loop") if blocked else None
    fake.set(error_status=500, latency_s=0.05)
    async def go():
        async with make_runner(fake, **UNBATCHED) as r:
            burst = await asyncio.gather(*(r.forecast(market(i)) for i in range(20)))
            after = await r.forecast(market(99))
            return burst, after, r.breaker.opened_count, fake.stats.forecast_requests, r.metrics_text()
    burst, after, opened, calls, metrics = run(go())
    assert {x.meta.fallback_reason for x in burst} == {"adapter_error"}, [x.meta.warnings for x in burst]  # all were in flight before it opened
    assert opened == 1                                                     # late failures did not re-open it
    assert after.meta.fallback_reason == "breaker_open" and calls == 20
    stalls = float(re.search(r"^tsfm_backend_connect_stalls (\S+)$", metrics, re.M).group(1))   # exported for operators
    assert stall is None or (stall.fired and stalls >= 1)       # (a loaded machine may stall a free loop too)


# --- coalescing, cache, stale-if-error ----------------------------------------------------------------------

def test_identical_concurrent_requests_make_one_backend_call(fake):
    fake.set(latency_s=0.1)
    req = market(7)
    async def go():
        async with make_runner(fake) as r:
            out = await asyncio.gather(*(r.forecast(req.model_copy(update={"request_id": f"r{i}"})) for i in range(10)))
            return out, r.metrics.value("tsfm_coalesced_total")
    out, coalesced = run(go())
    assert fake.stats.forecast_requests == 1 and coalesced == 9
    assert all(o.yhat_q == out[0].yhat_q and not o.meta.fallback_used for o in out)
    assert [o.meta.request_id for o in out] == [f"r{i}" for i in range(10)]


def test_cache_hit_then_expiry_then_stale_if_error(fake):
    clock, req = Clock(), market(8)
    async def go():
        async with make_runner(fake, clock) as r:
            a = await r.forecast(req)
            b = await r.forecast(req)
            clock.t += 61
            c = await r.forecast(req)                                      # expired: asks the backend again
            clock.t += 61
            fake.set(down=True)
            d = await r.forecast(req)                                      # stale (61 s) served on error
            clock.t += 121
            e = await r.forecast(req)                                      # beyond ttl + stale: baseline
            return a, b, c, d, e
    a, b, c, d, e = run(go())
    assert (a.meta.cache_hit, b.meta.cache_hit, c.meta.cache_hit) == (False, True, False)
    assert b.yhat_q == a.yhat_q
    assert (d.meta.stale, d.meta.cache_hit, d.meta.fallback_used, d.meta.runtime) == (True, True, False, "tollama")
    assert any("stale-if-error" in w for w in d.meta.warnings)
    assert (e.meta.fallback_used, e.meta.fallback_reason) == (True, "unavailable")


def test_cache_hit_copies_cannot_corrupt_the_cache(fake):
    req = market(9)
    async def go():
        async with make_runner(fake) as r:
            a = await r.forecast(req)
            a.yhat_q["0.5"][0] = -1.0
            a.meta.warnings.append("mutated")
            return await r.forecast(req)
    b = run(go())
    assert b.meta.cache_hit and b.yhat_q["0.5"][0] >= 0 and "mutated" not in b.meta.warnings


# --- batched cycles -----------------------------------------------------------------------------------------

def test_cycle_batches_and_maps_answers_by_series_id(fake):
    reqs = [market(i) for i in range(20)] + [market(50, horizon_steps=6)] + [market(3)]   # another group, a duplicate
    async def go():
        async with make_runner(fake, cycle={"chunk_size": 8, "batch_concurrency": 2}) as r: return await r.run_cycle(reqs)
    out = run(go())
    assert sorted(fake.stats.series_per_request) == [1, 4, 8, 8]
    assert [o.market_id for o in out] == [q.market_id for q in reqs]
    for o, q in zip(out, reqs):
        check_valid(o, q)
        assert not o.meta.fallback_used and o.band(0.5) == pytest.approx([q.y[-1]] * q.horizon_steps, abs=1e-9)


def test_cycle_mixes_cache_hits_policy_fallbacks_and_batches(fake):
    reqs = [market(i) for i in range(6)] + [market(7, liquidity_bucket="low")]
    async def go():
        async with make_runner(fake) as r:
            await r.forecast(reqs[0])
            return await r.run_cycle(reqs)
    out = run(go())
    assert out[0].meta.cache_hit and out[6].meta.fallback_reason == "low_liquidity"
    assert fake.stats.series_per_request == [1, 5]


def test_failed_batch_is_retried_in_halves(fake):
    fake.set(fail_next_n=1, fail_status=500)
    reqs = [market(i) for i in range(8)]
    async def go():
        async with make_runner(fake, cycle={"chunk_size": 8, "batch_concurrency": 1}) as r:
            return await r.run_cycle(reqs), r.metrics.value("tsfm_batch_splits_total")
    out, splits = run(go())
    assert fake.stats.series_per_request == [8, 4, 4] and splits == 1
    assert all(not o.meta.fallback_used for o in out)


def test_one_bad_series_degrades_only_its_market(fake):
    reqs = [market(i) for i in range(8)]
    async def go():
        async with make_runner(fake, cycle={"chunk_size": 8, "batch_concurrency": 1}) as r:
            # the daemon rejects the whole batch while series m-5 is in it (a 400), as a bad series would make it do
            orig = r.adapter.forecast
            async def picky(series, **kw):
                if any(s.id == "m-5" for s in series): fake.set(error_status=400)
                try: return await orig(series, **kw)
                finally: fake.set(error_status=None)
            r.adapter.forecast = picky
            return await r.run_cycle(reqs), r.breaker.state
    out, state = run(go())
    assert [o.meta.fallback_reason for o in out] == [None] * 5 + ["request_rejected"] + [None] * 2
    assert state == "closed"


@pytest.mark.parametrize("options, reason", [({"down": True}, "unavailable"), ({"wrong_shapes": "missing_series"}, "bad_response"),
                                             ({"error_status": 429}, "rate_limited")])
def test_cycle_never_fails_when_the_backend_does(fake, options, reason):
    fake.set(**options)
    reqs = [market(i) for i in range(30)]
    async def go():
        async with make_runner(fake, cycle={"chunk_size": 5, "batch_concurrency": 1}) as r:
            return await r.run_cycle(reqs), r.breaker.state
    out, state = run(go())
    assert len(out) == 30 and all(o.meta.fallback_used for o in out)
    assert reason in {o.meta.fallback_reason for o in out}
    for o, q in zip(out, reqs): check_valid(o, q)
    if reason == "rate_limited":                                           # busy, not broken: the breaker does not count it
        assert fake.stats.forecast_requests == 6 and state == "closed"
    else: assert fake.stats.forecast_requests <= 5 and state == "open"     # the breaker bounds the retries


def test_unbatched_cycle_is_the_concurrent_single_series_loop(fake):
    reqs = [market(i) for i in range(6)]
    async def go():
        async with make_runner(fake, **UNBATCHED) as r: return await r.run_cycle(reqs, batched=False)
    out = run(go())
    assert [o.meta.fallback_reason for o in out] == [None] * 6, [o.meta.warnings for o in out]
    assert fake.stats.series_per_request == [1] * 6 and [o.market_id for o in out] == [q.market_id for q in reqs]


# --- online conformal feed ------------------------------------------------------------------------------------

STEP = 300.0   # 5 minutes


def advancing(k: int, n: int = 64, missing: frozenset[int] = frozenset(), **kw: Any) -> TSFMForecastRequest:
    """Market m-adv at request k: one value per 5 minutes up to T_END + 5k min, without the grid points in `missing`."""
    idx = [i for i in range(k - n + 1, k + 1) if i not in missing]
    y = [round(0.5 + 0.25 * np.sin(i / 6) + 0.1 * np.sin(i * 1.7), 5) for i in idx]
    fields = {"market_id": "m-adv", "as_of_ts": T_END + timedelta(minutes=5 * k), "y": y, "horizon_steps": 4,
              "y_ts": [T_END + timedelta(minutes=5 * i) for i in idx], "liquidity_bucket": "high", **kw}
    return TSFMForecastRequest(**fields)


class RecordingCalibrator(ConformalCalibrator):
    """A calibrator that keeps every record it is fed."""
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw); self.seen: list[ConformalRecord] = []
    def update(self, records):
        recs = list(records); self.seen.extend(recs); return super().update(recs)


def test_online_feed_scores_each_step_once_and_never_against_its_own_input(fake):
    missing, ks = frozenset({6}), [k for k in range(12) if k != 6]       # the value at T_END + 30 min never arrives
    cal = RecordingCalibrator(min_samples=10**6)
    async def go():
        async with make_runner(fake, feed_calibrator=True, calibrator=cal) as r:
            counts = []
            for k in ks:
                before = r.metrics.value("tsfm_conformal_outcomes_total")
                await r.forecast(advancing(k, missing=missing))
                await r.forecast(advancing(k, missing=missing, as_of_ts=T_END + timedelta(minutes=5 * k + 2)))  # same data, later
                counts.append(r.metrics.value("tsfm_conformal_outcomes_total") - before)
            return counts, r.metrics_text()
    counts, text = run(go())
    issued = set(ks)
    expected = {(j, h) for j in issued for h in range(1, 5) if j + h <= ks[-1] and j + h not in missing}
    assert counts == [sum(1 for j, h in expected if j + h == k) for k in ks]
    assert len(cal.seen) == len(expected) and f"tsfm_conformal_outcomes_total {len(expected)}" in text
    got = set()
    for rec in cal.seen:
        j = round((rec.issued_at - T_END.timestamp()) / STEP)            # the request that issued it (as_of = T_END + 5j min)
        last_input = T_END.timestamp() + STEP * j
        assert rec.realized_at > last_input and rec.realized_at > rec.issued_at   # never a value of its own input
        assert rec.realized_at == pytest.approx(last_input + STEP * rec.step)
        i = round((rec.realized_at - T_END.timestamp()) / STEP)
        assert rec.y == advancing(i, missing=missing).y[-1] and rec.segment == {"liquidity_bucket": "high"}
        got.add((j, rec.step))
    assert got == expected                                               # each step of each forecast once


def _conformal_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "conformal.yaml"
    path.write_text("min_samples: 5\nsegment_keys: [liquidity_bucket]\nrefresh_s: 0\nmethod: aci\n")
    return path


def test_online_calibrator_starts_unadjusted_then_applies_and_round_trips(fake, tmp_path):
    save = tmp_path / "state" / "conformal_state.json"
    cfg = {"conformal_config": str(_conformal_yaml(tmp_path)), "conformal_state": str(save), "conformal_state_save": str(save),
           "conformal_feed": {"save_every": 3}}
    async def go():
        async with make_runner(fake, **cfg) as r:                         # first start: the state file does not exist yet
            out = [await r.forecast(advancing(k)) for k in range(12)]
            saved_mid_run = save.is_file()
            return out, saved_mid_run, r.calibrator.to_dict(), r.metrics_text()
    out, saved_mid_run, state, text = run(go())
    first, last = out[0], out[-1]
    assert first.conformal.applied is False and "fewer than 5" in first.conformal.reason and first.meta.band_source == "tsfm_raw"
    assert last.conformal.applied is True and last.meta.band_source == "tsfm_conformal" and last.conformal.n_samples == 8
    assert last.yhat_q != last.yhat_q_raw and last.yhat_q["0.5"] == last.yhat_q_raw["0.5"]
    check_valid(last, advancing(11))
    outcomes = sum(min(k, 4) for k in range(12))
    assert f"tsfm_conformal_outcomes_total {outcomes}" in text and f"tsfm_conformal_samples {outcomes}" in text
    assert saved_mid_run                                                  # every save_every updates, not only on close
    assert ConformalCalibrator.load(save).to_dict() == state              # aclose saved the final state
    async def resume():
        async with make_runner(fake, **cfg) as r: return r.calibrator.to_dict(), await r.forecast(advancing(12))
    resumed, nxt = run(resume())
    assert resumed == state and nxt.conformal.applied is True


def test_online_feed_off_and_other_quantile_pairs_are_not_calibrated(fake, tmp_path):
    async def go():
        async with make_runner(fake, conformal_online=False) as off:
            a = await off.forecast(advancing(0))
            feed_off = off.conformal_feed
        async with make_runner(fake, conformal_config=str(_conformal_yaml(tmp_path))) as r:
            outs = [await r.forecast(advancing(k, quantiles=[0.05, 0.5, 0.95])) for k in range(8)]
            return a, feed_off, outs, r.conformal_feed.recorded, r.conformal_feed.pending
    a, feed_off, outs, recorded, pending = run(go())
    assert feed_off is None and a.conformal.applied is False and "no calibrator" in a.conformal.reason
    assert (recorded, pending) == (0, 0)                                  # a 5-95 band is not the calibrated 10-90 pair
    assert "not [0.05, 0.95]" in outs[-1].conformal.reason and outs[-1].yhat_q == outs[-1].yhat_q_raw


def test_online_feed_memory_is_bounded(fake, tmp_path):
    async def go():
        async with make_runner(fake, conformal_config=str(_conformal_yaml(tmp_path)), conformal_feed={"max_markets": 2, "max_pending": 3}) as r:
            for i in range(4): await r.forecast(advancing(0, market_id=f"m-{i}"))
            books = list(r.conformal_feed._books)
            for k in range(1, 8): await r.forecast(advancing(k, horizon_steps=12, market_id="m-3"))   # nothing resolves within 12 steps
            return books, r.conformal_feed.pending, len(r.conformal_feed._books["m-3"].pending), r.conformal_feed.recorded
    books, pending, m3, recorded = run(go())
    assert books == ["m-2", "m-3"]                                        # least recently seen markets dropped
    assert m3 == 3 and pending == 4 and recorded > 0
