"""FeedClient against venues built on other servers: ``websockets`` and aiohttp.

The same recovery scenarios as against the simulator, on servers whose framing,
closing handshake and ping handling defi-ws did not write: drop -> reconnect ->
resubscribe; a peer CLOSE with a code -> recovery; subscribe/unsubscribe while
connected and while disconnected; WebSocket ping/pong in both directions. Each test
runs against both servers on both loops; no task or file descriptor may be left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import WsPing
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap
from tests.conftest import open_fds
from tests.interop_servers import VENUES, Venue

TOPICS = ("trades.BTC", "trades.ETH", "book.BTC")


@pytest.fixture(params=sorted(VENUES))
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    async with VENUES[request.param](rate_per_s=20) as venue:
        before = open_fds()
        yield venue
        # Every connection the test opened must be gone (the listening socket stays).
        leaked: set[int] = set()
        for _ in range(100):
            leaked = open_fds() - before
            if not leaked:
                break
            await asyncio.sleep(0.02)
        assert not leaked, f"leaked file descriptors: {sorted(leaked)}"


class Events:
    """The client's callbacks, recorded."""

    def __init__(self) -> None:
        self.disconnects: list[Disconnect] = []
        self.connected = 0
        self.reconnected = 0
        self.gaps: list[Gap] = []
        self.messages: list[Any] = []
        self._changed = asyncio.Event()

    def _touch(self) -> None:
        self._changed.set()

    def kwargs(self) -> dict[str, Any]:
        def disconnected(d: Disconnect) -> None:
            self.disconnects.append(d)
            self._touch()

        def connected() -> None:
            self.connected += 1
            self._touch()

        def reconnected() -> None:
            self.reconnected += 1
            self._touch()

        return {
            "on_disconnected": disconnected,
            "on_connected": connected,
            "on_reconnected": reconnected,
            "on_gap": self.gaps.append,
        }

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with _compat.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def make_client(venue: Venue, events: Events, topics: tuple[str, ...] = TOPICS,
                **kwargs: Any) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(0.05))
    kwargs.setdefault("heartbeat", WsPing(0.3, 0.5))
    kwargs.setdefault("tick_s", 0.05)
    kwargs.setdefault("connect_timeout_s", 2.0)
    kwargs.setdefault("ack_timeout_s", 2.0)
    kwargs.setdefault("close_timeout_s", 0.5)
    handler = JsonHandler(venue.url, on_data=events.messages.append, sequence_field="seq")
    return FeedClient(handler, topics=topics, **events.kwargs(), **kwargs)


async def assert_subscribed(client: FeedClient, venue: Venue, topics: set[str]) -> None:
    """LIVE with exactly ``topics``, as the client and the venue see it; data flows."""
    await client.wait_live(10)
    assert set(client.desired_topics) == topics
    async with _compat.timeout(5):  # a topic added while LIVE is confirmed by its ack
        while set(client.confirmed_topics) != topics:
            await asyncio.sleep(0.01)
    assert client.state is State.LIVE
    await venue.wait_for(
        lambda: len(venue.connections) == 1 and venue.connections[0].topics == topics
    )
    conn = venue.connections[0]
    assert sorted(conn.subscribes) == sorted(set(conn.subscribes)), "duplicate subscribe"
    if topics:
        seen = client.health.counter("messages")
        async with _compat.timeout(5):
            while client.health.counter("messages") < seen + len(topics):
                await asyncio.sleep(0.02)


async def test_drop_reconnect_resubscribe(venue: Venue) -> None:
    events = Events()
    client = make_client(venue, events)
    async with client:
        await assert_subscribed(client, venue, set(TOPICS))
        assert venue.drop_all() == 1
        await events.wait(lambda: len(events.disconnects) >= 1)
        assert events.disconnects[0].reason is DisconnectReason.TRANSPORT_ERROR
        await assert_subscribed(client, venue, set(TOPICS))
        assert events.reconnected == 1 and venue.connections_accepted == 2
        assert client.history[0].reason is DisconnectReason.TRANSPORT_ERROR
        # Sequence numbers continue across the reconnect; the data is the venue's.
        got = [m for m in events.messages if m.get("topic") == "trades.BTC"]
        assert all(b["seq"] > a["seq"] for a, b in itertools.pairwise(got))
    assert client.state is State.CLOSED
    await venue.wait_for(lambda: not venue.connections)


