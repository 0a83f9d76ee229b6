"""Bybit v5 public (and private) WebSocket streams: a handler for ``FeedClient`` and ``FeedPool``.

:class:`Bybit` speaks Bybit's v5 protocol (facts from ``venues.md`` §2: Bybit's
"Connect" page ``docs/v5/websocket/wss-authentication.mdx``, the orderbook and trade
pages, and ``bybit-exchange/pybit``)::

    -> {"req_id": "1", "op": "subscribe", "args": ["publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"]}
    <- {"success": true, "ret_msg": "subscribe", "conn_id": "...", "req_id": "1",
        "op": "subscribe"}                                       (spot: one per request)
    <- {"success": true, "ret_msg": "", "conn_id": "...", "req_id": "1", "op": "subscribe"}
                                                                 (linear, inverse)
    <- {"success": true, "conn_id": "...", "data": {"failTopics": [], "successTopics":
        ["orderbook.100.BTC-6JAN23-18000-C"]}, "type": "COMMAND_RESP"}  (option, spread)
    <- {"success": false, "ret_msg": "error:handler not found,topic:tickers.NOPE", ...}
    <- {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": ..., "data": [...]}
    -> {"op": "ping"}
    <- {"success": true, "ret_msg": "pong", "conn_id": "...", "op": "ping"}  (spot, linear)
    <- {"args": ["1672916271846"], "op": "pong"}                             (option, spread)

Topics are Bybit's own strings (``"publicTrade.BTCUSDT"``, ``"orderbook.50.BTCUSDT"``,
``"tickers.BTCUSDT"``; ``orderbook.1`` is the best bid and offer).

* **Products** (:class:`BybitProduct`): one endpoint each,
  ``wss://stream.bybit.com/v5/public/{spot,linear,inverse,option,spread}`` and
  ``/v5/private``. :class:`Bybit` is spot; :class:`BybitLinear`,
  :class:`BybitInverse` and :class:`BybitOption` select the others (or pass
  ``product=``); ``url=`` changes the host (testnet, regional hosts, a simulator).
* **Acks**: spot, linear, inverse and private replies answer a *request* (by
  ``req_id``, unique across every connection sharing the handler): a success
  confirms every topic of the request. Option and spread replies name their topics
  (``successTopics``/``failTopics``): one :class:`~defi_ws.handler.Ack` each.
* **Refusals** (``success: false``, reason in ``ret_msg``; the shape is pybit's and a
  third party's, no sample is in the docs): the topics of the request that
  ``ret_msg`` names are rejected. When it names none, every topic of the request is
  rejected. **UNCONFIRMED** whether Bybit subscribed the request's other topics:
  the *safe choice* is to leave them unanswered, so the ack timeout reconnects and
  the replay subscribes them again without the refused ones (never a topic
  believed live that is not).
* **Heartbeat**: ``{"op": "ping"}`` every 20 s (Bybit's recommendation) under the
  10-minute idle cut; the pong differs per product, so :func:`heartbeat_for` gives
  each product's :class:`~defi_ws.heartbeat.JsonPing` (pong recognised by its raw
  prefix: ``{"success":true,"ret_msg":"pong"`` on spot/linear/inverse,
  ``{"args":[`` on option/spread, ``{"req_id":"ping","op":"pong"`` on private,
  where the ping carries ``req_id: "ping"``). A pong that never comes is a
  ``PING_TIMEOUT``. **UNCONFIRMED**: the field order of the pongs on the wire (the
  docs' samples' order is assumed).
* **Limits** (:data:`LIMITS`): spot takes at most 10 args per subscribe; the
  ``args`` of one request may not exceed 21,000 characters (every request is split
  to stay under it, :func:`args_chars`); options allow 2,000 args per connection;
  at most 500 new connections per 5 minutes per domain. **UNCONFIRMED**, and the
  safe choice made: topics per connection on spot/linear/inverse/spread ("no args
  limit for now": 500 here); args per request on linear/inverse/option/spread (none
  documented: 200); the inbound message rate (none documented: 5/s with a burst
  of 10); what Bybit does over a limit; no forced disconnect or maximum connection
  age is documented (None: no notices, no rotation).
* **Sequences and dedup**: ``publicTrade`` ``seq`` is a cross sequence (not
  consecutive), and book ``u`` restarts at 1 after a service restart: no
  ``sequence_of`` gap checks here; a book's gaps are
  :class:`~defi_ws.books.BybitBook`'s business. A FeedPool recognises duplicates by a
  hash of the whole payload (:func:`dedup_key`): ``data`` alone repeats (a depth-1
  snapshot re-sent unchanged after 3 s, a ticker going back to a former price),
  the message's ``ts`` does not.
* **Auth** (``/v5/private``): ``{"op": "auth", "args": [api_key, expires_ms,
  signature]}``, ``signature = hex(HMAC-SHA256(secret, "GET/realtime" + expires))``.
  The credentials (:class:`BybitCredentials`) never appear in a repr, a log line or
  an error; a refused auth is ``AUTH_FAILED``, fatal.
* **Compression**: none documented (**UNCONFIRMED**): none asked for.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from defi_ws.handler import Ack, AuthReply, Control, DedupSpec, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, JsonPing
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "BASE_URL",
    "LIMITS",
    "MAX_ARGS_CHARS",
    "Bybit",
    "BybitCredentials",
    "BybitInverse",
    "BybitLinear",
    "BybitOption",
    "BybitProduct",
    "args_chars",
    "auth_message",
    "dedup_key",
    "heartbeat_for",
    "sign",
]

log = logging.getLogger("defi_ws.venues.bybit")

#: The v5 WebSocket base (add ``/public/<product>`` or ``/private``).
BASE_URL = "wss://stream.bybit.com/v5"
#: Most characters of one request's ``args`` array (every product).
MAX_ARGS_CHARS = 21_000

_MAX_REQUESTS = 4096  # requests awaiting a reply, across connections (oldest dropped)
_TOKENS = re.compile(r"[^\s,:;\[\]\"'()]+")


class BybitProduct(enum.Enum):
    """The v5 endpoints (``/v5/public/<value>``, ``/v5/private``)."""

    SPOT = "spot"
    LINEAR = "linear"
    INVERSE = "inverse"
    OPTION = "option"
    SPREAD = "spread"
    PRIVATE = "private"

    @property
    def path(self) -> str:
        """The endpoint's path under :data:`BASE_URL`."""
        return "/private" if self is BybitProduct.PRIVATE else f"/public/{self.value}"


