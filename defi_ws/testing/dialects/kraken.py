"""Kraken spot WebSocket v2 (public market data) as the simulator speaks it.

Facts from ``/work/shared/reference/venues.md`` §5 (Kraken's v2 API reference: book,
trade, ticker, status, heartbeat and ping pages); what the simulator chooses where they
are silent is marked *choice*. Topic keys are ``"<channel>:<symbol>"``
(``"trade:BTC/USD"``, ``"ticker:BTC/USD"``, ``"book:BTC/USD"``); a book's depth is a
property of each connection's subscription, not of the key. Any upgrade path is
accepted (*choice*: ``/v2`` is Kraken's).

::

    <- {"channel": "status", "type": "update", "data": [{"api_version": "v2",
        "connection_id": ..., "system": "online", "version": "2.0.0"}]}   (on connect)
    -> {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"],
        "depth": 10}, "req_id": 7}
    <- {"method": "subscribe", "req_id": 7, "result": {"channel": "book", "depth": 10,
        "snapshot": true, "symbol": "BTC/USD"}, "success": true, "time_in": "...",
        "time_out": "..."}                                     (one per symbol)
    <- {"error": "Currency pair not supported BTC/XYZ", "method": "subscribe",
        "req_id": 7, "success": false, "symbol": "BTC/XYZ", "time_in": ..., ...}
    -> {"method": "ping", "req_id": 8}   <- {"method": "pong", "req_id": 8, ...}
    <- {"channel": "heartbeat"}          (about once a second on a quiet subscribed
                                          connection)

Replies are written with sorted keys, as Kraken's are seen on the wire. A request
that can't be read, names an unknown channel or book depth, or carries more symbols
than ``max_topics_per_message`` is refused whole: one error without ``symbol``
(*choice* of the texts). Per symbol: ``"Currency pair not supported <symbol>"`` (a
malformed or refused symbol), ``"Already subscribed"``, ``"Exceeded maximum
subscriptions"`` (``max_topics_per_connection``, *choice* of text) and, for an
unsubscribe, ``"Subscription Not Found"``.

Channels (``channels``; default all of :data:`ALL_CHANNELS`):

* ``trade``: ``trade_id`` is the sequence number; a subscribe with ``snapshot`` (the
  default true) first gets a ``snapshot`` of the topic's last 50 trades.
* ``ticker``: a snapshot after the ack (unless ``snapshot: false``), then updates.
* ``book``: the simulator keeps one real book per symbol (10 levels a side, prices
  with 1 decimal, quantities with 8, written as JSON numbers with every digit), sends
  a ``snapshot`` of it after each ack, then one ``update`` per event (a quantity
  change, or a level replaced: one removed with ``qty`` 0 and one added), each with
  the CRC32 ``checksum`` of the top 10 levels (:func:`defi_ws.books.kraken_checksum`).
  An event skipped by :meth:`~defi_ws.testing.ExchangeSimulator.sequence_gap` is
  applied to the book but never sent: the client's book then fails its checksum.
  :meth:`KrakenDialect.corrupt_checksums` sends wrong checksums on purpose.

Heartbeat (``heartbeat_interval_s``, default 1 s): a connection with at least one
subscription to which nothing was sent for an interval gets ``{"channel":
"heartbeat"}``. Idle cut (``idle_timeout_s``, *choice*: Kraken documents none): a
connection that sent nothing (ping included) for that long is closed with
:data:`IDLE_CLOSE`. Over the core's inbound rate the client first gets
``{"Error": "Exceeded msg rate"}`` (a third-party report) before the core's 1008.
Kraken announces no cut (Cloudflare drops connections with 1006): this dialect has no
shutdown notice; use :meth:`~defi_ws.testing.ExchangeSimulator.drop` for the drop.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.books.checksum import kraken_checksum
from defi_ws.testing.dialects.base import Dialect, Event, VenueDialect, checked_channels

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "BOOK_DEPTHS",
    "BOOK_LEVELS",
    "IDLE_CLOSE",
    "KrakenDialect",
    "book_topic",
]

#: Every channel the dialect can serve.
ALL_CHANNELS: tuple[str, ...] = ("trade", "ticker", "book")
#: Depths a book subscribe may ask for.
BOOK_DEPTHS = frozenset({10, 25, 100, 500, 1000})
#: Levels per side of the simulated books.
BOOK_LEVELS = 10
#: The close of an idle connection (a choice: Kraken documents no idle cut).
IDLE_CLOSE = (1000, "idle timeout")

_SYMBOL = re.compile(r"[A-Z0-9]+/[A-Z0-9]+")
_TRADE_SNAPSHOT = 50
_PRICE_DECIMALS = 1
_QTY_DECIMALS = 8
_TICK = 10  # price ticks between simulated book levels


def book_topic(symbol: str) -> str:
    """The topic key of ``symbol``'s book (``"book:BTC/USD"``)."""
    return f"book:{symbol}"


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fixed(units: int, decimals: int) -> str:
    """``units`` of ``10**-decimals`` as fixed-point text (``150, 1`` -> ``"15.0"``)."""
    scale = 10 ** decimals
    return f"{units // scale}.{units % scale:0{decimals}d}"


