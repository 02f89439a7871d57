"""Post-processing: clipped, non-crossing, width-bounded quantiles that keep their skew near 0 and 1."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from conftest import REPO_ROOT
from tsfm_wb.tsfm.baselines import logit
from tsfm_wb.core import ConfigError, DataValidationError
from tsfm_wb.tsfm.postprocess import MAX_WIDTH, MIN_WIDTH, PostprocessSettings, load_postprocess_settings, postprocess_quantiles

T3 = (0.1, 0.5, 0.9)
TOL = 1e-9


def _check_invariants(out: np.ndarray, min_width: float = MIN_WIDTH, max_width: float = MAX_WIDTH) -> None:
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert (np.diff(out, axis=1) >= 0).all()
    width = out[:, -1] - out[:, 0]
    assert (width >= min_width - TOL).all() and (width <= max_width + TOL).all()


quantile_sets = st.lists(st.floats(0.01, 0.99), min_size=2, max_size=7, unique=True).map(sorted).filter(
    lambda t: np.min(np.diff(t)) > 1e-3)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), taus=quantile_sets, horizon=st.integers(1, 12))
def test_property_invariants(data, taus, horizon):
    q = data.draw(arrays(float, (horizon, len(taus)), elements=st.floats(-0.5, 1.5, allow_nan=False)))
    lo_w = data.draw(st.floats(0.0, 0.3))
    hi_w = data.draw(st.floats(lo_w + 0.05, 1.0))
    out, warnings = postprocess_quantiles(q, taus, min_width=lo_w, max_width=hi_w)
    _check_invariants(out, lo_w, hi_w)
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


def test_clean_input_is_untouched():
    q = np.array([[0.40, 0.45, 0.52], [0.38, 0.45, 0.55]])
    out, warnings = postprocess_quantiles(q, T3)
    np.testing.assert_array_equal(out, q)
    assert warnings == []


@pytest.mark.parametrize("p", [1e-4, 0.002, 0.005])
def test_near_zero_keeps_bounds_and_skew(p):
    q = np.array([[p / 2, p, 1.2 * p]])
    out, warnings = postprocess_quantiles(q, T3)
    lo, med, hi = out[0]
    assert lo >= 0 and med == p and abs(hi - lo - MIN_WIDTH) < TOL
    assert hi - med > med - lo, "near 0 the band must extend upwards (skew kept)"
    # the reference's symmetric clamp (mid +- w/2, then clip) would fail the minimum width here
    mid = (q[0, 0] + q[0, 2]) / 2
    assert min(1, mid + MIN_WIDTH / 2) - max(0, mid - MIN_WIDTH / 2) < MIN_WIDTH
    assert "widened in logit space" in warnings[0] and warnings[0].startswith("step 1:")


def test_near_one_mirrors_near_zero():
    q = np.array([[0.001, 0.002, 0.0025], [0.0, 0.0, 0.0]])
    out0, _ = postprocess_quantiles(q, T3)
    out1, _ = postprocess_quantiles(1 - q[:, ::-1], T3)
    np.testing.assert_allclose(out1, 1 - out0[:, ::-1], atol=1e-12)
    assert out1[1, 1] == 1.0 and out1[1, 2] == 1.0 and abs(out1[1, 2] - out1[1, 0] - MIN_WIDTH) < TOL


def test_too_wide_is_narrowed_around_the_median():
    out, warnings = postprocess_quantiles([[0.01, 0.3, 0.95], [0.0, 0.5, 1.0]], T3)
    np.testing.assert_allclose(out[:, 2] - out[:, 0], MAX_WIDTH, atol=TOL)
    assert out[0, 1] == 0.3 and out[1, 1] == 0.5
    np.testing.assert_allclose(out[1], [0.2, 0.5, 0.8], atol=1e-9)   # symmetric input stays symmetric
    assert len(warnings) == 2 and all("narrowed" in w for w in warnings)


def test_clip_and_cross_warnings():
    out, warnings = postprocess_quantiles([[-0.2, 0.5, 0.6], [0.7, 0.5, 0.3]], T3)
    assert warnings[:2] == ["step 1: 1 value(s) outside [0, 1] clipped", "step 2: quantiles crossed, sorted"]
    np.testing.assert_array_equal(out[1], [0.3, 0.5, 0.7])


def test_non_finite_and_shape_errors():
    with pytest.raises(DataValidationError, match=r"q\[1, 2\] \(step 2\) is nan"):
        postprocess_quantiles([[0.1, 0.5, 0.9], [0.1, 0.5, np.nan]], T3)
    with pytest.raises(DataValidationError, match="shape"):
        postprocess_quantiles([[0.1, 0.9]], T3)
    with pytest.raises(DataValidationError, match="sorted and unique"):
        postprocess_quantiles([[0.1, 0.9]], (0.9, 0.1))
    with pytest.raises(ConfigError, match="min_width"):
        postprocess_quantiles([[0.1, 0.9]], (0.1, 0.9), min_width=0.7, max_width=0.6)


def test_single_quantile_is_only_clipped():
    out, warnings = postprocess_quantiles([[1.3], [0.4]], (0.5,))
    np.testing.assert_array_equal(out[:, 0], [1.0, 0.4])
    assert warnings == ["step 1: 1 value(s) outside [0, 1] clipped"]


def test_config_file_matches_defaults():
    path = Path(REPO_ROOT) / "configs" / "postprocess.yaml"
    assert load_postprocess_settings(str(path)) == PostprocessSettings()
