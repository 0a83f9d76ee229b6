"""Coinbase Advanced Trade market data as the simulator speaks it.

Facts from ``/work/shared/reference/venues.md`` §4 (Coinbase's Advanced Trade
WebSocket overview, channels and rate-limit pages; ``coinbase-advanced-py``; ccxt's
copies of the doc samples); what the simulator chooses where they are silent is marked
*choice*. Topic keys are ``"<channel>:<product_id>"`` (``"market_trades:BTC-USD"``,
``"level2:ETH-USD"``, ``"ticker:BTC-USD"``); the ``heartbeats`` channel is kept per
connection, not as a topic key.

::

    -> {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2", "jwt": "..."}
    <- {"channel": "subscriptions", "client_id": "", "timestamp": "...", "sequence_num": 3,
        "events": [{"subscriptions": {"heartbeats": [], "level2": ["BTC-USD"]}}]}
    <- {"channel": "l2_data", ..., "sequence_num": 4, "events": [{"type": "snapshot",
        "product_id": "BTC-USD", "updates": [{"side": "bid", "event_time": "...",
        "price_level": "...", "new_quantity": "..."}, ...]}]}
    <- {"type": "error", "message": "Failed to subscribe"}

* Every message to a connection (replies, snapshots, stream messages, heartbeats)
  carries that connection's ``sequence_num``, from 0, one counter for all channels;
  errors carry none (*choice*, as ccxt shows them). :meth:`CoinbaseDialect.skip_sequence`
  makes the next number of every (or one) connection jump: a lost message.
* A request is refused whole with an ``error`` (*choice*: Coinbase's text is not
  documented): malformed, an unknown channel or product, a product refused by the
  simulator (``reject_topics``), more products than ``max_topics_per_message``, more
  topics than ``max_topics_per_connection``, or a ``jwt`` that ``accept_jwt`` refuses.
* ``heartbeats``: once subscribed, one message every ``heartbeat_interval_s`` (1 s at
  Coinbase) with a per-connection ``heartbeat_counter``;
  :meth:`CoinbaseDialect.pause_heartbeats` stops them (a fault).
* ``level2`` (data on ``l2_data``): a ``snapshot`` of the current book right after
  the ``subscriptions`` reply, then ``update`` events changing one existing level's
  quantity (absolute sizes), so the book never crosses. The book is kept by the
  dialect (:meth:`CoinbaseDialect.book`), so a test can compare.
* ``market_trades``: one trade per event (``trade_id`` is the topic's sequence
  number); ``ticker``: last price and best bid/offer.
* Subscribe deadline: a connection that has not subscribed within
  ``subscribe_deadline_s`` (Coinbase: 5 s) is closed with ``1000`` ``"subscribe
  deadline"`` (*choice* of code). Idle cut: with ``idle_timeout_s`` (Coinbase: channels
  close after 60-90 s without updates), a connection to which nothing was sent for
  that long is closed with ``1000 "idle"`` (*choice*: the whole connection).
* The core's inbound-rate limit (Coinbase: 8 messages per second per IP) first sends
  ``{"type": "error", "message": "rate limit exceeded"}`` (*choice*), then 1008.
* Coinbase sends no shutdown notice (a scheduled cut is UNCONFIRMED): the simulator's
  connection age limit cuts without one (:meth:`CoinbaseDialect.notice` raises: do not
  set ``notice_before_s`` nor call ``announce_shutdown``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.testing.dialects.base import Dialect, Event, VenueDialect, checked_channels

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "DEADLINE_CLOSE",
    "IDLE_CLOSE",
    "CoinbaseDialect",
]

#: Every channel the dialect serves (``heartbeats`` takes no products).
ALL_CHANNELS: tuple[str, ...] = ("heartbeats", "market_trades", "ticker", "level2")
#: The close of a connection that did not subscribe in time (a choice of code).
DEADLINE_CLOSE = (1000, "subscribe deadline")
#: The close of an idle connection (a choice).
IDLE_CLOSE = (1000, "idle")

_PRODUCT = re.compile(r"[A-Z0-9]+-[A-Z0-9]+")
_DATA_CHANNEL = {"level2": "l2_data"}
_DEPTH = 5
_STEP = 0.0001  # relative distance between book levels


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(eq=False)
class _State:
    next_seq: int = 0
    skip: int = 0
    heartbeats: bool = False
    heartbeat_counter: int = 0
    subscribed: bool = False


class CoinbaseDialect(VenueDialect):
    """Coinbase Advanced Trade (see the module docstring).

    Args:
        channels: the channels served (from :data:`ALL_CHANNELS`).
        heartbeat_interval_s: seconds between heartbeats (Coinbase: 1 s).
        subscribe_deadline_s: close a connection with no subscribe after this long
            (Coinbase: 5 s; None: never).
        idle_timeout_s: close a connection to which nothing was sent this long
            (None: never).
        accept_jwt: when set, a request whose ``jwt`` it refuses gets an error.

    Attributes:
        deadline_cuts: connections closed for not subscribing in time.
        heartbeats_sent: heartbeat messages sent.
        jwts_seen: requests that carried a ``jwt``.
        jwt_refusals: requests refused for their ``jwt``.
        errors_sent: error messages sent.
    """

    kind = Dialect.COINBASE

    def __init__(
        self,
        *,
        channels: Iterable[str] = ALL_CHANNELS,
        heartbeat_interval_s: float = 1.0,
        subscribe_deadline_s: float | None = 5.0,
        idle_timeout_s: float | None = None,
        accept_jwt: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        self.channels = checked_channels(channels, ALL_CHANNELS)
        for name, value in (("heartbeat_interval_s", heartbeat_interval_s),
                            ("subscribe_deadline_s", subscribe_deadline_s),
                            ("idle_timeout_s", idle_timeout_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0")
        self.heartbeat_interval_s = heartbeat_interval_s
        self.subscribe_deadline_s = subscribe_deadline_s
        self.idle_timeout_s = idle_timeout_s
        self.accept_jwt = accept_jwt
        self.heartbeats_paused = False
        self.deadline_cuts = 0
        self.heartbeats_sent = 0
        self.jwts_seen = 0
        self.jwt_refusals = 0
        self.errors_sent = 0
        self._books: dict[str, dict[tuple[str, str], str]] = {}
        self._base: dict[str, float] = {}

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"deadline_cuts": self.deadline_cuts, "idle_cuts": self.idle_cuts,
                "heartbeats_sent": self.heartbeats_sent, "jwts_seen": self.jwts_seen,
                "jwt_refusals": self.jwt_refusals, "errors_sent": self.errors_sent}

    def _state(self, conn: SimConnection) -> _State:
        state = conn.dialect_state
        assert isinstance(state, _State)
        return state

    # ------------------------------------------------------------ faults

    def skip_sequence(self, skip: int = 1, conn: SimConnection | int | None = None) -> int:
        """Make the next ``sequence_num`` of every open connection (or one) jump by ``skip``.

        Returns:
            How many connections will skip.
        """
        sim = self.sim
        targets = ([c for c in sim.connections if c.open] if conn is None
                   else [c for c in [sim._resolve(conn)] if c is not None and c.open])
        for target in targets:
            self._state(target).skip += skip
        sim.faults["skip_sequence"] += 1
        return len(targets)

    def pause_heartbeats(self, on: bool = True) -> None:
        """Stop (or restart) sending heartbeats on every connection."""
        if on:
            self.sim.faults["pause_heartbeats"] += 1
        self.heartbeats_paused = on

    # ------------------------------------------------------------ connections

    def opened(self, conn: SimConnection) -> None:
        """Start the subscribe deadline and the idle clock."""
        conn.dialect_state = _State()
        if self.subscribe_deadline_s is not None:
            conn._later(self.subscribe_deadline_s, lambda: self._check_deadline(conn))
        if self.idle_timeout_s is not None:
            self.close_when_idle(conn, self.idle_timeout_s, IDLE_CLOSE)

    def _check_deadline(self, conn: SimConnection) -> None:
        if conn.open and not self._state(conn).subscribed:
            self.deadline_cuts += 1
            conn.cut_reason = DEADLINE_CLOSE[1]
            conn.close(*DEADLINE_CLOSE)
            self.sim._notify()

    def rate_violation(self, conn: SimConnection) -> None:
        """An error before the core's 1008 (a choice)."""
        self._error(conn, "rate limit exceeded")

    # ------------------------------------------------------------ sending

    def _number(self, conn: SimConnection) -> int:
        state = self._state(conn)
        seq = state.next_seq + state.skip
        state.next_seq, state.skip = seq + 1, 0
        return seq

    def _send(self, conn: SimConnection, channel: str, events: list[Any]) -> None:
        """One envelope with the connection's next number (withheld when silent)."""
        sim = self.sim
        if sim._silent or conn.half_open or not conn.open:
            return
        conn.send_text(self._numbered(conn, self._envelope(channel, events)))

    @staticmethod
    def _envelope(channel: str, events: list[Any]) -> bytes:
        head = orjson.dumps({"channel": channel, "client_id": "",
                             "timestamp": _iso(int(time.time() * 1000))})
        return head[:-1] + b',"sequence_num":\x00,"events":' + orjson.dumps(events) + b"}"

    def _numbered(self, conn: SimConnection, payload: bytes) -> bytes:
        head, _, tail = payload.partition(b"\x00")
        return head + str(self._number(conn)).encode() + tail

    def frame(self, conn: SimConnection, topic: str, payload: bytes) -> bytes | None:
        """Number the envelope for ``conn`` (every message counts)."""
        return self._numbered(conn, payload)

    def _error(self, conn: SimConnection, message: str) -> None:
        self.errors_sent += 1
        self.sim._reply(conn, {"type": "error", "message": message})

    def _subscriptions(self, conn: SimConnection) -> None:
        current: dict[str, list[str]] = {}
        if self._state(conn).heartbeats:
            current["heartbeats"] = []
        for topic in sorted(conn.topics):
            channel, _, product = topic.partition(":")
            current.setdefault(channel, []).append(product)
        self._send(conn, "subscriptions", [{"subscriptions": current}])

    # ------------------------------------------------------------ requests

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``subscribe`` and ``unsubscribe``."""
        sim = self.sim
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            request = None
        kind = request.get("type") if isinstance(request, dict) else None
        channel = request.get("channel") if isinstance(request, dict) else None
        products = request.get("product_ids", []) if isinstance(request, dict) else None
        if (kind not in ("subscribe", "unsubscribe") or not isinstance(channel, str)
                or not isinstance(products, list)
                or not all(isinstance(p, str) for p in products)):
            self._error(conn, "malformed request")
            sim._notify()
            return
        assert isinstance(request, dict)
        token = request.get("jwt")
        if token is not None:
            self.jwts_seen += 1
            if self.accept_jwt is not None and not (
                    isinstance(token, str) and self.accept_jwt(token)):
                self.jwt_refusals += 1
                self._error(conn, "authentication failure")
                sim._notify()
                return
        state = self._state(conn)
        topics = [f"{channel}:{p}" for p in products]
        if kind == "unsubscribe":
            if channel == "heartbeats":
                state.heartbeats = False
            for topic in topics:
                sim._remove_topic(conn, topic)
            self._subscriptions(conn)
            sim._notify()
            return
        state.subscribed = True
        if channel not in self.channels or (channel == "heartbeats") == bool(products) or \
                any(_PRODUCT.fullmatch(p) is None or sim._refused(t)
                    for p, t in zip(products, topics, strict=True)):
            self._error(conn, "Failed to subscribe")
        elif sim._too_many_in_message(len(products)):
            self._error(conn, "too many product_ids in one request")
        elif sim._connection_full(conn, topics):
            self._error(conn, "too many subscriptions on this connection")
        elif channel == "heartbeats":
            fresh = not state.heartbeats
            state.heartbeats = True
            self._subscriptions(conn)
            if fresh:
                conn._later(self.heartbeat_interval_s, lambda: self._heartbeat(conn))
        else:
            for topic in topics:
                sim._add_topic(conn, topic)
            self._subscriptions(conn)
            if channel == "level2":
                for topic, product in zip(topics, products, strict=True):
                    self._snapshot(conn, topic, product)
        sim._notify()

    def _heartbeat(self, conn: SimConnection) -> None:
        state = self._state(conn)
        if not conn.open or not state.heartbeats:
            return
        if not self.heartbeats_paused and not self.sim._silent and not conn.half_open:
            state.heartbeat_counter += 1
            self.heartbeats_sent += 1
            now = datetime.now(tz=timezone.utc)
            self._send(conn, "heartbeats", [{
                "current_time": now.strftime("%Y-%m-%d %H:%M:%S.%f000 +0000 UTC"),
                "heartbeat_counter": state.heartbeat_counter}])
        conn._later(self.heartbeat_interval_s, lambda: self._heartbeat(conn))

    # ------------------------------------------------------------ level2

    def book(self, topic: str) -> dict[tuple[str, str], str]:
        """The simulated book of a ``level2`` topic: ``{(side, price_level): quantity}``."""
        book = self._books.get(topic)
        if book is None:
            base = self._base.setdefault(topic, self.sim._prices.get(topic) or 100.0)
            book = self._books[topic] = {}
            for i in range(_DEPTH):
                book[("bid", f"{base * (1 - _STEP * (i + 1)):.2f}")] = "1.0000"
                book[("offer", f"{base * (1 + _STEP * (i + 1)):.2f}")] = "1.0000"
        return book

    def _snapshot(self, conn: SimConnection, topic: str, product: str) -> None:
        stamp = _iso(int(time.time() * 1000))
        updates = [{"side": side, "event_time": stamp, "price_level": price,
                    "new_quantity": qty} for (side, price), qty in self.book(topic).items()]
        self._send(conn, "l2_data", [{"type": "snapshot", "product_id": product,
                                      "updates": updates}])

    # ------------------------------------------------------------ server messages

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One message of ``topic`` in the documented shape of its channel (unnumbered:
        :meth:`frame` numbers it per connection)."""
        channel, _, product = topic.partition(":")
        stamp = _iso(event.ts)
        events: list[Any]
        if channel == "market_trades":
            events = [{"type": "update", "trades": [{
                "trade_id": str(seq), "product_id": product, "price": event.px,
                "size": event.qty, "side": "BUY" if event.flip else "SELL", "time": stamp}]}]
        elif channel == "ticker":
            events = [{"type": "update", "tickers": [{
                "type": "ticker", "product_id": product, "price": event.px,
                "volume_24_h": "1000.0", "low_24_h": f"{event.price * 0.99:.2f}",
                "high_24_h": f"{event.price * 1.01:.2f}", "low_52_w": "1.00",
                "high_52_w": "100000.00", "price_percent_chg_24_h": "0.5",
                "best_bid": f"{event.price * (1 - _STEP):.2f}", "best_bid_quantity": event.qty,
                "best_ask": f"{event.price * (1 + _STEP):.2f}",
                "best_ask_quantity": event.qty}]}]
        else:  # level2: change one existing level's quantity
            book = self.book(topic)
            side = "bid" if event.flip else "offer"
            base = self._base[topic]
            level = event.number % _DEPTH + 1
            sign = -1 if side == "bid" else 1
            price = f"{base * (1 + sign * _STEP * level):.2f}"
            book[(side, price)] = event.qty
            events = [{"type": "update", "product_id": product, "updates": [{
                "side": side, "event_time": stamp, "price_level": price,
                "new_quantity": event.qty}]}]
        return self._envelope(_DATA_CHANNEL.get(channel, channel), events)

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """Coinbase has no shutdown notice.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("Coinbase sends no shutdown notice")
