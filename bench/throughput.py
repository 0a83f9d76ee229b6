"""Inbound throughput: messages per second through each client, same run, same server.

Three message shapes, each against its own same-work baseline:

- ``trade``: a flat Binance-style trade, ~230 B; the user callback reads ``msg["p"]``.
- ``combined``: a Binance combined-stream trade ``{"stream": "btcusdt@trade", "data":
  {...12 fields...}}``, ~220 B, symbols mixed; the callback reads ``msg["data"]["p"]``.
- ``depth``: a Binance diff-depth update (``depthUpdate``, 13-17 price levels a side as
  ``[price, qty]`` string pairs), ~1 KB; the callback reads ``msg["b"][0][0]``.

A blast server (its own process) pre-encodes 4096 distinct frames of each shape (varying
prices, ids and sizes) into one buffer per shape and writes it in a loop right after the
HTTP upgrade response (the request path picks the shape; it also answers PINGs, so
heartbeats stay healthy). Each client runs in its own process for ``--seconds`` after a
short warm-up and counts the messages it handled. A raw byte-counting client (an
asyncio/uvloop Protocol, no WebSocket parsing) shows the ceiling: what the server and the
kernel deliver.

The same-work baseline of a shape is a hand-written pure-Python picows listener doing
``orjson.loads`` + the same user callback, measured with both payload accessors
(``frame.get_payload_as_bytes()`` and ``frame.get_payload_as_memoryview()``); in each
repetition the faster of the two is the reference every ratio of that shape is taken
against. Typed clients (a msgspec ``Struct`` per shape, all fields) are also compared
with a picows listener doing the same msgspec decode, and frame-only with a picows
listener that only counts. Reported: median msgs/s over ``--repeat`` repetitions with
min-max, and the ratios (median, min-max) taken within each repetition. The client order
rotates between repetitions. With 2+ CPUs the server is pinned to one CPU and the clients
to another (``--no-pin`` turns that off).

To bound the runtime, by default only the ``combined`` shape (the one most users receive)
runs every client, and only on uvloop; the other shapes, and with ``--loop both`` the
asyncio loop (``combined`` only, see ``--asyncio-shapes``), run the defi-ws clients and
the baselines. ``--clients all`` runs every client everywhere, ``--clients full,typed``
picks by name (the same-work baselines always run).

    python bench/throughput.py [--shapes trade,combined,depth] [--seconds 1.5]
        [--repeat 3] [--loop both] [--asyncio-shapes combined] [--clients all] [--plot]
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
WRITE_BYTES = 16 * 1024 * 1024  # the server's buffer per write: its shape's frames, repeated


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


# Symbol, mid price, typical size: a combined stream carries several symbols.
SYMBOLS = (("BTCUSDT", 60_000.0, 0.5), ("ETHUSDT", 3_000.0, 5.0), ("SOLUSDT", 150.0, 50.0),
           ("BNBUSDT", 600.0, 10.0), ("XRPUSDT", 0.6, 5_000.0), ("DOGEUSDT", 0.15, 20_000.0))


def combined_payloads(count: int = FRAMES_PER_BUFFER) -> list[bytes]:
    """Binance combined-stream trades: ``{"stream": ..., "data": {12 fields}}``, ~220 B."""
    rng = random.Random(11)
    out = []
    for i in range(count):
        symbol, mid, size = SYMBOLS[rng.randrange(len(SYMBOLS))]
        event_ms = 1_700_000_000_000 + 3 * i
        out.append(orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": {
            "e": "trade", "E": event_ms, "s": symbol, "t": 3_000_000_000 + i,
            "p": f"{mid * (1 + (rng.random() - 0.5) / 50):.8f}",
            "q": f"{size * rng.random() * 2:.8f}",
            "b": 40_000_000_000 + 2 * i, "a": 40_000_000_000 + 2 * i + 1,
            "T": event_ms - rng.randint(0, 3), "m": rng.random() < 0.5, "M": True,
            "X": "MARKET",
        }}))
    return out


def depth_payloads(count: int = FRAMES_PER_BUFFER) -> list[bytes]:
    """Binance diff-depth updates, 13-17 ``[price, qty]`` levels a side, ~1 KB."""
    rng = random.Random(13)
    out = []
    update_id = 50_000_000_000
    for i in range(count):
        mid = round(60_000 + rng.random() * 1000, 2)  # on the 0.01 tick

        def levels(mid: float, sign: int) -> list[list[str]]:
            price = mid + sign * 0.01
            side = []
            for _ in range(rng.randint(13, 17)):
                price += sign * 0.01 * rng.randint(1, 40)
                qty = 0.0 if rng.random() < 0.1 else rng.random() * 2  # 0: level removed
                side.append([f"{price:.8f}", f"{qty:.8f}"])
            return side

        first, update_id = update_id + 1, update_id + rng.randint(20, 60)
        out.append(orjson.dumps({
            "e": "depthUpdate", "E": 1_700_000_000_000 + 100 * i, "s": "BTCUSDT",
            "U": first, "u": update_id, "b": levels(mid, -1), "a": levels(mid, 1),
        }))
    return out


SHAPES: dict[str, tuple[Callable[[int], list[bytes]], str]] = {
    "trade": (trade_payloads, 'flat Binance-style trade, callback reads msg["p"]'),
    "combined": (combined_payloads,
                 'Binance combined-stream trade (nested), callback reads msg["data"]["p"]'),
    "depth": (depth_payloads, 'Binance diff-depth update, callback reads msg["b"][0][0]'),
}


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


def shape_frames(shape: str, count: int = FRAMES_PER_BUFFER) -> bytes:
    """Unmasked server TEXT frames of one shape's payloads, back to back."""
    return b"".join(server_frame(0x1, p) for p in SHAPES[shape][0](count))


