"""`defi-ws demo` / `make demo`, as a user sees them: in a pipe one line per event
(every fault kind with what the client made of it, gaps with their range, recoveries
with their time), under a terminal a live dashboard; Ctrl-C prints a summary table and
exits 0, under make too (no `make: *** Interrupt`)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from defi_ws.dashboard import FAULTS

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "defi_ws"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: What the event log must show after each fault (before the next fault).
OUTCOMES = {
    "drop": r"feed +disconnected: transport_error",
    "close": r"feed +disconnected: peer_close \(code 1011\)",
    "maintenance": r"feed +disconnected: peer_close \(code 1001\): maintenance",
    "reject_handshake": r"handshake_rejected \(HTTP 429\).*\n(.*\n)*.*retry in [\d.]+ s "
                        r"\(>= the venue's Retry-After 1 s\)",
    "silence": r"feed +disconnected: (ping_timeout|stale)",
    "withhold_pongs": r"feed +disconnected: ping_timeout",
    "garbage": r"feed +disconnected: protocol_error \(code 1002\)",
    "invalid_utf8": r"feed +disconnected: protocol_error \(code 1007\)",
    "stray_continuation": r"feed +disconnected: protocol_error \(code 1002\)",
    "oversized": r"feed +disconnected: protocol_error \(code 1009\)",
    "invalid_json": r"feed +decode error counted, connection stays LIVE: JSONDecodeError",
    "sequence_gap": r"feed +gap on trades\.ETH-USD: 3 missing, seq (\d+)\.\.(\d+)",
    "stall": r"feed +gap on trades\.[A-Z]+-USD: \d+ missing, seq \d+\.\.\d+",
    "delay_pongs": r"feed +stays LIVE; heartbeat RTT p99 now [\d.]+ ms",
    "slow_handshake": r"feed +attempt failed: connect_failed: .*timed out",
}


def test_outcomes_cover_every_fault_kind() -> None:
    from defi_ws.testing.simulator import ALL_FAULTS

    assert [fault.name for fault in FAULTS] == list(OUTCOMES)
    assert set(ALL_FAULTS) <= set(OUTCOMES)  # every kind random_faults knows, and more


def test_in_a_pipe_every_fault_appears_with_the_reason_the_client_classified() -> None:
    done = subprocess.run([*CLI, "demo", "--fault-interval", "0.3", "--cycles", "1",
                           "--rate", "100"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert "\x1b[" not in out  # no live redraw in a pipe
    events = out.split("\nsummary\n", 1)[0]
    # The feed's faults in order, each followed by its outcome before the next one.
    starts = [(m.start(), m.group(1)) for m in re.finditer(
        r"^ *[\d.]+s  fault  ([a-z0-9_]+): the venue", events, re.MULTILINE)]
    assert [name for _, name in starts] == list(OUTCOMES), events[-3000:]
    for (start, name), (end, _) in zip(starts, [*starts[1:], (len(events), "")],
                                       strict=True):
        window = events[start:end]
        found = re.search(OUTCOMES[name], window)
        assert found, f"{name}: no outcome\n{window}"
        if name == "sequence_gap":
            assert int(found[2]) - int(found[1]) == 2  # the range of the 3 skipped
    recoveries = re.findall(r"feed +recovered: LIVE again after ([\d.]+) s", events)
    assert len(recoveries) >= len([f for f in OUTCOMES if "disconnected" in OUTCOMES[f]])
    assert re.search(r"pool +rotated r\d#\d+ -> r\d#\d+ \(make-before-break", events)
    assert re.search(r"^ *[\d.]+s  status feed (LIVE|BACKOFF) ", events, re.MULTILINE)
    summary = out.split("\nsummary\n", 1)[1]
    assert re.search(r"^  pool delivered twice +0$", summary, re.MULTILINE)
    assert re.search(r"^  pool gaps +0$", summary, re.MULTILINE)
    assert int(re.search(r"pool duplicates dropped +([\d,]+)", summary)[1]  # type: ignore[index]
               .replace(",", "")) > 0
    assert int(re.search(r"pool rotations +(\d+)", summary)[1]) >= 1  # type: ignore[index]
    assert re.search(r"^  fault sequence_gap +x1: gap 1$", summary, re.MULTILINE)
    assert re.search(r"^  recovery time +median [\d.]+ s, max [\d.]+ s", summary, re.MULTILINE)
    assert "None" not in summary and "{" not in summary


def test_duration_ends_a_scripted_run() -> None:
    done = subprocess.run([*CLI, "demo", "--duration", "2", "--no-faults"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "faults: off" in done.stdout and "\nsummary\n" in done.stdout
    assert re.search(r"^  feed messages +[\d,]+ ", done.stdout, re.MULTILINE)


#: Runs in the child before the program: a session of its own whose controlling terminal
#: is the pty (so the pty's Ctrl-C reaches its foreground group), 140x40. A fresh
#: process (subprocess's fork+exec): nothing unsafe runs between fork and exec in the
#: test process, which has threads (pty.fork() there may deadlock the child).
WRAPPER = """\
import fcntl, os, struct, sys, termios
os.setsid()
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
os.execvp(sys.argv[1], sys.argv[1:])
"""


class Terminal:
    """A program under a pseudo-terminal (140x40), its output as the user would see it."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self.fd, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WRAPPER, *argv], stdin=slave, stdout=slave,
                stderr=slave, env={**os.environ, **(env or {})})
        finally:
            os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def read_until(self, pattern: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                raise AssertionError(f"no {pattern!r} in:\n{self.text[-3000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    data = b""
                assert data, f"exited before {pattern!r}:\n{self.text[-3000:]}"
                self.raw += data

    def ctrl_c(self, timeout_s: float = 60) -> int:
        """Type Ctrl-C (the terminal sends SIGINT to its foreground group); read the rest;
        return the exit status."""
        os.write(self.fd, b"\x03")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                break
            if not data:
                break
            self.raw += data
        else:
            self.proc.kill()
        status = self.proc.wait(timeout=30)
        os.close(self.fd)
        return status


def test_under_a_terminal_a_live_dashboard_then_ctrl_c_prints_a_summary_table() -> None:
    term = Terminal([*CLI, "demo", "--fault-interval", "0.5"], env={"COLUMNS": "140"})
    term.read_until(r"events")
    term.read_until(r"fault +drop: the venue resets every connection")
    term.read_until(r"feed +recovered: LIVE again after [\d.]+ s")
    status = term.ctrl_c()
    assert status == 0, term.text[-3000:]
    text = term.text
    assert text.count("defi-ws demo ") >= 3  # redrawn in place, again and again
    assert "\x1b[" in term.raw.decode("utf-8", "replace")
    live = text.rsplit("defi-ws demo summary", 1)[0]
    for column in ("connection", "state", "msg/s", "messages", "RTT p50/p99 ms", "gaps",
                   "reconnects", "note"):
        assert column in live
    assert re.search(r"feed +│ (LIVE|BACKOFF|CONNECTING) ", live)
    assert re.search(r"pool r[01]#\d+ +│ ", live)
    assert re.search(r"pool: [\d,]+ delivered once, [\d,]+ duplicates dropped before decode, "
                     r"\d+ rotations, \d+ gaps", live)
    summary = text.rsplit("defi-ws demo summary", 1)[1]
    assert re.search(r"│ pool delivered twice +│ 0 +│", summary)
    assert re.search(r"│ feed disconnects +│ .*transport_error 1", summary)
    assert "Traceback" not in text


def test_make_demo_ctrl_c_exits_0_without_a_make_error() -> None:
    venv = Path(sys.prefix)  # this test's venv: make must not rebuild it
    term = Terminal(["make", "--no-print-directory", "-C", str(ROOT), "-o",
                     f"{venv}/.installed", "demo", f"VENV={venv}"])
    term.read_until(r"events")
    term.read_until(r"feed +LIVE on ws://")
    status = term.ctrl_c()
    text = term.text
    assert status == 0, text[-3000:]
    assert "defi-ws demo summary" in text
    assert "Interrupt" not in text and "Error" not in text and "***" not in text
