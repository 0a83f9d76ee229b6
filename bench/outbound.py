"""Outbound cost: ns and allocations per framed send, defi-ws vs picows' own send.

One client connection to a local sink (its own process: does the WebSocket upgrade,
then reads and discards everything, on another CPU when there are two) carries every
method in turn; each sends ``--count`` messages of ~100 B in a tight loop
(``functools.partial`` callables, no Python frame of our own, GC off). Before each
method the transport's buffer and the kernel's are drained. The order of the
methods rotates between repetitions; ratios against picows' ``WSTransport.send`` are
taken inside each repetition.

Methods: picows ``WSTransport.send(TEXT, bytes)``; defi-ws ``OutBuffer.send`` (the
framing layer alone: frame masked straight from the payload into the reusable region,
one ``send()`` system call); ``FeedClient.send`` (the full stack: session check,
pacing check, framing, write); ``send_batch`` of 10 (per message); and the same with
a dict payload (``orjson.dumps`` inside, vs picows given ``orjson.dumps(d)``).

Allocations: a separate pass per method with the allocators of the object and PyMem
domains wrapped (``defi_ws._core._count_allocations``: every malloc/calloc/realloc,
freed or not), plus ``sys.getallocatedblocks()`` and tracemalloc's peak over the same
sends.

``--callgrind`` also counts user-space instructions per message under valgrind (two
runs per method, N and N + ``--extra`` messages; the difference over ``--extra``): a
figure that does not move with the machine's noise, which the wall-clock one does by
tens of percent here since the ``send()`` system call dominates it.

    python bench/outbound.py [--count 100000] [--repeat 3] [--loop uvloop|asyncio|both]
                             [--callgrind [--extra 20000]]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import hashlib
import itertools
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, ncpus, pin, plot_bars, run_loop, table

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE: dict[str, Any] = {"op": "order", "args": [{"instId": "BTC-USDT", "side": "buy",
                                                    "px": "60123.4", "sz": "0.01", "id": 1}]}
PAYLOAD = (b'{"op":"order","args":[{"instId":"BTC-USDT","side":"buy","px":"60123.4",'
           b'"sz":"0.01","id":123456789}]}')
assert len(PAYLOAD) == 100, len(PAYLOAD)
BATCH = 10
CHUNK = 1000


def sink(port_conn: Any, cpu: int | None) -> None:
    """Accept WebSocket upgrades and discard every byte, one connection at a time."""
    pin(cpu)
    server = socket.create_server(("127.0.0.1", 0))
    port_conn.send(server.getsockname()[1])
    buf = bytearray(1 << 20)
    while True:
        conn, _ = server.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
        key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")), b"")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        try:
            while conn.recv_into(buf):
                pass
        except OSError:
            pass
        conn.close()


def timed(fn: Callable[[], object], calls: int) -> int:
    """ns for ``calls`` calls of ``fn`` (GC off)."""
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for _ in itertools.repeat(None, calls):
            fn()
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def counted(fn: Callable[[], object], calls: int) -> int:
    """Allocator calls (object and PyMem domains, freed or not) during ``calls`` calls."""
    from defi_ws._core import _count_allocations

    gc.disable()
    try:
        return int(_count_allocations(fn, calls))
    finally:
        gc.enable()


def traced(fn: Callable[[], object], calls: int) -> tuple[int, int]:
    """(net ``sys.getallocatedblocks()``, tracemalloc peak growth in bytes) over the calls."""
    gc.disable()
    try:
        blocks0 = sys.getallocatedblocks()
        tracemalloc.start()
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in itertools.repeat(None, calls):
            fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return sys.getallocatedblocks() - blocks0, peak - start
    finally:
        gc.enable()


async def drain(ws: Any) -> None:
    """Until the transport's buffer is empty and the sink had time to empty the kernel's."""
    transport = ws.underlying_transport
    while transport.get_write_buffer_size():
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)


REFERENCE = "picows WSTransport.send(TEXT, bytes)"
DICT_REFERENCE = "picows WSTransport.send(TEXT, orjson.dumps(dict))"


async def connect(url: str) -> tuple[Any, Any, Any, dict[str, tuple[Callable[[], object], int]]]:
    """A live FeedClient on the sink, its picows transport, a spare OutBuffer, and every
    method as ``name -> (callable, messages per call)``, all on that one connection."""
    import orjson
    import picows

    from defi_ws._core import OutBuffer
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.heartbeat import NoPing

    client = FeedClient(JsonHandler(url), heartbeat=NoPing(), close_timeout_s=0.1)
    client.start()
    await client.wait_live(10)
    conn = client._conn
    assert conn is not None
    ws = conn.sink
    text = picows.WSMsgType.TEXT
    buffer = OutBuffer()
    batch = [PAYLOAD] * BATCH
    dumps = orjson.dumps

    def picows_dict() -> None:
        ws.send(text, dumps(MESSAGE))

    methods: dict[str, tuple[Callable[[], object], int]] = {
        REFERENCE: (functools.partial(ws.send, text, PAYLOAD), 1),
        "defi-ws OutBuffer.send(ws, bytes)": (functools.partial(buffer.send, ws, PAYLOAD), 1),
        "defi-ws FeedClient.send(bytes)": (functools.partial(client.send, PAYLOAD), 1),
        f"defi-ws OutBuffer.send_batch(ws, {BATCH} x bytes), per message": (
            functools.partial(buffer.send_batch, ws, batch), BATCH),
        f"defi-ws FeedClient.send_batch({BATCH} x bytes), per message": (
            functools.partial(client.send_batch, batch), BATCH),
        DICT_REFERENCE: (picows_dict, 1),
        "defi-ws FeedClient.send(dict)": (functools.partial(client.send, MESSAGE), 1),
    }
    return client, ws, buffer, methods


async def run(url: str, count: int, repeat: int) -> dict[str, Any]:
    client, ws, buffer, methods = await connect(url)
    names = list(methods)
    ns: dict[str, list[float]] = {n: [] for n in names}
    ratio: dict[str, list[float]] = {n: [] for n in names}
    outbound = client._outbound.buffer
    copied0 = buffer.copied_writes + outbound.copied_writes
    writes0 = buffer.writes + outbound.writes
    for fn, per_call in methods.values():  # warm-up
        for _ in range(2000 // per_call):
            fn()
        await drain(ws)
    # Methods interleave in chunks of CHUNK messages (order rotated every chunk), so
    # each sees the same conditions; per repetition, ns/msg is the median over its
    # chunks, and the ratio the median of the per-chunk ratios.
    chunks = max(1, count // CHUNK)
    for _ in range(repeat):
        per_chunk: dict[str, list[float]] = {n: [] for n in names}
        for chunk in range(chunks):
            k = chunk % len(names)
            for name in names[k:] + names[:k]:
                fn, per_call = methods[name]
                if ws.underlying_transport.get_write_buffer_size():
                    await drain(ws)
                per_chunk[name].append(timed(fn, CHUNK // per_call) / CHUNK)
        for name in names:
            ref = DICT_REFERENCE if "dict" in name else REFERENCE
            ns[name].append(statistics.median(per_chunk[name]))
            ratio[name].append(statistics.median(
                a / b for a, b in zip(per_chunk[name], per_chunk[ref], strict=True)))
    copied = buffer.copied_writes + outbound.copied_writes - copied0
    writes = buffer.writes + outbound.writes - writes0
    allocs: dict[str, tuple[int, int, int, int]] = {}
    for name, (fn, per_call) in methods.items():
        await drain(ws)
        before = buffer.copied_writes + outbound.copied_writes
        calls = counted(fn, count // per_call)
        await drain(ws)
        blocks, peak = traced(fn, count // per_call)
        allocs[name] = (calls, blocks, peak,
                        buffer.copied_writes + outbound.copied_writes - before)
    await drain(ws)
    await client.stop()
    return {"names": names, "ns": ns, "ratio": ratio, "allocs": allocs,
            "copied": copied, "writes": writes, "count": count}


async def inner(url: str, name: str, calls: int) -> None:
    """One method, ``calls`` messages (what ``--callgrind`` runs under valgrind)."""
    client, ws, _, methods = await connect(url)
    fn, per_call = methods[name]
    for _ in itertools.repeat(None, calls // per_call):
        fn()
    await drain(ws)
    await client.stop()


def instructions(port: int, loop_name: str, name: str, calls: int) -> int:
    """Instructions callgrind counts for a whole ``--inner`` run (user space only)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         os.path.abspath(__file__), "--inner", name, "--port", str(port),
         "--count", str(calls), "--loop", loop_name],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise RuntimeError(proc.stderr[-2000:])
    return int(match.group(1))


