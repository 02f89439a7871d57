"""schemathesis against the forecast service (its own process, the fake tollama daemon as backend) on a small budget:
no server error, every status documented, every body matching its schema. `make fuzz` runs the same harness long."""
from __future__ import annotations

import os

from tsfm_wb.experiments.fuzz import FuzzSettings, run_fuzz

EXAMPLES = int(os.environ.get("TSFM_WB_FUZZ_EXAMPLES", "25"))


def test_schemathesis_finds_no_server_error_and_no_schema_or_status_violation(tmp_path):
    summary = run_fuzz(FuzzSettings(examples=EXAMPLES, seed=0, out_dir=str(tmp_path)))
    assert summary["complete"] and summary["errors"] == 0, summary
    assert summary["requests"] >= 5 * EXAMPLES, summary                  # the run really exercised the routes
    assert summary["failures"] == 0, summary["failures_by_kind"]
    accepted = sum(v.get("accepted", 0) for v in summary["valid_rates"]["POST /tsfm/forecast"].values())
    assert accepted > 0, summary["valid_rates"]                          # some bodies got past validation to the runner
