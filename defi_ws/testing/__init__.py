"""Test support shipped with defi-ws: a plain RFC 6455 frame codec (and, later, a venue simulator)."""

from __future__ import annotations

from defi_ws.testing.frames import Frame, Opcode, build_frame, parse_frames

__all__ = ["Frame", "Opcode", "build_frame", "parse_frames"]
