"""The TSFM eval step's model_server backend: a real model served in its own process, scored through the step."""
from __future__ import annotations

from pathlib import Path

from tsfm_wb.experiments.grid import expand_grid, load_matrix_config
from tsfm_wb.experiments.steps import tsfm_eval_step


def test_model_server_backend_serves_a_real_model_through_the_step(tmp_path):
    cfg = {"backend": "model_server", "model": "naive", "stride": 6, "calibrator": {"min_samples": 20}}
    m = tsfm_eval_step(tmp_path, cfg)["metrics"]
    assert m["backend"] == "model_server" and m["model"] == "naive"
    assert m["answers"] == {"tollama": m["n_forecasts"]} and m["fallback_rate"] == 0.0   # every forecast from the server
    raw = [r for r in m["coverage"] if r["band"] == "raw"]
    assert raw and all(r["width"] > 0 for r in raw)                                      # a real band, not a flat line
    assert (tmp_path / "eval_table.csv").exists() and (tmp_path / "metrics.json").exists()


def test_shipped_matrix_runs_three_real_served_models_with_stable_ids():
    root = Path(__file__).parents[1]
    specs = [s for s in expand_grid(load_matrix_config(root / "configs" / "matrix.yaml"), "quick", root) if s.kind == "tsfm"]
    served = {s.run_id: s.steps[0].parameters["config"] for s in specs
              if s.steps[0].parameters["config"].get("backend") == "model_server"}
    assert len({c["model"] for c in served.values()}) >= 3
    again = [s.run_id for s in expand_grid(load_matrix_config(root / "configs" / "matrix.yaml"), "quick", root)]
    assert set(served) <= set(again)                                                     # deterministic run ids


def test_model_server_backend_on_simulated_markets(tmp_path):
    cfg = {"backend": "model_server", "model": "naive", "dataset": "simulator", "simulator": {"n_markets": 6, "n_points": 50, "seed": 5},
           "min_context": 32, "test_fraction": 0.5, "calibrator": {"min_samples": 20}}
    m = tsfm_eval_step(tmp_path, cfg)["metrics"]
    assert (m["dataset"], m["n_series"], m["simulator"]["n_points"]) == ("simulator", 6, 50)
    assert m["answers"] == {"tollama": 6 * (50 - 6 - 32 + 1)} and m["fallback_rate"] == 0.0
    served = [r for r in m["coverage"] if r["band"] == "served" and r["scheme"] == "online"]
    assert served and all(0 < r["coverage"] <= 1 and r["width"] > 0 for r in served)


def test_shipped_matrix_compares_every_source_on_the_same_simulated_markets():
    root = Path(__file__).parents[1]
    confs = [s.steps[0].parameters["config"] for s in expand_grid(load_matrix_config(root / "configs" / "matrix.yaml"), "quick", root)
             if s.kind == "tsfm" and s.steps[0].parameters["config"].get("dataset") == "simulator"]
    served = {c["model"] for c in confs if c["backend"] == "model_server"}
    assert {"auto-ets", "auto-theta", "naive", "mock"} <= served and any(c["backend"] == "baseline" for c in confs)
    same = {k: {repr(c[k]) for c in confs} for k in ("simulator", "horizon", "min_context", "test_fraction", "calibrator", "seeds")}
    assert all(len(v) == 1 for v in same.values()), same                                 # one panel, one protocol
