"""Many connections to one venue as one feed: :class:`FeedPool`.

A pool places topics on connections by the venue's declared limits
(:class:`~defi_ws.handler.VenueLimits`), keeps ``redundancy`` connections carrying the
same topics (hot-hot), delivers each message once (duplicates are recognised from the
raw bytes and dropped before decode by a shared :class:`~defi_ws._core.Deduplicator`),
and replaces connections before the venue cuts them (make-before-break rotation).

The policy parts are sans-I/O and tested on their own: :class:`Placement` (which
connection group carries which topic) and :class:`ConnectionRateLimiter` (new
connections per window, shared per host across every pool of the process). The pool
itself only starts and stops :class:`~defi_ws.client.FeedClient` replicas and sleeps
until its next deadline (a rotation, a gap report).

Guarantees, with a :class:`~defi_ws.handler.DedupSpec` that has an ``id_field``
(monotonic per-topic ids): every message reaches ``on_message`` at most once and in
increasing id order per topic; a stretch of ids nobody delivered is reported through
``on_gap``. A message is lost only if every connection carrying its topic missed it,
or if the connection that had it was behind another one that had already delivered a
later id (ids are never delivered out of order). With a ``hash_field`` instead, a
duplicate is dropped if it arrives within the last ``window`` messages; order and gaps
are not known.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from defi_ws import _compat
from defi_ws._core import Deduplicator
from defi_ws.client import FeedClient
from defi_ws.errors import ConfigError, FatalDisconnect, FeedClosedError
from defi_ws.handler import DedupSpec, ExchangeHandler, Notice, VenueLimits
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect
from defi_ws.sequence import Gap

__all__ = ["ConnectionRateLimiter", "FeedPool", "Placement", "shared_rate_limiter"]

log = logging.getLogger("defi_ws.pool")

#: FeedClient keyword arguments the pool sets itself.
_RESERVED_OPTIONS = frozenset({
    "topics", "dedup", "track_sequences", "connect_gate", "on_notice", "on_disconnected",
    "on_subscription_rejected", "on_gap", "name", "clock", "outbound_rate_per_s",
    "outbound_burst"})


class ConnectionRateLimiter:
    """At most ``count`` new connections in any ``window_s`` (sliding window), sans-I/O.

    The venue counts connections when it accepts them, a little after the client
    started them, and handshakes take varying time: two starts ``window_s`` apart can
    be accepted closer together. Each start therefore occupies its slot for
    ``window_s + margin_s``.

    Args:
        count: connections allowed per window.
        window_s: the window, in seconds.
        margin_s: extra time each start keeps its slot (default: 10 % of the window).
    """

    def __init__(self, count: int, window_s: float, margin_s: float | None = None) -> None:
        if count < 1 or not window_s > 0:
            raise ConfigError([f"connection rate must be (count >= 1, window_s > 0), "
                               f"got ({count!r}, {window_s!r})"])
        self.count = count
        self.window_s = window_s + (0.1 * window_s if margin_s is None else margin_s)
        self._starts: deque[float] = deque()

    def reserve(self, now: float) -> float:
        """Take a slot now (returns 0.0) or say how long to wait before asking again."""
        starts = self._starts
        while starts and starts[0] <= now - self.window_s:
            starts.popleft()
        if len(starts) < self.count:
            starts.append(now)
            return 0.0
        return starts[0] + self.window_s - now

    def in_window(self, now: float) -> int:
        """Connections started within the last window."""
        return sum(1 for t in self._starts if t > now - self.window_s)


_SHARED: dict[tuple[str, int, float], ConnectionRateLimiter] = {}


def shared_rate_limiter(url: str, limit: tuple[int, float]) -> ConnectionRateLimiter:
    """The process-wide limiter for ``url``'s host: pools to one venue share it."""
    host = (urlsplit(url).hostname or "").lower()
    key = (host, limit[0], float(limit[1]))
    limiter = _SHARED.get(key)
    if limiter is None:
        limiter = _SHARED[key] = ConnectionRateLimiter(*limit)
    return limiter


