"""Offline evaluation through a real tollama-protocol server on 127.0.0.1: one request per origin, warnings kept, errors raised.

The unit tests of the evaluation live in the notebook beside the code (nbs/tsfm/27_evaluation.ipynb)."""
import asyncio

import numpy as np
import pytest

from tsfm_wb.data import DATASETS, load_dataset
from tsfm_wb.tsfm.evaluation import SeriesContext, TollamaForecaster, evaluate_conformal, rolling_forecasts, warning_summary
from tsfm_wb.tsfm.model_server import serve_models
from tsfm_wb.tsfm.tollama_protocol import ModelNotFoundError

FREQ = DATASETS["polymarket"].freq


@pytest.fixture(scope="module")
def server():
    with serve_models(["naive", "mock"], workers=1) as srv:
        yield srv.wait_ready()


@pytest.fixture(scope="module")
def real():
    return load_dataset("polymarket", gaps="drop")


def test_one_multi_series_request_per_origin(server, real):
    before = server.stats.forecast_requests
    fs = rolling_forecasts(real, TollamaForecaster(server.url, "naive", FREQ), horizon=6, min_context=16)
    assert fs.q.shape == (430, 6, 5) and fs.calls == 43
    assert server.stats.forecast_requests - before == 43 and set(server.stats.series_per_request[-43:]) == {10}
    # two of the bundled markets never move: the random walk's band there is the server's heuristic, and the warning says so
    constant = {u for u in np.unique(fs.unique_id) if np.ptp(fs.series_y[u]) == 0}
    assert constant and all(any(f"series '{u}'" in w and "heuristic" in w for w in fs.warnings) for u in constant)
    summary = warning_summary(fs.warnings)
    assert summary["count"].sum() == sum(fs.warnings.values()) and "series <id>" in summary["warning"].iloc[0]
    rep = evaluate_conformal(fs, schemes=["time_split"], min_samples=100)
    served = rep.table[(rep.table["band"] == "served") & (rep.table["step"] == "all") & (rep.table["bucket"] == "all")]
    assert (served["n"] == 420).all() and (served["coverage_lo"] < served["coverage"]).all() and (served["coverage"] < served["coverage_hi"]).all()


def test_same_forecasts_as_the_model_itself(server, real):
    """What comes back over HTTP is the model's band for the logit of each context, mapped back with the inverse logit."""
    from tsfm_wb.tsfm.baselines import inv_logit, logit
    from tsfm_wb.tsfm.served_models import StatsForecastModel
    one = real[real["unique_id"] == "558938"]
    fs = rolling_forecasts(one, TollamaForecaster(server.url, "naive", FREQ), horizon=3, min_context=40, stride=10, postprocess=False)
    y = one["y"].to_numpy()
    direct = StatsForecastModel("naive", "Naive").forecast([logit(y[:40])], [None], 3, list(fs.quantiles), FREQ, ids=["x"])[0]
    np.testing.assert_allclose(fs.q[0], inv_logit(direct.quantiles.T), rtol=1e-12)


def test_an_unknown_model_fails_the_evaluation(server, real):
    with pytest.raises(ModelNotFoundError, match="not installed"):
        rolling_forecasts(real, TollamaForecaster(server.url, "chronos2", FREQ), horizon=6, min_context=16)


def test_works_inside_a_running_event_loop(server):
    """As in a Jupyter cell: the forecaster runs its requests on a loop of its own."""
    ctx = SeriesContext("a", np.array([0.2, 0.25, 0.3]), np.array([0.0, 3600.0, 7200.0]))
    async def inside():
        return TollamaForecaster(server.url, "mock", FREQ).forecast_origins([[ctx]], 2, [0.1, 0.5, 0.9])
    (q,), warnings = asyncio.run(inside())
    assert q.shape == (1, 2, 3) and np.isclose(q[0, 0, 1], 0.3) and list(warnings) == []