def callgrind_table(port: int, loop_name: str, extra: int) -> None:
    """Instructions per message: (N + extra) minus N messages, divided by extra."""
    base = 2000
    names = [REFERENCE, "defi-ws OutBuffer.send(ws, bytes)", "defi-ws FeedClient.send(bytes)",
             f"defi-ws OutBuffer.send_batch(ws, {BATCH} x bytes), per message",
             f"defi-ws FeedClient.send_batch({BATCH} x bytes), per message",
             DICT_REFERENCE, "defi-ws FeedClient.send(dict)"]
    per: dict[str, float] = {}
    for name in names:
        per[name] = (instructions(port, loop_name, name, base + extra)
                     - instructions(port, loop_name, name, base)) / extra
    rows = []
    for name in names:
        ref = DICT_REFERENCE if "dict" in name else REFERENCE
        rows.append([name, f"{per[name]:,.0f}", f"{per[name] / per[ref]:.2f}x"])
    print(f"## instructions per message, {loop_name} (callgrind, user space: the "
          "send() system call itself is not counted)\n")
    table(["method", "instr/msg", "vs picows send"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages per method")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="uvloop")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per message with callgrind (valgrind)")
    parser.add_argument("--extra", type=int, default=20_000,
                        help="--callgrind: messages counted beyond the base run")
    parser.add_argument("--plot", action="store_true", help="write outbound.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        run_loop(args.loop, lambda: inner(f"ws://127.0.0.1:{args.port}/", args.inner,
                                          args.count))
        return 0
    two = ncpus() >= 2
    header("outbound: ns and allocations per framed send (~100 B messages)", [
        f"{args.count:,} messages per method and repetition, {args.repeat} repetitions, "
        "method order rotated; ratios inside each repetition",
        f"sink: own process, reads and discards; client CPU 0, sink CPU {1 if two else 0}",
        "ws:// over loopback; every method on the same connection",
    ])
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=sink, args=(send, 1 if two else 0), daemon=True)
    server.start()
    port = recv.recv()
    pin(0)
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    plot: dict[str, dict[str, float]] = {}
    try:
        for loop_name in loops:
            result = run_loop(loop_name, lambda: run(f"ws://127.0.0.1:{port}/", args.count,
                                                     args.repeat))
            rows = []
            for name in result["names"]:
                values = result["ns"][name]
                ratios = result["ratio"][name]
                calls, blocks, peak, copies = result["allocs"][name]
                rows.append([
                    name, f"{statistics.median(values):,.0f}",
                    f"{min(values):,.0f}-{max(values):,.0f}",
                    f"{statistics.median(ratios):.2f}x",
                    f"{calls / result['count']:.3f}", f"{blocks:+d}", f"{peak:,}", f"{copies:,}",
                ])
            plot[loop_name] = {name.replace("defi-ws ", ""): statistics.median(
                result["ns"][name]) for name in result["names"]}
            print(f"## {loop_name}\n")
            table(["method", "ns/msg (median)", "range", "vs picows send",
                   "allocations/msg", "net blocks", "tracemalloc peak B",
                   "copied writes"], rows)
            print(f"Timed passes: {result['copied']:,} of {result['writes']:,} defi-ws writes "
                  "were not taken by the kernel at once (handed to the transport as a copy). "
                  "Allocation pass: `allocations/msg` counts every allocator call during "
                  f"{result['count']:,} messages; `net blocks` is `sys.getallocatedblocks()` "
                  "after minus before a second pass, `tracemalloc peak B` the peak growth "
                  "over it; `copied writes` the copies over both.\n")
        if args.callgrind:
            if shutil.which("valgrind") is None:
                print("--callgrind: valgrind is not installed (apt-get install valgrind)\n")
            else:
                for loop_name in loops:
                    callgrind_table(port, loop_name, args.extra)
    finally:
        server.terminate()
        server.join(5)
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "outbound.png"), "ns per message (~100 B)",
                  plot, "ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
