"""Gate1 breach detection, follow-through and band-source comparison on hand-made series (nothing patched)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsfm_wb.tsfm.alerts import (ANY_SOURCE, BAND_COLUMNS, BAND_SOURCES, AlertSettings, BreachEvent, Rate, bands_from_baseline,
                            bands_from_responses, breach_rate, compare_band_sources, detect_breaches, follow_through,
                            follow_through_rate, load_alert_settings, offline_band_frames)
from tsfm_wb.tsfm.baselines import baseline_forecast
from tsfm_wb.core import ConfigError, DataValidationError
from tsfm_wb.data import load_dataset, simulate_markets
from tsfm_wb.tsfm.evaluation import baseline_quantiles
from tsfm_wb.tsfm.schemas import ResponseMeta, TSFMForecastResponse

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
NO_COOLDOWN = AlertSettings(gate1={"cooldown_s": 0})


def _response(market_id: str, lo: list[float], hi: list[float], *, raw_lo: list[float] | None = None, issued: datetime = T0,
              fallback: bool = False, rid: str = "req-1") -> TSFMForecastResponse:
    """A runner response with a q10/q50/q90 band for the hours after `issued`."""
    mid = [(a + b) / 2 for a, b in zip(lo, hi)]
    meta = ResponseMeta(runtime="baseline" if fallback else "tollama", model="ewma" if fallback else "chronos2", version="0.1.0",
                        latency_ms=1.0, input_len=48, fallback_used=fallback, fallback_reason="unavailable" if fallback else None,
                        request_id=rid)
    return TSFMForecastResponse(market_id=market_id, as_of_ts=issued, freq="1h", horizon_steps=len(lo), quantiles=[0.1, 0.5, 0.9],
                                timestamps=[issued + HOUR * (k + 1) for k in range(len(lo))],
                                yhat_q={"0.1": lo, "0.5": mid, "0.9": hi}, yhat_q_raw={"0.1": raw_lo or lo, "0.5": mid, "0.9": hi},
                                meta=meta)


def _prices(values: list[float], market_id: str = "m1", start: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"market_id": market_id, "ds": [T0 + HOUR * (start + k) for k in range(len(values))], "y": values})


@pytest.fixture
def band() -> pd.DataFrame:
    """A [0.40, 0.60] band for hours 1..6 (conformal) and [0.45, 0.60] (raw)."""
    return bands_from_responses([_response("m1", [0.40] * 6, [0.60] * 6, raw_lo=[0.45] * 6)])


# ---- configuration --------------------------------------------------------------------------------------------

def test_repository_config_is_the_default():
    assert load_alert_settings(REPO / "configs" / "alerts.yaml") == AlertSettings()
    assert AlertSettings().band_source == "tsfm_conformal"


@pytest.mark.parametrize("text, key", [
    ("band_source: tsfm_magic\n", "key 'band_source'"),
    ("band: {q_lo: 0.5, q_hi: 0.5}\n", "key 'band'"),
    ("band: {q_lo: 0.0}\n", "key 'band.q_lo'"),
    ("gate1: {min_distance: -0.1}\n", "key 'gate1.min_distance'"),
    ("gate1: {cooldown_s: -1}\n", "key 'gate1.cooldown_s'"),
    ("gate1: {min_band_age_s: 7200, max_band_age_s: 3600}\n", "key 'gate1'"),
    ("follow_through: {min_move: 1.5}\n", "key 'follow_through.min_move'"),
    ("follow_through: {window_s: 0}\n", "key 'follow_through.window_s'"),
    ("follow_through: {direction: sideways}\n", "key 'follow_through.direction'"),
    ("gate1: {cooldown: 5}\n", "key 'gate1.cooldown'"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str):
    p = tmp_path / "alerts.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_alert_settings(p)
    assert key in str(e.value) and str(p) in str(e.value)


# ---- detection ------------------------------------------------------------------------------------------------

def test_inside_touching_outside_and_missing(band: pd.DataFrame):
    #            inside touch-lo touch-hi  up    missing  down  (hour 7: no band)
    prices = _prices([0.50, 0.40, 0.60, 0.61, np.nan, 0.39, 0.99])
    scan = detect_breaches(prices, band, NO_COOLDOWN)
    assert [(e.timestamp, e.direction) for e in scan.events] == [(T0 + 4 * HOUR, "up"), (T0 + 6 * HOUR, "down")]
    assert [round(e.distance, 12) for e in scan.events] == [0.01, 0.01]
    assert (scan.n_prices, scan.n_missing, scan.n_no_band, scan.n_checked, scan.n_outside) == (7, 1, 1, 5, 2)
    assert scan.checks["inside"].tolist() == [True, True, True, False, False]     # touching either edge is inside
    assert breach_rate(scan) == Rate(2, 5)


def test_event_carries_the_evidence(band: pd.DataFrame):
    e = detect_breaches(_prices([0.50, 0.70]), band).events[0]
    assert isinstance(e, BreachEvent)
    assert (e.market_id, e.timestamp, e.price, e.lo, e.hi, e.q_lo, e.q_hi) == ("m1", T0 + 2 * HOUR, 0.70, 0.40, 0.60, 0.1, 0.9)
    assert (e.band_source, e.fallback_used, e.model, e.version, e.request_id, e.issued_at) == (
        "tsfm_conformal", False, "chronos2", "0.1.0", "req-1", T0)
    assert e.model_dump(mode="json")["timestamp"] == "2026-02-20T14:00:00Z"


def test_band_source_switch(band: pd.DataFrame):
    prices = _prices([0.42, 0.50])                                     # 0.42: inside conformal [0.40, ...], below raw 0.45
    assert detect_breaches(prices, band).events == []
    raw = detect_breaches(prices, band, band_source="tsfm_raw").events
    assert [(e.band_source, e.direction) for e in raw] == [("tsfm_raw", "down")]
    base = bands_from_baseline("m1", T0, [T0 + HOUR, T0 + 2 * HOUR], np.array([[0.43, 0.5, 0.6], [0.43, 0.5, 0.6]]), (0.1, 0.5, 0.9))
    assert [e.band_source for e in detect_breaches(prices, pd.concat([band, base]), AlertSettings(band_source="baseline")).events] == ["baseline"]
    with pytest.raises(DataValidationError, match="tsfm_magic"):
        detect_breaches(prices, band, band_source="tsfm_magic")


def test_thresholds_min_distance_and_cooldown(band: pd.DataFrame):
    prices = _prices([0.605, 0.65, 0.50, 0.66, 0.67, 0.70])
    assert len(detect_breaches(prices, band, NO_COOLDOWN).events) == 5
    far = detect_breaches(prices, band, AlertSettings(gate1={"cooldown_s": 0, "min_distance": 0.01}))
    assert [e.price for e in far.events] == [0.65, 0.66, 0.67, 0.70] and far.n_below_min_distance == 1
    cool = detect_breaches(prices, band, AlertSettings(gate1={"cooldown_s": 2 * 3600}))
    assert [e.timestamp for e in cool.events] == [T0 + HOUR, T0 + 4 * HOUR, T0 + 6 * HOUR] and cool.n_cooldown == 2


def test_freshest_band_and_band_age():
    old = _response("m1", [0.30] * 3, [0.70] * 3, issued=T0, rid="old")
    new = _response("m1", [0.45] * 2, [0.55] * 2, issued=T0 + HOUR, rid="new", fallback=True)
    bands = bands_from_responses([old, new])
    prices = _prices([0.6], start=2)
    (e,) = detect_breaches(prices, bands).events
    assert (e.request_id, e.fallback_used, e.model, e.hi) == ("new", True, "ewma", 0.55)  # a fallback band is flagged
    assert detect_breaches(prices, bands, AlertSettings(gate1={"min_band_age_s": 7200})).events == []   # only `old` qualifies
    assert detect_breaches(prices, bands, AlertSettings(gate1={"max_band_age_s": 1800})).n_no_band == 1


def test_per_market_sources_and_served_frames():
    m1 = bands_from_responses([_response("m1", [0.4], [0.6])])
    m2 = bands_from_baseline("m2", T0, [T0 + HOUR], np.array([[0.1, 0.2, 0.3]]), (0.1, 0.5, 0.9))
    prices = pd.concat([_prices([0.7]), _prices([0.35], market_id="m2")])
    scan = detect_breaches(prices, pd.concat([m1, m2]), band_source={"m2": "baseline"})
    assert [(e.market_id, e.band_source) for e in scan.events] == [("m1", "tsfm_conformal"), ("m2", "baseline")]
    served = pd.concat([m1[m1.band_source == "tsfm_raw"], m2])
    assert [e.band_source for e in detect_breaches(prices, served, band_source=ANY_SOURCE).events] == ["tsfm_raw", "baseline"]


def test_naive_timestamps_are_utc_and_unique_id_is_accepted(band: pd.DataFrame):
    prices = pd.DataFrame({"unique_id": "m1", "ds": [pd.Timestamp("2026-02-20 14:00")], "y": [0.9]})
    assert [e.timestamp for e in detect_breaches(prices, band).events] == [T0 + 2 * HOUR]


def test_bad_inputs_are_named(band: pd.DataFrame):
    with pytest.raises(DataValidationError, match=r"\[0, 1\]"):
        detect_breaches(_prices([1.2]), band)
    with pytest.raises(DataValidationError, match="duplicate"):
        detect_breaches(pd.concat([_prices([0.5]), _prices([0.5])]), band)
    with pytest.raises(DataValidationError, match="lack column"):
        detect_breaches(_prices([0.5]), band.drop(columns="request_id"))
    with pytest.raises(DataValidationError, match="no quantile 0.05"):
        bands_from_responses([_response("m1", [0.4], [0.6])], q_lo=0.05)


def test_bands_frame_from_responses_and_baseline():
    b = bands_from_responses([_response("m1", [0.4, 0.4], [0.6, 0.6], raw_lo=[0.45, 0.45])])
    assert list(b.columns[:len(BAND_COLUMNS)]) == list(BAND_COLUMNS) and len(b) == 4
    assert str(b["ds"].dtype) == "datetime64[ns, UTC]" and set(b.band_source) == {"tsfm_conformal", "tsfm_raw"}
    res = baseline_forecast(np.linspace(0.3, 0.4, 48), 2, (0.1, 0.5, 0.9))
    bb = bands_from_baseline("m1", T0, [T0 + HOUR, T0 + 2 * HOUR], res, (0.1, 0.5, 0.9), request_id="b-1")
    assert bb.model.tolist() == [res.method_used] * 2 and bb.request_id.tolist() == ["b-1"] * 2
    assert np.allclose(bb[["lo", "hi"]].to_numpy(), res.q[:, [0, 2]])


# ---- follow-through and comparison ----------------------------------------------------------------------------

def _event(hours: int, price: float, direction: str) -> BreachEvent:
    return BreachEvent(market_id="m3", timestamp=T0 + hours * HOUR, price=price, lo=0.35, hi=0.6, q_lo=0.1, q_hi=0.9,
                       band_source="tsfm_conformal", fallback_used=False, issued_at=T0, direction=direction, distance=0.01)


def test_follow_through_any_same_and_unresolved():
    path = _prices([0.65, 0.66, 0.30, 0.31, 0.33, 0.32, 0.31, 0.31, 0.30, 0.30], market_id="m3")
    events = [_event(1, 0.65, "up"), _event(3, 0.30, "down"), _event(9, 0.30, "down")]
    ft = follow_through(events, path)
    assert [None if pd.isna(x) else bool(x) for x in ft["followed"]] == [True, True, None]
    assert ft["resolved"].tolist() == [True, True, False]
    assert follow_through_rate(events, path) == Rate(2, 2)                      # the 0.03 move counts despite round-off
    assert follow_through_rate(events, path, AlertSettings(follow_through={"direction": "same"})) == Rate(0, 2)
    assert follow_through_rate(events, path, AlertSettings(follow_through={"min_move": 0.05})) == Rate(1, 2)
    assert Rate(0, 0).value is None and str(Rate(1, 4)) == "0.250 (1/4)"


def test_compare_sources_on_common_timestamps(band: pd.DataFrame):
    base = bands_from_baseline("m1", T0, [T0 + HOUR * k for k in range(1, 5)], np.tile([0.2, 0.5, 0.8], (4, 1)), (0.1, 0.5, 0.9))
    prices = _prices([0.50, 0.42, 0.65, np.nan, 0.70, 0.30])
    t = compare_band_sources(prices, pd.concat([band, base]), NO_COOLDOWN).set_index("band_source")
    assert list(t.index) == list(BAND_SOURCES)
    assert t["n_checked"].tolist() == [3, 3, 3] and t["n_missing"].tolist() == [1, 1, 1]      # hours 1-4, one NaN
    assert t["n_breaches"].tolist() == [1, 2, 0]
    assert np.allclose(t["coverage"].astype(float), [2 / 3, 1 / 3, 1.0]) and np.allclose(t["width"].astype(float), [0.2, 0.15, 0.6])
    assert t.loc["baseline", "follow_through_rate"] is pd.NA and t.loc["baseline", "n_resolved"] == 0


def test_offline_frames_same_origins_and_conformal_helps():
    sim = simulate_markets(6, 160, seed=5, buckets=("mid",))

    def squeezed(y, h, qs):
        q = baseline_quantiles(y, h, qs)
        mid = q[:, [list(qs).index(0.5)]]
        return mid + (q - mid) / 3

    fr = offline_band_frames(sim, squeezed, horizon=4, min_context=32, stride=2, min_samples=30)
    sizes = fr.groupby("band_source").size()
    assert set(sizes.index) == set(BAND_SOURCES) and sizes.nunique() == 1
    t = compare_band_sources(sim, fr, NO_COOLDOWN).set_index("band_source")
    assert t.loc["tsfm_raw", "breach_rate"] > t.loc["tsfm_conformal", "breach_rate"]
    assert t.loc["tsfm_conformal", "coverage"] > t.loc["tsfm_raw", "coverage"]
    ev = offline_band_frames(sim, squeezed, scheme="event_holdout", horizon=4, min_context=32, stride=4, min_samples=30)
    assert ev.market_id.nunique() == 1                                   # 20% of 6 markets held out


def test_bundled_real_markets_have_sample_sizes():
    df = load_dataset("polymarket")
    fr = offline_band_frames(df, baseline_quantiles, horizon=6, min_samples=30)
    t = compare_band_sources(df, fr)
    assert (t["n_markets"] == 10).all() and t["n_checked"].nunique() == 1 and (t["n_checked"] > 0).all()
    assert ((t["coverage"] >= 0) & (t["coverage"] <= 1)).all()
