"""The ``defi-ws`` command line.

* ``defi-ws demo [--duration S] [--cycles N] [--rate N] [--fault-interval S]
  [--no-faults] [--plain]``: a live dashboard of a :class:`~defi_ws.FeedClient` and a
  redundancy-2 :class:`~defi_ws.FeedPool` against embedded venue simulators under
  injected faults, until Ctrl-C (:mod:`defi_ws.dashboard`). It needs no network.
* ``defi-ws sim [--port P] [--rate N] [--dialect D] [--faults S]``: a venue simulator
  on 127.0.0.1 until Ctrl-C (its URL first, on stdout).
* ``defi-ws tail URL [--subscribe JSON]... [--topic T]... [--ping ws|text:ping|json:{...}]
  [--stale-after S] [--format auto|json|pretty|raw] [--stats] [--retries N|forever]
  [--header K:V]... [--ca-file PEM | --insecure] [--proxy URL]
  [--redundancy N | --pool] [--dedup-id FIELD [--dedup-topic FIELD] | --dedup-hash FIELD]
  [--max-age S]``: tails a feed with reconnects; messages to stdout, status to stderr
  (:mod:`defi_ws.cli_tail`); Ctrl-C prints a summary. With ``--redundancy N`` (N > 1)
  or ``--pool`` it tails a :class:`~defi_ws.FeedPool` (each message printed once; a
  status line per connect attempt of each connection; :mod:`defi_ws.cli_pool`).
* ``defi-ws tail VENUE:TOPIC[,TOPIC...] [VENUE:TOPIC...] [--url [VENUE=]URL]...``:
  tails venue specs through their adapters, one feed per spec (a pool per spec with
  ``--redundancy``/``--pool``, de-duplicated by the adapter's rule), each message and
  status line labelled with its venue (:mod:`defi_ws.cli_venues`).
* ``defi-ws venues [--json]``: every venue adapter with its default endpoint,
  heartbeat and limits.
* ``defi-ws run gateway.toml [--check] [--verbose]``: runs the feed gateway
  (:mod:`defi_ws.gateway`) until SIGTERM/SIGINT, then drains.
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
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import orjson

__all__ = ["main"]

TOPICS = ["trades.BTC-USD", "trades.ETH-USD", "trades.SOL-USD"]


#: The demo pool's venue cuts every connection at this age (seconds, scaled down from
#: Binance's 24 h); the pool rotates each one before it, make-before-break.
DEMO_POOL_MAX_AGE_S = 4.0


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _connection_label(conn: Mapping[str, Any], groups: int) -> str:
    """``r1#5``: replica 1 of its group, 5th connection the pool opened (``g2.`` first
    when the pool has several groups)."""
    group = f"g{conn['group']}." if groups > 1 else ""
    return f"{group}r{conn['replica']}#{conn['generation']}"


class PoolWatch:
    """What changed in a :class:`~defi_ws.FeedPool` between two looks at its snapshot:
    which connection delivered (the first copy of a message wins, the others are
    dropped as duplicates) and which connections were replaced by a rotation."""

    def __init__(self) -> None:
        self._messages: dict[int, int] = {}  # connection (generation) -> messages
        self._generations: dict[tuple[int, int], int] = {}

    def shares(self, snap: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], int, float]]:
        """Per connection: (its snapshot, messages it delivered since the last call,
        its share of those in percent)."""
        deltas = [(conn, max(0, conn["messages"] - self._messages.get(conn["generation"], 0)))
                  for conn in snap["connections"]]
        self._messages = {conn["generation"]: conn["messages"] for conn in snap["connections"]}
        total = sum(delta for _, delta in deltas)
        return [(conn, delta, 100.0 * delta / total if total else 0.0)
                for conn, delta in deltas]

    def rotated(self, snap: Mapping[str, Any]) -> list[str]:
        """``"r0#1 -> r0#3"`` for each connection replaced since the last call."""
        groups = int(snap["groups"])
        done = []
        seen: dict[tuple[int, int], int] = {}
        for conn in snap["connections"]:
            key = (int(conn["group"]), int(conn["replica"]))
            old = self._generations.get(key)
            if old is not None and old != conn["generation"]:
                done.append(f"{_connection_label({**conn, 'generation': old}, groups)} -> "
                            f"{_connection_label(conn, groups)}")
            seen[key] = conn["generation"]
        self._generations = seen
        return done


def pool_summary(snap: Mapping[str, Any], disconnects: Counter[str]) -> list[str]:
    """A pool snapshot as readable lines: totals, then one row per connection."""
    groups = int(snap["groups"])
    lines = [
        f"redundancy {snap['redundancy']}, {groups} group(s) of connections, "
        f"{snap['topics_desired']} topic(s)",
        f"  delivered           {_count(snap['delivered']):>10}",
        f"  duplicates dropped  {_count(snap['duplicates_dropped']):>10}",
        f"  rotations           {snap['rotations']:>10}",
        f"  connections opened  {snap['connections_opened']:>10}",
        f"  sequence gaps       {snap['gaps']:>10}",
        "  disconnects         " + (", ".join(
            f"{reason} {count}" for reason, count in disconnects.most_common()) or "none")
        + " (user-visible; rotations are not)",
        f"  {'connection':<12}{'state':<13}{'topics':>7}{'delivered':>12}{'duplicates':>12}"
        f"{'age s':>8}{'rtt p50 ms':>12}",
    ]
    for conn in snap["connections"]:
        p50 = conn["rtt"].get("p50_ms")
        lines.append(
            f"  {_connection_label(conn, groups):<12}{conn['state']:<13}{conn['topics']:>7}"
            f"{conn['messages']:>12,}{conn['duplicates']:>12,}{conn['age_s']:>8.1f}"
            f"{'-' if p50 is None else f'{p50:.2f}':>12}")
    return lines


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


def checked_url(url: str) -> str:
    """``url`` if it is a usable ``ws://``/``wss://`` URL, else a :class:`CliError`."""
    from defi_ws.transport import redact_url
    from defi_ws.urls import url_config_problem

    if not url.startswith(("ws://", "wss://")):
        raise CliError(f"URL must start with ws:// or wss://, got {redact_url(url)!r}")
    problem = url_config_problem(url, "URL")
    if problem is not None:
        raise CliError(problem)
    return url


