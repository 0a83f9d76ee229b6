"""FeedClient inside an existing uvloop application, beside the application's own tasks.

The application already has an event loop (uvloop) and work of its own; the feed is
one more component of it:

* a **consumer** task that computes a per-topic VWAP from trades it reads off a
  bounded ``asyncio.Queue`` (it stalls once, like a slow database write would);
* a **reporter** task printing a line of ``client.snapshot()`` every second;
* SIGINT/SIGTERM handlers that stop everything cleanly.

The hand-off from the feed is the part to copy. ``on_data`` runs in the hot path,
inside the frame callback, once per message, so it must:

1. never block or await: it converts the message to a small tuple and calls
   ``put_nowait``;
2. keep only what it owns: the dict built by ``orjson.loads`` is the callback's to keep,
   but with ``decode=None`` the message is a borrowed ``memoryview`` valid only during
   the call (copy it with ``bytes(view)``);
3. never let a slow consumer push back on the socket: when the queue is full, the trade
   is dropped and counted, and the application decides what that means (resync,
   alert...). An unbounded queue would just turn a slow consumer into a memory leak.

Run::

    python examples/uvloop_app.py                 # embedded simulator, 3 s
    python examples/uvloop_app.py --url ws://127.0.0.1:8765/ --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass, field
from typing import Any

import uvloop

from defi_ws import ExponentialBackoff, FeedClient, JsonHandler, WsPing
from defi_ws.testing import ExchangeSimulator

TOPICS = ["trades.BTC-USD", "trades.ETH-USD"]
QUEUE_SIZE = 100

#: What crosses the hand-off: (topic, seq, price, quantity), immutable and owned.
Trade = tuple[str, int, float, float]


@dataclass
class Stats:
    dropped: int = 0
    consumed: int = 0
    notional: dict[str, float] = field(default_factory=dict)
    volume: dict[str, float] = field(default_factory=dict)

    def vwap(self) -> dict[str, float]:
        return {t: round(self.notional[t] / v, 2) for t, v in self.volume.items() if v > 0}


async def consumer(queue: asyncio.Queue[Trade], stats: Stats) -> None:
    """The application's own processing, at its own pace."""
    while True:
        topic, _seq, px, qty = await queue.get()
        stats.consumed += 1
        stats.notional[topic] = stats.notional.get(topic, 0.0) + px * qty
        stats.volume[topic] = stats.volume.get(topic, 0.0) + qty
        if stats.consumed == 200:
            await asyncio.sleep(0.3)  # a slow write: the queue fills, trades are dropped


async def reporter(client: FeedClient, queue: asyncio.Queue[Trade], stats: Stats) -> None:
    """Another task of the application: reads the feed's health, never touches the hot path."""
    while True:
        await asyncio.sleep(1.0)
        snap = client.snapshot()
        print(
            f"[reporter] state={snap['state']} messages={snap['messages']} "
            f"reconnects={snap['reconnects']} rtt_p50_ms={snap['rtt']['p50_ms']} "
            f"queue={queue.qsize()}/{queue.maxsize} consumed={stats.consumed} "
            f"dropped={stats.dropped}"
        )


async def run(url: str | None, seconds: float) -> int:
    loop = asyncio.get_running_loop()
    print(f"event loop: {type(loop).__module__}.{type(loop).__name__}")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    queue: asyncio.Queue[Trade] = asyncio.Queue(maxsize=QUEUE_SIZE)
    stats = Stats()

    def on_data(message: Any) -> None:  # hot path: convert, put_nowait, count drops
        data = message["data"]
        trade = (message["topic"], message["seq"], float(data["px"]), float(data["qty"]))
        try:
            queue.put_nowait(trade)
        except asyncio.QueueFull:
            stats.dropped += 1

    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            sim = await stack.enter_async_context(ExchangeSimulator(rate_per_s=500))
            url = sim.url
        print(f"venue: {url}  topics: {', '.join(TOPICS)}")
        client = FeedClient(
            JsonHandler(url, on_data=on_data, sequence_field="seq"),
            topics=TOPICS,
            reconnect=ExponentialBackoff(initial_s=0.2, max_s=10.0),
            heartbeat=WsPing(interval_s=0.5, timeout_s=5.0),
            name="uvloop-app",
        )
        async with client:
            tasks = [
                asyncio.create_task(consumer(queue, stats), name="consumer"),
                asyncio.create_task(reporter(client, queue, stats), name="reporter"),
            ]
            await client.wait_live(timeout_s=10.0)
            with contextlib.suppress(asyncio.TimeoutError):  # builtin TimeoutError on 3.11+
                await asyncio.wait_for(stop.wait(), timeout=seconds)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            print(f"consumed={stats.consumed} dropped={stats.dropped} vwap={stats.vwap()}")
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
    return 0 if stats.consumed > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="FeedClient inside a uvloop application.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    return uvloop.run(run(args.url, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
