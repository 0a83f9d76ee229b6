"""Connect failures: every one classified, with a useful detail, and retried only when
retrying can help.

* TLS: only a certificate that fails verification is fatal; a TLS terminator's alert
  (``internal_error``) or a peer that does not speak TLS is a retryable
  CONNECT_FAILED, reported as one classified line (no ``--- Logging error ---``).
* Retry-After: capped by ``max_retry_after_s``; non-finite and negative values are
  ignored; the honoured value is in the disconnect's detail and in the snapshot.
* URLs: a bad URL given at construction is a ConfigError, one returned by
  ``handler.url()`` at run time is a fatal INVALID_URL; DNS failures are retried and
  name the host. No message shows a query string or credentials.

Loopback servers are raw asyncio TCP servers (and one thread running a real OpenSSL
handshake) on 127.0.0.1 with free ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import importlib.util
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import picows
import pytest
import trustme

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.errors import ConfigError, ConnectError, FatalDisconnect
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing
from defi_ws.lifecycle import State
from defi_ws.reasons import Disconnect, DisconnectReason, default_is_retryable
from defi_ws.reconnect import FixedDelay
from defi_ws.tls import TlsConfig
from defi_ws.transport import MemoryTransport, PicowsTransport, classify_connect_error, redact_url
from tests.virtual_time import run_virtual

SECRET = "SEKRIT42"
Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: picows over aiofastnet's transports (its default when installed) and over the loop's.
TRANSPORTS = [
    pytest.param(True, id="aiofastnet", marks=pytest.mark.skipif(
        importlib.util.find_spec("aiofastnet") is None, reason="aiofastnet not installed")),
    pytest.param(False, id="loop-transport"),
]


class TcpServer:
    """A raw TCP server on 127.0.0.1 running ``handle`` for each connection."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            async with _compat.timeout(10):
                await self._handle(reader, writer)
        except (OSError, EOFError, TimeoutError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> TcpServer:
        self._server = await asyncio.start_server(self._run, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if self._tasks:  # the handlers end on their own once the client hangs up
            await asyncio.wait(set(self._tasks), timeout=10)
        await self._server.wait_closed()
        for _ in range(5):
            await asyncio.sleep(0)

    def url(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/feed?key={SECRET}"


async def close_after_first_bytes(reader: asyncio.StreamReader, writer: Any) -> None:
    """A plain TCP service: reads a little of whatever comes, then hangs up."""
    await reader.read(1)


async def tls_internal_error_alert(reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> None:
    """Answers the ClientHello with a fatal TLS alert record: internal_error (80)."""
    await reader.read(5)
    writer.write(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80]))
    await writer.drain()


async def close_after_upgrade_request(reader: asyncio.StreamReader, writer: Any) -> None:
    """Reads the whole upgrade request and hangs up without a response."""
    await reader.readuntil(b"\r\n\r\n")


def http_429(retry_after: str) -> Handle:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: " + retry_after.encode()
                     + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    return handle


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with _compat.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@contextlib.contextmanager
def tls_terminator(ctx: ssl.SSLContext) -> Iterator[int]:
    """A blocking OpenSSL server in a thread (a TLS terminator); yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # ssl.SSLError included
                    with ctx.wrap_socket(conn, server_side=True):
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def feed(url: str, *, use_aiofastnet: bool, ca_file: str | None = None,
         **kwargs: Any) -> FeedClient:
    kwargs.setdefault("reconnect", FixedDelay(0.05))
    return FeedClient(JsonHandler(url), transport=PicowsTransport(use_aiofastnet=use_aiofastnet),
                      tls=TlsConfig(ca_file=ca_file), heartbeat=NoPing(), connect_timeout_s=5,
                      **kwargs)


@contextlib.asynccontextmanager
async def running(client: FeedClient) -> AsyncIterator[FeedClient]:
    async with client:
        yield client
    assert client.connection is None


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and "pw@" not in text, text


# ------------------------------------------------------------------- (3) TLS failures


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
async def test_tls_alert_during_the_handshake_is_retried(
    ca: trustme.CA, ca_file: str, use_aiofastnet: bool
) -> None:
    """A TLS terminator failing its handshake with internal_error: retried, alert named."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.sni_callback = lambda *_: ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
    with tls_terminator(ctx) as port:
        url = f"wss://127.0.0.1:{port}/feed?key={SECRET}"
        async with running(feed(url, use_aiofastnet=use_aiofastnet, ca_file=ca_file)) as client:
            await wait_for(lambda: len(client.history) >= 3, 15)
            assert client.fatal is None and client.state is not State.CLOSED
    for disconnect in client.history:
        assert disconnect.reason is DisconnectReason.CONNECT_FAILED, disconnect
        assert default_is_retryable(disconnect)
        assert "alert internal_error" in disconnect.detail
        assert_no_secret(disconnect.describe())


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
async def test_raw_tls_alert_record_is_retried(use_aiofastnet: bool) -> None:
    async with TcpServer(tls_internal_error_alert) as server, running(
            feed(server.url("wss"), use_aiofastnet=use_aiofastnet)) as client:
        await wait_for(lambda: len(client.history) >= 2)
        assert client.fatal is None
    first = client.history[0]
    assert (first.reason, default_is_retryable(first)) == (DisconnectReason.CONNECT_FAILED, True)
    assert "internal_error" in first.detail


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
async def test_wss_to_a_plain_tcp_server_is_one_classified_line_per_attempt(
    use_aiofastnet: bool, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    """No loop exception report, no logging error: one WARNING line per attempt."""
    loop = asyncio.get_running_loop()
    hygiene = loop.get_exception_handler()
    loop.set_exception_handler(None)  # the stock handler: it logs what it is given
    caplog.set_level(logging.DEBUG)
    try:
        async with TcpServer(close_after_first_bytes) as server, running(
                feed(server.url("wss"), use_aiofastnet=use_aiofastnet)) as client:
            await wait_for(lambda: len(client.history) >= 3)
    finally:
        loop.set_exception_handler(hygiene)
    assert client.fatal is None
    for disconnect in client.history:
        assert disconnect.reason is DisconnectReason.CONNECT_FAILED
        assert "peer does not speak TLS" in disconnect.detail, disconnect.detail
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in loud if r.name == "asyncio" or r.exc_info or "SSL handshake failed"
                in r.getMessage()], [r.getMessage()[:200] for r in loud]
    lines = [r for r in loud if r.name == "defi_ws.client"]
    assert all("disconnected: connect_failed:" in r.getMessage() for r in lines)
    assert len(lines) == len(client.history)
    assert "Logging error" not in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("aiofastnet") is None,
                    reason="aiofastnet not installed")
async def test_eof_during_the_tls_handshake_reaches_no_exception_handler(
    loop_hygiene: list[dict[str, Any]],
) -> None:
    async with TcpServer(close_after_first_bytes) as server, running(
            feed(server.url("wss"), use_aiofastnet=True)) as client:
        await wait_for(lambda: len(client.history) >= 2)
    assert loop_hygiene == []  # aiofastnet reports an exception *class* here
    assert asyncio.get_running_loop().get_exception_handler() is not None  # put back


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
async def test_expired_certificate_is_fatal(
    ca: trustme.CA, ca_file: str, use_aiofastnet: bool
) -> None:
    import datetime

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", not_before=datetime.datetime(2000, 1, 1),
                  not_after=datetime.datetime(2001, 1, 1)).configure_cert(ctx)
    with tls_terminator(ctx) as port:
        client = feed(f"wss://127.0.0.1:{port}/", use_aiofastnet=use_aiofastnet, ca_file=ca_file)
        async with running(client):
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(10)
    disconnect = info.value.disconnect
    assert disconnect.reason is DisconnectReason.TLS_FAILURE and len(client.history) == 1
    assert disconnect.detail.startswith("certificate verification failed: ")
    assert "expired" in disconnect.detail