class NotJson:
    """A message ``--format auto`` could not parse as JSON: printed as it came."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def printable(self) -> bytes:
        """The text as it came, or ``<N bytes, not UTF-8: repr>`` for binary data."""
        try:
            self.data.decode()
        except UnicodeDecodeError:
            return f"<{len(self.data)} bytes, not UTF-8: {self.data[:200]!r}>".encode()
        return self.data.replace(b"\n", b"\\n")


def auto_decode(view: memoryview) -> Any:
    """``--format auto``: JSON when it parses, else the payload as it came."""
    try:
        return orjson.loads(view)
    except orjson.JSONDecodeError:
        return NotJson(bytes(view))


def tail_handler(url: str, fmt: str, out: Any, *, topics: bool) -> Any:
    """The handler tail runs: each data message to ``out`` in ``fmt``, one per line.

    Without ``topics`` nothing is a control message: whatever the venue sends is
    printed (raw ``--subscribe`` messages get their replies printed too). With
    ``topics`` the generic protocol's replies (acks, notices) are recognised as
    :class:`~defi_ws.JsonHandler` does, and only data is printed.
    """
    from defi_ws.handler import JsonHandler

    option = orjson.OPT_INDENT_2 if fmt == "pretty" else 0
    decode: Callable[[memoryview], Any] | None = (
        None if fmt == "raw" else auto_decode if fmt == "auto" else orjson.loads)

    class Tail(JsonHandler):
        control_prefixes: tuple[bytes, ...] | None = (
            JsonHandler.control_prefixes if topics else ())  # () : nothing to classify
        #: Data messages printed.
        printed = 0

        def classify(self, message: Any) -> Any:
            if not topics or isinstance(message, NotJson):
                return []
            if isinstance(message, memoryview):  # --format raw: decode=None
                try:
                    message = orjson.loads(message)
                except orjson.JSONDecodeError:
                    return []  # data after all: printed as it came
            return super().classify(message)

        def on_message(self, message: Any) -> None:
            self.printed += 1
            if fmt == "raw":
                out.write(bytes(message) + b"\n")
            elif isinstance(message, NotJson):
                out.write(message.printable() + b"\n")
            else:
                out.write(orjson.dumps(message, option=option) + b"\n")

    handler = Tail(url)
    handler.decode = decode
    handler.dedup = None  # a pool de-duplicates only as the flags say
    return handler


def check_tail_args(args: argparse.Namespace, *, venue_specs: bool = False) -> None:
    """Usage errors among tail's flags (one line each, exit status 2).

    With ``venue_specs`` a pool needs no ``--topic`` nor ``--dedup-*`` flag: the specs
    carry the topics and each adapter its de-duplication.
    """
    pooled = args.pool or args.redundancy > 1
    if args.redundancy < 1:
        raise CliError(f"--redundancy must be >= 1, got {args.redundancy}")
    for flag, value in (("--dedup-id", args.dedup_id), ("--dedup-hash", args.dedup_hash)):
        if value is not None and not value:
            raise CliError(f"{flag} needs a field name")
    if args.dedup_id is not None and args.dedup_hash is not None:
        raise CliError("--dedup-id and --dedup-hash exclude each other: an id per topic "
                       "(exactly once, in order) or a hash (ids per connection)")
    if args.dedup_topic is not None and args.dedup_id is None:
        raise CliError("--dedup-topic goes with --dedup-id")
    if args.max_age is not None and not args.max_age > 0:
        raise CliError(f"--max-age must be > 0, got {args.max_age}")
    if not args.status_interval > 0:
        raise CliError(f"--status-interval must be > 0, got {args.status_interval}")
    if not pooled:
        for flag, value in (("--dedup-id", args.dedup_id), ("--dedup-hash", args.dedup_hash),
                            ("--max-age", args.max_age)):
            if value is not None:
                raise CliError(f"{flag} needs a pool: --redundancy N (N > 1) or --pool")
        return
    if venue_specs:
        return
    if args.dedup_id is None and args.dedup_hash is None:
        # A rotation (by age or on a venue notice) overlaps two connections as well.
        what = f"--redundancy {args.redundancy}" if args.redundancy > 1 else "--pool"
        raise CliError(f"{what} needs --dedup-id FIELD (a monotonic id per topic, e.g. seq) "
                       "or --dedup-hash FIELD (e.g. data)")
    if args.subscribe:
        raise CliError("--subscribe sends raw messages on one connection; a pool subscribes "
                       "each of its connections itself: give --topic T (generic protocol)")
    if not args.topic:
        raise CliError("a pool needs at least one --topic (it opens connections for topics)")


def pool_status_line(snap: Mapping[str, Any], watch: PoolWatch, printed: int) -> str:
    """One line about a pool: live count, each connection with its share of the messages
    delivered since the previous line, totals."""
    groups = int(snap["groups"])
    conns = snap["connections"]
    live = sum(conn["state"] == "LIVE" for conn in conns)
    parts = ", ".join(
        f"{_connection_label(conn, groups)} {conn['state']} {share:.0f}% "
        f"({conn['messages']:,} delivered, {conn['duplicates']:,} dup)"
        for conn, _, share in watch.shares(snap))
    return (f"pool: {live}/{len(conns)} live; {parts}; {printed:,} messages, "
            f"{_count(snap['duplicates_dropped'])} duplicates dropped, "
            f"{snap['rotations']} rotations, {snap['gaps']} gaps")


def run_bench(argv: list[str]) -> int:
    """Run ``bench/run.py`` of the source checkout this package lives in."""
    script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        raise CliError("bench/ not found: run `defi-ws bench` from a source checkout")
    return subprocess.call([sys.executable, str(script), *argv])


class _Parser(argparse.ArgumentParser):
    """Usage errors as the CLI prints them: a bad value of an option is one line
    (``defi-ws: error: --retries: ...``); anything else (an unknown flag, a missing
    argument) shows the usage of the (sub)command it belongs to."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument -"):
            self.exit(2, f"defi-ws: error: {message[len('argument '):]}\n")
        super().error(message)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``defi-ws`` parser and its subcommands' parsers, by name."""
    from defi_ws.cli_tail import parse_header, parse_retries, positive_seconds
    from defi_ws.testing.dialects.base import Dialect

    parser = _Parser(prog="defi-ws", description="defi-ws command line: tail a feed, "
                     "list the venues, watch the demo, run a local venue simulator, run "
                     "a gateway, run the benchmarks. "
                     "`defi-ws COMMAND --help` for each command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    demo = sub.add_parser(
        "demo", help="live dashboard of a feed and a pool under injected faults",
        description="A live terminal dashboard: a FeedClient and a redundancy-2 FeedPool "
                    "against two embedded venue simulators (no network), with a fault "
                    "injected every few seconds (every kind the simulator has, in a cycle) "
                    "and an event log of each fault, the reason the client classified, "
                    "gaps and recoveries. Runs until Ctrl-C (a summary table, exit 0) or "
                    "--duration. In a pipe it prints one line per event instead.")
    demo.add_argument("--duration", type=positive_seconds, default=None, metavar="S",
                      help="stop after S seconds (default: run until Ctrl-C)")
    demo.add_argument("--rate", type=positive_seconds, default=200.0, metavar="N",
                      help="messages/s per topic (default 200)")
    demo.add_argument("--fault-interval", type=positive_seconds, default=3.0, metavar="S",
                      help="seconds between injected faults (default 3)")
    demo.add_argument("--cycles", type=int, default=None, metavar="N",
                      help="stop after N full cycles of fault kinds (for scripts)")
    demo.add_argument("--no-faults", action="store_true", help="do not inject faults")
    demo.add_argument("--plain", action="store_true",
                      help="one line per event, no live redraw (the default in a pipe)")
    demo.add_argument("--verbose", action="store_true", help="library logs to stderr")
    tail = sub.add_parser(
        "tail", help="tail a feed (messages to stdout, status to stderr)",
        description="Tail a feed: messages to stdout, status to stderr (every connect "
                    "attempt, disconnect, retry and the outcome), reconnects, a summary "
                    "on Ctrl-C. With --redundancy N (N > 1) or --pool it runs a FeedPool: N "
                    "connections carry the same topics, each message is printed once "
                    "(duplicates are recognised from raw bytes by --dedup-id or --dedup-hash "
                    "and dropped before decode), connections are rotated make-before-break "
                    "before --max-age and on a venue's shutdown notice. A pool subscribes each "
                    "of its connections itself, so it takes topics (--topic, the generic "
                    "protocol of JsonHandler: {\"op\":\"subscribe\",\"args\":[...]}, acks "
                    "{\"event\":\"subscribed\",\"topic\":...}, notices {\"event\":\"notice\"}), "
                    "not raw --subscribe messages; for another protocol, write a handler "
                    "(examples/). Instead of a URL, venue specs (binance:btcusdt@trade,"
                    "ethusdt@trade okx:trades:BTC-USDT) tail venues through their adapters: "
                    "one feed per spec with the venue's endpoint (or --url), protocol, "
                    "heartbeat and limits; each message is printed after its venue's name "
                    "and each status line names it (`defi-ws venues` lists the venues).")
    tail.add_argument("target", nargs="+", metavar="URL | VENUE:TOPIC[,TOPIC...]",
                      help="a ws:// or wss:// URL, or one or more venue specs "
                           "(binance:btcusdt@trade,ethusdt@trade okx:trades:BTC-USDT; "
                           "`defi-ws venues` lists the venues): each spec runs its own feed "
                           "with its venue's adapter (endpoint, protocol, heartbeat, limits) "
                           "and every message and status line names its venue")
    tail.add_argument("--url", dest="endpoint", action="append", default=[],
                      metavar="[VENUE=]URL",
                      help="with venue specs: connect to URL instead of the adapter's "
                           "endpoint (e.g. a `defi-ws sim --dialect VENUE`), for every spec "
                           "or those of VENUE; repeatable")
    tail.add_argument("--subscribe", action="append", default=[], metavar="JSON",
                      help="a raw message sent after each (re)connect; repeatable "
                           "(single connection only: a pool takes --topic)")
    tail.add_argument("--topic", action="append", default=[], metavar="T",
                      help="a topic subscribed in the generic protocol "
                           '({"op":"subscribe","args":[T,...]}), acked and re-subscribed on '
                           "every connection; repeatable; required with a pool")
    tail.add_argument("--ping", default=None,
                      help="ws | none | text:ping[:pong] | json:{...} (default: ws for a URL, "
                           "the adapter's heartbeat for a venue spec)")
    tail.add_argument("--stale-after", type=positive_seconds, default=None, metavar="S",
                      help="reconnect when no data arrives for S seconds")
    tail.add_argument("--format", choices=["auto", "json", "pretty", "raw"], default="auto",
                      help="auto (default): JSON re-encoded on one line, anything else "
                           "printed as it came; json: JSON only (other messages are counted "
                           "as decode errors); pretty: indented JSON; raw: bytes as received")
    tail.add_argument("--stats", action="store_true",
                      help="health snapshot (JSON) to stderr every --status-interval and a "
                           "readable one at the end; with a pool, the summary adds a table "
                           "of its connections")
    tail.add_argument("--retries", type=parse_retries, default=5, metavar="N|forever",
                      help="failed attempts in a row before giving up (a connection that "
                           "went live resets the count); 0: never reconnect; forever: never "
                           "give up (default 5)")
    tail.add_argument("--header", type=parse_header, action="append", default=[],
                      metavar="NAME:VALUE", help="an HTTP header of the upgrade request "
                                                 "(e.g. an API key); repeatable")
    tail.add_argument("--ca-file", metavar="PEM",
                      help="trust the CAs in this PEM file instead of the system's")
    tail.add_argument("--insecure", action="store_true",
                      help="do not verify the venue's TLS certificate (local testing only; "
                           "prints a warning)")
    tail.add_argument("--proxy", metavar="URL",
                      help="connect through a proxy: http://host:port (HTTP CONNECT), "
                           "https://, socks4:// or socks5://, user:password@ allowed")
    tail.add_argument("--duration", type=positive_seconds, default=None, metavar="S",
                      help="stop after S seconds (for scripts; default: until Ctrl-C)")
    tail.add_argument("--redundancy", type=int, default=1, metavar="N",
                      help="connections carrying the same topics (hot-hot); N > 1 runs a "
                           "FeedPool and needs --dedup-id or --dedup-hash with a URL (a venue "
                           "spec's adapter has its own rule) (default 1)")
    tail.add_argument("--pool", action="store_true",
                      help="run a FeedPool even with --redundancy 1 (rotation by --max-age "
                           "and on venue notices; needs --dedup-id or --dedup-hash with a "
                           "URL)")
    tail.add_argument("--dedup-id", metavar="FIELD",
                      help="de-duplicate on this JSON field, a monotonic id per topic (e.g. "
                           "seq): exactly once, in order per topic, holes reported as gaps")
    tail.add_argument("--dedup-topic", metavar="FIELD",
                      help="with --dedup-id: the JSON field naming the topic (default: topic; "
                           "'' for one implicit topic)")
    tail.add_argument("--dedup-hash", metavar="FIELD",
                      help="de-duplicate on a hash of this JSON field's raw value (e.g. data), "
                           "for ids per connection: duplicates within a recent window are "
                           "dropped; order and gaps are not known")
    tail.add_argument("--max-age", type=float, default=None, metavar="S",
                      help="with a pool: the venue cuts connections at this age (Binance: "
                           "86400); each is replaced before it, make-before-break")
    tail.add_argument("--status-interval", type=positive_seconds, default=5.0, metavar="S",
                      help="seconds between status lines of a pool and --stats snapshots "
                           "(default 5)")
    tail.add_argument("--verbose", action="store_true", help="library logs to stderr")
    sim = sub.add_parser(
        "sim", help="run a local venue simulator (prints its URL) until Ctrl-C",
        description="Run the embedded venue simulator (defi_ws.testing.ExchangeSimulator) "
                    "on 127.0.0.1 until Ctrl-C: it speaks JsonHandler's generic protocol "
                    "(or --dialect), streams trades on any topic subscribed, and prints its "
                    "URL first. Point the README quickstart or `defi-ws tail` at it.")
    sim.add_argument("--port", type=int, default=8765,
                     help="TCP port on 127.0.0.1 (default 8765; 0 picks a free one)")
    sim.add_argument("--rate", type=float, default=10.0, metavar="N",
                     help="messages/s per subscribed topic (default 10)")
    sim.add_argument("--dialect", default="generic", choices=[d.value for d in Dialect],
                     help="venue protocol to speak (default generic)")
    sim.add_argument("--faults", type=positive_seconds, default=None, metavar="S",
                     help="inject a random recoverable fault every S seconds")
    sim.add_argument("--seed", type=int, default=0, help="random seed")
    venues = sub.add_parser(
        "venues", help="list the venue adapters: endpoint, heartbeat, limits",
        description="List every venue adapter (defi_ws.venues.ADAPTERS) with its default "
                    "endpoint, recommended heartbeat and declared limits: topics per "
                    "connection and per subscribe message, outbound messages/s and burst, "
                    "new connections per window, maximum connection age. Each name is the "
                    "VENUE of `defi-ws tail VENUE:TOPIC`.")
    venues.add_argument("--json", action="store_true", help="one JSON array, for machines")
    bench = sub.add_parser(
        "bench", help="run the benchmarks (source checkout)",
        description="Run bench/run.py of the source checkout (every benchmark, tables on "
                    "stdout). Arguments after `--` go to bench/run.py: "
                    "`defi-ws bench -- --help` lists them.")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments for bench/run.py (after --)")
    run = sub.add_parser("run", help="run a gateway: pools per venue -> NATS JetStream / "
                                     "files / stdout, /metrics, /healthz (README: Running as "
                                     "a gateway)")
    run.add_argument("config", help="the gateway's TOML file")
    run.add_argument("--check", action="store_true", help="validate the file and exit")
    run.add_argument("--verbose", action="store_true", help="log at INFO")
    return parser, {"demo": demo, "tail": tail, "sim": sim, "venues": venues,
                    "bench": bench, "run": run}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``defi-ws`` / ``python -m defi_ws``."""
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's usage, not the top-level one
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "bench":
            forwarded = args.args[1:] if args.args[:1] == ["--"] else args.args
            return run_bench(forwarded)
        if args.command == "venues":
            from defi_ws.cli_venues import run_venues

            return run_venues(args)
        if args.command == "tail":  # usage errors before anything runs
            from defi_ws.cli_venues import check_spec_args, split_targets

            split_targets(args)
            if args.specs:
                check_spec_args(args)
            elif args.endpoint:
                raise CliError("--url goes with venue specs (VENUE:TOPIC); the URL "
                               "argument is the endpoint itself")
            else:
                check_tail_args(args)
        if args.command == "run":
            from defi_ws.gateway.cli import run_gateway

            return run_gateway(args.config, verbose=args.verbose, check_only=args.check)
        # The demo routes its logs itself (above the live view, or as lines).
        quiet_logs(args.command == "tail" and args.verbose)
        runner = _runner()
        if args.command == "sim":
            return int(runner(run_sim(args)))
        if args.command == "demo":
            from defi_ws.dashboard import run_demo

            return int(runner(run_demo(args)))
        if args.specs:
            from defi_ws.cli_venues import run_tail_venues

            return int(runner(run_tail_venues(args)))
        if args.pool or args.redundancy > 1:
            from defi_ws.cli_pool import run_tail_pool

            return int(runner(run_tail_pool(args)))
        from defi_ws.cli_tail import run_tail

        return int(runner(run_tail(args)))
    except CliError as exc:
        print(f"defi-ws: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def run_sim(args: argparse.Namespace) -> int:
    """``defi-ws sim``: a simulator on 127.0.0.1 until Ctrl-C; its URL on stdout first."""
    import random

    from defi_ws.testing import Dialect, ExchangeSimulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = ExchangeSimulator(port=args.port, rate_per_s=args.rate, seed=args.seed,
                            dialect=Dialect(args.dialect))
    try:
        try:
            await sim.start()
        except OSError as exc:
            raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}"
                           + (" (another `defi-ws sim`? try --port 0)"
                              if args.port else "")) from None
        try:
            print(sim.url, flush=True)
            print(f"[defi-ws] venue simulator ({args.dialect} protocol) on {sim.url}: "
                  f"{args.rate:g} messages/s per subscribed topic"
                  + (f", a random fault every {args.faults:g} s" if args.faults else "")
                  + "; Ctrl-C stops it", file=sys.stderr, flush=True)
            if args.faults:
                sim.random_faults(random.Random(args.seed), args.faults)
            await stop.wait()
        finally:
            await sim.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(f"[defi-ws] simulator stopped: {sim.connections_accepted} connection(s) served",
          file=sys.stderr, flush=True)
    return 0


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