_LINEAR_LIMITS = VenueLimits(topics_per_connection=500, messages_per_s=5.0, burst=10,
                             connections_per_window=(500, 300.0), max_connection_age_s=None)
#: Each product's limits as declared (see the module docstring for what is unconfirmed).
LIMITS: dict[BybitProduct, VenueLimits] = {
    BybitProduct.SPOT: _LINEAR_LIMITS,
    BybitProduct.LINEAR: _LINEAR_LIMITS,
    BybitProduct.INVERSE: _LINEAR_LIMITS,
    BybitProduct.OPTION: VenueLimits(topics_per_connection=2000, messages_per_s=5.0,
                                     burst=10, connections_per_window=(500, 300.0)),
    BybitProduct.SPREAD: _LINEAR_LIMITS,
    BybitProduct.PRIVATE: _LINEAR_LIMITS,
}
#: Args per subscribe request: spot's documented 10; the rest UNCONFIRMED (200).
MAX_ARGS: dict[BybitProduct, int] = {p: 10 if p is BybitProduct.SPOT else 200
                                     for p in BybitProduct}


def heartbeat_for(product: BybitProduct, interval_s: float = 20.0,
                  timeout_s: float = 10.0) -> JsonPing:
    """The ``{"op":"ping"}`` heartbeat of ``product``, with its pong's raw prefix.

    Args:
        product: the endpoint.
        interval_s: seconds between pings (Bybit recommends 20; the idle cut is 10 min).
        timeout_s: how long a pong may take.
    """
    if product in (BybitProduct.SPOT, BybitProduct.LINEAR, BybitProduct.INVERSE):
        return JsonPing({"op": "ping"}, pong_prefix=b'{"success":true,"ret_msg":"pong"',
                        interval_s=interval_s, timeout_s=timeout_s)
    if product is BybitProduct.PRIVATE:
        return JsonPing({"req_id": "ping", "op": "ping"},
                        pong_prefix=b'{"req_id":"ping","op":"pong"',
                        interval_s=interval_s, timeout_s=timeout_s)
    return JsonPing({"op": "ping"}, pong_prefix=b'{"args":[', interval_s=interval_s,
                    timeout_s=timeout_s)


def args_chars(topics: Sequence[str]) -> int:
    """The length of ``topics`` as a compact JSON ``args`` array (Bybit's 21,000 rule)."""
    return len(orjson.dumps(list(topics)))


def _split_by_chars(topics: Sequence[str], limit: int) -> list[list[str]]:
    """``topics`` in order, in pieces whose ``args`` array stays within ``limit``."""
    pieces: list[list[str]] = []
    current: list[str] = []
    size = 2  # "[]"
    for topic in topics:
        cost = len(orjson.dumps(topic)) + (1 if current else 0)
        if current and size + cost > limit:
            pieces.append(current)
            current, size = [], 2
            cost -= 1
        current.append(topic)
        size += cost
    if current:
        pieces.append(current)
    return pieces


