"""A Binance-style trade stream: a complete ``ExchangeHandler`` for a request/id protocol.

Binance spot market streams (``wss://stream.binance.com:9443/ws``) differ from the
generic protocol in every control message, so this handler implements the
``ExchangeHandler`` protocol from scratch instead of subclassing ``JsonHandler``::

    -> {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"], "id": 1}
    <- {"result": null, "id": 1}                            (one reply per request)
    <- {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
    <- {"e": "trade", "E": ms, "s": "BTCUSDT", "t": 12345, "p": "...", "q": "...", ...}

What it shows:

* Acks answer a *request*, not a topic: ``subscribe_messages`` numbers each request
  and remembers its topics; ``classify`` turns one ``{"result": null, "id": n}`` into
  one ``Ack`` per topic of request ``n`` (and an error into rejections). Request ids
  die with their connection: ``on_connection`` forgets them.
* ``control_prefixes`` are the raw-byte starts of replies (``{"result"``, ``{"error"``):
  trade events (``{"e":"trade"...``) skip the control router entirely.
* Trade ids ``t`` are consecutive per symbol, so ``sequence_of`` gives the client gap
  detection for free.
* Binance pings *us* with WebSocket PING frames (every 20 s; picows answers them). The
  client's own ``WsPing`` is optional and only measures RTT; every PING counts
  towards Binance's 5 inbound messages/s, as do subscribe requests, hence
  ``outbound_rate_per_s=4``.
* A subscription the venue refuses is dropped and reported (``on_subscription_rejected``).

Run::

    python examples/binance_trades.py                     # embedded Binance-dialect simulator
    python examples/binance_trades.py --url wss://stream.binance.com:9443/ws --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from defi_ws import Ack, ExponentialBackoff, FeedClient, WsPing
from defi_ws.testing.simulator import Dialect, ExchangeSimulator

STREAMS = ["btcusdt@trade", "ethusdt@trade"]


class BinanceTrades:
    """An ``ExchangeHandler`` for Binance spot raw ``<symbol>@trade`` streams."""

    decode: Callable[[memoryview], Any] | None = staticmethod(orjson.loads)
    control_prefixes: tuple[bytes, ...] | None = (b'{"result"', b'{"error"')
    # Binance documents no per-message limit, only 1024 streams per connection and
    # 5 inbound messages/s: a few large requests are the polite choice.
    max_topics_per_message = 200

    def __init__(self, url: str, show: int = 5) -> None:
        self._url = url
        self._next_id = 0
        self._requests: dict[int, tuple[bool, list[str]]] = {}  # id -> (unsubscribe, topics)
        self._show = show
        self.trades = 0

    # --- connection and requests -------------------------------------------------

    def url(self, attempt: int) -> str:
        return self._url

    def on_connection(self) -> None:
        self._requests.clear()  # answers to the previous connection's requests never come

    def auth_messages(self) -> Sequence[Any]:
        return ()  # market streams are public

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return [self._request("SUBSCRIBE", topics)]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return [self._request("UNSUBSCRIBE", topics)]

    def _request(self, method: str, topics: Sequence[str]) -> dict[str, Any]:
        self._next_id += 1
        self._requests[self._next_id] = (method == "UNSUBSCRIBE", list(topics))
        return {"method": method, "params": list(topics), "id": self._next_id}

    # --- inbound -----------------------------------------------------------------

    def classify(self, message: Any) -> Sequence[Ack]:
        req_id = message.get("id") if isinstance(message, dict) else None
        if not isinstance(req_id, int) or req_id not in self._requests:
            return ()
        unsubscribe, topics = self._requests.pop(req_id)
        error = message.get("error")
        if error is None:
            return [Ack(topic, unsubscribe=unsubscribe) for topic in topics]
        detail = f"code {error.get('code')}: {error.get('msg')}"
        return [Ack(topic, ok=False, detail=detail, unsubscribe=unsubscribe) for topic in topics]

    def topic_of(self, message: Any) -> str | None:
        symbol = message.get("s") if isinstance(message, dict) else None
        return f"{symbol.lower()}@trade" if isinstance(symbol, str) else None

    def sequence_of(self, message: Any) -> tuple[str, int] | None:
        topic = self.topic_of(message)
        if topic is None or not isinstance(trade_id := message.get("t"), int):
            return None
        return (topic, trade_id)

    def on_message(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("e") != "trade":
            return  # e.g. an error reply to a request this connection did not send
        self.trades += 1
        if self._show > 0:
            self._show -= 1
            side = "sell" if message["m"] else "buy "  # m: the buyer was the maker
            print(f"  {message['s']:<8} t={message['t']:<5} {side} {message['q']} @ {message['p']}")


async def run(url: str | None, seconds: float) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            sim = ExchangeSimulator(dialect=Dialect.BINANCE, rate_per_s=20)
            url = (await stack.enter_async_context(sim)).url + "ws"
        print(f"venue: {url}  streams: {', '.join(STREAMS)}")

        handler = BinanceTrades(url)
        client = FeedClient(
            handler,
            topics=STREAMS,
            reconnect=ExponentialBackoff(initial_s=0.5, max_s=30.0),
            heartbeat=WsPing(interval_s=1.0, timeout_s=10.0),
            outbound_rate_per_s=4.0,
            on_subscription_rejected=lambda topic, detail: print(f"rejected {topic}: {detail}"),
            on_gap=lambda gap: print(f"gap: {gap}"),
            name="binance",
        )
        async with client:
            await client.wait_live(timeout_s=10.0)
            print(f"LIVE, confirmed: {sorted(client.confirmed_topics)}")
            client.subscribe("btcusdt@nosuchstream")  # refused by the venue, then dropped
            await asyncio.sleep(seconds)
            print(f"trades received: {handler.trades}, desired: {list(client.desired_topics)}")
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
        return 0 if handler.trades > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Binance-style trade stream with defi-ws.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(args.url, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
