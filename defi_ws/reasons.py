"""Why a connection ended: :class:`DisconnectReason` and the :class:`Disconnect` record.

Every disconnect defi-ws observes is classified into exactly one reason. Each reason
has a default retryability; :func:`default_is_retryable` refines it with the evidence
(an HTTP 401/403 handshake rejection is fatal, a 503 is not). Users may pass their
own classifier to :class:`~defi_ws.client.FeedClient` to override it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Classifier",
    "Disconnect",
    "DisconnectReason",
    "default_is_retryable",
]


class DisconnectReason(enum.Enum):
    """The classified cause of a disconnect.

    Attributes:
        retryable: whether, by default, the supervisor reconnects after it.
        peer_caused: whether the peer (not this process) caused it; used for log level.
    """

    LOCAL_STOP = ("local_stop", False, False)
    PEER_CLOSE = ("peer_close", True, True)
    TRANSPORT_ERROR = ("transport_error", True, True)
    CONNECT_FAILED = ("connect_failed", True, True)
    HANDSHAKE_REJECTED = ("handshake_rejected", True, True)
    TLS_FAILURE = ("tls_failure", False, True)
    PING_TIMEOUT = ("ping_timeout", True, True)
    STALE = ("stale", True, True)
    AUTH_FAILED = ("auth_failed", False, True)
    SUBSCRIBE_REJECTED = ("subscribe_rejected", True, True)
    HANDLER_ERROR = ("handler_error", True, False)
    PROTOCOL_ERROR = ("protocol_error", True, True)
    HEALTH_POLICY = ("health_policy", True, False)
    ROTATION = ("rotation", True, False)
    INVALID_URL = ("invalid_url", False, False)

    def __init__(self, label: str, retryable: bool, peer_caused: bool) -> None:
        self.label = label
        self.retryable = retryable
        self.peer_caused = peer_caused

    def __str__(self) -> str:
        return self.label


#: HTTP statuses of a refused handshake that stop the client by default.
FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404})


@dataclass(frozen=True, slots=True)
class Disconnect:
    """One classified disconnect.

    Attributes:
        reason: the classified cause.
        close_code: the WebSocket close code received or sent, if any.
        http_status: the HTTP status of a refused handshake, if any.
        retry_after_s: the delay the venue asked for (Retry-After), if any; once
            recorded by a FeedClient, the delay honoured (at most its
            ``max_retry_after_s``).
        detail: a short human-readable description; never contains secrets.
        retryable: overrides the reason's default retryability when not None
            (an auth *timeout* is retryable, an auth *rejection* is not).
    """

    reason: DisconnectReason
    close_code: int | None = None
    http_status: int | None = None
    retry_after_s: float | None = None
    detail: str = ""
    retryable: bool | None = None

    def describe(self) -> str:
        """Return a one-line description, e.g. ``peer_close (code 1001): going away``."""
        parts = [self.reason.label]
        if self.close_code is not None:
            parts.append(f"(code {self.close_code})")
        if self.http_status is not None:
            parts.append(f"(HTTP {self.http_status})")
        text = " ".join(parts)
        return f"{text}: {self.detail}" if self.detail else text


#: A classifier decides whether a disconnect is followed by a reconnect.
Classifier = Callable[[Disconnect], bool]


def default_is_retryable(disconnect: Disconnect) -> bool:
    """The default retry classification.

    Args:
        disconnect: the disconnect to classify.

    Returns:
        The disconnect's own ``retryable`` when set; else False for local stops,
        certificate failures (TLS_FAILURE), invalid URLs, failed auth and handshakes
        refused with 400/401/403/404, and the reason's default otherwise.
    """
    if disconnect.retryable is not None:
        return disconnect.retryable
    if disconnect.reason is DisconnectReason.HANDSHAKE_REJECTED:
        return disconnect.http_status not in FATAL_HTTP_STATUSES
    return disconnect.reason.retryable
