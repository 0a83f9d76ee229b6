"""Soak: one FeedClient against the simulator's random faults, plus counted sequence gaps.

Runs ``DEFI_WS_SOAK_S`` seconds (default 30; ``make soak`` runs 600) on uvloop only:
it checks the client's long-run behaviour, not the event loop. At the end:

* no subscription is lost: the client's desired and confirmed topics and the
  simulator's view of the connection are the five topics;
* every sequence gap the test injected itself was reported through ``on_gap``
  (a reported gap may be wider: messages in flight on a dropped connection are lost
  too, and are reported as well);
* memory is bounded: VmRSS grows less than 5 MB between the end of the warm-up and
  the end of the run;
* no task (autouse fixture) and no file descriptor is left behind.

Run with ``-s`` to see the fault and disconnect tallies.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from collections import Counter

import pytest

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import WsPing
from defi_ws.lifecycle import State
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap
from defi_ws.testing import ExchangeSimulator
from tests.conftest import open_fds

SOAK_S = float(os.environ.get("DEFI_WS_SOAK_S", "30"))
WARMUP_S = min(10.0, SOAK_S / 3)
FAULT_INTERVAL_S = 0.5
GAP_INTERVAL_S = 0.3
MAX_RSS_GROWTH_KB = 5 * 1024
TOPICS = ("trades.BTC", "trades.ETH", "trades.SOL", "book.BTC", "book.ETH")
SEED = int(os.environ.get("DEFI_WS_SOAK_SEED", "20240501"))


def rss_kb() -> int:
    """This process's resident set size in kB (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def covered(gaps: list[Gap], topic: str, first: int, last: int) -> bool:
    """Whether the reported gaps of ``topic`` cover every number in ``first..last``."""
    spans = sorted((g.first_missing, g.last_missing) for g in gaps if g.topic == topic)
    need = first
    for lo, hi in spans:
        if lo > need:
            break
        need = max(need, hi + 1)
        if need > last:
            return True
    return need > last


class GapInjector:
    """Injects sequence gaps on subscribed topics and remembers the numbers it skipped."""

    def __init__(self, sim: ExchangeSimulator, client: FeedClient, rng: random.Random) -> None:
        self.sim = sim
        self.client = client
        self.rng = rng
        #: (topic, first skipped, last skipped)
        self.injected: list[tuple[str, int, int]] = []
        self._outstanding: dict[str, int] = {}  # topic -> last_seq when injected

    def _idle_topics(self) -> list[str]:
        ready = []
        for topic in TOPICS:
            last = self.sim.last_seq.get(topic)
            if last is None or self.client.sequences.last(topic) is None:
                continue  # a gap before the first message is not a gap
            pending = self._outstanding.get(topic)
            if pending is not None and last <= pending:
                continue  # the previous injection has not been emitted yet
            ready.append(topic)
        return ready

    def inject_one(self) -> None:
        topics = self._idle_topics()
        if not topics:
            return
        topic = self.rng.choice(topics)
        skip = self.rng.randint(1, 5)
        last = self.sim.last_seq[topic]
        self.sim.sequence_gap(topic, skip)
        self._outstanding[topic] = last
        self.injected.append((topic, last + 1, last + skip))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(GAP_INTERVAL_S)
            self.inject_one()

    def delivered(self) -> bool:
        """Whether the client has seen a message past every injected gap."""
        for topic, _first, last in self.injected:
            seen = self.client.sequences.last(topic)
            if seen is None or seen <= last:
                return False
        return True


