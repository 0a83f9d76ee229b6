"""Echo round-trip latency: sequential 230-byte round trips against an echo server.

The echo server (picows, uvloop, its own process) answers each TEXT message with the
same payload. Each client runs in its own process, sends one message, waits for the
echo, and sends the next: ``--warmup`` round trips unmeasured, then ``--count``
measured (``time.perf_counter_ns`` from just before the send to the moment the reply
reaches user code). Two placements, set with ``os.sched_setaffinity`` in the child
processes: client and server on the same CPU, and on different CPUs.

Clients: defi-ws ``FeedClient`` (``send()`` from the handler's ``on_data``), defi-ws
``FeedListener`` on picows (reply sent from the callback), raw picows (pure-Python
listener), aiohttp and websockets (``await send``/``await receive``), and a blocking
socket floor (pre-encoded masked frame, ``sendall`` + ``recv``, no event loop).

    python bench/latency.py [--count 20000] [--warmup 2000] [--loop uvloop] [--plot]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing as mp
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, ncpus, pin, plot_bars, run_loop, table

PAYLOAD = (b'{"e":"trade","E":1700000000000,"s":"BTCUSDT","t":3000000000,"p":"60123.45",'
           b'"q":"0.12345678","T":1700000000000,"m":true,"M":true,"pad":"')
PAYLOAD = PAYLOAD + b"x" * (228 - len(PAYLOAD)) + b'"}'
assert len(PAYLOAD) == 230

PCTS = (50.0, 90.0, 99.0, 99.9)


def percentiles(samples_ns: list[int]) -> list[float]:
    """p50/p90/p99/p99.9 in microseconds (nearest rank)."""
    s = sorted(samples_ns)
    return [s[min(len(s) - 1, round(p / 100 * len(s)) - 1)] / 1000 for p in PCTS]


# ------------------------------------------------------------------------ server


def serve(port_conn: Any, cpu: int | None) -> None:
    pin(cpu)
    import picows

    class Echo(picows.WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())

    async def main() -> None:
        server = await picows.ws_create_server(lambda request: Echo(), "127.0.0.1", 0)
        port_conn.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    run_loop("uvloop", main)


# ------------------------------------------------------------------------ clients

FEEDCLIENT = "defi-ws FeedClient"
LISTENER = "defi-ws FeedListener"
PICOWS = "picows (py listener)"
AIOHTTP = "aiohttp"
WEBSOCKETS = "websockets"
FLOOR = "raw blocking socket (floor)"
CLIENTS = [FLOOR, FEEDCLIENT, LISTENER, PICOWS, AIOHTTP, WEBSOCKETS]


class PingPong:
    """Callback-driven round trips: the reply handler sends the next message."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total = total + warmup
        self.warmup = warmup
        self.samples: list[int] = []
        self.sent = 0
        self.t0 = 0
        self.send: Callable[[], object] = lambda: None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self.t0 = time.perf_counter_ns()
        self.sent = 1
        self.send()

    def on_reply(self, _message: Any) -> None:
        t = time.perf_counter_ns()
        if self.sent > self.warmup:
            self.samples.append(t - self.t0)
        if self.sent >= self.total:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent += 1
        self.t0 = time.perf_counter_ns()
        self.send()


def floor_client(port: int, count: int, warmup: int) -> list[int]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert b" 101 " in response.split(b"\r\n", 1)[0], response
    mask = b"\x12\x34\x56\x78"
    masked = bytes(c ^ mask[i & 3] for i, c in enumerate(PAYLOAD))
    frame = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(PAYLOAD)) + mask + masked
    expect = 4 + len(PAYLOAD)
    buf = bytearray(expect)
    view = memoryview(buf)
    samples = []
    for i in range(count + warmup):
        t0 = time.perf_counter_ns()
        sock.sendall(frame)
        got = 0
        while got < expect:
            got += sock.recv_into(view[got:])
        t1 = time.perf_counter_ns()
        if i >= warmup:
            samples.append(t1 - t0)
    sock.close()
    return samples


