"""Prometheus metrics for feeds, pools and sinks, read at scrape time.

Nothing here runs per message: :class:`FeedMetrics` is a ``prometheus_client``
collector that reads the counters defi-ws keeps anyway (``FeedClient.snapshot()``,
``FeedPool``'s de-duplicator, the sinks' stats) when Prometheus scrapes. Library users
who run their own loop register their clients and pools and serve the registry however
they like; the gateway serves it with :func:`serve_http` (``/metrics`` and ``/healthz``).

Example::

    from prometheus_client import start_http_server
    from defi_ws.metrics import FeedMetrics

    metrics = FeedMetrics()
    metrics.add_pool("binance", pool)      # or metrics.add_client("okx", client)
    metrics.register()                      # the default registry
    start_http_server(9464)

Metrics (all prefixed ``defi_ws_``; labels in brackets):

* per connection [venue, connection]: ``messages_total``, ``bytes_total``,
  ``duplicates_dropped_total`` (copies this connection brought that another had
  delivered), ``disconnects_total`` [+ reason], ``reconnects_total``,
  ``connection_state`` [+ state] (1 for the current lifecycle state),
  ``rtt_seconds`` (a histogram), ``gaps_total``;
* per venue [venue]: ``pool_delivered_total``, ``pool_duplicates_dropped_total``,
  ``pool_gaps_total``, ``pool_rotations_total``, ``pool_live`` (1 when every group has a
  LIVE connection);
* per topic [venue, topic]: ``topic_messages_total``, ``topic_bytes_total`` (when a
  topic counter is registered: the gateway does);
* per sink [sink, kind]: ``sink_records_total`` [+ outcome: accepted, published, acked,
  dropped, retried, error], ``sink_duplicates_total`` (acks saying "already stored"),
  ``sink_queue_depth``, ``sink_queue_size``, ``sink_connected``,
  ``sink_publish_latency_seconds`` (a histogram, arrival to ack).

The connection label is ``g<group>.r<replica>`` for pools (stable across rotations,
whose counters restart: Prometheus' ``rate()`` handles the reset) and the client's
name for single clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from defi_ws import _compat
from defi_ws.health import RttHistogram
from defi_ws.lifecycle import State

if TYPE_CHECKING:
    from defi_ws.client import FeedClient
    from defi_ws.pool import FeedPool

__all__ = ["RTT_BUCKETS_S", "FeedMetrics", "HealthCheck", "SinkLike", "serve_http"]

log = logging.getLogger("defi_ws.metrics")

#: Histogram bucket bounds (seconds) for RTT and publish latency.
RTT_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0)


class SinkLike(Protocol):
    """What :class:`FeedMetrics` reads from a sink (see :mod:`defi_ws.gateway.sinks`)."""

    name: str
    queue_size: int

    @property
    def kind(self) -> str:
        """The sink's kind (``nats``, ``file``, ``stdout``)."""

    @property
    def depth(self) -> int:
        """Records held and not yet acknowledged."""

    @property
    def stats(self) -> Any:
        """The sink's :class:`~defi_ws.gateway.sinks.SinkStats`."""


