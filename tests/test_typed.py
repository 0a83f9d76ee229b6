"""Typed decode (defi_ws.typed): msgspec Structs through the same decode pipeline.

Covers the hot path driven directly (``FeedListener.feed``) and the supervisor over the
in-memory transport (async tests: they run on asyncio and on uvloop).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

msgspec = pytest.importorskip("msgspec")

from defi_ws._core import FeedListener, buffer_address  # noqa: E402
from defi_ws.client import FeedClient  # noqa: E402
from defi_ws.handler import Control, JsonHandler  # noqa: E402
from defi_ws.lifecycle import State  # noqa: E402
from defi_ws.reconnect import FixedDelay  # noqa: E402
from defi_ws.typed import INSTALL_HINT, msgspec_available, struct_decoder  # noqa: E402
from tests.venue import MemoryVenue  # noqa: E402

TEXT = 1


class Trade(msgspec.Struct):
    """A Binance-style trade; only the fields we read are declared."""

    s: str
    p: str
    q: str
    T: int
    m: bool


class Data(msgspec.Struct):
    """The generic venue's data message (JsonHandler protocol)."""

    topic: str
    seq: int
    data: dict[str, Any]


TRADE = {
    "e": "trade", "E": 1_700_000_000_001, "s": "BTCUSDT", "t": 12345, "p": "60000.10",
    "q": "0.01000000", "T": 1_700_000_000_000, "m": True, "M": True,
}


def test_struct_decoder_is_msgspecs_decode_without_a_wrapper() -> None:
    decode = struct_decoder(Trade)
    assert decode(memoryview(orjson.dumps(TRADE))) == Trade("BTCUSDT", "60000.10",
                                                            "0.01000000", 1_700_000_000_000, True)
    # No Python frame in between: the bound method of a msgspec Decoder.
    assert getattr(decode, "__self__", None).__class__ is msgspec.json.Decoder
    assert msgspec_available()


def test_feed_delivers_structs_decoded_in_place() -> None:
    got: list[Any] = []
    addresses: list[tuple[int, int]] = []
    listener: FeedListener

    def on_message(trade: Trade) -> None:
        got.append(trade)
        addresses.append((listener.view_address, listener.last_payload_addr))

    listener = FeedListener(on_message, decode=struct_decoder(Trade))
    assert listener.zero_copy  # a Struct without Raw fields never aliases its input
    payloads = [orjson.dumps({**TRADE, "t": i, "p": f"{60000 + i}.5"}) for i in range(50)]
    for payload in payloads:
        listener.feed(TEXT, payload)
    assert [t.p for t in got] == [f"{60000 + i}.5" for i in range(50)]
    assert all(isinstance(t, Trade) for t in got)
    assert listener.messages == 50 and listener.decode_errors == 0
    # The decoder saw the caller's buffer itself (no copy on the way in).
    assert addresses[-1] == (buffer_address(payloads[-1]),) * 2


def test_raw_fields_turn_zero_copy_off() -> None:
    class Envelope(msgspec.Struct):
        stream: str
        data: msgspec.Raw

    listener = FeedListener(lambda m: None, decode=struct_decoder(Envelope))
    assert not listener.zero_copy  # Raw aliases its input: decode reads a copy


def test_malformed_and_invalid_messages_count_as_decode_errors() -> None:
    got: list[Any] = []
    listener = FeedListener(got.append, decode=struct_decoder(Trade))
    listener.feed(TEXT, b'{"s": "BTCUSDT", "p": ')              # malformed JSON
    listener.feed(TEXT, orjson.dumps({**TRADE, "T": "late"}))   # wrong type
    listener.feed(TEXT, orjson.dumps({"s": "BTCUSDT"}))          # missing fields
    listener.feed(TEXT, orjson.dumps(TRADE))
    assert listener.decode_errors == 3 and listener.callback_errors == 0
    assert listener.messages == 1 and len(got) == 1
    stages = [stage for _, stage, _ in listener.errors]
    assert stages == ["decode"] * 3
    assert "DecodeError" in listener.errors[0][2]
    assert "ValidationError" in listener.errors[1][2]


