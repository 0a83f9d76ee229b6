"""Conflation: within one socket read only the newest message per key is decoded.

A read is a run of ``feed(..., last_in_buffer=False)`` calls closed by a frame with
``last_in_buffer=True`` (or ``flush()``), exactly as picows marks the last frame of
each buffer. What is checked: the newest message per key is delivered, in the order of
its arrival, superseded ones are counted and never decoded, everything else keeps its
order (keyless data, control messages, fragments, control frames), borrowed views stay
safe, and gap detection counts conflated messages as received. Over real loopback:
picows batches by itself (a burst from the simulator), and a PING that picows answers
without calling the listener still ends the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_ws import _compat
from defi_ws._core import STAGE_CONFLATE, Deduplicator, FeedListener
from defi_ws.client import ErrorPolicy, FeedClient
from defi_ws.errors import ConfigError
from defi_ws.handler import ConflateSpec, JsonHandler
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap, SequenceTracker
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.frames import Opcode, build_frame
from defi_ws.transport import ConnectOptions, PicowsTransport
from tests.servers import ScriptServer
from tests.test_core_memory import KEEPERS, expected_of, read
from tests.venue import MemoryVenue
from tests.virtual_time import run_virtual

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10


class FakeWire:
    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []

    def send_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def send_pong(self, payload: bytes) -> None:
        pass

    def disconnect(self) -> None:
        pass


def tick(key: str, u: int, field: str = "s") -> bytes:
    """A book-ticker-like message of ``key`` with update id ``u``."""
    return orjson.dumps({field: key, "u": u, "b": f"{100 + u}.5", "a": f"{101 + u}.5"})


def feed_read(listener: FeedListener, payloads: Sequence[bytes], opcode: int = TEXT) -> None:
    """Feed ``payloads`` as one socket read: the last frame ends it."""
    for index, payload in enumerate(payloads):
        listener.feed(opcode, payload, True, 0, index == len(payloads) - 1)


class Recorder:
    """on_message that records (message, superseded) and which payloads were decoded."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.superseded: list[int] = []
        self.decoded: list[bytes] = []
        self.listener: FeedListener | None = None

    def decode(self, view: memoryview) -> Any:
        self.decoded.append(bytes(view))
        return orjson.loads(view)

    def __call__(self, message: Any) -> None:
        assert self.listener is not None
        self.got.append(message)
        self.superseded.append(self.listener.superseded)


def make(field: str | None = "s", key: Any = None, **kwargs: Any) -> tuple[FeedListener, Recorder]:
    rec = Recorder()
    kwargs.setdefault("decode", rec.decode)
    listener = FeedListener(rec, conflate_field=field if key is None else None,
                            conflate_key=key, **kwargs)
    rec.listener = listener
    listener.attach(FakeWire())
    return listener, rec


def pairs(got: list[Any]) -> list[tuple[str, int]]:
    return [(m["s"], m["u"]) for m in got]


# ------------------------------------------------------------------ one read


def test_newest_per_key_is_delivered_in_arrival_order_of_its_last_message() -> None:
    listener, rec = make()
    feed_read(listener, [tick("A", 1), tick("B", 1), tick("A", 2), tick("C", 1),
                         tick("B", 2), tick("A", 3)])
    # last occurrences: C1 (4th), B2 (5th), A3 (6th)
    assert pairs(rec.got) == [("C", 1), ("B", 2), ("A", 3)]
    assert rec.superseded == [0, 1, 2]
    assert (listener.conflated, listener.messages, listener.frames) == (3, 3, 6)
    # superseded messages were never decoded
    assert rec.decoded == [tick("C", 1), tick("B", 2), tick("A", 3)]
    assert listener.superseded == 0 and listener.pending == 0


def test_each_read_is_its_own_batch() -> None:
    listener, rec = make()
    feed_read(listener, [tick("A", 1), tick("A", 2)])
    assert pairs(rec.got) == [("A", 2)]
    feed_read(listener, [tick("A", 3)])
    feed_read(listener, [tick("A", 4), tick("B", 1), tick("A", 5)])
    assert pairs(rec.got) == [("A", 2), ("A", 3), ("B", 1), ("A", 5)]
    assert rec.superseded == [1, 0, 0, 1]
    assert listener.conflated == 2


