"""FeedClient, the supervisor: lifecycle driving, recovery, fatal errors, cancellation.

Socket-free tests run on the in-memory transport and a virtual-time loop (the manual
clock); cancellation tests also run on the stock asyncio loop and on uvloop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from defi_ws.client import ErrorPolicy, FeedClient
from defi_ws.errors import ConfigError, FatalDisconnect, NotConnectedError
from defi_ws.handler import JsonHandler
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import ExponentialBackoff, FixedDelay
from defi_ws.transport import ConnectOptions, MemoryTransport, redact_url
from tests.venue import AuthHandler, MemoryVenue
from tests.virtual_time import run_virtual


def client_for(venue: MemoryVenue, handler: Any = None, **kwargs: Any) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(0.5))
    kwargs.setdefault("clock", asyncio.get_running_loop().time)
    return FeedClient(handler or JsonHandler("ws://venue"), transport=venue.transport, **kwargs)


def test_config_errors_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        FeedClient(JsonHandler("ws://x"), connect_timeout_s=0, ack_timeout_s=-1, tick_s=0,
                   max_queued_messages=0)
    assert len(info.value.problems) == 4
    assert "connect_timeout_s" in str(info.value) and "max_queued_messages" in str(info.value)


def test_live_then_reconnect_replays_subscriptions() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        events: list[Any] = []
        client = client_for(venue, topics=["a", "b"],
                            on_connected=lambda: events.append("connected"),
                            on_reconnected=lambda: events.append("reconnected"),
                            on_disconnected=lambda d: events.append(d.reason))
        async with client:
            await client.wait_live(5)
            assert venue.current_subs() == {"a", "b"}
            venue.transport.current.server_close(1012, "restart")
            await asyncio.sleep(0.01)
            assert client.state is State.BACKOFF
            await client.wait_live(5)
            assert venue.current_subs() == {"a", "b"} and len(venue.transport.connections) == 2
            assert client.last_disconnect == Disconnect(
                DisconnectReason.PEER_CLOSE, close_code=1012, detail="restart")
        assert events == ["connected", DisconnectReason.PEER_CLOSE, "connected", "reconnected"]
        assert client.state is State.CLOSED and client.health.reconnects == 1
        # The local stop answered with a clean close.
        assert venue.transport.current.sent[-1].close_code == 1000

    run_virtual(main())


def test_data_reaches_the_handler_and_acks_do_not() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        got: list[Any] = []
        client = client_for(venue, JsonHandler("ws://venue", on_data=got.append), topics=["a"])
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_send({"topic": "a", "seq": 1, "data": {}})
            venue.transport.current.server_send({"event": "something-else"})
        assert got == [{"topic": "a", "seq": 1, "data": {}}, {"event": "something-else"}]

    run_virtual(main())


def test_auth_rejected_is_fatal_with_a_clear_error() -> None:
    async def main() -> None:
        venue = MemoryVenue(auth_ok=False)
        gave_up: list[Disconnect] = []
        client = client_for(venue, AuthHandler("ws://venue"), topics=["a"],
                            on_gave_up=gave_up.append)
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
        assert info.value.disconnect.reason is DisconnectReason.AUTH_FAILED
        assert "bad signature" in str(info.value)
        assert gave_up == [info.value.disconnect]
        assert client.state is State.CLOSED and len(venue.transport.connections) == 1
        assert venue.current_subs() == set()  # never subscribed without auth

    run_virtual(main())


def test_auth_timeout_is_retried_with_backoff() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=100.0)  # answers far too late
        loop = asyncio.get_running_loop()
        client = client_for(venue, AuthHandler("ws://venue"), auth_timeout_s=2.0,
                            reconnect=FixedDelay(1.0))
        async with client:
            await asyncio.sleep(10.0)
            attempts = len(venue.transport.connections)
        # Each attempt: 2 s auth timeout + 1 s backoff: 3-4 attempts in 10 s.
        assert 3 <= attempts <= 4
        assert client.health.disconnects["auth_failed"] >= 3
        assert loop.time() >= 10.0 - 1e-9

    run_virtual(main())


def test_venue_that_never_acks_reconnects_with_backoff() -> None:
    async def main() -> None:
        venue = MemoryVenue(ack=False)
        client = client_for(venue, topics=["a"], ack_timeout_s=1.0,
                            reconnect=ExponentialBackoff(initial_s=1.0, jitter=0.0))
        async with client:
            await asyncio.sleep(20.0)
        starts = len(venue.transport.connections)
        # Delays 1, 2, 4, 8 s plus ack and close timeouts: a handful, not a busy loop.
        assert 3 <= starts <= 6
        assert all(d.reason is DisconnectReason.SUBSCRIBE_REJECTED for d in client.history
                   if d.reason is not DisconnectReason.LOCAL_STOP)

    run_virtual(main())


def test_rejected_topic_is_dropped_and_reported_and_the_feed_goes_live() -> None:
    async def main() -> None:
        venue = MemoryVenue(reject=frozenset({"bad"}))
        rejected: list[tuple[str, str]] = []
        client = client_for(venue, topics=["a", "bad"],
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)))
        async with client:
            await client.wait_live(5)
            assert client.desired_topics == ("a",)
        assert rejected == [("bad", "unknown topic")]

    run_virtual(main())


def test_ack_for_unknown_topic_is_counted_not_fatal() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, topics=["a"])
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_send({"event": "subscribed", "topic": "ghost"})
            await asyncio.sleep(0.1)
            assert client.health.unknown_acks == 1 and client.state is State.LIVE

    run_virtual(main())


def test_handshake_refused_403_is_fatal_and_429_honours_retry_after() -> None:
    async def main() -> None:
        import picows

        def refused(status: int, retry_after: str | None = None) -> Exception:
            response = picows.WSUpgradeResponse.create_error_response(status, b"no")
            if retry_after is not None:
                response.headers["Retry-After"] = retry_after
            return picows.WSHandshakeError("refused", b"", b"", response)

        venue = MemoryVenue()
        loop = asyncio.get_running_loop()
        venue.transport.fail_next(refused(429, "30"))
        starts: list[float] = []
        client = client_for(venue, on_disconnected=lambda d: starts.append(loop.time()))
        async with client:
            await client.wait_live(60)
            assert loop.time() >= 30.0  # not the 0.5 s of the strategy
        assert client.history[0].http_status == 429 and client.history[0].retry_after_s == 30.0

        venue = MemoryVenue()
        venue.transport.fail_next(refused(403))
        client = client_for(venue)
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
        assert info.value.disconnect.http_status == 403

    run_virtual(main())


def test_handler_errors_are_counted_and_policy_can_disconnect() -> None:
    async def main() -> None:
        def explode(message: Any) -> None:
            raise ValueError("bad message")

        venue = MemoryVenue()
        client = client_for(venue, JsonHandler("ws://venue", on_data=explode))
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_send({"x": 1})
            venue.transport.current.server_send(b"{not json")
            await asyncio.sleep(0.1)
            assert client.state is State.LIVE and client.health.handler_errors == 2
            assert [e[1] for e in client.health.errors] == ["callback", "decode"]

        venue = MemoryVenue()
        client = client_for(venue, JsonHandler("ws://venue", on_data=explode),
                            error_policy=ErrorPolicy.DISCONNECT)
        async with client:
            await client.wait_live(5)
            venue.transport.connections[0].server_send({"x": 1})
            await asyncio.sleep(5)
            await client.wait_live(5)
        assert client.history[0].reason is DisconnectReason.HANDLER_ERROR
        assert venue.transport.connections[0].sent[-1].close_code == 1011

    run_virtual(main())


def test_resubscribe_replay_obeys_the_outbound_rate() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.001)
        loop = asyncio.get_running_loop()
        sent_at: list[float] = []
        respond = venue.respond

        def timed(conn: Any, message: Any) -> None:
            sent_at.append(loop.time())
            respond(conn, message)

        venue.transport.responder = timed
        handler = JsonHandler("ws://venue", max_topics_per_message=10)
        topics = [f"t{i}" for i in range(1000)]
        client = client_for(venue, handler, topics=topics, outbound_rate_per_s=5.0,
                            outbound_burst=5, ack_timeout_s=60.0)
        async with client:
            await client.wait_live(120)
            assert venue.current_subs() == set(topics)
        assert len(sent_at) == 100
        # Token bucket: any window of length w holds at most burst + rate * w messages.
        for i in range(len(sent_at)):
            for j in range(i, len(sent_at)):
                assert j - i + 1 <= 5 + 5.0 * (sent_at[j] - sent_at[i]) + 1e-6
        assert sent_at[-1] - sent_at[0] >= (100 - 5) / 5.0 - 1e-6

    run_virtual(main())


def test_send_requires_a_live_connection_and_batches_in_one_write() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue)
        with pytest.raises(NotConnectedError):
            client.send({"op": "x"})
        async with client:
            await client.wait_live(5)
            conn = venue.transport.current
            writes = conn.writes
            client.send_batch([{"op": "order", "i": i} for i in range(20)])
            assert conn.writes == writes + 1
            orders = [m["i"] for m in conn.sent_messages() if m.get("op") == "order"]
            assert orders == list(range(20))

    run_virtual(main())


class HangingTransport:
    """A transport whose connect never completes (a black-holed SYN)."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def connect(self, url: str, listener: Any, options: ConnectOptions) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_stop_during_connect_leaks_nothing() -> None:
    transport = HangingTransport()
    client = FeedClient(JsonHandler("ws://x"), transport=transport)  # type: ignore[arg-type]
    client.start()
    await asyncio.sleep(0.01)
    assert client.state is State.CONNECTING
    await asyncio.wait_for(client.stop(), 2)
    assert client.state is State.CLOSED and transport.cancelled == 1


