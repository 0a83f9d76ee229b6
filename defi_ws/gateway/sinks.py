"""Where the gateway's messages go: one small :class:`Sink` interface, a bounded queue each.

Every sink takes :class:`Record` objects through :meth:`Sink.put` (synchronous, never
blocks: the hot path calls it per message), keeps at most ``queue_size`` of them that
are not yet acknowledged (queued or in flight), and writes them in a task of its own.
What "acknowledged" means is the sink's: JetStream's PubAck for
:class:`~defi_ws.gateway.nats.NatsSink`, a completed ``write`` + ``flush`` for
:class:`FileSink` and :class:`StdoutSink`.

Backpressure when the queue is full (``backpressure``):

* ``"block"``: nothing is dropped; :attr:`Sink.saturated` turns True and the gateway
  stops reading from the venues' sockets until the queue is half empty (TCP pushes back
  on the venue). Records that were already read still arrive; above twice the bound
  the oldest queued record is dropped and counted, so memory stays bounded.
* ``"drop_oldest"``: the oldest queued (never an in-flight) record is dropped and
  counted in ``dropped``.

Counters (:class:`SinkStats`): ``accepted``, ``published`` (writes or publishes issued,
retries included), ``acked``, ``dropped``, ``retries``, ``errors``, and the publish
latency (from the message's arrival at the gateway to its ack) as an
:class:`~defi_ws.health.RttHistogram`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections import deque
from typing import IO, ClassVar

from defi_ws._core import now_ns
from defi_ws.errors import ConfigError
from defi_ws.health import RttHistogram

__all__ = ["FileSink", "Record", "Sink", "SinkStats", "StdoutSink"]

log = logging.getLogger("defi_ws.gateway.sinks")


@dataclasses.dataclass(slots=True, eq=False)
class Record:
    """One message on its way to the sinks.

    Attributes:
        venue: the venue's name in the config.
        topic: the message's topic (``""`` when the handler cannot tell).
        msg_id: the de-duplication key (``venue:topic:seq``, or ``venue:topic:h<hash>``
            of the raw bytes when the message has no sequence number).
        raw: the venue's bytes, exactly as received.
        normalised: the JSON envelope (``{"venue", "topic", "seq", "id", "ts_ns",
            "data"}``), built only when a sink asks for it.
        recv_ns: when the gateway received it (``CLOCK_MONOTONIC`` ns).
    """

    venue: str
    topic: str
    msg_id: str
    raw: bytes
    normalised: bytes | None
    recv_ns: int


@dataclasses.dataclass(slots=True)
class SinkStats:
    """A sink's counters (monotonic, for Prometheus) and its publish latency."""

    accepted: int = 0
    published: int = 0
    acked: int = 0
    dropped: int = 0
    retries: int = 0
    errors: int = 0
    duplicates: int = 0
    latency: RttHistogram = dataclasses.field(default_factory=RttHistogram)
    last_error: str | None = None
    saturations: int = 0


