"""Outbound messages: framed in place in one reusable buffer, written in one write.

Every message becomes a masked frame in the client's :class:`~defi_ws._core.OutBuffer`
(one region, reused for every write):

- ``bytes``/``bytearray``/``memoryview``/``str`` payloads are masked straight from
  their own memory into it (no intermediate copy);
- a *payload writer*, any callable, is called with the buffer inside an open frame
  and writes the payload itself (``out.write(b'...')``); header and masking key go in
  front and the payload is masked in place;
- anything else is serialised with ``orjson.dumps`` and masked from orjson's output.

A batch is consecutive frames in the same region and leaves in one write: one
``send`` system call on plain TCP when nothing is queued in the transport (no Python
object per frame or per write); otherwise the transport gets a copy, so the region
can be reused at once (see :class:`~defi_ws._core.OutBuffer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from defi_ws._core import OutBuffer
from defi_ws.transport import Connection

__all__ = ["Outbound", "OutboundMessage", "PayloadWriter", "to_payload"]

#: What ``send`` accepts: a JSON-serialisable object, text/bytes sent as-is, or a
#: :data:`PayloadWriter`.
OutboundMessage = Any

#: A message that writes its own payload: called with the connection's
#: :class:`~defi_ws._core.OutBuffer` inside an open frame, it appends the payload
#: with ``out.write(data)``; it must not flush.
PayloadWriter = Callable[[OutBuffer], object]

#: Sequences taken as they are (a ``list | tuple`` union would be built per call).
_SEQUENCES = (list, tuple)


def to_payload(message: OutboundMessage) -> bytes | str:
    """Return the wire payload of one message (payload writers excepted).

    ``bytes`` and ``str`` are returned as they are, ``bytearray``/``memoryview`` as
    ``bytes``; any other object is serialised with ``orjson.dumps``.
    """
    if isinstance(message, bytes | str):
        return message
    if isinstance(message, bytearray | memoryview):
        return bytes(message)
    return orjson.dumps(message)


class Outbound:
    """Frames messages into one reusable :class:`~defi_ws._core.OutBuffer` and writes
    them to a connection, one write per call.

    Args:
        buffer: the buffer to build frames in (default: a new one).
    """

    def __init__(self, buffer: OutBuffer | None = None) -> None:
        self.buffer = buffer if buffer is not None else OutBuffer()
        self._conn: object = None
        self._sink: Any = None

    @property
    def messages_sent(self) -> int:
        """Frames written (handed to the transport)."""
        return self.buffer.frames

    @property
    def writes(self) -> int:
        """Writes made (a batch is one)."""
        return self.buffer.writes

    def _bind(self, conn: Connection) -> None:
        self._conn = conn
        self._sink = getattr(conn, "sink", conn)

    def send(self, conn: Connection, message: OutboundMessage, *, binary: bool = False) -> None:
        """Send one message as one frame, in one write.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        if conn is not self._conn:
            self._bind(conn)
        self.buffer.send(self._sink, message, binary)

    def send_batch(
        self, conn: Connection, messages: Iterable[OutboundMessage], *, binary: bool = False
    ) -> int:
        """Send messages as consecutive frames in one write; nothing is written when
        one of them cannot be encoded.

        Returns:
            The number of messages written.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        items = messages if isinstance(messages, _SEQUENCES) else list(messages)
        if not items:
            return 0
        if conn is not self._conn:
            self._bind(conn)
        self.buffer.send_batch(self._sink, items, binary)
        return len(items)

    def send_mixed(self, conn: Connection, messages: Iterable[tuple[OutboundMessage, bool]]) -> int:
        """Send ``(message, binary)`` pairs as consecutive frames in one write.

        Returns:
            The number of messages written.

        Raises:
            NotConnectedError: the connection is closing or closed.
        """
        if conn is not self._conn:
            self._bind(conn)
        buffer = self.buffer
        count = 0
        try:
            for message, binary in messages:
                buffer.add(message, binary)
                count += 1
        except BaseException:
            buffer.clear()
            raise
        if count:
            buffer.flush(self._sink)
        return count
