"""Tests for defi_ws.pacing (manual clock: every time is passed in explicitly)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defi_ws.errors import ConfigError
from defi_ws.pacing import Pacer, TokenBucket, Unlimited

# ------------------------------------------------------------------------------ validation


def test_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        TokenBucket(rate_per_s=0.0, burst=0)
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("rate_per_s")
    assert info.value.problems[1].startswith("burst")


@pytest.mark.parametrize("rate_per_s", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_rejects_bad_rate(rate_per_s: float) -> None:
    with pytest.raises(ConfigError, match="rate_per_s"):
        TokenBucket(rate_per_s=rate_per_s, burst=1)


@pytest.mark.parametrize("burst", [0, -5])
def test_rejects_bad_burst(burst: int) -> None:
    with pytest.raises(ConfigError, match="burst"):
        TokenBucket(rate_per_s=1.0, burst=burst)


# ----------------------------------------------------------------------- refill and burst


def test_starts_full_then_runs_dry() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3)
    assert bucket.available(100.0) == 3.0
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.available(100.0) == 0.0


def test_refills_at_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=4)
    bucket.take(0.0, 4)
    assert bucket.available(0.25) == pytest.approx(0.5)
    assert bucket.available(0.5) == pytest.approx(1.0)
    assert bucket.available(1.5) == pytest.approx(3.0)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5)
    bucket.take(0.0, 5)
    assert bucket.available(3600.0) == 5.0
    assert bucket.try_take(3600.0, 5)
    assert not bucket.try_take(3600.0, 1)


def test_try_take_fails_without_taking() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3)
    bucket.take(0.0, 2)
    assert not bucket.try_take(0.0, 2)
    assert bucket.available(0.0) == 1.0
    assert bucket.try_take(0.0, 1)


def test_take_raises_when_unavailable_and_takes_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    bucket.take(0.0)
    with pytest.raises(ValueError, match="not available"):
        bucket.take(0.0, 2)
    assert bucket.available(0.0) == 1.0


@pytest.mark.parametrize("n", [0, -1, 4])
def test_impossible_n_raises(n: int) -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=3)
    with pytest.raises(ValueError):
        bucket.delay_s(0.0, n)
    with pytest.raises(ValueError):
        bucket.try_take(0.0, n)
    with pytest.raises(ValueError):
        bucket.take(0.0, n)
    assert bucket.available(0.0) == 3.0


def test_delay_s_message_says_never() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate_per_s=1.0, burst=2).delay_s(0.0, 3)


# ------------------------------------------------------------------------ delay_s exactness


def test_delay_zero_when_available() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    assert bucket.delay_s(5.0) == 0.0
    assert bucket.delay_s(5.0, 2) == 0.0


def test_delay_s_is_exact() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=8)
    bucket.take(10.0, 8)
    assert bucket.delay_s(10.0) == 0.25
    assert bucket.delay_s(10.0, 3) == 0.75
    assert bucket.delay_s(10.5, 3) == 0.25
    assert not bucket.try_take(10.7, 3)
    assert bucket.try_take(10.75, 3)
    assert bucket.available(10.75) == pytest.approx(0.0, abs=1e-9)


def test_delay_s_accounts_for_partial_tokens() -> None:
    bucket = TokenBucket(rate_per_s=3.0, burst=3)
    bucket.take(0.0, 3)
    assert bucket.available(0.1) == pytest.approx(0.3)
    assert bucket.delay_s(0.1, 1) == pytest.approx(0.7 / 3.0)


@given(
    rate_per_s=st.floats(min_value=1e-3, max_value=1e4),
    burst=st.integers(min_value=1, max_value=1000),
    start=st.floats(min_value=-1e7, max_value=1e7),
    taken=st.integers(min_value=0, max_value=1000),
    n=st.integers(min_value=1, max_value=1000),
)
def test_delay_s_then_try_take_succeeds(
    rate_per_s: float, burst: int, start: float, taken: int, n: int
) -> None:
    bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst)
    if taken:
        bucket.take(start, min(taken, burst))
    n = min(n, burst)
    wait_s = bucket.delay_s(start, n)
    assert wait_s >= 0
    if wait_s > 0:
        # Not earlier: halfway through the wait the tokens are still missing.
        assert not bucket.try_take(start + wait_s / 2, n)
    assert bucket.try_take(start + wait_s, n)


# ----------------------------------------------------------------------- clock backwards


def test_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=5)
    bucket.take(100.0, 5)
    assert bucket.available(50.0) == 0.0
    assert not bucket.try_take(50.0)
    # Back at the latest time seen: still nothing, the interval is not credited twice.
    assert bucket.available(100.0) == 0.0
    assert bucket.available(101.0) == pytest.approx(1.0)


def test_delay_s_with_clock_behind_waits_for_it_to_catch_up() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2)
    bucket.take(10.0, 2)
    assert bucket.delay_s(8.0) == pytest.approx(2.5)
    assert bucket.try_take(8.0 + bucket.delay_s(8.0))


def test_first_time_seen_can_be_anything() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    assert bucket.available(-1e9) == 2.0
    assert bucket.available(-2e9) == 2.0


operations = st.lists(
    st.tuples(
        st.floats(min_value=-5.0, max_value=5.0),  # clock step, may go backwards
        st.integers(min_value=1, max_value=5),  # tokens to try to take
    ),
    max_size=60,
)


@given(
    rate_per_s=st.floats(min_value=0.01, max_value=100.0),
    burst=st.integers(min_value=1, max_value=5),
    steps=operations,
)
def test_never_exceeds_rate_limit(
    rate_per_s: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    """Over any run, tokens taken <= burst + rate * (latest time - first time)."""
    bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst)
    now = 0.0
    first = latest = now + steps[0][0] if steps else now
    taken = 0
    for step_s, n in steps:
        now += step_s
        latest = max(latest, now)
        n = min(n, burst)
        tokens = bucket.available(now)
        assert 0.0 <= tokens <= burst
        if bucket.try_take(now, n):
            taken += n
        assert taken <= burst + rate_per_s * (latest - first) + 1e-6


# -------------------------------------------------------------------------------- Unlimited


def test_unlimited_always_allows() -> None:
    pacer = Unlimited()
    assert pacer.available(0.0) == math.inf
    assert all(pacer.try_take(0.0, 1000) for _ in range(1000))
    assert pacer.delay_s(0.0, 10**9) == 0.0
    pacer.take(-5.0, 10**9)


@pytest.mark.parametrize("n", [0, -1])
def test_unlimited_rejects_non_positive_n(n: int) -> None:
    pacer = Unlimited()
    with pytest.raises(ValueError):
        pacer.try_take(0.0, n)
    with pytest.raises(ValueError):
        pacer.delay_s(0.0, n)
    with pytest.raises(ValueError):
        pacer.take(0.0, n)


def test_both_satisfy_pacer_protocol() -> None:
    pacers: list[Pacer] = [TokenBucket(rate_per_s=1.0, burst=1), Unlimited()]
    assert [p.try_take(0.0) for p in pacers] == [True, True]
    assert [p.try_take(0.0) for p in pacers] == [False, True]
    assert [p.delay_s(0.0) for p in pacers] == [1.0, 0.0]
