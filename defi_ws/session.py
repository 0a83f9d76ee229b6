"""One connection's policy, sans-I/O: :class:`Session`.

A :class:`Session` is created for each connection attempt and thrown away with it, so
per-connection state is reset by construction. Like python-websockets'
``ClientProtocol`` or h11's ``Connection``, it imports no asyncio, owns no socket and
reads no clock: every input carries ``now`` (seconds on the caller's monotonic clock)
and every decision comes out as an :data:`Action` the caller carries out.

Inputs (call order: :meth:`~Session.opened` first, :meth:`~Session.connection_lost`
last; anything after the loss is ignored):

* :meth:`~Session.opened`: the WebSocket is open.
* listener events: :meth:`~Session.close_received`, :meth:`~Session.violation`,
  :meth:`~Session.handler_error`, :meth:`~Session.pong`, :meth:`~Session.data_routed`.
* control results: :meth:`~Session.control` (acks and auth replies).
* the user: :meth:`~Session.subscribe`, :meth:`~Session.unsubscribe`,
  :meth:`~Session.send`, :meth:`~Session.stop`.
* time: :meth:`~Session.tick`, at :meth:`~Session.next_deadline` at the latest.
* :meth:`~Session.connection_lost`: the transport reports the connection gone.

Outputs: :meth:`~Session.take_actions` returns, in order, messages to write (already
paced), pings, a close with its code, an abort, ``Authenticated``, ``Live``, topic
rejections, handler failures and, exactly once per session, ``Lost`` with the
classified :class:`~defi_ws.reasons.Disconnect`.

Per connection, topics move through :class:`~defi_ws.subscriptions.TopicState`::

    (desired) --queued--> QUEUED --first message written--> PENDING --ack--> CONFIRMED
                            |                                  |--reject--> dropped
                  remove(): dequeued                           |--ack deadline--> close

With ``ack_timeout_s=None`` (a venue that never acks) a topic is CONFIRMED once the
last message of its batch is written. Subscribe and unsubscribe messages are built
once, when their topics are queued; a topic removed while QUEUED is taken out of its
batch (the rest of the batch is rebuilt), a topic re-added while its unsubscribe is
still queued cancels that unsubscribe.

The first cause of a close wins (reason precedence): a local close (stop, ping
timeout, stale, ack timeout, auth failure, handler error, health policy), a protocol
violation, or the peer's CLOSE; a loss with no recorded cause is the transport's.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from defi_ws.errors import NotConnectedError, SendQueueFull
from defi_ws.handler import Ack, AuthReply, Control, ExchangeHandler, chunked
from defi_ws.health import HealthRule, RttHistogram, StaleClock
from defi_ws.heartbeat import HeartbeatKind, HeartbeatStrategy, PingClock, WsPing
from defi_ws.pacing import Pacer, TokenBucket, Unlimited
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.subscriptions import TopicState

__all__ = [
    "PHASE_TRANSITIONS",
    "Abort",
    "Action",
    "Authenticated",
    "Close",
    "HandlerFailed",
    "Live",
    "Lost",
    "Outgoing",
    "Phase",
    "SendMessages",
    "SendPing",
    "Session",
    "SessionConfig",
    "TopicRejected",
    "UnknownAck",
]


class Phase(enum.Enum):
    """Where one connection is (closing is tracked beside it, see :attr:`Session.closing`)."""

    CONNECTING = "connecting"
    """Created; the WebSocket is not open yet."""
    AUTHENTICATING = "authenticating"
    """Open; auth messages sent, waiting for the venue's reply."""
    SUBSCRIBING = "subscribing"
    """Authenticated; replaying the desired topics."""
    LIVE = "live"
    """Every desired topic confirmed once."""
    ENDED = "ended"
    """The connection is gone and ``Lost`` was emitted (terminal)."""


class _Input(enum.Enum):
    OPENED = "opened"
    AUTHENTICATED = "authenticated"
    SUBSCRIBED = "subscribed"
    LOST = "lost"


