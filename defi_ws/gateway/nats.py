"""The NATS JetStream sink (``nats-py``): exactly one stored copy per message id.

Each record is published to a subject built from a template (``{venue}``,
``{channel}``, ``{symbol}``, ``{topic}``; the topic is split into channel and symbol at
its first ``.``, ``:`` or ``@``, as in ``trades.BTC``, ``trades:BTC-USDT``,
``btcusdt@trade`` -> channel ``trades``, symbol ``BTC``...; characters a subject token
may not hold become ``_``) with a ``Nats-Msg-Id`` header set to the record's
de-duplication key. JetStream stores a message id once within the stream's
``duplicate_window``: two gateways publishing the same topics, or one gateway
re-publishing after a lost ack, give one copy.

Acks are tracked by the sink itself, pipelined (up to ``max_in_flight`` publishes
awaiting their ack), each on a reply subject of its own. A record leaves the sink's
bounded queue only when JetStream acknowledged it; a publish not acknowledged within
``ack_timeout_s``, or in flight when the connection to the server dropped, is
published again with the same id. While the server is unreachable nothing is published
and records accumulate up to ``queue_size`` (then the backpressure policy applies);
the client reconnects by itself and the backlog goes out oldest first.

Order: per subject, the stream holds messages in the order the gateway received them,
except around a reconnect to the server, where a message that was in flight (or in
nats-py's own buffer) may be stored after later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import re
import time
from typing import Any

from defi_ws._core import now_ns
from defi_ws.gateway.config import default_stream_subjects
from defi_ws.gateway.sinks import Record, Sink

__all__ = ["NatsSink", "split_topic"]

log = logging.getLogger("defi_ws.gateway.nats")

_SPLIT = re.compile(r"[.:@]")
_BAD_TOKEN_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def split_topic(topic: str) -> tuple[str, str]:
    """``(channel, symbol)`` of a topic: split at the first ``.``, ``:`` or ``@``.

    Binance-style ``symbol@channel`` topics (``btcusdt@trade``) are recognised by the
    ``@`` and swapped. A topic without a separator is the channel, with symbol ``_``.
    """
    match = _SPLIT.search(topic)
    if match is None:
        return topic or "_", "_"
    head, tail = topic[: match.start()], topic[match.end():]
    if match.group() == "@":
        head, tail = tail, head
    return head or "_", tail or "_"


def _token(text: str) -> str:
    """A valid NATS subject token (no ``.``, ``*``, ``>``, spaces)."""
    return _BAD_TOKEN_CHARS.sub("_", text) or "_"


class _Entry:
    """A record taken off the queue and not yet acknowledged."""

    __slots__ = ("record", "sent_ns", "subject")

    def __init__(self, record: Record, subject: str) -> None:
        self.record = record
        self.subject = subject
        self.sent_ns = 0


class NatsSink(Sink):
    """Publishes records to a JetStream stream with ``Nats-Msg-Id`` de-duplication.

    Args:
        name: a label for metrics and logs.
        servers: ``nats://host:port`` URLs.
        stream: the stream's name; created at start if missing (``create_stream``),
            else its subjects must cover the template.
        subject: the subject template.
        stream_subjects: the stream's subjects (when it is created).
        duplicate_window_s: the stream's de-duplication window (when it is created).
        storage: ``"file"`` or ``"memory"`` (when it is created).
        create_stream: create the stream when it does not exist.
        ack_timeout_s: publish again after this long without an ack.
        max_in_flight: most publishes awaiting their ack.
        user: NATS user (with ``password``).
        password: NATS password.
        token: NATS token.
        client_name: the connection's name on the server.
        connect_timeout_s: limit of the first connection.
        reconnect_wait_s: pause between reconnect attempts.
        options: :class:`~defi_ws.gateway.sinks.Sink` options (payload, queue_size,
            backpressure).
    """

    kind = "nats"

    def __init__(self, name: str, *, servers: tuple[str, ...] | list[str],
                 stream: str, subject: str = "md.{venue}.{channel}.{symbol}",
                 stream_subjects: tuple[str, ...] | list[str] = (),
                 duplicate_window_s: float = 120.0, storage: str = "file",
                 create_stream: bool = True, ack_timeout_s: float = 5.0,
                 max_in_flight: int = 4096, user: str | None = None,
                 password: str | None = None, token: str | None = None,
                 client_name: str = "defi-ws", connect_timeout_s: float = 5.0,
                 reconnect_wait_s: float = 0.25, **options: Any) -> None:
        super().__init__(name, **options)
        self.servers = list(servers)
        self.stream = stream
        self.subject_template = subject
        self.stream_subjects = list(stream_subjects) or list(default_stream_subjects(subject))
        self.duplicate_window_s = duplicate_window_s
        self.storage = storage
        self.create_stream = create_stream
        self.ack_timeout_s = ack_timeout_s
        self.max_in_flight = max_in_flight
        self._auth = {"user": user, "password": password, "token": token}
        self.client_name = client_name
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_wait_s = reconnect_wait_s
        self._nc: Any = None
        self._inbox = ""
        self._next_token = 0
        self._unacked: dict[int, _Entry] = {}
        self._retry: list[int] = []          # a heap of tokens: oldest first
        self._retrying: set[int] = set()
        self._subjects: dict[tuple[str, str], str] = {}
        self._timer: asyncio.Task[None] | None = None
        #: Whether the client is connected to a server.
        self.connected = False
        self.disconnected_at: float | None = None
        #: Times the connection to the server was lost.
        self.disconnects = 0

    def __repr__(self) -> str:  # no credentials
        return f"<NatsSink {self.name!r} stream={self.stream!r} servers={self.servers!r}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, create or check the stream, subscribe to the acks, start writing.

        Raises:
            ConnectionError: the server cannot be reached, or the stream cannot be
                created or does not fit (a readable message, no credentials).
        """
        import nats
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        async def on_error(exc: Exception) -> None:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.debug("sink %s: nats: %s", self.name, self.stats.last_error)

        async def on_disconnected() -> None:
            if self.connected and self._nc is not None:
                self.connected = False
                self.disconnected_at = time.monotonic()
                self.disconnects += 1
                log.warning("sink %s: disconnected from NATS; buffering (%d held)",
                            self.name, self.depth)

        async def on_reconnected() -> None:
            self.connected = True
            self.disconnected_at = None
            self._retry_all()
            log.warning("sink %s: reconnected to NATS; re-publishing %d unacknowledged, "
                        "%d queued", self.name, len(self._unacked), len(self._queue))
            if self._wake is not None:
                self._wake.set()

        auth = {k: v for k, v in self._auth.items() if v is not None}
        try:
            self._nc = await nats.connect(
                servers=self.servers, name=self.client_name, allow_reconnect=True,
                max_reconnect_attempts=-1, reconnect_time_wait=self.reconnect_wait_s,
                connect_timeout=self.connect_timeout_s, error_cb=on_error,
                disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
                ping_interval=5, max_outstanding_pings=2, **auth)
        except Exception as exc:
            raise ConnectionError(
                f"sink {self.name}: cannot connect to NATS {', '.join(self.servers)}: "
                f"{type(exc).__name__}: {exc}") from None
        self.connected = True
        js = self._nc.jetstream(timeout=self.connect_timeout_s)
        try:
            try:
                info = await js.stream_info(self.stream)
            except NotFoundError:
                if not self.create_stream:
                    raise ConnectionError(f"sink {self.name}: stream {self.stream!r} does "
                                          "not exist (create_stream = false)") from None
                await js.add_stream(StreamConfig(
                    name=self.stream, subjects=self.stream_subjects,
                    duplicate_window=self.duplicate_window_s,
                    storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY))
                log.info("sink %s: created stream %s (%s, duplicate window %g s)", self.name,
                         self.stream, ", ".join(self.stream_subjects), self.duplicate_window_s)
            else:
                window = (info.config.duplicate_window or 0)
                log.info("sink %s: stream %s exists (subjects %s, duplicate window %g s)",
                         self.name, self.stream, info.config.subjects, window)
                if window and window < 1.0:
                    log.warning("sink %s: stream %s has a duplicate window of %g s: "
                                "redundant gateways may store duplicates", self.name,
                                self.stream, window)
        except ConnectionError:
            await self._nc.close()
            raise
        except Exception as exc:
            await self._nc.close()
            raise ConnectionError(f"sink {self.name}: stream {self.stream!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
        self._inbox = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack,
                                 pending_msgs_limit=4 * self.max_in_flight + 1024)
        await super().start()
        self._timer = asyncio.get_running_loop().create_task(
            self._expire_loop(), name=f"defi_ws:sink:{self.name}:acks")

    async def drain(self, timeout_s: float) -> int:
        left = await super().drain(timeout_s)
        if left:
            log.error("sink %s: %d record(s) not acknowledged by JetStream within %g s",
                      self.name, left, timeout_s)
        return left

    async def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        await super().close()
        nc, self._nc = self._nc, None
        self.connected = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=2.0)

    def problem(self, now: int, max_lag_s: float) -> str | None:
        if not self.connected and self._nc is not None:
            since = (time.monotonic() - self.disconnected_at) if self.disconnected_at else 0.0
            return f"not connected to NATS for {since:.1f} s ({self.depth} held)"
        return super().problem(now, max_lag_s)

    def snapshot(self) -> dict[str, object]:
        snap = super().snapshot()
        snap.update(connected=self.connected, in_flight=self._in_flight(),
                    unacked=len(self._unacked), disconnects=self.disconnects,
                    stream=self.stream)
        return snap

    # ------------------------------------------------------------------ internals

    def _in_flight(self) -> int:
        return len(self._unacked)

    def oldest_ns(self) -> int | None:
        for entry in self._unacked.values():  # insertion order: oldest first
            return entry.record.recv_ns
        return super().oldest_ns()

    def subject_for(self, venue: str, topic: str) -> str:
        """The subject of ``topic`` of ``venue`` (cached)."""
        key = (venue, topic)
        subject = self._subjects.get(key)
        if subject is None:
            channel, symbol = split_topic(topic)
            subject = self.subject_template.format(
                venue=_token(venue), channel=_token(channel), symbol=_token(symbol),
                topic=_token(topic))
            if len(self._subjects) < 100_000:
                self._subjects[key] = subject
        return subject

    def _retry_all(self) -> None:
        """Publish every unacknowledged record again (the connection they went on died)."""
        for token in self._unacked:
            if token not in self._retrying:
                self._retrying.add(token)
                heapq.heappush(self._retry, token)

    async def _on_ack(self, msg: Any) -> None:
        subject: str = msg.subject
        try:
            token = int(subject[len(self._inbox) + 1:])
        except ValueError:
            return
        entry = self._unacked.get(token)
        if entry is None:
            return  # a late ack of a record already acknowledged
        data: bytes = msg.data
        if not data or data.startswith(b'{"error"') or (
                msg.headers and msg.headers.get("Status") == "503"):
            self.stats.errors += 1
            self.stats.last_error = (data.decode(errors="replace")[:200] if data
                                     else "no responders (stream unavailable)")
            return  # published again after ack_timeout_s
        del self._unacked[token]
        self._retrying.discard(token)
        stats = self.stats
        stats.acked += 1
        if b'"duplicate"' in data and b"true" in data:  # '"duplicate": true' (a space)
            stats.duplicates += 1
        stats.latency.record(now_ns() - entry.record.recv_ns)
        wake = self._wake
        if wake is not None and not wake.is_set() and (self._queue or self._retry):
            wake.set()

    async def _expire_loop(self) -> None:
        """Publish again what was not acknowledged within ``ack_timeout_s``."""
        period_s = max(0.05, min(1.0, self.ack_timeout_s / 4))
        while True:
            await asyncio.sleep(period_s)
            if not self.connected:
                continue
            limit = now_ns() - int(self.ack_timeout_s * 1e9)
            expired = 0
            for token, entry in self._unacked.items():
                if token not in self._retrying and entry.sent_ns < limit:
                    self._retrying.add(token)
                    heapq.heappush(self._retry, token)
                    expired += 1
            if expired:
                log.info("sink %s: %d publish(es) not acknowledged within %g s; publishing "
                         "again", self.name, expired, self.ack_timeout_s)
                if self._wake is not None:
                    self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        nc = self._nc
        headers_key = "Nats-Msg-Id"
        while True:
            room = self.max_in_flight - (len(self._unacked) - len(self._retry))
            if not self.connected or room <= 0 or not (self._queue or self._retry):
                wake.clear()
                await wake.wait()
                continue
            inbox = self._inbox
            sent = 0
            try:
                while room > 0 and self.connected and (self._retry or self._queue):
                    if self._retry:
                        token = heapq.heappop(self._retry)
                        self._retrying.discard(token)
                        entry = self._unacked.get(token)
                        if entry is None:
                            continue  # acknowledged meanwhile
                        self.stats.retries += 1
                    else:
                        record = self._queue.popleft()
                        token = self._next_token = self._next_token + 1
                        entry = _Entry(record, self.subject_for(record.venue, record.topic))
                        self._unacked[token] = entry
                    entry.sent_ns = now_ns()
                    room -= 1
                    await nc.publish(entry.subject, self._payload_of(entry.record),
                                     reply=f"{inbox}.{token}",
                                     headers={headers_key: entry.record.msg_id})
                    self.stats.published += 1
                    sent += 1
                    if sent % 256 == 0:
                        await asyncio.sleep(0)  # let acks and the venues in
            except Exception as exc:  # e.g. the connection dropped mid-batch
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
                log.debug("sink %s: publish failed: %s", self.name, self.stats.last_error)
                await asyncio.sleep(0.05)
