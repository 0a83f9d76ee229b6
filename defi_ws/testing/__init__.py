"""Test support shipped with defi-ws: a frame codec, an in-memory transport, a venue simulator.

The simulator is imported lazily (on first access to :class:`ExchangeSimulator`,
:class:`SimConnection`, :class:`Dialect`, :class:`SequenceScope` or
:func:`login_message`), so importing the frame codec does not load the server, and
``python -m defi_ws.testing.simulator`` does not import its module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from defi_ws.testing.frames import Frame, Opcode, build_frame, parse_frames

if TYPE_CHECKING:
    from defi_ws.testing.simulator import (
        Dialect,
        ExchangeSimulator,
        SequenceScope,
        SimConnection,
        login_message,
    )
    from defi_ws.transport import MemoryConnection, MemoryTransport

__all__ = [
    "Dialect",
    "ExchangeSimulator",
    "Frame",
    "MemoryConnection",
    "MemoryTransport",
    "Opcode",
    "SequenceScope",
    "SimConnection",
    "build_frame",
    "login_message",
    "parse_frames",
]

_LAZY = frozenset(
    {"Dialect", "ExchangeSimulator", "SequenceScope", "SimConnection", "login_message"})
_MEMORY = frozenset({"MemoryConnection", "MemoryTransport"})


def __getattr__(name: str) -> Any:
    if name in _MEMORY:
        from defi_ws import transport

        return getattr(transport, name)
    if name in _LAZY:
        from defi_ws.testing import simulator

        return getattr(simulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
