"""The gateway service: venues' pools -> sinks, metrics, graceful drain.

:class:`Gateway` builds one :class:`~defi_ws.pool.FeedPool` per configured venue, wraps
its handler so that each delivered message becomes a :class:`~defi_ws.gateway.sinks.Record`
(raw bytes, de-duplication key, topic) handed to every sink, serves ``/metrics`` and
``/healthz``, applies backpressure, and on SIGTERM/SIGINT drains: intake stops (every
pool closes its connections), every sink writes what it holds and waits for its acks up
to ``drain_timeout_s``, and the process exits 0 when nothing is left unacknowledged.

Raw bytes and keys: the pool hands the hot path's data callback a decoded message, and
the sinks need the venue's bytes too. The gateway wraps the handler's ``decode``: the
wrapper copies the payload into a ``bytes`` (the one copy a queued record needs anyway),
keeps it for the data callback that the hot path calls right after decode for the same
message (synchronously, on one thread), and decodes it with the handler's own decode.
The record's key is ``venue:topic:seq`` from the handler's ``sequence_of`` (the
generic venue's ``sequence_field``), or ``venue:topic:h<xxh64 of the raw bytes>`` for
messages without a sequence number; a handler may define ``message_id(message) ->
str | None`` to choose its own. Two gateways that receive the same message produce the
same key, which is what JetStream de-duplicates on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from defi_ws._core import _xxh64, now_ns
from defi_ws.errors import ConfigError
from defi_ws.gateway.config import GatewayConfig, SinkConfig, VenueConfig, _import_handler
from defi_ws.gateway.sinks import FileSink, Record, Sink, StdoutSink
from defi_ws.handler import ExchangeHandler, JsonHandler, VenueLimits
from defi_ws.heartbeat import WsPing
from defi_ws.metrics import FeedMetrics, pool_problems, serve_http
from defi_ws.pool import FeedPool
from defi_ws.reasons import Disconnect
from defi_ws.sequence import Gap
from defi_ws.tls import TlsConfig

__all__ = ["Gateway", "GenericLoginHandler", "TopicCounts", "build_handler", "build_sink"]

log = logging.getLogger("defi_ws.gateway")

#: Per topic: ``[messages, bytes]``.
TopicCounts = dict[str, list[int]]


class GenericLoginHandler(JsonHandler):
    """The generic protocol with a login: ``{"op": "login", "args": {"key", "ts", "sig"}}``,
    ``sig`` the hex HMAC-SHA256 of ``f"{ts}GET/login"`` keyed by the secret.

    The secret is kept out of ``repr`` and never logged.
    """

    def __init__(self, url: str, *, api_key: str, api_secret: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._api_key = api_key
        self._api_secret = api_secret

    def __repr__(self) -> str:
        return f"<GenericLoginHandler url={self._url.split('?')[0]!r}>"

    def auth_messages(self) -> Sequence[Any]:
        """One signed login message (a fresh timestamp per connection)."""
        ts_ms = int(time.time() * 1000)
        sig = hmac.new(self._api_secret.encode(), f"{ts_ms}GET/login".encode(),
                       hashlib.sha256).hexdigest()
        return [{"op": "login", "args": {"key": self._api_key, "ts": ts_ms, "sig": sig}}]


def build_handler(venue: VenueConfig) -> ExchangeHandler:
    """The handler a venue's config describes.

    Raises:
        ConfigError: the handler cannot be built, or rejects a topic (one line each).
    """
    where = f"venues.{venue.name}"
    limits = VenueLimits(
        topics_per_connection=venue.topics_per_connection or 1024,
        max_connection_age_s=venue.max_connection_age_s)
    if venue.kind == "generic":
        assert venue.url is not None
        if venue.credentials:
            return GenericLoginHandler(venue.url, sequence_field=venue.sequence_field,
                                       limits=limits, **venue.credentials)
        return JsonHandler(venue.url, sequence_field=venue.sequence_field, limits=limits)
    assert venue.handler is not None
    factory = _import_handler(venue.handler)
    kwargs: dict[str, Any] = dict(venue.options)
    if venue.url is not None:
        kwargs.setdefault("url", venue.url)
    kwargs.update(venue.credentials)
    try:
        handler: Any = factory(**kwargs)
    except Exception as exc:  # message only: a TypeError names keywords, not values
        raise ConfigError([f"{where}.handler: {venue.handler}(...) failed: "
                           f"{type(exc).__name__}: {str(exc)[:200]}"]) from None
    problems = []
    for attr in ("url", "subscribe_messages", "classify"):
        if not callable(getattr(handler, attr, None)):
            problems.append(f"{where}.handler: {venue.handler} has no {attr}() "
                            "(not an ExchangeHandler)")
    topic_problem = getattr(handler, "topic_problem", None)
    if callable(topic_problem):
        for i, topic in enumerate(venue.all_topics):
            problem = topic_problem(topic)
            if problem:
                problems.append(f"{where}.topics[{i}]: bad topic {topic!r}: {problem}")
    if venue.max_connection_age_s or venue.topics_per_connection:
        base = getattr(handler, "limits", None) or VenueLimits()
        handler.limits = VenueLimits(
            topics_per_connection=venue.topics_per_connection or base.topics_per_connection,
            messages_per_s=base.messages_per_s, burst=base.burst,
            connections_per_window=base.connections_per_window,
            max_connection_age_s=venue.max_connection_age_s or base.max_connection_age_s)
    if problems:
        raise ConfigError(problems)
    return handler  # type: ignore[no-any-return]


def build_sink(sink: SinkConfig, gateway_name: str) -> Sink:
    """The sink a sink config describes (the NATS one imports nats-py)."""
    common: dict[str, Any] = {"payload": sink.payload, "queue_size": sink.queue_size,
                              "backpressure": sink.backpressure}
    if sink.kind == "nats":
        from defi_ws.gateway.nats import NatsSink

        return NatsSink(
            sink.name, servers=sink.servers, stream=sink.stream, subject=sink.subject,
            stream_subjects=sink.stream_subjects, duplicate_window_s=sink.duplicate_window_s,
            storage=sink.storage, create_stream=sink.create_stream,
            ack_timeout_s=sink.ack_timeout_s, max_in_flight=sink.max_in_flight,
            user=sink.user, password=sink.password, token=sink.token,
            client_name=f"defi-ws:{gateway_name}", **common)
    if sink.kind == "file":
        assert sink.path is not None
        return FileSink(sink.name, path=sink.path, rotate_bytes=sink.rotate_bytes,
                        rotate_s=sink.rotate_s, **common)
    return StdoutSink(sink.name, **common)


class _Tap:
    """A handler as the gateway runs it: decode keeps the raw bytes, data goes to sinks.

    Everything but ``decode`` and the data callback is the wrapped handler's.
    """

    def __init__(self, venue: str, handler: ExchangeHandler, sinks: Sequence[Sink],
                 counts: TopicCounts) -> None:
        self._handler = handler
        self._venue = venue
        self._sinks = list(sinks)
        self._counts = counts
        self._raw = b""
        self.control_prefixes = handler.control_prefixes
        self.max_topics_per_message = handler.max_topics_per_message
        inner = handler.decode

        def decode(view: memoryview) -> Any:
            raw = self._raw = bytes(view)
            return raw if inner is None else inner(memoryview(raw))

        self.decode: Callable[[memoryview], Any] | None = decode
        topic_of = getattr(handler, "topic_of", None)
        sequence_of = getattr(handler, "sequence_of", None)
        self._topic_of: Callable[[Any], str | None] | None = topic_of
        self._sequence_of: Callable[[Any], tuple[str, int] | None] | None = (
            sequence_of if getattr(handler, "tracks_sequences", True) else None)
        self._message_id: Callable[[Any], str | None] | None = getattr(
            handler, "message_id", None)
        normalise = getattr(handler, "normalise", None)
        self._normalise: Callable[[Any], Any] | None = normalise
        self._wants_normalised = any(s.wants_normalised for s in sinks)
        self._accepting = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def url(self, attempt: int) -> str:
        return self._handler.url(attempt)

    def on_connection(self) -> None:
        self._handler.on_connection()

    def auth_messages(self) -> Sequence[Any]:
        return self._handler.auth_messages()

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return self._handler.subscribe_messages(topics)

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return self._handler.unsubscribe_messages(topics)

    def classify(self, message: Any) -> Sequence[Any]:
        return self._handler.classify(message)

    @property
    def data_sink(self) -> Callable[[Any], object]:
        return self.on_message

    def on_message(self, message: Any) -> None:
        """One data message: build its record and hand it to every sink."""
        raw = self._raw
        recv_ns = now_ns()
        seq: int | None = None
        numbered = self._sequence_of(message) if self._sequence_of is not None else None
        if numbered is not None:
            topic, seq = numbered
        else:
            topic = (self._topic_of(message) if self._topic_of is not None else None) or ""
        msg_id = self._message_id(message) if self._message_id is not None else None
        if msg_id is None:
            msg_id = (f"{self._venue}:{topic}:{seq}" if seq is not None
                      else f"{self._venue}:{topic}:h{_xxh64(raw):016x}")
        normalised = None
        if self._wants_normalised:
            data = self._normalise(message) if self._normalise is not None else message
            normalised = orjson.dumps({"venue": self._venue, "topic": topic, "seq": seq,
                                       "id": msg_id, "ts_ns": time.time_ns(), "data": data})
        record = Record(self._venue, topic, msg_id, raw, normalised, recv_ns)
        counts = self._counts.get(topic)
        if counts is None:
            if len(self._counts) < 10_000:
                self._counts[topic] = [1, len(raw)]
        else:
            counts[0] += 1
            counts[1] += len(raw)
        for sink in self._sinks:
            sink.put(record)


class Gateway:
    """Pools per venue, published to sinks, with metrics and a graceful drain.

    Args:
        config: a validated :class:`~defi_ws.gateway.config.GatewayConfig`.
        sinks: the sinks to use instead of the configured ones (tests, embedding).
        registry: the ``prometheus_client`` registry for the metrics (default: a
            registry of the gateway's own).

    Raises:
        ConfigError: a handler cannot be built (one line per problem).
    """

    def __init__(self, config: GatewayConfig, *, sinks: Sequence[Sink] | None = None,
                 registry: Any = None) -> None:
        self.config = config
        self.sinks: list[Sink] = (list(sinks) if sinks is not None
                                  else [build_sink(s, config.name) for s in config.sinks])
        problems: list[str] = []
        self.handlers: dict[str, ExchangeHandler] = {}
        for venue in config.venues:
            try:
                self.handlers[venue.name] = build_handler(venue)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        self.topic_counts: dict[str, TopicCounts] = {v.name: {} for v in config.venues}
        self.pools: dict[str, FeedPool] = {}
        self.gaps: list[Gap] = []
        self.metrics = FeedMetrics()
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        self.registry = registry
        self._server: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None
        self._paused = False
        self.pauses = 0
        #: The ``host:port`` of /metrics once started.
        self.metrics_address: str | None = None

    def request_stop(self) -> None:
        """Begin the drain (what SIGTERM and SIGINT do)."""
        if self._stop is not None:
            self._stop.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``: every pool LIVE and every sink keeping up."""
        pools = pool_problems(self.pools.items())
        lag_s = self.config.metrics.max_sink_lag_s if self.config.metrics else 5.0
        now = now_ns()
        sinks = {s.name: p for s in self.sinks if (p := s.problem(now, lag_s)) is not None}
        details: dict[str, Any] = {}
        if pools:
            details["pools"] = pools
        if sinks:
            details["sinks"] = sinks
        return not (pools or sinks), details

    def _pool(self, venue: VenueConfig) -> FeedPool:
        tap = _Tap(venue.name, self.handlers[venue.name], self.sinks,
                   self.topic_counts[venue.name])

        def on_gap(gap: Gap) -> None:
            self.gaps.append(gap)
            del self.gaps[:-1000]

        def on_disconnected(disconnect: Disconnect) -> None:
            log.info("%s: %s", venue.name, disconnect.describe())

        client_options: dict[str, Any] = {
            "heartbeat": WsPing(interval_s=venue.ping_interval_s,
                                timeout_s=venue.ping_timeout_s),
            "stale_after_s": venue.stale_after_s,
            "tls": TlsConfig(verify=venue.tls_verify, ca_file=venue.ca_file),
        }
        if venue.proxy is not None:
            client_options["proxy"] = venue.proxy
        return FeedPool(
            tap,
            topics=venue.topics, redundancy=venue.redundancy,
            rotation_overlap_s=venue.rotation_overlap_s, on_gap=on_gap,
            on_disconnected=on_disconnected, client_options=client_options,
            name=venue.name)

    async def start(self) -> None:
        """Start the sinks (connect, check streams), the metrics endpoint and the pools.

        Raises:
            ConnectionError: a sink cannot reach its destination.
            OSError: the metrics address cannot be bound.
        """
        self._stop = asyncio.Event()
        started: list[Sink] = []
        try:
            for sink in self.sinks:
                await sink.start()
                started.append(sink)
                self.metrics.add_sink(sink)
        except BaseException:
            for sink in started:
                await sink.close()
            raise
        for venue in self.config.venues:
            if not venue.topics:
                log.info("%s: no topics in shard %s", venue.name, self.config.shard)
                continue
            pool = self._pool(venue)
            self.pools[venue.name] = pool
            self.metrics.add_pool(venue.name, pool)
            self.metrics.add_topic_counts(venue.name, self.topic_counts[venue.name])
        self.registry.register(self.metrics)
        metrics = self.config.metrics
        if metrics is not None:
            self._server = await serve_http(metrics.host, metrics.port,
                                            registry=self.registry, health=self.health)
            sock = self._server.sockets[0].getsockname() if self._server.sockets else None
            self.metrics_address = f"{sock[0]}:{sock[1]}" if sock else None
            log.warning("gateway %s: metrics on http://%s/metrics and /healthz",
                        self.config.name, self.metrics_address)
        for pool in self.pools.values():
            pool.start()
        log.warning("gateway %s: started: %s -> %s", self.config.name,
                    ", ".join(f"{name} ({len(p.topics)} topics, redundancy {p.redundancy})"
                              for name, p in self.pools.items()),
                    ", ".join(f"{s.name} ({s.kind})" for s in self.sinks))

    def _backpressure(self) -> None:
        """Pause reading from the venues while a blocking sink is full; resume at half."""
        blocking = [s for s in self.sinks if s.backpressure == "block"]
        if not blocking:
            return
        full = any(s.depth >= s.queue_size for s in blocking)
        relieved = all(s.depth <= s.queue_size // 2 for s in blocking)
        if full:
            if not self._paused:
                self._paused = True
                self.pauses += 1
                log.warning("gateway %s: a sink is full: not reading from the venues",
                            self.config.name)
            for pool in self.pools.values():
                pool.pause_reading()  # again each tick: new connections too
        elif self._paused and relieved:
            self._paused = False
            log.warning("gateway %s: sinks caught up: reading from the venues again",
                        self.config.name)
            for pool in self.pools.values():
                pool.resume_reading()

    async def run_until_stopped(self) -> None:
        """Apply backpressure until :meth:`request_stop` (or a signal)."""
        assert self._stop is not None
        while not self._stop.is_set():
            self._backpressure()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=0.05)

    async def stop(self) -> int:
        """Drain: stop the intake, flush the sinks, wait for acks up to the deadline.

        Returns:
            Records left unacknowledged over all sinks (0: nothing lost).
        """
        deadline = time.monotonic() + self.config.drain_timeout_s
        log.warning("gateway %s: draining (up to %g s)", self.config.name,
                    self.config.drain_timeout_s)
        for pool in self.pools.values():
            pool.resume_reading()
        await asyncio.gather(*(p.stop() for p in self.pools.values()), return_exceptions=True)
        left = 0
        for sink in self.sinks:
            left += await sink.drain(max(0.0, deadline - time.monotonic()))
        for sink in self.sinks:
            await sink.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        for sink in self.sinks:
            snap = sink.snapshot()
            log.warning("gateway %s: sink %s: accepted %s, acked %s, dropped %s, "
                        "unacknowledged %s", self.config.name, sink.name, snap["accepted"],
                        snap["acked"], snap["dropped"], snap["depth"])
        return left

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain.

        Returns:
            The exit status: 0 when every record was acknowledged, 1 when a sink could
            not start or records were left unacknowledged at the deadline.
        """
        loop = asyncio.get_running_loop()
        try:
            await self.start()
        except (ConnectionError, OSError) as exc:
            log.error("gateway %s: %s", self.config.name, exc)
            print(f"defi-ws: error: {exc}", flush=True, file=__import__("sys").stderr)
            return 1
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.run_until_stopped()
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        left = await self.stop()
        return 0 if left == 0 else 1