def _buckets(hist: RttHistogram) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets of ``hist`` at :data:`RTT_BUCKETS_S`, and the sum.

    A sample is counted under the first bound at or above its bucket's upper edge,
    so a bound may under-count by the histogram's ~11 % resolution.
    """
    counts = hist._counts
    out: list[tuple[str, float]] = []
    index = 0
    seen = 0
    for bound in RTT_BUCKETS_S:
        bound_ns = bound * 1e9
        while index < len(counts) and hist._upper_ns(index) <= bound_ns * 1.0000001:
            seen += counts[index]
            index += 1
        out.append((repr(bound), float(seen)))
    out.append(("+Inf", float(hist.count)))
    return out, hist.sum_ns / 1e9


class FeedMetrics:
    """A Prometheus collector over registered clients, pools, topic counters and sinks.

    Args:
        namespace: the metric name prefix.
    """

    def __init__(self, namespace: str = "defi_ws") -> None:
        self.namespace = namespace
        self._pools: list[tuple[str, FeedPool]] = []
        self._clients: list[tuple[str, FeedClient]] = []
        self._topics: list[tuple[str, Mapping[str, list[int]]]] = []
        self._sinks: list[SinkLike] = []

    def add_pool(self, venue: str, pool: FeedPool) -> None:
        """Report ``pool`` (and each of its connections) under ``venue``."""
        self._pools.append((venue, pool))

    def add_client(self, venue: str, client: FeedClient) -> None:
        """Report a single ``client`` under ``venue``."""
        self._clients.append((venue, client))

    def add_topic_counts(self, venue: str, counts: Mapping[str, list[int]]) -> None:
        """Report per-topic ``[messages, bytes]`` counters kept by the caller."""
        self._topics.append((venue, counts))

    def add_sink(self, sink: SinkLike) -> None:
        """Report a sink's counters, queue and publish latency."""
        self._sinks.append(sink)

    def register(self, registry: Any = None) -> FeedMetrics:
        """Register with ``registry`` (default: ``prometheus_client.REGISTRY``)."""
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        registry.register(self)
        return self

    def describe(self) -> list[Any]:
        """Nothing up front: the metrics depend on what is registered."""
        return []

    def _connections(self) -> Iterator[tuple[str, str, FeedClient]]:
        for venue, pool in self._pools:
            for label, client in pool.replicas():
                yield venue, label, client
        for venue, client in self._clients:
            yield venue, client.name, client

    def collect(self) -> Iterator[Any]:
        """Build every metric family from the current counters."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        ns = self.namespace
        conn = ["venue", "connection"]
        messages = CounterMetricFamily(f"{ns}_messages", "Data messages delivered", labels=conn)
        nbytes = CounterMetricFamily(f"{ns}_bytes", "Bytes received", labels=conn)
        dups = CounterMetricFamily(f"{ns}_duplicates_dropped",
                                   "Copies dropped before decode (another connection had "
                                   "delivered them)", labels=conn)
        gaps = CounterMetricFamily(f"{ns}_gaps", "Sequence gaps seen on this connection",
                                   labels=conn)
        reconnects = CounterMetricFamily(f"{ns}_reconnects", "Reconnects that became LIVE",
                                         labels=conn)
        disconnects = CounterMetricFamily(f"{ns}_disconnects", "Disconnects by reason",
                                          labels=[*conn, "reason"])
        state = GaugeMetricFamily(f"{ns}_connection_state",
                                  "1 for the connection's current lifecycle state",
                                  labels=[*conn, "state"])
        rtt = HistogramMetricFamily(f"{ns}_rtt_seconds", "Ping round-trip time", labels=conn)
        for venue, label, client in self._connections():
            values = [venue, label]
            health = client.health
            messages.add_metric(values, health.counter("messages"))
            nbytes.add_metric(values, health.counter("bytes_received"))
            dups.add_metric(values, health.counter("duplicates"))
            gaps.add_metric(values, health.gaps)
            reconnects.add_metric(values, health.reconnects)
            for reason, count in sorted(health.disconnects.items()):
                disconnects.add_metric([*values, reason], count)
            current = client.state
            for st in State:
                state.add_metric([*values, st.name], 1.0 if st is current else 0.0)
            buckets, total = _buckets(health.rtt)
            rtt.add_metric(values, buckets, total)
        yield from (messages, nbytes, dups, gaps, reconnects, disconnects, state, rtt)

        if self._pools:
            delivered = CounterMetricFamily(f"{ns}_pool_delivered",
                                            "Messages a pool delivered once", labels=["venue"])
            pdups = CounterMetricFamily(f"{ns}_pool_duplicates_dropped",
                                        "Duplicates a pool dropped", labels=["venue"])
            pgaps = CounterMetricFamily(f"{ns}_pool_gaps", "Gaps of a pool's merged stream",
                                        labels=["venue"])
            rotations = CounterMetricFamily(f"{ns}_pool_rotations",
                                            "Make-before-break rotations", labels=["venue"])
            live = GaugeMetricFamily(f"{ns}_pool_live",
                                     "1 when every group has a LIVE connection",
                                     labels=["venue"])
            for venue, pool in self._pools:
                dedup = pool.dedup
                delivered.add_metric([venue], 0 if dedup is None else dedup.delivered)
                pdups.add_metric([venue], 0 if dedup is None else dedup.duplicates)
                pgaps.add_metric([venue], pool.gaps)
                rotations.add_metric([venue], pool.rotations)
                live.add_metric([venue], 1.0 if pool.live else 0.0)
            yield from (delivered, pdups, pgaps, rotations, live)

        if self._topics:
            tmsgs = CounterMetricFamily(f"{ns}_topic_messages", "Messages per topic",
                                        labels=["venue", "topic"])
            tbytes = CounterMetricFamily(f"{ns}_topic_bytes", "Bytes per topic",
                                         labels=["venue", "topic"])
            for venue, counts in self._topics:
                for topic, (count, size) in list(counts.items()):
                    tmsgs.add_metric([venue, topic], count)
                    tbytes.add_metric([venue, topic], size)
            yield from (tmsgs, tbytes)

        if self._sinks:
            labels = ["sink", "kind"]
            records = CounterMetricFamily(f"{ns}_sink_records", "Records by outcome",
                                          labels=[*labels, "outcome"])
            sdups = CounterMetricFamily(f"{ns}_sink_duplicates",
                                        "Publishes the destination had stored already",
                                        labels=labels)
            depth = GaugeMetricFamily(f"{ns}_sink_queue_depth",
                                      "Records held, not yet acknowledged", labels=labels)
            bound = GaugeMetricFamily(f"{ns}_sink_queue_size", "The queue's bound",
                                      labels=labels)
            connected = GaugeMetricFamily(f"{ns}_sink_connected",
                                          "1 when the sink reaches its destination",
                                          labels=labels)
            latency = HistogramMetricFamily(f"{ns}_sink_publish_latency_seconds",
                                            "From arrival at the gateway to the ack",
                                            labels=labels)
            for sink in self._sinks:
                values = [sink.name, sink.kind]
                s = sink.stats
                for outcome, count in (("accepted", s.accepted), ("published", s.published),
                                       ("acked", s.acked), ("dropped", s.dropped),
                                       ("retried", s.retries), ("error", s.errors)):
                    records.add_metric([*values, outcome], count)
                sdups.add_metric(values, s.duplicates)
                depth.add_metric(values, sink.depth)
                bound.add_metric(values, sink.queue_size)
                connected.add_metric(values, 1.0 if getattr(sink, "connected", True) else 0.0)
                buckets, total = _buckets(s.latency)
                latency.add_metric(values, buckets, total)
            yield from (records, sdups, depth, bound, connected, latency)


#: Returns ``(healthy, details)``; details become the JSON body of ``/healthz``.
HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


async def serve_http(host: str, port: int, *, registry: Any,
                     health: HealthCheck | None = None) -> asyncio.Server:
    """Serve ``/metrics`` (Prometheus text format) and ``/healthz`` on the running loop.

    Scrapes run on the event loop's thread, so they read counters between two
    callbacks, never mid-update. A tiny HTTP/1.0 server: one request per connection.

    Args:
        host: the address to bind.
        port: the port (0: a free one; read it from the returned server's sockets).
        registry: the ``prometheus_client`` registry to expose.
        health: the ``/healthz`` check; without one ``/healthz`` is always 200.

    Returns:
        The listening server (close it to stop).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with _compat.timeout(5.0):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path == "/healthz":
                ok, details = (True, {}) if health is None else health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype = "application/json"
                body = orjson.dumps({"status": "ok" if ok else "unhealthy", **details},
                                    option=orjson.OPT_INDENT_2) + b"\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if parts and parts[0] == "HEAD" else head + body)
            await writer.drain()
        except Exception as exc:  # a broken scrape must not hurt the service
            log.debug("metrics request failed: %s: %s", type(exc).__name__, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


def pool_problems(pools: Iterable[tuple[str, FeedPool]]) -> dict[str, str]:
    """Pools that are not LIVE, with the states of their connections."""
    out = {}
    for venue, pool in pools:
        if pool.fatal is not None:
            out[venue] = f"gave up: {pool.fatal}"
        elif not pool.live:
            states = ", ".join(f"{label}={client.state.name}"
                               for label, client in pool.replicas()) or "no connections"
            out[venue] = f"not every group has a LIVE connection ({states})"
    return out
