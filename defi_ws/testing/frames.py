"""A small, strict RFC 6455 frame codec in pure Python.

Used by test servers to read what a client really put on the wire (checking that every
frame is masked) and to write frames a well-behaved server never would (RSV bits, stray
continuations, invalid UTF-8). Not on any hot path.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

__all__ = ["Frame", "Opcode", "build_frame", "parse_frames"]


class Opcode(enum.IntEnum):
    """WebSocket opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        opcode: the frame's opcode (an int for reserved opcodes).
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv: RSV1..3 as an integer (RSV1 = 4).
        mask: the masking key, or None for an unmasked frame.
    """

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bytes | None = None

    @property
    def close_code(self) -> int | None:
        """The status code of a CLOSE frame (None if absent)."""
        if self.opcode != Opcode.CLOSE or len(self.payload) < 2:
            return None
        return int.from_bytes(self.payload[:2], "big")


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def build_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    random_mask: bool = False,
) -> bytes:
    """Encode one frame.

    Args:
        opcode: any 4-bit opcode, reserved ones included.
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv: RSV bits as an integer (RSV1 = 4, RSV2 = 2, RSV3 = 1).
        mask: a 4-byte masking key (client frames); None for server frames.
        random_mask: draw a random masking key.

    Returns:
        The frame's bytes.
    """
    if random_mask:
        mask = os.urandom(4)
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    mask_bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size < 126:
        header = bytes([first, mask_bit | size])
    elif size < 65536:
        header = bytes([first, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + size.to_bytes(8, "big")
    if mask is None:
        return header + payload
    return header + mask + _apply_mask(payload, mask)


def parse_frames(data: bytes, *, expect_masked: bool) -> tuple[list[Frame], bytes]:
    """Decode every complete frame in ``data``.

    Args:
        data: raw bytes from the wire (after the HTTP upgrade).
        expect_masked: require the mask bit (frames from a client) or its absence.

    Returns:
        The frames and the bytes of a trailing incomplete frame.

    Raises:
        ValueError: a frame's mask bit is not what ``expect_masked`` says.
    """
    frames: list[Frame] = []
    pos = 0
    while len(data) - pos >= 2:
        first, second = data[pos], data[pos + 1]
        masked = bool(second & 0x80)
        if masked != expect_masked:
            raise ValueError(f"frame at offset {pos}: mask bit is {int(masked)}")
        size = second & 0x7F
        head = 2
        if size == 126:
            if len(data) - pos < 4:
                break
            size = int.from_bytes(data[pos + 2 : pos + 4], "big")
            head = 4
        elif size == 127:
            if len(data) - pos < 10:
                break
            size = int.from_bytes(data[pos + 2 : pos + 10], "big")
            head = 10
        mask = None
        if masked:
            if len(data) - pos < head + 4:
                break
            mask = data[pos + head : pos + head + 4]
            head += 4
        if len(data) - pos < head + size:
            break
        payload = data[pos + head : pos + head + size]
        if mask is not None:
            payload = _apply_mask(payload, mask)
        opcode: int = first & 0xF
        if opcode in Opcode._value2member_map_:
            opcode = Opcode(opcode)
        frames.append(Frame(opcode, payload, bool(first & 0x80), (first >> 4) & 7, mask))
        pos += head + size
    return frames, data[pos:]
