"""Coinbase Advanced Trade market data: a handler for ``FeedClient`` and ``FeedPool``.

:class:`Coinbase` speaks the Advanced Trade WebSocket protocol (facts from
``venues.md`` §4: Coinbase's Advanced Trade WebSocket overview, channels, rate-limit and
authentication pages; ``coinbase/coinbase-advanced-py``)::

    -> {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2",
        "jwt": "..."}                             (one channel per message; jwt optional)
    <- {"channel": "subscriptions", "client_id": "", "timestamp": "...",
        "sequence_num": 1, "events": [{"subscriptions": {"level2": ["BTC-USD"]}}]}
    <- {"type": "error", "message": "..."}
    <- {"channel": "l2_data", "client_id": "", "timestamp": "...", "sequence_num": 2,
        "events": [{"type": "snapshot", "product_id": "BTC-USD", "updates": [...]}]}
    <- {"channel": "heartbeats", ..., "events": [{"current_time": "...",
        "heartbeat_counter": 42}]}

Topics are ``"<channel>:<product_id>"`` (``"market_trades:BTC-USD"``,
``"level2:ETH-USD"``, ``"ticker:BTC-USD"``), or a bare channel for channels without
products (``"heartbeats"``, ``"status"``): :func:`to_request`, :func:`topic_of`. Data of
``level2`` arrives on channel ``l2_data``; its topic is still ``"level2:<product>"``.

* **Subscribe**: one message per channel, with every product of the batch
  (``max_topics_per_message`` products at most). An error names no product, so a
  malformed product id is refused by the handler itself, never sent
  (:func:`topic_problem`). Coinbase cuts a connection that has
  not subscribed within 5 s; the client subscribes as soon as it is open.
* **Acks**: no request id. Coinbase answers each request with a ``subscriptions``
  message listing *all* the connection's current subscriptions. The handler keeps its
  unanswered requests and answers, oldest first, each one the list confirms (a
  subscribe whose products are all listed, an unsubscribe whose products are all
  gone): one :class:`~defi_ws.handler.Ack` per topic. An ``error`` names no request:
  it rejects the oldest unanswered one (every topic in it); an error with no request
  waiting is only logged and delivered as data. Requests unanswered for
  ``request_expiry_s`` (a dead connection's) are forgotten. A ``subscriptions``
  message that answers nothing of ours (the automatic ``heartbeats`` request) is
  housekeeping: a :class:`~defi_ws.handler.VenueHeartbeat`, not delivered.
* **Heartbeats**: Coinbase has no client ping: "most channels close within 60-90 s if
  no updates are sent", so the handler subscribes the ``heartbeats`` channel (one
  message a second) with the first request of every connection (``heartbeats=False``
  to leave it out). The heartbeats of that automatic subscription are
  :class:`~defi_ws.handler.VenueHeartbeat` results: not data, never delivered, and
  they do not keep the data stale clock (``stale_after_s``) fresh, so a connection
  that gets heartbeats but no data goes STALE. A ``"heartbeats"`` topic of your own
  is acked like any other and its messages are data for you (``on_data``), for as
  long as you are subscribed. The recommended ``heartbeat``
  is ``WsPing(20 s, 10 s)`` (FeedClient's default with this handler): RFC 6455 pings,
  which Coinbase's server answers like any WebSocket server (the official SDK's
  ``websockets`` client pings it every 20 s); a pong that never comes is a
  ``PING_TIMEOUT``.
* **Sequences** (``sequence_num``): one counter per *connection*, every message of
  every channel counted (subscriptions replies and heartbeats included). The handler
  checks it across the connection (control messages in :meth:`Coinbase.classify`, data
  in :meth:`Coinbase.sequence_of`, which the client calls on each data message, and
  which reports what either found) and resets on each new connection
  (:meth:`Coinbase.on_connection`). A jump is a lost
  message: ``level2`` guarantees delivery, so a gap means the books of that
  connection are broken. It is counted (``gaps``, ``missing``), logged, and passed
  to ``on_gap`` as a :class:`~defi_ws.sequence.Gap` of topic :data:`SEQUENCE_TOPIC`
  with Coinbase's own numbers: resync there (e.g. ``book.request_resync()``, then
  unsubscribe and subscribe the product's ``level2`` topic; a fresh snapshot
  follows). ``sequence_of`` returns None: the client's per-topic tracker, which keeps
  numbers across reconnects, does not fit a per-connection counter. A
  :class:`~defi_ws.books.CoinbaseBook` fed through a FeedClient only sees data
  messages: give it ``check_sequence=False`` and let this handler check.
* **FeedPool**: the pool shares one handler between its connections, so a
  per-connection check is impossible there; the pool does not call ``sequence_of``
  (its de-duplication has a ``key_of`` hook, which turns per-connection checks off).
  Duplicates on redundant connections are recognised by a hash of the raw
  ``events`` array (``sequence_num`` and ``timestamp`` differ between connections;
  the events do not).
* **Auth**: ``jwt`` is a callable the user supplies (signing a JWT with a CDP API key
  is the user's business): it is called for every subscribe and unsubscribe message,
  whose ``jwt`` field carries the result (Coinbase's JWTs expire after 2 minutes).
  The JWT never appears in a repr, a log line or an error of this handler.
* **Limits**: 8 unauthenticated messages per second per IP: declared as 2 messages/s
  per connection with a burst of 4 (a pool of more than two busy connections could
  still exceed the per-IP budget while it subscribes: the venue counts per IP, the
  pool paces per connection). Connections per second per IP: 8 on the coinbase-app
  page, 750 on the coinbase-business page (they conflict): the stricter 8 per 1 s.
* **UNCONFIRMED, and the safe choice made**: products per subscribe (none
  documented: 50 here) and topics per connection (100 here; pass ``limits=``);
  whether ``sequence_num`` counts per connection or per channel (per connection, as
  third-party fixtures show, and the stricter reading: a per-channel counter would
  only show false gaps, which are safe resyncs); a scheduled forced disconnect (none:
  ``max_connection_age_s`` is None; a cut is simply reconnected); what Coinbase does
  over a rate limit (on Exchange: ``ErrSlowRead`` and a disconnect); whether WebSocket
  PINGs count against the message rate (one per 20 s either way); the byte order of
  the JSON keys (the doc samples put ``channel``, or ``type`` for errors, first,
  which :attr:`Coinbase.control_prefixes` relies on); compression (none negotiated);
  whether one ``subscriptions`` reply answers each request and whether an error
  refuses a whole request or one product (one reply each; an error rejects every
  topic of the oldest request waiting, and malformed products are never sent, so a
  typo can't take good products down with it); a client with no topic at all is cut
  after 5 s by the venue and reconnects (subscribe something, e.g. ``"heartbeats"``).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from defi_ws.handler import Ack, Control, DedupSpec, VenueHeartbeat, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, WsPing
from defi_ws.sequence import Gap
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "DEDUP",
    "DEFAULT_URL",
    "HEARTBEATS",
    "LIMITS",
    "SEQUENCE_TOPIC",
    "USER_URL",
    "Coinbase",
    "subscribe_message",
    "to_request",
    "topic_of",
    "topic_problem",
]

log = logging.getLogger("defi_ws.venues.coinbase")

#: Market data.
DEFAULT_URL = "wss://advanced-trade-ws.coinbase.com"
#: User order data (``user``, ``futures_balance_summary`` and ``heartbeats``).
USER_URL = "wss://advanced-trade-ws-user.coinbase.com"
#: The heartbeats channel (and its topic).
HEARTBEATS = "heartbeats"
#: The topic of a :class:`~defi_ws.sequence.Gap` in the connection's ``sequence_num``.
SEQUENCE_TOPIC = "sequence_num"
#: Coinbase's limits as declared (see the module docstring for what is unconfirmed).
LIMITS = VenueLimits(topics_per_connection=100, messages_per_s=2.0, burst=4,
                     connections_per_window=(8, 1.0), max_connection_age_s=None)

#: Data channels named differently from the channel subscribed.
_SUBSCRIBED_AS = {"l2_data": "level2"}
#: Where each channel's events keep their items (the product is read from the first).
_ITEMS = {"market_trades": "trades", "ticker": "tickers", "ticker_batch": "tickers",
          "candles": "candles"}
_MAX_REQUESTS = 4096
_MAX_BREAKS = 64


def _events_key(view: memoryview) -> Any:
    """The dedup key of a message without an ``events`` array: none (delivered)."""
    return None


#: A pool's de-duplication: a hash of the raw ``events`` (equal on every connection).
#: The ``key_of`` hook only answers for messages without ``events`` (none: delivered);
#: its presence also tells a pool not to check ``sequence_num`` per client.
DEDUP = DedupSpec(hash_field="events", key_of=_events_key)


def to_request(topic: str) -> tuple[str, str | None]:
    """``(channel, product_id)`` of a topic (``"level2:BTC-USD"`` -> ``("level2", "BTC-USD")``;
    ``"heartbeats"`` -> ``("heartbeats", None)``)."""
    channel, _, product = topic.partition(":")
    return channel, product or None


def _topic(channel: str, product: str | None) -> str:
    return f"{channel}:{product}" if product else channel


_PRODUCT = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)+")


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not a Coinbase topic (None when it looks like one).

    Coinbase answers a request with one ``error`` that names no product, so a malformed
    product would take the well-formed ones of its request down with it: the handler
    refuses ``"<channel>:<PRODUCT-ID>"`` topics whose product is not upper-case
    ``BASE-QUOTE`` itself, without sending them.
    """
    channel, product = to_request(topic)
    if not channel:
        return f"{topic!r} is not a Coinbase topic <channel>[:<PRODUCT-ID>]"
    if product is not None and _PRODUCT.fullmatch(product) is None:
        return f"{topic!r}: {product!r} is not a Coinbase product id like 'BTC-USD'"
    return None


