"""What every venue's tests share: fixtures, wire bytes, waiting, and id bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
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



class Pushes(IdLog):
    """Every push as delivered, and the ids read from each, per topic.

    Args:
        ids_of: the ``(topic, id)`` pairs of one push (none for a push without ids).
    """

    def __init__(self, ids_of: Callable[[Any], Iterable[tuple[str, int]]]) -> None:
        super().__init__()
        self.ids_of = ids_of
        self.pushes: list[Any] = []

    def on_data(self, message: Any) -> None:
        """The handler's ``on_data``: keep ``message`` and log its ids."""
        self.pushes.append(message)
        for topic, message_id in self.ids_of(message):
            self.add(topic, message_id)

    def channels(self) -> set[Any]:
        """The ``"channel"`` field of every push (None for a push without one)."""
        return {p.get("channel") for p in self.pushes}


async def ping_timeout_then_recovery(sim: ExchangeSimulator, handler: Any, topic: str,
                                     heartbeat: HeartbeatStrategy,
                                     **options: Any) -> list[Disconnect]:
    """A ping that gets no pong ends the connection, and the client recovers.

    Runs a client of ``handler`` on ``topic``, withholds ``sim``'s pongs until the
    client drops the connection, then answers again and waits until the client is LIVE
    once more.

    Args:
        sim: the running simulator.
        handler: the venue adapter, pointed at ``sim``.
        topic: the one topic to subscribe to.
        heartbeat: the client's heartbeat (its pongs are the ones withheld).
        **options: more :class:`~defi_ws.FeedClient` options (reconnect, timeouts...).

    Returns:
        The disconnects the client saw (the first is the heartbeat's verdict).
    """
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
                                        heartbeat: HeartbeatStrategy | None = None, *,
                                        settle_s: float = 2.0,
                                        **options: Any) -> Disconnect:
    """On a quiet venue that cuts idle connections, only the client that never pings is cut.

    Runs two clients: ``pinging`` with ``heartbeat`` on ``topics[0]`` and ``silent``
    with :class:`~defi_ws.heartbeat.NoPing` on ``topics[1]``; waits for the silent one's
    first disconnect, then asserts the pinging one is still up ``settle_s`` later.

    Args:
        pinging: the adapter of the client that keeps its connection.
        silent: the adapter of the client that is cut.
        topics: one topic for each.
        heartbeat: the pinging client's heartbeat (default: its adapter's).
        settle_s: how long the pinging client must then stay up (more than the
            venue's idle allowance).
        **options: more :class:`~defi_ws.FeedClient` options for both.

    Returns:
        The silent client's first disconnect.
    """
    lost: list[Disconnect] = []
    async with FeedClient(pinging, topics=[topics[0]], heartbeat=heartbeat,
                          **options) as alive, \
            FeedClient(silent, topics=[topics[1]], heartbeat=NoPing(),
                       on_disconnected=lost.append, **options) as quiet:
        await alive.wait_live(20)
        await quiet.wait_live(20)
        await until(lambda: lost != [])
        await asyncio.sleep(settle_s)
        assert alive.snapshot()["disconnects"] == {}
    return lost[0]


def assert_prefixes_split(prefixes: tuple[bytes, ...] | None, control: Iterable[Any],
                          data: Iterable[Any]) -> None:
    """Every control sample's wire bytes start with one of a handler's
    ``control_prefixes``, and no data sample's do (data must skip the control router)."""
    assert prefixes is not None
    for sample in control:
        assert wire(sample).startswith(prefixes), sample
    for sample in data:
        assert not wire(sample).startswith(prefixes), sample
