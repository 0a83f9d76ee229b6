"""TLS policy: safe by default, with certificates made at run time by trustme.

A local TLS server presents (a) a certificate from a CA the client trusts, (b) one from
a CA it does not trust, (c) a trusted certificate for another host name. Only (a)
connects; (b) and (c) end in TLS_FAILURE, which is fatal (not retried) by default.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from defi_ws.client import FeedClient
from defi_ws.errors import FatalDisconnect
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing
from defi_ws.lifecycle import State
from defi_ws.reasons import DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.tls import TlsConfig
from tests.servers import ScriptServer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    yield str(path)


def server_context(ca: trustme.CA, host: str = "127.0.0.1") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(ctx)
    return ctx


def wss(server: ScriptServer) -> str:
    return server.url.replace("ws://", "wss://")


def forgive_server_handshake_errors(calls: list[dict[str, Any]]) -> None:
    """The refused handshake is also reported by the *server's* transport; that is
    the test server's business, not the client's."""
    calls[:] = [c for c in calls if c.get("message") != "SSL handshake failed"]


async def test_trusted_certificate_connects(ca: trustme.CA, ca_file: str) -> None:
    async with ScriptServer(ssl=server_context(ca)) as server:
        client = FeedClient(JsonHandler(wss(server)), tls=TlsConfig(ca_file=ca_file),
                            heartbeat=NoPing())
        async with client:
            await client.wait_live(5)
            assert client.state is State.LIVE


@pytest.mark.parametrize("case", ["untrusted CA", "wrong host name"])
async def test_bad_certificate_is_refused_and_not_retried(
    ca: trustme.CA, ca_file: str, case: str, loop_hygiene: list[dict[str, Any]]
) -> None:
    ctx = server_context(trustme.CA()) if case == "untrusted CA" else server_context(
        ca, "venue.example")
    async with ScriptServer(ssl=ctx) as server:
        client = FeedClient(JsonHandler(wss(server)), tls=TlsConfig(ca_file=ca_file),
                            reconnect=FixedDelay(0.05), heartbeat=NoPing())
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
        assert info.value.disconnect.reason is DisconnectReason.TLS_FAILURE
        assert len(client.history) == 1  # not retried
        assert server.all_peers == []  # never got past TLS
    forgive_server_handshake_errors(loop_hygiene)


async def test_default_config_verifies_against_the_system_store(
    ca: trustme.CA, loop_hygiene: list[dict[str, Any]]
) -> None:
    async with ScriptServer(ssl=server_context(ca)) as server:
        client = FeedClient(JsonHandler(wss(server)), heartbeat=NoPing())
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(5)
        assert info.value.disconnect.reason is DisconnectReason.TLS_FAILURE
    forgive_server_handshake_errors(loop_hygiene)


async def test_verification_can_be_turned_off_explicitly(
    ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    async with ScriptServer(ssl=server_context(trustme.CA())) as server:
        client = FeedClient(JsonHandler(wss(server)), tls=TlsConfig(verify=False),
                            heartbeat=NoPing())
        async with client:
            await client.wait_live(5)
    assert any("verification is OFF" in r.message for r in caplog.records)


def test_client_certificate_is_loaded(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("client.example")
    path = tmp_path / "client.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    ctx = TlsConfig(client_cert=str(path)).context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


async def test_simulator_over_tls_end_to_end(ca: trustme.CA, ca_file: str) -> None:
    from defi_ws.testing import ExchangeSimulator

    async with ExchangeSimulator(rate_per_s=50, ssl_context=server_context(ca)) as sim:
        assert sim.url.startswith("wss://")
        got: list[Any] = []
        client = FeedClient(JsonHandler(sim.url, on_data=got.append), topics=["trades.BTC"],
                            tls=TlsConfig(ca_file=ca_file), reconnect=FixedDelay(0.05))
        async with client:
            await client.wait_live(5)
            await sim.wait_for(lambda: len(got) >= 5, 5)
            sim.drop_all()
            await asyncio.sleep(0.2)
            await client.wait_live(5)
            count = len(got)
            await sim.wait_for(lambda: len(got) >= count + 5, 5)
        assert client.health.reconnects == 1
        assert client.connection is None