def test_fallback_decodes_what_does_not_fit_but_not_what_is_malformed() -> None:
    got: list[Any] = []
    listener = FeedListener(got.append, decode=struct_decoder(Trade, fallback=orjson.loads))
    listener.feed(TEXT, orjson.dumps(TRADE))
    listener.feed(TEXT, b'{"event": "subscribed", "topic": "a"}')
    listener.feed(TEXT, b"{not json")
    assert isinstance(got[0], Trade) and got[1] == {"event": "subscribed", "topic": "a"}
    assert listener.decode_errors == 1 and listener.messages == 2


def test_lax_mode_and_union_types() -> None:
    class Tick(msgspec.Struct, tag="tick"):
        px: float

    class Book(msgspec.Struct, tag="book"):
        bids: list[tuple[float, float]]

    decode = struct_decoder(Tick | Book, strict=False)
    assert decode(memoryview(b'{"type": "tick", "px": "1.5"}')) == Tick(1.5)
    assert decode(memoryview(b'{"type": "book", "bids": [[1, 2]]}')) == Book([(1.0, 2.0)])


def test_missing_msgspec_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgspec", None)  # makes `import msgspec` fail
    with pytest.raises(ImportError, match=r"defi-ws\[msgspec\]"):
        struct_decoder(Trade)
    assert not msgspec_available()
    assert "defi-ws[msgspec]" in INSTALL_HINT


class TypedHandler(JsonHandler):
    """The generic venue with data decoded into :class:`Data`; acks fall back to dicts."""

    decode = staticmethod(struct_decoder(Data, fallback=orjson.loads))

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.got: list[Any] = []

    def classify(self, message: Any) -> Sequence[Control]:
        assert isinstance(message, dict), "control messages arrive as dicts"
        return super().classify(message)

    def on_message(self, message: Any) -> None:
        self.got.append(message)


async def test_feed_client_delivers_structs_over_the_memory_transport() -> None:
    venue = MemoryVenue(reply_delay_s=0.001)
    handler = TypedHandler("ws://venue")
    client = FeedClient(handler, transport=venue.transport, topics=["a", "b"],
                        reconnect=FixedDelay(0.01), close_timeout_s=0.05)
    async with client:
        await client.wait_live(5)
        assert set(client.confirmed_topics) == {"a", "b"}
        conn = venue.transport.current
        for seq in range(1, 4):
            conn.server_send({"topic": "a", "seq": seq, "data": {"px": "1.0"}})
        conn.server_send(b'{"topic": "a", "seq": ')             # malformed
        conn.server_send({"topic": "b", "seq": "x", "data": {}})  # wrong type: fallback dict
        await asyncio.sleep(0)
        assert [m.seq for m in handler.got[:3]] == [1, 2, 3]
        assert all(isinstance(m, Data) for m in handler.got[:3])
        assert handler.got[3] == {"topic": "b", "seq": "x", "data": {}}
        assert client.health.counter("decode_errors") == 1
        assert client.health.handler_errors == 1
        assert client.health.errors[-1][1] == "decode"
        assert client.state is State.LIVE  # ErrorPolicy.CONTINUE keeps the connection
    assert client.state is State.CLOSED


async def test_feed_client_without_fallback_counts_every_non_struct() -> None:
    class StrictHandler(TypedHandler):
        decode = staticmethod(struct_decoder(Data))

    venue = MemoryVenue(reply_delay_s=0.001)
    handler = StrictHandler("ws://venue")
    # No topics: LIVE right after connect, so acks never matter.
    async with FeedClient(handler, transport=venue.transport, close_timeout_s=0.05) as client:
        await client.wait_live(5)
        conn = venue.transport.current
        conn.server_send({"topic": "a", "seq": 1, "data": {}})
        conn.server_send(b"[1, 2]")                   # valid JSON, not a Data
        conn.server_send(b'{"topic": "a", "seq": 2')  # malformed
        await asyncio.sleep(0)
        assert client.health.counter("decode_errors") == 2
        assert client.health.counter("messages") == 1
    assert handler.got == [Data("a", 1, {})]
