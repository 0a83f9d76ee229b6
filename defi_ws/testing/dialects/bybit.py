"""Bybit v5 WebSocket streams as the simulator speaks them.

Facts from ``/work/shared/reference/venues.md`` §2 (Bybit's "Connect", orderbook, trade
and ticker pages, ``bybit-exchange/pybit``); what the simulator chooses where they are
silent is marked *choice*. Topic keys are Bybit's topics themselves
(``"publicTrade.BTCUSDT"``, ``"orderbook.50.BTCUSDT"``, ``"tickers.BTCUSDT"``, the
private ``"order"``).

One simulator serves one public product (``product``, default spot) on
``/v5/public/<product>`` (any path outside ``/v5/`` is that product too, *choice*, so
``sim.url`` works), plus ``/v5/private``; another product's path is refused with
HTTP 404 (*choice*). Replies follow the product, as the docs show them::

    -> {"req_id": "7", "op": "subscribe", "args": ["publicTrade.BTCUSDT"]}
    <- {"success": true, "ret_msg": "subscribe", "conn_id": "...", "req_id": "7",
        "op": "subscribe"}                          (spot; linear/inverse: ret_msg "")
    <- {"success": true, "conn_id": "...", "data": {"failTopics": [], "successTopics":
        [...]}, "type": "COMMAND_RESP"}             (option, spread: per topic)
    <- {"success": false, "ret_msg": "error:handler not found,topic:tickers.NOPE",
        "conn_id": "...", "req_id": "7", "op": "subscribe"}
    -> {"op": "ping"}
    <- {"success": true, "ret_msg": "pong", "conn_id": "...", "op": "ping"}   (spot)
    <- {"args": ["<ms>"], "op": "pong"}                                    (option, spread)
    <- {"req_id": "...", "op": "pong", "args": ["<ms>"], "conn_id": "..."}  (private)
    -> {"op": "auth", "args": [api_key, expires_ms, hex(hmac_sha256(secret,
        "GET/realtime" + expires))]}
    <- {"success": true, "ret_msg": "", "op": "auth", "conn_id": "..."}

Refusals (*choice*: Bybit's behaviour with a bad topic among good ones is
unconfirmed): on spot, linear, inverse and private, a request naming an unknown topic
is refused whole, nothing of it is subscribed, and ``ret_msg`` names every unknown
topic; option and spread answer per topic (``failTopics``). The request limits are
Bybit's: at most 10 args per spot request, 21,000 characters of ``args`` per request
(every product), 2,000 topics per option connection; a request over them is refused
(``ret_msg`` *choice*) and counted in ``limit_violations`` (a limit hit). Private
topics (``order``) need a successful auth first.

Streams: ``publicTrade`` (``seq`` is the sequence number), ``tickers`` (spot and
option: snapshots; linear and inverse: a snapshot right after the ack, then deltas;
``cs`` is the sequence number), ``orderbook.{depth}`` (depths 1, 50, 200, 1000; option
25, 100): a ``snapshot`` right after the ack, then ``delta`` messages whose ``u`` is
the sequence number (so :meth:`ExchangeSimulator.sequence_gap` makes ``u`` jump);
depth 1 is snapshots only. The book is a ladder of five levels per side around the
price; each delta sets the new ladder and removes the old levels, so a book kept from
these messages is never crossed. :meth:`BybitDialect.restart_service` sends the
``u = 1`` snapshot of a service restart (``u`` counts on from 1).

Idle cut: with ``idle_timeout_s`` (Bybit: 10 minutes), a connection that sent no ping
and was sent nothing for that long is closed with ``1000 "idle"`` (*choice*: the close
is unconfirmed); ``/v5/private?max_active_time=30s`` (``30s``..``600s``, or ``1m``...)
sets it per private connection (exactly: Bybit's scanner runs every 30 s). Over the
core's inbound-rate limit nothing is sent before the core's 1008 (Bybit documents no
rate limit).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.testing.dialects.base import (
    Dialect,
    Event,
    VenueDialect,
    checked_channels,
    trade_hash,
)

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "IDLE_CLOSE",
    "MAX_ARGS_CHARS",
    "PRODUCTS",
    "BybitCredentials",
    "BybitDialect",
    "auth_sign",
    "conn_id",
]

#: Every channel the dialect can serve.
ALL_CHANNELS: tuple[str, ...] = ("publicTrade", "orderbook", "tickers", "order")
PRIVATE_CHANNELS = frozenset({"order"})
#: The close of an idle connection (a choice).
IDLE_CLOSE = (1000, "idle")
#: Most characters of one request's ``args`` array.
MAX_ARGS_CHARS = 21_000
SPOT_MAX_ARGS = 10
OPTION_MAX_TOPICS = 2000
_LEVELS = 5

_SYMBOL = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")
_ACTIVE_TIME = re.compile(r"max_active_time=(\d+)([sm])")


#: The public products a simulator can serve (``/v5/public/<product>``).
PRODUCTS: tuple[str, ...] = ("spot", "linear", "inverse", "option", "spread")


_DEPTHS = {"option": frozenset({25, 100})}
_DEFAULT_DEPTHS = frozenset({1, 50, 200, 1000})


def conn_id(number: int) -> str:
    """A stable, UUID-shaped ``conn_id`` for a connection number (Bybit-like)."""
    digest = hashlib.blake2b(number.to_bytes(8, "big"), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def auth_sign(secret: str, expires: int) -> str:
    """Bybit's auth signature: hex(HMAC-SHA256(secret, "GET/realtime" + expires))."""
    return hmac.new(secret.encode(), f"GET/realtime{expires}".encode(),
                    hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class BybitCredentials:
    """The one API key the simulated venue accepts (the secret is never shown).

    Attributes:
        api_key: the key.
        secret: the secret the signature is keyed with.
    """

    api_key: str
    secret: str = field(repr=False)


@dataclass(eq=False)
class _State:
    private: bool = False
    last_ping: float = 0.0


@dataclass(eq=False)
class _Ladder:
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    u_base: int = 0  # u = sequence number - u_base (a restart moves it)


class BybitDialect(VenueDialect):
    """Bybit v5 (see the module docstring).

    Args:
        product: the public product served (one of :data:`PRODUCTS`).
        channels: the channels served (from :data:`ALL_CHANNELS`).
        credentials: the key an auth must be signed with (None: every auth fails).
        idle_timeout_s: close connections idle this long (None: never).
        enforce_limits: refuse requests over Bybit's request limits.

    Attributes:
        limit_violations: requests refused for Bybit's request limits (limit hits).
        restarts: service-restart snapshots sent.
    """

    kind = Dialect.BYBIT

    def __init__(
        self,
        *,
        product: str = "spot",
        channels: Iterable[str] = ("publicTrade", "orderbook", "tickers"),
        credentials: BybitCredentials | None = None,
        idle_timeout_s: float | None = None,
        enforce_limits: bool = True,
    ) -> None:
        super().__init__()
        if product not in PRODUCTS:
            raise ValueError(f"product must be among {PRODUCTS}, got {product!r}")
        self.product = product
        self.channels = checked_channels(channels, ALL_CHANNELS)
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be > 0 or None")
        self.credentials = credentials
        self.idle_timeout_s = idle_timeout_s
        self.enforce_limits = enforce_limits
        self.limit_violations = 0
        self.restarts = 0
        self._ladders: dict[str, _Ladder] = {}

    @property
    def limit_hits(self) -> int:
        """Requests refused for Bybit's request limits."""
        return self.limit_violations

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"product": self.product, "idle_cuts": self.idle_cuts,
                "limit_violations": self.limit_violations, "restarts": self.restarts}

    def _state(self, conn: SimConnection) -> _State:
        state = conn.dialect_state
        assert isinstance(state, _State)
        return state

    @property
    def _named_acks(self) -> bool:
        return self.product in ("option", "spread")

    # ------------------------------------------------------------ connections

    def upgrade_status(self, path: str) -> int | None:
        """404 for a ``/v5/`` path of another product."""
        route = path.partition("?")[0].rstrip("/")
        if not route.startswith("/v5/"):
            return None
        if route in ("/v5/private", f"/v5/public/{self.product}"):
            return None
        return 404

    def opened(self, conn: SimConnection) -> None:
        """Note the endpoint; start the idle clock."""
        route, _, query = conn.path.partition("?")
        private = route.rstrip("/") == "/v5/private"
        idle_s = self.idle_timeout_s
        active = _ACTIVE_TIME.search(query) if private else None
        if active is not None:
            idle_s = min(600.0, max(30.0, float(active.group(1))
                                    * (60 if active.group(2) == "m" else 1)))
        state = conn.dialect_state = _State(private=private, last_ping=time.monotonic())
        if idle_s is not None:
            self.close_when_idle(conn, idle_s, IDLE_CLOSE,
                                 lambda: max(state.last_ping, conn.last_sent_at))

    # ------------------------------------------------------------ requests

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``ping``, ``auth``, ``subscribe`` and ``unsubscribe``."""
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            self._refuse(conn, {}, "subscribe", "error:unmarshal request failed")
            return
        req_id = request.get("req_id")
        head = {"req_id": req_id} if isinstance(req_id, str) else {}
        op = request.get("op")
        args = request.get("args")
        if op == "ping":
            self._ping(conn, head)
        elif op == "auth":
            self._auth(conn, head, args)
        elif op in ("subscribe", "unsubscribe") and isinstance(args, list) and args \
                and all(isinstance(a, str) for a in args):
            if op == "unsubscribe":
                self._unsubscribe(conn, head, args)
            else:
                self._subscribe(conn, head, args)
        else:
            self._refuse(conn, head, str(op), f"error:invalid request,op:{op}")

    def _ping(self, conn: SimConnection, head: dict[str, Any]) -> None:
        sim = self.sim
        sim._ping_received(conn)
        self._state(conn).last_ping = time.monotonic()
        cid = conn_id(conn.id)
        if self._state(conn).private:
            pong: dict[str, Any] = {**head, "op": "pong",
                                    "args": [str(int(time.time() * 1000))], "conn_id": cid}
        elif self._named_acks:
            pong = {"args": [str(int(time.time() * 1000))], "op": "pong"}
        elif self.product == "spot":
            pong = {"success": True, "ret_msg": "pong", "conn_id": cid, **head, "op": "ping"}
        else:
            pong = {"success": True, "ret_msg": "pong", "conn_id": cid,
                    "req_id": head.get("req_id", ""), "op": "ping"}
        sim._pong(conn, lambda: conn.send_json(pong))

    def _result(self, conn: SimConnection, head: dict[str, Any], op: str, ok: bool,
                ret_msg: str) -> dict[str, Any]:
        cid = conn_id(conn.id)
        if self._state(conn).private or op == "auth":
            return {"success": ok, "ret_msg": ret_msg, **head, "op": op, "conn_id": cid}
        if self.product == "spot":
            return {"success": ok, "ret_msg": ret_msg or op, "conn_id": cid, **head, "op": op}
        return {"success": ok, "ret_msg": ret_msg, "conn_id": cid,
                "req_id": head.get("req_id", ""), "op": op}

    def _refuse(self, conn: SimConnection, head: dict[str, Any], op: str, why: str) -> None:
        self.sim._reply(conn, self._result(conn, head, op, False, why))
        self.sim._notify()

    def _auth(self, conn: SimConnection, head: dict[str, Any], args: Any) -> None:
        sim = self.sim
        creds = self.credentials
        why = ""
        if not (isinstance(args, list) and len(args) == 3 and isinstance(args[1], int)):
            why = "Params Error"
        elif sim._reject_auth or creds is None or args[0] != creds.api_key:
            why = "error:Request not authorized"
        elif args[1] < time.time() * 1000:
            why = "error:request expired"
        elif not hmac.compare_digest(str(args[2]), auth_sign(creds.secret, args[1])):
            why = "error:signature verification failed"
        if why:
            sim.logins_failed += 1
        else:
            sim.logins_ok += 1
            conn.logged_in = True
        sim._reply(conn, self._result(conn, head, "auth", not why, why))
        sim._notify()

    def _unsubscribe(self, conn: SimConnection, head: dict[str, Any], args: list[str]) -> None:
        sim = self.sim
        for topic in args:
            sim._remove_topic(conn, topic)
        if self._named_acks:
            sim._reply(conn, {"success": True, "conn_id": conn_id(conn.id), "data": {
                "failTopics": [], "successTopics": args}, "type": "COMMAND_RESP"})
        else:
            sim._reply(conn, self._result(conn, head, "unsubscribe", True, ""))
        sim._notify()

    def _over_limits(self, conn: SimConnection, args: list[str]) -> str | None:
        if self.sim._too_many_in_message(len(args)):
            return f"error:too many args in one request,args:{len(args)}"
        if not self.enforce_limits:
            return None
        why = None
        if self.product == "spot" and len(args) > SPOT_MAX_ARGS:
            why = f"error:args size >{SPOT_MAX_ARGS},args:{len(args)}"
        elif len(orjson.dumps(args)) > MAX_ARGS_CHARS:
            why = f"error:args length >{MAX_ARGS_CHARS}"
        elif self.product == "option" and not self._state(conn).private and \
                len(conn.topics | set(args)) > OPTION_MAX_TOPICS:
            why = f"error:more than {OPTION_MAX_TOPICS} topics on this connection"
        if why is not None:
            self.limit_violations += 1
        return why

    def _subscribe(self, conn: SimConnection, head: dict[str, Any], args: list[str]) -> None:
        sim = self.sim
        over = self._over_limits(conn, args)
        if over is not None:
            if self._named_acks:
                self._command_resp(conn, [], args, over)
            else:
                self._refuse(conn, head, "subscribe", over)
            return
        problems = {topic: why for topic in args
                    if (why := self._problem(conn, topic)) is not None}
        good = [t for t in args if t not in problems]
        if good and sim._connection_full(conn, good):
            problems.update((t, "error:too many topics on this connection") for t in good)
            good = []
        if self._named_acks:
            for topic in good:
                self._add(conn, topic)
            self._command_resp(conn, good, list(problems),
                               "; ".join(sorted(set(problems.values()))))
            self._after_ack(conn, good)
            return
        if problems:
            first = sorted(set(problems.values()))[0]
            named = ",".join(f"topic:{t}" for t in problems)
            self._refuse(conn, head, "subscribe", f"{first.partition(',topic:')[0]},{named}")
            return
        for topic in good:
            self._add(conn, topic)
        sim._reply(conn, self._result(conn, head, "subscribe", True, ""))
        self._after_ack(conn, good)
        sim._notify()

    def _command_resp(self, conn: SimConnection, ok: list[str], failed: list[str],
                      why: str) -> None:
        reply: dict[str, Any] = {"success": not failed, "conn_id": conn_id(conn.id),
                                 "data": {"failTopics": failed, "successTopics": ok},
                                 "type": "COMMAND_RESP"}
        if failed:
            reply["ret_msg"] = why
        self.sim._reply(conn, reply)
        self.sim._notify()

    def _add(self, conn: SimConnection, topic: str) -> None:
        sim = self.sim
        if conn.login_before_subscribe is None and self._state(conn).private:
            conn.login_before_subscribe = conn.logged_in
        sim._add_topic(conn, topic)

    def _problem(self, conn: SimConnection, topic: str) -> str | None:
        channel, _, rest = topic.partition(".")
        private = self._state(conn).private
        if channel in PRIVATE_CHANNELS:
            valid = channel in self.channels and not rest and private
            if valid and not conn.logged_in:
                return "error:Request not authorized"
        else:
            valid = channel in self.channels and not private and self._public_ok(channel, rest)
        if not valid or self.sim._refused(topic):
            return f"error:handler not found,topic:{topic}"
        return None

    def _public_ok(self, channel: str, rest: str) -> bool:
        if channel == "orderbook":
            depth, _, symbol = rest.partition(".")
            depths = _DEPTHS.get(self.product, _DEFAULT_DEPTHS)
            return depth.isdigit() and int(depth) in depths and bool(_SYMBOL.fullmatch(symbol))
        return _SYMBOL.fullmatch(rest) is not None

    def _after_ack(self, conn: SimConnection, topics: list[str]) -> None:
        """The snapshot that follows a subscribe ack (books, derivatives' tickers)."""
        for topic in topics:
            if topic.startswith("orderbook."):
                self._book_snapshot(conn, topic)
            elif topic.startswith("tickers.") and self.product in (
                    "linear", "inverse"):
                seq = self._current(conn, topic)
                price = self.sim._prices.get(topic) or 100.0
                self.sim._reply(conn, self._ticker(topic, "snapshot", seq, price,
                                                   f"{price:.2f}", "1.0",
                                                   int(time.time() * 1000)))

    # ------------------------------------------------------------ server messages

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """Bybit documents no shutdown notice: none is sent (a choice)."""
        raise NotImplementedError("Bybit documents no shutdown notice")

    def _current(self, conn: SimConnection, topic: str) -> int:
        sim = self.sim
        return (conn.last_seq.get(topic, 0) if sim._per_connection()
                else sim.last_seq.get(topic, 0))

    def _ladder(self, topic: str, price: float, qty: str) -> tuple[dict[str, str],
                                                                    dict[str, str]]:
        bids = {f"{price * (1 - 0.0001 * (i + 1)):.2f}": qty for i in range(_LEVELS)}
        asks = {f"{price * (1 + 0.0001 * (i + 1)):.2f}": qty for i in range(_LEVELS)}
        return bids, asks

    @staticmethod
    def _sorted(levels: dict[str, str], descending: bool) -> list[list[str]]:
        return [[p, s] for p, s in sorted(levels.items(), key=lambda kv: float(kv[0]),
                                          reverse=descending)]

    def _book_message(self, topic: str, kind: str, u: int, seq: int,
                      bids: dict[str, str], asks: dict[str, str], ts: int) -> dict[str, Any]:
        symbol = topic.rsplit(".", 1)[1]
        return {"topic": topic, "type": kind, "ts": ts, "data": {
            "s": symbol, "b": self._sorted(bids, True), "a": self._sorted(asks, False),
            "u": u, "seq": seq * 7 + 1000}, "cts": ts - 2}

    def _book_snapshot(self, conn: SimConnection, topic: str) -> None:
        ladder = self._ladders.get(topic)
        if ladder is None:
            price = self.sim._prices.get(topic) or 100.0
            ladder = self._ladders[topic] = _Ladder(*self._ladder(topic, price, "1.0"))
        seq = self._current(conn, topic)
        bids, asks = ladder.bids, ladder.asks
        if topic.startswith("orderbook.1."):
            bids, asks = dict([max(bids.items(), key=lambda kv: float(kv[0]))]), \
                dict([min(asks.items(), key=lambda kv: float(kv[0]))])
        self.sim._reply(conn, self._book_message(topic, "snapshot", seq - ladder.u_base, seq,
                                                 bids, asks, int(time.time() * 1000)))

    def restart_service(self, topic: str) -> int:
        """Send every subscriber of book ``topic`` the ``u = 1`` snapshot of a restart.

        Returns:
            The number of connections it was sent to.
        """
        sim = self.sim
        ladder = self._ladders.setdefault(topic, _Ladder())
        ladder.u_base = sim.last_seq.get(topic, 0) - 1
        self.restarts += 1
        subs = [c for c in sim.connections if topic in c.topics and c.open]
        for conn in subs:
            self._book_snapshot(conn, topic)
        sim._notify()
        return len(subs)

    def _ticker(self, topic: str, kind: str, seq: int, price: float, px: str, qty: str,
                ts: int) -> dict[str, Any]:
        symbol = topic.partition(".")[2]
        if self.product == "spot":
            return {"topic": topic, "ts": ts, "type": "snapshot", "cs": seq, "data": {
                "symbol": symbol, "lastPrice": px, "highPrice24h": f"{price * 1.02:.2f}",
                "lowPrice24h": f"{price * 0.98:.2f}", "prevPrice24h": f"{price:.2f}",
                "volume24h": qty, "turnover24h": qty, "price24hPcnt": "0.0001"}}
        if self._named_acks:
            return {"id": f"{topic}-{seq}-{ts}", "topic": topic, "ts": ts, "data": {
                "symbol": symbol, "bidPrice": f"{price * 0.999:.2f}", "bidSize": qty,
                "askPrice": f"{price * 1.001:.2f}", "askSize": qty, "lastPrice": px},
                "type": "snapshot"}
        return {"topic": topic, "type": kind, "data": {
            "symbol": symbol, "lastPrice": px, "bid1Price": f"{price * 0.9999:.2f}",
            "bid1Size": qty, "ask1Price": f"{price * 1.0001:.2f}", "ask1Size": qty},
            "cs": seq, "ts": ts}

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One push of ``topic`` in the documented shape of its channel."""
        channel, _, rest = topic.partition(".")
        if channel == "publicTrade":
            trade: dict[str, Any] = {
                "T": event.ts, "s": rest, "S": "Buy" if event.flip else "Sell",
                "v": event.qty, "p": event.px}
            if self.product != "spot":
                trade["L"] = "PlusTick" if event.flip else "MinusTick"
            trade.update({"i": trade_hash(topic, event.number), "BT": False, "seq": seq})
            return orjson.dumps({"topic": topic, "type": "snapshot", "ts": event.ts,
                                 "data": [trade]})
        if channel == "tickers":
            return orjson.dumps(self._ticker(topic, "delta", seq, event.price, event.px,
                                             event.qty, event.ts))
        if channel == "orderbook":
            ladder = self._ladders.setdefault(topic, _Ladder())
            bids, asks = self._ladder(topic, event.price, event.qty)
            u = seq - ladder.u_base
            if rest.startswith("1."):
                best_bid = max(bids.items(), key=lambda kv: float(kv[0]))
                best_ask = min(asks.items(), key=lambda kv: float(kv[0]))
                ladder.bids, ladder.asks = bids, asks
                return orjson.dumps(self._book_message(
                    topic, "snapshot", u, seq, dict([best_bid]), dict([best_ask]), event.ts))
            delta_b = {**{p: "0" for p in ladder.bids if p not in bids}, **bids}
            delta_a = {**{p: "0" for p in ladder.asks if p not in asks}, **asks}
            ladder.bids, ladder.asks = bids, asks
            return orjson.dumps(self._book_message(topic, "delta", u, seq, delta_b, delta_a,
                                                   event.ts))
        # the private "order" stream
        order = {"category": self.product, "symbol": "BTCUSDT", "orderId": str(seq),
                 "side": "Buy" if event.flip else "Sell", "price": event.px,
                 "qty": event.qty, "orderStatus": "New", "updatedTime": str(event.ts)}
        return orjson.dumps({"id": f"{seq}", "topic": topic, "creationTime": event.ts,
                             "data": [order]})