async def test_stop_during_auth_and_backoff_leaks_nothing() -> None:
    venue = MemoryVenue(reply_delay_s=100.0)
    client = FeedClient(AuthHandler("ws://x"), transport=venue.transport, close_timeout_s=0.2)
    client.start()
    await asyncio.sleep(0.01)
    assert client.state is State.AUTHENTICATING
    await asyncio.wait_for(client.stop(), 2)
    assert client.state is State.CLOSED and venue.transport.current.closed

    venue = MemoryVenue()
    venue.transport.fail_next(ConnectionRefusedError())
    client = FeedClient(JsonHandler("ws://x"), transport=venue.transport,
                        reconnect=FixedDelay(100.0))
    client.start()
    await asyncio.sleep(0.01)
    assert client.state is State.BACKOFF
    await asyncio.wait_for(client.stop(), 2)
    assert client.state is State.CLOSED


async def test_cancelling_the_owner_task_closes_the_feed() -> None:
    venue = MemoryVenue()
    client = FeedClient(JsonHandler("ws://x"), transport=venue.transport, topics=["a"])

    async def owner() -> None:
        async with client:
            await client.wait_live(5)
            await asyncio.Event().wait()

    task = asyncio.create_task(owner())
    await asyncio.sleep(0.1)
    assert client.state is State.LIVE
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.state is State.CLOSED and venue.transport.current.closed


