"""``defi-ws demo`` (being rewritten as a live dashboard)."""

from __future__ import annotations

import argparse


async def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; return the exit status."""
    from defi_ws.cli import run_demo as legacy

    return await legacy(args.duration or 12.0, args.rate, not args.no_faults)
