"""defi-ws: WebSocket feeds for crypto and DeFi venues that stay alive, fast and observable.

The public API is re-exported here; see the README for the concepts. Test doubles
(``MemoryTransport``, ``ExchangeSimulator``) live in :mod:`defi_ws.testing`.
"""

from __future__ import annotations

from defi_ws._core import Deduplicator, FeedListener, FrameEncoder, OutBuffer
from defi_ws.client import ErrorPolicy, FeedClient
from defi_ws.errors import (
    ConfigError,
    ConnectError,
    DefiWsError,
    FatalDisconnect,
    FeedClosedError,
    IllegalTransition,
    NotConnectedError,
    SendQueueFull,
)
from defi_ws.handler import (
    Ack,
    AuthReply,
    ConflateSpec,
    DedupSpec,
    ExchangeHandler,
    JsonHandler,
    Notice,
    VenueHeartbeat,
    VenueLimits,
)
from defi_ws.health import ErrorRateRule, Health, HealthRule, RttHistogram, RttRule
from defi_ws.heartbeat import HeartbeatStrategy, JsonPing, NoPing, TextPing, WsPing
from defi_ws.lifecycle import Lifecycle, State
from defi_ws.pacing import TokenBucket
from defi_ws.pool import FeedPool
from defi_ws.reasons import Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ExponentialBackoff, FixedDelay, NoReconnect, ReconnectStrategy
from defi_ws.sequence import Gap
from defi_ws.session import Session, SessionConfig
from defi_ws.subscriptions import TopicState
from defi_ws.tls import TlsConfig
from defi_ws.transport import (
    Connection,
    ConnectOptions,
    PicowsTransport,
    Transport,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AuthReply",
    "ConfigError",
    "ConflateSpec",
    "ConnectError",
    "ConnectOptions",
    "Connection",
    "DedupSpec",
    "Deduplicator",
    "DefiWsError",
    "Disconnect",
    "DisconnectReason",
    "ErrorPolicy",
    "ErrorRateRule",
    "ExchangeHandler",
    "ExponentialBackoff",
    "FatalDisconnect",
    "FeedClient",
    "FeedClosedError",
    "FeedListener",
    "FeedPool",
    "FixedDelay",
    "FrameEncoder",
    "Gap",
    "Health",
    "HealthRule",
    "HeartbeatStrategy",
    "IllegalTransition",
    "JsonHandler",
    "JsonPing",
    "Lifecycle",
    "NoPing",
    "NoReconnect",
    "NotConnectedError",
    "Notice",
    "OutBuffer",
    "PicowsTransport",
    "ReconnectStrategy",
    "RttHistogram",
    "RttRule",
    "SendQueueFull",
    "Session",
    "SessionConfig",
    "State",
    "TextPing",
    "TlsConfig",
    "TokenBucket",
    "TopicState",
    "Transport",
    "VenueHeartbeat",
    "VenueLimits",
    "WsPing",
    "__version__",
    "default_is_retryable",
]
