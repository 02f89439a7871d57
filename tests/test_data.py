"""Tests of tsfm_wb.data: real dataset loaders, frequency strings, frame validation and the market simulator."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT
from tsfm_wb.core import DataValidationError
from tsfm_wb.data import (DATASETS, LIQUIDITY_BUCKETS, DatasetInfo, bundled_path, fill_gaps, freq_to_seconds,
                          infer_freq, list_datasets, load_dataset, load_market_series, parse_freq,
                          register_dataset, simulate_market, simulate_markets, to_pandas_freq,
                          validate_series_frame)

SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "polymarket_sample_hourly.json"

# (rows with gaps="nan", NaN targets, series, first ds, last ds) -- facts about the real data
EXPECTED = {
    "co2": (2284, 59, 1, "1958-03-29", "2001-12-29"),
    "macro": (203, 0, 1, "1959-01-01", "2009-07-01"),
    "seattle_temps": (8760, 1, 1, "2010-01-01 00:00", "2010-12-31 23:00"),
    "seattle_weather": (1461, 0, 1, "2012-01-01", "2015-12-31"),
    "polymarket": (640, 0, 10, "2026-02-18 18:25:58", "2026-02-21 09:26:00"),
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {name: load_dataset(name) for name in EXPECTED}


# ---------------------------------------------------------------- datasets
def test_registry_lists_the_real_datasets():
    table = list_datasets()
    assert set(EXPECTED) <= set(table.index)
    assert {"freq", "season_length", "target_cols", "covariate_cols", "license", "has_gaps", "n_series"} <= set(table.columns)
    for name, info in DATASETS.items():
        assert to_pandas_freq(info.freq) and info.season_length >= 1 and info.license and info.source


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loader_tidy_schema_and_exact_sizes(frames, name):
    df = frames[name]
    rows, missing, n_series, start, end = EXPECTED[name]
    assert list(df.columns[:3]) == ["unique_id", "ds", "y"]
    assert df["ds"].dtype == np.dtype("datetime64[ns]") and df["y"].dtype == np.float64
    assert pd.api.types.is_string_dtype(df["unique_id"])
    assert (len(df), int(df["y"].isna().sum()), df["unique_id"].nunique()) == (rows, missing, n_series)
    assert (df["ds"].min(), df["ds"].max()) == (pd.Timestamp(start), pd.Timestamp(end))
    assert df.equals(df.sort_values(["unique_id", "ds"]).reset_index(drop=True))
    info = DATASETS[name]
    assert (info.n_rows, info.n_missing, info.n_series, info.has_gaps) == (rows, missing, n_series, missing > 0)
    validate_series_frame(df, covariates=list(info.covariate_cols) if name != "polymarket" else [], freq=info.freq)


def test_co2_gaps_match_statsmodels_source(frames):
    from statsmodels.datasets import co2
    src = co2.load_pandas().data["co2"]
    df = frames["co2"]
    assert src.isna().sum() == 59
    assert df.loc[df["y"].isna(), "ds"].tolist() == list(src.index[src.isna()])
    assert (df["ds"].diff().dropna() == pd.Timedelta(weeks=1)).all() and (df["ds"].dt.day_of_week == 5).all()
    assert len(load_dataset("co2", gaps="drop")) == 2284 - 59


def test_seattle_temps_missing_hour(frames):
    df = frames["seattle_temps"]
    assert df.loc[df["y"].isna(), "ds"].tolist() == [pd.Timestamp("2010-03-14 03:00")]
    dropped = load_dataset("seattle_temps", gaps="drop")
    assert len(dropped) == 8759 and dropped["ds"].diff().max() == pd.Timedelta(hours=2)
    assert infer_freq(dropped["ds"]) == "h"


def test_macro_target_and_covariates(frames):
    from statsmodels.datasets import macrodata
    src = macrodata.load_pandas().data
    df = frames["macro"]
    assert {"realcons", "realinv", "cpi", "unemp", "infl", "tbilrate"} <= set(df.columns)
    np.testing.assert_array_equal(df["y"], src["realgdp"])
    quarters = pd.PeriodIndex(df["ds"], freq="Q")
    assert (quarters.year == src["year"]).all() and (quarters.quarter == src["quarter"]).all()
    cpi = load_dataset("macro", target="unemp", covariates=["realgdp"])
    assert list(cpi.columns) == ["unique_id", "ds", "y", "realgdp"] and cpi["unique_id"].iloc[0] == "unemp"
    np.testing.assert_array_equal(cpi["y"], src["unemp"])


def test_seattle_weather_covariates(frames):
    df = frames["seattle_weather"]
    assert list(df.columns) == ["unique_id", "ds", "y", "temp_min", "precipitation", "wind"]
    assert (df["y"] >= df["temp_min"]).all()


def test_polymarket_reconstructed_timestamps(frames):
    df = frames["polymarket"]
    markets = load_market_series()
    raw = json.loads(bundled_path("polymarket_sample_hourly.json").read_text())
    assert [m["market_id"] for m in markets] == [it["market_id"] for it in raw["items"]]
    for m, it in zip(markets, raw["items"]):
        g = df[df["unique_id"] == m["market_id"]]
        assert len(m["y"]) == len(m["y_ts"]) == len(g) == 64
        assert m["y_ts"][-1] == it["as_of_ts"] and (np.diff(m["y_ts"]) == 3600).all()
        np.testing.assert_array_equal(g["y"], it["y"])
        assert g["ds"].iloc[-1] == pd.Timestamp(it["as_of_ts"], unit="s") and (g["title"] == it["title"]).all()
    assert df["y"].between(0, 1).all()


def test_bundled_copy_is_exact_with_provenance():
    text = bundled_path("PROVENANCE.md").read_text()
    assert "MIT License" in text and "Michael Y. Choi" in text and "Market-Calibration-Agent" in text
    if SHARED_SAMPLE.is_file():
        assert bundled_path("polymarket_sample_hourly.json").read_bytes() == SHARED_SAMPLE.read_bytes()


def test_load_dataset_errors():
    with pytest.raises(DataValidationError, match=r"unknown dataset 'm4'; available: \['co2', 'macro'"):
        load_dataset("m4")
    with pytest.raises(DataValidationError, match="choose one of"):
        load_dataset("co2", target="ch4")
    with pytest.raises(DataValidationError, match=r"no covariate\(s\) \['realgdp'\]"):
        load_dataset("macro", covariates=["realgdp"])
    with pytest.raises(DataValidationError, match="gaps='zero' is not one of"):
        load_dataset("co2", gaps="zero")


def test_register_dataset_roundtrip():
    info = DatasetInfo("tiny_test", "three points", "D", 1, ("v",), n_rows=3)
    loader = lambda: pd.DataFrame({"ds": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-04"]), "v": [1, 2, 3]})
    try:
        register_dataset(info, loader)
        with pytest.raises(DataValidationError, match="already registered"):
            register_dataset(info, loader)
        df = load_dataset("tiny_test")
        assert df["y"].isna().sum() == 1 and len(df) == 4 and df["unique_id"].iloc[0] == "v"
    finally:
        DATASETS.pop("tiny_test", None)


# ---------------------------------------------------------------- frequencies
@pytest.mark.parametrize("spelled,seconds", [("5m", 300), ("5min", 300), ("5T", 300), ("5 minutes", 300), ("30s", 30),
                                             ("30S", 30), ("1h", 3600), ("H", 3600), ("h", 3600), ("D", 86400),
                                             ("1d", 86400), ("W", 604800)])
def test_fixed_frequencies(spelled, seconds):
    assert freq_to_seconds(spelled) == seconds
    assert parse_freq(spelled) == pd.Timedelta(seconds=seconds)
    assert pd.Timedelta(pd.tseries.frequencies.to_offset(to_pandas_freq(spelled))) == pd.Timedelta(seconds=seconds)


def test_five_m_is_five_minutes_not_month_end():
    assert to_pandas_freq("5m") == "5min"
    ds = pd.date_range("2026-01-31", periods=3, freq=to_pandas_freq("5m"))
    assert ds[-1] == pd.Timestamp("2026-01-31 00:10")


@pytest.mark.parametrize("spelled,alias", [("MS", "MS"), ("ME", "ME"), ("1mo", "MS"), ("QS", "QS"), ("Q", "QS"),
                                           ("QE", "QE"), ("YS", "YS"), ("W-SAT", "W-SAT"), ("B", "B")])
def test_calendar_frequencies(spelled, alias):
    assert to_pandas_freq(spelled) == alias
    assert not isinstance(parse_freq(spelled), pd.Timedelta)
    with pytest.raises(DataValidationError, match="calendar frequency"):
        freq_to_seconds(spelled)


@pytest.mark.parametrize("bad,msg", [("M", "'ME' \\(month end\\)"), ("3M", "ambiguous"), ("ms", "sub-second"),
                                     ("fortnight", "'fortnight' is not understood"), ("0min", "positive count"),
                                     ("", "not understood"), ("5.5h", "not understood")])
def test_invalid_frequencies_name_the_string(bad, msg):
    with pytest.raises(DataValidationError, match=msg):
        to_pandas_freq(bad)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), unit=st.sampled_from(["s", "m", "min", "T", "h", "H", "d", "D"]))
def test_fixed_freq_alias_is_a_fixpoint(n, unit):
    alias = to_pandas_freq(f"{n}{unit}")
    assert to_pandas_freq(alias) == alias
    assert freq_to_seconds(alias) == n * {"s": 1, "m": 60, "min": 60, "T": 60, "h": 3600, "H": 3600}.get(unit, 86400)


# ---------------------------------------------------------------- validation
def _frame() -> pd.DataFrame:
    return pd.DataFrame({"unique_id": ["a", "a", "a", "b", "b"], "y": [1.0, 2.0, 3.0, 4.0, 5.0],
                         "ds": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00",
                                               "2024-01-01 00:00", "2024-01-01 01:00"])})


def test_validate_accepts_a_good_frame():
    df = _frame()
    assert validate_series_frame(df, freq="1h") is df


@pytest.mark.parametrize("breaker,msg", [
    (lambda d: d.drop(columns="ds"), r"missing column\(s\) \['ds'\]"),
    (lambda d: d.assign(ds=d["ds"].astype(str)), "must be datetime64"),
    (lambda d: d.assign(y=d["y"].astype(str)), "must be numeric"),
    (lambda d: d.iloc[[0, 2, 1, 3, 4]], "not increasing in series 'a'"),
    (lambda d: d.assign(ds=d["ds"].where(d.index != 2, d["ds"][1])), r"duplicated \(unique_id, ds\), first 'a'"),
    (lambda d: d.iloc[[0, 3, 1, 2, 4]], "not contiguous"),
    (lambda d: d.assign(y=[1, 2, np.inf, 4, 5]), "infinite"),
    (lambda d: d.assign(unique_id=["a", None, "a", "b", "b"]), "missing value"),
])
def test_validate_rejects(breaker, msg):
    with pytest.raises(DataValidationError, match=msg):
        validate_series_frame(breaker(_frame()))


def test_validate_nan_and_grid_options():
    df = _frame().assign(y=[1, np.nan, 3, 4, 5])
    validate_series_frame(df)
    with pytest.raises(DataValidationError, match=r"missing \(NaN\).*series 'a'"):
        validate_series_frame(df, allow_missing_y=False)
    with pytest.raises(DataValidationError, match="off the '2h' grid"):
        validate_series_frame(df, freq="2h")
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['x'\]"):
        validate_series_frame(df, covariates=["x"])


def test_fill_gaps_inserts_nan_rows_and_keeps_text_columns():
    df = _frame().drop(index=1).reset_index(drop=True).assign(title="t")
    out = fill_gaps(df, "1h")
    assert len(out) == 5 and out["y"].isna().sum() == 1 and (out["title"] == "t").all()
    assert out.loc[1, "ds"] == pd.Timestamp("2024-01-01 01:00") and out.loc[1, "unique_id"] == "a"


# ---------------------------------------------------------------- simulator
def test_simulator_is_deterministic_and_seed_sensitive():
    a = simulate_market(3000, seed=11, gap_prob=0.01, liquidity_bucket="mid")
    pd.testing.assert_frame_equal(a, simulate_market(3000, seed=11, gap_prob=0.01, liquidity_bucket="mid"))
    assert not a["y"].equals(simulate_market(3000, seed=12, gap_prob=0.01, liquidity_bucket="mid")["y"])
    panel = simulate_markets(5, 400, seed=3)
    pd.testing.assert_frame_equal(panel, simulate_markets(5, 400, seed=3))
    assert panel["unique_id"].nunique() == 5 and panel.groupby("unique_id").size().eq(400).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bucket=st.sampled_from(list(LIQUIDITY_BUCKETS)),
       jump_scale=st.floats(0.0, 10.0), p0=st.one_of(st.none(), st.floats(1e-6, 1 - 1e-6)))
def test_simulator_values_strictly_inside_unit_interval(seed, bucket, jump_scale, p0):
    df = simulate_market(800, seed, liquidity_bucket=bucket, jump_prob=0.05, jump_scale=jump_scale, p0=p0, gap_prob=0.02)
    tick = LIQUIDITY_BUCKETS[bucket].tick
    assert ((df["y"] > 0) & (df["y"] < 1)).all() and df["y"].min() >= tick - 1e-12 and df["y"].max() <= 1 - tick + 1e-12
    np.testing.assert_allclose(df["y"] / tick, np.round(df["y"] / tick), atol=1e-9)
    validate_series_frame(df, freq="5m", allow_missing_y=False)
    assert (df["liquidity_bucket"] == bucket).all()


def test_simulator_gaps_and_liquidity_effects():
    gappy = simulate_market(5000, seed=5, gap_prob=0.01, gap_len=5)
    assert 0 < len(gappy) < 5000 and len(fill_gaps(gappy, "5min")) == 5000
    assert len(simulate_market(5000, seed=5)) == 5000
    # low liquidity: more volatile logit increments and more flat (stale) steps than high, same seeds
    def stats(bucket):
        df = simulate_markets(12, 2000, seed=9, buckets=[bucket], p0=0.5, jump_prob=0.0)
        logit = np.log(df["y"] / (1 - df["y"]))
        d = logit.groupby(df["unique_id"]).diff().dropna()
        return d[d != 0].std(), (d == 0).mean()
    (vol_hi, flat_hi), (vol_lo, flat_lo) = stats("high"), stats("low")
    assert vol_lo > 2 * vol_hi and flat_lo > flat_hi


def test_simulator_argument_errors():
    with pytest.raises(DataValidationError, match="p0 must be strictly between 0 and 1"):
        simulate_market(10, 0, p0=0.0)
    with pytest.raises(DataValidationError, match="gap_prob must be in"):
        simulate_market(10, 0, gap_prob=1.5)
    with pytest.raises(DataValidationError, match="liquidity_bucket 'x'"):
        simulate_markets(2, 10, 0, buckets=["x"])
    with pytest.raises(DataValidationError, match="'5M' is ambiguous"):
        simulate_market(10, 0, freq="5M")
