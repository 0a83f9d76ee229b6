"""Shared helpers for the bench/ scripts: run header, markdown tables, loops, pinning, plots."""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: The CPUs this process could use at start-up (pinning indexes into these).
ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]

VERSIONED = ("picows", "uvloop", "orjson", "Cython", "msgspec", "aiohttp", "websockets")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    """``python 3.11.7, picows 2.3.1, ...`` for every package a bench may use."""
    parts = [f"python {platform.python_version()}"]
    for name in VERSIONED:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} -")
    return ", ".join(parts)


def header(title: str, notes: Iterable[str] = ()) -> None:
    """Print the markdown header every bench starts with."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"# {title}\n")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"- machine: {cores} cores ({usable} usable), {cpu_model()}, "
          f"{platform.system()} {platform.release()}")
    print(f"- versions: {versions()}")
    print(f"- command: `python {command}`")
    for note in notes:
        print(f"- {note}")
    print(flush=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> None:
    """Print a markdown table; ``align`` is one char per column (``l``/``r``), default l+r..."""
    align = align or "l" + "r" * (len(columns) - 1)
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(flush=True)


def median_range(values: Sequence[float], fmt: str = "{:,.0f}") -> tuple[str, str]:
    """``(median, "min-max")`` formatted."""
    if not values:
        return "-", "-"
    return fmt.format(statistics.median(values)), (
        f"{fmt.format(min(values))}-{fmt.format(max(values))}")


def run_loop(loop_name: str, coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on ``asyncio`` or ``uvloop`` (a fresh loop)."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro_factory())
    return asyncio.run(coro_factory())


def pin(cpu: int | None) -> None:
    """Pin the calling process to one CPU (no-op for None or when unsupported)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0, {ALL_CPUS[cpu % len(ALL_CPUS)]})


def ncpus() -> int:
    """CPUs this process may run on."""
    return len(ALL_CPUS)


def plot_bars(path: str, title: str, groups: dict[str, dict[str, float]], ylabel: str,
              log: bool = False) -> bool:
    """Write a grouped bar chart (groups -> series -> value) as PNG; False if no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed, {path} not written "
              "(pip install matplotlib)", file=sys.stderr)
        return False
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    names = list(groups)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(series) * 1.1), 5))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(series))]
        ax.bar(xs, [groups[name].get(s, 0.0) for s in series], width, label=name)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(series))])
    ax.set_xticklabels(series, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if len(names) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)
    return True
