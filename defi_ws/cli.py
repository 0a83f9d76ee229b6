"""The ``defi-ws`` command line: ``demo`` runs a live feed against an embedded venue.

``defi-ws demo [--duration S] [--rate N] [--no-faults]`` starts the in-process
:class:`~defi_ws.testing.ExchangeSimulator`, connects a :class:`~defi_ws.FeedClient`
to it with a few topics, injects a fault every few seconds, and prints live counters,
then a summary. It needs no network.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any

__all__ = ["main"]

TOPICS = ["trades.BTC-USD", "trades.ETH-USD", "trades.SOL-USD"]


async def run_demo(duration_s: float, rate_per_s: float, faults: bool) -> int:
    """Run the demo; return the process exit status."""
    from defi_ws.client import FeedClient
    from defi_ws.handler import JsonHandler
    from defi_ws.reconnect import ExponentialBackoff
    from defi_ws.testing import ExchangeSimulator

    received: Counter[str] = Counter()
    gaps = 0
    last_seq: dict[str, int] = {}

    def on_data(message: Any) -> None:
        nonlocal gaps
        topic = message.get("topic", "?")
        received[topic] += 1
        seq = message.get("seq")
        if isinstance(seq, int):
            previous = last_seq.get(topic)
            if previous is not None and seq != previous + 1:
                gaps += 1
            last_seq[topic] = seq

    fault_plan = ["drop_all", "close_all", "maintenance"]
    async with ExchangeSimulator(rate_per_s=rate_per_s) as sim:
        client = FeedClient(
            JsonHandler(sim.url, on_data=on_data),
            topics=TOPICS,
            reconnect=ExponentialBackoff(initial_s=0.2, max_s=2.0),
            name="demo",
        )
        tty = sys.stdout.isatty()
        print(f"defi-ws demo: venue simulator at {sim.url}, topics {', '.join(TOPICS)}")
        print("faults every 3 s: " + (", ".join(fault_plan) if faults else "off"))
        async with client:
            start = time.monotonic()
            next_fault = start + 3.0
            fault_index = 0
            previous_total = 0
            previous_t = start
            while (now := time.monotonic()) - start < duration_s:
                await asyncio.sleep(0.5)
                now = time.monotonic()
                total = sum(received.values())
                rate = (total - previous_total) / max(now - previous_t, 1e-9)
                previous_total, previous_t = total, now
                last = client.last_disconnect
                line = (
                    f"t={now - start:5.1f}s state={client.state.name:<14} msgs={total:>8} "
                    f"rate={rate:>9,.0f}/s reconnects={client.health.reconnects} gaps={gaps} "
                    f"last_disconnect={last.describe() if last else '-'}"
                )
                print(("\r" + line[:150].ljust(150)) if tty else line, end="" if tty else "\n",
                      flush=True)
                if faults and now >= next_fault:
                    fault = fault_plan[fault_index % len(fault_plan)]
                    fault_index += 1
                    next_fault = now + 3.0
                    if fault == "drop_all":
                        sim.drop_all()
                    elif fault == "close_all":
                        sim.close_all(1001, "going away")
                    else:
                        sim.maintenance()
            if tty:
                print()
        print("\nsummary")
        print(f"  messages received   {sum(received.values()):>10}")
        for topic in TOPICS:
            print(f"    {topic:<18}{received[topic]:>10}")
        print(f"  reconnects          {client.health.reconnects:>10}")
        print(f"  sequence gaps       {gaps:>10}")
        for reason, count in client.health.disconnects.most_common():
            print(f"  disconnects {reason:<18}{count:>5}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``defi-ws`` / ``python -m defi_ws``."""
    parser = argparse.ArgumentParser(prog="defi-ws", description="defi-ws command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="live feed against an embedded venue simulator")
    demo.add_argument("--duration", type=float, default=12.0, help="seconds to run")
    demo.add_argument("--rate", type=float, default=200.0, help="messages/s per topic")
    demo.add_argument("--no-faults", action="store_true", help="do not inject faults")
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            import uvloop

            return uvloop.run(run_demo(args.duration, args.rate, not args.no_faults))
        except ImportError:
            return asyncio.run(run_demo(args.duration, args.rate, not args.no_faults))
    return 2
