"""OKX v5 WebSocket channels as the simulator speaks them.

Facts from ``/work/shared/reference/venues.md`` §3 (OKX's v5 docs as quoted there and
``okxapi/python-okx``); what the simulator chooses where they are silent is marked
*choice*. Topic keys are ``"<channel>:<instId>"`` (``"trades:BTC-USDT"``), or for args
without an ``instId`` the channel followed by the other fields, sorted:
``"orders:instType=ANY"`` (:func:`topic_key`).

Endpoints: ``/ws/v5/public``, ``/ws/v5/private`` and ``/ws/v5/business``; any other
path is public (*choice*, kept from the first version of this dialect). Private
channels (``orders``) exist only on ``/private`` and need a login first.

::

    -> {"id": "7", "op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
    <- {"id": "7", "event": "subscribe", "arg": {"channel": "trades",
        "instId": "BTC-USDT"}, "connId": "..."}      (one per arg; "id" only when sent)
    <- {"id": "7", "event": "error", "code": "60018", "msg": "Wrong URL or channel:...",
        "connId": "..."}                           (unknown channel or instrument)
    -> {"op": "login", "args": [{"apiKey": k, "passphrase": p, "timestamp": "<s>",
        "sign": base64(hmac_sha256(secret, ts + "GET" + "/users/self/verify"))}]}
    <- {"event": "login", "code": "0", "msg": "", "connId": "..."}
    <- {"event": "error", "code": "60009", "msg": "Login failed.", "connId": "..."}
    -> ping            <- pong
    <- {"event": "notice", "code": "64008", "msg": "The connection will soon be closed
        for a service upgrade. Please reconnect.", "connId": "..."}

Malformed requests get ``60012``; a private channel before login ``60011``; a login
with a timestamp more than 30 s from now ``60006`` (*choice* of window); requests
over ``request_budget`` (subscribe, unsubscribe and login: OKX allows 480 an hour
per connection) ``60014`` and are not processed (*choice*: the consequence is
unconfirmed); the inbound-rate limit of the core sends ``60014`` before its 1008.

Channels (``channels``; default ``("trades",)``, what this dialect always spoke):
``trades`` (``tradeId`` and ``seqId`` are the sequence number), ``bbo-tbt`` and
``books5`` (the best 1 or 5 levels of each side, ``seqId``), ``books`` (a ``snapshot``
with ``prevSeqId: -1`` right after each subscribe ack, then ``update`` pushes chained
by ``prevSeqId``/``seqId``), and the private ``orders``. The channels of one
instrument follow one price (:meth:`OkxDialect.price_key`), so trades and books agree.

Books: each book topic (``books:BTC-USDT``, ``bbo-tbt:BTC-USDT``...) holds a
:class:`~defi_ws.testing.book.SimulatedBook` of 40 levels a side around that price,
never crossed. A ``books`` snapshot is the whole of it; each update lists exactly the
levels that changed, with absolute sizes, ``"0"`` for a level removed, so a client
that applies them holds the simulator's book (:meth:`OkxDialect.book_levels`). Each
``books`` message carries OKX's documented ``checksum``, the signed CRC32 of the top
25 levels (:func:`defi_ws.books.checksum.okx_checksum`) after it; with
``checksums=False`` it is always 0, as OKX sends it since 2026-06-23.
:meth:`OkxDialect.checksum_fault` makes the next updates carry a wrong one (the book
stays right: a client must resync). ``sequence_gap`` skips a ``seqId``: the update's
``prevSeqId`` is then one never sent.

Idle cut: with ``idle_timeout_s`` (OKX: 30 s), a connection to which nothing was sent
(data, replies or pongs) and which made no subscribe for that long is closed with
``1000 "idle"`` (*choice*: the close code is unconfirmed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.books.checksum import OKX_CHECKSUM_LEVELS, okx_checksum
from defi_ws.testing.book import BookChange, SimulatedBook
from defi_ws.testing.dialects.base import (
    Dialect,
    Event,
    SlidingWindow,
    VenueDialect,
    checked_channels,
)

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "IDLE_CLOSE",
    "NOTICE_MSG",
    "OkxCredentials",
    "OkxDialect",
    "conn_id",
    "login_sign",
    "topic_key",
]

#: Every channel the dialect can serve.
ALL_CHANNELS: tuple[str, ...] = ("trades", "bbo-tbt", "books5", "books", "orders")
#: The book channels and the levels a side each push shows (None: the changes).
_BOOK_DEPTHS: dict[str, int | None] = {"bbo-tbt": 1, "books5": 5, "books": None}
PRIVATE_CHANNELS = frozenset({"orders"})
NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."
#: The close of an idle connection (a choice).
IDLE_CLOSE = (1000, "idle")

_INST_ID = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)+")
_INST_TYPES = frozenset({"SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION", "ANY"})
_LOGIN_WINDOW_S = 30.0


def conn_id(number: int) -> str:
    """A stable 8-hex-digit ``connId`` for a connection number (OKX-like)."""
    return f"{(number * 0x9E3779B1) & 0xFFFFFFFF:08x}"


def login_sign(secret: str, timestamp: str) -> str:
    """OKX's login signature: Base64(HMAC-SHA256(secret, ts + "GET/users/self/verify"))."""
    digest = hmac.new(secret.encode(), f"{timestamp}GET/users/self/verify".encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def topic_key(arg: dict[str, Any]) -> str:
    """The topic key of a channel arg (``"trades:BTC-USDT"``, ``"orders:instType=ANY"``)."""
    channel = str(arg.get("channel"))
    rest = {k: v for k, v in arg.items() if k not in ("channel", "uid")}
    if not rest:
        return channel
    if set(rest) == {"instId"}:
        return f"{channel}:{rest['instId']}"
    return channel + ":" + ",".join(f"{k}={rest[k]}" for k in sorted(rest))


def _arg_of(topic: str) -> dict[str, str]:
    channel, _, rest = topic.partition(":")
    arg = {"channel": channel}
    if not rest:
        return arg
    if "=" not in rest:
        arg["instId"] = rest
        return arg
    for part in rest.split(","):
        key, _, value = part.partition("=")
        arg[key] = value
    return arg


@dataclass(frozen=True, slots=True)
class OkxCredentials:
    """The one API key the simulated venue accepts (never shown in reprs).

    Attributes:
        api_key: the key.
        secret: the secret the signature is keyed with.
        passphrase: the key's passphrase.
    """

    api_key: str
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)


