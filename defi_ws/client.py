"""The supervisor: :class:`FeedClient` keeps one logical feed alive.

It is the only code in defi-ws that sleeps, spawns a task or owns a socket. Decisions
are made by sans-I/O pieces it drives: :class:`~defi_ws.lifecycle.Lifecycle` (states and
backoff), :class:`~defi_ws.subscriptions.SubscriptionSet` (desired topics and acks) and
a :class:`~defi_ws.pacing.Pacer` (outbound rate). Per connection it runs one loop that
wakes on a signal (a frame-level event, a subscribe call, a stop) or on the next
deadline, never more often than needed and never one timer per message.

Example::

    async with FeedClient(MyHandler(url), topics=["trades.BTC"]) as client:
        await client.wait_live()
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import picows

from defi_ws import _compat
from defi_ws._core import ERROR_POLICY_CONTINUE, ERROR_POLICY_DISCONNECT, FeedListener, now_ns
from defi_ws.connect_errors import cap_retry_after, with_url_context
from defi_ws.errors import (
    ConfigError,
    ConnectError,
    FatalDisconnect,
    FeedClosedError,
    NotConnectedError,
    SendQueueFull,
)
from defi_ws.handler import Ack, AuthReply, ExchangeHandler, JsonHandler, chunked
from defi_ws.health import Health, HealthRule, RttHistogram, StaleClock
from defi_ws.heartbeat import HeartbeatKind, HeartbeatStrategy, PingClock, WsPing
from defi_ws.lifecycle import (
    Action,
    CloseConnection,
    GaveUp,
    Lifecycle,
    Live,
    State,
    Wait,
)
from defi_ws.outbound import Outbound
from defi_ws.pacing import Pacer, TokenBucket, Unlimited
from defi_ws.reasons import Classifier, Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ExponentialBackoff, ReconnectStrategy
from defi_ws.sequence import Gap, SequenceTracker
from defi_ws.subscriptions import ACK_TIMEOUT_DETAIL, SubscriptionSet
from defi_ws.tls import TlsConfig
from defi_ws.transport import (
    Connection,
    ConnectOptions,
    PicowsTransport,
    Transport,
    redact_url,
)
from defi_ws.urls import is_secure_url, url_config_problem, url_problem

__all__ = ["ErrorPolicy", "FeedClient"]

log = logging.getLogger("defi_ws.client")


@functools.cache
def _ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """One SSLContext per TLS policy, shared by every client (loading the CA store
    costs ~800 KiB per context)."""
    return tls.context()


#: Close codes the client sends when it ends a connection itself.
_CLOSE_CODES = {
    DisconnectReason.LOCAL_STOP: 1000,
    DisconnectReason.ROTATION: 1000,
    DisconnectReason.HANDLER_ERROR: 1011,
    DisconnectReason.PROTOCOL_ERROR: 1002,
}
_GOING_AWAY = 1001
_MIN_SLEEP_S = 0.001
#: Local disconnects whose peer is presumed dead: CLOSE is sent, then the socket aborted.
_DEAD_PEER = frozenset({DisconnectReason.PING_TIMEOUT, DisconnectReason.STALE})


class ErrorPolicy(enum.IntEnum):
    """What an exception in decode or in the handler's callback does."""

    CONTINUE = ERROR_POLICY_CONTINUE
    """Count it, keep it in the error ring, keep the connection (default)."""
    DISCONNECT = ERROR_POLICY_DISCONNECT
    """Also close the connection (reason HANDLER_ERROR) and reconnect."""


class _Kind(enum.Enum):
    RAW = "raw"
    SUBSCRIBE = "subscribe"


