"""Instructions per message through FeedListener.feed(), counted by callgrind.

Wall-clock figures on a shared 2-core machine move by several percent between runs;
instruction counts do not. Each mode runs twice under ``valgrind --tool=callgrind``
(N and N + extra messages); the difference divided by ``extra`` is the cost of one
message, start-up excluded.

    python bench/callgrind_core.py [--python OTHER_PYTHON] [--extra 20000]

``--python`` also counts another interpreter's build (e.g. a checkout of an older
commit with its own venv) in the same run and prints the ratio.
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


def count(python: str, factory: str, n: int) -> int:
    code = SCRIPT.format(bench=os.path.dirname(os.path.abspath(__file__)), factory=factory)
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         python, "-c", code, str(n)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        cwd="/",  # import defi_ws from each interpreter's own install, not this checkout
    )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if match is None:
        raise RuntimeError(proc.stderr[-2000:])
    return int(match.group(1))


def per_message(python: str, factory: str, extra: int) -> float:
    base = 1000
    # Warm up outside valgrind: compile stale .pyc files now, not in one measured run.
    code = SCRIPT.format(bench=os.path.dirname(os.path.abspath(__file__)), factory=factory)
    subprocess.run([python, "-c", code, "1"], check=True, cwd="/", capture_output=True)
    return (count(python, factory, base + extra) - count(python, factory, base)) / extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="another interpreter to compare against")
    parser.add_argument("--extra", type=int, default=20000)
    args = parser.parse_args(argv)
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
