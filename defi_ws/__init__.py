"""defi-ws: WebSocket feeds for crypto and DeFi venues that stay alive, fast and observable.

The public API is re-exported here; see the README for the concepts.
"""

from __future__ import annotations

from defi_ws._core import FeedListener, FrameEncoder
from defi_ws.client import ErrorPolicy, FeedClient
from defi_ws.errors import (
    ConfigError,
    ConnectError,
    DefiWsError,
    FatalDisconnect,
    FeedClosedError,
    IllegalTransition,
    NotConnectedError,
    ProtocolViolation,
    SendQueueFull,
)
from defi_ws.handler import Ack, AuthReply, ExchangeHandler, JsonHandler
from defi_ws.health import ErrorRateRule, Health, HealthRule, RttHistogram, RttRule
from defi_ws.heartbeat import HeartbeatStrategy, JsonPing, NoPing, TextPing, WsPing
from defi_ws.lifecycle import Lifecycle, State
from defi_ws.pacing import TokenBucket
from defi_ws.reasons import Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import ExponentialBackoff, FixedDelay, NoReconnect, ReconnectStrategy
from defi_ws.sequence import Gap
from defi_ws.tls import TlsConfig
from defi_ws.transport import (
    Connection,
    ConnectOptions,
    MemoryTransport,
    PicowsTransport,
    Transport,
)

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "AuthReply",
    "ConfigError",
    "ConnectError",
    "ConnectOptions",
    "Connection",
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
    "MemoryTransport",
    "NoPing",
    "NoReconnect",
    "NotConnectedError",
    "PicowsTransport",
    "ProtocolViolation",
    "ReconnectStrategy",
    "RttHistogram",
    "RttRule",
    "SendQueueFull",
    "State",
    "TextPing",
    "TlsConfig",
    "TokenBucket",
    "Transport",
    "WsPing",
    "__version__",
    "default_is_retryable",
]
