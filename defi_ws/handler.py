"""Venue adapters: the :class:`ExchangeHandler` protocol and the :class:`JsonHandler` base.

A handler knows one venue's protocol: where to connect, how to log in, how to
(un)subscribe, how to recognise acks, and how to decode. It holds no connection state
the supervisor depends on; the desired subscription set lives in the client.

Optional methods, looked up on the handler: ``topic_of(message) -> str | None`` (for
per-topic stale windows) and ``sequence_of(message) -> (topic, seq) | None`` (for gap
detection; ``tracks_sequences = False`` turns it off). :class:`JsonHandler` defines both
as ordinary methods a subclass may override. Conflation of state-like streams is opt-in:
a ``conflate`` attribute (a :class:`ConflateSpec`) or a ``conflate_key(raw)`` method.

Call order per connection (the supervisor guarantees it)::

    url(attempt) -> on_connection() -> auth_messages() -> [classify() sees AuthReply]
    -> subscribe_messages(batch)... -> [classify() sees Ack per topic] -> on_message(msg)...

``classify`` is only called for messages whose raw bytes start with one of
``control_prefixes`` (every message when it is ``None``); all others go straight to
``on_message``, so keep the prefixes tight on busy feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson

from defi_ws.urls import check_url

__all__ = [
    "Ack",
    "AuthReply",
    "ConflateSpec",
    "Control",
    "DedupSpec",
    "ExchangeHandler",
    "JsonHandler",
    "Notice",
    "VenueHeartbeat",
    "VenueLimits",
    "chunked",
]


@dataclass(frozen=True, slots=True)
class Ack:
    """The venue's answer to a (un)subscribe request for one topic.

    Attributes:
        topic: the topic answered.
        ok: True for a confirmation, False for a rejection.
        detail: the venue's explanation of a rejection.
        unsubscribe: True for an answer to an unsubscribe request.
    """

    topic: str
    ok: bool = True
    detail: str = ""
    unsubscribe: bool = False


@dataclass(frozen=True, slots=True)
class AuthReply:
    """The venue's answer to the login request."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """The venue announced that it will cut this connection (maintenance, 24 h limit).

    Binance's ``serverShutdown`` event and OKX's ``notice`` (64008) are such notices; a
    :class:`~defi_ws.pool.FeedPool` answers one with a make-before-break rotation.

    Attributes:
        cut_in_s: seconds until the venue cuts the connection, when it says so.
        detail: the venue's words, for logs.
    """

    cut_in_s: float | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VenueHeartbeat:
    """A venue's own keep-alive or housekeeping message: not data.

    Kraken's ``{"channel": "heartbeat"}`` and Coinbase's ``heartbeats`` channel are such
    messages. Returned by ``classify``, it keeps the message away from ``on_data`` and
    from the data stale clock (``stale_after_s``: a feed whose venue still sends
    heartbeats but no data for the topics is STALE, not healthy). It is counted in
    ``control_messages``.

    Attributes:
        detail: what it was, for logs.
    """

    detail: str = ""


T = TypeVar("T")

#: What ``classify`` reports about one message.
Control = Ack | AuthReply | Notice | VenueHeartbeat


@dataclass(frozen=True, slots=True)
class VenueLimits:
    """What a venue allows, declared by its handler and obeyed by :class:`FeedPool`.

    Attributes:
        topics_per_connection: most topics one connection may carry.
        messages_per_s: outbound (client to venue) messages per second per connection;
            ``None`` for no limit.
        burst: outbound messages that may leave at once under ``messages_per_s``.
        connections_per_window: at most ``(count, window_s)`` new connections per
            window, per host, shared by every pool of the process; ``None`` for no
            limit.
        max_connection_age_s: the venue cuts a connection at this age (Binance: 24 h);
            the pool rotates before it. ``None`` when connections may live for ever.
    """

    topics_per_connection: int = 1024
    messages_per_s: float | None = None
    burst: int = 5
    connections_per_window: tuple[int, float] | None = None
    max_connection_age_s: float | None = None

    def problems(self) -> list[str]:
        """Every invalid field, as readable sentences (empty when all are valid)."""
        out = []
        if not (isinstance(self.topics_per_connection, int) and self.topics_per_connection >= 1):
            out.append(f"topics_per_connection must be an int >= 1, "
                       f"got {self.topics_per_connection!r}")
        if self.messages_per_s is not None and not self.messages_per_s > 0:
            out.append(f"messages_per_s must be > 0 or None, got {self.messages_per_s!r}")
        if not (isinstance(self.burst, int) and self.burst >= 1):
            out.append(f"burst must be an int >= 1, got {self.burst!r}")
        if self.connections_per_window is not None:
            count, window_s = self.connections_per_window
            if not (isinstance(count, int) and count >= 1 and window_s > 0):
                out.append("connections_per_window must be (count >= 1, window_s > 0), "
                           f"got {self.connections_per_window!r}")
        if self.max_connection_age_s is not None and not self.max_connection_age_s > 0:
            out.append(f"max_connection_age_s must be > 0 or None, "
                       f"got {self.max_connection_age_s!r}")
        return out


@dataclass(frozen=True, slots=True)
class DedupSpec:
    """How to recognise the same message on redundant connections, from raw bytes.

    Read before decode by :class:`defi_ws._core.Deduplicator` (see there for the exact
    rules). Give ``id_field`` (a monotonic per-topic id, e.g. ``"seq"``, Binance
    ``"t"``) with ``topic_field`` for exactly-once, in-order delivery and gap reports;
    or ``hash_field`` (the field whose raw JSON value is hashed, e.g. ``"data"``) for
    venues whose ids are per connection: then duplicates inside a bounded window are
    dropped, and order and gaps are not guaranteed. ``key_of`` is a Python hook for
    keys the fast path can't read (e.g. an id field that depends on the event type):
    it is asked only about messages the configured fields give no key.

    Attributes:
        id_field: JSON field of a monotonic per-topic id (integer or quoted integer).
        topic_field: JSON field naming the topic (string); ``None`` means one topic
            (a message without the configured field has no key and is delivered).
        hash_field: JSON field whose raw value is hashed when there is no id.
        window: how many recent hashes are remembered.
        key_of: called with a ``memoryview`` of a copy of the payload; returns
            ``(topic, id)`` (an id key, as with ``id_field``), any other hashable (an
            exact key remembered for ``window`` messages) or None (no key: delivered).
    """

    id_field: str | None = None
    topic_field: str | None = None
    hash_field: str | None = None
    window: int = 65536
    key_of: Callable[[memoryview], Any] | None = None


@dataclass(frozen=True, slots=True)
class ConflateSpec:
    """Conflation of a state-like stream (book ticker, mark price, top of book).

    Within one socket read only the newest message per key is decoded and delivered;
    the ones it replaces are counted (``conflated`` in the snapshot) and never decoded.
    Keyed messages are delivered at the end of the read, in the order of their
    arrival; a message without a key (and a control message) first delivers what is
    waiting, so nothing overtakes anything. Keys are read from the raw bytes, before
    decode (see :class:`defi_ws._core.FeedListener`). Give exactly one of:

    Attributes:
        field: JSON field whose raw value is the key (``"stream"``, ``"topic"``,
            ``"s"``): found in C without decoding (the first ``"field":`` in document
            order; a string's raw bytes, quotes included). A message without it is
            not conflated.
        key_of: a Python hook ``key_of(raw) -> Hashable | None`` called with a
            ``memoryview`` of a copy of each data message (safe to keep); ``None``:
            not conflated. One Python call per message: prefer ``field``.

    Gap detection (``sequence_of``) stays exact in count: a delivered message tells
    the tracker how many messages of its key it replaced, so those are not missing.
    It assumes every message of one sequence topic carries one key (key by the topic
    field, as venues number their messages per topic); see
    :class:`~defi_ws.sequence.Gap`.
    """

    field: str | None = None
    key_of: Callable[[memoryview], Hashable | None] | None = None

    def __post_init__(self) -> None:
        if (self.field is None) == (self.key_of is None):
            raise ValueError("ConflateSpec needs exactly one of field or key_of")
        if self.key_of is not None and not callable(self.key_of):
            raise TypeError("ConflateSpec.key_of must be callable")


class ExchangeHandler(Protocol):
    """What the supervisor needs from a venue adapter.

    Attributes:
        decode: turns a borrowed ``memoryview`` of a message into an object. The
            view is valid only during the call.
        control_prefixes: raw-byte prefixes of control messages (acks, auth
            replies), or None to classify every message.
        max_topics_per_message: most topics one subscribe message may carry.
    """

    decode: Callable[[memoryview], Any] | None
    control_prefixes: tuple[bytes, ...] | None
    max_topics_per_message: int

    def url(self, attempt: int) -> str:
        """The URL for this attempt (signed URLs and endpoint lists may vary it).

        It must be a ``ws://`` or ``wss://`` URL with a host; any other string ends
        the feed with a fatal ``INVALID_URL`` disconnect.
        """

    def on_connection(self) -> None:
        """A new connection is about to authenticate: reset per-connection state."""

    def auth_messages(self) -> Sequence[Any]:
        """Messages that log in; empty when the venue needs no auth."""

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """Messages subscribing ``topics`` (at most ``max_topics_per_message``)."""

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """Messages unsubscribing ``topics``."""

    def classify(self, message: Any) -> Sequence[Control]:
        """Recognise acks, auth replies and cut notices; an empty result means data."""

    def on_message(self, message: Any) -> None:
        """Receive one data message."""

    # Optional (looked up with getattr; a handler may leave them out):
    #
    # def topic_of(self, message) -> str | None
    #     The topic of a data message: per-topic stale windows need it.
    # def sequence_of(self, message) -> tuple[str, int] | None
    #     (topic, sequence number) of a data message: gap detection needs it.
    # tracks_sequences: bool
    #     False turns gap detection off although sequence_of exists.
    # data_sink: Callable[[Any], object]
    #     What the hot path calls per data message instead of on_message.
    # limits: VenueLimits
    #     The venue's limits (topics per connection, outbound rate, connection rate,
    #     connection age), obeyed by FeedPool (default: VenueLimits()).
    # dedup: DedupSpec | None
    #     How redundant connections recognise duplicates before decode; a FeedPool
    #     with redundancy > 1 or rotation needs it.
    # heartbeat: HeartbeatStrategy
    #     The venue's heartbeat (FeedClient's default when none is passed), e.g.
    #     TextPing("ping", "pong") for OKX.
    # conflate: ConflateSpec | None
    #     Conflation of a state-like stream (newest message per key per read).
    # def conflate_key(self, raw: memoryview) -> Hashable | None
    #     The same with a Python hook (used when ``conflate`` is not set).


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    """Split ``items`` into lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class JsonHandler:
    """A handler for a generic JSON venue; override what your venue does differently.

    The generic protocol (the one :class:`~defi_ws.testing.ExchangeSimulator` speaks)::

        -> {"op": "subscribe", "args": ["trades.BTC", ...]}
        <- {"event": "subscribed", "topic": "trades.BTC"}
        <- {"event": "error", "topic": "nope", "msg": "unknown topic"}
        -> {"op": "unsubscribe", "args": [...]}
        <- {"event": "unsubscribed", "topic": "trades.BTC"}
        <- {"event": "login", "success": true}      (when auth_messages() is not empty)
        <- {"topic": "trades.BTC", "seq": 1, "data": {...}}

    Args:
        url: the venue's WebSocket URL (``ws://`` or ``wss://``); checked here unless
            a subclass overrides :meth:`url`.
        on_data: called with each data message (default: :meth:`on_message` does
            nothing; subclasses override it instead).
        max_topics_per_message: most topics per subscribe message.
        sequence_field: the field holding a per-topic sequence number (e.g.
            ``"seq"``); when set, gaps are detected and reported (``on_gap``), and a
            :class:`FeedPool` de-duplicates redundant connections on it.
        limits: the venue's limits (default: :class:`VenueLimits` defaults).

    Raises:
        ConfigError: ``url`` is not a usable WebSocket URL (the message names the
            problem and shows the URL without its query string).
    """

    decode: Callable[[memoryview], Any] | None = staticmethod(orjson.loads)
    control_prefixes: tuple[bytes, ...] | None = (b'{"event"',)
    limits: VenueLimits = VenueLimits()

    def __init__(
        self,
        url: str,
        *,
        on_data: Callable[[Any], object] | None = None,
        max_topics_per_message: int = 50,
        sequence_field: str | None = None,
        limits: VenueLimits | None = None,
    ) -> None:
        if type(self).url is JsonHandler.url:  # an overridden url() makes its own URLs
            check_url(url, what=f"{type(self).__name__} url")
        self._url = url
        self._on_data = on_data
        self.max_topics_per_message = max_topics_per_message
        self._sequence_field = sequence_field
        if limits is not None:
            self.limits = limits
        #: Duplicates on redundant connections: the sequence field per topic, else
        #: a hash of the ``data`` field.
        self.dedup: DedupSpec | None = (
            DedupSpec(id_field=sequence_field, topic_field="topic")
            if sequence_field is not None else DedupSpec(hash_field="data"))

    @property
    def tracks_sequences(self) -> bool:
        """Whether :meth:`sequence_of` is in use: ``sequence_field`` is set, or a
        subclass overrides :meth:`sequence_of`."""
        return (self._sequence_field is not None
                or type(self).sequence_of is not JsonHandler.sequence_of)

    def topic_of(self, message: Any) -> str | None:
        """The topic of a data message (its ``"topic"`` field); override for your venue."""
        topic = message.get("topic") if isinstance(message, dict) else None
        return topic if isinstance(topic, str) else None

    def sequence_of(self, message: Any) -> tuple[str, int] | None:
        """``(topic, seq)`` of a data message, from ``topic`` and ``sequence_field``.

        Override it for another layout (gap detection then turns on by itself).
        """
        if self._sequence_field is None or not isinstance(message, dict):
            return None
        topic = message.get("topic")
        seq = message.get(self._sequence_field)
        if isinstance(topic, str) and isinstance(seq, int):
            return (topic, seq)
        return None

    def url(self, attempt: int) -> str:
        """Return the configured URL."""
        return self._url

    def on_connection(self) -> None:
        """Nothing to reset in the generic protocol."""

    def auth_messages(self) -> Sequence[Any]:
        """No auth by default."""
        return ()

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``{"op": "subscribe", "args": [...]}`` message."""
        return [{"op": "subscribe", "args": list(topics)}]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        """One ``{"op": "unsubscribe", "args": [...]}`` message."""
        return [{"op": "unsubscribe", "args": list(topics)}]

    def classify(self, message: Any) -> Sequence[Control]:
        """Recognise the generic protocol's ``event`` replies."""
        if not isinstance(message, dict):
            return ()
        event = message.get("event")
        if event == "subscribed":
            return (Ack(str(message.get("topic"))),)
        if event == "unsubscribed":
            return (Ack(str(message.get("topic")), unsubscribe=True),)
        if event == "error" and "topic" in message:
            return (Ack(str(message["topic"]), ok=False, detail=str(message.get("msg", ""))),)
        if event == "login":
            return (AuthReply(bool(message.get("success")), str(message.get("msg", ""))),)
        if event == "notice":
            cut_ms = message.get("cut_in_ms")
            return (Notice(cut_ms / 1000.0 if isinstance(cut_ms, int | float) else None,
                           str(message.get("type", ""))),)
        return ()

    def on_message(self, message: Any) -> None:
        """Hand a data message to ``on_data`` (override to handle it yourself)."""
        if self._on_data is not None:
            self._on_data(message)

    @property
    def data_sink(self) -> Callable[[Any], object]:
        """The callable the hot path calls per data message: ``on_data`` itself when
        :meth:`on_message` is not overridden (one Python call per message, not two)."""
        if type(self).on_message is JsonHandler.on_message and self._on_data is not None:
            return self._on_data
        return self.on_message
