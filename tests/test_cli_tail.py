"""`defi-ws tail` on one connection, as a user runs it (the real entry point, a
subprocess): a status line for every attempt, disconnect, retry and the outcome, the
outcome at once, --retries (forever, 0, consecutive failures only), one-line usage
errors, --format auto, --header, --ca-file, --insecure, --proxy, help for every
subcommand, Ctrl-C while retrying."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trustme

from defi_ws import _compat
from defi_ws.testing import ExchangeSimulator

CLI = [sys.executable, "-m", "defi_ws"]


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s)


class Tail:
    """A running `defi-ws tail`: stdout to a file, stderr read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path) -> None:
        self.proc = proc
        self.out = out
        self.lines: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, tmp_path: Path, *args: str) -> AsyncIterator[Tail]:
        out = tmp_path / "stdout.txt"
        with out.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *CLI, "tail", *args, stdout=sink, stderr=subprocess.PIPE)
        tail = cls(proc, out)
        try:
            yield tail
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def wait_line(self, predicate: Callable[[list[str]], bool],
                        timeout_s: float = 30) -> None:
        """Read stderr until ``predicate(lines so far)``."""
        assert self.proc.stderr is not None
        async with _compat.timeout(timeout_s):
            while not predicate(self.lines):
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError("tail exited:\n" + "\n".join(self.lines))
                self.lines.append(line.decode().rstrip("\n"))

    async def finish(self, *, interrupt: bool = True, timeout_s: float = 30) -> int:
        """Ctrl-C (optionally), then the rest of stderr and the exit status."""
        assert self.proc.stderr is not None
        if interrupt:
            self.proc.send_signal(signal.SIGINT)
        async with _compat.timeout(timeout_s):
            rest = await self.proc.stderr.read()
            self.lines.extend(rest.decode().splitlines())
            return await self.proc.wait()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    @property
    def stdout(self) -> str:
        return self.out.read_text()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ----------------------------------------------------------------------------- status


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_every_attempt_disconnect_and_retry_gets_a_status_line(tmp_path: Path) -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim:
        url = sim.url
        sim.reject_handshakes(429, retry_after_s=1, count=1)
        async with Tail.start(tmp_path, url, "--topic", "trades.BTC") as tail:
            await tail.wait_line(lambda lines: any("live on" in line for line in lines))
            await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 1, 10)
            sim.drop_all()
            await tail.wait_line(lambda lines: sum("live on" in line for line in lines) == 2)
            status = await tail.finish()
    assert status == 0, "\n".join(tail.lines)
    lines = tail.lines
    assert lines[0] == f"[defi-ws] connecting to {url} (attempt 1 of 6)"
    assert lines[1].startswith("[defi-ws] attempt 1 failed: handshake_rejected (HTTP 429)")
    # The venue's Retry-After (1 s) is longer than the first backoff (0.5 s): honoured.
    assert re.fullmatch(r"\[defi-ws\] next attempt in 1\.0 s \(the venue's Retry-After: 1 s\); "
                        r"1 failed attempt in a row, --retries 5", lines[2]), lines[2]
    assert lines[3] == f"[defi-ws] connecting to {url} (attempt 2 of 6)"
    assert lines[4] == f"[defi-ws] live on {url}"
    assert lines[5].startswith("[defi-ws] disconnected: transport_error")
    assert re.fullmatch(r"\[defi-ws\] next attempt in 0\.\d s", lines[6]), lines[6]
    assert lines[7] == f"[defi-ws] reconnecting to {url} (attempt 1 of 6)"  # count reset
    assert lines[8] == f"[defi-ws] live on {url}"
    summary = lines[-1]
    assert summary.startswith("[defi-ws] summary: ") and "Traceback" not in "\n".join(lines)
    assert re.search(r"\d+ messages printed, [\d,]+ received \([\d.]+ (B|KiB)\) in ", summary)
    assert "2 connections, 1 reconnect; disconnects: " in summary
    assert "handshake_rejected 1" in summary and "transport_error 1" in summary
    assert "heartbeat RTT" in summary and "None" not in summary and "{" not in summary


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_a_fatal_outcome_is_printed_at_once(tmp_path: Path) -> None:
    async with ExchangeSimulator() as sim:
        sim.reject_handshakes(403, count=5)
        # --status-interval and --stats would have been the polling period: the
        # outcome must not wait for them.
        start = time.monotonic()
        async with Tail.start(tmp_path, sim.url, "--stats", "--status-interval", "600") as tail:
            status = await tail.finish(interrupt=False, timeout_s=60)
        took = time.monotonic() - start
    assert status == 1
    assert tail.lines[-1].startswith("defi-ws: error: gave up after 1 failed attempt in a "
                                     "row (not retried): handshake_rejected (HTTP 403)")
    assert took < 60  # a poll at --status-interval would take 600 s
    assert sim.handshakes_rejected == 1  # 403 is not retried


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_only_consecutive_failed_attempts_count(tmp_path: Path) -> None:
    """--retries 1 survives any number of drops of connections that went LIVE."""
    async with ExchangeSimulator(rate_per_s=20) as sim:
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC",
                              "--retries", "1") as tail:
            for drops in range(1, 5):
                await tail.wait_line(
                    lambda lines, n=drops: sum("live on" in line for line in lines) == n)
                await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 1, 10)
                sim.drop_all()
            await tail.wait_line(lambda lines: sum("live on" in line for line in lines) == 5)
            status = await tail.finish()
    assert status == 0, "\n".join(tail.lines)
    assert tail.count("gave up") == 0
    assert tail.count("disconnected: transport_error") == 4
    assert tail.count("(attempt 1 of 2)") == 5 and tail.count("attempt 2") == 0


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_retries_exhausted_says_after_how_many_attempts(tmp_path: Path) -> None:
    async with Tail.start(tmp_path, f"ws://127.0.0.1:{closed_port()}/",
                          "--retries", "2") as tail:
        status = await tail.finish(interrupt=False)
    assert status == 1
    assert tail.count("connecting to") == 3 and tail.count("failed: connect_failed") == 3
    assert tail.count("next attempt in") == 2
    assert tail.lines[-1].startswith(
        "defi-ws: error: gave up after 3 failed attempts in a row (--retries 2): "
        "connect_failed: connection refused")


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_retries_0_connects_once(tmp_path: Path) -> None:
    async with Tail.start(tmp_path, f"ws://127.0.0.1:{closed_port()}/",
                          "--retries", "0") as tail:
        status = await tail.finish(interrupt=False)
    assert status == 1
    assert tail.lines[0].endswith("(attempt 1 of 1)") and tail.count("connecting to") == 1
    assert tail.lines[-1].startswith(
        "defi-ws: error: gave up after 1 failed attempt in a row (--retries 0): "
        "connect_failed")
    assert "Traceback" not in "\n".join(tail.lines)


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_ctrl_c_while_retrying_forever_prints_a_summary_and_exits_0(
        tmp_path: Path) -> None:
    async with Tail.start(tmp_path, f"ws://127.0.0.1:{closed_port()}/",
                          "--retries", "forever") as tail:
        await tail.wait_line(lambda lines: sum("connecting to" in line for line in lines) >= 3)
        status = await tail.finish()
    assert status == 0, "\n".join(tail.lines)
    assert all(" of " not in line for line in tail.lines if "connecting to" in line)
    assert re.fullmatch(r"\[defi-ws\] summary: never live; \d+ connect attempts in [\d.]+ s; "
                        r"last: connect_failed: connection refused.*", tail.lines[-1])


