"""`defi-ws venues` and `defi-ws tail VENUE:TOPIC...`, as a user runs them (the real entry
point, a subprocess) against the simulator speaking each venue's dialect: one feed per
spec through the venue's adapter, every message and status line labelled with its
venue, --url overrides, one-line usage errors. Venues are read from the registry, so a
venue added to it is listed and checked here without a change."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from defi_ws.cli import main
from defi_ws.cli_venues import adapter_facts, describe_heartbeat
from defi_ws.report import format_count
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import BinanceDialect, OkxDialect, Product
from defi_ws.testing.dialects.binance import ALL_CHANNELS
from defi_ws.venues import ADAPTERS
from tests.test_cli_tail import Tail, run_cli

# ----------------------------------------------------------------------------- venues


def test_venues_lists_every_adapter_with_endpoint_heartbeat_and_limits() -> None:
    done = run_cli("venues")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    blocks = done.stdout.strip().split("\n\n")
    assert len(blocks) == len(ADAPTERS) + 1  # + the closing hint
    for block, (name, cls) in zip(blocks, ADAPTERS.items(), strict=False):
        lines = block.splitlines()
        assert lines[0] == f"{name} ({cls.__module__}.{cls.__qualname__})"
        rows = {line.split("  ")[1].strip(): line.split("  ", 2)[2].strip()
                for line in lines[1:]}
        assert rows["endpoint"] == cls.default_url
        assert rows["heartbeat"] == describe_heartbeat(cls.heartbeat)
        limits = cls.limits
        assert rows["topics"].startswith(
            f"{format_count(limits.topics_per_connection)} per connection, ")
        assert re.fullmatch(r"[\d,]+ per connection, ([\d,]+|-) per subscribe message",
                            rows["topics"]), rows["topics"]
        assert rows["outbound"] == (
            "no limit" if limits.messages_per_s is None
            else f"{limits.messages_per_s:g} messages/s, burst {limits.burst}")
        assert rows["new connections"] == "no limit" or re.fullmatch(
            r"[\d,]+ per [\d.]+ (s|min|h)", rows["new connections"])
        assert rows["connection age"] == "no limit" or rows["connection age"].startswith("cut at ")
        assert "None" not in block and "- per subscribe" not in block


def test_venues_as_written_for_the_known_venues() -> None:
    done = run_cli("venues")
    assert "binance (defi_ws.venues.binance.BinanceSpot)\n" \
           "  endpoint         wss://stream.binance.com:9443/stream\n" \
           "  heartbeat        WebSocket PING every 30 s, PONG within 10 s\n" \
           "  topics           1,024 per connection, 200 per subscribe message\n" \
           "  outbound         2 messages/s, burst 1\n" \
           "  new connections  300 per 5 min\n" \
           "  connection age   cut at 24 h (a pool rotates before it)\n" in done.stdout
    assert "  heartbeat        text 'ping' every 20 s, 'pong' within 5 s\n" in done.stdout
    assert "  topics           100 per connection, 50 per subscribe message\n" in done.stdout


def test_venues_json() -> None:
    done = run_cli("venues", "--json")
    assert done.returncode == 0, done.stderr
    venues = orjson.loads(done.stdout)
    assert [v["venue"] for v in venues] == list(ADAPTERS)
    for entry, (name, cls) in zip(venues, ADAPTERS.items(), strict=False):
        assert entry == orjson.loads(orjson.dumps(adapter_facts(name, cls)))
        assert entry["default_url"].startswith("wss://")
        limits = entry["limits"]
        assert limits["topics_per_connection"] == cls.limits.topics_per_connection
        assert limits["messages_per_s"] == cls.limits.messages_per_s
        assert limits["burst"] == cls.limits.burst
        assert limits["max_connection_age_s"] == cls.limits.max_connection_age_s
        assert limits["topics_per_message"] is None or limits["topics_per_message"] >= 1
        assert entry["heartbeat"]["type"] == type(cls.heartbeat).__name__
        interval_s = cls.heartbeat.interval_s
        assert entry["heartbeat"]["interval_s"] == (
            interval_s if interval_s != float("inf") else None)  # NoPing: null in JSON
    binance = next(v for v in venues if v["venue"] == "binance")
    assert binance["limits"]["topics_per_message"] == 200
    assert binance["limits"]["connections_per_window"] == {"count": 300, "window_s": 300.0}
    assert binance["heartbeat"] == {"type": "WsPing", "interval_s": 30.0, "timeout_s": 10.0}


# ----------------------------------------------------------------------------- tail


class Run(Tail):
    """A running `defi-ws tail` of venue specs: stdout to a file, stderr read by line."""

    async def wait_for(self, needles: list[str], timeout_s: float = 30) -> None:
        """Read stderr until every needle appeared in a line."""
        await self.wait_line(
            lambda lines: all(any(n in line for line in lines) for n in needles), timeout_s)

    def messages(self) -> list[tuple[str, Any]]:
        """``(label, message)`` of each stdout line."""
        pairs = []
        for line in self.out.read_text().splitlines():
            label, _, body = line.partition(" ")
            pairs.append((label, orjson.loads(body)))
        return pairs


@contextlib.asynccontextmanager
async def binance_and_okx(rate_per_s: float) -> AsyncIterator[
        tuple[ExchangeSimulator, ExchangeSimulator, str, str]]:
    """A Binance and an OKX simulator, and the URLs tail connects to."""
    async with ExchangeSimulator(dialect=BinanceDialect(), rate_per_s=rate_per_s) as binance, \
            ExchangeSimulator(dialect=OkxDialect(), rate_per_s=rate_per_s) as okx:
        yield binance, okx, binance.url + "stream", okx.url


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_specs_of_two_venues_run_one_feed_each_and_name_their_venue(
        tmp_path: Path) -> None:
    async with binance_and_okx(20) as (binance, okx, binance_url, okx_url):
        async with Run.start(
                tmp_path, "binance:BTCUSDT@trade,ethusdt@trade", "okx:trades:BTC-USDT",
                "binance:solusdt@trade",  # the same venue twice: a feed of its own
                "--url", f"binance={binance_url}", "--url", f"okx={okx_url}") as run:
            await run.wait_for([f"binance: live on {binance_url}",
                                f"binance#2: live on {binance_url}",
                                f"okx: live on {okx_url}"])
            await binance.wait_for(lambda: all(binance.subscribers(t) == 1 for t in (
                "btcusdt@trade", "ethusdt@trade", "solusdt@trade")), 10)
            await okx.wait_for(lambda: okx.subscribers("trades:BTC-USDT") == 1, 10)
            await asyncio.sleep(1.0)
            status = await run.finish()
        assert binance.connections_accepted == 2 and okx.connections_accepted == 1
    lines = run.lines
    assert status == 0, "\n".join(lines)
    assert f"[defi-ws] binance: connecting to {binance_url} (attempt 1 of 6)" in lines
    assert f"[defi-ws] okx: connecting to {okx_url} (attempt 1 of 6)" in lines
    messages = run.messages()
    by_label: dict[str, list[Any]] = {}
    for label, message in messages:
        by_label.setdefault(label, []).append(message)
    assert set(by_label) == {"binance", "binance#2", "okx"}
    streams = {m["stream"] for m in by_label["binance"]}
    assert streams == {"btcusdt@trade", "ethusdt@trade"}  # data only: no acks printed
    assert {m["stream"] for m in by_label["binance#2"]} == {"solusdt@trade"}
    assert all(m["arg"] == {"channel": "trades", "instId": "BTC-USDT"}
               for m in by_label["okx"])
    assert min(len(v) for v in by_label.values()) >= 10
    for label in by_label:
        summary = next(line for line in lines if line.startswith(f"[defi-ws] {label}: summary:"))
        assert f"{len(by_label[label])} messages printed" in summary
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_a_usdm_spec_picks_its_endpoint_from_the_topics(tmp_path: Path) -> None:
    dialect = BinanceDialect(product=Product.USDM, channels=ALL_CHANNELS)
    async with ExchangeSimulator(dialect=dialect, rate_per_s=20) as sim:
        base = sim.url.rstrip("/")
        # --url is the adapter's url=: for binance-usdm the base the endpoint is added to.
        async with Run.start(tmp_path, "binance-usdm:btcusdt@aggTrade", "--url", base,
                             "--format", "pretty") as run:
            await run.wait_for([f"binance-usdm: live on {base}/market/stream"])
            await sim.wait_for(lambda: sim.subscribers("btcusdt@aggTrade") == 1, 10)
            await asyncio.sleep(0.5)
            status = await run.finish()
    assert status == 0, "\n".join(run.lines)
    text = run.out.read_text()
    assert text.startswith('binance-usdm {\n  "stream": "btcusdt@aggTrade"'), text[:200]


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_a_refused_stream_and_a_drop_are_status_lines_of_their_venue(
        tmp_path: Path) -> None:
    async with ExchangeSimulator(dialect=BinanceDialect(), rate_per_s=20) as sim:
        url = sim.url + "stream"
        sim.reject_handshakes(429, count=1)
        async with Run.start(tmp_path, "binance:btcusdt@trade,btcusdt@nosuchstream",
                             "--url", url) as run:
            await run.wait_for(["binance: live on", "rejected"])
            await sim.wait_for(lambda: sim.subscribers("btcusdt@trade") == 1, 10)
            sim.drop_all()
            await run.wait_for(["binance: disconnected: transport_error",
                                f"binance: reconnecting to {url} (attempt 1 of 6)"])
            status = await run.finish()
    lines = run.lines
    assert status == 0, "\n".join(lines)
    assert lines[0] == f"[defi-ws] binance: connecting to {url} (attempt 1 of 6)"
    assert lines[1].startswith("[defi-ws] binance: attempt 1 failed: handshake_rejected (HTTP 429)")
    assert lines[2].startswith("[defi-ws] binance: next attempt in ")
    assert ("[defi-ws] binance: subscription 'btcusdt@nosuchstream' rejected: code 2: "
            "Invalid request: invalid stream") in lines


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_specs_with_redundancy_run_a_pool_per_venue_with_its_adapters_dedup(
        tmp_path: Path) -> None:
    async with binance_and_okx(50) as (binance, okx, binance_url, okx_url):
        async with Run.start(
                tmp_path, "binance:btcusdt@trade", "okx:trades:BTC-USDT", "--redundancy", "2",
                "--url", f"binance={binance_url}", "--url", f"okx={okx_url}",
                "--status-interval", "0.5") as run:
            await binance.wait_for(lambda: binance.subscribers("btcusdt@trade") == 2, 15)
            await okx.wait_for(lambda: okx.subscribers("trades:BTC-USDT") == 2, 15)
            await asyncio.sleep(0.5)
            assert binance.drop(binance.connections[0])  # the other one carries the feed
            await binance.wait_for(lambda: binance.connections_accepted >= 3
                                   and binance.subscribers("btcusdt@trade") == 2, 15)
            await run.wait_for(["binance: pool: 2/2 live", "okx: pool: 2/2 live"])
            await asyncio.sleep(0.5)
            status = await run.finish()
    lines = run.lines
    text = "\n".join(lines)
    assert status == 0, text
    for venue, url in (("binance", binance_url), ("okx", okx_url)):
        for connection in ("r0#", "r1#"):
            assert re.search(rf"^\[defi-ws\] {venue} {connection}\d+: connecting to "
                             rf"{re.escape(url)} \(attempt 1 of 6\)$", text, re.M), text
        assert f"[defi-ws] {venue}: pool: redundancy 2, 1 topic(s), de-duplication on " in text
    assert re.search(r"^\[defi-ws\] binance r\d#\d+: disconnected: transport_error.* "
                     r"\(1/2 connections live\)$", text, re.M), text
    assert "the key of dedup_key()" in text  # Binance's own rule: (stream, trade id)
    assert "hash of field 'data'" in text  # OKX's
    trades = [m["data"]["t"] for label, m in run.messages() if label == "binance"]
    assert len(trades) >= 50 and trades == list(range(trades[0], trades[-1] + 1)), \
        "a Binance trade printed twice or lost"
    okx_ids = [m["data"][0]["tradeId"] for label, m in run.messages() if label == "okx"]
    assert len(okx_ids) >= 50 and len(set(okx_ids)) == len(okx_ids)
    for venue, count in (("binance", len(trades)), ("okx", len(okx_ids))):
        summary = next(line for line in lines if line.startswith(f"[defi-ws] {venue}: summary:"))
        assert f"summary: {count:,} messages, " in summary
        dropped = int(re.search(r"([\d,]+) duplicates dropped", summary)[1].replace(",", ""))
        assert dropped >= 40, summary
    assert "Traceback" not in text


def test_a_venue_that_never_answers_gives_up_with_its_name() -> None:
    done = run_cli("tail", "okx:trades:BTC-USDT", "--url", "ws://127.0.0.1:1/?key=SECRET",
                   "--retries", "0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "[defi-ws] okx: connecting to ws://127.0.0.1:1/?<redacted> (attempt 1 of 1)"
    assert lines[-1].startswith("defi-ws: error: okx: gave up after 1 failed attempt in a "
                                "row (--retries 0): connect_failed")
    assert "SECRET" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("args,needle", [
    (["nosuchvenue:btcusdt@trade"], "'nosuchvenue:btcusdt@trade': expected '<venue>:<topic>"),
    (["binance:"], "'binance:': no topic after 'binance:'"),
    (["okx: , "], "no topic after 'okx:'"),
    (["btcusdt@trade"], "expected a ws:// or wss:// URL, or a venue spec VENUE:TOPIC"),
    (["binance:btcusdt@trade", "ws://127.0.0.1:1/"], "give one URL, or venue specs"),
    (["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"], "one URL at a time"),
    (["binance:btcusdt@trade", "--topic", "x"], "--topic goes with a URL"),
    (["binance:btcusdt@trade", "--subscribe", "{}"], "--subscribe goes with a URL"),
    (["binance:btcusdt@trade", "--format", "raw"], "--format raw goes with a URL"),
    (["binance:btcusdt@trade", "--max-age", "60"], "--max-age needs a pool"),
    (["binance:btcusdt@trade", "--redundancy", "0"], "--redundancy must be >= 1"),
    (["binance:btcusdt@trade", "--url", "http://x"], "URL must start with ws://"),
    (["binance:btcusdt@trade", "--url", "kraken2=ws://x/"], "--url kraken2=...: no venue"),
    (["binance:btcusdt@trade", "--url", "ws://a/", "--url", "ws://b/"], "--url given twice"),
    (["ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:2/"], "--url goes with venue specs"),
    (["binance-usdm:btcusdt@trade,btcusdt@markPrice"], "served on different endpoints"),
])
def test_spec_usage_errors_are_one_line_and_exit_2(
        args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defi-ws: error: "), captured.err
    assert needle in lines[0], lines[0]
    assert captured.out == ""


def test_an_unknown_venue_as_a_user_sees_it() -> None:
    done = run_cli("tail", "nosuchvenue:btcusdt@trade")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    for name in ADAPTERS:
        assert repr(name) in done.stderr


def test_sim_speaks_every_dialect() -> None:
    from defi_ws.testing.dialects import Dialect

    done = run_cli("sim", "--help")
    for dialect in Dialect:
        assert dialect.value in done.stdout