def subscribe_message(channel: str, products: Sequence[str], *, unsubscribe: bool = False,
                      jwt: str | None = None) -> dict[str, Any]:
    """One (un)subscribe request: ``{"type", "product_ids", "channel"[, "jwt"]}``."""
    message: dict[str, Any] = {"type": "unsubscribe" if unsubscribe else "subscribe",
                               "product_ids": list(products), "channel": channel}
    if jwt is not None:
        message["jwt"] = jwt
    return message


def _field(message: Any, name: str) -> Any:
    if type(message) is dict:
        return message.get(name)
    return getattr(message, name, None)


def topic_of(message: Any) -> str | None:
    """The topic of a data message (a dict or a :mod:`~defi_ws.venues.coinbase_types`
    Struct): ``"level2:BTC-USD"`` for ``l2_data``, ``"heartbeats"`` for heartbeats.

    A message carrying several products is named after the first.
    """
    channel = _field(message, "channel")
    if not isinstance(channel, str):
        return None
    channel = _SUBSCRIBED_AS.get(channel, channel)
    events = _field(message, "events")
    if not events:
        return channel if channel in (HEARTBEATS, "status") else None
    event = events[0]
    product = _field(event, "product_id")
    if product is None:
        items = _field(event, _ITEMS.get(channel, ""))
        if items:
            product = _field(items[0], "product_id")
    if isinstance(product, str):
        return f"{channel}:{product}"
    return channel if channel in (HEARTBEATS, "status") else None