#: Every phase change: ``PHASE_TRANSITIONS[phase][input] -> next phase``.
PHASE_TRANSITIONS: dict[Phase, dict[_Input, Phase]] = {
    Phase.CONNECTING: {_Input.OPENED: Phase.AUTHENTICATING, _Input.LOST: Phase.ENDED},
    Phase.AUTHENTICATING: {_Input.AUTHENTICATED: Phase.SUBSCRIBING, _Input.LOST: Phase.ENDED},
    Phase.SUBSCRIBING: {_Input.SUBSCRIBED: Phase.LIVE, _Input.LOST: Phase.ENDED},
    Phase.LIVE: {_Input.LOST: Phase.ENDED},
    Phase.ENDED: {},
}

#: Close codes sent when the session ends a connection itself (default 1001).
CLOSE_CODES: Mapping[DisconnectReason, int] = {
    DisconnectReason.LOCAL_STOP: 1000,
    DisconnectReason.ROTATION: 1000,
    DisconnectReason.HANDLER_ERROR: 1011,
    DisconnectReason.PROTOCOL_ERROR: 1002,
}
GOING_AWAY = 1001
#: Local closes whose peer is presumed dead: CLOSE is sent, then the socket aborted at once.
DEAD_PEER = frozenset({DisconnectReason.PING_TIMEOUT, DisconnectReason.STALE})


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to write: ``payload`` (JSON-encoded unless str/bytes), as TEXT or BINARY."""

    payload: Any
    binary: bool = False


@dataclass(frozen=True, slots=True)
class SendMessages:
    """Write these messages now, in this order, in one write (pacing already applied)."""

    messages: tuple[Outgoing, ...]


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a heartbeat: a PING control frame with ``payload`` (``control``), or the
    application-level ping message ``payload`` (counted toward the pacer, never held)."""

    payload: bytes | str
    control: bool = True


@dataclass(frozen=True, slots=True)
class Close:
    """Start the closing handshake with ``code`` (idempotent on the connection)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the connection now (the closing handshake timed out or the peer is dead)."""


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Auth succeeded (or none is needed): the subscription replay starts."""


@dataclass(frozen=True, slots=True)
class Live:
    """Every desired topic is confirmed on this connection: the feed is LIVE."""


@dataclass(frozen=True, slots=True)
class TopicRejected:
    """The venue refused ``topic``; it was dropped from the desired set."""

    topic: str
    detail: str


@dataclass(frozen=True, slots=True)
class UnknownAck:
    """An ack for a topic that was not pending on this connection."""

    topic: str


@dataclass(frozen=True, slots=True)
class HandlerFailed:
    """A handler method raised outside the hot path (the session closes with HANDLER_ERROR)."""

    stage: str
    error: BaseException


@dataclass(frozen=True, slots=True)
class Lost:
    """The connection is gone; emitted exactly once per session, always last."""

    disconnect: Disconnect


Action = (
    SendMessages | SendPing | Close | Abort | Authenticated | Live | TopicRejected
    | UnknownAck | HandlerFailed | Lost
)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-connection policy, validated by :class:`~defi_ws.client.FeedClient`.

    Attributes:
        auth_timeout_s: limit for the venue's auth reply.
        ack_timeout_s: limit for each topic's subscribe ack; None for a venue that
            never acks (a topic is confirmed once its subscribe is written).
        close_timeout_s: limit for the closing handshake before the abort.
        rate_per_s: outbound messages per second (None: unlimited).
        burst: messages that may leave at once under the rate.
        max_queued_messages: bound of the outbox (``SendQueueFull`` above).
        heartbeat: the ping strategy.
        stale_after_s: the data window while LIVE (None: off).
        topic_stale_after_s: per-topic windows.
        health_rules: rules checked on every tick while open.
        poll_s: tick period while a clock has to watch counters (None: no polling).
        exact_stamps: data receive stamps are on this clock (ns; divided by 1e9).
        disconnect_on_handler_error: a hot-path handler error closes (HANDLER_ERROR).
    """

    auth_timeout_s: float = 10.0
    ack_timeout_s: float | None = 10.0
    close_timeout_s: float = 2.0
    rate_per_s: float | None = None
    burst: int = 5
    max_queued_messages: int = 10_000
    heartbeat: HeartbeatStrategy = field(default_factory=WsPing)
    stale_after_s: float | None = None
    topic_stale_after_s: Mapping[str, float | None] = field(default_factory=dict)
    health_rules: tuple[HealthRule, ...] = ()
    poll_s: float | None = None
    exact_stamps: bool = False
    disconnect_on_handler_error: bool = False


