"""De-duplication before decode (defi_ws._core.Deduplicator) for redundant connections.

The fast path reads a key out of the raw bytes (an id with its topic, or a hash of one
field's value) without decoding; duplicates are dropped inside ``FeedListener`` before a
view is made, so they never reach ``decode`` or ``on_message``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defi_ws._core import Deduplicator, FeedListener, _xxh64

TEXT, BINARY, CONT = 1, 2, 0
FAST = settings(derandomize=True, deadline=None, max_examples=200)


class FakeWire:
    def send_close(self, code: int, reason: str) -> None:
        pass

    def send_pong(self, payload: bytes) -> None:
        pass

    def disconnect(self) -> None:
        pass


def listener(dedup: Deduplicator | None, sink: list[Any] | None = None,
             **kwargs: Any) -> FeedListener:
    got: list[Any] = [] if sink is None else sink
    feed = FeedListener(got.append, dedup=dedup, **kwargs)
    feed.attach(FakeWire())
    return feed


# ------------------------------------------------------------------ id field parsing


@pytest.mark.parametrize("payload,expected", [
    (b'{"seq":42}', 42),
    (b'{"seq":"42"}', 42),                              # OKX-style quoted id
    (b'{ "seq" \t:\r\n 7 }', 7),                        # whitespace around the colon
    (b'{"seq":0}', 0),
    (b'{"seq":007}', 7),
    (b'{"seq":9223372036854775807}', 2**63 - 1),
    (b'{"k":"seq","seq":3}', 3),                        # the name as a value is no key
    (b'{"subseq":9,"seq":3}', 3),                       # a longer key ending in the name
    (b'{"note":"say \\"seq\\": 99","seq":5}', 5),       # escaped quotes inside a string
    (b'{"a":"x\\\\","seq":6}', 6),                      # escaped backslash ends a string
    (b'{"arg":{"x":1},"data":[{"seq":8,"q":1},{"seq":9}]}', 8),  # first in document order
    (b'{"seq":12', 12),                                 # a bare number may end the buffer
])
def test_id_field_is_read_from_raw_bytes(payload: bytes, expected: int) -> None:
    dedup = Deduplicator(id_field="seq")
    assert dedup.check(payload) is True
    assert dedup.high_water("") == expected
    assert (dedup.delivered, dedup.unkeyed) == (1, 0)
    assert dedup.check(payload) is False and dedup.duplicates == 1


@FAST
@given(st.integers(0, 2**66), st.integers(0, 12), st.booleans(),
       st.sampled_from([b"}", b",", b" ", b'"', b"", b"x"]))
def test_id_parsing_matches_int(value: int, zeros: int, quoted: bool, after: bytes) -> None:
    """Any digit string, leading zeros included, up to 2**63 - 1, bare or quoted."""
    digits = b"0" * zeros + b"%d" % value
    payload = b'{"seq":' + (b'"' + digits + b'"' if quoted else digits) + after
    dedup = Deduplicator(id_field="seq")
    assert dedup.check(payload)
    assert dedup.high_water("") == (value if value < 2**63 else None)


@pytest.mark.parametrize("payload", [
    b'{"x":1}',                                   # missing
    b'{"seq":-1}',                                # negative: not an id
    b'{"seq":"-1"}',
    b'{"seq":9223372036854775808}',               # above 2**63 - 1
    b'{"seq":"99999999999999999999"}',
    b'{"seq":1.5}', b'{"seq":1e3}', b'{"seq":1E3}',
    b'{"seq":"12a"}', b'{"seq":" 12"}', b'{"seq":""}', b'{"seq":"12',
    b'{"seq":null}', b'{"seq":true}', b'{"seq":[1]}',
    b'{"seq":', b'{"seq"', b'', b'not json',
    b'{"note":"\\"seq\\":5"}',                    # only inside a string
    b'{"seq" 5}',                                 # no colon
])
def test_no_id_means_unkeyed_and_delivered(payload: bytes) -> None:
    dedup = Deduplicator(id_field="seq")
    assert dedup.check(payload) is True
    assert dedup.check(payload) is True           # never a duplicate: nothing to compare
    assert (dedup.delivered, dedup.unkeyed, dedup.duplicates) == (2, 2, 0)
    assert dedup.high_water("") is None and dedup.topic_count == 0


def test_binance_combined_stream_nested_id_and_topic() -> None:
    dedup = Deduplicator(id_field="t", topic_field="stream")

    def trade(stream: str, t: int) -> bytes:
        return orjson.dumps({"stream": stream, "data": {
            "e": "trade", "E": 1700000000000 + t, "s": stream.split("@")[0].upper(),
            "t": t, "p": "1.0", "q": "2", "T": 1, "m": True, "M": True}})

    assert dedup.check(trade("btcusdt@trade", 123))
    assert dedup.check(trade("ethusdt@trade", 123))      # another topic, same id
    assert not dedup.check(trade("btcusdt@trade", 123))
    assert dedup.check(trade("btcusdt@trade", 124))
    assert dedup.high_water("btcusdt@trade") == 124
    assert dedup.high_water("ethusdt@trade") == 123
    assert dedup.high_water("xrpusdt@trade") is None


def test_okx_style_quoted_id_and_topic_in_an_envelope() -> None:
    dedup = Deduplicator(id_field="tradeId", topic_field="instId")
    msg = (b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
           b'"tradeId":"130639474","px":"42219.9","sz":"0.1","side":"buy","ts":"1"}]}')
    assert dedup.check(msg) and not dedup.check(msg)
    assert dedup.high_water("BTC-USDT") == 130639474


def test_topic_must_be_a_string_and_is_matched_raw() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic")
    assert dedup.check(b'{"topic":5,"seq":1}') and dedup.unkeyed == 1
    assert dedup.check(b'{"seq":1}') and dedup.unkeyed == 2   # no topic: no key
    assert dedup.check(b'{"msg":"\\"topic\\":\\"fake\\"","topic":"real","seq":1}')
    assert dedup.high_water("real") == 1 and dedup.high_water("fake") is None
    assert dedup.check(b'{"topic":"a\\"b","seq":4}')           # escapes are not decoded
    assert dedup.high_water('a\\"b') == 4
    assert dedup.check(b'{"topic":"","seq":2}') and dedup.high_water("") == 2
    assert dedup.check(b'{"seq":1,"topic":"unterminated')      # cut off: unkeyed
    assert dedup.unkeyed == 3


def test_non_utf8_topic_round_trips_through_gaps_and_high_water() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic")
    assert dedup.check(b'{"topic":"\xff\xfe","seq":1}')
    assert dedup.check(b'{"topic":"\xff\xfe","seq":3}')
    [(topic, first, last)] = dedup.drain_gaps()
    assert (first, last) == (2, 2)
    assert topic.encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert dedup.high_water(topic) == 3


# ------------------------------------------------------------------ hash extent parsing


@pytest.mark.parametrize("first,same,different", [
    # objects: nested strings holding braces/brackets, quotes and escapes are skipped
    (b'{"data":{"a":"}{","b":[1,{"c":"]\\"}"}]},"x":1}',
     b'{"x":2,"data":{"a":"}{","b":[1,{"c":"]\\"}"}]}}',
     b'{"data":{"a":"}{","b":[1,{"c":"]\\"}!"}]},"x":1}'),
    (b'{"data": {"a":1} ,"x":1}', b'{"data":{"a":1}}', b'{"data":{"a":2}}'),
    (b'{"data":[[1,2],[3]],"z":0}', b'{"data":[[1,2],[3]]}', b'{"data":[[1,2],[3,4]]}'),
    # strings: quotes included, escaped quotes inside
    (b'{"data":"a\\"b","z":1}', b'{"data":"a\\"b"}', b'{"data":"a\\"c"}'),
    # numbers and literals: up to , } ] or whitespace
    (b'{"data":123,"z":1}', b'{"data":123}', b'{"data":1234}'),
    (b'{"data":-1.5e3 }', b'[{"data":-1.5e3}]', b'{"data":-1.5e4}'),
    (b'{"data":true,"z":1}', b'{"data":true}', b'{"data":false}'),
])
def test_hash_field_extent(first: bytes, same: bytes, different: bytes) -> None:
    dedup = Deduplicator(hash_field="data")
    assert dedup.check(first) is True
    assert dedup.check(same) is False
    assert dedup.check(different) is True
    assert (dedup.delivered, dedup.duplicates, dedup.unkeyed) == (2, 1, 0)


@pytest.mark.parametrize("payload", [
    b'{"data":{"a":1', b'{"data":{"a":"}"', b'{"data":[1,[2]', b'{"data":"abc', b'{"data":"ab\\"',
    b'{"data":}', b'{"data":,', b'{"x":1}', b'{"data":',
])
def test_hash_field_cut_off_or_missing_is_unkeyed(payload: bytes) -> None:
    dedup = Deduplicator(hash_field="data")
    assert dedup.check(payload) and dedup.check(payload)
    assert dedup.unkeyed == 2 and dedup.recent_count == 0


def test_whole_payload_hash_when_nothing_is_configured() -> None:
    dedup = Deduplicator()
    assert dedup.check(b'{"a":1}') and not dedup.check(b'{"a":1}')
    assert dedup.check(b'{"a":1} ')       # any byte differs: a different message
    assert dedup.check(b"") and not dedup.check(bytearray())


def test_hash_field_is_the_fallback_when_the_id_is_missing() -> None:
    dedup = Deduplicator(id_field="seq", hash_field="data")
    assert dedup.check(b'{"seq":1,"data":"a"}')
    assert dedup.check(b'{"data":"a"}')               # no id: hashed
    assert not dedup.check(b'{"data":"a","x":9}')
    assert not dedup.check(b'{"seq":1,"data":"zzz"}')  # id wins when present
    assert dedup.high_water("") == 1 and dedup.recent_count == 1


def test_xxh64_reference_vectors() -> None:
    # The hash of the fallback is XXH64 (seeded per Deduplicator).
    assert _xxh64(b"") == 0xEF46DB3751D8E999
    assert _xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert _xxh64(b"abc") == 0x44BC2CF5AD770999
    assert len({_xxh64(bytes([i]) * n) for i in range(4) for n in range(1, 70)}) == 4 * 69


# ------------------------------------------------------------------ semantics


def msg(topic: str, seq: int, pad: str = "") -> bytes:
    return orjson.dumps({"topic": topic, "seq": seq, "pad": pad})


def test_gaps_are_recorded_once_a_high_water_mark_exists() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic")
    assert dedup.check(msg("a", 10))          # the first message sets the mark: no gap
    assert dedup.check(msg("a", 11))
    assert dedup.check(msg("a", 15))
    assert not dedup.check(msg("a", 12))      # a late copy inside the gap stays out
    assert dedup.check(msg("a", 16)) and dedup.check(msg("a", 20))
    assert dedup.gaps == 2
    assert dedup.drain_gaps() == [("a", 12, 14), ("a", 17, 19)]
    assert dedup.drain_gaps() == []


def test_gap_queue_is_bounded_but_counted() -> None:
    dedup = Deduplicator(id_field="seq", max_gaps=2)
    for seq in range(0, 50, 10):
        dedup.check(msg("", seq))
    assert dedup.gaps == 4
    assert dedup.drain_gaps() == [("", 21, 29), ("", 31, 39)]


def test_forget_starts_a_topic_afresh_without_a_false_gap() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic")
    dedup.check(msg("a", 5))
    dedup.check(msg("b", 5))
    assert dedup.forget("a") is True and dedup.forget("a") is False
    assert dedup.high_water("a") is None and dedup.topic_count == 1
    assert dedup.check(msg("a", 500)) and dedup.gaps == 0
    assert dedup.check(msg("a", 3)) is False
    assert dedup.high_water("b") == 5


def test_key_of_hook() -> None:
    kept: list[memoryview] = []

    def key_of(view: memoryview) -> Any:
        kept.append(view)
        text = bytes(view)
        if text.startswith(b"id:"):
            topic, _, seq = text[3:].decode().partition("/")
            return (topic, int(seq))
        if text.startswith(b"key:"):
            return text[4:]
        if text == b"list":
            return ["unhashable"]
        if text == b"huge":
            return ("t", 2**70)
        if text == b"boom":
            raise RuntimeError("bad key")
        return None

    dedup = Deduplicator(key_of=key_of, window=2)
    assert dedup.check(b"id:x/1") and dedup.check(b"id:x/3") and not dedup.check(b"id:x/2")
    assert dedup.high_water("x") == 3 and dedup.drain_gaps() == [("x", 2, 2)]
    assert dedup.check(b"key:a") and not dedup.check(b"key:a")
    assert dedup.check(b"key:b") and dedup.check(b"key:c")     # window 2: a evicted
    assert dedup.check(b"key:a") and dedup.recent_count == 2
    assert dedup.check(b"nothing") and dedup.unkeyed == 1
    for bad in (b"boom", b"list", b"huge"):
        assert dedup.check(bad)
    assert dedup.key_errors == 3 and dedup.unkeyed == 4
    assert dedup.last_key_error is not None and dedup.last_key_error.startswith("OverflowError")
    # the hook reads a copy: a view it keeps reads its own message forever
    assert bytes(kept[0]) == b"id:x/1" and kept[0].readonly


def test_key_of_in_a_listener_reads_a_copy_not_the_receive_buffer() -> None:
    kept: list[memoryview] = []

    def key_of(view: memoryview) -> Hashable:
        kept.append(view)
        return bytes(view)

    dedup = Deduplicator(key_of=key_of)
    got: list[Any] = []
    feed = listener(dedup, got)
    buffer = bytearray(b'{"a":1}')
    feed.feed(TEXT, buffer)
    buffer[:] = b'{"a":2}'
    feed.feed(TEXT, buffer)
    assert [bytes(v) for v in kept] == [b'{"a":1}', b'{"a":2}']
    assert got == [{"a": 1}, {"a": 2}]


def test_bounded_recent_window_is_fifo() -> None:
    dedup = Deduplicator(hash_field="id", window=8)
    for i in range(100):
        assert dedup.check(b'{"id":%d}' % i)
        assert dedup.recent_count == min(i + 1, 8)
    assert not dedup.check(b'{"id":92}') and not dedup.check(b'{"id":99}')
    assert dedup.check(b'{"id":91}')               # evicted: delivered again
    assert not dedup.check(b'{"id":93}')


def test_bounded_topics_evict_the_least_recently_updated() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic", max_topics=4)
    for t in "abcd":
        dedup.check(msg(t, 1))
    dedup.check(msg("a", 2))                       # a updated: b is now the oldest
    assert not dedup.check(msg("b", 1))            # a duplicate does not update
    dedup.check(msg("e", 1))
    assert dedup.topic_count == 4 and dedup.topic_evictions == 1
    assert dedup.high_water("b") is None
    assert [dedup.high_water(t) for t in "acde"] == [2, 1, 1, 1]
    for i in range(1000):
        dedup.check(msg(f"t{i}", i))
    assert dedup.topic_count == 4 and dedup.topic_evictions == 1001
    assert [dedup.high_water(f"t{i}") for i in range(996, 1000)] == list(range(996, 1000))


def test_tables_grow_and_shrink_correctly() -> None:
    dedup = Deduplicator(id_field="seq", topic_field="topic", hash_field="h", window=3000)
    for i in range(5000):                                 # topics: 16 slots -> 8192
        assert dedup.check(msg(f"t{i}", i))
    for i in range(0, 5000, 2):
        assert dedup.forget(f"t{i}")
    assert dedup.topic_count == 2500 and dedup.topic_evictions == 0
    for i in range(5000):
        assert dedup.high_water(f"t{i}") == (None if i % 2 == 0 else i)
        assert dedup.check(msg(f"t{i}", i)) is (i % 2 == 0)
    for i in range(4000):                                 # recent: 1024 -> 3000, then FIFO
        assert dedup.check(b'{"h":"%d"}' % i)
    assert dedup.recent_count == 3000
    assert all(not dedup.check(b'{"h":"%d"}' % i) for i in range(1000, 4000))
    assert dedup.check(b'{"h":"999"}')


@FAST
@given(st.lists(st.tuples(st.sampled_from(["add", "forget"]), st.integers(0, 11),
                          st.integers(0, 6)), max_size=120),
       st.integers(1, 6))
def test_topic_table_matches_a_model(ops: list[tuple[str, int, int]], max_topics: int) -> None:
    """High-water marks, LRU eviction and forget() against a plain-Python model."""
    dedup = Deduplicator(id_field="seq", topic_field="topic", max_topics=max_topics)
    model: dict[str, int] = {}        # insertion order = least recently updated first
    for op, t, seq in ops:
        topic = f"topic-{t}"
        if op == "forget":
            assert dedup.forget(topic) is (model.pop(topic, None) is not None)
            continue
        new = topic not in model or seq > model[topic]
        assert dedup.check(msg(topic, seq)) is new
        if new:
            if topic not in model and len(model) == max_topics:
                del model[next(iter(model))]
            model.pop(topic, None)
            model[topic] = seq
        assert dedup.topic_count == len(model)
        for name in (f"topic-{i}" for i in range(12)):
            assert dedup.high_water(name) == model.get(name)


@FAST
@given(st.lists(st.integers(0, 30), max_size=200), st.integers(1, 12))
def test_recent_set_matches_a_model(keys: list[int], window: int) -> None:
    """The FIFO recent set (open addressing, backward-shift deletion) against a model."""
    dedup = Deduplicator(hash_field="k", window=window)
    recent: deque[int] = deque()
    for key in keys:
        new = key not in recent
        assert dedup.check(b'{"k":%d}' % key) is new
        if new:
            recent.append(key)
            if len(recent) > window:
                recent.popleft()
        assert dedup.recent_count == len(recent)


def test_constructor_validates() -> None:
    for kwargs in ({"window": 0}, {"max_topics": 0}, {"max_gaps": 0}, {"id_field": ""},
                   {"id_field": 'a"b'}, {"hash_field": "a\\b"}, {"id_field": "a\nb"},
                   {"topic_field": "topic"}):
        with pytest.raises(ValueError):
            Deduplicator(**kwargs)
    with pytest.raises(TypeError):
        Deduplicator(key_of=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Deduplicator("seq")  # type: ignore[call-arg]
    dedup = Deduplicator(id_field="seq", topic_field="topic", hash_field="h", window=3)
    assert (dedup.id_field, dedup.topic_field, dedup.hash_field) == ("seq", "topic", "h")
    assert (dedup.window, dedup.max_topics, dedup.key_of) == (3, 100_000, None)


# ------------------------------------------------------------------ in the listener


def test_without_dedup_nothing_changes() -> None:
    got: list[Any] = []
    feed = listener(None, got)
    assert feed.dedup is None
    for _ in range(3):
        feed.feed(TEXT, b'{"seq":1}')
    assert got == [{"seq": 1}] * 3
    assert (feed.messages, feed.duplicates) == (3, 0)


def test_duplicates_never_reach_decode_or_on_message() -> None:
    decoded: list[bytes] = []

    def decode(view: memoryview) -> Any:
        decoded.append(bytes(view))
        return orjson.loads(view)

    dedup = Deduplicator(id_field="seq", topic_field="topic")
    got: list[Any] = []
    a = listener(dedup, got, decode=decode)
    b = listener(dedup, got, decode=decode)
    for seq in (1, 2, 3):
        a.feed(TEXT, msg("x", seq))
        b.feed(TEXT, msg("x", seq))
    b.feed(TEXT, msg("x", 4))
    a.feed(TEXT, msg("x", 4))
    assert decoded == [msg("x", s) for s in (1, 2, 3, 4)]
    assert [m["seq"] for m in got] == [1, 2, 3, 4]
    assert (a.messages, a.duplicates, b.messages, b.duplicates) == (3, 1, 1, 3)
    assert a.frames == 4 and b.frames == 4
    assert (dedup.delivered, dedup.duplicates) == (4, 4)


def test_dedup_in_count_only_mode_and_on_reassembled_messages() -> None:
    dedup = Deduplicator(id_field="seq")
    a = FeedListener(None, dedup=dedup)
    b = FeedListener(None, dedup=dedup)
    a.feed(TEXT, b'{"seq":1}')
    b.feed(TEXT, b'{"seq":1}')
    b.feed(TEXT, b'{"se', fin=False)
    b.feed(CONT, b'q":2}', fin=True)
    a.feed(TEXT, b'{"seq"', fin=False)
    a.feed(CONT, b':2}', fin=True)
    assert (a.messages, a.duplicates, b.messages, b.duplicates) == (1, 1, 1, 1)


def test_control_messages_and_app_pongs_are_never_deduplicated() -> None:
    dedup = Deduplicator()                      # whole-payload hash: catches anything
    control: list[Any] = []
    data: list[Any] = []
    feed = FeedListener(data.append, on_control=control.append,
                        control_prefixes=[b'{"event"'], dedup=dedup)
    feed.attach(FakeWire())
    feed.set_app_pong(b"pong")
    for _ in range(2):
        feed.feed(TEXT, b'{"event":"subscribed","topic":"a"}')
        feed.feed(TEXT, b"pong")
        feed.feed(TEXT, b'{"d":1}')
    assert len(control) == 2 and feed.pongs == 2
    assert data == [{"d": 1}] and feed.duplicates == 1
    assert dedup.delivered == 1                 # only data was ever checked


def test_a_duplicate_refreshes_the_data_stamp() -> None:
    dedup = Deduplicator(id_field="seq")
    a = listener(dedup)
    b = listener(dedup)
    a.feed(TEXT, b'{"seq":1}')
    before = b.last_data_ns
    time.sleep(0.002)
    b.feed(TEXT, b'{"seq":1}')
    assert b.duplicates == 1 and b.messages == 0
    assert b.last_data_ns > before and b.last_data_ns == b.last_recv_ns


def test_dedup_can_be_attached_later() -> None:
    dedup = Deduplicator(id_field="seq")
    a = listener(None)
    a.feed(TEXT, b'{"seq":1}')
    a.dedup = dedup
    a.feed(TEXT, b'{"seq":1}')                  # not seen by dedup yet: delivered
    a.feed(TEXT, b'{"seq":1}')
    assert (a.messages, a.duplicates) == (2, 1)
    a.dedup = None
    a.feed(TEXT, b'{"seq":1}')
    assert a.messages == 3


# --------------------------------------- exactly-once, in order, across two connections


@st.composite
def redundant_streams(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[list[bool]],
                                                  list[int]]:
    """Numbered messages of a few topics, the drops of each copy, and an interleaving."""
    n = draw(st.integers(0, 60))
    topics = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    start = draw(st.integers(0, 2**62))
    counters = dict.fromkeys("abc", start)
    messages = []
    for topic in topics:
        counters[topic] += 1
        messages.append((topic, counters[topic]))
    drop_rate = draw(st.sampled_from([0.0, 0.1, 0.5]))
    drops = [[draw(st.floats(0, 1)) < drop_rate for _ in range(n)] for _ in range(2)]
    # which connection's next frame arrives next: the random delays of each copy
    order = draw(st.lists(st.integers(0, 1), min_size=2 * n, max_size=2 * n))
    return messages, drops, order


@FAST
@given(redundant_streams())
def test_two_connections_merge_exactly_once_in_order(
    case: tuple[list[tuple[str, int]], list[list[bool]], list[int]],
) -> None:
    messages, drops, order = case
    streams = [[m for m, dropped in zip(messages, drops[k], strict=True) if not dropped]
               for k in (0, 1)]
    decoded = 0

    def decode(view: memoryview) -> Any:
        nonlocal decoded
        decoded += 1
        return orjson.loads(view)

    dedup = Deduplicator(id_field="seq", topic_field="topic")
    delivered: list[tuple[int, str, int]] = []       # (connection, topic, seq)

    def on_message(k: int) -> Any:
        return lambda m: delivered.append((k, m["topic"], m["seq"]))

    listeners = [FeedListener(on_message(k), decode=decode, dedup=dedup) for k in (0, 1)]
    for feed in listeners:
        feed.attach(FakeWire())
    # Interleave the two in-order streams as the random delays say.
    positions = [0, 0]
    arrivals: list[tuple[int, str, int]] = []
    for k in order + [0] * len(streams[0]) + [1] * len(streams[1]):
        if positions[k] < len(streams[k]):
            topic, seq = streams[k][positions[k]]
            positions[k] += 1
            arrivals.append((k, topic, seq))
            listeners[k].feed(TEXT, orjson.dumps({"topic": topic, "seq": seq, "p": "1.5"}))
    gaps = dedup.drain_gaps()

    # The model: deliver iff above the topic's mark; a jump over a mark is a gap.
    marks: dict[str, int] = {}
    expected: list[tuple[int, str, int]] = []
    expected_gaps: list[tuple[str, int, int]] = []
    for k, topic, seq in arrivals:
        if topic in marks and seq <= marks[topic]:
            continue
        if topic in marks and seq > marks[topic] + 1:
            expected_gaps.append((topic, marks[topic] + 1, seq - 1))
        marks[topic] = seq
        expected.append((k, topic, seq))
    assert delivered == expected and gaps == expected_gaps

    # Exactly once, in order, and every id not delivered is inside exactly one gap.
    for topic in "abc":
        ids = [seq for _, t, seq in delivered if t == topic]
        assert ids == sorted(set(ids))                            # strictly increasing
        missing = [i for t, first, last in gaps if t == topic for i in range(first, last + 1)]
        if ids:
            assert sorted(ids + missing) == list(range(ids[0], ids[-1] + 1))
            assert dedup.high_water(topic) == ids[-1]
        else:
            assert missing == [] and dedup.high_water(topic) is None
    # A gap is never invented: the connection that jumped really lacked those ids.
    for topic, first, last in gaps:
        closer = next(k for k, t, seq in delivered if t == topic and seq == last + 1)
        assert not any(t == topic and first <= seq <= last for t, seq in streams[closer])
    # Without drops nothing is lost; duplicates never reached decode.
    if not any(drops[0]) and not any(drops[1]):
        assert [(t, s) for _, t, s in delivered] == messages and gaps == []
    assert decoded == len(delivered) == dedup.delivered
    assert listeners[0].messages + listeners[1].messages == len(delivered)
    assert listeners[0].duplicates + listeners[1].duplicates == dedup.duplicates
    assert dedup.delivered + dedup.duplicates == len(arrivals) and dedup.unkeyed == 0


def test_a_lagging_copy_cannot_fill_a_gap_the_leader_jumped() -> None:
    """The documented limit of the high-water rule: once a higher id was delivered,
    a lower one arriving later on a slower connection is dropped (inside its gap)."""
    dedup = Deduplicator(id_field="seq", topic_field="topic")
    fast, slow = listener(dedup), listener(dedup)
    fast.feed(TEXT, msg("a", 1))
    fast.feed(TEXT, msg("a", 3))                # the fast connection lost 2
    slow.feed(TEXT, msg("a", 1))
    slow.feed(TEXT, msg("a", 2))                # too late: 3 was delivered
    slow.feed(TEXT, msg("a", 3))
    assert dedup.drain_gaps() == [("a", 2, 2)]
    assert (fast.messages, slow.messages, slow.duplicates) == (2, 0, 3)
