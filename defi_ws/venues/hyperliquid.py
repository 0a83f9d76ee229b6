"""Hyperliquid WebSocket subscriptions: a handler for ``FeedClient`` and ``FeedPool``.

:class:`Hyperliquid` speaks Hyperliquid's public WebSocket API (facts from
``venues.md`` §6: the docs' "WebSocket", "Subscriptions", "Timeouts and heartbeats" and
"Rate limits" pages, ``hyperliquid-dex/hyperliquid-python-sdk``; third-party captures
where marked 3P)::

    -> {"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}}
    <- {"channel": "subscriptionResponse", "data": {"method": "subscribe",
        "subscription": {"type": "trades", "coin": "BTC"}}}
    <- {"channel": "error", "data": "Already subscribed: {\\"type\\":\\"trades\\",...}"}
    <- {"channel": "trades", "data": [{"coin": "BTC", "side": "A", "px": "69170.0", ...}]}
    <- {"channel": "l2Book", "data": {"coin": "BTC", "time": ..., "levels": [[...], [...]]}}
    -> {"method": "ping"}                            <- {"channel": "pong"}

Topics are strings for the client, subscription objects for Hyperliquid:
``"trades:BTC"`` is ``{"type": "trades", "coin": "BTC"}``, ``"allMids"`` is
``{"type": "allMids"}``, and other fields follow the coin as ``key=value``, sorted:
``"l2Book:BTC,mantissa=5,nSigFigs=5"`` (:func:`to_subscription`, :func:`to_topic`;
digits become integers, ``true``/``false`` booleans). A coin may hold a colon
(``"trades:xyz:SP500"``, HIP-3) or a slash (``"trades:PURR/USDC"``).

* **Acks**: one ``subscriptionResponse`` per request, naming the subscription (there
  is no request id): it becomes the :class:`~defi_ws.handler.Ack` of that topic,
  whatever the order of its fields or extra null fields; the topic as the user wrote
  it is given back. An ``error`` whose text carries the request or the subscription
  as JSON (``"Error parsing JSON into valid websocket request: {...}"``) rejects that
  topic; ``"Already subscribed: {...}"`` (3P) and ``"Already unsubscribed: {...}"``
  (UNCONFIRMED, by symmetry) say the venue is where we want it, so they confirm (*safe
  choice*: a rejection would make the client drop a topic the venue keeps sending).
  An error naming no subscription (``"Cannot subscribe to more than 1000
  channels."``, ``"Cannot send more than 2000 messages per minute."``, 3P) can't be
  traced to a topic or a connection (a pool shares the handler): it is counted
  (``untraced_errors``) and logged, and the ack timeout reconnects (*safe choice*).
* **Heartbeat**: the server closes a connection it has sent nothing to for 60 s;
  ``{"method": "ping"}`` is answered by ``{"channel": "pong"}``. ``heartbeat`` is
  ``JsonPing({"method": "ping"}, b'{"channel":"pong"', 20 s, 10 s)`` (FeedClient's
  default with this handler; the SDK pings every 50 s): a pong that never comes is a
  ``PING_TIMEOUT``.
* **Disconnects**: "may happen periodically and without announcement": there is no
  notice to rotate on and no known maximum age, so ``max_connection_age_s`` is None;
  a FeedPool with ``redundancy=2`` rides through such a cut without a gap.
* **Limits** (per IP, the "Rate limits" page): 1000 subscriptions, 2000 messages sent
  per minute, 100 connections (newer 3P copies: 10 connections and 30 new connections
  per minute). :class:`~defi_ws.handler.VenueLimits` has no per-IP caps, so the safe
  choices are declared per connection: 1000 topics per connection (a process holding
  more than 1000 topics in total breaks the per-IP cap however they are spread);
  30 new connections per minute (the stricter figure); 15 messages/s with a burst of
  20 (at most 920 a minute: two redundant connections together stay under 2000).
  One subscription per message (``max_topics_per_message`` is 1).
* **Dedup**: no sequence numbers and no ordered ids (``tid`` is a hash), so a FeedPool
  recognises duplicates by a hash of the raw ``data`` field (``DedupSpec(hash_field=
  "data")``): one event is the same bytes on every connection. ``tracks_sequences`` is
  False. ``l2Book`` pushes are whole books (:class:`~defi_ws.books.HyperliquidBook`).
* **UNCONFIRMED, and the safe choice made**: what the venue does over a limit (an
  ``error`` is reported by 3P; the handler only counts it); the connection caps
  (above); whether ``channel`` is always the first key (the captures say so;
  ``control_prefixes`` rely on it: a reply laid out otherwise would reach ``on_data``
  and the ack timeout would reconnect, never a silent loss); the text of errors for an
  unknown coin (any error echoing a subscription rejects it); ``trades`` re-sends
  recent trades after each subscribe (3P: about 30): after a reconnect those may repeat
  trades already delivered, including on a redundant pool (deduplicate trades by
  ``(coin, time, tid)`` where it matters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from defi_ws.handler import Ack, Control, DedupSpec, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, JsonPing
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "LIMITS",
    "MAINNET_URL",
    "TESTNET_URL",
    "Hyperliquid",
    "to_subscription",
    "to_topic",
]

log = logging.getLogger("defi_ws.venues.hyperliquid")

#: The public endpoint (mainnet).
MAINNET_URL = "wss://api.hyperliquid.xyz/ws"
#: The testnet endpoint.
TESTNET_URL = "wss://api.hyperliquid-testnet.xyz/ws"
#: Hyperliquid's limits as declared per connection (see the module docstring).
LIMITS = VenueLimits(topics_per_connection=1000, messages_per_s=15.0, burst=20,
                     connections_per_window=(30, 60.0), max_connection_age_s=None)

_MAX_GIVEN = 65536  # canonical topic -> topic as the user wrote it


def _value(text: str) -> Any:
    if text.isdigit():
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_subscription(topic: str) -> dict[str, Any]:
    """The subscription object of a topic (``"trades:BTC"`` -> ``{"type", "coin"}``).

    ``"l2Book:BTC,nSigFigs=5"`` -> ``{"type": "l2Book", "coin": "BTC", "nSigFigs": 5}``;
    ``"allMids:dex=xyz"`` -> ``{"type": "allMids", "dex": "xyz"}``.
    """
    kind, _, rest = topic.partition(":")
    subscription: dict[str, Any] = {"type": kind}
    if not rest:
        return subscription
    pieces = rest.split(",")
    if "=" not in pieces[0]:
        subscription["coin"] = pieces.pop(0)
    for piece in pieces:
        key, _, value = piece.partition("=")
        subscription[key] = _value(value)
    return subscription


def to_topic(subscription: Any) -> str | None:
    """The topic of a subscription object (the inverse of :func:`to_subscription`).

    Fields are sorted and null ones left out, so the venue's echo of a subscription
    gives one topic whatever its field order. None for anything that is not a
    subscription object.
    """
    if type(subscription) is not dict or not isinstance(subscription.get("type"), str):
        return None
    kind: str = subscription["type"]
    coin = subscription.get("coin")
    if len(subscription) == 2 and isinstance(coin, str):  # the common case, fast
        return f"{kind}:{coin}"
    rest = [f"{k}={_text(v)}" for k, v in sorted(subscription.items())
            if k not in ("type", "coin") and v is not None]
    if isinstance(coin, str):
        rest.insert(0, coin)
    return kind + (":" + ",".join(rest) if rest else "")


def _embedded(text: str) -> dict[str, Any] | None:
    """The JSON object an error text carries (``"...: {...}"``), if any."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        found = orjson.loads(text[start:])
    except orjson.JSONDecodeError:
        return None
    return found if type(found) is dict else None


