"""Run every benchmark in bench/ with modest defaults and print their tables (``make bench``).

About 9-10 minutes on 2 cores (the outbound bench counts instructions under valgrind
when it is installed; the pool bench opens 1,000 connections). Each script has flags for
longer runs (see ``--help``); ``--plot`` is passed on to every script (PNG charts under
``bench/plots``, needs matplotlib).

    python bench/run.py [--plot] [--only throughput,latency,...,outbound]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCHES = {
    "throughput": ["throughput.py", "--seconds", "1.5", "--repeat", "3", "--loop", "both"],
    "latency": ["latency.py", "--count", "20000", "--warmup", "2000"],
    "recovery": ["recovery.py", "--repeat", "5"],
    "connections": ["connections.py", "--counts", "1,100,1000", "--seconds", "1.5"],
    "pool": ["pool.py", "--rotations", "20", "--idle-connections", "1000"],
    "conflation": ["conflation.py", "--seconds", "1", "--repeat", "3"],
    "outbound": ["outbound.py", "--count", "100000", "--repeat", "3", "--callgrind",
                 "--extra", "10000"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", action="store_true", help="also write PNG charts")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated benches")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    status = 0
    for name in args.only.split(","):
        script, *flags = BENCHES[name.strip()]
        started = time.perf_counter()
        cmd = [sys.executable, str(here / script), *flags, *(["--plot"] if args.plot else [])]
        status |= subprocess.call(cmd)
        print(f"_{name}: {time.perf_counter() - started:.0f}s_\n", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
