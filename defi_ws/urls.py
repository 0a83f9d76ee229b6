"""WebSocket URL checks and redaction.

:func:`url_problem` says why a string is not a usable ``ws://`` or ``wss://`` URL (the
same rules picows applies when it connects, plus a few it would only trip over later);
:func:`check_url` raises :class:`~defi_ws.errors.ConfigError` with that reason, for
URLs given at construction. :func:`redact_url` strips credentials, query string and
fragment, and never raises, even for a malformed URL: it is what messages and logs
show of a URL.

Example::

    check_url("wss://venue.example/ws?key=SECRET")   # fine
    check_url("http://venue.example/ws")
    # ConfigError: invalid WebSocket URL 'http://venue.example/ws': scheme must be ws
    # or wss, got 'http' (use ws:// for http://, wss:// for https://)
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from defi_ws.errors import ConfigError

__all__ = [
    "PROXY_SCHEMES",
    "check_url",
    "is_secure_url",
    "redact_url",
    "url_config_problem",
    "url_host",
    "url_problem",
]

#: Characters of a host name (letters, digits, hyphens, dots; underscores occur in
#: real DNS names too).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SHOWN = 120


def redact_url(url: str) -> str:
    """Return ``url`` without credentials, query string or fragment.

    Signed URLs carry keys and signatures in the query; they never reach logs or
    messages. A malformed URL is redacted the same way, textually.

    Args:
        url: any string.

    Returns:
        ``scheme://host[:port]/path`` followed by ``?<redacted>`` when there was a
        query string.
    """
    text = str(url)
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return _redact_malformed(text)
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    suffix = "?<redacted>" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")) + suffix


def _redact_malformed(text: str) -> str:
    """Redact a URL that ``urlsplit`` refuses: cut at ``?``/``#``, drop ``user@``."""
    cuts = [i for i in (text.find("?"), text.find("#")) if i >= 0]
    cut = min(cuts, default=len(text))
    suffix = "?<redacted>" if cut < len(text) and text[cut] == "?" else ""
    head = text[:cut]
    scheme, sep, rest = head.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        head = f"{scheme}{sep}{authority.rpartition('@')[2]}{slash}{path}"
    else:
        head = head.rpartition("@")[2]
    return head[:_MAX_SHOWN] + suffix


def url_problem(url: object) -> str | None:
    """Say why ``url`` is not a usable WebSocket URL.

    Args:
        url: what a handler gave as its URL.

    Returns:
        None for a usable ``ws://`` or ``wss://`` URL, else a short reason that never
        contains the query string or credentials (e.g. ``"port 'x' is not a number
        in 1-65535"``).
    """
    if not isinstance(url, str):
        return f"a URL must be a str, got {type(url).__name__}"
    if not url:
        return "the URL is empty"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "the URL contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "the host is malformed (unbalanced '[' or ']' around an IPv6 address)"
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        if not parts.scheme or "://" not in url:
            return "no scheme: it must start with ws:// or wss://"
        hint = " (use ws:// for http://, wss:// for https://)" if scheme in (
            "http", "https") else ""
        return f"scheme must be ws or wss, got {parts.scheme[:20]!r}{hint}"
    if "@" in parts.netloc:
        return ("credentials in the URL (user:password@) are not supported: send them "
                "in extra_headers or auth_messages()")
    if parts.fragment or url.endswith("#"):
        return "a WebSocket URL must not have a fragment (#...)"
    host_port = parts.netloc
    if not host_port.startswith("[") and host_port.count(":") > 1:
        return "an IPv6 address must be in brackets, e.g. ws://[::1]:8080/"
    try:
        port = parts.port
    except ValueError:
        text = host_port.rpartition("]")[2].partition(":")[2]
        return f"port {text[:20]!r} is not a number in 1-65535"
    if port == 0:
        return "port 0 is not a number in 1-65535"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    return _host_problem(host, bracketed=host_port.startswith("["))


def _host_problem(host: str, *, bracketed: bool) -> str | None:
    if bracketed:
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError:
            return "the host in brackets is not an IPv6 address"
        return None
    if host.isascii():
        if not _HOST_NAME.fullmatch(host) or ".." in host or host.startswith("."):
            return "the host is not a valid host name or IP address"
        return None
    try:
        host.encode("idna")
    except UnicodeError:
        return "the host is not a valid internationalised domain name"
    return None


def check_url(url: object, *, what: str = "url") -> str:
    """Validate a URL given at construction.

    Args:
        url: the URL to check.
        what: how to name it in the error (e.g. ``"JsonHandler url"``).

    Returns:
        ``url``, unchanged, when it is usable.

    Raises:
        ConfigError: naming the problem; the URL is shown redacted.
    """
    problem = url_config_problem(url, what)
    if problem is not None:
        raise ConfigError([problem])
    assert isinstance(url, str)
    return url


def url_config_problem(url: object, what: str = "url") -> str | None:
    """The configuration problem of ``url``, as :func:`check_url` reports it.

    Args:
        url: the URL to check.
        what: how to name it in the message.

    Returns:
        None for a usable URL, else e.g. ``"url: invalid WebSocket URL 'ftp://x/':
        scheme must be ws or wss, got 'ftp'"`` (the URL redacted).
    """
    problem = url_problem(url)
    if problem is None:
        return None
    shown = f" {redact_url(url)!r}" if isinstance(url, str) and url else ""
    return f"{what}: invalid WebSocket URL{shown}: {problem}"


#: Proxy schemes picows connects through.
PROXY_SCHEMES = ("http", "https", "socks4", "socks5")


def proxy_url_problem(url: object) -> str | None:
    """Say why ``url`` is not a usable proxy URL.

    Args:
        url: e.g. ``"http://proxy.corp:3128"``, ``"socks5://user:pw@127.0.0.1:1080"``.

    Returns:
        None for a usable proxy URL (scheme http, https, socks4 or socks5, a host;
        credentials allowed), else a short reason that never contains credentials.
    """
    if not isinstance(url, str):
        return f"a proxy URL must be a str, got {type(url).__name__}"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "the proxy URL contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "the proxy URL's host or port is malformed"
    if parts.scheme.lower() not in PROXY_SCHEMES or "://" not in url:
        return f"a proxy URL must start with {', '.join(s + '://' for s in PROXY_SCHEMES)}"
    if port == 0:
        return "port 0 is not a number in 1-65535"
    if not parts.hostname:
        return "the proxy URL has no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a proxy URL has no path, query or fragment"
    return None


def is_secure_url(url: str) -> bool:
    """Whether ``url`` uses TLS (``wss://``, in any letter case)."""
    return url[:4].lower() == "wss:"


def url_host(url: str) -> str | None:
    """The host of ``url`` (lower case, IPv6 without brackets), or None if it has none."""
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
