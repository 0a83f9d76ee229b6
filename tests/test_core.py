"""The hot path (defi_ws._core.FeedListener): RFC 6455 rules, reassembly, decode pipeline.

Each rule is tested twice: through ``feed()`` with a fake wire (no loop, no socket),
and end to end against a real picows server over loopback on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from defi_ws._core import (
    ERROR_POLICY_DISCONNECT,
    Deduplicator,
    FeedListener,
    is_valid_utf8,
)
from defi_ws.testing.frames import Opcode
from defi_ws.transport import ConnectOptions, PicowsConnection, PicowsTransport
from tests.conftest import open_fds
from tests.servers import ScriptServer

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10


class FakeWire:
    """Records what the listener answers."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []
        self.pongs: list[bytes] = []
        self.disconnected = False

    def send_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def send_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def disconnect(self) -> None:
        self.disconnected = True


class Events:
    """Records the listener's control events."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.closed = asyncio.Event() if _in_loop() else None

    def on_open(self) -> None:
        self.log.append(("open",))

    def on_pong(self, recv_ns: int, payload: bytes) -> None:
        self.log.append(("pong", payload))

    def on_close_received(self, code: int, reason: str) -> None:
        self.log.append(("close", code, reason))

    def on_violation(self, code: int, reason: str) -> None:
        self.log.append(("violation", code, reason))

    def on_handler_error(self, stage: str, exc: BaseException) -> None:
        self.log.append(("error", stage, type(exc).__name__))

    def on_disconnected(self) -> None:
        self.log.append(("disconnected",))
        if self.closed is not None:
            self.closed.set()


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def make(**kwargs: Any) -> tuple[FeedListener, FakeWire, Events, list[Any]]:
    got: list[Any] = []
    events = Events()
    listener = FeedListener(got.append, events=events, **kwargs)
    wire = FakeWire()
    listener.attach(wire)
    return listener, wire, events, got


# ----------------------------------------------------------------- feed(): unit level


def test_unfragmented_text_is_decoded_and_counted() -> None:
    listener, wire, _, got = make()
    listener.feed(TEXT, b'{"p":"1.5","q":2}')
    listener.feed(BINARY, b"[1,2]")
    assert got == [{"p": "1.5", "q": 2}, [1, 2]]
    assert (listener.frames, listener.messages, listener.bytes_received) == (2, 2, 22)
    assert listener.last_data_ns >= listener.connected_ns
    assert wire.closes == []


def test_fragmented_message_is_reassembled_whole() -> None:
    listener, wire, _, got = make()
    body = orjson.dumps({"data": "x" * 10_000, "n": list(range(100))})
    parts = [body[i : i + 777] for i in range(0, len(body), 777)]
    listener.feed(TEXT, parts[0], fin=False)
    for part in parts[1:-1]:
        listener.feed(CONT, part, fin=False)
    assert got == []
    listener.feed(CONT, parts[-1], fin=True)
    assert got == [orjson.loads(body)]
    assert listener.messages == 1 and listener.frames == len(parts)
    assert not listener.in_fragmented_message and wire.closes == []


def test_control_frames_may_interleave_with_fragments() -> None:
    listener, wire, events, got = make()
    listener.feed(TEXT, b'{"a":', fin=False)
    listener.feed(PING, b"hb")
    listener.feed(PONG, b"rtt")
    listener.feed(CONT, b"1}", fin=True)
    assert got == [{"a": 1}]
    assert wire.pongs == [b"hb"]
    assert ("pong", b"rtt") in events.log
    assert listener.pongs == 1 and listener.messages == 1


@pytest.mark.parametrize("rsv", [4, 2, 1, 7])
def test_rsv_bits_without_extension_close_1002(rsv: int) -> None:
    listener, wire, events, got = make()
    listener.feed(TEXT, b"{}", rsv=rsv)
    assert got == []
    assert wire.closes[0][0] == 1002
    assert ("violation", 1002, "RSV bits set without a negotiated extension") in events.log
    assert listener.violation is not None and listener.close_code_sent == 1002


def test_stray_continuation_closes_1002() -> None:
    listener, wire, _, got = make()
    listener.feed(CONT, b"orphan", fin=True)
    assert got == [] and wire.closes[0][0] == 1002
    assert "continuation" in (listener.violation or "")


def test_data_frame_inside_fragmented_message_closes_1002() -> None:
    listener, wire, _, got = make()
    listener.feed(TEXT, b'{"a":', fin=False)
    listener.feed(TEXT, b"{}", fin=True)
    assert got == [] and wire.closes[0][0] == 1002


def test_fragmented_control_frame_closes_1002() -> None:
    listener, wire, _, _ = make()
    listener.feed(PING, b"x", fin=False)
    assert wire.closes[0][0] == 1002


@pytest.mark.parametrize("opcode", [3, 7, 0xB, 0xF])
def test_reserved_opcode_closes_1002(opcode: int) -> None:
    listener, wire, _, _ = make()
    listener.feed(opcode, b"")
    assert wire.closes[0][0] == 1002


@pytest.mark.parametrize(
    "payload",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b'"caf\xc3"', b"\xe2\x82"],
)
def test_invalid_utf8_text_closes_1007(payload: bytes) -> None:
    listener, wire, _, got = make()
    listener.feed(TEXT, payload)
    assert got == [] and wire.closes[0][0] == 1007
    assert listener.decode_errors == 0  # rejected before decode


@pytest.mark.parametrize("payload", [
    b'{"a":"\xff"}', b'{"\xed\xa0\x80":1}', b'["ok","\xf4\x90\x80\x80"]', b'{"a":1} \xc0\xaf',
    b'{"a":"caf\xc3"}', b'{"truncated":"\xe2\x82',
])
def test_invalid_utf8_left_to_orjson_still_closes_1007(payload: bytes) -> None:
    # orjson.loads validates UTF-8 itself, so the listener does not check first; a
    # message it refuses is checked then, and invalid UTF-8 still closes 1007 (RFC 6455)
    # instead of counting as a decode error.
    listener, wire, _, got = make(decode=orjson.loads)
    listener.feed(TEXT, payload)
    assert got == [] and wire.closes[0][0] == 1007
    assert listener.decode_errors == 0 and listener.violation


def test_bad_json_in_valid_utf8_is_a_decode_error_not_a_close() -> None:
    listener, wire, _, got = make()
    listener.feed(TEXT, '{"a":"é",'.encode())
    listener.feed(TEXT, b'{"a":1}')
    assert got == [{"a": 1}] and wire.closes == [] and listener.decode_errors == 1


@pytest.mark.parametrize("case", ["typed msgspec", "count-only", "conflation", "dedup",
                                  "pong prefix"])
def test_invalid_utf8_is_checked_first_where_no_decoder_would_see_it(case: str) -> None:
    # Typed msgspec decoders skip unknown fields without validating them; the other
    # cases drop or count a message without decoding it.
    import msgspec

    class A(msgspec.Struct):
        a: int

    payload = b'{"a":1,"s":"x","b":"\xff"}'
    got: list[Any] = []
    kwargs: dict[str, Any] = {
        "typed msgspec": {"decode": msgspec.json.Decoder(A).decode},
        "conflation": {"conflate_field": "s"},
        "dedup": {"dedup": Deduplicator(hash_field="b")},
    }.get(case, {})
    listener = FeedListener(None if case == "count-only" else got.append, **kwargs)
    if case == "pong prefix":
        listener.set_app_pong(b'{"a"', exact=False)
    wire = FakeWire()
    listener.attach(wire)
    listener.feed(TEXT, payload, True, 0, True)
    assert got == [] and wire.closes[0][0] == 1007, case
    assert listener.decode_errors == 0 and listener.pongs == 0


@given(st.lists(st.sampled_from([b'{"a":"', b'"}', b'\xff', b'\xc3', b'\xa9', b'\xe2\x82',
                                  b'\xac', b'\xed\xa0\x80', b'\xf0\x9f\x98\x80', b"1", b",",
                                  b"[", b"]", b"x"]), max_size=12).map(b"".join))
def test_orjson_deferred_check_agrees_with_checking_first(payload: bytes) -> None:
    # The same outcome as a listener that validates before decoding (a wrapped orjson
    # is not deferred): delivered, closed 1007 or a decode error, never another.
    def outcome(decode: Any) -> tuple[Any, ...]:
        listener, wire, _, got = make(decode=decode)
        listener.feed(TEXT, payload)
        return got, wire.closes[:1] and wire.closes[0][0], listener.decode_errors

    assert outcome(orjson.loads) == outcome(lambda view: orjson.loads(view))


def test_invalid_utf8_binary_is_not_a_violation() -> None:
    listener, wire, _, got = make(decode=bytes)
    listener.feed(BINARY, b"\xff\xfe")
    assert got == [b"\xff\xfe"] and wire.closes == []


def test_invalid_utf8_fails_fast_on_the_first_bad_fragment() -> None:
    listener, wire, _, got = make()
    listener.feed(TEXT, b'{"a":"\xff', fin=False)
    # Closed before the message is complete: the rest is never waited for.
    assert wire.closes and wire.closes[0][0] == 1007
    listener.feed(CONT, b'"}', fin=True)
    assert got == [] and len(wire.closes) == 1


def test_utf8_split_across_fragments_is_valid() -> None:
    listener, wire, _, got = make()
    euro = "€".encode()
    listener.feed(TEXT, b'"' + euro[:1], fin=False)
    listener.feed(CONT, euro[1:2], fin=False)
    listener.feed(CONT, euro[2:] + b'"', fin=True)
    assert got == ["€"] and wire.closes == []


def test_utf8_truncated_at_end_of_fragmented_message_closes_1007() -> None:
    listener, wire, _, _ = make()
    listener.feed(TEXT, b'"x', fin=False)
    listener.feed(CONT, b"\xe2\x82", fin=True)
    assert wire.closes[0][0] == 1007


def test_utf8_validation_can_be_turned_off() -> None:
    listener, wire, _, got = make(decode=bytes, validate_utf8=False)
    listener.feed(TEXT, b"\xff")
    assert got == [b"\xff"] and wire.closes == []


def test_utf8_validator_agrees_with_python_codec() -> None:
    samples = [
        b"", b"plain ascii " * 5, "ünïcödé €𝄞".encode(), b"\xef\xbf\xbf", b"\xf0\x9f\x98\x80",
        b"\xf4\x8f\xbf\xbf", b"\xc2", b"\xe0\x80\xaf", b"\xf5\x80\x80\x80", b"\x80",
        b"a" * 15 + b"\xff", "€".encode() * 9,
    ]
    for sample in samples:
        try:
            sample.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert is_valid_utf8(sample) is expected, sample


def test_message_over_limit_closes_1009() -> None:
    listener, wire, _, got = make(max_message_size=100)
    listener.feed(TEXT, b'"' + b"x" * 200 + b'"')
    assert got == [] and wire.closes[0][0] == 1009


def test_fragmented_message_over_limit_closes_1009_before_completion() -> None:
    listener, wire, _, got = make(max_message_size=100)
    listener.feed(TEXT, b"x" * 60, fin=False)
    assert wire.closes == []
    listener.feed(CONT, b"x" * 60, fin=False)
    assert wire.closes[0][0] == 1009 and got == []


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_peer_close_is_echoed_and_recorded(code: int) -> None:
    listener, wire, events, _ = make()
    listener.feed(CLOSE, code.to_bytes(2, "big") + b"bye")
    assert wire.closes == [(code, "")]
    assert wire.disconnected
    assert (listener.close_code_received, listener.close_reason_received) == (code, "bye")
    assert ("close", code, "bye") in events.log
    assert listener.violation is None


def test_empty_close_is_answered_with_1000() -> None:
    listener, wire, _, _ = make()
    listener.feed(CLOSE, b"")
    assert wire.closes == [(1000, "")]
    assert listener.close_code_received == 1005


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_code_closes_1002(code: int) -> None:
    listener, wire, _, _ = make()
    listener.feed(CLOSE, code.to_bytes(2, "big"))
    assert wire.closes[0][0] == 1002
    assert listener.violation == f"invalid close code {code}"
    assert wire.disconnected  # the peer's CLOSE, even invalid, ended the handshake


def test_one_byte_close_payload_closes_1002() -> None:
    listener, wire, _, _ = make()
    listener.feed(CLOSE, b"\x03")
    assert wire.closes[0][0] == 1002


def test_close_reason_with_invalid_utf8_closes_1007() -> None:
    listener, wire, _, _ = make()
    listener.feed(CLOSE, (1000).to_bytes(2, "big") + b"\xff")
    assert wire.closes[0][0] == 1007


def test_frames_after_a_violation_are_ignored_but_close_completes() -> None:
    listener, wire, _, got = make()
    listener.feed(CONT, b"x")
    listener.feed(TEXT, b"{}")
    assert got == [] and len(wire.closes) == 1
    listener.feed(CLOSE, (1002).to_bytes(2, "big"))
    assert len(wire.closes) == 1 and wire.disconnected


def test_decode_error_is_counted_and_the_feed_goes_on() -> None:
    listener, wire, events, got = make()
    listener.feed(TEXT, b"{not json")
    listener.feed(TEXT, b"[1]")
    assert got == [[1]]
    assert listener.decode_errors == 1 and listener.messages == 1
    _, stage, message = listener.errors[0]
    assert stage == "decode" and message.startswith("JSONDecodeError")
    assert ("error", "decode", "JSONDecodeError") in events.log
    assert wire.closes == []


def test_callback_error_is_counted_and_the_feed_goes_on() -> None:
    seen: list[Any] = []

    def callback(msg: Any) -> None:
        seen.append(msg)
        if msg == 1:
            raise RuntimeError("boom")

    listener = FeedListener(callback)
    wire = FakeWire()
    listener.attach(wire)
    for i in range(3):
        listener.feed(TEXT, str(i).encode())
    assert seen == [0, 1, 2]
    assert listener.callback_errors == 1
    assert listener.errors[0][1:] == ("callback", "RuntimeError: boom")
    assert wire.closes == []


def test_error_ring_is_bounded() -> None:
    ring: deque[tuple[int, str, str]] = deque(maxlen=8)
    listener, _, _, _ = make(errors=ring)
    for _ in range(100):
        listener.feed(TEXT, b"{bad")
    assert listener.decode_errors == 100 and len(ring) == 8


def test_error_policy_disconnect_closes_1011() -> None:
    listener, wire, _, _ = make(error_policy=ERROR_POLICY_DISCONNECT)
    listener.feed(TEXT, b"{bad")
    assert wire.closes == [(1011, "handler error")]


def test_retained_view_keeps_its_own_message() -> None:
    kept: list[memoryview] = []
    listener = FeedListener(kept.append, decode=None)
    listener.attach(FakeWire())
    listener.feed(BINARY, b"abc")
    listener.feed(BINARY, b"xyz")
    # Kept views are handed the buffer they point at: never reused (tests/test_core_memory.py).
    assert [bytes(v) for v in kept] == [b"abc", b"xyz"]


def test_control_prefixes_route_acks_away_from_data() -> None:
    data: list[Any] = []
    control: list[Any] = []
    listener = FeedListener(data.append, on_control=control.append,
                            control_prefixes=[b'{"event"', b'{"id"'])
    listener.attach(FakeWire())
    listener.feed(TEXT, b'{"event":"subscribe","arg":"t"}')
    listener.feed(TEXT, b'{"s":"BTC","p":1}')
    listener.feed(TEXT, b'{"id":7,"result":null}')
    assert control == [{"event": "subscribe", "arg": "t"}, {"id": 7, "result": None}]
    assert data == [{"s": "BTC", "p": 1}]
    assert listener.messages == 1 and listener.control_messages == 2


def test_app_level_pong_is_recognised_by_bytes_and_not_delivered() -> None:
    listener, _, events, got = make()
    listener.set_app_pong(b"pong")
    listener.feed(TEXT, b"pong")
    listener.feed(TEXT, b'"pong!"')
    assert got == ["pong!"] and listener.pongs == 1
    assert ("pong", b"pong") in events.log
    listener.set_app_pong(b'{"op":"pong"', exact=False)
    listener.feed(TEXT, b'{"op":"pong","ts":1}')
    assert listener.pongs == 2 and len(got) == 1


# ------------------------------------------------- end to end, real picows server


async def connect(
    server: ScriptServer, **kwargs: Any
) -> tuple[PicowsConnection, Events, list[Any]]:
    got: list[Any] = []
    events = Events()
    listener = FeedListener(got.append, events=events, **kwargs)
    conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
    return conn, events, got


def raw_frame(first: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([first, len(payload)]) + payload


LOOPBACK_CASES = [
    # (name, server action, close code the client must send). picows itself rejects
    # close codes outside its enum (1005); the listener catches the rest.
    ("rsv1", lambda p: p.send(TEXT, b"{}", True, True), 1002),
    ("rsv2", lambda p: p.send_raw(raw_frame(0x80 | 0x20 | TEXT, b"{}")), 1002),
    ("stray continuation", lambda p: p.send(CONT, b"x"), 1002),
    ("invalid utf-8", lambda p: p.send(TEXT, b'"\xff"'), 1007),
    ("invalid utf-8 first fragment", lambda p: p.send(TEXT, b"\xc3\x28", False), 1007),
    ("close code 1005", lambda p: p.send_raw(raw_frame(0x88, (1005).to_bytes(2, "big"))), 1002),
    ("close code 5000", lambda p: p.send_raw(raw_frame(0x88, (5000).to_bytes(2, "big"))), 1002),
    ("close code 1006", lambda p: p.send_raw(raw_frame(0x88, (1006).to_bytes(2, "big"))), 1002),
]


@pytest.mark.parametrize("name,action,code", LOOPBACK_CASES, ids=[c[0] for c in LOOPBACK_CASES])
async def test_rfc_rules_over_loopback(name: str, action: Any, code: int) -> None:
    fds_before = open_fds()
    async with ScriptServer() as server:
        conn, _, got = await connect(server)
        peer = await server.next_peer()
        peer.send(TEXT, b'{"ok":1}')
        action(peer)
        await peer.wait_frames(1)
        assert peer.close_codes() == [code]
        assert got == [{"ok": 1}]
        if not name.startswith("close code"):  # else the peer's CLOSE ended the handshake
            peer.ws.send_close(picows.WSCloseCode(code))
        error = await asyncio.wait_for(conn.wait_closed(), 5)
        if name == "close code 1005":
            assert isinstance(error, picows.WSProtocolError)
        else:
            assert error is None and conn.listener.violation is not None
        assert conn.closed
    assert open_fds() <= fds_before


async def test_oversized_fragmented_message_over_loopback_closes_1009() -> None:
    async with ScriptServer() as server:
        conn, _, got = await connect(server, max_message_size=1000)
        peer = await server.next_peer()
        for _ in range(3):
            peer.send(TEXT if not peer.received and _ == 0 else CONT, b"x" * 400, False)
        await peer.wait_frames(1)
        assert peer.close_codes() == [1009] and got == []
        conn.abort()
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_oversized_single_frame_is_refused_by_the_transport() -> None:
    async with ScriptServer() as server:
        listener = FeedListener(lambda m: None, max_message_size=1000)
        conn = await PicowsTransport().connect(
            server.url, listener, ConnectOptions(max_message_size=1000))
        peer = await server.next_peer()
        peer.send(TEXT, b"x" * 5000)
        await peer.wait_frames(1)
        assert peer.close_codes() == [1009]
        error = await asyncio.wait_for(conn.wait_closed(), 5)
        assert isinstance(error, picows.WSProtocolError) and error.args[0] == 1009
        assert listener.messages == 0


async def test_garbage_bytes_end_in_a_clean_protocol_error() -> None:
    fds_before = open_fds()
    async with ScriptServer() as server:
        conn, _, got = await connect(server)
        peer = await server.next_peer()
        peer.send_raw(b"\xff\xff\xff\xff garbage that is not a frame")
        error = await asyncio.wait_for(conn.wait_closed(), 5)
        assert error is not None  # picows' parser classified it
        assert got == []
    assert open_fds() <= fds_before


async def test_peer_close_over_loopback_is_echoed() -> None:
    async with ScriptServer() as server:
        conn, events, _ = await connect(server)
        peer = await server.next_peer()
        peer.ws.send_close(picows.WSCloseCode.GOING_AWAY, b"maintenance")
        await asyncio.wait_for(conn.wait_closed(), 5)
        await asyncio.wait_for(peer.disconnected.wait(), 5)
        assert peer.close_codes() == [1001]
        assert ("close", 1001, "maintenance") in events.log
        assert conn.listener.close_code_received == 1001


import picows  # noqa: E402  (used by the loopback cases above)

_ = Opcode


async def test_close_already_sent_by_picows_is_recorded_not_overwritten() -> None:
    # CLOSE 1000 and a second, empty CLOSE in one write: picows' parser reads ahead,
    # rejects the second one and sends 1002 itself before the listener sees the first.
    async with ScriptServer() as server:
        conn, _, _ = await connect(server)
        peer = await server.next_peer()
        peer.answer_close = False
        peer.send_raw(raw_frame(0x88, (1000).to_bytes(2, "big")) + raw_frame(0x88, b""))
        await peer.wait_frames(1)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert peer.close_codes() == [1002]
        assert conn.listener.close_code_sent == 1002  # what really went on the wire
        assert conn.listener.close_code_received == 1000
