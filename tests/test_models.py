"""tsfm_wb.lab.models: registry, builder contract, hyper-parameter validation, the model check, sizes and exportability."""
import numpy as np
import pytest

from tsfm_wb.core import ModelError
from tsfm_wb.lab.models import (
    MAX_EDGE_BYTES, MODEL_REGISTRY, AttentionLSTMForecaster, GRUForecaster, LSTMForecaster, build_model, check_model,
    get_model_class, model_size_bytes, param_count, param_table, parse_hparams,
)


def test_registry_and_capabilities():
    assert list(MODEL_REGISTRY) == ["lstm", "gru", "attention_lstm"]
    assert MODEL_REGISTRY["lstm"] is LSTMForecaster and get_model_class("gru") is GRUForecaster
    for cls in MODEL_REGISTRY.values():
        assert cls.RECURRENT and cls.MULTIVARIATE and cls.EXOGENOUS_DYNAMIC and "onnx" in cls.EDGE_FORMATS
    assert AttentionLSTMForecaster.ATTENTION and not LSTMForecaster.ATTENTION


@pytest.mark.parametrize("model_type", list(MODEL_REGISTRY))
@pytest.mark.parametrize("hp", [{}, {"units": 8, "residual": True, "normalize": "last", "target_indices": [2, 0]}],
                         ids=["default", "residual-normalized"])
def test_contract_for_every_model(model_type, hp):
    rep = check_model(model_type, **hp)
    assert rep["output_shape"] == [4, 4] and rep["params"] > 0 and rep["keras_file_bytes"] < MAX_EDGE_BYTES


@pytest.mark.parametrize("model_type,n_targets", [("lstm", 1), ("gru", 2), ("attention_lstm", 3)])
def test_output_units_are_horizon_times_targets(model_type, n_targets):
    m = build_model(model_type, lookback=10, n_features=4, horizon=5, n_targets=n_targets, seed=1, units=4)
    assert m.input_shape == (None, 10, 4) and m.output_shape == (None, 5 * n_targets)


def test_parameter_counts_are_pinned():
    """Exact counts at a typical shape (lookback 52, 1 feature, horizon 4, units 32): a cheap regression check."""
    counts = {r["model_type"]: r["params"] for r in param_table(52, 1, 4)}
    lstm = 4 * (32 * (1 + 32) + 32)                       # LSTM gates
    gru = 3 * (32 * (1 + 32) + 2 * 32)                    # GRU gates (reset_after: two bias vectors)
    mha = 3 * (32 * 32 + 32) + (32 * 32 + 32)             # q/k/v + output projections, 2 heads x 16
    assert counts == {"lstm": lstm + 32 * 4 + 4, "gru": gru + 32 * 4 + 4, "attention_lstm": lstm + mha + 64 * 4 + 4}
    assert all(4 * c < MAX_EDGE_BYTES for c in counts.values())


def test_unknown_type_and_bad_hparams_raise_model_error():
    with pytest.raises(ModelError, match="unknown model_type 'tcn'; choose one of: attention_lstm, gru, lstm"):
        build_model("tcn", 8, 1, 2)
    with pytest.raises(ModelError, match="hparam 'unit'.*Allowed hparams: units"):
        build_model("lstm", 8, 1, 2, unit=3)
    with pytest.raises(ModelError, match="hparam 'learning_rate'"):
        parse_hparams("gru", learning_rate=-1)
    with pytest.raises(ModelError, match="hparam 'heads'"):
        parse_hparams("lstm", heads=2)                     # attention-only hparam on a plain LSTM
    with pytest.raises(ModelError, match="set residual=true"):
        parse_hparams("lstm", normalize="last")
    with pytest.raises(ModelError, match="horizon must be a positive int"):
        build_model("lstm", 8, 1, 0)
    with pytest.raises(ModelError, match="target_indices"):
        build_model("lstm", 8, 2, 2, residual=True, target_indices=[3])


def test_same_seed_same_weights_different_seed_different():
    a, b, c = (build_model("attention_lstm", 8, 2, 3, seed=s, units=8) for s in (5, 5, 6))
    wa, wb, wc = ([np.asarray(w) for w in m.weights] for m in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc))


def test_residual_normalized_forecast_is_level_equivariant():
    """normalize='last' + residual: adding a constant to the target channel adds it to every forecast step."""
    m = build_model("gru", 12, 3, 4, seed=0, units=8, residual=True, normalize="last")
    x = np.random.default_rng(0).normal(size=(6, 12, 3)).astype("float32")
    shifted = x.copy(); shifted[..., 0] += 50.0
    np.testing.assert_allclose(m.predict(shifted, verbose=0), m.predict(x, verbose=0) + 50.0, atol=1e-3)
    assert param_count(m) * 4 == model_size_bytes(m)


def test_attention_model_converts_to_onnx():
    """The edge export is not a dead end for the attention model: tf2onnx converts it and onnxruntime agrees."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    m = build_model("attention_lstm", 16, 3, 4, seed=0, units=8, residual=True, normalize="last")
    x = np.random.default_rng(2).normal(size=(5, 16, 3)).astype("float32")
    proto, _ = tf2onnx.convert.from_keras(m, input_signature=[tf.TensorSpec((None, 16, 3), tf.float32, name="x")], opset=17)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.asarray(m(x, training=False)), atol=1e-5)
