"""Recovery times: server-side drop -> LIVE with N topics re-confirmed, and silence -> STALE.

The venue is :class:`defi_ws.testing.ExchangeSimulator` in its own process (pinned to
another CPU when there are 2+), driven over a pipe; the client is a ``FeedClient`` with
a plain ``JsonHandler`` in this process. Fault times and client events are both read
from ``time.monotonic()`` (CLOCK_MONOTONIC, shared by the processes).

* drop: ``sim.drop_all()`` (RST) -> ``on_disconnected`` (detect) -> ``on_reconnected``
  (LIVE again, every topic confirmed). Pacing off (no outbound rate limit), backoff
  1 ms (the measurement is the mechanics, not the backoff policy), 50 topics per
  subscribe message (JsonHandler default).
* stale: one topic streaming at ``--rate``/s, ``stale_after_s``; ``sim.silence()`` ->
  ``on_disconnected`` with reason STALE. Detection resolution is the supervisor's
  ``tick_s`` (0.1 s default).

    python bench/recovery.py [--topics 1,100,1000] [--repeat 5] [--stale-after 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, ncpus, pin, plot_bars, run_loop, table


def sim_process(conn: Any, cpu: int | None, rate: float) -> None:
    """Run an ExchangeSimulator and obey ``drop``/``silence``/``talk``/``stop`` commands."""
    pin(cpu)
    from defi_ws.testing import ExchangeSimulator

    async def main() -> None:
        sim = ExchangeSimulator(rate_per_s=rate)
        await sim.start()
        conn.send(sim.url)
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        while True:
            command = await commands.get()
            if command == "stop":
                break
            now = time.monotonic()
            if command == "drop":
                count = sim.drop_all()
            elif command == "silence":
                sim.silence(True)
                count = sim.current_connections
            elif command == "talk":
                sim.silence(False)
                count = sim.current_connections
            else:
                raise ValueError(command)
            conn.send((now, count))
        loop.remove_reader(conn.fileno())
        await sim.stop()

    run_loop("uvloop", main)


class Sim:
    """The parent's handle on the simulator process."""

    def __init__(self, rate: float, cpu: int | None) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=sim_process, args=(child, cpu, rate), daemon=True)
        self.proc.start()
        child.close()
        self.url: str = self._conn.recv()

    async def command(self, name: str) -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[float, int]] = loop.create_future()
        loop.add_reader(self._conn.fileno(),
                        lambda: fut.done() or fut.set_result(self._conn.recv()))
        self._conn.send(name)
        try:
            return await asyncio.wait_for(fut, 30)
        finally:
            loop.remove_reader(self._conn.fileno())

    def close(self) -> None:
        self._conn.send("stop")
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


async def drop_to_live(sim: Sim, topics: int, repeat: int) -> dict[str, list[float]]:
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.reconnect import FixedDelay

    loop = asyncio.get_running_loop()
    marks: dict[str, asyncio.Future[float]] = {}

    def mark(name: str) -> None:
        fut = marks.get(name)
        if fut is not None and not fut.done():
            fut.set_result(time.monotonic())

    client = FeedClient(
        JsonHandler(sim.url), topics=[f"trades.T{i}" for i in range(topics)],
        reconnect=FixedDelay(0.001), close_timeout_s=0.2, ack_timeout_s=30.0,
        on_disconnected=lambda d: mark("down"), on_reconnected=lambda: mark("live"))
    out: dict[str, list[float]] = {"detect": [], "resubscribe": [], "total": []}
    async with client:
        await client.wait_live(30)
        assert len(client.confirmed_topics) == topics
        for _ in range(repeat):
            marks["down"] = loop.create_future()
            marks["live"] = loop.create_future()
            t_drop, dropped = await sim.command("drop")
            assert dropped == 1
            t_down = await asyncio.wait_for(marks["down"], 30)
            t_live = await asyncio.wait_for(marks["live"], 60)
            assert len(client.confirmed_topics) == topics, client.confirmed_topics
            out["detect"].append((t_down - t_drop) * 1000)
            out["resubscribe"].append((t_live - t_down) * 1000)
            out["total"].append((t_live - t_drop) * 1000)
            await asyncio.sleep(0.05)
    return out


