"""``defi-ws demo`` (``make demo``): a live terminal dashboard of a feed under faults.

Two embedded venue simulators, no network:

* a :class:`~defi_ws.FeedClient` ("feed") on the first, with a heartbeat, a stale
  clock and gap detection; every few seconds the demo injects the next fault of
  :data:`FAULTS` (every kind the simulator has, in a cycle) and the event log shows it
  with what the client made of it: the classified disconnect reason, the retry, the
  recovery and its time, the gap and its range, the counted decode error;
* a :class:`~defi_ws.FeedPool` ("pool") with redundancy 2 on the second, whose venue
  cuts connections at a scaled-down age (:data:`POOL_MAX_AGE_S`) after a shutdown
  notice: the pool rotates each connection before it (make-before-break); the demo
  also drops one of its connections now and then. Each message reaches the user once.

On a terminal the dashboard (``rich``) redraws in place: connections and their states,
message rates, heartbeat RTT p50/p99, gaps, duplicates dropped, rotations, and the
scrolling event log. In a pipe (or with ``--plain``, or without ``rich``) it prints one
line per event instead. It runs until Ctrl-C (or ``--duration``, ``--cycles``), then
prints a summary table and exits 0.

Under ``make``, Ctrl-C would reach make too (``make: *** [demo] Interrupt``): the
demo takes the terminal's foreground for its own process group while it runs, so only
it sees the Ctrl-C, and gives it back at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAULTS", "POOL_MAX_AGE_S", "Fault", "run_demo"]

TOPICS = ["trades.BTC-USD", "trades.ETH-USD", "trades.SOL-USD"]

#: The pool's venue cuts every connection at this age (seconds, scaled down from
#: Binance's 24 h); the pool rotates each one before it, make-before-break.
POOL_MAX_AGE_S = 6.0

#: Largest message the demo's feed accepts (the ``oversized`` fault sends more).
MAX_MESSAGE_SIZE = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """One kind of fault the demo injects into the feed's venue.

    Attributes:
        name: the simulator's name for it.
        what: what the venue does, for the event log.
        expect: what the client should make of it (shown in ``--help`` and docs).
    """

    name: str
    what: str
    expect: str


#: Every fault kind of the simulator, in the order the demo cycles through them.
FAULTS: tuple[Fault, ...] = (
    Fault("drop", "resets every connection (TCP RST)", "transport_error"),
    Fault("close", "sends CLOSE 1011 to every connection", "peer_close (code 1011)"),
    Fault("maintenance", "closes every connection with 1001, refuses upgrades with 503 "
          "for 1 s", "peer_close (code 1001), then handshake_rejected (HTTP 503)"),
    Fault("reject_handshake", "resets every connection and answers the next upgrade with "
          "429, Retry-After 1 s", "transport_error, then handshake_rejected (HTTP 429), "
          "Retry-After honoured"),
    Fault("silence", "goes half-open: TCP up, nothing sent (no data, no pongs)",
          "ping_timeout or stale"),
    Fault("withhold_pongs", "stops answering pings (data still flows)", "ping_timeout"),
    Fault("garbage", "writes bytes that are no WebSocket frame", "protocol_error (1002)"),
    Fault("invalid_utf8", "sends a text frame that is not UTF-8", "protocol_error (1007)"),
    Fault("stray_continuation", "sends a continuation frame that continues nothing",
          "protocol_error (1002)"),
    Fault("oversized", f"sends a 100 KB frame (the feed's limit: {MAX_MESSAGE_SIZE // 1024} "
          "KiB)", "protocol_error (1009)"),
    Fault("invalid_json", "sends a text frame that is not JSON",
          "a counted decode error; the connection stays LIVE"),
    Fault("sequence_gap", "skips 3 sequence numbers on one topic", "a gap with its range"),
    Fault("stall", "withholds data from the connection for 0.6 s (TCP and pongs fine)",
          "a gap with its range when data resumes"),
    Fault("delay_pongs", "answers pings 80 ms late for 2 s", "RTT p99 up; stays LIVE"),
    Fault("slow_handshake", "resets every connection and holds the next upgrades for "
          "2.5 s (the feed's connect timeout: 1 s)", "transport_error, then "
          "connect_failed (timed out)"),
)


#: The faults that end the feed's connection (the demo waits for that before going on).
DISCONNECTING = frozenset({
    "drop", "close", "maintenance", "reject_handshake", "silence", "withhold_pongs",
    "garbage", "invalid_utf8", "stray_continuation", "oversized", "slow_handshake"})


@dataclass
class Event:
    """One line of the event log."""

    t: float
    source: str
    text: str
    style: str = ""


@dataclass
class FeedStats:
    """What the demo saw of the single feed."""

    messages: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    missing: int = 0
    recoveries: list[float] = field(default_factory=list)
    down_since: float | None = None
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)


class Demo:
    """The running demo: simulators, the feed, the pool, the event log and the view."""

    def __init__(self, args: argparse.Namespace, *, live: bool) -> None:
        self.args = args
        self.live_view = live
        self.started = time.monotonic()
        self.events: deque[Event] = deque(maxlen=14)
        self.feed = FeedStats()
        self.fault_counts: Counter[str] = Counter()
        self.current_fault: str | None = None
        self.cycles_done = 0
        self.pool_received = 0
        self.pool_twice = 0
        self.pool_last: dict[str, int] = {}
        self.pool_disconnects: Counter[str] = Counter()
        self.pool_gaps = 0
        self.rotations_seen: list[str] = []
        self.stop = asyncio.Event()
        self.console: Any = None
        self._rates: dict[str, float] = {}
        self._last_counts: dict[str, int] = {}
        self._last_rate_t = self.started

    # ------------------------------------------------------------------ events

    def now(self) -> float:
        return time.monotonic() - self.started

    def log(self, source: str, text: str, style: str = "") -> None:
        """Add an event; in plain mode print it as one line at once."""
        event = Event(self.now(), source, text, style)
        self.events.append(event)
        if not self.live_view:
            print(f"{event.t:7.2f}s  {source:<6} {text}", flush=True)

    # ------------------------------------------------------------------ feed callbacks

    def on_data(self, message: Any) -> None:
        self.feed.messages += 1
        self.feed.per_topic[message.get("topic", "?")] += 1

    def on_disconnected(self, disconnect: Any) -> None:
        label = disconnect.reason.label
        if label == "local_stop":
            return
        self.feed.disconnects[label] += 1
        if self.current_fault is not None:
            self.feed.outcomes.setdefault(self.current_fault, Counter())[label] += 1
        if self.feed.down_since is None:
            self.feed.down_since = time.monotonic()
            self.log("feed", f"disconnected: {disconnect.describe()}", "red")
        else:
            self.log("feed", f"attempt failed: {disconnect.describe()}", "red")
        snap = self.client.snapshot()
        if snap["backoff_s"] is not None:
            retry_after = snap["retry_after_s"]
            self.log("feed", f"retry in {snap['backoff_s']:.2f} s" + (
                f" (>= the venue's Retry-After {retry_after:g} s)"
                if retry_after is not None else ""), "yellow")

    def on_connected(self) -> None:
        down = self.feed.down_since
        if down is None:
            self.log("feed", f"LIVE on {self.sim.url}, {len(TOPICS)} topics confirmed",
                     "green")
            return
        took = time.monotonic() - down
        self.feed.down_since = None
        self.feed.recoveries.append(took)
        self.log("feed", f"recovered: LIVE again after {took:.2f} s, every topic "
                         "re-subscribed", "green")

    def on_gap(self, gap: Any) -> None:
        self.feed.gaps += 1
        self.feed.missing += gap.size
        if self.current_fault is not None:
            self.feed.outcomes.setdefault(self.current_fault, Counter())["gap"] += 1
        where = " (across a reconnect)" if gap.across_reconnect else ""
        self.log("feed", f"gap on {gap.topic}: {gap.size} missing, seq {gap.first_missing}.."
                         f"{gap.last_missing}{where}", "magenta")

    # ------------------------------------------------------------------ pool callbacks

    def on_pool_data(self, message: Any) -> None:
        self.pool_received += 1
        topic, seq = message.get("topic", "?"), message.get("seq", 0)
        last = self.pool_last.get(topic, 0)
        if seq <= last:
            self.pool_twice += 1
        else:
            self.pool_last[topic] = seq

    def on_pool_disconnect(self, disconnect: Any) -> None:
        self.pool_disconnects[disconnect.reason.label] += 1
        live = sum(c.state.name == "LIVE" for c in self.pool.clients())
        self.log("pool", f"a connection lost: {disconnect.describe()}; {live}/2 live, the "
                         "other carries the feed", "red")

    def on_pool_gap(self, gap: Any) -> None:
        self.pool_gaps += 1
        self.log("pool", f"gap on {gap.topic}: {gap.size} missing, seq {gap.first_missing}.."
                         f"{gap.last_missing} (no connection had them)", "magenta")

    # ------------------------------------------------------------------ faults

    async def inject(self, fault: Fault) -> None:
        """Inject one fault into the feed's venue (switch-like ones are undone later)."""
        sim = self.sim
        self.current_fault = fault.name
        self.fault_counts[fault.name] += 1
        self.log("fault", f"{fault.name}: the venue {fault.what}", "bold")
        disconnects = sum(self.feed.disconnects.values())
        gaps = self.feed.gaps
        if fault.name == "drop":
            sim.drop_all()
        elif fault.name == "close":
            sim.close_all(1011, "internal error")
        elif fault.name == "maintenance":
            sim.maintenance(refuse_s=1.0)
        elif fault.name == "reject_handshake":
            sim.reject_handshakes(429, retry_after_s=1, count=1)
            sim.drop_all()
        elif fault.name in ("silence", "withhold_pongs"):
            switch = sim.silence if fault.name == "silence" else sim.withhold_pongs
            switch(True)
            try:
                await self.wait_disconnect(8.0)
            finally:
                switch(False)
        elif fault.name == "garbage":
            sim.send_garbage()
        elif fault.name == "invalid_utf8":
            sim.send_invalid_utf8()
        elif fault.name == "stray_continuation":
            sim.send_stray_continuation()
        elif fault.name == "oversized":
            sim.send_oversized(100_000)
        elif fault.name == "invalid_json":
            errors = self.client.snapshot()["errors"]["decode"]
            sim.send_invalid_json()
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: self.client.snapshot()["errors"]["decode"] > errors, 3)
                entry = self.client.snapshot()["recent_errors"][-1]
                self.feed.outcomes.setdefault(fault.name, Counter())["decode_error"] += 1
                self.log("feed", f"decode error counted, connection stays LIVE: "
                                 f"{entry['message'][:100]}", "yellow")
        elif fault.name == "sequence_gap":
            sim.sequence_gap(TOPICS[1], 3)
        elif fault.name == "stall":
            conns = sim.connections
            if conns:
                sim.stall(conns[0])
                await asyncio.sleep(0.6)
                sim.resume(conns[0])
        elif fault.name == "delay_pongs":
            sim.delay_pongs(0.08)
            await asyncio.sleep(2.0)
            sim.delay_pongs(0)
            rtt = self.client.snapshot()["rtt"]
            self.feed.outcomes.setdefault(fault.name, Counter())["rtt_up"] += 1
            self.log("feed", f"stays LIVE; heartbeat RTT p99 now {_ms(rtt['p99_ms'])}",
                     "yellow")
        elif fault.name == "slow_handshake":
            sim.slow_handshake(2.5)
            sim.drop_all()
            try:
                await self.until(lambda: self.feed.disconnects["connect_failed"] > 0
                                 and self.client.state.name == "BACKOFF", 10)
            except TimeoutError:
                pass
            finally:
                sim.slow_handshake(0)
        # Its outcome before anything else happens (the next fault waits for LIVE).
        if fault.name in DISCONNECTING:
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: sum(self.feed.disconnects.values()) > disconnects, 10)
        elif fault.name in ("sequence_gap", "stall"):
            with contextlib.suppress(TimeoutError):
                await self.until(lambda: self.feed.gaps > gaps, 10)

    async def inject_pool_fault(self, index: int) -> None:
        conns = self.pool_sim.connections
        if not conns:
            return
        if index % 2 == 0:
            self.log("fault", "pool venue: resets one of the pool's two connections", "bold")
            self.pool_sim.drop(conns[0])
        else:
            self.log("fault", "pool venue: announces a shutdown of one connection in 1 s",
                     "bold")
            self.pool_sim.announce_shutdown(conns[-1], cut_after_s=1.0)

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        from defi_ws import _compat

        async with _compat.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.02)

    async def wait_disconnect(self, timeout_s: float) -> None:
        before = sum(self.feed.disconnects.values())
        with contextlib.suppress(TimeoutError):
            await self.until(lambda: sum(self.feed.disconnects.values()) > before, timeout_s)

    async def fault_loop(self) -> None:
        """Inject the next fault once the feed is LIVE again and the interval passed."""
        interval = self.args.fault_interval
        index = 0
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(TimeoutError):  # a fault that did not heal in time
                await self.until(lambda: self.client.state.name == "LIVE", 30)
            fault = FAULTS[index % len(FAULTS)]
            await self.inject(fault)
            await self.inject_pool_fault(index)
            index += 1
            if index % len(FAULTS) == 0:
                # The last fault's outcome (its recovery) belongs to this cycle.
                with contextlib.suppress(TimeoutError):
                    await self.until(lambda: self.client.state.name == "LIVE", 30)
                await asyncio.sleep(min(interval, 1.0))
                self.cycles_done += 1
                self.log("demo", f"cycle {self.cycles_done} done: all {len(FAULTS)} fault "
                                 "kinds injected", "bold")
                if self.args.cycles and self.cycles_done >= self.args.cycles:
                    self.stop.set()
                    return

    # ------------------------------------------------------------------ view

    def rates(self) -> dict[str, float]:
        """Messages/s per connection since the last call (at most every 0.5 s)."""
        now = time.monotonic()
        dt = now - self._last_rate_t
        if dt < 0.5 and self._rates:
            return self._rates
        counts = {"feed": self.feed.messages}
        for conn in self.pool.snapshot()["connections"]:
            counts[f"pool#{conn['generation']}"] = conn["messages"] + conn["duplicates"]
        self._rates = {key: max(0, value - self._last_counts.get(key, value)) / max(dt, 1e-9)
                       for key, value in counts.items()}
        self._last_counts = counts
        self._last_rate_t = now
        return self._rates

    def render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        rates = self.rates()
        snap = self.client.snapshot()
        pool = self.pool.snapshot()
        wide = self.console is None or self.console.width >= 110
        table = Table(expand=True, show_edge=False, pad_edge=False)
        columns = ["connection", "state", "msg/s", "messages", "RTT p50/p99 ms", "gaps",
                   "reconnects"] + (["note"] if wide else [])
        for column in columns:
            table.add_column(column, no_wrap=column != "note", justify=(
                "left" if column in ("connection", "state", "note") else "right"))
        state = snap["state"]
        row: list[Text | str] = [
            "feed", Text(state, style=_state_style(state)), f"{rates.get('feed', 0):,.0f}",
            f"{self.feed.messages:,}", _rtt(snap["rtt"]), f"{self.feed.gaps}",
            f"{snap['reconnects']}"]
        last = self.client.last_disconnect
        table.add_row(*row, *([f"last disconnect: {last.reason.label if last else '-'}"]
                              if wide else []))
        for conn in pool["connections"]:
            rotate = conn["rotate_in_s"]
            row = [f"pool r{conn['replica']}#{conn['generation']}",
                   Text(conn["state"], style=_state_style(conn["state"])),
                   f"{rates.get('pool#' + str(conn['generation']), 0):,.0f}",
                   f"{conn['messages']:,}", _rtt(conn["rtt"]), "", ""]
            note = (f"{conn['duplicates']:,} dups dropped, age {conn['age_s']:.1f} s"
                    + (f", rotation in {rotate:.1f} s" if rotate is not None else ""))
            table.add_row(*row, *([note] if wide else []))
        totals = Text.assemble(
            ("pool: ", "bold"),
            f"{self.pool_received:,} delivered once, "
            f"{pool['duplicates_dropped'] or 0:,} duplicates dropped before decode, "
            f"{pool['rotations']} rotations, {self.pool_gaps} gaps, "
            f"{sum(self.pool_disconnects.values())} connections lost, "
            f"{self.pool_twice} delivered twice")
        log = Table.grid(padding=(0, 1))
        for event in self.events:
            log.add_row(f"{event.t:7.2f}s", Text(event.source, style="bold"),
                        Text(event.text, style=event.style))
        faults = "off" if self.args.no_faults else (
            f"every {self.args.fault_interval:g} s, {len(FAULTS)} kinds in a cycle "
            f"({sum(self.fault_counts.values())} so far)")
        header = Text.assemble(
            ("defi-ws demo", "bold"), f"  {self.now():.0f} s   feed on {self.sim.url}, pool "
            f"(redundancy 2, venue cuts at {POOL_MAX_AGE_S:g} s) on {self.pool_sim.url}   "
            f"faults: {faults}   ", ("Ctrl-C", "bold"), " for the summary")
        return Group(header, table, totals,
                     Panel(log, title="events", title_align="left", border_style="dim"))

    def plain_status(self) -> str:
        snap = self.client.snapshot()
        pool = self.pool.snapshot()
        rates = self.rates()
        conns = " ".join(f"r{c['replica']}#{c['generation']} {c['state']}"
                         for c in pool["connections"])
        return (f"feed {snap['state']} {rates.get('feed', 0):,.0f} msg/s, {self.feed.messages:,}"
                f" msgs, RTT p50 {_ms(snap['rtt']['p50_ms'])} p99 {_ms(snap['rtt']['p99_ms'])},"
                f" {self.feed.gaps} gaps, {snap['reconnects']} reconnects | pool {conns}, "
                f"{pool['duplicates_dropped'] or 0:,} dups dropped, {pool['rotations']} "
                "rotations")

    def summary_rows(self) -> list[tuple[str, str]]:
        snap = self.client.snapshot()
        rtt = snap["rtt"]
        took = self.now()
        recoveries = sorted(self.feed.recoveries)
        rows = [
            ("ran for", f"{took:.1f} s"),
            ("feed messages", f"{self.feed.messages:,} ({self.feed.messages / took:,.0f}/s)"),
            ("feed reconnects", f"{snap['reconnects']}"),
            ("feed disconnects", ", ".join(
                f"{reason} {count}" for reason, count in self.feed.disconnects.most_common())
             or "none"),
            ("recovery time", "-" if not recoveries else
             f"median {recoveries[len(recoveries) // 2]:.2f} s, max {recoveries[-1]:.2f} s "
             f"({len(recoveries)} recoveries)"),
            ("sequence gaps", f"{self.feed.gaps} ({self.feed.missing:,} messages missing)"),
            ("heartbeat RTT", f"p50 {_ms(rtt['p50_ms'])}, p99 {_ms(rtt['p99_ms'])}, max "
                              f"{_ms(rtt['max_ms'])} ({rtt['count']:,} pongs)"),
            ("decode errors", f"{snap['errors']['decode']}"),
        ]
        for fault in FAULTS:
            if self.fault_counts[fault.name]:
                seen = self.feed.outcomes.get(fault.name, Counter())
                rows.append((f"fault {fault.name}", f"x{self.fault_counts[fault.name]}: "
                             + (", ".join(f"{k} {v}" for k, v in seen.most_common())
                                or "no effect seen")))
        pool = self.pool_final
        rows += [
            ("pool delivered", f"{self.pool_received:,} (each once)"),
            ("pool duplicates dropped", f"{pool['duplicates_dropped'] or 0:,}"),
            ("pool rotations", f"{pool['rotations']} (venue notices "
                               f"{self.pool_sim.shutdown_notices}, cut by the venue "
                               f"{self.pool_sim.shutdown_cuts})"),
            ("pool connections lost", ", ".join(
                f"{reason} {count}" for reason, count in self.pool_disconnects.most_common())
             or "none"),
            ("pool gaps", f"{self.pool_gaps}"),
            ("pool delivered twice", f"{self.pool_twice}"),
        ]
        return rows

    def print_summary(self) -> None:
        rows = self.summary_rows()
        if self.console is not None:
            from rich.table import Table

            table = Table(title="defi-ws demo summary", show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                table.add_row(label, value)
            self.console.print(table)
            return
        print("\nsummary")
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"  {label:<{width}}  {value}")
        sys.stdout.flush()

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        from defi_ws.client import FeedClient
        from defi_ws.handler import JsonHandler, VenueLimits
        from defi_ws.heartbeat import WsPing
        from defi_ws.pool import FeedPool
        from defi_ws.reconnect import ExponentialBackoff
        from defi_ws.testing import ExchangeSimulator

        args = self.args
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            async with ExchangeSimulator(rate_per_s=args.rate) as self.sim, ExchangeSimulator(
                rate_per_s=args.rate, max_connection_age_s=POOL_MAX_AGE_S,
                notice_before_s=1.0,
            ) as self.pool_sim:
                self.client = FeedClient(
                    JsonHandler(self.sim.url, on_data=self.on_data, sequence_field="seq"),
                    topics=TOPICS,
                    reconnect=ExponentialBackoff(initial_s=0.2, max_s=2.0),
                    heartbeat=WsPing(interval_s=0.25, timeout_s=1.0),
                    stale_after_s=1.5, connect_timeout_s=1.0,
                    stable_after_s=0.5,  # LIVE for 0.5 s: the next backoff starts small
                    max_message_size=MAX_MESSAGE_SIZE,
                    on_connected=self.on_connected, on_disconnected=self.on_disconnected,
                    on_gap=self.on_gap, name="demo")
                self.pool = FeedPool(
                    JsonHandler(self.pool_sim.url, on_data=self.on_pool_data,
                                sequence_field="seq",
                                limits=VenueLimits(max_connection_age_s=POOL_MAX_AGE_S)),
                    topics=TOPICS, redundancy=2, rotate_before_s=2.0, rotation_jitter_s=0.5,
                    rotation_overlap_s=0.25, on_disconnected=self.on_pool_disconnect,
                    on_gap=self.on_pool_gap,
                    client_options={"reconnect": ExponentialBackoff(initial_s=0.2, max_s=2.0),
                                    "heartbeat": WsPing(interval_s=0.5, timeout_s=2.0)},
                    name="demo-pool")
                self.pool_final = self.pool.snapshot()
                if not self.live_view:
                    self.print_intro()
                async with self.client, self.pool:
                    tasks = [asyncio.ensure_future(self.watch_loop())]
                    if not args.no_faults:
                        tasks.append(asyncio.ensure_future(self.fault_loop()))
                    try:
                        if self.live_view:
                            await self.live_loop()
                        else:
                            await self.plain_loop()
                    finally:
                        for task in tasks:
                            task.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                        self.pool_final = self.pool.snapshot()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.print_summary()
        return 0

    def print_intro(self) -> None:
        print(f"defi-ws demo: a FeedClient on {self.sim.url} ({', '.join(TOPICS)}), a FeedPool "
              f"with redundancy 2 on {self.pool_sim.url} (that venue cuts connections at "
              f"{POOL_MAX_AGE_S:g} s of age, 1 s after a notice; the pool rotates them first)")
        faults = "off" if self.args.no_faults else (
            f"one every {self.args.fault_interval:g} s once the feed is LIVE, in a cycle: "
            + ", ".join(f.name for f in FAULTS))
        print(f"faults: {faults}")
        print("one line per event (time since start, source, what happened); a status line "
              "every 5 s; Ctrl-C for the summary", flush=True)

    async def wait_stop(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; True once the demo should stop."""
        deadline = self.args.duration
        if deadline is not None:
            timeout_s = min(timeout_s, max(0.0, deadline - self.now()))
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout_s)
        return self.stop.is_set() or (deadline is not None and self.now() >= deadline)

    async def plain_loop(self) -> None:
        while not await self.wait_stop(5.0):
            self.log("status", self.plain_status())

    async def live_loop(self) -> None:
        from rich.live import Live

        with Live(self.render(), console=self.console, refresh_per_second=4,
                  transient=False, redirect_stderr=False) as live:
            while not await self.wait_stop(0.25):
                live.update(self.render())
            live.update(self.render())

    async def watch_loop(self) -> None:
        """Rotations of the pool, as events (the pool has no callback for them)."""
        generations: dict[int, int] = {}
        rotations = 0
        while True:
            await asyncio.sleep(0.1)
            snap = self.pool.snapshot()
            if snap["rotations"] > rotations:
                rotations = snap["rotations"]
                seen = {c["replica"]: c["generation"] for c in snap["connections"]}
                moved = [f"r{replica}#{generations[replica]} -> r{replica}#{generation}"
                         for replica, generation in seen.items()
                         if replica in generations and generations[replica] != generation]
                self.log("pool", f"rotated {', '.join(moved) or 'a connection'} "
                                 "(make-before-break: the replacement was LIVE first)", "cyan")
            generations = {c["replica"]: c["generation"] for c in snap["connections"]}


def _ms(value: float | None) -> str:
    from defi_ws.report import format_ms

    return format_ms(value)


def _rtt(rtt: Mapping[str, Any]) -> str:
    """``0.142 / 0.310`` (ms), ``-`` before the first pong."""
    if not rtt.get("count"):
        return "-"
    return f"{rtt['p50_ms']:.3f} / {rtt['p99_ms']:.3f}"


def _state_style(state: str) -> str:
    return {"LIVE": "green", "BACKOFF": "yellow", "CLOSED": "red"}.get(state, "cyan")


@contextlib.contextmanager
def terminal_foreground() -> Iterator[None]:
    """While the block runs, make this process's own group the terminal's foreground
    group, when it runs in a group led by another process (``make demo``): Ctrl-C then
    reaches only this process, not make (no ``make: *** Interrupt``)."""
    try:
        fd = sys.stdin.fileno()
        taken = (os.isatty(fd) and os.getpgrp() != os.getpid()
                 and os.tcgetpgrp(fd) == os.getpgrp() and "MAKELEVEL" in os.environ)
    except (OSError, ValueError):
        taken = False
    if not taken:
        yield
        return
    previous = os.tcgetpgrp(fd)
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from a background group
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        signal.signal(signal.SIGTTOU, old)
        yield
        return
    signal.signal(signal.SIGTTOU, old)
    try:
        yield
    finally:
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, previous)
        signal.signal(signal.SIGTTOU, old)


async def run_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C, ``--duration`` or ``--cycles``; return the exit status."""
    live = sys.stdout.isatty() and not args.plain
    console = None
    if live:
        try:
            from rich.console import Console
        except ImportError:
            print("defi-ws demo: `rich` is not installed, so no live dashboard: "
                  "pip install 'defi-ws[demo]'; one line per event instead", flush=True)
            live = False
        else:
            console = Console()
    if args.verbose:  # above the live view, or as lines of their own on stderr
        handler: logging.Handler
        if console is not None:
            from rich.logging import RichHandler

            handler = RichHandler(console=console, show_path=False)
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logging.getLogger("defi_ws").addHandler(handler)
        logging.getLogger("defi_ws").setLevel(logging.INFO)
    demo = Demo(args, live=live)
    demo.console = console
    with terminal_foreground():
        return await demo.run()


def fault_table() -> Mapping[str, str]:
    """Each fault kind and what the client should make of it."""
    return {fault.name: fault.expect for fault in FAULTS}
