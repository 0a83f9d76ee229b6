"""Regression tests of issue 11: each defect found against ddd81a9, through the public API.

Socket-free: the in-memory transport on a virtual-time loop (the manual clock), so no
test depends on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

import defi_ws
from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.errors import ConfigError, FatalDisconnect, FeedClosedError
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing, WsPing
from defi_ws.lifecycle import State
from defi_ws.reasons import DisconnectReason
from defi_ws.reconnect import FixedDelay, NoReconnect
from defi_ws.sequence import Gap, SequenceTracker
from defi_ws.testing import Opcode
from defi_ws.transport import ConnectOptions, MemoryConnection
from tests.venue import AuthHandler, MemoryVenue
from tests.virtual_time import run_virtual


def client_for(venue: MemoryVenue, handler: Any = None, **kwargs: Any) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(0.5))
    kwargs.setdefault("clock", asyncio.get_running_loop().time)
    return FeedClient(handler or JsonHandler("ws://venue"), transport=venue.transport, **kwargs)


async def until(condition: Any, timeout_s: float = 60.0) -> None:
    async with _compat.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


# ---------------------------------------------------------------------------- 1


@pytest.mark.parametrize("heartbeat", [NoPing(), WsPing(interval_s=1.0, timeout_s=1.0)])
def test_defect01_violation_with_silent_peer_is_protocol_error_aborted_after_close_timeout(
    heartbeat: Any,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        venue = MemoryVenue()
        lost_at: list[float] = []
        client = client_for(venue, topics=["a"], heartbeat=heartbeat, close_timeout_s=3.0,
                            reconnect=FixedDelay(100.0),
                            on_disconnected=lambda d: lost_at.append(loop.time()))
        async with client:
            await client.wait_live(5)
            conn = venue.transport.current
            conn.auto_close_reply = False  # the peer never answers CLOSE
            conn.auto_pong = False
            struck_at = loop.time()
            conn.server_send(b"\xff\xfe", opcode=Opcode.TEXT)  # invalid UTF-8
            await asyncio.sleep(10.0)
            assert conn.closed and client.state is State.BACKOFF
        first = client.history[0]
        assert first.reason is DisconnectReason.PROTOCOL_ERROR and first.close_code == 1007
        assert 3.0 - 1e-6 <= lost_at[0] - struck_at <= 3.0 + 0.01
        assert conn.sent[-1].close_code == 1007

    run_virtual(main())


# ---------------------------------------------------------------------------- 2


def test_defect02_pacing_unsubscribe_then_resubscribe_while_queued_when_live() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.001)
        client = client_for(venue, topics=["a"], outbound_rate_per_s=1.0, outbound_burst=1)
        async with client:
            await client.wait_live(5)
            client.subscribe("x")  # queued: the token went to "a"
            client.unsubscribe("x")
            client.subscribe("x")
            await asyncio.sleep(5.0)
            assert client.state is State.LIVE
            assert venue.current_subs() == {"a", "x"}
            assert set(client.confirmed_topics) == {"a", "x"}
            assert client.topic_state("x") is defi_ws.TopicState.CONFIRMED
        assert venue.duplicates == 0

    run_virtual(main())


def test_defect02_pacing_unsubscribe_then_resubscribe_while_queued_during_replay() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.001)
        handler = JsonHandler("ws://venue", max_topics_per_message=1)
        client = client_for(venue, handler, topics=["a", "b", "x", "c", "d"],
                            outbound_rate_per_s=1.0, outbound_burst=1)
        async with client:
            await until(lambda: client.state is State.SUBSCRIBING)
            client.unsubscribe("x")
            client.subscribe("x")  # re-queued at the end
            client.unsubscribe("x")
            await asyncio.sleep(2.5)  # the pacer passes where "x" was queued
            assert client.state is State.SUBSCRIBING
            client.subscribe("x")
            await client.wait_live(30)
            assert client.topic_state("x") is defi_ws.TopicState.CONFIRMED
            assert venue.current_subs() == {"a", "b", "c", "d", "x"}
        assert venue.duplicates == 0

    run_virtual(main())


# ---------------------------------------------------------------------------- 3


class Exploding(JsonHandler):
    """Raises once in ``stage``, then behaves."""

    def __init__(self, stage: str) -> None:
        super().__init__("ws://venue")
        self.stage = stage
        self.raised = False

    def _maybe(self, stage: str) -> None:
        if stage == self.stage and not self.raised:
            self.raised = True
            raise RuntimeError(f"{stage} is broken")

    def url(self, attempt: int) -> str:
        self._maybe("url")
        return super().url(attempt)

    def on_connection(self) -> None:
        self._maybe("on_connection")

    def auth_messages(self) -> Sequence[Any]:
        self._maybe("auth_messages")
        return ()

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        self._maybe("subscribe_messages")
        return super().subscribe_messages(topics)

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        self._maybe("unsubscribe_messages")
        return super().unsubscribe_messages(topics)


@pytest.mark.parametrize("stage", ["url", "on_connection", "auth_messages",
                                   "subscribe_messages", "unsubscribe_messages"])
def test_defect03_handler_exceptions_are_a_retried_handler_error(
    stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, Exploding(stage), topics=["a", "b"])
        async with client:
            await client.wait_live(10)
            if stage == "unsubscribe_messages":
                client.unsubscribe("b")
                await asyncio.sleep(0.1)
                await client.wait_live(10)
            assert client.state is State.LIVE and client.fatal is None
        reasons = [d.reason for d in client.history]
        assert reasons[0] is DisconnectReason.HANDLER_ERROR, reasons
        assert stage in client.history[0].detail
        assert client.health.disconnects["handler_error"] == 1
        assert client.health.handler_errors == 1

    caplog.set_level(logging.ERROR, logger="defi_ws")
    run_virtual(main())
    logged = [r for r in caplog.records if r.exc_info and "RuntimeError" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info[1] is not None  # type: ignore[index]


def test_defect03_a_batch_larger_than_the_burst_is_paced_not_fatal() -> None:
    class OnePerTopic(JsonHandler):
        def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
            return [{"op": "subscribe", "args": [t]} for t in topics]

    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.001)
        handler = OnePerTopic("ws://venue", max_topics_per_message=10)
        topics = [f"t{i}" for i in range(10)]
        client = client_for(venue, handler, topics=topics, outbound_rate_per_s=5.0,
                            outbound_burst=5)
        async with client:
            await client.wait_live(30)
            assert venue.current_subs() == set(topics)
        assert client.fatal is None and [d.reason for d in client.history] == [
            DisconnectReason.LOCAL_STOP]

    run_virtual(main())


def test_defect03_invalid_configuration_is_a_config_error_at_construction() -> None:
    with pytest.raises(ConfigError) as info:
        FeedClient(JsonHandler("ws://x"), tick_s=float("inf"), close_timeout_s=float("nan"),
                   outbound_rate_per_s=0.0)
    assert "tick_s" in str(info.value) and "close_timeout_s" in str(info.value)


# ---------------------------------------------------------------------------- 4


def test_defect04_data_through_the_control_router_counts_as_data() -> None:
    class ClassifyAll(JsonHandler):
        control_prefixes = None

    async def main() -> None:
        venue = MemoryVenue()
        got: list[Any] = []
        client = client_for(venue, ClassifyAll("ws://venue", on_data=got.append),
                            topics=["a"], stale_after_s=0.5, heartbeat=NoPing())
        async with client:
            await client.wait_live(5)
            for seq in range(60):  # every 50 ms for 3 s
                venue.transport.current.server_send({"topic": "a", "seq": seq})
                await asyncio.sleep(0.05)
            assert client.state is State.LIVE
            assert len(venue.transport.connections) == 1
            assert client.health.counter("messages") == 60
            assert client.snapshot()["messages"] == 60
        assert len(got) == 60

    run_virtual(main())


# ---------------------------------------------------------------------------- 5


def test_defect05_subscribe_messages_are_built_once_under_pacing() -> None:
    class Numbered(JsonHandler):
        def __init__(self) -> None:
            super().__init__("ws://venue", max_topics_per_message=1)
            self.ids: list[int] = []

        def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
            self.ids.append(len(self.ids) + 1)
            return [{"op": "subscribe", "args": list(topics), "id": self.ids[-1]}]

    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.001)
        handler = Numbered()
        topics = [f"t{i}" for i in range(12)]
        client = client_for(venue, handler, topics=topics, outbound_rate_per_s=4.0,
                            outbound_burst=1, ack_timeout_s=30.0)
        async with client:
            await client.wait_live(30)
            sent = [m["id"] for m in venue.transport.current.sent_messages()
                    if m.get("op") == "subscribe"]
        assert handler.ids == list(range(1, 13))
        assert sent == handler.ids  # every registered request id was sent, once

    run_virtual(main())


# ---------------------------------------------------------------------------- 6


def test_defect06_unsubscribe_then_resubscribe_reports_no_false_gap() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        gaps: list[Gap] = []
        client = client_for(venue, JsonHandler("ws://venue", sequence_field="seq"),
                            topics=["a"], on_gap=gaps.append)
        async with client:
            await client.wait_live(5)
            conn = venue.transport.current
            for seq in (1, 2, 3):
                conn.server_send({"topic": "a", "seq": seq})
            client.unsubscribe("a")
            await asyncio.sleep(1.0)
            client.subscribe("a")
            await until(lambda: client.topic_state("a") is defi_ws.TopicState.CONFIRMED)
            conn.server_send({"topic": "a", "seq": 499})
            conn.server_send({"topic": "a", "seq": 500})
            conn.server_send({"topic": "a", "seq": 502})
        assert [(g.topic, g.first_missing, g.last_missing) for g in gaps] == [("a", 501, 501)]

    run_virtual(main())


def test_defect06_sequence_tracker_is_bounded() -> None:
    tracker = SequenceTracker(max_topics=100)
    for i in range(10_000):
        tracker.observe(f"topic-{i}", 1)
    assert len(tracker) <= 100
    assert FeedClient(JsonHandler("ws://x")).sequences.max_topics >= 1


# ---------------------------------------------------------------------------- 7


async def test_defect07_start_after_stop_on_a_never_started_client_raises() -> None:
    client = FeedClient(JsonHandler("ws://x"), transport=MemoryVenue().transport)
    await client.stop()
    with pytest.raises(FeedClosedError):
        client.start()
    assert client.state is State.CLOSED


class StubbornTransport:
    """A connect that ignores the first two cancellations (like a shielded handshake)."""

    async def connect(self, url: str, listener: Any, options: ConnectOptions) -> Any:
        ignored = 0
        while True:
            try:
                await asyncio.sleep(1000.0)
            except asyncio.CancelledError:
                ignored += 1
                if ignored > 2:
                    raise


def test_defect07_stop_does_not_swallow_the_callers_cancellation() -> None:
    async def main() -> None:
        client = FeedClient(JsonHandler("ws://x"), transport=StubbornTransport(),  # type: ignore[arg-type]
                            clock=asyncio.get_running_loop().time)
        client.start()
        await asyncio.sleep(0.01)
        stopper = asyncio.create_task(client.stop(timeout_s=0.5))
        await asyncio.sleep(1.0)  # past the limit: the supervisor was cancelled twice
        assert not stopper.done()
        stopper.cancel()
        await asyncio.wait({stopper}, timeout=5.0)
        assert stopper.cancelled()
        assert client._task is not None
        await asyncio.wait({client._task}, timeout=5.0)
        assert client._task.done()

    run_virtual(main())


# ---------------------------------------------------------------------------- 8


def test_defect08_send_works_while_the_websocket_is_open_before_live() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=1.0)  # slow login reply
        venue.needs_login = True
        client: FeedClient
        states: list[State] = []

        class Echo(AuthHandler):
            def on_message(self, message: Any) -> None:
                states.append(client.state)
                client.send({"op": "echo", "seen": message["n"]})

        client = client_for(venue, Echo("ws://venue"), topics=["a"])

        def greet(conn: MemoryConnection) -> None:
            asyncio.get_running_loop().call_soon(conn.server_send, {"n": 1})

        venue.transport.on_connect = greet
        async with client:
            await client.wait_live(10)
            echoes = [m for m in venue.transport.current.sent_messages()
                      if m.get("op") == "echo"]
            assert echoes == [{"op": "echo", "seen": 1}]
        assert states and states[0] is not State.LIVE  # it did arrive before LIVE
        assert client.health.counter("callback_errors") == 0
        assert client.health.handler_errors == 0

    run_virtual(main())


def test_defect08_send_binary_frames() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue)
        async with client:
            await client.wait_live(5)
            client.send(b"\x00\x01\x02", binary=True)
            client.send_batch([b"\x03", b"\x04"], binary=True)
            frames = venue.transport.current.sent[-3:]
            assert [f.opcode for f in frames] == [Opcode.BINARY] * 3
            assert [f.payload for f in frames] == [b"\x00\x01\x02", b"\x03", b"\x04"]

    run_virtual(main())


def test_defect08_on_connected_only_for_an_open_connection() -> None:
    async def main() -> None:
        venue = MemoryVenue(reply_delay_s=0.01)
        connected: list[bool] = []
        client: FeedClient

        def on_connected() -> None:
            conn = client.connection
            connected.append(conn is not None and not conn.listener.closing)

        client = client_for(venue, topics=["a"], on_connected=on_connected,
                            reconnect=FixedDelay(100.0), heartbeat=NoPing())
        respond = venue.respond

        def ack_then_break(conn: MemoryConnection, message: Any) -> None:
            respond(conn, message)
            if isinstance(message, dict) and message.get("op") == "subscribe":
                conn.auto_close_reply = False

                def strike() -> None:  # the ack, then a bad frame in the same read
                    conn.server_send({"event": "subscribed", "topic": "a"})
                    conn.server_send(b"\xff", opcode=Opcode.TEXT)

                asyncio.get_running_loop().call_soon(strike)

        venue.ack = False
        venue.transport.responder = ack_then_break
        async with client:
            await asyncio.sleep(5.0)
        assert connected == []
        assert client.history[0].reason is DisconnectReason.PROTOCOL_ERROR

    run_virtual(main())


# ---------------------------------------------------------------------------- 9


def test_defect09_no_reconnect_and_a_normal_close_is_an_end_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        venue = MemoryVenue()
        gave_up: list[Any] = []
        client = client_for(venue, topics=["a"], reconnect=NoReconnect(),
                            on_gave_up=gave_up.append)
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_close(1000, "done")
            await client.wait_closed()
            assert client.fatal is None and client.state is State.CLOSED
            with pytest.raises(FeedClosedError) as info:
                await client.wait_live(1)
            assert not isinstance(info.value, FatalDisconnect)
        assert gave_up == []
        assert client.history[0].reason is DisconnectReason.PEER_CLOSE

    caplog.set_level(logging.DEBUG, logger="defi_ws")
    run_virtual(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_defect09_no_reconnect_and_a_failure_is_still_fatal() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, topics=["a"], reconnect=NoReconnect())
        async with client:
            await client.wait_live(5)
            venue.transport.current.server_close(1011, "internal error")
            with pytest.raises(FatalDisconnect):
                await client.wait_closed()
                raise client.fatal or AssertionError("not fatal")

    run_virtual(main())


# ---------------------------------------------------------------------------- 10


def test_defect10_on_message_exceptions_are_logged_once_per_type_then_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def typo(message: Any) -> None:
        message["no-such-field"]

    async def main() -> None:
        venue = MemoryVenue()
        client = client_for(venue, JsonHandler("ws://venue", on_data=typo))
        async with client:
            await client.wait_live(5)
            for i in range(50):
                venue.transport.current.server_send({"i": i})
            await asyncio.sleep(0.1)
            assert client.health.handler_errors == 50
            assert client.health.counter("callback_errors") == 50
            await asyncio.sleep(61.0)
            venue.transport.current.server_send({"i": "late"})
            await asyncio.sleep(0.1)

    caplog.set_level(logging.DEBUG, logger="defi_ws")
    run_virtual(main())
    logged = [r for r in caplog.records if "KeyError" in r.getMessage()]
    assert len(logged) == 2 and all(r.levelno == logging.ERROR for r in logged)
    assert all(r.exc_info is not None for r in logged)
    assert "49 more" in logged[1].getMessage()


# ---------------------------------------------------------------------------- 11


def test_defect11_jsonhandler_sequence_of_and_topic_of_are_overridable_methods() -> None:
    class Numbered(JsonHandler):
        def topic_of(self, message: Any) -> str | None:
            return str(message.get("ch"))

        def sequence_of(self, message: Any) -> tuple[str, int] | None:
            return (str(message.get("ch")), int(message["n"]))

    async def main() -> None:
        venue = MemoryVenue()
        gaps: list[Gap] = []
        client = client_for(venue, Numbered("ws://venue"), topics=["a"], on_gap=gaps.append)
        async with client:
            await client.wait_live(5)
            for n in (1, 2, 5):
                venue.transport.current.server_send({"ch": "a", "n": n})
        assert [(g.topic, g.first_missing, g.last_missing) for g in gaps] == [("a", 3, 4)]

    run_virtual(main())


# ---------------------------------------------------------------------------- 12


def test_defect12_a_venue_without_acks_is_an_explicit_option() -> None:
    async def main() -> None:
        venue = MemoryVenue(ack=False)
        client = client_for(venue, topics=["a", "b"], ack_timeout_s=None)
        async with client:
            await client.wait_live(5)
            assert set(client.confirmed_topics) == {"a", "b"}
            client.subscribe("c")
            await asyncio.sleep(60.0)
            assert client.state is State.LIVE and len(venue.transport.connections) == 1
            assert venue.current_subs() == {"a", "b", "c"}
            assert set(client.confirmed_topics) == {"a", "b", "c"}

    run_virtual(main())


# ---------------------------------------------------------------------------- 13


def test_defect13_public_surface() -> None:
    from defi_ws import testing, transport

    assert defi_ws.TopicState is defi_ws.subscriptions.TopicState
    assert "TopicState" in defi_ws.__all__
    assert "MemoryTransport" not in defi_ws.__all__ and not hasattr(defi_ws, "MemoryTransport")
    assert testing.MemoryTransport is transport.MemoryTransport
    assert "ProtocolViolation" not in defi_ws.__all__
    assert not hasattr(defi_ws.errors, "ProtocolViolation")


def test_defect13_a_rejection_detail_of_ack_timeout_is_an_ordinary_rejection() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        rejected: list[tuple[str, str]] = []
        respond = venue.respond

        def reject_b(conn: MemoryConnection, message: Any) -> None:
            if isinstance(message, dict) and message.get("op") == "subscribe" \
                    and "b" in message["args"]:
                asyncio.get_running_loop().call_soon(
                    conn.server_send, {"event": "error", "topic": "b", "msg": "ack timeout"})
                message = {**message, "args": [t for t in message["args"] if t != "b"]}
            respond(conn, message)

        venue.transport.responder = reject_b
        client = client_for(venue, topics=["a", "b"],
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)))
        async with client:
            await client.wait_live(5)
            await asyncio.sleep(1.0)
            assert client.state is State.LIVE and client.desired_topics == ("a",)
        assert rejected == [("b", "ack timeout")]
        assert [d.reason for d in client.history] == [DisconnectReason.LOCAL_STOP]

    run_virtual(main())
