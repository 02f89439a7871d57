"""tsfm_wb.lab.edge: ONNX/TFLite export parity for every registered model, the parity report, the gate and its config."""
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import REPO_ROOT

from tsfm_wb.core import ConfigError, DataValidationError
from tsfm_wb.lab.edge import (EDGE_DIR, FORMATS, MIN_LATENCY_RUNS, PARITY_FILE, EdgeGateConfig, ExportError, OnnxPredictor,
                          TFLitePredictor, edge_gate, evaluate_gate, export_onnx, export_tflite, gate_table, load_gate,
                          gate_run, measure_latency, parity_report, write_parity)
from tsfm_wb.lab.models import MODEL_REGISTRY, build_model

LOOKBACK, N_FEATURES, HORIZON, N_TARGETS = 8, 3, 2, 2
N_OUT = HORIZON * N_TARGETS
TOLERANCE = {"onnx": 1e-5, "tflite": 1e-4}   # max |exported - Keras| in model units
EXPORT = {"onnx": (export_onnx, OnnxPredictor), "tflite": (export_tflite, TFLitePredictor)}
VARIANTS = [(m, r) for m in sorted(MODEL_REGISTRY) for r in (False, True)]


def _model(model_type: str, residual: bool = True) -> keras.Model:
    hp = {"residual": True, "target_indices": [2, 0]} if residual else {}
    return build_model(model_type, LOOKBACK, N_FEATURES, HORIZON, N_TARGETS, seed=0, units=8, **hp)


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return np.random.default_rng(2026).normal(size=(32, LOOKBACK, N_FEATURES)).astype("float32")


@pytest.fixture(scope="module")
def targets(windows) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(len(windows), N_OUT))


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{m}-{'res' if r else 'plain'}" for m, r in VARIANTS])
def model(request) -> keras.Model:
    return _model(*request.param)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_parity_and_dynamic_batch(model, fmt, windows, tmp_path):
    export, predictor = EXPORT[fmt]
    path = export(model, tmp_path / f"m.{fmt}")
    assert path.is_file() and path.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]      # atomic write left no temp file
    pred = predictor(path)
    ref = np.asarray(model(windows, training=False))
    out = pred.predict(windows)
    assert out.shape == (len(windows), N_OUT) and np.isfinite(out).all()
    assert np.abs(out - ref).max() <= TOLERANCE[fmt], fmt
    for b in (1, 7, len(windows)):                                   # one loaded file serves any batch size
        np.testing.assert_allclose(pred.predict(windows[:b]), ref[:b], atol=TOLERANCE[fmt], rtol=0)


def test_tflite_export_leaves_the_keras_model_untouched(windows, tmp_path):
    m = _model("gru")
    before = np.asarray(m(windows, training=False))
    export_tflite(m, tmp_path / "m.tflite")
    assert m.get_layer("gru_0").unroll is False
    np.testing.assert_array_equal(np.asarray(m(windows, training=False)), before)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_finite_output_and_bad_input_raise(fmt, windows, tmp_path):
    m = _model("lstm", residual=False)
    m.get_layer("forecast").set_weights([m.get_layer("forecast").get_weights()[0], np.full(N_OUT, np.nan, "float32")])
    export, predictor = EXPORT[fmt]
    pred = predictor(export(m, tmp_path / f"nan.{fmt}"))
    with pytest.raises(ExportError, match="non-finite values"):
        pred.predict(windows)
    bad = windows.copy(); bad[3, 2, 1] = np.inf
    with pytest.raises(DataValidationError, match="1 NaN/inf values"):
        pred.predict(bad)
    with pytest.raises(DataValidationError, match=r"expects \[batch, 8, 3\]"):
        pred.predict(windows[:, :, :2])
    with pytest.raises(ExportError, match="file not found"):
        predictor(tmp_path / f"missing.{fmt}")


