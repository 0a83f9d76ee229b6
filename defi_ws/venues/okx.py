"""OKX v5 WebSocket channels: a handler for ``FeedClient`` and ``FeedPool``.

:class:`Okx` speaks OKX's v5 protocol (facts from ``venues.md`` §3: OKX's v5 docs as
quoted there, ``okxapi/python-okx``)::

    -> {"id": "1", "op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]}
    <- {"id": "1", "event": "subscribe", "arg": {"channel": "trades", "instId": "BTC-USDT"},
        "connId": "a4d3ae55"}                                   (one event per arg)
    <- {"id": "1", "event": "error", "code": "60018", "msg": "...", "connId": "a4d3ae55"}
    <- {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{"tradeId": ...}]}
    -> ping                                                      <- pong
    <- {"event": "notice", "code": "64008", "msg": "The connection will soon be closed
        for a service upgrade. Please reconnect.", "connId": "..."}

Topics are strings for the client, objects for OKX: ``"trades:BTC-USDT"`` is
``{"channel": "trades", "instId": "BTC-USDT"}``; an arg without an ``instId`` is
written with its other fields, sorted: ``"orders:instType=ANY"``; a bare channel is
just its name (:func:`to_arg`, :func:`to_topic`; the ``uid`` OKX adds to private
pushes is not part of the topic).

* **Acks**: one ``subscribe``/``unsubscribe`` event per arg, naming it: one
  :class:`~defi_ws.handler.Ack` each. An ``error`` event names no arg, only the
  request ``id`` (unique across every connection sharing the handler): it rejects
  the oldest arg of that request not yet answered. Any arg answered by name is
  removed first, so the rejection lands on a topic that got no ack whatever order
  OKX answers in.
* **Login** (``/private`` and ``/business``): ``{"op": "login", "args": [{"apiKey",
  "passphrase", "timestamp", "sign"}]}`` with ``timestamp`` in Unix seconds and
  ``sign = Base64(HMAC-SHA256(secret, timestamp + "GET" + "/users/self/verify"))``.
  The credentials are the user's (:class:`OkxCredentials`); they never appear in a
  repr, a log line or an error (the client never logs auth messages). A login error
  (codes 60001-60009, 60022-60026, 60032, sent without our request id) is an
  :class:`~defi_ws.handler.AuthReply` refusal: ``AUTH_FAILED``, fatal.
* **Heartbeat**: OKX cuts a connection with no subscribe and no push for 30 s and
  wants the literal text ``ping`` (answered by ``pong``) before that:
  ``heartbeat`` is ``TextPing("ping", "pong", 20 s, 5 s)`` (FeedClient's default with
  this handler); a pong that never comes is a ``PING_TIMEOUT``.
* **Notices**: ``{"event": "notice", "code": "64008"}`` (about 30 s before a service
  upgrade) is a :class:`~defi_ws.handler.Notice`: a FeedPool rotates the connection
  at once (make before break). The notice's lead time is not relied on.
* **Limits**: 3 new connections per second per IP; 480 subscribe, unsubscribe and
  login requests per hour per connection, declared as a 20-message burst and
  0.12 message/s (at most 452 in any hour; text pings take from the same bucket
  though OKX does not count them, so the bound holds). **UNCONFIRMED**, and the safe
  choice made: topics per connection (none documented; OKX advises fewer than 30
  channels per connection for the 400/50-level books: 100 here, pass ``limits=``
  for deep books) and args per request (64 KB in total: 50 args here); what OKX does
  over a limit (``60014`` is reported by third parties); no maximum connection age
  is documented (None).
* **Dedup**: a FeedPool recognises duplicates by a hash of the raw ``data`` array:
  OKX's ids (``tradeId``, ``seqId``) are per instrument but not consecutive (trades
  are aggregated, book sequence ids jump), so an id key would report false gaps.
  Book gaps are the ``prevSeqId``/``seqId`` chain's business (an order book's).
* **Endpoints**: ``wss://ws.okx.com:8443/ws/v5/{public,private,business}``; port 8443
  is reported retired on 2026-10-31 (UNCONFIRMED): pass ``url=`` to change host or
  port.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from defi_ws.handler import Ack, AuthReply, Control, DedupSpec, Notice, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy, TextPing
from defi_ws.venues._adapter import VenueAdapter

__all__ = [
    "BASE_URL",
    "LIMITS",
    "Okx",
    "OkxCredentials",
    "OkxEndpoint",
    "login_message",
    "sign",
    "to_arg",
    "to_topic",
]

log = logging.getLogger("defi_ws.venues.okx")

#: The v5 WebSocket base (add ``/public``, ``/private`` or ``/business``).
BASE_URL = "wss://ws.okx.com:8443/ws/v5"
#: OKX's limits as declared (see the module docstring for what is unconfirmed).
LIMITS = VenueLimits(topics_per_connection=100, messages_per_s=0.12, burst=20,
                     connections_per_window=(3, 1.0), max_connection_age_s=None)
#: Error codes of a failed login (sent without the request id).
LOGIN_ERROR_CODES = frozenset(
    {"60001", "60002", "60003", "60004", "60005", "60006", "60007", "60009", "60022",
     "60023", "60024", "60025", "60026", "60032"})

_MAX_REQUESTS = 4096


class OkxEndpoint(enum.Enum):
    """The v5 endpoints."""

    PUBLIC = "public"
    PRIVATE = "private"
    BUSINESS = "business"


@dataclass(frozen=True)
class OkxCredentials:
    """An OKX API key, from the user. Nothing of it shows in a repr.

    Attributes:
        api_key: the key.
        secret: the secret the login is signed with.
        passphrase: the key's passphrase.
    """

    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    passphrase: str = field(repr=False)

    def __repr__(self) -> str:
        return "OkxCredentials(<hidden>)"


def sign(secret: str, timestamp: str) -> str:
    """OKX's login signature: Base64(HMAC-SHA256(secret, timestamp + "GET/users/self/verify"))."""
    digest = hmac.new(secret.encode(), f"{timestamp}GET/users/self/verify".encode(),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def login_message(credentials: OkxCredentials, timestamp_s: float) -> dict[str, Any]:
    """The login request for ``credentials`` at ``timestamp_s`` (Unix seconds)."""
    stamp = str(int(timestamp_s))
    return {"op": "login", "args": [{
        "apiKey": credentials.api_key, "passphrase": credentials.passphrase,
        "timestamp": stamp, "sign": sign(credentials.secret, stamp)}]}


def to_arg(topic: str) -> dict[str, str]:
    """The channel arg of a topic (``"trades:BTC-USDT"`` -> ``{"channel", "instId"}``)."""
    channel, _, rest = topic.partition(":")
    arg = {"channel": channel}
    if not rest:
        return arg
    if "=" not in rest:
        arg["instId"] = rest
        return arg
    for part in rest.split(","):
        key, _, value = part.partition("=")
        arg[key] = value
    return arg


def to_topic(arg: Any) -> str | None:
    """The topic of a channel arg (the inverse of :func:`to_arg`; ``uid`` is ignored)."""
    if type(arg) is not dict or not isinstance(arg.get("channel"), str):
        return None
    channel: str = arg["channel"]
    if len(arg) == 2 and "instId" in arg:  # the common case, fast
        return f"{channel}:{arg['instId']}"
    rest = {k: v for k, v in arg.items() if k not in ("channel", "uid")}
    if not rest:
        return channel
    if set(rest) == {"instId"}:
        return f"{channel}:{rest['instId']}"
    return channel + ":" + ",".join(f"{k}={rest[k]}" for k in sorted(rest))


class Okx(VenueAdapter):
    """An OKX v5 handler (see the module docstring).

    Args:
        endpoint: ``OkxEndpoint.PUBLIC`` (default), ``PRIVATE`` or ``BUSINESS``.
        url: the full endpoint URL (default: ``BASE_URL`` + the endpoint; a
            simulator's URL in tests).
        on_data: called with each decoded push (``{"arg": ..., "data": [...]}``).
        credentials: log in on every connection (private channels need it).
        decode: the decode function (default ``orjson.loads``; see
            :mod:`defi_ws.venues.okx_types`).
        max_topics_per_message: args per subscribe request (50).
        limits: overrides :data:`LIMITS`.
        dedup: overrides the pool's de-duplication (a hash of ``data``); False for
            none.
        clock: Unix seconds, for the login timestamp (tests).

    Raises:
        ConfigError: the URL is not a usable WebSocket URL.
    """

    venue = "okx"
    #: The endpoint used when no ``url`` is given (public channels).
    default_url: str = BASE_URL + "/public"
    control_prefixes: tuple[bytes, ...] | None = (b'{"event"', b'{"id"')
    #: OKX's keep-alive: text ``ping`` under the 30 s idle cut.
    heartbeat: HeartbeatStrategy = TextPing("ping", "pong", interval_s=20.0, timeout_s=5.0)
    limits: VenueLimits = LIMITS
    dedup: DedupSpec | None = DedupSpec(hash_field="data")
    #: OKX ids are not consecutive: no ``sequence_of`` gap checks.
    tracks_sequences = False

    def __init__(
        self,
        endpoint: OkxEndpoint | str = OkxEndpoint.PUBLIC,
        *,
        url: str | None = None,
        on_data: Callable[[Any], object] | None = None,
        credentials: OkxCredentials | None = None,
        decode: Callable[[memoryview], Any] | None = None,
        max_topics_per_message: int = 50,
        limits: VenueLimits | None = None,
        dedup: DedupSpec | bool | None = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = OkxEndpoint(endpoint)
        super().__init__(url or f"{BASE_URL}/{self.endpoint.value}", on_data=on_data,
                         decode=decode, max_topics_per_message=max_topics_per_message,
                         limits=limits, dedup=dedup)
        self._credentials = credentials
        self._clock = clock
        self._next_id = 0
        self._unanswered: OrderedDict[str, list[str]] = OrderedDict()
        #: Error events that matched no request and no login (delivered as data).
        self.untraced_errors = 0

    def _repr_details(self) -> str:
        return ", login" if self._credentials is not None else ""

    # ------------------------------------------------------------ connection

    def auth_messages(self) -> Sequence[Any]:
        """The login request when credentials were given."""
        if self._credentials is None:
            return ()
        return [login_message(self._credentials, self._clock())]

    def _request(self, op: str, topics: Sequence[str]) -> dict[str, Any]:
        self._next_id += 1
        req_id = str(self._next_id)
        self._unanswered[req_id] = list(topics)
        while len(self._unanswered) > _MAX_REQUESTS:
            self._unanswered.popitem(last=False)
        return {"id": req_id, "op": op, "args": [to_arg(t) for t in topics]}

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``subscribe`` request with a fresh id."""
        return [self._request("subscribe", topics)]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``unsubscribe`` request with a fresh id."""
        return [self._request("unsubscribe", topics)]

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

    # ------------------------------------------------------------ inbound

    def classify(self, message: Any) -> Sequence[Control]:
        """Acks per arg, login replies, ``notice`` events."""
        if type(message) is not dict:
            return ()
        event = message.get("event")
        if event in ("subscribe", "unsubscribe"):
            topic = self._answered(message.get("id"), to_topic(message.get("arg")))
            return [Ack(topic, unsubscribe=event == "unsubscribe")] if topic else []
        code = message.get("code")
        detail = f"{code}: {message.get('msg')}"
        if event == "error":
            req_id = message.get("id")
            if isinstance(req_id, str) and self._unanswered.get(req_id):
                topic = self._answered(req_id)
                assert topic is not None
                return [Ack(topic, ok=False, detail=detail)]
            if code in LOGIN_ERROR_CODES:
                return [AuthReply(False, detail)]
            self.untraced_errors += 1
            log.warning("okx error event for no known request: %s", detail)
            return ()
        if event == "login":
            return [AuthReply(code == "0", "" if code == "0" else detail)]
        if event == "notice":
            return [Notice(None, detail)]
        return ()

    def topic_of(self, message: Any) -> str | None:
        """The topic of a push (its ``arg``)."""
        if type(message) is dict:
            return to_topic(message.get("arg"))
        arg = getattr(message, "arg", None)
        topic = getattr(arg, "topic", None)
        return topic() if callable(topic) else None
