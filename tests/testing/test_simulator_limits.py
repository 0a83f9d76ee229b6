"""ExchangeSimulator venue limits, connection age, sequence scopes and per-connection control.

Driven over loopback by raw picows clients (and one FeedClient), on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import picows
import pytest

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import Dialect, ExchangeSimulator, SequenceScope
from defi_ws.testing.simulator import (
    AGE_CLOSE_REASON,
    RATE_CLOSE_REASON,
    SHUTDOWN_CLOSE_REASON,
)

TEXT, CLOSE, PONG = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE, picows.WSMsgType.PONG


class Client(picows.WSListener):  # type: ignore[misc]
    """A raw picows client that records every frame (answers CLOSE, then disconnects)."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: picows.WSTransport | None = None
        self.frames: list[tuple[picows.WSMsgType, bytes]] = []
        self.changed = asyncio.Event()
        self.disconnected = asyncio.Event()

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        self.frames.append((frame.msg_type, frame.get_payload_as_bytes()))
        self.changed.set()
        if frame.msg_type == CLOSE:
            transport.send_close(picows.WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.disconnected.set()
        self.changed.set()

    @property
    def ws(self) -> picows.WSTransport:
        assert self.transport is not None
        return self.transport

    def send(self, message: Any) -> None:
        data = message.encode() if isinstance(message, str) else orjson.dumps(message)
        self.ws.send(TEXT, data)

    def texts(self) -> list[bytes]:
        return [payload for msg_type, payload in self.frames if msg_type == TEXT]

    def messages(self) -> list[Any]:
        out: list[Any] = []
        for payload in self.texts():
            try:
                out.append(orjson.loads(payload))
            except orjson.JSONDecodeError:
                out.append(payload)
        return out

    def stream(self, topic: str) -> list[dict[str, Any]]:
        return [m for m in self.messages()
                if isinstance(m, dict) and m.get("topic") == topic and "seq" in m]

    def close_frame(self) -> tuple[int, str] | None:
        for msg_type, payload in self.frames:
            if msg_type == CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        return None

    async def wait(self, predicate: Any, timeout_s: float = 5.0) -> None:
        async with _compat.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()
            await asyncio.wait_for(self.disconnected.wait(), 5)


async def connect(sim: ExchangeSimulator) -> Client:
    _, client = await picows.ws_connect(Client, sim.url)
    assert isinstance(client, Client)
    return client


async def subscribed(sim: ExchangeSimulator, *topics: str) -> Client:
    client = await connect(sim)
    client.send({"op": "subscribe", "args": list(topics)})
    await client.wait(lambda: len(client.messages()) >= len(topics))
    assert all(m["event"] == "subscribed" for m in client.messages())
    return client


async def closed_by_server(client: Client) -> tuple[int, str]:
    await asyncio.wait_for(client.disconnected.wait(), 5)
    frame = client.close_frame()
    assert frame is not None
    return frame


# ---------------------------------------------------------------------------- topic limits


async def test_topics_per_connection_generic() -> None:
    async with ExchangeSimulator(max_topics_per_connection=3) as sim:
        client = await subscribed(sim, "t.a", "t.b")
        client.send({"op": "subscribe", "args": ["t.c", "t.d", "t.b"]})
        await client.wait(lambda: len(client.messages()) == 5)
        assert client.messages()[2:] == [
            {"event": "subscribed", "topic": "t.c"},
            {"event": "error", "topic": "t.d", "msg": "too many topics on this connection"},
            {"event": "subscribed", "topic": "t.b"},  # already held: no new slot needed
        ]
        assert sim.connections[0].topics == {"t.a", "t.b", "t.c"}
        assert sim.subscribers("t.d") == 0
        # a freed slot can be used again
        client.send({"op": "unsubscribe", "args": ["t.a"]})
        client.send({"op": "subscribe", "args": ["t.d"]})
        await client.wait(lambda: len(client.messages()) == 7)
        assert client.messages()[-1] == {"event": "subscribed", "topic": "t.d"}
        assert (sim.topic_limit_rejections, sim.limit_hits) == (1, 1)
        stats = sim.stats()
        assert stats["topic_limit_rejections"] == stats["limit_hits"] == 1
        orjson.dumps(stats)
        await client.close()


async def test_topics_per_message_generic() -> None:
    async with ExchangeSimulator(max_topics_per_message=2) as sim:
        client = await subscribed(sim, "t.a", "t.b")
        client.send({"op": "subscribe", "args": ["t.c", "t.d", "t.e"]})
        await client.wait(lambda: len(client.messages()) == 5)
        msg = "too many topics in one message"
        assert client.messages()[2:] == [
            {"event": "error", "topic": t, "msg": msg} for t in ("t.c", "t.d", "t.e")
        ]
        assert sim.connections[0].topics == {"t.a", "t.b"}
        # unsubscribes are not limited
        client.send({"op": "unsubscribe", "args": ["t.a", "t.b", "t.x"]})
        await client.wait(lambda: len(client.messages()) == 8)
        assert sim.connections[0].topics == set()
        assert (sim.oversized_subscribes, sim.topic_limit_rejections, sim.limit_hits) == (1, 0, 1)
        await client.close()


async def test_topic_limits_binance_refuse_the_whole_request() -> None:
    async with ExchangeSimulator(
        dialect=Dialect.BINANCE, max_topics_per_connection=3, max_topics_per_message=2
    ) as sim:
        client = await connect(sim)
        client.send({"method": "SUBSCRIBE", "params": ["a@trade", "b@trade"], "id": 1})
        client.send({"method": "SUBSCRIBE", "params": ["c@trade", "d@trade", "e@trade"], "id": 2})
        client.send({"method": "SUBSCRIBE", "params": ["b@trade", "c@trade"], "id": 3})
        client.send({"method": "SUBSCRIBE", "params": ["c@trade", "d@trade"], "id": 4})
        await client.wait(lambda: len(client.messages()) == 4)
        ok, per_message, ok2, per_connection = client.messages()
        assert (ok, ok2) == ({"result": None, "id": 1}, {"result": None, "id": 3})
        assert per_message == {"error": {"code": 2, "msg": (
            "Invalid request: too many streams in one request")}, "id": 2}
        assert per_connection == {"error": {"code": 2, "msg": (
            "Invalid request: too many streams on this connection")}, "id": 4}
        assert sim.connections[0].topics == {"a@trade", "b@trade", "c@trade"}
        assert sim.oversized_subscribes == 1
        assert sim.topic_limit_rejections == 1  # d@trade (c@trade was held already)
        await client.close()


async def test_topic_limits_okx() -> None:
    async with ExchangeSimulator(
        dialect=Dialect.OKX, max_topics_per_connection=2, max_topics_per_message=2
    ) as sim:
        client = await connect(sim)
        args = [{"channel": "trades", "instId": f"{c}-USDT"} for c in ("BTC", "ETH", "SOL")]
        client.send({"id": "1", "op": "subscribe", "args": args})
        await client.wait(lambda: len(client.messages()) == 1)
        error = client.messages()[0]
        assert (error["id"], error["event"], error["code"]) == ("1", "error", "60012")
        assert "too many args" in error["msg"] and isinstance(error["connId"], str)
        assert sim.connections[0].topics == set()

        client.send({"id": "2", "op": "subscribe", "args": args[:2]})
        client.send({"id": "3", "op": "subscribe", "args": args[2:]})
        await client.wait(lambda: len(client.messages()) == 4)
        events = [(m["id"], m["event"], m.get("code")) for m in client.messages()[1:]]
        assert events == [("2", "subscribe", None), ("2", "subscribe", None),
                          ("3", "error", "60012")]
        assert "too many channels" in client.messages()[-1]["msg"]
        assert sim.connections[0].topics == {"trades:BTC-USDT", "trades:ETH-USDT"}
        assert (sim.oversized_subscribes, sim.topic_limit_rejections) == (1, 1)
        await client.close()


# ---------------------------------------------------------------------------- inbound rate


async def test_inbound_rate_sliding_window_closes_1008() -> None:
    async with ExchangeSimulator(max_messages_per_s=5) as sim:
        client = await connect(sim)
        for i in range(3):
            client.ws.send_ping(b"%d" % i)  # PING frames count, as at Binance
        client.send({"op": "subscribe", "args": ["t.a"]})
        client.send({"op": "subscribe", "args": ["t.b"]})
        client.send({"op": "subscribe", "args": ["t.c"]})  # the 6th within 1 s
        assert await closed_by_server(client) == (1008, RATE_CLOSE_REASON)
        assert [m["topic"] for m in client.messages()] == ["t.a", "t.b"]
        assert [p for t, p in client.frames if t == PONG] == [b"0", b"1", b"2"]
        await sim.wait_connections(0)
        assert sim.rate_violations == 1 and sim.limit_hits == 1
        assert sim.stats()["rate_violations"] == 1
        assert sim.subscribers("t.c") == 0


async def test_inbound_rate_window_slides_for_a_paced_client() -> None:
    async with ExchangeSimulator(max_messages_per_s=5) as sim:
        client = await connect(sim)
        for _ in range(5):
            client.send({"op": "ping"})
        await client.wait(lambda: len(client.messages()) == 5)
        await asyncio.sleep(1.05)  # the whole window has slid by
        for _ in range(5):
            client.send({"op": "ping"})
        await client.wait(lambda: len(client.messages()) == 10)
        assert not client.disconnected.is_set()
        assert sim.rate_violations == 0
        await client.close()


async def test_inbound_rate_without_control_frames() -> None:
    async with ExchangeSimulator(max_messages_per_s=2, rate_counts_control_frames=False) as sim:
        client = await connect(sim)
        for _ in range(10):
            client.ws.send_ping(b"x")
        client.send("ping")
        client.send("ping")
        await client.wait(lambda: len(client.frames) == 12)
        assert sim.rate_violations == 0
        client.send("ping")
        assert await closed_by_server(client) == (1008, RATE_CLOSE_REASON)
        assert sim.rate_violations == 1


async def test_inbound_rate_token_bucket() -> None:
    async with ExchangeSimulator(max_messages_per_s=5, messages_burst=3) as sim:
        client = await connect(sim)
        for _ in range(3):
            client.send("ping")
        await client.wait(lambda: len(client.texts()) == 3)
        await asyncio.sleep(0.3)  # refills 1.5 tokens
        client.send("ping")
        await client.wait(lambda: len(client.texts()) == 4)
        assert sim.rate_violations == 0
        for _ in range(5):  # more than the bucket can ever hold
            client.send("ping")
        assert await closed_by_server(client) == (1008, RATE_CLOSE_REASON)
        assert sim.rate_violations == 1
        assert sim.connections == [] or sim.connections[0].cut_reason == RATE_CLOSE_REASON


async def test_inbound_rate_okx_gets_60014_first() -> None:
    async with ExchangeSimulator(dialect=Dialect.OKX, max_messages_per_s=1) as sim:
        client = await connect(sim)
        client.send("ping")
        client.send("ping")
        assert await closed_by_server(client) == (1008, RATE_CLOSE_REASON)
        pong, error = client.messages()
        assert pong == b"pong"
        assert (error["event"], error["code"], error["msg"]) == (
            "error", "60014", "Requests too frequent.")
        assert sim.rate_violations == 1


# ---------------------------------------------------------------------------- connection rate


async def test_connections_per_window_refused_429_with_retry_after() -> None:
    async with ExchangeSimulator(max_connections_per_window=(2, 0.5)) as sim:
        first, second = await connect(sim), await connect(sim)
        await first.close()  # closing does not give the slot back
        started = time.monotonic()
        with pytest.raises(picows.WSHandshakeError) as info:
            await connect(sim)
        response = info.value.response
        assert response is not None and int(response.status) == 429
        assert response.headers["Retry-After"] == "1"  # whole seconds, at least 1
        assert sim.connections_rate_limited == 1 and sim.limit_hits == 1
        assert sim.handshake_statuses == [429]
        await asyncio.sleep(max(0.0, 0.55 - (time.monotonic() - started)))
        third = await connect(sim)
        assert sim.connections_accepted == 3
        assert sim.connections[-1].peer_ip == "127.0.0.1"
        for client in (second, third):
            await client.close()


# ---------------------------------------------------------------------------- connection age


async def test_max_connection_age_notice_then_1001_generic() -> None:
    async with ExchangeSimulator(max_connection_age_s=0.6, notice_before_s=0.3) as sim:
        client = await connect(sim)
        await sim.wait_connections(1)
        conn = sim.connections[0]
        assert await closed_by_server(client) == (1001, AGE_CLOSE_REASON)
        assert client.messages() == [{"event": "notice", "type": "shutdown", "cut_in_ms": 300}]
        kinds = [t for t, _ in client.frames]
        assert kinds == [TEXT, CLOSE]  # the notice came first
        assert time.monotonic() - conn.opened_at >= 0.55
        assert (conn.notices_sent, conn.cut_reason) == (1, AGE_CLOSE_REASON)
        assert (sim.shutdown_notices, sim.shutdown_cuts, sim.limit_hits) == (1, 1, 0)
        stats = sim.stats()
        assert (stats["shutdown_notices"], stats["shutdown_cuts"]) == (1, 1)


async def test_max_connection_age_without_notice() -> None:
    async with ExchangeSimulator(max_connection_age_s=0.3) as sim:
        client = await connect(sim)
        assert await closed_by_server(client) == (1001, AGE_CLOSE_REASON)
        assert client.texts() == []
        assert (sim.shutdown_notices, sim.shutdown_cuts) == (0, 1)


async def test_announce_shutdown_one_connection_binance() -> None:
    async with ExchangeSimulator(dialect=Dialect.BINANCE) as sim:
        first, second = await connect(sim), await connect(sim)
        await sim.wait_connections(2)
        before_ms = int(time.time() * 1000)
        assert sim.announce_shutdown(sim.connections[0], cut_after_s=0.1) == 1
        assert await closed_by_server(first) == (1001, SHUTDOWN_CLOSE_REASON)
        (notice,) = first.messages()
        assert first.texts()[0].startswith(b'{"e":"serverShutdown","E":')
        assert set(notice) == {"e", "E"} and notice["e"] == "serverShutdown"
        assert before_ms <= notice["E"] <= int(time.time() * 1000)
        await sim.wait_connections(1)
        assert second.frames == [] and not second.disconnected.is_set()
        assert (sim.shutdown_notices, sim.shutdown_cuts) == (1, 1)
        assert sim.announce_shutdown(12345) == 0  # no such connection
        await second.close()


async def test_announce_shutdown_all_okx_without_cut() -> None:
    async with ExchangeSimulator(dialect=Dialect.OKX) as sim:
        clients = [await connect(sim), await connect(sim)]
        await sim.wait_connections(2)
        assert sim.announce_shutdown(cut=False) == 2
        for client in clients:
            await client.wait(lambda c=client: len(c.texts()) == 1)
            notice = client.messages()[0]
            assert notice == {
                "event": "notice",
                "code": "64008",
                "msg": "The connection will soon be closed for a service upgrade. "
                       "Please reconnect.",
                "connId": notice["connId"],
            }
        assert clients[0].messages()[0]["connId"] != clients[1].messages()[0]["connId"]
        await asyncio.sleep(0.2)
        assert sim.current_connections == 2 and sim.shutdown_cuts == 0
        assert sim.shutdown_notices == 2
        for client in clients:
            await client.close()


async def test_feed_client_survives_age_cuts_without_hitting_a_limit() -> None:
    async with ExchangeSimulator(
        rate_per_s=50,
        max_topics_per_connection=10,
        max_topics_per_message=4,
        max_messages_per_s=10,
        max_connections_per_window=(3, 5.0),
        max_connection_age_s=0.8,
        notice_before_s=0.3,
    ) as sim:
        topics = [f"trades.T{i}" for i in range(10)]
        handler = JsonHandler(sim.url, max_topics_per_message=4, sequence_field="seq")
        async with FeedClient(
            handler, topics=topics, reconnect=FixedDelay(0.05), close_timeout_s=0.3
        ) as client:
            await client.wait_live(5)
            await sim.wait_for(lambda: sim.shutdown_cuts >= 1 and sim.connections_accepted >= 2
                               and sim.current_connections == 1
                               and sim.connections[0].topics == set(topics), timeout_s=10)
            await client.wait_live(5)
        assert sim.shutdown_notices >= 1
        assert sim.limit_hits == 0, sim.stats()


# ---------------------------------------------------------------------------- sequence scope


def data_bytes(payload: bytes) -> bytes:
    """The raw ``data`` value of a generic stream message."""
    _, sep, tail = payload.partition(b',"data":')
    assert sep and tail.endswith(b"}")
    return tail[:-1]


async def test_topic_scope_late_subscriber_and_identical_bytes() -> None:
    async with ExchangeSimulator() as sim:
        assert sim.sequence_scope is SequenceScope.TOPIC
        early = await subscribed(sim, "t.a")
        assert sim.burst("t.a", 5) == 5
        late = await subscribed(sim, "t.a")
        assert sim.subscribed_connections("t.a") == [1, 2]
        assert sim.burst("t.a", 3) == 3
        await early.wait(lambda: len(early.stream("t.a")) == 8)
        await late.wait(lambda: len(late.stream("t.a")) == 3)
        assert [m["seq"] for m in early.stream("t.a")] == list(range(1, 9))
        assert [m["seq"] for m in late.stream("t.a")] == [6, 7, 8]  # never older ones
        assert early.texts()[-3:] == late.texts()[-3:]  # the same bytes
        assert sim.messages_sent_by_connection() == {1: 8, 2: 3}
        await early.close()
        await sim.wait_connections(1)
        assert sim.messages_sent_by_connection() == {1: 8, 2: 3}
        await late.close()


async def test_connection_scope_generic_ids_per_connection_data_identical() -> None:
    async with ExchangeSimulator(sequence_scope="connection") as sim:
        assert sim.stats()["sequence_scope"] == "connection"
        early = await subscribed(sim, "t.a")
        sim.burst("t.a", 4)
        late = await subscribed(sim, "t.a", "t.b")
        sim.sequence_gap("t.a", skip=2)
        sim.burst("t.a", 3)
        sim.burst("t.b", 2)
        await early.wait(lambda: len(early.stream("t.a")) == 7)
        await late.wait(lambda: len(late.stream("t.a")) == 3 and len(late.stream("t.b")) == 2)
        assert [m["seq"] for m in early.stream("t.a")] == [1, 2, 3, 4, 7, 8, 9]
        assert [m["seq"] for m in late.stream("t.a")] == [3, 4, 5]  # gap of 2 on both
        assert [m["seq"] for m in late.stream("t.b")] == [1, 2]
        assert sim.last_seq == {"t.a": 9, "t.b": 2}  # events generated (gap included)
        assert sim.connections[1].last_seq == {"t.a": 5, "t.b": 2}
        shared_early = [data_bytes(p) for p in early.texts()[-3:]]
        shared_late = [data_bytes(p) for p in late.texts() if p.startswith(b'{"topic":"t.a"')]
        assert shared_early == shared_late  # byte-identical data for the same event
        datas = [m["data"] for m in early.stream("t.a") + late.stream("t.b")]
        assert all(set(d) == {"px", "qty", "tid", "ts"} for d in datas)
        tids = [d["tid"] for d in datas]
        assert len(set(tids)) == len(tids) and all(len(t) == 16 for t in tids)
        assert {data_bytes(p) for p in early.texts()[1:]}.isdisjoint(
            data_bytes(p) for p in late.texts() if p.startswith(b'{"topic":"t.b"'))
        await early.close()
        await late.close()


def trade_events(client: Client, dialect: Dialect) -> list[dict[str, Any]]:
    """The trades a client received after its subscribe ack (Binance or OKX)."""
    return [m["data"][0] if dialect is Dialect.OKX else m for m in client.messages()[1:]]


@pytest.mark.parametrize(
    ("dialect", "subscribe", "topic", "ids"),
    [
        (Dialect.BINANCE, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1},
         "btcusdt@trade", ("t",)),
        (Dialect.OKX, {"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]},
         "trades:BTC-USDT", ("tradeId", "seqId")),
    ],
    ids=["binance", "okx"],
)
async def test_connection_scope_binance_and_okx_only_ids_differ(
    dialect: Dialect, subscribe: dict[str, Any], topic: str, ids: tuple[str, ...]
) -> None:
    async with ExchangeSimulator(dialect=dialect, sequence_scope=SequenceScope.CONNECTION) as sim:
        early = await connect(sim)
        early.send(subscribe)
        await early.wait(lambda: sim.subscribers(topic) == 1 and len(early.texts()) == 1)
        sim.burst(topic, 2)
        late = await connect(sim)
        late.send(subscribe)
        await late.wait(lambda: sim.subscribers(topic) == 2 and len(late.texts()) == 1)
        sim.burst(topic, 2)
        await early.wait(lambda: len(early.texts()) == 5)
        await late.wait(lambda: len(late.texts()) == 3)
        first, second = trade_events(early, dialect)[-2:], trade_events(late, dialect)
        assert [int(e[ids[0]]) for e in first] == [3, 4]
        assert [int(e[ids[0]]) for e in second] == [1, 2]
        for a, b in zip(first, second, strict=True):
            assert {k: v for k, v in a.items() if k not in ids} == {
                k: v for k, v in b.items() if k not in ids}
        await early.close()
        await late.close()


# ---------------------------------------------------------------------------- per connection


async def test_stall_resume_and_drop_one_connection() -> None:
    async with ExchangeSimulator() as sim:
        a = await subscribed(sim, "t.a")
        b = await subscribed(sim, "t.a")
        conn_a, conn_b = sim.connections
        assert sim.stall(conn_a.id) and conn_a.stalled and not conn_a.half_open
        assert sim.stats()["stalled_connections"] == [conn_a.id]
        assert sim.burst("t.a", 5) == 5
        await b.wait(lambda: len(b.stream("t.a")) == 5)
        a.send("ping")  # a plain stall still answers
        await a.wait(lambda: b"pong" in a.texts())
        assert a.stream("t.a") == []
        assert (conn_a.messages_withheld, sim.messages_withheld) == (5, 5)
        assert sim.messages_sent_by_connection() == {conn_a.id: 0, conn_b.id: 5}

        assert sim.resume(conn_a)
        sim.burst("t.a", 2)
        await a.wait(lambda: len(a.stream("t.a")) == 2)
        assert [m["seq"] for m in a.stream("t.a")] == [6, 7]  # 1-5 were never sent to it

        sim.stall(conn_b, half_open=True)  # nothing at all: no pong, no ack, no stream
        b.ws.send_ping(b"hb")
        b.send({"op": "subscribe", "args": ["t.b"]})
        sim.burst("t.a", 1)
        await a.wait(lambda: len(a.stream("t.a")) == 3)
        await asyncio.sleep(0.1)
        assert len(b.frames) == 8 and sim.pongs_withheld == 1  # ack + 7 stream messages
        assert sim.subscribed_connections("t.b") == [conn_b.id]  # it did subscribe

        assert sim.drop(conn_b) and not sim.drop(999)
        await asyncio.wait_for(b.disconnected.wait(), 5)
        assert b.close_frame() is None  # an RST, no CLOSE
        await sim.wait_connections(1)
        assert sim.subscribed_connections("t.a") == [conn_a.id]
        assert not sim.stall(conn_b) and not sim.resume(conn_b.id)
        assert sim.faults["stall"] == 2 and sim.faults["drop_connection"] == 1
        assert not a.disconnected.is_set()
        await a.close()


def test_limit_options_are_validated() -> None:
    for kwargs in (
        {"max_topics_per_connection": 0},
        {"max_topics_per_message": -1},
        {"max_messages_per_s": 0},
        {"messages_burst": 3},
        {"max_connections_per_window": (0, 1.0)},
        {"max_connections_per_window": (1, 0.0)},
        {"max_connection_age_s": 0},
        {"notice_before_s": 1.0},
        {"max_connection_age_s": 1.0, "notice_before_s": 2.0},
    ):
        with pytest.raises(ValueError):
            ExchangeSimulator(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ExchangeSimulator(sequence_scope="nope")
    sim = ExchangeSimulator()
    assert (sim.limit_hits, sim.max_messages_per_s, sim.max_connection_age_s) == (0, None, None)
