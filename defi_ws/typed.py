"""Typed decode: build ``msgspec.Struct`` objects instead of dicts (``defi-ws[msgspec]``).

A decoder from :func:`struct_decoder` plugs into the same decode pipeline as
``orjson.loads``: pass it as ``FeedListener(decode=...)`` or set it as a handler's
``decode`` attribute. msgspec validates while it parses and only builds the fields the
type declares, so a ``Struct`` with the few fields a strategy reads is usually faster
than a full ``dict`` from ``orjson.loads``.

Example::

    import msgspec
    from defi_ws.typed import struct_decoder

    class Trade(msgspec.Struct):
        s: str
        p: str
        q: str
        T: int

    class TradeHandler(JsonHandler):
        # acks ({"event": ...}) fail validation as Trade and fall back to dicts
        decode = staticmethod(struct_decoder(Trade, fallback=orjson.loads))

Borrowed memory: without ``fallback``, a decoder for a type with no ``msgspec.Raw`` and
no ``memoryview`` anywhere in it reads the payload in place in the receive buffer (zero
copy: such a result never aliases its input, see
:func:`defi_ws._core.decode_keeps_no_reference`). Any other decoder (``Raw`` fields, a
``fallback`` wrapper) reads a copy the listener owns; a ``Raw`` that outlives the call
keeps that copy alive and reads its own message's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    import msgspec

__all__ = ["INSTALL_HINT", "msgspec_available", "struct_decoder"]

T = TypeVar("T")

#: What to run when msgspec is missing.
INSTALL_HINT = "pip install 'defi-ws[msgspec]'"


def _import_msgspec() -> Any:
    try:
        import msgspec
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"defi_ws.typed needs msgspec (the optional extra): {INSTALL_HINT}"
        ) from exc
    return msgspec


def msgspec_available() -> bool:
    """Return whether msgspec can be imported."""
    try:
        _import_msgspec()
    except ImportError:
        return False
    return True


@overload
def struct_decoder(
    type_: type[T],
    *,
    strict: bool = ...,
    dec_hook: Callable[[type, Any], Any] | None = ...,
    fallback: None = ...,
) -> Callable[[memoryview], T]: ...


@overload
def struct_decoder(
    type_: type[T],
    *,
    strict: bool = ...,
    dec_hook: Callable[[type, Any], Any] | None = ...,
    fallback: Callable[[memoryview], Any],
) -> Callable[[memoryview], Any]: ...


@overload
def struct_decoder(
    type_: Any,
    *,
    strict: bool = ...,
    dec_hook: Callable[[type, Any], Any] | None = ...,
    fallback: Callable[[memoryview], Any] | None = ...,
) -> Callable[[memoryview], Any]: ...


def struct_decoder(
    type_: Any,
    *,
    strict: bool = True,
    dec_hook: Callable[[type, Any], Any] | None = None,
    fallback: Callable[[memoryview], Any] | None = None,
) -> Callable[[memoryview], Any]:
    """Build a JSON decode function that returns instances of ``type_``.

    Args:
        type_: what each message decodes to: a ``msgspec.Struct`` subclass, or any
            type msgspec understands (a tagged union of Structs, ``list[Trade]``...).
        strict: msgspec's strict mode; ``False`` lets e.g. ``"1.5"`` decode into a
            ``float`` field.
        dec_hook: msgspec's hook for custom types.
        fallback: called with the same view when the message does not fit
            ``type_`` (``msgspec.ValidationError``); e.g. ``orjson.loads`` so that
            control messages (subscribe acks, auth replies) still arrive as dicts.
            Malformed JSON is never retried: it is a decode error either way.

    Returns:
        A callable taking the borrowed ``memoryview`` of one message. Without
        ``fallback`` it is msgspec's own ``Decoder.decode`` (no Python frame in
        between); with one, a small wrapper.

    Raises:
        ImportError: msgspec is not installed (``pip install 'defi-ws[msgspec]'``).
    """
    ms = _import_msgspec()
    decoder: msgspec.json.Decoder[Any] = ms.json.Decoder(
        type_, strict=strict, dec_hook=dec_hook
    )
    decode: Callable[[memoryview], Any] = decoder.decode
    if fallback is None:
        return decode
    validation_error: type[Exception] = ms.ValidationError
    other = fallback

    def decode_or_fallback(view: memoryview) -> Any:
        try:
            return decode(view)
        except validation_error:
            return other(view)

    decode_or_fallback.__qualname__ = f"struct_decoder({getattr(type_, '__name__', type_)})"
    return decode_or_fallback
