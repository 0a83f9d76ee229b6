"""A scriptable venue: a local WebSocket server speaking the generic JSON protocol or a dialect.

:class:`ExchangeSimulator` is a picows server on ``127.0.0.1`` (port chosen free by
default) that speaks the protocol :class:`~defi_ws.handler.JsonHandler` expects::

    -> {"op": "login", "args": {"key": k, "ts": ms, "sig": hex}}   (when api_key is set)
    <- {"event": "login", "success": true}
    -> {"op": "subscribe", "args": ["trades.BTC"]}
    <- {"event": "subscribed", "topic": "trades.BTC"}
    <- {"topic": "trades.BTC", "seq": 1, "data": {"px": "...", "qty": "...", "id": 1, "ts": ms}}
    -> "ping"            <- "pong"
    -> {"op": "ping"}    <- {"event": "pong"}

Streams carry one sequence number per topic, global to the simulator: a client that
reconnects sees its topic's sequence continue, with gaps only where a test injects
them (:meth:`ExchangeSimulator.sequence_gap`). Messages are only generated for topics
somebody is subscribed to. Each message moves a random-walk price; topics follow one
price each unless their dialect groups them (:meth:`VenueDialect.price_key`: OKX's
channels of one instrument share its price).

Other venues' protocols are *dialects*, one module each in
:mod:`defi_ws.testing.dialects` (the ``dialect`` argument: a :class:`Dialect` value or
a configured :class:`~defi_ws.testing.dialects.VenueDialect`); the generic protocol
above is the default. This module is the server core every dialect shares
(connections, faults, limits, connection age, sequences, stats); a dialect owns its
venue's upgrade paths, requests and replies, errors, heartbeats, notices and message
shapes. Every dialect maps its subscriptions to one string *topic key* per stream, so
rates, sequences, faults and stats are per key:

* ``Dialect.BINANCE`` (key: the stream name, ``"btcusdt@trade"``; see
  :mod:`~defi_ws.testing.dialects.binance`)::

    -> {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}
    <- {"result": null, "id": 1}                  (one reply per request)
    <- {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
    <- {"e": "trade", "E": ms, "s": "BTCUSDT", "t": 1, "p": "...", "q": "...", "T": ms,
        "m": false, "M": true}                    (t: the sequence number)

  By default only ``<symbol>@trade`` streams exist; a request naming an unknown stream
  is refused whole. Heartbeats are WebSocket PING/PONG control frames only.
  ``BinanceDialect(...)`` adds aggTrade, depth and bookTicker streams, combined
  ``/stream`` envelopes, server PINGs with a pong deadline and the USD-M endpoint
  split (``Dialect.BINANCE_USDM``).

* ``Dialect.OKX`` (key: ``"<channel>:<instId>"``, e.g. ``"trades:BTC-USDT"``; see
  :mod:`~defi_ws.testing.dialects.okx`)::

    -> {"id": "7", "op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
    <- {"id": "7", "event": "subscribe", "arg": {"channel": "trades",
        "instId": "BTC-USDT"}, "connId": "..."}      (one per arg; "id" only when sent)
    <- {"id": "7", "event": "error", "code": "60018", "msg": "Wrong URL or channel:...",
        "connId": "..."}                           (unknown channel or instrument)
    -> "ping"            <- "pong"

  By default only the ``trades`` channel exists. Malformed requests get code
  ``60012``. ``OkxDialect(...)`` adds bbo-tbt, books5, books and the private orders
  channel, HMAC login, the 30 s idle cut and the hourly request budget.

* ``Dialect.BYBIT`` (key: the Bybit topic, e.g. ``"publicTrade.BTCUSDT"``; see
  :mod:`~defi_ws.testing.dialects.bybit`)::

    -> {"req_id": "7", "op": "subscribe", "args": ["publicTrade.BTCUSDT"]}
    <- {"success": true, "ret_msg": "subscribe", "conn_id": "...", "req_id": "7",
        "op": "subscribe"}                        (one reply per request, spot)
    -> {"op": "ping"}    <- {"success": true, "ret_msg": "pong", ..., "op": "ping"}

  ``BybitDialect(...)`` picks the product (reply and pong shapes, option's per-topic
  ``COMMAND_RESP``), adds the private endpoint with ``op: auth``, the idle cut and
  Bybit's request limits; books stream a snapshot then ``u``-numbered deltas. Bybit
  documents no shutdown notice: don't combine it with ``notice_before_s``.

* ``Dialect.KRAKEN`` (key: ``"<channel>:<symbol>"``, e.g. ``"book:BTC/USD"``; see
  :mod:`~defi_ws.testing.dialects.kraken`): spot v2 ``trade``, ``ticker`` and ``book``
  (real books with CRC32 checksums), one ack per symbol, ``{"method": "ping"}``,
  ``status`` on connect, ``heartbeat`` messages, an optional idle cut; no shutdown
  notice (Kraken drops connections unannounced).

* ``Dialect.COINBASE`` (key: ``"<channel>:<product_id>"``, e.g. ``"level2:BTC-USD"``;
  see :mod:`~defi_ws.testing.dialects.coinbase`): one ``subscribe`` per channel with
  ``product_ids``, ``subscriptions`` replies listing every subscription, a
  per-connection ``sequence_num`` on every message (``skip_sequence`` makes it jump),
  the ``heartbeats`` channel (``pause_heartbeats``), ``level2`` snapshot + updates of a
  book the dialect keeps, the 5 s subscribe deadline, an optional idle cut; no
  shutdown notice.

* ``Dialect.HYPERLIQUID`` (key: ``"<type>:<coin>"``, e.g. ``"l2Book:ETH"``, or
  ``"allMids"``; see :mod:`~defi_ws.testing.dialects.hyperliquid`): ``method``
  subscribe answered by ``subscriptionResponse`` (no request id), ``channel: error``
  texts, ``{"method": "ping"}`` -> ``{"channel": "pong"}``, ``trades``, ``l2Book``
  (whole book each push; broken books on demand), ``bbo`` and ``allMids``, the 60 s
  idle cut, per-IP caps; no shutdown notice.

The core's ``api_key`` login is only part of the generic protocol (OKX's login is
configured on :class:`~defi_ws.testing.dialects.OkxDialect`).

Venue limits are opt-in constructor arguments (all off by default); every hit is
counted (``stats()["limit_hits"]`` is their sum, so a test can assert a client never
hit one):

* ``max_topics_per_connection``: a subscribe beyond it is refused and the topic is not
  added (generic: ``{"event": "error", "topic": t, "msg": "too many topics on this
  connection"}`` per topic; Binance: the whole request, code 2; OKX: per arg, code
  ``60012``). Counted per topic in ``topic_limit_rejections``.
* ``max_topics_per_message``: a subscribe message carrying more topics is refused whole
  (generic: one error per topic, ``"too many topics in one message"``; Binance: one
  error, code 2; OKX: one error, code ``60012``). Counted per message in
  ``oversized_subscribes``. Unsubscribes are not limited.
* ``max_messages_per_s`` (and ``messages_burst``): inbound messages per connection
  (text/binary messages, and PING/PONG frames unless ``rate_counts_control_frames`` is
  False; as Binance counts them). The message over it is not processed and the
  connection is closed with CLOSE 1008 ``"Too many requests"``, what Binance is
  reported to send (its docs give no close code). OKX first gets
  ``{"event": "error", "code": "60014", "msg": "Requests too frequent."}``. Counted
  in ``rate_violations``.
* ``max_connections_per_window=(count, window_s)``: completed upgrades per client IP in
  any ``window_s``; more are refused with HTTP 429 and a ``Retry-After`` (whole
  seconds until a slot frees). Counted in ``connections_rate_limited``.

Maximum connection age (``max_connection_age_s``, scaled down for tests): the
connection gets the dialect's advance notice ``notice_before_s`` ahead (when set), then
CLOSE 1001 ``"max connection age"`` at the age. :meth:`ExchangeSimulator.announce_shutdown`
sends the notice now (and cuts after ``cut_after_s``). The notices::

    generic:  {"event": "notice", "type": "shutdown", "cut_in_ms": 5000}
    Binance:  {"e": "serverShutdown", "E": <ms now>}
    OKX:      {"event": "notice", "code": "64008", "msg": "The connection will soon be
               closed for a service upgrade. Please reconnect.", "connId": "..."}

Sequence numbering (``sequence_scope``): ``SequenceScope.TOPIC`` (default) numbers
each topic once for the whole simulator and sends the very same bytes object to every
subscriber (a client with two connections can de-duplicate exactly; a late subscriber
starts at the current number). ``SequenceScope.CONNECTION`` numbers each topic per
connection (generic ``seq``, Binance ``t``, OKX ``tradeId``/``seqId``); the rest of the
message is byte-identical across connections for one event, and the generic ``data``
object carries a unique ``"tid"`` (16 hex digits) instead of ``"id"``, so hashing
``data`` tells events apart and finds duplicates.

Per-connection control for pool tests: :meth:`ExchangeSimulator.stall` (stream messages
produced meanwhile are never sent to that connection; ``half_open=True`` also withholds
its replies and pongs), :meth:`ExchangeSimulator.resume`, :meth:`ExchangeSimulator.drop`
(RST), :meth:`ExchangeSimulator.subscribed_connections` and
:meth:`ExchangeSimulator.messages_sent_by_connection`.

Faults are methods: some act on the current connections (``drop_all``, ``close_all``,
``send_garbage``...), others are switches that hold for current and next connections
until turned off (``silence``, ``withhold_pongs``, ``delay_pongs``, ``reject_auth``,
``reject_subscribes``, ``slow_handshake``) or queue up for the next handshakes
(``reject_handshakes``).

Example::

    async with ExchangeSimulator(rate_per_s=50) as sim:
        async with FeedClient(JsonHandler(sim.url), topics=["trades.BTC"]) as client:
            await client.wait_live()
            sim.drop_all()

Run it by hand with ``python -m defi_ws.testing.simulator --port 0 --rate 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import functools
import logging
import math
import random
import socket
import ssl
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, cast

import orjson
import picows
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from defi_ws import _compat
from defi_ws._picows_log import PicowsLog
from defi_ws.testing.dialects import Dialect, VenueDialect, resolve
from defi_ws.testing.dialects.base import Event
from defi_ws.testing.dialects.generic import login_signature
from defi_ws.testing.frames import Opcode, build_frame

__all__ = [
    "AGE_CLOSE_CODE",
    "AGE_CLOSE_REASON",
    "ALL_FAULTS",
    "RATE_CLOSE_CODE",
    "RATE_CLOSE_REASON",
    "RECOVERABLE_FAULTS",
    "SHUTDOWN_CLOSE_REASON",
    "Dialect",
    "ExchangeSimulator",
    "SequenceScope",
    "SimConnection",
    "VenueDialect",
    "login_message",
    "login_signature",
]

_LOG = logging.getLogger("defi_ws.simulator")
_PICOWS_LOG = logging.getLogger("defi_ws.simulator.picows")

_HOST = "127.0.0.1"

#: The faults :meth:`ExchangeSimulator.random_faults` picks among by default. Each is
#: one a well-behaved client recovers from by reconnecting.
RECOVERABLE_FAULTS: tuple[str, ...] = (
    "drop",
    "close",
    "maintenance",
    "reject_handshake",
    "silence",
    "withhold_pongs",
    "garbage",
    "invalid_utf8",
    "stray_continuation",
)

#: Every fault name :meth:`ExchangeSimulator.random_faults` understands.
ALL_FAULTS: tuple[str, ...] = (*RECOVERABLE_FAULTS, "invalid_json", "sequence_gap")


class SequenceScope(enum.Enum):
    """How an :class:`ExchangeSimulator` numbers stream messages."""

    #: One sequence per topic for the whole simulator, shared by every connection: one
    #: event is the same bytes on every connection (exact de-duplication works).
    TOPIC = "topic"
    #: One sequence per topic per connection: ids differ between connections, the rest
    #: of the message does not (de-duplication must hash the payload).
    CONNECTION = "connection"


#: The close code and reason for a client over the inbound message rate (Binance is
#: seen closing such connections with ``1008 Too many requests``).
RATE_CLOSE_CODE = 1008
RATE_CLOSE_REASON = "Too many requests"
#: The close code and reasons of a connection cut for its age or an announced shutdown.
AGE_CLOSE_CODE = 1001
AGE_CLOSE_REASON = "max connection age"
SHUTDOWN_CLOSE_REASON = "server shutdown"
def login_message(key: str, secret: str, ts_ms: int | None = None) -> dict[str, Any]:
    """Build the login request the simulator expects.

    Args:
        key: the API key.
        secret: the API secret.
        ts_ms: the timestamp in milliseconds (default: now).

    Returns:
        ``{"op": "login", "args": {"key": key, "ts": ts_ms, "sig": hex}}``.
    """
    if ts_ms is None:
        ts_ms = int(time.time() * 1000)
    return {
        "op": "login",
        "args": {"key": key, "ts": ts_ms, "sig": login_signature(secret, ts_ms)},
    }


class SimConnection:
    """The simulator's side of one upgraded connection.

    Attributes:
        id: a number unique within the simulator, from 1.
        path: the request path of the upgrade (query string included).
        headers: the upgrade request's headers (lower-case names).
        topics: the topics this connection is subscribed to.
        logged_in: whether a login succeeded on this connection.
        login_before_subscribe: whether a successful login preceded the first
            subscribe (None until the first subscribe, or when auth is off).
        close_code_received: the code of the client's CLOSE frame (1005 when it gave
            none), or None.
        messages_received: text/binary messages the client sent.
        messages_sent: stream messages delivered to this connection.
        messages_withheld: stream messages not sent because the connection was stalled.
        pings_received: WebSocket PINGs and application pings received.
        write_paused: whether the socket's write buffer is above its high-water mark.
        disconnected: set once the connection is gone.
        peer_ip: the client's IP address ("" when unknown).
        opened_at: ``time.monotonic()`` when the upgrade was accepted.
        stalled: stream messages are withheld (see :meth:`ExchangeSimulator.stall`).
        half_open: replies and pongs are withheld too.
        last_seq: the last per-connection sequence number sent, per topic (only with
            ``SequenceScope.CONNECTION``).
        notices_sent: shutdown notices sent to this connection.
        cut_reason: why the simulator closed it for a limit or its age
            (``RATE_CLOSE_REASON``, ``AGE_CLOSE_REASON``, ``SHUTDOWN_CLOSE_REASON``,
            or a dialect's reason), or None.
        last_sent_at: ``time.monotonic()`` when a message was last sent to it.
        dialect_state: what the dialect keeps about this connection.
    """

    def __init__(
        self, sim: ExchangeSimulator, conn_id: int, request: Any, peer_ip: str = ""
    ) -> None:
        self._sim = sim
        self.id = conn_id
        self.path = bytes(request.path).decode("latin-1")
        self.headers: dict[str, str] = {str(k).lower(): str(v) for k, v in request.headers.items()}
        self.topics: set[str] = set()
        self.logged_in = False
        self.login_before_subscribe: bool | None = None
        self.close_code_received: int | None = None
        self.messages_received = 0
        self.messages_sent = 0
        self.messages_withheld = 0
        self.pings_received = 0
        self.write_paused = False
        self.disconnected = asyncio.Event()
        self.peer_ip = peer_ip
        self.opened_at = time.monotonic()
        self.stalled = False
        self.half_open = False
        self.last_seq: dict[str, int] = {}
        self.notices_sent = 0
        self.cut_reason: str | None = None
        self.last_sent_at = self.opened_at
        self.dialect_state: Any = None
        self._ws: Any = None
        self._handles: set[asyncio.TimerHandle] = set()
        self._fragments: bytearray | None = None
        # inbound rate: arrival times (sliding window) or a token bucket
        self._arrivals: deque[float] = deque()
        self._tokens = 0.0
        self._tokens_at: float | None = None

    def __repr__(self) -> str:
        return f"<SimConnection #{self.id} topics={sorted(self.topics)}>"

    @property
    def open(self) -> bool:
        """Whether the connection is up and no CLOSE frame was sent on it."""
        ws = self._ws
        return ws is not None and not ws.is_disconnected and not ws.is_close_frame_sent

    # ----------------------------------------------------------------- sending

    def send_text(self, payload: bytes | str) -> None:
        """Send one TEXT frame (ignores silence; no-op once closing).

        Args:
            payload: the message; ``str`` is encoded as UTF-8.
        """
        if self.open:
            self._ws.send(picows.WSMsgType.TEXT, payload)
            self.last_sent_at = time.monotonic()

    def send_json(self, message: Any) -> None:
        """Send ``message`` serialised as JSON in one TEXT frame (ignores silence).

        Args:
            message: anything orjson can serialise.
        """
        self.send_text(orjson.dumps(message))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes on the socket, bypassing the framing (ignores silence).

        Args:
            data: the bytes to write.
        """
        ws = self._ws
        if ws is not None and not ws.is_disconnected:
            ws.underlying_transport.write(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send CLOSE; drop the socket when the client answers or after the close timeout.

        Args:
            code: the close code.
            reason: the close reason (at most 123 UTF-8 bytes).
        """
        ws = self._ws
        if ws is None or ws.is_disconnected:
            return
        if not ws.is_close_frame_sent:
            ws.send_close(picows.WSCloseCode(code), reason.encode()[:123])
        self._later(self._sim.close_timeout_s, self.drop)

    def disconnect(self) -> None:
        """Close the TCP connection after flushing (no CLOSE frame)."""
        if self._ws is not None and not self._ws.is_disconnected:
            self._ws.disconnect(True)

    def drop(self) -> None:
        """Reset the connection now: SO_LINGER 0, then abort (the client sees an RST)."""
        ws = self._ws
        if ws is None or ws.is_disconnected:
            return
        _abort_with_rst(ws.underlying_transport)

    # ----------------------------------------------------------------- internals

    def _later(self, delay_s: float, callback: Callable[[], object]) -> None:
        def run() -> None:
            self._handles.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay_s, run)
        self._handles.add(handle)

    def _cancel_timers(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()


def _abort_with_rst(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Listener(picows.WSListener):
    """Routes one connection's picows callbacks to the simulator."""

    def __init__(self, sim: ExchangeSimulator, conn: SimConnection) -> None:
        super().__init__()
        self._sim = sim
        self._conn = conn

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._conn._ws = transport
        self._sim._on_connected(self._conn)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self._sim._on_frame(self._conn, frame)

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._sim._on_disconnected(self._conn)

    def pause_writing(self) -> None:
        self._conn.write_paused = True
        self._sim.write_pauses += 1

    def resume_writing(self) -> None:
        self._conn.write_paused = False


class _Gate(asyncio.Protocol):
    """Holds an accepted socket (reading paused) before handing it to picows.

    With no delay it hands over at once; with a delay it models a slow upgrade.
    """

    def __init__(self, sim: ExchangeSimulator, delay_s: float) -> None:
        self._sim = sim
        self._delay_s = delay_s
        self._buffered = bytearray()
        self._lost = False
        self._handle: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; both have its API.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._sim._raw_transports.add(transport)
        if self._delay_s <= 0:
            self._hand_over()
            return
        transport.pause_reading()
        self._sim._gates.add(self)
        self._handle = asyncio.get_running_loop().call_later(self._delay_s, self._hand_over)

    def data_received(self, data: bytes) -> None:
        self._buffered += data

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.cancel()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._sim._gates.discard(self)

    def _hand_over(self) -> None:
        self._handle = None
        self._sim._gates.discard(self)
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        protocol = self._sim._new_ws_protocol(peer_ip)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data = memoryview(bytes(self._buffered))
        self._buffered.clear()
        while data and not transport.is_closing():
            buf = memoryview(protocol.get_buffer(len(data))).cast("B")
            size = min(len(buf), len(data))
            buf[:size] = data[:size]
            protocol.buffer_updated(size)
            data = data[size:]
        if self._delay_s > 0 and not transport.is_closing():
            transport.resume_reading()


class ExchangeSimulator:
    """A local venue for tests and soaks; see the module docstring for the protocol.

    Use it as ``async with ExchangeSimulator(...) as sim:``; it listens only on
    127.0.0.1. Every public method is synchronous unless marked async and must be
    called from the event loop's thread.

    Args:
        port: the TCP port; 0 picks a free one.
        rate_per_s: stream messages per second per subscribed topic (0: no stream).
        api_key: when set (with ``api_secret``), clients must log in before subscribing.
        api_secret: the secret the login signature is keyed with.
        reject_topics: topics whose subscribe is answered with an error.
        topic_allowed: a predicate; topics it returns False for are rejected too.
        seed: seed for the generated prices and sizes.
        close_timeout_s: how long a CLOSE the simulator sent waits for the client's
            answer before the socket is reset.
        max_frame_size: the largest frame accepted from a client.
        dialect: the venue protocol to speak: a :class:`Dialect` value (or its
            string) for that dialect's defaults, or a configured
            :class:`~defi_ws.testing.dialects.VenueDialect` object, which then serves
            only this simulator (default: the generic protocol). Topics
            (``reject_topics``, ``set_rate``, ``burst``, ``sequence_gap``, stats...)
            are the dialect's topic keys (``"btcusdt@trade"``, ``"trades:BTC-USDT"``).
        ssl_context: serve TLS (``wss://``) with this server context, e.g. one
            configured by a ``trustme`` certificate.
        max_topics_per_connection: most topics one connection may hold; a subscribe
            beyond it is refused in the dialect and not added (None: no limit).
        max_topics_per_message: most topics one subscribe message may carry; a larger
            message is refused whole (None: no limit).
        max_messages_per_s: most inbound messages per connection in any 1 s (a sliding
            window); one more closes the connection with CLOSE 1008 (None: no limit).
        messages_burst: with ``max_messages_per_s``, a token bucket of this capacity
            refilled at ``max_messages_per_s`` instead of the sliding window (more
            lenient: ``burst + rate`` messages may arrive within one second).
        rate_counts_control_frames: whether PING and PONG frames count towards
            ``max_messages_per_s`` (True, as Binance counts them).
        max_connections_per_window: ``(count, window_s)``: at most ``count`` accepted
            upgrades per client IP within any ``window_s``; more are refused with HTTP
            429 and a ``Retry-After`` (None: no limit).
        max_connection_age_s: close every connection with CLOSE 1001 at this age
            (None: connections live for ever).
        notice_before_s: with ``max_connection_age_s``, send the dialect's shutdown
            notice this long before the cut (None: no notice).
        sequence_scope: ``SequenceScope.TOPIC`` (or ``"topic"``, default) or
            ``SequenceScope.CONNECTION`` (``"connection"``); see the module docstring.

    Attributes:
        dialect: the :class:`Dialect` value of the protocol spoken.
        dialect_impl: the :class:`~defi_ws.testing.dialects.VenueDialect` speaking it.
        connections_accepted: WebSocket upgrades completed.
        tcp_accepted: TCP connections accepted (refused upgrades included).
        handshakes_rejected: upgrades refused with an HTTP error status.
        handshake_statuses: the status of every refused upgrade, in order.
        duplicate_subscribes: subscribes of a topic the connection already had.
        subscribe_before_login: connections whose first subscribe came before a
            successful login (only counted when auth is on).
        logins_ok: successful logins.
        logins_failed: failed logins.
        messages_sent: stream messages delivered, per topic (one per connection).
        last_seq: the last sequence number generated, per topic.
        pings_received: WebSocket and application pings received.
        pongs_sent: WebSocket and application pongs sent.
        pongs_withheld: pongs not sent because of silence or ``withhold_pongs``.
        close_codes_received: the code of every CLOSE frame clients sent.
        write_pauses: times a connection's write buffer crossed its high-water mark.
        faults: how many times each fault was injected, by name.
        sequence_scope: how stream messages are numbered.
        topic_limit_rejections: topics refused for ``max_topics_per_connection``.
        oversized_subscribes: subscribe messages refused for ``max_topics_per_message``.
        rate_violations: connections closed for ``max_messages_per_s``.
        connections_rate_limited: upgrades refused (429) for
            ``max_connections_per_window``.
        shutdown_notices: shutdown notices sent (age limit and ``announce_shutdown``).
        shutdown_cuts: connections closed for their age or an announced shutdown.
        messages_withheld: stream messages not sent to stalled connections.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        rate_per_s: float = 0.0,
        api_key: str | None = None,
        api_secret: str | None = None,
        reject_topics: Iterable[str] = (),
        topic_allowed: Callable[[str], bool] | None = None,
        seed: int | None = 0,
        close_timeout_s: float = 1.0,
        max_frame_size: int = 1024 * 1024,
        dialect: Dialect | str | VenueDialect = Dialect.GENERIC,
        ssl_context: ssl.SSLContext | None = None,
        max_topics_per_connection: int | None = None,
        max_topics_per_message: int | None = None,
        max_messages_per_s: int | None = None,
        messages_burst: int | None = None,
        rate_counts_control_frames: bool = True,
        max_connections_per_window: tuple[int, float] | None = None,
        max_connection_age_s: float | None = None,
        notice_before_s: float | None = None,
        sequence_scope: SequenceScope | str = SequenceScope.TOPIC,
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("api_key and api_secret go together")
        #: The dialect object speaking the venue's protocol.
        self.dialect_impl = resolve(dialect)
        self.dialect = self.dialect_impl.kind
        self.api_key = api_key
        self.api_secret = api_secret
        problems = self.dialect_impl.problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        self.dialect_impl.attach(self)
        if rate_per_s < 0:
            raise ValueError("rate_per_s must be >= 0")
        for name, limit in (
            ("max_topics_per_connection", max_topics_per_connection),
            ("max_topics_per_message", max_topics_per_message),
            ("max_messages_per_s", max_messages_per_s),
            ("messages_burst", messages_burst),
        ):
            if limit is not None and not (isinstance(limit, int) and limit >= 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {limit!r}")
        if messages_burst is not None and max_messages_per_s is None:
            raise ValueError("messages_burst needs max_messages_per_s")
        if max_connections_per_window is not None:
            count, window_s = max_connections_per_window
            if not (isinstance(count, int) and count >= 1 and window_s > 0):
                raise ValueError("max_connections_per_window must be (count >= 1, "
                                 f"window_s > 0), got {max_connections_per_window!r}")
        if max_connection_age_s is not None and not max_connection_age_s > 0:
            raise ValueError("max_connection_age_s must be > 0 or None")
        if notice_before_s is not None and (
            max_connection_age_s is None or not 0 <= notice_before_s <= max_connection_age_s
        ):
            raise ValueError("notice_before_s needs max_connection_age_s and must be "
                             "between 0 and it")
        self.sequence_scope = SequenceScope(sequence_scope)
        self.max_topics_per_connection = max_topics_per_connection
        self.max_topics_per_message = max_topics_per_message
        self.max_messages_per_s = max_messages_per_s
        self.messages_burst = messages_burst
        self.rate_counts_control_frames = rate_counts_control_frames
        self.max_connections_per_window = max_connections_per_window
        self.max_connection_age_s = max_connection_age_s
        self.notice_before_s = notice_before_s
        self._port = port
        self._ssl_context = ssl_context
        self._rate = float(rate_per_s)
        self._rates: dict[str, float] = {}
        self.reject_topics: set[str] = set(reject_topics)
        self.topic_allowed = topic_allowed
        self.close_timeout_s = close_timeout_s
        self._max_frame_size = max_frame_size
        self._rng = random.Random(seed)

        # stats
        self.connections_accepted = 0
        self.tcp_accepted = 0
        self.handshakes_rejected = 0
        self.handshake_statuses: list[int] = []
        self.duplicate_subscribes = 0
        self.subscribe_before_login = 0
        self.logins_ok = 0
        self.logins_failed = 0
        self.messages_sent: Counter[str] = Counter()
        self.last_seq: dict[str, int] = {}
        self.pings_received = 0
        self.pongs_sent = 0
        self.pongs_withheld = 0
        self.close_codes_received: list[int] = []
        self.write_pauses = 0
        self.faults: Counter[str] = Counter()
        self.topic_limit_rejections = 0
        self.oversized_subscribes = 0
        self.rate_violations = 0
        self.connections_rate_limited = 0
        self.shutdown_notices = 0
        self.shutdown_cuts = 0
        self.messages_withheld = 0

        # fault switches
        self._silent = False
        self._withhold_pongs = False
        self._pong_delay_s = 0.0
        self._handshake_delay_s = 0.0
        self._reject_auth = False
        self._handshake_rejections: deque[tuple[int, float | None]] = deque()
        self._refuse_until = 0.0
        self._refuse_status = 503
        self._pending_gaps: dict[str, int] = {}

        # state
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[int, SimConnection] = {}
        self._next_id = 0
        self._sent_by_gone: dict[int, int] = {}  # messages_sent of closed connections
        self._upgrades_by_ip: dict[str, deque[float]] = {}
        self._subscribers: dict[str, set[SimConnection]] = {}
        self._credit: dict[str, float] = {}
        self._prices: dict[str, float] = {}
        self._raw_transports: set[asyncio.Transport] = set()
        self._gates: set[_Gate] = set()
        self._stream_task: asyncio.Task[None] | None = None
        self._fault_task: asyncio.Task[None] | None = None
        self._rate_changed = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False

    # ================================================================ lifecycle

    async def __aenter__(self) -> ExchangeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening on 127.0.0.1 and start the stream task."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._changed = asyncio.Event()
        self._rate_changed = asyncio.Event()
        self._server = await self._loop.create_server(
            self._accept, _HOST, self._port, ssl=self._ssl_context)
        self._stream_task = asyncio.create_task(self._stream_loop(), name="simulator-stream")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Close every connection (CLOSE 1001), finish every task, close the server.

        Args:
            timeout_s: how long connections get to close before they are reset.
        """
        if self._server is None:
            return
        self._closing = True
        for task in (self._fault_task, self._stream_task):
            if task is not None:
                task.cancel()
        for task in (self._fault_task, self._stream_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fault_task = self._stream_task = None
        self._silent = self._withhold_pongs = False
        for gate in list(self._gates):
            gate.cancel()
        conns = list(self._conns.values())
        for conn in conns:
            conn._cancel_timers()
            if conn.open:
                conn._ws.send_close(picows.WSCloseCode.GOING_AWAY, b"simulator shutdown")
            conn.disconnect()
        with contextlib.suppress(TimeoutError):
            async with _compat.timeout(timeout_s):
                for conn in conns:
                    await conn.disconnected.wait()
        for transport in list(self._raw_transports):
            if not transport.is_closing():
                transport.abort()
        with contextlib.suppress(TimeoutError):
            async with _compat.timeout(1.0):
                for conn in conns:
                    if not conn.disconnected.is_set():
                        conn._ws.disconnect(False)
                    await conn.disconnected.wait()
        for conn in conns:
            conn._cancel_timers()
        self._raw_transports.clear()
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let transports' connection_lost callbacks run

    # ================================================================ properties

    @property
    def port(self) -> int:
        """The port the simulator listens on."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/`` (``wss://`` with an ``ssl_context``)."""
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{_HOST}:{self.port}/"

    @property
    def connections(self) -> list[SimConnection]:
        """The upgraded connections that are still up, oldest first."""
        return list(self._conns.values())

    @property
    def current_connections(self) -> int:
        """How many upgraded connections are up."""
        return len(self._conns)

    @property
    def rate_per_s(self) -> float:
        """The default stream rate per topic."""
        return self._rate

    def subscribers(self, topic: str) -> int:
        """How many connections are subscribed to ``topic``.

        Args:
            topic: the topic.

        Returns:
            The number of subscribed connections.
        """
        return len(self._subscribers.get(topic, ()))

    def subscribed_connections(self, topic: str) -> list[int]:
        """The ids of the connections subscribed to ``topic``.

        Args:
            topic: the topic (the dialect's topic key).

        Returns:
            The connection ids, ascending.
        """
        return sorted(conn.id for conn in self._subscribers.get(topic, ()))

    def connection(self, conn_id: int) -> SimConnection | None:
        """The connection with id ``conn_id`` while it is up.

        Args:
            conn_id: the connection's id.

        Returns:
            The connection, or None when it is gone or never existed.
        """
        return self._conns.get(conn_id)

    def messages_sent_by_connection(self) -> dict[int, int]:
        """Stream messages sent to each connection, closed ones included.

        Returns:
            ``{connection id: messages sent}`` for every connection since the start.
        """
        out = dict(self._sent_by_gone)
        out.update((conn.id, conn.messages_sent) for conn in self._conns.values())
        return dict(sorted(out.items()))

    @property
    def limit_hits(self) -> int:
        """How many times any venue limit was hit (0: the clients kept every limit).

        The sum of ``topic_limit_rejections``, ``oversized_subscribes``,
        ``rate_violations``, ``connections_rate_limited`` and the dialect's own
        (e.g. OKX's hourly request budget).
        """
        return (
            self.topic_limit_rejections
            + self.oversized_subscribes
            + self.rate_violations
            + self.connections_rate_limited
            + self.dialect_impl.limit_hits
        )

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, for logs and soak reports.

        Returns:
            A JSON-serialisable dict.
        """
        return {
            "connections_accepted": self.connections_accepted,
            "current_connections": self.current_connections,
            "tcp_accepted": self.tcp_accepted,
            "handshakes_rejected": self.handshakes_rejected,
            "duplicate_subscribes": self.duplicate_subscribes,
            "subscribe_before_login": self.subscribe_before_login,
            "logins_ok": self.logins_ok,
            "logins_failed": self.logins_failed,
            "messages_sent": dict(self.messages_sent),
            "last_seq": dict(self.last_seq),
            "pings_received": self.pings_received,
            "pongs_sent": self.pongs_sent,
            "pongs_withheld": self.pongs_withheld,
            "close_codes_received": list(self.close_codes_received),
            "write_pauses": self.write_pauses,
            "faults": dict(self.faults),
            "sequence_scope": self.sequence_scope.value,
            "limit_hits": self.limit_hits,
            "topic_limit_rejections": self.topic_limit_rejections,
            "oversized_subscribes": self.oversized_subscribes,
            "rate_violations": self.rate_violations,
            "connections_rate_limited": self.connections_rate_limited,
            "shutdown_notices": self.shutdown_notices,
            "shutdown_cuts": self.shutdown_cuts,
            "messages_withheld": self.messages_withheld,
            "stalled_connections": sorted(c.id for c in self._conns.values() if c.stalled),
            "dialect": {"name": self.dialect.value, **self.dialect_impl.stats()},
        }

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` is true; it is re-checked on every state change.

        State changes are connections, disconnections, subscribes, logins and stream
        messages.

        Args:
            predicate: the condition.
            timeout_s: the limit.

        Raises:
            TimeoutError: the condition did not become true in time.
        """
        async with _compat.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    async def wait_connections(self, count: int, timeout_s: float = 5.0) -> None:
        """Wait until exactly ``count`` upgraded connections are up.

        Args:
            count: the number of connections.
            timeout_s: the limit.

        Raises:
            TimeoutError: not in time.
        """
        await self.wait_for(lambda: self.current_connections == count, timeout_s)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ================================================================ stream control

    def set_rate(self, rate_per_s: float, topic: str | None = None) -> None:
        """Change the stream rate.

        Args:
            rate_per_s: messages per second (0 stops the stream).
            topic: one topic to set it for; None sets the default for all topics
                without their own rate.
        """
        if rate_per_s < 0:
            raise ValueError("rate_per_s must be >= 0")
        if topic is None:
            self._rate = float(rate_per_s)
        else:
            self._rates[topic] = float(rate_per_s)
        self._rate_changed.set()

    def burst(self, topic: str, n: int) -> int:
        """Generate ``n`` messages of ``topic`` now and send them to its subscribers.

        Nothing is generated (and the sequence does not move) when nobody is
        subscribed or the simulator is silenced. Stalled connections are subscribed:
        the messages are generated but never sent to them.

        Args:
            topic: the topic.
            n: how many messages.

        Returns:
            The number of messages generated.
        """
        if self._silent or not self._subscribers.get(topic):
            return 0
        self._emit(topic, n)
        return n

    def sequence_gap(self, topic: str, skip: int = 1) -> None:
        """Make the next message of ``topic`` skip ``skip`` sequence numbers.

        With ``SequenceScope.CONNECTION`` every subscribed connection's number skips.

        Args:
            topic: the topic.
            skip: how many numbers to skip.
        """
        self._pending_gaps[topic] = self._pending_gaps.get(topic, 0) + skip
        self.faults["sequence_gap"] += 1

    def _any_rate(self) -> bool:
        return self._rate > 0 or any(r > 0 for r in self._rates.values())

    async def _stream_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            if not self._any_rate():
                self._rate_changed.clear()
                await self._rate_changed.wait()
                last = loop.time()
                continue
            top = max([self._rate, *self._rates.values()])
            await asyncio.sleep(min(0.05, max(0.002, 1.0 / top)))
            now = loop.time()
            elapsed, last = now - last, now
            if self._silent:
                continue
            for topic, subs in list(self._subscribers.items()):
                if not subs:
                    continue
                rate = self._rates.get(topic, self._rate)
                credit = self._credit.get(topic, 0.0) + rate * elapsed
                count = int(credit)
                self._credit[topic] = min(credit - count, 1.0)
                if count:
                    self._emit(topic, count)

    def _current_price(self, topic: str) -> float:
        """The price ``topic`` follows now (drawn, between 100 and 1000, if it has none)."""
        key = self.dialect_impl.price_key(topic)
        price = self._prices.get(key)
        if price is None:
            price = self._prices[key] = 100.0 + self._rng.random() * 900.0
        return price

    def _per_connection(self) -> bool:
        return self.sequence_scope is SequenceScope.CONNECTION

    def _emit(self, topic: str, count: int) -> None:
        subs = list(self._subscribers.get(topic, ()))
        rng = self._rng
        dialect = self.dialect_impl
        price = self._current_price(topic)
        seq = self.last_seq.get(topic, 0)
        ts = int(time.time() * 1000)
        per_connection = self._per_connection()
        draws_side = dialect.draws_side  # Binance "m", OKX "side"
        for _ in range(count):
            skip = self._pending_gaps.pop(topic, 0)
            seq += 1 + skip
            price = max(0.01, price * (1.0 + rng.gauss(0.0, 0.0005)))
            px, qty = f"{price:.2f}", f"{rng.uniform(0.001, 2.0):.4f}"
            flip = draws_side and rng.random() < 0.5
            event = Event(seq, price, px, qty, ts, flip, per_connection)
            if not per_connection:
                # One bytes object for every subscriber: exact de-duplication works.
                payload = dialect.payload(topic, seq, event)
                for conn in subs:
                    self._deliver(conn, topic, payload)
                continue
            for conn in subs:
                if not conn.open:
                    continue
                own = conn.last_seq[topic] = conn.last_seq.get(topic, 0) + 1 + skip
                self._deliver(conn, topic, dialect.payload(topic, own, event))
        self._prices[dialect.price_key(topic)] = price
        self.last_seq[topic] = seq
        self._notify()

    def _deliver(self, conn: SimConnection, topic: str, payload: bytes) -> None:
        if not conn.open:
            return
        if conn.stalled:
            conn.messages_withheld += 1
            self.messages_withheld += 1
            return
        data = self.dialect_impl.frame(conn, topic, payload)
        if data is None:
            return
        conn._ws.send(picows.WSMsgType.TEXT, data)
        conn.last_sent_at = time.monotonic()
        conn.messages_sent += 1
        self.messages_sent[topic] += 1

    # ================================================================ faults

    def drop_all(self) -> int:
        """Reset every connection (SO_LINGER 0 + abort: the clients see an RST).

        Returns:
            The number of connections dropped.
        """
        self.faults["drop"] += 1
        conns = self.connections
        for conn in conns:
            conn.drop()
        return len(conns)

    def close_all(self, code: int = 1000, reason: str = "") -> int:
        """Send CLOSE with ``code`` to every connection (reset after the close timeout).

        Args:
            code: the close code.
            reason: the close reason.

        Returns:
            The number of connections closed.
        """
        self.faults["close"] += 1
        conns = self.connections
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def maintenance(
        self, refuse_s: float = 0.0, *, code: int = 1001, reason: str = "maintenance"
    ) -> int:
        """Disconnect everyone with CLOSE 1001 and optionally refuse upgrades for a while.

        Args:
            refuse_s: for this long, upgrades are refused with 503 and a Retry-After.
            code: the close code.
            reason: the close reason.

        Returns:
            The number of connections closed.
        """
        self.faults["maintenance"] += 1
        if refuse_s > 0:
            self._refuse_until = max(self._refuse_until, time.monotonic() + refuse_s)
            self._refuse_status = 503
        conns = self.connections
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    def end_maintenance(self) -> None:
        """Accept upgrades again at once."""
        self._refuse_until = 0.0

    def silence(self, on: bool = True) -> None:
        """Go half-open: TCP stays up but nothing is sent (no acks, pongs or stream).

        Holds for current and new connections until turned off. Explicit sends
        (``send_*``, ``close_all``...) still go out.

        Args:
            on: True to go silent, False to talk again.
        """
        if on:
            self.faults["silence"] += 1
        self._silent = on

    def withhold_pongs(self, on: bool = True) -> None:
        """Stop answering WebSocket PINGs and application pings.

        Args:
            on: True to withhold, False to answer again.
        """
        if on:
            self.faults["withhold_pongs"] += 1
        self._withhold_pongs = on

    def delay_pongs(self, seconds: float) -> None:
        """Answer pings (WebSocket and application) only after ``seconds``.

        Args:
            seconds: the delay; 0 answers at once.
        """
        if seconds > 0:
            self.faults["delay_pongs"] += 1
        self._pong_delay_s = max(0.0, seconds)

    def reject_handshakes(
        self, status: int = 503, retry_after_s: float | None = None, count: int = 1
    ) -> None:
        """Refuse the next ``count`` upgrades with HTTP ``status``.

        Args:
            status: an HTTP status >= 400 (429, 403, 503...).
            retry_after_s: sent as a ``Retry-After`` header, in whole seconds
                (rounded up), when not None.
            count: how many upgrades to refuse.
        """
        if status < 400:
            raise ValueError("status must be an HTTP error status (>= 400)")
        self.faults["reject_handshake"] += 1
        self._handshake_rejections.extend([(status, retry_after_s)] * count)

    def slow_handshake(self, seconds: float) -> None:
        """Hold every new connection for ``seconds`` before reading its upgrade request.

        Args:
            seconds: the delay; 0 turns it off.
        """
        if seconds > 0:
            self.faults["slow_handshake"] += 1
        self._handshake_delay_s = max(0.0, seconds)

    def reject_auth(self, on: bool = True) -> None:
        """Make every login fail (``{"event": "login", "success": false}``).

        Args:
            on: True to reject, False to check signatures again.
        """
        if on:
            self.faults["reject_auth"] += 1
        self._reject_auth = on

    def reject_subscribes(self, topics: Iterable[str], on: bool = True) -> None:
        """Answer subscribes to ``topics`` with an error from now on.

        Args:
            topics: the topics.
            on: True to reject them, False to accept them again.
        """
        topics = set(topics)
        if on:
            self.faults["reject_subscribes"] += 1
            self.reject_topics |= topics
        else:
            self.reject_topics -= topics

    def send_garbage(self, data: bytes = b"\xff\xff\xff\xff\xde\xad\xbe\xef") -> int:
        """Write raw bytes that are no valid frame (default: reserved opcode 0xF, RSV set).

        Args:
            data: the bytes.

        Returns:
            The number of connections written to.
        """
        return self._inject("garbage", data)

    def send_invalid_utf8(self) -> int:
        """Send a TEXT frame whose payload is not UTF-8 (the client should close 1007).

        Returns:
            The number of connections written to.
        """
        return self._inject("invalid_utf8", build_frame(Opcode.TEXT, b'{"x":"\xc3\x28\xff"}'))

    def send_stray_continuation(self) -> int:
        """Send a CONTINUATION frame with no message to continue (1002 for the client).

        Returns:
            The number of connections written to.
        """
        return self._inject("stray_continuation", build_frame(Opcode.CONTINUATION, b"stray"))

    def send_oversized(self, size: int) -> int:
        """Send one TEXT frame of ``size`` bytes (valid JSON when ``size`` >= 32).

        Args:
            size: the payload size.

        Returns:
            The number of connections written to.
        """
        head, tail = b'{"topic":"oversized","pad":"', b'"}'
        if size >= len(head) + len(tail):
            payload = head + b"x" * (size - len(head) - len(tail)) + tail
        else:
            payload = b"x" * size
        return self._inject("oversized", build_frame(Opcode.TEXT, payload))

    def send_invalid_json(self) -> int:
        """Send a TEXT frame that is valid UTF-8 but not JSON.

        Returns:
            The number of connections written to.
        """
        return self._inject("invalid_json", build_frame(Opcode.TEXT, b'{"topic": "trades.'))

    def _inject(self, fault: str, data: bytes) -> int:
        self.faults[fault] += 1
        conns = [c for c in self.connections if c.open]
        for conn in conns:
            conn.send_raw(data)
        return len(conns)

    # ================================================================ per connection

    def _resolve(self, conn: SimConnection | int) -> SimConnection | None:
        if isinstance(conn, SimConnection):
            return conn if self._conns.get(conn.id) is conn else None
        return self._conns.get(conn)

    def stall(self, conn: SimConnection | int, *, half_open: bool = False) -> bool:
        """Stop sending stream messages to one connection; TCP stays open.

        Messages produced while it is stalled are never sent to it (its sequence
        moves on, so the client sees a gap after :meth:`resume`); other connections
        are not affected. With ``half_open`` its acks, pongs and notices are withheld
        too (and its CLOSE is not answered): :meth:`silence` for one connection.

        Args:
            conn: the connection or its id.
            half_open: withhold every reply as well.

        Returns:
            Whether the connection is up (and now stalled).
        """
        target = self._resolve(conn)
        if target is None:
            return False
        self.faults["stall"] += 1
        target.stalled = True
        target.half_open = half_open
        self._notify()
        return True

    def resume(self, conn: SimConnection | int) -> bool:
        """Undo :meth:`stall`: the next stream messages are sent to the connection again.

        Args:
            conn: the connection or its id.

        Returns:
            Whether the connection is up.
        """
        target = self._resolve(conn)
        if target is None:
            return False
        target.stalled = target.half_open = False
        self._notify()
        return True

    def drop(self, conn: SimConnection | int) -> bool:
        """Reset one connection (SO_LINGER 0 + abort: the client sees an RST).

        Args:
            conn: the connection or its id.

        Returns:
            Whether the connection was up.
        """
        target = self._resolve(conn)
        if target is None:
            return False
        self.faults["drop_connection"] += 1
        target.drop()
        return True

    def announce_shutdown(
        self,
        conn: SimConnection | int | None = None,
        *,
        cut_after_s: float = 1.0,
        cut: bool = True,
    ) -> int:
        """Send the dialect's shutdown notice now, then cut after ``cut_after_s``.

        The notice is the one the age limit sends (see the module docstring); the
        cut is CLOSE 1001 ``"server shutdown"``. Notices are withheld under
        :meth:`silence` and from half-open connections; the cut is not.

        Args:
            conn: one connection (or its id); None for every open connection.
            cut_after_s: the delay announced, and of the cut.
            cut: False to announce only (the connection is never cut for it).

        Returns:
            The number of connections the notice was meant for.
        """
        if cut_after_s < 0:
            raise ValueError("cut_after_s must be >= 0")
        if conn is None:
            targets = [c for c in self._conns.values() if c.open]
        else:
            target = self._resolve(conn)
            targets = [] if target is None or not target.open else [target]
        for target in targets:
            self._send_notice(target, cut_after_s)
            if cut:
                target._later(
                    cut_after_s, functools.partial(self._cut, target, SHUTDOWN_CLOSE_REASON))
        return len(targets)

    def _send_notice(self, conn: SimConnection, cut_in_s: float) -> None:
        if self._silent or conn.half_open or not conn.open:
            return
        conn.send_json(self.dialect_impl.notice(conn, cut_in_s))
        conn.notices_sent += 1
        self.shutdown_notices += 1
        self._notify()

    def _cut(self, conn: SimConnection, reason: str) -> None:
        if not conn.open:
            return
        conn.cut_reason = reason
        self.shutdown_cuts += 1
        conn.close(AGE_CLOSE_CODE, reason)
        self._notify()

    # ================================================================ random faults

    def random_faults(
        self,
        rng: random.Random,
        interval_s: float,
        faults: Sequence[str] = RECOVERABLE_FAULTS,
    ) -> asyncio.Task[None]:
        """Start a task injecting one fault picked by ``rng`` every ``interval_s``.

        Switch-like faults (silence, withhold_pongs) are turned off again after half
        the interval; maintenance refuses upgrades for at most half of it. Stop with
        :meth:`stop_random_faults` (``__aexit__`` stops it too).

        Args:
            rng: picks the faults (seed it for a reproducible soak).
            interval_s: the time between faults.
            faults: names from :data:`ALL_FAULTS` to pick among.

        Returns:
            The task (owned by the simulator; do not await it directly).
        """
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown or not faults:
            raise ValueError(f"unknown or no faults: {sorted(unknown)}")
        if self._fault_task is not None and not self._fault_task.done():
            raise RuntimeError("random faults already running")
        self._fault_task = asyncio.create_task(
            self._random_fault_loop(rng, interval_s, tuple(faults)), name="simulator-faults"
        )
        return self._fault_task

    async def stop_random_faults(self) -> None:
        """Stop the :meth:`random_faults` task and wait for it."""
        task, self._fault_task = self._fault_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _random_fault_loop(
        self, rng: random.Random, interval_s: float, faults: tuple[str, ...]
    ) -> None:
        half = interval_s / 2
        try:
            while True:
                await asyncio.sleep(interval_s)
                fault = rng.choice(faults)
                _LOG.info("random fault: %s", fault)
                if fault == "drop":
                    self.drop_all()
                elif fault == "close":
                    self.close_all(rng.choice((1000, 1001, 1011, 1012, 1013)), "random fault")
                elif fault == "maintenance":
                    self.maintenance(refuse_s=min(half, 1.0))
                elif fault == "reject_handshake":
                    status = rng.choice((429, 503, 503))
                    self.reject_handshakes(status, retry_after_s=1 if status == 429 else None)
                    self.drop_all()
                elif fault in ("silence", "withhold_pongs"):
                    switch = self.silence if fault == "silence" else self.withhold_pongs
                    switch(True)
                    try:
                        await asyncio.sleep(half)
                    finally:
                        switch(False)
                elif fault == "garbage":
                    self.send_garbage()
                elif fault == "invalid_utf8":
                    self.send_invalid_utf8()
                elif fault == "stray_continuation":
                    self.send_stray_continuation()
                elif fault == "invalid_json":
                    self.send_invalid_json()
                elif fault == "sequence_gap" and self._subscribers:
                    self.sequence_gap(rng.choice(sorted(self._subscribers)), rng.randint(1, 5))
        finally:
            self._silent = False
            self._withhold_pongs = False

    # ================================================================ accept / upgrade

    def _accept(self) -> asyncio.Protocol:
        self.tcp_accepted += 1
        self._raw_transports = {t for t in self._raw_transports if not t.is_closing()}
        return _Gate(self, self._handshake_delay_s)

    def _new_ws_protocol(self, peer_ip: str) -> asyncio.BufferedProtocol:
        # What picows.ws_create_server builds per connection (picows is pinned), built
        # here so an accepted socket can be held back before the upgrade.
        protocol: asyncio.BufferedProtocol = WSProtocol(
            None,  # host+port
            None,  # ws_path
            False,  # is_client_side
            functools.partial(self._upgrade, peer_ip=peer_ip),
            PicowsLog(_PICOWS_LOG),  # one logger name, no query or header values
            True,  # disconnect_on_exception
            5.0,  # websocket_handshake_timeout
            False,  # enable_auto_ping
            20.0,
            20.0,
            picows.WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: pongs are the simulator's to give or withhold
            self._max_frame_size,
            None,  # extra_headers
            16 * 1024,  # read_buffer_init_size
        )
        return protocol

    def _upgrade(self, request: picows.WSUpgradeRequest, peer_ip: str = "") -> Any:
        status: int | None = None
        retry_after: float | None = None
        remaining = self._refuse_until - time.monotonic()
        if self._closing:
            status = 503
        elif remaining > 0:
            status, retry_after = self._refuse_status, remaining
        elif self._handshake_rejections:
            status, retry_after = self._handshake_rejections.popleft()
        elif (bad_path := self.dialect_impl.upgrade_status(
                bytes(request.path).decode("latin-1"))) is not None:
            status = bad_path
        elif (wait_s := self._connection_rate_wait(peer_ip)) is not None:
            status, retry_after = 429, max(1.0, wait_s)
            self.connections_rate_limited += 1
        if status is not None:
            self.handshakes_rejected += 1
            self.handshake_statuses.append(status)
            headers = {}
            if retry_after is not None:
                headers["Retry-After"] = str(max(0, math.ceil(retry_after)))
            response = picows.WSUpgradeResponse.create_error_response(
                status, f"{status} refused by simulator".encode(), headers
            )
            return picows.WSUpgradeResponseWithListener(response, None)
        self._next_id += 1
        conn = SimConnection(self, self._next_id, request, peer_ip)
        return _Listener(self, conn)

    def _connection_rate_wait(self, peer_ip: str) -> float | None:
        """None when ``peer_ip`` may open one more connection (it is then counted),
        else the seconds until it may."""
        limit = self.max_connections_per_window
        if limit is None:
            return None
        count, window_s = limit
        now = time.monotonic()
        times = self._upgrades_by_ip.setdefault(peer_ip, deque())
        while times and now - times[0] >= window_s:
            times.popleft()
        if len(times) < count:
            times.append(now)
            return None
        return times[0] + window_s - now

    def _on_connected(self, conn: SimConnection) -> None:
        self.connections_accepted += 1
        self._conns[conn.id] = conn
        conn.opened_at = time.monotonic()
        age_s = self.max_connection_age_s
        if age_s is not None:
            conn._later(age_s, functools.partial(self._cut, conn, AGE_CLOSE_REASON))
            if self.notice_before_s is not None:
                conn._later(
                    age_s - self.notice_before_s,
                    functools.partial(self._send_notice, conn, self.notice_before_s),
                )
        self.dialect_impl.opened(conn)
        self._notify()

    def _on_disconnected(self, conn: SimConnection) -> None:
        conn._cancel_timers()
        self.dialect_impl.closed(conn)
        self._sent_by_gone[conn.id] = conn.messages_sent
        self._conns.pop(conn.id, None)
        for topic in conn.topics:
            subs = self._subscribers.get(topic)
            if subs is not None:
                subs.discard(conn)
        conn.disconnected.set()
        self._notify()

    # ================================================================ inbound

    def _reply(self, conn: SimConnection, message: Any) -> None:
        if not self._silent and not conn.half_open:
            conn.send_json(message)

    def _pong(self, conn: SimConnection, send: Callable[[], None]) -> None:
        if self._silent or self._withhold_pongs or conn.half_open:
            self.pongs_withheld += 1
            return

        def go() -> None:
            if conn.open and not self._silent and not self._withhold_pongs and not conn.half_open:
                send()
                self.pongs_sent += 1

        if self._pong_delay_s > 0:
            conn._later(self._pong_delay_s, go)
        else:
            go()

    def _on_frame(self, conn: SimConnection, frame: picows.WSFrame) -> None:
        msg_type = frame.msg_type
        ws = conn._ws
        if conn.cut_reason == RATE_CLOSE_REASON and msg_type != picows.WSMsgType.CLOSE:
            return  # closing for the rate limit: nothing more is read
        if msg_type == picows.WSMsgType.PING:
            if self.rate_counts_control_frames and not self._inbound_allowed(conn):
                return
            payload = frame.get_payload_as_bytes()
            self.pings_received += 1
            conn.pings_received += 1
            self._pong(conn, lambda: ws.send_pong(payload))
            return
        if msg_type == picows.WSMsgType.PONG:
            if self.rate_counts_control_frames and not self._inbound_allowed(conn):
                return
            self.dialect_impl.pong(conn, frame.get_payload_as_bytes())
            return
        if msg_type == picows.WSMsgType.CLOSE:
            raw = frame.get_payload_as_bytes()
            code = int.from_bytes(raw[:2], "big") if len(raw) >= 2 else 1005
            conn.close_code_received = code
            self.close_codes_received.append(code)
            if (self._silent or conn.half_open) and not ws.is_close_frame_sent:
                return  # half-open: never answer
            if not ws.is_close_frame_sent:
                ws.send_close(picows.WSCloseCode(1000 if code == 1005 else code))
            ws.disconnect(True)
            return
        if msg_type == picows.WSMsgType.CONTINUATION:
            if conn._fragments is None:
                return
            conn._fragments += frame.get_payload_as_bytes()
            if not frame.fin:
                return
            data = bytes(conn._fragments)
            conn._fragments = None
        elif not frame.fin:
            conn._fragments = bytearray(frame.get_payload_as_bytes())
            return
        else:
            data = frame.get_payload_as_bytes()
        conn.messages_received += 1
        if self._inbound_allowed(conn):
            self._on_message(conn, data)

    def _inbound_allowed(self, conn: SimConnection) -> bool:
        """Count one inbound message against ``max_messages_per_s``; on a violation
        close the connection (1008) and return False."""
        limit = self.max_messages_per_s
        if limit is None:
            return True
        now = time.monotonic()
        burst = self.messages_burst
        if burst is not None:
            if conn._tokens_at is None:
                conn._tokens = float(burst)
            else:
                conn._tokens = min(float(burst), conn._tokens + (now - conn._tokens_at) * limit)
            conn._tokens_at = now
            if conn._tokens >= 1.0:
                conn._tokens -= 1.0
                return True
        else:
            arrivals = conn._arrivals
            while arrivals and now - arrivals[0] >= 1.0:
                arrivals.popleft()
            if len(arrivals) < limit:
                arrivals.append(now)
                return True
        self._rate_violation(conn)
        return False

    def _rate_violation(self, conn: SimConnection) -> None:
        if conn.cut_reason == RATE_CLOSE_REASON:
            return
        self.rate_violations += 1
        self.dialect_impl.rate_violation(conn)
        conn.cut_reason = RATE_CLOSE_REASON
        conn.close(RATE_CLOSE_CODE, RATE_CLOSE_REASON)
        self._notify()

    def _on_message(self, conn: SimConnection, data: bytes) -> None:
        self.dialect_impl.message(conn, data)

    # ---------------------------------------------------------- services for dialects

    def _ping_received(self, conn: SimConnection) -> None:
        """Count an application-level ping."""
        self.pings_received += 1
        conn.pings_received += 1

    def _too_many_in_message(self, count: int) -> bool:
        """Whether a subscribe of ``count`` topics breaks ``max_topics_per_message``
        (counted when it does)."""
        limit = self.max_topics_per_message
        if limit is None or count <= limit:
            return False
        self.oversized_subscribes += 1
        return True

    def _connection_full(self, conn: SimConnection, topics: Iterable[str]) -> bool:
        """Whether adding ``topics`` breaks ``max_topics_per_connection`` (the new
        topics are counted as rejections when it does)."""
        limit = self.max_topics_per_connection
        if limit is None:
            return False
        new = set(topics) - conn.topics
        if len(conn.topics) + len(new) <= limit:
            return False
        self.topic_limit_rejections += len(new)
        return True

    def _unsubscribe(self, conn: SimConnection, topics: list[str]) -> None:
        for topic in topics:
            self._remove_topic(conn, topic)
            self._reply(conn, {"event": "unsubscribed", "topic": topic})
        self._notify()

    def _refused(self, topic: str) -> bool:
        return topic in self.reject_topics or (
            self.topic_allowed is not None and not self.topic_allowed(topic)
        )

    def _add_topic(self, conn: SimConnection, topic: str) -> None:
        if topic in conn.topics:
            self.duplicate_subscribes += 1
        conn.topics.add(topic)
        self._subscribers.setdefault(topic, set()).add(conn)

    def _remove_topic(self, conn: SimConnection, topic: str) -> None:
        conn.topics.discard(topic)
        subs = self._subscribers.get(topic)
        if subs is not None:
            subs.discard(conn)


# ==================================================================== CLI


async def _serve(args: argparse.Namespace) -> None:
    sim = ExchangeSimulator(
        port=args.port,
        rate_per_s=args.rate,
        api_key=args.api_key,
        api_secret=args.api_secret,
        reject_topics=args.reject_topic,
        seed=args.seed,
        dialect=Dialect(args.dialect),
    )
    async with sim:
        print(sim.url, flush=True)
        if args.faults > 0:
            sim.random_faults(random.Random(args.seed), args.faults)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run a simulator until Ctrl-C; print its URL first.

    Args:
        argv: the command line (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m defi_ws.testing.simulator",
        description="A local WebSocket venue (defi-ws' generic JSON protocol or a dialect).",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s per topic")
    parser.add_argument("--api-key", default=None, help="require login with this key")
    parser.add_argument("--api-secret", default=None, help="the secret for --api-key")
    parser.add_argument(
        "--reject-topic", action="append", default=[], help="a topic to refuse (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--dialect",
        choices=[d.value for d in Dialect],
        default=Dialect.GENERIC.value,
        help="venue protocol to speak",
    )
    parser.add_argument(
        "--faults", type=float, default=0.0, help="inject a random fault every N seconds"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args(argv)
    if (args.api_key is None) != (args.api_secret is None):
        parser.error("--api-key and --api-secret go together")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
