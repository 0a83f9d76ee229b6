"""The scripts in examples/ run end to end against the simulator and exit 0.

Each runs as a subprocess, once (these are sync tests, so they are not repeated per
event loop); the output must show data received and a final ``client.snapshot()``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 60


def run_script(name: str, *args: str) -> str:
    """Run ``examples/<name>`` for 2 s against its embedded simulator; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "DEFI_WS_LIVE"}  # never the venue
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--seconds", "2", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=EXAMPLES.parent,
        env=env,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def check_snapshot(snapshot: dict[str, Any]) -> None:
    """A feed that ran well: LIVE, data received, no decode or callback error, no gap."""
    assert snapshot["state"] == "LIVE"
    assert snapshot["messages"] > 0
    assert snapshot["decode_errors"] == snapshot["callback_errors"] == 0
    assert snapshot["gaps"] == 0


def run_example(name: str, *args: str) -> tuple[str, dict[str, Any]]:
    """Run ``examples/<name>`` for 2 s; return its stdout and its final snapshot."""
    out = run_script(name, *args)
    assert "snapshot:\n" in out, out
    snapshot = json.loads(out.split("snapshot:\n", 1)[1])
    check_snapshot(snapshot)
    return out, snapshot


def test_examples_have_docstrings_and_the_common_options() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["binance_trades.py", "generic_venue.py", "multi_venue_bbo.py",
                       "okx_book.py", "okx_text_ping.py", "uvloop_app.py"]
    for name in scripts:
        source = (EXAMPLES / name).read_text()
        assert source.startswith('"""'), name
        assert "--url" in source and "--seconds" in source, name


def test_generic_venue_reconnects_and_resubscribes() -> None:
    out, snap = run_example("generic_venue.py")
    assert "seq=1" in out
    assert "simulator: resetting 1 connection(s)" in out
    assert "disconnected: transport_error" in out
    assert "reconnected: LIVE again" in out
    assert snap["reconnects"] == 1 and snap["connects"] == 2
    assert snap["disconnects"] == {"transport_error": 1}
    assert snap["topics_confirmed"] == 2


def test_binance_trades() -> None:
    out, snap = run_example("binance_trades.py")
    assert "BTCUSDT  t=1" in out and "ETHUSDT  t=1" in out
    assert "rejected btcusdt@nosuchstream: code 2: Invalid request: invalid stream" in out
    assert snap["topics_desired"] == snap["topics_confirmed"] == 2
    assert snap["reconnects"] == 0 and snap["unknown_acks"] == 0


def test_okx_text_ping() -> None:
    out, snap = run_example("okx_text_ping.py")
    assert "BTC-USDT  #1" in out
    assert "rejected trades:NOSUCHPAIR: 60018" in out
    assert snap["topics_desired"] == snap["topics_confirmed"] == 3  # SOL-USDT added live
    assert snap["pongs"] > 0 and snap["rtt"]["count"] > 0  # text pongs, matched in the hot path
    assert snap["unknown_acks"] == 0


def test_okx_book_verifies_checksums_and_resyncs_once_per_fault() -> None:
    out, snap = run_example("okx_book.py", "--fault-every", "0.5")  # both kinds in 2 s
    assert "topic: books:BTC-USDT" in out
    assert re.search(r"^  bid [\d.]+ x [\d.]+ \| ask [\d.]+ x [\d.]+ \(spread ", out, re.M), out
    assert "book broke: crossed_book" not in out  # the book's default check is on
    gaps = out.count("simulator: the next update skips a seqId")
    bad = out.count("simulator: the next update carries a wrong checksum")
    assert gaps >= 1 and bad >= 1
    assert "book broke: sequence_gap (expected prevSeqId == " in out
    assert "book broke: checksum_mismatch (checksum " in out
    resyncs = re.search(r"^resyncs: (\d+) .*, snapshots loaded: (\d+)", out, re.M)
    assert resyncs, out
    total, snapshots = map(int, resyncs.groups())
    assert total == gaps + bad and snapshots == total + 1  # each resync got a new snapshot
    counters = json.loads(out.split("book counters: ", 1)[1].split("\n", 1)[0])
    assert counters["resyncs"] == {"sequence_gap": gaps, "checksum_mismatch": bad}
    # The simulator sends the real CRC32: verified, and only the injected ones are wrong.
    assert counters["checksums_verified"] > 0 and counters["checksums_skipped"] == 0
    assert re.search(rf"^checksums: [1-9]\d* verified, {bad} wrong, 0 skipped", out, re.M)
    assert counters["applied"] > 0
    assert snap["topics_confirmed"] == 1 and snap["reconnects"] == 0


def test_multi_venue_bbo_shows_every_venue_side_by_side() -> None:
    from defi_ws.venues import ADAPTERS

    out = run_script("multi_venue_bbo.py")
    assert "snapshots:\n" in out, out
    snapshots = json.loads(out.split("snapshots:\n", 1)[1])
    assert list(snapshots) == ["binance", "okx"]
    assert set(snapshots) <= set(ADAPTERS)  # through the registry's adapters
    for snap in snapshots.values():
        check_snapshot(snap)
        assert snap["topics_confirmed"] == 1
    table = out.split("snapshots:\n", 1)[0]
    rows = re.findall(r"^  (binance|okx) +([\d.]+) x [\d.]+ +([\d.]+) x [\d.]+ +([\d.]+) +(\d+)$",
                      table, re.M)
    assert {row[0] for row in rows} == {"binance", "okx"}, table
    for _, bid, ask, spread, updates in rows:
        assert float(bid) < float(ask) and float(spread) > 0 and int(updates) > 0
    assert re.search(r"^  best bid [\d.]+ on (binance|okx), best ask [\d.]+ on (binance|okx)$",
                     table, re.M)


def test_uvloop_app() -> None:
    out, snap = run_example("uvloop_app.py")
    assert "event loop: uvloop.Loop" in out
    assert "[reporter] state=LIVE" in out
    final = next(line for line in out.splitlines() if line.startswith("consumed="))
    counts = dict(part.split("=", 1) for part in final.split()[:2])
    consumed, dropped = int(counts["consumed"]), int(counts["dropped"])
    assert consumed > 0 and dropped > 0  # the consumer's stall fills the bounded queue
    assert consumed + dropped <= snap["messages"]


def test_an_example_against_a_separate_simulator_process() -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "defi_ws.testing.simulator", "--dialect", "binance", "--rate", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:"), url
        out, snap = run_example("binance_trades.py", "--url", url + "ws")
        assert f"venue: {url}ws" in out
        assert snap["topics_confirmed"] == 2
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_uvloop_app_stops_cleanly_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "uvloop_app.py"), "--seconds", "60"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=EXAMPLES.parent,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("[reporter]"):
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert '"state": "LIVE"' in out
