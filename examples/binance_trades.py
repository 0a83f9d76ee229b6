"""A Binance combined-stream trade tap on the ``defi_ws.venues`` adapter.

``BinanceSpot`` knows Binance's market-stream protocol, so this script only says what
to subscribe to and what to do with a trade::

    handler = BinanceSpot(url, on_data=on_trade)        # /stream: combined envelopes
    client = FeedClient(handler, topics=["btcusdt@trade", "ethusdt@trade"])

What the adapter does for you:

* **Both payload shapes**: on ``/stream`` every message is ``{"stream": name, "data":
  event}``; on ``/ws`` it is the bare event. ``event_of`` and ``stream_of`` read
  either, so pointing the script at the other kind of endpoint still counts every
  trade (``--url .../ws`` works as well as ``--url .../stream``).
* **Acks per request**: ``{"result": null, "id": n}`` confirms every stream of
  request ``n``; an error refuses them, and the client drops and reports them
  (``on_subscription_rejected``). A malformed name (``BTCUSDT@trade``: symbols are
  lowercase) is refused by the handler before it is sent; a stream of a type it does
  not know travels alone, so Binance refusing it takes nothing else down.
* **Binance's rules as defaults**: 5 inbound messages/s (the handler's outbound rate
  keeps room for Binance's PINGs), 1024 streams per connection, the 24 h cut and its
  ``serverShutdown`` notice (a ``FeedPool`` rotates on it), consecutive trade ids
  (gaps are reported through ``on_gap``), and a ``WsPing`` heartbeat.

Run::

    python examples/binance_trades.py                 # embedded Binance simulator, /stream
    python examples/binance_trades.py --url wss://stream.binance.com:9443/stream --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

from defi_ws import ExponentialBackoff, FeedClient
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import BinanceDialect
from defi_ws.venues.binance import BinanceSpot, event_of, stream_of

STREAMS = ["btcusdt@trade", "ethusdt@trade"]


class TradeTap:
    """Counts trades per stream and prints the first few."""

    def __init__(self, show: int = 5) -> None:
        self.trades: dict[str, int] = {}
        self._show = show

    def on_data(self, message: Any) -> None:
        event = event_of(message)  # the envelope's "data", or the raw event itself
        if not isinstance(event, dict) or event.get("e") != "trade":
            return
        stream = stream_of(message) or "?"
        self.trades[stream] = self.trades.get(stream, 0) + 1
        if self._show > 0:
            self._show -= 1
            side = "sell" if event["m"] else "buy "  # m: the buyer was the maker
            print(f"  {event['s']:<8} t={event['t']:<5} {side} {event['q']} @ {event['p']}"
                  f"   ({stream})")

    @property
    def total(self) -> int:
        return sum(self.trades.values())


async def run(url: str | None, seconds: float) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            sim = ExchangeSimulator(dialect=BinanceDialect(ping_interval_s=1.0), rate_per_s=20)
            url = (await stack.enter_async_context(sim)).url + "stream"
        print(f"venue: {url}  streams: {', '.join(STREAMS)}")

        tap = TradeTap()
        handler = BinanceSpot(url, on_data=tap.on_data)
        client = FeedClient(
            handler,
            topics=STREAMS,
            reconnect=ExponentialBackoff(initial_s=0.5, max_s=30.0),
            on_subscription_rejected=lambda topic, detail: print(f"rejected {topic}: {detail}"),
            on_gap=lambda gap: print(f"gap: {gap}"),
            name="binance",
        )
        async with client:
            await client.wait_live(timeout_s=10.0)
            print(f"LIVE, confirmed: {sorted(client.confirmed_topics)}")
            client.subscribe("btcusdt@nosuchstream")  # sent alone, refused by the venue
            await asyncio.sleep(seconds)
            print(f"trades received: {tap.total} {tap.trades}, "
                  f"desired: {list(client.desired_topics)}")
            if tap.total == 0:
                print("warning: no trade arrived; is the URL a Binance market-stream "
                      "endpoint (/ws or /stream)?", file=sys.stderr)
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
        return 0 if tap.total > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Binance combined-stream trade tap.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(args.url, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
