"""Outbound messages: encode, mask and write in as few writes as possible.

A batch becomes one buffer of consecutive masked frames and leaves in one
``transport.write`` (one ``send`` system call on plain TCP when the socket's buffer
has room).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from defi_ws._core import FrameEncoder
from defi_ws.transport import Connection

__all__ = ["Outbound", "OutboundMessage", "to_payload"]

#: What ``send`` accepts: a JSON-serialisable object, or text/bytes sent as-is.
OutboundMessage = Any


def to_payload(message: OutboundMessage) -> bytes | str:
    """Return the wire payload of one message.

    ``bytes``/``bytearray``/``memoryview`` and ``str`` are sent as they are; any other
    object is serialised with ``orjson.dumps``.
    """
    if isinstance(message, bytes | str):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    return orjson.dumps(message)


class Outbound:
    """Encodes messages into masked frames and writes them to a connection."""

    def __init__(self) -> None:
        self._encoder = FrameEncoder()
        self.messages_sent = 0
        self.writes = 0

    def send(self, conn: Connection, message: OutboundMessage, *, binary: bool = False) -> None:
        """Send one message as one frame.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        conn.write(self._encoder.encode_one(to_payload(message), binary))
        self.messages_sent += 1
        self.writes += 1

    def send_batch(
        self, conn: Connection, messages: Iterable[OutboundMessage], *, binary: bool = False
    ) -> int:
        """Send messages as consecutive frames in one write.

        Returns:
            The number of messages written.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        payloads = [to_payload(m) for m in messages]
        if not payloads:
            return 0
        conn.write(self._encoder.encode(payloads, binary))
        self.messages_sent += len(payloads)
        self.writes += 1
        return len(payloads)

    def send_mixed(self, conn: Connection, messages: Iterable[tuple[OutboundMessage, bool]]) -> int:
        """Send ``(message, binary)`` pairs as consecutive frames in one write.

        Returns:
            The number of messages written.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        data = bytearray()
        count = 0
        for message, binary in messages:
            data += self._encoder.encode_one(to_payload(message), binary)
            count += 1
        if not count:
            return 0
        conn.write(data)
        self.messages_sent += count
        self.writes += 1
        return count