def dedup_key(view: memoryview) -> Any:
    """The de-duplication key of one Bybit message: the hash of its whole payload.

    A ``DedupSpec.key_of`` hook (pooled connections only): redundant connections
    receive one event as the same bytes, while two events never share ``topic``,
    ``ts`` and ``data`` (``data`` alone does repeat, see the module docstring).
    """
    return hash(bytes(view))


#: A pool's de-duplication for Bybit streams (see :func:`dedup_key`).
DEDUP = DedupSpec(key_of=dedup_key)


@dataclass(frozen=True)
class BybitCredentials:
    """A Bybit API key, from the user. Nothing of it shows in a repr.

    Attributes:
        api_key: the key.
        secret: the secret the auth request is signed with.
    """

    api_key: str = field(repr=False)
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return "BybitCredentials(<hidden>)"


def sign(secret: str, expires_ms: int) -> str:
    """Bybit's auth signature: hex(HMAC-SHA256(secret, "GET/realtime" + expires))."""
    return hmac.new(secret.encode(), f"GET/realtime{expires_ms}".encode(),
                    hashlib.sha256).hexdigest()


def auth_message(credentials: BybitCredentials, expires_ms: int) -> dict[str, Any]:
    """The auth request for ``credentials``, valid until ``expires_ms`` (Unix ms)."""
    return {"req_id": "auth", "op": "auth",
            "args": [credentials.api_key, expires_ms, sign(credentials.secret, expires_ms)]}


@dataclass(eq=False)
class _Request:
    unsubscribe: bool
    topics: list[str]


