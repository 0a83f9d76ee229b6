"""The feed lifecycle as a sans-I/O state machine.

:class:`Lifecycle` owns the connection state of one logical feed and nothing else: no
asyncio, no clock (``now`` is always an argument), no sockets. Events go in, actions
come out; :class:`~defi_ws.client.FeedClient` executes the actions. Every transition
is a row of :data:`TRANSITIONS`; an event the current state does not accept raises
:class:`~defi_ws.errors.IllegalTransition` and leaves the state unchanged::

    IDLE --start--> CONNECTING --opened--> AUTHENTICATING --authenticated--> SUBSCRIBING
                        ^                                                       |
                        |                                                   subscribed
                      retry                                                     v
                        |                                                     LIVE
    BACKOFF <--lost-- (CONNECTING | AUTHENTICATING | SUBSCRIBING | LIVE)
    any open state --stop--> STOPPING --finished--> CLOSED (terminal)
    IDLE | BACKOFF --stop--> CLOSED;  any open state --give_up--> CLOSED

A venue without auth passes AUTHENTICATING at once (the driver reports
``authenticated`` immediately), and likewise SUBSCRIBING with nothing to subscribe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from defi_ws.errors import IllegalTransition
from defi_ws.reasons import Classifier, Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ReconnectStrategy

__all__ = [
    "TRANSITIONS",
    "Action",
    "Authenticate",
    "CloseConnection",
    "Connect",
    "Event",
    "Finished",
    "GaveUp",
    "Lifecycle",
    "Live",
    "State",
    "Subscribe",
    "Wait",
]


class State(enum.Enum):
    """Where a feed is in its life."""

    IDLE = "idle"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    SUBSCRIBING = "subscribing"
    LIVE = "live"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    CLOSED = "closed"

    @property
    def has_connection(self) -> bool:
        """Whether a connection is open (or opening) in this state."""
        return self in _CONNECTED_STATES


_CONNECTED_STATES = frozenset(
    {State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE}
)


class Event(enum.Enum):
    """What can happen to a feed."""

    START = "start"
    OPENED = "opened"
    AUTHENTICATED = "authenticated"
    SUBSCRIBED = "subscribed"
    LOST = "lost"
    GIVE_UP = "give_up"
    RETRY = "retry"
    STOP = "stop"
    FINISHED = "finished"


_OPEN = {
    Event.LOST: State.BACKOFF,
    Event.GIVE_UP: State.CLOSED,
    Event.STOP: State.STOPPING,
}

#: Every legal transition: ``TRANSITIONS[state][event] -> next state``.
TRANSITIONS: dict[State, dict[Event, State]] = {
    State.IDLE: {Event.START: State.CONNECTING, Event.STOP: State.CLOSED},
    State.CONNECTING: {Event.OPENED: State.AUTHENTICATING, **_OPEN},
    State.AUTHENTICATING: {Event.AUTHENTICATED: State.SUBSCRIBING, **_OPEN},
    State.SUBSCRIBING: {Event.SUBSCRIBED: State.LIVE, **_OPEN},
    State.LIVE: dict(_OPEN),
    State.BACKOFF: {
        Event.RETRY: State.CONNECTING,
        Event.STOP: State.CLOSED,
    },
    State.STOPPING: {Event.FINISHED: State.CLOSED},
    State.CLOSED: {},
}


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection; ``attempt`` counts consecutive failures before it (0 first)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Send the handler's auth messages (or report authenticated at once)."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Replay the whole desired subscription set on the new connection."""