class _ConnectionEvents:
    """The per-connection hooks the hot path calls; they only record and wake."""

    __slots__ = ("_client",)

    def __init__(self, client: FeedClient) -> None:
        self._client = client

    def on_open(self) -> None:
        pass

    def on_pong(self, recv_ns: int, payload: bytes) -> None:
        self._client._on_pong(recv_ns)

    def on_close_received(self, code: int, reason: str) -> None:
        self._client._wake()

    def on_violation(self, code: int, reason: str) -> None:
        self._client._wake()

    def on_handler_error(self, stage: str, exc: BaseException) -> None:
        client = self._client
        client.health.handler_errors += 1
        if client._error_policy is ErrorPolicy.DISCONNECT:
            client._local_disconnect = client._local_disconnect or Disconnect(
                DisconnectReason.HANDLER_ERROR, detail=f"{stage}: {type(exc).__name__}"
            )
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
        ack_timeout_s: limit for each topic's subscribe ack.
        close_timeout_s: limit for the closing handshake before the socket is aborted.
        stable_after_s: a connection LIVE this long resets the attempt count.
        max_retry_after_s: the longest ``Retry-After`` of a refused upgrade that is
            honoured (longer ones are capped to it; a finite number > 0).
        tick_s: longest sleep of the connection loop (watchdog resolution).
        max_message_size: largest inbound message (close 1009 above).
        outbound_rate_per_s: outbound messages per second per connection (None:
            unlimited); the subscription replay after a reconnect obeys it too.
        outbound_burst: messages that may leave at once under the rate limit.
        max_queued_messages: bound of the outbound queue (``SendQueueFull`` above).
        error_policy: what a decode/callback exception does.
        heartbeat: how to ping the venue and recognise its pong (default:
            ``WsPing()``, control frames every 10 s, 10 s to answer).
        stale_after_s: drop the connection (reason STALE) when no data message
            arrives for this long while LIVE; None turns the global check off.
        topic_stale_after_s: per-topic windows (needs ``handler.topic_of``); a
            topic mapped to None is never stale.
        health_rules: policies checked each tick (reason HEALTH_POLICY), e.g.
            ``RttRule(p99_above_s=0.5)`` or ``ErrorRateRule(10, 60)``.
        tls: TLS policy for ``wss://`` (default: verify certificates).
        extra_headers: extra HTTP headers for the upgrade request.
        on_connected: called with no argument each time the feed becomes LIVE.
        on_disconnected: called with the :class:`Disconnect` of each lost connection.
        on_reconnected: called when the feed is LIVE again after a disconnect.
        on_gave_up: called with the fatal :class:`Disconnect` that ended the feed.
        on_subscription_rejected: called with ``(topic, detail)``; the topic is
            dropped from the desired set.
        on_gap: called with each :class:`~defi_ws.sequence.Gap` in a topic's
            sequence numbers (needs ``handler.sequence_of``), reconnects included.
        on_state_change: called with ``(old, new)`` on every lifecycle transition.
        clock: monotonic seconds (tests pass a manual clock).
        name: a label for logs.
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
        ack_timeout_s: float = 10.0,
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
        on_connected: Callable[[], object] | None = None,
        on_disconnected: Callable[[Disconnect], object] | None = None,
        on_reconnected: Callable[[], object] | None = None,
        on_gave_up: Callable[[Disconnect], object] | None = None,
        on_subscription_rejected: Callable[[str, str], object] | None = None,
        on_gap: Callable[[Gap], object] | None = None,
        on_state_change: Callable[[State, State], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "feed",
    ) -> None:
        problems = []
        for label, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("auth_timeout_s", auth_timeout_s),
            ("ack_timeout_s", ack_timeout_s),
            ("close_timeout_s", close_timeout_s),
            ("tick_s", tick_s),
        ):
            if not value > 0:
                problems.append(f"{label} must be > 0, got {value!r}")
        if stable_after_s < 0:
            problems.append(f"stable_after_s must be >= 0, got {stable_after_s!r}")
        if not (isinstance(max_retry_after_s, int | float) and not isinstance(
                max_retry_after_s, bool) and 0 < max_retry_after_s < math.inf):
            problems.append(
                f"max_retry_after_s must be a finite number > 0, got {max_retry_after_s!r}")
        if isinstance(handler, JsonHandler) and type(handler).url is JsonHandler.url:
            problems.extend(filter(None, [url_config_problem(handler.url(0), "handler url")]))
        if max_message_size < 1:
            problems.append(f"max_message_size must be >= 1, got {max_message_size!r}")
        if max_queued_messages < 1:
            problems.append(f"max_queued_messages must be >= 1, got {max_queued_messages!r}")
        if handler.max_topics_per_message < 1:
            problems.append("handler.max_topics_per_message must be >= 1")
        if outbound_rate_per_s is not None and outbound_burst < 1:
            problems.append(f"outbound_burst must be >= 1, got {outbound_burst!r}")
        if problems:
            raise ConfigError(problems)
        if outbound_rate_per_s is not None:
            TokenBucket(outbound_rate_per_s, outbound_burst)  # validates

        self.handler = handler
        self.name = name
        self._transport: Transport = transport or PicowsTransport()
        self._lc = Lifecycle(
            reconnect or ExponentialBackoff(), classify=classify, stable_after_s=stable_after_s
        )
        self._subs = SubscriptionSet(ack_timeout_s)
        self._subs.add(topics)
        self._connect_timeout_s = connect_timeout_s
        self._max_retry_after_s = float(max_retry_after_s)
        self._auth_timeout_s = auth_timeout_s
        self._close_timeout_s = close_timeout_s
        self._tick_s = tick_s
        self._max_message_size = max_message_size
        self._rate = (outbound_rate_per_s, outbound_burst)
        self._max_queued = max_queued_messages
        self._error_policy = ErrorPolicy(error_policy)
        self._options = ConnectOptions(
            handshake_timeout_s=connect_timeout_s,
            max_message_size=max_message_size,
            extra_headers=dict(extra_headers or {}),
        )
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
        self._heartbeat = heartbeat or WsPing()
        self._ping = PingClock(self._heartbeat)
        self._stale = StaleClock(stale_after_s, topic_stale_after_s)
        self._rules = tuple(health_rules)
        # With the default clock the hot path's CLOCK_MONOTONIC receive stamps are on
        # the client's clock: the stale deadline is exact and needs no polling. Other
        # clocks (tests), per-topic windows and health rules poll every tick_s.
        self._exact_stamps = clock is time.monotonic
        self._polling = bool(self._rules) or self._stale.per_topic or (
            self._stale.enabled and not self._exact_stamps)
        self._topic_of: Callable[[Any], str | None] | None = getattr(handler, "topic_of", None)
        self._topic_counts: dict[str, int] = {}
        self._errors_at_open = 0
        #: The data callback of the current connection (see ``_data_callback``).
        self._deliver_data: Callable[[Any], object] = handler.on_message
        self._sequence_of: Callable[[Any], tuple[str, int] | None] | None = getattr(
            handler, "sequence_of", None
        )
        #: Per-topic sequence numbers (used when the handler has ``sequence_of``).
        self.sequences = SequenceTracker()
        if topic_stale_after_s and self._topic_of is None:
            raise ConfigError(["topic_stale_after_s needs a handler with topic_of(message)"])
        self._outbound = Outbound()
        self._pacer: Pacer = Unlimited()
        self._outbox: deque[tuple[_Kind, Any]] = deque()
        self._queued_topics: set[str] = set()
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._signal: asyncio.Event | None = None
        self._live: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._stop_requested = False
        self._local_disconnect: Disconnect | None = None
        self._auth_reply: AuthReply | None = None
        self._fatal: FatalDisconnect | None = None

        #: Counters, RTT histogram and the recent-error ring.
        self.health = Health()
        #: RTT of the current connection only (for health rules).
        self._rtt_connection = RttHistogram()
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
        return self._subs.desired

    @property
    def confirmed_topics(self) -> tuple[str, ...]:
        """Topics the venue confirmed on the current connection."""
        return self._subs.confirmed()

    @property
    def subscriptions(self) -> SubscriptionSet:
        """The subscription tracker (read-only use)."""
        return self._subs

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
        """Health and state as a plain dict, ready for JSON or logging."""
        return self.health.snapshot(
            self._clock(),
            name=self.name,
            state=self._lc.state.name,
            attempt=self._lc.attempt,
            topics_desired=len(self._subs.desired),
            topics_confirmed=len(self._subs.confirmed()),
            topics_pending=len(self._subs.pending()),
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
            FeedClosedError: the client was already stopped.
        """
        if self._task is not None:
            if self._lc.state is State.CLOSED:
                raise FeedClosedError("a stopped FeedClient cannot be restarted")
            return
        self._signal = asyncio.Event()
        self._live = asyncio.Event()
        self._done = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"defi_ws:{self.name}"
        )

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop the feed: closing handshake, then abort after ``close_timeout_s``.

        Safe to call at any time and more than once, including during connect,
        auth or backoff. Leaves no task and no socket behind.
        """
        task = self._task
        if task is None:
            if self._lc.state is State.IDLE:
                self._lc.stop(self._clock())
            return
        self._stop_requested = True
        if task.done():
            return
        if self._conn is None:
            task.cancel()  # connecting or backing off: nothing to close gracefully
        else:
            self._wake()
        limit_s = timeout_s if timeout_s is not None else self._close_timeout_s + 1.0
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A task cancelled before it ever ran never reached its own cleanup.
        self._abort_connection()
        if self._lc.state is not State.CLOSED:
            self._force_closed()
        assert self._done is not None
        self._done.set()

    async def wait_live(self, timeout_s: float | None = None) -> None:
        """Wait until the feed is LIVE.

        Raises:
            FatalDisconnect: the feed gave up.
            FeedClosedError: the feed was stopped.
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
        """Wait until the feed has stopped for good (stop() or a fatal disconnect)."""
        if self._done is not None:
            await self._done.wait()

    def subscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Add topics to the desired set; sent now if connected, else on connect.

        Returns:
            The topics that were not desired before.
        """
        added = self._subs.add([topics] if isinstance(topics, str) else topics)
        if added:
            self._wake()
        return added

    def unsubscribe(self, topics: Iterable[str] | str) -> list[str]:
        """Remove topics from the desired set; unsubscribed now if connected.

        Returns:
            The topics that were desired before.
        """
        removed = self._subs.remove([topics] if isinstance(topics, str) else topics)
        if removed:
            self._wake()
        return removed

    def send(self, message: Any) -> None:
        """Send one message (dicts are JSON-encoded) on the live connection.

        Raises:
            NotConnectedError: no authenticated connection is open.
            SendQueueFull: the outbound queue is at ``max_queued_messages``.
        """
        conn = self._conn
        if (conn is not None and not self._outbox and self._lc.state is State.LIVE
                and self._pacer.try_take(self._clock())):
            self._outbound.send(conn, message)  # fast path: nothing queued, rate allows
            return
        self.send_batch((message,))

    def send_batch(self, messages: Iterable[Any]) -> None:
        """Send messages back to back; they leave in one write when the rate allows.

        Raises:
            NotConnectedError: no authenticated connection is open.
            SendQueueFull: the outbound queue is at ``max_queued_messages``.
        """
        if self._conn is None or self._conn.closed or self._lc.state not in (
            State.SUBSCRIBING,
            State.LIVE,
        ):
            raise NotConnectedError(f"cannot send in state {self._lc.state.name}")
        items = list(messages)
        if len(self._outbox) + len(items) > self._max_queued:
            raise SendQueueFull(self._max_queued)
        self._outbox.extend((_Kind.RAW, m) for m in items)
        self._drain(self._clock())

    # ------------------------------------------------------------------ internals

    def _wake(self) -> None:
        if self._signal is not None:
            self._signal.set()

    def _step(self, actions: list[Action], before: State) -> list[Action]:
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

    async def _run(self) -> None:
        try:
            self._step(self._lc.start(self._clock()), State.IDLE)
            while self._lc.state is not State.CLOSED:
                if self._stop_requested and self._lc.state is not State.CONNECTING:
                    before = self._lc.state
                    self._step(self._lc.stop(self._clock()), before)
                    break
                if self._lc.state is State.CONNECTING:
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
            self._conn = None
            assert self._live is not None and self._done is not None
            self._live.clear()
            self._done.set()

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
        assert self._signal is not None
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

    _pending_wait: Wait

    async def _connection(self) -> None:
        """One attempt: connect, auth, subscribe, live, until the connection ends."""
        attempt = self._lc.attempt
        url = self.handler.url(attempt)
        problem = url_problem(url)
        if problem is not None:  # retrying cannot fix it: fatal (reason INVALID_URL)
            self._lost(Disconnect(DisconnectReason.INVALID_URL, detail=(
                f"handler.url({attempt}) returned {redact_url(str(url))!r}: {problem}")))
            return
        self._deliver_data = self._data_callback()
        listener = FeedListener(
            self._deliver_data,
            self.handler.decode,
            _ConnectionEvents(self),
            on_control=self._on_control,
            control_prefixes=self.handler.control_prefixes,
            max_message_size=self._max_message_size,
            error_policy=int(self._error_policy),
            errors=self.health.errors,
        )
        pong = self._heartbeat.pong_pattern()
        if pong is not None:
            listener.set_app_pong(pong[0], pong[1])
        self._local_disconnect = None
        self._auth_reply = None
        options = self._options
        if is_secure_url(url):
            options = dataclasses.replace(options, ssl_context=_ssl_context(self._tls))
        try:
            async with _compat.timeout(self._connect_timeout_s + 1.0):
                conn = await self._transport.connect(url, listener, options)
        except ConnectError as exc:
            self._lost(with_url_context(exc, url))
            return
        except TimeoutError:
            self._lost(Disconnect(DisconnectReason.CONNECT_FAILED, detail=(
                f"connect timed out after {self._connect_timeout_s + 1.0:g} s")))
            return
        log.debug("%s: connected to %s", self.name, redact_url(url))
        self._conn = conn
        self.health.attach(listener, self._clock())
        try:
            disconnect = await self._session(conn)
        finally:
            self.health.detach()
            if not conn.closed:
                conn.abort()
            self._conn = None
            self._outbox.clear()
            self._queued_topics.clear()
            assert self._live is not None
            self._live.clear()
        if self._lc.state is State.STOPPING:
            self._step(self._lc.finished(self._clock()), State.STOPPING)
            self._record(disconnect)
        else:
            self._lost(disconnect)

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
        actions = self._step(self._lc.lost(self._clock(), disconnect), before)
        self._notify(self._on_disconnected, disconnect)
        for action in actions:
            if isinstance(action, Wait):
                self._pending_wait = action
            elif isinstance(action, GaveUp):
                self._fatal = FatalDisconnect(action.disconnect)
                log.error("%s: giving up: %s", self.name, action.disconnect.describe())
                self._notify(self._on_gave_up, action.disconnect)

    async def _session(self, conn: Connection) -> Disconnect:
        """Drive one open connection until it closes; return why it closed."""
        assert self._signal is not None
        now = self._clock()
        self._pacer = (
            Unlimited() if self._rate[0] is None else TokenBucket(self._rate[0], self._rate[1])
        )
        self._step(self._lc.opened(now), State.CONNECTING)
        self._ping.reset(now)
        self._rtt_connection = RttHistogram()
        self._errors_at_open = self.health.handler_errors
        for rule in self._rules:
            rule.reset(now)
        self._topic_counts.clear()
        self.sequences.new_connection()
        self.handler.on_connection()
        self._subs.reset_connection()
        auth = list(self.handler.auth_messages())
        auth_deadline = now + self._auth_timeout_s
        if auth:
            self._outbox.extend((_Kind.RAW, m) for m in auth)
        else:
            self._step(self._lc.authenticated(now), State.AUTHENTICATING)
        close_deadline: float | None = None
        aborted = False
        while True:
            now = self._clock()
            if conn.closed:
                return await self._classify_loss(conn)
            if self._stop_requested and self._lc.state is not State.STOPPING:
                before = self._lc.state
                for action in self._step(self._lc.stop(now), before):
                    if isinstance(action, CloseConnection):
                        # a close already under way keeps its own reason
                        self._local_disconnect = self._local_disconnect or action.disconnect
            if self._local_disconnect is not None:
                if close_deadline is None:
                    # A dead peer will not answer the closing handshake: don't wait.
                    dead = self._local_disconnect.reason in _DEAD_PEER
                    close_deadline = now + (0.0 if dead else self._close_timeout_s)
                    code = _CLOSE_CODES.get(self._local_disconnect.reason, _GOING_AWAY)
                    conn.close(code, self._local_disconnect.reason.label)
                elif now >= close_deadline and not aborted:
                    conn.abort()  # the transport reports the loss on a later loop turn
                    aborted = True
            else:
                self._watchdog(conn, now)
                if self._local_disconnect is None:
                    self._advance(conn, now, auth_deadline)
                if self._local_disconnect is not None:
                    continue  # start the closing handshake at once
            delay_s = self._drain(now) if self._local_disconnect is None else None
            # Sleep until the next deadline; poll every tick only while a stale clock
            # or a health rule needs to watch counters.
            timeout_s = self._tick_s if self._polling else 3600.0
            closing = self._local_disconnect is not None
            deadlines = (None if aborted else close_deadline,) if closing else (
                self._subs.next_deadline(), self._ping.next_deadline(),
                self._stale.next_deadline() if self._lc.state is State.LIVE else None,
                auth_deadline if self._lc.state is State.AUTHENTICATING else None)
            for deadline in deadlines:
                if deadline is not None:
                    timeout_s = min(timeout_s, max(0.0, deadline - now))
            if delay_s is not None:
                timeout_s = min(timeout_s, delay_s)
            # A floor keeps a deadline that is "now" (float rounding) from spinning.
            timeout_s = max(timeout_s, _MIN_SLEEP_S)
            self._signal.clear()
            if conn.closed or self._signal.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with _compat.timeout(timeout_s):
                    await self._signal.wait()

    def _advance(self, conn: Connection, now: float, auth_deadline: float) -> None:
        """Move auth and subscriptions forward on an open connection."""
        state = self._lc.state
        if state is State.AUTHENTICATING:
            reply = self._auth_reply
            if reply is not None and reply.ok:
                self._step(self._lc.authenticated(now), state)
            elif reply is not None:
                self._local_disconnect = Disconnect(
                    DisconnectReason.AUTH_FAILED, detail=reply.detail[:200] or "auth rejected"
                )
                return
            elif now >= auth_deadline:
                self._local_disconnect = Disconnect(
                    DisconnectReason.AUTH_FAILED, detail="no auth reply in time", retryable=True
                )
                return
            else:
                return
        for topic in self._subs.rejected():
            detail = self._subs.rejection(topic) or ""
            if detail == ACK_TIMEOUT_DETAIL:
                self._local_disconnect = Disconnect(
                    DisconnectReason.SUBSCRIBE_REJECTED, detail=f"no ack for {topic!r} in time"
                )
                return
            self._subs.remove([topic])
            self._notify(self._on_rejected, topic, detail)
            log.warning("%s: subscription %r rejected: %s", self.name, topic, detail)
        self._queue_changes()
        expired = self._subs.expire(now)
        if expired:
            self._local_disconnect = Disconnect(
                DisconnectReason.SUBSCRIBE_REJECTED,
                detail=f"no ack in time for {len(expired)} topic(s), e.g. {expired[0]!r}",
            )
            return
        if self._lc.state is State.SUBSCRIBING and self._subs.settled:
            for action in self._step(self._lc.subscribed(now), State.SUBSCRIBING):
                if isinstance(action, Live):
                    self._stale.reset(now)
                    assert self._live is not None
                    self._live.set()
                    self._notify(self._on_connected)
                    if action.reconnected:
                        self.health.reconnects += 1
                        self._notify(self._on_reconnected)
        self._lc.tick(now)

    def _data_callback(self) -> Callable[[Any], object]:
        """The data callback for the hot path: the handler's own unless topics are counted
        (per-topic stale clocks) or sequences are checked (gap detection)."""
        on_message: Callable[[Any], object] = getattr(
            self.handler, "data_sink", self.handler.on_message)
        topic_of = self._topic_of if self._stale.topic_allowance_s else None
        sequence_of = self._sequence_of
        if topic_of is None and sequence_of is None:
            return on_message
        counts = self._topic_counts
        tracker = self.sequences

        def tracked(message: Any) -> None:
            if topic_of is not None:
                topic = topic_of(message)
                if topic is not None:
                    counts[topic] = counts.get(topic, 0) + 1
            if sequence_of is not None:
                numbered = sequence_of(message)
                if numbered is not None:
                    gap = tracker.observe(numbered[0], numbered[1])
                    if gap is not None:
                        self._gap(gap)
            on_message(message)

        return tracked

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

    def _on_pong(self, recv_ns: int) -> None:
        rtt_ns = self._ping.answered(recv_ns)
        if rtt_ns is not None:
            self.health.rtt.record(rtt_ns)
            self._rtt_connection.record(rtt_ns)
            self._wake()  # the next deadline is now the next ping, not the timeout

    def _watchdog(self, conn: Connection, now: float) -> None:
        """Heartbeat, stale clocks and health rules: once per loop turn, never per message."""
        if self._ping.timed_out(now):
            self._local_disconnect = Disconnect(
                DisconnectReason.PING_TIMEOUT,
                detail=f"no pong within {self._heartbeat.timeout_s}s",
            )
            return
        if self._ping.due(now):
            self._ping.sent(now, now_ns())
            self.health.pings_sent += 1
            if self._heartbeat.kind is HeartbeatKind.CONTROL:
                payload = self._heartbeat.ping_payload()
                conn.send_ping(payload.encode() if isinstance(payload, str) else payload)
            else:
                self._pacer.try_take(now)  # heartbeats count toward the venue's limit
                with contextlib.suppress(NotConnectedError):
                    self._outbound.send(conn, self._heartbeat.ping_payload())
        if self._lc.state is not State.LIVE:
            return
        listener = conn.listener
        stale = self._stale.observe(
            now, listener.messages,
            self._topic_counts if self._stale.topic_allowance_s else None,
            self._subs.confirmed(),
            listener.last_data_ns / 1e9 if self._exact_stamps and listener.messages else None,
        )
        if stale is not None:
            self._local_disconnect = Disconnect(DisconnectReason.STALE, detail=stale)
            return
        for rule in self._rules:
            errors = self.health.handler_errors - self._errors_at_open
            verdict = rule.check(now, self._rtt_connection, errors)
            if verdict is not None:
                self._local_disconnect = Disconnect(DisconnectReason.HEALTH_POLICY, detail=verdict)
                return

    def _queue_changes(self) -> None:
        """Queue unsubscribes and not-yet-queued subscribes for the current connection."""
        size = self.handler.max_topics_per_message
        for chunk in chunked(self._subs.take_unsubscribes(), size):
            self._outbox.extend((_Kind.RAW, m) for m in self.handler.unsubscribe_messages(chunk))
        fresh = [t for t in self._subs.to_send() if t not in self._queued_topics]
        for chunk in chunked(fresh, size):
            self._outbox.append((_Kind.SUBSCRIBE, chunk))
            self._queued_topics.update(chunk)

    def _drain(self, now: float) -> float | None:
        """Write what the rate allows from the outbox, in one write.

        Returns:
            Seconds until more can leave, or None when the outbox is empty.
        """
        conn = self._conn
        if conn is None or not self._outbox:
            return None
        batch: list[Any] = []
        delay_s: float | None = None
        while self._outbox:
            kind, item = self._outbox[0]
            if kind is _Kind.SUBSCRIBE:
                topics = [t for t in item if t in self._subs and t in self._queued_topics]
                messages = list(self.handler.subscribe_messages(topics)) if topics else []
            else:
                topics, messages = [], [item]
            cost = min(len(messages), 1 << 30)
            if cost and not self._pacer.try_take(now, cost):
                delay_s = self._pacer.delay_s(now, cost)
                break
            self._outbox.popleft()
            if topics:
                self._queued_topics.difference_update(topics)
                self._subs.mark_sent(topics, now)
            batch.extend(messages)
        if batch:
            try:
                self._outbound.send_batch(conn, batch)
            except NotConnectedError:
                self._outbox.clear()
                return None
        return delay_s

    def _on_control(self, message: Any) -> None:
        results = self.handler.classify(message)
        if not results:
            self._deliver_data(message)  # data after all: same path as the hot path's
            return
        for result in results:
            if isinstance(result, AuthReply):
                self._auth_reply = result
            elif isinstance(result, Ack):
                if result.unsubscribe:
                    continue
                known = (
                    self._subs.confirm(result.topic)
                    if result.ok
                    else self._subs.reject(result.topic, result.detail or "rejected")
                )
                if not known:
                    self.health.unknown_acks += 1
                    log.debug("%s: ack for a topic not pending: %r", self.name, result.topic)
        self._wake()

    async def _classify_loss(self, conn: Connection) -> Disconnect:
        error = await conn.wait_closed()
        if self._local_disconnect is not None:
            return self._local_disconnect
        listener = conn.listener
        if listener.violation is not None:
            return Disconnect(
                DisconnectReason.PROTOCOL_ERROR,
                close_code=listener.close_code_sent,
                detail=listener.violation,
            )
        if isinstance(error, picows.WSProtocolError):
            return Disconnect(
                DisconnectReason.PROTOCOL_ERROR,
                close_code=int(error.args[0]),
                detail=str(error.args[1])[:200] if len(error.args) > 1 else "",
            )
        if listener.close_code_received:
            return Disconnect(
                DisconnectReason.PEER_CLOSE,
                close_code=listener.close_code_received,
                detail=(listener.close_reason_received or "")[:200],
            )
        detail = (
            f"{type(error).__name__}: {error}"[:200]
            if error is not None
            else "connection lost without a closing handshake"
        )
        return Disconnect(DisconnectReason.TRANSPORT_ERROR, detail=detail)

