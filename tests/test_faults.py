"""One test per venue fault: FeedClient against the ExchangeSimulator on a real socket.

Every test checks the classified disconnect (``client.history`` and the
``on_disconnected`` callback), recovery to LIVE (or the clear fatal error), that the
subscriptions are intact afterwards (the client's confirmed topics and the simulator's
view of the connection) and that no file descriptor is left open; the autouse
``loop_hygiene`` fixture checks for leaked tasks and loop exception-handler calls.

Timeouts are short (heartbeat 0.3 s / 0.3 s, tick 0.05 s, fixed 0.05 s backoff) so the
file runs in seconds on both loops. Detection times are real time: they are asserted
not earlier than the window and not later than window + tick + generous slack (the
exact, manual-clock timing tests live in the unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.errors import FatalDisconnect
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing, WsPing
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap
from defi_ws.testing import ExchangeSimulator, login_message
from tests.conftest import open_fds

TOPICS = ("trades.BTC", "trades.ETH", "book.BTC")
PING_INTERVAL_S = 0.3
PING_TIMEOUT_S = 0.3
TICK_S = 0.05
BACKOFF_S = 0.05
#: Real-time slack on top of a detection window: scheduling on a loaded CI box.
SLACK_S = 0.5
API_KEY, API_SECRET = "key-1", "secret-1"


class Recorder:
    """Collects the client's callbacks with their (monotonic) times."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[float, Disconnect]] = []
        self.connected: list[float] = []
        self.reconnected = 0
        self.gave_up: list[Disconnect] = []
        self.rejected: list[tuple[str, str]] = []
        self.gaps: list[Gap] = []
        self._changed = asyncio.Event()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_connected": self._on_connected,
            "on_disconnected": self._on_disconnected,
            "on_reconnected": self._on_reconnected,
            "on_gave_up": self._on_gave_up,
            "on_subscription_rejected": self._on_rejected,
            "on_gap": self._on_gap,
        }

    def _touch(self) -> None:
        self._changed.set()

    def _on_connected(self) -> None:
        self.connected.append(time.monotonic())
        self._touch()

    def _on_disconnected(self, disconnect: Disconnect) -> None:
        self.disconnects.append((time.monotonic(), disconnect))
        self._touch()

    def _on_reconnected(self) -> None:
        self.reconnected += 1
        self._touch()

    def _on_gave_up(self, disconnect: Disconnect) -> None:
        self.gave_up.append(disconnect)
        self._touch()

    def _on_rejected(self, topic: str, detail: str) -> None:
        self.rejected.append((topic, detail))
        self._touch()

    def _on_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self._touch()

    def reasons(self) -> list[DisconnectReason]:
        return [d.reason for _, d in self.disconnects]

    async def wait(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with _compat.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_disconnect(self, count: int = 1, timeout_s: float = 5.0) -> Disconnect:
        """Wait for the ``count``-th disconnect and return it."""
        await self.wait(lambda: len(self.disconnects) >= count, timeout_s)
        return self.disconnects[count - 1][1]


class AuthJsonHandler(JsonHandler):
    """The generic protocol with the simulator's signed login."""

    def auth_messages(self) -> Sequence[Any]:
        return [login_message(API_KEY, API_SECRET)]


def make_client(
    sim: ExchangeSimulator,
    rec: Recorder,
    *,
    topics: Sequence[str] = TOPICS,
    handler: JsonHandler | None = None,
    **kwargs: Any,
) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(BACKOFF_S))
    kwargs.setdefault("heartbeat", WsPing(PING_INTERVAL_S, PING_TIMEOUT_S))
    kwargs.setdefault("tick_s", TICK_S)
    kwargs.setdefault("connect_timeout_s", 2.0)
    kwargs.setdefault("auth_timeout_s", 2.0)
    kwargs.setdefault("ack_timeout_s", 2.0)
    kwargs.setdefault("close_timeout_s", 0.3)
    return FeedClient(
        handler or JsonHandler(sim.url, sequence_field="seq"),
        topics=topics,
        **rec.callbacks(),
        **kwargs,
    )