@pytest.mark.soak
@pytest.mark.asyncio(loop_factories=["uvloop"])
@pytest.mark.timeout(SOAK_S + 180)
async def test_soak_random_faults() -> None:
    rng = random.Random(SEED)
    gaps: list[Gap] = []
    reasons: Counter[str] = Counter()
    async with ExchangeSimulator(rate_per_s=20, seed=SEED, close_timeout_s=0.5) as sim:
        fds_before = open_fds()
        client = FeedClient(
            JsonHandler(sim.url, sequence_field="seq"),
            topics=TOPICS,
            reconnect=FixedDelay(0.1),
            heartbeat=WsPing(0.3, 0.3),
            tick_s=0.05,
            connect_timeout_s=1.0,
            auth_timeout_s=1.0,
            ack_timeout_s=1.0,
            close_timeout_s=0.3,
            on_gap=gaps.append,
            on_disconnected=lambda d: reasons.update([d.reason.label]),
        )
        injector = GapInjector(sim, client, random.Random(SEED + 1))
        async with client:
            await client.wait_live(10)
            sim.random_faults(rng, FAULT_INTERVAL_S)
            gap_task = asyncio.create_task(injector.run(), name="soak-gaps")
            started = time.monotonic()
            rss_warm: int | None = None
            live_samples = samples = 0
            try:
                while (elapsed := time.monotonic() - started) < SOAK_S:
                    await asyncio.sleep(0.25)
                    samples += 1
                    live_samples += client.state is State.LIVE
                    if rss_warm is None and elapsed >= WARMUP_S:
                        gc.collect()
                        rss_warm = rss_kb()
                    assert not gap_task.done(), gap_task
            finally:
                gap_task.cancel()
                await asyncio.gather(gap_task, return_exceptions=True)
                await sim.stop_random_faults()
            sim.silence(False)
            sim.withhold_pongs(False)
            sim.end_maintenance()

            # Quiet again: the feed settles with everything subscribed.
            await client.wait_live(15)
            try:
                await sim.wait_for(
                    lambda: len(sim.connections) == 1
                    and sim.connections[0].topics == set(TOPICS),
                    timeout_s=10,
                )
            except TimeoutError:
                conn = client.connection
                local = (
                    conn.ws_transport.underlying_transport.get_extra_info("sockname")
                    if conn is not None else None
                )
                peers = [
                    (c.id, c._ws.underlying_transport.get_extra_info("peername"),
                     c.messages_received, c.messages_sent, c.pings_received)
                    for c in sim.connections
                ]
                raise AssertionError(
                    f"client at {local} connects={client.health.connects} "
                    f"msgs={client.health.counter('messages')} sim peers={peers} "
                    f"accepted={sim.connections_accepted} tcp={sim.tcp_accepted} "
                    f"venue view after the faults: {sim.connections}; client "
                    f"{client.state.name} confirmed={client.confirmed_topics} "
                    f"desired={client.desired_topics} history={list(client.history)[-5:]}"
                ) from None
            async with _compat.timeout(10):
                while not injector.delivered():
                    await asyncio.sleep(0.05)
            assert client.state is State.LIVE
            assert set(client.desired_topics) == set(TOPICS)
            assert set(client.confirmed_topics) == set(TOPICS)
            assert sim.duplicate_subscribes == 0
            gc.collect()
            rss_end = rss_kb()
        assert client.state is State.CLOSED
        for _ in range(100):
            if not open_fds() - fds_before:
                break
            await asyncio.sleep(0.02)
        leaked_fds = open_fds() - fds_before

    missed = [
        (topic, first, last) for topic, first, last in injector.injected
        if not covered(gaps, topic, first, last)
    ]
    print(
        f"\nsoak {SOAK_S:.0f}s: faults={dict(sim.faults)} disconnects={dict(reasons)} "
        f"injected_gaps={len(injector.injected)} reported_gaps={len(gaps)} "
        f"live={live_samples}/{samples} reconnects={client.health.reconnects} "
        f"rss_warm={rss_warm}kB rss_end={rss_end}kB "
        f"messages={client.health.counter('messages')}"
    )
    assert not leaked_fds, f"leaked file descriptors: {sorted(leaked_fds)}"
    assert not missed, f"injected gaps never reported: {missed[:10]} (reported: {gaps[-10:]})"
    assert rss_warm is not None
    assert rss_end - rss_warm < MAX_RSS_GROWTH_KB, (rss_warm, rss_end)
    # The soak did exercise the client: faults landed and it kept coming back.
    assert sum(sim.faults.values()) >= SOAK_S / FAULT_INTERVAL_S / 2
    assert client.health.reconnects >= 3
    assert len(injector.injected) >= SOAK_S / GAP_INTERVAL_S / 10
    assert live_samples >= samples / 4, (live_samples, samples)
