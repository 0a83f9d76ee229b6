"""Inbound throughput: messages per second through each client, same run, same server.

A blast server (its own process) pre-encodes thousands of ~230-byte Binance-style
trade frames (varying prices and ids) into one buffer and writes it in a loop right
after the HTTP upgrade response (it also answers PINGs, so heartbeats stay healthy).
Each client runs in its own process for ``--seconds`` after a short warm-up and counts
the messages it handled. A raw byte-counting client (an asyncio/uvloop Protocol, no
WebSocket parsing) shows the ceiling: what the server and the kernel deliver.

Reported: median msgs/s over ``--repeat`` repetitions with min-max, and each client's
ratio to the same-work baseline (a hand-written pure-Python picows listener doing
``orjson.loads`` + the same user callback), taken within each repetition. The client
order rotates between repetitions. With 2+ CPUs the server is pinned to one CPU and
the clients to another (``--no-pin`` turns that off).

    python bench/throughput.py [--seconds 1.5] [--repeat 3] [--loop both] [--plot]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing as mp
import os
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, median_range, ncpus, pin, plot_bars, run_loop, table

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FRAMES_PER_BUFFER = 4096


def trade_payloads(count: int = FRAMES_PER_BUFFER) -> list[bytes]:
    """Binance-style trade messages, ~230 bytes each, with varying prices and ids."""
    rng = random.Random(7)
    out = []
    for i in range(count):
        out.append(orjson.dumps({
            "e": "trade", "E": 1_700_000_000_000 + i, "s": "BTCUSDT", "t": 3_000_000_000 + i,
            "p": f"{60000 + rng.random() * 1000:.2f}", "q": f"{rng.random():.8f}",
            "T": 1_700_000_000_000 + i, "m": rng.random() < 0.5, "M": True,
            "pad": "x" * rng.randint(85, 95),
        }))
    return out


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def trade_frames(count: int = FRAMES_PER_BUFFER) -> bytes:
    """Unmasked server TEXT frames of :func:`trade_payloads`, back to back."""
    return b"".join(server_frame(0x1, p) for p in trade_payloads(count))


# ------------------------------------------------------------------------ server


def serve(port_conn: Any, cpu: int | None, make_buffer: Callable[[], bytes] | None = None,
          prefix: Callable[[int], bytes] | None = None) -> None:
    """The blast server process: upgrade, then write the buffer until the peer leaves.

    ``make_buffer`` builds the frames written in a loop (default: ~15 MB of trades);
    ``prefix(k)``, if given, is written before the k-th copy of the buffer.
    """
    pin(cpu)
    buf = make_buffer() if make_buffer is not None else trade_frames() * 16  # ~15 MB

    async def answer_pings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Client frames are masked; only PING (answered) and CLOSE (ends) matter.
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i & 3] for i, c in enumerate(await reader.readexactly(n)))
            if b0 & 0x0F == 0x9:
                writer.write(server_frame(0xA, data))  # between two whole buffers
            elif b0 & 0x0F == 0x8:
                return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        lines = request.split(b"\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in lines
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        pings = asyncio.ensure_future(answer_pings(reader, writer))
        written = 0
        try:
            while not pings.done():
                if prefix is not None:
                    writer.write(prefix(written))
                writer.write(buf)
                written += 1
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pings.cancel()
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_conn.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    run_loop("uvloop", main)


# ------------------------------------------------------------------------ clients

RAW = "raw socket ceiling (bytes only)"
FULL = "defi-ws full stack (FeedClient)"
LISTENER = "defi-ws FeedListener + orjson"
FRAME_ONLY = "defi-ws frame-only (C counters, no decode, no callback)"
TYPED = "defi-ws typed (msgspec, 9 fields)"
TYPED_MIN = "defi-ws typed (msgspec, 1 field)"
BASELINE = "baseline: picows py listener + orjson"
COUNT_ONLY = "picows count-only (py listener)"
AIOHTTP = "aiohttp + orjson"
WEBSOCKETS = "websockets + orjson"

CLIENTS = [RAW, FULL, LISTENER, FRAME_ONLY, TYPED, TYPED_MIN, BASELINE, COUNT_ONLY, AIOHTTP,
           WEBSOCKETS]


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (port, key))


def run_client(kind: str, loop_name: str, url: str, seconds: float, warmup: float,
               cpu: int | None, out: Any) -> None:
    """One client process: connect, warm up, count for ``seconds``, send the rate, exit."""
    pin(cpu)
    state: dict[str, Any] = {"n": 0, "px": None}

    def callback(msg: Any) -> None:  # the "user callback": reads one field
        state["px"] = msg["p"]

    def attr_callback(msg: Any) -> None:
        state["px"] = msg.p

    async def measure(counter: Any) -> tuple[float, int]:
        await asyncio.sleep(warmup)
        n0, t0 = counter(), time.perf_counter()
        await asyncio.sleep(seconds)
        return (counter() - n0) / (time.perf_counter() - t0), counter()

    async def main() -> tuple[float, float]:
        host, port = url.removeprefix("ws://").rstrip("/").split(":")
        if kind == RAW:
            loop = asyncio.get_running_loop()
            nbytes = [0]

            class Counter(asyncio.BufferedProtocol):
                buf = bytearray(256 * 1024)

                def get_buffer(self, sizehint: int) -> Any:
                    return self.buf

                def buffer_updated(self, n: int) -> None:
                    nbytes[0] += n

            transport, _ = await loop.create_connection(Counter, host, int(port))
            transport.write(upgrade_request(int(port)))
            rate, _ = await measure(lambda: nbytes[0])
            return rate, 0.0

        if kind == FULL:
            from defi_ws.client import FeedClient
            from defi_ws.handler import JsonHandler

            class TradeHandler(JsonHandler):
                def on_message(self, message: Any) -> None:
                    state["px"] = message["p"]

            # No topics: LIVE right after connect. Heartbeat default (WsPing), stale on.
            client = FeedClient(TradeHandler(url), stale_after_s=5.0, close_timeout_s=0.1)
            client.start()
            await client.wait_live(10)
            rate, _ = await measure(lambda: client.health.counter("messages"))
            assert client.health.counter("decode_errors") == 0
            return rate, 0.0

        if kind in (AIOHTTP, WEBSOCKETS):
            task: Any
            if kind == AIOHTTP:
                import aiohttp

                session = aiohttp.ClientSession()
                ws = await session.ws_connect(url, max_msg_size=0, compress=0)
                state["keep"] = session  # never collected: the process exits hard

                async def consume() -> None:
                    async for msg in ws:
                        callback(orjson.loads(msg.data))
                        state["n"] += 1
            else:
                from websockets.asyncio.client import connect

                ws = await connect(url, compression=None, max_size=None)
                state["keep"] = ws

                async def consume() -> None:
                    async for message in ws:
                        callback(orjson.loads(message))
                        state["n"] += 1

            task = asyncio.ensure_future(consume())
            rate, _ = await measure(lambda: state["n"])
            task.cancel()
            return rate, 0.0

        import picows

        from defi_ws._core import FeedListener

        class Baseline(picows.WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                state["n"] += 1
                callback(orjson.loads(frame.get_payload_as_memoryview()))

        class CountOnly(picows.WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                state["n"] += 1

        def factory() -> Any:
            if kind == LISTENER:
                return FeedListener(callback)
            if kind == FRAME_ONLY:
                return FeedListener(None, decode=None)  # per-frame C work only
            if kind in (TYPED, TYPED_MIN):
                import msgspec

                from defi_ws.typed import struct_decoder

                class Trade(msgspec.Struct, gc=False):  # no cycles: skip GC tracking
                    e: str
                    E: int
                    s: str
                    t: int
                    p: str
                    q: str
                    T: int
                    m: bool
                    M: bool

                class Price(msgspec.Struct, gc=False):
                    p: str

                return FeedListener(attr_callback,
                                    decode=struct_decoder(Trade if kind == TYPED else Price))
            if kind == BASELINE:
                return Baseline()
            return CountOnly()

        transport, listener = await picows.ws_connect(factory, url, enable_auto_ping=False)
        if isinstance(listener, FeedListener):
            rate, _ = await measure(lambda: listener.messages)
            assert listener.decode_errors == 0 and listener.callback_errors == 0
        else:
            rate, _ = await measure(lambda: state["n"])
        return rate, 0.0

    rate, _ = run_loop(loop_name, main)
    out.send(rate)
    out.close()
    os._exit(0)  # no closing handshakes: the server just sees the socket go


def measure(kind: str, loop_name: str, url: str, seconds: float, warmup: float,
            cpu: int | None) -> float:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client,
                       args=(kind, loop_name, url, seconds, warmup, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(seconds + warmup + 30):
        proc.kill()
        raise RuntimeError(f"{kind} on {loop_name}: no result")
    rate = float(recv.recv())
    proc.join(10)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per client")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured time first")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (>= 3 for medians)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    parser.add_argument("--clients", default="all",
                        help="comma-separated substrings of client names (default all)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--plot", action="store_true", help="write throughput.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)

    clients = CLIENTS if args.clients == "all" else [
        c for c in CLIENTS if any(s.strip().lower() in c.lower() for s in args.clients.split(","))
        or c == BASELINE]
    pinned = not args.no_pin and ncpus() >= 2
    server_cpu, client_cpu = (1, 0) if pinned else (None, None)
    frame_sizes = [len(server_frame(1, p)) for p in trade_payloads()]
    avg_frame = sum(frame_sizes) / len(frame_sizes)

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=serve, args=(send, server_cpu), daemon=True)
    server.start()
    url = f"ws://127.0.0.1:{recv.recv()}/"
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    header("throughput: inbound msgs/s", [
        f"{args.repeat} repetitions x {args.seconds}s measured (+{args.warmup}s warm-up), "
        "each client in its own process",
        f"frames: {FRAMES_PER_BUFFER} distinct Binance-style trades, payload "
        f"{min(frame_sizes) - 4}-{max(frame_sizes) - 4} B, avg frame {avg_frame:.1f} B on the wire",
        "server pinned to CPU 1, clients to CPU 0" if pinned else "no CPU pinning",
        "raw ceiling: bytes/s divided by the average frame size; it is also the server's "
        "floor (server and kernel deliver at least this)",
        "full stack = FeedClient + JsonHandler subclass (on_message reads one field), "
        "WsPing heartbeat, stale_after_s=5, health counters, no topics (LIVE on connect)",
    ])
    medians: dict[str, dict[str, float]] = {}
    summary: dict[str, dict[str, list[float]]] = {}
    try:
        for loop_name in loops:
            rates: dict[str, list[float]] = {k: [] for k in clients}
            ratios: dict[str, list[float]] = {k: [] for k in clients}
            frame_vs_count: list[float] = []
            for rep in range(args.repeat):
                order = clients[rep % len(clients):] + clients[:rep % len(clients)]
                got = {kind: measure(kind, loop_name, url, args.seconds, args.warmup, client_cpu)
                       for kind in order}
                got[RAW] = got.get(RAW, 0.0) / avg_frame
                for kind, rate in got.items():
                    rates[kind].append(rate)
                    ratios[kind].append(rate / got[BASELINE])
                if FRAME_ONLY in got and COUNT_ONLY in got:
                    frame_vs_count.append(got[FRAME_ONLY] / got[COUNT_ONLY])
            print(f"## {loop_name}\n")
            rows = []
            for kind in clients:
                med, rng = median_range(rates[kind])
                extra = ""
                if kind == RAW:
                    extra = f" ({statistics.median(rates[kind]) * avg_frame / 1e6:,.0f} MB/s)"
                rows.append([kind, med + extra, rng,
                             f"{statistics.median(ratios[kind]):.2f}x "
                             f"({min(ratios[kind]):.2f}-{max(ratios[kind]):.2f})"])
            table(["client", "msgs/s (median)", "min-max", "vs baseline (median, min-max)"],
                  rows)
            medians[loop_name] = {k: statistics.median(v) for k, v in rates.items()}
            summary[loop_name] = {"full": ratios.get(FULL, []), "typed": ratios.get(TYPED, []),
                                  "frame": frame_vs_count}
        print("## targets (ratios within each repetition, median)\n")
        rows = []
        for loop_name in loops:
            s = summary[loop_name]
            for label, key, goal in (("full stack vs baseline", "full", 1.5),
                                     ("typed decode vs baseline", "typed", 2.2),
                                     ("frame-only vs picows count-only", "frame", 3.0)):
                if not s[key]:
                    continue
                value = statistics.median(s[key])
                rows.append([loop_name, label, f">= {goal}x", f"{value:.2f}x",
                             "met" if value >= goal else "missed"])
        table(["loop", "target", "goal", "measured", ""], rows, "llrrl")
    finally:
        server.terminate()
        server.join(5)
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "throughput.png"), "inbound throughput (median)",
                  {k: {c: v for c, v in m.items()} for k, m in medians.items()}, "msgs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
