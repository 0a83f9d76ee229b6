"""A connection that dies while the client's loop is busy is reported once the loop frees up.

The server runs on a thread of its own with blocking sockets, so it can send a message
and reset (SO_LINGER 0) or half-close the connection while the client's event loop is
blocked for 100 ms (in a ``call_soon`` callback or in ``on_message``): when the loop
polls again, the message and the reset (or EOF) are both there at once. On uvloop,
aiofastnet's socket transport lost the reset in exactly that case (the feed stayed LIVE
on a dead socket until its next write).

The client has ``NoPing``, no stale clock, no topics and no auth: after LIVE it never
writes and no timer of its own can end the connection, so a disconnect is only reported
if the transport noticed the loss. Promptness is counted in event-loop turns (a
callback that re-schedules itself), not in seconds, so a loaded machine cannot fail it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from defi_ws._core import FeedListener
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import NoReconnect
from defi_ws.testing import ExchangeSimulator
from defi_ws.tls import TlsConfig
from defi_ws.transport import ConnectOptions, PicowsTransport

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LAST = b'{"topic":"trades.BTC","data":{"px":"1"}}'
BUSY = b'{"topic":"busy","data":{}}'
#: A disconnect must reach on_disconnected within this many loop turns after the
#: loop frees up (a few are needed: read, connection_lost, the supervisor's wake-up).
MAX_TURNS = 30


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield str(path)


def text_frame(payload: bytes) -> bytes:
    """One unmasked server TEXT frame."""
    if len(payload) < 126:
        return bytes([0x81, len(payload)]) + payload
    return bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload


class ThreadServer:
    """One WebSocket connection served from a thread with blocking sockets.

    Args:
        tls: the server's TLS context (None: plain TCP).
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10.0)
        port = self._listener.getsockname()[1]
        self.url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/"
        self.conn: socket.socket | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            sock, _ = self._listener.accept()
            sock.settimeout(10.0)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("client left during the upgrade")
                head += chunk
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            self.conn = sock  # before the 101: once the client is LIVE, conn is set
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        except BaseException as exc:  # reported by close()
            self.error = exc

    def send(self, payload: bytes) -> None:
        """Send one TEXT message now (from any thread)."""
        assert self.conn is not None
        self.conn.sendall(text_frame(payload))

    def hang_up(self, how: str) -> None:
        """End the connection now: ``reset`` (RST) or ``eof`` (FIN, no CLOSE frame)."""
        assert self.conn is not None
        if how == "reset":
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.conn.close()  # an SSLSocket sends no close_notify unless unwrapped
            self.conn = None
        else:
            socket.socket.shutdown(self.conn, socket.SHUT_WR)  # TCP FIN, no TLS alert

    def close(self) -> None:
        """Stop serving and raise what went wrong in the thread, if anything."""
        self._thread.join(10.0)
        self._listener.close()
        if self.conn is not None:
            self.conn.close()
        if self.error is not None:
            raise self.error


