"""Offline evaluation: out-of-sample rolling origins, leak-free splits, raw vs adjusted scores on simulated and real markets."""
import numpy as np
import pandas as pd
import pytest

from tsfm_wb.tsfm.baselines import inv_logit, logit
from tsfm_wb.core import DataValidationError
from tsfm_wb.data import load_dataset, simulate_markets
from tsfm_wb.tsfm.evaluation import (BASE_BAND, SCHEMES, band_scores, evaluate_conformal, event_holdout, rolling_forecasts,
                                time_split)
from tsfm_wb.metrics import coverage, winkler_score


@pytest.fixture(scope="module")
def sim() -> pd.DataFrame:
    return simulate_markets(9, 400, seed=3)


@pytest.fixture(scope="module")
def sim_fs(sim):
    return rolling_forecasts(sim, horizon=6, stride=2)


def test_rolling_origins_only_see_the_past(sim):
    seen = []
    def spy(y_ctx, horizon, quantiles):
        seen.append(y_ctx.copy())
        return np.tile(np.clip(y_ctx[-1] + np.array([-0.05, -0.02, 0.0, 0.02, 0.05]), 0, 1), (horizon, 1))
    one = sim[sim["unique_id"] == "sim-000"]
    fs = rolling_forecasts(one, forecaster=spy, horizon=3, min_context=32, max_context=50, stride=7)
    y = one["y"].to_numpy()
    for k, ctx in enumerate(seen):
        o = 31 + 7 * k
        np.testing.assert_array_equal(ctx, y[max(0, o + 1 - 50): o + 1])          # exactly the past, capped
        np.testing.assert_array_equal(fs.y[k], y[o + 1: o + 4])                     # scored on the next 3 points
    assert len(seen) == fs.q.shape[0] and (fs.realized_at > fs.issued_at[:, None]).all()


def test_time_split_has_no_leakage(sim_fs):
    test, cal = time_split(sim_fs, 0.2)
    assert test.any() and cal.any() and not cal[test].any()
    for uid in np.unique(sim_fs.unique_id):
        m = sim_fs.unique_id == uid
        first_test_issue = sim_fs.issued_at[m & test].min()
        assert sim_fs.realized_at[m][cal[m]].max() < first_test_issue
        ts = sim_fs.series_ts[uid]
        assert first_test_issue >= ts[int(0.8 * ts.size)]


def test_event_holdout_is_seeded_and_stratified(sim_fs):
    test0, cal0 = event_holdout(sim_fs, 0.2, seed=0)
    test0b, _ = event_holdout(sim_fs, 0.2, seed=0)
    np.testing.assert_array_equal(test0, test0b)
    held = set(sim_fs.unique_id[test0])
    assert len(held) == 2                                                       # round(0.2 * 9)
    assert len({sim_fs.bucket[sim_fs.unique_id == u][0] for u in held}) == 2     # from different buckets
    assert not cal0[test0].any() and cal0[~test0].all()
    others = {frozenset(sim_fs.unique_id[event_holdout(sim_fs, 0.2, seed=s)[0]]) for s in range(6)}
    assert len(others) > 1


def test_conformal_fixes_an_overconfident_forecaster(sim):
    """A model whose bands are far too narrow (not post-processed): raw coverage collapses, adjusted is back near the targets."""
    def narrow(y_ctx, horizon, quantiles):
        z = logit(y_ctx[-1]) + 0.005 * np.sqrt(np.arange(1, horizon + 1))[:, None] * np.array([-1.64, -1.28, 0, 1.28, 1.64])
        return inv_logit(z)
    rep = evaluate_conformal(sim, forecaster=narrow, horizon=4, schemes=["online"], forecast_kw={"stride": 2, "postprocess": False},
                             min_samples=300)
    t = rep.table[(rep.table["step"] == "all") & (rep.table["bucket"] == "all")].set_index(["level", "band"])
    for level in (0.8, 0.9):
        assert t.loc[(level, "raw"), "coverage"] < level - 0.1
        assert abs(t.loc[(level, "adjusted"), "coverage"] - level) < 0.04, t
        assert t.loc[(level, "adjusted"), "winkler"] < t.loc[(level, "raw"), "winkler"]


def test_report_structure_and_sample_sizes(sim_fs):
    rep = evaluate_conformal(sim_fs, min_samples=100, seeds=(0, 1))
    t = rep.table
    assert set(t["scheme"]) == set(SCHEMES) and set(t["band"]) == {"raw", "adjusted", "served"}
    assert set(t["step"]) == {"all", 1, 2, 3, 4, 5, 6} and set(t["bucket"]) == {"all", "high", "mid", "low"}
    test, _ = time_split(sim_fs)
    row = t[(t["scheme"] == "time_split") & (t["step"] == "all") & (t["bucket"] == "all") & (t["band"] == "raw") & (t["level"] == 0.9)]
    assert int(row["n"].iloc[0]) == test.sum() * 6
    cbh = rep.coverage_by_horizon("online")
    assert list(cbh.index) == ["all", 1, 2, 3, 4, 5, 6] and (cbh["n"].iloc[1:] == test.sum()).all()
    served = t[t["band"] == "served"]
    assert (served["width"] >= 0.02 - 1e-9).all()
    with pytest.raises(DataValidationError, match="unknown scheme"):
        evaluate_conformal(sim_fs, schemes=["crystal_ball"])


def test_real_markets_run_end_to_end():
    real = load_dataset("polymarket", gaps="drop")
    fs = rolling_forecasts(real, horizon=6, min_context=16)
    assert fs.q.shape == (430, 6, 5) and set(fs.bucket) == {"unknown"}
    rep = evaluate_conformal(fs, min_samples=100, schemes=["time_split"])
    t = rep.table[(rep.table["step"] == "all") & (rep.table["bucket"] == "all")].set_index(["level", "band"])
    assert t.loc[(0.9, "raw"), "n"] == 420
    assert t.loc[(0.9, "adjusted"), "width"] < t.loc[(0.9, "raw"), "width"]
    assert abs(t.loc[(0.9, "adjusted"), "coverage"] - 0.9) < abs(t.loc[(0.9, "raw"), "coverage"] - 0.9)


def test_band_scores_match_metrics():
    rng = np.random.default_rng(0)
    y, lo, hi = rng.uniform(0, 1, 200), np.full(200, 0.3), np.full(200, 0.7)
    s = band_scores(y, lo, np.full(200, 0.5), hi, 0.8)
    assert s["coverage"] == pytest.approx(coverage(y, lo, hi)) and s["winkler"] == pytest.approx(winkler_score(y, lo, hi, 0.2))
    assert s["n"] == 200 and s["width"] == pytest.approx(0.4)


def test_bad_inputs():
    df = simulate_markets(2, 50, seed=0)
    with pytest.raises(DataValidationError, match="no series is longer"):
        rolling_forecasts(df, horizon=30, min_context=32)
    with pytest.raises(DataValidationError, match="lacks column"):
        rolling_forecasts(df.drop(columns="ds"))
    with pytest.raises(DataValidationError, match="forecaster returned shape"):
        rolling_forecasts(df, forecaster=lambda y, h, q: np.zeros(h), horizon=2)
    assert BASE_BAND == (0.1, 0.5, 0.9)
