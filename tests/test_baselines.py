"""Property-based fuzzing of the baseline fallback chain: any valid series gives valid, widening bands.

The unit tests of `tsfm_wb.tsfm.baselines` live in `nbs/tsfm/24_baselines.ipynb`, beside the code."""
import numpy as np
from hypothesis import given, settings, strategies as st

from tsfm_wb.tsfm.baselines import CHAIN, BaselineUnsupportedError, baseline_forecast

TAUS = (0.05, 0.1, 0.5, 0.9, 0.95)


def _assert_valid(q: np.ndarray, horizon: int) -> None:
    assert q.shape == (horizon, len(TAUS))
    assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()
    assert (np.diff(q, axis=1) >= 0).all(), "quantiles cross"


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
