"""Binance market streams, spot and USD-M futures, as the simulator speaks them.

Facts from ``/work/shared/reference/venues.md`` §1 (Binance's ``web-socket-streams.md``
and the USD-M "WebSocket Market Streams" pages); what the simulator chooses where they
are silent is marked *choice*.

Endpoints (``path`` of the upgrade):

* spot: ``/ws`` and ``/ws/<stream>`` (raw payloads), ``/stream`` and
  ``/stream?streams=a/b/c`` (every payload wrapped as ``{"stream":"<name>","data":<raw>}``).
  Any other path, ``/`` included, is a raw endpoint (*choice*, kept from the first
  version of this dialect). A stream named in the path is subscribed at the upgrade,
  without a reply; an invalid one refuses the upgrade with 400 (*choice*).
* USD-M (``product=Product.USDM``): the same under ``/public`` (``@depth*``,
  ``@bookTicker``, ``@trade``), ``/market`` (``@aggTrade`` and the rest) and
  ``/private``. A stream subscribed on the wrong one of ``/public`` and ``/market``,
  or on a legacy path without the prefix, is acknowledged but never pushed: what
  third parties report of the retired legacy URLs (counted in ``misrouted``).

Requests (one reply per request; ``id`` an unsigned 64-bit integer, a string of at most
36 characters, or null)::

    -> {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@depth"], "id": 1}
    <- {"result": null, "id": 1}
    <- {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
    -> {"method": "LIST_SUBSCRIPTIONS", "id": 3}       <- {"result": [...], "id": 3}
    -> {"method": "SET_PROPERTY", "params": ["combined", true], "id": 5}
    -> {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}

One invalid stream refuses the whole request. The error shape is the one seen on the
wire (``{"error": {...}, "id": n}``, Binance's docs list the bare ``{"code", "msg"}``
objects); ``flat_errors=True`` sends ``{"code": 2, "msg": "...", "id": n}`` instead.

Streams (``channels``; default ``("trade",)``, what this dialect always spoke):
``<symbol>@trade`` (``t`` is the sequence number), ``<symbol>@aggTrade`` (``a``),
``<symbol>@depth`` / ``@depth@100ms`` (USD-M also ``@250ms``/``@500ms``; event ``n``
covers update ids ``U = 3n-2 .. u = 3n``, USD-M adds ``pu = 3(n-1)``, so a lost
event shows as ``U != previous u + 1``), ``<symbol>@bookTicker`` (``u`` = n). Payload
shapes follow the docs' samples; USD-M ``aggTrade`` has no ``M``, its ``depthUpdate``
has ``T`` and ``pu``, its ``bookTicker`` has ``e``, ``E`` and ``T``.

Heartbeat: WebSocket PING/PONG only (a text ``ping`` is invalid JSON, code 3). With
``ping_interval_s`` the server PINGs every interval with its time in ms as payload; a
connection that has not answered a PING with the same payload within
``pong_timeout_s`` is closed with ``1008 "pong timeout"`` (*choice*: the close code is
unconfirmed). Binance: spot 20 s / 60 s, USD-M 3 min / 10 min; tests scale them down.

Shutdown notice (the 24 h cut, ``announce_shutdown``): ``{"e":"serverShutdown","E":ms}``,
never wrapped (*choice*: whether ``/stream`` wraps it is unconfirmed).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from defi_ws.testing.dialects.base import Dialect, Event, VenueDialect, checked_channels

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = [
    "ALL_CHANNELS",
    "PONG_TIMEOUT_CLOSE",
    "BinanceDialect",
    "Product",
    "usdm_endpoint",
]

#: Every stream type the dialect can serve.
ALL_CHANNELS: tuple[str, ...] = ("trade", "aggTrade", "depth", "bookTicker")
#: The close of a connection that left a server PING unanswered (a choice).
PONG_TIMEOUT_CLOSE = (1008, "pong timeout")

_STREAM = re.compile(
    r"(?P<symbol>[a-z0-9]+)@(?P<channel>trade|aggTrade|depth|bookTicker)"
    r"(?:@(?P<speed>100ms|250ms|500ms))?")


class Product(enum.Enum):
    """Which Binance market the dialect is."""

    SPOT = "spot"
    USDM = "usdm"


def usdm_endpoint(stream: str) -> str:
    """The USD-M endpoint a stream is served on: ``"public"`` or ``"market"``.

    ``@depth*`` and ``@bookTicker`` streams are ``/public`` (venues.md §1.1, announced
    2026-03-06), and so is ``@trade`` (third parties report it there); everything else
    is ``/market``.
    """
    channel = stream.partition("@")[2]
    return "public" if channel.startswith(("depth", "bookTicker", "trade")) else "market"


@dataclass(eq=False)
class _State:
    """Per-connection dialect state."""

    combined: bool = False
    endpoint: str | None = None     # USD-M: "public", "market", "private"; None: legacy
    pings: dict[bytes, float] = field(default_factory=dict)  # payload -> sent at


class BinanceDialect(VenueDialect):
    """Binance spot or USD-M market streams (see the module docstring).

    Args:
        product: ``Product.SPOT`` (default) or ``Product.USDM``.
        channels: the stream types served (from :data:`ALL_CHANNELS`).
        ping_interval_s: the server PINGs each connection this often (None: never).
        pong_timeout_s: a PING unanswered this long closes the connection.
        flat_errors: send errors as ``{"code", "msg", "id"}`` instead of
            ``{"error": {"code", "msg"}, "id"}``.

    Attributes:
        server_pings: PINGs sent by the server.
        pongs_received: PONG frames received answering one of them.
        pong_timeouts: connections closed for an unanswered PING.
        misrouted: subscribes acknowledged on an endpoint that never pushes them.
    """

    kind = Dialect.BINANCE

    def __init__(
        self,
        *,
        product: Product = Product.SPOT,
        channels: Iterable[str] = ("trade",),
        ping_interval_s: float | None = None,
        pong_timeout_s: float | None = None,
        flat_errors: bool = False,
    ) -> None:
        super().__init__()
        self.product = Product(product)
        self.channels = checked_channels(channels, ALL_CHANNELS)
        if ping_interval_s is not None and not ping_interval_s > 0:
            raise ValueError("ping_interval_s must be > 0 or None")
        usdm = self.product is Product.USDM
        self.kind = Dialect.BINANCE_USDM if usdm else Dialect.BINANCE
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = (pong_timeout_s if pong_timeout_s is not None
                               else (600.0 if usdm else 60.0))
        if not self.pong_timeout_s > 0:
            raise ValueError("pong_timeout_s must be > 0")
        self.flat_errors = flat_errors
        self.server_pings = 0
        self.pongs_received = 0
        self.pong_timeouts = 0
        self.misrouted = 0
        self._wrapped: tuple[bytes, bytes] | None = None  # (payload, envelope) cache

    def stats(self) -> dict[str, Any]:
        """The dialect's counters."""
        return {"product": self.product.value, "server_pings": self.server_pings,
                "pongs_received": self.pongs_received, "pong_timeouts": self.pong_timeouts,
                "misrouted": self.misrouted}

    # ------------------------------------------------------------ streams

    def stream_valid(self, stream: str) -> bool:
        """Whether ``stream`` names a stream this dialect serves."""
        match = _STREAM.fullmatch(stream)
        if match is None or match["channel"] not in self.channels:
            return False
        speed = match["speed"]
        if speed is None:
            return True
        return match["channel"] == "depth" and (
            speed == "100ms" or self.product is Product.USDM)

    def _state(self, conn: SimConnection) -> _State:
        state = conn.dialect_state
        assert isinstance(state, _State)
        return state

    def _pushed(self, conn: SimConnection, stream: str) -> bool:
        """Whether ``conn``'s endpoint pushes ``stream`` (USD-M routing)."""
        if self.product is not Product.USDM:
            return True
        return self._state(conn).endpoint == usdm_endpoint(stream)

    # ------------------------------------------------------------ connections

    def _parse_path(self, path: str) -> tuple[str | None, bool, list[str]] | None:
        """``(endpoint, combined, streams)`` of an upgrade path; None when invalid."""
        parts = urlsplit(path)
        segments = [s for s in parts.path.split("/") if s]
        endpoint = None
        if self.product is Product.USDM and segments and segments[0] in (
                "public", "market", "private"):
            endpoint = segments.pop(0)
        streams: list[str] = []
        combined = False
        if segments[:1] == ["stream"]:
            combined = True
            for value in parse_qs(parts.query).get("streams", []):
                streams.extend(s for s in value.split("/") if s)
        elif segments[:1] == ["ws"] and len(segments) == 2:
            streams.append(segments[1])
        if endpoint != "private" and not all(self.stream_valid(s) for s in streams):
            return None
        return endpoint, combined, streams

    def upgrade_status(self, path: str) -> int | None:
        """Refuse (400) a path naming an invalid stream."""
        return 400 if self._parse_path(path) is None else None

    def opened(self, conn: SimConnection) -> None:
        """Subscribe the streams named in the path; start the server's PINGs."""
        parsed = self._parse_path(conn.path)
        endpoint, combined, streams = parsed if parsed is not None else (None, False, [])
        conn.dialect_state = _State(combined=combined, endpoint=endpoint)
        if endpoint != "private":
            sim = self.sim
            for stream in streams:
                if not sim._refused(stream):
                    sim._add_topic(conn, stream)
        if self.ping_interval_s is not None:
            conn._later(self.ping_interval_s, lambda: self._ping(conn))

    def _ping(self, conn: SimConnection) -> None:
        if not conn.open:
            return
        assert self.ping_interval_s is not None
        state = self._state(conn)
        payload = str(int(time.time() * 1000)).encode()
        state.pings[payload] = time.monotonic()
        if not self.sim._silent and not conn.half_open:
            conn._ws.send_ping(payload)
            self.server_pings += 1
        conn._later(self.pong_timeout_s, lambda: self._check_pong(conn, payload))
        conn._later(self.ping_interval_s, lambda: self._ping(conn))

    def _check_pong(self, conn: SimConnection, payload: bytes) -> None:
        state = self._state(conn)
        if payload in state.pings and conn.open:
            self.pong_timeouts += 1
            conn.cut_reason = PONG_TIMEOUT_CLOSE[1]
            conn.close(*PONG_TIMEOUT_CLOSE)
            self.sim._notify()

    def pong(self, conn: SimConnection, payload: bytes) -> None:
        """A PONG answers the server's PING with the same payload."""
        state = conn.dialect_state
        if isinstance(state, _State) and state.pings.pop(payload, None) is not None:
            self.pongs_received += 1
            self.sim._notify()

    # ------------------------------------------------------------ requests

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer ``SUBSCRIBE``, ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS`` and properties."""
        sim = self.sim
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._error(conn, None, 3, f"Invalid JSON: {exc}")
            return
        if not isinstance(request, dict):
            self._error(conn, None, 2, "Invalid request: expected an object")
            return
        req_id = request.get("id")
        id_ok = (
            req_id is None
            or (isinstance(req_id, str) and len(req_id) <= 36)
            or (isinstance(req_id, int) and not isinstance(req_id, bool) and 0 <= req_id < 2**64)
        )
        if not id_ok:
            self._error(conn, None, 2, "Invalid request: request ID must be an unsigned integer")
            return
        method = request.get("method")
        params = request.get("params", [])
        state = conn.dialect_state
        if method == "LIST_SUBSCRIPTIONS":
            sim._reply(conn, {"result": sorted(conn.topics), "id": req_id})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            self._property(conn, method, params, req_id)
        elif method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self._error(conn, req_id, 2, f"Invalid request: unknown method {method!r}")
        elif not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            self._error(conn, req_id, 2, "Invalid request: params must be stream names")
        elif method == "UNSUBSCRIBE":
            for stream in params:
                sim._remove_topic(conn, stream)
            sim._reply(conn, {"result": None, "id": req_id})
        elif any(not self.stream_valid(s) or sim._refused(s) for s in params):
            # Binance refuses the whole request when one stream is invalid.
            self._error(conn, req_id, 2, "Invalid request: invalid stream")
        elif sim._too_many_in_message(len(params)):
            self._error(conn, req_id, 2, "Invalid request: too many streams in one request")
        elif sim._connection_full(conn, params):
            self._error(conn, req_id, 2, "Invalid request: too many streams on this connection")
        else:
            for stream in params:
                sim._add_topic(conn, stream)
                if isinstance(state, _State) and not self._pushed(conn, stream):
                    self.misrouted += 1
            sim._reply(conn, {"result": None, "id": req_id})
        sim._notify()

    def _property(self, conn: SimConnection, method: str, params: Any, req_id: Any) -> None:
        state = self._state(conn)
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            self._error(conn, req_id, 2, "Invalid request: property name must be a string")
        elif params[0] != "combined":
            self.sim._reply(conn, {"code": 0, "msg": "Unknown property", "id": req_id})
        elif method == "GET_PROPERTY":
            self.sim._reply(conn, {"result": state.combined, "id": req_id})
        elif len(params) != 2 or not isinstance(params[1], bool):
            self._error(conn, req_id, 1, "Invalid value type: expected Boolean")
        else:
            state.combined = params[1]
            self.sim._reply(conn, {"result": None, "id": req_id})

    def _error(self, conn: SimConnection, req_id: Any, code: int, msg: str) -> None:
        if self.flat_errors:
            self.sim._reply(conn, {"code": code, "msg": msg, "id": req_id})
        else:
            self.sim._reply(conn, {"error": {"code": code, "msg": msg}, "id": req_id})

    # ------------------------------------------------------------ server messages

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """``{"e": "serverShutdown", "E": <ms now>}``."""
        return {"e": "serverShutdown", "E": int(time.time() * 1000)}

    def frame(self, conn: SimConnection, topic: str, payload: bytes) -> bytes | None:
        """Wrap for combined-stream connections; nothing for a misrouted stream."""
        state = conn.dialect_state
        if not isinstance(state, _State):
            return payload
        if self.product is Product.USDM and state.endpoint != usdm_endpoint(topic):
            return None
        if not state.combined:
            return payload
        cached = self._wrapped
        if cached is not None and cached[0] is payload:
            return cached[1]
        wrapped = b'{"stream":' + orjson.dumps(topic) + b',"data":' + payload + b"}"
        self._wrapped = (payload, wrapped)
        return wrapped

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """The raw event of ``topic`` in the documented shape of its stream type."""
        symbol, _, rest = topic.partition("@")
        symbol = symbol.upper()
        channel = rest.partition("@")[0]
        usdm = self.product is Product.USDM
        ts = event.ts
        if channel == "aggTrade":
            agg: dict[str, Any] = {
                "e": "aggTrade", "E": ts, "s": symbol, "a": seq, "p": event.px,
                "q": event.qty, "f": 2 * seq - 1, "l": 2 * seq, "T": ts, "m": event.flip}
            if not usdm:
                agg["M"] = True
            return orjson.dumps(agg)
        if channel in ("depth", "bookTicker"):
            bid = f"{event.price * 0.9999:.2f}"
            ask = f"{event.price * 1.0001:.2f}"
            if channel == "bookTicker":
                if usdm:
                    return orjson.dumps({
                        "e": "bookTicker", "u": seq, "E": ts, "T": ts, "s": symbol,
                        "b": bid, "B": event.qty, "a": ask, "A": event.qty})
                return orjson.dumps({"u": seq, "s": symbol, "b": bid, "B": event.qty,
                                     "a": ask, "A": event.qty})
            depth: dict[str, Any] = {"e": "depthUpdate", "E": ts}
            if usdm:
                depth["T"] = ts
            depth.update({"s": symbol, "U": 3 * seq - 2, "u": 3 * seq})
            if usdm:
                depth["pu"] = 3 * (seq - 1)
            depth["b"] = [[bid, event.qty]]
            depth["a"] = [[ask, event.qty]]
            return orjson.dumps(depth)
        return orjson.dumps({
            "e": "trade", "E": ts, "s": symbol, "t": seq, "p": event.px, "q": event.qty,
            "T": ts, "m": event.flip, "M": True})
