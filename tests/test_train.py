"""tsfm_wb.lab.train and tsfm_wb.lab.runs: config, typed input errors, artifacts, determinism, original-unit metrics, reload round trip, report, CLI.

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
from tsfm_wb.core import ConfigError, DataValidationError, ModelError, load_npz, read_json
from tsfm_wb.data import load_dataset
from tsfm_wb.lab.features import MissingCovariateError
from tsfm_wb.metrics import seasonal_scale
from tsfm_wb.lab.train import (BASELINE_NAMES, FORECAST_FILE, TrainConfig, parse_config, prepare_data, run_experiment,
                                walk_forward_windows)
from tsfm_wb.lab.runs import (evaluate_run, forecast_frame, forecast_latest, load_run, main, predict, run_comparison,
                               write_comparison_report)

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_FILES = ["checkpoints", "config.json", "history.json", "meta.json", "metrics.json", "predictions.npz",
                  "preprocessor.json", "processed.npz"]


def _quick(tmp: Path, **kw) -> dict:
    cfg = {"name": "t", "dataset": "co2", "covariates": str(REPO_ROOT / "configs/covariates/univariate_co2.json"), "lookback": 16,
           "horizon": 4, "max_rows": 1000, "epochs": 2, "batch_size": 64, "patience": 2, "verbose": 0, "season": 52,
           "ma_window": 4, "hparams": {"units": 8, "residual": True, "normalize": "last"}, "artifacts_dir": str(tmp)}
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
        assert cfg.hparams.get("residual") is True


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
    with pytest.raises(ModelError, match="choose one of: attention_lstm, gru, lstm"):
        run_experiment(_quick(tmp_path, model_type="transformer"))
    with pytest.raises(ModelError, match="hparam 'unitz'"):
        run_experiment(_quick(tmp_path, hparams={"unitz": 8}))


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
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["best.keras", "last.keras"]
    written = [p for p in d.rglob("*") if p.is_file()]
    assert max(p.stat().st_mtime_ns for p in written) == (d / "metrics.json").stat().st_mtime_ns   # metrics last
    npz = load_npz(d / "processed.npz")                       # allow_pickle=False
    assert {"X", "y", "feature_names", "target_indices", "scaled", "raw_target"} <= set(npz)
    meta, snap = read_json(d / "meta.json"), read_json(d / "config.json")
    assert meta["X_shape"] == list(npz["X"].shape) == [meta["X_shape"][0], 16, 1] and meta["y_shape"][1] == 4
    assert meta["feature_mode"] == "univariate" and meta["target_cols"] == ["y"]
    assert snap["seed"] == 42 and snap["config"]["model_type"] == "lstm" and "git_commit" in snap
    hist = read_json(d / "history.json")
    assert hist["epochs_run"] == len(hist["history"]["val_loss"]) == 2
    assert read_json(d / "preprocessor.json")["type"] == "FeaturePipeline"


def test_metrics_are_in_original_units_and_walk_forward(run42):
    """Recompute the naive baseline by hand from the raw CO2 series: its test MAE/MASE must match the stored ones."""
    m, run = run42.metrics, load_run(run42.run_dir)
    assert set(m["test"]) == {"model", *BASELINE_NAMES} and len(m["test_by_horizon"]["model"]["mae"]) == 4
    a = run.arrays
    idx = walk_forward_windows(a, "test", run.config)
    assert len(idx) == m["n_test_origins"] and np.all(np.diff(a["ends"][idx]) == 1)       # one origin per step
    val_end = np.datetime64(run.pipeline.fitted_["val_end"])
    assert (a["target_ds"][idx, 0].astype("datetime64[ns]") > val_end).all()
    raw = load_dataset("co2").iloc[-1000:].set_index("ds")["y"]
    grid = pd.DatetimeIndex(a["ds"].astype("datetime64[ns]"))
    y = raw.reindex(grid).to_numpy()
    ends = a["ends"][idx]
    naive = np.repeat(pd.Series(y).ffill().to_numpy()[ends][:, None], 4, axis=1)
    truth = y[ends[:, None] + 1 + np.arange(4)]
    assert 300 < np.nanmean(truth) < 400                                               # ppm, not scaled units
    mae = np.nanmean(np.abs(truth - naive))
    scale = seasonal_scale(y[: int(a["n_train_steps"])], 1, nan_policy="omit")
    assert m["test"]["naive"]["mae"] == pytest.approx(mae, rel=1e-12)
    assert m["test"]["naive"]["mase"] == pytest.approx(mae / scale, rel=1e-12)


def test_reload_reproduces_stored_metrics(run42):
    run = load_run(run42.run_dir)
    again = evaluate_run(run)
    for key in ("test", "val", "test_by_horizon", "val_by_horizon"):
        assert again[key] == run42.metrics[key]
    p = predict(run, run.arrays["X"][:3])
    assert p.shape == (3, 4, 1) and np.isfinite(p).all()
    fc = forecast_frame(run, prepare_data(run.config).df)
    assert set(fc.columns) == {"origin", "ds", "step", "target", "y_pred", "y_true"} and len(fc) == 4 * len(run.arrays["X"])


def test_forecast_latest_starts_after_the_last_observation(run42):
    """The real forecast: H steps after the frame's last timestamp, from the window ending there, in ppm."""
    run = load_run(run42.run_dir)
    df = prepare_data(run.config).df
    fc = forecast_latest(run, df)
    assert list(fc.columns) == ["ds", "step", "y", "model", "run_id"] and fc["step"].tolist() == [1, 2, 3, 4]
    assert list(fc["ds"]) == list(pd.date_range(df["ds"].iloc[-1], periods=5, freq="W-SAT")[1:])
    assert np.isfinite(fc["y"]).all() and 300 < fc["y"].min() and fc["y"].max() < 500
    assert set(fc["model"]) == {"lstm"} and set(fc["run_id"]) == {run42.run_id}
    cut = df.iloc[:-10]                                               # same as the stored window ending 10 steps earlier
    i = int(np.flatnonzero(run.arrays["ends"] == len(cut) - 1)[0])
    np.testing.assert_allclose(forecast_latest(run, cut)["y"].to_numpy(), predict(run, run.arrays["X"][i:i + 1])[0, :, 0], rtol=1e-6)
    with pytest.raises(DataValidationError, match="lookback = 16"):
        forecast_latest(run, df.iloc[:8])


def test_load_run_refuses_unfinished(run42, tmp_path):
    with pytest.raises(DataValidationError, match="not a finished run"):
        load_run(tmp_path)


# --- determinism --------------------------------------------------------------------------------------------------

def test_same_seed_identical_metrics(run42, art):
    again = run_experiment(_quick(art))
    assert again.run_dir != run42.run_dir
    for key in ("test", "val", "test_by_horizon"):
        assert again.metrics[key] == run42.metrics[key]
    assert again.history["history"] == run42.history["history"]


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
    assert read_json(run_dir / "history.json")["epochs_run"] == 1 and not (tmp_path / "ignored").exists()
    fc = pd.read_csv(run_dir / FORECAST_FILE, parse_dates=["ds"])          # the infer step's output
    last = load_dataset("co2")["ds"].iloc[-1]
    assert len(fc) == 4 and list(fc["ds"]) == [last + pd.Timedelta(weeks=k) for k in range(1, 5)]
    assert np.isfinite(fc["y"]).all() and 300 < fc["y"].min() and fc["y"].max() < 500     # ppm, not scaled units
    assert "forecast after the last observation" in out.stdout and str(run_dir / FORECAST_FILE) in out.stdout


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
