"""Real local WebSocket servers for tests, on 127.0.0.1 with ports chosen free.

* :class:`ScriptServer`: a picows server whose connections the test scripts frame by
  frame (any opcode, FIN and RSV bits, raw bytes).
* :class:`RawServer`: a hand-written server that does the HTTP upgrade and then keeps
  every raw byte the client sent, so tests can check masking on the real wire.
* :class:`DiscardServer`: a server in its own process that reads and discards, for
  measurements of the client's send path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
from typing import Any

import picows

from defi_ws import _compat
from defi_ws.testing.frames import Frame, parse_frames

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ServerPeer(picows.WSListener):  # type: ignore[misc]
    """The server side of one accepted connection."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: picows.WSTransport | None = None
        self.received: list[tuple[int, bool, bytes]] = []
        self.got_frame = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.answer_close = True

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.received.append((int(frame.msg_type), bool(frame.fin), frame.get_payload_as_bytes()))
        self.got_frame.set()
        if frame.msg_type == picows.WSMsgType.CLOSE and self.answer_close:
            # like a real server: echo the CLOSE, then hang up
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.disconnected.set()

    @property
    def ws(self) -> picows.WSTransport:
        assert self.transport is not None
        return self.transport

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> None:
        self.ws.send(picows.WSMsgType(opcode), payload, fin, rsv1)

    def send_raw(self, data: bytes) -> None:
        self.ws.underlying_transport.write(data)

    async def wait_frames(self, count: int, timeout_s: float = 5.0) -> None:
        async with _compat.timeout(timeout_s):
            while len(self.received) < count:
                self.got_frame.clear()
                await self.got_frame.wait()

    def close_codes(self) -> list[int]:
        return [
            int.from_bytes(p[:2], "big")
            for op, _, p in self.received
            if op == picows.WSMsgType.CLOSE and len(p) >= 2
        ]


class ScriptServer:
    """A picows server on 127.0.0.1; ``await next_peer()`` yields each connection."""

    def __init__(self, **server_kwargs: Any) -> None:
        self._kwargs = server_kwargs
        self.peers: asyncio.Queue[ServerPeer] = asyncio.Queue()
        self.all_peers: list[ServerPeer] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    def _factory(self, request: picows.WSUpgradeRequest) -> ServerPeer:
        peer = ServerPeer()
        self.all_peers.append(peer)
        self.peers.put_nowait(peer)
        return peer

    async def __aenter__(self) -> ScriptServer:
        self._server = await picows.ws_create_server(
            self._factory, "127.0.0.1", 0, **self._kwargs
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for peer in self.all_peers:
            if peer.transport is not None and not peer.disconnected.is_set():
                peer.transport.disconnect(False)
        for peer in self.all_peers:
            if peer.transport is not None:
                await asyncio.wait_for(peer.disconnected.wait(), 5)
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def next_peer(self, timeout_s: float = 5.0) -> ServerPeer:
        peer = await asyncio.wait_for(self.peers.get(), timeout_s)
        async with _compat.timeout(timeout_s):
            while peer.transport is None:
                await asyncio.sleep(0)
        return peer


class RawServer:
    """Accepts one upgrade per connection and records the raw bytes clients send."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.got_data = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        key = b""
        for line in request.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while data := await reader.read(65536):
            self.raw += data
            self.got_data.set()
        writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_frames(self, count: int, timeout_s: float = 5.0) -> list[Frame]:
        async with _compat.timeout(timeout_s):
            while True:
                frames, _ = parse_frames(bytes(self.raw), expect_masked=True)
                if len(frames) >= count:
                    return frames
                self.got_data.clear()
                await self.got_data.wait()


_DISCARD_SCRIPT = r"""
import base64, hashlib, socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
while True:
    conn, _ = server.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    key = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    try:
        while conn.recv_into(buf):
            pass
    except OSError:
        pass
    conn.close()
""".replace("WS_GUID", repr(WS_GUID))


class DiscardServer:
    """A WebSocket server in its own process that reads and discards everything.

    Its own process, so that nothing it allocates (or the GIL it would hold) touches
    the test's measurements; it reads as fast as the client writes.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> DiscardServer:
        self._proc = subprocess.Popen([sys.executable, "-c", _DISCARD_SCRIPT],
                                      stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        port = int(self._proc.stdout.readline())
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait(5)
        assert self._proc.stdout is not None
        self._proc.stdout.close()
