"""Proxies: FeedClient / FeedPool / gateway through a real local proxy server (pproxy,
HTTP CONNECT and SOCKS5, both with a password), over ws:// and wss://; refusals are
CONNECT_FAILED with the proxy's answer; the password never reaches a log record (level
1), a repr, a snapshot or a disconnect."""

from __future__ import annotations

import io
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from defi_ws import (
    ConfigError,
    DisconnectReason,
    FeedClient,
    FeedPool,
    FixedDelay,
    JsonHandler,
    TlsConfig,
)
from defi_ws.gateway import Gateway, parse_config
from defi_ws.gateway.sinks import StdoutSink
from defi_ws.testing import ExchangeSimulator
from tests.gateway.servers import free_port, wait_until

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop"])

PASSWORD = "pr0xy-Secret-42"
USER = "feeder"

# pproxy 2.7.9 asks asyncio for a loop after installing uvloop's policy, which new
# uvloops refuse: run it on the stock loop.
_LAUNCH = ("import sys, asyncio; sys.modules['uvloop'] = None; "
           "asyncio.set_event_loop(asyncio.new_event_loop()); "
           "from pproxy.server import main; sys.argv = ['pproxy'] + sys.argv[1:]; main()")


class Proxy:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def url(self, scheme: str, password: str = PASSWORD) -> str:
        return f"{scheme}://{USER}:{password}@127.0.0.1:{self.port}"

    def tunnels_to(self, port: int) -> bool:
        return f"-> 127.0.0.1:{port}" in self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    port = free_port()
    log = tmp_path_factory.mktemp("proxy") / "pproxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, "-l",
             f"http+socks5://127.0.0.1:{port}#{USER}:{PASSWORD}", "-v", "--auth", "0"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = 30.0
        import time

        start = time.monotonic()
        while "Serving on" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - start < deadline, "pproxy did not start"
            time.sleep(0.05)
        yield Proxy(proc, port, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_sim(ca: trustme.CA) -> AsyncIterator[ExchangeSimulator]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with ExchangeSimulator(rate_per_s=100, ssl_context=ctx) as sim:
        yield sim


@pytest.fixture
def every_record(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at level 1; none may hold the proxy's password."""
    caplog.set_level(1)
    yield caplog
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert PASSWORD not in text, text


def no_secret(*objects: Any) -> None:
    for obj in objects:
        assert PASSWORD not in repr(obj) and PASSWORD not in str(obj)


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_ws_through_a_proxy(proxy: Proxy, scheme: str,
                                  every_record: pytest.LogCaptureFixture) -> None:
    async with ExchangeSimulator(rate_per_s=100) as sim:
        got: list[Any] = []
        client = FeedClient(JsonHandler(sim.url, on_data=got.append), topics=["trades.A"],
                            proxy=proxy.url(scheme))
        async with client:
            await client.wait_live(20)
            await wait_until(lambda: len(got) >= 10, 20, "messages")
        assert proxy.tunnels_to(sim.port)
        no_secret(client, client.snapshot(), client._options)


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_wss_through_a_proxy(proxy: Proxy, scheme: str, ca: trustme.CA, tmp_path: Path,
                                   tls_sim: ExchangeSimulator,
                                   every_record: pytest.LogCaptureFixture) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    got: list[Any] = []
    client = FeedClient(JsonHandler(tls_sim.url, on_data=got.append), topics=["trades.A"],
                        proxy=proxy.url(scheme), tls=TlsConfig(ca_file=str(ca_file)))
    async with client:
        await client.wait_live(20)
        await wait_until(lambda: len(got) >= 10, 20, "messages over TLS")
    assert tls_sim.url.startswith("wss://") and proxy.tunnels_to(tls_sim.port)


@pytest.mark.parametrize(("scheme", "answer"), [("http", "407"), ("socks5", "")])
async def test_a_refused_proxy_is_connect_failed_with_its_answer(
        proxy: Proxy, scheme: str, answer: str,
        every_record: pytest.LogCaptureFixture) -> None:
    async with ExchangeSimulator() as sim:
        seen: list[Any] = []
        client = FeedClient(JsonHandler(sim.url), topics=["trades.A"],
                            proxy=proxy.url(scheme, password=PASSWORD + "-wrong"),
                            reconnect=FixedDelay(5.0), on_disconnected=seen.append)
        async with client:
            await wait_until(lambda: bool(seen), 20, "the refusal")
        disconnect = seen[0]
        assert disconnect.reason is DisconnectReason.CONNECT_FAILED
        assert disconnect.detail.startswith("the proxy refused"), disconnect.detail
        assert answer in disconnect.detail
        no_secret(disconnect, disconnect.describe(), client.snapshot(), list(client.history))


async def test_an_unreachable_proxy_is_connect_failed(
        every_record: pytest.LogCaptureFixture) -> None:
    seen: list[Any] = []
    port = free_port()
    client = FeedClient(JsonHandler("ws://127.0.0.1:9/ws"),
                        proxy=f"socks5://{USER}:{PASSWORD}@127.0.0.1:{port}",
                        reconnect=FixedDelay(5.0), on_disconnected=seen.append)
    async with client:
        await wait_until(lambda: bool(seen), 20, "the failure")
    assert seen[0].reason is DisconnectReason.CONNECT_FAILED
    assert "proxy" in seen[0].detail
    no_secret(seen[0].describe())


async def test_a_bad_proxy_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        FeedClient(JsonHandler("ws://127.0.0.1:9"), proxy=f"ftp://u:{PASSWORD}@h:1")
    assert "a proxy URL must start with" in str(info.value) and PASSWORD not in str(info.value)


async def test_a_pool_and_a_gateway_through_a_proxy(
        proxy: Proxy, every_record: pytest.LogCaptureFixture) -> None:
    async with ExchangeSimulator(rate_per_s=100) as sim:
        got: list[Any] = []
        pool = FeedPool(JsonHandler(sim.url, on_data=got.append, sequence_field="seq"),
                        topics=["trades.A"], redundancy=2,
                        client_options={"proxy": proxy.url("socks5")})
        async with pool:
            await pool.wait_live(20)
            await wait_until(lambda: len(got) >= 10, 20, "pool messages")
        config = parse_config({
            "venues": {"sim": {"kind": "generic", "url": sim.url, "topics": ["trades.B"],
                               "proxy_env": "GW_PROXY"}},
            "sinks": [{"kind": "stdout"}],
        }, env={"GW_PROXY": proxy.url("http")})
        sink = StdoutSink(stream=io.BytesIO())
        gw = Gateway(config, sinks=[sink])
        await gw.start()
        try:
            await wait_until(lambda: sink.stats.accepted >= 10, 20, "gateway records")
        finally:
            assert await gw.stop() == 0
        no_secret(config, gw.pools["sim"].clients())
