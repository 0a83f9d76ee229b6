"""Why a connection attempt failed: one classified :class:`Disconnect` per exception.

:func:`classify_connect_error` turns whatever a connect attempt raised (OSError
variants, DNS errors, timeouts, TLS errors, picows handshake errors, an invalid URL)
into a :class:`~defi_ws.reasons.Disconnect` with a reason, a retryability and a short,
non-empty detail that never contains secrets:

=====================================  ======================  =========
failure                                reason                  retried
=====================================  ======================  =========
certificate untrusted/expired/host     ``TLS_FAILURE``         no
other TLS failure (alert, not TLS)     ``CONNECT_FAILED``      yes
DNS, refused, reset, timeout, EOF      ``CONNECT_FAILED``      yes
HTTP status instead of 101             ``HANDSHAKE_REJECTED``  by status
proxy refused (its answer), unreachable ``CONNECT_FAILED``     yes
malformed URL                          ``INVALID_URL``         no
=====================================  ======================  =========

A ``Retry-After`` header is honoured only as a finite, non-negative number of seconds
or an HTTP date; anything else is ignored (the reconnect strategy's delay applies).
:func:`cap_retry_after` bounds the honoured delay (``FeedClient(max_retry_after_s=)``).

:func:`handshake_error_guard` works around an aiofastnet bug: an EOF during its TLS
handshake reports the exception *class* ``ConnectionResetError`` to the loop's
exception handler, whose logging then fails on every attempt (``--- Logging error
--- ... 'getset_descriptor' object has no attribute 'tb_frame'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import errno
import logging
import math
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import picows

from defi_ws._compat import TimeoutErrors
from defi_ws.errors import ConnectError
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.urls import is_secure_url, redact_url, url_host, url_problem

__all__ = [
    "cap_retry_after",
    "classify_connect_error",
    "handshake_error_guard",
    "parse_retry_after",
    "with_url_context",
]

log = logging.getLogger("defi_ws.transport")

_MAX_DETAIL = 200
#: OpenSSL reasons meaning the peer answered the ClientHello with something that is
#: not TLS (a plain HTTP or TCP server).
_NOT_TLS = frozenset({
    "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
    "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH",
})
_NOT_TLS_HINT = "peer does not speak TLS"
#: urllib's messages for a URL it cannot split (raised from inside picows' parser).
_URL_VALUE_ERRORS = ("Invalid IPv6 URL", "Port could not be cast", "Port out of range")
_URL_IN_TEXT = re.compile(r"\b(?:wss?|https?)://[^\s'\"<>]+", re.IGNORECASE)
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


# ----------------------------------------------------------------------- retry-after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header value.

    Args:
        value: the header's value (delay-seconds or an HTTP date), or None.
        now: the wall-clock time an HTTP date is relative to (default: now).

    Returns:
        The delay in seconds (a date in the past gives 0.0), or None when the value
        is absent or is not a finite, non-negative delay or a valid HTTP date.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)  # 400 digits parse to inf, rejected below
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
        delay_s = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return max(0.0, delay_s) if math.isfinite(delay_s) else None


def _seconds(value: float) -> str:
    if abs(value) >= 100 or value.is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


def _printable(text: str, limit: int = 40) -> str:
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _retry_after(headers: Any) -> tuple[float | None, str]:
    """The Retry-After of a refused upgrade, and a note when it is ignored."""
    raw = headers.get("Retry-After") if headers is not None else None
    if raw is None:
        return None, ""
    raw = str(raw)
    seconds = parse_retry_after(raw)
    if seconds is None:
        return None, (f"; Retry-After {_printable(raw.strip())!r} ignored (not a finite "
                      "number of seconds or an HTTP date)")
    return seconds, ""


def cap_retry_after(disconnect: Disconnect, max_retry_after_s: float) -> Disconnect:
    """Bound the delay a venue asked for, and say in the detail what is honoured.

    Args:
        disconnect: a classified disconnect, possibly with ``retry_after_s``.
        max_retry_after_s: the longest delay honoured.

    Returns:
        ``disconnect`` with ``retry_after_s`` at most ``max_retry_after_s`` (None when
        it was not a finite, non-negative number) and the detail saying so.
    """
    requested = disconnect.retry_after_s
    if requested is None:
        return disconnect
    detail = disconnect.detail
    if not math.isfinite(requested) or requested < 0:
        honoured = None
        note = f"Retry-After {requested!r} ignored (not a finite, non-negative delay)"
    elif requested > max_retry_after_s:
        honoured = max_retry_after_s
        note = (f"Retry-After {_seconds(requested)} s capped at "
                f"{_seconds(max_retry_after_s)} s (max_retry_after_s)")
    else:
        honoured = requested
        note = f"Retry-After {_seconds(requested)} s honoured"
    return dataclasses.replace(
        disconnect, retry_after_s=honoured, detail=f"{detail}; {note}" if detail else note)


# ----------------------------------------------------------------------- classification


def _scrub(text: str, url: str | None) -> str:
    """Remove URLs' query strings and credentials from a message, then bound it."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if url:
        parts = _split(url)
        if url in text:
            text = text.replace(url, redact_url(url))
        if parts is not None:
            for secret in (parts.query, parts.password, parts.username):
                if secret and len(secret) > 2:
                    text = text.replace(secret, "<redacted>")
    return text[:_MAX_DETAIL]


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        return None


