"""A custom handler for a generic JSON venue: ~20 lines, reconnect and resubscribe for free.

The venue speaks defi-ws' generic JSON protocol, the one ``JsonHandler`` implements::

    -> {"op": "subscribe", "args": ["trades.BTC-USD", ...]}
    <- {"event": "subscribed", "topic": "trades.BTC-USD"}        (one ack per topic)
    <- {"topic": "trades.BTC-USD", "seq": 1, "data": {"px": "...", "qty": "...", ...}}

What it shows:

* The handler (``GenericTrades``) is the only venue-specific code: subclass
  ``JsonHandler``, pass ``sequence_field="seq"`` to get per-topic gap detection, and
  override ``on_message``, which sees data only (acks and pongs never reach it).
* Everything else comes from ``FeedClient``: halfway through, the embedded simulator
  resets the TCP connection; the client classifies the disconnect, backs off,
  reconnects, replays both subscriptions and checks that each topic's sequence
  continues (a hole would be reported through ``on_gap``).

Run::

    python examples/generic_venue.py                 # embedded simulator, 3 s
    python examples/generic_venue.py --url ws://127.0.0.1:8765/ --seconds 10

(``python -m defi_ws.testing.simulator --port 8765`` serves such a venue.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from typing import Any

from defi_ws import Disconnect, ExponentialBackoff, FeedClient, Gap, JsonHandler, WsPing
from defi_ws.testing import ExchangeSimulator

TOPICS = ["trades.BTC-USD", "trades.ETH-USD"]


class GenericTrades(JsonHandler):
    """Counts trades per topic and prints the first few."""

    def __init__(self, url: str, show: int = 5) -> None:
        # sequence_field: the client tracks each topic's "seq" and reports gaps.
        super().__init__(url, sequence_field="seq", max_topics_per_message=50)
        self.counts: dict[str, int] = {}
        self._show = show

    def on_message(self, message: Any) -> None:
        topic = message["topic"]
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self._show > 0:
            self._show -= 1
            data = message["data"]
            print(f"  {topic:<15} seq={message['seq']:<5} px={data['px']:>8} qty={data['qty']}")


async def run(url: str | None, seconds: float) -> int:
    async with contextlib.AsyncExitStack() as stack:
        sim: ExchangeSimulator | None = None
        if url is None:
            sim = await stack.enter_async_context(ExchangeSimulator(rate_per_s=20))
            url = sim.url
        print(f"venue: {url}  topics: {', '.join(TOPICS)}")

        handler = GenericTrades(url)
        reconnected = asyncio.Event()

        def on_disconnected(disconnect: Disconnect) -> None:
            print(f"disconnected: {disconnect.describe()}")

        def on_reconnected() -> None:
            print("reconnected: LIVE again, subscriptions replayed")
            reconnected.set()

        def on_gap(gap: Gap) -> None:
            print(f"gap on {gap.topic}: {gap.size} message(s) missing")

        client = FeedClient(
            handler,
            topics=TOPICS,
            reconnect=ExponentialBackoff(initial_s=0.1, max_s=2.0),
            heartbeat=WsPing(interval_s=0.5, timeout_s=2.0),
            on_disconnected=on_disconnected,
            on_reconnected=on_reconnected,
            on_gap=on_gap,
            name="generic",
        )
        async with client:
            await client.wait_live(timeout_s=5.0)
            print(f"LIVE, confirmed topics: {sorted(client.confirmed_topics)}")
            await asyncio.sleep(seconds / 2)
            if sim is not None:
                print(f"simulator: resetting {sim.drop_all()} connection(s)")
                await asyncio.wait_for(reconnected.wait(), timeout=5.0)
            await asyncio.sleep(seconds / 2)
            print(f"received per topic: {handler.counts}")
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
        return 0 if sum(handler.counts.values()) > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="A custom handler for a generic JSON venue.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(args.url, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
