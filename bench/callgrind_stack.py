"""Instructions per message of the whole client process, over a real socket, by callgrind.

``bench/throughput.py`` measures messages per second; on a shared 2-core VM those move by
several percent between runs. This counts what each client's process executes (user
space: the event loop, picows' parser, the listener, the decoder, the callback; not the
kernel) per message it received, for the same clients as ``throughput.py``, against the
same blast server (its own process, not under valgrind). The count is taken between two
markers ``run_client`` sets after its warm-up and at the end of its window
(``os.getloadavg``, callgrind ``--dump-before``), divided by the messages counted in that
window. Ratios are the same-work baseline's instructions over each client's (higher is
better), like throughput ratios.

    python bench/callgrind_stack.py [--shape combined] [--loop uvloop] [--seconds 4]
        [--clients client,listener,bytes,view,...]

Under valgrind a client runs ~50x slower, so the socket is always full: every read is
a full buffer, as for a client that cannot keep up (the case throughput measures).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as tp
from _common import table

#: Short names of bench/throughput.py's clients.
CLIENTS = {"client": tp.FULL, "client-typed": tp.FULL_TYPED, "listener": tp.LISTENER,
           "listener-typed": tp.TYPED, "frame-only": tp.FRAME_ONLY, "bytes": tp.BASE_BYTES,
           "view": tp.BASE_VIEW, "picows-typed": tp.BASE_TYPED, "count-only": tp.COUNT_ONLY}
DEFAULT_CLIENTS = "client,listener,client-typed,listener-typed,bytes,view,picows-typed"

CHILD = r"""
import sys
sys.path.insert(0, {bench!r})
import throughput

class Out:
    def send_window(self, n):
        print("window", n, flush=True)
    def send(self, rate):
        pass
    def close(self):
        pass

throughput.run_client({kind!r}, {shape!r}, {loop!r}, {url!r}, {seconds!r}, {warmup!r},
                      None, Out())
"""


def instructions_per_message(kind: str, shape: str, loop: str, url: str, seconds: float,
                             warmup: float) -> float:
    """One client under callgrind: instructions between the markers / messages counted."""
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), kind=kind,
                        shape=shape, loop=loop, url=url, seconds=seconds, warmup=warmup)
    with tempfile.TemporaryDirectory() as out_dir:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p",
             "--dump-before=getloadavg", sys.executable, "-c", code],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        match = re.search(r"^window (\d+)$", proc.stdout, re.M)
        if match is None:
            raise RuntimeError(f"{kind}: no window count\n{proc.stdout[-2000:]}"
                               f"{proc.stderr[-3000:]}")
        messages = int(match.group(1))
        parts = sorted(f for f in os.listdir(out_dir) if f.endswith(".2"))
        if not parts or messages <= 0:
            raise RuntimeError(f"{kind}: no window profile ({os.listdir(out_dir)})")
        with open(os.path.join(out_dir, parts[0])) as f:
            summary = re.search(r"^summary: (\d+)$", f.read(), re.M)
        assert summary is not None
        return int(summary.group(1)) / messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=tp.PRIMARY, choices=sorted(tp.SHAPES))
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--seconds", type=float, default=4.0, help="window (under valgrind)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", default=DEFAULT_CLIENTS,
                        help=f"comma-separated, out of {','.join(CLIENTS)}")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in names if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown clients {unknown}; choose from {','.join(CLIENTS)}")
    clients = [CLIENTS[c] for c in names]
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=tp.serve, args=(send, None, [args.shape]), daemon=True)
    server.start()
    url = f"ws://127.0.0.1:{recv.recv()}/{args.shape}"
    counts = {kind: instructions_per_message(kind, args.shape, args.loop, url, args.seconds,
                                             args.warmup) for kind in clients}
    server.kill()
    reference = min((counts[k] for k in (tp.BASE_BYTES, tp.BASE_VIEW) if k in counts),
                    default=None)
    rows = [[kind, f"{n:,.0f}", "-" if reference is None else f"{reference / n:.2f}x"]
            for kind, n in counts.items()]
    print(f"shape {args.shape}, {args.loop}: instructions per message, whole client process "
          "(user space), callgrind")
    table(["client", "instr/msg", "vs same-work"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
