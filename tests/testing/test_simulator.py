"""ExchangeSimulator, driven by a raw picows client (no FeedClient): protocol and faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import os
import random
import signal
import sys
import time
from typing import Any

import orjson
import picows
import pytest

from defi_ws import _compat
from defi_ws.testing import ExchangeSimulator, login_message
from defi_ws.testing.frames import Opcode, parse_frames
from defi_ws.testing.simulator import Dialect

TEXT, CONT, CLOSE, PONG = (
    picows.WSMsgType.TEXT,
    picows.WSMsgType.CONTINUATION,
    picows.WSMsgType.CLOSE,
    picows.WSMsgType.PONG,
)


class Client(picows.WSListener):  # type: ignore[misc]
    """A raw picows client that records every frame."""

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

    def messages(self) -> list[Any]:
        out = []
        for msg_type, payload in self.frames:
            if msg_type == TEXT:
                try:
                    out.append(orjson.loads(payload))
                except orjson.JSONDecodeError:
                    out.append(payload)
        return out

    def events(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if isinstance(m, dict) and m.get("event") == event]

    def data(self, topic: str) -> list[dict[str, Any]]:
        return [m for m in self.messages() if isinstance(m, dict) and m.get("topic") == topic
                and "seq" in m]

    def close_code(self) -> int | None:
        for msg_type, payload in self.frames:
            if msg_type == CLOSE:
                return int.from_bytes(payload[:2], "big")
        return None

    async def wait(self, predicate: Any, timeout_s: float = 3.0) -> None:
        async with _compat.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        if self.transport is not None and not self.disconnected.is_set():
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()
            await asyncio.wait_for(self.disconnected.wait(), 3)


async def connect(sim: ExchangeSimulator, **kwargs: Any) -> Client:
    _, client = await picows.ws_connect(Client, sim.url, **kwargs)
    assert isinstance(client, Client)
    return client


async def retrieve_disconnect_error(client: Client) -> None:
    """picows keeps the protocol error it closed a client connection for in a future; an
    exception nobody retrieved is logged by the loop when the future is collected
    (when depends on the Python version: 3.10 collects it during the test)."""
    with contextlib.suppress(picows.WSError):
        await client.ws.wait_disconnected()


async def subscribed(sim: ExchangeSimulator, *topics: str, **kwargs: Any) -> Client:
    client = await connect(sim, **kwargs)
    client.send({"op": "subscribe", "args": list(topics)})
    await client.wait(lambda: len(client.events("subscribed")) >= len(topics))
    return client


# ---------------------------------------------------------------------------- protocol


async def test_subscribe_ack_reject_unsubscribe_and_duplicates() -> None:
    async with ExchangeSimulator(
        reject_topics={"nope"}, topic_allowed=lambda t: not t.startswith("bad.")
    ) as sim:
        assert sim.url == f"ws://127.0.0.1:{sim.port}/"
        client = await connect(sim)
        await sim.wait_connections(1)
        client.send({"op": "subscribe", "args": ["trades.BTC", "nope", "bad.x", "trades.BTC"]})
        await client.wait(lambda: len(client.messages()) >= 4)
        assert client.messages() == [
            {"event": "subscribed", "topic": "trades.BTC"},
            {"event": "error", "topic": "nope", "msg": "unknown topic"},
            {"event": "error", "topic": "bad.x", "msg": "unknown topic"},
            {"event": "subscribed", "topic": "trades.BTC"},
        ]
        assert sim.duplicate_subscribes == 1
        assert sim.connections[0].topics == {"trades.BTC"}
        assert sim.subscribers("trades.BTC") == 1

        sim.reject_subscribes(["trades.ETH"])
        client.send({"op": "subscribe", "args": ["trades.ETH"]})
        client.send({"op": "unsubscribe", "args": ["trades.BTC"]})
        await client.wait(lambda: len(client.events("unsubscribed")) == 1)
        rejected = {"event": "error", "topic": "trades.ETH", "msg": "unknown topic"}
        assert rejected in client.messages()
        assert sim.subscribers("trades.BTC") == 0
        assert sim.faults["reject_subscribes"] == 1
        await client.close()
        await sim.wait_connections(0)
        assert sim.connections_accepted == 1
        assert sim.close_codes_received == [1000]
        orjson.dumps(sim.stats())


async def test_login_ok_fail_and_subscribe_before_login() -> None:
    async with ExchangeSimulator(api_key="k", api_secret="s") as sim:
        early = await connect(sim)
        early.send({"op": "subscribe", "args": ["trades.BTC"]})
        await early.wait(lambda: len(early.messages()) == 1)
        assert early.messages() == [
            {"event": "error", "topic": "trades.BTC", "msg": "login required"}
        ]
        assert sim.subscribe_before_login == 1

        good = await connect(sim)
        good.send(login_message("k", "s", int(time.time() * 1000)))
        good.send({"op": "subscribe", "args": ["trades.BTC"]})
        await good.wait(lambda: len(good.messages()) == 2)
        assert good.messages() == [
            {"event": "login", "success": True},
            {"event": "subscribed", "topic": "trades.BTC"},
        ]
        assert sim.subscribe_before_login == 1
        assert [c.login_before_subscribe for c in sim.connections] == [False, True]

        bad = await connect(sim)
        bad.send(login_message("k", "wrong secret"))
        await bad.wait(lambda: len(bad.messages()) == 1)
        assert bad.messages() == [{"event": "login", "success": False, "msg": "invalid signature"}]

        sim.reject_auth()
        again = await connect(sim)
        again.send(login_message("k", "s"))
        await again.wait(lambda: len(again.messages()) == 1)
        assert again.events("login")[0]["success"] is False
        assert (sim.logins_ok, sim.logins_failed) == (1, 2)
        for client in (early, good, bad, again):
            await client.close()


async def test_heartbeats_ws_and_app_level() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim)
        client.ws.send_ping(b"hb")
        client.send("ping")
        client.send({"op": "ping"})
        await client.wait(lambda: len(client.frames) == 3)
        assert (PONG, b"hb") in client.frames
        assert (TEXT, b"pong") in client.frames
        assert client.events("pong") == [{"event": "pong"}]
        assert (sim.pings_received, sim.pongs_sent) == (3, 3)
        await client.close()


async def test_stream_sequence_continues_across_reconnects_and_gaps() -> None:
    async with ExchangeSimulator(rate_per_s=400) as sim:
        first = await subscribed(sim, "trades.BTC")
        await first.wait(lambda: len(first.data("trades.BTC")) >= 20)
        await first.close()
        await sim.wait_connections(0)
        last = sim.last_seq["trades.BTC"]

        second = await subscribed(sim, "trades.BTC")
        await second.wait(lambda: len(second.data("trades.BTC")) >= 5)
        sim.set_rate(0)
        await asyncio.sleep(0.06)  # let the stream task see the new rate
        sim.sequence_gap("trades.BTC", skip=3)
        assert sim.burst("trades.BTC", 50) == 50
        assert sim.burst("nobody.listens", 5) == 0
        end = sim.last_seq["trades.BTC"]
        await second.wait(lambda: second.data("trades.BTC")[-1]["seq"] == end)

        seqs = [m["seq"] for m in first.data("trades.BTC")]
        assert seqs == list(range(1, len(seqs) + 1))
        seqs2 = [m["seq"] for m in second.data("trades.BTC")]
        assert seqs2[0] == last + 1
        steps = [b - a for a, b in itertools.pairwise(seqs2)]
        assert steps.count(4) == 1 and set(steps) == {1, 4}
        msg = second.data("trades.BTC")[0]
        assert set(msg["data"]) == {"px", "qty", "id", "ts"} and msg["data"]["id"] == msg["seq"]
        assert float(msg["data"]["px"]) > 0
        assert sim.messages_sent["trades.BTC"] >= len(seqs) + len(seqs2)
        await second.close()


# ---------------------------------------------------------------------------- faults


async def raw_upgrade(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand so the test can see the socket's own errors."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_drop_all_resets_the_socket() -> None:
    async with ExchangeSimulator() as sim:
        reader, writer = await raw_upgrade(sim.port)
        await sim.wait_connections(1)
        assert sim.drop_all() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1024), 3)
        writer.close()
        await sim.wait_connections(0)


async def test_close_all_sends_the_code() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim)
        await sim.wait_connections(1)
        sim.close_all(4001, "bye")
        await asyncio.wait_for(client.disconnected.wait(), 3)
        assert client.close_code() == 4001
        assert (CLOSE, (4001).to_bytes(2, "big") + b"bye") in client.frames
        await sim.wait_connections(0)
        assert sim.close_codes_received == [1000]


async def test_maintenance_closes_1001_then_refuses_with_retry_after() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim)
        await sim.wait_connections(1)
        sim.maintenance(refuse_s=1.0)
        await asyncio.wait_for(client.disconnected.wait(), 3)
        assert client.close_code() == 1001
        with pytest.raises(picows.WSHandshakeError) as info:
            await connect(sim)
        assert info.value.response is not None
        assert info.value.response.status == 503
        assert info.value.response.headers["Retry-After"] == "1"
        sim.end_maintenance()
        await (await connect(sim)).close()


async def test_reject_handshakes_statuses_and_retry_after() -> None:
    async with ExchangeSimulator() as sim:
        sim.reject_handshakes(429, retry_after_s=2)
        sim.reject_handshakes(403)
        sim.reject_handshakes(503, retry_after_s=0.2, count=2)
        seen = []
        for _ in range(4):
            with pytest.raises(picows.WSHandshakeError) as info:
                await connect(sim)
            response = info.value.response
            assert response is not None
            seen.append((int(response.status), response.headers.get("Retry-After")))
        assert seen == [(429, "2"), (403, None), (503, "1"), (503, "1")]
        assert sim.handshake_statuses == [429, 403, 503, 503]
        await (await connect(sim)).close()  # the queue is used up
        assert sim.connections_accepted == 1


async def test_slow_handshake() -> None:
    async with ExchangeSimulator() as sim:
        sim.slow_handshake(0.4)
        with pytest.raises((*_compat.TimeoutErrors, picows.WSError)):
            await connect(sim, websocket_handshake_timeout=0.1)
        started = time.monotonic()
        client = await connect(sim, websocket_handshake_timeout=3)
        assert time.monotonic() - started >= 0.35
        sim.slow_handshake(0)
        started = time.monotonic()
        other = await connect(sim)
        assert time.monotonic() - started < 0.3
        await client.close()
        await other.close()


async def test_silence_is_half_open() -> None:
    async with ExchangeSimulator(rate_per_s=200) as sim:
        client = await subscribed(sim, "trades.BTC")
        sim.silence()
        await asyncio.sleep(0.06)
        before = len(client.frames)
        client.ws.send_ping(b"1")
        client.send("ping")
        client.send({"op": "subscribe", "args": ["trades.ETH"]})
        await asyncio.sleep(0.3)
        assert len(client.frames) == before
        assert not client.disconnected.is_set()
        assert sim.pongs_withheld == 2
        sim.silence(False)
        client.ws.send_ping(b"2")
        await client.wait(lambda: (PONG, b"2") in client.frames)
        await client.close()


async def test_withhold_and_delay_pongs() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim)
        sim.withhold_pongs()
        client.ws.send_ping(b"a")
        client.send({"op": "ping"})
        await asyncio.sleep(0.2)
        assert client.frames == []
        sim.withhold_pongs(False)
        sim.delay_pongs(0.3)
        started = time.monotonic()
        client.ws.send_ping(b"b")
        client.send("ping")
        await client.wait(lambda: len(client.frames) == 2)
        assert time.monotonic() - started >= 0.25
        assert sorted(client.frames, key=repr) == sorted([(PONG, b"b"), (TEXT, b"pong")], key=repr)
        sim.delay_pongs(0)
        client.ws.send_ping(b"c")  # a delayed pong pending at shutdown must not leak either
        await client.wait(lambda: (PONG, b"c") in client.frames)
        await client.close()


async def test_garbage_makes_the_client_close_with_protocol_error() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim)
        await sim.wait_connections(1)
        assert sim.send_garbage() == 1
        await asyncio.wait_for(client.disconnected.wait(), 3)
        await retrieve_disconnect_error(client)
        handshake = client.ws.close_handshake
        assert handshake is not None and handshake.sent is not None
        assert int(handshake.sent.code) == 1002
        # picows keeps the parser's error on a future; retrieve it, or asyncio reports
        # it whenever the garbage collector frees the transport (sometimes mid-test)
        with pytest.raises(picows.WSProtocolError):
            await client.ws.wait_disconnected()
        await sim.wait_connections(0)
        assert sim.close_codes_received == [1002]


async def test_oversized_frame_makes_the_client_close_1009() -> None:
    async with ExchangeSimulator() as sim:
        client = await connect(sim, max_frame_size=65536)
        await sim.wait_connections(1)
        sim.send_oversized(70_000)
        await asyncio.wait_for(client.disconnected.wait(), 3)
        await retrieve_disconnect_error(client)
        assert int(client.ws.close_handshake.sent.code) == 1009
        with pytest.raises(picows.WSProtocolError):  # retrieved (see the garbage test)
            await client.ws.wait_disconnected()


async def test_invalid_payloads_on_the_wire() -> None:
    async with ExchangeSimulator() as sim:
        reader, writer = await raw_upgrade(sim.port)
        await sim.wait_connections(1)
        sim.send_invalid_utf8()
        sim.send_stray_continuation()
        sim.send_invalid_json()
        sim.send_oversized(100)
        raw = b""
        async with _compat.timeout(3):
            while len(frames := parse_frames(raw, expect_masked=False)[0]) < 4:
                raw += await reader.read(65536)
        utf8, stray, bad_json, big = frames
        assert utf8.opcode == Opcode.TEXT
        with pytest.raises(UnicodeDecodeError):
            utf8.payload.decode()
        assert stray.opcode == Opcode.CONTINUATION
        bad_json.payload.decode()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad_json.payload)
        assert len(big.payload) == 100 and orjson.loads(big.payload)["topic"] == "oversized"
        writer.close()
        await writer.wait_closed()


async def test_random_faults_run_and_stop_cleanly() -> None:
    async with ExchangeSimulator(rate_per_s=100) as sim:
        sim.random_faults(random.Random(7), 0.03)
        clients = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            try:
                client = await connect(sim, websocket_handshake_timeout=0.5)
            except (picows.WSError, OSError, *_compat.TimeoutErrors):
                continue
            clients.append(client)
            client.send({"op": "subscribe", "args": ["trades.BTC"]})
            await asyncio.sleep(0.05)
        await sim.stop_random_faults()
        assert sum(sim.faults.values()) >= 5
        assert sim.connections_accepted >= 2
    for client in clients:
        await asyncio.wait_for(client.disconnected.wait(), 3)
        # garbage faults end in a picows protocol error: retrieve it
        with contextlib.suppress(picows.WSError):
            await client.ws.wait_disconnected()


async def test_shutdown_closes_clients_and_held_sockets() -> None:
    sim = ExchangeSimulator(rate_per_s=1000)
    async with sim:
        client = await subscribed(sim, "trades.BTC")
        sim.slow_handshake(10)
        held = asyncio.ensure_future(connect(sim, websocket_handshake_timeout=5))
        await sim.wait_for(lambda: sim.tcp_accepted == 2)
    await asyncio.wait_for(client.disconnected.wait(), 1)
    assert client.close_code() == 1001
    with pytest.raises(Exception):  # noqa: B017 - reset during the upgrade
        await asyncio.wait_for(held, 3)
    assert sim.current_connections == 0


def test_login_message_helper() -> None:
    msg = login_message("key", "secret", 1700000000000)
    expected = hmac.new(b"secret", b"1700000000000GET/login", hashlib.sha256).hexdigest()
    assert msg == {"op": "login", "args": {"key": "key", "ts": 1700000000000, "sig": expected}}
    assert isinstance(login_message("key", "secret")["args"]["ts"], int)


# uvloop only: on Python 3.10 the asyncio loop's child watcher, shared by the loops the
# suite creates one after another, can miss the child's exit (communicate() never
# returned, twice in make test-all); uvloop watches its own children.
@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_cli_prints_url_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "defi_ws.testing.simulator", "--port", "0", "--rate", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        url = line.decode().strip()
        assert url.startswith("ws://127.0.0.1:")
        _, client = await picows.ws_connect(Client, url)
        client.send({"op": "subscribe", "args": ["trades.BTC"]})
        await client.wait(lambda: len(client.data("trades.BTC")) >= 1, 5)
        proc.send_signal(signal.SIGINT)
        # Generous: its shutdown is bounded (~3 s).
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        await asyncio.wait_for(client.disconnected.wait(), 10)
        assert proc.returncode == 0, stderr
        assert b"Warning" not in stderr and b"Traceback" not in stderr, stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------- dialects


def test_dialect_defaults_and_validation() -> None:
    assert ExchangeSimulator().dialect is Dialect.GENERIC
    assert ExchangeSimulator(dialect=Dialect.OKX).dialect is Dialect.OKX
    with pytest.raises(ValueError, match="GENERIC"):
        ExchangeSimulator(dialect=Dialect.BINANCE, api_key="k", api_secret="s")


def texts(client: Client) -> list[bytes]:
    return [payload for msg_type, payload in client.frames if msg_type == TEXT]


async def test_binance_dialect_requests_acks_and_errors() -> None:
    async with ExchangeSimulator(dialect=Dialect.BINANCE, reject_topics={"dogeusdt@trade"}) as sim:
        client = await connect(sim)
        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 1})
        await client.wait(lambda: len(client.messages()) == 1)
        assert texts(client)[0] == b'{"result":null,"id":1}'  # one reply per request
        assert sim.subscribers("btcusdt@trade") == sim.subscribers("ethusdt@trade") == 1

        # one bad stream refuses the whole request
        for req_id, streams in ((2, ["solusdt@trade", "btcusdt@depth"]), (3, ["dogeusdt@trade"])):
            client.send({"method": "SUBSCRIBE", "params": streams, "id": req_id})
        await client.wait(lambda: len(client.messages()) == 3)
        error = {"error": {"code": 2, "msg": "Invalid request: invalid stream"}}
        assert client.messages()[1:] == [{**error, "id": 2}, {**error, "id": 3}]
        assert texts(client)[1].startswith(b'{"error"')
        assert sim.subscribers("solusdt@trade") == 0

        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": "dup"})
        client.send({"method": "LIST_SUBSCRIPTIONS", "id": 4})
        client.send({"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 5})
        client.send({"method": "SUBSCRIBE", "params": [], "id": -1})
        client.send({"method": "NOPE", "id": 6})
        await client.wait(lambda: len(client.messages()) == 8)
        replies = client.messages()[3:]
        assert replies[:3] == [
            {"result": None, "id": "dup"},
            {"result": ["btcusdt@trade", "ethusdt@trade"], "id": 4},
            {"result": None, "id": 5},
        ]
        assert replies[3]["id"] is None and replies[3]["error"]["code"] == 2
        assert replies[4]["id"] == 6 and replies[4]["error"]["code"] == 2
        assert sim.duplicate_subscribes == 1
        assert sim.connections[0].topics == {"btcusdt@trade"}

        # WebSocket PING frames only: a text "ping" is just invalid JSON
        client.ws.send_ping(b"hb")
        client.send("ping")
        await client.wait(lambda: len(client.frames) == 10)
        assert (PONG, b"hb") in client.frames
        assert client.messages()[-1]["error"]["code"] == 3
        assert (TEXT, b"pong") not in client.frames
        assert (sim.pings_received, sim.pongs_sent) == (1, 1)
        await client.close()


def trades(client: Client) -> list[dict[str, Any]]:
    return [m for m in client.messages() if isinstance(m, dict) and m.get("e") == "trade"]


async def test_binance_dialect_trade_stream_sequences() -> None:
    async with ExchangeSimulator(dialect=Dialect.BINANCE, rate_per_s=400) as sim:
        first = await connect(sim)
        first.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
        await first.wait(lambda: len(trades(first)) >= 10)
        await first.close()
        await sim.wait_connections(0)
        last = sim.last_seq["btcusdt@trade"]

        second = await connect(sim)
        second.send({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1})
        await second.wait(lambda: len(trades(second)) >= 3)
        sim.set_rate(0)
        await asyncio.sleep(0.06)
        sim.sequence_gap("btcusdt@trade", skip=2)
        assert sim.burst("btcusdt@trade", 5) == 5
        end = sim.last_seq["btcusdt@trade"]
        await second.wait(lambda: trades(second)[-1]["t"] == end)

        ids = [m["t"] for m in trades(first)]
        assert ids == list(range(1, len(ids) + 1))
        ids2 = [m["t"] for m in trades(second)]
        assert ids2[0] == last + 1
        assert sorted({b - a for a, b in itertools.pairwise(ids2)}) == [1, 3]
        msg = trades(second)[0]
        assert set(msg) == {"e", "E", "s", "t", "p", "q", "T", "m", "M"}
        assert msg["s"] == "BTCUSDT" and msg["M"] is True and isinstance(msg["m"], bool)
        assert float(msg["p"]) > 0 and float(msg["q"]) > 0 and msg["E"] == msg["T"]
        assert texts(second)[-1].startswith(b'{"e":"trade"')
        assert sim.messages_sent["btcusdt@trade"] >= len(ids) + len(ids2)
        await second.close()


async def test_okx_dialect_per_arg_acks_errors_ping_and_trades() -> None:
    async with ExchangeSimulator(dialect=Dialect.OKX, reject_topics={"trades:ETH-USDT"}) as sim:
        client = await connect(sim)
        btc = {"channel": "trades", "instId": "BTC-USDT"}
        args = [
            btc,
            {"channel": "books", "instId": "BTC-USDT"},
            {"channel": "trades", "instId": "ETH-USDT"},
            {"channel": "trades", "instId": "SOL-USDT"},
        ]
        client.send({"id": "7", "op": "subscribe", "args": args})
        await client.wait(lambda: len(client.messages()) == 4)
        acks = client.messages()
        conn_id = acks[0]["connId"]
        assert isinstance(conn_id, str) and len(conn_id) == 8
        assert acks[0] == {"id": "7", "event": "subscribe", "arg": btc, "connId": conn_id}
        events = [(m["event"], m.get("code")) for m in acks]
        assert events == [("subscribe", None), ("error", "60018"), ("error", "60018"),
                          ("subscribe", None)]
        assert "channel:books,instId:BTC-USDT doesn't exist" in acks[1]["msg"]
        assert all(t.startswith(b'{"id":"7","event"') for t in texts(client))
        assert sim.connections[0].topics == {"trades:BTC-USDT", "trades:SOL-USDT"}

        client.send({"op": "subscribe", "args": [btc]})  # no id: none echoed
        client.send({"op": "subscribe", "args": ["trades:BTC-USDT"]})
        client.send({"op": "ping"})
        client.send("ping")
        await client.wait(lambda: len(client.frames) == 8)
        assert texts(client)[4].startswith(b'{"event":"subscribe"')
        malformed = client.messages()[5:7]
        assert [(m["event"], m["code"]) for m in malformed] == [("error", "60012")] * 2
        assert client.frames[7] == (TEXT, b"pong")
        assert sim.duplicate_subscribes == 1

        sim.sequence_gap("trades:BTC-USDT", skip=4)
        assert sim.burst("trades:BTC-USDT", 2) == 2
        await client.wait(lambda: len(client.frames) == 10)
        pushes = client.messages()[8:]
        assert [p["data"][0]["tradeId"] for p in pushes] == ["5", "6"]
        push = pushes[0]
        assert push["arg"] == btc and texts(client)[-1].startswith(b'{"arg"')
        trade = push["data"][0]
        assert trade["instId"] == "BTC-USDT" and trade["side"] in ("buy", "sell")
        assert float(trade["px"]) > 0 and float(trade["sz"]) > 0 and trade["ts"].isdigit()

        client.send({"op": "unsubscribe", "args": [btc]})
        await client.wait(lambda: len(client.frames) == 11)
        assert client.messages()[-1] == {"event": "unsubscribe", "arg": btc, "connId": conn_id}
        assert sim.subscribers("trades:BTC-USDT") == 0
        await client.close()
