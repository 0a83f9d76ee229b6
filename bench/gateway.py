"""Gateway throughput and latency: simulator -> gateway -> JetStream -> consumer.

Four processes on loopback: the simulator (``python -m defi_ws.testing.simulator``),
``nats-server -js`` (file storage in a temp dir), the gateway (``python -m defi_ws run``,
one generic venue, redundancy 1, a NATS sink with raw payloads), and this script as the
consumer (a push subscription on the stream's subjects, new messages only).

Measured over ``--seconds`` after a warm-up:

- messages per second the consumer received, and gaps / duplicates it saw (per topic
  sequence numbers);
- venue-to-consumer latency, p50 / p99: the consumer's wall clock minus the
  simulator's ``ts`` (milliseconds since the epoch, stamped when the message is
  built): 1 ms resolution, truncated, so each value may be up to 1 ms early;
- the gateway's CPU (user + system from ``/proc/<pid>/stat``) per message, against a
  process running the same ``FeedPool`` with no sink (a callback that only counts).

    python bench/gateway.py [--topics 20] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, table

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def scrape_acked(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("defi_ws_sink_records_total{") and 'outcome="acked"' in line)


def pool_role(url: str, topics: list[str], seconds: float, warmup_s: float) -> None:
    """The baseline: the same FeedPool, no sink; prints messages and CPU seconds of the
    measured window."""
    import uvloop

    from defi_ws import FeedPool, JsonHandler

    count = [0]

    def on_data(message: Any) -> None:
        count[0] += 1

    async def main() -> None:
        pool = FeedPool(JsonHandler(url, on_data=on_data, sequence_field="seq"), topics=topics)
        async with pool:
            await pool.wait_live(30)
            await asyncio.sleep(warmup_s)
            count0, cpu0 = count[0], time.process_time()
            await asyncio.sleep(seconds)
            print(count[0] - count0, time.process_time() - cpu0, flush=True)

    uvloop.run(main())


async def consume(nats_url: str, seconds: float, warmup_s: float) -> dict[str, Any]:
    import nats
    import orjson
    from nats.js.api import DeliverPolicy

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    lat_ms: list[float] = []
    last: dict[str, int] = {}
    gaps = dups = count = 0
    measuring = [False]

    async def on_msg(msg: Any) -> None:
        nonlocal gaps, dups, count
        now_ms = time.time_ns() / 1e6
        body = orjson.loads(msg.data)
        topic, seq = body["topic"], body["seq"]
        prev = last.get(topic)
        if prev is not None:
            if seq <= prev:
                dups += 1
            elif seq > prev + 1:
                gaps += seq - prev - 1
        last[topic] = max(seq, prev or 0)
        if measuring[0]:
            count += 1
            lat_ms.append(now_ms - body["data"]["ts"])

    sub = await js.subscribe("md.>", stream="MD", cb=on_msg, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.NEW)
    await asyncio.sleep(warmup_s)
    measuring[0] = True
    gaps = dups = 0
    start = time.monotonic()
    await asyncio.sleep(seconds)
    measuring[0] = False
    elapsed = time.monotonic() - start
    await sub.unsubscribe()
    await nc.close()
    lat_ms.sort()

    def pct(p: float) -> float:
        return lat_ms[min(len(lat_ms) - 1, int(p / 100 * len(lat_ms)))] if lat_ms else 0.0

    return {"count": count, "rate": count / elapsed, "p50": pct(50), "p99": pct(99),
            "gaps": gaps, "dups": dups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s per topic")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    topics = [f"trades.S{i}" for i in range(args.topics)]
    if args.role == "pool":
        pool_role(args.url, topics, args.seconds, args.warmup)
        return
    header("Gateway: simulator -> gateway -> JetStream -> consumer", [
        f"{args.topics} topics x {args.rate:g} msg/s offered, {args.seconds:g} s measured "
        f"after {args.warmup:g} s, redundancy 1, raw payloads, file storage"])
    bindir = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="defi-ws-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        nats_port, sim_port, metrics_port = free_port(), free_port(), free_port()
        nats_log = tmp / "nats.log"
        with open(nats_log, "wb") as out:
            procs.append(subprocess.Popen(
                [str(bindir / "nats-server"), "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                 "-sd", str(tmp / "js")], stdout=out, stderr=subprocess.STDOUT))
        wait_for(lambda: "Server is ready" in nats_log.read_text(), 30, "nats-server")
        sim = subprocess.Popen([sys.executable, "-m", "defi_ws.testing.simulator", "--port",
                                str(sim_port), "--rate", str(args.rate)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(sim)
        assert sim.stdout is not None
        url = sim.stdout.readline().decode().strip()

        # Baseline: the same pool, no sink.
        base = subprocess.run([sys.executable, __file__, "--role", "pool", "--url", url,
                               "--topics", str(args.topics), "--seconds", str(args.seconds),
                               "--warmup", str(args.warmup)],
                              capture_output=True, check=True, timeout=args.seconds + 120)
        base_msgs_s, base_cpu_s = base.stdout.decode().split()[-2:]
        base_msgs, base_cpu = int(base_msgs_s), float(base_cpu_s)

        config = tmp / "gw.toml"
        config.write_text(f"""
