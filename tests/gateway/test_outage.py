"""A JetStream outage, with a real nats-server killed and restarted under a gateway.

The gateway runs in-process (its counters and health are read directly, and its real
``/healthz`` endpoint is scraped); the simulator is the venue.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from defi_ws.gateway import Gateway, parse_config
from defi_ws.gateway.nats import NatsSink
from defi_ws.testing import ExchangeSimulator
from tests.gateway.servers import (
    NatsServer,
    assert_exactly_once_no_gap,
    http_get,
    read_stream,
    topic_seqs,
    wait_until,
)

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop"])

TOPICS = ["trades.A", "trades.B", "book.C"]


def config(sim_url: str, nats_url: str, *, backpressure: str, queue_size: int) -> Any:
    return parse_config({
        "gateway": {"name": "outage", "drain_timeout_s": 20},
        "metrics": {"listen": "127.0.0.1:0", "max_sink_lag_s": 30},
        "venues": {"sim": {"kind": "generic", "url": sim_url, "topics": TOPICS,
                           "sequence_field": "seq", "ping_timeout_s": 30}},
        "sinks": [{"kind": "nats", "servers": [nats_url], "stream": "MD",
                   "queue_size": queue_size, "backpressure": backpressure,
                   "ack_timeout_s": 2}],
    }, env={})


async def run_outage(tmp_path: Path, backpressure: str) -> tuple[Gateway, NatsSink, dict[str, Any]]:
    server = NatsServer(tmp_path)
    await server.start()
    seen: dict[str, Any] = {}
    try:
        async with ExchangeSimulator(rate_per_s=100) as sim:
            gw = Gateway(config(sim.url, server.url, backpressure=backpressure,
                                queue_size=300))
            await gw.start()
            loop_task = asyncio.get_running_loop().create_task(gw.run_until_stopped())
            sink = gw.sinks[0]
            assert isinstance(sink, NatsSink)
            try:
                await wait_until(lambda: sink.stats.acked >= 100, 30, "first acks")
                server.stop(kill=True)
                await wait_until(lambda: sink.depth >= sink.queue_size, 30,
                                 "the sink to fill up to its bound")
                ok, details = gw.health()
                assert not ok and "outage" not in details.get("pools", {})
                port = int((gw.metrics_address or "").rsplit(":", 1)[1])
                status, body = await http_get(port, "/healthz")
                assert status == 503, body
                seen["healthz"] = orjson.loads(body)
                seen["depth_during"] = sink.depth
                if backpressure == "block":  # the backpressure tick notices (every 50 ms)
                    await wait_until(lambda: gw.pauses >= 1, 20, "the intake to pause")
                seen["paused"] = gw.pauses
                await asyncio.sleep(0.5)  # more venue traffic while the server is down
                seen["depth_later"] = sink.depth
                await server.start()
                await wait_until(lambda: sink.connected and sink.depth < sink.queue_size // 2
                                 and gw.health()[0], 40, "recovery")
                acked = sink.stats.acked
                await wait_until(lambda: sink.stats.acked >= acked + 100, 30,
                                 "messages to flow again")
                status, _ = await http_get(port, "/healthz")
                seen["healthz_after"] = status
            finally:
                gw.request_stop()
                await loop_task
                seen["left"] = await gw.stop()
        seen["messages"] = await read_stream(server.url, "MD")
    finally:
        server.stop()
    return gw, sink, seen


async def test_outage_with_block_buffers_to_the_bound_pauses_the_venues_and_loses_nothing(
        tmp_path: Path) -> None:
    _, sink, seen = await run_outage(tmp_path, "block")
    assert seen["healthz"]["status"] == "unhealthy"
    assert "not connected to NATS" in seen["healthz"]["sinks"]["nats"]
    assert seen["paused"] >= 1, "the intake paused at the bound"
    # Bounded: reading stopped; what was already read may overshoot, never past 2x.
    assert seen["depth_later"] <= 2 * sink.queue_size
    assert seen["healthz_after"] == 200
    assert seen["left"] == 0 and sink.stats.dropped == 0
    assert sink.disconnects >= 1 and sink.stats.retries >= 0
    seqs = topic_seqs(seen["messages"])
    assert set(seqs) == set(TOPICS)
    assert_exactly_once_no_gap(seqs)  # nothing lost across the outage, nothing twice
    assert len(seen["messages"]) == sink.stats.acked - sink.stats.duplicates


async def test_outage_with_drop_oldest_counts_the_drops_and_recovers(tmp_path: Path) -> None:
    _, sink, seen = await run_outage(tmp_path, "drop_oldest")
    assert "not connected to NATS" in seen["healthz"]["sinks"]["nats"]
    assert seen["paused"] == 0, "drop_oldest never pauses the venues"
    assert seen["depth_later"] <= sink.queue_size
    assert sink.stats.dropped > 0
    assert seen["healthz_after"] == 200
    assert seen["left"] == 0
    seqs = topic_seqs(seen["messages"])
    for values in seqs.values():
        assert len(values) == len(set(values))
    missing = sum(max(v) - min(v) + 1 - len(v) for v in seqs.values())
    assert missing == sink.stats.dropped, "every hole in the stream is a counted drop"
