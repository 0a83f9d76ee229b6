"""Binance spot and USD-M futures market streams: handlers for ``FeedClient`` and ``FeedPool``.

:class:`BinanceSpot` and :class:`BinanceUsdm` speak Binance's market-stream protocol
(facts from ``venues.md`` §1: Binance's ``web-socket-streams.md`` and the USD-M
"WebSocket Market Streams" pages)::

    -> {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@depth"], "id": 1}
    <- {"result": null, "id": 1}                              (one reply per request)
    <- {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 1}
    <- {"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": 12345, ...}}
    <- {"e": "serverShutdown", "E": 1700000000000}

Topics are Binance stream names (``"btcusdt@trade"``, ``"ethusdt@depth@100ms"``).

* **Endpoints**: combined streams by default (``/stream``: every message is
  ``{"stream": <name>, "data": <event>}``, so the stream is never ambiguous), raw with
  ``combined=False`` (``/ws``: bare events). Either way the handler reads both shapes
  (:func:`event_of`, :func:`stream_of`), so a handler pointed at the other kind of
  endpoint still sees every message. ``on_data`` gets each decoded message unchanged
  (no extra Python call per message); use :func:`event_of` to unwrap.
* **Acks**: a reply answers a *request*: each request gets an id unique across every
  connection sharing the handler (a pool), and ``{"result": null, "id": n}`` becomes
  one :class:`~defi_ws.handler.Ack` per topic of request ``n``; an error reply (the
  ``{"error": {"code", "msg"}, "id"}`` seen on the wire, or the bare
  ``{"code", "msg", "id"}`` of the docs) rejects every topic of its request (Binance
  refuses a request whole, so a malformed stream name is refused by the handler
  itself and never sent, :func:`stream_problem`, and a stream of a type the handler
  does not know travels in a request of its own, :func:`stream_known`). An error
  without an id can't be traced to a request and is only logged: the ack timeout
  then reconnects (*safe choice*).
* **Heartbeat**: Binance PINGs every 20 s (spot) / 3 min (USD-M) and wants the same
  payload back within 1 min / 10 min; picows answers PINGs by itself. The
  recommended ``heartbeat`` (``WsPing(30 s, 10 s)``, FeedClient's default with this
  handler) only detects a dead venue sooner and measures RTT.
* **Limits** (:class:`~defi_ws.handler.VenueLimits`, obeyed by FeedClient and FeedPool):
  1024 streams per connection; at most 300 new connections per 5 minutes per IP
  (spot; the USD-M rate is **UNCONFIRMED**, the spot one is assumed); connections
  are cut at 24 h (``serverShutdown`` comes first: a
  :class:`~defi_ws.handler.Notice`, so a pool rotates). Binance counts every inbound
  message (SUBSCRIBE, PING and PONG frames) against 5/s (spot) / 10/s (USD-M) and
  disconnects above it, so the outbound rate declared here leaves room for one PONG
  and one client PING in the same second: 2/s with a burst of 1 (spot), 6/s with a
  burst of 2 (USD-M).
* **UNCONFIRMED, and the safe choice made**: topics per SUBSCRIBE (none documented:
  200 here); USD-M streams per connection (1024 on the current page, 200 on older
  mirrors: 1024, a refusal is reported, never silent); whether ``/stream`` without
  ``?streams=`` is accepted (third-party clients do it); whether ``serverShutdown`` is
  wrapped on ``/stream`` (the bare shape is recognised; a wrapped one would be
  delivered as data and the pool would not rotate before the cut, only reconnect
  after it); where USD-M ``@trade`` is served (``/public``, as third parties report);
  the USD-M private URL (``/private/ws?listenKey=...``, as ccxt builds it).
* **USD-M endpoint split** (announced 2026-03-06; the legacy URLs are reported to
  connect but no longer push): ``@depth*``, ``@bookTicker`` and ``@trade`` streams are
  served on ``/public``, the rest (``@aggTrade``, ``@markPrice``, klines...) on
  ``/market``. A :class:`BinanceUsdm` serves one endpoint; a topic of the other one is
  refused by the handler itself (``on_subscription_rejected``), never silently dead.
  :func:`usdm_endpoint` says which endpoint a stream needs.
* **Sequences and dedup**: trade ids ``t`` and aggregate trade ids ``a`` are
  consecutive per symbol: ``sequence_of`` reports gaps on ``@trade`` and ``@aggTrade``
  streams (one Python call per message on a FeedClient; ``track_sequences=False``
  leaves the hot path to ``on_data`` alone; a FeedPool checks the merged stream
  instead). A pool's de-duplication needs a key per stream type (a kline's nested
  ``"t"`` is its start time, repeated by every update, so the id field can't be read
  blindly): :func:`dedup_key` gives ``(stream, t)`` and ``(stream, a)`` (exactly once,
  in order, gaps reported), exact keys for depth updates ``(U, u)`` and book tickers
  ``u``, and the payload's hash for the rest. It parses the message once in Python
  (about a microsecond) on pooled connections only; when every stream is a
  ``@trade`` stream, ``dedup=DedupSpec(id_field="t", topic_field="s")`` does it in C.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from defi_ws.handler import Ack, Control, DedupSpec, Notice, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, WsPing
from defi_ws.urls import check_url
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "SPOT_URL",
    "USDM_URL",
    "BinanceSpot",
    "BinanceUsdm",
    "UsdmEndpoint",
    "dedup_key",
    "event_of",
    "stream_known",
    "stream_of",
    "stream_problem",
    "usdm_endpoint",
]

log = logging.getLogger("defi_ws.venues.binance")

#: Spot market streams (``:443`` works too; ``wss://data-stream.binance.vision`` is
#: market data only).
SPOT_URL = "wss://stream.binance.com:9443"
#: USD-M futures streams (add ``/public``, ``/market`` or ``/private``).
USDM_URL = "wss://fstream.binance.com"

#: Spot: 5 inbound messages/s, PING and PONG frames included; 300 connections per
#: 5 minutes per IP; 1024 streams per connection; cut at 24 h.
SPOT_LIMITS = VenueLimits(topics_per_connection=1024, messages_per_s=2.0, burst=1,
                          connections_per_window=(300, 300.0),
                          max_connection_age_s=24 * 3600.0)
#: USD-M: 10 inbound messages/s; the connection rate is UNCONFIRMED (spot's assumed).
USDM_LIMITS = VenueLimits(topics_per_connection=1024, messages_per_s=6.0, burst=2,
                          connections_per_window=(300, 300.0),
                          max_connection_age_s=24 * 3600.0)

_MAX_REQUESTS = 4096  # requests awaiting a reply, across connections (oldest dropped)

#: Stream types of the spot and USD-M docs (a stream is ``<symbol>@<type>[@<speed>]``,
#: or an all-market ``!<type>...``); a type starting with one of these is accepted.
KNOWN_STREAM_TYPES: tuple[str, ...] = (
    "trade", "aggTrade", "kline_", "continuousKline_", "indexPriceKline_",
    "markPriceKline_", "miniTicker", "ticker", "bookTicker", "avgPrice", "depth",
    "markPrice", "forceOrder", "compositeIndex", "contractInfo", "assetIndex")
_SYMBOL = re.compile(r"[a-z0-9_]+")
_TYPES = re.compile(r"[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)*")


def stream_problem(stream: str) -> str | None:
    """Why ``stream`` is not a Binance stream name (None when it looks like one).

    Binance refuses a whole SUBSCRIBE when one of its streams is invalid, so the
    handlers refuse malformed names themselves instead of sending them: a stream is
    ``<symbol>@<type>[@<option>...]`` (symbols in lowercase) or an all-market
    ``!<type>[@<option>...]``. A well-formed stream of a type not in
    :data:`KNOWN_STREAM_TYPES` is no problem here (see :func:`stream_known`).
    """
    if stream.startswith("!"):
        rest = stream[1:]
        if not _TYPES.fullmatch(rest):
            return f"{stream!r} is not a Binance stream name !<type>[@<option>]"
    else:
        symbol, at, rest = stream.partition("@")
        if not (at and _SYMBOL.fullmatch(symbol) and _TYPES.fullmatch(rest)):
            hint = ""
            if at and symbol != symbol.lower() and _SYMBOL.fullmatch(symbol.lower()):
                hint = f" (symbols are lowercase: {symbol.lower() + at + rest!r})"
            return f"{stream!r} is not a Binance stream name <symbol>@<type>{hint}"
    return None


def stream_known(stream: str) -> bool:
    """Whether ``stream``'s type is one of :data:`KNOWN_STREAM_TYPES`.

    The handlers send a stream of another type in a SUBSCRIBE of its own: if Binance
    refuses it, it takes no other stream down with it.
    """
    kind = stream.lstrip("!").partition("@")[2 if not stream.startswith("!") else 0]
    return kind.partition("@")[0].startswith(KNOWN_STREAM_TYPES)


class UsdmEndpoint(enum.Enum):
    """The USD-M endpoints of the 2026 split."""

    #: ``@depth*``, ``@bookTicker``, ``@trade``.
    PUBLIC = "public"
    #: ``@aggTrade``, ``@markPrice``, klines, tickers and the rest.
    MARKET = "market"
    #: user data (a listenKey).
    PRIVATE = "private"


def usdm_endpoint(stream: str) -> UsdmEndpoint:
    """The USD-M endpoint that serves ``stream`` (``"btcusdt@depth@100ms"`` -> PUBLIC)."""
    kind = stream.partition("@")[2]
    if kind.startswith(("depth", "bookTicker", "trade")):
        return UsdmEndpoint.PUBLIC
    return UsdmEndpoint.MARKET


def event_of(message: Any) -> Any:
    """The event of a message: the ``data`` of a combined-stream envelope, else itself."""
    if type(message) is dict:
        data = message.get("data")
        return message if data is None else data
    data = getattr(message, "data", None)  # a typed Combined envelope
    return message if data is None else data


_DERIVED = {"trade": "@trade", "aggTrade": "@aggTrade", "bookTicker": "@bookTicker"}


def stream_of(message: Any) -> str | None:
    """The stream a decoded message belongs to, if it can be told.

    A combined-stream envelope names it; a raw ``trade``, ``aggTrade`` or book ticker
    event is derived from its symbol (a raw depth update can't be told apart from
    its ``@100ms`` twin: None).
    """
    if type(message) is not dict:
        stream = getattr(message, "stream", None)
        return stream if isinstance(stream, str) else None
    stream = message.get("stream")
    if isinstance(stream, str):
        return stream
    symbol = message.get("s")
    if not isinstance(symbol, str):
        return None
    event = message.get("e")
    if event is None and "u" in message and "b" in message:
        event = "bookTicker"  # spot book tickers carry no event type
    suffix = _DERIVED.get(event) if isinstance(event, str) else None
    return None if suffix is None else symbol.lower() + suffix


def _sequence(message: Any) -> tuple[str, int] | None:
    if type(message) is not dict:
        method = getattr(message, "stream_seq", None)  # typed (binance_types)
        return method() if callable(method) else None
    data = message.get("data")
    event = message if data is None else data
    if type(event) is not dict:
        return None
    kind = event.get("e")
    if kind == "trade":
        ident, suffix = event.get("t"), "@trade"
    elif kind == "aggTrade":
        ident, suffix = event.get("a"), "@aggTrade"
    else:
        return None
    if not isinstance(ident, int):
        return None
    stream = message.get("stream") if data is not None else None
    if not isinstance(stream, str):
        symbol = event.get("s")
        if not isinstance(symbol, str):
            return None
        stream = symbol.lower() + suffix
    return (stream, ident)


def dedup_key(view: memoryview) -> Any:
    """The de-duplication key of one Binance message (a ``DedupSpec.key_of`` hook).

    ``(stream, t)`` for trades and ``(stream, a)`` for aggregate trades (id keys:
    exactly once, in order, gaps reported); ``("depth", stream, U, u)`` for depth
    updates and ``("bookTicker", stream, u)`` for book tickers (exact keys: their ids
    are not consecutive); the hash of the payload for anything else (klines,
    tickers: their ids repeat across updates).
    """
    try:
        message = orjson.loads(view)
    except orjson.JSONDecodeError:
        return None
    numbered = _sequence(message)
    if numbered is not None:
        return numbered
    event = event_of(message)
    if type(event) is dict:
        stream = stream_of(message) or str(event.get("s"))
        if event.get("e") == "depthUpdate":
            return ("depth", stream, event.get("U"), event.get("u"))
        if "u" in event and "b" in event and "a" in event and "B" in event:
            return ("bookTicker", stream, event.get("u"))
    return hash(bytes(view))


#: A pool's de-duplication for Binance streams (see :func:`dedup_key`).
DEDUP = DedupSpec(key_of=dedup_key)


@dataclass(eq=False)
class _Request:
    unsubscribe: bool
    topics: list[str]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (topic, why)


class _Binance(VenueAdapter):
    """What spot and USD-M share; use :class:`BinanceSpot` or :class:`BinanceUsdm`."""

    control_prefixes: tuple[bytes, ...] | None = (
        b'{"result"', b'{"error"', b'{"code"', b'{"id"', b'{"e":"serverShutdown"')
    #: The recommended heartbeat: Binance PINGs us; ours only notices a dead venue
    #: sooner (every PING counts against the inbound rate, hence the long interval).
    heartbeat: HeartbeatStrategy = WsPing(interval_s=30.0, timeout_s=10.0)
    limits: VenueLimits = SPOT_LIMITS
    dedup: DedupSpec | None = DEDUP

    def __init__(
        self,
        url: str,
        *,
        on_data: Callable[[Any], object] | None,
        decode: Callable[[memoryview], Any] | None,
        max_topics_per_message: int,
        limits: VenueLimits | None,
        dedup: DedupSpec | bool | None,
        track_sequences: bool,
        validate_streams: bool,
    ) -> None:
        super().__init__(url, on_data=on_data, decode=decode,
                         max_topics_per_message=max_topics_per_message, limits=limits,
                         dedup=dedup)
        self._validate = validate_streams
        self.tracks_sequences = track_sequences
        self._next_id = 0
        self._requests: OrderedDict[int, _Request] = OrderedDict()
        #: Error replies that named no request (logged, otherwise ignored).
        self.untraced_errors = 0

    # ------------------------------------------------------------ connection

    def _misplaced(self, topic: str) -> str | None:
        """Why this handler won't send ``topic`` (None: it will)."""
        return stream_problem(topic) if self._validate else None

    def _request(self, method: str, topics: Sequence[str]) -> dict[str, Any]:
        """One request for ``topics`` (those refused here are answered with its reply)."""
        self._next_id += 1
        req_id = self._next_id
        request = _Request(method == "UNSUBSCRIBE", [])
        for topic in topics:
            why = None if request.unsubscribe else self._misplaced(topic)
            if why is None:
                request.topics.append(topic)
            else:
                request.refused.append((topic, why))
        self._requests[req_id] = request
        while len(self._requests) > _MAX_REQUESTS:
            self._requests.popitem(last=False)  # a dead connection's, long unanswered
        if not request.topics:  # all refused here: a harmless request to hang them on
            return {"method": "LIST_SUBSCRIPTIONS", "id": req_id}
        return {"method": method, "params": request.topics, "id": req_id}

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``SUBSCRIBE`` with a fresh id; streams of an unknown type get their own."""
        if not self._validate:
            return [self._request("SUBSCRIBE", topics)]
        usual = [t for t in topics if stream_known(t) or stream_problem(t) is not None]
        messages = [self._request("SUBSCRIBE", usual)] if usual else []
        messages.extend(self._request("SUBSCRIBE", [t]) for t in topics if t not in usual)
        return messages

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``UNSUBSCRIBE`` with a fresh id."""
        return [self._request("UNSUBSCRIBE", topics)]

    # ------------------------------------------------------------ inbound

    def classify(self, message: Any) -> Sequence[Control]:
        """Replies to requests become acks; ``serverShutdown`` becomes a Notice."""
        if type(message) is not dict:
            return ()
        if message.get("e") == "serverShutdown":
            return (Notice(None, "serverShutdown"),)
        if "result" not in message and "error" not in message and "code" not in message:
            return ()
        req_id = message.get("id")
        request = self._requests.pop(req_id, None) if isinstance(req_id, int) else None
        error = message.get("error")
        if error is None and "code" in message:
            error = message  # the docs' bare {"code", "msg"} shape
        if request is None:
            if error is not None:
                self.untraced_errors += 1
                log.warning("binance error reply for no known request (id %r): %s",
                            req_id, _describe(error))
            return ()
        unsub = request.unsubscribe
        acks = [Ack(topic, ok=False, detail=why, unsubscribe=unsub)
                for topic, why in request.refused]
        if error is None:
            acks.extend(Ack(topic, unsubscribe=unsub) for topic in request.topics)
        else:
            detail = _describe(error)
            acks.extend(Ack(topic, ok=False, detail=detail, unsubscribe=unsub)
                        for topic in request.topics)
        return acks

    def topic_of(self, message: Any) -> str | None:
        """The stream of a data message (see :func:`stream_of`)."""
        return stream_of(message)

    def sequence_of(self, message: Any) -> tuple[str, int] | None:
        """``(stream, t)`` of a trade, ``(stream, a)`` of an aggregate trade."""
        return _sequence(message)


