"""Rollout cohorts, rollback, the auto-rollback rule, health-driven degradation against the fake daemon, forecast logs."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsfm_wb.core import ConfigError, DataValidationError, configure_logging, get_logger
from tsfm_wb.tsfm.fake_tollama import serve_fake_tollama
from tsfm_wb.tsfm.rollout import (BandDecision, HealthMonitor, RolloutController, RolloutSettings, cohort_bucket, forecast_log_record,
                             in_cohort, load_rollout_settings, log_forecast)
from tsfm_wb.tsfm.schemas import ResponseMeta, TSFMForecastRequest, TSFMForecastResponse, future_timestamps
from tsfm_wb.tsfm.tollama import TollamaAdapter

REPO = Path(__file__).resolve().parent.parent
MARKETS = [f"mkt-{i}" for i in range(3000)]


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# ---- configuration --------------------------------------------------------------------------------------------

def test_repository_config_is_the_default():
    cfg = load_rollout_settings(REPO / "configs" / "rollout.yaml")
    assert cfg == RolloutSettings()
    assert [(p.name, p.served_percent, p.computed_percent) for p in cfg.phases] == [
        ("shadow", 0, 100), ("canary", 10, 100), ("ramp", 50, 100), ("full", 100, 100)]
    assert (cfg.auto_rollback.max_relative_drop, cfg.auto_rollback.window_days, cfg.health.interval_s) == (0.15, 3, 30)


@pytest.mark.parametrize("text, key", [
    ("phases: [{name: a, served_percent: 10}, {name: b, served_percent: 50}, {name: c, served_percent: 40}]\n",
     "key 'phases': Value error, phases[2].served_percent = 40 must be greater than phases[1].served_percent = 50"),
    ("phases: [{name: a, served_percent: 10}, {name: b, served_percent: 10}]\ncurrent_phase: a\n", "phases[1].served_percent = 10"),
    ("phases: [{name: a, served_percent: -1}]\ncurrent_phase: a\n", "key 'phases.0.served_percent'"),
    ("phases: [{name: a, served_percent: 20, computed_percent: 10}]\ncurrent_phase: a\n", "key 'phases.0'"),
    ("current_phase: beta\n", "key 'current_phase'"),
    ("auto_rollback: {max_relative_drop: 0}\n", "key 'auto_rollback.max_relative_drop'"),
    ("auto_rollback: {window_days: -3}\n", "key 'auto_rollback.window_days'"),
    ("health: {interval_s: 0}\n", "key 'health.interval_s'"),
    ("rollbak: true\n", "key 'rollbak'"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str):
    p = tmp_path / "rollout.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_rollout_settings(p)
    assert key in str(e.value) and str(p) in str(e.value)


# ---- cohorts --------------------------------------------------------------------------------------------------

def test_cohorts_are_nested_and_sized():
    members = {p: {m for m in MARKETS if in_cohort(m, p)} for p in (0, 1, 10, 25, 50, 99.99, 100)}
    assert members[0] == set() and members[100] == set(MARKETS)
    ps = sorted(members)
    for lo, hi in zip(ps, ps[1:]):
        assert members[lo] <= members[hi]                              # in at p% means in at every q% > p%
    for p in (10, 50):
        assert abs(len(members[p]) / len(MARKETS) - p / 100) < 0.03


def test_cohorts_are_stable_across_processes():
    code = "import json; from tsfm_wb.tsfm.rollout import cohort_bucket; print(json.dumps([cohort_bucket(f'mkt-{i}') for i in range(200)]))"
    seen = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONHASHSEED": seed}).stdout) for seed in ("1", "2")]
    here = [cohort_bucket(f"mkt-{i}") for i in range(200)]
    assert seen[0] == seen[1] == here
    assert cohort_bucket("527079") == int.from_bytes(hashlib.sha256(b"tsfm-rollout-v1:527079").digest()[:8], "big") % 10_000


def test_controller_phases_follow_the_cohorts():
    ctl = RolloutController()
    assert {ctl.band_source_for(m)[:3] for m in MARKETS[:200]} == {("tsfm", False, "shadow")}
    served = {}
    for phase in ("canary", "ramp", "full"):
        ctl.set_phase(phase)
        served[phase] = {m for m in MARKETS if ctl.band_source_for(m).served}
        assert served[phase] == {m for m in MARKETS if in_cohort(m, ctl.phase.served_percent)}
    assert served["canary"] <= served["ramp"] <= served["full"] == set(MARKETS)
    d = RolloutController(RolloutSettings(current_phase="canary")).band_source_for(next(iter(served["canary"])))
    assert (d.served_by, d.alert_band_source(), d.reason) == ("tsfm", "tsfm_conformal", "in_cohort")
    with pytest.raises(ConfigError, match="unknown phase"):
        ctl.set_phase("beta")


# ---- rollback -------------------------------------------------------------------------------------------------

async def _serve(ctl: RolloutController, market_id: str) -> str:
    """What a request handler does: consult the controller, answer from the band it says."""
    await asyncio.sleep(0)
    return ctl.band_source_for(market_id).served_by


def test_rollback_takes_effect_on_the_next_request():
    ctl = RolloutController(RolloutSettings(current_phase="full"))

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        before = await asyncio.gather(*(_serve(ctl, m) for m in MARKETS[:50]))
        t = threading.Thread(target=ctl.rollback, args=("incident",))          # toggled from another thread
        t.start(); t.join()
        during = await asyncio.gather(*(_serve(ctl, m) for m in MARKETS[:50]))
        ctl.clear_rollback()
        after = await asyncio.gather(*(_serve(ctl, m) for m in MARKETS[:50]))
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert set(before) == {"tsfm"} and set(during) == {"baseline"} and set(after) == {"tsfm"}
    ctl.rollback("again")
    assert ctl.band_source_for("x") == BandDecision("baseline", False, "full", "rollback")
    assert ctl.status()["rollback_reason"] == "again"
    assert RolloutController(RolloutSettings(rollback=True)).band_source_for("x").reason == "rollback"   # configured on


def test_rollback_under_concurrent_readers():
    ctl = RolloutController(RolloutSettings(current_phase="full"))
    stop, wrong, seen = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            flag = ctl.rolled_back
            d = ctl.band_source_for("mkt-1")
            if flag:
                seen.append(d)
                if d.served: wrong.append(d)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads: t.start()
    ctl.rollback("load")
    while len(seen) < 500: pass
    stop.set()
    for t in threads: t.join()
    assert not wrong


# ---- auto-rollback --------------------------------------------------------------------------------------------

def _history(p_canary: float, p_baseline: float = 0.6, days: int = 4, per_day: int = 40) -> pd.DataFrame:
    """Outcomes: both arms at p_baseline on day 0, then the canary (tsfm_conformal bands) at p_canary."""
    t0, rows = pd.Timestamp("2026-03-01", tz="UTC"), []
    rng = np.random.default_rng(0)
    for d in range(days):
        for source, p in (("baseline", p_baseline), ("tsfm_conformal", p_baseline if d == 0 else p_canary)):
            k = round(p * per_day)
            for i, hit in enumerate(rng.permutation([True] * k + [False] * (per_day - k))):
                rows.append({"timestamp": t0 + pd.Timedelta(days=d, minutes=30 * i), "band_source": source, "followed": bool(hit)})
    rows.append({"timestamp": t0 + pd.Timedelta(days=days - 1, hours=23), "band_source": "baseline", "followed": pd.NA})  # unresolved
    return pd.DataFrame(rows)


def test_auto_rollback_fires_on_a_bad_history_only():
    ctl = RolloutController(RolloutSettings(current_phase="canary"))
    healthy = ctl.evaluate_auto_rollback(_history(0.55))
    assert not healthy.fire and not ctl.rolled_back and healthy.relative_drop == pytest.approx(1 - 0.55 / 0.6, abs=0.01)
    bad = ctl.evaluate_auto_rollback(_history(0.45))                       # a 25% relative drop over the last 3 days
    assert bad.fire and ctl.rolled_back and ctl.band_source_for("mkt-1").reason == "rollback"
    assert (bad.canary.n, bad.baseline.n) == (120, 120)                     # day 0 is outside the window; NA not counted
    assert bad.relative_drop == pytest.approx(0.25, abs=0.01) and "auto:" in ctl.status()["rollback_reason"]


def test_auto_rollback_threshold_window_and_sample_guards():
    ctl = RolloutController(RolloutSettings(auto_rollback={"max_relative_drop": 0.3}))
    assert not ctl.evaluate_auto_rollback(_history(0.45), apply=False).fire          # 25% < 30%
    assert ctl.evaluate_auto_rollback(_history(0.35), apply=False).fire               # 42% > 30%
    early = ctl.evaluate_auto_rollback(_history(0.35), now="2026-03-01T23:00:00Z", apply=False)
    assert not early.fire and early.relative_drop == 0.0                               # only day 0 in the window
    wide = RolloutController(RolloutSettings(auto_rollback={"window_days": 10})).evaluate_auto_rollback(_history(0.45), apply=False)
    assert (wide.canary.n, wide.baseline.n) == (160, 160)
    few = RolloutController(RolloutSettings(auto_rollback={"min_outcomes": 200})).evaluate_auto_rollback(_history(0.2), apply=False)
    assert not few.fire and "too few" in few.reason
    zero = ctl.evaluate_auto_rollback(_history(0.0, p_baseline=0.0), apply=False)
    assert not zero.fire and "baseline precision is 0" in zero.reason
    off = RolloutController(RolloutSettings(auto_rollback={"enabled": False}))
    d = off.evaluate_auto_rollback(_history(0.2))
    assert not d.fire and "would fire" in d.reason and not off.rolled_back
    assert not ctl.evaluate_auto_rollback([]).fire
    with pytest.raises(DataValidationError, match="arm must be"):
        ctl.evaluate_auto_rollback(pd.DataFrame({"timestamp": ["2026-03-01"], "arm": ["x"], "followed": [True]}))


# ---- health ---------------------------------------------------------------------------------------------------

def test_degradation_and_recovery_against_the_fake_daemon():
    async def scenario():
        with serve_fake_tollama() as fake:
            adapter = TollamaAdapter(base_url=fake.url, max_retries=0)
            mon = HealthMonitor(adapter.health, clock=ManualClock())
            ctl = RolloutController(RolloutSettings(current_phase="full"), healthy=lambda: mon.healthy)
            out = []
            for down in (False, True, True, False):
                fake.set(down=down)
                out.append((await mon.tick(), mon.mode, ctl.band_source_for("mkt-1").reason))
            await adapter.aclose()
            return out, list(mon.transitions), mon.status()

    states, transitions, status = asyncio.run(scenario())
    assert states == [(True, "tsfm", "in_cohort"), (False, "baseline_only", "baseline_only"),
                      (False, "baseline_only", "baseline_only"), (True, "tsfm", "in_cohort")]
    assert [(t.from_mode, t.to_mode) for t in transitions] == [("tsfm", "baseline_only"), ("baseline_only", "tsfm")]
    assert status["n_probes"] == 4 and status["mode"] == "tsfm"


def test_open_breaker_degrades_even_with_a_healthy_probe():
    breaker = {"open": False}

    async def ok() -> bool:
        return True

    async def scenario():
        mon = HealthMonitor(ok, breaker_open=lambda: breaker["open"])
        modes = [await mon.tick() and mon.mode]
        breaker["open"] = True; await mon.tick(); modes.append(mon.mode)
        breaker["open"] = False; await mon.tick(); modes.append(mon.mode)
        return modes, mon.last_error

    modes, err = asyncio.run(scenario())
    assert modes == ["tsfm", "baseline_only", "tsfm"] and err == "circuit breaker open"


def test_thresholds_timeouts_and_interval_on_the_clock():
    answers = [False, False, True, False, True, True]

    async def probe() -> bool:
        a = answers.pop(0)
        return a

    async def hang() -> bool:
        await asyncio.sleep(3600)
        return True

    async def scenario():
        clock = ManualClock()
        mon = HealthMonitor(probe, clock=clock, failures_to_degrade=2, successes_to_recover=2)
        modes = []
        for _ in range(6):
            await mon.tick(); modes.append(mon.mode)
        slow = HealthMonitor(hang, probe_timeout_s=0.01)
        await slow.tick()
        lazy = HealthMonitor(probe, clock=clock, interval_s=30)
        answers.extend([True, True])
        await lazy.maybe_tick(); clock.t += 10; await lazy.maybe_tick(); n1 = lazy.n_probes
        clock.t += 25; await lazy.maybe_tick()
        return modes, slow.mode, slow.last_error, n1, lazy.n_probes

    modes, slow_mode, slow_err, n1, n2 = asyncio.run(scenario())
    assert modes == ["tsfm", "baseline_only", "baseline_only", "baseline_only", "baseline_only", "tsfm"]
    assert slow_mode == "baseline_only" and "timed out" in slow_err
    assert (n1, n2) == (1, 2)
    with pytest.raises(ConfigError, match="interval_s"):
        HealthMonitor(probe, interval_s=-1)


def test_background_task_probes_and_stops():
    calls = []

    async def probe() -> bool:
        calls.append(1)
        return len(calls) != 2

    async def scenario():
        done = asyncio.Event()

        async def yield_sleep(_s: float) -> None:
            if len(calls) >= 3: done.set()
            await asyncio.sleep(0)

        mon = HealthMonitor(probe, sleep=yield_sleep)
        async with mon:
            await asyncio.wait_for(done.wait(), 5)
            running = mon.status()["running"]
        return running, mon.status()["running"], [t.to_mode for t in mon.transitions]

    running, after, modes = asyncio.run(scenario())
    assert running and not after and modes == ["baseline_only", "tsfm"]


# ---- structured logs ------------------------------------------------------------------------------------------

def _req_resp() -> tuple[TSFMForecastRequest, TSFMForecastResponse]:
    t0 = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
    ts = [t0 - timedelta(minutes=5 * k) for k in (5, 4, 2, 1, 0)]                  # 6 grid points, one missing
    req = TSFMForecastRequest(market_id="m-1", as_of_ts=t0, horizon_steps=2, y=[0.5, 0.5, 0.52, 0.51, 0.5], y_ts=ts, request_id="rid-7")
    meta = ResponseMeta(runtime="tollama", model="chronos2", version="0.1.0", latency_ms=12.34567, input_len=5,
                        warnings=["w1"], band_source="tsfm_raw", served_by="tsfm_wb.runner")
    band = {"0.1": [0.4, 0.4], "0.5": [0.5, 0.5], "0.9": [0.6, 0.6]}
    resp = TSFMForecastResponse(market_id="m-1", as_of_ts=t0, freq="5m", horizon_steps=2, quantiles=[0.1, 0.5, 0.9],
                                timestamps=future_timestamps(t0, "5m", 2), yhat_q=band, meta=meta)
    return req, resp


def test_forecast_log_record_fields():
    req, resp = _req_resp()
    rec = forecast_log_record(req, resp, phase="canary", served=True)
    assert {k: rec[k] for k in ("market_id", "as_of", "model", "version", "input_len", "fallback_reason", "warnings", "latency_ms",
                                "request_id", "phase", "served")} == {
        "market_id": "m-1", "as_of": "2026-02-20T12:00:00+00:00", "model": "chronos2", "version": "0.1.0", "input_len": 5,
        "fallback_reason": None, "warnings": ["w1"], "latency_ms": 12.346, "request_id": "rid-7", "phase": "canary", "served": True}
    assert rec["missingness"] == round(1 / 6, 6)                                     # one of six grid points missing
    with pytest.raises(DataValidationError, match="overwrite"):
        forecast_log_record(req, resp, market_id="other")


def test_log_forecast_writes_one_json_line():
    req, resp = _req_resp()
    buf = io.StringIO()
    try:
        configure_logging("INFO", json_lines=True, stream=buf)
        log_forecast(get_logger("runner"), req, resp, phase="shadow", served=False, mode="tsfm")
    finally:
        configure_logging("WARNING")
    (line,) = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert (line["msg"], line["logger"], line["level"]) == ("forecast", "tsfm_wb.runner", "INFO")
    assert (line["market_id"], line["request_id"], line["phase"], line["served"], line["mode"]) == ("m-1", "rid-7", "shadow", False, "tsfm")
