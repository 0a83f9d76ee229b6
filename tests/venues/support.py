"""What every venue's tests share: fixtures, wire bytes, waiting, and id bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
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


class Pushes(IdLog):
    """Every push as delivered, and the ids ``ids_of(push)`` reads from it, per topic.

    ``ids_of`` returns ``(topic, id)`` pairs (none for a push without ids).
    """

    def __init__(self, ids_of: Callable[[Any], Iterable[tuple[str, int]]]) -> None:
        super().__init__()
        self.ids_of = ids_of
        self.pushes: list[Any] = []

    def on_data(self, message: Any) -> None:
        self.pushes.append(message)
        for topic, message_id in self.ids_of(message):
            self.add(topic, message_id)


async def ping_timeout_then_recover(sim: Any, client: Any, disconnects: list[Any]) -> None:
    """Withhold ``sim``'s pongs until ``client`` drops the connection, then let it reconnect.

    ``disconnects`` is the list the client's ``on_disconnected`` appends to.
    """
    await client.wait_live(20)
    sim.withhold_pongs()
    await until(lambda: disconnects != [])
    sim.withhold_pongs(False)
    await client.wait_live(20)


async def idle_cut_spares_the_pinging(alive: Any, quiet: Any, lost: list[Any]) -> None:
    """Wait until the venue cuts ``quiet`` (no heartbeat) while ``alive`` stays up.

    ``lost`` is the list ``quiet``'s ``on_disconnected`` appends to.
    """
    await alive.wait_live(20)
    await quiet.wait_live(20)
    await until(lambda: lost != [])
    await asyncio.sleep(2.0)
    assert alive.snapshot()["disconnects"] == {}
