"""Regression guard: instructions per message through ``FeedListener.feed()``, by callgrind.

``make perf-guard`` counts, under ``valgrind --tool=callgrind``, the instructions one
message costs on each hot path and compares them with ``bench/perf_baseline.json``:

- ``frame-only``: ``FeedListener(None, decode=None)``, counters and RFC checks only;
- ``orjson``: ``FeedListener(callback)`` (``orjson.loads``, zero copy) + a callback that
  reads ``msg["data"]["p"]``;
- ``typed``: ``FeedListener(callback, decode=struct_decoder(CombinedTrade))`` (msgspec,
  all fields) + a callback that reads ``msg.data.p``;
- ``conflated``: ``FeedListener(callback, conflate_field="stream")`` on 10-key book
  tickers fed as reads of 128 frames (``last_in_buffer`` on the last): per *received*
  message, the newest of each key decoded (orjson) and delivered, the rest counted.

The messages (all but ``conflated``) are the nested Binance combined-stream trades of
``bench/throughput.py`` (~213 B, 512 distinct). One valgrind run
(``callgrind_core.per_message_forked``): the imports once, then each path in a child
forked from that same state (a path never sees another's heap; the order does not
matter), ``WARMUP`` messages, then ``MESSAGES`` counted ones between two dump markers.
Only what runs inside ``FeedListener.feed`` is collected (callgrind ``--toggle-collect``;
the decode and the callback are called from there, so they are in; the bench loop's
Python call of ``feed`` is not). ``PYTHONHASHSEED=0``. For the same binaries and inputs
the counts repeat to the instruction (wall-clock timings on a shared VM do not); each
path's profile is kept in ``build/perf-guard/``. Unrelated changes to what is imported
move the heap the paths start from, and their counts by up to ~0.2 %.

A path more than ``THRESHOLD_PCT`` (3 %) above its baseline fails (exit 1, naming the
path and the change); one more than 3 % below passes with a hint to refresh the baseline
(``make perf-baseline``). The counts include the interpreter and the decoders, so they
are only compared on the Python (version and build) and the picows/orjson/msgspec
versions the baseline was recorded with; otherwise the guard says why and skips (exit 0).

    python bench/perf_guard.py                   # compare (make perf-guard)
    python bench/perf_guard.py --write-baseline  # measure twice, write (make perf-baseline)
    python bench/perf_guard.py --if-available    # no valgrind: a hint, exit 0 (make test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import cpu_model
from callgrind_core import per_message_forked

BASELINE = Path(__file__).with_name("perf_baseline.json")
THRESHOLD_PCT = 3.0
WARMUP = 512        # messages fed to each path before the counted ones
MESSAGES = 2048     # messages counted per path (4 x the 512 distinct payloads)
#: Versions that change what is counted: a mismatch skips the comparison.
MUST_MATCH = ("python", "python_build", "picows", "orjson", "msgspec")
#: Recorded and shown when they differ, but compared anyway (our own build inputs).
NOTED = ("Cython", "uvloop", "valgrind", "libc", "cpu")
#: Compiled .pyc files of the runs go here, not into the source tree (and are reused).
BUILD = Path(__file__).resolve().parent.parent / "build"
PYCACHE = BUILD / "perf-guard-pycache"
#: Each path's profile of the last run (``callgrind_annotate build/perf-guard/orjson.callgrind``).
PROFILES = BUILD / "perf-guard"
INSTALL_HINT = ("valgrind is not installed: `apt-get install valgrind` (Debian/Ubuntu; "
                "`dnf install valgrind` on Fedora) to run the perf guard")

BENCH = os.path.dirname(os.path.abspath(__file__))
SETUP = rf"""
sys.path.insert(0, {BENCH!r})
from throughput import combined_payloads, typed_types
from defi_ws._core import FeedListener
from defi_ws.typed import struct_decoder

def sink(message):
    message["data"]["p"]

def sink_attr(message):
    message.data.p

payloads = combined_payloads(512)
"""


CONFLATED_SETUP = r"""
from conflation import book_ticker_payloads

tickers = book_ticker_payloads(10, 50)  # 500, keys round-robin

def sink_ticker(message):
    message["data"]["b"]

def drive_reads(listener, payloads, start, count):
    # reads of 128 frames: picows' last_in_buffer on every 128th (WARMUP, MESSAGES: x 128)
    feed = listener.feed
    n = len(tickers)
    for i in range(start, start + count):
        feed(1, tickers[i % n], True, 0, (i + 1) % 128 == 0)
