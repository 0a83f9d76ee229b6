"""The transport boundary: connect-error classification and cancellation safety of a
real picows connect (no socket survives a cancelled attempt)."""

from __future__ import annotations

import asyncio
import email.utils
import os
import ssl
import time

import picows
import pytest

from defi_ws import _compat
from defi_ws._core import FeedListener
from defi_ws.errors import ConnectError
from defi_ws.reasons import DisconnectReason
from defi_ws.testing import ExchangeSimulator
from defi_ws.transport import ConnectOptions, PicowsTransport, classify_connect_error
from tests.conftest import open_fds


def refused(status: int, retry_after: str | None = None) -> picows.WSHandshakeError:
    response = picows.WSUpgradeResponse.create_error_response(status, b"no")
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return picows.WSHandshakeError("refused", b"", b"", response)


def test_classification_of_connect_errors() -> None:
    d = classify_connect_error(refused(429, "7"))
    assert (d.reason, d.http_status, d.retry_after_s) == (
        DisconnectReason.HANDSHAKE_REJECTED, 429, 7.0)
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    d = classify_connect_error(refused(503, later))
    assert d.retry_after_s is not None and 55 <= d.retry_after_s <= 61
    assert classify_connect_error(refused(418, "soon")).retry_after_s is None
    assert classify_connect_error(ssl.SSLCertVerificationError("bad")).reason is (
        DisconnectReason.TLS_FAILURE)
    assert classify_connect_error(TimeoutError()).reason is DisconnectReason.CONNECT_FAILED
    assert classify_connect_error(ConnectionRefusedError()).reason is (
        DisconnectReason.CONNECT_FAILED)


def client_sockets_to(port: int) -> set[int]:
    """Inodes of this process's open sockets whose *remote* port is ``port``."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port:
                inodes.add(int(fields[9]))
    ours = set()
    for fd in open_fds():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            ours.add(fd)
    return ours


async def test_cancelled_connect_during_a_slow_handshake_leaves_no_socket() -> None:
    async with ExchangeSimulator() as sim:
        sim.slow_handshake(30)
        attempt = asyncio.ensure_future(PicowsTransport().connect(
            sim.url, FeedListener(lambda m: None), ConnectOptions(handshake_timeout_s=20)))
        try:
            async with _compat.timeout(5):  # tcp accepts do not wake sim.wait_for
                while sim.tcp_accepted < 1:
                    await asyncio.sleep(0.01)
            assert client_sockets_to(sim.port)  # the attempt holds a socket now
        finally:
            attempt.cancel()  # also when the wait failed: no task outlives the test
        with pytest.raises(asyncio.CancelledError):
            await attempt
        # The client's socket is gone at once (the simulator may keep its own end
        # until its handshake delay ends; that is the test server's business).
        assert client_sockets_to(sim.port) == set()
        sim.slow_handshake(0)


async def test_refused_connect_raises_a_classified_error() -> None:
    async with ExchangeSimulator() as sim:
        sim.reject_handshakes(429, retry_after_s=3, count=1)
        with pytest.raises(ConnectError) as info:
            await PicowsTransport().connect(
                sim.url, FeedListener(lambda m: None), ConnectOptions())
    assert info.value.disconnect.http_status == 429
    assert info.value.disconnect.retry_after_s == 3.0