def _message(exc: BaseException) -> str:
    """The exception's own text, or its class name when it has none."""
    if isinstance(exc, OSError) and exc.strerror:
        text = str(exc.strerror)
    else:
        text = str(exc)
    return text or type(exc).__name__


def _os_error(exc: OSError) -> str:
    text = str(exc.strerror or exc or "")
    code = errno.errorcode.get(exc.errno, "") if isinstance(exc.errno, int) else ""
    if not text:
        return f"{type(exc).__name__} ({code})" if code else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _os_or_text(exc: BaseException) -> str:
    return _os_error(exc) if isinstance(exc, OSError) else _message(exc)


def _tls_detail(exc: ssl.SSLError) -> str:
    reason = str(getattr(exc, "reason", None) or "")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return ("TLS handshake failed: connection closed during the handshake "
                f"({_NOT_TLS_HINT}, or dropped the handshake)")
    if reason in _NOT_TLS:
        return f"TLS handshake failed: {_NOT_TLS_HINT} ({reason})"
    if "_ALERT_" in reason:
        alert = reason.split("_ALERT_", 1)[1].lower()
        return f"TLS handshake failed: the peer sent the alert {alert} ({reason})"
    text = reason or str(exc.strerror or "") or str(exc)
    return f"TLS handshake failed: {text or type(exc).__name__}"


def _certificate_detail(exc: ssl.SSLError) -> str:
    why = str(getattr(exc, "verify_message", None) or "")
    if not why:
        why = str(exc.strerror or "") or str(exc) or type(exc).__name__
    return f"certificate verification failed: {why}"


def _handshake_detail(exc: picows.WSHandshakeError) -> Disconnect:
    response = exc.response
    description = _printable(str(exc) or type(exc).__name__, 120)
    if response is None:
        return Disconnect(DisconnectReason.CONNECT_FAILED,
                          detail=f"invalid WebSocket upgrade response: {description}")
    status = int(response.status)
    if status == 101:
        return Disconnect(DisconnectReason.CONNECT_FAILED, http_status=status,
                          detail=f"invalid WebSocket upgrade response: {description}")
    retry_after_s, note = _retry_after(response.headers)
    redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
    return Disconnect(
        DisconnectReason.HANDSHAKE_REJECTED,
        http_status=status,
        retry_after_s=retry_after_s,
        detail=f"upgrade refused with HTTP {status}{redirect}{note}",
    )


def _invalid_url(problem: str) -> Disconnect:
    return Disconnect(DisconnectReason.INVALID_URL, detail=f"invalid WebSocket URL: {problem}")


def _proxy_detail(exc: BaseException) -> str | None:
    """What a proxy said or did, for python-socks' errors (picows' proxy layer)."""
    try:
        from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
        from python_socks._errors import IncompleteReadError
    except ImportError:  # pragma: no cover - a picows dependency
        return None
    if isinstance(exc, IncompleteReadError):  # python-socks' own: the proxy hung up
        return ("the proxy refused: it closed the connection during its handshake "
                "(wrong credentials?)")
    if isinstance(exc, ProxyTimeoutError):
        return f"proxy timed out: {_message(exc)}"
    if isinstance(exc, ProxyConnectionError):
        return f"cannot reach the proxy: {_message(exc)}"
    if isinstance(exc, ProxyError):
        return f"the proxy refused: {_message(exc)}"
    return None


