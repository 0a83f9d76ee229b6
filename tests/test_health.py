"""Health: RTT histogram, stale clocks, health rules, snapshots; all on manual clocks.

Client-level detection runs on the virtual-time loop: detection times are asserted
against the configured windows with one watchdog tick as the only tolerance.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from defi_ws.client import FeedClient
from defi_ws.errors import ConfigError
from defi_ws.handler import JsonHandler
from defi_ws.health import ErrorRateRule, Health, RttHistogram, RttRule, StaleClock
from defi_ws.heartbeat import JsonPing, NoPing, TextPing, WsPing
from defi_ws.lifecycle import State
from defi_ws.reasons import DisconnectReason
from defi_ws.reconnect import FixedDelay
from tests.venue import MemoryVenue
from tests.virtual_time import run_virtual

TICK_S = 0.1


# ----------------------------------------------------------------- RTT histogram


def test_histogram_percentiles_are_within_bucket_error() -> None:
    rng = random.Random(3)
    values = sorted(rng.randint(1_000, 5_000_000_000) for _ in range(20_000))
    hist = RttHistogram()
    for value in values:
        hist.record(value)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = values[int(q * len(values)) - 1]
        got = hist.percentile_ns(q)
        assert got is not None and exact <= got <= exact * 1.12, (q, exact, got)
    assert hist.count == len(values) and hist.max_ns == values[-1]
    assert hist.percentile_ns(1.0) == values[-1]


def test_histogram_range_and_empty() -> None:
    hist = RttHistogram()
    assert hist.percentile_ns(0.5) is None and hist.summary_ms()["p50_ms"] is None
    hist.record(10)  # below 1 us
    hist.record(100_000_000_000)  # above 60 s
    assert hist.count == 2 and hist.min_ns == 10 and hist.max_ns == 100_000_000_000
    summary = hist.summary_ms()
    assert summary["count"] == 2 and summary["max_ms"] == 100_000.0
    hist.reset()
    assert hist.count == 0


# ----------------------------------------------------------------- stale clock


def test_stale_clock_fires_only_after_the_window_without_data() -> None:
    clock = StaleClock(5.0)
    clock.reset(100.0)
    assert clock.observe(104.9, 0) is None
    assert clock.observe(104.95, 1) is None  # data arrived: window restarts
    assert clock.observe(109.9, 1) is None
    verdict = clock.observe(109.95, 1)
    assert verdict is not None and "no data" in verdict


def test_topic_allowances_keep_quiet_channels_alive() -> None:
    clock = StaleClock(2.0, {"liquidations": None, "funding": 10.0})
    clock.reset(0.0)
    topics = ("trades", "liquidations", "funding")
    verdict = None
    step = 0
    for step in range(1, 200):  # trades flow every 0.1 s; the other two stay quiet
        verdict = clock.observe(step * 0.1, step, {"trades": step}, topics)
        if verdict:
            break
    # liquidations (no allowance) never fired; funding fired once its 10 s passed
    assert verdict is not None and "'funding'" in verdict
    assert 10.0 <= step * 0.1 - 0.1 <= 10.0 + 0.1 + 1e-9
    quiet = StaleClock(2.0, {"trades": 0.5})
    quiet.reset(0.0)
    assert quiet.observe(0.1, 1, {}, ("trades",)) is None
    late = quiet.observe(0.7, 2, {}, ("trades",))
    assert late is not None and "'trades'" in late


def test_stale_clock_validates() -> None:
    with pytest.raises(ConfigError) as info:
        StaleClock(0.0, {"x": -1.0})
    assert len(info.value.problems) == 2


# ----------------------------------------------------------------- health rules


def test_rtt_rule_needs_enough_samples() -> None:
    rule = RttRule(p99_above_s=0.05, min_samples=10)
    hist = RttHistogram()
    for _ in range(9):
        hist.record(200_000_000)
    assert rule.check(0.0, hist, 0) is None
    hist.record(200_000_000)
    verdict = rule.check(0.0, hist, 0)
    assert verdict is not None and "p99" in verdict


def test_error_rate_rule_uses_a_sliding_window() -> None:
    rule = ErrorRateRule(max_errors=3, window_s=10.0)
    hist = RttHistogram()
    rule.reset(0.0)
    assert rule.check(5.0, hist, 3) is None
    verdict = rule.check(6.0, hist, 4)  # 4 errors within 10 s of the connection start
    assert verdict is not None and "4 handler errors" in verdict
    slow = ErrorRateRule(max_errors=3, window_s=10.0)
    slow.reset(0.0)
    for t in range(5, 100, 5):  # one error every 5 s: at most 2-3 per window
        assert slow.check(float(t), hist, t // 5) is None
    slow.reset(100.0)  # a new connection counts from 0 again
    assert slow.check(101.0, hist, 3) is None


def test_health_snapshot_is_json_ready() -> None:
    health = Health(error_ring_size=4)
    for i in range(10):
        health.errors.append((i, "decode", f"error {i}"))
    health.rtt.record(1_500_000)
    snap = health.snapshot(now=5.0, state="LIVE")
    json.dumps(snap)
    assert snap["state"] == "LIVE" and snap["rtt"]["count"] == 1
    assert [e["message"] for e in snap["recent_errors"]] == [f"error {i}" for i in range(6, 10)]


# ------------------------------------------------------- supervisor, virtual time


def client_for(venue: MemoryVenue, **kwargs: Any) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(0.5))
    return FeedClient(JsonHandler("ws://venue"), transport=venue.transport, tick_s=TICK_S,
                      clock=asyncio.get_running_loop().time, **kwargs)


def loss_times(client: FeedClient, loop: asyncio.AbstractEventLoop) -> list[tuple[float, Any]]:
    times: list[tuple[float, Any]] = []
    client._on_disconnected = lambda d: times.append((loop.time(), d))
    return times


def test_ping_timeout_is_detected_within_window_plus_tick() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        venue = MemoryVenue()
        venue.transport.on_connect = lambda conn: setattr(conn, "auto_pong", False)
        client = client_for(venue, heartbeat=WsPing(interval_s=2.0, timeout_s=3.0))
        times = loss_times(client, loop)
        async with client:
            await client.wait_live(5)
            live_at = loop.time()
            await asyncio.sleep(10)
        when, disconnect = times[0]
        assert disconnect.reason is DisconnectReason.PING_TIMEOUT
        # ping sent within one tick of interval_s, timeout counted from there
        assert 5.0 <= when - live_at <= 5.0 + 2 * TICK_S + 1e-9

    run_virtual(main())


def test_slow_pongs_feed_the_rtt_histogram_and_rtt_rule_drops() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        venue = MemoryVenue()
        venue.transport.on_connect = lambda conn: setattr(conn, "pong_delay_s", 0.25)
        client = client_for(venue, heartbeat=WsPing(interval_s=0.5, timeout_s=1.0),
                            health_rules=[RttRule(p99_above_s=0.2, min_samples=5)])
        times = loss_times(client, loop)
        async with client:
            await client.wait_live(5)
            await asyncio.sleep(4)
        summary = client.health.rtt.summary_ms()
        assert summary["count"] >= 5
        # RTT is measured on the hot path's real clock: the virtual delay is not
        # visible there, so only the rule's decision is asserted here.
        assert times == [] or times[0][1].reason is DisconnectReason.HEALTH_POLICY

    run_virtual(main())


def test_stale_feed_is_detected_within_window_plus_tick() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        venue = MemoryVenue()
        client = client_for(venue, topics=["a"], stale_after_s=3.0, heartbeat=NoPing())
        times = loss_times(client, loop)
        async with client:
            await client.wait_live(5)
            live_at = loop.time()
            for _ in range(10):  # data for 1 s, then silence
                venue.transport.current.server_send({"topic": "a", "seq": 1})
                await asyncio.sleep(0.1)
            last_data = loop.time() - 0.1
            await asyncio.sleep(5)
        when, disconnect = times[0]
        assert disconnect.reason is DisconnectReason.STALE
        assert 3.0 <= when - last_data <= 3.0 + 2 * TICK_S + 1e-9
        assert when - live_at > 3.0

    run_virtual(main())


def test_pongs_do_not_count_as_data_for_staleness() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, stale_after_s=2.0, heartbeat=WsPing(0.5, 1.0))
        async with client:
            await client.wait_live(5)
            await asyncio.sleep(3)
        assert client.history[0].reason is DisconnectReason.STALE
        assert client.health.counter("pongs") >= 3

    run_virtual(main())


@pytest.mark.parametrize("heartbeat,pong", [
    (TextPing("ping", "pong", 0.5, 1.0), "pong"),
    (JsonPing({"op": "ping"}, b'{"event":"pong"', 0.5, 1.0), '{"event":"pong","ts":1}'),
])
def test_app_level_pongs_are_recognised_and_never_delivered(heartbeat: Any, pong: str) -> None:
    async def main() -> None:
        venue = MemoryVenue()
        respond = venue.respond

        def with_pong(conn: Any, message: Any) -> None:
            if message in ("ping", b"ping", {"op": "ping"}):
                asyncio.get_running_loop().call_soon(conn.server_send, pong)
            else:
                respond(conn, message)

        venue.transport.responder = with_pong
        got: list[Any] = []
        client = FeedClient(JsonHandler("ws://venue", on_data=got.append),
                            transport=venue.transport, heartbeat=heartbeat,
                            clock=asyncio.get_running_loop().time)
        async with client:
            await client.wait_live(5)
            await asyncio.sleep(3)
            assert client.state is State.LIVE
        assert got == []
        assert client.health.rtt.count >= 4 and client.health.counter("pongs") >= 4

    run_virtual(main())


def test_error_rate_rule_disconnects_with_health_policy() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, heartbeat=NoPing(),
                            health_rules=[ErrorRateRule(max_errors=3, window_s=10.0)])
        async with client:
            await client.wait_live(5)
            for _ in range(5):
                venue.transport.current.server_send(b"{broken")
            await asyncio.sleep(1)
        assert client.history[0].reason is DisconnectReason.HEALTH_POLICY
        assert "handler errors" in client.history[0].detail

    run_virtual(main())


def test_client_snapshot_shows_everything_on_a_live_connection() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, topics=["a", "b"], heartbeat=WsPing(0.5, 1.0))
        async with client:
            await client.wait_live(5)
            for i in range(5):
                venue.transport.current.server_send({"topic": "a", "seq": i})
            venue.transport.current.server_send(b"{bad")
            await asyncio.sleep(2)
            snap = client.snapshot()
        json.dumps(snap)
        assert snap["state"] == "LIVE" and snap["connected"] is True
        assert snap["messages"] == 5 and snap["decode_errors"] == 1
        assert snap["bytes_received"] > 0 and snap["last_recv_ns"] is not None
        assert snap["rtt"]["count"] >= 2 and snap["rtt"]["p99_ms"] is not None
        assert snap["topics_confirmed"] == 2 and snap["connected_for_s"] >= 2
        assert snap["recent_errors"][-1]["kind"] == "decode"

    run_virtual(main())


def test_stale_clock_with_exact_receive_stamps() -> None:
    clock = StaleClock(5.0)
    clock.reset(100.0)
    # Observed late (at 104.9) but the data really arrived at 100.5: the window
    # runs from 100.5, not from the observation.
    assert clock.observe(104.9, 1, last_data_at=100.5) is None
    assert clock.next_deadline() == 105.5
    assert clock.observe(105.4, 1, last_data_at=100.5) is None
    verdict = clock.observe(105.5, 1, last_data_at=100.5)
    assert verdict is not None and "5.000s" in verdict
    # an older stamp never moves the clock back
    clock.reset(200.0)
    assert clock.observe(201.0, 2, last_data_at=150.0) is None
    assert clock.next_deadline() == 205.0