def test_default_feed_is_a_read_of_one_frame() -> None:
    """feed() without last_in_buffer (every existing caller) never holds anything back."""
    listener, rec = make()
    for u in range(5):
        listener.feed(TEXT, tick("A", u))
        assert listener.pending == 0
    assert [u for _, u in pairs(rec.got)] == list(range(5)) and listener.conflated == 0


def test_flush_ends_a_read_and_waiting_messages_are_copies() -> None:
    listener, rec = make()
    buf = bytearray(tick("A", 1))
    listener.feed(TEXT, buf, True, 0, False)
    buf[:] = b"\xee" * len(buf)      # the caller reuses its buffer at once
    buf2 = bytearray(tick("B", 7))
    listener.feed(TEXT, buf2, True, 0, False)
    buf2[:] = b"\xee" * len(buf2)
    assert listener.pending == 2 and rec.got == []
    listener.flush()
    assert pairs(rec.got) == [("A", 1), ("B", 7)]
    listener.flush()     # nothing waits: a no-op
    assert listener.pending == 0 and len(rec.got) == 2


def test_keys_are_raw_values_compared_exactly() -> None:
    listener, rec = make(decode=orjson.loads)
    feed_read(listener, [
        b'{"s":"BTC","u":1}', b'{"s":"BTCUSDT","u":1}', b'{"s":"BTC","u":2}',
        b'{"s":"BT","u":1}', b'{"s":"BTCUSDT","u":2}',
        b'{"s":"a\\"b","u":1}', b'{"s":"a\\"b","u":2}',          # escaped quote inside
        b'{"s" : 42, "u":1}', b'{"s":42,"u":2}',                # a number is a key too
        b'{"x":{"s":"N"},"u":1}', b'{"s":"N","u":2}',           # the first "s" at any depth
    ])
    assert [(m.get("s", m.get("x")), m["u"]) for m in rec.got] == [
        ("BTC", 2), ("BT", 1), ("BTCUSDT", 2), ('a"b', 2), (42, 2), ("N", 2)]
    assert listener.conflated == 5


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(range(6)), st.integers(0, 3)), min_size=1,
                max_size=30),
       st.lists(st.text(alphabet=st.sampled_from('ab"\\/\u00e9\u4e2d\x01 '), max_size=40),
                min_size=6, max_size=6, unique=True))
def test_string_keys_with_escapes_are_told_apart(plan: list[tuple[int, int]],
                                                 names: list[str]) -> None:
    """Keys are the raw JSON strings: escapes, long keys (SIMD and hash paths) included."""
    listener, rec = make("k", decode=orjson.loads)
    payloads = [orjson.dumps({"pad": "x" * pad, "k": names[key], "n": n})
                for n, (key, pad) in enumerate(plan)]
    feed_read(listener, payloads)
    newest = {names[key]: n for n, (key, _) in enumerate(plan)}
    assert [(m["k"], m["n"]) for m in rec.got] == sorted(newest.items(), key=lambda kv: kv[1])
    assert listener.conflated == len(plan) - len(newest)


def test_many_keys_in_one_read() -> None:
    listener, rec = make(decode=orjson.loads)
    keys = [f"K{i}" for i in range(3000)]
    feed_read(listener, [tick(k, 1) for k in keys] + [tick(k, 2) for k in keys])
    assert pairs(rec.got) == [(k, 2) for k in keys]
    assert listener.conflated == 3000 and listener.messages == 3000


def test_a_read_larger_than_the_pending_limit_is_split() -> None:
    listener, rec = make(None, key=lambda raw: b"same", decode=None)
    feed_read(listener, [b"%d" % i for i in range(70_000)])
    # the batch is delivered when 65536 messages wait, then a new one starts
    assert [bytes(v) for v in rec.got] == [b"65535", b"69999"]
    assert listener.conflated == 70_000 - 2


# ------------------------------------------------------------------ order with the rest