def _classify(exc: BaseException, url: str | None) -> Disconnect:
    failed = DisconnectReason.CONNECT_FAILED
    proxy = _proxy_detail(exc)
    if proxy is not None:
        return Disconnect(failed, detail=proxy)
    problem = url_problem(url) if url is not None else None
    if problem is not None:
        return _invalid_url(problem)
    if isinstance(exc, picows.WSInvalidURL):
        return _invalid_url(str(exc).rpartition("isn't a valid URL: ")[2] or "rejected by picows")
    if isinstance(exc, ValueError) and str(exc).startswith(_URL_VALUE_ERRORS):
        return _invalid_url(str(exc))
    if isinstance(exc, UnicodeError) and not isinstance(exc, UnicodeDecodeError):  # IDNA
        return _invalid_url("the host is not a valid internationalised domain name")
    if isinstance(exc, picows.WSHandshakeError):
        return _handshake_detail(exc)
    if isinstance(exc, picows.WSError):
        return Disconnect(failed, detail=f"WebSocket handshake failed: {_message(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError | ssl.CertificateError):
        return Disconnect(DisconnectReason.TLS_FAILURE, detail=_certificate_detail(exc))
    if isinstance(exc, ssl.SSLError):
        return Disconnect(failed, detail=_tls_detail(exc))
    if isinstance(exc, TimeoutErrors):
        text = str(exc)
        return Disconnect(failed, detail="connect/handshake timed out" + (
            f" ({text})" if text else ""))
    host = url_host(url) if url is not None else None
    secure = url is not None and is_secure_url(url)
    if isinstance(exc, socket.gaierror):
        where = f" for host {host!r}" if host else ""
        return Disconnect(failed, detail=f"DNS lookup failed{where}: {_message(exc)}")
    if isinstance(exc, ConnectionRefusedError):
        return Disconnect(failed, detail=f"connection refused: {_message(exc)}")
    closed = isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError
                        | EOFError | asyncio.IncompleteReadError)
    how = "reset" if isinstance(exc, ConnectionResetError) and exc.args else "closed"
    if closed and (secure or (isinstance(exc, ConnectionResetError) and not exc.args)):
        # Both asyncio's and aiofastnet's TLS layers raise a bare ConnectionResetError
        # for an EOF during the TLS handshake.
        return Disconnect(failed, detail=(
            f"connection {how} by the peer during the TLS handshake "
            f"({_NOT_TLS_HINT}, or dropped the handshake)"))
    if closed:
        return Disconnect(failed, detail=(
            f"connection {how} by the peer during the handshake ({_os_or_text(exc)})"))
    if isinstance(exc, OSError):
        return Disconnect(failed, detail=_os_error(exc))
    text = str(exc)
    return Disconnect(failed, detail=f"{type(exc).__name__}: {text}" if text else (
        f"{type(exc).__name__} during connect"))


def classify_connect_error(exc: BaseException, url: str | None = None) -> Disconnect:
    """Classify why a connection attempt failed.

    Args:
        exc: the exception the attempt raised.
        url: the URL of the attempt, when known: it names the host of a failed DNS
            lookup and tells a TLS handshake from a plain one.

    Returns:
        The classified disconnect (see the module's table). Its detail is never empty
        and never contains a query string or credentials.
    """
    if isinstance(exc, ConnectError):
        return exc.disconnect
    disconnect = _classify(exc, url)
    return dataclasses.replace(disconnect, detail=_scrub(disconnect.detail, url))


def with_url_context(error: ConnectError, url: str) -> Disconnect:
    """The disconnect of a failed attempt, its detail completed with what the URL tells.

    A transport that classifies without the URL (a test double, a custom transport)
    leaves the detail generic; this re-derives the detail of a ``CONNECT_FAILED`` from
    the underlying exception (``DNS lookup failed for host 'venue.example'``, ``...
    during the TLS handshake``). Other reasons, and failures without an underlying
    exception, are returned unchanged.

    Args:
        error: what the transport raised.
        url: the URL of the attempt.

    Returns:
        The disconnect to record.
    """
    disconnect = error.disconnect
    cause = error.__cause__
    if cause is None or disconnect.reason is not DisconnectReason.CONNECT_FAILED:
        return disconnect
    refined = classify_connect_error(cause, url)
    if refined.reason is not DisconnectReason.CONNECT_FAILED:
        return disconnect
    return dataclasses.replace(disconnect, detail=refined.detail)


# ----------------------------------------------------------------------- aiofastnet bug


class _ExceptionClassGuard:
    """A loop exception handler that repairs contexts whose ``exception`` is a class.

    aiofastnet (1.2) reports an EOF during its TLS handshake as the *class*
    ``ConnectionResetError``; with an instance it would have logged it at DEBUG like
    any OSError (and the connect attempt reports it anyway). Such contexts are
    dropped; other classes are instantiated; everything else passes through to the
    handler that was installed before.
    """

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.depth = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, type) and issubclass(exc, BaseException):
            if issubclass(exc, OSError):
                log.debug("%s: %s (reported by the connect attempt)",
                          context.get("message", "transport error"), exc.__name__)
                return
            try:
                instance: BaseException = exc()
            except Exception:
                instance = RuntimeError(exc.__name__)
            context = {**context, "exception": instance}
        if self.previous is None:
            loop.default_exception_handler(context)
        else:
            self.previous(loop, context)


@contextlib.contextmanager
def handshake_error_guard() -> Iterator[None]:
    """Repair the running loop's exception reports while a connect attempt runs.

    Installs :class:`_ExceptionClassGuard` in front of the loop's exception handler
    (once per loop, however many attempts run at the same time) and puts the
    previous handler back when the last attempt ends, unless someone replaced the
    handler in the meantime.
    """
    loop = asyncio.get_running_loop()
    current = loop.get_exception_handler()
    if isinstance(current, _ExceptionClassGuard):
        guard = current
    else:
        guard = _ExceptionClassGuard(current)
        loop.set_exception_handler(guard)
    guard.depth += 1
    try:
        yield
    finally:
        guard.depth -= 1
        if guard.depth == 0 and loop.get_exception_handler() is guard:
            loop.set_exception_handler(guard.previous)
