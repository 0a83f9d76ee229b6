"""Many connections in one process: memory per connection, CPU per message, idle and active.

A server process (picows + uvloop) accepts every connection; on a ``go`` message it
streams ~230-byte trades round-robin over all of them at ``--rate`` msgs/s in total,
on ``stop`` it goes quiet. Each (client kind, N) runs in a fresh process pinned to
its own CPU:

1. RSS before (``VmRSS`` from ``/proc/self/status``), open N connections, settle, RSS
   after: memory per connection = delta / N.
2. idle: process CPU time (``time.process_time``) over ``--seconds`` with no traffic,
   reported as CPU % (the cost of timers and heartbeats).
3. active: CPU time / messages handled over ``--seconds`` = CPU per message.

Client kinds: defi-ws ``FeedListener`` (orjson + callback), the plain picows
pure-Python listener doing the same work (orjson + callback), and defi-ws
``FeedClient`` (one supervisor per connection: task, heartbeat, stale clock, health).

    python bench/connections.py [--counts 1,100,1000] [--rate 50000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, ncpus, pin, plot_bars, run_loop, table
from throughput import trade_payloads


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------ server


def serve(port_conn: Any, cpu: int | None, rate: float) -> None:
    pin(cpu)
    raise_fd_limit()
    import picows

    payloads = trade_payloads(1024)
    conns: list[Any] = []
    state = {"active": False}

    class Peer(picows.WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            conns.append(transport)

        def on_ws_disconnected(self, transport: Any) -> None:
            conns.remove(transport)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT:
                state["active"] = frame.get_payload_as_bytes() == b"go"

    async def stream() -> None:
        loop = asyncio.get_running_loop()
        last, credit, i, j = loop.time(), 0.0, 0, 0
        text = picows.WSMsgType.TEXT
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            credit = min(credit + rate * (now - last), rate * 0.05)
            last = now
            if not state["active"] or not conns:
                credit = 0.0
                continue
            while credit >= 1.0:
                i = (i + 1) % len(conns)
                j = (j + 1) & 1023
                conns[i].send(text, payloads[j])
                credit -= 1.0

    async def main() -> None:
        server = await picows.ws_create_server(lambda request: Peer(), "127.0.0.1", 0,
                                               backlog=4096)
        port_conn.send(server.sockets[0].getsockname()[1])
        await stream()

    run_loop("uvloop", main)


# ------------------------------------------------------------------------ clients

LISTENER = "defi-ws FeedListener"
PICOWS = "picows py listener"
FEEDCLIENT = "defi-ws FeedClient"
KINDS = [PICOWS, LISTENER, FEEDCLIENT]


def run_client(kind: str, n: int, url: str, seconds: float, cpu: int | None, out: Any) -> None:
    pin(cpu)
    raise_fd_limit()
    logging.getLogger("defi_ws").setLevel(logging.ERROR)
    import orjson
    import picows

    from defi_ws._core import FeedListener
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler

    seen = {"n": 0, "px": None}

    def callback(msg: Any) -> None:
        seen["px"] = msg["p"]

    class Baseline(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            seen["n"] += 1
            callback(orjson.loads(frame.get_payload_as_memoryview()))

    class TradeHandler(JsonHandler):
        def on_message(self, message: Any) -> None:
            seen["px"] = message["p"]

    async def main() -> dict[str, float]:
        # Warm every code path once so lazily created objects are not charged to N.
        clients: list[Any] = []
        transports: list[Any] = []
        listeners: list[Any] = []

        async def open_one() -> None:
            if kind == FEEDCLIENT:
                client = FeedClient(TradeHandler(url), stale_after_s=600.0,
                                    close_timeout_s=0.1)
                client.start()
                await client.wait_live(60)
                clients.append(client)
            else:
                factory = (lambda: FeedListener(callback)) if kind == LISTENER else Baseline
                transport, listener = await picows.ws_connect(factory, url,
                                                              enable_auto_ping=False)
                transports.append(transport)
                listeners.append(listener)

        await open_one()
        await asyncio.sleep(0.2)
        gc.collect()
        before = rss_kib()
        for start in range(1, n, 100):
            await asyncio.gather(*(open_one() for _ in range(min(100, n - start))))
        await asyncio.sleep(0.5)
        gc.collect()
        after = rss_kib()
        per_conn = (after - before) / max(1, n - 1) if n > 1 else float("nan")

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        idle_cpu = (time.process_time() - c0) / (time.perf_counter() - t0)

        def handled() -> int:
            if kind == FEEDCLIENT:
                return sum(c.health.counter("messages") for c in clients)
            if kind == LISTENER:
                return sum(listener.messages for listener in listeners)
            return seen["n"]

        def control(message: bytes) -> None:
            if clients:
                clients[0].send(message)
            else:
                transports[0].send(picows.WSMsgType.TEXT, message)

        control(b"go")
        await asyncio.sleep(0.3)
        m0, t0, c0 = handled(), time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        m1, t1, c1 = handled(), time.perf_counter(), time.process_time()
        control(b"stop")
        await asyncio.sleep(0.05)
        messages = m1 - m0
        return {
            "rss_before_kib": before, "rss_after_kib": after, "kib_per_conn": per_conn,
            "idle_cpu_pct": idle_cpu * 100, "msgs_per_s": messages / (t1 - t0),
            "us_per_msg": (c1 - c0) / max(1, messages) * 1e6,
            "active_cpu_pct": (c1 - c0) / (t1 - t0) * 100,
        }

    out.send(run_loop("uvloop", main))
    os._exit(0)


def measure(kind: str, n: int, url: str, seconds: float, cpu: int | None) -> dict[str, float]:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client, args=(kind, n, url, seconds, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(180):
        proc.kill()
        raise RuntimeError(f"{kind} x {n}: no result")
    result: dict[str, float] = recv.recv()
    proc.join(10)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100,1000", help="connection counts")
    parser.add_argument("--rate", type=float, default=50_000, help="total msgs/s when active")
    parser.add_argument("--seconds", type=float, default=1.5, help="idle and active windows")
    parser.add_argument("--plot", action="store_true", help="write connections.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.counts.split(",")]
    two = ncpus() >= 2
    header("connections: memory per connection, CPU per message", [
        f"server streams {args.rate:,.0f} msgs/s in total, round-robin over the connections "
        "(~230 B trades); client callback reads one field after orjson decode",
        "each (kind, N) in a fresh client process" + (
            "; client on CPU 0, server on CPU 1" if two else ""),
        "memory: VmRSS delta over connections 2..N (the first one warms code paths), "
        "so N = 1 has no per-connection figure",
        f"idle / active windows: {args.seconds}s each; CPU from time.process_time()",
        "FeedClient: default heartbeat (WsPing 10 s), stale_after_s=600, tick_s=0.1",
    ])
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=serve, args=(send, 1 if two else None, args.rate), daemon=True)
    server.start()
    url = f"ws://127.0.0.1:{recv.recv()}/"
    results: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for n in counts:
            for kind in KINDS:
                results[kind, n] = measure(kind, n, url, args.seconds, 0 if two else None)
    finally:
        server.terminate()
        server.join(5)
    rows = []
    for n in counts:
        base = results[PICOWS, n]["kib_per_conn"]
        for kind in KINDS:
            r = results[kind, n]
            per = r["kib_per_conn"]
            rows.append([
                f"{n:,}", kind,
                "-" if per != per else f"{per:.1f}",
                "-" if per != per or base != base else f"{per - base:+.1f}",
                f"{r['rss_after_kib'] / 1024:.1f}", f"{r['idle_cpu_pct']:.2f}",
                f"{r['msgs_per_s']:,.0f}", f"{r['us_per_msg']:.2f}", f"{r['active_cpu_pct']:.0f}",
            ])
    table(["N", "client", "KiB/conn", "vs picows KiB", "RSS MiB", "idle CPU %",
           "active msgs/s", "CPU µs/msg", "active CPU %"], rows, "llrrrrrrr")
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "connections.png"), "CPU per message (active)",
                  {f"N={n}": {k: results[k, n]["us_per_msg"] for k in KINDS} for n in counts},
                  "µs/msg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
