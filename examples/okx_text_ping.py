"""An OKX-style handler: per-arg acks, object topics, and a text ``ping``/``pong`` heartbeat.

OKX v5 public channels (``wss://ws.okx.com:8443/ws/v5/public``)::

    -> {"id": "1", "op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
    <- {"id": "1", "event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"},
        "connId": "a4d3ae55"}                                   (one ack per arg)
    <- {"id": "1", "event": "error", "code": "60018", "msg": "...", "connId": "a4d3ae55"}
    <- {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{"tradeId": "...",
        "px": "...", "sz": "...", "side": "buy", "ts": "..."}]}
    -> ping                                                      <- pong

What it shows:

* Topics are strings for the client, objects for OKX: ``"trades:BTC-USDT"`` <->
  ``{"channel": "trades", "instId": "BTC-USDT"}``.
* Acks name their arg, so ``classify`` maps each to one ``Ack``. An error names no
  arg, only the request ``id`` (echoed first, so ``{"id"`` is a control prefix too); OKX
  answers a request's args in order, so the error belongs to the oldest unanswered arg
  of that request.
* OKX cuts connections that are idle for 30 s and wants the literal text ``ping``:
  ``TextPing("ping", "pong", interval_s=...)``. The pong is matched on its raw bytes in
  the hot path, feeds the RTT histogram and never reaches ``on_message``.

Run::

    python examples/okx_text_ping.py                      # embedded OKX-dialect simulator
    python examples/okx_text_ping.py --url wss://ws.okx.com:8443/ws/v5/public --seconds 30
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

from defi_ws import Ack, ExponentialBackoff, FeedClient, TextPing
from defi_ws.testing.simulator import Dialect, ExchangeSimulator

TOPICS = ["trades:BTC-USDT", "trades:ETH-USDT"]
#: Seconds between pings: OKX needs < 30 s; short here so the demo shows RTTs.
PING_INTERVAL_S = 0.5


def to_arg(topic: str) -> dict[str, str]:
    channel, _, inst_id = topic.partition(":")
    return {"channel": channel, "instId": inst_id}


def to_topic(arg: Any) -> str | None:
    if not isinstance(arg, dict):
        return None
    return f"{arg.get('channel')}:{arg.get('instId')}"


class OkxTrades:
    """An ``ExchangeHandler`` for OKX v5 public channels (trades printed, others counted)."""

    decode: Callable[[memoryview], Any] | None = staticmethod(orjson.loads)
    control_prefixes: tuple[bytes, ...] | None = (b'{"event"', b'{"id"')
    # The args of one request may total 64 KB; 480 (un)subscribe requests per hour.
    max_topics_per_message = 100

    def __init__(self, url: str, show: int = 5) -> None:
        self._url = url
        self._next_id = 0
        self._unanswered: dict[str, list[str]] = {}  # request id -> topics not yet answered
        self._show = show
        self.trades = 0

    def url(self, attempt: int) -> str:
        return self._url

    def on_connection(self) -> None:
        self._unanswered.clear()

    def auth_messages(self) -> Sequence[Any]:
        return ()  # public channels; /private would log in here

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return [self._request("subscribe", topics)]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        return [self._request("unsubscribe", topics)]

    def _request(self, op: str, topics: Sequence[str]) -> dict[str, Any]:
        self._next_id += 1
        req_id = str(self._next_id)
        self._unanswered[req_id] = list(topics)
        return {"id": req_id, "op": op, "args": [to_arg(t) for t in topics]}

    def _answered(self, req_id: Any, topic: str | None = None) -> str | None:
        """Mark ``topic`` (default: the request's oldest unanswered one) answered."""
        pending = self._unanswered.get(req_id) if isinstance(req_id, str) else None
        if not pending:
            return topic
        if topic is None:
            topic = pending.pop(0)
        elif topic in pending:
            pending.remove(topic)
        if not pending:
            del self._unanswered[req_id]
        return topic

    def classify(self, message: Any) -> Sequence[Ack]:
        event = message.get("event") if isinstance(message, dict) else None
        if event in ("subscribe", "unsubscribe"):
            topic = self._answered(message.get("id"), to_topic(message.get("arg")))
            return [Ack(topic, unsubscribe=event == "unsubscribe")] if topic else []
        if event == "error":
            topic = self._answered(message.get("id"))
            detail = f"{message.get('code')}: {message.get('msg')}"
            return [Ack(topic, ok=False, detail=detail)] if topic else []
        return []  # e.g. {"event": "notice", "code": "64008", ...} before a service upgrade

    def topic_of(self, message: Any) -> str | None:
        return to_topic(message.get("arg")) if isinstance(message, dict) else None

    def on_message(self, message: Any) -> None:
        if not isinstance(message, dict) or "data" not in message:
            if isinstance(message, dict) and message.get("event") == "notice":
                print(f"venue notice: {message.get('msg')}")
            return
        for trade in message["data"]:
            self.trades += 1
            if self._show > 0:
                self._show -= 1
                print(
                    f"  {trade['instId']:<9} #{trade['tradeId']:<5} {trade['side']:<4} "
                    f"{trade['sz']} @ {trade['px']}"
                )


async def run(url: str | None, seconds: float) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            sim = ExchangeSimulator(dialect=Dialect.OKX, rate_per_s=20)
            url = (await stack.enter_async_context(sim)).url + "ws/v5/public"
        print(f"venue: {url}  topics: {', '.join(TOPICS)}")

        handler = OkxTrades(url)
        client = FeedClient(
            handler,
            topics=TOPICS,
            reconnect=ExponentialBackoff(initial_s=0.5, max_s=30.0),
            heartbeat=TextPing("ping", "pong", interval_s=PING_INTERVAL_S, timeout_s=5.0),
            stale_after_s=30.0,
            on_subscription_rejected=lambda topic, detail: print(f"rejected {topic}: {detail}"),
            name="okx",
        )
        async with client:
            await client.wait_live(timeout_s=10.0)
            print(f"LIVE, confirmed: {sorted(client.confirmed_topics)}")
            client.subscribe(["trades:SOL-USDT", "trades:NOSUCHPAIR"])  # one ack, one error
            await asyncio.sleep(seconds)
            print(f"trades received: {handler.trades}, desired: {sorted(client.desired_topics)}")
            print("snapshot:")
            print(json.dumps(client.snapshot(), indent=2, default=str))
        return 0 if handler.trades > 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="OKX-style handler with a text ping.")
    parser.add_argument("--url", help="venue URL (default: an embedded simulator)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="log: %(name)s %(message)s")
    return asyncio.run(run(args.url, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
