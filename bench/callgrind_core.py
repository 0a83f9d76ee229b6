"""Instructions per message through FeedListener.feed(), counted by callgrind.

Wall-clock figures on a shared 2-core machine move by several percent between runs;
instruction counts do not. Each mode runs twice under ``valgrind --tool=callgrind``
(N and N + extra messages); the difference divided by ``extra`` is the cost of one
message, start-up excluded.

    python bench/callgrind_core.py [--python OTHER_PYTHON] [--extra 20000]
        [--mode frame|dedup|conflated|all]

``--python`` also counts another interpreter's build (e.g. a checkout of an older
commit with its own venv) in the same run and prints the ratio.

``--mode dedup`` measures hot-hot redundancy: k listeners share one ``Deduplicator``
(``id_field="t"``, ``topic_field="s"``) and every message is fed to each of them, as k
redundant connections would receive it; the first copy is decoded and delivered, the
other k - 1 are dropped before decode. It reports instructions per *delivered* message
against one listener without dedup (issue 12's target: k = 2 at most 1.15x k = 1).
Every message has its own trade id, so the payloads are made before the loop; a run that
only walks that list is subtracted. A second count ("inside the listener") collects only
inside ``FeedListener.feed`` (callgrind ``--toggle-collect``): it leaves out the Python
call of ``feed()`` from the bench loop, which picows does not make (it calls
``on_ws_frame`` through the C vtable), but also leaves out what picows itself spends per
frame of each copy (parsing it, and the socket and TLS work of each connection).

``per_message_forked`` (used by ``bench/perf_guard.py``, ``make perf-guard``) counts
several listeners in one valgrind run: imports once, then each in a child forked from the
same state, only inside ``feed`` and only the messages between two dump markers.

``--mode conflated`` measures conflation: 130 B combined-stream book tickers of 10 keys
round-robin, fed as reads of ``R`` frames (``last_in_buffer`` on every R-th), through a
listener with ``conflate_field="stream"`` + orjson + callback, against the same listener
without conflation; instructions per *received* message. ``feed()`` copies a waiting
payload into the listener's buffer (its caller's buffer is gone after the call); over
picows the payload stays in the receive buffer, so this slightly over-counts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import table

MODES = {
    "count-only (on_message=None)": "FeedListener(None, decode=None)",
    "view only (decode=None)": "FeedListener(sink, decode=None)",
    "orjson.loads + callback": "FeedListener(sink)",
    "msgspec Struct + callback": "FeedListener(sink, decode=msgspec.json.Decoder(Trade).decode)",
    "custom decode (copy path)": "FeedListener(sink, decode=lambda v: orjson.loads(v))",
}

SCRIPT = r"""
import sys, orjson, msgspec
sys.path.insert(0, {bench!r})
from throughput import trade_payloads
from defi_ws._core import FeedListener

class Trade(msgspec.Struct, gc=False):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool
    pad: str

def sink(message):
    pass

listener = {factory}
payloads = trade_payloads(512)
feed = listener.feed
n = int(sys.argv[1])
for i in range(n):
    feed(1, payloads[i & 511])
assert listener.messages == n, listener.messages
"""


# Redundancy: k listeners sharing one Deduplicator, each message fed to all of them.
DEDUP_MODES = {
    "k=1, no dedup (baseline)": (1, False),
    "k=1, Deduplicator": (1, True),
    "k=2, one shared Deduplicator": (2, True),
    "k=3, one shared Deduplicator": (3, True),
}

DEDUP_SCRIPT = r"""
import sys, orjson
sys.path.insert(0, {bench!r})
from throughput import trade_payloads
from defi_ws._core import Deduplicator, FeedListener

def sink(message):
    pass

k, with_dedup = {k}, {with_dedup}
dedup = Deduplicator(id_field="t", topic_field="s") if with_dedup else None
feeds = [FeedListener(sink, dedup=dedup).feed for _ in range(k)]
n = int(sys.argv[1])
# Every message its own trade id: made before the loop (a walk-only run is subtracted).
parts = [p.split(b'"t":', 1) for p in trade_payloads(512)]
tails = [tail[tail.index(b","):] for _, tail in parts]
heads = [head + b'"t":' for head, _ in parts]
payloads = [heads[i & 511] + b"%d" % (3_000_000_000 + i) + tails[i & 511] for i in range(n)]
if k == 0:
    for p in payloads:
        pass
elif k == 1:
    feed = feeds[0]
    for p in payloads:
        feed(1, p)
elif k == 2:
    feed_a, feed_b = feeds
    for p in payloads:
        feed_a(1, p)
        feed_b(1, p)
