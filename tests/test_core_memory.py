"""Borrowed payloads are memory-safe: nothing a user keeps reads reused or freed memory.

The listener hands decode (or ``on_message`` with ``decode=None``) a read-only
memoryview. Whatever the user keeps of it after the call (the view, a slice, a cast, a
memoryview of it, a buffer export such as ``msgspec.Raw``, a weak reference) must keep
reading the bytes of *its* message, never the next message's bytes nor freed memory.

The receive buffer is simulated with one ``bytearray`` overwritten in place between
frames (picows reuses its buffer the same way); a real picows connection is covered too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_ws import _compat
from defi_ws._core import FeedListener
from defi_ws.transport import ConnectOptions, PicowsTransport
from tests.servers import ScriptServer

CONT, TEXT, BINARY = 0, 1, 2
MIB = 1024 * 1024


class ReusedBuffer:
    """Feeds frames through one bytearray that is overwritten for every frame."""

    def __init__(self, listener: FeedListener, size: int = 4096) -> None:
        self.listener = listener
        self.buf = bytearray(size)

    def send(self, payload: bytes, opcode: int = BINARY, fin: bool = True) -> None:
        if len(payload) > len(self.buf):
            self.buf = bytearray(len(payload))
        self.buf[: len(payload)] = payload
        self.listener.feed(opcode, memoryview(self.buf)[: len(payload)], fin, 0)
        # The "socket" reuses the buffer at once: scribble over what was there.
        self.buf[: len(payload)] = b"\xee" * len(payload)

    def send_fragmented(self, payload: bytes, chunk: int, opcode: int = BINARY) -> None:
        parts = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
        for index, part in enumerate(parts):
            self.send(part, opcode if index == 0 else CONT, index == len(parts) - 1)


def message(i: int, size: int = 64) -> bytes:
    body = f"message {i:08d} ".encode()
    return (body * (size // len(body) + 1))[:size]


KEEPERS: dict[str, Callable[[memoryview], Any]] = {
    "view": lambda v: v,
    "slice": lambda v: v[:16],
    "tail_slice": lambda v: v[-16:],
    "cast": lambda v: v.cast("B"),
    "cast_char": lambda v: v.cast("c"),
    "memoryview_of_view": lambda v: memoryview(v),
    "slice_of_slice": lambda v: v[2:][:10],
    "toreadonly": lambda v: v.toreadonly(),
}


def expected_of(name: str, payload: bytes) -> bytes:
    if name == "slice":
        return payload[:16]
    if name == "tail_slice":
        return payload[-16:]
    if name == "slice_of_slice":
        return payload[2:][:10]
    return payload


def read(kept: Any) -> bytes:
    return bytes(memoryview(kept))


@pytest.mark.parametrize("name", sorted(KEEPERS))
def test_kept_part_of_a_view_reads_its_own_message(name: str) -> None:
    kept: list[Any] = []
    listener = FeedListener(lambda v: kept.append(KEEPERS[name](v)), decode=None)
    wire = ReusedBuffer(listener)
    payloads = [message(i, 64) for i in range(50)]
    for payload in payloads:
        wire.send(payload)
    assert [read(k) for k in kept] == [expected_of(name, p) for p in payloads]


def test_bytes_of_a_kept_view_after_the_call() -> None:
    kept: list[memoryview] = []
    listener = FeedListener(kept.append, decode=None)
    wire = ReusedBuffer(listener)
    wire.send(b"first message")
    wire.send(b"second messag")
    assert bytes(kept[0]) == b"first message"
    assert bytes(kept[1]) == b"second messag"
    assert kept[0].tobytes() == b"first message"


def test_hash_is_of_the_current_message() -> None:
    hashes: list[tuple[int, int]] = []
    listener = FeedListener(lambda v: hashes.append((hash(v), hash(bytes(v)))), decode=None)
    wire = ReusedBuffer(listener)
    for i in range(20):
        wire.send(message(i, 40))
    assert all(a == b for a, b in hashes)
    assert len({a for a, _ in hashes}) == 20


def test_export_held_across_many_messages() -> None:
    class Envelope(msgspec.Struct):
        i: int
        data: msgspec.Raw

    decoder = msgspec.json.Decoder(Envelope)
    got: list[Envelope] = []
    listener = FeedListener(got.append, decode=decoder.decode)
    wire = ReusedBuffer(listener)
    payloads = [orjson.dumps({"i": i, "data": {"p": f"{i}.5", "pad": "y" * (i % 17)}})
                for i in range(300)]
    for payload in payloads:
        wire.send(payload, TEXT)
    assert listener.decode_errors == 0
    for i, envelope in enumerate(got):
        assert envelope.i == i
        assert orjson.loads(bytes(envelope.data)) == {"p": f"{i}.5", "pad": "y" * (i % 17)}


@pytest.mark.parametrize("chunk", [0, 9])
def test_the_buffer_object_behind_a_view_gives_no_access_later(chunk: int) -> None:
    """``view.obj`` kept past the call can't be turned into a view of reused memory."""
    owners: list[Any] = []
    listener = FeedListener(lambda v: owners.append(v.obj), decode=None)
    wire = ReusedBuffer(listener)
    for i in range(3):
        if chunk:
            wire.send_fragmented(message(i, 40), chunk)
        else:
            wire.send(message(i, 40))
    for owner in owners:
        with pytest.raises(BufferError, match="cannot be exported again"):
            memoryview(owner)


