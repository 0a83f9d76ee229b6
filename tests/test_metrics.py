"""defi_ws.metrics: a Prometheus collector over clients, pools and sinks, scraped from a
real endpoint (serve_http), and /healthz."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from defi_ws import FeedClient, FeedPool, JsonHandler, WsPing
from defi_ws.gateway.sinks import Record, Sink
from defi_ws.metrics import FeedMetrics, pool_problems, serve_http
from defi_ws.testing import ExchangeSimulator
from tests.gateway.servers import http_get, wait_until

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop"])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, lbl), v in page.items()
               if n == name and all((k, labels[k]) in lbl for k in labels))


async def test_a_users_own_loop_scrapes_clients_pools_and_sinks() -> None:
    async with ExchangeSimulator(rate_per_s=200) as sim:
        handler = JsonHandler(sim.url, sequence_field="seq")
        sink = Sink("mine", queue_size=10)
        registry = CollectorRegistry()
        metrics = FeedMetrics().register(registry)
        pool = FeedPool(handler, topics=["trades.A", "trades.B"], redundancy=2,
                        client_options={"heartbeat": WsPing(interval_s=0.05)})
        client = FeedClient(JsonHandler(sim.url), topics=["trades.C"], name="single")
        metrics.add_pool("sim", pool)
        metrics.add_client("sim", client)
        metrics.add_sink(sink)
        metrics.add_topic_counts("sim", {"trades.A": [3, 300]})
        sink.put(Record("sim", "trades.A", "x", b"{}", None, 0))
        server = await serve_http("127.0.0.1", 0, registry=registry,
                                  health=lambda: (pool.live, pool_problems([("sim", pool)])))
        port = server.sockets[0].getsockname()[1]
        try:
            status, body = await http_get(port, "/healthz")
            assert status == 503
            assert "not every group has a LIVE connection" in orjson.loads(body)["sim"]
            async with pool, client:
                await pool.wait_live(10)
                await client.wait_live(10)
                await wait_until(lambda: pool.dedup is not None and pool.dedup.delivered > 50
                                 and pool.dedup.duplicates > 50 and all(
                                     c.health.rtt.count for c in pool.clients()), 20,
                                 "traffic and pongs")
                status, body = await http_get(port, "/metrics")
                assert status == 200
                page = samples(body)
                status_ok, health_body = await http_get(port, "/healthz")
                sim.drop_all()
                await wait_until(lambda: all(c.health.reconnects >= 1
                                             for c in pool.clients()), 20, "reconnects")
                after = samples((await http_get(port, "/metrics"))[1])
        finally:
            server.close()
            await server.wait_closed()
    assert status_ok == 200 and orjson.loads(health_body) == {"status": "ok"}
    for conn in ("g0.r0", "g0.r1"):
        assert value(page, "defi_ws_bytes_total", venue="sim", connection=conn) > 0
        assert value(page, "defi_ws_connection_state", connection=conn, state="LIVE") == 1
        assert value(page, "defi_ws_rtt_seconds_count", connection=conn) > 0
        assert value(page, "defi_ws_rtt_seconds_bucket", connection=conn, le="+Inf") == \
            value(page, "defi_ws_rtt_seconds_count", connection=conn)
    assert value(page, "defi_ws_messages_total", connection="single") > 0
    assert value(page, "defi_ws_pool_delivered_total", venue="sim") > 50
    assert value(page, "defi_ws_pool_duplicates_dropped_total", venue="sim") > 50
    assert value(page, "defi_ws_duplicates_dropped_total", venue="sim") == \
        value(page, "defi_ws_pool_duplicates_dropped_total", venue="sim")
    assert value(page, "defi_ws_pool_live", venue="sim") == 1
    assert value(page, "defi_ws_topic_messages_total", topic="trades.A") == 3
    assert value(page, "defi_ws_sink_queue_depth", sink="mine") == 1
    assert value(page, "defi_ws_sink_records_total", sink="mine", outcome="accepted") == 1
    assert value(after, "defi_ws_disconnects_total", venue="sim") >= 2
    assert value(after, "defi_ws_reconnects_total", venue="sim") >= 2


async def test_unknown_paths_and_methods() -> None:
    server = await serve_http("127.0.0.1", 0, registry=CollectorRegistry())
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await http_get(port, "/nope"))[0] == 404
        assert (await http_get(port, "/healthz"))[0] == 200
    finally:
        server.close()
        await server.wait_closed()
