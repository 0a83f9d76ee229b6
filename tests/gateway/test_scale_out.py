"""Scale-out with real servers: nats-server -js, the simulator as the venue, and two
gateway processes (``python -m defi_ws run``) publishing to one stream.

(a) disjoint shards: the consumer sees the union, each topic carried by one gateway;
(b) the same topics on both: the consumer sees each message once; one gateway killed
mid-stream (SIGKILL) leaves no gap; (c) SIGTERM drains and exits 0, and every record the
gateway counted as acknowledged is in the stream.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from defi_ws.gateway.config import in_shard
from defi_ws.testing import ExchangeSimulator
from tests.gateway.servers import (
    GatewayProcess,
    NatsServer,
    assert_exactly_once_no_gap,
    free_port,
    metric,
    read_stream,
    scrape,
    topic_seqs,
)

TOPICS = [f"trades.T{i}" for i in range(8)]


def gateway_config(name: str, sim_url: str, nats_url: str, *, shard: str | None = None,
                   metrics_port: int | None = None, topics: list[str] = TOPICS) -> str:
    shard_line = f'shard = "{shard}"' if shard else ""
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    return f"""
[gateway]
name = "{name}"
{shard_line}
drain_timeout_s = 15

{metrics}
[venues.sim]
kind = "generic"
url = "{sim_url}"
topics = {topics!r}
sequence_field = "seq"

[[sinks]]
kind = "nats"
servers = ["{nats_url}"]
stream = "MD"
subject = "md.{{venue}}.{{channel}}.{{symbol}}"
duplicate_window_s = 60
"""


@pytest.fixture
async def nats_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = NatsServer(tmp_path)
    await server.start()
    yield server
    server.stop()


def acked_in_log(stderr: str) -> int:
    match = re.search(r"sink nats: accepted (\d+), acked (\d+), dropped (\d+), "
                      r"unacknowledged (\d+)", stderr)
    assert match, stderr[-2000:]
    return int(match[2])


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_disjoint_shards_give_the_union(tmp_path: Path, nats_server: NatsServer) -> None:
    shard1 = [t for t in TOPICS if in_shard("sim", t, (1, 2))]
    assert shard1 and len(shard1) < len(TOPICS), "the hash splits these topics"
    async with ExchangeSimulator(rate_per_s=40) as sim:
        gws = [GatewayProcess(tmp_path, f"gw{i}", gateway_config(
            f"gw{i}", sim.url, nats_server.url, shard=f"{i}/2")) for i in (1, 2)]
        try:
            for gw in gws:
                gw.start()
            for gw in gws:
                await gw.wait_started()
            await sim.wait_for(lambda: all(sim.subscribers(t) == 1 for t in TOPICS)
                               and all(sim.last_seq.get(t, 0) >= 40 for t in TOPICS),
                               timeout_s=30)
            # Each topic is carried by exactly one gateway: the one whose shard has it.
            for topic in TOPICS:
                assert sim.subscribers(topic) == 1, topic
            gws[0].signal(signal.SIGTERM)
            gws[1].signal(signal.SIGINT)  # Ctrl-C drains the same way
            assert [await gw.wait_exit() for gw in gws] == [0, 0]
        finally:
            for gw in gws:
                gw.kill()
    messages = await read_stream(nats_server.url, "MD")
    seqs = topic_seqs(messages)
    assert set(seqs) == set(TOPICS), "the consumer sees the union of both shards"
    assert_exactly_once_no_gap(seqs)
    assert len(messages) == sum(acked_in_log(gw.stderr) for gw in gws)
    subjects = {m.subject for m in messages}
    assert subjects == {f"md.sim.trades.T{i}" for i in range(8)}


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_redundant_gateways_give_each_message_once_and_no_gap_when_one_dies(
        tmp_path: Path, nats_server: NatsServer) -> None:
    topics = TOPICS[:4]
    ports = [free_port(), free_port()]
    async with ExchangeSimulator(rate_per_s=50) as sim:
        gws = [GatewayProcess(tmp_path, f"gw{i}", gateway_config(
            f"gw{i}", sim.url, nats_server.url, metrics_port=ports[i], topics=topics))
            for i in (0, 1)]
        try:
            for gw in gws:
                gw.start()
            for gw in gws:
                await gw.wait_started()
            await sim.wait_for(lambda: all(sim.subscribers(t) == 2 for t in topics),
                               timeout_s=30)
            start = {t: sim.last_seq.get(t, 0) for t in topics}  # a topic may not have begun
            await sim.wait_for(lambda: all(sim.last_seq.get(t, 0) >= start[t] + 50
                                           for t in topics),
                               timeout_s=30)
            # Both publish every message; the copies of whichever lost the race were
            # acknowledged as duplicates (usually all on one side: the simulator writes
            # to its subscribers in a fixed order).
            pages = [await scrape(port) for port in ports]
            assert sum(metric(p, "defi_ws_sink_duplicates_total") for p in pages) > 0
            assert all(metric(p, 'defi_ws_sink_records_total{kind="nats",outcome="acked"')
                       > 0 for p in pages)
            gws[0].kill()  # SIGKILL mid-stream: no drain, no goodbye
            killed_at = {t: sim.last_seq.get(t, 0) for t in topics}
            await sim.wait_for(lambda: all(sim.last_seq.get(t, 0) >= killed_at[t] + 50
                                           for t in topics), timeout_s=30)
            gws[1].signal(signal.SIGTERM)
            assert await gws[1].wait_exit() == 0
        finally:
            for gw in gws:
                gw.kill()
    messages = await read_stream(nats_server.url, "MD")
    seqs = topic_seqs(messages)
    assert set(seqs) == set(topics)
    assert_exactly_once_no_gap(seqs)
    for topic in topics:  # the stream spans the kill
        assert min(seqs[topic]) < killed_at[topic] < max(seqs[topic])
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids))


def test_the_gateway_demo_runs_and_ends_cleanly() -> None:
    """`make gateway-demo` with a duration: faults injected, the consumer sees no gap."""
    proc = subprocess.run([sys.executable, "-m", "defi_ws.gateway.demo", "--duration", "7"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gaps: 0, duplicates: 0" in proc.stdout
    assert "gateway exited 0" in proc.stdout
