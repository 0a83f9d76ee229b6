"""What picows logs on defi-ws' behalf: stable logger names, levels by blame, no secrets.

Every record of every logger is captured at level 1 (below picows' own debug level 9),
for the client and for the simulator's server side, through whole connection lives:
upgrade, data, a refused upgrade, peer garbage, a reset, a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.heartbeat import NoPing
from defi_ws.reasons import DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import ExchangeSimulator

QUERY_SECRET = "QRYS3CR3T"
HEADER_SECRET = "HDRS3CR3T"
HEADER_NAME = "X-Api-Key"


class SignedHandler(JsonHandler):
    def url(self, attempt: int) -> str:
        return f"{self._url}?apiKey=K&signature={QUERY_SECRET}"


def texts(records: list[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it (message, traceback and stack included)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(record) for record in records]


async def wait_disconnects(client: FeedClient, count: int) -> None:
    for _ in range(500):
        if len(client.history) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} disconnects, got {list(client.history)}")


async def a_full_life(caplog: pytest.LogCaptureFixture) -> tuple[FeedClient, list[Any]]:
    """Refused upgrade, live, peer garbage, reconnect, reset, reconnect, stop: at level 1."""
    caplog.set_level(1)
    caplog.set_level(1, logger="defi_ws")
    async with ExchangeSimulator(rate_per_s=50) as sim:
        sim.reject_handshakes(429, retry_after_s=0.05, count=1)
        client = FeedClient(SignedHandler(sim.url), topics=["trades.BTC"], heartbeat=NoPing(),
                            reconnect=FixedDelay(0.05), extra_headers={HEADER_NAME: HEADER_SECRET})
        async with client:
            await client.wait_live(10)
            garbage_from = len(caplog.records)
            assert sim.send_garbage() == 1
            await wait_disconnects(client, 2)
            garbage_records = caplog.records[garbage_from:]
            await client.wait_live(10)
            assert sim.drop_all() == 1
            await wait_disconnects(client, 3)
            await client.wait_live(10)
    return client, garbage_records


async def test_no_query_string_or_header_value_in_any_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await a_full_life(caplog)
    records = list(caplog.records)
    # picows' own debug records (level 9) were captured: the test sees what it must.
    assert any(r.levelno < logging.DEBUG and "picows" in r.name for r in records)
    for text in texts(records):
        assert QUERY_SECRET not in text, text
        assert HEADER_SECRET not in text, text
    # The upgrade request is still described: its header names, not their values.
    assert any(HEADER_NAME in text for text in texts(records))


async def test_picows_logs_under_stable_names_in_the_defi_ws_tree(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await a_full_life(caplog)
    picows_names = {r.name for r in caplog.records if "picows" in r.name}
    # Several connections (client and server side), two logger names: no per-fd children.
    assert picows_names == {"defi_ws.picows", "defi_ws.simulator.picows"}
    for record in caplog.records:
        if record.name.startswith("defi_ws"):
            assert not any(part.isdigit() for part in record.name.split(".")), record.name


async def test_peer_garbage_is_one_warning_and_no_error(caplog: pytest.LogCaptureFixture) -> None:
    client, garbage = await a_full_life(caplog)
    assert client.history[1].reason is DisconnectReason.PROTOCOL_ERROR
    errors = [r for r in garbage if r.levelno >= logging.ERROR]
    assert not errors, texts(errors)
    parser = [r for r in garbage if "parser error" in r.getMessage()
              and r.levelno >= logging.WARNING]
    assert len(parser) == 1 and parser[0].levelno == logging.WARNING
    assert parser[0].name == "defi_ws.picows"


def test_picows_log_scrubs_heads_and_urls_and_relevels_by_blame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from defi_ws._picows_log import PicowsLog

    caplog.set_level(1, logger="defi_ws.test_picows_log")
    log = PicowsLog(logging.getLogger("defi_ws.test_picows_log"))
    request = (b"GET /ws/v1?sig=" + QUERY_SECRET.encode() + b" HTTP/1.1\r\nHost: venue\r\n"
               b"Authorization: Bearer " + HEADER_SECRET.encode() + b"\r\n\r\n\x81\x00")
    response = (b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: s=" + HEADER_SECRET.encode()
                + b"\r\n\r\n")
    log.log(9, "Send upgrade request: %s", request)
    log.log(9, "New data: %s", bytearray(request))
    log.log(9, "Send upgrade response: %s", response)
    log.info("%s replied with HTTP redirect to %s", f"wss://u:{HEADER_SECRET}@venue/ws?k={QUERY_SECRET}",
             "wss://venue/other")
    log.error("WS parser error: %s, initiate disconnect", ("bad opcode",))
    log.error("WS parser error: %s, initiate disconnect", ("bad opcode",))
    log.error("Unhandled exception from user's WSListener.on_ws_frame")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    for _, message in messages:
        assert QUERY_SECRET not in message and HEADER_SECRET not in message, message
    assert messages[0][1] == ("Send upgrade request: GET /ws/v1?<redacted> HTTP/1.1 "
                              "[headers: Host, Authorization; values not logged, +2 bytes]")
    assert messages[2][1] == ("Send upgrade response: HTTP/1.1 101 "
                              "[headers: Set-Cookie; values not logged]")
    assert "wss://venue/ws?<redacted>" in messages[3][1]
    # The peer's garbage: WARNING once per connection, then DEBUG; our own bugs stay ERROR.
    assert [level for level, _ in messages[4:]] == [logging.WARNING, logging.DEBUG,
                                                   logging.ERROR]
    assert {r.name for r in caplog.records} == {"defi_ws.test_picows_log"}
