"""The transport boundary: how a :class:`~defi_ws._core.FeedListener` gets a connection.

A :class:`Transport` opens one connection for a listener and returns a
:class:`Connection`; the listener sees every inbound frame, the connection carries
outbound bytes. Two implementations:

* :class:`PicowsTransport` (default): picows over TCP or TLS. picows parses frames in
  C and calls the listener through its vtable.
* :class:`MemoryTransport`: in-memory, for deterministic tests. The test plays the
  server through :class:`MemoryConnection` (``server_send``, ``server_close``,
  ``server_drop``) and reads what the client sent from ``sent``.

Both drive the same per-frame code (``FeedListener.feed`` is what picows' callback
calls too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import picows

from defi_ws._core import FeedListener
from defi_ws._picows_log import PicowsLog
from defi_ws.connect_errors import classify_connect_error, handshake_error_guard
from defi_ws.errors import ConnectError, NotConnectedError
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.testing.frames import Frame, Opcode, parse_frames
from defi_ws.urls import redact_url

_PICOWS_LOGGER = logging.getLogger("defi_ws.picows")
_TRANSPORT_LOG = logging.getLogger("defi_ws.transport")

__all__ = [
    "ConnectOptions",
    "Connection",
    "ListenerEvents",
    "MemoryConnection",
    "MemoryTransport",
    "PicowsConnection",
    "PicowsTransport",
    "Transport",
    "aiofastnet_is_safe",
    "classify_connect_error",
    "redact_url",
]


class ListenerEvents(Protocol):
    """The control hooks a :class:`FeedListener` calls on its owner.

    All are called from inside the event loop's read callback: they must not block.
    """

    def on_open(self) -> None:
        """The connection is open and frames may flow."""

    def on_pong(self, recv_ns: int, payload: bytes) -> None:
        """A PONG (or an application-level pong) arrived at ``recv_ns``."""

    def on_close_received(self, code: int, reason: str) -> None:
        """The peer sent CLOSE with ``code`` (1005 when it gave none)."""

    def on_violation(self, code: int, reason: str) -> None:
        """The peer broke RFC 6455; CLOSE ``code`` was sent."""

    def on_handler_error(self, stage: str, exc: BaseException) -> None:
        """Decode or a callback raised; it was counted and recorded."""

    def on_disconnected(self) -> None:
        """The connection is gone."""


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How to open one connection.

    Attributes:
        handshake_timeout_s: limit for TCP connect + TLS + WebSocket upgrade.
        max_message_size: the largest frame the transport accepts (1009 above).
        ssl_context: TLS settings for ``wss://`` URLs (None: system defaults).
        extra_headers: extra HTTP headers for the upgrade request.
        proxy: connect through this proxy (``http://``, ``https://``, ``socks4://``,
            ``socks5://``, credentials allowed), None for a direct connection.
    """

    handshake_timeout_s: float = 10.0
    max_message_size: int = 16 * 1024 * 1024
    ssl_context: ssl.SSLContext | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    proxy: str | None = None


class Connection(Protocol):
    """One open WebSocket connection, as the supervisor sees it."""

    listener: FeedListener

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""

    def write(self, data: bytes | bytearray) -> None:
        """Write already-encoded (masked) frames in one write.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """

    def send_ping(self, payload: bytes = b"") -> None:
        """Send a PING control frame."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (idempotent)."""

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake."""

    async def wait_closed(self) -> BaseException | None:
        """Wait until the connection is gone; return the transport's error, if any."""


class Transport(Protocol):
    """Opens connections. The only swappable I/O boundary."""

    async def connect(
        self, url: str, listener: FeedListener, options: ConnectOptions
    ) -> Connection:
        """Open a connection to ``url`` whose frames go to ``listener``.

        Cancellation-safe: a cancelled connect leaves no socket behind.

        Raises:
            ConnectError: the attempt failed; ``.disconnect`` says why.
        """


def _shutdown_fd(sock: socket.socket) -> None:
    """Shut a socket down through a duplicate fd, whoever owns the original."""
    with contextlib.suppress(OSError):
        fd = os.dup(sock.fileno())
        dup = socket.socket(fileno=fd)
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


