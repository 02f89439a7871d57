"""Rollout parts across process and network boundaries: cohorts identical in every process, and the health monitor
degrading and recovering against the fake tollama daemon over real HTTP. The rest of the rollout (settings, cohorts,
controller, rollback, the automatic-rollback rule, the monitor on a manual clock, forecast logs) is tested in
nbs/tsfm/29_rollout.ipynb; the rollout wired through the runner and the API in tests/test_rollout_integration.py."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from tsfm_wb.tsfm.fake_tollama import serve_fake_tollama
from tsfm_wb.tsfm.rollout import HealthMonitor, RolloutController, RolloutSettings, cohort_bucket
from tsfm_wb.tsfm.tollama import TollamaAdapter


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_cohorts_are_stable_across_processes():
    code = "import json; from tsfm_wb.tsfm.rollout import cohort_bucket; print(json.dumps([cohort_bucket(f'mkt-{i}') for i in range(200)]))"
    seen = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONHASHSEED": seed}).stdout) for seed in ("1", "2")]
    here = [cohort_bucket(f"mkt-{i}") for i in range(200)]
    assert seen[0] == seen[1] == here


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
