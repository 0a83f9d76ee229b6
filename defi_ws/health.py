"""Connection health: RTT histogram, counters, staleness clocks and health policies.

Everything here is sans-I/O: times are arguments, nothing sleeps. The supervisor feeds
it from its watchdog tick (never per message); the hot path only bumps C counters that
:class:`Health` reads when asked.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from defi_ws.errors import ConfigError

__all__ = [
    "ErrorRateRule",
    "Health",
    "HealthRule",
    "RttHistogram",
    "RttRule",
    "StaleClock",
]

_SUB_BUCKETS = 90  # per decade: bucket width is 1/90 of the decade, <= ~11% error
_MIN_NS = 1_000  # 1 us
_MAX_NS = 60_000_000_000  # 60 s
_DECADES = 8  # 1 us .. 100 s


class RttHistogram:
    """A log-linear histogram of round-trip times from 1 us to 60 s.

    Each decade (1-10 us, 10-100 us, ...) has 90 linear buckets, so a reported
    percentile is within about 11% of the true value. Values below 1 us count in the
    first bucket, above 60 s in the last. Recording is O(1) and allocation-free.
    """

    def __init__(self) -> None:
        self._counts = [0] * (_DECADES * _SUB_BUCKETS)
        self.count = 0
        self.min_ns: int | None = None
        self.max_ns: int | None = None
        self.sum_ns = 0

    @staticmethod
    def _index(value_ns: int) -> int:
        value = min(max(value_ns, _MIN_NS), _MAX_NS)
        decade = min(int(math.log10(value)) - 3, _DECADES - 1)
        base = 10 ** (decade + 3)
        sub = int((value - base) * _SUB_BUCKETS / (9 * base))
        return decade * _SUB_BUCKETS + min(sub, _SUB_BUCKETS - 1)

    @staticmethod
    def _upper_ns(index: int) -> float:
        decade, sub = divmod(index, _SUB_BUCKETS)
        base = 10 ** (decade + 3)
        return float(base + (sub + 1) * 9 * base / _SUB_BUCKETS)

    def record(self, rtt_ns: int) -> None:
        """Add one round trip of ``rtt_ns`` nanoseconds (negative values count as 0)."""
        rtt_ns = max(0, int(rtt_ns))
        self._counts[self._index(rtt_ns)] += 1
        self.count += 1
        self.sum_ns += rtt_ns
        self.min_ns = rtt_ns if self.min_ns is None else min(self.min_ns, rtt_ns)
        self.max_ns = rtt_ns if self.max_ns is None else max(self.max_ns, rtt_ns)

    def percentile_ns(self, fraction: float) -> float | None:
        """The value below which ``fraction`` (0..1) of samples fall (bucket upper bound).

        Never above the exact maximum seen. None when empty.
        """
        if self.count == 0:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, bucket in enumerate(self._counts):
            seen += bucket
            if seen >= rank:
                assert self.max_ns is not None
                return min(self._upper_ns(index), float(self.max_ns))
        return float(self.max_ns or 0)  # pragma: no cover - rank <= count

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99, p99.9 and max in milliseconds."""
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value / 1e6, 4)

        return {
            "count": self.count,
            "p50_ms": ms(self.percentile_ns(0.50)),
            "p90_ms": ms(self.percentile_ns(0.90)),
            "p99_ms": ms(self.percentile_ns(0.99)),
            "p999_ms": ms(self.percentile_ns(0.999)),
            "max_ms": ms(None if self.max_ns is None else float(self.max_ns)),
        }

    def reset(self) -> None:
        """Forget every sample."""
        self._counts = [0] * len(self._counts)
        self.count = 0
        self.sum_ns = 0
        self.min_ns = self.max_ns = None