class PicowsConnection:
    """A :class:`Connection` over a picows ``WSTransport``."""

    def __init__(self, ws: picows.WSTransport, listener: FeedListener,
                 sockets: list[socket.socket] | None = None) -> None:
        self._ws = ws
        self.listener = listener
        # The socket objects our socket factory made: uvloop's transports leave them
        # holding a /dev/null duplicate of the fd after close; closed once disconnected.
        self._sockets = sockets or []

    @property
    def closed(self) -> bool:
        return bool(self._ws.is_disconnected)

    @property
    def ws_transport(self) -> picows.WSTransport:
        """The underlying picows transport."""
        return self._ws

    def write(self, data: bytes | bytearray) -> None:
        if self._ws.is_disconnected or self._ws.is_close_frame_sent:
            raise NotConnectedError("connection is closing or closed")
        self._ws.underlying_transport.write(data)

    def send_ping(self, payload: bytes = b"") -> None:
        if not (self._ws.is_disconnected or self._ws.is_close_frame_sent):
            self._ws.send_ping(payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._ws.is_disconnected:
            self.listener.close(code, reason)

    def abort(self) -> None:
        self._ws.disconnect(False)

    async def wait_closed(self) -> BaseException | None:
        try:
            await self._ws.wait_disconnected()
        except Exception as exc:  # picows re-raises what made it disconnect
            return exc
        finally:
            if self._ws.is_disconnected:
                for sock in self._sockets:
                    sock.close()
        return None


def aiofastnet_is_safe(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether aiofastnet's transports notice every read-side error and EOF on ``loop``.

    aiofastnet's socket transports read in ``loop.add_reader`` callbacks and, after a
    short read, return and count on being called again while the socket stays readable
    (level-triggered readiness). The stock asyncio loop's selectors are level-triggered
    and report a socket error as readable: the next turn reads the error. uvloop's
    readers are libuv poll handles: on POLLERR (a TCP reset) libuv stops the handle,
    and uvloop runs the reader once more and closes the handle. When the reset arrives
    together with data (a message, then an RST, while the loop is busy), that one read
    returns the data, the reset is never read, and the socket is never polled again:
    the connection looks open until the next write fails. Other loops are not known
    to be safe.

    Args:
        loop: the running event loop.

    Returns:
        True for the stock asyncio selector loop only.
    """
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)


class PicowsTransport:
    """The default transport: picows over TCP or TLS.

    Args:
        use_aiofastnet: whether picows runs over aiofastnet's TCP/TLS transports or the
            event loop's own. None (default): aiofastnet where it notices every reset
            (the stock asyncio loop, where it also costs about 5 % less client CPU
            per message), the loop's own elsewhere (uvloop, see
            :func:`aiofastnet_is_safe`; there the two cost the same for ``ws://``,
            aiofastnet 2-6 % less for ``wss://``; ``bench/transports.py``).
            True: aiofastnet, but only where it is safe; elsewhere the loop's own is
            used and a WARNING says so (once per transport). False: the loop's own.
    """

    def __init__(self, *, use_aiofastnet: bool | None = None) -> None:
        self._use_aiofastnet = use_aiofastnet
        self._warned = False

    def _aiofastnet_for(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether to use aiofastnet's transports on ``loop``."""
        if self._use_aiofastnet is False:
            return False
        if aiofastnet_is_safe(loop):
            return True
        if self._use_aiofastnet and not self._warned:
            self._warned = True
            _TRANSPORT_LOG.warning(
                "use_aiofastnet=True ignored on %s: its transports can miss a TCP reset "
                "that arrives together with data on this loop; using the loop's own",
                type(loop).__name__)
        return False

    async def connect(
        self, url: str, listener: FeedListener, options: ConnectOptions
    ) -> PicowsConnection:
        loop = asyncio.get_running_loop()
        use_aiofastnet = self._aiofastnet_for(loop)
        sockets: list[socket.socket] = []

        async def socket_factory(parsed: Any) -> socket.socket:
            infos = await loop.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
            last_exc: OSError = OSError(f"cannot resolve {parsed.host}")
            for family, type_, proto, _, addr in infos:
                sock = socket.socket(family, type_, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, addr)
                except OSError as exc:
                    sock.close()
                    last_exc = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                sockets.append(sock)
                return sock
            raise last_exc

        connect = picows.ws_connect(
            lambda: listener,
            url,
            ssl_context=options.ssl_context,
            disconnect_on_exception=False,
            websocket_handshake_timeout=options.handshake_timeout_s,
            logger_name=PicowsLog(_PICOWS_LOGGER),  # one name, no secrets
            enable_auto_ping=False,
            enable_auto_pong=True,
            max_frame_size=options.max_message_size,
            extra_headers=dict(options.extra_headers) or None,
            max_redirects=0,
            proxy=options.proxy,
            socket_factory=socket_factory,
            use_aiofastnet=use_aiofastnet,
        )
        task = asyncio.ensure_future(
            asyncio.wait_for(connect, timeout=options.handshake_timeout_s + 1.0)
        )
        try:
            with handshake_error_guard():  # aiofastnet reports exception classes
                ws, _ = await asyncio.shield(task)
        except asyncio.CancelledError:
            # picows' handshake wait is shielded: a cancelled attempt would keep its
            # socket until the handshake timeout. Shut the socket down instead, let
            # the attempt fail at once, and collect it.
            for sock in sockets:
                _shutdown_fd(sock)
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), timeout=1.0)
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result()[0].disconnect(False)
            raise
        except BaseException as exc:
            for sock in sockets:
                _shutdown_fd(sock)
            raise ConnectError(classify_connect_error(exc, url)) from exc
        if ws.is_disconnected and not listener.connected_ns:
            # picows returns a dead transport when the peer hangs up mid-upgrade.
            ws.disconnect(False)
            raise ConnectError(Disconnect(DisconnectReason.CONNECT_FAILED, detail=(
                "connection closed by the peer before the WebSocket upgrade completed "
                "(no upgrade response)")))
        return PicowsConnection(ws, listener, sockets)