@pytest.mark.parametrize("args,needle", [
    (["--retries", "-1"], "--retries: expected a whole number >= 0 or 'forever', got '-1'"),
    (["--retries", "often"], "--retries: expected a whole number >= 0 or 'forever'"),
    (["--stale-after", "-5"], "--stale-after: expected a number of seconds > 0, got '-5'"),
    (["--stale-after", "nan"], "--stale-after: expected a number of seconds > 0"),
    (["--duration", "0"], "--duration: expected a number of seconds > 0"),
    (["--format", "xml"], "--format: invalid choice: 'xml'"),
    (["--header", "X-Key SECRET"], "--header: expected NAME:VALUE (no ':' found)"),
    (["--header", "bad name: SECRET"], "--header: expected NAME:VALUE with an HTTP header"),
    (["--proxy", "ftp://proxy:21"], "--proxy: a proxy URL must start with http://"),
    (["--ca-file", "/nonexistent/ca.pem"], "--ca-file: no readable file"),
    (["--ca-file", __file__, "--insecure"], "--ca-file and --insecure exclude each other"),
])
def test_bad_values_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    done = run_cli("tail", "ws://127.0.0.1:1/", *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defi-ws: error: "), done.stderr
    assert needle in lines[0] and "SECRET" not in lines[0]
    assert done.stdout == ""


# ----------------------------------------------------------------------------- output


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_format_auto_shows_frames_that_are_not_json(tmp_path: Path) -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim:
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC") as tail:
            await tail.wait_line(lambda lines: any("live on" in line for line in lines))
            await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 1, 10)
            sim.send_invalid_json()
            await sim.wait_for(lambda: sim.messages_sent["trades.BTC"] >= 5, 10)
            status = await tail.finish()
    assert status == 0, "\n".join(tail.lines)
    printed = tail.stdout.splitlines()
    assert '{"topic": "trades.' in printed  # as it came
    assert sum(line.startswith('{"topic":"trades.BTC","seq":') for line in printed) >= 1


