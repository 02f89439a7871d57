"""Property checks of tsfm_wb.lab.features kept apart from the notebook: hypothesis fuzzing of the window shape
rules, and the exhaustive causality sweep (about 30 s: one full transform per window end, too slow for the
notebook's test budget).

The unit tests live in `nbs/lab/11_features.ipynb` and `nbs/lab/11a_pipeline.ipynb`, beside the code."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from tsfm_wb.core import DataValidationError
from tsfm_wb.lab.features import (CovariateSchema, DynamicCovariate, StaticCovariate, check_window_shapes, make_windows,
                                  unflatten_targets, window_end_indices)
from tsfm_wb.lab.pipeline import FeaturePipeline
from tsfm_wb.lab.spline import SplinePreprocessor

N = 160
TRAIN_END = pd.Timestamp("2024-03-01") + pd.Timedelta(hours=99)
VAL_END = pd.Timestamp("2024-03-01") + pd.Timedelta(hours=129)


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True)


@pytest.fixture()
def schema():
    return CovariateSchema(
        timestamp_col="ts", target_cols=["load", "price"],
        dynamic_covariates=[DynamicCovariate(name="temp", required=True),
                            DynamicCovariate(name="promo", dtype="int8", encoding="binary"),
                            DynamicCovariate(name="regime", dtype="string", encoding="onehot", categories=["a", "b"])],
        static_covariates=[StaticCovariate(name="site", encoding="onehot", categories=["x", "y"]),
                           StaticCovariate(name="area", dtype="float64", encoding="numeric")])


@pytest.fixture()
def frame():
    """Hourly two-target frame with gaps (short and one long) and covariates, including missing covariate values."""
    rng = np.random.default_rng(0)
    t = np.arange(N)
    df = pd.DataFrame({
        "ts": pd.date_range("2024-03-01", periods=N, freq="h"),
        "load": 50 + 10 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, N),
        "price": 20 + 0.05 * t + rng.normal(0, 0.5, N),
        "temp": 10 + 5 * np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.3, N),
        "promo": (t % 17 < 3).astype(float),
        "regime": np.where(t < 90, "a", "b"),
        "site": "y", "area": 12.5})
    df.loc[[7, 30, 31, 100, 101, 102], "load"] = np.nan
    df.loc[55:62, "load"] = np.nan                              # long gap (8 steps)
    df.loc[[12, 13, 120], "price"] = np.nan
    df.loc[[0, 1, 40], "temp"] = np.nan
    return df


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 40), F=st.integers(1, 4), L=st.integers(1, 10), H=st.integers(1, 5), stride=st.integers(1, 3), data=st.data())
def test_make_windows_shape_rules(T, F, L, H, stride, data):
    vals = np.arange(T * F, dtype=float).reshape(T, F)
    k = data.draw(st.integers(1, F))
    tidx = data.draw(st.permutations(range(F)))[:k]
    if T < L + H:
        with pytest.raises(DataValidationError, match="lower lookback or horizon"):
            make_windows(vals, tidx, L, H, stride)
        return
    X, y = make_windows(vals, tidx, L, H, stride)
    ends = window_end_indices(T, L, H, stride)
    assert X.shape == (len(ends), L, F) and y.shape == (len(ends), H * k)
    b = len(ends) - 1
    e = ends[b]
    assert np.array_equal(X[b], vals[e - L + 1: e + 1])
    assert np.array_equal(unflatten_targets(y, H, k)[b], vals[e + 1: e + 1 + H][:, tidx])   # y[b, h*k + j]
    check_window_shapes(X, y, L, H, k)


def test_causal_no_input_window_ending_at_t_depends_on_later_values(schema, frame):
    """Changing every column after t (values and missingness) changes no input window ending at t."""
    L = 16
    p = FeaturePipeline(schema, L, 4, spline=SplinePreprocessor("smoothing", max_gap=4, outlier_rule="mad"), fill_indicator=True)
    p.fit(frame, TRAIN_END, VAL_END)
    base = p.transform(frame)
    pos = {int(e): i for i, e in enumerate(base.ends)}
    rng = np.random.default_rng(4)
    checked = 0
    for t in range(L - 1, N - 5, 5):                                  # every part: train, validation, test
        f2 = frame.copy(); after = f2.index > t
        for c in ("load", "price", "temp", "promo"):
            f2.loc[after, c] = rng.normal(0, 100, after.sum())
        f2.loc[after & (f2.index % 2 == 0), ["load", "price"]] = np.nan
        w2 = p.transform(f2)
        i2 = np.flatnonzero(w2.ends == t)
        if t in pos and len(i2):
            assert _same(base.X[pos[t]], w2.X[i2[0]]), t
            checked += 1
    assert checked >= 15