else:
    feed_a, feed_b, feed_c = feeds
    for p in payloads:
        feed_a(1, p)
        feed_b(1, p)
        feed_c(1, p)
if with_dedup:
    assert dedup.delivered == n and dedup.duplicates == (k - 1) * n, dedup.duplicates
"""


CONFLATED_MODES = {
    "orjson.loads + callback, no conflation": ("FeedListener(sink)", 1),
    "conflate_field, reads of 10 (1 per key)": ('FeedListener(sink, conflate_field="stream")', 10),
    "conflate_field, reads of 100 (10 per key)": (
        'FeedListener(sink, conflate_field="stream")', 100),
    "conflate_field, reads of 500 (50 per key)": (
        'FeedListener(sink, conflate_field="stream")', 500),
    "count-only, no conflation": ("FeedListener(None, decode=None)", 1),
}

CONFLATED_SCRIPT = r"""
import sys
sys.path.insert(0, {bench!r})
from conflation import book_ticker_payloads
from defi_ws._core import FeedListener

def sink(message):
    message["data"]["b"]

listener = {factory}
payloads = book_ticker_payloads(10, 50)   # 500 messages, 10 keys round-robin
feed = listener.feed
n = int(sys.argv[1])
ends = [(i + 1) % {read} == 0 for i in range(500)]
for i in range(n):
    j = i % 500
    feed(1, payloads[j], True, 0, ends[j])
listener.flush()
assert listener.messages + listener.conflated == n, listener.messages
assert listener.decode_errors == 0 and listener.callback_errors == 0
"""


def conflated_table(args: argparse.Namespace) -> None:
    rows = []
    base: dict[bool, float] = {}
    for name, (factory, read) in CONFLATED_MODES.items():
        script = CONFLATED_SCRIPT.replace("{read}", str(read))
        row = [name]
        for inside in (False, True):
            value = per_message(sys.executable, factory, args.extra, script, inside)
            first = base.setdefault(inside, value)
            row += [f"{value:,.0f}", f"{first / value:.2f}x"]
        rows.append(row)
    print()
    table(["conflation (130 B book ticker, 10 keys, feed())", "instr/received msg",
           "vs no conflation", "inside the listener", "vs no conflation"], rows)


# Only what runs inside FeedListener.feed (its Cython wrapper, callees included).
INSIDE_FEED = ["--collect-atstart=no", "--toggle-collect=__pyx_pw_*FeedListener_*feed"]


def count(python: str, factory: str, n: int, script: str = SCRIPT,
          inside_feed: bool = False) -> int:
    code = script.format(bench=os.path.dirname(os.path.abspath(__file__)), factory=factory)
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         *(INSIDE_FEED if inside_feed else []), python, "-c", code, str(n)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        cwd="/",  # import defi_ws from each interpreter's own install, not this checkout
    )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise RuntimeError(proc.stderr[-2000:])
    return int(match.group(1))


def per_message(python: str, factory: str, extra: int, script: str = SCRIPT,
                inside_feed: bool = False) -> float:
    base = 1000
    # Warm up outside valgrind: compile stale .pyc files now, not in one measured run.
    code = script.format(bench=os.path.dirname(os.path.abspath(__file__)), factory=factory)
    subprocess.run([python, "-c", code, "1"], check=True, cwd="/", capture_output=True)
    return (count(python, factory, base + extra, script, inside_feed)
            - count(python, factory, base, script, inside_feed)) / extra


def dedup_per_message(python: str, k: int, with_dedup: bool, extra: int,
                      inside_feed: bool = False) -> float:
    """Instructions per delivered message of k redundant listeners, payload making excluded."""
    def script(k: int, with_dedup: bool) -> str:
        return DEDUP_SCRIPT.replace("{k}", str(k)).replace("{with_dedup}", str(with_dedup))

    walk = 0.0 if inside_feed else per_message(python, "", extra, script(0, False))
    return per_message(python, "", extra, script(k, with_dedup), inside_feed) - walk


def dedup_table(args: argparse.Namespace) -> None:
    rows = []
    baseline: dict[tuple[str, bool], float] = {}
    for name, (k, with_dedup) in DEDUP_MODES.items():
        row = [name]
        for label, python in (("here", sys.executable), ("other", args.python)):
            if python is None:
                continue
            for inside in (False, True):
                value = dedup_per_message(python, k, with_dedup, args.extra, inside)
                base = baseline.setdefault((label, inside), value)
                row += [f"{value:,.0f}", f"{value / base:.3f}x"]
        rows.append(row)
    head = ["redundancy (230 B trade, each copy fed)", "instr/delivered msg", "vs k=1",
            "inside the listener", "vs k=1"]
    if args.python:
        head += [f"{h} (--python)" for h in head[1:]]
    print()
    table(head, rows)


# Several listeners in one valgrind run: start-up (imports) is paid once, then each path
# runs in a child forked from the same state (so no path sees another's heap, and the
# order does not matter). In each child, os.getloadavg() is the marker: callgrind dumps
# (and zeroes) before each call of libc's getloadavg, so the child's second dump holds
# exactly its measured messages; only what runs inside FeedListener.feed is collected.
FORKED_SCRIPT = r"""
import os, sys
{setup}

