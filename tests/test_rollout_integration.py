"""The phased rollout and the health monitor wired through TSFMRunner and the FastAPI app.

Rollback toggles (runner and admin routes), shadow, canary cohorts, health-driven baseline-only mode and its
recovery, structured forecast logs. The backend is the fake tollama daemon over real HTTP on 127.0.0.1 (nothing
patched); clocks are injected and the monitor is driven by `tick()` / `maybe_tick()`: no test sleeps.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from tsfm_wb.tsfm.api import create_app
from tsfm_wb.core import JsonLineFormatter
from tsfm_wb.tsfm.fake_tollama import FakeTollama
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.rollout import HealthMonitor, RolloutController, RolloutSettings, in_cohort
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.schemas import TSFMForecastResponse
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig

from test_runner import Clock, market  # the fake daemon fixtures `server` and `fake` come from conftest

T_END = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
REGISTRY = ModelsRegistry(models={"chronos2": {"license_tag": "apache-2.0"}}, prod={"allowed_models": ["chronos2"]})
PP = PostprocessSettings()
TOKEN_ENV = "TSFM_WB_TEST_ADMIN_TOKEN"
LOG_FIELDS = {"market_id", "as_of", "model", "version", "input_len", "missingness", "fallback_reason", "warnings", "latency_ms",
              "request_id", "phase", "served", "served_by", "band_source", "rollout_reason", "mode"}


@pytest.fixture
def forecast_log():
    """JSON lines of the runner's forecast logger, captured by a handler (restored afterwards)."""
    buf, lg = io.StringIO(), logging.getLogger("tsfm_wb.runner.forecast")
    handler = logging.StreamHandler(buf); handler.setFormatter(JsonLineFormatter())
    saved = (lg.level, lg.propagate)
    lg.addHandler(handler); lg.setLevel(logging.INFO); lg.propagate = False
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    lg.removeHandler(handler); lg.setLevel(saved[0]); lg.propagate = saved[1]


def make_runner(fake: FakeTollama, phase: str | None = "full", *, monitor: bool = False, clock: Clock | None = None,
                settings: RolloutSettings | None = None, deadline_s: float = 10.0, **cfg: Any) -> TSFMRunner:
    """A runner on the fake daemon, with a rollout in `phase` (None: no rollout) and optionally a health monitor."""
    clock = clock or Clock()
    adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=deadline_s, max_retries=0))
    rollout = RolloutController(settings or RolloutSettings(current_phase=phase)) if phase or settings else None
    health = HealthMonitor(adapter.health, clock=clock) if monitor else None
    return TSFMRunner(RunnerConfig(**cfg), adapter=adapter, guard=LicenseGuard(REGISTRY), postprocess=PP, rollout=rollout,
                      health=health, clock=clock)


def who(resp: TSFMForecastResponse) -> tuple:
    return resp.meta.served_by, resp.meta.fallback_reason, resp.meta.phase


def run(coro):
    return asyncio.run(coro)


# --- runner ------------------------------------------------------------------------------------------------

def test_without_rollout_every_market_gets_the_tsfm_band(fake):
    async def go():
        async with make_runner(fake, None) as r:
            return await r.forecast(market(1)), await r.forecast(market(2, liquidity_bucket="low")), await r.health(), r.metrics_text()
    tsfm, low, health, text = run(go())
    assert who(tsfm) == ("tsfm", None, None) and tsfm.meta.runtime == "tollama"
    assert who(low) == ("baseline", "low_liquidity", None)          # served_by is the band actually served
    assert (health["mode"], health["rollout"], health["monitor"], health["status"]) == ("tsfm", None, None, "ok")
    assert "tsfm_rollout" not in text and "tsfm_backend_baseline_only" not in text


def test_rollback_takes_effect_on_the_next_request(fake):
    req = market(1)
    async def go():
        async with make_runner(fake, "full") as r:
            a = await r.forecast(req)
            r.rollout.rollback("test drill")
            b = await r.forecast(req)                                # would be a cache hit: the rollback wins
            cycle = await r.run_cycle([market(i) for i in range(10)])
            calls, text = fake.stats.forecast_requests, r.metrics_text()
            r.rollout.clear_rollback()
            c = await r.forecast(req)
            return a, b, cycle, calls, text, c
    a, b, cycle, calls, text, c = run(go())
    assert who(a) == ("tsfm", None, "full") and not a.meta.cache_hit
    assert who(b) == ("baseline", "rollback", "full") and b.meta.runtime == "baseline" and not b.meta.cache_hit
    assert any("rolled back (test drill)" in w for w in b.meta.warnings)
    assert {who(o) for o in cycle} == {("baseline", "rollback", "full")}
    assert calls == 1                                                # nothing reached the daemon during the rollback
    assert "tsfm_rollout_rollback 1.0" in text.splitlines()
    assert 'tsfm_rollout_decisions_total{reason="rollback",served_by="baseline"} 11.0' in text.splitlines()
    assert who(c) == ("tsfm", None, "full") and c.meta.cache_hit and c.yhat_q == a.yhat_q


