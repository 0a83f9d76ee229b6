"""What every venue's tests share: fixtures, wire bytes, waiting, and id bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from defi_ws import _compat

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


async def lose_to_withheld_pongs(sim: Any, client: Any, disconnects: list[Any]) -> None:
    """Withhold the simulator's pongs until ``client`` disconnects, then let it recover.

    ``disconnects`` is filled by the client's ``on_disconnected``; the first one is the
    heartbeat's verdict (PING_TIMEOUT for an app-level ping).
    """
    await client.wait_live(20)
    sim.withhold_pongs()
    await until(lambda: disconnects != [])
    sim.withhold_pongs(False)
    await client.wait_live(20)
