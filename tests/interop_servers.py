"""Venues built on other WebSocket servers, for interop tests of FeedClient.

:class:`WebsocketsVenue` (the ``websockets`` library) and :class:`AiohttpVenue`
(aiohttp) speak the same generic protocol as
:class:`~defi_ws.testing.ExchangeSimulator`::

    -> {"op": "subscribe", "args": ["trades.BTC", ...]}
    <- {"event": "subscribed", "topic": "trades.BTC"}          (one ack per topic)
    -> {"op": "unsubscribe", "args": [...]}
    <- {"event": "unsubscribed", "topic": "trades.BTC"}
    <- {"topic": "trades.BTC", "seq": 1, "data": {"n": 1}}     (a stream per topic)

WebSocket PINGs are answered by the library itself (and, with ``server_ping_s``, the
server pings the client too and drops it when no PONG comes back). Each venue can
drop every connection (RST), close every connection with a code, and refuse upgrades
with 503. Both listen on 127.0.0.1 with a port chosen free. Sequence numbers are
per topic and global to the venue, as in the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from defi_ws import _compat

__all__ = ["AiohttpVenue", "Venue", "VenueConnection", "WebsocketsVenue"]

_HOST = "127.0.0.1"


def _abort_with_rst(transport: Any) -> None:
    """SO_LINGER 0, then abort: the peer sees a TCP RST."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class VenueConnection:
    """The venue's side of one upgraded connection.

    Attributes:
        id: a number unique within the venue, from 1.
        topics: the topics this connection is subscribed to.
        messages_received: text messages the client sent.
        subscribes: every topic the client subscribed, in order (repeats included).
    """

    def __init__(self, conn_id: int, transport: Any) -> None:
        self.id = conn_id
        self.transport = transport
        self.topics: set[str] = set()
        self.messages_received = 0
        self.subscribes: list[str] = []

    def __repr__(self) -> str:
        return f"<VenueConnection #{self.id} topics={sorted(self.topics)}>"


