"""Hyperliquid's WebSocket subscriptions as the simulator speaks them.

Facts from ``/work/shared/reference/venues.md`` §6 (the docs' "WebSocket",
"Subscriptions", "Timeouts and heartbeats" and "Rate limits" pages; third-party
captures, 3P); what the simulator chooses where they are silent is marked *choice*.
Topic keys are ``"<type>:<coin>"`` (``"trades:BTC"``, ``"l2Book:ETH"``), ``"allMids"``,
and other fields after the coin as sorted ``key=value`` pairs
(``"l2Book:BTC,nSigFigs=5"``; :func:`topic_key`). The endpoint is ``/ws``; another
path is refused with 404 (*choice*).

::

    -> {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}}
    <- {"channel": "subscriptionResponse", "data": {"method": "subscribe",
        "subscription": {"type": "trades", "coin": "BTC"}}}
    <- {"channel": "error", "data": "Already subscribed: {\\"type\\":\\"trades\\",...}"}
    <- {"channel": "error", "data": "Error parsing JSON into valid websocket request:
        <the request>"}                          (malformed, unknown type or coin)
    -> {"method": "ping"}                        <- {"channel": "pong"}

Unsubscribing what is not subscribed gets ``"Already unsubscribed: {...}"`` (*choice*,
by symmetry). A refused topic (``reject_topics``, an unknown channel type, a coin that
does not look like one) gets the parse error echoing the request (*choice*: what the
venue says for an unknown coin is unconfirmed).

Channels (``channels``; default all of :data:`ALL_CHANNELS`): ``trades`` (a list of one
trade per event; ``tid`` is a 50-bit hash, not ordered: :func:`trade_id`), ``l2Book``
(the whole book each push, ``levels = [bids, asks]``, 20 levels a side, 5 with
``fast``), ``bbo`` (``[bid, ask]``) and ``allMids`` (a mid per coin of
:data:`MID_COINS`). There is no sequence number on the wire.
:meth:`HyperliquidDialect.cross_next` and :meth:`HyperliquidDialect.rewind_next`
corrupt the next ``l2Book`` push of a topic (a crossed book; a ``time`` older than the
last push), for order-book tests. ``trade_backfill`` (3P: about 30) sends the last
trades of a coin in one ``trades`` push right after the subscribe ack.

Limits, per client IP (every simulator client is 127.0.0.1), all opt-in:

* ``max_subscriptions`` (the venue: 1000): one more gets
  ``"Cannot subscribe to more than <n> channels."`` (3P text) and is not added.
* ``message_budget=(count, window_s)`` (the venue: 2000 per minute): a message over
  it, ping included, gets ``"Cannot send more than <count> messages per minute."``
  (3P text) and is not processed (*choice*: whether the venue also disconnects is
  unconfirmed).
* ``max_connections`` (the venue: 100, or 10 per newer 3P copies): one more upgrade is
  refused with HTTP 429 (*choice*). New connections per window are the core's
  ``max_connections_per_window``.

Idle cut: with ``idle_timeout_s`` (the venue: 60 s), a connection the server sent
nothing to (data, replies or pongs) for that long is closed with ``1000 "idle"``
(*choice*: the close code is unconfirmed). Hyperliquid announces no cut: there is no
shutdown notice (its disconnects are unannounced: drop or close connections with the
core's faults).
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.testing.dialects.base import (
    Dialect,
    Event,
    SlidingWindow,
    VenueDialect,
    checked_channels,
    trade_hash,
)

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "IDLE_CLOSE",
    "MID_COINS",
    "PARSE_ERROR",
    "HyperliquidDialect",
    "topic_key",
    "trade_id",
]

#: Every channel the dialect can serve.
ALL_CHANNELS: tuple[str, ...] = ("trades", "l2Book", "bbo", "allMids")
#: The coins of an ``allMids`` push.
MID_COINS: tuple[str, ...] = ("BTC", "ETH", "SOL")
#: The close of an idle connection (a choice).
IDLE_CLOSE = (1000, "idle")
#: The start of the error for a request the venue can't read (3P text).
PARSE_ERROR = "Error parsing JSON into valid websocket request: "

_COIN = re.compile(r"(?:[A-Za-z0-9]+:)?[A-Za-z0-9]+(?:/[A-Za-z0-9]+)?|@[0-9]+")
_COINLESS = frozenset({"allMids"})
_USERS = ["0xf5d81a13c5f0a2b8d6a4e1c3b7f9e0d2a4c6b8e0",
          "0x4d20a11d9b7c5e3f1a2b4c6d8e0f1a3b5c7d9e1f"]
_BACKFILL_KEPT = 64


def topic_key(subscription: dict[str, Any]) -> str:
    """The topic key of a subscription object (``"trades:BTC"``, ``"allMids"``)."""
    kind = str(subscription.get("type"))
    coin = subscription.get("coin")
    rest = []
    for key in sorted(subscription):
        value = subscription[key]
        if key in ("type", "coin") or value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        rest.append(f"{key}={text}")
    if isinstance(coin, str):
        rest.insert(0, coin)
    return kind + (":" + ",".join(rest) if rest else "")


def trade_id(topic: str, event: int) -> int:
    """The ``tid`` of event number ``event`` of ``topic``: a 50-bit hash, not ordered."""
    return int(trade_hash(topic, event), 16) & ((1 << 50) - 1)


def _tx_hash(topic: str, event: int) -> str:
    return "0x" + hashlib.blake2b(f"tx\0{topic}\0{event}".encode(), digest_size=32).hexdigest()


class HyperliquidDialect(VenueDialect):
    """Hyperliquid (see the module docstring).

    Args:
        channels: the channel types served (from :data:`ALL_CHANNELS`).
        idle_timeout_s: close connections the server sent nothing to for this long
            (None: never).
        max_subscriptions: most subscriptions per client IP (None: no limit).
        message_budget: ``(count, window_s)``: most messages per client IP in any
            window (None: no limit).
        max_connections: most open connections per client IP (None: no limit).
        trade_backfill: trades re-sent after a ``trades`` subscribe ack (0: none).
        book_depth: levels per side of an ``l2Book`` push (``fast``: at most 5).

    Attributes:
        subscription_refusals: subscribes refused for ``max_subscriptions``.
        budget_violations: messages refused for ``message_budget``.
        connection_refusals: upgrades refused for ``max_connections``.
    """

    kind = Dialect.HYPERLIQUID

    def __init__(
        self,
        *,
        channels: Iterable[str] = ALL_CHANNELS,
        idle_timeout_s: float | None = None,
        max_subscriptions: int | None = None,
        message_budget: tuple[int, float] | None = None,
        max_connections: int | None = None,
        trade_backfill: int = 0,
        book_depth: int = 20,
    ) -> None:
        super().__init__()
        self.channels = checked_channels(channels, ALL_CHANNELS)
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be > 0 or None")
        for name, limit in (("max_subscriptions", max_subscriptions),
                            ("max_connections", max_connections)):
            if limit is not None and not (isinstance(limit, int) and limit >= 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {limit!r}")
        if message_budget is not None and not (
                message_budget[0] >= 1 and message_budget[1] > 0):
            raise ValueError("message_budget must be (count >= 1, window_s > 0)")
        if trade_backfill < 0 or book_depth < 1:
            raise ValueError("trade_backfill must be >= 0 and book_depth >= 1")
        self.idle_timeout_s = idle_timeout_s
        self.max_subscriptions = max_subscriptions
        self.message_budget = message_budget
        self.max_connections = max_connections
        self.trade_backfill = trade_backfill
        self.book_depth = book_depth
        self.subscription_refusals = 0
        self.budget_violations = 0
        self.connection_refusals = 0
        self._messages = None if message_budget is None else SlidingWindow(*message_budget)
        self._recent: dict[str, deque[dict[str, Any]]] = {}
        self._cross: set[str] = set()
        self._rewind: set[str] = set()
        self._last_time: dict[str, int] = {}

    @property
    def limit_hits(self) -> int:
        """Refusals for ``max_subscriptions``, ``message_budget`` and ``max_connections``."""
        return self.subscription_refusals + self.budget_violations + self.connection_refusals

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"idle_cuts": self.idle_cuts,
                "subscription_refusals": self.subscription_refusals,
                "budget_violations": self.budget_violations,
                "connection_refusals": self.connection_refusals}

    # ------------------------------------------------------------ test controls

    def cross_next(self, topic: str) -> None:
        """Make the next ``l2Book`` push of ``topic`` a crossed book (best bid > best ask)."""
        self._cross.add(topic)

    def rewind_next(self, topic: str) -> None:
        """Make the next ``l2Book`` push of ``topic`` carry a ``time`` older than the last."""
        self._rewind.add(topic)

    # ------------------------------------------------------------ connections

    def upgrade_status(self, path: str) -> int | None:
        """404 for a path other than ``/ws``; 429 over ``max_connections``."""
        if path.partition("?")[0].rstrip("/") != "/ws":
            return 404
        limit = self.max_connections
        if limit is not None and self.sim.current_connections >= limit:
            self.connection_refusals += 1
            return 429
        return None

    def opened(self, conn: SimConnection) -> None:
        """Start the idle clock: it runs from the last message sent to ``conn``."""
        if self.idle_timeout_s is not None:
            self.close_when_idle(conn, self.idle_timeout_s, IDLE_CLOSE)

    # ------------------------------------------------------------ requests

    def _error(self, conn: SimConnection, text: str) -> None:
        self.sim._reply(conn, {"channel": "error", "data": text})

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``ping``, ``subscribe`` and ``unsubscribe``."""
        sim = self.sim
        window = self._messages
        if window is not None and not window.take():
            self.budget_violations += 1
            self._error(conn, f"Cannot send more than {window.count} messages per minute.")
            sim._notify()
            return
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            request = None
        method = request.get("method") if isinstance(request, dict) else None
        if method == "ping":
            sim._ping_received(conn)
            sim._pong(conn, lambda: conn.send_json({"channel": "pong"}))
            return
        subscription = request.get("subscription") if isinstance(request, dict) else None
        if (method not in ("subscribe", "unsubscribe") or not isinstance(subscription, dict)
                or not isinstance(subscription.get("type"), str)):
            self._error(conn, PARSE_ERROR + data.decode("utf-8", "replace"))
            return
        assert isinstance(request, dict)
        topic = topic_key(subscription)
        echo = orjson.dumps(subscription).decode()
        if method == "unsubscribe":
            if topic not in conn.topics:
                self._error(conn, f"Already unsubscribed: {echo}")
            else:
                sim._remove_topic(conn, topic)
                sim._reply(conn, {"channel": "subscriptionResponse", "data": request})
            sim._notify()
            return
        if not self._valid(subscription, topic):
            self._error(conn, PARSE_ERROR + data.decode("utf-8", "replace"))
        elif topic in conn.topics:
            sim.duplicate_subscribes += 1
            self._error(conn, f"Already subscribed: {echo}")
        elif self._ip_full() or sim._connection_full(conn, [topic]):
            if self.max_subscriptions is not None and self._ip_full():
                self.subscription_refusals += 1
            limit = min(x for x in (self.max_subscriptions, sim.max_topics_per_connection)
                        if x is not None)
            self._error(conn, f"Cannot subscribe to more than {limit} channels.")
        else:
            sim._add_topic(conn, topic)
            sim._reply(conn, {"channel": "subscriptionResponse", "data": request})
            if subscription["type"] == "trades":
                self._backfill(conn, topic)
        sim._notify()

    def _valid(self, subscription: dict[str, Any], topic: str) -> bool:
        kind = subscription["type"]
        if kind not in self.channels or self.sim._refused(topic):
            return False
        coin = subscription.get("coin")
        if kind in _COINLESS:
            return coin is None
        return isinstance(coin, str) and _COIN.fullmatch(coin) is not None

    def _ip_full(self) -> bool:
        limit = self.max_subscriptions
        if limit is None:
            return False
        return sum(len(c.topics) for c in self.sim.connections) >= limit

    def _backfill(self, conn: SimConnection, topic: str) -> None:
        recent = list(self._recent.get(topic, ()))[-self.trade_backfill:]
        if self.trade_backfill and recent:
            self.sim._reply(conn, {"channel": "trades", "data": recent})

    # ------------------------------------------------------------ server messages

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """Hyperliquid sends no notice before a cut (leave ``notice_before_s`` unset).

        Raises:
            NotImplementedError: always (cut with ``drop``/``close_all`` instead).
        """
        raise NotImplementedError("Hyperliquid announces no cut (use drop or close_all)")

    def _side(self, price: float, sign: int, count: int, size: str) -> list[dict[str, Any]]:
        return [{"px": f"{price * (1 + sign * 0.0001 * (i + 1)):.2f}", "sz": size, "n": i + 1}
                for i in range(count)]

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One push of ``topic`` in the shape of its channel."""
        kind, _, rest = topic.partition(":")
        coin = rest.split(",")[0] if rest else ""
        if kind == "trades":
            trade = {"coin": coin, "side": "B" if event.flip else "A", "px": event.px,
                     "sz": event.qty, "time": event.ts, "hash": _tx_hash(topic, seq),
                     "tid": trade_id(topic, seq), "users": _USERS}
            if self.trade_backfill:
                self._recent.setdefault(topic, deque(maxlen=_BACKFILL_KEPT)).append(trade)
            return orjson.dumps({"channel": "trades", "data": [trade]})
        if kind == "allMids":
            mids = {c: f"{event.price * (1 + 0.01 * i):.2f}" for i, c in enumerate(MID_COINS)}
            return orjson.dumps({"channel": "allMids", "data": {"mids": mids}})
        if kind == "bbo":
            bbo = [self._side(event.price, -1, 1, event.qty)[0],
                   self._side(event.price, 1, 1, event.qty)[0]]
            return orjson.dumps({"channel": "bbo", "data": {
                "coin": coin, "time": event.ts, "bbo": bbo}})
        depth = min(self.book_depth, 5) if "fast=true" in rest else self.book_depth
        bids = self._side(event.price, -1, depth, event.qty)
        asks = self._side(event.price, 1, depth, event.qty)
        if topic in self._cross:
            self._cross.discard(topic)
            bids, asks = asks, bids
        book_time = max(event.ts, self._last_time.get(topic, 0))
        self._last_time[topic] = book_time
        if topic in self._rewind:
            self._rewind.discard(topic)
            book_time -= 1000
        return orjson.dumps({"channel": "l2Book", "data": {
            "coin": coin, "time": book_time, "levels": [bids, asks]}})
