"""Run every benchmark in bench/ and print their tables (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ["throughput.py"]


def main() -> int:
    here = Path(__file__).parent
    status = 0
    for name in BENCHES:
        status |= subprocess.call([sys.executable, str(here / name), *sys.argv[1:]])
    return status


if __name__ == "__main__":
    sys.exit(main())
