"""Inbound throughput: messages per second through each client, same run, same server.

A blast server (its own process) pre-encodes thousands of ~230-byte Binance-style
trade frames into one buffer and writes it in a loop. Each client runs in its own
process for ``--seconds`` and counts what it handled. Reported: median msgs/s over
``--repeat`` runs with min-max, and each client's ratio to the same-work baseline (a
hand-written pure-Python picows listener doing ``orjson.loads`` + the same callback),
taken within each repetition.

    python bench/throughput.py [--seconds 2] [--repeat 3] [--loop uvloop|asyncio|both]
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

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def trade_frames(count: int = 4096) -> bytes:
    """Unmasked server TEXT frames of Binance-style trades, ~230 bytes each."""
    rng = random.Random(7)
    out = bytearray()
    for i in range(count):
        payload = orjson.dumps({
            "e": "trade", "E": 1_700_000_000_000 + i, "s": "BTCUSDT", "t": 3_000_000_000 + i,
            "p": f"{60000 + rng.random() * 1000:.2f}", "q": f"{rng.random():.8f}",
            "T": 1_700_000_000_000 + i, "m": rng.random() < 0.5, "M": True,
            "pad": "x" * rng.randint(60, 70),
        })
        out += bytes([0x81, 126]) + len(payload).to_bytes(2, "big") if len(payload) > 125 else (
            bytes([0x81, len(payload)]))
        out += payload
    return bytes(out)


def serve(port_queue: Any) -> None:
    """The blast server process: upgrade, then write the buffer until the peer leaves."""
    buf = trade_frames() * 16

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        try:
            while True:
                writer.write(buf)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    import uvloop
    uvloop.run(main())


# ------------------------------------------------------------------------ clients


def run_client(kind: str, loop_name: str, url: str, seconds: float, out: Any) -> None:
    import picows

    from defi_ws._core import FeedListener

    state = {"n": 0, "px": None}

    def callback(msg: Any) -> None:
        state["px"] = msg["p"]

    def count(_: Any) -> None:
        state["n"] += 1

    class Baseline(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            state["n"] += 1
            callback(orjson.loads(frame.get_payload_as_memoryview()))

    class CountOnly(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            state["n"] += 1

    def factory() -> Any:
        if kind == "defi-ws full":
            return FeedListener(callback)
        if kind == "defi-ws frame-only":
            return FeedListener(lambda m: None, decode=None)
        if kind == "baseline (picows+orjson)":
            return Baseline()
        return CountOnly()

    async def main() -> None:
        transport, listener = await picows.ws_connect(factory, url)
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - start
        handled = listener.messages if isinstance(listener, FeedListener) else state["n"]
        transport.disconnect(False)
        out.put(handled / elapsed)

    if loop_name == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


CLIENTS = ["defi-ws full", "defi-ws frame-only", "baseline (picows+orjson)", "picows count-only"]


def measure(kind: str, loop_name: str, url: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=run_client, args=(kind, loop_name, url, seconds, out))
    proc.start()
    rate = float(out.get(timeout=seconds + 30))
    proc.join(10)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    url = f"ws://127.0.0.1:{ports.get(timeout=30)}/"
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    print(f"# throughput, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}, {args.repeat} x {args.seconds}s")
    try:
        for loop_name in loops:
            rates: dict[str, list[float]] = {k: [] for k in CLIENTS}
            ratios: dict[str, list[float]] = {k: [] for k in CLIENTS}
            for _ in range(args.repeat):
                rep = {kind: measure(kind, loop_name, url, args.seconds) for kind in CLIENTS}
                for kind, rate in rep.items():
                    rates[kind].append(rate)
                    ratios[kind].append(rate / rep["baseline (picows+orjson)"])
            print(f"\n## {loop_name}\n")
            print("| client | msgs/s (median) | min-max | vs baseline |")
            print("|---|---:|---:|---:|")
            for kind in CLIENTS:
                r = rates[kind]
                print(f"| {kind} | {statistics.median(r):,.0f} | {min(r):,.0f}-{max(r):,.0f} "
                      f"| {statistics.median(ratios[kind]):.2f}x |")
    finally:
        server.terminate()
        server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
