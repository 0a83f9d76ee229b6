"""An OKX order book kept in sync through ``defi_ws.books``: snapshot, updates, checksums.

The ``Okx`` adapter carries the feed (subscribe, per-arg acks, text ``ping``); an
``OkxBook`` applies each push by OKX's rules and says when it broke::

    book = OkxBook("BTC-USDT")                         # channel "books", 400 levels
    result = book.apply(message)                       # every push of the connection
    if result.action is ResyncAction.RESUBSCRIBE:      # a gap, a bad checksum...
        client.unsubscribe(topic); client.subscribe(topic)   # OKX streams a new snapshot

What the book checks (see ``defi_ws/books/okx.py``):

* **Sequence**: each update's ``prevSeqId`` must be the ``seqId`` of the message
  before; anything else is a ``sequence_gap``: the book is cleared at once (never
  silently wrong) and asks to RESUBSCRIBE, which streams a fresh snapshot.
* **Checksum**: the CRC32 of the top 25 levels after each message; one that does not
  match the book is a ``checksum_mismatch`` break. The simulator sends the real one.
  OKX has sent ``checksum: 0`` since 2026-06 (deprecated): such a checksum is counted
  as *skipped*, never as verified, and the book checks that it is not crossed instead.
* With ``snapshot_source=SnapshotSource.REST`` (OKX's announced replacement of the
  streamed snapshot) the book asks for FETCH_SNAPSHOT instead, and
  ``defi_ws.books.SnapshotSync`` runs your REST fetcher when it does.

Against the embedded simulator (whose book follows its price: levels added, changed
and removed, never crossed) a fault is injected every ``--fault-every`` seconds, a
sequence gap and a wrong checksum in turn, so the resyncs show. Against OKX, resyncs
are rare; each one costs two of the 480 subscribe requests OKX allows per hour and
connection (the adapter paces them: 20 at once, then one every 8 s).

Run::

    python examples/okx_book.py                          # embedded OKX simulator
    python examples/okx_book.py --live --seconds 20      # wss://ws.okx.com:8443/ws/v5/public
    python examples/okx_book.py --url wss://ws.okx.com:8443/ws/v5/public --inst ETH-USDT
    DEFI_WS_LIVE=1 python examples/okx_book.py           # as --live
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from defi_ws import ExponentialBackoff, FeedClient
from defi_ws.books import OkxBook, Outcome, ResyncAction, ResyncReason
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import OkxDialect
from defi_ws.venues import Okx


def top_of_book(book: OkxBook) -> str:
    """``bid 100.1 x 2.0 | ask 100.2 x 1.5 (spread 0.1, 5/5 levels)``, or why not."""
    if not book.is_live:
        return f"not live ({book.state.name.lower()}: waiting for a snapshot)"
    bid, ask = book.best_bid(), book.best_ask()
    if bid is None or ask is None:
        return "live, one side empty"
    return (f"bid {bid.raw_price} x {bid.raw_size} | ask {ask.raw_price} x {ask.raw_size} "
            f"(spread {book.spread()}, {len(book.bids())}/{len(book.asks())} levels)")


class BookKeeper:
    """Applies every push to the book; resubscribes when the book asks."""

    def __init__(self, book: OkxBook, topic: str) -> None:
        self.book = book
        self.topic = topic
        self.client: FeedClient | None = None

    def on_data(self, message: Any) -> None:
        result = self.book.apply(message)
        if result.outcome is Outcome.RESYNC_NEEDED:
            reason = result.reason.value if result.reason else "?"
            print(f"  book broke: {reason} ({result.detail}); asks to "
                  f"{result.action.value if result.action else '-'}")
        if result.action is ResyncAction.RESUBSCRIBE and self.client is not None:
            # Not from inside the frame callback: on the loop's next turn.
            asyncio.get_running_loop().call_soon(self._resubscribe)

    def _resubscribe(self) -> None:
        assert self.client is not None
        self.client.unsubscribe(self.topic)
        self.client.subscribe(self.topic)


async def run(url: str | None, live: bool, inst: str, seconds: float, fault_every_s: float
              ) -> int:
    topic = f"books:{inst}"
    async with contextlib.AsyncExitStack() as stack:
        sim: ExchangeSimulator | None = None
        dialect = OkxDialect(channels=("books",))  # real checksums (checksums=False: 0)
        if url is None and not live:
            sim = ExchangeSimulator(dialect=dialect, rate_per_s=50)
            url = (await stack.enter_async_context(sim)).url
        book = OkxBook(inst)  # checksums verified, a crossed book is a break
        keeper = BookKeeper(book, topic)
        handler = Okx(url=url, on_data=keeper.on_data)  # url None: OKX's public endpoint
        print(f"venue: {handler.url(0)}  topic: {topic}")
        client = keeper.client = FeedClient(
            handler,
            topics=[topic],
            reconnect=ExponentialBackoff(initial_s=0.5, max_s=30.0),
            on_subscription_rejected=lambda t, detail: print(f"rejected {t}: {detail}"),
            name="okx-book",
        )
        async with client:
            await client.wait_live(timeout_s=15.0)
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            next_fault = loop.time() + fault_every_s
            gap = True
            while loop.time() < end:
                await asyncio.sleep(min(0.5, max(0.0, end - loop.time())))
                print(f"  {top_of_book(book)}")
                if sim is not None and next_fault <= loop.time() < end - 0.5:
                    next_fault = loop.time() + fault_every_s
                    if gap:
                        sim.sequence_gap(topic)  # the next update skips a seqId
                        print("  simulator: the next update skips a seqId")
                    else:
                        dialect.checksum_fault(topic)  # the levels stay right
                        print("  simulator: the next update carries a wrong checksum")
                    gap = not gap
            for _ in range(20):  # a resync under way: let its snapshot land
                if book.is_live:
                    break
                await asyncio.sleep(0.1)
            counters = book.counters
            print(f"top of book: {top_of_book(book)}")
            print(f"resyncs: {counters.resyncs_total} "
                  f"{ {r.value: n for r, n in counters.resyncs.items()} }, "
                  f"snapshots loaded: {counters.snapshots}, updates applied: {counters.applied}")
            mismatches = counters.resyncs.get(ResyncReason.CHECKSUM_MISMATCH, 0)
            print(f"checksums: {counters.checksums_verified} verified, {mismatches} wrong, "
                  f"{counters.checksums_skipped} skipped (0: not sent)")
            print("book counters:", json.dumps(counters.as_dict()))
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
        return 0 if counters.snapshots > 0 and book.is_live else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="An OKX order book kept with checksums.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--live", action="store_true",
                        default=os.environ.get("DEFI_WS_LIVE") == "1",
                        help="connect to OKX itself (also DEFI_WS_LIVE=1)")
    parser.add_argument("--inst", default="BTC-USDT", help="instrument (default BTC-USDT)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    parser.add_argument("--fault-every", type=float, default=1.0, metavar="S",
                        help="simulator only: inject a fault every S seconds (a sequence "
                        "gap, then a wrong checksum, in turn)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(args.url, args.live, args.inst, args.seconds, args.fault_every))


if __name__ == "__main__":
    raise SystemExit(main())