async def silence_to_stale(sim: Sim, stale_after_s: float, repeat: int) -> list[float]:
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.reasons import DisconnectReason
    from defi_ws.reconnect import FixedDelay

    loop = asyncio.get_running_loop()
    box: dict[str, asyncio.Future[tuple[float, Any]]] = {}

    def on_disconnected(d: Any) -> None:
        fut = box.get("down")
        if fut is not None and not fut.done():
            fut.set_result((time.monotonic(), d.reason))

    client = FeedClient(JsonHandler(sim.url), topics=["trades.BTC"], stale_after_s=stale_after_s,
                        reconnect=FixedDelay(0.001), close_timeout_s=0.05,
                        on_disconnected=on_disconnected)
    out = []
    async with client:
        for _ in range(repeat):
            await client.wait_live(30)
            await asyncio.sleep(stale_after_s + 0.2)  # data flowing, not stale
            box["down"] = loop.create_future()
            t_quiet, _ = await sim.command("silence")
            t_down, reason = await asyncio.wait_for(box["down"], stale_after_s + 30)
            assert reason is DisconnectReason.STALE, reason
            out.append((t_down - t_quiet) * 1000)
            await sim.command("talk")
    return out


def fmt(values: list[float]) -> list[str]:
    return [f"{statistics.median(values):.1f}", f"{min(values):.1f}-{max(values):.1f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", default="1,100,1000", help="comma-separated topic counts")
    parser.add_argument("--repeat", type=int, default=5, help="drops / silences per case")
    parser.add_argument("--stale-after", type=float, default=0.5, help="stale_after_s")
    parser.add_argument("--rate", type=float, default=200.0, help="stream rate for the stale case")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--plot", action="store_true", help="write recovery.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)
    two = ncpus() >= 2
    logging.getLogger("defi_ws").setLevel(logging.ERROR)  # expected disconnects
    faulthandler.dump_traceback_later(240, exit=True)
    counts = [int(x) for x in args.topics.split(",")]
    header("recovery: drop -> LIVE and silence -> STALE", [
        f"{args.repeat} faults per case, median and min-max in ms, client loop {args.loop}",
        "simulator (ExchangeSimulator, uvloop) in its own process" +
        (" on CPU 1, client on CPU 0" if two else ""),
        "drop = RST from the server; pacing off; backoff FixedDelay(1 ms); "
        "50 topics per subscribe message; the simulator acks each topic",
        f"stale: stale_after_s={args.stale_after}, tick_s=0.1 (default), 1 topic at "
        f"{args.rate:.0f} msg/s, then silence (half-open: TCP up, nothing sent)",
    ])
    sim = Sim(0.0, 1 if two else None)
    pin(0 if two else None)
    rows = []
    plot: dict[str, dict[str, float]] = {"drop -> LIVE (median ms)": {}}
    try:
        for n in counts:
            res = run_loop(args.loop, lambda n=n: drop_to_live(sim, n, args.repeat))
            rows.append([f"{n:,}", *fmt(res["total"]), *fmt(res["detect"]),
                         *fmt(res["resubscribe"])])
            plot["drop -> LIVE (median ms)"][f"{n} topics"] = statistics.median(res["total"])
    finally:
        sim.close()
    print("## server drop -> LIVE with N topics re-confirmed\n")
    table(["topics", "total ms", "min-max", "drop -> disconnect seen", "min-max",
           "disconnect -> LIVE", "min-max"], rows)
    sim = Sim(args.rate, 1 if two else None)
    try:
        stale = run_loop(args.loop, lambda: silence_to_stale(sim, args.stale_after, args.repeat))
    finally:
        sim.close()
    print("## feed silent -> STALE\n")
    table(["stale_after_s", "silence -> STALE ms", "min-max", "overshoot ms (median)"],
          [[f"{args.stale_after}", *fmt(stale),
            f"{statistics.median(stale) - args.stale_after * 1000:.1f}"]])
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "recovery.png"), "server drop -> LIVE", plot, "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