class Hyperliquid(VenueAdapter):
    """A Hyperliquid handler (see the module docstring).

    Args:
        url: the endpoint (default :data:`MAINNET_URL`, or :data:`TESTNET_URL` with
            ``testnet``; a simulator's URL in tests).
        testnet: use the testnet endpoint when ``url`` is not given.
        on_data: called with each decoded push (``{"channel": ..., "data": ...}``).
        decode: the decode function (default ``orjson.loads``; see
            :func:`defi_ws.venues.hyperliquid_types.push_decoder`).
        limits: overrides :data:`LIMITS`.
        dedup: overrides the pool's de-duplication (a hash of ``data``); False for
            none.

    Raises:
        ConfigError: the URL is not a usable WebSocket URL.
    """

    venue = "hyperliquid"
    #: The main public endpoint.
    default_url: str = MAINNET_URL
    control_prefixes: tuple[bytes, ...] | None = (
        b'{"channel":"subscriptionResponse"', b'{"channel":"error"')
    #: Hyperliquid's keep-alive: ``{"method":"ping"}`` well inside the 60 s idle cut.
    heartbeat: HeartbeatStrategy = JsonPing({"method": "ping"}, b'{"channel":"pong"',
                                            interval_s=20.0, timeout_s=10.0)
    limits: VenueLimits = LIMITS
    dedup: DedupSpec | None = DedupSpec(hash_field="data")
    #: No sequence numbers: no gap checks (a book push is a whole book).
    tracks_sequences = False
    #: One subscription object per request.
    max_topics_per_message = 1

    def __init__(
        self,
        url: str | None = None,
        *,
        testnet: bool = False,
        on_data: Callable[[Any], object] | None = None,
        decode: Callable[[memoryview], Any] | None = None,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
    ) -> None:
        default = TESTNET_URL if testnet else MAINNET_URL
        super().__init__(url or default, on_data=on_data, decode=decode,
                         max_topics_per_message=None, limits=limits, dedup=dedup)
        self._given: dict[str, str] = {}
        #: Error replies that named no subscription (logged, otherwise ignored).
        self.untraced_errors = 0

    # ------------------------------------------------------------ connection

    def _requests(self, method: str, topics: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for topic in topics:
            subscription = to_subscription(topic)
            canonical = to_topic(subscription)
            if canonical is not None and canonical != topic:
                self._given[canonical] = topic
                if len(self._given) > _MAX_GIVEN:
                    del self._given[next(iter(self._given))]
            out.append({"method": method, "subscription": subscription})
        return out

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``subscribe`` request per topic."""
        return self._requests("subscribe", topics)

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``unsubscribe`` request per topic."""
        return self._requests("unsubscribe", topics)

    # ------------------------------------------------------------ inbound

    def _topic(self, subscription: Any) -> str | None:
        topic = to_topic(subscription)
        return None if topic is None else self._given.get(topic, topic)

    def classify(self, message: Any) -> Sequence[Control]:
        """``subscriptionResponse`` acks; ``error`` replies that name a subscription."""
        if type(message) is not dict:
            return ()
        channel = message.get("channel")
        data = message.get("data")
        if channel == "subscriptionResponse" and type(data) is dict:
            topic = self._topic(data.get("subscription"))
            if topic is None:
                return ()
            return [Ack(topic, unsubscribe=data.get("method") == "unsubscribe")]
        if channel != "error":
            return ()
        text = str(data)
        found = _embedded(text)
        if found is not None and type(found.get("subscription")) is dict:
            unsubscribe = found.get("method") == "unsubscribe"
            found = found["subscription"]
        else:
            unsubscribe = text.startswith("Already unsubscribed")
        topic = self._topic(found)
        if topic is None:
            self.untraced_errors += 1
            log.warning("hyperliquid error naming no subscription: %s", text[:200])
            return ()
        if text.startswith(("Already subscribed", "Already unsubscribed")):
            return [Ack(topic, unsubscribe=unsubscribe)]  # the venue is where we want it
        return [Ack(topic, ok=False, detail=text, unsubscribe=unsubscribe)]

    def topic_of(self, message: Any) -> str | None:
        """The topic of a push: ``"trades:BTC"``, ``"l2Book:ETH"``, ``"allMids"``.

        The push does not repeat a subscription's options (``nSigFigs``...): an
        ``l2Book`` push is ``"l2Book:<coin>"`` whatever they were.
        """
        if type(message) is not dict:
            topic = getattr(message, "topic", None)
            return topic() if callable(topic) else None
        channel = message.get("channel")
        if not isinstance(channel, str):
            return None
        data = message.get("data")
        if type(data) is list:
            data = data[0] if data else None
        if type(data) is not dict:
            return None
        coin = data.get("coin")
        if isinstance(coin, str):
            return f"{channel}:{coin}"
        dex = data.get("dex")
        return f"{channel}:dex={dex}" if isinstance(dex, str) and dex else channel