def test_shadow_computes_the_tsfm_band_but_serves_the_baseline(fake, forecast_log):
    reqs = [market(i) for i in range(12)]
    async def go():
        async with make_runner(fake, "shadow", cycle={"chunk_size": 50}) as r:
            one = await r.forecast(reqs[0])
            cycle = await r.run_cycle(reqs[1:])
            r.rollout.rollback("compare")
            rolled = await r.forecast(reqs[0])
            return one, cycle, rolled, r.metrics_text()
    one, cycle, rolled, text = run(go())
    assert who(one) == ("baseline", "shadow", "shadow") and (one.meta.runtime, one.meta.band_source) == ("baseline", "baseline")
    assert one.yhat_q == rolled.yhat_q                               # the baseline chain's band, as in a rollback
    assert {who(o) for o in cycle} == {("baseline", "shadow", "shadow")}
    assert fake.stats.series_per_request == [1, 11]                  # every market computed, the cycle in one batch
    assert 'tsfm_shadow_computed_total{runtime="tollama"} 12.0' in text.splitlines()
    assert 'tsfm_rollout_served_percent 0.0' in text.splitlines()
    lines = [x for x in forecast_log() if x["market_id"] == "m-0"]
    assert [(x["served"], x["runtime"], x["served_by"], x["fallback_reason"]) for x in lines] == [
        (False, "tollama", "tsfm", None), (True, "baseline", "baseline", "shadow"), (True, "baseline", "baseline", "rollback")]


def test_canary_serves_the_tsfm_band_only_to_its_cohort(fake):
    reqs = [market(i) for i in range(200)]
    cohort = {q.market_id for q in reqs if in_cohort(q.market_id, 10)}
    async def go():
        # budgets far above the fake's 0.25 s per 100 series: on a loaded 2-core machine a 1 s budget was once missed,
        # and this test is about who is served, not about deadlines (tests/test_runner.py covers those)
        async with make_runner(fake, "canary", deadline_s=30.0, cycle={"chunk_size": 100, "batch_deadline_s": 30.0}) as r:
            canary = await r.run_cycle(reqs)
            single = [await r.forecast(q) for q in reqs[:50]]
            r.rollout.set_phase("ramp")
            ramp = await r.run_cycle(reqs)
            return canary, single, ramp
    canary, single, ramp = run(go())
    assert 10 <= len(cohort) <= 35
    failed = [(o.market_id, o.meta.fallback_reason, o.meta.warnings[-1:]) for o in canary
              if o.market_id in cohort and o.meta.served_by != "tsfm"]
    assert not failed, failed                                         # says why, should a cohort market fall back
    assert {o.market_id for o in canary if o.meta.served_by == "tsfm"} == cohort
    assert {o.meta.fallback_reason for o in canary if o.market_id not in cohort} == {"shadow"}
    assert [o.meta.served_by for o in single] == [o.meta.served_by for o in canary[:50]]   # one path or the other: same cohort
    assert fake.stats.series_per_request == [100, 100]               # all 200 computed once; the rest were cache hits
    served_ramp = {o.market_id for o in ramp if o.meta.served_by == "tsfm"}
    assert cohort < served_ramp and 70 <= len(served_ramp) <= 130    # canary markets stay in as the percentage grows


def test_markets_outside_the_computed_cohort_never_reach_the_daemon(fake):
    settings = RolloutSettings(phases=[{"name": "canary", "served_percent": 10, "computed_percent": 10}], current_phase="canary")
    reqs = [market(i) for i in range(100)]
    async def go():
        async with make_runner(fake, settings=settings) as r: return await r.run_cycle(reqs)
    out = run(go())
    served = [o for o in out if o.meta.served_by == "tsfm"]
    assert served and fake.stats.series == len(served)
    assert {o.meta.fallback_reason for o in out if o.meta.served_by == "baseline"} == {"not_computed"}


