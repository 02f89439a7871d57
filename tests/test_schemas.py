"""Validation rules of the TSFM request/response contract: each rule, its field and its message."""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tsfm_wb.core import DataValidationError
from tsfm_wb.tsfm.schemas import (DEFAULT_QUANTILES, MAX_HORIZON_STEPS, MAX_INPUT_POINTS, ConformalInfo, FallbackReason,
                             ResponseMeta, TSFMForecastRequest, TSFMForecastResponse, TransformSpec, freq_timedelta,
                             future_timestamps, pandas_freq, quantile_key)

T0 = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)


def _req(**kw):
    return {"market_id": "m-1", "as_of_ts": "2026-02-20T12:00:00Z", "y": [0.4, 0.42, 0.41], **kw}


def _error(payload: dict, model=TSFMForecastRequest) -> tuple[str, str]:
    """The (dotted field location, message) of the single validation error `payload` raises."""
    with pytest.raises(ValidationError) as ei:
        model.model_validate(payload)
    errs = ei.value.errors()
    assert len(errs) == 1, errs
    return ".".join(str(p) for p in errs[0]["loc"]), errs[0]["msg"]


def test_defaults_match_the_documents():
    r = TSFMForecastRequest.model_validate(_req())
    assert (r.freq, r.horizon_steps, r.quantiles) == ("5m", 12, [0.1, 0.5, 0.9])
    assert (r.transform.kind, r.transform.eps) == ("logit", 1e-6)
    assert (r.model.provider, r.model.model_name, r.model.params) == ("tollama", "chronos2", {})
    assert r.as_of_ts == T0 and r.as_of_ts.tzinfo is not None
    assert r.y_ts is None and r.last_observed_ts() == T0
    assert tuple(DEFAULT_QUANTILES) == (0.1, 0.5, 0.9)


@pytest.mark.parametrize("payload,loc,msg", [
    (_req(quantiles=[0.5, 0.1]), "quantiles", "quantiles must be sorted and unique"),
    (_req(quantiles=[0.1, 0.5, 0.5]), "quantiles", "quantiles must be sorted and unique"),
    (_req(quantiles=[0.0, 0.5]), "quantiles.0", "greater than 0"),
    (_req(quantiles=[0.5, 1.0]), "quantiles.1", "less than 1"),
    (_req(quantiles=[]), "quantiles", "at least 1 item"),
    (_req(y=[]), "y", "at least 1 item"),
    (_req(y=[0.1, math.nan]), "y", "y[1] = nan is not finite"),
    (_req(y=[0.1, math.inf]), "y", "y[1] = inf is not finite"),
    (_req(y=[1.5]), "y", "y[0] = 1.5 is outside [0, 1]"),
    (_req(y=[-0.01]), "y", "y[0] = -0.01 is outside [0, 1]"),
    (_req(y=["0.5"]), "y.0", "valid number"),
    (_req(y=[True]), "y.0", "valid number"),
    (_req(y=[0.5] * (MAX_INPUT_POINTS + 1)), "y", f"at most {MAX_INPUT_POINTS}"),
    (_req(horizon_steps=0), "horizon_steps", "greater than or equal to 1"),
    (_req(horizon_steps=MAX_HORIZON_STEPS + 1), "horizon_steps", f"less than or equal to {MAX_HORIZON_STEPS}"),
    (_req(horizon_steps=12.0), "horizon_steps", "valid integer"),
    (_req(y_ts=[0, 300]), "y_ts", "y_ts has 2 timestamps but y has 3 values"),
    (_req(y_ts=[0, 300, 300]), "y_ts", "y_ts must be strictly increasing: y_ts[2]"),
    (_req(y_ts=[600, 300, 900]), "y_ts", "y_ts must be strictly increasing: y_ts[1]"),
    (_req(y_ts=["2026-02-20T12:00:00Z", "2026-02-20T12:05:00Z", "2026-02-20T12:10:00Z"]), "y_ts", "is after as_of_ts"),
    (_req(y_ts=["2026-02-20T11:50:00", "2026-02-20T11:55:00Z", "2026-02-20T12:00:00Z"]), "y_ts", "y_ts[0] 2026-02-20T11:50:00 has no time zone"),
    (_req(y_ts=[0, "soon", 2]), "y_ts", "y_ts[1] 'soon' is not an ISO-8601 timestamp"),
    (_req(as_of_ts="2026-02-20T12:00:00"), "as_of_ts", "as_of_ts 2026-02-20T12:00:00 has no time zone"),
    (_req(as_of_ts=True), "as_of_ts", "as_of_ts must be a timestamp, got a boolean"),
    (_req(as_of_ts=math.nan), "as_of_ts", "as_of_ts must be finite unix seconds"),
    (_req(freq="5M"), "freq", "freq '5M' is not a fixed cadence"),
    (_req(freq="weekly-ish"), "freq", "is not a fixed cadence"),
    (_req(freq="MS"), "freq", "freq 'MS' is not a fixed cadence"),
    (_req(transform={"kind": "probit"}), "transform.kind", "'logit' or 'none'"),
    (_req(transform={"eps": 0}), "transform.eps", "greater than 0"),
    (_req(model={"provider": "openai"}), "model.provider", "'tollama'"),
    (_req(model={"model_name": ""}), "model.model_name", "at least 1 character"),
    (_req(liquidity_bucket="LOW"), "liquidity_bucket", "'high', 'mid' or 'low'"),
    (_req(request_id="bad id\r\nX-Evil: 1"), "request_id", "should match pattern"),
    (_req(market_id=""), "market_id", "at least 1 character"),
    (_req(horizn=3), "horizn", "Extra inputs are not permitted"),
    (_req(model={"model_name": "x", "temperature": 0}), "model.temperature", "Extra inputs are not permitted"),
])
def test_each_request_rule_names_its_field(payload, loc, msg):
    got_loc, got_msg = _error(payload)
    assert got_loc == loc and msg in got_msg, (got_loc, got_msg)