async def test_stop_before_start_and_twice_is_harmless() -> None:
    client = FeedClient(JsonHandler("ws://x"), transport=MemoryTransport())
    await client.stop()
    assert client.state is State.CLOSED
    client2 = FeedClient(JsonHandler("ws://x"), transport=MemoryVenue().transport)
    client2.start()
    await client2.stop()
    await client2.stop()
    assert client2.state is State.CLOSED


def test_redact_url_drops_query_and_credentials() -> None:
    url = "wss://user:pw@stream.venue.io:9443/ws/private?listenKey=SECRETKEY&signature=abc"
    assert redact_url(url) == "wss://stream.venue.io:9443/ws/private?<redacted>"


def test_data_routed_through_classify_still_gets_gap_detection() -> None:
    class ClassifyAll(JsonHandler):
        control_prefixes = None  # every message goes through classify first

    async def main() -> None:
        venue = MemoryVenue()
        got: list[Any] = []
        gaps: list[Any] = []
        handler = ClassifyAll("ws://venue", on_data=got.append, sequence_field="seq")
        client = client_for(venue, handler, topics=["a"], on_gap=gaps.append)
        async with client:
            await client.wait_live(5)
            for seq in (1, 2, 5):
                venue.transport.current.server_send({"topic": "a", "seq": seq})
        assert [m["seq"] for m in got] == [1, 2, 5]
        assert [(g.topic, g.first_missing, g.last_missing) for g in gaps] == [("a", 3, 4)]

    run_virtual(main())


