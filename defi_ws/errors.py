"""The defi-ws error tree.

Every exception defi-ws raises derives from :class:`DefiWsError`::

    DefiWsError
    +-- ConfigError              invalid configuration (raised at construction)
    +-- IllegalTransition        a lifecycle event not allowed in the current state
    +-- NotConnectedError        send() while no connection is open
    +-- SendQueueFull            the bounded outbound queue is full
    +-- ConnectError             one connection attempt failed (carries a Disconnect)
    +-- FeedClosedError          the client was stopped (locally or fatally)
    |   +-- FatalDisconnect      a non-retryable disconnect ended the client

A peer's protocol violation is not raised: it closes the connection and is reported
as a :class:`~defi_ws.reasons.Disconnect` with reason ``PROTOCOL_ERROR`` and the close
code sent.

Exceptions carry structured fields (never secrets) and chain their cause.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from defi_ws.reasons import Disconnect

__all__ = [
    "ConfigError",
    "ConnectError",
    "DefiWsError",
    "FatalDisconnect",
    "FeedClosedError",
    "IllegalTransition",
    "NotConnectedError",
    "SendQueueFull",
]


class DefiWsError(Exception):
    """Base class of every error raised by defi-ws."""


class ConfigError(DefiWsError, ValueError):
    """A configuration value is invalid.

    Attributes:
        problems: every problem found, so one error reports them all.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class IllegalTransition(DefiWsError):
    """An event arrived that the current lifecycle state does not accept.

    The state machine is left unchanged.

    Attributes:
        state: name of the state the machine was in.
        event: name of the rejected event.
    """

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"event {event} is not allowed in state {state}")


class NotConnectedError(DefiWsError):
    """A send was attempted while no connection is open."""


class SendQueueFull(DefiWsError):
    """The outbound queue holds ``limit`` messages; the rate limit has not let them out.

    Attributes:
        limit: the queue's bound (``max_queued_messages``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"outbound queue is full ({limit} messages)")


class ConnectError(DefiWsError):
    """One connection attempt failed before the connection was open.

    Attributes:
        disconnect: the classified failure (connect failed, handshake rejected,
            TLS failure, ...).
    """

    def __init__(self, disconnect: Disconnect) -> None:
        self.disconnect = disconnect
        super().__init__(disconnect.describe())


class FeedClosedError(DefiWsError):
    """The feed client is stopped and will not deliver more data."""


class FatalDisconnect(FeedClosedError):
    """A disconnect classified as non-retryable stopped the client.

    Attributes:
        disconnect: the classified disconnect that ended the client.
    """

    def __init__(self, disconnect: Disconnect) -> None:
        self.disconnect = disconnect
        super().__init__(f"feed stopped by a fatal disconnect: {disconnect.describe()}")

