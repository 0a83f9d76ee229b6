"""The I/O pump: :class:`FeedClient` keeps one logical feed alive across connections.

It is the only code in defi-ws that sleeps, spawns a task or owns a socket. It keeps
what spans connections (the desired topics, the :class:`~defi_ws.lifecycle.Lifecycle`
with its backoff, the history, health totals and the user's callbacks) and, for each
connection, creates a sans-I/O :class:`~defi_ws.session.Session` that makes every
per-connection decision. The pump connects, feeds events into the Session, carries out
its actions and sleeps until its next deadline or the next event; it never polls per
message. Per-connection state lives in the Session, so a new connection starts clean
by construction.

Example::

    async with FeedClient(MyHandler(url), topics=["trades.BTC"]) as client:
        await client.wait_live()
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import functools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import picows

if TYPE_CHECKING:
    from defi_ws._core import Deduplicator

from defi_ws import _compat
from defi_ws._core import ERROR_POLICY_CONTINUE, ERROR_POLICY_DISCONNECT, FeedListener, now_ns
from defi_ws.connect_errors import cap_retry_after, with_url_context
from defi_ws.errors import (
    ConfigError,
    ConnectError,
    FatalDisconnect,
    FeedClosedError,
    NotConnectedError,
)
from defi_ws.handler import (
    ConflateSpec,
    ExchangeHandler,
    JsonHandler,
    Notice,
    VenueHeartbeat,
    VenueLimits,
)
from defi_ws.health import Health, HealthRule, StaleClock
from defi_ws.heartbeat import HeartbeatStrategy, WsPing
from defi_ws.lifecycle import GaveUp, Lifecycle, Live, State, Wait
from defi_ws.outbound import _SEQUENCES, Outbound
from defi_ws.pacing import TokenBucket
from defi_ws.reasons import Classifier, Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ExponentialBackoff, ReconnectStrategy
from defi_ws.sequence import Gap, SequenceTracker
from defi_ws.session import (
    Abort,
    Authenticated,
    Close,
    HandlerFailed,
    Lost,
    SendMessages,
    SendPing,
    Session,
    SessionConfig,
    TopicRejected,
    UnknownAck,
)
from defi_ws.session import Live as SessionLive
from defi_ws.subscriptions import TopicState
from defi_ws.tls import TlsConfig
from defi_ws.transport import (
    Connection,
    ConnectOptions,
    PicowsTransport,
    Transport,
    classify_connect_error,
    redact_url,
)
from defi_ws.urls import is_secure_url, proxy_url_problem, url_config_problem, url_problem

__all__ = ["ErrorPolicy", "FeedClient"]

log = logging.getLogger("defi_ws.client")

_MIN_SLEEP_S = 0.001
#: A repeated handler exception of one type is logged again at most this often.
_ERROR_LOG_INTERVAL_S = 60.0
#: The close code of a normal closure: a feed the peer ended this way is not failed.
_NORMAL_CLOSURE = 1000


@functools.cache
def _ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """One SSLContext per TLS policy, shared by every client (loading the CA store
    costs ~800 KiB per context)."""
    return tls.context()


class ErrorPolicy(enum.IntEnum):
    """What an exception in decode or in the handler's callback does."""

    CONTINUE = ERROR_POLICY_CONTINUE
    """Count it, log it (rate-limited), keep it in the error ring, keep the connection."""
    DISCONNECT = ERROR_POLICY_DISCONNECT
    """Also close the connection (reason HANDLER_ERROR) and reconnect."""


def _transport_disconnect(error: BaseException | None) -> Disconnect | None:
    """What the transport's own error says about a loss (used when nothing else did)."""
    if isinstance(error, picows.WSProtocolError):
        return Disconnect(DisconnectReason.PROTOCOL_ERROR, close_code=int(error.args[0]),
                          detail=str(error.args[1])[:200] if len(error.args) > 1 else "")
    if error is None:
        return None
    return Disconnect(DisconnectReason.TRANSPORT_ERROR,
                      detail=f"{type(error).__name__}: {error}"[:200])


def _is_clean_end(disconnect: Disconnect) -> bool:
    """A feed the peer closed normally (1000) ended; it did not fail."""
    return (disconnect.reason is DisconnectReason.PEER_CLOSE
            and disconnect.close_code == _NORMAL_CLOSURE)


class _Events:
    """The hot path's hooks for one connection: they feed its Session and wake the pump."""

    __slots__ = ("_client", "_session", "listener")

    def __init__(self, client: FeedClient, session: Session) -> None:
        self._client = client
        self._session = session
        self.listener: FeedListener | None = None

    def on_open(self) -> None:
        self._session.opened(self._client._clock())

    def on_pong(self, recv_ns: int, payload: bytes) -> None:
        rtt_ns = self._session.pong(recv_ns)
        if rtt_ns is not None:
            self._client.health.rtt.record(rtt_ns)
            self._client._wake()  # the next deadline is now the next ping

    def on_close_received(self, code: int, reason: str) -> None:
        self._session.close_received(code, reason, self._client._clock())
        self._client._wake()

    def on_violation(self, code: int, reason: str) -> None:
        sent = self.listener.close_code_sent if self.listener is not None else 0
        self._session.violation(sent or code, reason, self._client._clock())
        self._client._wake()

    def on_handler_error(self, stage: str, exc: BaseException) -> None:
        client = self._client
        client._handler_error(stage, exc, in_ring=True)
        self._session.handler_error(stage, exc, client._clock())
        client._wake()

    def on_disconnected(self) -> None:
        self._client._wake()


