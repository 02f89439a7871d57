"""Per-model serving settings (deadline_s, max_series from the models registry) in TSFMRunner, against the fake
tollama daemon over real HTTP on 127.0.0.1 (nothing patched).

The adapter's own deadline is set far above the model's, so only the model's budget can make a call time out.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from tsfm_wb.tsfm.fake_tollama import FakeTollama
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.schemas import TSFMForecastRequest
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig

T_END = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
ADAPTER_DEADLINE_S = 30.0          # never the one that bites here
FAST, SLOW = "chronos2", "timesfm-2.5-200m"   # two models the fake daemon serves, given a tight and a loose budget
REGISTRY = ModelsRegistry(models={FAST: {"license_tag": "apache-2.0", "deadline_s": 0.3, "max_series": 3},
                                  SLOW: {"license_tag": "apache-2.0", "deadline_s": 20.0, "max_series": 2}},
                          prod={"allowed_models": [FAST, SLOW]})
UNBATCHED = {"batching": {"enabled": False}, "limiter": {"algorithm": "fixed", "initial_limit": 64}}


def market(i: int, model: str = FAST, n: int = 64) -> TSFMForecastRequest:
    y = 0.5 + 0.3 * np.sin(np.arange(n) / 9 + i)
    ts = [T_END - timedelta(minutes=5 * (n - 1 - k)) for k in range(n)]
    return TSFMForecastRequest(market_id=f"m-{i}", as_of_ts=T_END, y=y.round(5).tolist(), y_ts=ts, liquidity_bucket="high",
                               model={"model_name": model})


def runner(fake: FakeTollama, **cfg: Any) -> TSFMRunner:
    adapter = TollamaAdapter(TollamaConfig(base_url=fake.url, deadline_s=ADAPTER_DEADLINE_S, max_retries=0, api_key_env=None))
    return TSFMRunner(RunnerConfig(**cfg), adapter=adapter, guard=LicenseGuard(REGISTRY, "prod"),
                      postprocess=PostprocessSettings(), feed_calibrator=False)


def test_model_past_its_deadline_falls_back_with_reason_timeout(fake):
    fake.set(latency_s=2.0)                                # slower than FAST's 0.3 s, far faster than the adapter's 30 s
    async def go():
        async with runner(fake, **UNBATCHED) as r: return await r.forecast(market(1))
    resp = asyncio.run(go())
    assert (resp.meta.fallback_used, resp.meta.fallback_reason) == (True, "timeout")
    assert fake.stats.forecast_requests == 1 and 0 < fake.stats.last_body["timeout"] <= 0.3   # the daemon was told


def test_the_same_latency_fits_a_slower_models_deadline(fake):
    fake.set(latency_s=0.5)
    async def go():
        async with runner(fake, **UNBATCHED) as r:
            slow = await r.forecast(market(2, model=SLOW)); sent = fake.stats.last_body["timeout"]
            return slow, sent, await r.forecast(market(3))
    slow, sent, fast = asyncio.run(go())
    assert (slow.meta.fallback_used, slow.meta.runtime) == (False, "tollama") and 10.0 < sent <= 20.0   # SLOW's own budget
    assert (fast.meta.fallback_used, fast.meta.fallback_reason) == (True, "timeout")


def test_timed_out_batch_is_not_split(fake):
    fake.set(latency_s=1.0)
    async def go():
        async with runner(fake) as r: return await r.run_cycle([market(i) for i in range(3)]), r.metrics.value("tsfm_batch_splits_total")
    answers, splits = asyncio.run(go())
    assert {(a.meta.fallback_used, a.meta.fallback_reason) for a in answers} == {(True, "timeout")}
    assert (fake.stats.forecast_requests, fake.stats.series_per_request, splits) == (1, [3], 0)


def test_cycle_chunks_are_cut_at_max_series(fake):
    async def go():
        async with runner(fake, cycle={"chunk_size": 50}) as r:
            return await r.run_cycle([market(i) for i in range(7)] + [market(10 + i, model=SLOW) for i in range(3)])
    answers = asyncio.run(go())
    assert not any(a.meta.fallback_used for a in answers)
    assert sorted(fake.stats.series_per_request) == [1, 1, 2, 3, 3]     # FAST: 3 + 3 + 1, SLOW: 2 + 1


def test_micro_batches_are_cut_at_max_series(fake):
    fake.set(one_at_a_time=True, latency_s=0.05)          # requests queue, so concurrent ones gather into batches
    async def go():
        async with runner(fake, batching={"max_batch": 64}) as r:
            return await asyncio.gather(*(r.forecast(market(20 + i, model=SLOW)) for i in range(8)))
    answers = asyncio.run(go())
    assert not any(a.meta.fallback_used for a in answers)
    assert sum(fake.stats.series_per_request) == 8 and max(fake.stats.series_per_request) <= 2
