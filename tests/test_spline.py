"""tsfm_wb.lab.spline: gap filling, resampling, smoothing; fitted on train only; causal input windows."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import make_smoothing_spline

from tsfm_wb.core import ConfigError, DataValidationError
from tsfm_wb.lab.spline import (
    SPLINE_METHODS, NotFittedError, SplinePreprocessor, causal_smooth, regular_grid,
)
from tsfm_wb.lab.spline import _gcv_lam

N = 120
TRAIN = 80


def _same(a, b):
    return np.array_equal(a, b, equal_nan=True)


@pytest.fixture()
def series():
    """Hourly seasonal series with short gaps (1, 2, 3 steps), a long gap (7 steps), noise and one spike."""
    rng = np.random.default_rng(0)
    ds = pd.date_range("2024-01-01", periods=N, freq="h")
    y = 10 * np.sin(np.arange(N) / 6.0) + 0.05 * np.arange(N) + rng.normal(0, 0.3, N)
    y[[10]] = np.nan; y[20:22] = np.nan; y[40:47] = np.nan; y[60:63] = np.nan; y[95:97] = np.nan; y[100:102] = np.nan
    y[70] += 40.0
    return ds, y


def _prep(method, **kw):
    return SplinePreprocessor(method, max_gap=kw.pop("max_gap", 3), freq="1h", **kw)


@pytest.mark.parametrize("method", SPLINE_METHODS)
@pytest.mark.parametrize("policy", ["mask", "split"])
def test_short_gaps_filled_long_gaps_masked(series, method, policy):
    ds, y = series
    res = _prep(method, gap_policy=policy).fit(ds, y, ds[TRAIN]).transform(ds, y)
    assert res.masked.nonzero()[0].tolist() == list(range(40, 47))
    assert np.isnan(res.values[res.masked]).all() and np.isfinite(res.values[~res.masked]).all()
    assert set(res.filled.nonzero()[0]) == {10, 20, 21, 60, 61, 62, 95, 96, 100, 101}
    assert res.segments == [(0, 40), (47, N)]
    rep = res.report
    assert (rep["n_filled"], rep["n_masked"], rep["n_observed"]) == (10, 7, N - 17)
    assert [g["n_steps"] for g in rep["gaps"]] == [1, 2, 7, 3, 2, 2]
    assert [g["action"] for g in rep["gaps"]].count("masked") == 1
    json.dumps(rep, allow_nan=False)                                   # the report is plain JSON


def test_interpolants_pass_through_observations(series):
    ds, y = series
    for method in ("cubic", "pchip"):
        res = _prep(method).fit(ds, y, ds[TRAIN]).transform(ds, y)
        ok = np.isfinite(y)
        assert np.array_equal(res.values[ok], y[ok])
    sm = _prep("smoothing").fit(ds, y, ds[TRAIN]).transform(ds, y)
    assert not np.allclose(sm.values[np.isfinite(y)], y[np.isfinite(y)])          # smoothing smooths
    raw = _prep("smoothing").fit(ds, y, ds[TRAIN]).transform(ds, y, clean=False)
    assert np.array_equal(raw.values[np.isfinite(y)], y[np.isfinite(y)])          # clean=False keeps observations


def test_pchip_fill_is_exact_on_linear_data():
    ds = pd.date_range("2024", periods=12, freq="D")
    y = 2.0 * np.arange(12) + 1; y[4:7] = np.nan
    res = SplinePreprocessor("pchip", max_gap=3).fit(ds, y).transform(ds, y)
    np.testing.assert_allclose(res.values, 2.0 * np.arange(12) + 1)


def test_irregular_timestamps_are_resampled_onto_the_grid():
    rng = np.random.default_rng(3)
    base = pd.date_range("2024-01-01", periods=60, freq="5min")
    jitter = pd.to_timedelta(rng.uniform(-100, 100, 60).round(), unit="s"); jitter = jitter.where(np.arange(60) % 5 != 0, pd.Timedelta(0))
    ds = base + jitter
    t = (ds - ds[0]).total_seconds().to_numpy()
    y = 3.0 + t / 60.0                                                 # linear in time: any interpolant is exact
    sp = SplinePreprocessor("pchip", max_gap=2, freq="5m").fit(ds, y)
    res = sp.transform(ds, y)
    assert res.ds.freqstr in ("5min", "5T") and res.ds[0] == ds[0]
    inside = ~res.masked
    np.testing.assert_allclose(res.values[inside], 3.0 + ((res.ds[inside] - ds[0]).total_seconds() / 60.0), atol=1e-9)
    assert res.report["n_observed"] == 12                             # only the un-jittered points lie on the grid


def test_split_policy_does_not_fit_across_long_gaps(series):
    ds, y = series
    y2 = y.copy(); y2[47:] += 25.0                                    # change everything after the long gap
    for policy, should_match in (("split", True), ("mask", False)):
        sp = _prep("cubic", gap_policy=policy).fit(ds, y, ds[TRAIN])
        a, b = sp.transform(ds, y, cuts=()), sp.transform(ds, y2, cuts=())
        assert _same(a.values[:40], b.values[:40]) == should_match, policy


@pytest.mark.parametrize("method", SPLINE_METHODS)
def test_leakage_training_part_unchanged_when_later_part_changes(series, method):
    ds, y = series
    sp1 = _prep(method, outlier_rule="mad").fit(ds, y, ds[TRAIN])
    y2 = y.copy(); y2[TRAIN + 1:] = np.random.default_rng(9).normal(100, 30, N - TRAIN - 1); y2[TRAIN + 1::3] = np.nan
    sp2 = _prep(method, outlier_rule="mad").fit(ds, y2, ds[TRAIN])
    assert sp1.to_json() == sp2.to_json()                              # nothing fitted saw the later part
    a, b = sp1.transform(ds, y), sp2.transform(ds, y2)
    assert _same(a.values[: TRAIN + 1], b.values[: TRAIN + 1])
    assert np.array_equal(a.filled[: TRAIN + 1], b.filled[: TRAIN + 1]) and np.array_equal(a.masked[: TRAIN + 1], b.masked[: TRAIN + 1])


@pytest.mark.parametrize("method", SPLINE_METHODS)
def test_causal_windows_ignore_the_future(series, method):
    """Changing y[t+1:] (values and missingness) changes no input window ending at t."""
    ds, y = series
    L = 12
    sp = _prep(method, outlier_rule="mad").fit(ds, y, ds[TRAIN])
    ends = np.arange(L - 1, N)
    V, F, M = sp.causal_windows(sp.transform(ds, y), ends, L)
    rng = np.random.default_rng(5)
    for t in range(L - 1, N - 1):
        y2 = y.copy(); y2[t + 1:] = rng.normal(0, 100, N - t - 1); y2[t + 1::2] = np.nan
        V2, F2, M2 = sp.causal_windows(sp.transform(ds, y2), [t], L)
        i = t - L + 1
        assert _same(V[i], V2[0]) and np.array_equal(F[i], F2[0]) and np.array_equal(M[i], M2[0]), t


def test_offline_fill_looks_ahead_but_causal_windows_do_not(series):
    """Documents why inputs never use the offline fill: inside a gap it depends on the next observation."""
    ds, y = series
    sp = _prep("pchip").fit(ds, y, ds[TRAIN])
    y2 = y.copy(); y2[22] += 50.0                                     # the observation closing the gap 20..21
    assert sp.transform(ds, y).values[21] != sp.transform(ds, y2).values[21]
    V, F, _ = sp.causal_windows(sp.transform(ds, y), [21], 6)
    V2, _, _ = sp.causal_windows(sp.transform(ds, y2), [21], 6)
    assert np.array_equal(V, V2) and F[0, -2:].all() and V[0, -1] == y[19]   # the open gap holds the last value


def test_causal_windows_mask_open_gaps_longer_than_max_gap(series):
    ds, y = series
    sp = _prep("pchip").fit(ds, y, ds[TRAIN])
    _, F, M = sp.causal_windows(sp.transform(ds, y), [41, 42, 43], 8)
    assert not M[0].any() and not M[1].any() and M[2, -1]             # 40..42 held (3 steps), the 4th (43) is masked
    assert F[1, -3:].all() and not F[1, -4]


def test_gcv_penalty_recovered_from_scipy():
    rng = np.random.default_rng(1)
    x = np.arange(150.0); y = np.cos(x / 9) + rng.normal(0, 0.3, 150)
    lam = _gcv_lam(x, y)
    np.testing.assert_allclose(make_smoothing_spline(x, y, lam=lam)(x), make_smoothing_spline(x, y)(x), atol=1e-3)
    sp = SplinePreprocessor("smoothing", freq="1h").fit(pd.date_range("2024", periods=150, freq="h"), y)
    assert sp.fitted_["lam"] == pytest.approx(lam)
    assert SplinePreprocessor("smoothing", smoothing=5.0, freq="1h").fit(pd.date_range("2024", periods=150, freq="h"), y).fitted_["lam"] == 5.0


def test_mad_outlier_replaced_with_causal_reference(series):
    ds, y = series
    sp = _prep("pchip", outlier_rule="mad").fit(ds, y, ds[TRAIN])
    res = sp.transform(ds, y)
    assert [o["ds"] for o in res.report["outliers"]] == [ds[70].isoformat()]
    assert abs(res.values[70] - y[69]) < 5
    assert _prep("pchip").fit(ds, y, ds[TRAIN]).transform(ds, y).report["n_outliers"] == 0


def test_max_gap_as_duration_and_its_errors(series):
    ds, y = series
    assert SplinePreprocessor(max_gap="3h", freq="1h").fit(ds, y).fitted_["max_gap_steps"] == 3
    q = pd.date_range("2000", periods=12, freq="QS")
    with pytest.raises(ConfigError, match="give max_gap in steps"):
        SplinePreprocessor(max_gap="90D", freq="QS").fit(q, np.arange(12.0))
    with pytest.raises(ConfigError, match="max_gap"):
        SplinePreprocessor(max_gap=-1)


@pytest.mark.parametrize("method", SPLINE_METHODS)
def test_json_round_trip(series, method):
    ds, y = series
    sp = _prep(method, outlier_rule="mad").fit(ds, y, ds[TRAIN])
    text = sp.to_json()
    back = SplinePreprocessor.from_json(text)
    assert back.to_json() == text and "pickle" not in text
    assert _same(back.transform(ds, y).values, sp.transform(ds, y).values)
    with pytest.raises(ConfigError, match="not a SplinePreprocessor"):
        SplinePreprocessor.from_json(json.dumps({"type": "StandardScaler"}))


@pytest.mark.parametrize("ds,y,msg", [
    ([], [], "empty"),
    (pd.date_range("2024", periods=5, freq="D"), [np.nan] * 5, "all NaN"),
    (pd.date_range("2024", periods=5, freq="D")[[0, 1, 3, 2, 4]], np.arange(5.0), "strictly increasing"),
    (pd.date_range("2024", periods=5, freq="D")[[0, 1, 1, 2, 3]], np.arange(5.0), "drop duplicate timestamps"),
    (pd.date_range("2024", periods=5, freq="D"), [1, 2, np.inf, 3, 4], "inf"),
    (pd.date_range("2024", periods=5, freq="D"), [1, 2, 3], "equal length"),
    (pd.date_range("2024", periods=3, freq="D"), [1, np.nan, np.nan], "fewer than 2"),
])
def test_bad_inputs_raise_data_validation_error(ds, y, msg):
    with pytest.raises(DataValidationError, match=msg):
        SplinePreprocessor(freq="D").fit(ds, y)


def test_usage_errors(series):
    ds, y = series
    with pytest.raises(NotFittedError, match="call fit"):
        SplinePreprocessor().transform(ds, y)
    with pytest.raises(ConfigError, match="method 'akima'"):
        SplinePreprocessor("akima")
    with pytest.raises(ConfigError, match="needs method='smoothing'"):
        SplinePreprocessor("cubic", smoothing="gcv")
    sp = _prep("pchip").fit(ds, y)
    with pytest.raises(DataValidationError, match="lower lookback"):
        sp.causal_windows(sp.transform(ds, y), [5], 12)


@pytest.mark.parametrize("method", ["ewm", "trailing_mean", "spline"])
def test_causal_smooth_is_one_sided(method):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, 40); z[[3, 17, 18]] = np.nan
    out = causal_smooth(z, method, window=6)
    assert np.isfinite(out).all()
    for t in range(0, 39, 4):
        z2 = z.copy(); z2[t + 1:] = 1e3
        np.testing.assert_array_equal(causal_smooth(z2, method, window=6)[: t + 1], out[: t + 1])
    assert np.std(np.diff(out)) < np.std(np.diff(np.nan_to_num(z)))    # it does smooth


def test_regular_grid_calendar_and_fixed():
    assert len(regular_grid(pd.to_datetime(["2000-01-01", "2002-10-01"]), "QS")) == 12
    g = regular_grid(pd.to_datetime(["2024-01-01 00:03", "2024-01-01 01:03"]), "15m")
    assert len(g) == 5 and g[0].minute == 3


def test_real_co2_gaps():
    from tsfm_wb.data import load_dataset
    co2 = load_dataset("co2")
    sp = SplinePreprocessor("pchip", max_gap=4, freq="W-SAT").fit(co2["ds"], co2["y"], co2["ds"].iloc[1600])
    rep = sp.transform(co2["ds"], co2["y"]).report
    assert rep["n_grid"] == 2284 and rep["n_observed"] == 2225 and rep["n_filled"] + rep["n_masked"] == 59
    assert rep["n_gaps"] == 22 and all(g["action"] == "masked" for g in rep["gaps"] if g["n_steps"] > 4)
