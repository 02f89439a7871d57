"""tsfm_wb.lab.train and tsfm_wb.lab.runs: config, typed input errors, artifacts, determinism, original-unit metrics, reload round trip, report, CLI.

A run is a SplineLSTM fitted on the train + validation parts and scored walk-forward on the test part.
Runs are tiny (the last 1000 CO2 weeks, which hold real gaps, 8 units, 2 epochs): these tests check the mechanics.
Accuracy claims come from the real configs (reports/spline_lstm/)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO_ROOT
from tsfm_wb.core import ConfigError, DataValidationError, load_npz, read_json
from tsfm_wb.data import load_dataset
from tsfm_wb.lab.features import MissingCovariateError
from tsfm_wb.metrics import seasonal_scale
from tsfm_wb.lab.estimator import SplineLSTM
from tsfm_wb.lab.train import (BASELINE_NAMES, FORECAST_FILE, MODEL_DIR, PREDICTIONS_FILE, TrainConfig, parse_config, run_data,
                               run_experiment)
from tsfm_wb.lab.runs import evaluate_run, forecast_latest, load_run, main, run_comparison, write_comparison_report

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_FILES = ["config.json", "history.json", "meta.json", "metrics.json", MODEL_DIR, PREDICTIONS_FILE]


def _quick(tmp: Path, **kw) -> dict:
    cfg = {"name": "t", "dataset": "co2", "covariates": str(REPO_ROOT / "configs/covariates/univariate_co2.json"), "lookback": 16,
           "horizon": 4, "max_rows": 1000, "epochs": 2, "batch_size": 64, "patience": 2, "verbose": 0, "season": 52,
           "ma_window": 4, "base": "last", "hparams": {"units": 8}, "artifacts_dir": str(tmp)}
    return {**cfg, **kw}


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def run42(art):
    return run_experiment(_quick(art))


@pytest.fixture(scope="module")
def run2026(art):
    return run_experiment(_quick(art), seed=2026)


# --- config and typed errors (all raised before any training) -------------------------------------------------

def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset: co2\nlookback: 8\nhorizon: 2\nepochz: 3\n")
    with pytest.raises(ConfigError, match="c.yaml: key 'epochz'"):
        parse_config(p)
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_config(_quick(tmp_path, splits={"train": 0.8, "val": 0.15, "test": 0.15}))
    assert isinstance(parse_config(REPO / "configs" / "train_macro_multivariate.yaml"), TrainConfig)


def test_shipped_configs_load():
    for name in ("train_co2_univariate", "train_macro_multivariate", "train_co2_quick"):
        cfg = parse_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.model_type == "lstm" and set(cfg.hparams) <= {"units", "layers", "dropout", "learning_rate", "loss"}


@pytest.mark.parametrize("frame,match", [
    (lambda d: d.iloc[:0], "the series is empty"),
    (lambda d: d.assign(y=np.nan), "all NaN"),
    (lambda d: d.iloc[[1, 0, *range(2, len(d))]], "strictly increasing"),
    (lambda d: d.iloc[:12], "lower 'lookback'"),
], ids=["empty", "all-nan", "non-monotonic", "lookback-too-long"])
def test_bad_inputs_raise_typed_errors(tmp_path, frame, match):
    df = load_dataset("co2").iloc[-300:].reset_index(drop=True)
    with pytest.raises(DataValidationError, match=match):
        run_experiment(_quick(tmp_path), df=frame(df))
    assert not any(tmp_path.iterdir())                      # nothing written for a rejected input


def test_unknown_model_type_and_bad_hparams(tmp_path):
    with pytest.raises(ConfigError, match="unknown cell 'transformer'"):
        run_experiment(_quick(tmp_path, model_type="transformer"))
    with pytest.raises(ConfigError, match=r"hparams \['unitz'\]"):
        run_experiment(_quick(tmp_path, hparams={"unitz": 8}))
    with pytest.raises(ConfigError, match="unknown base"):
        run_experiment(_quick(tmp_path, base="trend"))
    assert not any(tmp_path.iterdir())


def test_missing_required_covariate(tmp_path):
    cfg = _quick(tmp_path, dataset="macro", covariates=str(REPO_ROOT / "configs/covariates/macro.json"), data_mode="multivariate",
                 lookback=8, max_rows=None, season=4)
    df = load_dataset("macro").drop(columns="realinv")
    with pytest.raises(MissingCovariateError, match="required covariate 'realinv'") as e:
        run_experiment(cfg, df=df)
    assert e.value.exit_code == 13


# --- artifacts and evaluation -----------------------------------------------------------------------------------

def test_artifact_layout(run42):
    d = run42.run_dir
    assert sorted(p.name for p in d.iterdir()) == ARTIFACT_FILES
    assert {p.suffix for p in (d / MODEL_DIR).iterdir()} == {".json", ".keras", ".npz"}        # SplineLSTM.save: no pickle
    written = [p for p in d.rglob("*") if p.is_file()]
    assert max(p.stat().st_mtime_ns for p in written) == (d / "metrics.json").stat().st_mtime_ns   # metrics last
    meta, snap = read_json(d / "meta.json"), read_json(d / "config.json")
    assert meta["input_size"] == 16 and meta["horizon"] == 4 and meta["targets"] == ["y"] and meta["chosen"] == "lstm/last"
    assert snap["seed"] == 42 and snap["config"]["model_type"] == "lstm" and "git_commit" in snap
    hist = read_json(d / "history.json")
    assert hist["chosen"] == "lstm/last" and hist["training"][0]["epochs_run"] == 2 and hist["n_windows"]["refit"] > 0
    p = load_npz(d / PREDICTIONS_FILE)                        # allow_pickle=False
    assert p["pred_model"].shape == p["y_true"].shape == p["bound_lo-90"].shape == (run42.metrics["n_test_origins"], 4, 1)


def test_metrics_are_in_original_units_and_walk_forward(run42):
    """Recompute the naive baseline by hand from the raw CO2 series at the stored origins: its test MAE/MASE must match."""
    m, run = run42.metrics, load_run(run42.run_dir)
    assert set(m["test"]) == {"model", *BASELINE_NAMES} and len(m["test_by_horizon"]["model"]["mae"]) == 4
    p = load_npz(run42.run_dir / PREDICTIONS_FILE)
    origins = pd.DatetimeIndex(p["origins"].astype("datetime64[ns]"))
    val_end = pd.Timestamp(read_json(run42.run_dir / "meta.json")["val_end"])
    assert len(origins) == m["n_test_origins"] and origins[0] == val_end and (origins >= val_end).all()
    assert (np.diff(origins.asi8) // pd.Timedelta(weeks=1).value == 1).mean() > 0.95       # one origin per step (gaps skipped)
    raw = load_dataset("co2").iloc[-1000:].set_index("ds")["y"]
    grid = pd.date_range(raw.index[0], raw.index[-1], freq="W-SAT")
    y = raw.reindex(grid).to_numpy()
    ends = grid.get_indexer(origins)
    naive = np.repeat(pd.Series(y).ffill().to_numpy()[ends][:, None], 4, axis=1)
    truth = y[ends[:, None] + 1 + np.arange(4)]
    np.testing.assert_array_equal(truth, p["y_true"][..., 0])
    assert 300 < np.nanmean(truth) < 400                                               # ppm, not scaled units
    mae = np.nanmean(np.abs(truth - naive))
    n_train = int(grid.searchsorted(pd.Timestamp(read_json(run42.run_dir / "meta.json")["train_end"]), side="right"))
    scale = seasonal_scale(y[:n_train], 1, nan_policy="omit")
    assert m["test"]["naive"]["mae"] == pytest.approx(mae, rel=1e-12)
    assert m["test"]["naive"]["mase"] == pytest.approx(mae / scale, rel=1e-12)
    cov = m["test_intervals"]
    assert set(cov) == {"80", "90"} and cov["80"]["width"] < cov["90"]["width"]
    inside = (p["y_true"] >= p["bound_lo-90"]) & (p["y_true"] <= p["bound_hi-90"])
    assert cov["90"]["coverage"] == pytest.approx(inside[np.isfinite(p["y_true"])].mean(), rel=1e-12)


def test_test_forecasts_use_only_the_past(run42):
    """Each stored forecast equals the estimator's predict on the history cut at its origin."""
    run = load_run(run42.run_dir)
    data = run_data(run.config)
    p = load_npz(run42.run_dir / PREDICTIONS_FILE)
    for i in (0, len(p["origins"]) // 2, len(p["origins"]) - 1):
        cut = pd.Timestamp(p["origins"][i])
        fc = run.estimator.predict(df=data.panel[data.panel["ds"] <= cut])
        np.testing.assert_allclose(fc["lstm"].to_numpy(), p["pred_model"][i, :, 0], rtol=1e-6)
        np.testing.assert_allclose(fc["lstm-hi-90"].to_numpy(), p["bound_hi-90"][i, :, 0], rtol=1e-6)


def test_reload_reproduces_stored_metrics(run42):
    run = load_run(run42.run_dir)
    assert isinstance(run.estimator, SplineLSTM) and run.estimator.fitted_["chosen"] == "lstm/last"
    again = evaluate_run(run)
    for key in ("test", "test_by_horizon", "test_intervals", "n_test_origins"):
        assert again[key] == run42.metrics[key]


def test_forecast_latest_starts_after_the_last_observation(run42):
    """The real forecast: H steps after the frame's last timestamp, with intervals, in ppm."""
    run = load_run(run42.run_dir)
    df = run_data(run.config).df
    fc = forecast_latest(run, df)
    assert list(fc.columns[:4]) == ["unique_id", "ds", "step", "lstm"] and fc["step"].tolist() == [1, 2, 3, 4]
    assert list(fc["ds"]) == list(pd.date_range(df["ds"].iloc[-1], periods=5, freq="W-SAT")[1:])
    assert np.isfinite(fc["lstm"]).all() and 300 < fc["lstm"].min() and fc["lstm"].max() < 500
    assert (fc["lstm-lo-90"] <= fc["lstm-lo-80"]).all() and (fc["lstm-hi-80"] <= fc["lstm-hi-90"]).all()
    assert set(fc["run_id"]) == {run42.run_id}
    with pytest.raises(DataValidationError, match="lookback"):
        forecast_latest(run, df.iloc[:8])


def test_load_run_refuses_unfinished(run42, tmp_path):
    with pytest.raises(DataValidationError, match="not a finished run"):
        load_run(tmp_path)


# --- determinism --------------------------------------------------------------------------------------------------

def test_same_seed_identical_metrics(run42, art):
    again = run_experiment(_quick(art))
    assert again.run_dir != run42.run_dir
    for key in ("test", "val", "test_by_horizon", "test_intervals"):
        assert again.metrics[key] == run42.metrics[key]
    assert again.history["training"] == run42.history["training"]


def test_different_seed_different_metrics(run42, run2026):
    assert run2026.metrics["test"]["model"] != run42.metrics["test"]["model"]
    assert run2026.metrics["test"]["naive"] == run42.metrics["test"]["naive"]             # same data, same baselines


# --- report and CLI -----------------------------------------------------------------------------------------------

def test_comparison_report(run42, run2026, tmp_path):
    paths = write_comparison_report([run42, run2026.run_dir], tmp_path / "rep")
    js = json.loads(paths["json"].read_text())
    assert len(js["runs"]) == 2 + len(BASELINE_NAMES)
    (v,) = js["verdicts"]
    assert v["chosen_on_val"] == "lstm" and v["chosen_seed"] in (42, 2026)
    assert set(v["baseline_test_mase"]) == set(BASELINE_NAMES)
    md = paths["md"].read_text()
    assert "## co2 (univariate)" in md and "chosen on validation" in md and "| seasonal_naive |" in md


def test_run_comparison_runs_each_model_and_seed(tmp_path):
    res = run_comparison(_quick(tmp_path, epochs=1, max_rows=400), model_types=["gru", "attention_lstm"], seeds=[3, 4])
    assert [(r.config.model_type, r.config.seed) for r in res] == [("gru", 3), ("gru", 4), ("attention_lstm", 3), ("attention_lstm", 4)]
    assert len({r.run_dir for r in res}) == 4 and all((r.run_dir / "metrics.json").exists() for r in res)


def test_cli_end_to_end(tmp_path):
    cfg = tmp_path / "quick.yaml"
    cfg.write_text(json.dumps(_quick(tmp_path / "ignored", epochs=5)))                 # JSON is valid YAML
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-m", "tsfm_wb.lab.runs", "--config", str(cfg), "--epochs", "1",
                          "--artifacts", str(tmp_path / "art")], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "run dir:" in out.stdout and "| model |" in out.stdout and "reloaded OK" in out.stdout
    (run_dir,) = (tmp_path / "art").iterdir()
    assert read_json(run_dir / "history.json")["training"][0]["epochs_run"] == 1 and not (tmp_path / "ignored").exists()
    fc = pd.read_csv(run_dir / FORECAST_FILE, parse_dates=["ds"])          # the infer step's output
    last = load_dataset("co2")["ds"].iloc[-1]
    assert len(fc) == 4 and list(fc["ds"]) == [last + pd.Timedelta(weeks=k) for k in range(1, 5)]
    assert np.isfinite(fc["lstm"]).all() and 300 < fc["lstm"].min() and fc["lstm"].max() < 500     # ppm, not scaled units
    assert "forecast after the last observation" in out.stdout and str(run_dir / FORECAST_FILE) in out.stdout


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