def test_a_keyless_message_first_delivers_what_waits() -> None:
    listener, rec = make(decode=orjson.loads)
    feed_read(listener, [tick("A", 1), tick("B", 1), tick("A", 2), b'{"note":"no key"}',
                         tick("A", 3), tick("A", 4)])
    assert rec.got == [{"s": "B", "u": 1, "b": "101.5", "a": "102.5"},
                       {"s": "A", "u": 2, "b": "102.5", "a": "103.5"},
                       {"note": "no key"},
                       {"s": "A", "u": 4, "b": "104.5", "a": "105.5"}]
    assert rec.superseded == [0, 1, 0, 1]


def test_control_messages_are_never_conflated_and_keep_their_place() -> None:
    order: list[str] = []
    listener = FeedListener(lambda m: order.append(f"{m['topic']}:{m['u']}"),
                            conflate_field="topic",
                            on_control=lambda m: order.append("ack:" + m["topic"]),
                            control_prefixes=(b'{"event"',))
    feed_read(listener, [
        b'{"topic":"a","u":1}', b'{"topic":"a","u":2}',
        b'{"event":"subscribed","topic":"b"}', b'{"event":"subscribed","topic":"b"}',
        b'{"topic":"a","u":3}', b'{"topic":"a","u":4}'])
    assert order == ["a:2", "ack:b", "ack:b", "a:4"]
    assert listener.control_messages == 2 and listener.conflated == 2


def test_app_pongs_and_duplicates_deliver_nothing_and_end_nothing() -> None:
    dedup = Deduplicator(id_field="u", topic_field="s")
    listener, rec = make(decode=orjson.loads, dedup=dedup)
    listener.set_app_pong(b'{"event":"pong"', exact=False)
    feed_read(listener, [tick("A", 1), b'{"event":"pong","ts":1}', tick("A", 1),
                         tick("A", 2), tick("B", 5), tick("A", 3), tick("B", 5)])
    assert pairs(rec.got) == [("B", 5), ("A", 3)]
    assert (listener.pongs, listener.duplicates, listener.conflated) == (1, 2, 2)
    # the Deduplicator saw every message before conflation: its marks are the newest
    assert dedup.high_water("A") == 3 and dedup.high_water("B") == 5 and dedup.gaps == 0


def test_fragmented_message_is_delivered_in_order_unconflated() -> None:
    listener, rec = make(decode=orjson.loads)
    whole = tick("A", 9)
    listener.feed(TEXT, tick("A", 1), True, 0, False)
    listener.feed(TEXT, tick("B", 1), True, 0, False)
    listener.feed(TEXT, whole[:10], False, 0, False)
    listener.feed(CONT, whole[10:], True, 0, False)
    listener.feed(TEXT, tick("A", 10), True, 0, True)
    assert pairs(rec.got) == [("A", 1), ("B", 1), ("A", 9), ("A", 10)]
    assert listener.conflated == 0


@pytest.mark.parametrize("frame", [
    (PONG, b"x"), (CLOSE, (1000).to_bytes(2, "big")), (PING, b"p")])
def test_a_control_frame_first_delivers_what_waits(frame: tuple[int, bytes]) -> None:
    listener, rec = make(decode=orjson.loads)
    listener.feed(TEXT, tick("A", 1), True, 0, False)
    listener.feed(TEXT, tick("A", 2), True, 0, False)
    listener.feed(frame[0], frame[1], True, 0, False)
    assert pairs(rec.got) == [("A", 2)]
    if frame[0] != CLOSE:
        listener.feed(TEXT, tick("A", 3), True, 0, True)
        assert pairs(rec.got) == [("A", 2), ("A", 3)]


def test_a_protocol_violation_first_delivers_what_arrived_before_it() -> None:
    listener, rec = make(decode=orjson.loads)
    wire = FakeWire()
    listener.attach(wire)
    listener.feed(TEXT, tick("A", 1), True, 0, False)
    listener.feed(TEXT, b'{"s":"A","bad":"\xff"}', True, 0, False)
    listener.feed(TEXT, tick("A", 3), True, 0, True)     # after the close: dropped
    assert pairs(rec.got) == [("A", 1)]
    assert wire.closes == [(1007, "text message is not valid UTF-8")]


