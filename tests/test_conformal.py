"""Conformal calibration: per-step coverage on out-of-sample residuals, segment fallback, no leakage, JSON state."""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from tsfm_wb.tsfm.baselines import inv_logit, logit
from tsfm_wb.tsfm.conformal import (GLOBAL, ConformalCalibrator, ConformalRecord, ConformalSettings, conformal_quantile,
                               conformal_replay, conformity_scores, load_conformal_settings, segment_levels)
from tsfm_wb.core import ConfigError, DataValidationError

T3 = (0.1, 0.5, 0.9)
SPREAD = np.array([0.3, 1.0, 1.6, 2.4])     # outcome spread per step (logits); the model band is +-0.64 everywhere


def _outcomes(n: int, t0: float, seed: int, spread: np.ndarray = SPREAD) -> dict[str, np.ndarray]:
    """n exchangeable forecasts x H steps, 5 minutes apart: band centre +- 0.64 logits, outcome centre + spread[h] * N(0,1)."""
    rng, H = np.random.default_rng(seed), spread.size
    c = rng.normal(0, 1.5, (n, 1)) * np.ones((1, H))
    issued = t0 + 300.0 * np.arange(n)
    return {"q": np.stack([inv_logit(c - 0.64), inv_logit(c), inv_logit(c + 0.64)], axis=-1),
            "y": inv_logit(c + spread * rng.normal(0, 1, (n, H))), "issued": issued,
            "realized": issued[:, None] + 300.0 * np.arange(1, H + 1)}


def _feed(cal: ConformalCalibrator, d: dict, segment=None) -> None:
    n, H = d["y"].shape
    i, h = np.divmod(np.arange(n * H), H)
    cal.update_arrays(h + 1, d["q"][i, h, 0], d["q"][i, h, 2], d["y"][i, h], d["issued"][i], d["realized"][i, h], segment)


