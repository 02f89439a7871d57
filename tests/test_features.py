"""tsfm_wb.lab.features: covariate schema, calendar features, scalers, windows, and the leakage-free pipeline."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from tsfm_wb.core import ConfigError, DataValidationError, atomic_save_npz, load_npz
from tsfm_wb.lab.features import (
    ColumnScaler, CovariateSchema, DynamicCovariate, FeaturePipeline, MinMaxScaler, MissingCovariateError,
    StandardScaler, StaticCovariate, calendar_features, check_window_shapes, load_covariate_schema,
    make_windows, scaler_from_dict, split_by_time, time_split_points, unflatten_targets,
    validate_frame_against_schema, window_end_indices,
)
from tsfm_wb.lab.spline import NotFittedError, SplinePreprocessor

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "covariates"
N = 160


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True)


def _write(tmp_path, obj, name="s.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


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


TRAIN_END = pd.Timestamp("2024-03-01") + pd.Timedelta(hours=99)
VAL_END = pd.Timestamp("2024-03-01") + pd.Timedelta(hours=129)


def _pipe(schema, **kw):
    kw.setdefault("spline", SplinePreprocessor("pchip", max_gap=4))
    return FeaturePipeline(schema, kw.pop("lookback", 16), kw.pop("horizon", 4), **kw)


# ---------------------------------------------------------------- schema

def test_shipped_schemas_load():
    names = {p.name: load_covariate_schema(p) for p in CONFIGS.glob("*.json")}
    assert {"univariate_co2.json", "macro.json", "default.schema.json"} <= set(names)
    assert names["macro.json"].target_cols == ["y"] and len(names["macro.json"].dynamic_covariates) == 5


@pytest.mark.parametrize("obj,msg", [
    ({"target_cols": []}, "target_cols is empty"),
    ({}, "key 'target_cols'"),
    ({"target_cols": ["y"], "dynamic_covariates": [{"name": "t"}, {"name": "t"}]}, "duplicate column name(s) ['t']"),
    ({"target_cols": ["y"], "static_covariates": [{"name": "y", "encoding": "numeric"}]}, "duplicate column name(s) ['y']"),
    ({"target_cols": ["y"], "dynamic_covariates": [{"name": "c", "encoding": "onehot"}]}, "no categories"),
    ({"target_cols": ["y"], "missing_policy": {"dynamic_covariates": "ffill_bfill_then_zero"}}, "leakage"),
    ({"target_cols": ["y"], "version": "phase4"}, "key 'version'"),
    ({"target_cols": ["y"], "calendar": True}, "key 'calendar'"),
])
def test_schema_validation_errors(tmp_path, obj, msg):
    with pytest.raises(ConfigError, match=None) as e:
        load_covariate_schema(_write(tmp_path, obj))
    assert msg in str(e.value) and "s.json" in str(e.value)


def test_schema_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_covariate_schema(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_covariate_schema(tmp_path / "bad.json")


def test_missing_required_covariate_is_named(schema, frame):
    with pytest.raises(MissingCovariateError, match="required covariate 'temp'") as e:
        validate_frame_against_schema(frame.drop(columns="temp"), schema)
    assert e.value.exit_code == 13 and isinstance(e.value, DataValidationError)
    validate_frame_against_schema(frame.drop(columns="promo"), schema)       # optional ones may be absent


# ---------------------------------------------------------------- calendar and scalers

@pytest.mark.parametrize("freq,cols", [
    ("5min", ["hour_sin", "hour_cos", "dow_sin", "dow_cos"]), ("D", ["dow_sin", "dow_cos", "doy_sin", "doy_cos"]),
    ("W-SAT", ["doy_sin", "doy_cos"]), ("MS", ["month_sin", "month_cos"]), ("QS", ["quarter_sin", "quarter_cos"]), ("YS", []),
])
def test_calendar_features_follow_the_frequency(freq, cols):
    ds = pd.date_range("2001-01-06", periods=30, freq=freq)
    out = calendar_features(ds, freq)
    assert list(out.columns) == cols
    if cols:
        np.testing.assert_allclose(out.iloc[:, 0] ** 2 + out.iloc[:, 1] ** 2, 1.0)


def test_scalers_fit_ignore_nan_and_round_trip():
    X = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0], [5.0, 5.0]])
    for sc in (StandardScaler(), MinMaxScaler(), ColumnScaler(["minmax", "standard"])):
        sc.fit(X)
        assert np.isfinite(sc.scale_).all() and (sc.scale_ > 0).all()
        back = scaler_from_dict(json.loads(sc.to_json()))
        np.testing.assert_allclose(back.transform(X[[0, 1, 3]]), sc.transform(X[[0, 1, 3]]))
        np.testing.assert_allclose(sc.inverse_transform(sc.transform(X[[0, 3]])), X[[0, 3]])
    np.testing.assert_allclose(MinMaxScaler().fit(X).transform(X[[0, 3]])[:, 0], [0.0, 1.0])
    with pytest.raises(NotFittedError):
        StandardScaler().to_dict()


# ---------------------------------------------------------------- windows

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


def test_window_shape_errors():
    X, y = make_windows(np.ones((10, 2)), [1], 3, 2)
    with pytest.raises(DataValidationError, match="F_total >= F_target"):
        check_window_shapes(X[:, :, :1], np.ones((len(X), 4)), 3, 2, 2)
    with pytest.raises(DataValidationError, match="lookback"):
        check_window_shapes(X, y, 4, 2, 1)
    with pytest.raises(DataValidationError, match="distinct"):
        make_windows(np.ones((10, 2)), [2], 3, 2)
    with pytest.raises(DataValidationError, match="positive integer"):
        make_windows(np.ones((10, 2)), [0], 0, 2)


def test_split_by_time_has_no_overlap():
    ds = pd.date_range("2024", periods=50, freq="D")
    tgt = np.lib.stride_tricks.sliding_window_view(ds.to_numpy(), 3)
    tr, va = time_split_points(ds, 0.6, 0.2)
    parts = split_by_time(tgt, tr, va)
    assert (tgt[parts["train"], -1] <= np.datetime64(tr)).all()
    assert (tgt[parts["val"], 0] > np.datetime64(tr)).all() and (tgt[parts["val"], -1] <= np.datetime64(va)).all()
    assert (tgt[parts["test"], 0] > np.datetime64(va)).all()
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])


# ---------------------------------------------------------------- pipeline

def test_pipeline_layout_and_shapes(schema, frame):
    p = _pipe(schema, fill_indicator=True)
    wd = p.fit_transform(frame, TRAIN_END, VAL_END)
    assert wd.feature_names == ["load", "price", "temp", "promo", "regime=a", "regime=b", "hour_sin", "hour_cos",
                                "dow_sin", "dow_cos", "site=x", "site=y", "area", "load__filled", "price__filled"]
    assert wd.target_indices.tolist() == [0, 1] and wd.X.shape[1:] == (16, 15) and wd.y.shape[1] == 8
    assert wd.X.dtype == np.float32 and np.isfinite(wd.X).all() and np.isfinite(wd.y).all()
    assert wd.target_ds.shape == (len(wd), 4) and (wd.target_ds[:, 0] > wd.input_end).all()
    # no window touches the long gap 55..62, neither in its inputs nor in its targets
    lo, hi = wd.ends - 15, wd.ends + 4
    assert not ((lo <= 62) & (hi >= 55)).any()
    np.testing.assert_allclose(p.inverse_transform_targets(wd.y), wd.y_raw, rtol=1e-5)
    m = p.meta()
    assert (m["f_total"], m["f_target"], m["feature_mode"]) == (15, 2, "multivariate")


def test_univariate_is_the_same_code_path():
    sch = CovariateSchema(timestamp_col="ds", target_cols=["y"])
    df = pd.DataFrame({"ds": pd.date_range("2024", periods=60, freq="D"), "y": np.sin(np.arange(60) / 3)})
    wd = FeaturePipeline(sch, 10, 3, calendar=False).fit_transform(df, df["ds"].iloc[40])
    assert wd.X.shape == (48, 10, 1) and wd.y.shape == (48, 3) and wd.feature_names == ["y"]
    assert FeaturePipeline(sch, 10, 3).fit_transform(df, df["ds"].iloc[40]).X.shape[2] == 5   # + dow/doy sin/cos


def test_leakage_training_windows_unchanged_when_test_part_changes(schema, frame):
    """Changing values (and missingness) in the test part changes nothing in the transformed training part."""
    for spline in (SplinePreprocessor("cubic", max_gap=4, outlier_rule="mad"), SplinePreprocessor("smoothing", max_gap=4)):
        a_p = _pipe(schema, spline=spline)
        a = a_p.fit_transform(frame, TRAIN_END, VAL_END)
        f2 = frame.copy(); late = f2["ts"] > VAL_END
        for c in ("load", "price", "temp"):
            f2.loc[late, c] = f2.loc[late, c] * 3 - 7
        f2.loc[late & (f2.index % 3 == 0), "load"] = np.nan
        f2.loc[late, "regime"] = "a"
        b_p = _pipe(schema, spline=spline)
        b = b_p.fit_transform(f2, TRAIN_END, VAL_END)
        assert a_p.to_json() == b_p.to_json()                              # fitted state identical
        ia, ib = a.split()["train"], b.split()["train"]
        assert len(ia) > 20 and np.array_equal(a.ends[ia], b.ends[ib])
        assert _same(a.X[ia], b.X[ib]) and _same(a.y[ia], b.y[ib]) and _same(a.y_raw[ia], b.y_raw[ib])
        rows = a.ds <= TRAIN_END
        assert _same(a.scaled[rows], b.scaled[rows])


def test_causal_no_input_window_ending_at_t_depends_on_later_values(schema, frame):
    """Changing every column after t (values and missingness) changes no input window ending at t."""
    L = 16
    p = _pipe(schema, lookback=L, spline=SplinePreprocessor("smoothing", max_gap=4, outlier_rule="mad"), fill_indicator=True)
    p.fit(frame, TRAIN_END, VAL_END)
    base = p.transform(frame)
    pos = {int(e): i for i, e in enumerate(base.ends)}
    rng = np.random.default_rng(4)
    checked = 0
    for t in range(L - 1, N - 5, 3):
        f2 = frame.copy(); after = f2.index > t
        for c in ("load", "price", "temp", "promo"):
            f2.loc[after, c] = rng.normal(0, 100, after.sum())
        f2.loc[after & (f2.index % 2 == 0), ["load", "price"]] = np.nan
        w2 = p.transform(f2)
        i2 = np.flatnonzero(w2.ends == t)
        if t in pos and len(i2):
            assert _same(base.X[pos[t]], w2.X[i2[0]]), t
            checked += 1
    assert checked >= 25


def test_latest_window_equals_the_transform_window_with_the_same_end(schema, frame):
    """transform_latest on a frame cut at t gives the input of the full window ending at t of the longer frame."""
    p = _pipe(schema, spline=SplinePreprocessor("smoothing", max_gap=4, outlier_rule="mad"), fill_indicator=True)
    base = p.fit(frame, TRAIN_END, VAL_END).transform(frame)
    checked = 0
    for i in range(0, len(base), 7):
        t = int(base.ends[i])
        lw = p.transform_latest(frame.iloc[: t + 1])
        assert lw.X.shape == (1, 16, len(base.feature_names)) and lw.X.dtype == np.float32
        assert _same(lw.X[0], base.X[i]), t
        assert lw.input_end == base.ds[t] and np.array_equal(lw.target_ds.to_numpy(), base.target_ds[i])
        assert lw.target_names == ["load", "price"] and lw.feature_names == base.feature_names
        checked += 1
    assert checked >= 15
    last = p.transform_latest(frame)                                   # the real forecast origin: no targets after it
    assert np.isfinite(last.X).all() and last.input_end == frame["ts"].iloc[-1]
    assert list(last.target_ds) == list(pd.date_range(frame["ts"].iloc[-1], periods=5, freq="h")[1:])


def test_latest_window_errors(schema, frame):
    p = _pipe(schema).fit(frame, TRAIN_END, VAL_END)
    with pytest.raises(DataValidationError, match="lookback = 16"):
        p.transform_latest(frame.iloc[:10])
    with pytest.raises(DataValidationError, match="gap longer than max_gap"):
        p.transform_latest(frame.iloc[:61])                           # ends 6 steps into the 8-step gap of 'load'
    with pytest.raises(NotFittedError):
        _pipe(schema).transform_latest(frame)


def test_json_round_trip_and_npz(schema, frame, tmp_path):
    p = _pipe(schema, scaler="minmax").fit(frame, TRAIN_END, VAL_END)
    text = p.to_json()
    q = FeaturePipeline.from_json(text)
    assert q.to_json() == text
    a, b = p.transform(frame), q.transform(frame)
    assert _same(a.X, b.X) and _same(a.y, b.y)
    path = atomic_save_npz(tmp_path / "processed.npz", **a.to_npz_dict())
    z = load_npz(path)                                                # allow_pickle=False
    assert {"X", "y", "feature_names", "target_indices", "scaled", "raw_target"} <= set(z)
    assert z["feature_names"].tolist() == a.feature_names and z["X"].shape == a.X.shape
    assert z["scaled"].shape == (N, len(a.feature_names)) and z["raw_target"].shape == (N, 2)


@pytest.mark.parametrize("mutate,msg", [
    (lambda df: df.iloc[:0], "empty"),
    (lambda df: df.assign(load=np.nan), "all NaN"),
    (lambda df: df.iloc[np.r_[1, 0, 2:len(df)]], "strictly increasing"),
    (lambda df: df.iloc[:12], "lookback + horizon"),
    (lambda df: df.assign(unique_id=np.arange(len(df)) % 2), "one at a time"),
    (lambda df: df.drop(columns="price"), "column 'price'"),
])
def test_bad_frames_raise_data_validation_error(schema, frame, mutate, msg):
    with pytest.raises(DataValidationError, match=None) as e:
        _pipe(schema).fit(mutate(frame), TRAIN_END)
    assert msg in str(e.value)


def test_lookback_longer_than_series_at_transform(schema, frame):
    p = _pipe(schema).fit(frame, TRAIN_END)
    with pytest.raises(DataValidationError, match="lower lookback or horizon"):
        p.transform(frame.iloc[:18])


def test_pipeline_usage_errors(schema, frame):
    with pytest.raises(NotFittedError):
        _pipe(schema).transform(frame)
    with pytest.raises(ConfigError, match="train_end is required"):
        _pipe(schema).fit(frame, None)
    with pytest.raises(ConfigError, match="must be after"):
        _pipe(schema).fit(frame, VAL_END, TRAIN_END)
    with pytest.raises(ConfigError, match="scaler 'robust'"):
        FeaturePipeline(schema, 8, 2, scaler="robust")
    p = _pipe(schema).fit(frame, TRAIN_END)
    with pytest.raises(DataValidationError, match="'promo' was present"):
        p.transform(frame.drop(columns="promo"))
    with pytest.raises(DataValidationError, match="declare it as a dynamic"):
        p.transform(frame.assign(area=np.arange(N, dtype=float)))


def test_no_spline_masks_every_gap(schema, frame):
    wd = FeaturePipeline(schema, 16, 4, spline=None).fit_transform(frame, TRAIN_END)
    gaps = np.flatnonzero(frame["load"].isna() | frame["price"].isna())
    lo, hi = wd.ends - 15, wd.ends + 4
    assert not ((lo[:, None] <= gaps) & (hi[:, None] >= gaps)).any()
    assert not wd.y_filled.any()


def test_real_datasets_end_to_end():
    from tsfm_wb.data import load_dataset
    co2 = load_dataset("co2")
    tr, va = time_split_points(co2["ds"], 0.7, 0.15)
    p = FeaturePipeline(CONFIGS / "univariate_co2.json", 52, 12, spline=SplinePreprocessor("pchip", max_gap=4))
    wd = p.fit_transform(co2, tr, va)
    assert wd.X.shape[1:] == (52, 3) and 0 < wd.y_filled.mean() < 0.05
    obs = ~wd.y_filled
    truth = co2.set_index("ds")["y"].reindex(wd.target_ds[obs]).to_numpy()
    np.testing.assert_allclose(wd.y_raw[obs], truth, rtol=1e-6)        # targets are the observations
    macro = load_dataset("macro")
    tr, va = time_split_points(macro["ds"], 0.7, 0.15)
    wm = FeaturePipeline(CONFIGS / "macro.json", 8, 4).fit_transform(macro, tr, va)
    assert wm.X.shape[1:] == (8, 8) and {k: len(v) > 0 for k, v in wm.split().items()} == {"train": True, "val": True, "test": True}
