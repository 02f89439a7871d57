"""Property-based tests (hypothesis) of the baselines and the walk-forward splitter.

The unit tests (the forecaster contract, backtests against utilsforecast) live in `nbs/03_backtest.ipynb`."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tsfm_wb.backtest as M
from tsfm_wb.core import DataValidationError


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
