"""Best bid and offer of one market on several venues, side by side, through the adapters.

Each venue is one line of ``VENUES``: the spec its adapter subscribes
(``defi_ws.venues.adapter_for``), how to read a best bid/offer out of its messages, and
the dialect of the embedded simulator that stands in for it::

    VENUES = [
        Venue("binance:btcusdt@bookTicker", binance_bbo, lambda: BinanceDialect(...), "stream"),
        Venue("okx:bbo-tbt:BTC-USDT", okx_bbo, lambda: OkxDialect(channels=("bbo-tbt",))),
    ]

Adding a venue of the registry is one more line (and a reader, if its quote message
has a shape of its own). Every venue runs its own ``FeedClient`` with its adapter's
endpoint, subscribe protocol, heartbeat and limits; one table shows them all, with the
best bid and best ask across venues.

Run::

    python examples/multi_venue_bbo.py                    # embedded simulators
    python examples/multi_venue_bbo.py --live --seconds 10
    DEFI_WS_LIVE=1 python examples/multi_venue_bbo.py     # as --live
    python examples/multi_venue_bbo.py --url okx=ws://127.0.0.1:8765/  # one venue elsewhere
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from defi_ws import ExponentialBackoff, FeedClient
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import BinanceDialect, OkxDialect
from defi_ws.venues import adapter_for, parse_spec
from defi_ws.venues.binance import event_of


class Quote(NamedTuple):
    """A best bid and offer, as the venue wrote the numbers."""

    bid: str
    bid_size: str
    ask: str
    ask_size: str


def binance_bbo(message: Any) -> Quote | None:
    """A Binance ``bookTicker`` event (bare or in a ``/stream`` envelope)."""
    event = event_of(message)
    if not isinstance(event, dict) or "b" not in event or "a" not in event:
        return None
    return Quote(event["b"], event["B"], event["a"], event["A"])


def okx_bbo(message: Any) -> Quote | None:
    """An OKX ``bbo-tbt`` push: ``data[0]`` with one bid and one ask level."""
    data = message.get("data") if isinstance(message, dict) else None
    if not data or not data[0].get("bids") or not data[0].get("asks"):
        return None
    bid, ask = data[0]["bids"][0], data[0]["asks"][0]
    return Quote(bid[0], bid[1], ask[0], ask[1])


@dataclass(frozen=True)
class Venue:
    """One venue of the board.

    Attributes:
        spec: ``venue:topic`` for ``defi_ws.venues.adapter_for``.
        bbo: the quote in one decoded message (None for other messages).
        simulator: the embedded simulator's dialect for this venue.
        path: added to the simulator's URL (Binance: ``stream``, combined streams).
    """

    spec: str
    bbo: Callable[[Any], Quote | None]
    simulator: Callable[[], Any]
    path: str = ""

    @property
    def name(self) -> str:
        return parse_spec(self.spec)[0]


VENUES = [
    Venue("binance:btcusdt@bookTicker", binance_bbo,
          lambda: BinanceDialect(channels=("bookTicker",)), "stream"),
    Venue("okx:bbo-tbt:BTC-USDT", okx_bbo, lambda: OkxDialect(channels=("bbo-tbt",))),
]


#: Simulator seeds whose first prices are within a dollar of each other.
SEEDS = (0, 1414, 543)


@dataclass
class Board:
    """The latest quote of each venue."""

    quotes: dict[str, Quote] = field(default_factory=dict)
    updates: dict[str, int] = field(default_factory=dict)

    def listener(self, venue: Venue) -> Callable[[Any], None]:
        """The ``on_data`` of one venue's adapter."""
        self.updates[venue.name] = 0

        def on_data(message: Any) -> None:
            quote = venue.bbo(message)
            if quote is not None:
                self.quotes[venue.name] = quote
                self.updates[venue.name] += 1
        return on_data

    def lines(self) -> list[str]:
        """The table: one row per venue, then the best bid and ask across venues."""
        rows = [f"  {'venue':<14}{'bid':>22}{'ask':>22}{'spread':>10}{'updates':>9}"]
        for name, count in self.updates.items():
            quote = self.quotes.get(name)
            if quote is None:
                rows.append(f"  {name:<14}{'-':>22}{'-':>22}{'-':>10}{count:>9}")
                continue
            spread = Decimal(quote.ask) - Decimal(quote.bid)
            rows.append(f"  {name:<14}{quote.bid + ' x ' + quote.bid_size:>22}"
                        f"{quote.ask + ' x ' + quote.ask_size:>22}{spread:>10}{count:>9}")
        if self.quotes:
            bid = max(self.quotes.items(), key=lambda item: Decimal(item[1].bid))
            ask = min(self.quotes.items(), key=lambda item: Decimal(item[1].ask))
            rows.append(f"  best bid {bid[1].bid} on {bid[0]}, best ask {ask[1].ask} "
                        f"on {ask[0]}")
        return rows


async def run(urls: dict[str, str], live: bool, seconds: float) -> int:
    board = Board()
    clients: dict[str, FeedClient] = {}
    async with contextlib.AsyncExitStack() as stack:
        for index, venue in enumerate(VENUES):
            url = urls.get(venue.name)
            if url is None and not live:  # a seed each: prices near each other, not equal
                sim = ExchangeSimulator(dialect=venue.simulator(), rate_per_s=10,
                                        seed=SEEDS[index % len(SEEDS)])
                url = (await stack.enter_async_context(sim)).url + venue.path
            options = {} if url is None else {"url": url}  # None: the venue's own endpoint
            handler, topics = adapter_for(venue.spec, on_data=board.listener(venue), **options)
            print(f"{venue.name}: {handler.url(0)}  {', '.join(topics)}")
            clients[venue.name] = await stack.enter_async_context(FeedClient(
                handler,
                topics=topics,
                reconnect=ExponentialBackoff(initial_s=0.5, max_s=30.0),
                on_subscription_rejected=lambda t, detail: print(f"rejected {t}: {detail}"),
                name=venue.name,
            ))
        await asyncio.gather(*(client.wait_live(timeout_s=15.0) for client in clients.values()))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await asyncio.sleep(min(1.0, max(0.0, end - loop.time())))
            print("\n".join(board.lines()))
        print("snapshots:")
        print(json.dumps({name: c.snapshot() for name, c in clients.items()}, indent=2,
                         default=str))
    return 0 if all(board.updates.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Best bid/offer of several venues.")
    parser.add_argument("--url", action="append", default=[], metavar="VENUE=URL",
                        help="connect VENUE to URL (default: an embedded simulator per venue, "
                             "or the venue itself with --live)")
    parser.add_argument("--live", action="store_true",
                        default=os.environ.get("DEFI_WS_LIVE") == "1",
                        help="connect to the venues themselves (also DEFI_WS_LIVE=1)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    urls = dict(value.split("=", 1) for value in args.url)
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(urls, args.live, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