class Placement:
    """Which connection group carries which topic, filled first-fit, sans-I/O.

    Args:
        per_group: most topics one group (one set of redundant connections) carries.
    """

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self.groups: dict[int, set[str]] = {}
        self._group_of: dict[str, int] = {}
        self._next_id = 0

    def group_of(self, topic: str) -> int | None:
        """The group carrying ``topic``, if any."""
        return self._group_of.get(topic)

    def add(self, topics: Iterable[str]) -> dict[int, list[str]]:
        """Place new topics; returns the topics added per group (new groups included)."""
        added: dict[int, list[str]] = {}
        for topic in topics:
            if topic in self._group_of:
                continue
            gid = next((g for g, members in self.groups.items()
                        if len(members) < self.per_group), None)
            if gid is None:
                gid = self._next_id
                self._next_id += 1
                self.groups[gid] = set()
            self.groups[gid].add(topic)
            self._group_of[topic] = gid
            added.setdefault(gid, []).append(topic)
        return added

    def remove(self, topics: Iterable[str]) -> dict[int, list[str]]:
        """Remove topics; returns the topics removed per group (empty groups are dropped)."""
        removed: dict[int, list[str]] = {}
        for topic in topics:
            gid = self._group_of.pop(topic, None)
            if gid is None:
                continue
            self.groups[gid].discard(topic)
            removed.setdefault(gid, []).append(topic)
        for gid in removed:
            if not self.groups[gid]:
                del self.groups[gid]
        return removed


class _UrlHandler:
    """A handler seen through another URL (redundant connections to other endpoints)."""

    def __init__(self, handler: ExchangeHandler, url: str) -> None:
        self._handler = handler
        self._url = url

    def url(self, attempt: int) -> str:
        return self._url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


@dataclasses.dataclass(eq=False)
class _Replica:
    """One connection of a group (a FeedClient across its reconnects)."""

    group: int
    index: int
    generation: int
    client: FeedClient
    started_at: float
    rotate_at: float | None
    retiring: bool = False
    notice: Notice | None = None
    noticed_at: float = 0.0