def test_unix_seconds_are_seconds_even_when_large():
    # pydantic alone reads numbers above 2e10 as milliseconds; we always read seconds
    far = 2.5e10
    r = TSFMForecastRequest.model_validate(_req(as_of_ts=far))
    assert r.as_of_ts == datetime.fromtimestamp(far, tz=timezone.utc)
    r = TSFMForecastRequest.model_validate(_req(as_of_ts=T0.timestamp()))
    assert r.as_of_ts == T0


def test_offsets_are_converted_to_utc_and_y_ts_accepted():
    y_ts = ["2026-02-20T13:50:00+02:00", "2026-02-20T11:55:00Z", int(T0.timestamp())]
    r = TSFMForecastRequest.model_validate(_req(as_of_ts="2026-02-20T14:00:00+02:00", y_ts=y_ts))
    assert r.as_of_ts == T0 and r.as_of_ts.utcoffset() == timedelta(0)
    assert r.y_ts == [T0 - timedelta(minutes=10), T0 - timedelta(minutes=5), T0]
    assert r.last_observed_ts() == T0


def test_space_is_an_alias_of_transform_kind_and_params_are_json():
    r = TSFMForecastRequest.model_validate(_req(transform={"space": "none"}, model={"model_name": "timesfm-2.5-200m",
                                                                                   "params": {"t": [1, "a"]}}))
    assert r.transform.kind == "none" and r.model.params == {"t": [1, "a"]}


def test_assignment_is_revalidated_across_fields():
    r = TSFMForecastRequest.model_validate(_req(y_ts=[0, 300, 600]))
    with pytest.raises(ValidationError, match="y_ts has 3 timestamps but y has 2 values"):
        r.y = [0.1, 0.2]


def test_request_roundtrips_through_json():
    r = TSFMForecastRequest.model_validate(_req(y_ts=[0, 300, 600], liquidity_bucket="low", category="politics",
                                                time_to_event_s=3600.0, request_id="abc-123"))
    assert TSFMForecastRequest.model_validate_json(r.model_dump_json()) == r


def test_freq_translation_and_grid():
    assert pandas_freq("5m") == "5min" and pandas_freq("1h") == "h" and pandas_freq("1d") == "D"
    assert freq_timedelta("15m") == timedelta(minutes=15)
    with pytest.raises(DataValidationError, match="freq .M. is not a fixed cadence"):
        pandas_freq("M")
    assert future_timestamps(T0, "5m", 3) == [T0 + timedelta(minutes=5 * k) for k in (1, 2, 3)]
    with pytest.raises(ValueError, match="last_ts .* has no time zone"):
        future_timestamps(datetime(2026, 1, 1), "5m", 1)


def test_quantile_keys_match_tollama_spelling():
    assert [quantile_key(q) for q in (0.1, 0.5, 0.9, 0.05, 0.975)] == ["0.1", "0.5", "0.9", "0.05", "0.975"]


# ---------------------------------------------------------------- response

def _resp(**kw):
    meta = {"runtime": "tollama", "model": "chronos2", "latency_ms": 3.0, "input_len": 3}
    base = {"market_id": "m-1", "as_of_ts": T0, "freq": "5m", "horizon_steps": 2, "quantiles": [0.1, 0.5, 0.9],
            "timestamps": future_timestamps(T0, "5m", 2),
            "yhat_q": {"0.1": [0.3, 0.3], "0.5": [0.4, 0.4], "0.9": [0.5, 0.5]}, "meta": meta}
    return {**base, **kw}


def test_valid_response_roundtrips_with_raw_and_conformal():
    raw = {"0.1": [0.35, 0.34], "0.5": [0.4, 0.4], "0.9": [0.45, 0.46]}
    r = TSFMForecastResponse.model_validate(_resp(yhat_q_raw=raw, conformal={"applied": True, "method": "split",
                                                  "target_coverage": 0.9, "segment": "liq=high", "n_samples": 812}))
    assert r.band(0.1) == [0.3, 0.3] and r.band(0.1, raw=True) == [0.35, 0.34]
    assert isinstance(r.conformal, ConformalInfo) and r.conformal.applied
    back = TSFMForecastResponse.model_validate_json(r.model_dump_json())
    assert back == r
    assert json.loads(r.model_dump_json())["meta"]["fallback_reason"] is None