@contextlib.asynccontextmanager
async def no_fd_leak() -> AsyncIterator[None]:
    """Fail when the block leaves file descriptors open (after a short grace period)."""
    before = open_fds()
    yield
    leaked: set[int] = set()
    for _ in range(100):
        leaked = open_fds() - before
        if not leaked:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"leaked file descriptors: {sorted(leaked)}")


async def assert_recovered(
    client: FeedClient, sim: ExchangeSimulator, topics: Sequence[str] = TOPICS
) -> None:
    """LIVE again, with every desired topic confirmed by the client and the venue."""
    await client.wait_live(10)
    assert client.state is State.LIVE
    assert set(client.desired_topics) == set(topics)
    assert set(client.confirmed_topics) == set(topics)
    await sim.wait_for(
        lambda: len(sim.connections) == 1 and sim.connections[0].topics == set(topics),
        timeout_s=5,
    )
    assert sim.duplicate_subscribes == 0


def assert_detected_within(elapsed_s: float, low_s: float, high_s: float) -> None:
    assert low_s <= elapsed_s <= high_s + SLACK_S, (
        f"detected after {elapsed_s:.3f}s, window [{low_s:.3f}, {high_s:.3f}] + {SLACK_S}s slack"
    )


async def lose_connection_and_recover(
    sim: ExchangeSimulator,
    inject: Callable[[ExchangeSimulator], object],
    expected: DisconnectReason,
    **client_kwargs: Any,
) -> tuple[FeedClient, Recorder, Disconnect, float]:
    """Go LIVE, inject a fault, wait for the disconnect and the recovery.

    Returns:
        The (stopped) client, its recorder, the first disconnect and the seconds from
        the injection to its detection.
    """
    rec = Recorder()
    client = make_client(sim, rec, **client_kwargs)
    async with client:
        await client.wait_live(5)
        await sim.wait_for(lambda: len(sim.connections) == 1)
        injected_at = time.monotonic()
        inject(sim)
        disconnect = await rec.wait_disconnect(1)
        detected_s = rec.disconnects[0][0] - injected_at
        assert disconnect.reason is expected, disconnect.describe()
        assert client.history[0] == disconnect
        assert client.health.disconnects[expected.label] >= 1
        await assert_recovered(client, sim)
        assert rec.reconnected >= 1 and client.health.reconnects >= 1
    assert client.state is State.CLOSED
    return client, rec, disconnect, detected_s


# ---------------------------------------------------------------------------- transport


async def test_abrupt_drop_rst() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, rec, _disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.drop_all(), DisconnectReason.TRANSPORT_ERROR
        )
        assert detected_s < 0.5
        assert rec.reasons()[:1] == [DisconnectReason.TRANSPORT_ERROR]
        assert sim.faults["drop"] == 1 and sim.connections_accepted == 2


async def test_close_with_code() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, _rec, disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.close_all(1012, "service restart"), DisconnectReason.PEER_CLOSE
        )
        assert disconnect.close_code == 1012 and disconnect.detail == "service restart"
        assert detected_s < 0.5
        # The client answered the CLOSE (echoing the code) before reconnecting.
        assert sim.close_codes_received[:1] == [1012]


async def test_maintenance_disconnects_every_client_with_1001() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        recs = [Recorder(), Recorder()]
        clients = [make_client(sim, rec) for rec in recs]
        async with clients[0], clients[1]:
            for client in clients:
                await client.wait_live(5)
            await sim.wait_for(lambda: len(sim.connections) == 2)
            assert sim.maintenance() == 2
            for rec in recs:
                disconnect = await rec.wait_disconnect(1)
                assert disconnect.reason is DisconnectReason.PEER_CLOSE
                assert disconnect.close_code == 1001 and disconnect.detail == "maintenance"
            for client in clients:
                await client.wait_live(5)
                assert set(client.confirmed_topics) == set(TOPICS)
            await sim.wait_for(
                lambda: len(sim.connections) == 2
                and all(c.topics == set(TOPICS) for c in sim.connections)
            )
            assert all(c.history[0].reason is DisconnectReason.PEER_CLOSE for c in clients)
            assert sim.connections_accepted == 4 and sim.duplicate_subscribes == 0


