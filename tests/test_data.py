"""Property-based fuzzing of tsfm_wb.data: canonical frequency aliases are fixpoints, and simulated markets stay
strictly inside (0, 1) on their tick grid for any seed and bucket.

The unit tests (real dataset loaders, frequency strings, frame validation, the simulator) live in
`nbs/01_data.ipynb`, beside the code."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tsfm_wb.data import validate_series_frame

from tsfm_wb.freq import freq_to_seconds, to_pandas_freq

from tsfm_wb.simulate import LIQUIDITY_BUCKETS, simulate_market


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), unit=st.sampled_from(["s", "m", "min", "T", "h", "H", "d", "D"]))
def test_fixed_freq_alias_is_a_fixpoint(n, unit):
    alias = to_pandas_freq(f"{n}{unit}")
    assert to_pandas_freq(alias) == alias
    assert freq_to_seconds(alias) == n * {"s": 1, "m": 60, "min": 60, "T": 60, "h": 3600, "H": 3600}.get(unit, 86400)


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
