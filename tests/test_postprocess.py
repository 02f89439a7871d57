"""Post-processing property tests (hypothesis): clipped, non-crossing, width-bounded quantiles that keep their median and skew.

The example-based unit tests live in the notebook beside the code (nbs/tsfm/25_postprocess.ipynb)."""
import numpy as np
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from tsfm_wb.tsfm.baselines import EPS, logit
from tsfm_wb.tsfm.postprocess import MAX_WIDTH, MIN_LOGIT_WIDTH, MIN_WIDTH, postprocess_quantiles

T3 = (0.1, 0.5, 0.9)
TOL = 1e-9


def _check_invariants(out: np.ndarray, min_width: float = MIN_WIDTH, max_width: float = MAX_WIDTH,
                      min_logit_width: float = MIN_LOGIT_WIDTH) -> None:
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert (np.diff(out, axis=1) >= 0).all()
    width = out[:, -1] - out[:, 0]
    lwidth = logit(out[:, -1], EPS) - logit(out[:, 0], EPS)
    assert (width >= min_width - TOL).all() and (width <= max_width + TOL).all()
    # the logit minimum yields to max_width only where both cannot hold (never for min_logit_width <= ~2.7)
    assert ((lwidth >= min_logit_width - 1e-7) | (width >= max_width - TOL)).all()


quantile_sets = st.lists(st.floats(0.01, 0.99), min_size=2, max_size=7, unique=True).map(sorted).filter(
    lambda t: np.min(np.diff(t)) > 1e-3)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), taus=quantile_sets, horizon=st.integers(1, 12))
def test_property_invariants(data, taus, horizon):
    q = data.draw(arrays(float, (horizon, len(taus)), elements=st.floats(-0.5, 1.5, allow_nan=False)))
    lo_w = data.draw(st.floats(0.0, 0.3))
    hi_w = data.draw(st.floats(lo_w + 0.05, 1.0))
    lo_lw = data.draw(st.floats(0.0, 1.0))
    out, warnings = postprocess_quantiles(q, taus, min_width=lo_w, max_width=hi_w, min_logit_width=lo_lw)
    _check_invariants(out, lo_w, hi_w, lo_lw)
    assert out.shape == q.shape
    # every step that changed is named in a warning
    changed = np.flatnonzero((out != q).any(axis=1))
    named = {int(w.split(":")[0].split()[1]) - 1 for w in warnings}
    assert set(changed.tolist()) <= named


@settings(max_examples=300, deadline=None)
@given(arrays(float, (6, 3), elements=st.floats(0, 1, allow_nan=False)))
def test_property_median_preserved_when_already_valid(q):
    q = np.sort(q, axis=1)
    out, _ = postprocess_quantiles(q, T3)
    _check_invariants(out)
    np.testing.assert_array_equal(out[:, 1], q[:, 1])


@settings(max_examples=200, deadline=None)
@given(arrays(float, (4, 3), elements=st.floats(0.001, 0.999)))
def test_property_logit_skew_kept(q):
    q = np.sort(q, axis=1)
    a, b = logit(q[:, 1]) - logit(q[:, 0]), logit(q[:, 2]) - logit(q[:, 1])
    assume((a > 1e-3).all() and (b > 1e-3).all())
    out, _ = postprocess_quantiles(q, T3)
    a2, b2 = logit(out[:, 1]) - logit(out[:, 0]), logit(out[:, 2]) - logit(out[:, 1])
    np.testing.assert_allclose(a2 / b2, a / b, rtol=1e-5)


@settings(max_examples=200, deadline=None)
@given(arrays(float, (5, 3), elements=st.floats(0.0005, 0.9995)), st.floats(0.01, 2.0))
def test_property_bands_wide_enough_in_logits_are_untouched(q, scale):
    """A sorted band whose logit width already meets the minimum (and is below max_width) is never changed."""
    c = logit(q[:, 1])
    band = 1 / (1 + np.exp(-(c[:, None] + np.array([-1.0, 0.0, 1.0]) * (MIN_LOGIT_WIDTH / 2 + scale))))
    assume((band[:, 2] - band[:, 0] <= MAX_WIDTH).all())
    out, warnings = postprocess_quantiles(band, T3)
    np.testing.assert_array_equal(out, band)
    assert warnings == []


def test_logit_minimum_yields_to_max_width():
    "A logit minimum wider than max_width allows at 0.5 is capped there (found by the property test above)."
    out, warnings = postprocess_quantiles(np.array([[0.5, 0.5]]), (0.1, 0.9), min_width=0.0, max_width=0.125,
                                          min_logit_width=1.0)
    np.testing.assert_allclose(out[0, 1] - out[0, 0], 0.125, atol=1e-9)
    assert out[0].mean() == 0.5 and "widened" in warnings[0]