class TurnCounter:
    """Counts event-loop turns: a callback that re-schedules itself once per turn."""

    def __init__(self) -> None:
        self.turns = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.turns += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class Recorder(JsonHandler):
    """Records data messages; on the BUSY message runs ``on_busy`` inside on_message."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.messages: list[Any] = []
        self.on_busy: Any = None

    def on_message(self, message: Any) -> None:
        self.messages.append(message)
        if message["topic"] == "busy" and self.on_busy is not None:
            self.on_busy()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


async def lose_while_busy(server: ThreadServer, ca_file: str, *, how: str, with_data: bool,
                          busy_in: str, transport: PicowsTransport | None = None,
                          ) -> tuple[Disconnect, int, list[Any]]:
    """Connect, then lose the connection while the loop is blocked for 100 ms.

    Returns:
        The reported disconnect, the loop turns from the end of the blocking call to the
        report, and the data messages the handler got.
    """
    loop = asyncio.get_running_loop()
    handler = Recorder(server.url)
    lost: asyncio.Future[Disconnect] = loop.create_future()
    counter = TurnCounter()
    freed_at: list[int] = []

    def on_disconnected(disconnect: Disconnect) -> None:
        if not lost.done():
            lost.set_result(disconnect)

    def busy() -> None:
        if with_data:
            server.send(LAST)
        server.hang_up(how)
        time.sleep(0.1)  # the loop is blocked; everything arrives meanwhile
        freed_at.append(counter.turns)

    client = FeedClient(handler, heartbeat=NoPing(), reconnect=NoReconnect(),
                        tls=TlsConfig(ca_file=ca_file), transport=transport,
                        on_disconnected=on_disconnected)
    async with client:
        await client.wait_live(10)
        counter.start()
        if busy_in == "callback":
            loop.call_soon(busy)
        else:
            handler.on_busy = busy
            server.send(BUSY)
        try:
            # NoPing, no stale clock, nothing to write: only the transport can end it.
            disconnect = await asyncio.wait_for(asyncio.shield(lost), 10.0)
            turns = counter.turns - freed_at[0]
        finally:
            counter.stop()
    data = [m for m in handler.messages if m["topic"] != "busy"]
    return disconnect, turns, data


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("how,with_data", [
    ("reset", True), ("reset", False), ("eof", True), ("eof", False)],
    ids=["message+reset", "reset", "message+eof", "eof"])
async def test_loss_during_a_busy_callback_is_a_prompt_transport_error(
    ca: trustme.CA, ca_file: str, scheme: str, how: str, with_data: bool
) -> None:
    server = ThreadServer(server_tls(ca) if scheme == "wss" else None)
    try:
        disconnect, turns, data = await lose_while_busy(
            server, ca_file, how=how, with_data=with_data, busy_in="callback")
    finally:
        server.close()
    assert disconnect.reason is DisconnectReason.TRANSPORT_ERROR, disconnect.describe()
    assert turns <= MAX_TURNS
    # What the peer sent before hanging up is delivered, not lost with the socket.
    assert [m["topic"] for m in data] == (["trades.BTC"] if with_data else [])


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_reset_with_data_while_on_message_blocks_is_a_prompt_transport_error(
    ca: trustme.CA, ca_file: str, scheme: str
) -> None:
    server = ThreadServer(server_tls(ca) if scheme == "wss" else None)
    try:
        disconnect, turns, data = await lose_while_busy(
            server, ca_file, how="reset", with_data=True, busy_in="on_message")
    finally:
        server.close()
    assert disconnect.reason is DisconnectReason.TRANSPORT_ERROR, disconnect.describe()
    assert turns <= MAX_TURNS
    assert [m["topic"] for m in data] == ["trades.BTC"]


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("use_aiofastnet", [True, False], ids=["aiofastnet", "loop-own"])
async def test_reset_with_data_is_noticed_whatever_transport_is_asked_for(
    ca: trustme.CA, ca_file: str, scheme: str, use_aiofastnet: bool
) -> None:
    server = ThreadServer(server_tls(ca) if scheme == "wss" else None)
    try:
        disconnect, turns, data = await lose_while_busy(
            server, ca_file, how="reset", with_data=True, busy_in="callback",
            transport=PicowsTransport(use_aiofastnet=use_aiofastnet))
    finally:
        server.close()
    assert disconnect.reason is DisconnectReason.TRANSPORT_ERROR, disconnect.describe()
    assert turns <= MAX_TURNS
    assert [m["topic"] for m in data] == ["trades.BTC"]


@pytest.mark.parametrize("use_aiofastnet", [None, True, False])
async def test_aiofastnet_only_where_it_notices_every_reset(
    use_aiofastnet: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    """aiofastnet on the stock asyncio loop (less CPU per wss message), unless told not
    to; never on uvloop, where it loses a reset that comes with data (said once)."""
    caplog.set_level(logging.WARNING, logger="defi_ws")
    safe = isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)
    transport = PicowsTransport(use_aiofastnet=use_aiofastnet)
    kinds = []
    async with ExchangeSimulator() as sim:
        for _ in range(2):
            conn = await transport.connect(sim.url, FeedListener(None), ConnectOptions())
            kinds.append(type(conn.ws_transport.underlying_transport).__module__.split(".")[0])
            conn.abort()
            await conn.wait_closed()
    expected = "aiofastnet" if safe and use_aiofastnet is not False else (
        "asyncio" if safe else "uvloop")
    assert kinds == [expected, expected]
    warnings = [r for r in caplog.records if "use_aiofastnet=True ignored" in r.getMessage()]
    assert len(warnings) == (1 if use_aiofastnet and not safe else 0)