def test_user_release_inside_the_call_does_not_break_later_messages() -> None:
    seen: list[bytes] = []

    def on_message(v: memoryview) -> None:
        seen.append(bytes(v))
        v.release()

    listener = FeedListener(on_message, decode=None)
    wire = ReusedBuffer(listener)
    for i in range(5):
        wire.send(message(i, 30))
    assert seen == [message(i, 30) for i in range(5)]


def test_weak_reference_never_reaches_the_next_message() -> None:
    refs: list[weakref.ref[memoryview]] = []
    listener = FeedListener(lambda v: refs.append(weakref.ref(v)), decode=None)
    wire = ReusedBuffer(listener)
    payloads = [message(i, 48) for i in range(10)]
    for payload in payloads:
        wire.send(payload)
    for ref, payload in zip(refs, payloads, strict=True):
        view = ref()
        if view is not None:
            assert bytes(view) == payload


@pytest.mark.parametrize("size", [MIB + 17, 3 * MIB])
def test_kept_slice_of_a_large_reassembled_message(size: int) -> None:
    kept: list[Any] = []
    listener = FeedListener(lambda v: kept.append((v[:32], v[-32:], v)), decode=None,
                            max_message_size=8 * MIB)
    wire = ReusedBuffer(listener, 64 * 1024)
    big = message(1, size)
    wire.send_fragmented(big, 60_000)
    # The reassembly buffer above 1 MiB is given up after the message; more traffic
    # (fragmented and not) must not disturb what was kept.
    for i in range(3):
        wire.send_fragmented(message(100 + i, 200_000), 50_000)
        wire.send(message(200 + i, 100))
    gc.collect()
    head, tail, whole = kept[0]
    assert bytes(head) == big[:32] and bytes(tail) == big[-32:] and bytes(whole) == big
    assert [bytes(k[2]) for k in kept[1:]] == [
        m for i in range(3) for m in (message(100 + i, 200_000), message(200 + i, 100))]


def test_kept_slice_of_a_small_reassembled_message() -> None:
    kept: list[Any] = []
    listener = FeedListener(lambda v: kept.append(v[:8]), decode=None)
    wire = ReusedBuffer(listener)
    payloads = [message(i, 300) for i in range(20)]
    for payload in payloads:
        wire.send_fragmented(payload, 70)
    assert [bytes(k) for k in kept] == [p[:8] for p in payloads]


def test_nothing_escapes_means_no_new_buffer() -> None:
    """The common case (nothing kept) reuses one buffer: no allocation per message."""
    addresses: set[int] = set()

    def on_message(v: memoryview) -> None:
        addresses.add(id(v))

    listener = FeedListener(on_message, decode=None)
    wire = ReusedBuffer(listener)
    for i in range(100):
        wire.send(message(i, 64))
    assert len(addresses) == 1


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.tuples(
        st.one_of(st.integers(min_value=0, max_value=3000),
                  st.sampled_from([MIB - 1, MIB + 5])),    # payload size
        st.sampled_from([*sorted(KEEPERS), "nothing"]),    # what the user keeps
        st.sampled_from([0, 1, 7, 500, 300_000]),          # fragment size (0: one frame)
        st.booleans(),                                     # also export via msgspec.Raw
    ),
    min_size=1, max_size=40,
))
def test_whatever_is_kept_reads_its_own_bytes(plan: list[tuple[int, str, int, bool]]) -> None:
    kept: list[tuple[str, Any, bytes]] = []
    step: dict[str, Any] = {}

    def on_message(v: memoryview) -> None:
        name = step["keep"]
        payload = step["payload"]
        if name != "nothing":
            kept.append((name, KEEPERS[name](v), payload))
        if step["raw"]:
            kept.append(("raw", msgspec.Raw(v), payload))

    listener = FeedListener(on_message, decode=None, max_message_size=8 * MIB)
    wire = ReusedBuffer(listener, 1024)
    for index, (size, keep, chunk, raw) in enumerate(plan):
        payload = message(index, size)
        step.update(keep=keep, payload=payload, raw=raw)
        if chunk:
            wire.send_fragmented(payload, chunk if size <= 3000 else 300_000)
        else:
            wire.send(payload)
    assert listener.messages == len(plan)
    for name, obj, payload in kept:
        if name == "raw":
            assert bytes(obj) == payload
        else:
            assert read(obj) == expected_of(name, payload)


