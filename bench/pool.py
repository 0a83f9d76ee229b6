"""FeedPool: CPU per delivered message at redundancy 1-3, rotation under load, idle cost.

The venue is :class:`defi_ws.testing.ExchangeSimulator` (generic protocol, one sequence
per topic shared by every connection, the same bytes on each) in its own process,
pinned to another CPU when there are 2+, driven over a pipe. Clients use a
``JsonHandler(sequence_field="seq")`` whose ``on_data`` counts the message and reads
one field; the pool's shared ``Deduplicator`` reads ``topic`` and ``seq`` from the raw
bytes and drops duplicates before decode.

1. CPU per delivered message: the venue streams ``--rate`` msg/s in total over
   ``--topics`` topics; in each repetition a ``FeedPool`` with redundancy 1, 2 and 3
   (and a plain ``FeedClient`` for reference) runs ``--seconds`` each, in rotated
   order; client CPU (``time.process_time()`` of this process, split into user and
   kernel time by ``getrusage``) / messages delivered to ``on_data``. Ratios to k = 1
   are taken within each repetition. Two venues (``--emitters``): the simulator,
   which writes every message to every connection with its own ``send`` (one TCP
   segment each on loopback, so each duplicate costs a kernel receive), and a
   bench-local "batched" venue with the same protocol and messages that writes each
   connection's frames of a 2 ms tick at once (as a busy venue does, and as a
   receiver with GRO sees them).
2. Rotation under load: ``--rotations`` make-before-break rotations of a pool while
   the simulator streams, (a) on the venue's notice (``announce_shutdown``, cut after
   ``--cut-after`` s) and (b) by age (``VenueLimits(max_connection_age_s)``, the
   simulator cutting at that same age). Delivered ids are checked per topic: holes
   (lost) and repeats (duplicated); time from notice (or rotation due) to the switch
   (``pool.rotations`` increments; polled every 1 ms).
3. Idle cost: ``--idle-connections`` connections in a fresh process (a pool with
   ``topics_per_connection=1`` and that many topics, and as many ``FeedClient`` for
   reference), heartbeats (``WsPing``) every ``--heartbeat`` s, nothing streaming:
   CPU % over at least two heartbeat intervals, RSS per connection.

    python bench/pool.py [--rate 30000[,60000]] [--topics 8] [--seconds 1.5] [--repeat 4]
                         [--rotations 20] [--idle-connections 1000] [--heartbeat 1]
                         [--parts cpu,rotation,idle]

About a minute and a half with the defaults on 2 CPUs (``make bench``); the issue's
100 rotations: ``--parts rotation --rotations 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import gc
import logging
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, ncpus, pin, plot_bars, run_loop, table

# ------------------------------------------------------------------------ helpers


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def med(values: list[float], fmt: str = "{:.1f}") -> str:
    return "-" if not values else fmt.format(statistics.median(values))


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    return "-" if not values else f"{fmt.format(min(values))}-{fmt.format(max(values))}"


# ------------------------------------------------------------------------ simulator


def sim_process(conn: Any, cpu: int | None, options: dict[str, Any]) -> None:
    """Run an ExchangeSimulator; answer ``stats``, ``notice`` and ``stop`` over the pipe."""
    pin(cpu)
    raise_fd_limit()
    logging.getLogger("defi_ws").setLevel(logging.ERROR)
    from defi_ws.testing import ExchangeSimulator

    async def main() -> None:
        sim = ExchangeSimulator(**options)
        await sim.start()
        conn.send(sim.url)
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[Any] = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        while True:
            name, *args = await commands.get()
            now = time.monotonic()
            if name == "stop":
                break
            if name == "stats":
                conn.send({
                    "t": now, "cpu": time.process_time(),
                    "sent": sum(sim.messages_sent.values()),
                    "pings": sim.pings_received, "conns": sim.current_connections,
                    "accepted": sim.connections_accepted, "cuts": sim.shutdown_cuts,
                    "limit_hits": sim.limit_hits, "last_seq": dict(sim.last_seq),
                })
            elif name == "notice":  # every open connection not yet told
                count = 0
                for c in sim.connections:
                    if c.open and c.notices_sent == 0:
                        count += sim.announce_shutdown(c, cut_after_s=args[0])
                conn.send((now, count))
            else:
                raise ValueError(name)
        loop.remove_reader(conn.fileno())
        await sim.stop()

    run_loop("uvloop", main)


class Sim:
    """The parent's handle on the simulator process."""

    def __init__(self, cpu: int | None, batched_rate: float | None = None,
                 **options: Any) -> None:
        ctx = mp.get_context("fork")
        self._conn, child = ctx.Pipe()
        target, args = ((sim_process, (child, cpu, options)) if batched_rate is None
                        else (batched_process, (child, cpu, batched_rate)))
        self.proc = ctx.Process(target=target, args=args, daemon=True)
        self.proc.start()
        child.close()
        self.url: str = self._conn.recv()

    def call(self, *command: Any) -> Any:
        """Blocking round trip (outside an event loop)."""
        self._conn.send(command)
        if not self._conn.poll(30):
            raise TimeoutError(command)
        return self._conn.recv()

    async def acall(self, *command: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(self._conn.recv())

        loop.add_reader(self._conn.fileno(), ready)
        self._conn.send(command)
        try:
            return await asyncio.wait_for(fut, 30)
        finally:
            loop.remove_reader(self._conn.fileno())

    def close(self) -> None:
        self._conn.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()


def batched_process(conn: Any, cpu: int | None, rate: float) -> None:
    """A venue that writes each connection's frames of a tick (2 ms) in one write.

    Same protocol and messages as the simulator (generic subscribe with acks, one
    ``seq`` per topic shared by every connection, the same bytes on each), but the
    frames of one tick leave in one ``write`` per connection, as a busy venue's do
    (and as a receiver with GRO sees them): the per-segment kernel cost of the
    simulator's one write per message no longer dominates. ``stats`` like the Sim.
    """
    pin(cpu)
    import orjson
    import picows

    subs: dict[str, list[Any]] = {}
    last_seq: dict[str, int] = {}
    sent = [0]

    class Peer(picows.WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            self.transport = transport
            self.topics: list[str] = []

        def on_ws_disconnected(self, transport: Any) -> None:
            for topic in self.topics:
                subs[topic].remove(self)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != picows.WSMsgType.TEXT:
                return
            message = orjson.loads(frame.get_payload_as_bytes())
            if message.get("op") == "subscribe":
                for topic in message["args"]:
                    self.topics.append(topic)
                    subs.setdefault(topic, []).append(self)
                    transport.send(picows.WSMsgType.TEXT, orjson.dumps(
                        {"event": "subscribed", "topic": topic}))

    def frame(payload: bytes) -> bytes:
        n = len(payload)
        head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126, n >> 8, n & 0xFF))
        return head + payload

    async def stream() -> None:
        loop = asyncio.get_running_loop()
        last, credit = loop.time(), 0.0
        while True:
            await asyncio.sleep(0.002)
            now = loop.time()
            credit += rate * (now - last)
            last = now
            topics = [t for t, peers in subs.items() if peers]
            if not topics:
                credit = 0.0
                continue
            count = int(credit / len(topics))
            credit -= count * len(topics)
            out: dict[Any, list[bytes]] = {}
            ts = int(time.time() * 1000)
            for topic in topics:
                seq = last_seq.get(topic, 0)
                frames = []
                for _ in range(count):
                    seq += 1
                    frames.append(frame(orjson.dumps({"topic": topic, "seq": seq, "data": {
                        "px": "101.25", "qty": "0.5000", "id": seq, "ts": ts}})))
                last_seq[topic] = seq
                for peer in subs[topic]:
                    out.setdefault(peer, []).extend(frames)
            for peer, frames in out.items():
                peer.transport.underlying_transport.write(b"".join(frames))
                sent[0] += len(frames)

    async def main() -> None:
        server = await picows.ws_create_server(lambda request: Peer(), "127.0.0.1", 0)
        conn.send(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        task = asyncio.get_running_loop().create_task(stream())
        commands: asyncio.Queue[Any] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(conn.fileno(),
                                              lambda: commands.put_nowait(conn.recv()))
        while (await commands.get())[0] != "stop":
            conn.send({"t": time.monotonic(), "cpu": time.process_time(), "sent": sent[0]})
        task.cancel()

    run_loop("uvloop", main)


def fast_options(**extra: Any) -> dict[str, Any]:
    from defi_ws.reconnect import FixedDelay

    return {"reconnect": FixedDelay(0.05), "close_timeout_s": 0.5, **extra}


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)