@pytest.mark.parametrize("model_type", sorted(MODEL_REGISTRY))
def test_parity_report_passes_the_document_gate(model_type, windows, targets):
    m = _model(model_type)
    rep = parity_report(m, windows, targets, inverse_transform=lambda a: a * 4.0 + 100.0, n_latency_runs=MIN_LATENCY_RUNS)
    json.dumps(rep, allow_nan=False)
    assert rep["units"] == "original" and rep["n_windows"] == len(windows) and rep["model_name"] == model_type
    assert len(rep["keras"]["latency_ms"]["samples"]) == MIN_LATENCY_RUNS
    for fmt, r in rep["formats"].items():
        assert r["exported"] and r["error"] is None and r["failures"] == 0, (fmt, r["error"])
        assert r["ops_supported"] and r["unsupported_ops"] == [] and r["ops"], fmt
        assert r["max_abs_diff_model"] <= TOLERANCE[fmt] and abs(r["rmse_degradation_pct"]) < 1e-3
        assert r["max_abs_diff"] == pytest.approx(4.0 * r["max_abs_diff_model"], rel=1e-6)
        lat = r["latency_ms"]
        assert lat["n_runs"] == len(lat["samples"]) == MIN_LATENCY_RUNS and 0 < lat["p50"] <= lat["p95"] <= lat["max"]
        assert 0 < r["size_mb"] < 1.0
    assert "FULLY_CONNECTED" in rep["formats"]["tflite"]["ops"] and "DELEGATE" not in rep["formats"]["tflite"]["ops"]
    assert evaluate_gate(rep)["document_pass"]


def test_parity_is_in_model_units_without_inverse_transform(windows, targets):
    rep = parity_report(_model("lstm"), windows, targets, formats=("onnx",), n_latency_runs=MIN_LATENCY_RUNS)
    assert rep["units"] == "model" and list(rep["formats"]) == ["onnx"]
    assert rep["formats"]["onnx"]["rmse"] == pytest.approx(rep["keras"]["rmse"], rel=1e-5)


def test_failed_export_is_reported_not_raised(windows, targets):
    class Apply(keras.layers.Layer):   # a callable __init__ argument: no config, so no unrolled rebuild for TFLite
        def __init__(self, fn, **kw):
            super().__init__(**kw); self.fn = fn

        def call(self, x):
            return self.fn(x)

    inp = keras.Input((LOOKBACK, N_FEATURES), name="x")
    m = keras.Model(inp, Apply(lambda t: t * 2.0)(keras.layers.Dense(N_OUT)(keras.layers.LSTM(4)(inp))))
    rep = parity_report(m, windows, targets, n_latency_runs=MIN_LATENCY_RUNS)
    assert rep["formats"]["onnx"]["exported"] and rep["formats"]["onnx"]["failures"] == 0
    tfl = rep["formats"]["tflite"]
    assert not tfl["exported"] and "unroll=True" in tfl["error"] and tfl["max_abs_diff"] is None
    g = evaluate_gate(rep)
    assert g["formats"]["onnx"]["document_pass"] and not g["formats"]["tflite"]["document_pass"] and not g["document_pass"]
    assert {"document.exported", "document.max_abs_diff", "document.max_p95_ms"} <= set(g["formats"]["tflite"]["failed"])
    assert "| tflite | — |" in gate_table({"r": rep}) and "FAIL (exported" in gate_table({"r": rep})


def test_report_input_errors(windows, targets):
    m = _model("lstm")
    with pytest.raises(DataValidationError, match=r"y_test has shape \(3, 4\)"):
        parity_report(m, windows, targets[:3])
    with pytest.raises(DataValidationError, match="X_test has shape"):
        parity_report(m, windows[:, :5], targets)
    with pytest.raises(ConfigError, match="n_latency_runs must be >= 100"):
        parity_report(m, windows, targets, n_latency_runs=99)
    with pytest.raises(DataValidationError, match=r"inverse_transform must map \[B, 4\]"):
        parity_report(m, windows, targets, inverse_transform=lambda a: a.ravel())
    with pytest.raises(ConfigError, match=r"unknown formats \['coreml'\]"):
        parity_report(m, windows, targets, formats=("onnx", "coreml"))


