"""``defi-ws tail URL`` on one connection: messages to stdout, a status line on stderr for
everything that happens to the connection, a summary at the end.

Status lines (stderr, prefixed ``[defi-ws]``):

* ``connecting to URL (attempt N[ of M])`` before every connect attempt (``N`` counts
  the attempts since the feed was last LIVE; ``M`` is ``--retries`` + 1);
* ``live on URL`` each time the feed is LIVE;
* ``attempt N failed: REASON (...): DETAIL`` / ``disconnected: REASON ...: DETAIL`` for
  every lost attempt or connection, with its classified reason;
* ``next attempt in S s`` after each of them, with the venue's ``Retry-After`` when it
  was honoured;
* the outcome at once when the feed ends (no polling delay): a fatal disconnect or
  ``--retries`` exhausted is ``defi-ws: error: gave up after N failed attempt(s) ...``
  and exit status 1;
* ``summary: ...`` on Ctrl-C (exit status 0, also while connecting or retrying), at
  ``--duration`` and after a give-up.

Only consecutive failed attempts count towards ``--retries``: a connection that went
LIVE resets the count (the client runs with ``stable_after_s=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from defi_ws.cli import CliError, checked_url, parse_ping, tail_handler
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ExponentialBackoff, NoReconnect, ReconnectStrategy
from defi_ws.report import format_bytes, format_count, format_ms, format_seconds
from defi_ws.tls import TlsConfig
from defi_ws.urls import proxy_url_problem, redact_url

if TYPE_CHECKING:
    from defi_ws.client import FeedClient
    from defi_ws.sequence import Gap

__all__ = [
    "TailFeed",
    "TailWatch",
    "connection_options",
    "gap_line",
    "labelled",
    "parse_header",
    "parse_retries",
    "positive_seconds",
    "reconnect_strategy",
    "run_tail",
    "status_line",
    "tail_feeds",
]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)

#: What ``--insecure`` prints, whatever the log level.
INSECURE_WARNING = (
    "WARNING: --insecure: TLS certificates and host names are NOT verified; anyone on "
    "the path can read and change this feed. Use it for local testing only.")


def parse_retries(text: str) -> int | None:
    """``--retries``: a whole number >= 0, or ``forever`` (None)."""
    if text.strip().lower() in ("forever", "inf", "infinite", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number >= 0 or 'forever', got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (``--stale-after``, ``--duration``...)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``--header 'Name: value'`` -> ``(name, value)``; the value is never echoed back."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep:  # what was given may be a secret: not shown
        raise argparse.ArgumentTypeError("expected NAME:VALUE (no ':' found)")
    if not _HEADER_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"expected NAME:VALUE with an HTTP header name, got the name {name[:40]!r}")
    if any(c in value for c in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"the value of header {name!r} has a line break")
    return name, value.strip()


def reconnect_strategy(retries: int | None) -> ReconnectStrategy:
    """The backoff of ``--retries``: ``0`` never reconnects, None retries for ever."""
    if retries == 0:
        return NoReconnect()
    return ExponentialBackoff(initial_s=0.5, max_s=10.0, max_attempts=retries)


def connection_options(args: argparse.Namespace, status: Callable[[str], None]
                       ) -> dict[str, Any]:
    """``FeedClient`` keyword arguments of ``--header``, ``--ca-file``, ``--insecure``
    and ``--proxy`` (the ``--insecure`` warning is printed here, through ``status``)."""
    options: dict[str, Any] = {}
    if args.header:
        options["extra_headers"] = dict(args.header)
    if args.ca_file is not None and args.insecure:
        raise CliError("--ca-file and --insecure exclude each other: trust a CA, or verify "
                       "nothing")
    if args.ca_file is not None:
        if not os.path.isfile(args.ca_file) or not os.access(args.ca_file, os.R_OK):
            raise CliError(f"--ca-file: no readable file {args.ca_file!r}")
        options["tls"] = TlsConfig(ca_file=args.ca_file)
    if args.insecure:
        status(INSECURE_WARNING)
        options["tls"] = TlsConfig(verify=False)
    if args.proxy is not None:
        problem = proxy_url_problem(args.proxy)
        if problem is not None:
            raise CliError(f"--proxy: {problem}")
        options["proxy"] = args.proxy
    return options


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


class TailWatch:
    """Turns a :class:`~defi_ws.FeedClient`'s callbacks into status lines.

    Args:
        url: the feed's URL (shown redacted).
        retries: ``--retries`` (None: for ever).
        status: prints one status line.
        proxy: the proxy URL, if any (shown redacted).
    """

    def __init__(self, url: str, retries: int | None, status: Callable[[str], None],
                 proxy: str | None = None) -> None:
        self.url = redact_url(url)
        self.via = "" if proxy is None else f" via proxy {redact_url(proxy)}"
        self.retries = retries
        self.status = status
        self.client: Any = None
        #: Connect attempts since the feed was last LIVE (the current one included).
        self.attempt = 0
        #: Connect attempts in all.
        self.attempts = 0
        #: Attempts in a row that ended before LIVE.
        self.failed_in_a_row = 0
        self.went_live = False
        self.live_now = False
        self.last: Disconnect | None = None
        self.ended = asyncio.Event()

    def on_state_change(self, old: State, new: State) -> None:
        if new is State.CONNECTING:
            self.attempt += 1
            self.attempts += 1
            of = "" if self.retries is None else f" of {self.retries + 1}"
            verb = "reconnecting" if self.went_live else "connecting"
            self.status(f"{verb} to {self.url}{self.via} (attempt {self.attempt}{of})")
        elif new is State.LIVE:
            self.attempt = 0
            self.failed_in_a_row = 0
            self.went_live = self.live_now = True
        elif new is State.CLOSED:
            self.ended.set()

    def on_connected(self) -> None:
        self.status(f"live on {self.url}")

    def on_disconnected(self, disconnect: Disconnect) -> None:
        self.last = disconnect
        if disconnect.reason is DisconnectReason.LOCAL_STOP:
            return
        if self.live_now:
            self.live_now = False
            self.status(f"disconnected: {disconnect.describe()}")
        else:
            self.failed_in_a_row += 1
            self.status(f"attempt {self.attempt} failed: {disconnect.describe()}")
        client = self.client
        if client is None or client.state is not State.BACKOFF:
            return  # the feed ended: the outcome says so
        snap = client.snapshot()
        delay = snap.get("backoff_s")
        retry_after = snap.get("retry_after_s")
        if delay is None:
            return
        text = f"next attempt in {delay:.1f} s"
        if retry_after is not None and retry_after >= delay - 1e-6:
            text += f" (the venue's Retry-After: {retry_after:g} s)"
        if self.retries is not None and self.failed_in_a_row:
            text += (f"; {_plural(self.failed_in_a_row, 'failed attempt')} in a row, "
                     f"--retries {self.retries}")
        self.status(text)

    def gave_up(self, disconnect: Disconnect) -> str:
        """The one-line outcome of a fatal disconnect."""
        failed = self.failed_in_a_row
        if not default_is_retryable(disconnect):
            why = "not retried"
        elif self.retries == 0:
            why = "--retries 0"
        else:
            why = f"--retries {self.retries}"
        if failed:
            return (f"gave up after {_plural(failed, 'failed attempt')} in a row ({why}): "
                    f"{disconnect.describe()}")
        return f"gave up ({why}): {disconnect.describe()}"


def summary_line(snap: dict[str, Any], watch: TailWatch, elapsed_s: float,
                 printed: int) -> str:
    """The summary of a tail, for people."""
    took = format_seconds(elapsed_s)
    if not watch.went_live:
        last = "" if watch.last is None else f"; last: {watch.last.describe()}"
        return (f"summary: never live; {_plural(watch.attempts, 'connect attempt')} in "
                f"{took}{last}")
    disconnects = snap.get("disconnects") or {}
    lost = ", ".join(f"{reason} {count}" for reason, count in sorted(
        disconnects.items(), key=lambda item: -item[1]) if reason != "local_stop")
    rtt = snap["rtt"]
    heartbeat = (f"heartbeat RTT p50 {format_ms(rtt['p50_ms'])}, p99 "
                 f"{format_ms(rtt['p99_ms'])} ({_plural(rtt['count'], 'pong')})"
                 if rtt["count"] else "heartbeat RTT: no pongs")
    return (f"summary: {_plural(printed, 'message')} printed, "
            f"{format_count(snap['messages'])} received ({format_bytes(snap['bytes_received'])})"
            f" in {took}; {_plural(snap['connects'], 'connection')}, "
            f"{_plural(snap['reconnects'], 'reconnect')}; disconnects: {lost or 'none'}; "
            f"{heartbeat}")


@dataclass(eq=False)
class TailFeed:
    """One feed of a tail: its client, the watch that prints its status lines, and what
    counts the messages it printed.

    Attributes:
        label: names the feed in status lines (``"okx: live on ..."``); ``""`` for the
            lone feed of a URL.
        client: the feed's client (not started yet).
        watch: its status lines.
        counter: has ``printed``, the data messages printed so far.
    """

    label: str
    client: FeedClient
    watch: TailWatch
    counter: Any

    def line(self, text: str) -> str:
        """``text`` about this feed, with its label."""
        return f"{self.label}: {text}" if self.label else text


def gap_line(gap: Gap) -> str:
    """The status line of a sequence gap."""
    return (f"gap on {gap.topic}: {gap.size} message(s) missing "
            f"({gap.first_missing}..{gap.last_missing})")


def status_line(text: str) -> None:
    """Print one ``[defi-ws]`` status line on stderr."""
    print(f"[defi-ws] {text}", file=sys.stderr, flush=True)


def labelled(label: str, status: Callable[[str], None]) -> Callable[[str], None]:
    """``status`` with ``label: `` before every line (nothing for an empty label)."""
    if not label:
        return status
    return lambda text: status(f"{label}: {text}")


async def run_tail(args: argparse.Namespace) -> int:
    """Tail a feed until Ctrl-C, ``--duration`` or its end; return the exit status."""
    from defi_ws.client import FeedClient
    from defi_ws.errors import ConfigError

    url = checked_url(args.url)
    subscribe: list[Any] = []
    for text in args.subscribe:
        try:
            subscribe.append(orjson.loads(text))
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--subscribe: not valid JSON ({exc}): {text[:60]!r}") from None
    heartbeat = parse_ping(args.ping or "ws")
    out = sys.stdout.buffer
    options = connection_options(args, status_line)
    handler = tail_handler(url, args.format, out, topics=bool(args.topic))
    watch = TailWatch(url, args.retries, status_line, proxy=args.proxy)
    client: FeedClient

    def on_connected() -> None:
        if subscribe:
            client.send_batch(subscribe)
        watch.on_connected()

    try:
        client = FeedClient(
            handler,
            topics=args.topic,
            heartbeat=heartbeat,
            stale_after_s=args.stale_after,
            reconnect=reconnect_strategy(args.retries),
            stable_after_s=0.0,  # a connection that went LIVE resets the attempt count
            topic_stats=True,  # per-topic detail in --stats
            on_connected=on_connected,
            on_disconnected=watch.on_disconnected,
            on_state_change=watch.on_state_change,
            name="tail",
            **options,
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    watch.client = client
    return await tail_feeds(args, [TailFeed("", client, watch, handler)])


async def tail_feeds(args: argparse.Namespace, feeds: Sequence[TailFeed]) -> int:
    """Run ``feeds`` until Ctrl-C, ``--duration`` or the end of all of them; print each
    one's outcome and summary; return the exit status (1 when one gave up).

    A feed that ends while others go on says so at once; the others keep running.
    """
    out = sys.stdout.buffer
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    status_code = 0
    outcomes: dict[int, str] = {}  # feed index -> its give-up line
    said_ended: set[int] = set()
    snaps: list[dict[str, Any]] = [feed.client.snapshot() for feed in feeds]
    stopped = asyncio.ensure_future(stop.wait())
    ended = [asyncio.ensure_future(feed.watch.ended.wait()) for feed in feeds]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for feed in feeds:
                await stack.enter_async_context(feed.client)
            deadline = None if args.duration is None else loop.time() + args.duration
            next_stats = loop.time() + args.status_interval
            while not (stopped.done() or all(task.done() for task in ended)):
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                # Wake for Ctrl-C, the end of a feed, --duration, --stats, and once a
                # second to hand printed messages on (stdout is buffered).
                wake = [now + 1.0]
                if deadline is not None:
                    wake.append(deadline)
                if args.stats:
                    wake.append(next_stats)
                await asyncio.wait({stopped, *(task for task in ended if not task.done())},
                                   timeout=max(0.0, min(wake) - now),
                                   return_when=asyncio.FIRST_COMPLETED)
                out.flush()
                if args.stats and loop.time() >= next_stats:
                    next_stats = loop.time() + args.status_interval
                    for feed in feeds:
                        status_line(feed.line(orjson.dumps(feed.client.snapshot()).decode()))
                if len(feeds) > 1 and not all(task.done() for task in ended):
                    for index, feed in enumerate(feeds):  # one ended, the others go on
                        if ended[index].done() and index not in said_ended:
                            said_ended.add(index)
                            status_line(feed.line(_ended_line(feed)))
            for index, feed in enumerate(feeds):
                snaps[index] = feed.client.snapshot()
                fatal = feed.client.fatal
                if fatal is not None:
                    outcomes[index] = feed.watch.gave_up(fatal.disconnect)
                    status_code = 1
                elif (ended[index].done() and not stopped.done() and index not in said_ended
                      and feed.watch.last is not None):
                    status_line(feed.line(_ended_line(feed)))
    finally:
        for task in (stopped, *ended):
            task.cancel()
        await asyncio.gather(stopped, *ended, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(OSError):
            out.flush()
    elapsed_s = time.monotonic() - started
    for index, feed in enumerate(feeds):
        if feed.watch.went_live or index not in outcomes:  # a give-up before LIVE says it all
            status_line(feed.line(summary_line(snaps[index], feed.watch, elapsed_s,
                                               feed.counter.printed)))
        if args.stats:
            from defi_ws.report import snapshot_lines

            for line in snapshot_lines(snaps[index]):
                status_line(feed.line(f"  {line}") if feed.label else f"  {line}")
    for index, outcome in outcomes.items():
        print(f"defi-ws: error: {feeds[index].line(outcome)}", file=sys.stderr, flush=True)
    return status_code


def _ended_line(feed: TailFeed) -> str:
    """What a feed that ended says (a give-up, or the venue ending it)."""
    fatal = feed.client.fatal
    if fatal is not None:
        return feed.watch.gave_up(fatal.disconnect)
    last = feed.watch.last
    return f"the feed ended: {'-' if last is None else last.describe()}; not reconnecting"