def test_closing_during_delivery_drops_the_rest() -> None:
    listener: FeedListener
    got: list[Any] = []

    def on_message(message: Any) -> None:
        got.append(message["s"])
        if message["s"] == "B":
            listener.close()

    listener = FeedListener(on_message, conflate_field="s")
    listener.attach(FakeWire())
    feed_read(listener, [tick("A", 1), tick("B", 1), tick("C", 1)])
    assert got == ["A", "B"] and listener.pending == 0


def test_detach_delivers_what_waits() -> None:
    listener, rec = make(decode=orjson.loads)
    listener.feed(TEXT, tick("A", 1), True, 0, False)
    listener.feed(TEXT, tick("A", 2), True, 0, False)
    listener.detach()
    assert pairs(rec.got) == [("A", 2)] and listener.pending == 0


def test_large_payload_copied_to_wait_is_delivered_unconflated() -> None:
    listener, rec = make(decode=None, max_message_size=8 * 1024 * 1024)
    big = b'{"s":"A","pad":"' + b"x" * (1024 * 1024 + 10) + b'"}'
    listener.feed(TEXT, tick("A", 1), True, 0, False)
    listener.feed(TEXT, big, True, 0, False)       # too big to copy: in order, now
    listener.feed(TEXT, tick("A", 2), True, 0, True)
    assert [bytes(v)[:20] for v in rec.got] == [tick("A", 1)[:20], big[:20], tick("A", 2)[:20]]
    assert listener.conflated == 0


# ------------------------------------------------------------------ decode, hooks, modes


def test_count_only_mode_conflates_without_python_calls() -> None:
    listener = FeedListener(None, decode=None, conflate_field="s")
    feed_read(listener, [tick("A", u) for u in range(10)] + [tick("B", 1)])
    assert (listener.messages, listener.conflated) == (2, 9)


def test_decode_error_of_a_conflated_message_is_counted_and_the_rest_delivered() -> None:
    listener, rec = make(decode=orjson.loads)
    feed_read(listener, [b'{"s":"A","u":1}', b'{"s":"A",broken', b'{"s":"B","u":1}'])
    assert pairs(rec.got) == [("B", 1)]
    assert listener.decode_errors == 1 and listener.conflated == 1


def test_callback_error_with_disconnect_policy_stops_the_batch() -> None:
    def on_message(message: Any) -> None:
        raise RuntimeError("boom")

    wire = FakeWire()
    listener = FeedListener(on_message, conflate_field="s",
                            error_policy=int(ErrorPolicy.DISCONNECT))
    listener.attach(wire)
    feed_read(listener, [tick("A", 1), tick("B", 1), tick("C", 1)])
    assert listener.callback_errors == 1 and wire.closes == [(1011, "handler error")]


def test_python_hook_keys() -> None:
    seen: list[bytes] = []

    def key_of(raw: memoryview) -> Hashable | None:
        seen.append(bytes(raw))
        message = orjson.loads(raw)
        return None if "noise" in message else (message["s"], message.get("side"))

    listener, rec = make(None, key=key_of, decode=orjson.loads)
    feed_read(listener, [
        orjson.dumps({"s": "A", "side": "b", "u": 1}),
        orjson.dumps({"s": "A", "side": "a", "u": 1}),
        orjson.dumps({"s": "A", "side": "b", "u": 2}), orjson.dumps({"noise": 1}),
        orjson.dumps({"s": "A", "side": "b", "u": 3})])
    assert [(m.get("side"), m.get("u")) for m in rec.got] == [
        ("a", 1), ("b", 2), (None, None), ("b", 3)]
    assert listener.conflated == 1 and len(seen) == 5