class StaleClock:
    """Detects a feed with no application data for ``stale_after_s``.

    The supervisor calls :meth:`observe` on each watchdog tick with the hot path's
    message counter (and per-topic counters when the handler tracks topics); a counter
    that moved means data arrived since the last tick. Detection therefore happens
    within the window plus one tick, with no timer per message.

    Args:
        stale_after_s: the window for the whole feed (None: no global check).
        topic_allowance_s: per-topic windows, overriding the global one; a topic
            mapped to None is never stale (a quiet liquidation channel).
    """

    def __init__(
        self,
        stale_after_s: float | None,
        topic_allowance_s: Mapping[str, float | None] | None = None,
    ) -> None:
        problems = []
        if stale_after_s is not None and not stale_after_s > 0:
            problems.append(f"stale_after_s must be > 0 or None, got {stale_after_s!r}")
        for topic, allowance in (topic_allowance_s or {}).items():
            if allowance is not None and not allowance > 0:
                problems.append(f"allowance for {topic!r} must be > 0 or None")
        if problems:
            raise ConfigError(problems)
        self.stale_after_s = stale_after_s
        self.topic_allowance_s = dict(topic_allowance_s or {})
        self._last_count = -1
        self._last_data_at = 0.0
        self._topic_counts: dict[str, int] = {}
        self._topic_seen_at: dict[str, float] = {}

    def reset(self, now: float) -> None:
        """A new connection started at ``now``: every clock starts over."""
        self._last_count = -1
        self._last_data_at = now
        self._topic_counts.clear()
        self._topic_seen_at.clear()

    def observe(
        self, now: float, messages: int, topic_counts: Mapping[str, int] | None = None,
        topics: tuple[str, ...] = (), last_data_at: float | None = None,
    ) -> str | None:
        """Record the counters at ``now``; return why the feed is stale, or None.

        Args:
            now: the watchdog time.
            messages: the hot path's data-message counter.
            topic_counts: per-topic message counters, when the handler tracks topics.
            topics: the confirmed topics whose clocks run.
            last_data_at: when the last data message arrived, on this clock, if known
                exactly (the hot path's receive stamp); else a moved counter means
                "data since the last call" and is dated ``now``.
        """
        if last_data_at is not None:
            self._last_count = messages
            self._last_data_at = max(self._last_data_at, last_data_at)
        elif messages != self._last_count:
            self._last_count = messages
            self._last_data_at = now
        if self.stale_after_s is not None and now - self._last_data_at >= self.stale_after_s:
            return f"no data for {now - self._last_data_at:.3f}s (window {self.stale_after_s}s)"
        if topic_counts is None:
            return None
        for topic in topics:
            allowance = self.topic_allowance_s.get(topic, self.stale_after_s)
            count = topic_counts.get(topic, 0)
            if self._topic_counts.get(topic) != count or topic not in self._topic_seen_at:
                self._topic_counts[topic] = count
                self._topic_seen_at[topic] = now
                continue
            if allowance is not None and now - self._topic_seen_at[topic] >= allowance:
                return f"no data on {topic!r} for {now - self._topic_seen_at[topic]:.3f}s"
        return None

    @property
    def enabled(self) -> bool:
        """Whether any clock is set (global or per topic)."""
        return self.stale_after_s is not None or self.per_topic

    @property
    def per_topic(self) -> bool:
        """Whether per-topic clocks are set (they need periodic observation)."""
        return any(a is not None for a in self.topic_allowance_s.values())

    def next_deadline(self) -> float | None:
        """When the global clock runs out if no data arrives (per-topic clocks are
        checked on the polling tick)."""
        if self.stale_after_s is None:
            return None
        return self._last_data_at + self.stale_after_s

    @property
    def last_data_at(self) -> float:
        """When data was last seen (watchdog resolution)."""
        return self._last_data_at


# ----------------------------------------------------------------------------- policies


class HealthRule(Protocol):
    """A health policy rule, checked on each watchdog tick."""

    def reset(self, now: float) -> None:
        """A new connection started at ``now``."""

    def check(self, now: float, rtt: RttHistogram, errors: int) -> str | None:
        """Return why the connection must be dropped (reason HEALTH_POLICY), or None.

        Args:
            now: the watchdog time.
            rtt: the current connection's RTT histogram.
            errors: handler errors on the current connection so far.
        """