@dataclass(eq=False)
class _Request:
    channel: str
    products: list[str]
    topics: list[str]  # empty for the automatic heartbeats request
    unsubscribe: bool
    sent_at: float
    #: Topics refused by the handler itself, answered with this request.
    refused: list[tuple[str, str]] = field(default_factory=list)


class Coinbase(VenueAdapter):
    """A Coinbase Advanced Trade handler (see the module docstring).

    Args:
        url: the endpoint (default :data:`DEFAULT_URL`; :data:`USER_URL` for user
            order data; a simulator's URL in tests).
        on_data: called with each decoded data message (heartbeats included).
        jwt: returns a fresh JWT for the ``jwt`` field of every request (needed for
            the ``user`` and ``futures_balance_summary`` channels, recommended by
            Coinbase for the most reliable connection); never logged.
        heartbeats: subscribe the ``heartbeats`` channel on every connection.
        on_gap: called with each :class:`~defi_ws.sequence.Gap` in a connection's
            ``sequence_num`` (topic :data:`SEQUENCE_TOPIC`).
        check_sequence: check ``sequence_num`` (FeedClient only; see the module
            docstring).
        decode: the decode function (default ``orjson.loads``; see
            :mod:`defi_ws.venues.coinbase_types`).
        max_topics_per_message: products per request (UNCONFIRMED limit: 50).
        limits: overrides :data:`LIMITS`.
        dedup: overrides the pool's de-duplication (:data:`DEDUP`); False for none.
        request_expiry_s: unanswered requests older than this are forgotten.
        clock: monotonic seconds (tests).

    Attributes:
        gaps: sequence gaps found.
        missing: messages missing in those gaps.
        regressions: numbers not above the last one on the same connection.
        untraced_errors: error messages with no request waiting.

    Raises:
        ConfigError: ``url`` is not a usable WebSocket URL.
        ValueError: ``max_topics_per_message`` is not an int >= 1.
    """

    venue = "coinbase"
    #: The main public endpoint (what ``defi-ws venues`` lists).
    default_url: str = DEFAULT_URL
    control_prefixes: tuple[bytes, ...] | None = (b'{"channel":"subscriptions"',
                                                  b'{"type":"error"',
                                                  b'{"channel":"heartbeats"')
    #: RFC 6455 pings: Coinbase has no application ping (see the module docstring).
    heartbeat: HeartbeatStrategy = WsPing(interval_s=20.0, timeout_s=10.0)
    limits: VenueLimits = LIMITS
    dedup: DedupSpec | None = DEDUP

    def __init__(
        self,
        url: str | None = None,
        *,
        on_data: Callable[[Any], object] | None = None,
        jwt: Callable[[], str] | None = None,
        heartbeats: bool = True,
        on_gap: Callable[[Gap], object] | None = None,
        check_sequence: bool = True,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int = 50,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        request_expiry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(url or DEFAULT_URL, on_data=on_data, decode=decode,
                         max_topics_per_message=max_topics_per_message, limits=limits,
                         dedup=dedup)
        self._jwt = jwt
        self.heartbeats = heartbeats
        self._on_gap = on_gap
        self.tracks_sequences = check_sequence
        self._expiry_s = request_expiry_s
        self._clock = clock
        self._requests: deque[_Request] = deque()
        self._heartbeats_sent = False
        #: Whether the user subscribed ``"heartbeats"`` as a topic (then they are data).
        self._heartbeats_wanted = False
        self._last_seq: int | None = None
        #: (last, seq) pairs that broke the sequence, waiting for ``sequence_of``.
        self._breaks: list[tuple[int, int]] = []
        self.gaps = 0
        self.missing = 0
        self.regressions = 0
        self.untraced_errors = 0

    def _repr_details(self) -> str:
        return ", jwt" if self._jwt is not None else ""

    # ------------------------------------------------------------ connection

    def on_connection(self) -> None:
        """A new connection: its ``sequence_num`` starts again; heartbeats to subscribe."""
        self._last_seq = None
        self._breaks = []
        self._heartbeats_sent = False

    def _build(self, topics: Sequence[str], unsubscribe: bool) -> list[dict[str, Any]]:
        by_channel: dict[str, list[str]] = {}
        for topic in topics:
            channel, product = to_request(topic)
            entry = by_channel.setdefault(channel, [])
            if product is not None:
                entry.append(product)
        now = self._clock()
        refused = [] if unsubscribe else [(t, why) for t in topics
                                          if (why := topic_problem(t)) is not None]
        requests = []
        if not unsubscribe and self.heartbeats and not self._heartbeats_sent:
            self._heartbeats_sent = True
            if HEARTBEATS not in by_channel:
                requests.append(_Request(HEARTBEATS, [], [], False, now))
        for channel, products in by_channel.items():
            mine = [t for t in topics if to_request(t)[0] == channel
                    and all(t != bad for bad, _ in refused)]
            if mine:
                requests.append(_Request(channel, [p for p in products if f"{channel}:{p}"
                                                   in mine], mine, unsubscribe, now))
        if refused and not requests:  # a harmless request to hang the refusals on
            requests.append(_Request(HEARTBEATS, [], [], False, now))
        if refused:
            requests[-1].refused = refused
        for request in requests:
            self._track(request)
        return [self._message(r.channel, r.products, r.unsubscribe) for r in requests]

    def _message(self, channel: str, products: list[str], unsubscribe: bool) -> dict[str, Any]:
        token = self._jwt() if self._jwt is not None else None
        return subscribe_message(channel, products, unsubscribe=unsubscribe, jwt=token)

    def _track(self, request: _Request) -> None:
        self._requests.append(request)
        while len(self._requests) > _MAX_REQUESTS:
            self._requests.popleft()

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``subscribe`` per channel (and ``heartbeats`` first on a new connection)."""
        if HEARTBEATS in topics:
            self._heartbeats_wanted = True
        return self._build(topics, False)

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``unsubscribe`` per channel."""
        if HEARTBEATS in topics:
            self._heartbeats_wanted = False
        return self._build(topics, True)

    # ------------------------------------------------------------ inbound

    def _expire(self) -> None:
        horizon = self._clock() - self._expiry_s
        requests = self._requests
        while requests and requests[0].sent_at < horizon:
            requests.popleft()

    def classify(self, message: Any) -> Sequence[Control]:
        """Acks from ``subscriptions`` messages, rejections from ``error`` messages."""
        if type(message) is not dict:
            return ()
        seq = message.get("sequence_num")
        if isinstance(seq, int):
            self._observe(seq)
        if message.get("type") == "error":
            return self._error(message)
        channel = message.get("channel")
        if channel == HEARTBEATS:
            return () if self._heartbeats_wanted else (VenueHeartbeat("coinbase heartbeats"),)
        if channel != "subscriptions":
            return ()
        current: dict[str, set[str]] = {}
        for event in message.get("events") or ():
            subscriptions = event.get("subscriptions") if type(event) is dict else None
            if type(subscriptions) is dict:
                for channel, products in subscriptions.items():
                    current.setdefault(channel, set()).update(
                        p for p in products or () if isinstance(p, str))
        self._expire()
        acks: list[Control] = []
        answered = []
        for request in self._requests:
            listed = current.get(request.channel)
            if request.unsubscribe:
                done = listed is None or not listed.intersection(request.products)
            else:
                done = listed is not None and listed.issuperset(request.products)
            if done:
                answered.append(request)
                acks.extend(Ack(t, unsubscribe=request.unsubscribe) for t in request.topics)
                acks.extend(Ack(t, ok=False, detail=why) for t, why in request.refused)
        for request in answered:
            self._requests.remove(request)
        if not acks:  # answers nothing of ours (the automatic heartbeats request)
            return (VenueHeartbeat("coinbase subscriptions reply"),)
        return acks

    def _error(self, message: dict[str, Any]) -> Sequence[Control]:
        detail = str(message.get("message") or message.get("reason") or "error")[:200]
        self._expire()
        if not self._requests:
            self.untraced_errors += 1
            log.warning("coinbase error for no request waiting: %s", detail)
            return ()
        request = self._requests.popleft()
        acks: list[Control] = [Ack(t, ok=False, detail=why) for t, why in request.refused]
        if not request.topics:
            log.warning("coinbase refused the heartbeats subscription: %s", detail)
        acks.extend(Ack(t, ok=False, detail=detail, unsubscribe=request.unsubscribe)
                    for t in request.topics)
        return acks

    def _observe(self, seq: int) -> None:
        """Note ``seq``; a break from the last number waits in ``_breaks`` (see
        :meth:`sequence_of`)."""
        last = self._last_seq
        if seq == last:  # a control message classified as data: seen already
            return
        self._last_seq = seq
        if last is not None and seq != last + 1:
            breaks = self._breaks
            breaks.append((last, seq))
            if len(breaks) > _MAX_BREAKS:
                del breaks[0]

    def _report(self) -> None:
        breaks, self._breaks = self._breaks, []
        for last, seq in breaks:
            if seq <= last:
                self.regressions += 1
                log.warning("coinbase sequence_num went from %d to %d on one connection",
                            last, seq)
                continue
            gap = Gap(SEQUENCE_TOPIC, last + 1, seq - 1)
            self.gaps += 1
            self.missing += gap.size
            log.warning("coinbase sequence_num gap: %d message(s) missing (%d..%d)",
                        gap.size, gap.first_missing, gap.last_missing)
            if self._on_gap is not None:
                self._on_gap(gap)

    def sequence_of(self, message: Any) -> tuple[str, int] | None:
        """Check a data message's ``sequence_num`` against the connection's last one.

        Breaks found by :meth:`classify` in control messages are reported here too
        (with the next data message): only a client checking sequences calls this, so
        a pool, whose connections share the handler, never reports their interleaved
        numbers as gaps.

        Returns:
            None: the check is the handler's (gaps go to ``on_gap``), not the
            client's per-topic tracker.
        """
        seq = _field(message, "sequence_num")
        if isinstance(seq, int):
            self._observe(seq)
        if self._breaks:
            self._report()
        return None

    def topic_of(self, message: Any) -> str | None:
        """The topic of a data message (see :func:`topic_of`)."""
        return topic_of(message)
