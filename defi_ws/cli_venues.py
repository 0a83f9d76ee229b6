"""The venue adapters on the command line: ``defi-ws venues`` and
``defi-ws tail VENUE:TOPIC[,TOPIC...] [VENUE:TOPIC...]``.

Both work from :data:`defi_ws.venues.ADAPTERS`, so a venue added to the registry shows
up here with nothing else to change.

* ``defi-ws venues [--json]`` lists every adapter: its default endpoint, recommended
  heartbeat and declared limits (topics per connection and per subscribe message,
  outbound messages/s and burst, new connections per window, maximum connection age).
* ``defi-ws tail binance:btcusdt@trade okx:trades:BTC-USDT`` runs one
  :class:`~defi_ws.FeedClient` per spec, each with its venue's adapter (endpoint,
  subscribe protocol, acks, heartbeat, limits). Every message is printed on one line
  after its feed's label (the venue, ``binance#2`` for a second spec of the same
  venue): ``okx {"arg":...,"data":[...]}``. Status lines are those of a single-URL
  tail, after the same label (``[defi-ws] okx: live on wss://...``).
  ``--url [VENUE=]URL`` replaces an adapter's endpoint (for all specs, or those of one
  venue): it is the adapter's ``url=`` argument, so for ``binance-usdm`` it is the
  base URL the endpoint path is appended to. ``--ping`` replaces the adapter's
  heartbeat.
* With ``--redundancy N`` or ``--pool``, each spec runs a :class:`~defi_ws.FeedPool`
  (:mod:`defi_ws.cli_pool`) with its adapter's limits (topics per connection,
  outbound rate, connection rate, age: rotation before it) and de-duplication rule
  (``--dedup-id``/``--dedup-hash``/``--max-age`` override them); its status lines name
  the venue and the connection (``[defi-ws] binance r0#1: live on ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.cli import CliError, check_tail_args, checked_url, parse_ping
from defi_ws.cli_tail import (
    TailFeed,
    TailWatch,
    connection_options,
    gap_line,
    labelled,
    reconnect_strategy,
    status_line,
    tail_feeds,
)
from defi_ws.report import format_count, format_duration

if TYPE_CHECKING:
    from defi_ws.sequence import Gap

__all__ = [
    "VenuePrinter",
    "adapter_facts",
    "check_spec_args",
    "describe_heartbeat",
    "run_tail_venues",
    "run_venues",
    "split_targets",
    "venue_lines",
]


# ----------------------------------------------------------------------------- venues


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _heartbeat_facts(heartbeat: Any) -> dict[str, Any]:
    """A heartbeat strategy as JSON-ready fields (its type and its dataclass fields)."""
    facts: dict[str, Any] = {"type": type(heartbeat).__name__}
    if dataclasses.is_dataclass(heartbeat):
        for field in dataclasses.fields(heartbeat):
            if field.name == "kind":
                continue
            value = getattr(heartbeat, field.name)
            facts[field.name] = (value.decode(errors="replace") if isinstance(value, bytes)
                                 else _finite(value))
    return facts


def describe_heartbeat(heartbeat: Any) -> str:
    """A heartbeat strategy for people (``WebSocket PING every 30 s, PONG within 10 s``)."""
    from defi_ws.heartbeat import JsonPing, NoPing, TextPing, WsPing

    if heartbeat is None or isinstance(heartbeat, NoPing):
        return "none"
    every = f"every {format_duration(heartbeat.interval_s)}"
    within = f"within {format_duration(heartbeat.timeout_s)}"
    if isinstance(heartbeat, WsPing):
        return f"WebSocket PING {every}, PONG {within}"
    if isinstance(heartbeat, TextPing):
        return f"text {heartbeat.ping!r} {every}, {heartbeat.pong!r} {within}"
    if isinstance(heartbeat, JsonPing):
        prefix = heartbeat.pong_prefix.decode(errors="replace")
        return (f"JSON {orjson.dumps(heartbeat.message).decode()} {every}, a message "
                f"starting {prefix} {within}")
    return repr(heartbeat)


def _topics_per_message(cls: type[Any]) -> int | None:
    """An adapter's default topics per subscribe message: what an instance made with
    the defaults uses (some depend on the product, e.g. Bybit spot's 10)."""
    try:
        value = getattr(cls(), "max_topics_per_message", None)
    except Exception:  # an adapter that needs arguments: not listed, not fatal
        return None
    return value if isinstance(value, int) else None


def adapter_facts(name: str, cls: type[Any]) -> dict[str, Any]:
    """What ``defi-ws venues --json`` says about one adapter class.

    Args:
        name: its venue name in :data:`~defi_ws.venues.ADAPTERS`.
        cls: the adapter class (its ``default_url``, ``heartbeat`` and ``limits``
            class attributes are read; none is instantiated).

    Returns:
        ``venue``, ``adapter`` (``module.Class``), ``default_url``, ``heartbeat``
        (``type`` and its fields) and ``limits`` (the
        :class:`~defi_ws.handler.VenueLimits` fields, ``connections_per_window`` as
        ``{"count", "window_s"}``, plus ``topics_per_message``); None where an
        adapter declares nothing.
    """
    from defi_ws.handler import VenueLimits

    limits: VenueLimits = getattr(cls, "limits", None) or VenueLimits()
    window = limits.connections_per_window
    return {
        "venue": name,
        "adapter": f"{cls.__module__}.{cls.__qualname__}",
        "default_url": getattr(cls, "default_url", None),
        "heartbeat": _heartbeat_facts(getattr(cls, "heartbeat", None)),
        "limits": {
            "topics_per_connection": limits.topics_per_connection,
            "topics_per_message": _topics_per_message(cls),
            "messages_per_s": limits.messages_per_s,
            "burst": limits.burst,
            "connections_per_window": (None if window is None
                                       else {"count": window[0], "window_s": window[1]}),
            "max_connection_age_s": limits.max_connection_age_s,
        },
    }


def venue_lines(name: str, cls: type[Any]) -> list[str]:
    """One adapter for people: its name and class, then one aligned line per fact."""
    facts = adapter_facts(name, cls)
    limits = facts["limits"]
    per_message = limits["topics_per_message"]
    rate = limits["messages_per_s"]
    window = limits["connections_per_window"]
    age = limits["max_connection_age_s"]
    rows = [
        ("endpoint", facts["default_url"] or "-"),
        ("heartbeat", describe_heartbeat(getattr(cls, "heartbeat", None))),
        ("topics", f"{format_count(limits['topics_per_connection'])} per connection, "
                   f"{format_count(per_message)} per subscribe message"),
        ("outbound", "no limit" if rate is None
         else f"{rate:g} messages/s, burst {limits['burst']}"),
        ("new connections", "no limit" if window is None
         else f"{window['count']:,} per {format_duration(window['window_s'])}"),
        ("connection age", "no limit" if age is None
         else f"cut at {format_duration(age)} (a pool rotates before it)"),
    ]
    width = max(len(label) for label, _ in rows)
    return [f"{name} ({facts['adapter']})",
            *(f"  {label:<{width}}  {value}" for label, value in rows)]


def run_venues(args: argparse.Namespace) -> int:
    """``defi-ws venues``: every adapter of the registry, for people or (``--json``)
    as one JSON array."""
    from defi_ws.venues import ADAPTERS

    if args.json:
        facts = [adapter_facts(name, cls) for name, cls in ADAPTERS.items()]
        sys.stdout.buffer.write(orjson.dumps(facts, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    blocks = ["\n".join(venue_lines(name, cls)) for name, cls in ADAPTERS.items()]
    print("\n\n".join(blocks))
    print("\n`defi-ws tail VENUE:TOPIC[,TOPIC...]` tails one; limits marked UNCONFIRMED "
          "in an adapter's docs are safe guesses")
    return 0


# ----------------------------------------------------------------------------- tail


def _is_url(target: str) -> bool:
    return "://" in target


def split_targets(args: argparse.Namespace) -> None:
    """Sort tail's positional arguments into ``args.url`` (one URL) or ``args.specs``
    (venue specs, each checked against the registry).

    Raises:
        CliError: a URL with specs, several URLs, a spec with an unknown venue or no
            topic, or something that is neither.
    """
    from defi_ws.venues import ADAPTERS, parse_spec

    urls = [t for t in args.target if _is_url(t)]
    specs = [t for t in args.target if not _is_url(t)]
    if urls and specs:
        raise CliError("give one URL, or venue specs (VENUE:TOPIC[,TOPIC...]), not both")
    if len(urls) > 1:
        raise CliError(f"one URL at a time, got {len(urls)}")
    for spec in specs:
        if ":" not in spec:
            raise CliError(f"{spec!r}: expected a ws:// or wss:// URL, or a venue spec "
                           f"VENUE:TOPIC[,TOPIC...] with a venue among {sorted(ADAPTERS)}")
        try:
            parse_spec(spec)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    args.url = urls[0] if urls else None
    args.specs = specs


def check_spec_args(args: argparse.Namespace) -> None:
    """Usage errors of a tail of venue specs (one line each, exit status 2)."""
    if args.topic or args.subscribe:
        flag = "--topic" if args.topic else "--subscribe"
        raise CliError(f"{flag} goes with a URL; a venue spec carries its topics "
                       "(VENUE:TOPIC,TOPIC...) and its adapter subscribes them")
    if args.format == "raw":
        raise CliError("--format raw goes with a URL: a venue's adapter decodes every "
                       "message (auto, json or pretty)")
    check_tail_args(args, venue_specs=True)


def endpoint_overrides(values: Sequence[str], venues: Mapping[str, Any]
                       ) -> dict[str | None, str]:
    """``--url [VENUE=]URL`` values by venue (None: every venue)."""
    overrides: dict[str | None, str] = {}
    for value in values:
        venue: str | None = None
        url = value
        head, sep, rest = value.partition("=")
        if sep and "://" not in head:
            venue, url = head.strip().lower(), rest
            if venue not in venues:
                raise CliError(f"--url {head}=...: no venue {head!r} (venues: "
                               f"{sorted(venues)})")
        if venue in overrides:
            raise CliError(f"--url given twice for {venue or 'every venue'}")
        overrides[venue] = checked_url(url)
    return overrides


class VenuePrinter:
    """A feed's ``on_data``: each message on one line after the feed's label.

    Args:
        label: the feed's label (``binance``).
        fmt: ``auto``/``json`` (one line) or ``pretty`` (indented).
        out: a binary stream.
    """

    def __init__(self, label: str, fmt: str, out: Any) -> None:
        self._prefix = label.encode() + b" "
        self._option = orjson.OPT_INDENT_2 if fmt == "pretty" else 0
        self._out = out
        #: Data messages printed.
        self.printed = 0

    def __call__(self, message: Any) -> None:
        self.printed += 1
        self._out.write(self._prefix + orjson.dumps(message, option=self._option,
                                                    default=str) + b"\n")


@dataclasses.dataclass(frozen=True)
class _SpecFeed:
    label: str
    venue: str
    handler: Any
    topics: list[str]
    printer: VenuePrinter


def _spec_feeds(args: argparse.Namespace) -> list[_SpecFeed]:
    """Each spec's adapter (with ``--url``), topics and printer, labelled by venue."""
    from defi_ws.venues import ADAPTERS, adapter_for, parse_spec

    overrides = endpoint_overrides(args.endpoint, ADAPTERS)
    out = sys.stdout.buffer
    seen: Counter[str] = Counter()
    feeds = []
    for spec in args.specs:
        venue, _ = parse_spec(spec)
        seen[venue] += 1
        label = venue if seen[venue] == 1 else f"{venue}#{seen[venue]}"
        printer = VenuePrinter(label, args.format, out)
        options: dict[str, Any] = {"on_data": printer}
        url = overrides.get(venue, overrides.get(None))
        if url is not None:
            options["url"] = url
        try:
            handler, topics = adapter_for(spec, **options)
        except ValueError as exc:  # the spec itself (it is named)
            raise CliError(str(exc)) from None
        feeds.append(_SpecFeed(label, venue, handler, topics, printer))
    return feeds


async def run_tail_venues(args: argparse.Namespace) -> int:
    """Tail ``args.specs``, one feed per spec (a FeedClient, or a FeedPool with
    ``--redundancy``/``--pool``), until Ctrl-C, ``--duration`` or the end of every
    feed; return the exit status."""
    from defi_ws.client import FeedClient
    from defi_ws.errors import ConfigError

    # --ping, else each adapter's recommended heartbeat (FeedClient's default with it)
    heartbeat = {} if args.ping is None else {"heartbeat": parse_ping(args.ping)}
    specs = _spec_feeds(args)
    if args.pool or args.redundancy > 1:
        return await _tail_venue_pools(args, specs, heartbeat)
    options = {**connection_options(args, status_line), **heartbeat}
    feeds: list[TailFeed] = []
    for spec in specs:
        say = labelled(spec.label, status_line)
        most = getattr(getattr(spec.handler, "limits", None), "topics_per_connection", None)
        if isinstance(most, int) and len(spec.topics) > most:
            raise CliError(f"{spec.label}: {len(spec.topics)} topics, more than {spec.venue} "
                           f"allows on one connection ({most}): split them into several "
                           "specs, or give --pool")
        watch = TailWatch(spec.handler.url(0), args.retries, say, proxy=args.proxy)
        try:
            client = FeedClient(
                spec.handler,
                topics=spec.topics,
                stale_after_s=args.stale_after,
                reconnect=reconnect_strategy(args.retries),
                stable_after_s=0.0,  # a connection that went LIVE resets the attempt count
                topic_stats=True,
                on_connected=watch.on_connected,
                on_disconnected=watch.on_disconnected,
                on_state_change=watch.on_state_change,
                on_subscription_rejected=_rejections(say),
                on_gap=_gaps(say),
                name=f"tail.{spec.label}",
                **options,
            )
        except ConfigError as exc:
            raise CliError(f"{spec.label}: {exc}") from None
        watch.client = client
        feeds.append(TailFeed(spec.label, client, watch, spec.printer))
    return await tail_feeds(args, feeds)


async def _tail_venue_pools(args: argparse.Namespace, specs: Sequence[_SpecFeed],
                            heartbeat: dict[str, Any]) -> int:
    """A FeedPool per spec: the adapter's limits and de-duplication (unless
    ``--max-age``, ``--dedup-id`` or ``--dedup-hash`` say otherwise)."""
    import asyncio

    from defi_ws.cli_pool import PoolTail, client_options, flag_dedup, run_tail_pools

    options = {**client_options(args), **heartbeat}
    wake = asyncio.Event()
    tails = []
    for spec in specs:
        limits = None
        if args.max_age is not None:
            limits = dataclasses.replace(spec.handler.limits, max_connection_age_s=args.max_age)
        tails.append(PoolTail(args, label=spec.label, url=spec.handler.url(0),
                              handler=spec.handler, topics=spec.topics, dedup=flag_dedup(args),
                              limits=limits, counter=spec.printer, client_options=options,
                              wake=wake))
    return await run_tail_pools(args, tails, wake)


def _rejections(say: Callable[[str], None]) -> Callable[[str, str], None]:
    def rejected(topic: str, detail: str) -> None:
        say(f"subscription {topic!r} rejected: {detail}")
    return rejected


def _gaps(say: Callable[[str], None]) -> Callable[[Gap], None]:
    def gap(gap: Gap) -> None:
        say(gap_line(gap))
    return gap