def test_degradation_and_recovery_through_the_runner(fake):
    clock = Clock()
    async def go():
        async with make_runner(fake, "full", monitor=True, clock=clock) as r:
            mon, out = r.health_monitor, {}
            out["first"] = await mon.maybe_tick()                    # never probed: probes now
            fake.set(down=True)
            clock.t += 10; await mon.maybe_tick(); out["early"] = mon.mode   # within the 30 s interval: no probe
            clock.t += 20; await mon.maybe_tick(); out["down"] = mon.mode
            calls = r.metrics.value("tsfm_backend_calls_total")
            out["one"], out["cycle"] = await r.forecast(market(1)), await r.run_cycle([market(i) for i in range(5)])
            out["calls"] = r.metrics.value("tsfm_backend_calls_total") - calls
            out["health"], out["text"] = await r.health(), r.metrics_text()
            fake.set(down=False)
            clock.t += 30; await mon.maybe_tick(); out["up"] = mon.mode
            out["again"], out["health2"], out["text2"] = await r.forecast(market(1)), await r.health(), r.metrics_text()
            out["transitions"] = [(t.from_mode, t.to_mode) for t in mon.transitions]
            return out
    o = run(go())
    assert (o["first"], o["early"], o["down"], o["up"]) == (True, "tsfm", "baseline_only", "tsfm")
    assert who(o["one"]) == ("baseline", "baseline_only", "full") and {who(x) for x in o["cycle"]} == {who(o["one"])}
    assert any(w.startswith("fallback (baseline_only): backend unhealthy") for w in o["one"].meta.warnings)
    assert o["calls"] == 0                                           # baseline-only: the backend is not even tried
    h = o["health"]
    assert (h["status"], h["mode"], h["backend"], h["monitor"]["mode"]) == ("degraded", "baseline_only", "down", "baseline_only")
    assert h["monitor"]["last_error"]
    assert "tsfm_backend_baseline_only 1.0" in o["text"].splitlines()
    assert 'tsfm_rollout_decisions_total{reason="baseline_only",served_by="baseline"} 6.0' in o["text"].splitlines()
    assert who(o["again"]) == ("tsfm", None, "full") and o["again"].meta.runtime == "tollama"
    assert (o["health2"]["status"], o["health2"]["mode"]) == ("ok", "tsfm") and "tsfm_backend_baseline_only 0.0" in o["text2"].splitlines()
    assert o["transitions"] == [("tsfm", "baseline_only"), ("baseline_only", "tsfm")]


def _rollout_yaml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "rollout.yaml"; p.write_text(text); return str(p)


def test_runner_builds_rollout_and_monitor_from_config_and_an_open_breaker_degrades(fake, tmp_path):
    clock = Clock()
    path = _rollout_yaml(tmp_path, "current_phase: full\nhealth: {interval_s: 30}\n")
    adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=10.0, max_retries=0))
    async def go():
        cfg = RunnerConfig(rollout_config=path, breaker={"failures": 2, "cooldown_s": 100, "probe_on_health": False})
        async with TSFMRunner(cfg, adapter=adapter, guard=LicenseGuard(REGISTRY), postprocess=PP, clock=clock) as r:
            mon, out = r.health_monitor, {}
            out["built"] = (r.rollout.phase.name, mon.settings.interval_s, mon.status()["running"])
            fake.set(error_status=500)
            out["fails"] = [(await r.forecast(market(i))).meta.fallback_reason for i in range(3)]
            await mon.tick(); out["open"] = (r.breaker.state, mon.mode, mon.last_error)
            out["degraded"] = await r.forecast(market(5))
            fake.set(error_status=None); clock.t += 100                # cooldown over: the breaker allows a probe
            await mon.tick(); out["recovered"] = mon.mode
            out["probe"] = await r.forecast(market(6))
            out["closed"] = r.breaker.state
            return out
    o = run(go())
    assert o["built"] == ("full", 30.0, False)                       # built from the file; started only by the app
    assert o["fails"] == ["adapter_error", "adapter_error", "breaker_open"]
    assert o["open"] == ("open", "baseline_only", "circuit breaker open")
    assert who(o["degraded"]) == ("baseline", "baseline_only", "full")
    assert o["recovered"] == "tsfm" and who(o["probe"]) == ("tsfm", None, "full") and o["closed"] == "closed"