async def test_maintenance_with_refused_upgrades_then_recovery() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            sim.maintenance(refuse_s=0.3)
            assert (await rec.wait_disconnect(1)).reason is DisconnectReason.PEER_CLOSE
            refused = await rec.wait_disconnect(2)
            assert refused.reason is DisconnectReason.HANDSHAKE_REJECTED
            assert refused.http_status == 503 and refused.retry_after_s == 1.0
            await assert_recovered(client, sim)
            # Retry-After (1 s, rounded up by the venue) was honoured, not the 0.05 s backoff.
            assert rec.connected[-1] - rec.disconnects[1][0] >= 1.0


# ---------------------------------------------------------------------------- liveness


async def test_half_open_silence_ends_in_ping_timeout() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            silenced_at = time.monotonic()
            sim.silence(True)
            disconnect = await rec.wait_disconnect(1)
            detected_s = rec.disconnects[0][0] - silenced_at
            sim.silence(False)
            assert disconnect.reason is DisconnectReason.PING_TIMEOUT, disconnect.describe()
            # A ping in flight when the venue went silent may predate it by a few ms.
            assert_detected_within(
                detected_s, PING_TIMEOUT_S - 0.02, PING_INTERVAL_S + PING_TIMEOUT_S + TICK_S
            )
            await assert_recovered(client, sim)
        assert client.history[0].reason is DisconnectReason.PING_TIMEOUT
        assert sim.pongs_withheld >= 1


async def test_half_open_silence_ends_in_stale() -> None:
    stale_s = 0.4
    async with ExchangeSimulator(rate_per_s=50) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec, heartbeat=NoPing(), stale_after_s=stale_s)
        async with client:
            await client.wait_live(5)
            await asyncio.sleep(0.2)  # data is flowing
            assert client.state is State.LIVE
            silenced_at = time.monotonic()
            sim.silence(True)
            disconnect = await rec.wait_disconnect(1)
            detected_s = rec.disconnects[0][0] - silenced_at
            sim.silence(False)
            assert disconnect.reason is DisconnectReason.STALE, disconnect.describe()
            # The last message may have left the venue up to one stream step earlier.
            assert_detected_within(detected_s, stale_s - 0.05, stale_s + 2 * TICK_S)
            await assert_recovered(client, sim)


async def test_withheld_pongs_end_in_ping_timeout() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            withheld_at = time.monotonic()
            sim.withhold_pongs(True)
            disconnect = await rec.wait_disconnect(1)
            detected_s = rec.disconnects[0][0] - withheld_at
            sim.withhold_pongs(False)
            assert disconnect.reason is DisconnectReason.PING_TIMEOUT, disconnect.describe()
            assert_detected_within(
                detected_s, PING_TIMEOUT_S - 0.02, PING_INTERVAL_S + PING_TIMEOUT_S + TICK_S
            )
            await assert_recovered(client, sim)
        assert sim.pongs_withheld >= 1


async def test_delayed_pongs_within_timeout_stay_live_and_show_in_rtt() -> None:
    delay_s = 0.15
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec, heartbeat=WsPing(0.2, 0.5))
        async with client:
            await client.wait_live(5)
            sim.delay_pongs(delay_s)
            await asyncio.sleep(0.05)
            client.health.rtt.reset()
            await asyncio.sleep(1.5)
            assert client.state is State.LIVE and rec.disconnects == []
            rtt = client.health.rtt
            assert rtt.count >= 3, rtt.summary_ms()
            p50 = rtt.percentile_ns(0.5)
            assert p50 is not None and p50 >= delay_s * 1e9, rtt.summary_ms()
            assert rtt.max_ns is not None and rtt.max_ns < 0.5e9, rtt.summary_ms()
            assert client.snapshot()["rtt"]["p50_ms"] >= delay_s * 1e3
            sim.delay_pongs(0)
            await assert_recovered(client, sim)
        assert list(client.history) == [Disconnect(DisconnectReason.LOCAL_STOP, detail="stop()")]


async def test_delayed_pongs_beyond_timeout_end_in_ping_timeout() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            delayed_at = time.monotonic()
            sim.delay_pongs(PING_TIMEOUT_S + 0.5)
            disconnect = await rec.wait_disconnect(1)
            detected_s = rec.disconnects[0][0] - delayed_at
            sim.delay_pongs(0)
            assert disconnect.reason is DisconnectReason.PING_TIMEOUT, disconnect.describe()
            assert_detected_within(
                detected_s, PING_TIMEOUT_S - 0.02, PING_INTERVAL_S + PING_TIMEOUT_S + TICK_S
            )
            await assert_recovered(client, sim)


