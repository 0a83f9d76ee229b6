"""Tests for defi_ws.reconnect."""

from __future__ import annotations

import dataclasses
import math
import random
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defi_ws.errors import ConfigError
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import (
    ExponentialBackoff,
    FixedDelay,
    NoReconnect,
    ReconnectStrategy,
)

DISCONNECT = Disconnect(DisconnectReason.TRANSPORT_ERROR, detail="reset by peer")


class FixedRandom(random.Random):
    """A Random whose random() always returns the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


#: The largest value random.random() can return.
MAX_RANDOM = 1.0 - 2.0**-53

positive_floats = st.floats(
    min_value=0.0, max_value=1e308, exclude_min=True, allow_nan=False, allow_infinity=False
)


@st.composite
def valid_backoffs(draw: st.DrawFn, jitter: float | None = None) -> ExponentialBackoff:
    """Any valid ExponentialBackoff, including extreme (subnormal/huge) values."""
    initial_s = draw(positive_floats)
    max_s = draw(positive_floats.filter(lambda value: value >= initial_s))
    factor = draw(st.floats(min_value=1.0, max_value=1e308))
    if jitter is None:
        jitter = draw(st.floats(min_value=0.0, max_value=1.0))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    return ExponentialBackoff(
        initial_s=initial_s,
        max_s=max_s,
        factor=factor,
        jitter=jitter,
        rng=random.Random(seed),
    )


attempts = st.one_of(
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=1, max_value=10**400),
)


# --------------------------------------------------------------------- ExponentialBackoff


def test_defaults() -> None:
    backoff = ExponentialBackoff()
    assert (backoff.initial_s, backoff.max_s, backoff.factor, backoff.jitter) == (
        0.5,
        30.0,
        2.0,
        0.2,
    )
    assert backoff.max_attempts is None
    assert backoff.rng is None


def test_sequence_without_jitter() -> None:
    backoff = ExponentialBackoff(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.0)
    delays = [backoff.next_delay_s(attempt, DISCONNECT) for attempt in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_factor_one_is_constant() -> None:
    backoff = ExponentialBackoff(initial_s=2.0, max_s=5.0, factor=1.0, jitter=0.0)
    assert [backoff.next_delay_s(n, DISCONNECT) for n in (1, 2, 50, 10**400)] == [2.0] * 4


@pytest.mark.parametrize("attempt", [1_000, 10**6, sys.maxsize, 10**400])
def test_huge_attempts_do_not_overflow(attempt: int) -> None:
    backoff = ExponentialBackoff(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.0)
    assert backoff.next_delay_s(attempt, DISCONNECT) == 30.0


def test_extreme_config_does_not_overflow() -> None:
    backoff = ExponentialBackoff(initial_s=5e-324, max_s=1e308, factor=1e308, jitter=1.0)
    for attempt in (1, 2, 3, 4, 10**6):
        delay_s = backoff.next_delay_s(attempt, DISCONNECT)
        assert delay_s is not None
        assert 0 < delay_s <= 1e308


def test_jitter_extremes_with_stub_rng() -> None:
    low = ExponentialBackoff(initial_s=1.0, max_s=10.0, jitter=0.25, rng=FixedRandom(MAX_RANDOM))
    high = ExponentialBackoff(initial_s=1.0, max_s=10.0, jitter=0.25, rng=FixedRandom(0.0))
    assert high.next_delay_s(3, DISCONNECT) == 4.0
    assert low.next_delay_s(3, DISCONNECT) == pytest.approx(3.0, rel=1e-12)


def test_full_jitter_never_returns_zero() -> None:
    backoff = ExponentialBackoff(initial_s=1.0, max_s=1.0, jitter=1.0, rng=FixedRandom(MAX_RANDOM))
    delay_s = backoff.next_delay_s(1, DISCONNECT)
    assert delay_s is not None and delay_s > 0


def test_jitter_varies_and_stays_in_band() -> None:
    backoff = ExponentialBackoff(initial_s=1.0, max_s=8.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay_s(4, DISCONNECT) for _ in range(200)]
    assert all(d is not None and 4.0 < d <= 8.0 for d in delays)
    assert len(set(delays)) > 100
    # Jitter spreads over the whole band, not just one end of it.
    assert min(d for d in delays if d is not None) < 4.5
    assert max(d for d in delays if d is not None) > 7.5


def test_seeded_rng_is_deterministic_and_not_compared() -> None:
    first = ExponentialBackoff(rng=random.Random(42))
    second = ExponentialBackoff(rng=random.Random(42))
    assert [first.next_delay_s(n, DISCONNECT) for n in range(1, 20)] == [
        second.next_delay_s(n, DISCONNECT) for n in range(1, 20)
    ]
    assert first == ExponentialBackoff(rng=random.Random(1))
    assert "rng" not in repr(first)


def test_frozen_and_slotted() -> None:
    backoff = ExponentialBackoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.max_s = 1.0  # type: ignore[misc]
    assert not hasattr(backoff, "__dict__")


@given(valid_backoffs(), attempts)
def test_delay_always_in_zero_max(backoff: ExponentialBackoff, attempt: int) -> None:
    delay_s = backoff.next_delay_s(attempt, DISCONNECT)
    assert delay_s is not None
    assert 0 < delay_s <= backoff.max_s


@given(valid_backoffs(), attempts)
def test_delay_within_jitter_band(backoff: ExponentialBackoff, attempt: int) -> None:
    base_s = backoff.base_delay_s(attempt)
    delay_s = backoff.next_delay_s(attempt, DISCONNECT)
    assert delay_s is not None
    assert delay_s <= base_s
    assert delay_s >= base_s * (1 - backoff.jitter) * (1 - 1e-12)


@given(valid_backoffs(jitter=0.0), attempts, attempts)
def test_monotone_without_jitter(backoff: ExponentialBackoff, a: int, b: int) -> None:
    low, high = sorted((a, b))
    first = backoff.next_delay_s(low, DISCONNECT)
    second = backoff.next_delay_s(high, DISCONNECT)
    assert first is not None and second is not None
    assert first <= second


@given(
    st.floats(min_value=1e-3, max_value=10.0),
    st.floats(min_value=1.0, max_value=10.0),
    st.integers(min_value=1, max_value=60),
)
def test_matches_formula_without_jitter(initial_s: float, factor: float, attempt: int) -> None:
    backoff = ExponentialBackoff(initial_s=initial_s, max_s=1e6, factor=factor, jitter=0.0)
    expected = min(1e6, initial_s * factor ** (attempt - 1))
    assert backoff.next_delay_s(attempt, DISCONNECT) == pytest.approx(expected, rel=1e-12)


@given(st.integers(min_value=1, max_value=50), st.booleans())
def test_gives_up_exactly_after_max_attempts(max_attempts: int, fixed: bool) -> None:
    strategy: ReconnectStrategy
    if fixed:
        strategy = FixedDelay(delay_s=0.1, max_attempts=max_attempts)
    else:
        strategy = ExponentialBackoff(max_attempts=max_attempts, rng=random.Random(0))
    for attempt in range(1, max_attempts + 1):
        assert strategy.next_delay_s(attempt, DISCONNECT) is not None
    for attempt in (max_attempts + 1, max_attempts + 2, 10**30):
        assert strategy.next_delay_s(attempt, DISCONNECT) is None


@pytest.mark.parametrize("attempt", [1, 100, 10**9])
def test_no_max_attempts_retries_forever(attempt: int) -> None:
    assert ExponentialBackoff().next_delay_s(attempt, DISCONNECT) is not None
    assert FixedDelay().next_delay_s(attempt, DISCONNECT) == 1.0


@pytest.mark.parametrize(
    "strategy",
    [ExponentialBackoff(), FixedDelay(), NoReconnect()],
    ids=lambda strategy: type(strategy).__name__,
)
@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_must_be_positive(strategy: ReconnectStrategy, attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        strategy.next_delay_s(attempt, DISCONNECT)


# ----------------------------------------------------------------------------- validation


def test_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        ExponentialBackoff(initial_s=0.0, max_s=-1.0, factor=0.5, jitter=2.0, max_attempts=0)
    problems = info.value.problems
    assert len(problems) == 5
    for name in ("initial_s", "max_s", "factor", "jitter", "max_attempts"):
        assert any(problem.startswith(name) for problem in problems), name
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_s": 0.0}, "initial_s"),
        ({"initial_s": -1.0}, "initial_s"),
        ({"initial_s": math.nan}, "initial_s"),
        ({"max_s": 0.1}, "max_s"),
        ({"max_s": math.inf}, "max_s"),
        ({"factor": 0.99}, "factor"),
        ({"factor": math.inf}, "factor"),
        ({"jitter": -0.01}, "jitter"),
        ({"jitter": 1.01}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_single_invalid_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(field)


INVALID_VALUES: dict[str, list[float | int]] = {
    "initial_s": [0.0, -1.0, math.nan, math.inf, -math.inf],
    "max_s": [math.nan, math.inf, -math.inf],
    "factor": [0.5, 0.0, -2.0, math.nan, math.inf],
    "jitter": [-0.5, 1.5, math.nan, math.inf],
    "max_attempts": [0, -3],
}


@given(st.sets(st.sampled_from(sorted(INVALID_VALUES)), min_size=1), st.data())
def test_validation_reports_all_invalid_fields(invalid: set[str], data: st.DataObject) -> None:
    kwargs = {name: data.draw(st.sampled_from(INVALID_VALUES[name])) for name in invalid}
    with pytest.raises(ConfigError) as info:
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
    reported = {problem.split(" ", 1)[0] for problem in info.value.problems}
    assert reported == invalid
    assert len(info.value.problems) == len(invalid)


# ------------------------------------------------------------------ FixedDelay, NoReconnect


def test_fixed_delay() -> None:
    fixed = FixedDelay(delay_s=2.5, max_attempts=2)
    assert [fixed.next_delay_s(n, DISCONNECT) for n in (1, 2, 3)] == [2.5, 2.5, None]


def test_fixed_delay_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        FixedDelay(delay_s=0.0, max_attempts=0)
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("delay_s")
    assert info.value.problems[1].startswith("max_attempts")


@pytest.mark.parametrize("delay_s", [-1.0, math.nan, math.inf])
def test_fixed_delay_rejects_bad_delay(delay_s: float) -> None:
    with pytest.raises(ConfigError, match="delay_s"):
        FixedDelay(delay_s=delay_s)


@given(attempts)
def test_no_reconnect_always_gives_up(attempt: int) -> None:
    assert NoReconnect().next_delay_s(attempt, DISCONNECT) is None


def test_all_satisfy_protocol() -> None:
    strategies: list[ReconnectStrategy] = [ExponentialBackoff(), FixedDelay(), NoReconnect()]
    assert [s.next_delay_s(1, DISCONNECT) is None for s in strategies] == [False, False, True]