@pytest.mark.parametrize("use_aiofastnet", TRANSPORTS)
async def test_peer_hanging_up_during_the_upgrade_is_a_connect_failure(
    use_aiofastnet: bool,
) -> None:
    """picows returns a dead connection when the peer closes mid-upgrade: not 'connected'."""
    async with TcpServer(close_after_upgrade_request) as server, running(
            feed(server.url(), use_aiofastnet=use_aiofastnet)) as client:
        await wait_for(lambda: len(client.history) >= 2)
    assert client.health.connects == 0
    for disconnect in client.history:
        assert disconnect.reason is DisconnectReason.CONNECT_FAILED
        assert "before the WebSocket upgrade completed" in disconnect.detail


def _handshake_error(status: int, retry_after: str | None = None) -> picows.WSHandshakeError:
    if status == 101:
        response = picows.WSUpgradeResponse.create_error_response(400)
        response.status = http.HTTPStatus.SWITCHING_PROTOCOLS
    else:
        response = picows.WSUpgradeResponse.create_error_response(status, b"no")
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    if status == 101:
        return picows.WSInvalidHeaderError(
            "cannot upgrade, invalid sec-websocket-accept response", "Sec-WebSocket-Accept",
            "bogus", b"", b"", response)
    return picows.WSHandshakeError("refused", b"", b"", response)