async def test_a_quiet_topic_with_its_own_window_goes_stale_and_others_do_not() -> None:
    from defi_ws import _compat
    from defi_ws.heartbeat import NoPing
    from defi_ws.testing import ExchangeSimulator

    lost: list[Disconnect] = []
    async with ExchangeSimulator(rate_per_s=50) as sim:
        sim.set_rate(0.0, "quiet")
        client = FeedClient(JsonHandler(sim.url), topics=["busy", "quiet"],
                            topic_stale_after_s={"quiet": 0.4, "busy": None},
                            heartbeat=NoPing(), reconnect=FixedDelay(0.05), tick_s=0.05,
                            on_disconnected=lost.append)
        async with client:
            await client.wait_live(10)
            async with _compat.timeout(10):
                while not lost:
                    await asyncio.sleep(0.02)
    assert lost[0].reason is DisconnectReason.STALE
    assert "quiet" in lost[0].detail


async def test_topics_the_venue_invents_do_not_grow_per_topic_state() -> None:
    venue = MemoryVenue()
    client = FeedClient(JsonHandler("ws://venue.test/ws"), topics=["a"],
                        transport=venue.transport, topic_stale_after_s={"a": 60.0})
    async with client:
        await client.wait_live(5)
        conn = venue.transport.current
        for i in range(2000):
            conn.server_send({"topic": f"spam.{i}", "seq": i, "data": {}})
        conn.server_send({"topic": "a", "seq": 1, "data": {}})
        session = client._session
        assert session is not None
        assert set(session.topic_counts) == {"a"}


def test_venue_heartbeats_are_not_data_and_do_not_keep_a_feed_fresh() -> None:
    # Kraken's {"channel":"heartbeat"} and Coinbase's heartbeats channel: a venue that
    # still sends them while no data arrives is STALE, and on_data never sees them.
    from defi_ws.handler import VenueHeartbeat
    from defi_ws.heartbeat import NoPing

    class HeartbeatVenue(JsonHandler):
        control_prefixes = (b'{"event"', b'{"channel":"heartbeat"')

        def classify(self, message: Any) -> Any:
            if isinstance(message, dict) and message.get("channel") == "heartbeat":
                return (VenueHeartbeat("heartbeat channel"),)
            return super().classify(message)

    async def main() -> None:
        venue = MemoryVenue()
        got: list[Any] = []
        lost: list[Disconnect] = []
        handler = HeartbeatVenue("ws://venue", on_data=got.append)
        client = client_for(venue, handler, topics=["a"], stale_after_s=5.0,
                            heartbeat=NoPing(), on_disconnected=lost.append)
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_send({"topic": "a", "seq": 1})
            for _ in range(20):  # 10 s of heartbeats, one every 0.5 s, and no data
                await asyncio.sleep(0.5)
                if lost:
                    break
                venue.transport.current.server_send({"channel": "heartbeat"})
        assert got == [{"topic": "a", "seq": 1}]
        assert lost and lost[0].reason is DisconnectReason.STALE
        assert client.health.counter("control_messages") >= 1

    run_virtual(main())