@dataclass(frozen=True, slots=True)
class RttRule:
    """Drop the connection when RTT p99 exceeds ``p99_above_s`` over ``min_samples``."""

    p99_above_s: float
    min_samples: int = 20

    def __post_init__(self) -> None:
        problems = []
        if not self.p99_above_s > 0:
            problems.append("p99_above_s must be > 0")
        if self.min_samples < 1:
            problems.append("min_samples must be >= 1")
        if problems:
            raise ConfigError(problems)

    def reset(self, now: float) -> None:
        """Nothing to reset: the supervisor hands in a fresh histogram per connection."""

    def check(self, now: float, rtt: RttHistogram, errors: int) -> str | None:
        if rtt.count < self.min_samples:
            return None
        p99 = rtt.percentile_ns(0.99)
        if p99 is not None and p99 / 1e9 > self.p99_above_s:
            return f"RTT p99 {p99 / 1e6:.1f}ms above {self.p99_above_s * 1e3:.1f}ms"
        return None


class ErrorRateRule:
    """Drop the connection after more than ``max_errors`` handler errors in ``window_s``."""

    def __init__(self, max_errors: int, window_s: float) -> None:
        problems = []
        if max_errors < 0:
            problems.append("max_errors must be >= 0")
        if not window_s > 0:
            problems.append("window_s must be > 0")
        if problems:
            raise ConfigError(problems)
        self.max_errors = max_errors
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def reset(self, now: float) -> None:
        """A new connection: its error count starts at 0 at ``now``."""
        self._samples.clear()
        self._samples.append((now, 0))

    def check(self, now: float, rtt: RttHistogram, errors: int) -> str | None:
        if not self._samples:
            self._samples.append((now, 0))
        self._samples.append((now, errors))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        recent = errors - self._samples[0][1]
        if recent > self.max_errors:
            return f"{recent} handler errors in {self.window_s}s (limit {self.max_errors})"
        return None