@dataclass(frozen=True, slots=True)
class Live:
    """The feed is live; ``reconnected`` is False only for the first time."""

    reconnected: bool


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep ``delay_s`` before the next attempt (BACKOFF)."""

    delay_s: float
    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the open connection (closing handshake, then abort after a timeout)."""

    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The feed stopped for good because of ``disconnect``."""

    disconnect: Disconnect


@dataclass(frozen=True, slots=True)
class Finished:
    """The feed is closed after a local stop."""


Action = Connect | Authenticate | Subscribe | Live | Wait | CloseConnection | GaveUp | Finished


class Lifecycle:
    """The state machine of one feed.

    Args:
        strategy: decides the delay before each reconnect, or gives up.
        classify: decides whether a disconnect is retryable.
        stable_after_s: a connection LIVE for this long resets the attempt count.

    Attributes:
        state: the current state.
        attempt: consecutive failed attempts since the last stable connection.
        connections: connections that reached LIVE so far.
        last_disconnect: the most recent classified disconnect.
    """

    def __init__(
        self,
        strategy: ReconnectStrategy,
        *,
        classify: Classifier = default_is_retryable,
        stable_after_s: float = 30.0,
    ) -> None:
        self.state = State.IDLE
        self.attempt = 0
        self.connections = 0
        self.last_disconnect: Disconnect | None = None
        self.live_since: float | None = None
        self._strategy = strategy
        self._classify = classify
        self._stable_after_s = stable_after_s

    def _fire(self, event: Event) -> State:
        try:
            target = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalTransition(self.state.name, event.name) from None
        self.state = target
        return target

    def _check(self, event: Event) -> None:
        if event not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state.name, event.name)

    # -------------------------------------------------------------------- events

    def start(self, now: float) -> list[Action]:
        """The user started the feed."""
        self._fire(Event.START)
        return [Connect(self.attempt)]

    def opened(self, now: float) -> list[Action]:
        """The connection is open: authenticate."""
        self._fire(Event.OPENED)
        return [Authenticate()]

    def authenticated(self, now: float) -> list[Action]:
        """Auth succeeded (or is not needed): replay subscriptions."""
        self._fire(Event.AUTHENTICATED)
        return [Subscribe()]

    def subscribed(self, now: float) -> list[Action]:
        """Every desired topic is confirmed: the feed is live."""
        self._fire(Event.SUBSCRIBED)
        self.connections += 1
        self.live_since = now
        return [Live(reconnected=self.connections > 1)]

    def tick(self, now: float) -> None:
        """Periodic check: a connection LIVE for ``stable_after_s`` resets the attempts."""
        if (
            self.state is State.LIVE
            and self.live_since is not None
            and now - self.live_since >= self._stable_after_s
        ):
            self.attempt = 0

    def lost(self, now: float, disconnect: Disconnect) -> list[Action]:
        """The connection (or the attempt to open it) ended with ``disconnect``.

        Returns:
            ``Wait`` before the next attempt, or ``GaveUp`` when the disconnect is
            fatal or the strategy gives up.
        """
        self.tick(now)  # a stable LIVE connection resets the attempts first
        delay_s: float | None = None
        if disconnect.reason is not DisconnectReason.LOCAL_STOP and self._classify(disconnect):
            delay_s = self._strategy.next_delay_s(self.attempt + 1, disconnect)
        self._check(Event.GIVE_UP if delay_s is None else Event.LOST)
        self.live_since = None
        self.last_disconnect = disconnect
        if delay_s is None:
            self._fire(Event.GIVE_UP)
            return [GaveUp(disconnect)]
        self.attempt += 1
        if disconnect.retry_after_s is not None:
            delay_s = max(delay_s, disconnect.retry_after_s)
        self._fire(Event.LOST)
        return [Wait(delay_s, disconnect)]

    def retry(self, now: float) -> list[Action]:
        """The backoff delay elapsed: connect again."""
        self._fire(Event.RETRY)
        return [Connect(self.attempt)]

    def stop(self, now: float) -> list[Action]:
        """The user stopped the feed."""
        before = self.state
        self._fire(Event.STOP)
        self.live_since = None
        if before.has_connection:
            return [CloseConnection(Disconnect(DisconnectReason.LOCAL_STOP, detail="stop()"))]
        return [Finished()]

    def finished(self, now: float) -> list[Action]:
        """The connection closed after a stop."""
        self._fire(Event.FINISHED)
        return [Finished()]