# ----------------------------------------------------------------------------- memory


class MemoryConnection:
    """An in-memory :class:`Connection`; the test plays the server.

    Attributes:
        sent: every frame the client sent, unmasked, in order.
        listener: the client's listener (frames from ``server_*`` go to it).
    """

    def __init__(
        self, listener: FeedListener, url: str, responder: Responder | None = None
    ) -> None:
        self.listener = listener
        self.url = url
        self._responder = responder
        self.sent: list[Frame] = []
        self.writes = 0
        #: Answer PINGs with PONGs (turn off to simulate a dead peer) after a delay.
        self.auto_pong = True
        self.pong_delay_s = 0.0
        #: Answer the client's CLOSE (turn off to simulate a peer that never does).
        self.auto_close_reply = True
        self._closed = False
        self._close_sent = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: BaseException | None = None

    # -- the wire the listener answers on (same method names as picows' WSTransport)

    def send_close(self, code: int = 1000, reason: str | bytes = b"") -> None:
        if self._closed or self._close_sent:
            return
        self._close_sent = True
        raw = reason.encode() if isinstance(reason, str) else bytes(reason)
        self.sent.append(Frame(Opcode.CLOSE, code.to_bytes(2, "big") + raw))
        if self.auto_close_reply:  # like a live server: echo the CLOSE, then hang up
            asyncio.get_running_loop().call_soon(self._close_reply, code)

    def _close_reply(self, code: int) -> None:
        if not self._closed:
            self.listener.feed(Opcode.CLOSE, code.to_bytes(2, "big"), True, 0)
            self.disconnect()

    def send_pong(self, payload: bytes = b"") -> None:
        if not (self._closed or self._close_sent):
            self.sent.append(Frame(Opcode.PONG, bytes(payload)))

    def send(self, msg_type: int, payload: bytes | bytearray | memoryview) -> None:
        """Send one data frame (what :meth:`FeedListener.reply` calls)."""
        if self._closed or self._close_sent:
            raise NotConnectedError("connection is closing or closed")
        self.sent.append(Frame(Opcode(int(msg_type)), bytes(payload)))

    def disconnect(self, graceful: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self.listener.detach()
        if not self._done.done():
            self._done.set_result(None)

    # -- Connection

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_sent(self) -> bool:
        """Whether the client sent CLOSE."""
        return self._close_sent

    def write(self, data: bytes | bytearray) -> None:
        if self._closed or self._close_sent:
            raise NotConnectedError("connection is closing or closed")
        self.writes += 1
        frames, rest = parse_frames(bytes(data), expect_masked=True)
        if rest:
            raise ValueError("client wrote a partial frame")
        self.sent.extend(frames)
        if self._responder is not None:
            loop = asyncio.get_running_loop()
            for frame in frames:
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    loop.call_soon(self._respond, frame.payload)

    def _respond(self, payload: bytes) -> None:
        if self._closed or self._responder is None:
            return
        try:
            message: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = payload
        self._responder(self, message)

    def send_ping(self, payload: bytes = b"") -> None:
        if not (self._closed or self._close_sent):
            self.sent.append(Frame(Opcode.PING, bytes(payload)))
            if self.auto_pong:  # like a live server: answer soon
                asyncio.get_running_loop().call_later(
                    self.pong_delay_s, self._pong, bytes(payload))

    def _pong(self, payload: bytes) -> None:
        if not self._closed:
            self.listener.feed(Opcode.PONG, payload, True, 0)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closed:
            self.listener.close(code, reason)

    def abort(self) -> None:
        self.disconnect()

    async def wait_closed(self) -> BaseException | None:
        await asyncio.shield(self._done)
        return self._error

    # -- the server side, driven by tests

    def sent_messages(self) -> list[Any]:
        """The client's TEXT/BINARY messages, JSON-decoded where possible."""
        out: list[Any] = []
        for frame in self.sent:
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                try:
                    out.append(orjson.loads(frame.payload))
                except orjson.JSONDecodeError:
                    out.append(frame.payload)
        return out

    def server_send(self, message: Any, opcode: int = Opcode.TEXT, fin: bool = True,
                    rsv: int = 0) -> None:
        """Deliver one frame to the client (dicts/lists are JSON-encoded)."""
        if self._closed:
            raise NotConnectedError("memory connection is closed")
        if isinstance(message, str):
            payload = message.encode()
        elif isinstance(message, bytes | bytearray | memoryview):
            payload = bytes(message)
        else:
            payload = orjson.dumps(message)
        self.listener.feed(int(opcode), payload, fin, rsv)

    def server_close(self, code: int = 1000, reason: str = "") -> None:
        """The server sends CLOSE (the client answers and disconnects)."""
        payload = code.to_bytes(2, "big") + reason.encode()
        self.listener.feed(Opcode.CLOSE, payload, True, 0)
        self.disconnect()

    def server_drop(self, error: BaseException | None = None) -> None:
        """The connection dies without a closing handshake."""
        self._error = error
        self.disconnect()


#: A scripted venue: called (soon after) with each message the client sends.
Responder = Callable[[MemoryConnection, Any], None]


class MemoryTransport:
    """An in-memory :class:`Transport` for deterministic tests.

    Args:
        responder: plays the venue: called with ``(connection, message)`` for each
            message the client sends (JSON-decoded where possible).

    Attributes:
        connections: every connection opened, oldest first.
        urls: the URL of every attempt, failed ones included.
    """

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder
        self.connections: list[MemoryConnection] = []
        self.urls: list[str] = []
        self._failures: deque[BaseException] = deque()
        self.on_connect: Any = None

    def fail_next(self, *errors: BaseException) -> None:
        """Make the next attempts fail with these errors, in order."""
        self._failures.extend(errors)

    @property
    def current(self) -> MemoryConnection:
        """The most recent connection."""
        return self.connections[-1]

    async def connect(
        self, url: str, listener: FeedListener, options: ConnectOptions
    ) -> MemoryConnection:
        self.urls.append(url)
        await asyncio.sleep(0)
        if self._failures:
            exc = self._failures.popleft()
            raise ConnectError(classify_connect_error(exc)) from exc
        conn = MemoryConnection(listener, url, self.responder)
        self.connections.append(conn)
        listener.attach(conn)
        if self.on_connect is not None:
            self.on_connect(conn)
        return conn