def _aiofastnet_style_ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError()  # aiofastnet: no args, the text in strerror and reason
    exc.strerror = f"[SSL ROUTINES: {reason}] ssl handshake failed"
    exc.reason = reason
    return exc


#: (exception, expected reason, a fragment the detail must contain)
CONNECT_ERRORS: list[tuple[BaseException, DisconnectReason, str]] = [
    (ConnectionRefusedError(111, "Connect call failed"), DisconnectReason.CONNECT_FAILED,
     "refused"),
    (ConnectionResetError(), DisconnectReason.CONNECT_FAILED, "peer does not speak TLS"),
    (ConnectionResetError(104, "Connection reset by peer"), DisconnectReason.CONNECT_FAILED,
     "during the TLS handshake"),
    (ConnectionAbortedError(), DisconnectReason.CONNECT_FAILED, "during the TLS handshake"),
    (BrokenPipeError(32, "Broken pipe"), DisconnectReason.CONNECT_FAILED, "TLS handshake"),
    (OSError(101, "Network is unreachable"), DisconnectReason.CONNECT_FAILED, "unreachable"),
    (OSError(), DisconnectReason.CONNECT_FAILED, "OSError"),
    (EOFError(), DisconnectReason.CONNECT_FAILED, "during the TLS handshake"),
    (asyncio.IncompleteReadError(b"", 10), DisconnectReason.CONNECT_FAILED, "TLS handshake"),
    (TimeoutError(), DisconnectReason.CONNECT_FAILED, "timed out"),
    (asyncio.TimeoutError("websocket handshake timeout"), DisconnectReason.CONNECT_FAILED,
     "timed out"),
    (socket.gaierror(-2, "Name or service not known"), DisconnectReason.CONNECT_FAILED,
     "DNS lookup failed for host 'venue.example'"),
    (socket.gaierror(), DisconnectReason.CONNECT_FAILED, "DNS lookup failed"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"),
     DisconnectReason.TLS_FAILURE, "certificate verification failed"),
    (_aiofastnet_style_ssl_error("TLSV1_ALERT_INTERNAL_ERROR"), DisconnectReason.CONNECT_FAILED,
     "alert internal_error"),
    (_aiofastnet_style_ssl_error("WRONG_VERSION_NUMBER"), DisconnectReason.CONNECT_FAILED,
     "peer does not speak TLS"),
    (ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure"),
     DisconnectReason.CONNECT_FAILED, "TLS handshake failed"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
     DisconnectReason.CONNECT_FAILED, "peer does not speak TLS"),
    (picows.WSHandshakeError("cannot upgrade, invalid HTTP status line"),
     DisconnectReason.CONNECT_FAILED, "invalid WebSocket upgrade response"),
    (_handshake_error(101),
     DisconnectReason.CONNECT_FAILED, "sec-websocket-accept"),
    (_handshake_error(503, retry_after="12"), DisconnectReason.HANDSHAKE_REJECTED, "HTTP 503"),
    (picows.WSError("boom"), DisconnectReason.CONNECT_FAILED, "boom"),
    (picows.WSInvalidURL(f"ws://venue.example/?key={SECRET}", "scheme isn't ws or wss"),
     DisconnectReason.INVALID_URL if hasattr(DisconnectReason, "INVALID_URL") else
     DisconnectReason.CONNECT_FAILED, "scheme"),
    (ValueError("Port out of range 0-65535"), DisconnectReason.INVALID_URL
     if hasattr(DisconnectReason, "INVALID_URL") else DisconnectReason.CONNECT_FAILED, "Port"),
    (RuntimeError(), DisconnectReason.CONNECT_FAILED, "RuntimeError"),
    (RuntimeError(f"failed for wss://venue.example/?key={SECRET}"),
     DisconnectReason.CONNECT_FAILED, "wss://venue.example/?<redacted>"),
]


@pytest.mark.parametrize(("exc", "reason", "fragment"), CONNECT_ERRORS,
                         ids=[f"{i}-{type(c[0]).__name__}" for i, c in enumerate(CONNECT_ERRORS)])
def test_every_connect_exception_gets_a_useful_classified_detail(
    exc: BaseException, reason: DisconnectReason, fragment: str
) -> None:
    url = f"wss://venue.example/feed?key={SECRET}"
    disconnect = classify_connect_error(exc, url)
    assert disconnect.reason is reason
    assert fragment in disconnect.detail, disconnect.detail
    assert disconnect.detail.strip() and not disconnect.detail.endswith(": ")
    assert len(disconnect.detail) <= 200
    assert_no_secret(disconnect.describe())
    # Without the URL (as a transport classifies) the detail is never empty either.
    bare = classify_connect_error(exc)
    assert bare.reason is reason and bare.detail.strip() and not bare.detail.endswith(": ")
    assert_no_secret(bare.describe())