def test_python_hook_errors_deliver_the_message_unconflated() -> None:
    def key_of(raw: memoryview) -> Hashable | None:
        if bytes(raw).startswith(b"[]"):
            return []     # type: ignore[return-value]   # unhashable
        raise KeyError("no key here")

    listener, rec = make(None, key=key_of, decode=None)
    feed_read(listener, [b"[]1", b"x2"])
    assert [bytes(v) for v in rec.got] == [b"[]1", b"x2"]
    assert [stage for _, stage, _ in listener.errors] == [STAGE_CONFLATE, STAGE_CONFLATE]
    assert "unhashable" in listener.errors[0][2] and "KeyError" in listener.errors[1][2]


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="not both"):
        FeedListener(None, conflate_field="s", conflate_key=lambda raw: 1)
    with pytest.raises(ValueError, match="conflate_field"):
        FeedListener(None, conflate_field='a"b')
    with pytest.raises(TypeError):
        FeedListener(None, conflate_key=42)  # type: ignore[arg-type]
    assert FeedListener(None, conflate_field="s").conflate_field == "s"
    with pytest.raises(ValueError):
        ConflateSpec()
    with pytest.raises(ValueError):
        ConflateSpec(field="s", key_of=lambda raw: 1)
    with pytest.raises(ConfigError, match="ConflateSpec"):
        FeedClient(JsonHandler("ws://x"), conflate="s")  # type: ignore[arg-type]


# ------------------------------------------------------------------ borrowed views


@pytest.mark.parametrize("name", sorted(KEEPERS))
def test_kept_views_of_conflated_messages_read_their_own_bytes(name: str) -> None:
    kept: list[tuple[Any, bytes]] = []
    listener = FeedListener(lambda v: kept.append((KEEPERS[name](v), bytes(v))), decode=None,
                            conflate_field="s")
    buf = bytearray(4096)
    expected: list[bytes] = []
    for batch in range(30):
        payloads = [tick(f"K{batch % 3}{i % 4}", batch * 100 + i) for i in range(9)]
        for index, payload in enumerate(payloads):
            buf[: len(payload)] = payload
            listener.feed(TEXT, memoryview(buf)[: len(payload)], True, 0,
                          index == len(payloads) - 1)
            buf[: len(payload)] = b"\xee" * len(payload)  # the "socket" reuses its buffer
        newest = {orjson.loads(p)["s"]: p for p in payloads}
        expected += sorted(newest.values(), key=payloads.index)
    assert [copy for _, copy in kept] == expected
    assert [read(k) for k, _ in kept] == [expected_of(name, p) for p in expected]


def test_raw_exports_of_conflated_messages_read_their_own_bytes() -> None:
    class Tick(msgspec.Struct):
        s: str
        u: int
        b: msgspec.Raw

    got: list[Tick] = []
    listener = FeedListener(got.append, decode=msgspec.json.Decoder(Tick).decode,
                            conflate_field="s")
    assert not listener.zero_copy
    for batch in range(50):
        feed_read(listener, [tick("A", batch * 10 + i) for i in range(3)]
                  + [tick("B", batch * 10 + i) for i in range(3)])
    assert [(t.s, t.u) for t in got] == [
        (s, batch * 10 + 2) for batch in range(50) for s in ("A", "B")]
    assert all(bytes(t.b) == b'"%d.5"' % (100 + t.u) for t in got)