def test_msgpack_ext_hook_gets_a_copy_it_may_keep() -> None:
    """msgspec hands an ext_hook a memoryview of its input: that decoder is not trusted."""
    kept: list[memoryview] = []

    def ext_hook(code: int, data: memoryview) -> Any:
        kept.append(data)
        return code

    decoder = msgspec.msgpack.Decoder(ext_hook=ext_hook)
    listener = FeedListener(lambda m: None, decode=decoder.decode)
    assert not listener.zero_copy
    wire = ReusedBuffer(listener)
    payloads = [msgspec.msgpack.encode(msgspec.msgpack.Ext(1, message(i, 20)))
                for i in range(5)]
    for payload in payloads:
        wire.send(payload)
    assert [bytes(k) for k in kept] == [message(i, 20) for i in range(5)]
    assert FeedListener(lambda m: None, decode=msgspec.msgpack.Decoder().decode).zero_copy


def test_orjson_decode_reads_the_receive_buffer_in_place() -> None:
    """orjson.loads never keeps its argument: that path stays zero-copy."""
    assert FeedListener(lambda m: None).zero_copy
    assert not FeedListener(lambda m: None, decode=None).zero_copy
    assert not FeedListener(lambda m: None, decode=lambda v: v).zero_copy


async def test_kept_slices_over_a_real_connection() -> None:
    kept: list[Any] = []
    listener = FeedListener(lambda v: kept.append(v[3:40]), decode=None)
    async with ScriptServer() as server:
        conn = await PicowsTransport().connect(server.url, listener, ConnectOptions())
        peer = await server.next_peer()
        payloads = [orjson.dumps({"i": i, "pad": "z" * (i * 31 % 200)}) for i in range(500)]
        for payload in payloads:
            peer.send(TEXT, payload)
        async with _compat.timeout(10):
            while len(kept) < len(payloads):
                await asyncio.sleep(0.005)
        assert [bytes(k) for k in kept] == [p[3:40] for p in payloads]
        conn.abort()
        await conn.wait_closed()


def test_stub_declares_counters_read_only(tmp_path: Any) -> None:
    """``listener.frames = 5`` raises at run time, so mypy must reject it too."""
    api = pytest.importorskip("mypy.api")
    code = (
        "from defi_ws._core import FeedListener\n"
        "listener = FeedListener(None)\n"
        "listener.frames = 5\n"
        "listener.messages = 1\n"
        "listener.closing = True\n"
        "listener.error_policy = 1\n"   # the one writable setting
    )
    script = tmp_path / "uses_listener.py"
    script.write_text(code)
    stdout, _, status = api.run([str(script), "--strict", "--no-incremental",
                                 "--config-file", os.devnull,
                                 "--cache-dir", str(tmp_path / "cache")])
    assert status == 1, stdout
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4", "5"], stdout
    with pytest.raises(AttributeError):
        listener = FeedListener(None)
        listener.frames = 5  # type: ignore[misc]


class EchoWire:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send(self, msg_type: int, payload: bytes) -> None:
        self.sent.append((int(msg_type), bytes(payload)))

    def send_close(self, code: int, reason: str) -> None:
        pass

    def disconnect(self) -> None:
        pass


def test_reply_echoes_with_the_opcode_of_the_current_message() -> None:
    from defi_ws.errors import NotConnectedError

    listener: FeedListener
    listener = FeedListener(lambda v: listener.reply(v), decode=None)
    with pytest.raises(NotConnectedError):
        listener.reply(b"x")
    wire = EchoWire()
    listener.attach(wire)
    listener.feed(TEXT, b"hello")
    listener.feed(BINARY, b"\x00\x01")
    listener.reply("answer", binary=False)
    listener.reply(b"raw", binary=True)
    assert wire.sent == [(TEXT, b"hello"), (BINARY, b"\x00\x01"), (TEXT, b"answer"),
                         (BINARY, b"raw")]
    listener.close()
    with pytest.raises(NotConnectedError):
        listener.reply(b"late")