# ------------------------------------------------------------------------ server


def serve(port_conn: Any, cpu: int | None, shapes: list[str],
          buffers: Callable[[], dict[str, bytes]] | None = None,
          prefix: Callable[[int], bytes] | None = None) -> None:
    """The blast server process: upgrade, then write the path's buffer until the peer leaves.

    The buffer of path ``/<shape>`` (``/`` is the first shape) is that shape's frames,
    repeated to ~``WRITE_BYTES``; ``buffers()``, if given, builds them instead (path name
    -> frames, in the server process). ``prefix(k)``, if given, is written before the
    k-th copy of the buffer on each connection.
    """
    pin(cpu)
    if buffers is not None:
        bufs = buffers()
    else:
        bufs = {}
        for shape in shapes:
            frames = shape_frames(shape)
            bufs[shape] = frames * max(1, WRITE_BYTES // len(frames))

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
        buf = bufs[lines[0].split()[1].decode().strip("/") or shapes[0]]
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
FULL = "defi-ws full stack (FeedClient + orjson)"
FULL_TYPED = "defi-ws full stack typed (FeedClient + msgspec Struct)"
LISTENER = "defi-ws FeedListener + orjson"
FRAME_ONLY = "defi-ws frame-only (C counters, no decode, no callback)"
TYPED = "defi-ws typed (FeedListener + msgspec Struct, all fields)"
TYPED_MIN = "defi-ws typed (FeedListener + msgspec Struct, 1 field)"
BASE_BYTES = "same-work: picows py listener + orjson (payload as bytes)"
BASE_VIEW = "same-work: picows py listener + orjson (payload as memoryview)"
BASE_TYPED = "picows py listener + the same msgspec decode (as memoryview)"
COUNT_ONLY = "picows count-only (py listener)"
AIOHTTP = "aiohttp + orjson"
WEBSOCKETS = "websockets + orjson"

CLIENTS = [RAW, FULL, FULL_TYPED, LISTENER, FRAME_ONLY, TYPED, TYPED_MIN, BASE_BYTES,
           BASE_VIEW, BASE_TYPED, COUNT_ONLY, AIOHTTP, WEBSOCKETS]
#: What every shape runs by default; PRIMARY runs every client.
CORE = [FULL, LISTENER, TYPED, BASE_BYTES, BASE_VIEW, BASE_TYPED]
PRIMARY = "combined"
BASELINES = (BASE_BYTES, BASE_VIEW)


def typed_types(shape: str) -> tuple[type, type]:
    """The msgspec Structs of a shape: (all fields, the one field the callback reads).

    Built with ``defstruct``: this module's annotations are strings, which msgspec could
    not resolve for classes local to a function. ``gc=False``: no cycles, no GC tracking.
    """
    from msgspec import defstruct

    levels = list[tuple[str, str]]
    if shape == "trade":
        return (defstruct("Trade", [("e", str), ("E", int), ("s", str), ("t", int), ("p", str),
                                    ("q", str), ("T", int), ("m", bool), ("M", bool)],
                          gc=False),
                defstruct("Price", [("p", str)], gc=False))
    if shape == "combined":
        data = defstruct("TradeData", [
            ("e", str), ("E", int), ("s", str), ("t", int), ("p", str), ("q", str),
            ("b", int), ("a", int), ("T", int), ("m", bool), ("M", bool), ("X", str)],
            gc=False)
        price = defstruct("DataPrice", [("p", str)], gc=False)
        return (defstruct("CombinedTrade", [("stream", str), ("data", data)], gc=False),
                defstruct("CombinedPrice", [("data", price)], gc=False))
    return (defstruct("DepthUpdate", [("e", str), ("E", int), ("s", str), ("U", int),
                                      ("u", int), ("b", levels), ("a", levels)], gc=False),
            defstruct("Bids", [("b", levels)], gc=False))


def callbacks(shape: str, state: dict[str, Any]) -> tuple[Callable[[Any], None],
                                                          Callable[[Any], None]]:
    """The "user callback" of a shape, for dicts and for Structs: it reads one field."""
    if shape == "trade":
        def read(msg: Any) -> None:
            state["px"] = msg["p"]

        def read_attr(msg: Any) -> None:
            state["px"] = msg.p
    elif shape == "combined":
        def read(msg: Any) -> None:
            state["px"] = msg["data"]["p"]

        def read_attr(msg: Any) -> None:
            state["px"] = msg.data.p
    else:
        def read(msg: Any) -> None:
            state["px"] = msg["b"][0][0]

        def read_attr(msg: Any) -> None:
            state["px"] = msg.b[0][0]
    return read, read_attr


def upgrade_request(port: int, path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), port, key))