def run_client(kind: str, loop_name: str, port: int, count: int, warmup: int,
               cpu: int | None, out: Any) -> None:
    pin(cpu)
    url = f"ws://127.0.0.1:{port}/"
    if kind == FLOOR:
        out.send(floor_client(port, count, warmup))
        os._exit(0)

    async def main() -> list[int]:
        if kind in (AIOHTTP, WEBSOCKETS):
            samples: list[int] = []
            if kind == AIOHTTP:
                import aiohttp

                session = aiohttp.ClientSession()
                ws = await session.ws_connect(url, compress=0, autoping=False)
                send, recv = ws.send_bytes, ws.receive
            else:
                from websockets.asyncio.client import connect

                ws = await connect(url, compression=None, ping_interval=None)
                send, recv = ws.send, ws.recv
            text = PAYLOAD.decode()
            for i in range(count + warmup):
                t0 = time.perf_counter_ns()
                await send(text if kind == WEBSOCKETS else PAYLOAD)
                await recv()
                if i >= warmup:
                    samples.append(time.perf_counter_ns() - t0)
            globals()["_keep"] = (ws, locals().get("session"))
            return samples

        import picows

        pp = PingPong(count, warmup)
        if kind == FEEDCLIENT:
            from defi_ws.client import FeedClient
            from defi_ws.handler import JsonHandler

            class EchoHandler(JsonHandler):
                decode = None  # the bytes as they came (a borrowed memoryview)

            # on_data: the client's hot path calls pp.on_reply directly (data_sink).
            client = FeedClient(EchoHandler(url, on_data=pp.on_reply), close_timeout_s=0.1)
            client.start()
            await client.wait_live(10)
            pp.send = lambda: client.send(PAYLOAD)
        else:
            from defi_ws._core import FeedListener

            class Raw(picows.WSListener):  # type: ignore[misc]
                def on_ws_frame(self, transport: Any, frame: Any) -> None:
                    pp.on_reply(frame.get_payload_as_memoryview())

            def factory() -> Any:
                return FeedListener(pp.on_reply, decode=None) if kind == LISTENER else Raw()

            transport, _ = await picows.ws_connect(factory, url)
            pp.send = lambda: transport.send(picows.WSMsgType.TEXT, PAYLOAD)
        pp.start()
        await pp.done
        return pp.samples

    samples = run_loop(loop_name, main)
    out.send(samples)
    os._exit(0)


def measure(kind: str, loop_name: str, port: int, count: int, warmup: int,
            cpu: int | None) -> list[int]:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client, args=(kind, loop_name, port, count, warmup, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(120):
        proc.kill()
        raise RuntimeError(f"{kind}: no result")
    samples: list[int] = recv.recv()
    proc.join(10)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="measured round trips")
    parser.add_argument("--warmup", type=int, default=2_000, help="unmeasured round trips")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="uvloop")
    parser.add_argument("--plot", action="store_true", help="write latency.png")
    parser.add_argument("--plot-dir", default="bench/plots")
    args = parser.parse_args(argv)
    placements = [("same CPU", 0, 0)]
    if ncpus() >= 2:
        placements.append(("different CPUs", 0, 1))
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    header("latency: sequential echo round trips (230 B)", [
        f"{args.count:,} measured round trips after {args.warmup:,} warm-up, per client",
        "echo server: picows + uvloop, pure-Python listener, own process",
        "placement via os.sched_setaffinity in the child processes (client CPU / server CPU)",
        "defi-ws and picows reply from the frame callback; aiohttp/websockets await "
        "send()+receive(); the floor is a blocking socket with a pre-encoded frame",
    ])
    plot: dict[str, dict[str, float]] = {}
    for placement, client_cpu, server_cpu in placements:
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        server = ctx.Process(target=serve, args=(send, server_cpu), daemon=True)
        server.start()
        port = recv.recv()
        try:
            floor = percentiles(measure(FLOOR, loops[0], port, args.count, args.warmup,
                                        client_cpu))
            for loop_name in loops:
                rows = []
                for kind in CLIENTS:
                    pct = floor if kind == FLOOR else percentiles(
                        measure(kind, loop_name, port, args.count, args.warmup, client_cpu))
                    rows.append([kind, *(f"{v:.1f}" for v in pct), f"{pct[0] / floor[0]:.2f}x"])
                    plot.setdefault(f"{placement} ({loop_name})", {})[kind] = pct[0]
                print(f"## {placement} (client CPU {client_cpu}, server CPU {server_cpu}), "
                      f"{loop_name}\n")
                table(["client", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "p50 vs floor"], rows)
        finally:
            server.terminate()
            server.join(5)
    if args.plot:
        os.makedirs(args.plot_dir, exist_ok=True)
        plot_bars(os.path.join(args.plot_dir, "latency.png"), "echo RTT p50", plot, "µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
