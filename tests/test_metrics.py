"""tsfm_wb.metrics against hand-computed values and independent references (scikit-learn, utilsforecast), plus
the edge cases (NaN, zero scales), the forecaster contract for every baseline and walk-forward split properties."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm
from utilsforecast import losses as ufl

import tsfm_wb.metrics as M
from tsfm_wb.core import DataValidationError, ModelError

TOL = dict(rtol=1e-9, atol=1e-9)       # numpy.testing: agreement with the references
APPROX = dict(rel=1e-9, abs=1e-9)      # the same for pytest.approx
SHAPES = [(1, 1), (1, 7), (6, 1), (8, 12), (33, 5)]
SEEDS = [0, 1, 2]
CASES = [(s, seed) for s in SHAPES for seed in SEEDS]

EXPECTED_PUBLIC = sorted([
    "BASELINES", "BacktestResult", "DEFAULT_BACKTEST_METRICS", "DEFAULT_CHECK_HORIZON", "DEFAULT_MIN_TRAIN", "Forecaster",
    "MAPE_EPS", "MovingAverageForecaster", "NAN_POLICIES", "NaiveForecaster", "NanPolicy", "POINT_METRICS",
    "SeasonalNaiveForecaster", "backtest_baseline", "check_forecaster", "coverage", "evaluate_by_horizon",
    "evaluate_interval", "evaluate_point", "interval_width", "mae", "make_baseline", "make_windows", "mape", "mase",
    "mean_pinball", "mse", "pinball_loss", "per_horizon", "plot_walk_forward", "r2", "rmse", "seasonal_scale", "smape",
    "walk_forward_splits", "winkler_score"])

# Example hyper-parameters for every registered baseline: a new baseline without an entry fails test_every_baseline_*.
BASELINE_KW = {"naive": {}, "seasonal_naive": {"season": 7}, "moving_average": {"window": 5}}


def _rand(shape, seed, positive=False):
    rng = np.random.default_rng(seed)
    yt, yp = rng.normal(size=shape) * 3, rng.normal(size=shape) * 3
    return (np.abs(yt) + 0.5, np.abs(yp) + 0.5) if positive else (yt, yp)


def _by_step(yt, yp, **extra):
    """Long frame for utilsforecast, one 'series' per horizon step: their per-id result is our axis=0."""
    B, H = yt.shape
    df = pd.DataFrame({"unique_id": np.tile(np.arange(H), B), "ds": np.repeat(np.arange(B), H),
                       "y": yt.ravel(), "m": yp.ravel()})
    for k, v in extra.items(): df[k] = np.asarray(v).ravel()
    return df


def _uf(fn, df, *args, col="m", **kw):
    return fn(df, *args, **kw).sort_values("unique_id")[col].to_numpy()


# ---------------------------------------------------------------- public surface

def test_public_names_pinned():
    assert sorted(M.__all__) == EXPECTED_PUBLIC


# ---------------------------------------------------------------- hand-computed values

Y, YHAT, YTRAIN = np.array([1.0, 2, 3, 4]), np.array([1.5, 2, 2, 5]), np.array([1.0, 3, 2, 5, 4])


@pytest.mark.parametrize("fn, kw, expected", [
    (M.mae, {}, 0.625), (M.mse, {}, 0.5625), (M.rmse, {}, 0.75),
    (M.mape, {}, (0.5 + 0 + 1 / 3 + 0.25) / 4), (M.smape, {}, 23 / 90), (M.r2, {}, 0.55),
    (M.mase, {"y_train": YTRAIN}, 0.625 / 1.75), (M.mase, {"y_train": YTRAIN, "season": 2}, 0.375),
])
def test_point_hand_computed(fn, kw, expected):
    assert fn(Y, YHAT, **kw) == pytest.approx(expected, abs=1e-15)


def test_probabilistic_hand_computed():
    np.testing.assert_allclose(M.pinball_loss([1.0, 3.0], [[0.0, 1, 2], [1, 2, 3]], [0.1, 0.5, 0.9]), [0.15, 0.25, 0.05], atol=1e-15)
    lo, hi = np.array([0.0, 2, 3.5, 3]), np.array([1.0, 3, 4, 4])
    assert M.coverage(Y, lo, hi) == 0.75 and M.interval_width(lo, hi) == 0.875
    assert M.winkler_score(Y, lo, hi, alpha=0.2) == pytest.approx(2.125, abs=1e-15)


# ---------------------------------------------------------------- scikit-learn references

@pytest.mark.parametrize("shape, seed", CASES)
def test_against_sklearn_point(shape, seed):
    yt, yp = _rand(shape, seed)
    for ours, theirs in [(M.mae, skm.mean_absolute_error), (M.mse, skm.mean_squared_error), (M.rmse, skm.root_mean_squared_error)]:
        assert ours(yt.ravel(), yp.ravel()) == pytest.approx(theirs(yt.ravel(), yp.ravel()), **APPROX)
        np.testing.assert_allclose(ours(yt, yp, axis=0), theirs(yt, yp, multioutput="raw_values"), **TOL)
    if yt.size > 1:
        assert M.r2(yt.ravel(), yp.ravel()) == pytest.approx(skm.r2_score(yt.ravel(), yp.ravel()), **APPROX)
    if shape[0] > 1:
        np.testing.assert_allclose(M.r2(yt, yp, axis=0), skm.r2_score(yt, yp, multioutput="raw_values"), **TOL)


@pytest.mark.parametrize("shape, seed", CASES)
def test_mape_matches_sklearn_with_its_epsilon(shape, seed):
    yt, yp = _rand(shape, seed)
    yt.ravel()[::3] = 0.0                                   # zeros: sklearn divides by machine epsilon
    eps = np.finfo(np.float64).eps
    assert M.mape(yt.ravel(), yp.ravel(), eps=eps) == pytest.approx(skm.mean_absolute_percentage_error(yt.ravel(), yp.ravel()), **APPROX)
    np.testing.assert_allclose(M.mape(yt, yp, eps=eps, axis=0),
                               skm.mean_absolute_percentage_error(yt, yp, multioutput="raw_values"), **TOL)


@pytest.mark.parametrize("shape, seed", CASES)
def test_pinball_against_sklearn(shape, seed):
    yt, _ = _rand(shape, seed)
    q = np.array([0.05, 0.3, 0.5, 0.9])
    yq = np.sort(np.random.default_rng(seed + 100).normal(size=shape + (q.size,)), axis=-1)
    ours, ours_h = M.pinball_loss(yt, yq, q), M.pinball_loss(yt, yq, q, axis=0)
    for j, level in enumerate(q):
        assert ours[j] == pytest.approx(skm.mean_pinball_loss(yt.ravel(), yq[..., j].ravel(), alpha=level), **APPROX)
        np.testing.assert_allclose(ours_h[:, j], skm.mean_pinball_loss(yt, yq[..., j], alpha=level, multioutput="raw_values"), **TOL)


# ---------------------------------------------------------------- utilsforecast references

@pytest.mark.parametrize("shape, seed", CASES)
def test_against_utilsforecast_point(shape, seed):
    yt, yp = _rand(shape, seed, positive=True)           # positive y: utilsforecast's mape drops y == 0
    df = _by_step(yt, yp)
    for ours, theirs, factor in [(M.mae, ufl.mae, 1), (M.mse, ufl.mse, 1), (M.rmse, ufl.rmse, 1),
                                 (M.mape, ufl.mape, 1), (M.smape, ufl.smape, 2)]:   # our sMAPE is in [0, 2], theirs [0, 1]
        np.testing.assert_allclose(ours(yt, yp, axis=0), factor * _uf(theirs, df, ["m"]), **TOL)


@pytest.mark.parametrize("season", [1, 3])
@pytest.mark.parametrize("shape, seed", CASES)
def test_mase_against_utilsforecast(shape, seed, season):
    yt, yp = _rand(shape, seed)
    rng = np.random.default_rng(seed + 7)
    trains = [rng.normal(size=season + 2 + 3 * b) for b in range(shape[0])]     # a training series per row, ragged
    B, H = shape
    df = pd.DataFrame({"unique_id": np.repeat(np.arange(B), H), "y": yt.ravel(), "m": yp.ravel(),
                       "ds": np.concatenate([len(t) + np.arange(H) for t in trains])})
    tdf = pd.DataFrame({"unique_id": np.concatenate([[b] * len(t) for b, t in enumerate(trains)]),
                        "ds": np.concatenate([np.arange(len(t)) for t in trains]), "y": np.concatenate(trains)})
    theirs = _uf(ufl.mase, df, ["m"], season, tdf)
    np.testing.assert_allclose([M.mase(yt[b], yp[b], trains[b], season) for b in range(B)], theirs, **TOL)
    assert M.mase(yt, yp, trains, season) == pytest.approx(theirs.mean(), **APPROX)   # per-row scales, equal H


@pytest.mark.parametrize("shape, seed", CASES)
def test_quantiles_against_utilsforecast(shape, seed):
    yt, _ = _rand(shape, seed)
    q = np.array([0.1, 0.5, 0.8])
    yq = np.sort(np.random.default_rng(seed + 5).normal(size=shape + (3,)) * 3, axis=-1)
    cols = {f"m_q{j}": yq[..., j] for j in range(3)}
    df = _by_step(yt, yt, **cols)
    ours = M.pinball_loss(yt, yq, q, axis=0)
    for j, level in enumerate(q):
        np.testing.assert_allclose(ours[:, j], _uf(ufl.quantile_loss, df, {"m": f"m_q{j}"}, q=level), **TOL)
    np.testing.assert_allclose(M.mean_pinball(yt, yq, q, axis=0), _uf(ufl.mqloss, df, {"m": list(cols)}, q), **TOL)


@pytest.mark.parametrize("shape, seed", CASES)
def test_intervals_against_utilsforecast(shape, seed):
    yt, yp = _rand(shape, seed)
    half = np.abs(np.random.default_rng(seed + 3).normal(size=shape)) * 2
    lo, hi = yp - half, yp + half
    yt.ravel()[::4], yt.ravel()[1::4] = lo.ravel()[::4], hi.ravel()[1::4]     # exact hits on a bound: inclusive
    df = _by_step(yt, yp, **{"m-lo-80": lo, "m-hi-80": hi})
    np.testing.assert_allclose(M.coverage(yt, lo, hi, axis=0), _uf(ufl.coverage, df, ["m"], 80), **TOL)
    np.testing.assert_allclose(M.winkler_score(yt, lo, hi, alpha=0.2, axis=0), _uf(ufl.winkler_score, df, ["m"], 80), **TOL)
    assert M.interval_width(lo, hi) == pytest.approx(np.mean(hi - lo), **APPROX)


# ---------------------------------------------------------------- NaN policy and edge cases

ALL_POINT = [(M.mae, {}), (M.mse, {}), (M.rmse, {}), (M.mape, {}), (M.smape, {}), (M.r2, {}), (M.mase, {"y_train": YTRAIN})]


@pytest.mark.parametrize("fn, kw", ALL_POINT)
def test_nan_raise_names_the_argument(fn, kw):
    with pytest.raises(DataValidationError, match="'y_pred' contains 2 NaN"):
        fn(Y, [np.nan, 1.0, np.nan, 2.0], **kw)
    with pytest.raises(DataValidationError, match=r"'y_true' has shape \(4,\) but 'y_pred' has shape \(3,\)"):
        fn(Y, YHAT[:3], **kw)


@pytest.mark.parametrize("fn, kw", ALL_POINT)
def test_nan_omit_equals_filtered(fn, kw):
    yt, yp = _rand((40,), 3)
    yt[[1, 5]], yp[[5, 9, 30]] = np.nan, np.nan
    keep = ~(np.isnan(yt) | np.isnan(yp))
    assert fn(yt, yp, nan_policy="omit", **kw) == pytest.approx(fn(yt[keep], yp[keep], **kw), **APPROX)
    with pytest.raises(DataValidationError, match="nothing left to score"):
        fn([np.nan, 1.0], [1.0, np.nan], nan_policy="omit", **kw)


def test_nan_omit_per_horizon_matches_sklearn_per_column():
    yt, yp = _rand((30, 4), 11)
    yt[[0, 3, 7], 1], yp[[2, 8], 3] = np.nan, np.nan
    ours = M.mae(yt, yp, axis=0, nan_policy="omit")
    for h in range(4):
        ok = ~(np.isnan(yt[:, h]) | np.isnan(yp[:, h]))
        assert ours[h] == pytest.approx(skm.mean_absolute_error(yt[ok, h], yp[ok, h]), **APPROX)
    yt[:, 2] = np.nan
    with pytest.raises(DataValidationError, match="left 1 slice"):
        M.mae(yt, yp, axis=0, nan_policy="omit")


@pytest.mark.parametrize("fn, args", [
    (M.pinball_loss, ([1.0, np.nan], [[0.0, 1.0], [1.0, 2.0]], [0.2, 0.8])),
    (M.coverage, ([1.0, np.nan], [0.0, 0.0], [2.0, 2.0])),
    (M.winkler_score, ([1.0, np.nan], [0.0, 0.0], [2.0, 2.0], 0.1)),
])
def test_probabilistic_nan_policy(fn, args):
    with pytest.raises(DataValidationError, match="'y_true' contains 1 NaN"):
        fn(*args)
    assert np.all(np.isfinite(fn(*args, nan_policy="omit")))


def test_zero_scale_and_constant_edges():
    with pytest.raises(DataValidationError, match="MASE is undefined: 'y_train' is constant at lag season=1"):
        M.mase(Y, YHAT, np.full(10, 0.3))
    with pytest.raises(DataValidationError, match=r"'y_train\[1\]' is constant at lag season=2"):
        M.mase(np.ones((2, 3)), np.zeros((2, 3)), [np.arange(5.0), np.array([1.0, 2, 1, 2, 1])], season=2)
    with pytest.raises(DataValidationError, match="r2 is undefined"):
        M.r2([5.0, 5.0, 5.0], [5.0, 4.0, 5.0])
    assert M.r2([5.0, 5.0], [5.0, 5.0], force_finite=True) == skm.r2_score([5.0, 5.0], [5.0, 5.0]) == 1.0
    assert M.r2([5.0, 5.0], [4.0, 5.0], force_finite=True) == skm.r2_score([5.0, 5.0], [4.0, 5.0]) == 0.0
    assert M.mape([0.0, 1.0], [2.0, 1.0]) == pytest.approx(2.0 / M.MAPE_EPS / 2, rel=1e-12)   # finite, documented
    assert M.smape([0.0, 0.0], [0.0, 0.0]) == 0.0
    with pytest.raises(DataValidationError, match="infinite"):
        M.mae([1.0, np.inf], [1.0, 1.0])
    with pytest.raises(DataValidationError, match="mape is not finite"):
        M.mape([0.0], [1e305])                                        # |ŷ| / eps overflows: an error, not inf


def test_interval_validation():
    with pytest.raises(DataValidationError, match=r"lo > hi at 1 position\(s\), first at index \(0, 1\)"):
        M.coverage(np.zeros((2, 2)), [[0.0, 1.0], [0.0, 0.0]], [[1.0, 0.5], [1.0, 1.0]])
    for q in ([0.5, 0.5], [0.6, 0.4], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(DataValidationError, match="quantiles"):
            M.pinball_loss([1.0], [[1.0, 2.0]], q)


def test_registry_and_evaluation_helpers():
    yt, yp = _rand((9, 4), 21)
    tab = M.evaluate_by_horizon(yt, yp, y_train=YTRAIN)
    assert list(tab.index) == [1, 2, 3, 4] and list(tab.columns) == list(M.POINT_METRICS)
    for name, fn in M.POINT_METRICS.items():
        kw = {"y_train": YTRAIN} if name == "mase" else {}
        np.testing.assert_allclose(tab[name].to_numpy(), M.per_horizon(fn, yt, yp, **kw), **TOL)
    overall = M.evaluate_point(yt, yp, YTRAIN)
    assert overall["mae"] == pytest.approx(tab["mae"].mean(), **APPROX)                 # equal B per step


# ---------------------------------------------------------------- baselines

def test_every_baseline_has_contract_parameters():
    assert set(BASELINE_KW) == set(M.BASELINES)


@pytest.mark.parametrize("name", sorted(BASELINE_KW))
@pytest.mark.parametrize("horizon", [1, 5, 17])
def test_every_baseline_passes_the_contract(name, horizon):
    M.check_forecaster(M.make_baseline(name, **BASELINE_KW[name]), horizon=horizon)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 30), H=st.integers(1, 25), m=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 999))
def test_baselines_match_plain_loops(L, H, m, w, seed):
    x = np.random.default_rng(seed).normal(size=L)
    assert np.array_equal(M.NaiveForecaster().predict(x, H), np.full(H, x[-1]))
    if L >= m:
        history = list(x)
        for _ in range(H): history.append(history[-m])                 # seasonal naive, one step at a time
        assert np.array_equal(M.SeasonalNaiveForecaster(m).predict(x, H), history[L:])
    if L >= w:
        np.testing.assert_allclose(M.MovingAverageForecaster(w).predict(x, H), np.full(H, x[-w:].mean()), rtol=1e-12)


def test_contract_catches_a_stateful_forecaster():
    class Drifting(M.NaiveForecaster):
        calls = 0
        def _predict(self, context, horizon):
            type(self).calls += 1
            return super()._predict(context, horizon) + type(self).calls
    with pytest.raises(ModelError, match="breaks the forecaster contract"):
        M.check_forecaster(Drifting())


def test_make_baseline_errors():
    with pytest.raises(ModelError, match=r"unknown baseline 'ets'; choose from \['moving_average', 'naive', 'seasonal_naive'\]"):
        M.make_baseline("ets")
    with pytest.raises(ModelError, match="'season' must be a positive int"):
        M.make_baseline("seasonal_naive", season=0)


# ---------------------------------------------------------------- walk-forward

@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 120), horizon=st.integers(1, 15), step=st.none() | st.integers(1, 10),
       n_splits=st.none() | st.integers(1, 12), initial=st.none() | st.integers(1, 60),
       min_train=st.integers(1, 20), window=st.none() | st.integers(1, 30))
def test_walk_forward_properties(n, horizon, step, n_splits, initial, min_train, window):
    kw = dict(n_splits=n_splits, step=step, initial_train=initial, min_train=min_train, window=window)
    first = max(min_train, window or 0)
    first = first if initial is None else max(initial, first)
    s = horizon if step is None else step
    fit = max((n - horizon - first) // s + 1, 0)
    k = fit if n_splits is None else n_splits
    if (window is not None and window < min_train) or (initial is not None and initial < first) or k == 0 or fit < k:
        with pytest.raises(DataValidationError):
            M.walk_forward_splits(n, horizon, **kw)
        return
    splits = M.walk_forward_splits(n, horizon, **kw)
    assert len(splits) == k
    origins = [te[0] for _, te in splits]
    assert all(b - a == s for a, b in zip(origins, origins[1:]))
    assert (splits[0][1][0] == initial) if initial is not None else (splits[-1][1][-1] == n - 1)
    for tr, te in splits:
        assert np.array_equal(te, np.arange(te[0], te[0] + horizon)) and te[-1] < n       # contiguous, inside
        assert len(tr) >= min_train and tr[-1] + 1 == te[0]                                 # test follows train
        assert np.array_equal(tr, np.arange(tr[0], tr[-1] + 1)) and not np.intersect1d(tr, te).size
        assert len(tr) == window if window else tr[0] == 0


def test_make_windows_matches_loop():
    y = np.arange(20.0) ** 1.5
    X, Yw = M.make_windows(y, lookback=6, horizon=3, stride=4)
    origins = range(6, 20 - 3 + 1, 4)
    assert np.array_equal(X, [y[o - 6:o] for o in origins]) and np.array_equal(Yw, [y[o:o + 3] for o in origins])


def test_backtest_matches_utilsforecast_cutoffs():
    """utilsforecast's cutoff-grouped MASE (train = every point up to the cutoff) is our per-split MASE."""
    import statsmodels.api as sm
    y = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    res = M.backtest_baseline("naive", y, horizon=6, n_splits=5, season=11, metrics=("mae", "mase", "smape"))
    df = pd.DataFrame({"unique_id": "sun", "ds": np.concatenate([np.arange(o, o + 6) for o in res.origins]),
                       "cutoff": np.repeat(res.origins - 1, 6), "y": res.y_true.ravel(), "m": res.y_pred.ravel()})
    tdf = pd.DataFrame({"unique_id": "sun", "ds": np.arange(y.size), "y": y})
    np.testing.assert_allclose(res.per_split["mase"], ufl.mase(df, ["m"], 11, tdf).sort_values("cutoff")["m"], **TOL)
    np.testing.assert_allclose(res.per_split["mae"], ufl.mae(df, ["m"]).sort_values("cutoff")["m"], **TOL)
    assert np.array_equal(res.y_pred, np.repeat(y[res.origins - 1][:, None], 6, axis=1))
    assert res.overall["mae"] == pytest.approx(M.mae(res.y_true, res.y_pred), **APPROX)
    assert list(res.per_horizon.index) == list(range(1, 7))


def test_backtest_refuses_short_series():
    with pytest.raises(DataValidationError, match="needs n >="):
        M.backtest_baseline(M.SeasonalNaiveForecaster(12), np.arange(20.0), horizon=6, n_splits=3)
