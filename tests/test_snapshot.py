"""FeedClient.snapshot() for people and machines: ages, wall-clock timestamps next to
monotonic ones, per-topic detail, errors counted once, the attempt number only while
connecting, every field documented."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import WsPing
from defi_ws.lifecycle import State
from defi_ws.reconnect import FixedDelay
from defi_ws.report import snapshot_lines
from defi_ws.testing import ExchangeSimulator

TOPICS = ["trades.A", "trades.B"]


async def until(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    async with _compat.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def parse_at(text: str) -> float:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_ages_wall_clock_and_per_topic_detail() -> None:
    received: Counter[str] = Counter()
    last_seq: dict[str, int] = {}

    def on_data(message: Any) -> None:
        received[message["topic"]] += 1
        last_seq[message["topic"]] = message["seq"]

    async with ExchangeSimulator(rate_per_s=50) as sim:
        client = FeedClient(JsonHandler(sim.url, on_data=on_data, sequence_field="seq"),
                            topics=TOPICS, heartbeat=WsPing(interval_s=0.2))
        async with client:
            await client.wait_live()
            await until(lambda: min(received[t] for t in TOPICS) >= 5)
            live = client.snapshot()
        stopped = client.snapshot()
    orjson.dumps(live)  # ready for JSON as it is
    assert live["state"] == "LIVE" and live["attempt"] is None and live["backoff_s"] is None
    now = time.time()
    snapshot_at = parse_at(live["snapshot_at"])
    assert abs(snapshot_at - now) < 60  # the wall clock, not a monotonic one
    assert isinstance(live["snapshot_ns"], int)
    # Each age and its wall-clock time describe the same moment.
    for age, at in (("connected_for_s", "connected_at"), ("last_data_age_s", "last_data_at"),
                    ("last_recv_age_s", "last_recv_at")):
        assert live[age] is not None and live[age] >= 0, age
        # ms rounding of the age and ms truncation of both times: within 3 ms.
        assert abs(snapshot_at - parse_at(live[at]) - live[age]) < 0.005, age
    assert live["last_data_age_s"] <= live["connected_for_s"]
    assert live["topics"].keys() == set(TOPICS)
    for topic in TOPICS:
        detail = live["topics"][topic]
        assert detail["state"] == "confirmed" and detail["messages"] >= 5
        assert detail["last_seq"] >= 5 and 0 <= detail["last_data_age_s"] < 60
    # Counted over the feed's life: after the stop they match what the callback saw.
    assert stopped["state"] == "CLOSED" and stopped["connected_at"] is None
    for topic in TOPICS:
        detail = stopped["topics"][topic]
        assert detail["state"] == "unsent"
        assert detail["messages"] == received[topic] and detail["last_seq"] == last_seq[topic]
    assert stopped["last_data_age_s"] is not None  # kept from the closed connection


async def test_per_topic_messages_need_a_reason_to_read_topics() -> None:
    async with ExchangeSimulator(rate_per_s=50) as sim:
        plain = FeedClient(JsonHandler(sim.url), topics=TOPICS)
        counted = FeedClient(JsonHandler(sim.url), topics=TOPICS, topic_stats=True)
        async with plain, counted:
            await plain.wait_live()
            await counted.wait_live()
            await until(lambda: all(
                (d["messages"] or 0) >= 1 for d in counted.snapshot()["topics"].values()))
            assert all(d["messages"] is None and d["last_seq"] is None
                       for d in plain.snapshot()["topics"].values())
            assert all(d["messages"] >= 1 and d["last_data_age_s"] is not None
                       for d in counted.snapshot()["topics"].values())
        counted.unsubscribe("trades.A")
        assert counted.snapshot()["topics"].keys() == {"trades.B"}


async def test_errors_are_counted_once() -> None:
    def on_data(message: Any) -> None:
        if message.get("seq") == 3:
            raise RuntimeError("boom")

    async with ExchangeSimulator(rate_per_s=50) as sim:
        client = FeedClient(JsonHandler(sim.url, on_data=on_data), topics=["trades.A"])
        async with client:
            await client.wait_live()
            await until(lambda: client.snapshot()["errors"]["callback"] == 1)
            sim.send_invalid_json()
            await until(lambda: client.snapshot()["errors"]["decode"] == 1)
            snap = client.snapshot()
    assert snap["errors"] == {"total": 2, "decode": 1, "callback": 1, "other": 0}
    assert snap["handler_errors"] == 2  # the same total, for older readers
    kinds = [entry["kind"] for entry in snap["recent_errors"]]
    assert sorted(kinds) == ["callback", "decode"]  # once each in the ring too
    for entry in snap["recent_errors"]:
        assert entry["age_s"] >= 0 and parse_at(entry["at"]) <= parse_at(snap["snapshot_at"])


async def test_the_attempt_number_only_while_connecting() -> None:
    async with ExchangeSimulator() as sim:
        sim.slow_handshake(30)
        client = FeedClient(JsonHandler(sim.url), connect_timeout_s=0.5,
                            reconnect=FixedDelay(30))
        async with client, _compat.timeout(30):
            while client.state is not State.CONNECTING:
                await asyncio.sleep(0)
            connecting = client.snapshot()
            while client.state is not State.BACKOFF:  # the handshake times out
                await asyncio.sleep(0.05)
            backoff = client.snapshot()
        sim.slow_handshake(0)
    assert connecting["state"] == "CONNECTING" and connecting["attempt"] == 1
    assert backoff["attempt"] is None and 0 < backoff["backoff_s"] <= 30
    assert backoff["disconnects"] == {"connect_failed": 1}


def test_every_field_is_documented() -> None:
    doc = FeedClient.snapshot.__doc__ or ""
    client = FeedClient(JsonHandler("ws://127.0.0.1:1/"), topics=["t"])
    snap = client.snapshot()
    missing = [key for key in snap if f"``{key}``" not in doc]
    assert not missing, f"not documented in FeedClient.snapshot: {missing}"
    for key in ("total", "decode", "callback", "other", "p50_ms", "ts_ns", "at", "age_s",
                "kind", "message", "state", "messages", "last_seq", "last_data_age_s"):
        assert f'"{key}"' in doc or f"``{key}``" in doc, key


def test_snapshot_lines_are_for_people() -> None:
    client = FeedClient(JsonHandler("ws://127.0.0.1:1/"), topics=["trades.A"])
    lines = snapshot_lines(client.snapshot())
    text = "\n".join(lines)
    assert "None" not in text and "{" not in text
    assert lines[0].split() == ["state", "IDLE"]
    assert any(line.startswith("heartbeat RTT") and "no pongs yet" in line for line in lines)
    assert re.search(r"^trades\.A +unsent +- +- +-$", text, re.MULTILINE)


@pytest.mark.parametrize("value,text", [(None, "-"), (0.0123, "0.012 ms"), (12.34, "12.3 ms"),
                                        (1234.5, "1,234 ms")])
def test_format_ms(value: float | None, text: str) -> None:
    from defi_ws.report import format_ms

    assert format_ms(value) == text
