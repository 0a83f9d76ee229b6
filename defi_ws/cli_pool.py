"""``defi-ws tail ... --redundancy N`` / ``--pool``: tails on :class:`~defi_ws.FeedPool`.

One :class:`PoolTail` per pool: a URL with ``--topic`` (the generic protocol, and
de-duplication as ``--dedup-id``/``--dedup-hash`` say) or a venue spec (its adapter's
protocol, limits and de-duplication). Status lines on stderr, prefixed ``[defi-ws]``
(and the venue's label for a spec):

* per connection, labelled ``r0#3`` (replica 0, the pool's 3rd connection), the lines
  of a single-connection tail (:mod:`defi_ws.cli_tail`): ``connecting to URL
  (attempt N of M)``, ``live on URL (k/n connections live)``, ``attempt N failed:
  ...``, ``disconnected: ...``, ``next attempt in S s``, ``gave up ...``;
* once a connection is live, what the pool does (redundancy, de-duplication, rotation);
* ``rotated r0#1 -> r0#3`` after each make-before-break rotation;
* every ``--status-interval``, each connection's state and share of the messages;
* ``summary: ...`` at the end (with ``--stats``, a table of the connections).

A pool whose every connection gave up ends with ``defi-ws: error: every connection gave
up; ...`` and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws._compat import TimeoutErrors
from defi_ws.cli import (
    CliError,
    PoolWatch,
    _connection_label,
    _count,
    checked_url,
    parse_ping,
    pool_status_line,
    pool_summary,
    tail_handler,
)
from defi_ws.cli_tail import (
    TailWatch,
    connection_options,
    gap_line,
    reconnect_strategy,
    status_line,
)
from defi_ws.handler import DedupSpec, VenueLimits
from defi_ws.lifecycle import State
from defi_ws.report import format_duration

if TYPE_CHECKING:
    from defi_ws.pool import FeedPool
    from defi_ws.reasons import Disconnect

__all__ = ["PoolTail", "dedup_description", "flag_dedup", "run_tail_pool", "run_tail_pools"]


def flag_dedup(args: argparse.Namespace) -> DedupSpec | None:
    """The de-duplication of ``--dedup-id [--dedup-topic]`` or ``--dedup-hash``."""
    if args.dedup_id is not None:
        topic_field = "topic" if args.dedup_topic is None else (args.dedup_topic or None)
        return DedupSpec(id_field=args.dedup_id, topic_field=topic_field)
    if args.dedup_hash is not None:
        return DedupSpec(hash_field=args.dedup_hash)
    return None


def dedup_description(spec: DedupSpec | None) -> str:
    """How ``spec`` recognises a duplicate, for people."""
    if spec is None:
        return "nothing"
    parts = []
    if spec.id_field is not None:
        parts.append(f"id field {spec.id_field!r} " + (
            f"per topic field {spec.topic_field!r}" if spec.topic_field else "(one topic)"))
    if spec.hash_field is not None:
        parts.append(f"hash of field {spec.hash_field!r}")
    if spec.key_of is not None:
        parts.append(f"the key of {getattr(spec.key_of, '__qualname__', 'key_of')}()")
    return ", else ".join(parts) or "nothing"


class PoolTail:
    """One :class:`~defi_ws.FeedPool` of a tail and its status lines.

    Args:
        args: tail's arguments (``--redundancy``, ``--retries``, ``--stats``...).
        label: names the pool in status lines (a venue); ``""`` for a URL's.
        url: the endpoint, for status lines (shown redacted).
        handler: the pool's handler.
        topics: the topics.
        dedup: overrides ``handler.dedup`` (None: the handler's).
        limits: overrides ``handler.limits`` (None: the handler's).
        counter: has ``printed``, the data messages printed.
        client_options: FeedClient keyword arguments for every connection.
        wake: set when the tail's loop should look at once (a connection closed).

    Raises:
        CliError: the pool's configuration is invalid.
    """

    def __init__(self, args: argparse.Namespace, *, label: str, url: str, handler: Any,
                 topics: Sequence[str], dedup: DedupSpec | None, limits: VenueLimits | None,
                 counter: Any, client_options: dict[str, Any], wake: asyncio.Event) -> None:
        from defi_ws.errors import ConfigError
        from defi_ws.pool import FeedPool

        self.args = args
        self.label = label
        self.url = url
        self.counter = counter
        self.wake = wake
        self.disconnects: Counter[str] = Counter()
        self.went_live = False
        #: True once every connection of the pool closed for good.
        self.ended = False
        #: The first connection's give-up, labelled.
        self.first_give_up: str | None = None
        #: Each connection's status lines, by the pool's connection number (generation).
        self.watches: dict[int, TailWatch] = {}
        self._shares = PoolWatch()
        self._reported: set[int] = set()
        age_s = (limits or getattr(handler, "limits", None) or VenueLimits()).max_connection_age_s
        self.intro = (
            f"pool: redundancy {args.redundancy}, {len(topics)} topic(s), de-duplication on "
            f"{dedup_description(dedup or getattr(handler, 'dedup', None))}, rotation "
            + (f"before {format_duration(age_s)} of age and " if age_s else "")
            + f"on venue notices; status every {args.status_interval:g} s: each connection "
            "(replica#serial), its state and its share of the messages it delivered first "
            "since the previous status line")
        try:
            self.pool: FeedPool = FeedPool(
                handler,
                topics=topics,
                redundancy=args.redundancy,
                dedup=dedup,
                limits=limits,
                on_gap=lambda gap: self.say(gap_line(gap)),
                on_disconnected=self._disconnected,
                on_subscription_rejected=lambda topic, detail: self.say(
                    f"subscription {topic!r} rejected: {detail}"),
                client_options=client_options,
                connection_options=self._per_connection,
                name=f"tail.{label}" if label else "tail",
            )
        except ConfigError as exc:
            raise CliError(self.line(str(exc))) from None
        self.snap: dict[str, Any] = self.pool.snapshot()

    def line(self, text: str) -> str:
        """``text`` with the pool's label."""
        return f"{self.label}: {text}" if self.label else text

    def say(self, text: str) -> None:
        """One status line about the pool."""
        status_line(self.line(text))

    def _connection_line(self, connection: str, text: str) -> str:
        """``text`` about one connection (``r0#3``), with the pool's label."""
        return f"{self.label + ' ' if self.label else ''}{connection}: {text}"

    def _live_count(self) -> str:
        clients = self.pool.clients()
        live = sum(client.state is State.LIVE for client in clients)
        return f"{live}/{len(clients)} connections live"

    def _disconnected(self, disconnect: Disconnect) -> None:
        self.disconnects[disconnect.reason.label] += 1

    def _per_connection(self, group: int, replica: int, generation: int) -> dict[str, Any]:
        """One connection's callbacks: the status lines of a single-URL tail, labelled."""
        connection = _connection_label(
            {"group": group, "replica": replica, "generation": generation}, 2 if group else 1)

        def say(text: str) -> None:
            if text.startswith(("live on", "disconnected:")):
                text += f" ({self._live_count()})"
            status_line(self._connection_line(connection, text))

        watch = self.watches[generation] = TailWatch(self.url, self.args.retries, say,
                                                     proxy=self.args.proxy)

        def on_connected() -> None:
            if not self.went_live:  # said once there is a pool to speak of
                self.went_live = True
                self.say(self.intro)
            watch.on_connected()

        def on_disconnected(disconnect: Disconnect) -> None:
            watch.client = self.pool.connection(generation)  # for its next attempt's delay
            watch.on_disconnected(disconnect)

        def on_state_change(old: State, new: State) -> None:
            watch.on_state_change(old, new)
            if new is State.CLOSED:  # a connection that ends wakes the loop at once
                self.wake.set()

        return {"on_connected": on_connected, "on_disconnected": on_disconnected,
                "on_state_change": on_state_change,
                "on_gave_up": lambda _disconnect: self.wake.set()}

    def check(self, status_due: bool) -> bool:
        """Report give-ups and rotations (and the status line when due); True when every
        connection has closed for good."""
        snap = self.snap = self.pool.snapshot()
        clients = self.pool.clients()  # same order as snap["connections"]
        groups = int(snap["groups"])
        for conn, client in zip(snap["connections"], clients, strict=False):
            generation = conn["generation"]
            if client.fatal is not None and generation not in self._reported:
                self._reported.add(generation)
                outcome = self._connection_line(
                    _connection_label(conn, groups),
                    self.watches[generation].gave_up(client.fatal.disconnect))
                self.first_give_up = self.first_give_up or outcome
                status_line(outcome)
        if clients and all(client.state is State.CLOSED for client in clients):
            self.ended = True  # every connection gave up (or the venue ended them)
            return True
        for change in self._shares.rotated(snap):
            self.say(f"rotated {change} (make-before-break; {snap['rotations']} "
                     "rotation(s) so far)")
        if status_due:
            self.say(pool_status_line(snap, self._shares, self.counter.printed))
            if self.args.stats:
                self.say(orjson.dumps(snap).decode())
        return False

    def finish(self, stopped: bool, elapsed_s: float) -> str | None:
        """Print the pool's summary; return its error line (every connection gave up),
        if any."""
        error = (f"every connection{' of ' + self.label if self.label else ''} gave up; "
                 f"{self.first_give_up}"
                 if self.ended and self.first_give_up is not None else None)
        snap = self.snap
        disconnects = ", ".join(f"{reason} {count}" for reason, count
                                in self.disconnects.most_common()) or "none"
        if not self.went_live:
            if stopped:  # Ctrl-C before any connection went LIVE
                self.say(f"summary: never live; {snap['connections_opened']} connection(s) "
                         f"opened in {elapsed_s:.1f} s, disconnects {disconnects}")
            return error
        self.say(f"summary: {self.counter.printed:,} messages, "
                 f"{_count(snap['duplicates_dropped'])} duplicates dropped, "
                 f"{snap['rotations']} rotations, {snap['connections_opened']} connections "
                 f"opened, {snap['gaps']} gaps, disconnects {disconnects}")
        if self.args.stats:
            lines = pool_summary(snap, self.disconnects)
            self.say(f"pool snapshot: {lines[0]}")
            for line in lines[1:]:
                self.say(line)
        return error


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The FeedClient keyword arguments every connection of a tail's pools shares."""
    return {
        "stale_after_s": args.stale_after,
        "reconnect": reconnect_strategy(args.retries),
        "stable_after_s": 0.0,  # a connection that went LIVE resets the count
        **connection_options(args, status_line),
    }


async def run_tail_pool(args: argparse.Namespace) -> int:
    """Tail a :class:`~defi_ws.FeedPool` of ``args.url`` and ``--topic`` until Ctrl-C (or
    --duration); return the exit status."""
    url = checked_url(args.url)
    options = {"heartbeat": parse_ping(args.ping or "ws"), **client_options(args)}
    handler = tail_handler(url, args.format, sys.stdout.buffer, topics=True)
    wake = asyncio.Event()
    tail = PoolTail(args, label="", url=url, handler=handler, topics=args.topic,
                    dedup=flag_dedup(args),
                    limits=VenueLimits(max_connection_age_s=args.max_age), counter=handler,
                    client_options=options, wake=wake)
    return await run_tail_pools(args, [tail], wake)


async def run_tail_pools(args: argparse.Namespace, tails: Sequence[PoolTail],
                         wake: asyncio.Event) -> int:
    """Run ``tails`` until Ctrl-C, ``--duration`` or every connection of every pool
    closed; print their summaries; return the exit status (1 when a pool's every
    connection gave up).

    Args:
        args: tail's arguments.
        tails: the pools (not started).
        wake: the event their connections set when one closes.
    """
    out = sys.stdout.buffer
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    started = loop.time()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for tail in tails:
                await stack.enter_async_context(tail.pool)
            deadline = None if args.duration is None else loop.time() + args.duration
            next_status = loop.time() + args.status_interval
            while not stop.is_set():
                wake.clear()
                now = loop.time()
                due = now >= next_status
                if due:
                    next_status = now + args.status_interval
                ended = [tail.check(due) for tail in tails]
                if all(ended):
                    break
                out.flush()
                if deadline is not None and now >= deadline:
                    break
                timeout = 0.25 if deadline is None else min(0.25, max(0.0, deadline - now))
                with contextlib.suppress(*TimeoutErrors):
                    await asyncio.wait_for(wake.wait(), timeout)
            for tail in tails:  # before the pools stop: their connections
                tail.snap = tail.pool.snapshot()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(OSError):
            out.flush()
    errors = [tail.finish(stop.is_set(), loop.time() - started) for tail in tails]
    for error in errors:
        if error is not None:
            print(f"defi-ws: error: {error}", file=sys.stderr, flush=True)
    return 1 if any(errors) else 0
