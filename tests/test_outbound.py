"""Outbound: every frame masked (RFC 6455 5.3), a batch leaves in one write.

Checked on the real wire: a raw server records the bytes the client sent and a strict
parser unmasks them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from defi_ws._core import FeedListener, FrameEncoder
from defi_ws.errors import NotConnectedError
from defi_ws.outbound import Outbound
from defi_ws.testing.frames import Opcode, parse_frames
from defi_ws.transport import ConnectOptions, PicowsConnection, PicowsTransport
from tests.servers import RawServer


class CountingConnection:
    """Wraps a connection and counts writes."""

    def __init__(self, conn: PicowsConnection) -> None:
        self.conn = conn
        self.writes: list[int] = []

    def write(self, data: bytes | bytearray) -> None:
        self.writes.append(len(data))
        self.conn.write(data)


async def open_raw() -> tuple[RawServer, PicowsConnection]:
    server = RawServer()
    await server.__aenter__()
    conn = await PicowsTransport().connect(
        server.url, FeedListener(lambda m: None), ConnectOptions())
    return server, conn


async def test_send_batch_is_one_write_of_masked_frames() -> None:
    server, conn = await open_raw()
    try:
        counting = CountingConnection(conn)
        out = Outbound()
        items: list[Any] = [{"op": "subscribe", "args": [f"t{i}"]} for i in range(50)]
        items += ["plain text", b'{"raw":true}', "x" * 70_000]
        assert out.send_batch(counting, items) == len(items)  # type: ignore[arg-type]
        assert len(counting.writes) == 1
        frames = await server.wait_frames(len(items))
        assert len(frames) == len(items)
        masks = set()
        for frame, item in zip(frames, items, strict=True):
            assert frame.mask is not None and frame.fin and frame.rsv == 0
            assert frame.opcode == Opcode.TEXT
            expected = item.encode() if isinstance(item, str) else (
                item if isinstance(item, bytes) else orjson.dumps(item))
            assert frame.payload == expected
            masks.add(frame.mask)
        assert len(masks) > 40  # a fresh key per frame
    finally:
        conn.abort()
        await conn.wait_closed()
        await server.__aexit__(None, None, None)


async def test_send_single_and_binary() -> None:
    server, conn = await open_raw()
    try:
        out = Outbound()
        out.send(conn, {"op": "ping"})
        out.send(conn, b"\x00\x01\xff", binary=True)
        frames = await server.wait_frames(2)
        assert frames[0].opcode == Opcode.TEXT and orjson.loads(frames[0].payload) == {"op": "ping"}
        assert frames[1].opcode == Opcode.BINARY and frames[1].payload == b"\x00\x01\xff"
        assert all(f.mask is not None for f in frames)
    finally:
        conn.abort()
        await conn.wait_closed()
        await server.__aexit__(None, None, None)


async def test_send_after_close_raises_not_connected() -> None:
    server, conn = await open_raw()
    try:
        conn.close(1000)
        with pytest.raises(NotConnectedError):
            Outbound().send(conn, {"late": True})
    finally:
        conn.abort()
        await conn.wait_closed()
        await server.__aexit__(None, None, None)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_encoder_length_encodings_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    encoder = FrameEncoder()
    for data in (encoder.encode([payload], True), encoder.encode_one(payload, True)):
        frames, rest = parse_frames(bytes(data), expect_masked=True)
        assert rest == b"" and len(frames) == 1
        assert frames[0].payload == payload and frames[0].opcode == Opcode.BINARY
