"""What the simulator core asks of a venue dialect: :class:`VenueDialect`.

:class:`~defi_ws.testing.simulator.ExchangeSimulator` owns everything venues share
(sockets, upgrades, faults, inbound-rate and connection-rate limits, connection age,
per-topic sequences, stats). A dialect owns one venue's wire protocol: which upgrade
paths mean what, how (un)subscribe requests are parsed and answered, errors,
heartbeats, shutdown notices and the shape of stream messages. Every dialect maps a
subscription to one string *topic key* per stream (``"trades.BTC"``,
``"btcusdt@trade"``, ``"trades:BTC-USDT"``); rates, sequences, faults and stats are
per key.

A dialect instance serves one simulator (:meth:`VenueDialect.attach`); it reaches the
core's shared services (replies that respect faults, topic bookkeeping, limit checks)
through ``self.sim``. The core calls, per connection::

    upgrade_status(path) -> opened(conn) -> message(conn, data)... / pong(conn, payload)
    -> [rate_violation(conn)] -> closed(conn)

and, per stream event, :meth:`VenueDialect.payload` once (or once per connection with
``SequenceScope.CONNECTION``) then :meth:`VenueDialect.frame` per subscriber.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from defi_ws.testing.simulator import ExchangeSimulator, SimConnection

__all__ = ["Dialect", "Event", "SlidingWindow", "VenueDialect", "checked_channels",
           "trade_hash"]


class Dialect(enum.Enum):
    """The wire protocol an :class:`~defi_ws.testing.simulator.ExchangeSimulator` speaks.

    Each value maps to a :class:`VenueDialect` in ``defi_ws.testing.dialects``
    (:meth:`implementation`); pass an instance instead of the enum to configure it.
    """

    #: defi-ws' generic JSON protocol (what :class:`~defi_ws.handler.JsonHandler` speaks).
    GENERIC = "generic"
    #: Binance spot market streams: ``SUBSCRIBE`` by id, raw ``trade`` events.
    BINANCE = "binance"
    #: OKX v5 public channels: per-arg acks, ``trades`` pushes, text ``ping``/``pong``.
    OKX = "okx"
    #: Binance USD-M futures market streams (``/public``, ``/market`` endpoints).
    BINANCE_USDM = "binance-usdm"
    #: Bybit v5 public streams: ``op`` requests with ``req_id``, ``success`` replies,
    #: ``{"op":"ping"}`` heartbeats (see :mod:`~defi_ws.testing.dialects.bybit`).
    BYBIT = "bybit"
    #: Coinbase Advanced Trade: one channel per subscribe, ``subscriptions`` replies,
    #: per-connection ``sequence_num``, the ``heartbeats`` channel.
    COINBASE = "coinbase"
    #: Kraken spot v2 public channels: per-symbol acks, ``{"method": "ping"}``,
    #: ``heartbeat`` messages, books with CRC32 checksums.
    KRAKEN = "kraken"
    #: Hyperliquid: ``subscriptionResponse`` acks, whole-book ``l2Book`` pushes, JSON ping.
    HYPERLIQUID = "hyperliquid"

    def implementation(self) -> VenueDialect:
        """A new dialect object with this value's defaults.

        ``GENERIC``, ``BINANCE`` and ``OKX`` keep the behaviour they always had (Binance
        spot: ``trade`` streams only, no server pings; OKX: ``trades`` only, no login);
        configure a :class:`~defi_ws.testing.dialects.BinanceDialect` or
        :class:`~defi_ws.testing.dialects.OkxDialect` for more.
        """
        from defi_ws.testing.dialects import (
            binance,
            bybit,
            coinbase,
            generic,
            hyperliquid,
            kraken,
            okx,
        )

        if self is Dialect.GENERIC:
            return generic.GenericDialect()
        if self is Dialect.BINANCE:
            return binance.BinanceDialect()
        if self is Dialect.BINANCE_USDM:
            return binance.BinanceDialect(product=binance.Product.USDM,
                                          channels=binance.ALL_CHANNELS)
        if self is Dialect.BYBIT:
            return bybit.BybitDialect()
        if self is Dialect.COINBASE:
            return coinbase.CoinbaseDialect()
        if self is Dialect.KRAKEN:
            return kraken.KrakenDialect()
        if self is Dialect.HYPERLIQUID:
            return hyperliquid.HyperliquidDialect()
        return okx.OkxDialect()


@dataclass(frozen=True, slots=True)
class Event:
    """One generated market event, before a dialect gives it its venue's shape.

    Every field is a function of the simulator's random stream and the event number,
    so one event serialised for two connections differs only in its sequence fields.

    Attributes:
        number: the event's number in its topic (global to the simulator).
        price: the price as a float (books derive their levels from it).
        px: the price, formatted.
        qty: the size, formatted.
        ts: the event time in ms since the epoch.
        flip: a coin flip (the taker side), drawn only by dialects that need one.
        per_connection: whether sequence fields are numbered per connection
            (``SequenceScope.CONNECTION``).
    """

    number: int
    price: float
    px: str
    qty: str
    ts: int
    flip: bool
    per_connection: bool


def checked_channels(channels: Iterable[str], known: Sequence[str]) -> frozenset[str]:
    """A dialect's ``channels`` argument as a set, checked against those it knows.

    Args:
        channels: the channels the dialect is asked to serve.
        known: every channel the dialect can serve.

    Returns:
        The chosen channels.

    Raises:
        ValueError: none given, or one not in ``known``.
    """
    chosen = frozenset(channels)
    unknown = chosen - set(known)
    if unknown or not chosen:
        raise ValueError(f"channels must be among {tuple(known)}, got {sorted(unknown)}")
    return chosen


def trade_hash(topic: str, event: int) -> str:
    """A unique, non-monotonic trade id for event number ``event`` of ``topic``."""
    return hashlib.blake2b(f"{topic}\0{event}".encode(), digest_size=8).hexdigest()


class SlidingWindow:
    """At most ``count`` events in any ``window_s`` (a venue's request or message budget).

    Args:
        count: events allowed per window.
        window_s: the window, in seconds of ``time.monotonic()``.
    """

    __slots__ = ("_times", "count", "window_s")

    def __init__(self, count: int, window_s: float) -> None:
        self.count = count
        self.window_s = window_s
        self._times: deque[float] = deque()

    def take(self, now: float | None = None) -> bool:
        """Count one event at ``now`` if the window has room.

        Args:
            now: ``time.monotonic()`` of the event (default: now).

        Returns:
            True if it was counted, False if the window is full (nothing counted).
        """
        now = time.monotonic() if now is None else now
        times = self._times
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) < self.count:
            times.append(now)
            return True
        return False


class VenueDialect:
    """The venue-specific half of the simulator; subclass it for a venue.

    Attributes:
        kind: the :class:`Dialect` value this class implements.
        draws_side: whether the stream generator draws :attr:`Event.flip` (kept per
            dialect so seeded streams stay what they were).
        supports_login: whether the core's ``api_key``/``api_secret`` login applies.
        idle_cuts: connections closed by :meth:`close_when_idle`.
    """

    kind: Dialect
    draws_side: ClassVar[bool] = True
    supports_login: ClassVar[bool] = False

    def __init__(self) -> None:
        self._sim: ExchangeSimulator | None = None
        self.idle_cuts = 0

    @property
    def sim(self) -> ExchangeSimulator:
        """The simulator this dialect serves."""
        if self._sim is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a simulator")
        return self._sim

    def attach(self, sim: ExchangeSimulator) -> None:
        """Serve ``sim`` (once: a dialect object holds per-simulator state).

        Raises:
            ValueError: the dialect already serves another simulator.
        """
        if self._sim is not None and self._sim is not sim:
            raise ValueError(f"this {type(self).__name__} already serves another simulator; "
                             "give each simulator its own dialect object")
        self._sim = sim

    @property
    def limit_hits(self) -> int:
        """How many times a limit only this dialect enforces was hit."""
        return 0

    def stats(self) -> dict[str, Any]:
        """The dialect's own counters (JSON-serialisable)."""
        return {}

    def problems(self, sim: ExchangeSimulator) -> list[str]:
        """Simulator options this dialect cannot honour (empty when all are fine)."""
        if sim.api_key is not None and not self.supports_login:
            return [f"login (api_key) is only supported by the GENERIC dialect, "
                    f"not {self.kind.name}"]
        return []

    # ------------------------------------------------------------ connections

    def upgrade_status(self, path: str) -> int | None:
        """None to accept an upgrade to ``path`` (query included), else an HTTP status."""
        return None

    def opened(self, conn: SimConnection) -> None:
        """An upgrade to ``conn.path`` was accepted (path subscriptions, timers)."""

    def closed(self, conn: SimConnection) -> None:
        """``conn`` is gone (its timers are already cancelled)."""

    def message(self, conn: SimConnection, data: bytes) -> None:
        """One text or binary message from the client (within the rate limit)."""
        raise NotImplementedError

    def pong(self, conn: SimConnection, payload: bytes) -> None:
        """A PONG frame from the client."""

    def rate_violation(self, conn: SimConnection) -> None:
        """``conn`` broke the inbound rate; the core closes it with 1008 after this."""

    def close_when_idle(
        self,
        conn: SimConnection,
        timeout_s: float,
        close: tuple[int, str],
        last_activity: Callable[[], float] | None = None,
    ) -> None:
        """Close ``conn`` once it has been idle for ``timeout_s`` (a venue's idle cut).

        Call it from :meth:`opened`; the check re-arms itself until the cut or the
        connection's end. Each cut counts in :attr:`idle_cuts`.

        Args:
            conn: the connection, just opened.
            timeout_s: the idle allowance.
            close: the close code and reason (the reason becomes ``conn.cut_reason``).
            last_activity: ``time.monotonic()`` of the connection's last activity as the
                venue counts it (default: the last message sent to it,
                ``conn.last_sent_at``).
        """
        def last_sent() -> float:
            return conn.last_sent_at

        since = last_sent if last_activity is None else last_activity

        def check() -> None:
            if not conn.open:
                return
            idle_s = time.monotonic() - since()
            if idle_s < timeout_s:
                conn._later(timeout_s - idle_s, check)
                return
            self.idle_cuts += 1
            conn.cut_reason = close[1]
            conn.close(*close)
            self.sim._notify()

        conn._later(timeout_s, check)

    # ------------------------------------------------------------ server messages

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """The shutdown notice for ``conn``, as a JSON-serialisable object."""
        raise NotImplementedError

    def price_key(self, topic: str) -> str:
        """The key of the price ``topic`` follows: topics with one key share one price
        (default: each topic its own)."""
        return topic

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One stream message of ``topic`` numbered ``seq``, serialised."""
        raise NotImplementedError

    def frame(self, conn: SimConnection, topic: str, payload: bytes) -> bytes | None:
        """What ``conn`` is sent for ``payload`` (e.g. an envelope); None sends nothing."""
        return payload