def all_confirmed(clients: list[Any], expected: int, topics: int) -> bool:
    from defi_ws.lifecycle import State

    return len(clients) == expected and all(
        c.state is State.LIVE and len(c.confirmed_topics) == topics for c in clients)


# ------------------------------------------------------------------------ 1. CPU


CLIENT = "FeedClient (no pool)"
EMITTERS = {
    "simulator": "ExchangeSimulator (one write per message per connection)",
    "batched": "batched venue (one write per connection per 2 ms tick)",
}


def cpu_configs() -> list[str]:
    return ["k=1", "k=2", "k=3", CLIENT]


async def cpu_case(sim: Sim, config: str, topics: list[str], seconds: float,
                   warmup: float) -> dict[str, float]:
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.pool import FeedPool

    count = [0]
    box: list[Any] = [None]

    def on_data(message: Any) -> None:
        count[0] += 1
        box[0] = message["seq"]  # the one-field read

    handler = JsonHandler(sim.url, on_data=on_data, sequence_field="seq")
    feed: Any
    clients: Callable[[], list[Any]]
    if config == CLIENT:
        # What k=1 costs without the Deduplicator (and without sequence tracking,
        # which the pool turns off when ids are de-duplicated).
        feed = FeedClient(handler, topics=topics, track_sequences=False, **fast_options())
        expected = 1

        def clients() -> list[Any]:
            return [feed]
    else:
        k = int(config.split("=")[1])
        feed = FeedPool(handler, topics=topics, redundancy=k, client_options=fast_options())
        expected, clients = k, feed.clients
    async with feed:
        await wait_until(lambda: all_confirmed(clients(), expected, len(topics)), 30,
                         f"{config}: every connection LIVE")
        await asyncio.sleep(warmup)
        s0 = await sim.acall("stats")
        n0, c0, t0 = count[0], time.process_time(), time.perf_counter()
        dup0 = feed.dedup.duplicates if config != CLIENT else 0
        await asyncio.sleep(seconds)
        n1, c1, t1 = count[0], time.process_time(), time.perf_counter()
        dup1 = feed.dedup.duplicates if config != CLIENT else 0
        s1 = await sim.acall("stats")
    delivered = n1 - n0
    wall = t1 - t0
    return {
        "delivered_per_s": delivered / wall,
        "frames_per_s": (delivered + dup1 - dup0) / wall,
        "cpu_pct": (c1 - c0) / wall * 100,
        "ns_per_msg": (c1 - c0) / max(1, delivered) * 1e9,
        "sim_cpu_pct": (s1["cpu"] - s0["cpu"]) / (s1["t"] - s0["t"]) * 100,
        "sim_sent_per_s": (s1["sent"] - s0["sent"]) / (s1["t"] - s0["t"]),
    }