# ---------------------------------------------------------------------------- handshake


async def test_handshake_rejected_429_honours_retry_after() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            sim.reject_handshakes(429, retry_after_s=1)
            sim.drop_all()
            assert (await rec.wait_disconnect(1)).reason is DisconnectReason.TRANSPORT_ERROR
            refused = await rec.wait_disconnect(2)
            assert refused.reason is DisconnectReason.HANDSHAKE_REJECTED
            assert refused.http_status == 429 and refused.retry_after_s == 1.0
            await assert_recovered(client, sim)
            waited_s = rec.connected[-1] - rec.disconnects[1][0]
            assert 1.0 <= waited_s <= 1.0 + SLACK_S + 0.5
        assert sim.handshake_statuses == [429]


async def test_handshake_rejected_403_is_fatal() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        sim.reject_handshakes(403)
        client = make_client(sim, rec)
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
            await asyncio.wait_for(client.wait_closed(), 5)
        disconnect = info.value.disconnect
        assert disconnect.reason is DisconnectReason.HANDSHAKE_REJECTED
        assert disconnect.http_status == 403
        assert "403" in str(info.value)
        assert rec.gave_up == [disconnect] and rec.reasons() == [
            DisconnectReason.HANDSHAKE_REJECTED
        ]
        assert list(client.history) == [disconnect]
        assert client.state is State.CLOSED and rec.connected == []
        assert sim.tcp_accepted == 1 and sim.connections_accepted == 0
        assert sim.handshake_statuses == [403]


async def test_handshake_rejected_503_is_retried() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            sim.reject_handshakes(503, count=2)
            sim.drop_all()
            await rec.wait_disconnect(3)
            await assert_recovered(client, sim)
        reasons = rec.reasons()
        assert reasons[:3] == [
            DisconnectReason.TRANSPORT_ERROR,
            DisconnectReason.HANDSHAKE_REJECTED,
            DisconnectReason.HANDSHAKE_REJECTED,
        ]
        assert [d.http_status for _, d in rec.disconnects[1:3]] == [503, 503]
        assert rec.gave_up == [] and sim.handshake_statuses == [503, 503]


async def test_slow_handshake_beyond_connect_timeout_then_recovery() -> None:
    connect_timeout_s = 0.3
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec, connect_timeout_s=connect_timeout_s)
        async with client:
            await client.wait_live(5)
            sim.slow_handshake(1.0)
            sim.drop_all()
            assert (await rec.wait_disconnect(1)).reason is DisconnectReason.TRANSPORT_ERROR
            started_at = rec.disconnects[0][0] + BACKOFF_S
            slow = await rec.wait_disconnect(2)
            sim.slow_handshake(0)
            assert slow.reason is DisconnectReason.CONNECT_FAILED, slow.describe()
            assert_detected_within(
                rec.disconnects[1][0] - started_at, connect_timeout_s - 0.02,
                connect_timeout_s + TICK_S,
            )
            await assert_recovered(client, sim)
        assert sim.faults["slow_handshake"] == 1


# ---------------------------------------------------------------------------- auth / subscribe


async def test_auth_rejected_is_fatal() -> None:
    async with ExchangeSimulator(rate_per_s=20, api_key=API_KEY, api_secret=API_SECRET) as sim, \
            no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec, handler=AuthJsonHandler(sim.url, sequence_field="seq"))
        async with client:
            await client.wait_live(5)
            assert sim.logins_ok == 1 and sim.subscribe_before_login == 0
            await assert_recovered(client, sim)  # the subscriptions are in place
            sim.reject_auth(True)
            sim.drop_all()
            assert (await rec.wait_disconnect(1)).reason is DisconnectReason.TRANSPORT_ERROR
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
            await asyncio.wait_for(client.wait_closed(), 5)
        disconnect = info.value.disconnect
        assert disconnect.reason is DisconnectReason.AUTH_FAILED
        assert "login rejected" in disconnect.detail
        assert rec.reasons() == [DisconnectReason.TRANSPORT_ERROR, DisconnectReason.AUTH_FAILED]
        assert rec.gave_up == [disconnect] and client.state is State.CLOSED
        assert sim.logins_failed == 1
        # Never subscribed without a login.
        assert sim.subscribe_before_login == 0


