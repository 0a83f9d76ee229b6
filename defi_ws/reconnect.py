"""Reconnect policies: how long to wait before the next connect attempt, or whether to give up.

This module is sans-I/O: it never sleeps and never reads a clock. A strategy is asked
for a delay after every failed attempt and the caller does the waiting.

Example::

    backoff = ExponentialBackoff(initial_s=0.5, max_s=30.0, max_attempts=10)
    delay_s = backoff.next_delay_s(attempt, disconnect)
    if delay_s is None:
        ...  # give up
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from defi_ws.errors import ConfigError
from defi_ws.reasons import Disconnect

__all__ = [
    "ExponentialBackoff",
    "FixedDelay",
    "NoReconnect",
    "ReconnectStrategy",
]


class ReconnectStrategy(Protocol):
    """Decides the delay before the next connect attempt.

    Strategies only compute delays; whether a disconnect is retryable at all is
    decided by the classifier (see :mod:`defi_ws.reasons`) before a strategy is asked.
    """

    def next_delay_s(self, attempt: int, disconnect: Disconnect) -> float | None:
        """Return the delay before the next connect attempt.

        Args:
            attempt: 1-based number of consecutive failed attempts so far.
            disconnect: the disconnect that ended the last attempt.

        Returns:
            The delay in seconds (always > 0), or None to give up.
        """
        ...


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")


def _max_attempts_problems(max_attempts: int | None) -> list[str]:
    if max_attempts is not None and max_attempts < 1:
        return [f"max_attempts must be None or >= 1, got {max_attempts}"]
    return []


def _gave_up(attempt: int, max_attempts: int | None) -> bool:
    return max_attempts is not None and attempt > max_attempts


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Exponential backoff with multiplicative jitter.

    The delay after attempt ``n`` is ``min(max_s, initial_s * factor ** (n - 1))``
    multiplied by a uniform random factor in ``[1 - jitter, 1]`` that is never 0
    (``1 - jitter * u`` with ``u`` in ``[0, 1)``). Jitter only ever shortens the
    delay, so every delay lies in ``(0, max_s]``.

    Attributes:
        initial_s: delay after the first failed attempt (before jitter); > 0.
        max_s: upper bound of every delay; >= initial_s.
        factor: growth per attempt; >= 1 (1 means a constant delay).
        jitter: fraction in [0, 1] by which a delay may be shortened at random.
        max_attempts: give up when ``attempt > max_attempts``; None retries forever.
        rng: random source for the jitter; None uses the :mod:`random` module.
            Pass ``random.Random(seed)`` for deterministic tests.

    Raises:
        ConfigError: listing every invalid field, at construction.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    max_attempts: int | None = None
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Validate every field and raise one ConfigError listing all problems."""
        problems: list[str] = []
        for name in ("initial_s", "max_s", "factor", "jitter"):
            value = getattr(self, name)
            if not math.isfinite(value):
                problems.append(f"{name} must be finite, got {value!r}")
        initial_ok = math.isfinite(self.initial_s)
        if initial_ok and self.initial_s <= 0:
            problems.append(f"initial_s must be > 0, got {self.initial_s!r}")
        if initial_ok and math.isfinite(self.max_s) and self.max_s < self.initial_s:
            problems.append(
                f"max_s must be >= initial_s, got max_s={self.max_s!r} initial_s={self.initial_s!r}"
            )
        if math.isfinite(self.factor) and self.factor < 1:
            problems.append(f"factor must be >= 1, got {self.factor!r}")
        if math.isfinite(self.jitter) and not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be in [0, 1], got {self.jitter!r}")
        problems.extend(_max_attempts_problems(self.max_attempts))
        if problems:
            raise ConfigError(problems)

    def base_delay_s(self, attempt: int) -> float:
        """Return the delay for ``attempt`` before jitter is applied.

        Args:
            attempt: 1-based number of consecutive failed attempts so far.

        Returns:
            ``min(max_s, initial_s * factor ** (attempt - 1))``, computed without
            overflow for any attempt number.

        Raises:
            ValueError: if ``attempt < 1``.
        """
        _check_attempt(attempt)
        steps = attempt - 1
        if steps == 0 or self.factor == 1:
            return self.initial_s
        # Exponent cap: once initial_s * factor**steps would reach max_s, the
        # result is max_s; comparing in log space never overflows.
        steps_to_max = (math.log(self.max_s) - math.log(self.initial_s)) / math.log(self.factor)
        if steps >= steps_to_max:
            return self.max_s
        try:
            grown = self.initial_s * self.factor**steps
        except OverflowError:  # only reachable with a tiny initial_s and huge factor
            return self.max_s
        return min(self.max_s, grown)

    def next_delay_s(self, attempt: int, disconnect: Disconnect) -> float | None:
        """Return the jittered delay before the next attempt, or None to give up.

        Args:
            attempt: 1-based number of consecutive failed attempts so far.
            disconnect: the disconnect that ended the last attempt (not used; the
                venue's ``retry_after_s`` is left to the caller).

        Returns:
            A delay in ``(0, max_s]``, or None when ``attempt > max_attempts``.

        Raises:
            ValueError: if ``attempt < 1``.
        """
        _check_attempt(attempt)
        if _gave_up(attempt, self.max_attempts):
            return None
        base_s = self.base_delay_s(attempt)
        sample = self.rng.random() if self.rng is not None else random.random()
        # sample is in [0, 1), so the multiplier is in [1 - jitter, 1] and > 0.
        delay_s = base_s * (1.0 - self.jitter * sample)
        if delay_s <= 0:  # underflow with a subnormal initial_s
            return base_s
        return delay_s


@dataclass(frozen=True, slots=True)
class FixedDelay:
    """The same delay after every failed attempt.

    Attributes:
        delay_s: the delay in seconds; > 0 and finite.
        max_attempts: give up when ``attempt > max_attempts``; None retries forever.

    Raises:
        ConfigError: listing every invalid field, at construction.
    """

    delay_s: float = 1.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        """Validate every field and raise one ConfigError listing all problems."""
        problems: list[str] = []
        if not math.isfinite(self.delay_s):
            problems.append(f"delay_s must be finite, got {self.delay_s!r}")
        elif self.delay_s <= 0:
            problems.append(f"delay_s must be > 0, got {self.delay_s!r}")
        problems.extend(_max_attempts_problems(self.max_attempts))
        if problems:
            raise ConfigError(problems)

    def next_delay_s(self, attempt: int, disconnect: Disconnect) -> float | None:
        """Return ``delay_s``, or None to give up.

        Args:
            attempt: 1-based number of consecutive failed attempts so far.
            disconnect: the disconnect that ended the last attempt (not used).

        Returns:
            ``delay_s``, or None when ``attempt > max_attempts``.

        Raises:
            ValueError: if ``attempt < 1``.
        """
        _check_attempt(attempt)
        if _gave_up(attempt, self.max_attempts):
            return None
        return self.delay_s


@dataclass(frozen=True, slots=True)
class NoReconnect:
    """Never reconnect: the first disconnect ends the feed."""

    def next_delay_s(self, attempt: int, disconnect: Disconnect) -> float | None:
        """Return None: always give up.

        Args:
            attempt: 1-based number of consecutive failed attempts so far.
            disconnect: the disconnect that ended the last attempt (not used).

        Returns:
            None.

        Raises:
            ValueError: if ``attempt < 1``.
        """
        _check_attempt(attempt)
        return None
