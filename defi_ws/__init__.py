"""defi-ws: WebSocket feeds for crypto and DeFi venues that stay alive, fast and observable."""

from __future__ import annotations

from defi_ws._core import FeedListener, FrameEncoder
from defi_ws.errors import (
    ConfigError,
    DefiWsError,
    FatalDisconnect,
    FeedClosedError,
    IllegalTransition,
    NotConnectedError,
    ProtocolViolation,
)
from defi_ws.reasons import Disconnect, DisconnectReason

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DefiWsError",
    "Disconnect",
    "DisconnectReason",
    "FatalDisconnect",
    "FeedClosedError",
    "FeedListener",
    "FrameEncoder",
    "IllegalTransition",
    "NotConnectedError",
    "ProtocolViolation",
    "__version__",
]
