"""Property-based fuzzing of the TSFM request contract: generated valid requests validate and round-trip.

The unit tests of `tsfm_wb.tsfm.schemas` (each rule, its field and its message) live in
`nbs/tsfm/20_schemas.ipynb`, beside the code."""
from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from tsfm_wb.tsfm.schemas import MAX_HORIZON_STEPS, TSFMForecastRequest, quantile_key

T0 = datetime(2026, 2, 20, 12, tzinfo=timezone.utc)


def _req(**kw):
    return {"market_id": "m-1", "as_of_ts": "2026-02-20T12:00:00Z", "y": [0.4, 0.42, 0.41], **kw}


_probs = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(y=st.lists(_probs, min_size=1, max_size=50),
       qs=st.lists(st.floats(0.001, 0.999, allow_nan=False), min_size=1, max_size=7, unique_by=quantile_key),  # distinct levels
       h=st.integers(1, MAX_HORIZON_STEPS), step_s=st.sampled_from([60, 300, 3600]))
def test_generated_valid_requests_validate_and_roundtrip(y, qs, h, step_s):
    qs = sorted(qs)
    y_ts = [T0.timestamp() - step_s * (len(y) - 1 - i) for i in range(len(y))]
    r = TSFMForecastRequest.model_validate(_req(y=y, quantiles=qs, horizon_steps=h, y_ts=y_ts))
    assert r.y_ts[-1] == T0 and len(r.y_ts) == len(y)
    assert TSFMForecastRequest.model_validate_json(r.model_dump_json()) == r
