"""The command line: tail against the simulator, and one-line errors (the demo: test_demo.py;
tail on one connection: test_cli_tail.py)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys

import orjson
import pytest

from defi_ws.cli import main
from defi_ws.testing import ExchangeSimulator

CLI = [sys.executable, "-m", "defi_ws"]


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_tail_streams_reconnects_and_exits_cleanly_on_ctrl_c() -> None:
    async with ExchangeSimulator(rate_per_s=50) as sim:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "tail", sim.url, "--subscribe", '{"op":"subscribe","args":["trades.BTC"]}',
            "--format", "json", "--ping", "text:ping:pong",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 1, 10)
        await asyncio.sleep(0.5)
        sim.drop_all()
        await sim.wait_for(lambda: sim.connections_accepted >= 2, 10)  # the reconnect
        await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 1, 10)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines()]
    data = [m for m in lines if m.get("topic") == "trades.BTC" and "seq" in m]
    assert len(data) >= 20
    status = err.decode()
    assert status.count("live on ws://127.0.0.1") == 2  # connected, then reconnected
    assert "disconnected: transport_error" in status and "summary:" in status
    assert "Traceback" not in status


@pytest.mark.parametrize("args,needle", [
    (["tail", "http://example.com"], "must start with ws://"),
    (["tail", "ws://127.0.0.1:notaport/?key=SECRET"], "port 'notaport'"),
    (["tail", "ws://127.0.0.1:1/", "--subscribe", "{not json"], "--subscribe: not valid JSON"),
    (["tail", "ws://127.0.0.1:1/", "--ping", "carrier-pigeon"], "--ping"),
])
def test_errors_are_one_line_and_non_zero(args: list[str], needle: str) -> None:
    done = run_cli(*args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("defi-ws: error:")
    assert "Traceback" not in done.stderr and "SECRET" not in done.stderr


@pytest.mark.parametrize("args", [
    ["tail", "ws://127.0.0.1:1/?key=SECRET", "--retries", "1"],
    ["tail", "ws://127.0.0.1:1/?key=SECRET", "--retries", "1", "--redundancy", "2",
     "--topic", "a", "--dedup-id", "seq"],  # every connection of the pool gave up
])
def test_giving_up_ends_with_one_error_line(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("defi-ws: error:") and "connect_failed" in last
    assert "Traceback" not in done.stderr and "SECRET" not in done.stderr


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_tail_with_redundancy_prints_each_message_once_through_a_drop_and_a_rotation(
) -> None:
    topics = ["trades.BTC", "trades.ETH"]

    def subscribed_twice() -> bool:
        return all(sim.subscribers(topic) == 2 for topic in topics)

    async with ExchangeSimulator(rate_per_s=100) as sim:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "tail", sim.url, "--topic", topics[0], "--topic", topics[1],
            "--redundancy", "2", "--dedup-id", "seq", "--status-interval", "0.5", "--stats",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await sim.wait_for(subscribed_twice, 15)
        await asyncio.sleep(0.5)
        assert sim.drop(sim.connections[0])  # one of the two: the other carries the feed
        await sim.wait_for(lambda: sim.connections_accepted >= 3 and subscribed_twice(), 15)
        await asyncio.sleep(0.5)
        # The venue announces a cut: the pool replaces that connection, make-before-break.
        assert sim.announce_shutdown(sim.connections[-1], cut_after_s=10.0) == 1
        await sim.wait_for(lambda: sim.connections_accepted >= 4 and subscribed_twice()
                           and sim.current_connections == 2, 15)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    status = err.decode()
    assert proc.returncode == 0, status
    messages = [orjson.loads(line) for line in out.splitlines()]
    assert all(m.get("topic") in topics and "seq" in m for m in messages)  # data only
    for topic in topics:
        seqs = [m["seq"] for m in messages if m["topic"] == topic]
        assert len(seqs) >= 50
        assert len(set(seqs)) == len(seqs), "a message was printed twice"
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a message was lost"
    assert "Traceback" not in status
    assert status.count("live on ws://127.0.0.1") >= 4  # 2, the reconnect, the replacement
    assert "disconnected: transport_error" in status and "(1/2 connections live)" in status
    assert re.search(r"rotated r\d#\d+ -> r\d#\d+", status)
    # Status lines: every connection, its state and share of deliveries, the totals.
    pool_lines = re.findall(r"pool: 2/2 live; r0#\d+ LIVE \d+% \(.*", status)
    assert pool_lines and all("duplicates dropped" in line for line in pool_lines)
    summary = status.split("summary:", 1)[1]
    assert ", 1 rotations," in summary and ", 0 gaps," in summary
    assert "disconnects transport_error 1" in summary
    dropped = int(re.search(r"([\d,]+) duplicates dropped", summary)[1].replace(",", ""))
    assert dropped >= 50
    # --stats: the pool snapshot in readable form, one row per connection.
    assert "pool snapshot: redundancy 2, 1 group(s) of connections, 2 topic(s)" in summary
    assert len(re.findall(r"^\[defi-ws\]   r[01]#\d+ +LIVE +2 ", summary, re.MULTILINE)) == 2
    assert "{" not in summary


@pytest.mark.parametrize("args,needle", [
    (["--redundancy", "2", "--topic", "a"], "--redundancy 2 needs --dedup-id FIELD"),
    (["--pool", "--topic", "a"], "--pool needs --dedup-id FIELD"),
    (["--redundancy", "0"], "--redundancy must be >= 1"),
    (["--dedup-id", "seq", "--topic", "a"], "--dedup-id needs a pool"),
    (["--max-age", "60"], "--max-age needs a pool"),
    (["--redundancy", "2", "--dedup-id", "seq"], "a pool needs at least one --topic"),
    (["--redundancy", "2", "--topic", "a", "--dedup-id", "seq", "--dedup-hash", "data"],
     "exclude each other"),
    (["--redundancy", "2", "--topic", "a", "--dedup-hash", "data", "--dedup-topic", "s"],
     "--dedup-topic goes with --dedup-id"),
    (["--redundancy", "2", "--topic", "a", "--dedup-id", "seq", "--subscribe", "{}"],
     "a pool subscribes each of its connections itself"),
    (["--redundancy", "2", "--topic", "a", "--dedup-id", ""], "--dedup-id needs a field name"),
])
def test_pool_usage_errors_are_one_line_and_exit_2(
        args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "ws://127.0.0.1:1/", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defi-ws: error:") and needle in lines[0]
    assert captured.out == ""


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_tail_pool_prints_a_status_line_per_connect_attempt_of_each_connection() -> None:
    async with ExchangeSimulator(rate_per_s=50) as sim:
        url = sim.url
        sim.reject_handshakes(429, count=1)  # the first attempt of one connection
        proc = await asyncio.create_subprocess_exec(
            *CLI, "tail", url, "--topic", "trades.BTC", "--redundancy", "2",
            "--dedup-id", "seq", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await sim.wait_for(lambda: sim.subscribers("trades.BTC") == 2, 15)
        first = sim.connections[0]
        assert sim.drop(first)  # a forced close of one connection
        await sim.wait_for(lambda: sim.connections_accepted >= 3
                           and sim.subscribers("trades.BTC") == 2, 15)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    status = err.decode()
    assert proc.returncode == 0, status
    lines = status.splitlines()
    for label in ("r0#1", "r1#2"):  # replica#connection: each says what happens to it
        assert f"[defi-ws] {label}: connecting to {url} (attempt 1 of 6)" in lines, status
        assert any(re.fullmatch(rf"\[defi-ws\] {label}: live on {re.escape(url)} "
                                r"\([12]/2 connections live\)", line) for line in lines), status
    refused = [line for line in lines if "attempt 1 failed: handshake_rejected (HTTP 429)" in line]
    assert len(refused) == 1, status
    label = refused[0].split()[1].rstrip(":")
    after = lines[lines.index(refused[0]) + 1:]
    assert re.fullmatch(rf"\[defi-ws\] {label}: next attempt in \d\.\d s; 1 failed attempt "
                        r"in a row, --retries 5", after[0]), after[0]
    assert f"[defi-ws] {label}: connecting to {url} (attempt 2 of 6)" in after
    dropped = [line for line in lines if ": disconnected: transport_error" in line]
    assert len(dropped) == 1 and dropped[0].endswith("(1/2 connections live)"), status
    label = dropped[0].split()[1].rstrip(":")
    after = lines[lines.index(dropped[0]) + 1:]
    assert after[0].startswith(f"[defi-ws] {label}: next attempt in ")
    assert f"[defi-ws] {label}: reconnecting to {url} (attempt 1 of 6)" in after
    assert "Traceback" not in status


def test_tail_pool_says_how_each_connection_gave_up() -> None:
    done = run_cli("tail", "ws://127.0.0.1:1/?key=SECRET", "--retries", "1", "--redundancy",
                   "2", "--topic", "a", "--dedup-id", "seq")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    for label in ("r0#1", "r1#2"):
        mine = [line for line in lines if line.startswith(f"[defi-ws] {label}: ")]
        text = [line.split(": ", 1)[1] for line in mine]
        assert text[0] == "connecting to ws://127.0.0.1:1/?<redacted> (attempt 1 of 2)"
        assert text[1].startswith("attempt 1 failed: connect_failed: connection refused")
        assert text[2].startswith("next attempt in ") and text[2].endswith(
            "1 failed attempt in a row, --retries 1")
        assert text[3] == "connecting to ws://127.0.0.1:1/?<redacted> (attempt 2 of 2)"
        assert text[4].startswith("attempt 2 failed: connect_failed")
        assert text[5].startswith("gave up after 2 failed attempts in a row (--retries 1): "
                                  "connect_failed")
        assert len(mine) == 6
    assert lines[-1].startswith("defi-ws: error: every connection gave up; r")
    assert "SECRET" not in done.stderr