def test_zero_copy_decode_reads_the_pending_payload_in_place() -> None:
    addresses: list[int] = []
    listener: FeedListener
    listener = FeedListener(lambda m: addresses.append(listener.view_address),
                            conflate_field="s")
    assert listener.zero_copy
    payloads = [bytearray(tick("A", 1)), bytearray(tick("A", 2)), bytearray(tick("B", 1))]
    for index, payload in enumerate(payloads):
        listener.feed(TEXT, payload, True, 0, index == 2)
    # A2 was copied to wait (not the last frame of the read); B1 is read where it is
    from defi_ws._core import buffer_address
    assert addresses[1] == buffer_address(payloads[2])
    assert addresses[0] != buffer_address(payloads[1])


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(
    st.sampled_from(["A", "B", "C", "D", None]),    # key (None: keyless)
    st.integers(0, 600),                             # padding
    st.sampled_from([*sorted(KEEPERS), "nothing"]),  # what the user keeps
), min_size=1, max_size=25), min_size=1, max_size=8))
def test_model_newest_per_key_in_order_and_kept_views_stay_valid(
        reads: list[list[tuple[str | None, int, str]]]) -> None:
    kept: list[tuple[str, Any, bytes]] = []
    delivered: list[bytes] = []
    keep_of: dict[bytes, str] = {}

    def on_message(v: memoryview) -> None:
        data = bytes(v)
        delivered.append(data)
        name = keep_of[data]
        if name != "nothing":
            kept.append((name, KEEPERS[name](v), data))

    listener = FeedListener(on_message, decode=None, conflate_field="k")
    expected: list[bytes] = []
    n = 0
    buf = bytearray(1024)
    def arrival(payload: bytes) -> int:
        return int(orjson.loads(payload)["n"])

    for frames in reads:
        batch: dict[str, bytes] = {}
        for index, (key, pad, keep) in enumerate(frames):
            n += 1
            body: dict[str, Any] = {"n": n, "pad": "p" * pad}
            if key is not None:
                body["k"] = key
            payload = orjson.dumps(body)
            keep_of[payload] = keep
            if key is None:      # a keyless message delivers what waits, then itself
                expected += [*sorted(batch.values(), key=arrival), payload]
                batch.clear()
            else:
                batch.pop(key, None)
                batch[key] = payload
            buf[: len(payload)] = payload
            listener.feed(TEXT, memoryview(buf)[: len(payload)], True, 0, index == len(frames) - 1)
            buf[: len(payload)] = b"\xee" * len(payload)
        expected += sorted(batch.values(), key=arrival)
    assert delivered == expected
    assert listener.messages + listener.conflated == n
    for name, obj, payload in kept:
        assert read(obj) == expected_of(name, payload)


# ------------------------------------------------------------------ gap detection


def test_tracker_counts_conflated_messages_as_received() -> None:
    tracker = SequenceTracker()
    assert tracker.observe("t", 1) is None
    assert tracker.observe("t", 10, conflated=8) is None       # 2..9 conflated
    gap = tracker.observe("t", 20, conflated=8)                # 11..19: 8 arrived, 1 lost
    assert gap == Gap("t", 11, 19, conflated=8) and gap.size == 1
    assert tracker.observe("t", 22, conflated=5) is None       # more than skipped: no gap
    assert (tracker.gaps, tracker.missing) == (1, 1)


def seq_message(topic: str, seq: int) -> dict[str, Any]:
    return {"topic": topic, "seq": seq, "data": {"px": f"{seq}.5"}}


def test_gap_detection_through_the_client_with_conflation() -> None:
    async def main() -> None:
        venue = MemoryVenue()
        got: list[Any] = []
        gaps: list[Gap] = []
        handler = JsonHandler("ws://venue", on_data=got.append, sequence_field="seq")
        client = FeedClient(handler, transport=venue.transport, topics=["a", "b"],
                            reconnect=FixedDelay(0.5), on_gap=gaps.append,
                            clock=asyncio.get_running_loop().time,
                            conflate=ConflateSpec(field="topic"))
        async with client:
            await client.wait_live(5)
            conn = venue.transport.current
            conn.server_send_batch([seq_message("a", 1), seq_message("b", 1)])
            conn.server_send_batch([seq_message(t, s) for s in range(2, 11) for t in "ab"])
            assert [(m["topic"], m["seq"]) for m in got] == [
                ("a", 1), ("b", 1), ("a", 10), ("b", 10)]
            assert gaps == []
            # a: 11..19 with 14 lost; b: 11..19 complete, interleaved
            conn.server_send_batch(
                [seq_message("a", s) for s in range(11, 20) if s != 14]
                + [seq_message("b", s) for s in range(11, 20)])
            assert [(g.topic, g.first_missing, g.last_missing, g.conflated, g.size)
                    for g in gaps] == [("a", 11, 18, 7, 1)]
            snap = client.snapshot()
            assert snap["conflated"] == 8 + 8 + 7 + 8 and snap["gaps"] == 1
            assert client.sequences.missing == 1
            assert snap["messages"] == 6
        assert client.health.counter("conflated") == 31

    run_virtual(main())


def test_handler_attribute_and_hook_turn_conflation_on() -> None:
    class Spec(JsonHandler):
        conflate = ConflateSpec(field="topic")

    class Hook(JsonHandler):
        def conflate_key(self, raw: memoryview) -> Hashable | None:
            return bytes(raw[:12])

    assert FeedClient(Spec("ws://x")).conflate == ConflateSpec(field="topic")
    hook = Hook("ws://x")
    spec = FeedClient(hook).conflate
    assert spec is not None and spec.key_of == hook.conflate_key
    assert FeedClient(JsonHandler("ws://x")).conflate is None
    assert FeedClient(Spec("ws://x"), conflate=ConflateSpec(field="s")).conflate == \
        ConflateSpec(field="s")


