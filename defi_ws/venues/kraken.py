"""Kraken spot WebSocket v2 (public market data): a handler for ``FeedClient`` and ``FeedPool``.

:class:`Kraken` speaks Kraken's v2 protocol (facts from ``venues.md`` §5: Kraken's v2
API reference, https://docs.kraken.com/api/docs/websocket-v2/book, ``.../trade``,
``.../ticker``, ``.../status``, ``.../heartbeat``, ``.../ping``)::

    -> {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD",
        "ETH/USD"], "depth": 10}, "req_id": 7}
    <- {"method": "subscribe", "req_id": 7, "result": {"channel": "book", "depth": 10,
        "snapshot": true, "symbol": "BTC/USD"}, "success": true, "time_in": "...",
        "time_out": "..."}                                   (one ack per symbol)
    <- {"error": "Currency pair not supported ETH/XYZ", "method": "subscribe",
        "req_id": 7, "success": false, "symbol": "ETH/XYZ", ...}
    <- {"channel": "book", "type": "snapshot", "data": [{"symbol": "BTC/USD",
        "bids": [{"price": 0.5666, "qty": 4831.75496356}, ...], "asks": [...],
        "checksum": 2439117997}]}
    -> {"method": "ping", "req_id": 8}      <- {"method": "pong", "req_id": 8, ...}
    <- {"channel": "status", "type": "update", "data": [{"system": "online", ...}]}
    <- {"channel": "heartbeat"}

Topics are ``"<channel>:<symbol>"`` (``"trade:BTC/USD"``, ``"ticker:ETH/USD"``,
``"book:BTC/USD"``) with the book depth as an option: ``"book:BTC/USD:25"``
(:func:`to_params`, :func:`normalise_topic`; depth 10, Kraken's default, is the bare
form). One subscribe request carries one channel (and depth) and many symbols, so
topics are grouped by channel into requests.

* **Acks**: one reply per symbol. Each request gets a ``req_id`` unique across every
  connection sharing the handler (a pool); a reply is traced to its request's topic
  by ``req_id`` and ``symbol`` (a rejection names the symbol but not the channel). A
  rejection without a symbol (a malformed request) rejects every topic of its request
  not yet answered. A reply that names no known request is counted
  (``untraced_errors`` for failures) and delivered as data.
* **Heartbeat**: ``JsonPing({"method": "ping"}, b'{"method":"pong"', 15 s, 10 s)``
  (FeedClient's default with this handler): a pong that never comes is a
  ``PING_TIMEOUT``. Kraken's own ``{"channel": "heartbeat"}`` (about once a second on
  a quiet subscribed connection) is a :class:`~defi_ws.handler.VenueHeartbeat`: not
  data, never delivered, and it does not keep ``stale_after_s`` fresh (a connection
  that gets heartbeats but no data goes STALE). The ``status`` message (on connect
  and on engine status changes) is data for the user, with no topic (``topic_of`` is
  None, so per-topic stale windows ignore it).
* **Books**: ``book`` pushes a snapshot after each subscribe ack, then updates, each
  with a CRC32 ``checksum`` of the top 10 levels and no sequence number. Keep one
  :class:`~defi_ws.books.KrakenBook` per symbol; on a checksum mismatch it asks for
  RESUBSCRIBE: unsubscribe the topic, then subscribe it again once the unsubscribe
  has left (Kraken answers a second subscribe of a live one with "Already
  subscribed"). Prices are JSON numbers: decode with
  :func:`~defi_ws.venues.kraken_types.exact_decoder` or give the book the
  instrument's precisions.
* **Trades**: subscribed with ``snapshot: false`` by default (``trade_snapshot=True``
  for Kraken's default of the last 50 trades): a snapshot repeats trades already
  delivered after every reconnect, and on every redundant connection of a pool.
* **Dedup**: a FeedPool recognises duplicates by a hash of the raw ``data`` array
  (identical on every connection for one event). Order is not restored and gaps are
  not reported by the pool: ``tracks_sequences`` is False (see below).
* **Disconnects**: Kraken (behind Cloudflare) may drop a connection without warning
  (close 1006); there is no advance notice, so a pool cannot rotate ahead of it:
  ``redundancy=2`` is the way to lose nothing across such a drop.

**UNCONFIRMED, and the safe choice made**:

* symbols per request and topics per connection (none documented): 50 symbols per
  request, 100 topics per connection (``limits=`` / ``max_topics_per_message=`` to
  change them);
* the message rate (documented as dynamic; over it Kraken answers
  ``{"Error": "Exceeded msg rate"}``, a third-party report): 1 message/s with a burst
  of 5 (pings included), and the error is logged and counted (``rate_errors``);
* the connection-attempt rate (recalled as about 150 per 10 minutes per IP, no
  source): declared as 150 per 600 s;
* the server's idle timeout (none documented; v1 announced 60 s for a connection
  without subscription): our ping every 15 s keeps any such timer fed;
* whether ``trade_id`` is consecutive per symbol (the docs say "a sequence number,
  unique per book"): no gap detection on trade ids (``tracks_sequences`` False), so
  no false gap is ever reported;
* compression: none requested;
* no maximum connection age is documented (None).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from defi_ws.handler import Ack, Control, DedupSpec, VenueHeartbeat, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, JsonPing
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "BOOK_DEPTHS",
    "DEFAULT_BOOK_DEPTH",
    "LIMITS",
    "URL",
    "Kraken",
    "normalise_topic",
    "to_params",
    "to_topic",
    "topic_problem",
]

log = logging.getLogger("defi_ws.venues.kraken")

#: The public v2 endpoint (``wss://ws-auth.kraken.com/v2`` is the private one;
#: ``wss://beta-ws.kraken.com/v2`` the beta).
URL = "wss://ws.kraken.com/v2"
#: Kraken's limits as declared (see the module docstring: all UNCONFIRMED choices).
LIMITS = VenueLimits(topics_per_connection=100, messages_per_s=1.0, burst=5,
                     connections_per_window=(150, 600.0), max_connection_age_s=None)
#: Depths the ``book`` channel offers.
BOOK_DEPTHS = frozenset({10, 25, 100, 500, 1000})
#: The depth Kraken uses when a book subscribe names none.
DEFAULT_BOOK_DEPTH = 10

_MAX_REQUESTS = 4096  # requests awaiting replies, across connections (oldest dropped)
_SYMBOL = re.compile(r"[A-Za-z0-9.]+/[A-Za-z0-9.]+")
_CHANNEL = re.compile(r"[a-z_0-9]+")


def to_params(topic: str) -> tuple[str, str, int | None]:
    """``(channel, symbol, depth)`` of a topic (``"book:BTC/USD:25"`` -> book, BTC/USD, 25).

    The depth is None when the topic names none (and for channels other than
    ``book``); a depth that is not a number is -1 (refused, see :func:`topic_problem`).
    """
    channel, _, rest = topic.partition(":")
    symbol, _, option = rest.partition(":")
    depth: int | None = None
    if option:
        depth = int(option) if option.isdigit() else -1
    return channel, symbol, depth


def to_topic(channel: str, symbol: str, depth: int | None = None) -> str:
    """The topic of a subscription (the inverse of :func:`to_params`).

    The default book depth (10) gives the bare form: ``to_topic("book", "BTC/USD", 10)``
    is ``"book:BTC/USD"``.
    """
    if channel == "book" and depth is not None and depth != DEFAULT_BOOK_DEPTH:
        return f"{channel}:{symbol}:{depth}"
    return f"{channel}:{symbol}"


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not a Kraken v2 topic (None when it looks like one)."""
    channel, symbol, depth = to_params(topic)
    if not _CHANNEL.fullmatch(channel) or not _SYMBOL.fullmatch(symbol):
        return f"{topic!r} is not a Kraken topic <channel>:<BASE/QUOTE>[:<depth>]"
    if depth is not None and (channel != "book" or depth not in BOOK_DEPTHS):
        return (f"{topic!r}: only book topics take a depth, one of "
                f"{sorted(BOOK_DEPTHS)}")
    return None