class Health:
    """Everything observable about one feed, across its connections.

    Counters of the current connection are read live from the hot path's listener;
    those of finished connections are folded into totals when they end. Reading is a
    handful of attribute loads: it never blocks or slows the hot path.

    Attributes:
        rtt: round trips of the heartbeat (pongs), all connections.
        errors: the bounded ring of recent errors ``(ts_ns, kind, message)``.
        disconnects: disconnect count per reason.
    """

    _COUNTERS = ("frames", "messages", "bytes_received", "control_messages", "pongs",
                 "decode_errors", "callback_errors", "duplicates", "conflated")

    def __init__(self, error_ring_size: int = 64) -> None:
        self.rtt = RttHistogram()
        self.errors: deque[tuple[int, str, str]] = deque(maxlen=error_ring_size)
        self.disconnects: Counter[str] = Counter()
        self.connects = 0
        self.reconnects = 0
        self.handler_errors = 0
        self.unknown_acks = 0
        self.pings_sent = 0
        self.gaps = 0
        self.connected_at: float | None = None
        self.last_disconnect: str | None = None
        #: Receive stamps (CLOCK_MONOTONIC ns) of the last frame and the last data
        #: message of connections that ended (0: none).
        self.last_recv_ns = 0
        self.last_data_ns = 0
        self._totals = dict.fromkeys(self._COUNTERS, 0)
        self._listener: Any = None
        self._routed: Any = None

    def attach(self, listener: Any, now: float, routed: Any = None) -> None:
        """A connection opened; its listener's counters are now live.

        Args:
            listener: the connection's hot-path listener.
            now: the caller's clock.
            routed: an object whose ``routed_messages`` counts data messages that went
                through the control router (they are data: ``messages`` includes them).
        """
        self._listener = listener
        self._routed = routed
        self.connects += 1
        self.connected_at = now

    def detach(self) -> None:
        """The connection ended: fold its counters into the totals."""
        if self._listener is not None:
            for name in self._COUNTERS:
                self._totals[name] += getattr(self._listener, name)
            self.last_recv_ns = max(self.last_recv_ns, self._listener.last_recv_ns or 0)
            self.last_data_ns = max(self.last_data_ns, self._listener.last_data_ns or 0)
        if self._routed is not None:
            self._totals["messages"] += self._routed.routed_messages
        self._listener = None
        self._routed = None
        self.connected_at = None

    def counter(self, name: str) -> int:
        """A hot-path counter summed over every connection (e.g. ``"messages"``)."""
        live = getattr(self._listener, name) if self._listener is not None else 0
        if name == "messages" and self._routed is not None:
            live += self._routed.routed_messages
        return int(self._totals[name] + live)

    def snapshot(self, now: float | None = None, *, now_ns: int | None = None,
                 wall_s: float | None = None, **extra: Any) -> dict[str, Any]:
        """A plain dict, ready for JSON or logging (fields: :meth:`FeedClient.snapshot()
        <defi_ws.FeedClient.snapshot>`).

        Args:
            now: the caller's clock, for ``connected_for_s``.
            now_ns: CLOCK_MONOTONIC now in ns (the hot path's clock), for the ages of
                receive stamps; None leaves those ages out (None).
            wall_s: the wall clock (``time.time()``) at ``now``/``now_ns``, for the
                ``*_at`` timestamps; None leaves them out (None).
            extra: more fields to include (the client adds state and topics).
        """
        listener = self._listener
        data: dict[str, Any] = {name: self.counter(name) for name in self._COUNTERS}
        last_recv = max(self.last_recv_ns, 0 if listener is None else listener.last_recv_ns or 0)
        last_data = max(self.last_data_ns, 0 if listener is None else listener.last_data_ns or 0)
        connected_for = (None if now is None or self.connected_at is None
                         else round(now - self.connected_at, 3))
        decode, callback = data["decode_errors"], data["callback_errors"]
        data.update(
            connected=listener is not None,
            connected_for_s=connected_for,
            connected_at=None if connected_for is None else _wall(wall_s, connected_for),
            last_recv_ns=None if listener is None else listener.last_recv_ns,
            last_data_ns=None if listener is None else listener.last_data_ns,
            last_recv_age_s=_age_s(now_ns, last_recv),
            last_recv_at=_wall(wall_s, _age_s(now_ns, last_recv)),
            last_data_age_s=_age_s(now_ns, last_data),
            last_data_at=_wall(wall_s, _age_s(now_ns, last_data)),
            connects=self.connects,
            reconnects=self.reconnects,
            disconnects=dict(self.disconnects),
            last_disconnect=self.last_disconnect,
            handler_errors=self.handler_errors,
            errors={
                "total": self.handler_errors,
                "decode": decode,
                "callback": callback,
                "other": max(0, self.handler_errors - decode - callback),
            },
            unknown_acks=self.unknown_acks,
            pings_sent=self.pings_sent,
            gaps=self.gaps,
            rtt=self.rtt.summary_ms(),
            recent_errors=[
                {"ts_ns": ts, "at": _wall(wall_s, _age_s(now_ns, ts)),
                 "age_s": _age_s(now_ns, ts), "kind": kind, "message": message}
                for ts, kind, message in list(self.errors)[-16:]
            ],
        )
        data.update(extra)
        return data


def _age_s(now_ns: int | None, stamp_ns: int | None) -> float | None:
    """Seconds from a CLOCK_MONOTONIC stamp to ``now_ns`` (None: no stamp or no now)."""
    if now_ns is None or not stamp_ns:
        return None
    return round(max(0, now_ns - stamp_ns) / 1e9, 3)


def _wall(wall_s: float | None, age_s: float | None) -> str | None:
    """The wall-clock time ``age_s`` before ``wall_s``, ISO 8601 in UTC with ms."""
    if wall_s is None or age_s is None:
        return None
    moment = datetime.datetime.fromtimestamp(wall_s - age_s, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