class FeedPool:
    """One logical feed over many connections to one venue.

    Same handler, same callbacks as :class:`~defi_ws.client.FeedClient`. Topics are
    placed on groups of ``redundancy`` connections, at most
    ``limits.topics_per_connection`` per group; a new group opens when topics outgrow
    the current ones. Every connection obeys the venue's outbound rate, and new
    connections (reconnects and rotations included) the connection-rate limit, shared
    per host by every pool of the process.

    Args:
        handler: the venue adapter; ``handler.limits`` and ``handler.dedup`` are used
            unless given here.
        topics: topics to subscribe from the start.
        redundancy: connections carrying each topic (hot-hot; 1 for none).
        urls: one URL per redundant connection (cycled), e.g. a venue's alternative
            endpoints; default: ``handler.url()`` for all.
        limits: overrides ``handler.limits``.
        dedup: overrides ``handler.dedup`` (needed for ``redundancy > 1`` and rotation).
        rotate_before_s: rotate this long before ``max_connection_age_s`` (default:
            10 % of it).
        rotation_jitter_s: spread rotations randomly over this much earlier time, so
            connections opened together are not rotated together (default: 10 % of
            the age limit).
        rotation_overlap_s: after the replacement is LIVE, both run this long before
            the old one is closed (the replacement catches up).
        rotation_timeout_s: a replacement not LIVE within this long is given up (the
            old connection stays; the rotation is tried again).
        gap_poll_s: how often gaps found by the de-duplicator are reported.
        on_gap: called with each :class:`~defi_ws.sequence.Gap` of the merged stream.
        on_disconnected: called with each user-visible disconnect (rotations are not).
        on_subscription_rejected: called with ``(topic, detail)``.
        on_gave_up: called with the fatal :class:`Disconnect` when every connection of
            a group has given up (a fatal disconnect such as ``AUTH_FAILED``, or the
            reconnect strategy's attempts spent): that group's topics get no more data.
            :attr:`fatal` is set and :meth:`wait_live` raises it. Connections that give
            up while another of their group still runs are only logged (and reported
            through ``on_disconnected``).
        client_options: keyword arguments for every :class:`FeedClient` (heartbeat,
            stale clock, reconnect strategy, TLS...).
        connection_options: called for each new connection with ``(group, replica,
            generation)`` (the generation numbers connections in the order the pool
            opened them, see :meth:`connection`); returns more keyword arguments for
            that connection's :class:`FeedClient`, over ``client_options``: per-connection
            callbacks (``on_state_change``, ``on_connected``, ``on_gave_up``...).
            Its ``on_disconnected`` is called with that connection's user-visible
            disconnects (not a rotation's), before the pool's ``on_disconnected``.
        clock: monotonic seconds.
        seed: seed of the rotation jitter (tests).
        name: a label for logs.

    Raises:
        ConfigError: listing every invalid argument.
    """

    def __init__(
        self,
        handler: ExchangeHandler,
        *,
        topics: Iterable[str] = (),
        redundancy: int = 1,
        urls: Iterable[str] | None = None,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | None = None,
        rotate_before_s: float | None = None,
        rotation_jitter_s: float | None = None,
        rotation_overlap_s: float = 1.0,
        rotation_timeout_s: float = 30.0,
        gap_poll_s: float = 0.1,
        on_gap: Callable[[Gap], object] | None = None,
        on_disconnected: Callable[[Disconnect], object] | None = None,
        on_subscription_rejected: Callable[[str, str], object] | None = None,
        on_gave_up: Callable[[Disconnect], object] | None = None,
        client_options: Mapping[str, Any] | None = None,
        connection_options: Callable[[int, int, int], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        name: str = "pool",
    ) -> None:
        self.limits = limits or getattr(handler, "limits", None) or VenueLimits()
        spec = dedup if dedup is not None else getattr(handler, "dedup", None)
        problems = self.limits.problems()
        if not (isinstance(redundancy, int) and redundancy >= 1):
            problems.append(f"redundancy must be an int >= 1, got {redundancy!r}")
        if spec is None and (redundancy > 1 or self.limits.max_connection_age_s):
            problems.append("redundancy > 1 and rotation need a dedup spec "
                            "(handler.dedup or dedup=)")
        if not rotation_overlap_s >= 0 or not gap_poll_s > 0:
            problems.append("rotation_overlap_s must be >= 0 and gap_poll_s > 0")
        clashes = _RESERVED_OPTIONS & set(client_options or {})
        if clashes:
            problems.append(f"client_options may not set {sorted(clashes)} (the pool does)")
        if problems:
            raise ConfigError(problems)
        self.handler = handler
        self.name = name
        self.redundancy = redundancy
        self._urls = list(urls or [])
        self._spec = spec
        self.dedup: Deduplicator | None = None if spec is None else Deduplicator(
            id_field=spec.id_field, topic_field=spec.topic_field,
            hash_field=spec.hash_field, window=spec.window, key_of=spec.key_of)
        age_s = self.limits.max_connection_age_s
        self._rotate_before_s = (rotate_before_s if rotate_before_s is not None
                                 else (0.1 * age_s if age_s else 0.0))
        self._jitter_s = (rotation_jitter_s if rotation_jitter_s is not None
                          else (0.1 * age_s if age_s else 0.0))
        self._overlap_s = rotation_overlap_s
        self._rotation_timeout_s = rotation_timeout_s
        self._rotations: dict[tuple[int, int], asyncio.Task[None]] = {}
        #: Replacements being brought up by a rotation, by the slot they will take.
        self._incoming: dict[tuple[int, int], _Replica] = {}
        self._gap_poll_s = gap_poll_s
        self._on_gap = on_gap
        self._on_disconnected = on_disconnected
        self._on_rejected = on_subscription_rejected
        self._client_options = dict(client_options or {})
        self._on_gave_up = on_gave_up
        #: Set when every connection of a group gave up (see ``on_gave_up``).
        self.fatal: FatalDisconnect | None = None
        self._connection_options = connection_options
        self._clock = clock
        self._rng = random.Random(seed)
        first_url = self._urls[0] if self._urls else handler.url(0)
        self._limiter = (shared_rate_limiter(first_url, self.limits.connections_per_window)
                         if self.limits.connections_per_window else None)
        self.placement = Placement(self.limits.topics_per_connection)
        self._replicas: dict[tuple[int, int], _Replica] = {}
        self._generation = 0
        self._initial = list(dict.fromkeys([topics] if isinstance(topics, str) else topics))
        self._task: asyncio.Task[None] | None = None
        self._wake_event: asyncio.Event | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: Completed make-before-break rotations.
        self.rotations = 0
        #: Gaps of the merged stream reported through ``on_gap``.
        self.gaps = 0
        #: Connections opened (replicas created, rotations included).
        self.connections_opened = 0

    # ------------------------------------------------------------------ public API

    @property
    def topics(self) -> tuple[str, ...]:
        """The desired topics."""
        return tuple(t for members in self.placement.groups.values() for t in members)

    def clients(self) -> list[FeedClient]:
        """The current connections' clients (group by group)."""
        return [r.client for _, r in sorted(self._replicas.items())]

    def connection(self, generation: int) -> FeedClient | None:
        """The client of the connection the pool opened ``generation``-th (a current one,
        or a replacement a rotation is bringing up); None once it is gone."""
        for rep in (*self._replicas.values(), *self._incoming.values()):
            if rep.generation == generation:
                return rep.client
        return None

    def replicas(self) -> list[tuple[str, FeedClient]]:
        """``(label, client)`` of each current connection; the label ``g<group>.r<replica>``
        is stable across rotations and reconnects (a metrics label)."""
        return [(f"g{gid}.r{index}", r.client)
                for (gid, index), r in sorted(self._replicas.items())]

    @property
    def live(self) -> bool:
        """Whether the pool runs and every group has at least one LIVE connection."""
        return self._task is not None and not self._stopping and self._all_groups_live()

    def pause_reading(self) -> None:
        """Stop reading every current connection's socket (backpressure); see
        :meth:`FeedClient.pause_reading`."""
        for rep in self._replicas.values():
            rep.client.pause_reading()

    def resume_reading(self) -> None:
        """Read every current connection's socket again."""
        for rep in self._replicas.values():
            rep.client.resume_reading()

    def snapshot(self) -> dict[str, Any]:
        """The pool's health, with a per-connection breakdown."""
        now = self._clock()
        conns = []
        for (gid, index), rep in sorted(self._replicas.items()):
            snap = rep.client.snapshot()
            conns.append({
                "group": gid, "replica": index, "generation": rep.generation,
                "state": snap["state"], "topics": len(self.placement.groups.get(gid, ())),
                "messages": snap["messages"], "duplicates": snap.get("duplicates", 0),
                "conflated": snap.get("conflated", 0),
                "age_s": round(now - rep.started_at, 3),
                "rotate_in_s": None if rep.rotate_at is None else round(rep.rotate_at - now, 3),
                "rtt": snap["rtt"], "disconnects": snap["disconnects"],
            })
        dedup = self.dedup
        return {
            "name": self.name,
            "redundancy": self.redundancy,
            "groups": len(self.placement.groups),
            "connections": conns,
            "topics_desired": sum(len(m) for m in self.placement.groups.values()),
            "delivered": None if dedup is None else dedup.delivered,
            "duplicates_dropped": None if dedup is None else dedup.duplicates,
            "gaps": self.gaps,
            "rotations": self.rotations,
            "connections_opened": self.connections_opened,
        }

    async def __aenter__(self) -> FeedPool:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Open the connections for the initial topics (idempotent while running)."""
        if self._stopping:
            raise FeedClosedError("a stopped FeedPool cannot be restarted")
        if self._task is not None:
            return
        self._wake_event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"defi_ws:{self.name}")
        self.subscribe(self._initial)

    async def stop(self) -> None:
        """Close every connection and report the last gaps; leaves no task behind."""
        self._stopping = True
        for task in (self._task, *self._rotations.values()):
            # Cancel until it ends: on Python 3.10 a cancel() that coincides with an
            # async_timeout expiry becomes a TimeoutError (the cancellation is lost);
            # the loops also check _stopping. A cancellation of the caller propagates.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            if task is not None and not task.cancelled() and task.exception() is not None:
                log.error("%s: a pool task failed", self.name, exc_info=task.exception())
        clients = [r.client for r in (*self._replicas.values(), *self._incoming.values())]
        self._replicas.clear()
        self._incoming.clear()
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        for task in list(self._retired):
            with contextlib.suppress(BaseException):
                await task
        self._drain_gaps()

    async def wait_live(self, timeout_s: float | None = None) -> None:
        """Wait until every group has at least one LIVE connection.

        Raises:
            FatalDisconnect: every connection of a group gave up (:attr:`fatal`).
            TimeoutError: not LIVE within ``timeout_s``.
        """
        async with _compat.timeout(timeout_s):
            while not self._all_groups_live():
                if self.fatal is not None:
                    raise self.fatal
                await asyncio.sleep(0.01)

    def subscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Add topics; they are placed on a group with room (a new one if needed)."""
        added = self.placement.add([topics] if isinstance(topics, str) else topics)
        for gid, group_topics in added.items():
            replicas = [r for (g, _), r in self._replicas.items() if g == gid]
            if not replicas and self._task is not None:
                for index in range(self.redundancy):
                    self._replicas[(gid, index)] = self._start_replica(gid, index)
            else:
                replicas += [r for (g, _), r in self._incoming.items() if g == gid]
                for rep in replicas:
                    rep.client.subscribe(group_topics)
        return [t for group_topics in added.values() for t in group_topics]

    def unsubscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Remove topics; a group left empty closes its connections."""
        removed = self.placement.remove([topics] if isinstance(topics, str) else topics)
        for gid, group_topics in removed.items():
            for slots in (self._replicas, self._incoming):
                for (g, index), rep in list(slots.items()):
                    if g != gid:
                        continue
                    if gid in self.placement.groups:
                        rep.client.unsubscribe(group_topics)
                    else:
                        del slots[(g, index)]
                        self._retire(rep, rotation=False)
            if self.dedup is not None:
                for topic in group_topics:
                    self.dedup.forget(topic)
        return [t for group_topics in removed.values() for t in group_topics]

    # ------------------------------------------------------------------ internals

    def _all_groups_live(self) -> bool:
        for gid in self.placement.groups:
            if not any(r.client.state is State.LIVE
                       for (g, _), r in self._replicas.items() if g == gid):
                return False
        return True

    def _connect_gate(self, now: float) -> float:
        return 0.0 if self._limiter is None else self._limiter.reserve(now)

    def _rotate_at(self, now: float) -> float | None:
        age_s = self.limits.max_connection_age_s
        if not age_s:
            return None
        jitter_s = self._rng.uniform(0.0, self._jitter_s)
        return now + max(0.0, age_s - self._rotate_before_s - jitter_s)

    def _start_replica(self, gid: int, index: int) -> _Replica:
        self._generation += 1
        generation = self._generation
        handler: Any = self.handler
        if self._urls:
            handler = _UrlHandler(self.handler, self._urls[index % len(self._urls)])
        rep: _Replica
        options = dict(self._client_options)
        own_disconnected: Callable[[Disconnect], object] | None = None
        if self._connection_options is not None:
            extra = dict(self._connection_options(gid, index, generation))
            own_disconnected = extra.pop("on_disconnected", None)
            clashes = _RESERVED_OPTIONS & set(extra)
            if clashes:
                raise ConfigError([f"connection_options may not set {sorted(clashes)} "
                                   "(the pool does)"])
            options.update(extra)
        own_gave_up: Callable[[Disconnect], object] | None = options.pop("on_gave_up", None)
        client = FeedClient(
            handler,
            topics=sorted(self.placement.groups.get(gid, ())),
            dedup=self.dedup,
            track_sequences=self.dedup is None or self._spec is None
            or (self._spec.id_field is None and self._spec.key_of is None),
            connect_gate=self._connect_gate,
            outbound_rate_per_s=self.limits.messages_per_s,
            outbound_burst=self.limits.burst,
            on_notice=lambda notice: self._noticed(rep, notice),
            on_disconnected=lambda d: self._disconnected(rep, d, own_disconnected),
            on_gave_up=lambda d: self._gave_up(rep, d, own_gave_up),
            on_subscription_rejected=self._rejected,
            on_gap=self._client_gap,
            clock=self._clock,
            name=f"{self.name}.g{gid}.r{index}.{generation}",
            **options,
        )
        now = self._clock()
        rep = _Replica(gid, index, generation, client, now, self._rotate_at(now))
        self.connections_opened += 1
        client.start()
        self._wake()
        return rep

    def _retire(self, rep: _Replica, *, rotation: bool) -> None:
        rep.retiring = True
        task = asyncio.get_running_loop().create_task(rep.client.stop(rotation=rotation))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    def _cut_at(self, rep: _Replica) -> float | None:
        """When the venue will cut ``rep`` (its notice, or the age limit), if known."""
        times = []
        if rep.notice is not None and rep.notice.cut_in_s is not None:
            times.append(rep.noticed_at + rep.notice.cut_in_s)
        if self.limits.max_connection_age_s:
            times.append(rep.started_at + self.limits.max_connection_age_s)
        return min(times) if times else None

    def _noticed(self, rep: _Replica, notice: Notice) -> None:
        if rep.retiring or rep.notice is not None:
            return
        if self.dedup is None:  # an overlap would deliver duplicates: let the venue cut
            log.info("%s: venue notice on g%d.r%d; no dedup spec, so no rotation",
                     self.name, rep.group, rep.index)
            return
        rep.notice = notice
        rep.noticed_at = self._clock()
        rep.rotate_at = self._clock()  # rotate now: make before the venue breaks
        self._wake()

    def _disconnected(self, rep: _Replica, disconnect: Disconnect,
                      own: Callable[[Disconnect], object] | None = None) -> None:
        if rep.retiring:
            return  # a rotation or an unsubscribed group: not the user's concern
        now = self._clock()
        rep.notice = None  # the connection it was about is gone; a fresh one follows
        rep.started_at = now
        if (rep.group, rep.index) not in self._rotations:
            rep.rotate_at = self._rotate_at(now)
        if own is not None:
            own(disconnect)
        if self._on_disconnected is not None:
            self._on_disconnected(disconnect)

    def _gave_up(self, rep: _Replica, disconnect: Disconnect,
                 own: Callable[[Disconnect], object] | None) -> None:
        """A connection gave up for good: a dead group is the pool's failure."""
        if own is not None:
            own(disconnect)
        if rep.retiring or self._replicas.get((rep.group, rep.index)) is not rep:
            return  # a rotation's replacement (the rotation retries) or a retired one
        running = [r for (group, _), r in self._replicas.items()
                   if group == rep.group and r.client.fatal is None]
        if running:
            log.error("%s: connection g%d.r%d gave up (%s); %d other(s) of its group still "
                      "carry its topics", self.name, rep.group, rep.index,
                      disconnect.describe(), len(running))
            return
        topics = sorted(self.placement.groups.get(rep.group, ()))
        log.error("%s: every connection of group %d gave up (%s): %d topic(s) get no more "
                  "data: %s", self.name, rep.group, disconnect.describe(), len(topics),
                  ", ".join(topics[:10]) + (", ..." if len(topics) > 10 else ""))
        if self.fatal is None:
            self.fatal = FatalDisconnect(disconnect)
        if self._on_gave_up is not None:
            self._on_gave_up(disconnect)
        self._wake()

    def _rejected(self, topic: str, detail: str) -> None:
        self.placement.remove([topic])
        if self._on_rejected is not None:
            self._on_rejected(topic, detail)

    def _client_gap(self, gap: Gap) -> None:
        self.gaps += 1
        if self._on_gap is not None:
            self._on_gap(gap)

    def _drain_gaps(self) -> None:
        if self.dedup is None:
            return
        for topic, first, last in self.dedup.drain_gaps():
            self._client_gap(Gap(topic, first, last))

    def _wake(self) -> None:
        if self._wake_event is not None:
            self._wake_event.set()

    async def _run(self) -> None:
        assert self._wake_event is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._drain_gaps()
            now = self._clock()
            due = [r for key, r in self._replicas.items()
                   if key not in self._rotations and not r.retiring
                   and r.rotate_at is not None and r.rotate_at <= now]
            # Notices rotate at once, all of them (the venue's cut is near; each new
            # connection still waits for the connection-rate window); age rotations
            # one at a time, so connections opened together are not replaced together.
            by_age = any(r.notice is None for key, r in self._replicas.items()
                         if key in self._rotations)
            for rep in sorted(due, key=lambda r: r.rotate_at or 0.0):
                if rep.notice is None:
                    if by_age:
                        continue
                    by_age = True
                key = (rep.group, rep.index)
                task = loop.create_task(self._rotate(rep))
                self._rotations[key] = task
                task.add_done_callback(functools.partial(self._rotation_done, key))
            deadlines = [r.rotate_at for key, r in self._replicas.items()
                         if r.rotate_at is not None and not r.retiring
                         and key not in self._rotations and not (by_age and r.notice is None)]
            sleep_s = self._gap_poll_s if self.dedup is not None else None
            if deadlines:
                until = min(deadlines) - now
                sleep_s = until if sleep_s is None else min(sleep_s, until)
            self._wake_event.clear()
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(None if sleep_s is None else max(sleep_s, 0.001)):
                    await self._wake_event.wait()

    def _rotation_done(self, key: tuple[int, int], _task: asyncio.Task[None]) -> None:
        self._rotations.pop(key, None)
        self._wake()

    async def _rotate(self, old: _Replica) -> None:
        """Make before break: open the replacement, let it catch up, then close ``old``."""
        key = (old.group, old.index)
        old.rotate_at = None  # not picked again while this runs
        new = self._incoming[key] = self._start_replica(old.group, old.index)
        try:
            await new.client.wait_live(self._rotation_timeout_s)
            overlap_s = self._overlap_s
            cut_at = self._cut_at(old)
            if cut_at is not None:  # never overlap past the venue's cut
                overlap_s = min(overlap_s, max(0.0, (cut_at - self._clock()) / 2))
            if overlap_s:
                await asyncio.sleep(overlap_s)
        except asyncio.CancelledError:
            if self._incoming.pop(key, None) is new:
                self._retire(new, rotation=False)
            raise
        except Exception as exc:  # the replacement failed: keep the old one, retry later
            log.warning("%s: rotation of g%d.r%d failed (%s); retrying", self.name,
                        old.group, old.index, exc)
            if self._incoming.pop(key, None) is new:
                self._retire(new, rotation=False)
            old.rotate_at = self._clock() + max(1.0, self._overlap_s)
            return
        if self._incoming.pop(key, None) is not new:  # its group was unsubscribed meanwhile
            return
        if self._replicas.get(key) is not old:
            self._retire(new, rotation=False)
            return
        self._replicas[key] = new
        self._retire(old, rotation=True)
        self.rotations += 1
        log.info("%s: rotated g%d.r%d (%s)", self.name, old.group, old.index,
                 "venue notice" if old.notice is not None else "age")
