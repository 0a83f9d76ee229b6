"""picows' log records, made fit for a feed's logs: a stable name, levels by blame, no secrets.

picows logs through whatever logger-like object it is given. Given a
:class:`logging.Logger`, it makes a child named after each connection's socket fd
(``defi_ws.picows.7``), a name that changes with every connection (filters, alerts and
aggregations keyed on the logger name miss them); it logs a peer's malformed frame at
ERROR, once per bad header it parses; and at its debug
level (9) it dumps the raw upgrade request and response, query string and header
values included.

:class:`PicowsLog` is the object defi-ws hands picows instead (one per connection). It
is a :class:`logging.LoggerAdapter`, so picows logs through it and makes no children:
every record carries the wrapped logger's own name. Passing through, it

* logs the first parser error of a connection (the peer sent bytes that are not
  RFC 6455) at WARNING and any further ones on that connection at DEBUG: the peer
  is to blame, the connection closes, and the client reports the disconnect itself;
* replaces any raw HTTP head (request or response) in a record's arguments by its
  start line, the request target's query replaced by ``?<redacted>``, and its header
  names: no query string and no header value reaches a record, at any level;
* strips the query from any URL among a record's arguments.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter

__all__ = ["PicowsLog", "http_head_summary"]

#: Messages picows logs when the *peer's* bytes broke the protocol.
_PEER_CAUSED = ("WS parser error:",)
#: A raw HTTP/1.x request or status line at the start of a bytes argument.
_HTTP_HEAD = re.compile(rb"\s*(?:[A-Za-z]+ \S+ HTTP/\d|HTTP/\d)")
#: A URL with a query string or credentials, inside a str argument.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def http_head_summary(data: bytes | bytearray | memoryview) -> str:
    """Describe a raw HTTP head without its query string or header values.

    Args:
        data: the raw bytes of an HTTP/1.x request or response (head, maybe more).

    Returns:
        ``"GET /ws?<redacted> HTTP/1.1 [headers: Host, Upgrade, ...]"``.
    """
    raw = bytes(data)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.strip().split(b"\r\n")
    start = lines[0].decode("latin-1").split(" ")
    if len(start) == 3 and not start[0].startswith("HTTP/"):  # METHOD TARGET VERSION
        path, query, _ = start[1].partition("?")
        start[1] = path + ("?<redacted>" if query else "")
    elif start[0].startswith("HTTP/"):
        start = start[:2]  # the status code; a reason phrase is free text
    else:
        start = ["<unparsed start line>"]
    names = [line.split(b":", 1)[0].decode("latin-1").strip()
             for line in lines[1:] if b":" in line]
    more = f", +{len(rest)} bytes" if rest else ""
    return f"{' '.join(start)} [headers: {', '.join(names)}; values not logged{more}]"


def _redact_urls(text: str) -> str:
    def redact(match: re.Match[str]) -> str:
        try:
            parts = urllib.parse.urlsplit(match.group(0))
            netloc = parts.netloc.rpartition("@")[2]
        except ValueError:
            return "<url>"
        suffix = "?<redacted>" if parts.query else ""
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + suffix

    return _URL.sub(redact, text) if "://" in text else text


def _scrub(arg: object) -> object:
    if isinstance(arg, bytes | bytearray | memoryview):
        if _HTTP_HEAD.match(bytes(arg[:64])):
            return http_head_summary(arg)
        return arg
    if isinstance(arg, str):
        if _HTTP_HEAD.match(arg[:64].encode("latin-1", "replace")):
            return http_head_summary(arg.encode("latin-1", "replace"))
        return _redact_urls(arg)
    return arg


class PicowsLog(_Adapter):
    """The logger-like object picows logs through for one connection.

    Args:
        logger: where the records go, under its own (stable) name.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._peer_errors = 0

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log like :meth:`logging.Logger.log`, re-levelled by blame and scrubbed."""
        if isinstance(msg, str) and msg.startswith(_PEER_CAUSED):
            self._peer_errors += 1
            level = logging.WARNING if self._peer_errors == 1 else logging.DEBUG
        if not self.logger.isEnabledFor(level):
            return
        if isinstance(msg, str | bytes | bytearray | memoryview):
            msg = _scrub(msg)
        self.logger.log(level, msg, *(_scrub(arg) for arg in args), **kwargs)