def _describe(error: Any) -> str:
    if isinstance(error, dict):
        return f"code {error.get('code')}: {error.get('msg')}"
    return str(error)


class BinanceSpot(_Binance):
    """Binance spot market streams (see the module docstring).

    Args:
        url: the endpoint (default: ``wss://stream.binance.com:9443/stream``, or
            ``/ws`` with ``combined=False``); a simulator's URL in tests.
        on_data: called with each decoded data message (an envelope on ``/stream``).
        combined: the default URL's kind: ``/stream`` (True) or ``/ws``.
        decode: the decode function (default ``orjson.loads``); e.g.
            :func:`defi_ws.venues.binance_types.event_decoder`.
        max_topics_per_message: streams per SUBSCRIBE (UNCONFIRMED limit: 200).
        limits: overrides :data:`SPOT_LIMITS`.
        dedup: overrides the pool's de-duplication (:data:`DEDUP`); False for none.
        track_sequences: report gaps in trade and aggregate trade ids.
        validate_streams: refuse malformed stream names here (see
            :func:`stream_problem`) instead of sending them, and send streams of a
            type not in :data:`KNOWN_STREAM_TYPES` in a SUBSCRIBE of their own:
            Binance refuses a SUBSCRIBE whole, well-formed streams included.

    Raises:
        ConfigError: ``url`` is not a usable WebSocket URL.
    """

    venue = "binance"
    #: The endpoint used when no ``url`` is given (combined streams).
    default_url: str = SPOT_URL + "/stream"
    limits: VenueLimits = SPOT_LIMITS

    def __init__(
        self,
        url: str | None = None,
        *,
        on_data: Callable[[Any], object] | None = None,
        combined: bool = True,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int = 200,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        track_sequences: bool = True,
        validate_streams: bool = True,
    ) -> None:
        if url is None:
            url = SPOT_URL + ("/stream" if combined else "/ws")
        super().__init__(url, on_data=on_data,
                         decode=decode, max_topics_per_message=max_topics_per_message,
                         limits=limits, dedup=dedup, track_sequences=track_sequences,
                         validate_streams=validate_streams)