def test_exception_class_reports_are_repaired_while_connecting() -> None:
    """aiofastnet hands the loop's exception handler a class: dropped for OSErrors,
    instantiated otherwise, and the previous handler is back afterwards."""
    from defi_ws.connect_errors import handshake_error_guard

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, Any]] = []

        def handler(_loop: Any, context: dict[str, Any]) -> None:
            seen.append(context)

        loop.set_exception_handler(handler)
        with handshake_error_guard(), handshake_error_guard():
            loop.call_exception_handler({"message": "SSL handshake failed",
                                         "exception": ConnectionResetError})
            loop.call_exception_handler({"message": "odd", "exception": KeyError})
            loop.call_exception_handler({"message": "plain"})
        assert loop.get_exception_handler() is handler
        assert [c["message"] for c in seen] == ["odd", "plain"]
        assert isinstance(seen[0]["exception"], KeyError)

    asyncio.run(main())


# ------------------------------------------------------------------- (4) Retry-After


@pytest.mark.parametrize("retry_after", [
    "86400000",
    "9" * 400,
    email.utils.formatdate(time.mktime((2099, 1, 1, 0, 0, 0, 0, 0, 0)), usegmt=True),
    "-5",
], ids=["86400000", "400-digits", "date-2099", "negative"])
async def test_retry_after_is_capped_or_ignored_never_years(retry_after: str) -> None:
    async with TcpServer(http_429(retry_after)) as server:
        client = feed(server.url(), use_aiofastnet=False, max_retry_after_s=0.5,
                      reconnect=FixedDelay(0.3))
        async with running(client):
            await wait_for(lambda: bool(client.history) and client.state is State.BACKOFF)
            snap = client.snapshot()
            await wait_for(lambda: server.accepted >= 2)  # back soon, not in years
    refused = client.history[0]
    assert refused.reason is DisconnectReason.HANDSHAKE_REJECTED and refused.http_status == 429
    finite_ask = retry_after in ("86400000",) or retry_after.endswith("GMT")
    if finite_ask:
        assert refused.retry_after_s == 0.5
        assert "capped at 0.5 s (max_retry_after_s)" in refused.detail, refused.detail
        assert snap["retry_after_s"] == 0.5
    else:
        assert refused.retry_after_s is None
        assert "ignored" in refused.detail, refused.detail
        assert snap["retry_after_s"] is None
    assert snap["state"] == "BACKOFF"
    assert snap["backoff_s"] == (0.5 if finite_ask else 0.3)
    assert refused.describe() in snap["last_disconnect"]