# ----------------------------------------------------------------------------- state


class _Kind(enum.Enum):
    RAW = "raw"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class _Batch:
    """Topics queued together and the messages built for them, once."""

    __slots__ = ("items", "kind", "topics", "written")

    def __init__(self, kind: _Kind, topics: list[str]) -> None:
        self.kind = kind
        self.topics = topics
        self.items: list[_Item] = []
        self.written = 0


class _Item:
    __slots__ = ("batch", "out")

    def __init__(self, out: Outgoing, batch: _Batch | None) -> None:
        self.out = out
        self.batch = batch


@dataclass(slots=True)
class _Topic:
    state: TopicState
    deadline: float | None = None
    batch: _Batch | None = None


class Session:
    """The policy of one connection: auth, subscriptions, pacing, clocks, closing.

    Args:
        handler: the venue adapter (its methods are called here, never in the hot
            path; an exception becomes a HANDLER_ERROR close).
        config: the per-connection policy.
        desired: the feed's desired topics (insertion-ordered dict keys). The session
            adds and removes topics in it (subscribe, unsubscribe, rejection); it is
            the one copy of the desired set.
        stamp_ns: the hot path's receive-stamp clock in ns, used only to date pings
            (RTT = pong stamp - ping stamp).

    Attributes:
        phase: where the connection is.
        closing: the cause of the close under way, if any.
        topic_counts: data messages per topic on this connection (written by the
            data path when per-topic stale windows are set).
        rtt: round trips on this connection (kept only when health rules need it).
        handler_errors: hot-path handler errors on this connection.
    """

    def __init__(
        self,
        handler: ExchangeHandler,
        config: SessionConfig,
        desired: dict[str, None],
        *,
        stamp_ns: Callable[[], int] = lambda: 0,
    ) -> None:
        self.handler = handler
        self.config = config
        self.desired = desired
        self.phase = Phase.CONNECTING
        self.closing: Disconnect | None = None
        self.topic_counts: dict[str, int] = {}
        # only health rules read it: ~6 KiB saved per idle connection without rules
        self.rtt: RttHistogram | None = RttHistogram() if config.health_rules else None
        self.handler_errors = 0
        self.routed_messages = 0
        self.routed_last_ns = 0
        self._stamp_ns = stamp_ns
        self._max_topics = max(1, int(handler.max_topics_per_message))
        self._bucket = (
            None if config.rate_per_s is None else TokenBucket(config.rate_per_s, config.burst))
        self._pacer: Pacer = Unlimited() if self._bucket is None else self._bucket
        #: The owner's send fast path reads these three (and never writes them): while
        #: ``writable`` (open and not closing), ``outbox`` (the queued messages) is
        #: empty and not ``paced``, a message may be written at once without calling
        #: :meth:`try_send_now` (which is what it would answer).
        self.writable = False
        self.paced = self._bucket is not None
        self._ping = PingClock(config.heartbeat)
        self._stale = StaleClock(config.stale_after_s, config.topic_stale_after_s)
        self._topics: dict[str, _Topic] = {}
        self._leaving: dict[str, tuple[_Topic, _Batch]] = {}
        self._outbox: deque[_Item] = deque()
        self.outbox: Sized = self._outbox  # the same deque (see ``writable``)
        self._actions: list[Action] = []
        self._auth_deadline: float | None = None
        self._pace_at: float | None = None
        self._close_deadline: float | None = None
        self._aborted_at: float | None = None
        self._now = -math.inf

    def __repr__(self) -> str:
        """Return a debugging representation."""
        closing = f" closing={self.closing.reason.label}" if self.closing else ""
        return (f"<Session {self.phase.name}{closing} topics={len(self.desired)} "
                f"outbox={len(self._outbox)}>")

    # ------------------------------------------------------------------ queries

    @property
    def is_open(self) -> bool:
        """Whether the WebSocket is open and not closing (``send`` accepts messages)."""
        return self.phase not in (Phase.CONNECTING, Phase.ENDED) and self.closing is None

    @property
    def ended(self) -> bool:
        """Whether ``Lost`` was emitted."""
        return self.phase is Phase.ENDED

    @property
    def has_actions(self) -> bool:
        """Whether :meth:`take_actions` would return something."""
        return bool(self._actions)

    def take_actions(self) -> list[Action]:
        """Return and clear the actions produced so far, oldest first."""
        actions, self._actions = self._actions, []
        return actions

    def topic_state(self, topic: str) -> TopicState | None:
        """The state of a desired topic on this connection (None if not desired).

        Before the subscription replay starts a desired topic is UNSENT.
        """
        if topic not in self.desired:
            return None
        entry = self._topics.get(topic)
        return TopicState.UNSENT if entry is None else entry.state

    def topics_in(self, state: TopicState) -> tuple[str, ...]:
        """The desired topics in ``state``, in desired order."""
        return tuple(t for t in self.desired if self.topic_state(t) is state)

    def confirmed(self) -> tuple[str, ...]:
        """The desired topics the venue confirmed on this connection."""
        return self.topics_in(TopicState.CONFIRMED)

    def deadline_of(self, topic: str) -> float | None:
        """The ack deadline of a PENDING topic, else None."""
        entry = self._topics.get(topic)
        return entry.deadline if entry is not None else None

    def queued_batch_of(self, topic: str) -> bool:
        """Whether ``topic`` has a subscribe message in the outbox."""
        entry = self._topics.get(topic)
        return entry is not None and entry.batch is not None and any(
            item.batch is entry.batch for item in self._outbox)

    @property
    def outbox_size(self) -> int:
        """Messages waiting for the pacer."""
        return len(self._outbox)

    @property
    def aborted(self) -> bool:
        """Whether Abort was emitted."""
        return self._aborted_at is not None

    def next_deadline(self) -> float | None:
        """The next time :meth:`tick` has something to do (None: only events can)."""
        if self.phase is Phase.ENDED:
            return None
        if self._aborted_at is not None:
            return self._aborted_at + self.config.close_timeout_s
        if self.closing is not None:
            return self._close_deadline
        deadlines: list[float] = []
        if self.phase is Phase.CONNECTING:
            return None
        if self._pace_at is not None and self._outbox:
            deadlines.append(self._pace_at)
        if self.phase is Phase.AUTHENTICATING and self._auth_deadline is not None:
            deadlines.append(self._auth_deadline)
        deadlines.extend(t.deadline for t in self._topics.values() if t.deadline is not None)
        ping = self._ping.next_deadline()
        if ping is not None:
            deadlines.append(ping)
        if self.phase is Phase.LIVE:
            stale = self._stale.next_deadline()
            if stale is not None and not self.config.poll_s:
                deadlines.append(stale)
        if self.config.poll_s:
            deadlines.append(self._now + self.config.poll_s)
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ inputs

    def opened(self, now: float) -> None:
        """The WebSocket is open: reset the clocks, send the auth messages.

        Calls ``handler.on_connection()`` then ``handler.auth_messages()``; without
        auth messages the subscription replay starts at once.
        """
        if self.phase is not Phase.CONNECTING:
            return
        self._now = now
        self._fire(_Input.OPENED)
        self._ping.reset(now)
        for rule in self.config.health_rules:
            rule.reset(now)
        try:
            self.handler.on_connection()
            auth = list(self.handler.auth_messages())
        except Exception as exc:
            self._handler_failed("on_connection/auth_messages", exc, now)
            return
        if auth:
            self._auth_deadline = now + self.config.auth_timeout_s
            self._outbox.extend(_Item(Outgoing(m), None) for m in auth)
            self._flush(now)
        else:
            self._authenticated(now)

    def control(self, results: Sequence[Control], now: float) -> None:
        """The handler classified a control message into ``results`` (acks, auth replies;
        notices and venue heartbeats need nothing here)."""
        if self.phase is Phase.ENDED:
            return
        self._now = max(self._now, now)
        for result in results:
            if isinstance(result, AuthReply):
                if self.phase is not Phase.AUTHENTICATING or self.closing is not None:
                    continue
                if result.ok:
                    self._authenticated(now)
                else:
                    self._close(Disconnect(
                        DisconnectReason.AUTH_FAILED,
                        detail=result.detail[:200] or "auth rejected"), now)
            elif isinstance(result, Ack) and not result.unsubscribe:
                self._ack(result, now)
        self._check_live(now)

    def data_routed(self, stamp_ns: int) -> None:
        """A message went through the control router and turned out to be data."""
        self.routed_messages += 1
        self.routed_last_ns = max(self.routed_last_ns, stamp_ns)

    def pong(self, recv_ns: int) -> int | None:
        """A pong arrived at ``recv_ns``; return the round trip in ns if a ping was due."""
        rtt_ns = self._ping.answered(recv_ns)
        if rtt_ns is not None and self.rtt is not None:
            self.rtt.record(rtt_ns)
        return rtt_ns

    def close_received(self, code: int, reason: str, now: float) -> None:
        """The peer's CLOSE arrived (the listener answered it and hangs up)."""
        self._begin_close(Disconnect(DisconnectReason.PEER_CLOSE, close_code=code,
                                     detail=reason[:200]), now, send=False)

    def violation(self, code: int, reason: str, now: float) -> None:
        """The peer broke RFC 6455; the listener sent CLOSE ``code``."""
        self._begin_close(Disconnect(DisconnectReason.PROTOCOL_ERROR, close_code=code,
                                     detail=reason[:200]), now, send=False)

    def handler_error(self, stage: str, exc: BaseException, now: float) -> None:
        """Decode or a callback raised in the hot path (already counted there)."""
        self.handler_errors += 1
        if self.config.disconnect_on_handler_error:
            # the listener has sent CLOSE 1011 itself
            self._begin_close(Disconnect(DisconnectReason.HANDLER_ERROR, close_code=1011,
                                         detail=f"{stage}: {type(exc).__name__}"), now,
                              send=False)

    def subscribe(self, topics: Iterable[str], now: float) -> list[str]:
        """Add topics to the desired set; queue their subscribe once authenticated.

        A topic whose unsubscribe is still queued cancels it and keeps its state.

        Returns:
            The topics that were not desired before, in order.
        """
        added: list[str] = []
        for topic in topics:
            if topic in self.desired:
                continue
            self.desired[topic] = None
            added.append(topic)
        if not added or self.phase is Phase.ENDED:
            return added
        fresh: list[str] = []
        for topic in added:
            leaving = self._leaving.pop(topic, None)
            if leaving is not None and leaving[0].state in (TopicState.PENDING,
                                                            TopicState.CONFIRMED):
                self._drop_from_batch(leaving[1], topic, now)
                entry = leaving[0]
                if entry.state is TopicState.PENDING and self.config.ack_timeout_s is not None:
                    entry.deadline = now + self.config.ack_timeout_s
                self._topics[topic] = entry
            else:
                fresh.append(topic)
        if self.phase in (Phase.SUBSCRIBING, Phase.LIVE) and self.closing is None:
            self._queue_subscribes(fresh, now)
            self._flush(now)
        return added

    def unsubscribe(self, topics: Iterable[str], now: float) -> list[str]:
        """Remove topics from the desired set: dequeue a QUEUED one, unsubscribe a sent one.

        Returns:
            The topics that were desired before, in order.
        """
        removed: list[str] = []
        for topic in topics:
            if topic not in self.desired:
                continue
            del self.desired[topic]
            removed.append(topic)
        if not removed or self.phase is Phase.ENDED:
            return removed
        leaving: list[tuple[str, _Topic]] = []
        for topic in removed:
            entry = self._topics.pop(topic, None)
            if entry is None:
                continue
            if entry.state is TopicState.QUEUED and entry.batch is not None \
                    and entry.batch.written == 0:
                self._drop_from_batch(entry.batch, topic, now)
            elif entry.state in (TopicState.PENDING, TopicState.CONFIRMED):
                entry.deadline = None  # no ack is awaited for a topic being removed
                leaving.append((topic, entry))
        if leaving and self.closing is None:
            for chunk in chunked(leaving, self._max_topics):
                batch = _Batch(_Kind.UNSUBSCRIBE, [t for t, _ in chunk])
                if not self._build(batch, now):
                    break
                if batch.written == 0 and batch.items:
                    for topic, entry in chunk:
                        self._leaving[topic] = (entry, batch)
        self._check_live(now)
        self._flush(now)
        return removed

    def send(self, messages: Sequence[Any], now: float, *, binary: bool = False) -> None:
        """Queue user messages behind what is queued; they leave as the pacer allows.

        Raises:
            NotConnectedError: the WebSocket is not open, or closing.
            SendQueueFull: the outbox would exceed ``max_queued_messages``.
        """
        if not self.is_open:
            raise NotConnectedError(f"cannot send: connection {self._describe_state()}")
        if len(self._outbox) + len(messages) > self.config.max_queued_messages:
            raise SendQueueFull(self.config.max_queued_messages)
        self._outbox.extend(_Item(Outgoing(m, binary), None) for m in messages)
        self._flush(now)

    def try_send_now(self, count: int, now: float) -> bool:
        """Fast path for the caller's own write: True (tokens taken) when ``count``
        messages may leave at once, i.e. the session is open, nothing is queued and
        the pacer allows it."""
        if not self.writable or self._outbox:
            return False
        bucket = self._bucket
        if bucket is None:
            return True
        return count <= bucket.burst and bucket.try_take(now, count)

    def encode_failed(self, exc: BaseException, now: float) -> None:
        """A message of a ``SendMessages`` action could not be encoded (a payload
        writer raised, or ``orjson`` could not serialise it): nothing of that write
        left; close with ``HANDLER_ERROR`` (stage ``encode``), as when a handler method
        raises."""
        if self.phase is Phase.ENDED:
            return
        self._handler_failed("encode", exc, now)

    def stop(self, now: float) -> None:
        """The user stops the feed: close with 1000 (a close under way keeps its cause)."""
        self._close(Disconnect(DisconnectReason.LOCAL_STOP, detail="stop()"), now)

    def rotate(self, now: float, detail: str = "rotation") -> None:
        """Close for a planned reconnect (reason ROTATION)."""
        self._close(Disconnect(DisconnectReason.ROTATION, detail=detail), now)

    def tick(self, now: float, messages: int = 0, last_data_ns: int = 0) -> None:
        """Time passed: run the deadlines due at ``now``.

        Args:
            now: the current time.
            messages: the hot path's data-message counter of this connection.
            last_data_ns: the hot path's receive stamp of the last data message.
        """
        if self.phase is Phase.ENDED:
            return
        self._now = max(self._now, now)
        if self._aborted_at is not None:
            if now >= self._aborted_at + self.config.close_timeout_s:
                # the transport never reported the loss: give up waiting for it
                self.connection_lost(now, Disconnect(
                    DisconnectReason.TRANSPORT_ERROR, detail="no loss reported after abort"))
            return
        if self.closing is not None:
            if self._close_deadline is not None and now >= self._close_deadline:
                self._abort(now)
            return
        if self.phase is Phase.CONNECTING:
            return
        if self.phase is Phase.AUTHENTICATING and self._auth_deadline is not None \
                and now >= self._auth_deadline:
            self._close(Disconnect(DisconnectReason.AUTH_FAILED,
                                   detail="no auth reply in time", retryable=True), now)
            return
        expired = [t for t, e in self._topics.items()
                   if e.deadline is not None and now >= e.deadline]
        if expired:
            self._close(Disconnect(
                DisconnectReason.SUBSCRIBE_REJECTED,
                detail=f"no ack in time for {len(expired)} topic(s), e.g. {expired[0]!r}"), now)
            return
        if self._ping.timed_out(now):
            self._close(Disconnect(DisconnectReason.PING_TIMEOUT,
                                   detail=f"no pong within {self.config.heartbeat.timeout_s}s"),
                        now)
            return
        if self._ping.due(now):
            self._ping.sent(now, self._stamp_ns())
            heartbeat = self.config.heartbeat
            payload = heartbeat.ping_payload()
            if heartbeat.kind is HeartbeatKind.CONTROL:
                self._actions.append(
                    SendPing(payload.encode() if isinstance(payload, str) else payload))
            else:
                # heartbeats count toward the venue's limit but never wait for it
                self._pacer.try_take(now)
                self._actions.append(SendPing(payload, control=False))
        if self.phase is Phase.LIVE:
            total = messages + self.routed_messages
            last_ns = max(last_data_ns, self.routed_last_ns)
            stale = self._stale.observe(
                now, total, self.topic_counts if self._stale.topic_allowance_s else None,
                self.confirmed(),
                last_ns / 1e9 if self.config.exact_stamps and total else None)
            if stale is not None:
                self._close(Disconnect(DisconnectReason.STALE, detail=stale), now)
                return
        for rule in self.config.health_rules:
            assert self.rtt is not None
            verdict = rule.check(now, self.rtt, self.handler_errors)
            if verdict is not None:
                self._close(Disconnect(DisconnectReason.HEALTH_POLICY, detail=verdict), now)
                return
        self._flush(now)

    def connection_lost(self, now: float, transport: Disconnect | None = None) -> None:
        """The connection is gone: emit ``Lost`` (once) with the classified reason.

        Args:
            now: the current time.
            transport: what the transport says (a protocol error found by its parser,
                or a socket error); used when no cause was recorded before.
        """
        if self.phase is Phase.ENDED:
            return
        disconnect = self.closing or transport or Disconnect(
            DisconnectReason.TRANSPORT_ERROR, detail="connection lost without a closing handshake")
        # writes, pings and LIVE are moot now; rejections and failures still count
        self._actions = [a for a in self._actions
                         if isinstance(a, TopicRejected | UnknownAck | HandlerFailed)]
        self._fire(_Input.LOST)
        self._outbox.clear()
        self._actions.append(Lost(disconnect))

    # ------------------------------------------------------------------ internals

    def _describe_state(self) -> str:
        if self.phase is Phase.CONNECTING:
            return "not open yet"
        if self.phase is Phase.ENDED:
            return "closed"
        return "closing"

    def _fire(self, event: _Input) -> None:
        self.phase = PHASE_TRANSITIONS[self.phase][event]
        self.writable = self.is_open

    def _handler_failed(self, stage: str, exc: BaseException, now: float) -> None:
        self._actions.append(HandlerFailed(stage, exc))
        self._close(Disconnect(DisconnectReason.HANDLER_ERROR,
                               detail=f"{stage}: {type(exc).__name__}"), now)

    def _authenticated(self, now: float) -> None:
        self._fire(_Input.AUTHENTICATED)
        self._auth_deadline = None
        self._actions.append(Authenticated())
        self._queue_subscribes([t for t in self.desired if t not in self._topics], now)
        self._check_live(now)
        self._flush(now)

    def _check_live(self, now: float) -> None:
        if self.phase is not Phase.SUBSCRIBING or self.closing is not None:
            return
        if all(self.topic_state(t) is TopicState.CONFIRMED for t in self.desired):
            self._fire(_Input.SUBSCRIBED)
            self._stale.reset(now)
            self._actions.append(Live())

    def _build(self, batch: _Batch, now: float) -> bool:
        """Build the messages of ``batch`` (once) and queue them; False if the handler raised."""
        try:
            if batch.kind is _Kind.SUBSCRIBE:
                messages = list(self.handler.subscribe_messages(list(batch.topics)))
            else:
                messages = list(self.handler.unsubscribe_messages(list(batch.topics)))
        except Exception as exc:
            self._handler_failed(f"{batch.kind.value}_messages", exc, now)
            return False
        batch.items = [_Item(Outgoing(m), batch) for m in messages]
        self._outbox.extend(batch.items)
        if not batch.items:
            self._batch_done(batch, now)  # nothing to write: as if written
        return True

    def _queue_subscribes(self, topics: list[str], now: float) -> None:
        for chunk in chunked(topics, self._max_topics):
            batch = _Batch(_Kind.SUBSCRIBE, chunk)
            for topic in chunk:
                self._topics[topic] = _Topic(TopicState.QUEUED, batch=batch)
            if not self._build(batch, now):
                return

    def _drop_from_batch(self, batch: _Batch, topic: str, now: float) -> None:
        """Take ``topic`` out of a batch nothing of which was written: rebuild the rest."""
        if topic not in batch.topics or batch.written:
            return
        index = next((i for i, item in enumerate(self._outbox) if item.batch is batch), None)
        for item in batch.items:
            self._outbox.remove(item)
        batch.topics = [t for t in batch.topics if t != topic]
        batch.items = []
        if not batch.topics:
            return
        tail = [self._outbox.pop() for _ in range(len(self._outbox) - (
            len(self._outbox) if index is None else index))]
        self._build(batch, now)  # appends the rebuilt messages where the old ones were
        self._outbox.extend(reversed(tail))

    def _flush(self, now: float) -> None:
        """Move what the pacer allows from the outbox into one SendMessages action."""
        if self.closing is not None or self.phase in (Phase.CONNECTING, Phase.ENDED):
            return
        out: list[Outgoing] = []
        self._pace_at = None
        while self._outbox:
            if not self._pacer.try_take(now):
                self._pace_at = now + self._pacer.delay_s(now)
                break
            item = self._outbox.popleft()
            out.append(item.out)
            batch = item.batch
            if batch is not None:
                self._written(batch, now)
        if out:
            self._actions.append(SendMessages(tuple(out)))
        self._check_live(now)

    def _written(self, batch: _Batch, now: float) -> None:
        """One message of ``batch`` was handed out for writing."""
        batch.written += 1
        if batch.kind is _Kind.UNSUBSCRIBE:
            if batch.written == 1:  # on the wire now: cannot be cancelled any more
                for topic in batch.topics:
                    if topic in self._leaving and self._leaving[topic][1] is batch:
                        del self._leaving[topic]
            return
        ack_timeout_s = self.config.ack_timeout_s
        for topic in batch.topics:
            entry = self._topics.get(topic)
            if entry is None or entry.batch is not batch:
                continue
            if entry.state is TopicState.QUEUED:
                entry.state = TopicState.PENDING
            if entry.state is TopicState.PENDING and ack_timeout_s is not None:
                entry.deadline = now + ack_timeout_s  # from the batch's latest message
        if batch.written >= len(batch.items):
            self._batch_done(batch, now)

    def _batch_done(self, batch: _Batch, now: float) -> None:
        if batch.kind is not _Kind.SUBSCRIBE:
            for topic in batch.topics:
                if topic in self._leaving and self._leaving[topic][1] is batch:
                    del self._leaving[topic]
            return
        for topic in batch.topics:
            entry = self._topics.get(topic)
            if entry is None or entry.batch is not batch:
                continue
            if self.config.ack_timeout_s is None:
                entry.state = TopicState.CONFIRMED
                entry.deadline = None
            elif entry.state is TopicState.QUEUED:  # an empty batch: nothing to ack
                entry.state = TopicState.CONFIRMED
            entry.batch = None if entry.state is TopicState.CONFIRMED else entry.batch

    def _ack(self, ack: Ack, now: float) -> None:
        topic = ack.topic
        entry = self._topics.get(topic)
        if entry is None:
            leaving = self._leaving.get(topic)
            if leaving is not None and leaving[0].state is TopicState.PENDING:
                leaving[0].state = TopicState.CONFIRMED if ack.ok else TopicState.REJECTED
                return
            self._actions.append(UnknownAck(topic))
            return
        if entry.state is not TopicState.PENDING:
            self._actions.append(UnknownAck(topic))
            return
        if ack.ok:
            entry.state = TopicState.CONFIRMED
            entry.deadline = None
            entry.batch = None
            return
        del self._topics[topic]
        self.desired.pop(topic, None)
        self._actions.append(TopicRejected(topic, ack.detail or "rejected"))

    def _begin_close(self, disconnect: Disconnect, now: float, *, send: bool) -> None:
        if self.phase is Phase.ENDED or self.closing is not None:
            return  # the first cause wins
        self.closing = disconnect
        self.writable = False
        self._pace_at = None
        # a LIVE not yet reported is never reported now: no on_connected for a
        # connection that is already closing
        self._actions = [a for a in self._actions if not isinstance(a, Live)]
        dead = disconnect.reason in DEAD_PEER
        self._close_deadline = now + (0.0 if dead else self.config.close_timeout_s)
        if send:
            code = CLOSE_CODES.get(disconnect.reason, GOING_AWAY)
            self._actions.append(Close(code, disconnect.reason.label))
        if dead:
            self._abort(now)

    def _close(self, disconnect: Disconnect, now: float) -> None:
        self._begin_close(disconnect, now, send=True)

    def _abort(self, now: float) -> None:
        if self._aborted_at is None:
            self._aborted_at = now
            self._actions.append(Abort())

