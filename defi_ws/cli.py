"""The ``defi-ws`` command line.

* ``defi-ws demo [--duration S] [--rate N] [--no-faults]``: starts the in-process
  :class:`~defi_ws.testing.ExchangeSimulator`, connects a :class:`~defi_ws.FeedClient`
  to it with a few topics, injects a fault every few seconds, and shows live counters,
  then a summary. It needs no network.
* ``defi-ws tail URL [--subscribe JSON]... [--ping ws|text:ping|json:{...}]
  [--stale-after S] [--format raw|json|pretty] [--stats]``: tails a feed with
  reconnects; messages to stdout, status to stderr; Ctrl-C prints a summary.
* ``defi-ws bench ...``: runs the benchmarks of a source checkout (``bench/run.py``).

Errors (bad URL, unreachable host, bad JSON) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from defi_ws._compat import TimeoutErrors

__all__ = ["main"]

TOPICS = ["trades.BTC-USD", "trades.ETH-USD", "trades.SOL-USD"]


async def run_demo(duration_s: float, rate_per_s: float, faults: bool) -> int:
    """Run the demo; return the process exit status."""
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.heartbeat import WsPing
    from defi_ws.reconnect import ExponentialBackoff
    from defi_ws.testing import ExchangeSimulator

    received: Counter[str] = Counter()

    def on_data(message: Any) -> None:
        received[message.get("topic", "?")] += 1

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value / 1e6:.2f}"

    fault_plan = ["drop_all", "close_all", "maintenance"]
    async with ExchangeSimulator(rate_per_s=rate_per_s) as sim:
        client = FeedClient(
            JsonHandler(sim.url, on_data=on_data, sequence_field="seq"),
            topics=TOPICS,
            reconnect=ExponentialBackoff(initial_s=0.2, max_s=2.0),
            heartbeat=WsPing(interval_s=0.5, timeout_s=2.0),
            stale_after_s=2.0,
            name="demo",
        )
        tty = sys.stdout.isatty()
        print(f"defi-ws demo: venue simulator at {sim.url}, topics {', '.join(TOPICS)}")
        print("faults every 3 s: " + (", ".join(fault_plan) if faults else "off"))
        print("columns: state, messages, rate, heartbeat RTT p50/p99 (ms), reconnects, "
              "sequence gaps, last disconnect reason")
        async with client:
            start = time.monotonic()
            next_fault = start + 3.0
            fault_index = 0
            previous_total = 0
            previous_t = start
            while time.monotonic() - start < duration_s:
                await asyncio.sleep(0.5)
                now = time.monotonic()
                total = sum(received.values())
                rate = (total - previous_total) / max(now - previous_t, 1e-9)
                previous_total, previous_t = total, now
                last = client.last_disconnect
                rtt = client.health.rtt
                line = (
                    f"t={now - start:5.1f}s {client.state.name:<14} msgs={total:>7} "
                    f"rate={rate:>7,.0f}/s rtt={ms(rtt.percentile_ns(0.5))}/"
                    f"{ms(rtt.percentile_ns(0.99))} reconnects={client.health.reconnects} "
                    f"gaps={client.health.gaps} last={last.describe() if last else '-'}"
                )
                print(("\r" + line[:160].ljust(160)) if tty else line, end="" if tty else "\n",
                      flush=True)
                if faults and now >= next_fault:
                    fault = fault_plan[fault_index % len(fault_plan)]
                    fault_index += 1
                    next_fault = now + 3.0
                    if fault == "drop_all":
                        sim.drop_all()
                    elif fault == "close_all":
                        sim.close_all(1001, "going away")
                    else:
                        sim.maintenance()
            if tty:
                print()
        snap = client.snapshot()
        print("\nsummary")
        print(f"  messages received   {sum(received.values()):>10}")
        for topic in TOPICS:
            print(f"    {topic:<18}{received[topic]:>10}")
        print(f"  reconnects          {snap['reconnects']:>10}")
        print(f"  sequence gaps       {snap['gaps']:>10}")
        print(f"  heartbeat RTT ms    p50 {snap['rtt']['p50_ms']}  p99 {snap['rtt']['p99_ms']}  "
              f"max {snap['rtt']['max_ms']}  ({snap['rtt']['count']} pongs)")
        for reason, count in client.health.disconnects.most_common():
            print(f"  disconnects {reason:<18}{count:>5}")
    return 0


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_ping(spec: str) -> Any:
    """``ws`` | ``none`` | ``text:PING[:PONG]`` | ``json:{...}[=PONG_PREFIX]`` -> heartbeat."""
    from defi_ws.heartbeat import JsonPing, NoPing, TextPing, WsPing

    if spec == "ws":
        return WsPing()
    if spec == "none":
        return NoPing()
    if spec.startswith("text:"):
        ping, _, pong = spec[5:].partition(":")
        return TextPing(ping or "ping", pong or "pong")
    if spec.startswith("json:"):
        body, _, prefix = spec[5:].partition("=")
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--ping json: not valid JSON: {exc}") from None
        return JsonPing(message, pong_prefix=(prefix or '{"event":"pong"').encode())
    raise CliError(f"--ping: expected ws, none, text:PING[:PONG] or json:{{...}}, got {spec!r}")


async def run_tail(args: argparse.Namespace) -> int:
    """Tail a feed until Ctrl-C (or --duration); return the exit status."""
    from defi_ws.client import FeedClient
    from defi_ws.errors import FatalDisconnect
    from defi_ws.handler import JsonHandler
    from defi_ws.reconnect import ExponentialBackoff
    from defi_ws.transport import redact_url
    from defi_ws.urls import url_config_problem

    url: str = args.url
    if not url.startswith(("ws://", "wss://")):
        raise CliError(f"URL must start with ws:// or wss://, got {redact_url(url)!r}")
    problem = url_config_problem(url, "URL")
    if problem is not None:
        raise CliError(problem)
    subscribe: list[Any] = []
    for text in args.subscribe:
        try:
            subscribe.append(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--subscribe: not valid JSON ({exc}): {text[:60]!r}") from None
    heartbeat = parse_ping(args.ping)
    out = sys.stdout.buffer
    fmt = args.format
    option = orjson.OPT_INDENT_2 if fmt == "pretty" else 0

    class Tail(JsonHandler):
        decode: Callable[[memoryview], Any] | None = (
            None if fmt == "raw" else staticmethod(orjson.loads))
        control_prefixes: tuple[bytes, ...] | None = ()  # nothing to classify

        def classify(self, message: Any) -> list[Any]:
            return []

        def on_message(self, message: Any) -> None:
            if fmt == "raw":
                out.write(bytes(message) + b"\n")
            else:
                out.write(orjson.dumps(message, option=option) + b"\n")

    client: FeedClient

    went_live = False

    def on_connected() -> None:
        nonlocal went_live
        went_live = True
        if subscribe:
            client.send_batch(subscribe)
        status(f"live on {redact_url(url)}")

    def on_disconnected(disconnect: Any) -> None:
        if went_live:  # before the first success, only the final error is worth a line
            status(f"disconnected: {disconnect.describe()}")

    def status(text: str) -> None:
        print(f"[defi-ws] {text}", file=sys.stderr, flush=True)

    client = FeedClient(
        Tail(url),
        heartbeat=heartbeat,
        stale_after_s=args.stale_after,
        reconnect=ExponentialBackoff(initial_s=0.5, max_s=10.0, max_attempts=args.retries),
        on_connected=on_connected,
        on_disconnected=on_disconnected,
        name="tail",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    status_code = 0
    try:
        async with client:
            deadline = None if args.duration is None else loop.time() + args.duration
            while not stop.is_set():
                if client.state.name == "CLOSED":
                    break
                timeout = 5.0 if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(stop.wait(), min(timeout, 5.0))
                except TimeoutErrors:
                    pass
                if deadline is not None and loop.time() >= deadline:
                    break
                if args.stats:
                    status(orjson.dumps(client.snapshot()).decode())
                out.flush()
        if client.fatal is not None:
            raise client.fatal
    except FatalDisconnect as exc:
        print(f"defi-ws: error: {exc.disconnect.describe()}", file=sys.stderr)
        status_code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        out.flush()
    if not went_live:
        return status_code
    snap = client.snapshot()
    status(
        f"summary: {snap['messages']} messages, {snap['bytes_received']} bytes, "
        f"{snap['reconnects']} reconnects, disconnects {snap['disconnects']}, "
        f"rtt p50 {snap['rtt']['p50_ms']} ms"
    )
    return status_code


def run_bench(argv: list[str]) -> int:
    """Run ``bench/run.py`` of the source checkout this package lives in."""
    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        raise CliError("bench/ not found: run `defi-ws bench` from a source checkout")
    return subprocess.call([sys.executable, str(script), *argv])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``defi-ws`` / ``python -m defi_ws``."""
    parser = argparse.ArgumentParser(prog="defi-ws", description="defi-ws command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="live feed against an embedded venue simulator")
    demo.add_argument("--duration", type=float, default=12.0, help="seconds to run")
    demo.add_argument("--rate", type=float, default=200.0, help="messages/s per topic")
    demo.add_argument("--no-faults", action="store_true", help="do not inject faults")
    tail = sub.add_parser("tail", help="tail a feed (messages to stdout, status to stderr)")
    tail.add_argument("url")
    tail.add_argument("--subscribe", action="append", default=[], metavar="JSON",
                      help="a message sent after each (re)connect; repeatable")
    tail.add_argument("--ping", default="ws", help="ws | none | text:ping[:pong] | json:{...}")
    tail.add_argument("--stale-after", type=float, default=None, metavar="S",
                      help="reconnect when no data arrives for S seconds")
    tail.add_argument("--format", choices=["raw", "json", "pretty"], default="json")
    tail.add_argument("--stats", action="store_true", help="health snapshot to stderr every 5 s")
    tail.add_argument("--retries", type=int, default=5,
                      help="consecutive failed attempts before giving up")
    tail.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    bench = sub.add_parser("bench", help="run the benchmarks (source checkout)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    tail.add_argument("--verbose", action="store_true", help="log to stderr")
    demo.add_argument("--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args(argv)
    if args.command != "bench":
        quiet_logs(args.verbose)
    try:
        if args.command == "bench":
            return run_bench(args.args)
        runner = _runner()
        if args.command == "demo":
            return int(runner(run_demo(args.duration, args.rate, not args.no_faults)))
        return int(runner(run_tail(args)))
    except CliError as exc:
        print(f"defi-ws: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def quiet_logs(verbose: bool) -> None:
    """Status lines speak for the CLI; library logs only with --verbose."""
    root = logging.getLogger("defi_ws")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    else:
        root.addHandler(logging.NullHandler())
        root.propagate = False


def _runner() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
