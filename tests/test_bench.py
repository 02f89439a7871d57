"""Smoke test of the runner benchmark on a tiny workload: it runs end to end and writes a complete report.
No timing is asserted here; the targets are for reports/bench/runner.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tsfm_wb.experiments.bench import BenchSettings, evaluate_targets, run_bench
from tsfm_wb.tsfm.runner.settings import RunnerConfig

REPO = Path(__file__).resolve().parent.parent


def test_small_bench_writes_a_complete_report(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)                                     # configs/runner.yaml names files relative to the repo
    settings = BenchSettings(n_markets=8, n_points=40, n_samples=10, n_http=10, warmup=1, out_dir=str(tmp_path))
    report = run_bench(settings)
    on_disk = json.loads((tmp_path / "runner.json").read_text())
    assert on_disk["checks"] == json.loads(json.dumps(report["checks"]))
    assert [c["name"] for c in report["checks"]] == [c["name"] for c in evaluate_targets(report["results"], RunnerConfig(), settings)]
    assert all(isinstance(c["pass"], bool) and c["ratio"] > 0 for c in report["checks"])
    cycles = report["results"]["cycles"]
    for server in ("concurrent_server", "one_at_a_time_server"):
        assert {m: (r["markets"], r["fallbacks"]) for m, r in cycles[server].items()} == {m: (8, 0) for m in ("sequential", "concurrent", "batched")}
        assert (cycles[server]["sequential"]["backend_requests"], cycles[server]["batched"]["backend_requests"]) == (8, 1)
    assert set(report["results"]["latency"]) == {"runner_overhead", "zero_latency_request", "cache_hit", "fallback_low_liquidity",
                                                  "fallback_breaker_open"}
    assert report["results"]["latency"]["cache_hit"]["n"] == 10 and report["results"]["http"]["http_e2e"]["n"] == 10
    md = (tmp_path / "runner.md").read_text()
    assert md.startswith("# TSFM runner benchmark") and md.count("| PASS |") + md.count("| FAIL |") == len(report["checks"])


def test_importing_the_module_runs_nothing():
    out = subprocess.run([sys.executable, "-c", "import tsfm_wb.experiments.bench; print('imported')"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "imported"