@dataclass(eq=False)
class _TopicBook:
    """One book topic's book and the push of its last event (one event, one change,
    however many connections it is serialised for)."""

    model: SimulatedBook
    event: int = -1
    bids: list[list[str]] = field(default_factory=list)
    asks: list[list[str]] = field(default_factory=list)
    checksum: int = 0


def _okx_levels(levels: BookChange) -> list[list[str]]:
    """``[px, sz, "0", orders]`` lists (OKX's third field is deprecated, always "0")."""
    text = SimulatedBook.price_text
    return [[text(tick), size, "0", "0" if size == "0" else str(1 + tick % 4)]
            for tick, size in levels]


def _wrong(checksum: int) -> int:
    """A checksum that is not ``checksum`` and not 0 (0 is not verified)."""
    return (checksum ^ 1) or 3


@dataclass(eq=False)
class _State:
    endpoint: str = "public"
    last_activity: float = 0.0
    requests: SlidingWindow | None = None


class OkxDialect(VenueDialect):
    """OKX v5 (see the module docstring).

    Args:
        channels: the channels served (from :data:`ALL_CHANNELS`).
        credentials: the key a login must be signed with (None: every login fails).
        idle_timeout_s: close connections idle this long (None: never).
        request_budget: ``(count, window_s)``: most subscribe, unsubscribe and login
            requests per connection in any window (None: no limit).
        checksums: send the CRC32 ``checksum`` of ``books`` messages (default); False
            sends 0, as OKX does since 2026-06-23.

    Attributes:
        checksums: as given.
        logins_ok: successful logins (also counted in the simulator's ``logins_ok``).
        budget_violations: requests refused for ``request_budget`` (a limit hit).
    """

    kind = Dialect.OKX

    def __init__(
        self,
        *,
        channels: Iterable[str] = ("trades",),
        credentials: OkxCredentials | None = None,
        idle_timeout_s: float | None = None,
        request_budget: tuple[int, float] | None = None,
        checksums: bool = True,
    ) -> None:
        super().__init__()
        self.channels = checked_channels(channels, ALL_CHANNELS)
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be > 0 or None")
        if request_budget is not None and not (
                request_budget[0] >= 1 and request_budget[1] > 0):
            raise ValueError("request_budget must be (count >= 1, window_s > 0)")
        self.credentials = credentials
        self.idle_timeout_s = idle_timeout_s
        self.request_budget = request_budget
        self.checksums = checksums
        self.budget_violations = 0
        self._books: dict[str, _TopicBook] = {}
        self._bad_checksums: dict[str, int] = {}

    @property
    def limit_hits(self) -> int:
        """Requests refused for ``request_budget``."""
        return self.budget_violations

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"idle_cuts": self.idle_cuts, "budget_violations": self.budget_violations}

    def _state(self, conn: SimConnection) -> _State:
        state = conn.dialect_state
        assert isinstance(state, _State)
        return state

    # ------------------------------------------------------------ connections

    def opened(self, conn: SimConnection) -> None:
        """Note the endpoint; start the idle clock."""
        path = conn.path.partition("?")[0].rstrip("/")
        endpoint = path.rsplit("/", 1)[-1] if path.startswith("/ws/v5/") else "public"
        budget = self.request_budget
        state = _State(endpoint=endpoint, last_activity=time.monotonic(),
                       requests=None if budget is None else SlidingWindow(*budget))
        conn.dialect_state = state
        if self.idle_timeout_s is not None:
            self.close_when_idle(conn, self.idle_timeout_s, IDLE_CLOSE,
                                 lambda: max(state.last_activity, conn.last_sent_at))

    def rate_violation(self, conn: SimConnection) -> None:
        """``60014`` before the core's 1008."""
        self._error(conn, {}, "60014", "Requests too frequent.")

    # ------------------------------------------------------------ requests

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``ping``, ``login``, ``subscribe`` and ``unsubscribe``."""
        sim = self.sim
        if data == b"ping":
            sim._ping_received(conn)
            sim._pong(conn, lambda: conn.send_text(b"pong"))
            return
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            request = None
        head: dict[str, Any] = {}
        if isinstance(request, dict) and isinstance(request.get("id"), str):
            head["id"] = request["id"]  # OKX echoes the request id first
        op = request.get("op") if isinstance(request, dict) else None
        args = request.get("args") if isinstance(request, dict) else None
        if op == "login" and isinstance(args, list) and len(args) == 1 \
                and isinstance(args[0], dict):
            if self._within_budget(conn, head):
                self._login(conn, head, args[0])
            return
        well_formed = (
            op in ("subscribe", "unsubscribe")
            and isinstance(args, list)
            and bool(args)
            and all(
                isinstance(a, dict)
                and isinstance(a.get("channel"), str)
                and all(isinstance(v, str) for v in a.values())
                and (isinstance(a.get("instId"), str) or a.get("channel") in PRIVATE_CHANNELS)
                for a in args
            )
        )
        if not well_formed:
            text = data.decode("utf-8", "replace")
            self._error(conn, head, "60012", f"Invalid request: {text}")
            return
        assert isinstance(args, list)
        if not self._within_budget(conn, head):
            return
        if op == "subscribe" and sim._too_many_in_message(len(args)):
            self._error(conn, head, "60012", "Invalid request: too many args in one request")
            sim._notify()
            return
        self._state(conn).last_activity = time.monotonic()
        for arg in args:
            topic = topic_key(arg)
            echo = dict(arg)
            if op == "unsubscribe":
                sim._remove_topic(conn, topic)
                self._reply(conn, head, {"event": "unsubscribe", "arg": echo})
                continue
            problem = self._problem(conn, arg, topic)
            if problem is not None:
                self._error(conn, head, *problem)
            elif sim._connection_full(conn, [topic]):
                self._error(conn, head, "60012",
                            "Invalid request: too many channels on this connection")
            else:
                sim._add_topic(conn, topic)
                self._reply(conn, head, {"event": "subscribe", "arg": echo})
                if arg["channel"] == "books":
                    self._snapshot(conn, topic)
        sim._notify()

    def _problem(self, conn: SimConnection, arg: dict[str, Any],
                 topic: str) -> tuple[str, str] | None:
        channel = arg["channel"]
        private = channel in PRIVATE_CHANNELS
        endpoint = self._state(conn).endpoint
        valid = channel in self.channels and not self.sim._refused(topic) and (
            arg.get("instType") in _INST_TYPES if private
            else _INST_ID.fullmatch(arg["instId"]) is not None)
        if not valid or private != (endpoint == "private"):
            where = f"instId:{arg['instId']}" if "instId" in arg else f"arg:{topic}"
            return ("60018", f"Wrong URL or channel:{channel},{where} doesn't exist. Please "
                    "use the correct URL, channel and parameters referring to API document.")
        if private and not conn.logged_in:
            return ("60011", "Please log in")
        return None

    def _within_budget(self, conn: SimConnection, head: dict[str, Any]) -> bool:
        window = self._state(conn).requests
        if window is None or window.take():
            return True
        self.budget_violations += 1
        self._error(conn, head, "60014", "Requests too frequent.")
        self.sim._notify()
        return False

    def _login(self, conn: SimConnection, head: dict[str, Any], arg: dict[str, Any]) -> None:
        sim = self.sim
        creds = self.credentials
        code, msg = "0", ""
        timestamp = arg.get("timestamp")
        if sim._reject_auth or creds is None:
            code, msg = "60009", "Login failed."
        elif not isinstance(timestamp, str) or not timestamp.isdigit():
            code, msg = "60004", "Invalid timestamp"
        elif abs(time.time() - int(timestamp)) > _LOGIN_WINDOW_S:
            code, msg = "60006", "Timestamp request expired"
        elif arg.get("apiKey") != creds.api_key:
            code, msg = "60005", "Invalid OK-ACCESS-KEY"
        elif arg.get("passphrase") != creds.passphrase:
            code, msg = "60024", "Wrong passphrase"
        elif not hmac.compare_digest(str(arg.get("sign", "")),
                                     login_sign(creds.secret, timestamp)):
            code, msg = "60007", "Invalid sign"
        if code == "0":
            sim.logins_ok += 1
            conn.logged_in = True
            self._reply(conn, head, {"event": "login", "code": "0", "msg": ""})
        else:
            sim.logins_failed += 1
            self._error(conn, head, code, msg)
        sim._notify()

    def _reply(self, conn: SimConnection, head: dict[str, Any], body: dict[str, Any]) -> None:
        self.sim._reply(conn, {**head, **body, "connId": conn_id(conn.id)})

    def _error(self, conn: SimConnection, head: dict[str, Any], code: str, msg: str) -> None:
        self._reply(conn, head, {"event": "error", "code": code, "msg": msg})

    # ------------------------------------------------------------ server messages

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """OKX's ``64008`` notice."""
        return {"event": "notice", "code": "64008", "msg": NOTICE_MSG,
                "connId": conn_id(conn.id)}

    def price_key(self, topic: str) -> str:
        """Channels of one instrument share its price (``"BTC-USDT"``)."""
        return _arg_of(topic).get("instId", topic)

    # ------------------------------------------------------------ books

    def checksum_fault(self, topic: str, count: int = 1) -> None:
        """Make the next ``count`` updates of a ``books`` topic carry a wrong checksum.

        The levels stay right, so a client that verifies checksums breaks at the first
        and resyncs (the rest reach it while it waits for its snapshot, or after); one
        that does not sees nothing. The wrong checksum is never 0
        (0 is not verified), also with ``checksums=False``. Counted in the simulator's
        ``faults["checksum"]``.

        Raises:
            ValueError: ``topic`` is not a ``books`` topic (no other channel has one).
        """
        if _arg_of(topic)["channel"] != "books" or count < 1:
            raise ValueError(f"a checksum fault needs a books topic and count >= 1, "
                             f"got {topic!r}, {count}")
        self._bad_checksums[topic] = self._bad_checksums.get(topic, 0) + count
        self.sim.faults["checksum"] += 1

    def book_levels(self, topic: str, n: int | None = OKX_CHECKSUM_LEVELS
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The simulator's book of ``topic`` as its clients should hold it.

        Args:
            topic: a book topic (``"books:BTC-USDT"``).
            n: levels per side (default: the 25 the checksum covers; None: all).

        Returns:
            ``(bids, asks)``, best first, as ``(price, size)`` texts; empty before the
            topic's first snapshot or push.
        """
        book = self._books.get(topic)
        if book is None:
            return [], []
        text = SimulatedBook.price_text
        return ([(text(tick), size) for tick, size in book.model.bids(n)],
                [(text(tick), size) for tick, size in book.model.asks(n)])

    def _book(self, topic: str, price: float) -> _TopicBook:
        book = self._books.get(topic)
        if book is None:  # its own random stream: other topics' streams stay as they were
            model = SimulatedBook(price, random.Random(f"{topic}:{price!r}"))
            book = self._books[topic] = _TopicBook(model)
        return book

    def _advance(self, topic: str, event: Event) -> _TopicBook:
        """Move ``topic``'s book by ``event`` (once, however often it is serialised)."""
        book = self._book(topic, event.price)
        if book.event == event.number:
            return book
        bids, asks = book.model.move(event.price, ask=event.flip, size=event.qty)
        book.event = event.number
        book.bids, book.asks = _okx_levels(bids), _okx_levels(asks)
        if _arg_of(topic)["channel"] == "books":
            pending = self._bad_checksums.pop(topic, 0)
            if pending > 1:
                self._bad_checksums[topic] = pending - 1
            book.checksum = (_wrong(okx_checksum(*self.book_levels(topic))) if pending
                             else self._checksum(topic))
        return book

    def _checksum(self, topic: str) -> int:
        return okx_checksum(*self.book_levels(topic)) if self.checksums else 0

    def _snapshot(self, conn: SimConnection, topic: str) -> None:
        sim = self.sim
        seq = (conn.last_seq.get(topic, 0) if sim._per_connection()
               else sim.last_seq.get(topic, 0))
        model = self._book(topic, sim._current_price(topic)).model
        book = {"asks": _okx_levels(model.asks()), "bids": _okx_levels(model.bids()),
                "ts": str(int(time.time() * 1000)), "checksum": self._checksum(topic),
                "prevSeqId": -1, "seqId": seq}
        sim._reply(conn, {"arg": _arg_of(topic), "action": "snapshot", "data": [book]})

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """One push of ``topic`` in the documented shape of its channel."""
        arg = _arg_of(topic)
        channel = arg["channel"]
        ts = str(event.ts)
        if channel == "trades":
            inst_id = arg["instId"]
            trade = {"instId": inst_id, "tradeId": str(seq), "px": event.px, "sz": event.qty,
                     "side": "buy" if event.flip else "sell", "ts": ts, "count": "1",
                     "source": "0", "seqId": seq}
            return orjson.dumps({"arg": arg, "data": [trade]})
        if channel in _BOOK_DEPTHS:
            book = self._advance(topic, event)
            depth = _BOOK_DEPTHS[channel]
            if depth is None:  # books: the changes
                update = {"asks": book.asks, "bids": book.bids, "ts": ts,
                          "checksum": book.checksum, "prevSeqId": seq - 1, "seqId": seq}
                return orjson.dumps({"arg": arg, "action": "update", "data": [update]})
            top: dict[str, Any] = {"asks": _okx_levels(book.model.asks(depth)),
                                   "bids": _okx_levels(book.model.bids(depth))}
            if channel == "books5":
                top["instId"] = arg["instId"]
            top.update({"ts": ts, "seqId": seq})
            return orjson.dumps({"arg": arg, "data": [top]})
        # a private "orders" push
        order = {"instType": "SPOT", "instId": "BTC-USDT", "ordId": str(seq),
                 "px": event.px, "sz": event.qty, "side": "buy" if event.flip else "sell",
                 "state": "live", "uTime": ts}
        return orjson.dumps({"arg": {**arg, "uid": "77982378738415879"}, "data": [order]})
