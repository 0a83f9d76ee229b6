"""Conflation: CPU per received message on a 10-key book-ticker blast.

A blast server (its own process, the one of ``bench/throughput.py``) writes, in a loop,
one buffer of Binance combined-stream book-ticker frames for ``--keys`` symbols
(``{"stream":"k0usdt@bookTicker","data":{"u":..,"s":..,"b":..,"B":..,"a":..,"A":..}}``,
~150 B), keys round-robin, each key's ``u`` counting 1, 2, ... through the buffer. Before
each copy of the buffer it writes one keyless ``{"epoch":k}`` frame, so a message's place
in the stream is ``(epoch, u)``.

Each client (its own process, pinned apart from the server) runs the same user callback
per delivered message: keep the top of book per symbol and check that the state only
moves forward (``(epoch, u)`` strictly increasing per key). Conflating clients also
check that nothing is lost: each delivered message's ``u`` is the previous one's plus one
plus the messages it replaced (``listener.superseded``). Reported per client: CPU time
(user + system of the client process) per *received* message, received messages per
second, messages per key per read (received / delivered), and the baseline's CPU per
message divided by the client's, taken within each repetition.

Baseline (same work): a hand-written pure-Python picows listener doing ``orjson.loads``
on every frame + the same callback; both payload accessors are run and the faster one
(per repetition) is the reference.

Two servers: ``blast`` writes as fast as the socket takes it (reads hold whatever piled
up: hundreds of messages per key on a busy machine); ``paced`` (a blocking socket, a
spin-wait between writes) offers ``--rate`` messages per second in writes of
``--per-key`` messages per key (one run per value), so a client that keeps up reads
about that many messages per key at a time (the target is stated for 10+ per key) and
sleeps in between. The frame-only client (no decode, no callback) shows the floor: what
each read and each frame cost before any decode, the same for every client.

    python bench/conflation.py [--seconds 1.5] [--repeat 3] [--keys 10] [--loop uvloop]
        [--mode both|blast|paced] [--per-key 10,30,100] [--rate 333000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, median_range, ncpus, pin, plot_bars, run_loop, table
from throughput import WS_GUID, serve, server_frame

PER_KEY = 4096  # messages per key in one buffer

BASE_BYTES = "baseline: picows py listener + orjson (bytes)"
BASE_VIEW = "baseline: picows py listener + orjson (memoryview)"
LISTENER = "defi-ws FeedListener + orjson, no conflation"
CONFLATED = "defi-ws FeedListener, conflate_field='stream'"
CONFLATED_HOOK = "defi-ws FeedListener, conflate_key hook (Python)"
FULL = "defi-ws FeedClient, ConflateSpec(field='stream')"
FRAME_ONLY = "floor: defi-ws frame-only (count, no decode, no callback)"
CLIENTS = [BASE_BYTES, BASE_VIEW, LISTENER, CONFLATED, CONFLATED_HOOK, FULL, FRAME_ONLY]
BASELINES = (BASE_BYTES, BASE_VIEW)


def symbols(keys: int) -> list[str]:
    return [f"K{i}USDT" for i in range(keys)]


def book_ticker_payloads(keys: int, per_key: int = PER_KEY) -> list[bytes]:
    """Combined-stream book tickers, keys round-robin, ``u`` = 1.. per key."""
    rng = random.Random(11)
    out = []
    for u in range(1, per_key + 1):
        for symbol in symbols(keys):
            bid = 100 + rng.random() * 10
            out.append(orjson.dumps({
                "stream": f"{symbol.lower()}@bookTicker",
                "data": {"u": u, "s": symbol, "b": f"{bid:.8f}", "B": f"{rng.random() * 50:.8f}",
                         "a": f"{bid + 0.01:.8f}", "A": f"{rng.random() * 50:.8f}"},
            }))
    return out


BLAST_PATH = "booktickers"  # the blast server's only path (also served at /)


def make_buffer(keys: int) -> bytes:
    return b"".join(server_frame(0x1, p) for p in book_ticker_payloads(keys))


def epoch_frame(k: int) -> bytes:
    return server_frame(0x1, b'{"epoch":%d}' % k)



def paced_serve(port_conn: Any, cpu: int | None, keys: int, per_key: int,
                interval_s: float) -> None:
    """The paced server process: ``per_key`` messages per key every ``interval_s``.

    One blocking socket per client (clients connect one after another); the epoch frame
    goes before each pass over the buffer. A client that falls behind makes ``sendall``
    block; the schedule then restarts from now instead of bursting to catch up.
    """
    pin(cpu)
    frames = [server_frame(0x1, p) for p in book_ticker_payloads(keys)]
    step = per_key * keys
    chunks = [b"".join(frames[i:i + step]) for i in range(0, len(frames), step)]
    listener = socket.create_server(("127.0.0.1", 0))
    port_conn.send(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                         + b"\r\n\r\n")
            epoch = 0
            due = time.perf_counter()
            while True:
                for index, chunk in enumerate(chunks):
                    conn.sendall(chunk if index else epoch_frame(epoch) + chunk)
                    due += interval_s
                    now = time.perf_counter()
                    if now - due > 10 * interval_s:
                        due = now       # fell behind: no catch-up burst
                    while time.perf_counter() < due:
                        pass
                epoch += 1
        except (OSError, StopIteration):
            conn.close()


# ------------------------------------------------------------------------ clients


def run_client(kind: str, loop_name: str, url: str, seconds: float, warmup: float,
               cpu: int | None, out: Any) -> None:
    """One client process: connect, warm up, measure CPU and messages, send, exit."""
    pin(cpu)
    state: dict[str, Any] = {"epoch": -1, "epochs": 0, "n": 0, "backwards": 0, "lost": 0,
                             "delivered": 0}
    book: dict[str, tuple[str, str]] = {}
    last: dict[str, tuple[int, int]] = {}
    superseded: list[Any] = [None]   # a callable giving listener.superseded, if conflating

    def callback(msg: Any) -> None:  # the user callback: top of book per symbol
        data = msg.get("data")
        if data is None:
            state["epoch"] = msg["epoch"]
            state["epochs"] += 1
            return
        key = msg["stream"]
        place = (state["epoch"], data["u"])
        prev = last.get(key)
        if prev is not None:
            if place <= prev:
                state["backwards"] += 1
            elif superseded[0] is not None:
                # nothing lost: every message since the previous one was conflated
                start = prev[1] if prev[0] == place[0] else 0
                if place[1] != start + 1 + superseded[0]():
                    state["lost"] += 1
        last[key] = place
        book[key] = (data["b"], data["a"])
        state["delivered"] += 1

    async def main() -> dict[str, float]:
        import picows

        from defi_ws._core import FeedListener

        received: Any
        if kind == FULL:
            from defi_ws.client import FeedClient
            from defi_ws.handler import ConflateSpec, JsonHandler

            handler = JsonHandler(url, on_data=callback)
            client = FeedClient(handler, conflate=ConflateSpec(field="stream"),
                                stale_after_s=5.0, close_timeout_s=0.1)
            client.start()
            await client.wait_live(10)

            def received() -> int:
                return client.health.counter("messages") + client.health.counter("conflated")
        else:
            class Baseline(picows.WSListener):  # type: ignore[misc]
                def on_ws_frame(self, transport: Any, frame: Any) -> None:
                    state["n"] += 1
                    callback(orjson.loads(frame.get_payload_as_bytes()))

            class BaselineView(picows.WSListener):  # type: ignore[misc]
                def on_ws_frame(self, transport: Any, frame: Any) -> None:
                    state["n"] += 1
                    callback(orjson.loads(frame.get_payload_as_memoryview()))

            def hook(raw: memoryview) -> bytes | None:
                end = bytes(raw[:40]).find(b'",')
                return bytes(raw[11:end]) if raw[:10] == b'{"stream":' and end > 0 else None

            def factory() -> Any:
                if kind == BASE_BYTES:
                    return Baseline()
                if kind == BASE_VIEW:
                    return BaselineView()
                if kind == LISTENER:
                    return FeedListener(callback)
                if kind == CONFLATED:
                    return FeedListener(callback, conflate_field="stream")
                if kind == FRAME_ONLY:
                    return FeedListener(None, decode=None)
                return FeedListener(callback, conflate_key=hook)

            _, listener = await picows.ws_connect(factory, url, enable_auto_ping=False)
            if isinstance(listener, FeedListener):
                if listener.conflate_field or listener.conflate_key:
                    superseded[0] = lambda: listener.superseded

                def received() -> int:
                    return int(listener.messages + listener.conflated)
            else:
                def received() -> int:
                    return int(state["n"])
        await asyncio.sleep(warmup)
        n0, d0, e0 = received(), state["delivered"], state["epochs"]
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
        n, delivered = received() - n0, state["delivered"] - d0
        keyed = n - (state["epochs"] - e0)
        return {"cpu_ns": cpu_s * 1e9 / n, "rate": n / wall_s, "cpu_share": cpu_s / wall_s,
                "per_key_read": keyed / max(delivered, 1), "backwards": state["backwards"],
                "lost": state["lost"], "keys": len(book)}

    result = run_loop(loop_name, main)
    out.send(result)
    out.close()
    os._exit(0)  # no closing handshakes: the server just sees the socket go


def measure(kind: str, loop_name: str, url: str, seconds: float, warmup: float,
            cpu: int | None) -> dict[str, float]:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client, args=(kind, loop_name, url, seconds, warmup, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(seconds + warmup + 30):
        proc.kill()
        raise RuntimeError(f"{kind}: no result")
    result: dict[str, float] = recv.recv()
    proc.join(10)
    return result


def run_mode(mode: str, args: argparse.Namespace, server_cpu: int | None,
             client_cpu: int | None, per_key: int = 0) -> dict[str, Any]:
    """All clients against one server of ``mode``; prints the table, returns medians."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    if mode == "blast":
        server = ctx.Process(target=serve, args=(send, server_cpu, [BLAST_PATH]),
                             kwargs={"buffers": lambda: {BLAST_PATH: make_buffer(args.keys)},
                                     "prefix": epoch_frame}, daemon=True)
    else:
        server = ctx.Process(target=paced_serve, args=(
            send, server_cpu, args.keys, per_key, per_key * args.keys / args.rate), daemon=True)
    server.start()
    url = f"ws://127.0.0.1:{recv.recv()}/"
    results: dict[str, list[dict[str, float]]] = {k: [] for k in CLIENTS}
    ratios: dict[str, list[float]] = {k: [] for k in CLIENTS}
    try:
        for rep in range(args.repeat):
            order = CLIENTS[rep % len(CLIENTS):] + CLIENTS[:rep % len(CLIENTS)]
            got = {kind: measure(kind, args.loop, url, args.seconds, args.warmup, client_cpu)
                   for kind in order}
            reference = min(got[k]["cpu_ns"] for k in BASELINES)
            for kind, result in got.items():
                results[kind].append(result)
                ratios[kind].append(reference / result["cpu_ns"])
    finally:
        server.terminate()
        server.join(5)
    if mode == "blast":
        print("## blast: the server writes as fast as the socket takes it\n")
    else:
        print(f"## paced: {per_key} messages per key ({per_key * args.keys} frames) every "
              f"{per_key * args.keys / args.rate * 1e6:,.0f} us ({args.rate:,.0f} msgs/s "
              "offered)\n")
    rows = []
    for kind in CLIENTS:
        rs = results[kind]
        cpu_med, cpu_rng = median_range([r["cpu_ns"] for r in rs], "{:,.0f}")
        rate_med, _ = median_range([r["rate"] for r in rs])
        rows.append([
            kind, cpu_med, cpu_rng, rate_med,
            f"{statistics.median(r['cpu_share'] for r in rs) * 100:.0f}%",
            f"{statistics.median(r['per_key_read'] for r in rs):,.1f}",
            f"{statistics.median(ratios[kind]):.2f}x ({min(ratios[kind]):.2f}-"
            f"{max(ratios[kind]):.2f})",
            f"{sum(int(r['backwards']) for r in rs)} / {sum(int(r['lost']) for r in rs)}",
        ])
    table(["client", "CPU ns per received msg (median)", "min-max", "received msgs/s",
           "client CPU busy", "msgs per key per read", "baseline CPU per msg / this",
           "state backwards / lost"], rows)
    def med(kind: str) -> float:
        return statistics.median(r["cpu_ns"] for r in results[kind])

    return {
        "cpu_ns": {kind: med(kind) for kind in CLIENTS},
        "above_floor": (min(med(k) for k in BASELINES) - med(FRAME_ONLY),
                        med(CONFLATED) - med(FRAME_ONLY)),
        "listener": statistics.median(ratios[CONFLATED]),
        "full": statistics.median(ratios[FULL]),
        "per_read": statistics.median(r["per_key_read"] for r in results[CONFLATED]),
        "bad": (sum(int(r["backwards"]) for k in CLIENTS for r in results[k]),
                sum(int(r["lost"]) for k in CLIENTS for r in results[k])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per client")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured time first")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (>= 3 for medians)")
    parser.add_argument("--keys", type=int, default=10, help="symbols in the stream")
    parser.add_argument("--mode", choices=["both", "blast", "paced"], default="both")
    parser.add_argument("--per-key", default="10,30,100",
                        help="paced: messages per key per write (comma-separated: one run each)")
    parser.add_argument("--rate", type=float, default=333_000.0,
                        help="paced: messages per second offered")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--plot", action="store_true", help="write conflation.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)

    pinned = not args.no_pin and ncpus() >= 2
    server_cpu, client_cpu = (1, 0) if pinned else (None, None)
    sizes = [len(p) for p in book_ticker_payloads(args.keys, 16)]
    header("conflation: CPU per received message, book-ticker stream", [
        f"{args.repeat} repetitions x {args.seconds}s measured (+{args.warmup}s warm-up), "
        f"each client in its own process, {args.loop}",
        f"{args.keys} keys round-robin, {PER_KEY} messages per key per server buffer, "
        f"payload {min(sizes)}-{max(sizes)} B, a keyless epoch frame before each buffer",
        "server pinned to CPU 1, clients to CPU 0" if pinned else "no CPU pinning",
        "CPU = user + system time of the client process; received = every data frame "
        "(delivered + conflated); per key per read = keyed received / keyed delivered",
        "state check per delivered message: (epoch, u) strictly increasing per key; "
        "conflating listeners also check u == previous u + 1 + superseded (nothing lost)",
    ])
    summary: dict[str, dict[str, Any]] = {}
    if args.mode in ("both", "paced"):
        for per_key in (int(v) for v in args.per_key.split(",")):
            summary[f"paced {per_key}/key"] = run_mode("paced", args, server_cpu, client_cpu,
                                                       per_key)
    if args.mode in ("both", "blast"):
        summary["blast"] = run_mode("blast", args, server_cpu, client_cpu)
    rows = []
    for mode, s in summary.items():
        for label, key in (("FeedListener conflate_field", "listener"),
                           ("FeedClient ConflateSpec (full stack)", "full")):
            rows.append([f"{mode}: {label}, {s['per_read']:,.1f} msgs per key per read",
                         ">= 5x lower", f"{s[key]:.2f}x", "met" if s[key] >= 5 else "missed"])
        base, ours = s["above_floor"]
        rows.append([f"{mode}: CPU above the frame-only floor, baseline {base:,.0f} ns vs "
                     f"conflated {ours:,.0f} ns", "(information)",
                     f"{base / ours:.1f}x" if ours > 0 else "-", ""])
        rows.append([f"{mode}: delivered state always the newest (backwards / lost)",
                     "0 / 0", f"{s['bad'][0]} / {s['bad'][1]}",
                     "met" if s["bad"] == (0, 0) else "missed"])
    print("## targets (CPU per received message vs the same-work baseline, median)\n")
    table(["target", "goal", "measured", ""], rows, "lrrl")
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "conflation.png"),
                  "CPU per received message (median)",
                  {mode: s["cpu_ns"] for mode, s in summary.items()}, "ns", log=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