def normalise_topic(topic: str) -> str:
    """The canonical spelling of a topic: lowercase channel, uppercase symbol, the
    default book depth left out (``"Book:btc/usd:10"`` -> ``"book:BTC/USD"``); a
    malformed topic is returned as it is (stripped)."""
    stripped = topic.strip()
    channel, _, rest = stripped.partition(":")
    symbol, sep, option = rest.partition(":")
    cased = f"{channel.lower()}:{symbol.upper()}{sep}{option}"
    if topic_problem(cased) is not None:
        return stripped
    return to_topic(*to_params(cased))


@dataclass(eq=False)
class _Request:
    unsubscribe: bool
    channel: str
    #: symbol -> topic, for the topics not answered yet
    pending: dict[str, str] = field(default_factory=dict)


class Kraken(VenueAdapter):
    """A Kraken spot v2 public market-data handler (see the module docstring).

    Args:
        url: the endpoint (default :data:`URL`; a simulator's URL in tests).
        on_data: called with each decoded data message (pushes, ``status`` and
            ``heartbeat``).
        decode: the decode function (default ``orjson.loads``; see
            :mod:`defi_ws.venues.kraken_types`).
        max_topics_per_message: symbols per subscribe request (UNCONFIRMED: 50).
        limits: overrides :data:`LIMITS`.
        dedup: overrides the pool's de-duplication (a hash of ``data``); False for
            none.
        trade_snapshot: ask for the last trades when subscribing ``trade`` (False).

    Attributes:
        untraced_errors: failure replies that named no known request.
        rate_errors: ``Exceeded msg rate`` errors received.

    Raises:
        ConfigError: the URL is not a usable WebSocket URL.
        ValueError: ``max_topics_per_message`` is not an int >= 1.
    """

    venue = "kraken"
    #: The main public endpoint (listed by ``defi-ws venues``).
    default_url: str = URL
    #: Replies start with ``{"method"`` (acks, sorted keys) or ``{"error"`` (failures,
    #: sorted keys); ``{"Error"`` is the rate-limit error; the venue's heartbeat is
    #: ``{"channel":"heartbeat"}``. Pushes and ``status`` start with another
    #: ``{"channel"``.
    control_prefixes: tuple[bytes, ...] | None = (
        b'{"method"', b'{"error"', b'{"Error"', b'{"channel":"heartbeat"')
    heartbeat: HeartbeatStrategy = JsonPing({"method": "ping"}, pong_prefix=b'{"method":"pong"',
                                            interval_s=15.0, timeout_s=10.0)
    limits: VenueLimits = LIMITS
    dedup: DedupSpec | None = DedupSpec(hash_field="data")
    #: Trade ids are not known to be consecutive; books have no sequence.
    tracks_sequences = False

    def __init__(
        self,
        url: str | None = None,
        *,
        on_data: Callable[[Any], object] | None = None,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int = 50,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        trade_snapshot: bool = False,
    ) -> None:
        super().__init__(url or URL, on_data=on_data, decode=decode,
                         max_topics_per_message=max_topics_per_message, limits=limits,
                         dedup=dedup)
        self.trade_snapshot = trade_snapshot
        self._next_id = 0
        self._requests: OrderedDict[int, _Request] = OrderedDict()
        #: (channel, symbol) -> the topic acknowledged for it (its depth included)
        self._topics: dict[tuple[str, str], str] = {}
        self.untraced_errors = 0
        self.rate_errors = 0

    # ------------------------------------------------------------ connection

    def _request(self, method: str, group: tuple[str, int | None],
                 topics: Sequence[str]) -> dict[str, Any]:
        channel, depth = group
        self._next_id += 1
        req_id = self._next_id
        request = _Request(method == "unsubscribe", channel)
        symbols: list[str] = []
        for topic in topics:
            symbol = to_params(topic)[1]
            request.pending[symbol] = topic
            symbols.append(symbol)
        self._requests[req_id] = request
        while len(self._requests) > _MAX_REQUESTS:
            self._requests.popitem(last=False)  # a dead connection's, long unanswered
        params: dict[str, Any] = {"channel": channel, "symbol": symbols}
        if depth is not None:
            params["depth"] = depth
        if channel == "trade" and method == "subscribe":
            params["snapshot"] = self.trade_snapshot
        return {"method": method, "params": params, "req_id": req_id}

    def _messages(self, method: str, topics: Sequence[str]) -> list[dict[str, Any]]:
        """One request per (channel, depth); a malformed topic travels alone, so that
        its refusal takes no other topic with it."""
        groups: dict[tuple[str, int | None], list[str]] = {}
        alone: list[tuple[tuple[str, int | None], str]] = []
        for topic in topics:
            channel, _, depth = to_params(topic)
            key = (channel, depth)
            if topic_problem(topic) is None:
                groups.setdefault(key, []).append(topic)
            else:
                alone.append((key, topic))
        messages = [self._request(method, key, group) for key, group in groups.items()]
        messages.extend(self._request(method, key, [topic]) for key, topic in alone)
        return messages

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """Subscribe requests with fresh ids, one per channel (and book depth)."""
        return self._messages("subscribe", topics)

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """Unsubscribe requests with fresh ids, one per channel (and book depth)."""
        return self._messages("unsubscribe", topics)

    # ------------------------------------------------------------ inbound

    def classify(self, message: Any) -> Sequence[Control]:
        """Per-symbol replies become acks; a rate-limit error is counted and logged."""
        if type(message) is not dict:
            return ()
        if message.get("channel") == "heartbeat":
            return (VenueHeartbeat("kraken heartbeat"),)
        method = message.get("method")
        if method not in ("subscribe", "unsubscribe"):
            if "Error" in message or "error" in message:
                self._untraced(message)
            return ()
        unsubscribe = method == "unsubscribe"
        req_id = message.get("req_id")
        if not isinstance(req_id, int):
            req_id = -1
        request = self._requests.get(req_id)
        result = message.get("result")
        symbol = result.get("symbol") if isinstance(result, dict) else message.get("symbol")
        ok = message.get("success") is True
        pending = request.pending if (
            request is not None and request.unsubscribe == unsubscribe) else {}
        detail = "" if ok else str(message.get("error") or "refused")
        if isinstance(symbol, str) and symbol in pending:
            topics = [pending.pop(symbol)]
        elif not ok and symbol is None and pending:  # a refusal of the whole request
            topics = list(pending.values())
            pending.clear()
        elif ok:  # not ours (another handler's, evicted, or answered twice)
            return self._stray_ack(result, symbol, unsubscribe)
        else:
            self._untraced(message)
            return ()
        if request is not None and not request.pending:
            del self._requests[req_id]
        for topic in topics:
            channel, sym, _ = to_params(topic)
            if ok and not unsubscribe:
                self._topics[(channel, sym)] = topic
            elif ok:
                self._topics.pop((channel, sym), None)
        return [Ack(topic, ok=ok, detail=detail, unsubscribe=unsubscribe) for topic in topics]

    @staticmethod
    def _stray_ack(result: Any, symbol: Any, unsubscribe: bool) -> list[Control]:
        """An Ack built from a success reply of no pending request (the client counts
        it as unknown when no topic of it awaits an ack)."""
        if not (isinstance(result, dict) and isinstance(result.get("channel"), str)
                and isinstance(symbol, str)):
            return []
        depth = result.get("depth")
        topic = to_topic(result["channel"], symbol, depth if isinstance(depth, int) else None)
        return [Ack(topic, unsubscribe=unsubscribe)]

    def _untraced(self, message: dict[str, Any]) -> None:
        text = message.get("Error") or message.get("error")
        if isinstance(text, str) and "rate" in text.lower():
            self.rate_errors += 1
            log.warning("kraken: %s (the message rate is above Kraken's dynamic limit)",
                        text[:200])
            return
        self.untraced_errors += 1
        log.warning("kraken error for no known request (req_id %r): %s",
                    message.get("req_id"), str(text)[:200])

    def topic_of(self, message: Any) -> str | None:
        """The topic of a push (its channel and first symbol); None for ``status``,
        ``heartbeat`` and anything without a symbol."""
        if type(message) is dict:
            channel = message.get("channel")
            data = message.get("data")
            if not (isinstance(data, list) and data and type(data[0]) is dict):
                return None
            symbol = data[0].get("symbol")
        else:
            channel = getattr(message, "channel", None)
            data = getattr(message, "data", None)
            if not data:
                return None
            symbol = getattr(data[0], "symbol", None)
        if not (isinstance(channel, str) and isinstance(symbol, str)):
            return None
        return self._topics.get((channel, symbol)) or to_topic(channel, symbol)