def bench_cpu(args: argparse.Namespace, sim: Sim, topics: list[str], rate: float,
              emitter: str) -> None:
    configs = cpu_configs()
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    ratios: dict[str, list[float]] = {c: [] for c in configs}
    for rep in range(args.repeat):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        this: dict[str, dict[str, float]] = {}
        for config in order:
            this[config] = run_loop(args.loop, functools.partial(
                cpu_case, sim, config, topics, args.seconds, args.warmup))
            runs[config].append(this[config])
        for config in configs:
            ratios[config].append(this[config]["ns_per_msg"] / this["k=1"]["ns_per_msg"])
    rows = []
    for config in configs:
        rs = runs[config]

        def col(key: str, rs: list[dict[str, float]] = rs) -> list[float]:
            return [r[key] for r in rs]

        # what each extra copy of a message costs: (ns_k - ns_1) / (k - 1), per repetition
        k = 0 if config == CLIENT else int(config.split("=")[1])
        per_dup = [(r["ns_per_msg"] - one["ns_per_msg"]) / (k - 1)
                   for r, one in zip(rs, runs["k=1"], strict=True)] if k > 1 else []
        rows.append([
            config, med(col("delivered_per_s"), "{:,.0f}"), med(col("frames_per_s"), "{:,.0f}"),
            med(col("cpu_pct")), med(col("ns_per_msg"), "{:,.0f}"), med(ratios[config], "{:.2f}"),
            span(ratios[config], "{:.2f}"), med(per_dup, "{:,.0f}"),
            med(col("sim_cpu_pct"), "{:.0f}"),
        ])
    print(f"## 1. CPU per delivered message, redundancy k = 1, 2, 3, at {rate:,.0f} msg/s, "
          f"{EMITTERS[emitter]}\n")
    table(["config", "delivered msg/s", "frames in/s", "client CPU %", "CPU ns/msg",
           "ratio to k=1", "min-max", "ns per duplicate frame",
           "venue CPU %"], rows)
    k2 = statistics.median(ratios["k=2"])
    print(f"k=2 / k=1 = {k2:.2f} (median of {args.repeat} per-repetition ratios; target "
          f"<= 1.15: {'met' if k2 <= 1.15 else 'NOT met'}). 'ns per duplicate frame' = "
          "(ns/msg at k - ns/msg at k=1) / (k - 1), per repetition: what one more copy "
          "of every message costs (negative: below the noise).\n", flush=True)
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, f"pool-{emitter}-{rate:.0f}.png"),
                  f"FeedPool: CPU per delivered message, {rate:,.0f} msg/s, {emitter}",
                  {"ns/msg": {c: statistics.median(r["ns_per_msg"] for r in runs[c])
                              for c in configs}}, "ns")