"""


@dataclass(frozen=True)
class GuardedPath:
    """One guarded path: the listener (``factory``, an expression evaluated after ``SETUP``
    and ``setup``) and how messages reach it (``drive``: a function of ``setup`` or
    ``drive_plain``, one ``feed()`` per message; see ``callgrind_core.FORKED_SCRIPT``)."""

    factory: str | None
    what: str
    setup: str = ""
    drive: str = "drive_plain"
    #: Python printing 1 when ``_core`` has the feature (for a path with no factory yet).
    probe: str | None = None


PATHS: dict[str, GuardedPath] = {
    "frame-only": GuardedPath("FeedListener(None, decode=None)",
                              "count-only: counters and RFC checks, no decode, no callback"),
    "orjson": GuardedPath("FeedListener(sink)", 'orjson.loads (zero copy) + msg["data"]["p"]'),
    "typed": GuardedPath(
        "FeedListener(sink_attr, decode=struct_decoder(typed_types('combined')[0]))",
        "msgspec Struct (all fields) + msg.data.p"),
    # Per *received* message: of each read of 128, ~10 are decoded and delivered (the
    # newest of each key), the rest counted. The probe skips the path on a _core
    # without conflation (an older checkout).
    "conflated": GuardedPath(
        'FeedListener(sink_ticker, conflate_field="stream")',
        'conflate_field="stream": 10-key book tickers (bench/conflation.py) in reads of '
        '128 (~13 per key), the newest per key orjson-decoded + msg["data"]["b"]',
        setup=CONFLATED_SETUP, drive="drive_reads",
        probe="from defi_ws._core import FeedListener as L\n"
              "try: L(None, conflate_field='stream'); print(1)\n"
              "except TypeError: print(0)"),
}


def environment(python: str = sys.executable) -> dict[str, str]:
    """What the counts depend on, for the baseline file and the mismatch check."""
    code = ("import json, platform, sys; from importlib import metadata as m\n"
            "v = {'python': platform.python_version(), 'python_build': ' '.join("
            "platform.python_build()) + ' ' + platform.python_compiler(), "
            "'libc': ' '.join(platform.libc_ver())}\n"
            "for name in ('picows', 'orjson', 'msgspec', 'Cython', 'uvloop'):\n"
            "    try: v[name] = m.version(name)\n"
            "    except m.PackageNotFoundError: v[name] = '-'\n"
            "print(json.dumps(v))")
    out = json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True,
                                    text=True).stdout)
    out["cpu"] = cpu_model()
    try:
        out["valgrind"] = subprocess.run(["valgrind", "--version"], capture_output=True,
                                         text=True).stdout.strip()
    except OSError:
        out["valgrind"] = "-"
    return out


def run_env() -> dict[str, str]:
    """Compiled .pyc files kept under build/ and reused (this machine's default may be
    not to write them; compiling under valgrind on each run would take most of the time)."""
    PYCACHE.mkdir(parents=True, exist_ok=True)
    return {"PYTHONPYCACHEPREFIX": str(PYCACHE), "PYTHONDONTWRITEBYTECODE": ""}


def available(name: str, path: GuardedPath, python: str) -> str | None:
    """``None`` if ``path`` can be measured, else why not."""
    if path.probe is not None:
        got = subprocess.run([python, "-c", path.probe], capture_output=True, text=True,
                             cwd="/").stdout.strip()
        if got != "1":
            return f"{name}: not in this build's _core, skipped"
    if path.factory is None:
        return (f"{name}: _core has it, but bench/perf_guard.py does not measure it yet: "
                f"give PATHS[{name!r}] a factory, then `make perf-baseline`")
    return None


def measure(python: str, names: list[str] | None = None) -> tuple[dict[str, float], list[str]]:
    """Instructions per message of each available path (one valgrind run), and the
    reasons for the others."""
    todo: list[tuple[str, str, str]] = []
    setup = [SETUP]
    skipped: list[str] = []
    for name, path in PATHS.items():
        if names is not None and name not in names:
            continue
        why = available(name, path, python)
        if why is not None:
            skipped.append(why)
            continue
        assert path.factory is not None
        todo.append((name, path.factory, path.drive))
        setup.append(path.setup)
    counts = per_message_forked(python, "\n".join(setup), todo, WARMUP, MESSAGES,
                                str(PROFILES), env=run_env()) if todo else {}
    return counts, skipped


def mismatches(recorded: dict[str, str], now: dict[str, str],
               keys: tuple[str, ...]) -> list[str]:
    return [f"{k} {recorded.get(k, '?')} (baseline) vs {now.get(k, '?')} (here)"
            for k in keys if recorded.get(k) != now.get(k)]


def compare(baseline: dict[str, Any], counts: dict[str, float],
            threshold: float = THRESHOLD_PCT) -> tuple[list[str], list[str], list[str]]:
    """(regressions, improvements, other notes), each a readable line per path."""
    regressions: list[str] = []
    improvements: list[str] = []
    notes: list[str] = []
    paths: dict[str, float] = baseline.get("paths", {})
    for name, value in counts.items():
        if name not in paths:
            notes.append(f"{name}: {value:,.1f} instructions/message, not in the baseline: "
                         "`make perf-baseline` to add it")
            continue
        before = paths[name]
        change = (value - before) / before * 100
        line = (f"{name}: {before:,.1f} -> {value:,.1f} instructions/message "
                f"({change:+.2f} %, limit +{threshold:g} %)")
        if change > threshold:
            regressions.append(line)
        elif change < -threshold:
            improvements.append(line)
        else:
            notes.append(line)
    for name in paths:
        if name not in counts:
            notes.append(f"{name}: in the baseline but not measured here")
    return regressions, improvements, notes


def check(args: argparse.Namespace) -> int:
    if not BASELINE.exists():
        print(f"perf-guard: no baseline at {BASELINE}: `make perf-baseline` writes one")
        return 2
    baseline = json.loads(BASELINE.read_text())
    now = environment(args.python)
    differ = mismatches(baseline.get("environment", {}), now, MUST_MATCH)
    if differ:
        print("perf-guard: SKIPPED, instruction counts are only comparable on the versions "
              "the baseline was recorded with: " + "; ".join(differ)
              + ". `make perf-baseline` records a baseline for this environment.")
        return 0
    try:
        counts, skipped = measure(args.python, args.paths)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"perf-guard: ERROR, could not measure: {exc}\n{detail[-2000:]}")
        return 2
    for why in skipped:
        print(f"perf-guard: {why}")
    regressions, improvements, notes = compare(baseline, counts, args.threshold)
    for line in notes:
        print(f"perf-guard: ok  {line}")
    for line in improvements:
        print(f"perf-guard: IMPROVED  {line}")
    for line in regressions:
        print(f"perf-guard: REGRESSION  {line}")
    noted = mismatches(baseline.get("environment", {}), now, NOTED)
    if noted and (regressions or improvements):
        print("perf-guard: note, these differ from the baseline's and may move counts too: "
              + "; ".join(noted))
    if improvements and not regressions:
        print("perf-guard: faster than the baseline: refresh it with `make perf-baseline` "
              "(and commit bench/perf_baseline.json) so that it guards the new level")
    if regressions:
        print("perf-guard: where the instructions go (inside feed, callees included): "
              f"`callgrind_annotate --inclusive=yes {PROFILES}/<path>.callgrind | head -30`")
        print(f"perf-guard: FAILED, {len(regressions)} path(s) more than {args.threshold:g} % "
              "above bench/perf_baseline.json (if the cost is intended, `make perf-baseline` "
              "and commit the new baseline with the change)")
        return 1
    print(f"perf-guard: passed ({len(counts)} paths measured, none more than "
          f"+{args.threshold:g} % above the baseline)")
    return 0


def write_baseline(args: argparse.Namespace) -> int:
    first, skipped = measure(args.python)
    for why in skipped:
        print(f"perf-guard: {why}")
    second, _ = measure(args.python, list(first))
    unstable = [f"{k}: {first[k]:,.1f} then {second[k]:,.1f}" for k in first
                if abs(second[k] - first[k]) > first[k] * 0.002]
    if unstable:
        print("perf-guard: counts moved by more than 0.2 % between two runs, baseline not "
              "written: " + "; ".join(unstable))
        return 1
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()
    data = {
        "note": "instructions per message through FeedListener.feed() (bench/perf_guard.py); "
                "refresh with `make perf-baseline`",
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": head or "-",
        "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "environment": environment(args.python),
        "method": {"messages": MESSAGES, "warmup": WARMUP, "shape": "combined",
                   "collect": "inside FeedListener.feed (--toggle-collect)",
                   "threshold_pct": THRESHOLD_PCT},
        "paths": {k: round(v, 2) for k, v in first.items()},
    }
    BASELINE.write_text(json.dumps(data, indent=2) + "\n")
    print(f"perf-guard: wrote {BASELINE} ({', '.join(f'{k} {v:,.1f}' for k, v in first.items())})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-baseline", action="store_true",
                        help="measure (twice, must agree) and write bench/perf_baseline.json")
    parser.add_argument("--if-available", action="store_true",
                        help="without valgrind: print how to get it and exit 0 (make test)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--paths", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--threshold", type=float, default=THRESHOLD_PCT,
                        help="percent above the baseline that fails")
    args = parser.parse_args(argv)
    unknown = [p for p in args.paths or () if p not in PATHS]
    if unknown:
        parser.error(f"--paths: unknown {unknown}; choose from {','.join(PATHS)}")
    if shutil.which("valgrind") is None:
        print(f"perf-guard: {INSTALL_HINT}" + (", skipped" if args.if_available else ""))
        return 0 if args.if_available else 2
    started = time.perf_counter()
    try:
        return write_baseline(args) if args.write_baseline else check(args)
    finally:
        print(f"perf-guard: {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