def test_measure_latency_counts_failures(windows):
    calls = []
    def flaky(x):
        calls.append(1)
        if len(calls) % 4 == 0: raise RuntimeError("boom")
        return x.sum()
    lat = measure_latency(flaky, windows, n_runs=100, warmup=0)
    assert lat["failures"] == 25 and lat["first_error"] == "RuntimeError: boom" and len(lat["samples"]) == 100
    assert measure_latency(lambda x: x.sum(), windows, n_runs=100)["failures"] == 0


# ---- the gate on constructed reports ----

def _report(**kw) -> dict:
    r = {"exported": True, "ops_supported": True, "max_abs_diff": 1e-7, "rmse_degradation_pct": 0.0,
         "latency_ms": {"p50": 0.05, "p95": 0.1}, "size_mb": 0.05, "failures": 0, **kw}
    r.setdefault("max_abs_diff_model", r["max_abs_diff"])   # constructed reports: same diff in both units
    return {"formats": {"onnx": r, "tflite": dict(r)}}


def test_gate_passes_a_clean_report():
    g = evaluate_gate(_report())
    assert g["document_pass"] and g["strict_pass"]
    assert all(v["failed"] == [] for v in g["formats"].values())


@pytest.mark.parametrize("change, failed", [
    ({"max_abs_diff": 1.1e-3}, "document.max_abs_diff"),
    ({"rmse_degradation_pct": 2.01}, "document.max_rmse_degradation_pct"),
    ({"latency_ms": {"p95": 30.5}}, "document.max_p95_ms"),
    ({"size_mb": 10.5}, "document.max_size_mb"),
    ({"failures": 1}, "document.max_failures"),
    ({"exported": False}, "document.exported"),
    ({"ops_supported": False}, "document.ops_supported"),
    ({"max_abs_diff": None}, "document.max_abs_diff"),          # not measured is not a pass
])
def test_gate_fails_each_document_criterion(change, failed):
    g = evaluate_gate(_report(**change))
    assert not g["document_pass"] and not g["strict_pass"]
    assert failed in g["formats"]["onnx"]["failed"]


def test_gate_boundaries_are_inclusive():
    g = evaluate_gate(_report(max_abs_diff=1e-3, rmse_degradation_pct=2.0, latency_ms={"p95": 30.0}, size_mb=10.0))
    assert g["document_pass"] and not g["strict_pass"]


def test_strict_targets_are_reported_next_to_the_document_gate():
    g = evaluate_gate(_report(max_abs_diff=5e-5, latency_ms={"p95": 2.5}, size_mb=1.5))
    assert g["document_pass"] and not g["strict_pass"]
    assert g["formats"]["onnx"]["failed"] == ["strict.max_abs_diff", "strict.max_p95_ms", "strict.max_size_mb"]
    assert g["formats"]["tflite"]["failed"] == ["strict.max_p95_ms", "strict.max_size_mb"]   # parity target is ONNX's
    assert g["formats"]["onnx"]["strict"]["max_abs_diff"] == {"value": 5e-5, "limit": 1e-5, "pass": False}


def test_parity_units_pick_which_diff_is_gated():
    rep = _report(max_abs_diff=1.03e-3, max_abs_diff_model=2.4e-7)
    assert not evaluate_gate(rep, EdgeGateConfig(parity_units="original"))["document_pass"]
    g = evaluate_gate(rep)  # the default gates model units
    assert g["document_pass"] and g["formats"]["onnx"]["document"]["max_abs_diff"]["value"] == 2.4e-7


def test_gate_uses_a_custom_config():
    gate = EdgeGateConfig(document={"max_p95_ms": 0.01}, strict={})
    g = evaluate_gate(_report(), gate)
    assert g["formats"]["onnx"]["failed"] == ["document.max_p95_ms"]
    assert set(g["formats"]["onnx"]["document"]) == {"exported", "ops_supported", "max_p95_ms"}