# ------------------------------------------------------------------------ 2. rotation


class SeqCheck:
    """Holes and repeats in the delivered ids, per topic."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.delivered = 0
        self.lost = 0
        self.duplicated = 0
        self.lost_at: list[tuple[str, int, int]] = []

    def on_data(self, message: Any) -> None:
        topic, seq = message["topic"], message["seq"]
        self.delivered += 1
        last = self.last.get(topic)
        if last is None or seq == last + 1:
            self.last[topic] = seq
        elif seq > last:
            self.lost += seq - last - 1
            self.lost_at.append((topic, last + 1, seq - 1))
            self.last[topic] = seq
        else:
            self.duplicated += 1


async def rotation_case(sim: Sim, mode: str, args: argparse.Namespace,
                        topics: list[str]) -> dict[str, Any]:
    from defi_ws.handler import JsonHandler, VenueLimits
    from defi_ws.pool import FeedPool

    check = SeqCheck()
    gaps: list[Any] = []
    disconnects: list[Any] = []
    handler = JsonHandler(sim.url, on_data=check.on_data, sequence_field="seq")
    k = args.rotation_redundancy
    extra: dict[str, Any] = {}
    if mode == "age":
        extra = {"limits": VenueLimits(max_connection_age_s=args.age),
                 "rotate_before_s": args.age * 0.3, "rotation_jitter_s": args.age * 0.1}
    pool = FeedPool(handler, topics=topics, redundancy=k, rotation_overlap_s=args.overlap,
                    on_gap=gaps.append, on_disconnected=disconnects.append,
                    client_options=fast_options(), seed=1, **extra)
    to_switch: list[float] = []
    to_open: list[float] = []
    async with pool:
        await wait_until(lambda: all_confirmed(pool.clients(), k, len(topics)), 30,
                         f"rotation/{mode}: LIVE")
        await asyncio.sleep(0.3)
        s0 = await sim.acall("stats")
        started, delivered0 = time.monotonic(), check.delivered
        while pool.rotations < args.rotations:
            done, opened = pool.rotations, pool.connections_opened
            if mode == "notice":
                due, told = await sim.acall("notice", args.cut_after)
                if told == 0:  # the replacement is not accepted yet
                    await asyncio.sleep(0.005)
                    continue
                want = done + told
            else:
                # the earliest rotation due among the current connections
                due = time.monotonic() + min(
                    c["rotate_in_s"] for c in pool.snapshot()["connections"]
                    if c["rotate_in_s"] is not None)
                want = done + 1
            t_open, seen = None, done
            deadline = time.monotonic() + args.age * 3 + args.cut_after + 30
            while seen < want:
                now = time.monotonic()
                if t_open is None and pool.connections_opened > opened:
                    t_open = now
                if pool.rotations > seen:  # each switch (k > 1: one after the other)
                    to_switch.extend([(now - due) * 1000] * (pool.rotations - seen))
                    seen = pool.rotations
                    continue
                if now > deadline:
                    raise TimeoutError(f"rotation/{mode}: no switch")
                await asyncio.sleep(0.001)
            if t_open is not None:
                to_open.append((t_open - due) * 1000)
            if mode == "notice":
                await asyncio.sleep(args.pause)
        elapsed = time.monotonic() - started
        rate = (check.delivered - delivered0) / max(elapsed, 1e-9)
        await asyncio.sleep(0.2)
        s1 = await sim.acall("stats")
    return {
        "rotations": pool.rotations, "delivered": check.delivered, "lost": check.lost,
        "duplicated": check.duplicated, "gaps": len(gaps), "disconnects": len(disconnects),
        "cuts": s1["cuts"] - s0["cuts"], "limit_hits": s1["limit_hits"],
        "to_switch": to_switch, "to_open": to_open, "elapsed": elapsed,
        "lost_at": check.lost_at[:5], "rate": rate,
    }


def bench_rotation(args: argparse.Namespace, topics: list[str], cpu: int | None) -> None:
    rows = []
    holes = []
    for mode in args.rotation_modes.split(","):
        options: dict[str, Any] = {"rate_per_s": args.rotation_rate / len(topics)}
        if mode == "age":
            options["max_connection_age_s"] = args.age  # a late rotation is a cut
        sim = Sim(cpu, **options)
        try:
            r = run_loop(args.loop, functools.partial(rotation_case, sim, mode, args, topics))
        finally:
            sim.close()
        label = (f"venue notice (cut after {args.cut_after:g} s)" if mode == "notice"
                 else f"age (max_connection_age_s={args.age:g}, simulator cuts at it)")
        rows.append([
            label, r["rotations"], f"{r['delivered']:,}", f"{r['rate']:,.0f}", r["lost"],
            r["duplicated"], r["gaps"], r["disconnects"], r["cuts"],
            med(r["to_open"]), med(r["to_switch"]), span(r["to_switch"]),
        ])
        if r["lost_at"]:
            holes.append(f"{mode}: first holes (topic, first, last): {r['lost_at']}")
    print(f"## 2. Rotation under load (redundancy {args.rotation_redundancy})\n")
    table(["trigger", "rotations", "delivered", "msg/s", "lost", "duplicated",
           "gaps reported", "disconnects seen", "venue cuts", "-> replacement opened ms",
           "-> switch ms (median)", "min-max"], rows)
    print(f"Times from the notice (or the rotation's due time) on the client's clock; the "
          f"switch includes rotation_overlap_s ({args.overlap * 1000:.0f} ms) after the "
          "replacement is LIVE. 'lost' and 'duplicated' are holes and repeats in the ids "
          "delivered per topic; 'disconnects seen' are on_disconnected calls (rotations "
          "are not reported).\n")
    for line in holes:
        print(f"- {line}")
    if holes:
        print()


# ------------------------------------------------------------------------ 3. idle

POOL = "FeedPool, 1 topic per connection"
CLIENTS = "FeedClient x N"


def idle_client(kind: str, n: int, url: str, args: argparse.Namespace, cpu: int | None,
                out: Any) -> None:
    pin(cpu)
    fds = raise_fd_limit()
    logging.getLogger("defi_ws").setLevel(logging.ERROR)
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler, VenueLimits
    from defi_ws.heartbeat import WsPing
    from defi_ws.pool import FeedPool

    if fds < n + 64:
        out.send({"error": f"open files limit {fds} < {n + 64}"})
        os._exit(0)

    def on_data(message: Any) -> None:
        pass

    async def main() -> dict[str, Any]:
        handler = JsonHandler(url, on_data=on_data, sequence_field="seq")
        heartbeat = WsPing(interval_s=args.heartbeat, timeout_s=max(5.0, args.heartbeat * 5))
        topics = [f"idle.{i}" for i in range(n)]
        feeds: list[Any] = []
        options = fast_options(heartbeat=heartbeat, connect_timeout_s=60.0)
        if kind == POOL:
            pool = FeedPool(handler, topics=topics[:1], client_options=options,
                            limits=VenueLimits(topics_per_connection=1))
            feeds.append(pool)
            pool.start()
            clients = pool.clients
        else:
            feeds.append(FeedClient(handler, topics=topics[:1], **options))
            feeds[0].start()

            def clients() -> list[Any]:
                return feeds

        await wait_until(lambda: all_confirmed(clients(), 1, 1), 30, "first connection")
        await asyncio.sleep(0.3)  # the first one warms code paths
        gc.collect()
        before = rss_kib()
        opened = time.perf_counter()
        if kind == POOL:
            pool.subscribe(topics[1:])
        else:
            for topic in topics[1:]:
                client = FeedClient(handler, topics=[topic], **options)
                client.start()
                feeds.append(client)
        await wait_until(lambda: all_confirmed(clients(), n, 1), 120, f"{n} connections")
        opened = time.perf_counter() - opened
        await asyncio.sleep(0.5)
        gc.collect()
        after = rss_kib()
        out.send(("idle", time.monotonic()))
        window = max(args.idle_seconds, 2 * args.heartbeat + 0.5)
        t0, c0 = time.perf_counter(), time.process_time()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(window)
        t1, c1 = time.perf_counter(), time.process_time()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        out.send(("done", time.monotonic()))
        result = {
            "kib_per_conn": (after - before) / max(1, n - 1), "rss_mib": after / 1024,
            "cpu_pct": (c1 - c0) / (t1 - t0) * 100, "window": t1 - t0,
            "wakeups_per_s": (ru1.ru_nvcsw + ru1.ru_nivcsw - ru0.ru_nvcsw - ru0.ru_nivcsw)
            / (t1 - t0), "open_s": opened,
        }
        for feed in feeds:
            await feed.stop()
        return result

    out.send(("result", run_loop(args.loop, main)))
    os._exit(0)


def bench_idle(args: argparse.Namespace, cpu_client: int | None, cpu_sim: int | None) -> None:
    n = args.idle_connections
    rows = []
    for kind in args.idle_kinds.split(","):
        kind = {"pool": POOL, "clients": CLIENTS}[kind.strip()]
        sim = Sim(cpu_sim, rate_per_s=0.0)
        try:
            ctx = mp.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=idle_client, args=(kind, n, sim.url, args, cpu_client, send))
            proc.start()
            send.close()
            marks: dict[str, Any] = {}
            while "result" not in marks:
                if not recv.poll(240):
                    proc.kill()
                    raise RuntimeError(f"idle {kind}: no result")
                message = recv.recv()
                if isinstance(message, dict):
                    raise RuntimeError(message["error"])
                name, value = message
                marks[name] = sim.call("stats") if name in ("idle", "done") else value
            proc.join(10)
        finally:
            sim.close()
        r, s0, s1 = marks["result"], marks["idle"], marks["done"]
        pings_per_s = (s1["pings"] - s0["pings"]) / (s1["t"] - s0["t"])
        rows.append([
            kind, f"{n:,}", f"{r['open_s']:.1f}", f"{r['window']:.1f}", f"{r['cpu_pct']:.2f}",
            f"{r['cpu_pct'] / n * 1000:.2f}", f"{pings_per_s:,.0f}",
            f"{n / args.heartbeat:,.0f}",
            f"{r['cpu_pct'] / 100 * 1e6 / max(pings_per_s, 1e-9):.0f}",
            f"{r['wakeups_per_s']:,.0f}",
            f"{r['kib_per_conn']:.1f}", f"{r['rss_mib']:.1f}",
        ])
    print(f"## 3. Idle cost of {n:,} connections, heartbeats every {args.heartbeat:g} s\n")
    table(["client", "connections", "open all s", "window s", "idle CPU %",
           "CPU % per 1,000 conns", "pings/s at venue", "expected pings/s", "CPU µs per ping",
           "context switches/s", "KiB/conn", "RSS MiB"], rows)


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="cpu,rotation,idle", help="which parts to run")
    parser.add_argument("--rate", default="30000",
                        help="total msg/s the simulator streams (CPU part); a comma list "
                        "runs the part once per rate")
    parser.add_argument("--emitters", default="simulator,batched",
                        help="CPU part venues: simulator (ExchangeSimulator, one write per "
                        "message per connection), batched (one write per 2 ms per connection)")
    parser.add_argument("--topics", type=int, default=8, help="topics streaming")
    parser.add_argument("--seconds", type=float, default=1.5, help="CPU window per config")
    parser.add_argument("--warmup", type=float, default=0.3, help="settle time before it")
    parser.add_argument("--repeat", type=int, default=4, help="repetitions of k = 1, 2, 3")
    parser.add_argument("--rotations", type=int, default=20, help="rotations per trigger")
    parser.add_argument("--rotation-modes", default="notice,age",
                        help="comma-separated: notice, age")
    parser.add_argument("--rotation-rate", type=float, default=10_000,
                        help="total msg/s while rotating")
    parser.add_argument("--rotation-redundancy", type=int, default=1,
                        help="redundancy of the rotating pool")
    parser.add_argument("--overlap", type=float, default=0.05, help="rotation_overlap_s")
    parser.add_argument("--cut-after", type=float, default=2.0,
                        help="notice: the venue cuts this long after it")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="notice: streaming time between a switch and the next notice")
    parser.add_argument("--age", type=float, default=1.0,
                        help="age: max_connection_age_s (pool and simulator)")
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--idle-kinds", default="pool,clients",
                        help="comma-separated: pool, clients")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="WsPing interval_s")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="idle window (at least 2 heartbeat intervals + 0.5 s)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--plot", action="store_true", help="write pool.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    two = ncpus() >= 2
    cpu_client, cpu_sim = (0, 1) if two else (None, None)
    raise_fd_limit()
    logging.getLogger("defi_ws").setLevel(logging.ERROR)  # rotations, expected cuts
    faulthandler.dump_traceback_later(1200, exit=True)
    topics = [f"t.{i}" for i in range(args.topics)]
    rates = [float(r) for r in args.rate.split(",")]
    header("pool: redundancy CPU, rotation under load, idle connections", [
        "simulator (ExchangeSimulator, generic protocol, uvloop) in its own process" +
        (" on CPU 1, client on CPU 0" if two else " (one CPU: shared with the client)"),
        "handler: JsonHandler(sequence_field='seq'), on_data counts and reads one field; "
        "the pool de-duplicates on topic + seq read from the raw bytes",
        f"CPU: {', '.join(f'{r:,.0f}' for r in rates)} msg/s in total over {args.topics} "
        f"topics (~90 B messages), venues: {args.emitters}, {args.seconds:g} s "
        f"windows after {args.warmup:g} s, {args.repeat} repetitions in rotated order; "
        f"client loop {args.loop}, CPU from time.process_time()",
        f"rotation: {args.rotations} per trigger at {args.rotation_rate:,.0f} msg/s over "
        f"{args.topics} topics, rotation_overlap_s={args.overlap:g}, "
        f"redundancy {args.rotation_redundancy}",
        f"idle: {args.idle_connections:,} connections, WsPing every {args.heartbeat:g} s, "
        "no stream, fresh process per row; KiB/conn = VmRSS delta over connections 2..N",
    ])
    for rate in rates if "cpu" in parts else []:
        for emitter in args.emitters.split(","):
            sim = (Sim(cpu_sim, rate_per_s=rate / args.topics) if emitter == "simulator"
                   else Sim(cpu_sim, batched_rate=rate))
            pin(cpu_client)
            try:
                bench_cpu(args, sim, topics, rate, emitter)
            finally:
                sim.close()
    if "rotation" in parts:
        pin(cpu_client)
        bench_rotation(args, topics, cpu_sim)
    if "idle" in parts:
        bench_idle(args, cpu_client, cpu_sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