# ------------------------------------------------------------------ real picows reads


async def test_a_burst_from_the_simulator_is_conflated_to_the_newest_state() -> None:
    topics = [f"book.{c}" for c in "ABCDE"]
    state: dict[str, int] = {}
    gaps: list[Gap] = []
    async with ExchangeSimulator(rate_per_s=0) as sim:
        handler = JsonHandler(sim.url, sequence_field="seq",
                              on_data=lambda m: state.__setitem__(m["topic"], m["seq"]))
        client = FeedClient(handler, topics=topics, on_gap=gaps.append,
                            conflate=ConflateSpec(field="topic"))
        async with client:
            await client.wait_live(5)
            for _ in range(3):
                for topic in topics:
                    sim.burst(topic, 400)
                await asyncio.sleep(0)
            sim.sequence_gap(topics[0], skip=3)   # a real loss inside a burst
            sim.burst(topics[0], 50)
            async with _compat.timeout(10):
                while any(state.get(t) != sim.last_seq[t] for t in topics):
                    await asyncio.sleep(0.005)
            snap = client.snapshot()
        sent = sum(sim.last_seq[t] for t in topics) - 3
        assert state == {t: sim.last_seq[t] for t in topics}
        assert snap["conflated"] > 0
        assert snap["messages"] + snap["conflated"] == sent
        assert snap["decode_errors"] == 0
        # the three skipped numbers are the only gap (conflated messages are no gap)
        assert [(g.topic, g.size) for g in gaps] == [(topics[0], 3)]


def frame(payload: bytes, opcode: int = Opcode.TEXT) -> bytes:
    return build_frame(opcode, payload)


async def test_a_ping_picows_answers_itself_ends_the_batch() -> None:
    """picows answers a PING without calling the listener: what waits before it must be
    delivered then, while the receive buffer still holds it."""
    got: list[bytes] = []
    listener = FeedListener(lambda v: got.append(bytes(v)), decode=None, conflate_field="s")
    async with ScriptServer() as server:
        conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
        peer = await server.next_peer()
        a1, a2, a3 = tick("A", 1), tick("A", 2), tick("A", 3)
        peer.send_raw(frame(a1) + frame(a2) + frame(b"hi", Opcode.PING))
        async with _compat.timeout(5):
            while not got:
                await asyncio.sleep(0.001)
        assert got == [a2]
        # the next read lands where A2 was; then a PING between two messages of a key
        long = b'{"s":"B","pad":"' + b"z" * 400 + b'"}'
        peer.send_raw(frame(long) + frame(a3) + frame(b"", Opcode.PING) + frame(tick("A", 4)))
        async with _compat.timeout(5):
            while len(got) < 4:
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert got == [a2, long, a3, tick("A", 4)]
        assert listener.conflated == 1
        conn.abort()
        await conn.wait_closed()


async def test_reads_over_picows_deliver_the_newest_and_count_the_rest() -> None:
    state: dict[str, int] = {}
    listener = FeedListener(lambda m: state.__setitem__(m["s"], m["u"]), conflate_field="s")
    async with ScriptServer() as server:
        conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
        peer = await server.next_peer()
        keys = [f"K{i}" for i in range(10)]
        for round_ in range(20):
            peer.send_raw(b"".join(frame(tick(k, round_ * 50 + i)) for i in range(50)
                                   for k in keys))
            await asyncio.sleep(0)
        async with _compat.timeout(5):
            while state.get("K9") != 19 * 50 + 49:
                await asyncio.sleep(0.001)
        assert state == {k: 19 * 50 + 49 for k in keys}
        assert listener.messages + listener.conflated == 20 * 50 * 10
        assert listener.conflated >= 20 * 49 * 10 * 0.5   # reads of many messages per key
        conn.abort()
        await conn.wait_closed()