def drive_plain(listener, payloads, start, count):
    feed = listener.feed
    n = len(payloads)
    for i in range(start, start + count):
        feed(1, payloads[i % n])

warmup, messages = int(sys.argv[1]), int(sys.argv[2])
for name, factory, drive in {paths!r}:
    pid = os.fork()
    if pid == 0:
        listener = eval(factory)
        drive = globals()[drive]
        drive(listener, payloads, 0, warmup)
        os.getloadavg()
        drive(listener, payloads, warmup, messages)
        os.getloadavg()
        assert listener.decode_errors == 0 and listener.callback_errors == 0, name
        print("measured", name, os.getpid(), flush=True)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        sys.exit(f"{{name}}: the measuring child failed")
"""

FORKED_OPTIONS = ["--collect-atstart=no", "--toggle-collect=__pyx_pw_*FeedListener_*feed",
                  "--dump-before=getloadavg"]


def per_message_forked(python: str, setup: str, paths: list[tuple[str, str, str]],
                       warmup: int, messages: int, out_dir: str,
                       env: dict[str, str] | None = None) -> dict[str, float]:
    """Instructions per message inside ``FeedListener.feed`` of each ``(name, factory,
    drive)`` in one valgrind run (``setup`` defines ``payloads`` and what the factory
    expressions use; ``drive`` names a ``drive(listener, payloads, start, count)``
    function, ``drive_plain`` feeds one message at a time). Each path's profile is kept
    as ``out_dir/<name>.callgrind`` (``callgrind_annotate`` reads it)."""
    code = FORKED_SCRIPT.format(setup=setup, paths=paths)
    run_env = {**os.environ, **(env or {}), "PYTHONHASHSEED": "0"}
    run_env = {k: v for k, v in run_env.items() if v != ""}  # "" removes a variable
    # Warm up and check outside valgrind: compiles the .pyc files, fails fast and clearly.
    subprocess.run([python, "-c", code, "1", "1"], check=True, cwd="/", env=run_env,
                   capture_output=True)
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.startswith("cg.") or old.endswith(".callgrind"):
            os.remove(os.path.join(out_dir, old))
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p",
         *FORKED_OPTIONS, python, "-c", code, str(warmup), str(messages)],
        capture_output=True, text=True, env=run_env, cwd="/")
    if proc.returncode != 0:
        raise RuntimeError(f"valgrind exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    out: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("measured "):
            continue
        _, name, pid = line.split()
        part = os.path.join(out_dir, f"cg.{pid}.2")
        with open(part) as f:
            match = re.search(r"^summary: (\d+)$", f.read(), re.M)
        if match is None:
            raise RuntimeError(f"{part}: no summary line")
        out[name] = int(match.group(1)) / messages
        os.replace(part, os.path.join(out_dir, f"{name}.callgrind"))
    for old in os.listdir(out_dir):
        if old.startswith("cg."):
            os.remove(os.path.join(out_dir, old))
    missing = [name for name, _, _ in paths if name not in out]
    if missing:
        raise RuntimeError(f"no count for {missing}:\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="another interpreter to compare against")
    parser.add_argument("--extra", type=int, default=20000)
    parser.add_argument("--mode", choices=("frame", "dedup", "conflated", "all"),
                        default="frame", help="frame: decode paths (default); dedup: "
                        "hot-hot redundancy; conflated: conflation per received message")
    args = parser.parse_args(argv)
    if args.mode in ("dedup", "all"):
        dedup_table(args)
    if args.mode in ("conflated", "all"):
        conflated_table(args)
    if args.mode in ("dedup", "conflated"):
        return 0
    rows = []
    for name, factory in MODES.items():
        here = per_message(sys.executable, factory, args.extra)
        row = [name, f"{here:,.0f}"]
        if args.python:
            other = per_message(args.python, factory, args.extra)
            row += [f"{other:,.0f}", f"{here / other:.3f}"]
        rows.append(row)
    head = ["mode (230 B trade, feed())", "instr/msg"]
    if args.python:
        head += ["instr/msg (--python)", "ratio"]
    print()
    table(head, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