class Venue:
    """What both venues share: protocol, stream, bookkeeping and waiting.

    Args:
        rate_per_s: stream messages per second per subscribed topic.
        server_ping_s: when set, the server pings the client this often and drops
            it when no PONG arrives in time.
    """

    kind = "abstract"

    def __init__(self, *, rate_per_s: float = 20.0, server_ping_s: float | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.server_ping_s = server_ping_s
        self.refuse = False
        self.port = 0
        self.connections_accepted = 0
        self.handshakes_refused = 0
        self.last_seq: dict[str, int] = {}
        self._conns: dict[int, tuple[VenueConnection, Any]] = {}
        self._next_id = 0
        self._changed = asyncio.Event()
        self._stream_task: asyncio.Task[None] | None = None

    # -------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        return f"ws://{_HOST}:{self.port}/"

    @property
    def connections(self) -> list[VenueConnection]:
        """The upgraded connections that are up, oldest first."""
        return [conn for conn, _ in self._conns.values()]

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; re-checked on every venue event."""
        async with _compat.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    def drop_all(self) -> int:
        """Reset every connection (the clients see an RST)."""
        conns = list(self._conns.values())
        for conn, _ in conns:
            _abort_with_rst(conn.transport)
        return len(conns)

    async def close_all(self, code: int = 1000, reason: str = "") -> int:
        """Close every connection with ``code`` and wait for the closing handshakes."""
        conns = list(self._conns.values())
        await asyncio.gather(*(self._close(ws, code, reason) for _, ws in conns))
        return len(conns)

    async def ping_clients(self, timeout_s: float = 1.0) -> bool | None:
        """PING every client; whether all answered (None: the library can't tell)."""
        return None

    async def __aenter__(self) -> Venue:
        await self._start()
        self._stream_task = asyncio.create_task(self._stream(), name=f"{self.kind}-stream")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._stream_task = self._stream_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop()

    # -------------------------------------------------------------- per library

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def _close(self, ws: Any, code: int, reason: str) -> None:
        raise NotImplementedError

    async def _send_many(self, sockets: list[Any], payload: str) -> None:
        raise NotImplementedError

    async def _send(self, ws: Any, payload: str) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- shared

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _opened(self, transport: Any, ws: Any) -> VenueConnection:
        self._next_id += 1
        self.connections_accepted += 1
        conn = VenueConnection(self._next_id, transport)
        self._conns[conn.id] = (conn, ws)
        self._notify()
        return conn

    def _closed(self, conn: VenueConnection) -> None:
        self._conns.pop(conn.id, None)
        self._notify()

    async def _on_text(self, conn: VenueConnection, ws: Any, data: str | bytes) -> None:
        conn.messages_received += 1
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self._send(ws, '{"event":"error","msg":"invalid JSON"}')
            return
        op = request.get("op") if isinstance(request, dict) else None
        args = request.get("args") if isinstance(request, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            await self._send(ws, orjson.dumps({"event": "error", "msg": f"bad op {op!r}"}).decode())
            return
        for topic in args:
            if op == "subscribe":
                conn.topics.add(topic)
                conn.subscribes.append(topic)
                reply = {"event": "subscribed", "topic": topic}
            else:
                conn.topics.discard(topic)
                reply = {"event": "unsubscribed", "topic": topic}
            await self._send(ws, orjson.dumps(reply).decode())
        self._notify()

    async def _stream(self) -> None:
        step_s = 0.05
        per_step = self.rate_per_s * step_s
        credit = 0.0
        while True:
            await asyncio.sleep(step_s)
            credit += per_step
            count, credit = int(credit), credit - int(credit)
            if not count:
                continue
            subscribed: dict[str, list[Any]] = {}
            for conn, ws in list(self._conns.values()):
                for topic in conn.topics:
                    subscribed.setdefault(topic, []).append(ws)
            for topic, sockets in sorted(subscribed.items()):
                for _ in range(count):
                    seq = self.last_seq.get(topic, 0) + 1
                    self.last_seq[topic] = seq
                    payload = orjson.dumps({"topic": topic, "seq": seq, "data": {"n": seq}})
                    await self._send_many(sockets, payload.decode())
            if subscribed:
                self._notify()


class WebsocketsVenue(Venue):
    """The generic protocol on the ``websockets`` library (asyncio implementation)."""

    kind = "websockets"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server: Server | None = None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse:
            self.handshakes_refused += 1
            self._notify()
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "refused\n")
        return None

    async def ping_clients(self, timeout_s: float = 1.0) -> bool | None:
        waiters = [await ws.ping() for _, ws in list(self._conns.values())]
        try:
            async with _compat.timeout(timeout_s):
                await asyncio.gather(*waiters)
        except TimeoutError:
            return False
        return True

    async def _handler(self, ws: ServerConnection) -> None:
        conn = self._opened(ws.transport, ws)
        try:
            async for message in ws:
                await self._on_text(conn, ws, message)
        except ConnectionClosed:
            pass
        finally:
            self._closed(conn)

    async def _start(self) -> None:
        self._server = await serve(
            self._handler, _HOST, 0,
            process_request=self._process_request,
            ping_interval=self.server_ping_s,
            ping_timeout=self.server_ping_s,
            close_timeout=1.0,
            compression=None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        await ws.close(code, reason)

    async def _send_many(self, sockets: list[ServerConnection], payload: str) -> None:
        broadcast(sockets, payload)

    async def _send(self, ws: ServerConnection, payload: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(payload)


class AiohttpVenue(Venue):
    """The generic protocol on aiohttp's server."""

    kind = "aiohttp"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._runner: web.AppRunner | None = None

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            self.handshakes_refused += 1
            self._notify()
            return web.Response(status=503, text="refused")
        ws = web.WebSocketResponse(
            autoping=True, heartbeat=self.server_ping_s, compress=False, timeout=1.0
        )
        await ws.prepare(request)
        conn = self._opened(request.transport, ws)
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await self._on_text(conn, ws, message.data)
        finally:
            self._closed(conn)
        return ws

    async def _on_shutdown(self, app: web.Application) -> None:
        await asyncio.gather(
            *(ws.close(code=1001, message=b"shutdown") for _, ws in list(self._conns.values())),
            return_exceptions=True,
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handler)
        app.on_shutdown.append(self._on_shutdown)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, _HOST, 0)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _close(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode())

    async def _send_many(self, sockets: list[web.WebSocketResponse], payload: str) -> None:
        for ws in sockets:
            await self._send(ws, payload)

    async def _send(self, ws: web.WebSocketResponse, payload: str) -> None:
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(payload)


VENUES: dict[str, type[Venue]] = {"websockets": WebsocketsVenue, "aiohttp": AiohttpVenue}
