"""Outbound message pacing: a token bucket and an unlimited pacer.

This module is sans-I/O: it never sleeps and never reads a clock. Every method takes
the current time as ``now`` (seconds, from any monotonic clock the caller chooses).

Example::

    bucket = TokenBucket(rate_per_s=5.0, burst=10)
    if not bucket.try_take(now):
        wait_s = bucket.delay_s(now)  # sleep this long, then try again
"""

from __future__ import annotations

import math
from typing import Protocol

from defi_ws.errors import ConfigError

__all__ = [
    "Pacer",
    "TokenBucket",
    "Unlimited",
]


class Pacer(Protocol):
    """Decides when outbound messages may be sent."""

    def available(self, now: float) -> float:
        """Return the number of tokens available at ``now``."""
        ...

    def try_take(self, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if available at ``now``; return whether they were taken."""
        ...

    def delay_s(self, now: float, n: int = 1) -> float:
        """Return the seconds from ``now`` until ``n`` tokens are available (0 if now)."""
        ...

    def take(self, now: float, n: int = 1) -> None:
        """Take ``n`` tokens at ``now``; raise ValueError if they are not available."""
        ...


def _check_n_positive(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate_per_s``.

    The bucket starts full. It has no clock of its own: the first call fixes the
    reference time, and each later call refills by the time elapsed since the
    latest time seen. A ``now`` earlier than the latest time seen is treated as
    that latest time, so a clock going backwards never adds tokens.

    Attributes:
        rate_per_s: tokens added per second; > 0 and finite.
        burst: capacity of the bucket, in tokens; >= 1.

    Raises:
        ConfigError: listing every invalid argument, at construction.
    """

    __slots__ = ("_last_s", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        """Create a full bucket.

        Args:
            rate_per_s: tokens added per second; > 0 and finite.
            burst: capacity of the bucket, in tokens; >= 1.

        Raises:
            ConfigError: listing every invalid argument.
        """
        problems: list[str] = []
        if not math.isfinite(rate_per_s):
            problems.append(f"rate_per_s must be finite, got {rate_per_s!r}")
        elif rate_per_s <= 0:
            problems.append(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if burst < 1:
            problems.append(f"burst must be >= 1, got {burst!r}")
        if problems:
            raise ConfigError(problems)
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens: float = float(burst)
        self._last_s: float | None = None

    def __repr__(self) -> str:
        """Return a debugging representation."""
        return (
            f"TokenBucket(rate_per_s={self.rate_per_s!r}, burst={self.burst!r}, "
            f"tokens={self._tokens!r})"
        )

    def _refill(self, now: float) -> float:
        """Refill up to ``now`` and return the effective time (never earlier than before)."""
        if self._last_s is None or now > self._last_s:
            if self._last_s is not None:
                self._tokens = min(
                    float(self.burst), self._tokens + (now - self._last_s) * self.rate_per_s
                )
            self._last_s = now
        return self._last_s

    def _tolerance(self, now: float) -> float:
        """Return the token shortfall that still counts as available at ``now``.

        It covers float rounding only: relative rounding of the token count, plus
        what the bucket refills in a few ulps of ``now`` (far below any clock's
        resolution). Without it ``try_take(now + delay_s(now))`` could fail.
        """
        return 1e-9 * self.burst + 4.0 * math.ulp(now) * self.rate_per_s

    def _check_n(self, n: int) -> None:
        _check_n_positive(n)
        if n > self.burst:
            raise ValueError(f"n={n} exceeds burst={self.burst}: it can never be available")

    def available(self, now: float) -> float:
        """Return the number of tokens available at ``now``.

        Args:
            now: current time in seconds.

        Returns:
            A value in ``[0, burst]``.
        """
        self._refill(now)
        return self._tokens

    def try_take(self, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens if they are available at ``now``.

        Args:
            now: current time in seconds.
            n: number of tokens; 1 <= n <= burst.

        Returns:
            True if the tokens were taken, False (and nothing taken) otherwise.

        Raises:
            ValueError: if ``n < 1`` or ``n > burst``.
        """
        self._check_n(n)
        self._refill(now)
        if self._tokens + self._tolerance(now) < n:
            return False
        self._tokens = max(0.0, self._tokens - n)
        return True

    def delay_s(self, now: float, n: int = 1) -> float:
        """Return the seconds from ``now`` until ``n`` tokens are available.

        If nothing else takes tokens, ``try_take(now + delay_s(now, n), n)`` succeeds.

        Args:
            now: current time in seconds.
            n: number of tokens; 1 <= n <= burst.

        Returns:
            0.0 if ``n`` tokens are available now, the wait in seconds otherwise.

        Raises:
            ValueError: if ``n < 1`` or ``n > burst`` (the wait would be infinite).
        """
        self._check_n(n)
        effective_s = self._refill(now)
        missing = n - self._tokens
        if missing <= self._tolerance(now):
            return 0.0
        # A clock behind the latest time seen must first catch up with it.
        return (effective_s - now) + missing / self.rate_per_s

    def take(self, now: float, n: int = 1) -> None:
        """Take ``n`` tokens at ``now``.

        Args:
            now: current time in seconds.
            n: number of tokens; 1 <= n <= burst.

        Raises:
            ValueError: if ``n < 1``, ``n > burst`` or the tokens are not available
                (then nothing is taken).
        """
        if not self.try_take(now, n):
            raise ValueError(
                f"{n} token(s) not available (have {self._tokens:.6g}); "
                f"wait {self.delay_s(now, n):.6g}s"
            )


class Unlimited:
    """A pacer that always allows sending."""

    __slots__ = ()

    def __repr__(self) -> str:
        """Return a debugging representation."""
        return "Unlimited()"

    def available(self, now: float) -> float:
        """Return ``math.inf``: tokens are unlimited.

        Args:
            now: current time in seconds (not used).

        Returns:
            ``math.inf``.
        """
        return math.inf

    def try_take(self, now: float, n: int = 1) -> bool:
        """Return True: taking always succeeds.

        Args:
            now: current time in seconds (not used).
            n: number of tokens; >= 1.

        Returns:
            True.

        Raises:
            ValueError: if ``n < 1``.
        """
        _check_n_positive(n)
        return True

    def delay_s(self, now: float, n: int = 1) -> float:
        """Return 0.0: tokens are always available.

        Args:
            now: current time in seconds (not used).
            n: number of tokens; >= 1.

        Returns:
            0.0.

        Raises:
            ValueError: if ``n < 1``.
        """
        _check_n_positive(n)
        return 0.0

    def take(self, now: float, n: int = 1) -> None:
        """Do nothing: taking always succeeds.

        Args:
            now: current time in seconds (not used).
            n: number of tokens; >= 1.

        Raises:
            ValueError: if ``n < 1``.
        """
        _check_n_positive(n)