def _covered(q: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (q[..., 0] <= y) & (y <= q[..., -1])


@pytest.mark.parametrize("method", ["split", "aci"])
def test_per_step_out_of_sample_coverage_reaches_target(method):
    cal = ConformalCalibrator(method=method, segment_keys=())
    train, test = _outcomes(4000, 0.0, seed=1), _outcomes(3000, 1e7, seed=2)
    _feed(cal, train)
    now = train["realized"].max()
    adj = np.stack([cal.adjust(q, T3, now=now)[0] for q in test["q"]])
    raw_cov, adj_cov = _covered(test["q"], test["y"]).mean(0), _covered(adj, test["y"]).mean(0)
    assert np.abs(adj_cov - 0.9).max() < 0.03, adj_cov          # 3000 outcomes per step: SE ~ 0.0055
    assert raw_cov[0] > 0.95 and raw_cov[-1] < 0.5              # the raw band is wrong in both directions
    # a last-step-only calibration (the reference) would apply step 4's correction everywhere: far too wide at step 1
    qhats = cal.adjust(test["q"][0], T3, now=now)[1]["qhat"]
    assert qhats[0] < 0 < qhats[3] and len(set(np.round(qhats, 6))) == 4


def test_online_replay_coverage_and_diagnostics():
    d = _outcomes(4000, 0.0, seed=3)
    cal = ConformalCalibrator(segment_keys=(), refresh_s=3600)
    adj, infos = conformal_replay(cal, d["q"], T3, d["issued"], d["realized"], d["y"], update_every=3600)
    applied = np.array([i["applied"] for i in infos])
    assert not applied[:400].any() and applied[700:].all()      # 500 outcomes per step needed first
    cov = _covered(adj[700:], d["y"][700:]).mean(0)
    assert np.abs(cov - 0.9).max() < 0.035, cov
    report = cal.coverage_report()
    assert [r["step"] for r in report] == [1, 2, 3, 4] and all(r["within_tolerance"] for r in report), report


def test_aci_recovers_from_drift_faster_than_split():
    n = 5000
    calm = _outcomes(n, 0.0, seed=4, spread=np.array([1.0]))
    wild = _outcomes(n, 0.0, seed=5, spread=np.array([2.5]))
    y = np.where(np.arange(n)[:, None] < n // 2, calm["y"], wild["y"])
    q = np.where(np.arange(n)[:, None, None] < n // 2, calm["q"], wild["q"])
    cov = {}
    for method in ("split", "aci"):
        cal = ConformalCalibrator(method=method, segment_keys=(), refresh_s=3600)
        adj, _ = conformal_replay(cal, q, T3, calm["issued"], calm["realized"], y, update_every=3600)
        cov[method] = _covered(adj[n // 2: n // 2 + 1000], y[n // 2: n // 2 + 1000]).mean()
    assert cov["split"] < 0.75 and cov["aci"] > 0.85, cov


def test_segment_fallback_drops_keys_from_the_right():
    cal = ConformalCalibrator(min_samples=500)
    full = {"liquidity_bucket": "high", "tte_bucket": "lt_1d", "category": "politics"}
    _feed(cal, _outcomes(600, 0.0, seed=6), full)                                        # 600 per step: enough
    _feed(cal, _outcomes(300, 0.0, seed=7), {**full, "category": "sports"})             # thin
    _feed(cal, _outcomes(300, 0.0, seed=8), {"liquidity_bucket": "low"})                 # thin
    now, q = 1e6, _outcomes(1, 0.0, seed=9)["q"][0]
    used = lambda seg: cal.adjust(q, T3, seg, now=now)[1]
    assert used(full)["segment_used"] == [segment_levels(full)[0]] * 4
    info = used({**full, "category": "sports"})                                           # 300 < 500: coarser level
    assert info["segment_used"] == ["liquidity_bucket=high|tte_bucket=lt_1d"] * 4 and info["n_samples"] == [900] * 4
    info = used({"liquidity_bucket": "low"})                                              # only the global pool has 500
    assert info["segment_used"] == [GLOBAL] * 4 and info["n_samples"] == [1200] * 4


def test_thin_everywhere_means_no_adjustment_with_reason():
    cal = ConformalCalibrator(min_samples=500)
    _feed(cal, _outcomes(100, 0.0, seed=10))
    q = _outcomes(1, 0.0, seed=11)["q"][0]
    out, info = cal.adjust(q, T3, {"liquidity_bucket": "high"}, now=1e6)
    np.testing.assert_array_equal(out, q)
    assert info["applied"] is False and info["segment_used"] == [None] * 4 and info["n_samples"] == [100] * 4
    assert "fewer than 500" in info["reason"] and info["target"] == 0.9


def test_no_in_sample_leakage():
    cal = ConformalCalibrator(min_samples=10, segment_keys=(), refresh_s=0)
    with pytest.raises(DataValidationError, match="issued_at must be before realized_at"):
        cal.update([ConformalRecord(1, 0.4, 0.6, 0.5, issued_at=100.0, realized_at=100.0)])
    # outcomes realised after `now` are invisible, even though they are stored
    d = _outcomes(200, 1000.0, seed=12)
    _feed(cal, d)
    q = d["q"][0]
    assert not cal.adjust(q, T3, now=1000.0)[1]["applied"]
    before = cal.adjust(q, T3, now=d["realized"][50, 0])[1]["n_samples"]
    after = cal.adjust(q, T3, now=d["realized"].max())[1]["n_samples"]
    assert before[0] == 51 and after == [200] * 4
    # and a cached table computed later never serves an earlier `now`
    cal2 = ConformalCalibrator(min_samples=10, segment_keys=(), refresh_s=1e9)
    _feed(cal2, d)
    cal2.adjust(q, T3, now=d["realized"].max())
    assert cal2.adjust(q, T3, now=d["realized"][50, 0])[1]["n_samples"][0] == 51


def test_replay_uses_only_past_outcomes():
    d = _outcomes(300, 0.0, seed=13)
    y2 = d["y"].copy(); y2[150:] = 0.999                                  # change every outcome of forecasts 150..
    runs = [conformal_replay(ConformalCalibrator(min_samples=20, segment_keys=(), refresh_s=0), d["q"], T3, d["issued"],
                             d["realized"], yy)[0] for yy in (d["y"], y2)]
    first_changed = d["realized"][150, 0]                                   # nothing changed is realised before this
    same = d["issued"] < first_changed
    np.testing.assert_array_equal(runs[0][same], runs[1][same])
    assert not np.array_equal(runs[0][~same], runs[1][~same])


def test_json_round_trip(tmp_path: Path):
    cal = ConformalCalibrator(min_samples=50, segment_keys=("liquidity_bucket",))
    d = _outcomes(300, 0.0, seed=14)
    _feed(cal, d, {"liquidity_bucket": "mid"})
    _feed(cal, _outcomes(300, 1e5, seed=15), {"liquidity_bucket": "mid"})     # second batch: ACI levels move
    path = cal.save(tmp_path / "state" / "cal.json")
    text = path.read_text()
    assert json.loads(text)["format"] == "tsfm_wb.conformal" and "NaN" not in text
    back = ConformalCalibrator.load(path)
    q, now = d["q"][3], 1e6
    a, b = cal.adjust(q, T3, {"liquidity_bucket": "mid"}, now=now), back.adjust(q, T3, {"liquidity_bucket": "mid"}, now=now)
    np.testing.assert_array_equal(a[0], b[0]); assert a[1] == b[1]
    assert back.to_dict() == cal.to_dict() and back._alpha and back._alpha == cal._alpha
    bad = cal.to_dict(); bad["cells"][0]["score"] = bad["cells"][0]["score"][:-1]
    with pytest.raises(DataValidationError, match="realized_at and score must have the same length"):
        ConformalCalibrator.from_dict(bad)


def test_window_and_cap_forget_old_scores():
    cal = ConformalCalibrator(window=timedelta(days=1), min_samples=10, segment_keys=(), max_scores_per_cell=100)
    d = _outcomes(400, 0.0, seed=16)
    _feed(cal, d)
    assert cal.adjust(d["q"][0], T3, now=d["realized"].max())[1]["n_samples"] == [100] * 4   # capped
    assert not cal.adjust(d["q"][0], T3, now=d["realized"].max() + 2 * 86400)[1]["applied"]  # outside the window


def test_adjusted_band_stays_inside_unit_interval_and_keeps_median():
    cal = ConformalCalibrator(min_samples=10, segment_keys=())
    d = _outcomes(300, 0.0, seed=17, spread=np.array([6.0, 6.0, 6.0, 6.0]))
    _feed(cal, d)
    q = np.array([[0.0005, 0.001, 0.002], [0.998, 0.999, 0.9995], [0.3, 0.5, 0.7], [0.0, 0.0, 0.0]])
    out, info = cal.adjust(q, T3, now=1e6)
    assert info["applied"] and (out >= 0).all() and (out <= 1).all() and (np.diff(out, axis=1) >= 0).all()
    np.testing.assert_array_equal(out[:, 1], q[:, 1])
    assert out[0, 2] - out[0, 1] > out[0, 1] - out[0, 0]                     # skewed away from 0 (logit space)


def test_scores_quantile_and_inputs():
    assert conformity_scores(0.4, 0.6, 0.5) < 0 and conformity_scores(0.4, 0.6, 0.7) > 0
    np.testing.assert_allclose(conformity_scores(0.4, 0.6, 0.7), logit(0.7) - logit(0.6))
    assert conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0
    cal = ConformalCalibrator()
    with pytest.raises(DataValidationError, match="at least two quantiles"):
        cal.adjust([[0.5]], (0.5,), now=0)
    with pytest.raises(DataValidationError, match="post-processed first"):
        cal.adjust([[0.6, 0.5, 0.4]], T3, now=0)
    with pytest.raises(DataValidationError, match="lo > hi"):
        cal.update([dict(step=1, lo=0.6, hi=0.4, y=0.5, issued_at=0, realized_at=1)])
    with pytest.raises(ConfigError, match="window must be a datetime.timedelta"):
        ConformalCalibrator(window=14)
    aware = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert cal.update([ConformalRecord(2, 0.4, 0.6, 0.5, aware, aware + timedelta(minutes=10), {"category": "x"})]) == 1


def test_config_file_and_defaults():
    s = load_conformal_settings(REPO_ROOT / "configs" / "conformal.yaml")
    assert s == ConformalSettings()
    assert (s.window_days, s.target, s.tolerance, s.min_samples) == (14, 0.9, 0.03, 500)
    assert s.segment_keys == ("liquidity_bucket", "tte_bucket", "category")
    cal = ConformalCalibrator.from_config(REPO_ROOT / "configs" / "conformal.yaml")
    assert cal.settings == s and cal.window_s == 14 * 86400
