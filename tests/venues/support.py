"""What every venue's tests share: fixtures, wire bytes, waiting, and id bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from defi_ws import FeedClient, _compat
from defi_ws.heartbeat import HeartbeatStrategy, NoPing
from defi_ws.reasons import Disconnect
from defi_ws.testing import ExchangeSimulator

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def load_fixture(venue: str, name: str) -> Any:
    """The samples of ``tests/fixtures/<venue>/<name>.json``; each file cites its page."""
    document = json.loads((FIXTURES / venue / f"{name}.json").read_text())
    assert document["source"].startswith("https://"), f"{venue}/{name}: no source page"
    return document["samples"]


def wire(message: Any) -> bytes:
    """The compact bytes a venue sends."""
    return orjson.dumps(message)


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    """Wait until ``predicate()`` is true (generous deadline on loopback)."""
    async with _compat.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


class IdLog:
    """Ids per topic as delivered, to check exactly once and in order."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = defaultdict(list)

    def add(self, topic: str, message_id: int) -> None:
        self.ids[topic].append(message_id)

    def assert_exactly_once_in_order(self, contiguous: bool = True) -> None:
        for topic, ids in self.ids.items():
            assert ids == sorted(set(ids)), f"{topic}: duplicate or out of order"
            if contiguous:
                assert ids == list(range(ids[0], ids[-1] + 1)), f"{topic}: a message was lost"


async def ping_timeout_then_recovery(sim: ExchangeSimulator, handler: Any, topic: str,
                                     heartbeat: HeartbeatStrategy,
                                     **options: Any) -> list[Disconnect]:
    """Withhold the venue's pongs until the client gives up on a ping, then answer
    again and wait for the client to be LIVE once more: the disconnects it saw."""
    disconnects: list[Disconnect] = []
    client = FeedClient(handler, topics=[topic], heartbeat=heartbeat,
                        on_disconnected=disconnects.append, **options)
    async with client:
        await client.wait_live(20)
        sim.withhold_pongs()
        await until(lambda: disconnects != [])
        sim.withhold_pongs(False)
        await client.wait_live(20)
    return disconnects


async def idle_cut_of_the_silent_client(pinging: Any, silent: Any, topics: tuple[str, str],
                                        heartbeat: HeartbeatStrategy,
                                        **options: Any) -> Disconnect:
    """Two clients on a quiet venue that cuts idle connections: the one sending
    ``heartbeat`` keeps its connection (asserted), the one that never pings is cut:
    its first disconnect."""
    lost: list[Disconnect] = []
    async with FeedClient(pinging, topics=[topics[0]], heartbeat=heartbeat,
                          **options) as alive, \
            FeedClient(silent, topics=[topics[1]], heartbeat=NoPing(),
                       on_disconnected=lost.append, **options) as quiet:
        await alive.wait_live(20)
        await quiet.wait_live(20)
        await until(lambda: lost != [])
        await asyncio.sleep(2.0)
        assert alive.snapshot()["disconnects"] == {}
    return lost[0]