# ---- config ----

def test_shipped_config_is_the_default():
    assert load_gate(REPO_ROOT / "configs" / "edge_gate.yaml") == load_gate() == EdgeGateConfig()
    g = load_gate()
    assert (g.document.max_abs_diff, g.document.max_rmse_degradation_pct, g.document.max_p95_ms,
            g.document.max_size_mb, g.document.max_failures) == (1e-3, 2.0, 30.0, 10.0, 0)
    assert (g.strict["onnx"].max_abs_diff, g.strict["onnx"].max_p95_ms, g.strict["onnx"].max_size_mb) == (1e-5, 2.0, 1.0)


@pytest.mark.parametrize("text, key", [
    ("document: {max_p95_ms: 0}\n", "document.max_p95_ms"),
    ("document: {max_failures: -1}\n", "document.max_failures"),
    ("document: {max_abs_dif: 1.0}\n", "document.max_abs_dif"),
    ("strict: {onnx: {max_size_mb: big}}\n", "strict.onnx.max_size_mb"),
    ("strict: {coreml: {}}\n", "strict.coreml"),
    ("gate: {}\n", "gate"),
    ("parity_units: ppm\n", "parity_units"),
])
def test_config_errors_name_the_key(tmp_path, text, key):
    p = tmp_path / "edge_gate.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"edge_gate.yaml: key '{key}"):
        load_gate(p)


# ---- writing ----

def test_edge_gate_writes_exports_and_parity(tmp_path, windows, targets):
    rep = edge_gate(_model("gru"), windows, targets, tmp_path, n_latency_runs=MIN_LATENCY_RUNS)
    edge = tmp_path / EDGE_DIR
    assert sorted(p.name for p in edge.iterdir()) == ["gru.onnx", "gru.tflite", PARITY_FILE]
    saved = json.loads((edge / PARITY_FILE).read_text())
    assert saved["gate"]["document_pass"] and saved["formats"]["onnx"]["file"] == "gru.onnx"
    assert saved["formats"]["tflite"]["size_mb"] == pytest.approx((edge / "gru.tflite").stat().st_size / 1e6)
    assert write_parity(tmp_path / "x.json", rep) == tmp_path / "x.json"
    table = gate_table({"run-1": rep}).splitlines()
    assert len(table) == 2 + 1 + len(FORMATS) and len({line.count("|") for line in table}) == 1
    assert table[3].startswith("| run-1 | gru | onnx |") and "| PASS |" in table[3]


def test_gate_run_on_a_real_training_run(tmp_path):
    from tsfm_wb.core import load_npz
    from tsfm_wb.lab.train import run_experiment
    res = run_experiment(REPO_ROOT / "configs" / "train_co2_quick.yaml", artifacts_dir=str(tmp_path))   # real co2, 2 epochs
    rep = gate_run(res.run_dir, n_latency_runs=MIN_LATENCY_RUNS)
    arrays = load_npz(res.run_dir / "processed.npz")
    assert (rep["run_id"], rep["model_type"], rep["part"], rep["units"]) == (res.run_id, "lstm", "test", "original")
    assert rep["n_windows"] == len(arrays["test_idx"])
    # original units = ppm: the exported diff is the model-unit diff times the target's scale (> 1 ppm per unit)
    for r in rep["formats"].values():
        assert r["max_abs_diff"] > r["max_abs_diff_model"] > 0 or r["max_abs_diff"] == r["max_abs_diff_model"] == 0
    assert rep["gate"]["document_pass"], rep["gate"]
    saved = json.loads((res.run_dir / EDGE_DIR / PARITY_FILE).read_text())
    assert saved["run_id"] == res.run_id and (res.run_dir / EDGE_DIR / "lstm.onnx").is_file()
    with pytest.raises(ConfigError, match="part must be train, val or test"):
        gate_run(res.run_dir, part="holdout")