@pytest.mark.parametrize("kw,loc,msg", [
    ({"yhat_q": {"0.1": [0.3, 0.45], "0.5": [0.4, 0.4], "0.9": [0.5, 0.5]}}, "yhat_q", "yhat_q['0.1'] > yhat_q['0.5'] at step 1"),
    ({"yhat_q": {"0.1": [0.3, 0.3], "0.5": [0.4, 0.4], "0.9": [0.5, 1.01]}}, "yhat_q", "yhat_q['0.9'][1] = 1.01 is outside [0, 1]"),
    ({"yhat_q": {"0.1": [0.3, 0.3], "0.5": [0.4, math.nan], "0.9": [0.5, 0.5]}}, "yhat_q", "yhat_q['0.5'][1] = nan is not finite"),
    ({"yhat_q": {"0.1": [0.3, 0.3], "0.5": [0.4, 0.4]}}, "yhat_q", "yhat_q keys ['0.1', '0.5'] do not match quantiles"),
    ({"yhat_q": {"0.1": [0.3], "0.5": [0.4], "0.9": [0.5]}}, "yhat_q", "yhat_q['0.1'] has 1 values; expected horizon_steps = 2"),
    ({"yhat_q_raw": {"0.1": [0.3, 0.3], "0.5": [0.4, 0.4], "0.9": [0.5, -0.1]}}, "yhat_q_raw", "yhat_q_raw['0.9'][1] = -0.1 is outside"),
    ({"timestamps": future_timestamps(T0, "5m", 3)}, "timestamps", "timestamps has 3 entries; expected horizon_steps = 2"),
    ({"timestamps": [T0, T0]}, "timestamps", "timestamps must be strictly increasing: timestamps[1]"),
    ({"timestamps": ["2026-02-20T12:05:00", "2026-02-20T12:10:00Z"]}, "timestamps", "timestamps[0] 2026-02-20T12:05:00 has no time zone"),
    ({"horizon_steps": MAX_HORIZON_STEPS + 1}, "horizon_steps", "less than or equal to"),
    ({"meta": {"runtime": "baseline", "model": "ewma", "latency_ms": 1, "input_len": 3, "fallback_used": True}},
     "meta", "fallback_used is true but fallback_reason is missing"),
    ({"meta": {"runtime": "tollama", "model": "x", "latency_ms": 1, "input_len": 3, "fallback_reason": "timeout"}},
     "meta", "fallback_reason is set but fallback_used is false"),
    ({"meta": {"runtime": "tollama", "model": "x", "latency_ms": -1, "input_len": 3}}, "meta.latency_ms", "greater than or equal to 0"),
    ({"meta": {"runtime": "baseline", "model": "ewma", "latency_ms": 1, "input_len": 3, "fallback_used": True,
               "fallback_reason": "because"}}, "meta.fallback_reason", "'adapter_error'"),
    ({"extra": 1}, "extra", "Extra inputs are not permitted"),
])
def test_each_response_rule_names_its_field(kw, loc, msg):
    got_loc, got_msg = _error(_resp(**kw), TSFMForecastResponse)
    assert got_loc == loc and msg in got_msg, (got_loc, got_msg)


def test_fallback_reasons_are_stable_strings():
    expected = {"adapter_error", "timeout", "breaker_open", "too_few_points", "low_liquidity", "data_gap",
                "license_refused", "model_not_found", "bad_response", "rate_limited", "unavailable",
                "request_rejected", "invalid_output", "rollback", "baseline_only", "shadow", "not_computed"}
    assert {r.value for r in FallbackReason} == expected
    m = ResponseMeta(runtime="baseline", model="ewma", latency_ms=0.1, input_len=5, fallback_used=True,
                     fallback_reason="breaker_open", transform=TransformSpec())
    assert m.fallback_reason is FallbackReason.BREAKER_OPEN
    assert json.loads(m.model_dump_json())["fallback_reason"] == "breaker_open"


_probs = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(y=st.lists(_probs, min_size=1, max_size=50),
       qs=st.lists(st.floats(0.001, 0.999, allow_nan=False), min_size=1, max_size=7, unique=True),
       h=st.integers(1, MAX_HORIZON_STEPS), step_s=st.sampled_from([60, 300, 3600]))
def test_generated_valid_requests_validate_and_roundtrip(y, qs, h, step_s):
    qs = sorted(qs)
    y_ts = [T0.timestamp() - step_s * (len(y) - 1 - i) for i in range(len(y))]
    r = TSFMForecastRequest.model_validate(_req(y=y, quantiles=qs, horizon_steps=h, y_ts=y_ts))
    assert r.y_ts[-1] == T0 and len(r.y_ts) == len(y)
    assert TSFMForecastRequest.model_validate_json(r.model_dump_json()) == r
