"""Zero-copy inbound: a decoder that keeps no reference reads picows' receive buffer.

With ``orjson.loads`` (and msgspec decoders without ``Raw`` fields) the memoryview
handed to decode must alias the frame's payload inside picows' receive buffer (same
address). Fragmented messages are reassembled (the one copy) and must arrive whole and
byte-exact. Decoders that may keep the view read a listener-owned copy instead
(tests/test_core_memory.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import pytest

from defi_ws import _compat
from defi_ws._core import FeedListener
from defi_ws.transport import ConnectOptions, PicowsTransport
from tests.servers import ScriptServer

TEXT, CONT = 1, 0


class AddressProbe:
    """An ``on_message`` that records, during the call, where its payload was read from."""

    def __init__(self) -> None:
        self.listener: FeedListener | None = None
        self.records: list[tuple[int, int]] = []
        self.got: list[Any] = []

    def __call__(self, message: Any) -> None:
        assert self.listener is not None
        self.records.append((self.listener.view_address, self.listener.last_payload_addr))
        self.got.append(message)


async def open_probe(server: ScriptServer) -> tuple[Any, AddressProbe, list[Any]]:
    probe = AddressProbe()
    listener = FeedListener(probe)  # decode=orjson.loads: the zero-copy path
    assert listener.zero_copy
    probe.listener = listener
    conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
    return conn, probe, probe.got


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
        for view_addr, frame_addr in probe.records:
            assert view_addr == frame_addr, "decode got a copy, not the receive buffer"
        # Several frames arrived per socket read: the views point at different
        # places of the same buffer, not at one reused scratch copy.
        assert len({addr for addr, _ in probe.records}) > 1
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
        # The message after the reassembled one is read in place again.
        assert probe.records[1][0] == probe.records[1][1]
        conn.abort()
        await conn.wait_closed()