def test_a_good_health_probe_lets_the_breaker_probe_through_before_the_cooldown(fake):
    clock = Clock()
    adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=10.0, max_retries=0))
    async def go():
        cfg = RunnerConfig(breaker={"failures": 2, "cooldown_s": 120})
        async with TSFMRunner(cfg, adapter=adapter, guard=LicenseGuard(REGISTRY), postprocess=PP, clock=clock) as r:
            out = {"loop": r.probe_loop is not None and r.health_monitor is None}
            fake.set(error_status=500)
            for i in range(2): await r.forecast(market(i))
            out["opened"] = r.breaker.state
            clock.t += 5; await r.probe()                            # health answers, forecasts still fail
            out["still_failing"] = ((await r.forecast(market(3))).meta.fallback_reason, r.breaker.state, r.breaker.opened_count)
            fake.set(error_status=None); clock.t += 5; await r.probe()   # backend back, 10 s after the opening
            out["back"] = ((await r.forecast(market(4))).meta.runtime, r.breaker.state)
            out["probes"] = r.metrics.value("tsfm_breaker_probes_total")
            return out
    o = run(go())
    assert o["loop"] and o["opened"] == "open"
    assert o["still_failing"] == ("adapter_error", "open", 2)          # one trial call, then a full cooldown again
    assert o["back"] == ("tollama", "closed") and o["probes"] == 2     # closed 10 s after the opening, not 120 s


def test_every_forecast_is_one_valid_json_line_with_the_required_fields(fake, forecast_log):
    reqs = [market(i, request_id=f"req-{i}") for i in range(30)]
    async def go():
        async with make_runner(fake, "canary", monitor=True) as r:
            out = await r.run_cycle(reqs)
            out.append(await r.forecast(market(99, liquidity_bucket="low", request_id="req-low")))
            return out
    out = run(go())
    lines = forecast_log()
    for x in lines: assert LOG_FIELDS <= set(x), LOG_FIELDS - set(x)
    n_shadow = sum(o.meta.fallback_reason == "shadow" for o in out)
    assert n_shadow > 0 and len(lines) == len(out) + n_shadow        # one per response, one more per shadow computation
    served = {x["request_id"]: x for x in lines if x["served"]}
    assert set(served) == {o.meta.request_id for o in out}
    x = served["req-3"]
    assert (x["msg"], x["logger"], x["as_of"], x["phase"], x["mode"], x["input_len"], x["missingness"], x["version"]) == (
        "forecast", "tsfm_wb.runner.forecast", T_END.isoformat(), "canary", "tsfm", 64, 0.0, out[3].meta.version)
    assert x["served_by"] == out[3].meta.served_by and x["latency_ms"] >= 0
    assert (served["req-low"]["fallback_reason"], served["req-low"]["warnings"][0][:25]) == ("low_liquidity", "fallback (low_liquidity):")


# --- API ---------------------------------------------------------------------------------------------------

def _body(i: int = 1) -> dict:
    return json.loads(market(i).model_dump_json(exclude_none=True))


