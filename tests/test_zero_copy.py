"""Zero-copy inbound: decode sees picows' receive buffer itself, not a copy.

For an unfragmented message the memoryview handed to decode must alias the frame's
payload inside picows' receive buffer (same address). Fragmented messages are the one
place a copy is allowed: they must arrive whole and byte-exact.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest

from defi_ws import _compat
from defi_ws._core import FeedListener, buffer_address
from defi_ws.transport import ConnectOptions, PicowsTransport
from tests.servers import ScriptServer

TEXT, CONT = 1, 0


class AddressProbe:
    """A decode callable that records where each payload lives."""

    def __init__(self) -> None:
        self.listener: FeedListener | None = None
        self.records: list[tuple[int, int, bytes]] = []

    def __call__(self, view: memoryview) -> Any:
        assert self.listener is not None
        assert isinstance(view, memoryview) and view.readonly
        self.records.append((buffer_address(view), self.listener.last_payload_addr, bytes(view)))
        return orjson.loads(view)


async def open_probe(server: ScriptServer) -> tuple[Any, AddressProbe, list[Any]]:
    probe = AddressProbe()
    got: list[Any] = []
    listener = FeedListener(got.append, decode=probe)
    probe.listener = listener
    conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
    return conn, probe, got


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    async with _compat.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.001)


async def test_unfragmented_payload_aliases_the_receive_buffer() -> None:
    async with ScriptServer() as server:
        conn, probe, got = await open_probe(server)
        peer = await server.next_peer()
        messages = [orjson.dumps({"i": i, "pad": "x" * (i * 37 % 300)}) for i in range(200)]
        for message in messages:
            peer.send(TEXT, message)
        await wait_for(lambda: len(got) == len(messages))
        assert [orjson.dumps(m) for m in got] == messages
        for view_addr, frame_addr, payload in probe.records:
            assert view_addr == frame_addr, "decode got a copy, not the receive buffer"
            assert payload in messages
        # Several frames arrived per socket read: the views point at different
        # places of the same buffer, not at one reused scratch copy.
        assert len({addr for addr, _, _ in probe.records}) > 1
        conn.abort()
        await conn.wait_closed()


@pytest.mark.parametrize("size,chunk", [(10, 3), (5_000, 1_000), (300_000, 65_000)])
async def test_fragmented_messages_arrive_whole(size: int, chunk: int) -> None:
    async with ScriptServer() as server:
        conn, probe, got = await open_probe(server)
        peer = await server.next_peer()
        body = orjson.dumps({"blob": os.urandom(size).hex()})
        parts = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        for index, part in enumerate(parts):
            peer.send(TEXT if index == 0 else CONT, part, index == len(parts) - 1)
        peer.send(TEXT, b'{"after":true}')
        await wait_for(lambda: len(got) == 2)
        assert got[0] == orjson.loads(body) and got[1] == {"after": True}
        assert probe.records[0][2] == body
        # The reassembled message is the one copy: it is not in picows' buffer.
        assert probe.records[0][0] != probe.records[0][1]
        assert probe.records[1][0] == probe.records[1][1]
        conn.abort()
        await conn.wait_closed()
