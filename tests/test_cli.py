"""The command line: demo, tail against the simulator, and one-line errors."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import orjson
import pytest

from defi_ws.testing import ExchangeSimulator

CLI = [sys.executable, "-m", "defi_ws"]


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s)


def test_demo_runs_with_faults_and_prints_a_summary() -> None:
    done = run_cli("demo", "--duration", "7", "--rate", "50")
    assert done.returncode == 0, done.stderr
    assert "summary" in done.stdout and "Traceback" not in done.stderr
    reconnects = next(line for line in done.stdout.splitlines() if "reconnects " in line)
    assert int(reconnects.split()[-1]) >= 1  # faults were injected and healed
    rtt = next(line for line in done.stdout.splitlines() if "heartbeat RTT" in line)
    assert "p50 None" not in rtt  # the live view and summary show heartbeat RTT
    assert done.stderr == ""  # library logs stay quiet without --verbose


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
    (["tail", "ws://127.0.0.1:1/", "--retries", "1"], "connect_failed"),
])
def test_errors_are_one_line_and_non_zero(args: list[str], needle: str) -> None:
    done = run_cli(*args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("defi-ws: error:")
    assert "Traceback" not in done.stderr and "SECRET" not in done.stderr