class Sink:
    """The interface and the bounded queue every sink shares.

    Subclasses implement :meth:`_write` (or override :meth:`_run` entirely, as the NATS
    sink does) and may extend :meth:`start`, :meth:`close` and :meth:`problem`.

    Args:
        name: a label for metrics and logs.
        payload: ``"raw"`` or ``"normalised"``.
        queue_size: most records not yet acknowledged.
        backpressure: ``"block"`` or ``"drop_oldest"``.

    Raises:
        ConfigError: an invalid argument.
    """

    kind: ClassVar[str] = "sink"

    def __init__(self, name: str, *, payload: str = "raw", queue_size: int = 100_000,
                 backpressure: str = "block") -> None:
        problems = []
        if payload not in ("raw", "normalised"):
            problems.append(f"payload must be raw or normalised, got {payload!r}")
        if not (isinstance(queue_size, int) and queue_size >= 1):
            problems.append(f"queue_size must be an int >= 1, got {queue_size!r}")
        if backpressure not in ("block", "drop_oldest"):
            problems.append(f"backpressure must be block or drop_oldest, got {backpressure!r}")
        if problems:
            raise ConfigError(problems)
        self.name = name
        self.payload = payload
        self.queue_size = queue_size
        self.backpressure = backpressure
        self.stats = SinkStats()
        self._queue: deque[Record] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._was_saturated = False

    # ------------------------------------------------------------------ interface

    @property
    def wants_normalised(self) -> bool:
        """Whether records must carry the normalised form."""
        return self.payload == "normalised"

    @property
    def depth(self) -> int:
        """Records held and not yet acknowledged (queued and in flight)."""
        return len(self._queue) + self._in_flight()

    @property
    def saturated(self) -> bool:
        """Whether the queue is at its bound (with ``block``: pause the intake)."""
        return self.depth >= self.queue_size

    def oldest_ns(self) -> int | None:
        """``recv_ns`` of the oldest record not yet acknowledged, if any."""
        return self._queue[0].recv_ns if self._queue else None

    def put(self, record: Record) -> None:
        """Hand one record over; never blocks (see the module docstring for policies)."""
        depth = self.depth
        if depth >= self.queue_size:
            if not self._was_saturated:
                self._was_saturated = True
                self.stats.saturations += 1
                log.warning("sink %s: queue full (%d records); %s", self.name, depth,
                            "pausing the intake" if self.backpressure == "block"
                            else "dropping the oldest")
            if self.backpressure == "drop_oldest" or depth >= 2 * self.queue_size:
                if self._queue:
                    self._queue.popleft()
                    self.stats.dropped += 1
                else:  # everything is in flight: the newest is the one that goes
                    self.stats.dropped += 1
                    return
        elif self._was_saturated and depth <= self.queue_size // 2:
            self._was_saturated = False
        self._queue.append(record)
        self.stats.accepted += 1
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    async def start(self) -> None:
        """Connect / open, and start the writer task.

        Raises:
            ConnectionError: the destination cannot be reached (a readable message).
        """
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"defi_ws:sink:{self.name}")

    async def drain(self, timeout_s: float) -> int:
        """Write everything queued and wait for the acks, at most ``timeout_s``.

        Returns:
            How many records are still not acknowledged (0: nothing lost).
        """
        deadline = time.monotonic() + timeout_s
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        while self.depth and time.monotonic() < deadline:
            if self._task is not None and self._task.done():
                break
            await asyncio.sleep(0.01)
        return self.depth

    async def close(self) -> None:
        """Stop the writer task and release the destination (no waiting for acks)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def problem(self, now: int, max_lag_s: float) -> str | None:
        """Why the sink is not keeping up (None when it is), for ``/healthz``.

        Args:
            now: ``now_ns()``.
            max_lag_s: the oldest unacknowledged record may be this old.
        """
        if self._task is not None and self._task.done():
            return "writer stopped" + (f": {self.stats.last_error}"
                                       if self.stats.last_error else "")
        if self.saturated:
            return f"queue full ({self.depth}/{self.queue_size})"
        oldest = self.oldest_ns()
        if oldest is not None and now - oldest > max_lag_s * 1e9:
            return f"oldest unacknowledged record is {(now - oldest) / 1e9:.1f} s old"
        return None

    def snapshot(self) -> dict[str, object]:
        """Counters, depth and latency as a plain dict."""
        s = self.stats
        return {
            "name": self.name, "kind": self.kind, "depth": self.depth,
            "queue_size": self.queue_size, "saturated": self.saturated,
            "accepted": s.accepted, "published": s.published, "acked": s.acked,
            "dropped": s.dropped, "retries": s.retries, "errors": s.errors,
            "duplicates": s.duplicates, "latency": s.latency.summary_ms(),
            "last_error": s.last_error,
        }

    # ------------------------------------------------------------------ internals

    def _in_flight(self) -> int:
        return 0

    def _payload_of(self, record: Record) -> bytes:
        if self.payload == "normalised" and record.normalised is not None:
            return record.normalised
        return record.raw

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self._queue:
                wake.clear()
                await wake.wait()
                continue
            batch = list(self._queue)
            self._queue.clear()
            try:
                await self._write(batch)
            except Exception as exc:
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
                log.error("sink %s: write failed: %s; retrying in 1 s", self.name,
                          self.stats.last_error)
                self._queue.extendleft(reversed(batch))
                await asyncio.sleep(1.0)
                continue
            now = now_ns()
            self.stats.published += len(batch)
            self.stats.acked += len(batch)
            record_latency = self.stats.latency.record
            for record in batch:
                record_latency(now - record.recv_ns)

    async def _write(self, batch: list[Record]) -> None:
        raise NotImplementedError


def _line(payload: bytes) -> bytes:
    """One JSON line: the payload without raw newlines (JSON allows none inside strings)."""
    if b"\n" in payload or b"\r" in payload:
        payload = payload.replace(b"\r", b" ").replace(b"\n", b" ")
    return payload + b"\n"


class StdoutSink(Sink):
    """JSON lines on standard output (acked once written and flushed)."""

    kind = "stdout"

    def __init__(self, name: str = "stdout", *, stream: IO[bytes] | None = None,
                 **options: object) -> None:
        super().__init__(name, **options)  # type: ignore[arg-type]
        self._stream = stream

    async def _write(self, batch: list[Record]) -> None:
        out = self._stream or sys.stdout.buffer
        out.write(b"".join(_line(self._payload_of(r)) for r in batch))
        out.flush()


class FileSink(Sink):
    """JSON lines in a file, rotated by size and/or age.

    The current file is ``path``; a rotated one is renamed to
    ``<stem>-<UTC yyyymmddTHHMMSS>-<n><suffix>`` beside it. A record is acknowledged
    once written and flushed to the operating system (no fsync).

    Args:
        name: a label.
        path: the current file.
        rotate_bytes: rotate once the file reaches this size (None: never).
        rotate_s: rotate once the file is this old (None: never).
        options: :class:`Sink` options.
    """

    kind = "file"

    def __init__(self, name: str, *, path: str, rotate_bytes: int | None = None,
                 rotate_s: float | None = None, **options: object) -> None:
        super().__init__(name, **options)  # type: ignore[arg-type]
        self.path = path
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.rotations = 0
        self._fh: IO[bytes] | None = None
        self._opened_at = 0.0
        self._size = 0

    async def start(self) -> None:
        self._open()
        await super().start()

    def _open(self) -> None:
        self._fh = open(self.path, "ab")  # closed in close() and _rotate()
        self._size = self._fh.tell()
        self._opened_at = time.monotonic()

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        stem, suffix = os.path.splitext(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.rotations += 1
        os.replace(self.path, f"{stem}-{stamp}-{self.rotations}{suffix}")
        self._open()

    async def _write(self, batch: list[Record]) -> None:
        if self._fh is None:
            self._open()
        assert self._fh is not None
        data = b"".join(_line(self._payload_of(r)) for r in batch)
        self._fh.write(data)
        self._fh.flush()
        self._size += len(data)
        if (self.rotate_bytes is not None and self._size >= self.rotate_bytes) or (
                self.rotate_s is not None
                and time.monotonic() - self._opened_at >= self.rotate_s):
            self._rotate()

    async def close(self) -> None:
        await super().close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
