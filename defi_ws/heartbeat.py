"""Heartbeats: how a feed proves the peer is alive, and how the answer is recognised.

A :class:`HeartbeatStrategy` says what to send every ``interval_s`` and how to
recognise the answer. Pongs are recognised in the hot path by their raw bytes (no JSON
decode), never reach the handler as data, and feed the RTT histogram. A ping left
unanswered for ``timeout_s`` ends the connection with reason PING_TIMEOUT.

* :class:`WsPing`: RFC 6455 PING/PONG control frames (most venues).
* :class:`TextPing`: text ``"ping"`` answered by ``"pong"`` (Bybit-spot/OKX style).
* :class:`JsonPing`: a JSON message answered by a JSON message, recognised by a
  byte prefix (e.g. ``{"op":"ping"}`` -> ``{"event":"pong"...``).
* :class:`NoPing`: no heartbeat (the stale clock still watches the data).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from defi_ws.errors import ConfigError

__all__ = [
    "HeartbeatKind",
    "HeartbeatStrategy",
    "JsonPing",
    "NoPing",
    "PingClock",
    "TextPing",
    "WsPing",
]


class HeartbeatKind(enum.Enum):
    """How a heartbeat travels."""

    NONE = "none"
    CONTROL = "control"  # RFC 6455 PING / PONG frames
    MESSAGE = "message"  # application messages


class HeartbeatStrategy(Protocol):
    """What the supervisor needs from a heartbeat."""

    @property
    def kind(self) -> HeartbeatKind:
        """Control frames, application messages, or none."""

    @property
    def interval_s(self) -> float:
        """Seconds between pings."""

    @property
    def timeout_s(self) -> float:
        """Seconds a ping may stay unanswered."""

    def ping_payload(self) -> bytes | str:
        """The ping to send (payload of a PING frame, or a text message)."""

    def pong_pattern(self) -> tuple[bytes, bool] | None:
        """``(bytes, exact)`` recognising an application-level pong, or None."""


def _validate(interval_s: float, timeout_s: float) -> None:
    problems = []
    if not interval_s > 0:
        problems.append(f"interval_s must be > 0, got {interval_s!r}")
    if not timeout_s > 0:
        problems.append(f"timeout_s must be > 0, got {timeout_s!r}")
    if problems:
        raise ConfigError(problems)


@dataclass(frozen=True, slots=True)
class WsPing:
    """RFC 6455 PING control frames; the peer's PONG is the answer."""

    interval_s: float = 10.0
    timeout_s: float = 10.0
    kind: HeartbeatKind = HeartbeatKind.CONTROL

    def __post_init__(self) -> None:
        _validate(self.interval_s, self.timeout_s)

    def ping_payload(self) -> bytes:
        return b"defi-ws"

    def pong_pattern(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class TextPing:
    """A text ping answered by an exact text pong (``"ping"`` / ``"pong"``)."""

    ping: str = "ping"
    pong: str = "pong"
    interval_s: float = 10.0
    timeout_s: float = 10.0
    kind: HeartbeatKind = HeartbeatKind.MESSAGE

    def __post_init__(self) -> None:
        _validate(self.interval_s, self.timeout_s)
        if not self.pong:
            raise ConfigError(["pong must not be empty"])

    def ping_payload(self) -> str:
        return self.ping

    def pong_pattern(self) -> tuple[bytes, bool]:
        return (self.pong.encode(), True)


@dataclass(frozen=True, slots=True)
class JsonPing:
    """A JSON ping; the pong is any message whose raw bytes start with ``pong_prefix``.

    Example (OKX-style business heartbeat)::

        JsonPing({"op": "ping"}, pong_prefix=b'{"event":"pong"')
    """

    message: Any
    pong_prefix: bytes
    interval_s: float = 10.0
    timeout_s: float = 10.0
    kind: HeartbeatKind = HeartbeatKind.MESSAGE

    def __post_init__(self) -> None:
        _validate(self.interval_s, self.timeout_s)
        if not self.pong_prefix:
            raise ConfigError(["pong_prefix must not be empty"])

    def ping_payload(self) -> bytes:
        return orjson.dumps(self.message)

    def pong_pattern(self) -> tuple[bytes, bool]:
        return (self.pong_prefix, False)


@dataclass(frozen=True, slots=True)
class NoPing:
    """No heartbeat."""

    interval_s: float = float("inf")
    timeout_s: float = float("inf")
    kind: HeartbeatKind = HeartbeatKind.NONE

    def ping_payload(self) -> bytes:
        return b""

    def pong_pattern(self) -> None:
        return None


class PingClock:
    """When to ping and when a ping has gone unanswered too long (sans-I/O).

    Args:
        strategy: the heartbeat in use.
    """

    def __init__(self, strategy: HeartbeatStrategy) -> None:
        self.strategy = strategy
        self.enabled = strategy.kind is not HeartbeatKind.NONE
        self._next_ping_at = float("inf")
        self._sent_at: float | None = None
        self._sent_ns = 0

    def reset(self, now: float) -> None:
        """A connection opened at ``now``: first ping after one interval."""
        self._next_ping_at = now + self.strategy.interval_s if self.enabled else float("inf")
        self._sent_at = None

    @property
    def outstanding(self) -> bool:
        """Whether a ping awaits its pong."""
        return self._sent_at is not None

    def due(self, now: float) -> bool:
        """Whether a ping should be sent now."""
        return self.enabled and self._sent_at is None and now >= self._next_ping_at

    def sent(self, now: float, now_ns: int) -> None:
        """A ping left at ``now`` (``now_ns`` on the hot path's clock)."""
        self._sent_at = now
        self._sent_ns = now_ns
        self._next_ping_at = now + self.strategy.interval_s

    def answered(self, recv_ns: int) -> int | None:
        """A pong arrived at ``recv_ns``; return the round trip in ns if one was due."""
        if self._sent_at is None:
            return None
        self._sent_at = None
        return max(0, recv_ns - self._sent_ns)

    def timed_out(self, now: float) -> bool:
        """Whether the outstanding ping has waited ``timeout_s`` or more."""
        return self._sent_at is not None and now - self._sent_at >= self.strategy.timeout_s

    def next_deadline(self) -> float | None:
        """The next time something is due (a ping or a timeout)."""
        if not self.enabled:
            return None
        if self._sent_at is not None:
            return self._sent_at + self.strategy.timeout_s
        return self._next_ping_at