# ----------------------------------------------------------------------------- connection


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_header_reaches_the_venue_and_is_never_printed(tmp_path: Path) -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim:
        async with Tail.start(tmp_path, sim.url, "--header", "X-Api-Key: k-SECRET-1",
                              "--header", "X-Client:defi-ws-test") as tail:
            await tail.wait_line(lambda lines: any("live on" in line for line in lines))
            await sim.wait_for(lambda: sim.current_connections == 1, 10)
            headers = sim.connections[0].headers
            status = await tail.finish()
    assert status == 0
    assert headers["x-api-key"] == "k-SECRET-1" and headers["x-client"] == "defi-ws-test"
    assert "SECRET" not in "\n".join(tail.lines)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_ca_file_insecure_and_an_untrusted_certificate(
        tmp_path: Path, ca: trustme.CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with ExchangeSimulator(rate_per_s=20, ssl_context=tls_server(ca)) as sim:
        assert sim.url.startswith("wss://")
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC", "--ca-file",
                              str(ca_file)) as trusted:
            await trusted.wait_line(lambda lines: any("live on" in line for line in lines))
            assert await trusted.finish() == 0
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC",
                              "--insecure") as insecure:
            await insecure.wait_line(lambda lines: any("live on" in line for line in lines))
            assert await insecure.finish() == 0
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC") as untrusted:
            status = await untrusted.finish(interrupt=False)
    assert insecure.lines[0] == (
        "[defi-ws] WARNING: --insecure: TLS certificates and host names are NOT verified; "
        "anyone on the path can read and change this feed. Use it for local testing only.")
    assert not any("WARNING" in line for line in trusted.lines)
    assert status == 1  # the system store does not trust this CA: fatal, at once
    assert untrusted.lines[-1].startswith(
        "defi-ws: error: gave up after 1 failed attempt in a row (not retried): tls_failure")


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            self.requests.append(head.split("\r\n", 1)[0])
            host, _, port = head.split()[1].rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self._writers.add(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_proxy(tmp_path: Path) -> None:
    async with ExchangeSimulator(rate_per_s=20) as sim, ConnectProxy() as proxy:
        url, port, proxy_url = sim.url, sim.port, proxy.url
        async with Tail.start(tmp_path, sim.url, "--topic", "trades.BTC",
                              "--proxy", proxy.url) as tail:
            await tail.wait_line(lambda lines: any("live on" in line for line in lines))
            await sim.wait_for(lambda: sim.messages_sent["trades.BTC"] >= 3, 10)
            status = await tail.finish()
    assert status == 0, "\n".join(tail.lines)
    assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]
    assert tail.lines[0] == (f"[defi-ws] connecting to {url} via proxy {proxy_url} "
                             "(attempt 1 of 6)")
    assert '"topic":"trades.BTC"' in tail.stdout


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["tail", "demo", "sim", "bench"])
def test_every_subcommand_has_its_own_help(command: str) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"usage: defi-ws {command} ")
    assert done.stderr == ""


def test_an_unknown_flag_prints_the_subcommands_usage() -> None:
    done = run_cli("tail", "ws://127.0.0.1:1/", "--bogus")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: defi-ws tail ")
    assert done.stderr.strip().splitlines()[-1] == (
        "defi-ws tail: error: unrecognized arguments: --bogus")


def test_bench_passes_arguments_after_the_double_dash() -> None:
    done = run_cli("bench", "--", "--help")
    assert done.returncode == 0, done.stderr
    assert "--only" in done.stdout  # bench/run.py's own help