async def test_subscribe_rejected_drops_the_topic() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        sim.reject_subscribes(["trades.DOGE"])
        client = make_client(sim, rec, topics=[*TOPICS, "trades.DOGE"])
        async with client:
            await client.wait_live(5)
            await rec.wait(lambda: len(rec.rejected) == 1)
            assert rec.rejected == [("trades.DOGE", "unknown topic")]
            await assert_recovered(client, sim)
            # Rejected while LIVE: reported, dropped, the connection stays.
            sim.reject_subscribes(["trades.SHIB"])
            assert client.subscribe("trades.SHIB") == ["trades.SHIB"]
            await rec.wait(lambda: len(rec.rejected) == 2)
            assert rec.rejected[1] == ("trades.SHIB", "unknown topic")
            assert client.state is State.LIVE and rec.disconnects == []
            await assert_recovered(client, sim)
            # A reconnect replays only the surviving topics.
            received = sim.connections[0].messages_received
            sim.drop_all()
            assert (await rec.wait_disconnect(1)).reason is DisconnectReason.TRANSPORT_ERROR
            await assert_recovered(client, sim)
            assert received >= 1
        assert len(rec.rejected) == 2


# ---------------------------------------------------------------------------- wire protocol


async def test_garbage_bytes_protocol_error_then_recovery() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, _rec, disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.send_garbage(), DisconnectReason.PROTOCOL_ERROR
        )
        assert disconnect.close_code == 1002, disconnect.describe()
        assert detected_s < 0.5 + SLACK_S


async def test_invalid_utf8_protocol_error_1007() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, _rec, disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.send_invalid_utf8(), DisconnectReason.PROTOCOL_ERROR
        )
        assert disconnect.close_code == 1007, disconnect.describe()
        assert 1007 in sim.close_codes_received
        assert detected_s < 0.5 + SLACK_S


async def test_stray_continuation_protocol_error_1002() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, _rec, disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.send_stray_continuation(), DisconnectReason.PROTOCOL_ERROR
        )
        assert disconnect.close_code == 1002, disconnect.describe()
        assert 1002 in sim.close_codes_received
        assert detected_s < 0.5 + SLACK_S


async def test_oversized_frame_protocol_error_1009() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        _client, _rec, disconnect, detected_s = await lose_connection_and_recover(
            sim, lambda s: s.send_oversized(4096), DisconnectReason.PROTOCOL_ERROR,
            max_message_size=1024,
        )
        assert disconnect.close_code == 1009, disconnect.describe()
        assert 1009 in sim.close_codes_received
        assert detected_s < 0.5 + SLACK_S


async def test_invalid_json_is_counted_and_the_connection_stays_live() -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            before = client.health.counter("decode_errors")
            assert sim.send_invalid_json() == 1
            async with _compat.timeout(5):
                while client.health.counter("decode_errors") == before:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # nothing else follows
            assert client.health.counter("decode_errors") == before + 1
            assert client.state is State.LIVE and rec.disconnects == []
            assert any(kind == "decode" for _, kind, _ in client.health.errors)
            await assert_recovered(client, sim)
            assert sim.connections_accepted == 1
        assert client.snapshot()["decode_errors"] == before + 1


async def test_sequence_gap_is_reported_with_topic_and_range() -> None:
    async with ExchangeSimulator(rate_per_s=50) as sim, no_fd_leak():
        rec = Recorder()
        client = make_client(sim, rec)
        async with client:
            await client.wait_live(5)
            await sim.wait_for(lambda: sim.last_seq.get("trades.ETH", 0) >= 3)
            last = sim.last_seq["trades.ETH"]
            sim.sequence_gap("trades.ETH", 4)
            await rec.wait(lambda: len(rec.gaps) >= 1)
            assert rec.gaps == [Gap("trades.ETH", last + 1, last + 4, across_reconnect=False)]
            assert client.health.gaps == 1 and client.sequences.missing == 4
            await asyncio.sleep(0.2)
            assert len(rec.gaps) == 1 and client.state is State.LIVE and rec.disconnects == []
            await assert_recovered(client, sim)