class Bybit(VenueAdapter):
    """A Bybit v5 handler, spot by default (see the module docstring).

    Args:
        product: the endpoint (:class:`BybitProduct` or its value).
        url: the full endpoint URL (default: :data:`BASE_URL` + the product's path;
            a simulator's URL in tests).
        on_data: called with each decoded push (``{"topic", "type", "ts", "data"}``).
        credentials: authenticate on every connection (``PRIVATE`` needs it).
        decode: the decode function (default ``orjson.loads``; see
            :mod:`defi_ws.venues.bybit_types`).
        max_topics_per_message: args per subscribe request (default: 10 on spot,
            200 elsewhere); each request is also kept under :data:`MAX_ARGS_CHARS`.
        limits: overrides :data:`LIMITS` of the product.
        dedup: overrides the pool's de-duplication (:data:`DEDUP`); False for none.
        heartbeat: overrides :func:`heartbeat_for` of the product.
        auth_window_s: how far in the future the auth request's ``expires`` lies.
        clock: Unix seconds, for ``expires`` (tests).

    Raises:
        ConfigError: the URL is not a usable WebSocket URL.
        ValueError: an invalid ``max_topics_per_message``, or credentials missing
            for ``PRIVATE``.
    """

    venue = "bybit"
    default_product = BybitProduct.SPOT
    #: The main public endpoint of this class's default product.
    default_url: str = BASE_URL + BybitProduct.SPOT.path
    control_prefixes: tuple[bytes, ...] | None = (b'{"success"', b'{"op"', b'{"req_id"')
    limits: VenueLimits = LIMITS[BybitProduct.SPOT]
    heartbeat: HeartbeatStrategy = heartbeat_for(BybitProduct.SPOT)
    dedup: DedupSpec | None = DEDUP
    #: Trade ``seq`` is a cross sequence and book ``u`` restarts: no gap checks here.
    tracks_sequences = False

    def __init__(
        self,
        product: BybitProduct | str | None = None,
        *,
        url: str | None = None,
        on_data: Callable[[Any], object] | None = None,
        credentials: BybitCredentials | None = None,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int | None = None,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        heartbeat: HeartbeatStrategy | None = None,
        auth_window_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.product = BybitProduct(product if product is not None else self.default_product)
        if self.product is BybitProduct.PRIVATE and credentials is None:
            raise ValueError("the PRIVATE endpoint needs credentials")
        if max_topics_per_message is None:
            max_topics_per_message = MAX_ARGS[self.product]
        super().__init__(url or BASE_URL + self.product.path, on_data=on_data, decode=decode,
                         max_topics_per_message=max_topics_per_message,
                         limits=LIMITS[self.product] if limits is None else limits,
                         dedup=dedup)
        self._credentials = credentials
        self._auth_window_s = auth_window_s
        self._clock = clock
        self.heartbeat = (
            heartbeat_for(self.product) if heartbeat is None else heartbeat)
        self._next_id = 0
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        #: Refusals that matched no request (logged, otherwise ignored).
        self.untraced_errors = 0

    def _repr_details(self) -> str:
        return ", auth" if self._credentials is not None else ""

    # ------------------------------------------------------------ connection

    def auth_messages(self) -> Sequence[Any]:
        """The auth request when credentials were given."""
        if self._credentials is None:
            return ()
        expires_ms = int((self._clock() + self._auth_window_s) * 1000)
        return [auth_message(self._credentials, expires_ms)]

    def _request(self, op: str, topics: Sequence[str]) -> dict[str, Any]:
        self._next_id += 1
        req_id = str(self._next_id)
        self._requests[req_id] = _Request(op == "unsubscribe", list(topics))
        while len(self._requests) > _MAX_REQUESTS:
            self._requests.popitem(last=False)  # a dead connection's, long unanswered
        return {"req_id": req_id, "op": op, "args": list(topics)}

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """``subscribe`` requests with fresh ids, each under :data:`MAX_ARGS_CHARS`."""
        return [self._request("subscribe", piece)
                for piece in _split_by_chars(topics, MAX_ARGS_CHARS)]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """``unsubscribe`` requests with fresh ids, each under :data:`MAX_ARGS_CHARS`."""
        return [self._request("unsubscribe", piece)
                for piece in _split_by_chars(topics, MAX_ARGS_CHARS)]

    # ------------------------------------------------------------ inbound

    def classify(self, message: Any) -> Sequence[Control]:
        """Replies to requests become acks (per request, or per named topic)."""
        if type(message) is not dict or "success" not in message:
            return ()
        ok = message.get("success") is True
        detail = str(message.get("ret_msg", ""))
        op = message.get("op")
        if op == "auth":
            return [AuthReply(ok, "" if ok else detail)]
        if message.get("type") == "COMMAND_RESP":
            return self._named_replies(message)
        if op not in ("subscribe", "unsubscribe"):
            return ()
        req_id = message.get("req_id")
        request = self._requests.pop(req_id, None) if isinstance(req_id, str) else None
        if request is None:
            if not ok:
                self.untraced_errors += 1
                log.warning("bybit refusal for no known request (req_id %r): %s",
                            req_id, detail)
            return ()
        unsub = request.unsubscribe
        if ok:
            return [Ack(topic, unsubscribe=unsub) for topic in request.topics]
        tokens = set(_TOKENS.findall(detail))
        named = [topic for topic in request.topics if topic in tokens]
        return [Ack(topic, ok=False, detail=detail, unsubscribe=unsub)
                for topic in (named or request.topics)]

    def _named_replies(self, message: dict[str, Any]) -> list[Control]:
        """An option/spread ``COMMAND_RESP``: one ack per topic it names.

        The reply carries no ``req_id`` in the docs: it answers the oldest request
        holding the topics it names (whether it was an unsubscribe comes from there).
        """
        data = message.get("data")
        if type(data) is not dict:
            return []
        ok_topics = [str(t) for t in data.get("successTopics") or ()]
        failed = [str(t) for t in data.get("failTopics") or ()]
        named = set(ok_topics) | set(failed)
        req_id = message.get("req_id")
        if not (isinstance(req_id, str) and req_id in self._requests):
            req_id = next((rid for rid, request in self._requests.items()
                           if named & set(request.topics)), None)
        request = self._requests.get(req_id) if req_id is not None else None
        unsub = request.unsubscribe if request is not None else False
        if request is not None and req_id is not None:
            request.topics = [t for t in request.topics if t not in named]
            if not request.topics:
                del self._requests[req_id]
        why = str(message.get("ret_msg") or "refused")
        return [*(Ack(topic, unsubscribe=unsub) for topic in ok_topics),
                *(Ack(topic, ok=False, detail=why, unsubscribe=unsub) for topic in failed)]

    def topic_of(self, message: Any) -> str | None:
        """The topic of a push (its ``topic`` field)."""
        if type(message) is dict:
            topic = message.get("topic")
        else:
            topic = getattr(message, "topic", None)
        return topic if isinstance(topic, str) else None


class BybitLinear(Bybit):
    """Bybit v5 USDT/USDC perpetuals and futures (``/v5/public/linear``); see :class:`Bybit`."""

    venue = "bybit-linear"
    default_product = BybitProduct.LINEAR
    default_url: str = BASE_URL + BybitProduct.LINEAR.path


class BybitInverse(Bybit):
    """Bybit v5 inverse contracts (``/v5/public/inverse``); see :class:`Bybit`."""

    venue = "bybit-inverse"
    default_product = BybitProduct.INVERSE
    default_url: str = BASE_URL + BybitProduct.INVERSE.path


class BybitOption(Bybit):
    """Bybit v5 USDT/USDC options (``/v5/public/option``); see :class:`Bybit`."""

    venue = "bybit-option"
    default_product = BybitProduct.OPTION
    limits: VenueLimits = LIMITS[BybitProduct.OPTION]
    heartbeat: HeartbeatStrategy = heartbeat_for(BybitProduct.OPTION)
    default_url: str = BASE_URL + BybitProduct.OPTION.path
