"""Typed surface of the compiled hot path (defi_ws/_core.pyx)."""

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import picows
from typing_extensions import disjoint_base

STAGE_DECODE: str
STAGE_CALLBACK: str
STAGE_CONTROL: str
ERROR_POLICY_CONTINUE: int
ERROR_POLICY_DISCONNECT: int
DEFAULT_MAX_MESSAGE_SIZE: int

def now_ns() -> int: ...
def is_valid_utf8(data: bytes | bytearray | memoryview) -> bool: ...
def buffer_address(data: bytes | bytearray | memoryview) -> int: ...

@disjoint_base
class FrameEncoder:
    def __init__(self) -> None: ...
    def encode_one(
        self, payload: bytes | bytearray | memoryview | str, binary: bool = False
    ) -> bytearray: ...
    def encode(
        self, payloads: Sequence[bytes | bytearray | memoryview | str], binary: bool = False
    ) -> bytearray: ...

@disjoint_base
class FeedListener(picows.WSListener):
    frames: int
    messages: int
    bytes_received: int
    control_messages: int
    pongs: int
    decode_errors: int
    callback_errors: int
    connected_ns: int
    last_recv_ns: int
    last_data_ns: int
    last_payload_addr: int
    message_opcode: int
    close_code_received: int
    close_reason_received: str | None
    close_code_sent: int
    violation: str | None
    closing: bool
    max_message_size: int
    validate_utf8: bool
    error_policy: int
    errors: deque[tuple[int, str, str]]
    def __init__(
        self,
        on_message: Callable[[Any], object] | None,
        decode: Callable[[memoryview], Any] | None = ...,
        events: Any = None,
        *,
        on_control: Callable[[Any], object] | None = None,
        control_prefixes: tuple[bytes, ...] | list[bytes] | None = None,
        max_message_size: int = ...,
        validate_utf8: bool = True,
        error_policy: int = ...,
        errors: deque[tuple[int, str, str]] | None = None,
    ) -> None: ...
    def set_app_pong(self, pattern: bytes | None, exact: bool = True) -> None: ...
    @property
    def wire(self) -> Any: ...
    @property
    def in_fragmented_message(self) -> bool: ...
    def on_ws_connected(self, transport: picows.WSTransport) -> None: ...
    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None: ...
    def on_ws_disconnected(self, transport: picows.WSTransport) -> None: ...
    def attach(self, wire: Any) -> None: ...
    def detach(self) -> None: ...
    def feed(
        self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True,
        rsv: int = 0,
    ) -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...