class FeedClient:
    """Keeps one feed connected, authenticated and subscribed.

    Args:
        handler: the venue adapter.
        topics: topics to subscribe from the start.
        transport: how to open connections (default: picows).
        reconnect: backoff strategy (default: ``ExponentialBackoff()``).
        classify: decides which disconnects are retried (default:
            :func:`~defi_ws.reasons.default_is_retryable`).
        connect_timeout_s: limit for TCP + TLS + upgrade.
        auth_timeout_s: limit for the venue's auth reply.
        ack_timeout_s: limit for each topic's subscribe ack. ``None`` declares a venue
            that never acks subscriptions: a topic counts as confirmed once its
            subscribe message is written.
        close_timeout_s: limit for the closing handshake before the socket is aborted.
        stable_after_s: a connection LIVE this long resets the attempt count.
        max_retry_after_s: the longest ``Retry-After`` of a refused upgrade that is
            honoured (longer ones are capped to it; a finite number > 0).
        tick_s: polling period of per-topic stale windows, health rules and the stale
            clock on a non-default clock (otherwise the pump sleeps until a deadline).
        max_message_size: largest inbound message (close 1009 above).
        outbound_rate_per_s: outbound messages per second per connection;
            subscribes, unsubscribes, app-level pings and ``send`` obey it. None: the
            handler's ``limits.messages_per_s`` and ``limits.burst`` when it declares
            them (a venue adapter does), else unlimited.
        outbound_burst: messages that may leave at once under the rate limit.
        max_queued_messages: bound of the outbound queue (``SendQueueFull`` above).
        error_policy: what a decode/callback exception does.
        heartbeat: how to ping the venue and recognise its pong (default: the
            handler's ``heartbeat`` attribute when it has one, as venue adapters do,
            else ``WsPing()``, control frames every 10 s, 10 s to answer).
        stale_after_s: drop the connection (reason STALE) when no data message
            arrives for this long while LIVE; None turns the global check off.
        topic_stale_after_s: per-topic windows (needs ``handler.topic_of``); a
            topic mapped to None is never stale.
        health_rules: policies checked each tick (reason HEALTH_POLICY), e.g.
            ``RttRule(p99_above_s=0.5)`` or ``ErrorRateRule(10, 60)``.
        tls: TLS policy for ``wss://`` (default: verify certificates).
        extra_headers: extra HTTP headers for the upgrade request.
        proxy: connect through this proxy: ``http://[user:pass@]host:port`` (HTTP
            CONNECT), ``https://...``, ``socks4://...`` or ``socks5://[user:pass@]host:port``.
            Its credentials never appear in logs, reprs or errors; a proxy that refuses
            is a ``CONNECT_FAILED`` disconnect carrying the proxy's answer.
        on_connected: called with no argument each time the feed becomes LIVE on an
            open connection.
        on_disconnected: called with the :class:`Disconnect` of each lost connection.
        on_reconnected: called when the feed is LIVE again after a disconnect.
        on_gave_up: called with the fatal :class:`Disconnect` that ended the feed.
        on_subscription_rejected: called with ``(topic, detail)``; the topic is
            dropped from the desired set.
        on_gap: called with each :class:`~defi_ws.sequence.Gap` in a topic's
            sequence numbers (needs ``handler.sequence_of``), reconnects included.
        on_state_change: called with ``(old, new)`` on every lifecycle transition.
        on_notice: called with each :class:`~defi_ws.handler.Notice` (the venue will
            cut the connection soon); a :class:`~defi_ws.pool.FeedPool` rotates.
        dedup: a :class:`~defi_ws._core.Deduplicator` shared with redundant
            connections: duplicates are dropped before decode (``FeedPool`` sets it).
        conflate: conflation of a state-like stream (a
            :class:`~defi_ws.handler.ConflateSpec`): within one socket read only the
            newest message per key is decoded and delivered, the others are counted
            (``conflated`` in :meth:`snapshot`). ``None`` (the default) uses the
            handler's ``conflate`` attribute, else its ``conflate_key(raw)`` method,
            else no conflation. Gap detection counts conflated messages as received.
        track_sequences: check ``handler.sequence_of`` for gaps on this connection
            (a pool checks the merged stream instead and turns it off).
        topic_stats: count messages per topic and keep each topic's last receive time
            for :meth:`snapshot` even when nothing else reads topics (it calls
            ``handler.topic_of`` per message: a Python call in the hot path). They are
            counted anyway with sequence tracking or per-topic stale windows (there
            they add ~1,400 instructions per message, ~10 % of an orjson-decoded one).
        connect_gate: asked before every connection attempt with the current clock;
            returns 0 to go or the seconds to wait before asking again (a pool's
            connection-rate limit).
        clock: monotonic seconds (tests pass a manual clock).
        name: a label for logs.

    Raises:
        ConfigError: listing every invalid argument.
    """

    def __init__(
        self,
        handler: ExchangeHandler,
        *,
        topics: Iterable[str] = (),
        transport: Transport | None = None,
        reconnect: ReconnectStrategy | None = None,
        classify: Classifier = default_is_retryable,
        connect_timeout_s: float = 10.0,
        auth_timeout_s: float = 10.0,
        ack_timeout_s: float | None = 10.0,
        close_timeout_s: float = 2.0,
        stable_after_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        tick_s: float = 0.1,
        max_message_size: int = 16 * 1024 * 1024,
        outbound_rate_per_s: float | None = None,
        outbound_burst: int = 5,
        max_queued_messages: int = 10_000,
        error_policy: ErrorPolicy = ErrorPolicy.CONTINUE,
        heartbeat: HeartbeatStrategy | None = None,
        stale_after_s: float | None = None,
        topic_stale_after_s: Mapping[str, float | None] | None = None,
        health_rules: Sequence[HealthRule] = (),
        tls: TlsConfig | None = None,
        extra_headers: dict[str, str] | None = None,
        proxy: str | None = None,
        on_connected: Callable[[], object] | None = None,
        on_disconnected: Callable[[Disconnect], object] | None = None,
        on_reconnected: Callable[[], object] | None = None,
        on_gave_up: Callable[[Disconnect], object] | None = None,
        on_subscription_rejected: Callable[[str, str], object] | None = None,
        on_gap: Callable[[Gap], object] | None = None,
        on_state_change: Callable[[State, State], object] | None = None,
        on_notice: Callable[[Notice], object] | None = None,
        dedup: Deduplicator | None = None,
        conflate: ConflateSpec | None = None,
        track_sequences: bool = True,
        topic_stats: bool = False,
        connect_gate: Callable[[float], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "feed",
    ) -> None:
        problems = []
        for label, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("auth_timeout_s", auth_timeout_s),
            ("ack_timeout_s", 1.0 if ack_timeout_s is None else ack_timeout_s),
            ("close_timeout_s", close_timeout_s),
            ("tick_s", tick_s),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{label} must be a finite number > 0, got {value!r}")
        if not stable_after_s >= 0:
            problems.append(f"stable_after_s must be >= 0, got {stable_after_s!r}")
        if not (isinstance(max_retry_after_s, int | float) and not isinstance(
                max_retry_after_s, bool) and 0 < max_retry_after_s < math.inf):
            problems.append(
                f"max_retry_after_s must be a finite number > 0, got {max_retry_after_s!r}")
        if isinstance(handler, JsonHandler) and type(handler).url is JsonHandler.url:
            problems.extend(filter(None, [url_config_problem(handler.url(0), "handler url")]))
        if proxy is not None and (problem := proxy_url_problem(proxy)) is not None:
            problems.append(f"proxy: {problem}")
        if max_message_size < 1:
            problems.append(f"max_message_size must be >= 1, got {max_message_size!r}")
        if max_queued_messages < 1:
            problems.append(f"max_queued_messages must be >= 1, got {max_queued_messages!r}")
        if not isinstance(handler.max_topics_per_message, int) or \
                handler.max_topics_per_message < 1:
            problems.append("handler.max_topics_per_message must be an int >= 1")
        if outbound_rate_per_s is not None and outbound_burst < 1:
            problems.append(f"outbound_burst must be >= 1, got {outbound_burst!r}")
        topic_of = getattr(handler, "topic_of", None)
        if topic_stale_after_s and topic_of is None:
            problems.append("topic_stale_after_s needs a handler with topic_of(message)")
        if conflate is None:
            conflate = getattr(handler, "conflate", None)
        if conflate is None and callable(getattr(handler, "conflate_key", None)):
            conflate = ConflateSpec(key_of=handler.conflate_key)  # type: ignore[attr-defined]
        if conflate is not None and not isinstance(conflate, ConflateSpec):
            problems.append(f"conflate must be a ConflateSpec or None, got {conflate!r}")
        if problems:
            raise ConfigError(problems)
        venue_limits = getattr(handler, "limits", None)
        if outbound_rate_per_s is None and isinstance(venue_limits, VenueLimits) \
                and venue_limits.messages_per_s is not None:
            outbound_rate_per_s, outbound_burst = venue_limits.messages_per_s, venue_limits.burst
        if outbound_rate_per_s is not None:
            TokenBucket(outbound_rate_per_s, outbound_burst)  # validates
        stale = StaleClock(stale_after_s, topic_stale_after_s)  # validates

        self.handler = handler
        self.name = name
        self._transport: Transport = transport or PicowsTransport()
        self._lc = Lifecycle(
            reconnect or ExponentialBackoff(), classify=classify, stable_after_s=stable_after_s
        )
        self._classify = classify
        self._desired: dict[str, None] = {}
        for topic in [topics] if isinstance(topics, str) else topics:
            self._desired[topic] = None
        self._connect_timeout_s = connect_timeout_s
        self._max_retry_after_s = float(max_retry_after_s)
        self._close_timeout_s = close_timeout_s
        self._max_message_size = max_message_size
        self._error_policy = ErrorPolicy(error_policy)
        self._options = ConnectOptions(
            handshake_timeout_s=connect_timeout_s,
            max_message_size=max_message_size,
            extra_headers=dict(extra_headers or {}),
            proxy=proxy,
        )
        self._heartbeat = heartbeat or getattr(handler, "heartbeat", None) or WsPing()
        # With the default clock the hot path's CLOCK_MONOTONIC receive stamps are on
        # the client's clock: the stale deadline is exact and needs no polling. Other
        # clocks (tests), per-topic windows and health rules poll every tick_s.
        exact_stamps = clock is time.monotonic
        polling = bool(health_rules) or stale.per_topic or (stale.enabled and not exact_stamps)
        self._config = SessionConfig(
            auth_timeout_s=auth_timeout_s, ack_timeout_s=ack_timeout_s,
            close_timeout_s=close_timeout_s, rate_per_s=outbound_rate_per_s,
            burst=outbound_burst, max_queued_messages=max_queued_messages,
            heartbeat=self._heartbeat, stale_after_s=stale_after_s,
            topic_stale_after_s=dict(topic_stale_after_s or {}),
            health_rules=tuple(health_rules), poll_s=tick_s if polling else None,
            exact_stamps=exact_stamps,
            disconnect_on_handler_error=self._error_policy is ErrorPolicy.DISCONNECT,
        )
        self._topic_of: Callable[[Any], str | None] | None = (
            topic_of if stale.topic_allowance_s else None)
        sequence_of = getattr(handler, "sequence_of", None)
        self._sequence_of: Callable[[Any], tuple[str, int] | None] | None = (
            sequence_of if track_sequences and getattr(handler, "tracks_sequences", True)
            else None)
        #: ``handler.topic_of`` for the per-topic counts of ``snapshot()`` alone.
        self._stats_topic_of: Callable[[Any], str | None] | None = (
            topic_of if topic_stats and self._topic_of is None and self._sequence_of is None
            else None)
        self._topic_counted = (self._topic_of is not None or self._sequence_of is not None
                               or self._stats_topic_of is not None)
        #: Per desired topic, over every connection: [data messages, CLOCK_MONOTONIC
        #: ns of the last one] (one list per topic: one dict lookup per message).
        self._topic_stats: dict[str, list[int]] = {}
        self._dedup = dedup
        #: The conflation in use (None: every message is delivered).
        self.conflate: ConflateSpec | None = conflate
        self._on_notice = on_notice
        self._connect_gate = connect_gate
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_reconnected = on_reconnected
        self._on_gave_up = on_gave_up
        self._on_rejected = on_subscription_rejected
        self._on_gap = on_gap
        self._on_state_change = on_state_change
        self._clock = clock
        self._tls = tls or TlsConfig()
        if not self._tls.verify:
            log.warning("%s: TLS certificate verification is OFF: use only for local testing",
                        name)

        #: Per-topic sequence numbers (used when the handler has ``sequence_of``).
        self.sequences = SequenceTracker()
        self._outbound = Outbound()
        #: The reusable frame buffer (``Outbound.buffer``) and where it writes to (the
        #: connection's ``sink``, None while there is no connection): send()'s fast path.
        self._out = self._outbound.buffer
        self._sink: Any = None
        self._session: Session | None = None
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._signal: asyncio.Event | None = None
        self._live: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._stop_requested = False
        self._fatal: FatalDisconnect | None = None
        self._pending_wait: Wait | None = None
        self._error_log: dict[tuple[str, type], list[float]] = {}
        #: Counters, RTT histogram and the recent-error ring.
        self.health = Health()
        #: Every disconnect in order (bounded).
        self.history: deque[Disconnect] = deque(maxlen=256)

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        """The lifecycle state."""
        return self._lc.state

    @property
    def desired_topics(self) -> tuple[str, ...]:
        """Every topic the feed should be subscribed to."""
        return tuple(self._desired)

    @property
    def confirmed_topics(self) -> tuple[str, ...]:
        """Topics the venue confirmed on the current connection."""
        return self._session.confirmed() if self._session is not None else ()

    def topic_state(self, topic: str) -> TopicState | None:
        """The state of a desired topic on the current connection (None if not desired)."""
        if topic not in self._desired:
            return None
        return TopicState.UNSENT if self._session is None else self._session.topic_state(topic)

    @property
    def connection(self) -> Connection | None:
        """The open connection, if any."""
        return self._conn

    @property
    def fatal(self) -> FatalDisconnect | None:
        """The error that ended the feed, if a fatal disconnect did."""
        return self._fatal

    @property
    def last_disconnect(self) -> Disconnect | None:
        """The most recent classified disconnect."""
        return self._lc.last_disconnect

    def snapshot(self) -> dict[str, Any]:
        """Health and state as a plain dict, for people (``defi_ws.report.snapshot_lines``)
        and machines (JSON-ready: str, int, float, bool, None, lists and dicts).

        Reading it never touches the hot path. Counters are totals over every
        connection of the feed unless a field says otherwise. Ages are seconds
        (rounded to ms) up to the snapshot; every ``*_ns`` stamp is CLOCK_MONOTONIC
        (:func:`defi_ws._core.now_ns`, the hot path's receive clock) and every ``*_at``
        is the same moment on the wall clock, ISO 8601 in UTC
        (``"2026-12-01T09:30:00.123Z"``). A value not known yet is None.

        The fields:

        - ``name``: the client's ``name``.
        - ``state``: the lifecycle state (``"CONNECTING"`` ... ``"LIVE"``,
          ``"BACKOFF"``, ``"CLOSED"``).
        - ``attempt``: while connecting (CONNECTING, AUTHENTICATING, SUBSCRIBING)
          the number of this attempt since the feed was last stable (1 first);
          None in every other state.
        - ``backoff_s``: in BACKOFF, the wait before the next attempt (a honoured
          Retry-After included); else None.
        - ``retry_after_s``: the Retry-After of the last disconnect as honoured
          (capped at ``max_retry_after_s``), or None.
        - ``snapshot_ns`` / ``snapshot_at``: when the snapshot was taken.
        - ``connected``: whether a connection is open.
        - ``connected_for_s`` / ``connected_at``: age and opening time of the open
          connection (None when there is none).
        - ``last_data_age_s`` / ``last_data_at``: since / when the last data
          message arrived, on any connection (acks and pongs are not data).
        - ``last_recv_age_s`` / ``last_recv_at``: the same for any frame.
        - ``last_data_ns`` / ``last_recv_ns``: those stamps on the open
          connection (None when there is none).
        - ``frames``, ``messages``, ``bytes_received``, ``control_messages``,
          ``pongs``, ``duplicates``, ``conflated``: hot-path counters (``messages``
          counts data messages delivered; ``duplicates`` those a pool's
          de-duplication dropped; ``conflated`` those a newer message of the same
          key replaced within one read, never decoded).
        - ``connects``: connections opened; ``reconnects``: times the feed was LIVE
          again after a disconnect.
        - ``disconnects``: disconnects by reason label (``{"transport_error": 2}``);
          ``last_disconnect``: the last one, described.
        - ``errors``: exceptions from your code, each counted once: ``decode``
          (the decoder), ``callback`` (``on_message``), ``other`` (handler
          methods such as ``auth_messages``, and the ``on_*`` callbacks), and
          their ``total``.
        - ``handler_errors``, ``decode_errors``, ``callback_errors``: the same
          ``total``, ``decode`` and ``callback`` (kept for older readers).
        - ``recent_errors``: the newest 16 entries of the error ring, oldest first,
          each ``{"ts_ns", "at", "age_s", "kind", "message"}``; kinds are
          ``decode``, ``callback``, ``handler``, ``user_callback``, ``gap`` and
          the disconnect reasons.
        - ``gaps``: sequence gaps reported; ``unknown_acks``: acks for topics not
          pending; ``pings_sent``: heartbeat pings.
        - ``rtt``: heartbeat round trips: ``count``, ``p50_ms``, ``p90_ms``,
          ``p99_ms``, ``p999_ms``, ``max_ms`` (None until the first pong).
        - ``topics_desired``, ``topics_confirmed``, ``topics_pending`` (queued or
          sent, not acked yet): counts over the desired set.
        - ``topics``: per desired topic ``{"state", "messages", "last_seq",
          "last_data_age_s"}``: its :class:`TopicState` value on the open
          connection (``"unsent"`` when there is none), data messages received for
          it over every connection, its last sequence number (with
          ``handler.sequence_of`` in use) and the age of its last message.
          ``messages`` and ``last_data_age_s`` are counted when the client looks
          at each message's topic anyway (sequence tracking, or per-topic stale
          windows) or with ``topic_stats=True``; else None.

        Returns:
            The snapshot: a new dict on every call.
        """
        session = self._session
        counts = {s: 0 for s in TopicState}
        topics: dict[str, dict[str, Any]] = {}
        stamp = now_ns()
        counted = self._topic_counted
        for topic in self._desired:
            topic_state = TopicState.UNSENT if session is None else session.topic_state(topic)
            if topic_state is not None:
                counts[topic_state] += 1
            messages, last = self._topic_stats.get(topic, (0, 0))
            topics[topic] = {
                "state": None if topic_state is None else topic_state.value,
                "messages": messages if counted else None,
                "last_seq": self.sequences.last(topic),
                "last_data_age_s": round((stamp - last) / 1e9, 3) if last else None,
            }
        state = self._lc.state
        connecting = state in (State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING)
        wall = time.time()
        return self.health.snapshot(
            self._clock(), now_ns=stamp, wall_s=wall, name=self.name, state=state.name,
            attempt=self._lc.attempt + 1 if connecting else None,
            snapshot_ns=stamp,
            snapshot_at=datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            topics_desired=len(self._desired), topics_confirmed=counts[TopicState.CONFIRMED],
            topics_pending=counts[TopicState.PENDING] + counts[TopicState.QUEUED],
            topics=topics,
            **self._backoff_snapshot(),
        )

    def _backoff_snapshot(self) -> dict[str, float | None]:
        """The honoured Retry-After of the last disconnect and the current backoff."""
        last = self._lc.last_disconnect
        wait: Wait | None = getattr(self, "_pending_wait", None)
        backoff_s = None
        if self._lc.state is State.BACKOFF and wait is not None and wait.disconnect is last:
            backoff_s = wait.delay_s
        return {
            "retry_after_s": None if last is None else last.retry_after_s,
            "backoff_s": backoff_s,
        }

    def __repr__(self) -> str:
        return f"<FeedClient {self.name!r} state={self._lc.state.name}>"

    async def __aenter__(self) -> FeedClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Start connecting in a background task (idempotent while running).

        Raises:
            FeedClosedError: the client was stopped (a stopped client never restarts).
        """
        if self._lc.state is State.CLOSED or self._stop_requested:
            raise FeedClosedError("a stopped FeedClient cannot be restarted")
        if self._task is not None:
            return
        self._signal = asyncio.Event()
        self._live = asyncio.Event()
        self._done = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"defi_ws:{self.name}"
        )

    async def stop(self, timeout_s: float | None = None, *, rotation: bool = False) -> None:
        """Stop the feed: closing handshake, then abort after ``close_timeout_s``.

        Safe to call at any time and more than once, including during connect,
        auth or backoff. Leaves no task and no socket behind. A cancellation of the
        caller while it waits is not swallowed: the feed is aborted and the
        ``CancelledError`` propagates.

        Args:
            timeout_s: how long to wait for the task (default: ``close_timeout_s`` + 1).
            rotation: the connection is closed because a replacement took over
                (reason ``ROTATION`` instead of ``LOCAL_STOP``).
        """
        task = self._task
        self._stop_requested = True
        if task is None:
            if self._lc.state is State.IDLE:
                self._step(self._lc.stop(self._clock()), State.IDLE)
            return
        if not task.done():
            session = self._session
            if session is None or self._conn is None:
                task.cancel()  # connecting or backing off: nothing to close gracefully
            else:
                if rotation:
                    session.rotate(self._clock(), "replaced by a newer connection")
                else:
                    session.stop(self._clock())
                self._wake()
            limit_s = timeout_s if timeout_s is not None else self._close_timeout_s + 1.0
            try:
                done, _ = await asyncio.wait({task}, timeout=limit_s)
                if not done:
                    task.cancel()
                    await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                self._abort_connection()
                raise
        if not task.cancelled() and task.done():
            task.exception()  # retrieved: a supervisor failure was logged by _run
        self._abort_connection()  # a task cancelled before it ran never cleaned up
        if self._lc.state is not State.CLOSED:
            self._force_closed()
        assert self._done is not None
        self._done.set()

    async def wait_live(self, timeout_s: float | None = None) -> None:
        """Wait until the feed is LIVE.

        Raises:
            FatalDisconnect: the feed gave up after a failure.
            FeedClosedError: the feed was stopped, or ended (a normal close under a
                strategy that does not reconnect).
            TimeoutError: not LIVE within ``timeout_s``.
        """
        if self._live is None or self._done is None:
            raise FeedClosedError("the client is not started")
        async with _compat.timeout(timeout_s):
            while not self._live.is_set():
                if self._done.is_set():
                    break
                live = asyncio.ensure_future(self._live.wait())
                done = asyncio.ensure_future(self._done.wait())
                try:
                    await asyncio.wait({live, done}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    live.cancel()
                    done.cancel()
        if self._live.is_set():
            return
        if self._fatal is not None:
            raise self._fatal
        raise FeedClosedError("the feed is stopped")

    async def wait_closed(self) -> None:
        """Wait until the feed has stopped for good (stop(), an end, or a fatal disconnect)."""
        if self._done is not None:
            await self._done.wait()

    def subscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Add topics to the desired set; sent now if connected, else on connect.

        Returns:
            The topics that were not desired before.
        """
        items = [topics] if isinstance(topics, str) else list(topics)
        if self._session is not None:
            added = self._session.subscribe(items, self._clock())
            self._wake()
        else:
            added = [t for t in dict.fromkeys(items) if t not in self._desired]
            self._desired.update(dict.fromkeys(added))
        for topic in added:
            self.sequences.forget(topic)  # a deliberate (re)subscribe is not a gap
        return added

    def unsubscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Remove topics from the desired set; unsubscribed now if connected.

        Returns:
            The topics that were desired before.
        """
        items = [topics] if isinstance(topics, str) else list(topics)
        if self._session is not None:
            removed = self._session.unsubscribe(items, self._clock())
            self._wake()
        else:
            removed = [t for t in dict.fromkeys(items) if t in self._desired]
            for topic in removed:
                del self._desired[topic]
        for topic in removed:
            self.sequences.forget(topic)
            self._topic_stats.pop(topic, None)
        return removed

    def pause_reading(self) -> None:
        """Stop reading the current connection's socket until :meth:`resume_reading`.

        Backpressure for a consumer that cannot keep up: the venue's data waits in the
        kernel's buffers and then the venue's, instead of in this process. Only the
        current connection is paused (a new one reads); pings are not answered
        meanwhile, so a pause longer than the venue's or the heartbeat's patience ends
        in a disconnect. Idempotent.
        """
        conn = self._conn
        pause = getattr(conn, "pause_reading", None)
        if pause is not None:
            pause()

    def resume_reading(self) -> None:
        """Read the current connection's socket again (idempotent)."""
        conn = self._conn
        resume = getattr(conn, "resume_reading", None)
        if resume is not None:
            resume()

    def send(self, message: Any, *, binary: bool = False) -> None:
        """Send one message whenever the WebSocket is open.

        ``bytes``/``bytearray``/``memoryview``/``str`` are sent as they are, masked
        straight from their memory into the connection's reusable frame buffer; a
        payload writer (a callable taking the :class:`~defi_ws._core.OutBuffer`)
        writes its payload into it (``out.write(...)``); anything else is
        JSON-encoded (``orjson``). It leaves at once when nothing is queued and the
        outbound rate allows it (no Python object is made for the frame or the
        write on plain TCP), else it is queued behind what is (auth messages first)
        and leaves in order.

        Raises:
            NotConnectedError: no WebSocket is open (or it is closing).
            SendQueueFull: the outbound queue is at ``max_queued_messages``.
        """
        session, sink = self._session, self._sink
        if session is None:
            raise NotConnectedError(f"cannot send in state {self._lc.state.name}")
        if sink is not None and session.writable and not (session.outbox or session.paced):
            self._out.send(sink, message, binary)  # try_send_now's answer, without a call
            return
        now = self._clock()
        if sink is not None and session.try_send_now(1, now):
            self._out.send(sink, message, binary)
            return
        session.send((message,), now, binary=binary)
        self._wake()

    def send_batch(self, messages: Iterable[Any], *, binary: bool = False) -> None:
        """Send messages back to back; they leave in one write when the rate allows.

        Raises:
            NotConnectedError: no WebSocket is open (or it is closing).
            SendQueueFull: the outbound queue is at ``max_queued_messages``.
        """
        session, sink = self._session, self._sink
        if session is None:
            raise NotConnectedError(f"cannot send in state {self._lc.state.name}")
        items = messages if isinstance(messages, _SEQUENCES) else list(messages)
        if not items:
            return
        if sink is not None and session.writable and not (session.outbox or session.paced):
            self._out.send_batch(sink, items, binary)
            return
        now = self._clock()
        if sink is not None and session.try_send_now(len(items), now):
            self._out.send_batch(sink, items, binary)
            return
        session.send(items, now, binary=binary)
        self._wake()

    # ------------------------------------------------------------------ internals

    def _wake(self) -> None:
        if self._signal is not None:
            self._signal.set()

    def _step(self, actions: list[Any], before: State) -> list[Any]:
        after = self._lc.state
        if after is not before:
            log.info("%s: %s -> %s", self.name, before.name, after.name)
            self._notify(self._on_state_change, before, after)
        return actions

    def _notify(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:
            self.health.handler_errors += 1
            self.health.errors.append(
                (now_ns(), "user_callback", f"{type(exc).__name__}: {exc}"[:200])
            )
            log.exception("%s: user callback %r raised", self.name, callback)

    def _handler_error(self, stage: str, exc: BaseException, *, in_ring: bool) -> None:
        """Count one handler exception once; log the first of its type with the
        traceback at ERROR, then at most one per type every minute."""
        self.health.handler_errors += 1
        if not in_ring:  # raised outside the hot path: not in the listener's ring yet
            self.health.errors.append(
                (now_ns(), "handler", f"{stage}: {type(exc).__name__}: {exc}"[:200]))
        key = (stage, type(exc))
        now = self._clock()
        seen = self._error_log.get(key)
        if seen is not None and now - seen[0] < _ERROR_LOG_INTERVAL_S:
            seen[1] += 1
            return
        if len(self._error_log) >= 256:
            self._error_log.clear()
        suppressed = 0 if seen is None else int(seen[1])
        self._error_log[key] = [now, 0]
        log.error("%s: handler %s raised %s%s", self.name, stage, type(exc).__name__,
                  f" ({suppressed} more of this type since the last report)" if suppressed
                  else " (further ones of this type are logged at most once a minute)",
                  exc_info=(type(exc), exc, exc.__traceback__))

    async def _run(self) -> None:
        try:
            self._step(self._lc.start(self._clock()), State.IDLE)
            while self._lc.state is not State.CLOSED:
                if self._stop_requested and self._lc.state is not State.CONNECTING:
                    before = self._lc.state
                    self._step(self._lc.stop(self._clock()), before)
                    break
                if self._lc.state is State.CONNECTING:
                    if not await self._admitted():
                        self._force_closed()  # stopped while waiting for the gate
                        break
                    await self._connection()
                elif self._lc.state is State.BACKOFF:
                    await self._backoff()
                else:  # pragma: no cover - the loop above covers every reachable state
                    raise AssertionError(f"unexpected state {self._lc.state}")
        except asyncio.CancelledError:
            self._abort_connection()
            self._force_closed()
            raise
        except BaseException:
            log.exception("%s: supervisor failed", self.name)
            self._abort_connection()
            self._force_closed()
            raise
        finally:
            self._conn = self._sink = None
            self._session = None
            assert self._live is not None and self._done is not None
            self._live.clear()
            self._done.set()

    async def _admitted(self) -> bool:
        """Wait until ``connect_gate`` lets this attempt through (False: stopped)."""
        gate = self._connect_gate
        if gate is None:
            return True
        assert self._signal is not None
        while not self._stop_requested:
            wait_s = gate(self._clock())
            if wait_s <= 0:
                return True
            log.debug("%s: connection rate limit: next attempt in %.3fs", self.name, wait_s)
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(wait_s):
                    await self._signal.wait()
        return False

    def _force_closed(self) -> None:
        state = self._lc.state
        if state in (State.IDLE, State.BACKOFF) or state.has_connection:
            self._step(self._lc.stop(self._clock()), state)
        if self._lc.state is State.STOPPING:
            self._step(self._lc.finished(self._clock()), State.STOPPING)

    def _abort_connection(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.abort()

    async def _backoff(self) -> None:
        assert self._signal is not None and self._pending_wait is not None
        wait = self._pending_wait
        deadline = self._clock() + wait.delay_s
        log.debug(
            "%s: reconnect in %.3fs after %s", self.name, wait.delay_s, wait.disconnect.describe()
        )
        while not self._stop_requested:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(remaining):
                    await self._signal.wait()
        if not self._stop_requested:
            self._step(self._lc.retry(self._clock()), State.BACKOFF)

    async def _connection(self) -> None:
        """One attempt: connect, then pump the Session until the connection ends."""
        handler = self.handler
        try:
            url = handler.url(self._lc.attempt)
        except Exception as exc:
            self._handler_error("url", exc, in_ring=False)
            self._lost(Disconnect(DisconnectReason.HANDLER_ERROR,
                                  detail=f"url: {type(exc).__name__}"))
            return
        problem = url_problem(url)
        if problem is not None:  # retrying cannot fix it: fatal (reason INVALID_URL)
            self._lost(Disconnect(DisconnectReason.INVALID_URL, detail=(
                f"handler.url({self._lc.attempt}) returned {redact_url(str(url))!r}: "
                f"{problem}")))
            return
        session = Session(handler, self._config, self._desired, stamp_ns=now_ns)
        events = _Events(self, session)
        deliver = self._data_callback(session, events)
        conflate = self.conflate
        listener = FeedListener(
            deliver, handler.decode, events,
            on_control=functools.partial(self._on_control, session, events, deliver),
            control_prefixes=handler.control_prefixes,
            max_message_size=self._max_message_size, error_policy=int(self._error_policy),
            errors=self.health.errors, dedup=self._dedup,
            conflate_field=None if conflate is None else conflate.field,
            conflate_key=None if conflate is None else conflate.key_of,
        )
        events.listener = listener
        pong = self._heartbeat.pong_pattern()
        if pong is not None:
            listener.set_app_pong(pong[0], pong[1])
        options = self._options
        if is_secure_url(url):
            options = dataclasses.replace(options, ssl_context=_ssl_context(self._tls))
        self.sequences.new_connection()
        self._session = session  # send() queues from the moment the WebSocket opens
        try:
            async with _compat.timeout(self._connect_timeout_s + 1.0):
                conn = await self._transport.connect(url, listener, options)
        except (ConnectError, TimeoutError) as exc:
            self._session = None
            self._lost(with_url_context(exc, url) if isinstance(exc, ConnectError) else Disconnect(
                DisconnectReason.CONNECT_FAILED,
                detail=f"connect timed out after {self._connect_timeout_s + 1.0:g} s"))
            return
        except Exception as exc:  # a transport that broke its contract: still classified
            self._session = None
            self._lost(classify_connect_error(exc))
            return
        except BaseException:
            self._session = None
            raise
        log.debug("%s: connected to %s", self.name, redact_url(url))
        self._conn = conn
        self._sink = getattr(conn, "sink", conn)
        now = self._clock()
        self.health.attach(listener, now, routed=session)
        self._step(self._lc.opened(now), State.CONNECTING)
        session.opened(now)  # no-op when the listener's on_open already did it
        try:
            disconnect = await self._pump(session, conn, listener)
        finally:
            self.health.detach()
            if not conn.closed:
                conn.abort()
            self._conn = self._sink = None
            self._session = None
            assert self._live is not None
            self._live.clear()
        if self._lc.state is State.STOPPING:
            self._step(self._lc.finished(self._clock()), State.STOPPING)
            self._record(disconnect)
        else:
            self._lost(disconnect)

    async def _pump(self, session: Session, conn: Connection, listener: FeedListener
                    ) -> Disconnect:
        """Feed time and the transport's state into ``session`` and carry out its
        actions until it reports the connection lost."""
        signal = self._signal
        assert signal is not None
        while True:
            now = self._clock()
            if self._stop_requested and self._lc.state is not State.STOPPING:
                before = self._lc.state
                self._step(self._lc.stop(now), before)
                session.stop(now)  # a close already under way keeps its own reason
            if conn.closed:
                error = await conn.wait_closed()
                session.connection_lost(self._clock(), _transport_disconnect(error))
            else:
                session.tick(now, listener.messages + listener.duplicates + listener.conflated,
                             listener.last_data_ns)
            lost = self._apply(session, conn)
            if lost is not None:
                return lost
            self._lc.tick(now)
            deadline = session.next_deadline()
            timeout_s = 3600.0 if deadline is None else deadline - now
            # A floor keeps a deadline that is "now" (float rounding) from spinning.
            timeout_s = max(timeout_s, _MIN_SLEEP_S)
            signal.clear()
            if conn.closed or session.has_actions:
                continue
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(timeout_s):
                    await signal.wait()

    def _apply(self, session: Session, conn: Connection) -> Disconnect | None:
        """Carry out the session's actions; return the disconnect once it is lost."""
        lost: Disconnect | None = None
        for action in session.take_actions():
            if isinstance(action, SendMessages):
                try:
                    self._outbound.send_mixed(conn, [(m.payload, m.binary)
                                                     for m in action.messages])
                except NotConnectedError:  # the loss will follow
                    pass
                except Exception as exc:  # a queued message that cannot be encoded
                    session.encode_failed(exc, self._clock())
            elif isinstance(action, SendPing):
                self.health.pings_sent += 1
                if action.control:
                    payload = action.payload
                    conn.send_ping(payload.encode() if isinstance(payload, str) else payload)
                else:
                    with contextlib.suppress(NotConnectedError):
                        self._outbound.send(conn, action.payload)
            elif isinstance(action, Close):
                conn.close(action.code, action.reason)
            elif isinstance(action, Abort):
                conn.abort()  # the transport reports the loss on a later turn
            elif isinstance(action, Authenticated):
                self._step(self._lc.authenticated(self._clock()), State.AUTHENTICATING)
            elif isinstance(action, SessionLive):
                self._became_live(conn)
            elif isinstance(action, TopicRejected):
                self.sequences.forget(action.topic)
                log.warning("%s: subscription %r rejected: %s", self.name, action.topic,
                            action.detail)
                self._notify(self._on_rejected, action.topic, action.detail)
            elif isinstance(action, UnknownAck):
                self.health.unknown_acks += 1
                log.debug("%s: ack for a topic not pending: %r", self.name, action.topic)
            elif isinstance(action, HandlerFailed):
                self._handler_error(action.stage, action.error, in_ring=False)
            elif isinstance(action, Lost):
                lost = action.disconnect
        return lost

    def _became_live(self, conn: Connection) -> None:
        for action in self._step(self._lc.subscribed(self._clock()), State.SUBSCRIBING):
            if isinstance(action, Live):
                assert self._live is not None
                self._live.set()
                if conn.closed:  # pragma: no cover - the session never goes LIVE then
                    return
                self._notify(self._on_connected)
                if action.reconnected:
                    self.health.reconnects += 1
                    self._notify(self._on_reconnected)

    def _record(self, disconnect: Disconnect) -> None:
        self.health.disconnects[disconnect.reason.label] += 1
        self.health.last_disconnect = disconnect.describe()
        self.health.errors.append((now_ns(), disconnect.reason.label, disconnect.describe()[:200]))
        self.history.append(disconnect)
        level = logging.WARNING if disconnect.reason.peer_caused else logging.DEBUG
        log.log(level, "%s: disconnected: %s", self.name, disconnect.describe())

    def _lost(self, disconnect: Disconnect) -> None:
        disconnect = cap_retry_after(disconnect, self._max_retry_after_s)
        self._record(disconnect)
        before = self._lc.state
        actions = self._lc.lost(self._clock(), disconnect)
        for action in actions:  # before any callback: snapshot() shows the wait
            if isinstance(action, Wait):
                self._pending_wait = action
        self._step(actions, before)
        self._notify(self._on_disconnected, disconnect)
        for action in actions:
            if isinstance(action, GaveUp):
                if _is_clean_end(action.disconnect) and self._classify(action.disconnect):
                    log.info("%s: feed ended by the peer (%s); not reconnecting", self.name,
                             action.disconnect.describe())
                    continue
                self._fatal = FatalDisconnect(action.disconnect)
                log.error("%s: giving up: %s", self.name, action.disconnect.describe())
                self._notify(self._on_gave_up, action.disconnect)

    def _data_callback(self, session: Session, events: _Events) -> Callable[[Any], object]:
        """The data callback for the hot path: the handler's own unless topics are counted
        (per-topic stale clocks) or sequences are checked (gap detection).

        With conflation, each delivered message tells the tracker how many messages of
        its key it replaced (``listener.superseded``): they arrived, so they are no gap.
        """
        on_message: Callable[[Any], object] = getattr(
            self.handler, "data_sink", self.handler.on_message)
        topic_of = self._topic_of or self._stats_topic_of
        stale_counts = self._topic_of is not None
        sequence_of = self._sequence_of
        if topic_of is None and sequence_of is None:
            return on_message
        counts = session.topic_counts
        stats = self._topic_stats
        clock_ns = time.monotonic_ns  # CLOCK_MONOTONIC, as now_ns(), and a cheaper call
        tracker = self.sequences
        desired = self._desired
        conflating = self.conflate is not None

        def tracked(message: Any) -> None:
            topic = None
            if topic_of is not None:
                topic = topic_of(message)
                if stale_counts and topic in desired:  # other names never grow the dict
                    counts[topic] = counts.get(topic, 0) + 1
            if sequence_of is not None:
                numbered = sequence_of(message)
                if numbered is not None:
                    topic = numbered[0]
                    listener = events.listener
                    gap = tracker.observe(topic, numbered[1], listener.superseded
                                          if conflating and listener is not None else 0)
                    if gap is not None:
                        self._gap(gap)
            entry = stats.get(topic)  # type: ignore[arg-type]
            if entry is None and topic in desired:
                entry = stats[topic] = [0, 0]
            if entry is not None:
                entry[0] += 1
                entry[1] = clock_ns()
            on_message(message)

        return tracked

    def _on_control(self, session: Session, events: _Events,
                    deliver: Callable[[Any], object], message: Any) -> None:
        results = self.handler.classify(message)
        if any(isinstance(result, Notice) for result in results):
            for result in results:
                if isinstance(result, Notice):
                    log.info("%s: the venue will cut this connection%s: %s", self.name,
                             "" if result.cut_in_s is None else f" in {result.cut_in_s:g} s",
                             result.detail)
                    self._notify(self._on_notice, result)
            results = [r for r in results if not isinstance(r, Notice)]
            if not results:
                return
        if not results:
            # data after all: counted as data, and the same path as the hot path's
            listener = events.listener
            session.data_routed(listener.last_recv_ns if listener is not None else now_ns())
            deliver(message)
            return
        if all(isinstance(result, VenueHeartbeat) for result in results):
            return  # not data: counted in control_messages, not on the stale clock
        session.control(results, self._clock())
        self._wake()

    def _gap(self, gap: Gap) -> None:
        self.health.gaps += 1
        self.health.errors.append(
            (now_ns(), "gap", f"{gap.topic}: missing {gap.first_missing}..{gap.last_missing}")
        )
        log.warning(
            "%s: sequence gap on %r: %d message(s) missing (%d..%d)%s", self.name, gap.topic,
            gap.size, gap.first_missing, gap.last_missing,
            " across a reconnect" if gap.across_reconnect else "",
        )
        self._notify(self._on_gap, gap)