def test_default_cap_honours_a_few_minutes_at_most() -> None:
    """A 429 asking for 1000 days: the client is back after 300 s (virtual time)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport()
        transport.fail_next(_handshake_error(429, retry_after="86400000"),
                            _handshake_error(429, retry_after="30"))
        client = FeedClient(JsonHandler("ws://venue.example/"), transport=transport,
                            reconnect=FixedDelay(0.5), heartbeat=NoPing(), clock=loop.time)
        async with client:
            await wait_for(lambda: len(client.history) >= 1, 5)
            assert client.snapshot()["retry_after_s"] == 300.0
            await client.wait_live(10_000)
            assert loop.time() <= 300.0 + 30.0 + 5.0
        capped, honoured = client.history[0], client.history[1]
        assert capped.retry_after_s == 300.0 and "capped at 300 s" in capped.detail
        assert honoured.retry_after_s == 30.0 and "Retry-After 30 s honoured" in honoured.detail

    run_virtual(main())


def test_a_transports_non_finite_retry_after_is_ignored() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport()
        for value in (math.inf, math.nan, -1.0):
            transport.fail_next(ConnectError(Disconnect(
                DisconnectReason.HANDSHAKE_REJECTED, http_status=429, retry_after_s=value)))
        client = FeedClient(JsonHandler("ws://venue.example/"), transport=transport,
                            reconnect=FixedDelay(0.5), heartbeat=NoPing(), clock=loop.time)
        async with client:
            await client.wait_live(100)
            assert loop.time() <= 5.0
        refused = list(client.history)[:3]
        assert [d.retry_after_s for d in refused] == [None, None, None]
        assert all("ignored" in d.detail for d in refused)

    run_virtual(main())


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "300", True])
def test_max_retry_after_s_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_retry_after_s"):
        FeedClient(JsonHandler("ws://venue.example/"), max_retry_after_s=value)


def test_retry_after_header_values() -> None:
    """Only finite, non-negative seconds or an HTTP date; anything else is ignored."""
    expected = {"²": None, "nan": None, "inf": None, "1e400": None, "9" * 400: None,
                "-3": None, "-0": None, "0x10": None, " 7 ": 7.0, "2.5": 2.5,
                "Sun, 06 Nov 1994 08:49:37 GMT": 0.0, "Fri, 31 Dec 99999 23:59:59 GMT": None}
    for header, seconds in expected.items():
        disconnect = classify_connect_error(_handshake_error(429, retry_after=header))
        assert disconnect.retry_after_s == seconds, header
        assert disconnect.detail.startswith("upgrade refused with HTTP 429")
        if seconds is None:
            assert "ignored" in disconnect.detail


# ------------------------------------------------------------------- (5) URLs

BAD_URLS = [
    ("http://127.0.0.1:1/feed?key=" + SECRET, "scheme must be ws or wss"),
    ("ftp://x/", "scheme must be ws or wss"),
    ("ws://127.0.0.1:notaport/", "port 'notaport'"),
    ("ws://[::1", "IPv6"),
    ("ws://user:pw@venue.example/feed?key=" + SECRET, "credentials"),
    ("venue.example/ws", "no scheme"),
    ("ws://venue.example/#frag", "fragment"),
    ("ws://venue.example:99999/", "port '99999'"),
    ("ws://::1/", "brackets"),
    ("ws:///feed", "no host"),
    ("ws://venue example/", "whitespace"),
    ("", "empty"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_invalid_url_at_construction_is_a_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        JsonHandler(url)
    assert problem in str(info.value)
    assert_no_secret(str(info.value), repr(info.value))


class EndpointHandler(JsonHandler):
    """Makes its URL per attempt (a signed URL, an endpoint list)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("", on_data=None)
        self.endpoint = endpoint

    def url(self, attempt: int) -> str:
        return self.endpoint


@pytest.mark.parametrize(("url", "problem"), BAD_URLS[:5])
async def test_invalid_url_from_handler_url_is_fatal(
    url: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = FeedClient(EndpointHandler(url), reconnect=FixedDelay(0.05), heartbeat=NoPing())
    async with running(client):
        with pytest.raises(FatalDisconnect) as info:
            await client.wait_live(10)
    disconnect = info.value.disconnect
    assert disconnect.reason is DisconnectReason.INVALID_URL
    assert not default_is_retryable(disconnect) and len(client.history) == 1
    assert problem in disconnect.detail
    assert_no_secret(str(info.value), disconnect.describe(), str(client.snapshot()),
                     *(r.getMessage() for r in caplog.records))


def test_dns_failure_is_retried_and_names_the_host() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport = MemoryTransport()
        transport.fail_next(*[socket.gaierror(-2, "Name or service not known")] * 3)
        client = FeedClient(JsonHandler(f"wss://venue.example/ws?key={SECRET}"),
                            transport=transport, reconnect=FixedDelay(0.5), heartbeat=NoPing(),
                            clock=loop.time)
        async with client:
            await client.wait_live(100)
            failures = list(client.history)
        assert len(failures) == 3
        for disconnect in failures:
            assert disconnect.reason is DisconnectReason.CONNECT_FAILED
            assert default_is_retryable(disconnect)
            assert disconnect.detail == (
                "DNS lookup failed for host 'venue.example': Name or service not known")

    run_virtual(main())


async def test_uppercase_wss_scheme_uses_the_tls_config(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """``WSS://`` is TLS with the client's TlsConfig (its CA), like ``wss://``."""
    from tests.servers import ScriptServer

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with ScriptServer(ssl=ctx) as server:
        url = server.url.replace("ws://", "WSS://")
        client = FeedClient(JsonHandler(url), tls=TlsConfig(ca_file=ca_file), heartbeat=NoPing())
        async with running(client):
            await client.wait_live(10)


def test_redact_url_never_raises_and_never_shows_secrets() -> None:
    for url in ("ws://[::1/feed?key=" + SECRET, "ws://u:pw@h:notaport/?k=" + SECRET,
                "ws://user:pw@[::1/x#" + SECRET, "no scheme?key=" + SECRET):
        assert_no_secret(redact_url(url))
    assert redact_url("ws://[::1/feed?key=x") == "ws://[::1/feed?<redacted>"
