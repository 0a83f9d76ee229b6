"""Which TCP/TLS transport under picows: aiofastnet's or the event loop's own.

The full client stack (``FeedClient`` + ``JsonHandler``, WsPing heartbeat, stale clock)
reads a blast of ~230-byte trade frames over ``ws://`` and ``wss://`` with
``PicowsTransport(use_aiofastnet=True)`` and ``use_aiofastnet=False``, on asyncio and on
uvloop. The blast server (its own process, uvloop, stdlib ``ssl`` for ``wss://``) writes
a pre-encoded buffer in a loop; each client runs in its own process. Within each
repetition the two transports run back to back (order alternating), and the ratio
aiofastnet / loop's own is taken there, so machine load mostly cancels out. Besides
msgs/s (wall clock), each client reports its own CPU time per message, which other
processes on a shared machine disturb far less. aiofastnet is measured on uvloop too,
where ``PicowsTransport`` does not use it (it misses a reset that comes with data).

    python bench/transports.py [--seconds 1.5] [--repeat 5] [--loop both]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import multiprocessing as mp
import os
import random
import ssl
import statistics
import sys
import tempfile
import time
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import header, median_range, ncpus, pin, run_loop, table

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def blast_buffer(count: int = 4096) -> bytes:
    """Unmasked TEXT frames of Binance-style trades (~230 bytes each), back to back."""
    rng = random.Random(7)
    frames = []
    for i in range(count):
        payload = orjson.dumps({
            "e": "trade", "E": 1_700_000_000_000 + i, "s": "BTCUSDT", "t": 3_000_000_000 + i,
            "p": f"{60000 + rng.random() * 1000:.2f}", "q": f"{rng.random():.8f}",
            "T": 1_700_000_000_000 + i, "m": rng.random() < 0.5, "M": True,
            "pad": "x" * rng.randint(85, 95),
        })
        frames.append(bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload)
    return b"".join(frames)


def serve(port_conn: Any, cpu: int | None, certs: tuple[str, str] | None) -> None:
    """The blast server: upgrade, then write the buffer until the peer leaves."""
    pin(cpu)
    buf = blast_buffer() * 4
    ctx = None
    if certs is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*certs)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            while True:  # client frames (pings) are never read: the window stays open
                writer.write(buf)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port_conn.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    run_loop("uvloop", main)


def run_client(use_aiofastnet: bool, loop_name: str, url: str, ca_file: str | None,
               seconds: float, warmup: float, cpu: int | None, out: Any) -> None:
    """One client process: connect, warm up, count for ``seconds``, send the rate."""
    pin(cpu)
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.tls import TlsConfig
    from defi_ws.transport import PicowsTransport

    state: dict[str, Any] = {}

    class TradeHandler(JsonHandler):
        def on_message(self, message: Any) -> None:
            state["px"] = message["p"]

    class Forced(PicowsTransport):
        """The transport asked for, even where PicowsTransport would not use it."""

        def _aiofastnet_for(self, loop: asyncio.AbstractEventLoop) -> bool:
            return use_aiofastnet

    async def main() -> tuple[float, float]:
        client = FeedClient(TradeHandler(url), stale_after_s=5.0, close_timeout_s=0.1,
                            tls=TlsConfig(ca_file=ca_file),
                            transport=Forced(use_aiofastnet=use_aiofastnet))
        client.start()
        await client.wait_live(10)
        await asyncio.sleep(warmup)
        n0, t0, c0 = client.health.counter("messages"), time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        n = client.health.counter("messages") - n0
        return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1e9 / max(n, 1)

    out.send(run_loop(loop_name, main))
    out.close()
    os._exit(0)  # no closing handshake: the server just sees the socket go


def measure(use_aiofastnet: bool, loop_name: str, url: str, ca_file: str | None,
            seconds: float, warmup: float, cpu: int | None) -> tuple[float, float]:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_client, args=(use_aiofastnet, loop_name, url, ca_file,
                                                seconds, warmup, cpu, send))
    proc.start()
    send.close()
    if not recv.poll(seconds + warmup + 30):
        proc.kill()
        raise RuntimeError(f"aiofastnet={use_aiofastnet} on {loop_name} {url}: no result")
    rate, cpu_ns = recv.recv()
    proc.join(10)
    return float(rate), float(cpu_ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measured time per client")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured time first")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (>= 3 for medians)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio", "both"], default="both")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    args = parser.parse_args(argv)

    import trustme

    tmp = tempfile.mkdtemp(prefix="bench-transports-")
    ca = trustme.CA()
    ca_file = os.path.join(tmp, "ca.pem")
    cert_file = os.path.join(tmp, "server.pem")
    ca.cert_pem.write_to_path(ca_file)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert_file)

    pinned = not args.no_pin and ncpus() >= 2
    server_cpu, client_cpu = (1, 0) if pinned else (None, None)
    ctx = mp.get_context("fork")
    servers = []
    urls = {}
    for scheme, certs in (("ws", None), ("wss", (cert_file, cert_file))):
        recv, send = ctx.Pipe(duplex=False)
        server = ctx.Process(target=serve, args=(send, server_cpu, certs), daemon=True)
        server.start()
        servers.append(server)
        urls[scheme] = f"{scheme}://127.0.0.1:{recv.recv()}/"
    loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    header("transports: aiofastnet vs the event loop's own, inbound msgs/s", [
        f"{args.repeat} repetitions x {args.seconds}s measured (+{args.warmup}s warm-up), "
        "each client in its own process",
        "client: FeedClient + JsonHandler (on_message reads one field), WsPing, stale on",
        "server pinned to CPU 1, clients to CPU 0" if pinned else "no CPU pinning",
        "ratios: aiofastnet / loop's own, within each repetition (median, min-max); "
        "client CPU ns/msg (process time) is the steadier figure on a shared machine",
    ])
    rows = []
    try:
        for loop_name in loops:
            for scheme, url in urls.items():
                rates: dict[bool, list[float]] = {True: [], False: []}
                cpu_ns: dict[bool, list[float]] = {True: [], False: []}
                ratios, cpu_ratios = [], []
                for rep in range(args.repeat):
                    got = {}
                    for flag in (True, False) if rep % 2 == 0 else (False, True):
                        got[flag] = measure(flag, loop_name, url, ca_file if scheme == "wss"
                                            else None, args.seconds, args.warmup, client_cpu)
                        rates[flag].append(got[flag][0])
                        cpu_ns[flag].append(got[flag][1])
                    ratios.append(got[True][0] / got[False][0])
                    cpu_ratios.append(got[True][1] / got[False][1])
                row = [loop_name, scheme]
                for flag in (True, False):
                    med, rng = median_range(rates[flag])
                    row.append(f"{med} ({rng})")
                for flag in (True, False):
                    med, rng = median_range(cpu_ns[flag], "{:,.0f}")
                    row.append(f"{med} ({rng})")
                for values in (ratios, cpu_ratios):
                    row.append(f"{statistics.median(values):.3f} "
                               f"({min(values):.3f}-{max(values):.3f})")
                rows.append(row)
        table(["loop", "scheme", "aiofastnet msgs/s", "loop's own msgs/s",
               "aiofastnet client CPU ns/msg", "loop's own client CPU ns/msg",
               "msgs/s on/off", "CPU ns/msg on/off"], rows, "llrrrrrr")
    finally:
        for server in servers:
            server.terminate()
            server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
