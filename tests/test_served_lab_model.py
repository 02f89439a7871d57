"""A lab estimator served by name: trained on the bundled market series in logit space, exported, served by the
model server in its own process on 127.0.0.1, called through TSFMRunner and through the tollama adapter.

Its quantiles must be the estimator's own forecast: at most 1e-5 apart in logit space from `SplineLSTM.predict`.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from tsfm_wb.data import load_market_series
from tsfm_wb.lab.estimator import SplineLSTM
from tsfm_wb.lab.served_estimator import export_served
from tsfm_wb.tsfm.baselines import logit
from tsfm_wb.tsfm.model_server import model_server_process
from tsfm_wb.tsfm.postprocess import PostprocessSettings
from tsfm_wb.tsfm.runner.licensing import LicenseGuard, ModelsRegistry
from tsfm_wb.tsfm.runner.service import TSFMRunner
from tsfm_wb.tsfm.runner.settings import RunnerConfig
from tsfm_wb.tsfm.schemas import DEFAULT_LOGIT_EPS, TSFMForecastRequest, quantile_key
from tsfm_wb.tsfm.tollama import TollamaAdapter, TollamaConfig
from tsfm_wb.tsfm.tollama_protocol import TollamaSeries

MODEL = "lab-market-gru"
H, L = 6, 16
QUANTILES = [0.05, 0.1, 0.5, 0.9, 0.95]
COLUMNS = ["-lo-90", "-lo-80", "", "-hi-80", "-hi-90"]     # the estimator's column of each quantile above
TOL = 1e-5                                                # logit units
NO_GUARDS = PostprocessSettings(min_width=0.0, max_width=1.0, min_logit_width=0.0)   # the runner passes the band through


def _frame(markets: list[dict]) -> pd.DataFrame:
    "The markets in the model's space, as the runner sends them: logit of the price clipped at the request's eps."
    return pd.concat([pd.DataFrame({"unique_id": m["market_id"], "ds": pd.to_datetime(m["y_ts"], unit="s"),
                                    "y": logit(m["y"], DEFAULT_LOGIT_EPS)}) for m in markets], ignore_index=True)


@pytest.fixture(scope="module")
def markets() -> list[dict]:
    return load_market_series()


@pytest.fixture(scope="module")
def estimator(markets) -> SplineLSTM:
    "A deliberately small estimator (one GRU of 4 units, 2 epochs): seconds of CPU, and still a real network."
    return SplineLSTM(h=H, input_size=L, cell="gru", base="last", units=4, max_epochs=2, patience=1, seed=0).fit(_frame(markets))


@pytest.fixture(scope="module")
def server(estimator, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lab-run")
    export_served(estimator, run_dir / "served")
    with model_server_process("--models", "mock", "--lab", f"{MODEL}={run_dir}", "--workers", "1") as proc:
        yield proc


def _expected(estimator: SplineLSTM, markets: list[dict]) -> dict[str, np.ndarray]:
    "The estimator's own forecast of each market, quantile paths [H, Q] in logit space."
    fc = estimator.predict(df=_frame(markets), level=[80, 90])
    return {uid: np.stack([g[f"SplineLSTM{c}"].to_numpy() for c in COLUMNS], axis=1) for uid, g in fc.groupby("unique_id", sort=False)}


def _request(m: dict) -> TSFMForecastRequest:
    ts = [datetime.fromtimestamp(int(t), tz=timezone.utc) for t in m["y_ts"]]
    return TSFMForecastRequest(market_id=m["market_id"], as_of_ts=ts[-1], freq="1h", horizon_steps=H, quantiles=QUANTILES,
                               y=[float(v) for v in m["y"]], y_ts=ts, model={"model_name": MODEL}, liquidity_bucket="high")


def _runner(url: str) -> TSFMRunner:
    registry = ModelsRegistry(models={MODEL: {"license_tag": "apache-2.0"}}, prod={"allowed_models": [MODEL]})
    adapter = TollamaAdapter(TollamaConfig(base_url=url, deadline_s=60.0, max_retries=0, api_key_env=None))
    return TSFMRunner(RunnerConfig(env="prod", input={"max_gap_minutes": 120.0}), adapter=adapter,
                      guard=LicenseGuard(registry, "prod"), postprocess=NO_GUARDS, feed_calibrator=False)


def test_runner_serves_the_lab_model_as_the_estimator_forecasts(server, estimator, markets):
    async def go():
        async with _runner(server.url) as r: return await asyncio.gather(*(r.forecast(_request(m)) for m in markets))
    answers = asyncio.run(go())
    want = _expected(estimator, markets)
    worst = 0.0
    for m, resp in zip(markets, answers):
        assert (resp.meta.fallback_used, resp.meta.runtime, resp.meta.model) == (False, "tollama", MODEL), resp.meta.warnings
        got = logit(np.array([resp.yhat_q_raw[quantile_key(q)] for q in QUANTILES]).T, DEFAULT_LOGIT_EPS)
        worst = max(worst, float(np.abs(got - want[m["market_id"]]).max()))
    assert worst <= TOL, f"max |runner - estimator| = {worst:.3g} logit units"
    # the comparison tells the quantiles apart: a mapping with the levels swapped (80 for 90) would miss by far
    swapped = max(float(np.abs(w[:, [1, 0, 2, 4, 3]] - w).max()) for w in want.values())
    assert swapped > 100 * TOL, swapped


def test_model_server_answer_is_the_estimator_forecast(server, estimator, markets):
    frame = _frame(markets)
    series = [TollamaSeries(uid, tuple(g["y"].tolist()), tuple(g["ds"].dt.tz_localize("UTC")))
              for uid, g in frame.groupby("unique_id", sort=False)]
    async def go():
        async with TollamaAdapter(TollamaConfig(base_url=server.url, deadline_s=60.0, max_retries=0, api_key_env=None)) as ad:
            return await ad.forecast(series, model=MODEL, horizon=H, quantiles=QUANTILES, freq="1h")
    fc = asyncio.run(go())
    want = _expected(estimator, markets)
    diffs = [float(np.abs(fc.forecasts[uid].as_array(QUANTILES).T - w).max()) for uid, w in want.items()]
    assert len(diffs) == len(markets) and max(diffs) <= TOL, f"max |server - estimator| = {max(diffs):.3g}"
    assert not [w for w in fc.warnings if MODEL in w]          # same frequency as fitted: no warning