async def _calls(app, steps: list[tuple[str, str, dict | None]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
        return [await c.request(m, path, **(kw or {})) for m, path, kw in steps]


def test_rollback_toggle_through_the_admin_api(fake, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    auth = {"headers": {"Authorization": "Bearer s3cret"}}
    fc = ("POST", "/tsfm/forecast", {"json": _body()})
    async def go():
        async with make_runner(fake, "full", admin={"enabled": True, "token_env": TOKEN_ENV}) as r:
            return await _calls(create_app(runner=r), [
                fc, ("POST", "/admin/rollback", None), ("POST", "/admin/rollback", {"headers": {"Authorization": "Bearer nope"}}),
                ("POST", "/admin/rollback", {**auth, "params": {"reason": "bad canary"}}), fc, ("GET", "/health", None),
                ("GET", "/metrics", None), ("POST", "/admin/rollback/clear", auth), fc, ("POST", "/admin/phase/shadow", auth), fc,
                ("POST", "/admin/phase/beta", auth)])
    first, no_auth, wrong, rolled, during, health, metrics, cleared, after, phase, shadow, bad = run(go())
    meta = lambda r: (r.json()["meta"]["served_by"], r.json()["meta"]["fallback_reason"], r.json()["meta"]["phase"])
    assert meta(first) == ("tsfm", None, "full")
    assert (no_auth.status_code, wrong.status_code, no_auth.headers["www-authenticate"]) == (401, 401, "Bearer")
    assert rolled.status_code == 200 and (rolled.json()["rollback"], rolled.json()["rollback_reason"]) == (True, "bad canary")
    assert meta(during) == ("baseline", "rollback", "full")
    assert health.json()["rollout"]["rollback"] is True and "tsfm_rollout_rollback 1.0" in metrics.text.splitlines()
    assert cleared.json()["rollback"] is False and meta(after) == ("tsfm", None, "full")
    assert phase.json()["phase"] == "shadow" and meta(shadow) == ("baseline", "shadow", "shadow")
    assert bad.status_code == 404 and "unknown phase 'beta'" in bad.json()["detail"]
    assert fake.stats.forecast_requests == 1                         # later answers: cache hits (also for the shadow computation)


@pytest.mark.parametrize("admin, env, phase, status, says", [
    (None, None, "full", 403, "admin routes are disabled"),
    ({"enabled": True, "token_env": TOKEN_ENV}, None, "full", 503, f"{TOKEN_ENV}, which is not set"),
    ({"enabled": True, "token_env": None}, None, None, 409, "no rollout configured"),
    ({"enabled": True, "token_env": None}, None, "full", 200, None),
])
def test_admin_routes_are_guarded(fake, monkeypatch, admin, env, phase, status, says):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    async def go():
        async with make_runner(fake, phase, **({"admin": admin} if admin else {})) as r:
            return (await _calls(create_app(runner=r), [("POST", "/admin/phase/canary", None)]))[0]
    resp = run(go())
    assert resp.status_code == status
    if says: assert says in resp.json()["detail"]
    else: assert resp.json()["phase"] == "canary"


def test_degradation_and_recovery_through_the_api(fake):
    clock = Clock()
    fc = ("POST", "/tsfm/forecast", {"json": _body()})
    probe = [fc, ("GET", "/health", None), ("GET", "/metrics", None)]
    async def go():
        async with make_runner(fake, "full", monitor=True, clock=clock) as r:
            app = create_app(runner=r)
            await r.health_monitor.tick(); up = await _calls(app, probe)
            fake.set(down=True); await r.health_monitor.tick(); down = await _calls(app, probe)
            fake.set(down=False); await r.health_monitor.tick(); back = await _calls(app, probe)
            return up, down, back
    (f1, h1, m1), (f2, h2, m2), (f3, h3, m3) = run(go())
    assert (f1.json()["meta"]["served_by"], h1.json()["status"], h1.json()["mode"]) == ("tsfm", "ok", "tsfm")
    assert "tsfm_backend_baseline_only 0.0" in m1.text.splitlines()
    assert (f2.status_code, f2.json()["meta"]["fallback_reason"], f2.json()["meta"]["served_by"]) == (200, "baseline_only", "baseline")
    assert (h2.json()["status"], h2.json()["mode"], h2.json()["monitor"]["mode"]) == ("degraded", "baseline_only", "baseline_only")
    assert "tsfm_backend_baseline_only 1.0" in m2.text.splitlines()
    assert 'tsfm_rollout_decisions_total{reason="baseline_only",served_by="baseline"} 1.0' in m2.text.splitlines()
    assert (f3.json()["meta"]["served_by"], h3.json()["status"], h3.json()["mode"]) == ("tsfm", "ok", "tsfm")
    assert "tsfm_backend_baseline_only 0.0" in m3.text.splitlines()


def test_app_lifespan_starts_and_stops_the_monitor(fake):
    async def go():
        probed = asyncio.Event()
        async def park(_s: float) -> None:                           # the monitor's sleep: note the first probe, wait to be stopped
            probed.set(); await asyncio.Event().wait()
        adapter = TollamaAdapter(TollamaConfig(base_url=fake.url))
        r = TSFMRunner(RunnerConfig(), adapter=adapter, guard=LicenseGuard(REGISTRY), postprocess=PP,
                       health=HealthMonitor(adapter.health, sleep=park))
        app = create_app(runner=r)
        before = r.health_monitor.status()["running"]
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(probed.wait(), 10)
            during = r.health_monitor.status()
            health = (await _calls(app, [("GET", "/health", None)]))[0].json()
        after = r.health_monitor.status()["running"]
        await r.aclose()
        return before, during, health, after
    before, during, health, after = run(go())
    assert (before, during["running"], during["n_probes"], after) == (False, True, 1, False)
    assert (health["mode"], health["monitor"]["running"], health["rollout"]) == ("tsfm", True, None)
