"""Baseline fallback chain: valid, widening bands for every valid series; never a median of 0 from a broken baseline."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tsfm_wb.tsfm.baselines import (BASELINES, CHAIN, BaselineUnsupportedError, baseline_forecast, ewma_forecast,
                               inv_logit, kalman_forecast, logit, rolling_quantile_forecast)
from tsfm_wb.core import ConfigError, DataValidationError

TAUS = (0.05, 0.1, 0.5, 0.9, 0.95)


def _walk(n: int, seed: int, scale: float = 0.1, start: float = 0.0) -> np.ndarray:
    return inv_logit(start + np.cumsum(np.random.default_rng(seed).normal(0, scale, n)))


def _assert_valid(q: np.ndarray, horizon: int) -> None:
    assert q.shape == (horizon, len(TAUS))
    assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()
    assert (np.diff(q, axis=1) >= 0).all(), "quantiles cross"


BROKEN = {
    "one point": [0.62], "two equal points": [0.62, 0.62], "three points": [0.3, 0.35, 0.33],
    "constant long": [0.37] * 300, "constant then jump": [0.2] * 100 + [0.8],
    "zeros then value": [0.0] * 40 + [0.3] * 3, "ones": [1.0] * 30, "alternating bounds": [0.0, 1.0] * 20,
    "tiny value": [1e-4] * 20, "step once": [0.5] * 20 + [0.55] * 20,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_series_never_give_zero_median(name):
    y = np.asarray(BROKEN[name])
    res = baseline_forecast(y, 12, TAUS)
    _assert_valid(res.q, 12)
    assert (res.q[:, 2] > 0).all(), f"{name}: q50 is 0 (the reference defect)"
    if np.ptp(y[-20:]) == 0:                    # flat recent history: the median is that value
        np.testing.assert_allclose(res.q[:, 2], np.clip(y[-1], 1e-6, 1 - 1e-6), atol=1e-9)
    assert (np.diff(res.q[:, -1] - res.q[:, 0]) > 0).all(), f"{name}: band must widen with h"


@pytest.mark.parametrize("method", CHAIN)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_method_widens_with_horizon(method, seed):
    y = _walk(120, seed, scale=0.05 + 0.1 * seed)
    q = BASELINES[method](y, 24, TAUS).q
    _assert_valid(q, 24)
    width = q[:, -1] - q[:, 0]
    assert (np.diff(width) > 0).all()
    assert width[-1] > 1.5 * width[0], "a 24-step band should be clearly wider than the 1-step band"


def test_flat_band_would_fail_coverage_at_long_horizons():
    """On logit random walks, 80% bands must cover about 80% at h=1 AND h=12 (a flat band drops to ~35%)."""
    H, hits = 12, {1: [], 12: []}
    for seed in range(40):
        y = _walk(400, 100 + seed, scale=0.08)
        for origin in range(100, 388, 24):
            q = baseline_forecast(y[:origin], H, (0.1, 0.5, 0.9)).q
            for h in hits:
                hits[h].append(q[h - 1, 0] <= y[origin + h - 1] <= q[h - 1, 2])
    cov = {h: float(np.mean(v)) for h, v in hits.items()}
    assert 0.7 <= cov[1] <= 0.9 and 0.7 <= cov[12] <= 0.9, cov


def test_chain_order_and_reasons():
    assert baseline_forecast(_walk(100, 3), 4).method_used == "ewma"
    res = baseline_forecast(_walk(10, 3), 4)
    assert res.method_used == "kalman" and res.warnings[0].startswith("ewma skipped: ewma needs >= 16 points")
    res = baseline_forecast([0.4, 0.41, 0.4], 4)
    assert res.method_used == "rolling_quantile" and any(w.startswith("kalman skipped") for w in res.warnings)
    with pytest.raises(BaselineUnsupportedError, match="ewma needs"):
        baseline_forecast([0.4] * 5, 3, method="ewma")


def test_medians_follow_the_level():
    y = np.r_[np.full(50, 0.2), np.linspace(0.2, 0.8, 50)]
    for method in CHAIN:
        med = BASELINES[method](y, 3, (0.1, 0.5, 0.9)).q[0, 1]
        assert 0.7 < med < 0.85, (method, med)


@pytest.mark.parametrize("bad, msg", [([0.2, float("nan"), 0.3], "y[1] is nan"), ([0.2, 1.5], "outside [0, 1]"),
                                      ([-0.1], "outside [0, 1]"), ([], "non-empty"), ([[0.1, 0.2]], "1-D"),
                                      (["a"], "sequence of numbers")])
def test_invalid_series_are_rejected(bad, msg):
    with pytest.raises(DataValidationError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        baseline_forecast(bad, 3)


def test_invalid_arguments():
    y = _walk(50, 0)
    with pytest.raises(DataValidationError, match="horizon"):
        baseline_forecast(y, 0)
    with pytest.raises(DataValidationError, match="sorted and unique"):
        baseline_forecast(y, 3, (0.5, 0.1))
    with pytest.raises(ConfigError, match="unknown baseline method"):
        baseline_forecast(y, 3, method="prophet")
    with pytest.raises(ConfigError, match="unknown baseline option"):
        baseline_forecast(y, 3, span=5)
    with pytest.raises(ConfigError, match="window"):
        rolling_quantile_forecast(y, 3, window=1)


def test_logit_roundtrip_and_clip():
    p = np.array([0.0, 1e-9, 0.3, 1.0])
    assert np.isfinite(logit(p)).all()
    np.testing.assert_allclose(inv_logit(logit(p)), np.clip(p, 1e-6, 1 - 1e-6), rtol=1e-9)


def test_kalman_and_ewma_agree_on_random_walks():
    y = _walk(300, 7, scale=0.1)
    e, k = ewma_forecast(y, 6, TAUS).q, kalman_forecast(y, 6, TAUS).q
    assert np.abs(e[:, 2] - k[:, 2]).max() < 0.02
    assert np.abs((e[:, -1] - e[:, 0]) / (k[:, -1] - k[:, 0]) - 1).max() < 0.3


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=60), st.integers(1, 30),
       st.sampled_from(["chain", *CHAIN]))
def test_property_any_valid_series(y, horizon, method):
    try:
        res = baseline_forecast(y, horizon, TAUS, method=method)
    except BaselineUnsupportedError:
        assert method != "chain"
        return
    _assert_valid(res.q, horizon)
    assert (res.q[:, 2] > 0).all() and (res.q[:, 2] < 1).all()
    assert (np.diff(res.q[:, -1] - res.q[:, 0]) >= 0).all()