def run_client(kind: str, shape: str, loop_name: str, url: str, seconds: float, warmup: float,
               cpu: int | None, out: Any) -> None:
    """One client process: connect, warm up, count for ``seconds``, send the rate, exit."""
    pin(cpu)
    state: dict[str, Any] = {"n": 0, "px": None}
    callback, attr_callback = callbacks(shape, state)

    async def measure(counter: Any) -> tuple[float, int]:
        await asyncio.sleep(warmup)
        os.getloadavg()  # window marker for bench/callgrind_stack.py (--dump-before)
        n0, t0 = counter(), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, t1 = counter(), time.perf_counter()
        os.getloadavg()
        state["window"] = n1 - n0
        return (n1 - n0) / (t1 - t0), n1

    async def main() -> tuple[float, float]:
        host, port = url.removeprefix("ws://").split("/", 1)[0].split(":")
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
            transport.write(upgrade_request(int(port), "/" + shape))
            rate, _ = await measure(lambda: nbytes[0])
            return rate, 0.0

        if kind in (FULL, FULL_TYPED):
            from defi_ws.client import FeedClient
            from defi_ws.handler import JsonHandler

            # The callback is the handler's on_data, as with the venue adapters: the
            # client's hot path calls it directly (JsonHandler.data_sink), one call per
            # message like every other client here.
            handler = JsonHandler(url, on_data=callback)
            if kind == FULL_TYPED:
                from defi_ws.typed import struct_decoder

                class Typed(JsonHandler):
                    decode = staticmethod(struct_decoder(typed_types(shape)[0]))

                handler = Typed(url, on_data=attr_callback)

            # No topics: LIVE right after connect. Heartbeat default (WsPing), stale on.
            client = FeedClient(handler, stale_after_s=5.0, close_timeout_s=0.1)
            client.start()
            await client.wait_live(10)
            rate, _ = await measure(lambda: client.health.counter("messages"))
            assert client.health.counter("decode_errors") == 0
            assert client.health.counter("callback_errors") == 0
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

        class BaselineBytes(picows.WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                state["n"] += 1
                callback(orjson.loads(frame.get_payload_as_bytes()))

        class BaselineView(picows.WSListener):  # type: ignore[misc]
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
                from defi_ws.typed import struct_decoder

                full, one = typed_types(shape)
                return FeedListener(attr_callback,
                                    decode=struct_decoder(full if kind == TYPED else one))
            if kind == BASE_TYPED:
                import msgspec

                decode = msgspec.json.Decoder(typed_types(shape)[0]).decode

                class BaselineTyped(picows.WSListener):  # type: ignore[misc]
                    def on_ws_frame(self, transport: Any, frame: Any) -> None:
                        state["n"] += 1
                        attr_callback(decode(frame.get_payload_as_memoryview()))

                return BaselineTyped()
            if kind == BASE_BYTES:
                return BaselineBytes()
            if kind == BASE_VIEW:
                return BaselineView()
            return CountOnly()

        transport, listener = await picows.ws_connect(factory, url, enable_auto_ping=False)
        if isinstance(listener, FeedListener):
            rate, _ = await measure(lambda: listener.messages)
            assert listener.decode_errors == 0 and listener.callback_errors == 0
        else:
            rate, _ = await measure(lambda: state["n"])
        return rate, 0.0

    rate, _ = run_loop(loop_name, main)
    assert state["px"] is not None or kind in (RAW, FRAME_ONLY, COUNT_ONLY), "callback never ran"
    send_window = getattr(out, "send_window", None)  # bench/callgrind_stack.py
    if send_window is not None:
        send_window(state.get("window", 0))
    out.send(rate)
    out.close()
    os._exit(0)  # no closing handshakes: the server just sees the socket go


def measure(kind: str, shape: str, loop_name: str, url: str, seconds: float, warmup: float,
            cpu: int | None) -> float:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client,
                       args=(kind, shape, loop_name, url, seconds, warmup, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(seconds + warmup + 30):
        proc.kill()
        raise RuntimeError(f"{kind} on {shape}/{loop_name}: no result")
    rate = float(recv.recv())
    proc.join(10)
    return rate


def load_note(when: str) -> str:
    """The 1-minute load average, with a warning when other work competes for the CPUs."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = load > 0.75 * ncpus() + 1  # this bench itself keeps up to ~2 processes busy
    return (f"load average {when}: {load:.1f} on {ncpus()} CPUs"
            + (" - OTHER WORK COMPETES FOR THE CPUs: rates and ratios are unreliable"
               if busy else ""))


def ratio_text(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def shape_clients(shape: str, selection: str, first_loop: bool = True,
                  primary: str = PRIMARY) -> list[str]:
    """The clients one shape runs: the default set, all, or picked by name (+ baselines)."""
    if selection == "default":
        picked = CLIENTS if shape == primary and first_loop else CORE
    elif selection == "all":
        picked = CLIENTS
    else:
        subs = [s.strip().lower() for s in selection.split(",") if s.strip()]
        picked = [c for c in CLIENTS if any(s in c.lower() for s in subs)]
    return [c for c in CLIENTS if c in picked or c in BASELINES]


#: Targets of issue 13, on the nested combined-stream shape.
TARGETS = (("FeedClient + orjson vs same-work", FULL, "ref", 1.2),
           ("FeedClient typed vs same-work", FULL_TYPED, "ref", 1.8),
           ("FeedClient typed vs picows + same msgspec decode", FULL_TYPED, BASE_TYPED, 1.25),
           ("FeedListener typed vs picows + same msgspec decode", TYPED, BASE_TYPED, 1.25))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help=f"comma-separated shapes out of {','.join(SHAPES)} (default all)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per client")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured time first")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (>= 3 for medians)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    parser.add_argument("--clients", default="default",
                        help="'default' (every client on the combined shape on uvloop, the "
                             "defi-ws clients and baselines elsewhere), 'all', or comma-separated"
                             " substrings of client names (the same-work baselines always run)")
    parser.add_argument("--asyncio-shapes", default=PRIMARY,
                        help="with --loop both: the shapes the asyncio loop runs too (default "
                             f"{PRIMARY}, with the defi-ws clients and baselines; 'all')")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--plot", action="store_true", help="write throughput.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        parser.error(f"--shapes: unknown {unknown}; choose from {','.join(SHAPES)}")
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    second = [s.strip() for s in args.asyncio_shapes.split(",") if s.strip()]
    if args.asyncio_shapes == "all":
        second = shapes
    elif [s for s in second if s not in SHAPES]:
        parser.error(f"--asyncio-shapes: choose from {','.join(SHAPES)} or 'all'")
    primary = PRIMARY if PRIMARY in shapes else shapes[0]  # the one that runs every client
    if args.asyncio_shapes == PRIMARY:
        second = [primary]
    plan = {(loop, shape): shape_clients(shape, args.clients, loop == loops[0], primary)
            for loop in loops for shape in shapes if loop == loops[0] or shape in second}
    pinned = not args.no_pin and ncpus() >= 2
    server_cpu, client_cpu = (1, 0) if pinned else (None, None)
    sizes = {shape: [len(server_frame(1, p)) for p in SHAPES[shape][0](FRAMES_PER_BUFFER)]
             for shape in shapes}
    avg_frame = {shape: sum(s) / len(s) for shape, s in sizes.items()}

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=serve, args=(send, server_cpu, shapes), daemon=True)
    server.start()
    base_url = f"ws://127.0.0.1:{recv.recv()}/"
    notes = [f"{args.repeat} repetitions x {args.seconds}s measured (+{args.warmup}s warm-up), "
             "each client in its own process"]
    for shape in shapes:
        s = sizes[shape]
        notes.append(f"shape `{shape}`: {SHAPES[shape][1]}; {FRAMES_PER_BUFFER} distinct "
                     f"messages, payload {min(s) - 4}-{max(s) - 4} B, avg frame "
                     f"{avg_frame[shape]:.1f} B on the wire; clients per loop: "
                     + ", ".join(f"{loop} {len(plan[loop, shape])}" for loop in loops
                                 if (loop, shape) in plan))
    notes += [
        "server pinned to CPU 1, clients to CPU 0" if pinned else "no CPU pinning",
        load_note("at start"),
        "reference = the faster same-work baseline of the repetition (picows py listener + "
        "orjson + the same callback, payload as bytes or as memoryview); every ratio is "
        "taken within a repetition",
        "raw ceiling: bytes/s divided by the average frame size; it is also the server's "
        "floor (server and kernel deliver at least this)",
        "full stack = FeedClient + JsonHandler(on_data = the same callback), "
        "WsPing heartbeat, stale_after_s=5, health counters, no topics (LIVE on connect); "
        "typed full stack: the handler's decode is defi_ws.typed.struct_decoder(Struct)",
    ]
    header("throughput: inbound msgs/s", notes)
    medians: dict[str, dict[str, float]] = {}
    summary: list[list[str]] = []
    targets: list[list[str]] = []
    try:
        for loop_name in loops:
            run = [sh for sh in shapes if (loop_name, sh) in plan]
            rates = {sh: {k: [] for k in plan[loop_name, sh]} for sh in run}
            ratios = {sh: {k: [] for k in plan[loop_name, sh]} for sh in run}
            # each client against the picows listener doing the same decode (or none)
            versus = {sh: {k: [] for k in plan[loop_name, sh]} for sh in run}
            refs = {sh: {k: 0 for k in BASELINES} for sh in run}
            for rep in range(args.repeat):
                for shape in run:
                    clients = plan[loop_name, shape]
                    k = rep % len(clients)
                    got = {kind: measure(kind, shape, loop_name, base_url + shape,
                                         args.seconds, args.warmup, client_cpu)
                           for kind in clients[k:] + clients[:k]}
                    if RAW in got:
                        got[RAW] /= avg_frame[shape]
                    fastest = max(BASELINES, key=lambda b: got[b])
                    refs[shape][fastest] += 1
                    got["ref"] = got[fastest]
                    for kind in clients:
                        rates[shape][kind].append(got[kind])
                        ratios[shape][kind].append(got[kind] / got["ref"])
                        peer = {TYPED: BASE_TYPED, TYPED_MIN: BASE_TYPED,
                                FULL_TYPED: BASE_TYPED, FRAME_ONLY: COUNT_ONLY}.get(kind)
                        if peer in got:
                            versus[shape][kind].append(got[kind] / got[peer])
            for shape in run:
                print(f"## {loop_name}, {shape}: {SHAPES[shape][1]}\n")
                rows = []
                for kind in plan[loop_name, shape]:
                    med, rng = median_range(rates[shape][kind])
                    if kind == RAW:
                        mbps = statistics.median(rates[shape][kind]) * avg_frame[shape] / 1e6
                        med += f" ({mbps:,.0f} MB/s)"
                    other = ratio_text(versus[shape][kind])
                    if kind in (TYPED, TYPED_MIN, FULL_TYPED) and versus[shape][kind]:
                        other += " vs picows + msgspec"
                    elif kind == FRAME_ONLY and versus[shape][kind]:
                        other += " vs picows count-only"
                    elif kind in BASELINES:
                        other = f"reference in {refs[shape][kind]}/{args.repeat}"
                    elif other == "-":
                        other = ""
                    rows.append([kind, med, rng, ratio_text(ratios[shape][kind]), other])
                table(["client", "msgs/s (median)", "min-max",
                       "vs same-work reference (median, min-max)", "other ratio"], rows)
                medians[f"{loop_name} {shape}"] = {
                    k: statistics.median(v) for k, v in rates[shape].items()}

                def med_of(series: dict[str, list[float]], kind: str) -> str:
                    values = series.get(kind, [])
                    return f"{statistics.median(values):.2f}x" if values else "-"

                summary.append([loop_name, shape, med_of(ratios[shape], FULL),
                                med_of(ratios[shape], FULL_TYPED),
                                med_of(ratios[shape], LISTENER), med_of(ratios[shape], TYPED),
                                med_of(versus[shape], TYPED),
                                med_of(versus[shape], FRAME_ONLY),
                                med_of(ratios[shape], BASE_VIEW)])
                if shape != PRIMARY:
                    continue
                for label, kind, against, goal in TARGETS:
                    values = (ratios if against == "ref" else versus)[shape].get(kind, [])
                    if not values:
                        continue
                    value = statistics.median(values)
                    targets.append([loop_name, label, f">= {goal}x", f"{value:.2f}x",
                                    "met" if value >= goal else "missed"])
        print("## ratios per shape (median of the per-repetition ratios)\n")
        table(["loop", "shape", "FeedClient", "FeedClient typed", "FeedListener",
               "typed", "typed vs picows+msgspec", "frame-only vs count-only",
               "memoryview baseline"], summary, "llrrrrrrr")
        print(f"- {load_note('at the end')}\n")
        if targets:
            print(f"## issue 13 targets, `{PRIMARY}` shape (median of the per-repetition "
                  "ratios)\n")
            table(["loop", "target", "goal", "measured", ""], targets, "llrrl")
    finally:
        server.terminate()
        server.join(5)
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "throughput.png"), "inbound throughput (median)",
                  medians, "msgs/s", log=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