class BinanceUsdm(_Binance):
    """Binance USD-M futures market streams on one endpoint of the 2026 split.

    Args:
        endpoint: which endpoint this handler serves (``UsdmEndpoint`` or its value);
            topics of another endpoint are refused (see :func:`usdm_endpoint`).
        url: the base URL (default ``wss://fstream.binance.com``; a simulator's in
            tests); the endpoint path is appended.
        on_data: called with each decoded data message (an envelope on ``/stream``).
        combined: ``/stream`` (True) or ``/ws``.
        listen_key: for ``PRIVATE``: returns the current listenKey (from the REST API,
            the user's business); called for every connection attempt. The URL
            (``/private/ws?listenKey=...``, UNCONFIRMED form) is never logged with
            its query string.
        decode, max_topics_per_message, limits, dedup, track_sequences,
            validate_streams: as for :class:`BinanceSpot` (limits default to
            :data:`USDM_LIMITS`).

    Raises:
        ConfigError: the URL is not a usable WebSocket URL.
        ValueError: ``listen_key`` missing for ``PRIVATE`` or given for another one.
    """

    venue = "binance-usdm"
    #: The endpoint used when no ``url`` is given, for the default ``MARKET`` endpoint
    #: (``/public/stream`` for depth, book ticker and trade streams: ``adapter_for``
    #: picks it from the topics).
    default_url: str = USDM_URL + "/market/stream"
    limits: VenueLimits = USDM_LIMITS

    def __init__(
        self,
        endpoint: UsdmEndpoint | str = UsdmEndpoint.MARKET,
        *,
        url: str | None = None,
        on_data: Callable[[Any], object] | None = None,
        combined: bool = True,
        listen_key: Callable[[], str] | None = None,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int = 200,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        track_sequences: bool = True,
        validate_streams: bool = True,
    ) -> None:
        self.endpoint = UsdmEndpoint(endpoint)
        private = self.endpoint is UsdmEndpoint.PRIVATE
        if private != (listen_key is not None):
            raise ValueError("listen_key is needed for, and only for, the PRIVATE endpoint")
        base = check_url(url or USDM_URL, what="BinanceUsdm url").rstrip("/")
        path = "ws" if private or not combined else "stream"
        self._listen_key = listen_key
        super().__init__(f"{base}/{self.endpoint.value}/{path}", on_data=on_data,
                         decode=decode, max_topics_per_message=max_topics_per_message,
                         limits=limits, dedup=dedup, track_sequences=track_sequences,
                         validate_streams=validate_streams)

    def url(self, attempt: int) -> str:
        """The endpoint URL (with the current listenKey for ``PRIVATE``)."""
        if self._listen_key is None:
            return self._url
        return f"{self._url}?listenKey={self._listen_key()}"

    def _misplaced(self, topic: str) -> str | None:
        if self.endpoint is UsdmEndpoint.PRIVATE:
            return "user data streams take no market-stream subscriptions"
        problem = super()._misplaced(topic)
        if problem is not None:
            return problem
        needed = usdm_endpoint(topic)
        if needed is self.endpoint:
            return None
        return (f"{topic} is served on /{needed.value}, not /{self.endpoint.value} "
                "(USD-M endpoint split): use BinanceUsdm(endpoint="
                f"{needed.value!r}) for it")