@pytest.mark.parametrize("code", [1001, 1012, 4000])
async def test_peer_close_with_code_then_recovery(venue: Venue, code: int) -> None:
    events = Events()
    client = make_client(venue, events)
    async with client:
        await assert_subscribed(client, venue, set(TOPICS))
        assert await venue.close_all(code, "going away now") == 1
        await events.wait(lambda: len(events.disconnects) >= 1)
        disconnect = events.disconnects[0]
        assert disconnect.reason is DisconnectReason.PEER_CLOSE, disconnect.describe()
        assert disconnect.close_code == code and disconnect.detail == "going away now"
        await assert_subscribed(client, venue, set(TOPICS))
        assert events.reconnected == 1
    await venue.wait_for(lambda: not venue.connections)


async def test_subscribe_and_unsubscribe_connected_and_disconnected(venue: Venue) -> None:
    events = Events()
    client = make_client(venue, events, topics=("a", "b"))
    async with client:
        await assert_subscribed(client, venue, {"a", "b"})

        # While connected: sent at once, acknowledged, the venue follows.
        assert client.subscribe(["c"]) == ["c"]
        assert client.unsubscribe("a") == ["a"]
        await assert_subscribed(client, venue, {"b", "c"})
        assert events.disconnects == []

        # While disconnected (upgrades refused): only the desired set changes...
        venue.refuse = True
        venue.drop_all()
        await events.wait(lambda: len(events.disconnects) >= 2)
        assert client.state is not State.LIVE
        assert client.subscribe(["d"]) == ["d"]
        assert client.unsubscribe(["b"]) == ["b"]
        assert client.desired_topics == ("c", "d")
        assert venue.connections == []
        assert events.disconnects[0].reason is DisconnectReason.TRANSPORT_ERROR
        refused = events.disconnects[1]
        assert refused.reason is DisconnectReason.HANDSHAKE_REJECTED
        assert refused.http_status == 503

        # ...and the next connection subscribes exactly the desired topics.
        venue.refuse = False
        await assert_subscribed(client, venue, {"c", "d"})
        assert sorted(venue.connections[0].subscribes) == ["c", "d"]
        assert venue.handshakes_refused >= 1

        # Unsubscribing everything while connected leaves a quiet, LIVE feed.
        client.unsubscribe(["c", "d"])
        await venue.wait_for(lambda: venue.connections[0].topics == set())
        assert client.state is State.LIVE and client.confirmed_topics == ()
    await venue.wait_for(lambda: not venue.connections)


async def test_ping_pong_both_ways() -> None:
    for kind, venue_cls in sorted(VENUES.items()):
        # The server pings the client too and would drop it after 0.2 s without a PONG.
        async with venue_cls(rate_per_s=20, server_ping_s=0.2) as venue:
            before = open_fds()
            events = Events()
            client = make_client(venue, events, heartbeat=WsPing(0.1, 0.5))
            async with client:
                await assert_subscribed(client, venue, set(TOPICS))
                await asyncio.sleep(1.2)
                assert events.disconnects == [], (kind, events.disconnects)
                assert client.state is State.LIVE
                rtt = client.health.rtt
                assert rtt.count >= 4, (kind, rtt.summary_ms())
                assert rtt.max_ns is not None and rtt.max_ns < 0.5e9
                assert client.health.pings_sent >= rtt.count
                # aiohttp would have closed the connection without PONGs (heartbeat);
                # websockets can also wait for the PONG of a PING of its own.
                answered = await venue.ping_clients()
                assert answered is (True if kind == "websockets" else None), kind
            await venue.wait_for(lambda: not venue.connections)
            for _ in range(100):
                if not open_fds() - before:
                    break
                await asyncio.sleep(0.02)
            assert not open_fds() - before, kind


async def test_stop_while_the_venue_is_closing_leaves_nothing(venue: Venue) -> None:
    events = Events()
    client = make_client(venue, events)
    client.start()
    try:
        await assert_subscribed(client, venue, set(TOPICS))
        closing = asyncio.ensure_future(venue.close_all(1001, "bye"))
        await asyncio.sleep(0)
        await client.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, 5)
    finally:
        await client.stop()
    assert client.state is State.CLOSED
    await venue.wait_for(lambda: not venue.connections)