[gateway]
name = "bench"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[venues.sim]
kind = "generic"
url = "{url}"
topics = {topics!r}
sequence_field = "seq"
[[sinks]]
kind = "nats"
servers = ["nats://127.0.0.1:{nats_port}"]
stream = "MD"
storage = "file"
""")
        gw_err = tmp / "gw.err"
        with open(gw_err, "wb") as err:
            gw = subprocess.Popen([sys.executable, "-m", "defi_ws", "run", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=err)
        procs.append(gw)
        wait_for(lambda: "started:" in gw_err.read_text(), 30, "the gateway")
        result: dict[str, Any] = {}

        async def measure() -> None:
            consumer = asyncio.ensure_future(consume(f"nats://127.0.0.1:{nats_port}",
                                                     args.seconds, args.warmup))
            await asyncio.sleep(args.warmup)
            result["cpu0"], result["acked0"] = cpu_s(gw.pid), scrape_acked(metrics_port)
            others0 = cpu_s(procs[0].pid), cpu_s(sim.pid), time.process_time()
            await asyncio.sleep(args.seconds)
            result["cpu1"], result["acked1"] = cpu_s(gw.pid), scrape_acked(metrics_port)
            others1 = cpu_s(procs[0].pid), cpu_s(sim.pid), time.process_time()
            result["others"] = [b - a for a, b in zip(others0, others1, strict=True)]
            result.update(await consumer)

        asyncio.run(measure())
        gw.terminate()
        gw.wait(timeout=30)
        gw_msgs = result["acked1"] - result["acked0"]
        gw_cpu = result["cpu1"] - result["cpu0"]
        rows = [
            ["pool, no sink", f"{base_msgs / args.seconds:,.0f}", "-", "-",
             f"{base_cpu / max(1, base_msgs) * 1e6:.1f}", "-"],
            ["gateway -> JetStream", f"{gw_msgs / args.seconds:,.0f}",
             f"{result['p50']:.1f}", f"{result['p99']:.1f}",
             f"{gw_cpu / max(1, gw_msgs) * 1e6:.1f}",
             f"{result['count']:,} received, {result['gaps']} gaps, {result['dups']} dups"],
        ]
        table(["path", "msgs/s", "p50 ms", "p99 ms", "CPU us/msg", "consumer"], rows)
        nats_cpu, sim_cpu, consumer_cpu = result["others"]
        print(f"\nCPU, % of one core: gateway {gw_cpu / args.seconds * 100:.0f}, nats-server "
              f"{nats_cpu / args.seconds * 100:.0f}, simulator {sim_cpu / args.seconds * 100:.0f}, "
              f"consumer {consumer_cpu / args.seconds * 100:.0f} (all on {os.cpu_count()} "
              f"cores); the consumer received {result['rate']:,.0f} msg/s")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
