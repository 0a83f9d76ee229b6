"""Sinks without servers: bounded queues, backpressure policies, files, stdout, and the
records the gateway builds (raw bytes, keys, normalised form)."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from defi_ws.errors import ConfigError
from defi_ws.gateway import FileSink, Gateway, Record, StdoutSink, parse_config
from defi_ws.gateway.nats import NatsSink, split_topic
from defi_ws.gateway.service import _Tap
from defi_ws.gateway.sinks import Sink
from defi_ws.handler import JsonHandler
from tests.gateway.servers import wait_until


def record(i: int, topic: str = "trades.BTC") -> Record:
    raw = orjson.dumps({"topic": topic, "seq": i})
    return Record("sim", topic, f"sim:{topic}:{i}", raw, None, i)


def test_drop_oldest_keeps_the_newest_and_counts() -> None:
    sink = Sink("s", queue_size=3, backpressure="drop_oldest")
    for i in range(5):
        sink.put(record(i))
    assert sink.depth == 3 and sink.stats.dropped == 2 and sink.stats.accepted == 5
    assert [r.msg_id for r in sink._queue] == [f"sim:trades.BTC:{i}" for i in (2, 3, 4)]
    assert sink.saturated and sink.stats.saturations == 1


def test_block_never_drops_below_twice_the_bound() -> None:
    sink = Sink("s", queue_size=3, backpressure="block")
    for i in range(6):
        sink.put(record(i))
    assert sink.depth == 6 and sink.stats.dropped == 0 and sink.saturated
    sink.put(record(6))  # past 2x the bound: memory stays bounded
    assert sink.depth == 6 and sink.stats.dropped == 1


def test_invalid_sink_options_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        Sink("s", queue_size=0, backpressure="wait", payload="xml")
    assert len(info.value.problems) == 3


async def test_stdout_sink_writes_json_lines_and_acks() -> None:
    out = io.BytesIO()
    sink = StdoutSink(stream=out)
    await sink.start()
    try:
        for i in range(3):
            sink.put(record(i))
        sink.put(Record("sim", "t", "id", b'{"a":\n1}', None, 0))
        await wait_until(lambda: sink.stats.acked == 4, 5, "acks")
    finally:
        assert await sink.drain(1.0) == 0
        await sink.close()
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines[:3]] == [
        {"topic": "trades.BTC", "seq": i} for i in range(3)]
    assert orjson.loads(lines[3]) == {"a": 1}
    assert sink.stats.latency.count == 4


async def test_file_sink_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "md.jsonl"
    sink = FileSink("f", path=str(path), rotate_bytes=200)
    await sink.start()
    try:
        for i in range(40):
            sink.put(record(i))
            if i % 5 == 4:
                await wait_until(lambda: sink.depth == 0, 5, "writes")
    finally:
        assert await sink.drain(2.0) == 0
        await sink.close()
    files = sorted(tmp_path.glob("md*.jsonl"))
    assert len(files) > 2 and sink.rotations == len(files) - 1
    seqs = sorted(orjson.loads(line)["seq"] for f in files for line in f.read_bytes().splitlines())
    assert seqs == list(range(40))


def test_topics_split_into_channel_and_symbol() -> None:
    assert split_topic("trades.BTC-USD") == ("trades", "BTC-USD")
    assert split_topic("trades:BTC-USDT") == ("trades", "BTC-USDT")
    assert split_topic("btcusdt@trade") == ("trade", "btcusdt")
    assert split_topic("ticker") == ("ticker", "_")
    sink = NatsSink("n", servers=["nats://127.0.0.1:1"], stream="MD")
    assert sink.subject_for("sim", "trades.BTC/USD") == "md.sim.trades.BTC_USD"
    assert sink.stream_subjects == ["md.>"]
    assert "127.0.0.1" in repr(sink)


def test_the_tap_keys_records_by_sequence_else_by_hash_and_normalises() -> None:
    raw_sink = Sink("raw")
    norm_sink = Sink("norm", payload="normalised")
    counts: dict[str, list[int]] = {}
    tap = _Tap("sim", JsonHandler("ws://127.0.0.1:1", sequence_field="seq"),
               [raw_sink, norm_sink], counts)
    payload = b'{"topic":"trades.BTC","seq":7,"data":{"px":"1"}}'
    assert tap.decode is not None
    tap.on_message(tap.decode(memoryview(payload)))
    rec = raw_sink._queue[0]
    assert rec.raw == payload and rec.msg_id == "sim:trades.BTC:7" and rec.topic == "trades.BTC"
    envelope = orjson.loads(norm_sink._queue[0].normalised or b"")
    assert envelope["data"] == orjson.loads(payload) and envelope["seq"] == 7
    assert envelope["venue"] == "sim" and envelope["id"] == "sim:trades.BTC:7"
    assert counts == {"trades.BTC": [1, len(payload)]}
    # Without a sequence number: a hash of the raw bytes (the same on every gateway).
    plain = _Tap("sim", JsonHandler("ws://127.0.0.1:1"), [raw_sink], {})
    other = b'{"topic":"ticker.X","data":{"px":"2"}}'
    assert plain.decode is not None
    plain.on_message(plain.decode(memoryview(other)))
    plain.on_message(plain.decode(memoryview(other)))
    ids = [r.msg_id for r in list(raw_sink._queue)[1:]]
    assert ids[0] == ids[1] and ids[0].startswith("sim:ticker.X:h")


async def test_a_gateway_to_a_file_with_sigterm_style_stop(tmp_path: Path) -> None:
    from defi_ws.testing import ExchangeSimulator

    async with ExchangeSimulator(rate_per_s=200) as sim:
        config = parse_config({
            "venues": {"sim": {"kind": "generic", "url": sim.url, "sequence_field": "seq",
                               "topics": ["trades.A", "trades.B"], "redundancy": 2}},
            "sinks": [{"kind": "file", "path": str(tmp_path / "out.jsonl"),
                       "payload": "normalised"}],
        }, env={})
        gw = Gateway(config)
        await gw.start()
        sink = gw.sinks[0]
        await wait_until(lambda: sink.stats.acked >= 100, 20, "records")
        gw.request_stop()
        assert await gw.stop() == 0
    lines = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert len(lines) == sink.stats.acked
    per_topic: dict[str, list[int]] = {}
    for line in lines:
        per_topic.setdefault(line["topic"], []).append(line["seq"])
    for seqs in per_topic.values():  # redundancy 2, each message once, in order
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