def _levels_json(levels: Iterable[tuple[str, str]]) -> bytes:
    """``[{"price":<num>,"qty":<num>},...]`` with the numbers' texts kept verbatim."""
    return b"[" + b",".join(b'{"price":' + p.encode() + b',"qty":' + q.encode() + b"}"
                            for p, q in levels) + b"]"


class _Book:
    """One symbol's simulated book: integer ticks and quantity units, 10 levels a side."""

    def __init__(self, topic: str, mid_ticks: int) -> None:
        self.topic = topic
        self.applied = 0  # the last event number applied
        self.bids: dict[int, int] = {mid_ticks - _TICK * (i + 1): 10 ** 8 for i in
                                     range(BOOK_LEVELS)}
        self.asks: dict[int, int] = {mid_ticks + _TICK * (i + 1): 10 ** 8 for i in
                                     range(BOOK_LEVELS)}

    @staticmethod
    def text(price: int, qty: int) -> tuple[str, str]:
        return _fixed(price, _PRICE_DECIMALS), _fixed(qty, _QTY_DECIMALS)

    def top(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(bids best first, asks best first)`` as texts."""
        bids = [self.text(p, self.bids[p]) for p in sorted(self.bids, reverse=True)]
        asks = [self.text(p, self.asks[p]) for p in sorted(self.asks)]
        return bids, asks

    def checksum(self) -> int:
        bids, asks = self.top()
        return kraken_checksum(asks=asks, bids=bids)

    def step(self, number: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Apply event ``number``; its changes as ``(bid changes, ask changes)``."""
        rng = random.Random(f"{self.topic}\0{number}")
        bid_side = rng.random() < 0.5
        side = self.bids if bid_side else self.asks
        changes: list[tuple[str, str]] = []
        price = rng.choice(sorted(side))
        qty = rng.randint(1, 500) * 10 ** 6
        if rng.random() < 0.7:
            if side[price] == qty:
                qty += 10 ** 6  # every event changes the book
            side[price] = qty
            changes.append(self.text(price, qty))
        else:
            del side[price]
            changes.append(self.text(price, 0))
            best_bid, best_ask = max(self.bids), min(self.asks)
            if bid_side:
                low = min(side) - 3 * _TICK if side else best_ask - 20 * _TICK
                free = [p for p in range(low, best_ask) if p not in side]
            else:
                high = max(side) + 3 * _TICK if side else best_bid + 20 * _TICK
                free = [p for p in range(best_bid + 1, high + 1) if p not in side]
            new = rng.choice(free)
            side[new] = qty
            changes.append(self.text(new, qty))
        self.applied = number
        return (changes, []) if bid_side else ([], changes)


@dataclass(eq=False)
class _State:
    last_received: float = 0.0
    depths: dict[str, int] = field(default_factory=dict)  # book topic -> depth


class KrakenDialect(VenueDialect):
    """Kraken spot v2 public channels (see the module docstring).

    Args:
        channels: the channels served (from :data:`ALL_CHANNELS`).
        heartbeat_interval_s: send ``{"channel": "heartbeat"}`` to a quiet subscribed
            connection this often (None: never).
        idle_timeout_s: close connections that sent nothing this long (None: never).

    Attributes:
        heartbeats_sent: heartbeat messages sent.
        checksums_corrupted: book messages sent with a wrong checksum on purpose.
        updates_withheld: book updates applied but never sent (sequence gaps).
    """

    kind = Dialect.KRAKEN

    def __init__(
        self,
        *,
        channels: Iterable[str] = ALL_CHANNELS,
        heartbeat_interval_s: float | None = 1.0,
        idle_timeout_s: float | None = None,
    ) -> None:
        super().__init__()
        self.channels = checked_channels(channels, ALL_CHANNELS)
        for name, value in (("heartbeat_interval_s", heartbeat_interval_s),
                            ("idle_timeout_s", idle_timeout_s)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None")
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.heartbeats_sent = 0
        self.checksums_corrupted = 0
        self.updates_withheld = 0
        self._books: dict[str, _Book] = {}
        self._book_cache: dict[str, tuple[int, bytes]] = {}  # topic -> (number, payload)
        self._corrupt: dict[str, int] = {}
        self._trades: dict[str, deque[bytes]] = {}
        self._tickers: dict[str, bytes] = {}

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"heartbeats_sent": self.heartbeats_sent, "idle_cuts": self.idle_cuts,
                "checksums_corrupted": self.checksums_corrupted,
                "updates_withheld": self.updates_withheld}

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """Kraken announces no cut: do not use ``notice_before_s`` or
        ``announce_shutdown`` with this dialect.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("Kraken sends no shutdown notice (it drops connections "
                                  "unannounced): use ExchangeSimulator.drop()")

    def corrupt_checksums(self, symbol: str, count: int = 1) -> None:
        """Send the next ``count`` book messages of ``symbol`` with a wrong checksum."""
        topic = book_topic(symbol)
        self._corrupt[topic] = self._corrupt.get(topic, 0) + count

    def book_checksum(self, symbol: str) -> int | None:
        """The checksum of the simulated book of ``symbol`` now (None: no book yet)."""
        book = self._books.get(book_topic(symbol))
        return None if book is None else book.checksum()

    def _state(self, conn: SimConnection) -> _State:
        state = conn.dialect_state
        assert isinstance(state, _State)
        return state

    # ------------------------------------------------------------ connections

    def opened(self, conn: SimConnection) -> None:
        """Send ``status``; start the heartbeat and idle clocks."""
        state = conn.dialect_state = _State(last_received=time.monotonic())
        self.sim._reply(conn, {"channel": "status", "type": "update", "data": [{
            "api_version": "v2", "connection_id": 13834774380200032777 + conn.id,
            "system": "online", "version": "2.0.0"}]})
        if self.heartbeat_interval_s is not None:
            conn._later(self.heartbeat_interval_s, lambda: self._heartbeat(conn))
        if self.idle_timeout_s is not None:
            self.close_when_idle(conn, self.idle_timeout_s, IDLE_CLOSE,
                                 lambda: state.last_received)

    def _heartbeat(self, conn: SimConnection) -> None:
        interval_s = self.heartbeat_interval_s
        if not conn.open or interval_s is None:
            return
        sim = self.sim
        quiet = time.monotonic() - conn.last_sent_at >= 0.9 * interval_s
        if conn.topics and quiet and not sim._silent and not conn.half_open:
            sim._reply(conn, {"channel": "heartbeat"})
            self.heartbeats_sent += 1
        conn._later(interval_s, lambda: self._heartbeat(conn))

    def pong(self, conn: SimConnection, payload: bytes) -> None:
        """A PONG frame is traffic too (for the idle clock)."""
        if isinstance(conn.dialect_state, _State):
            conn.dialect_state.last_received = time.monotonic()

    def rate_violation(self, conn: SimConnection) -> None:
        """``{"Error": "Exceeded msg rate"}`` before the core's 1008."""
        self.sim._reply(conn, {"Error": "Exceeded msg rate"})

    # ------------------------------------------------------------ requests

    def _answer(self, conn: SimConnection, body: dict[str, Any], time_in: str) -> None:
        body["time_in"] = time_in
        body["time_out"] = _rfc3339(int(time.time() * 1000))
        self.sim._reply(conn, dict(sorted(body.items())))

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``ping``, ``subscribe`` and ``unsubscribe``."""
        sim = self.sim
        self._state(conn).last_received = time.monotonic()
        time_in = _rfc3339(int(time.time() * 1000))
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self._answer(conn, {"error": "Malformed request", "success": False}, time_in)
            sim._notify()
            return
        head: dict[str, Any] = {"method": request.get("method")}
        req_id = request.get("req_id")
        if isinstance(req_id, int) and not isinstance(req_id, bool):
            head["req_id"] = req_id
        method = head["method"]
        if method == "ping":
            sim._ping_received(conn)
            body = {"method": "pong", **({"req_id": req_id} if "req_id" in head else {})}
            sim._pong(conn, lambda: self._answer(conn, body, time_in))
            return
        params: dict[str, Any] = request.get("params") or {}
        problem = self._request_problem(method, params)
        if problem is None and method == "subscribe" and sim._too_many_in_message(
                len(params["symbol"])):
            problem = "Exceeded maximum symbols in one request"
        if problem is not None:
            self._answer(conn, {**head, "error": problem, "success": False}, time_in)
            sim._notify()
            return
        channel: str = params["channel"]
        depth = params.get("depth", 10) if channel == "book" else None
        snapshot = params.get("snapshot", True) is not False
        for symbol in params["symbol"]:
            topic = f"{channel}:{symbol}"
            result: dict[str, Any] = {"channel": channel, "symbol": symbol}
            if depth is not None:
                result["depth"] = depth
            if method == "unsubscribe":
                if topic not in conn.topics:
                    self._answer(conn, {**head, "error": "Subscription Not Found",
                                        "success": False, "symbol": symbol}, time_in)
                    continue
                sim._remove_topic(conn, topic)
                self._answer(conn, {**head, "result": dict(sorted(result.items())),
                                    "success": True}, time_in)
                continue
            error = None
            if not _SYMBOL.fullmatch(symbol) or sim._refused(topic):
                error = f"Currency pair not supported {symbol}"
            elif topic in conn.topics:
                error = "Already subscribed"
            elif sim._connection_full(conn, [topic]):
                error = "Exceeded maximum subscriptions"
            if error is not None:
                self._answer(conn, {**head, "error": error, "success": False,
                                    "symbol": symbol}, time_in)
                continue
            sim._add_topic(conn, topic)
            if depth is not None:
                self._state(conn).depths[topic] = depth
            result["snapshot"] = snapshot
            self._answer(conn, {**head, "result": dict(sorted(result.items())),
                                "success": True}, time_in)
            if snapshot:
                self._send_snapshot(conn, channel, topic)
        sim._notify()

    def _request_problem(self, method: Any, params: Any) -> str | None:
        if method not in ("subscribe", "unsubscribe"):
            return f"Method not supported {method}" if method else "Malformed request"
        if not isinstance(params, dict) or not isinstance(params.get("channel"), str):
            return "Malformed request: params.channel required"
        channel = params["channel"]
        symbols = params.get("symbol")
        if channel not in self.channels:
            return f"Channel {channel} not supported"
        if not (isinstance(symbols, list) and symbols
                and all(isinstance(s, str) for s in symbols)):
            return "Malformed request: params.symbol must be a list of symbols"
        if "depth" in params and (channel != "book" or params["depth"] not in BOOK_DEPTHS):
            return f"Invalid depth {params['depth']!r}"
        if "snapshot" in params and not isinstance(params["snapshot"], bool):
            return "Invalid snapshot"
        return None

    def _send_snapshot(self, conn: SimConnection, channel: str, topic: str) -> None:
        sim = self.sim
        if sim._silent or conn.half_open or not conn.open:
            return
        if channel == "trade":
            items = b",".join(self._trades.get(topic, ()))
            conn.send_text(b'{"channel":"trade","type":"snapshot","data":[' + items + b"]}")
        elif channel == "ticker":
            entry = self._tickers.get(topic)
            if entry is None:
                entry = self._ticker_entry(topic, sim._prices.get(topic) or 100.0,
                                           int(time.time() * 1000))
            conn.send_text(b'{"channel":"ticker","type":"snapshot","data":[' + entry + b"]}")
        else:
            book = self._book(topic)
            depth = self._state(conn).depths.get(topic, 10)
            bids, asks = book.top()
            checksum = self._checksum(topic, book)
            conn.send_text(self._book_message("snapshot", topic, bids[:depth], asks[:depth],
                                              checksum, None))

    # ------------------------------------------------------------ server messages

    def _book(self, topic: str) -> _Book:
        book = self._books.get(topic)
        if book is None:
            price = self.sim._prices.get(topic) or 50000.0
            book = self._books[topic] = _Book(topic, int(price * 10 ** _PRICE_DECIMALS))
            book.applied = self.sim.last_seq.get(topic, 0)
        return book

    def _checksum(self, topic: str, book: _Book) -> int:
        checksum = book.checksum()
        if self._corrupt.get(topic):
            self._corrupt[topic] -= 1
            self.checksums_corrupted += 1
            checksum ^= 0x5A5A5A5A
        return checksum

    @staticmethod
    def _book_message(kind: str, topic: str, bids: list[tuple[str, str]],
                      asks: list[tuple[str, str]], checksum: int, ts: str | None) -> bytes:
        symbol = topic.partition(":")[2]
        entry = (b'{"symbol":' + orjson.dumps(symbol) + b',"bids":' + _levels_json(bids)
                 + b',"asks":' + _levels_json(asks) + b',"checksum":' + str(checksum).encode())
        if ts is not None:
            entry += b',"timestamp":' + orjson.dumps(ts)
        return (b'{"channel":"book","type":' + orjson.dumps(kind) + b',"data":[' + entry
                + b"}]}")

    @staticmethod
    def _ticker_entry(topic: str, price: float, ts: int) -> bytes:
        symbol = topic.partition(":")[2]
        bid, ask = price * 0.9999, price * 1.0001
        fields = [("bid", f"{bid:.2f}"), ("bid_qty", "1.25000000"), ("ask", f"{ask:.2f}"),
                  ("ask_qty", "0.75000000"), ("last", f"{price:.1f}"),
                  ("volume", "1234.56789000"), ("vwap", f"{price * 0.998:.1f}"),
                  ("low", f"{price * 0.97:.1f}"), ("high", f"{price * 1.03:.1f}"),
                  ("change", f"{price * 0.01:.1f}"), ("change_pct", "1.01")]
        body = b",".join(b'"' + k.encode() + b'":' + v.encode() for k, v in fields)
        return (b'{"symbol":' + orjson.dumps(symbol) + b"," + body + b',"timestamp":'
                + orjson.dumps(_rfc3339(ts)) + b"}")

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One push of ``topic`` in the documented shape of its channel."""
        channel, _, symbol = topic.partition(":")
        if channel == "trade":
            entry = (b'{"symbol":' + orjson.dumps(symbol) + b',"side":'
                     + (b'"buy"' if event.flip else b'"sell"') + b',"price":'
                     + event.px.encode() + b',"qty":' + event.qty.encode()
                     + b',"ord_type":' + (b'"market"' if seq % 3 else b'"limit"')
                     + b',"trade_id":' + str(seq).encode() + b',"timestamp":'
                     + orjson.dumps(_rfc3339(event.ts)) + b"}")
            ring = self._trades.setdefault(topic, deque(maxlen=_TRADE_SNAPSHOT))
            if not event.per_connection or not ring or seq > _last_id(ring[-1]):
                ring.append(entry)
            return b'{"channel":"trade","type":"update","data":[' + entry + b"]}"
        if channel == "ticker":
            entry = self._ticker_entry(topic, event.price, event.ts)
            self._tickers[topic] = entry
            return b'{"channel":"ticker","type":"update","data":[' + entry + b"]}"
        cached = self._book_cache.get(topic)
        if cached is not None and cached[0] == event.number:
            return cached[1]  # the same event for another connection
        book = self._book(topic)
        for number in range(book.applied + 1, event.number):
            book.step(number)  # skipped (a sequence gap): applied, never sent
            self.updates_withheld += 1
        bids, asks = book.step(event.number)
        message = self._book_message("update", topic, bids, asks, self._checksum(topic, book),
                                     _rfc3339(event.ts))
        self._book_cache[topic] = (event.number, message)
        return message


def _last_id(entry: bytes) -> int:
    ident = orjson.loads(entry)["trade_id"]
    return int(ident)
