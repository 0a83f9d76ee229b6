# cython: language_level=3
"""The per-frame hot path of defi-ws.

:class:`FeedListener` is a ``cdef class`` subclass of :class:`picows.WSListener`: picows
calls it through the C vtable from inside its ``buffer_updated`` for every frame it
parses out of the socket's receive buffer. It does per-frame work only: a receive
timestamp, counters, the RFC 6455 rules picows leaves to the application, reassembly of
fragmented messages, and the decode pipeline. Everything that involves time, policy or
I/O decisions is the owner's (:class:`defi_ws.client.FeedClient`).

The same logic is reachable without picows through :meth:`FeedListener.feed`, so other
transports (and deterministic tests) drive exactly the code picows drives.

Borrowed memory: the payload handed to ``decode`` is a read-only ``memoryview``. No
object a user can keep ever reads reused or freed memory:

- When ``decode`` is ``orjson.loads`` (the default), the view points straight into
  picows' receive buffer (zero copy): orjson never keeps its argument and only the
  decoded object reaches user code, so the view cannot escape.
- Otherwise (``decode=None``, a custom callable, msgspec) the payload is copied into a
  buffer the listener owns (one ``memcpy``, reused for every message) and the view
  points there. Fragmented messages are reassembled into such a buffer in the first
  place, so they need no extra copy.
- After the call the listener checks, from a few fields of the view and of the buffer
  (no allocation, no Python call), whether anything still refers to them: the view
  itself, a slice, a cast, a memoryview of it, a buffer export (``msgspec.Raw``,
  ``numpy.frombuffer``), the buffer object (``view.obj``) or a weak reference. If so,
  the buffer is handed off: the kept objects own it from then on and it is never
  written again; the listener takes a new one for the next message. What a user keeps
  therefore keeps reading the bytes of its own message.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from picows.picows cimport WSFrame, WSListener, WSTransport

import os
from collections import deque

import orjson
from picows import WSMsgType

from defi_ws.errors import NotConnectedError


cdef extern from "Python.h":
    ctypedef struct PyObject
    Py_ssize_t refcount_of "Py_REFCNT"(PyObject* op)
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    object PyMemoryView_FromObject(object exporter)
    int PyBUF_READ
    # CPython's memoryview layout (Include/cpython/memoryobject.h, unchanged 3.3-3.13):
    # read to tell whether anything still refers to a view after the call.
    ctypedef struct ManagedBuffer "_PyManagedBufferObject":
        Py_ssize_t exports      # memoryviews registered on it (the view + slices/casts)
    ctypedef struct MemoryView "PyMemoryViewObject":
        ManagedBuffer* mbuf
        Py_hash_t hash          # cached hash of a read-only view (-1: not computed)
        int flags
        Py_ssize_t exports      # buffer exports of this view (msgspec.Raw, numpy)
        Py_buffer view
        PyObject* weakreflist
    int MEMORYVIEW_RELEASED "_Py_MEMORYVIEW_RELEASED"


cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk_id, timespec* tp)
    clockid_t CLOCK_MONOTONIC


cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t)


# Opcodes (RFC 6455 section 5.2).
cdef enum:
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA

# Close codes we send.
cdef enum:
    CLOSE_NORMAL = 1000
    CLOSE_PROTOCOL_ERROR = 1002
    CLOSE_INVALID_TEXT = 1007
    CLOSE_TOO_BIG = 1009
    CLOSE_INTERNAL_ERROR = 1011

# UTF-8 validator states (RFC 3629 table 1). UTF8_OK accepts a lead byte.
cdef enum:
    UTF8_OK = 0
    UTF8_NEED1 = 1      # one continuation byte 80..BF left
    UTF8_NEED2 = 2      # two continuation bytes left
    UTF8_NEED3 = 3      # three continuation bytes left
    UTF8_E0 = 4         # after E0: A0..BF, then one more
    UTF8_ED = 5         # after ED: 80..9F, then one more (no surrogates)
    UTF8_F0 = 6         # after F0: 90..BF, then two more
    UTF8_F4 = 7         # after F4: 80..8F, then two more (<= U+10FFFF)
    UTF8_BAD = 8

# Error stages recorded in the error ring.
STAGE_DECODE = "decode"
STAGE_CALLBACK = "callback"
STAGE_CONTROL = "control"

# What to do when decode or the user's callback raises.
ERROR_POLICY_CONTINUE = 0
ERROR_POLICY_DISCONNECT = 1

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
cdef enum:
    _SHRINK_ABOVE = 1024 * 1024     # reassembly/scratch buffers above this are given back
    _SCRATCH_CAPACITY = 4096        # initial copy buffer of single-frame payloads
DEF MAX_CONTROL_PREFIXES = 8
_MASK_POOL_SIZE = 4096


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def now_ns():
    """Return CLOCK_MONOTONIC in ns, the clock every receive timestamp uses.

    Equal to :func:`time.monotonic_ns` on Linux.
    """
    return monotonic_ns()


@cython.boundscheck(False)
cdef inline int utf8_step(int state, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Advance the UTF-8 validator over ``n`` bytes; return the new state."""
    cdef Py_ssize_t i = 0
    cdef uint8_t b
    cdef uint64_t word, w1, w2, w3
    while i < n:
        if state == UTF8_OK:
            # ASCII fast path: 32 bytes per step (four words OR-ed), then 8 at a time,
            # while no high bit is set.
            while i + 32 <= n:
                memcpy(&word, p + i, 8)
                memcpy(&w1, p + i + 8, 8)
                memcpy(&w2, p + i + 16, 8)
                memcpy(&w3, p + i + 24, 8)
                if (word | w1 | w2 | w3) & <uint64_t>0x8080808080808080ULL:
                    break
                i += 32
            while i + 8 <= n:
                memcpy(&word, p + i, 8)
                if word & <uint64_t>0x8080808080808080ULL:
                    break
                i += 8
            if i >= n:
                break
            b = p[i]
            i += 1
            if b < 0x80:
                continue
            elif 0xC2 <= b <= 0xDF:
                state = UTF8_NEED1
            elif b == 0xE0:
                state = UTF8_E0
            elif b == 0xED:
                state = UTF8_ED
            elif 0xE1 <= b <= 0xEF:
                state = UTF8_NEED2
            elif b == 0xF0:
                state = UTF8_F0
            elif 0xF1 <= b <= 0xF3:
                state = UTF8_NEED3
            elif b == 0xF4:
                state = UTF8_F4
            else:
                return UTF8_BAD
        else:
            b = p[i]
            i += 1
            if state == UTF8_NEED1 or state == UTF8_NEED2 or state == UTF8_NEED3:
                if b < 0x80 or b > 0xBF:
                    return UTF8_BAD
                state = UTF8_OK if state == UTF8_NEED1 else (
                    UTF8_NEED1 if state == UTF8_NEED2 else UTF8_NEED2)
            elif state == UTF8_E0:
                if b < 0xA0 or b > 0xBF:
                    return UTF8_BAD
                state = UTF8_NEED1
            elif state == UTF8_ED:
                if b < 0x80 or b > 0x9F:
                    return UTF8_BAD
                state = UTF8_NEED1
            elif state == UTF8_F0:
                if b < 0x90 or b > 0xBF:
                    return UTF8_BAD
                state = UTF8_NEED2
            elif state == UTF8_F4:
                if b < 0x80 or b > 0x8F:
                    return UTF8_BAD
                state = UTF8_NEED2
            else:
                return UTF8_BAD
    return state


def is_valid_utf8(data):
    """Return whether ``data`` (any bytes-like object) is valid UTF-8."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return utf8_step(UTF8_OK, <const uint8_t*>view.buf, view.len) == UTF8_OK
    finally:
        PyBuffer_Release(&view)


def buffer_address(data):
    """Return the address of the first byte of a buffer (for zero-copy tests)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return <size_t>view.buf
    finally:
        PyBuffer_Release(&view)


cdef inline bint valid_close_code(int code) noexcept nogil:
    # RFC 6455 7.4.1 / 7.4.2 and the IANA registry: 1004-1006 and 1015 must not be
    # sent on the wire; 1016-2999 are reserved; 3000-4999 are for libraries and apps.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef class FrameEncoder:
    """Builds masked client frames (RFC 6455 5.3) into one buffer.

    Masking keys come from ``os.urandom`` in blocks, so they are unpredictable
    without a system call per frame.
    """

    cdef bytes _pool
    cdef Py_ssize_t _pool_pos

    def __cinit__(self):
        self._pool = os.urandom(_MASK_POOL_SIZE)
        self._pool_pos = 0

    cdef inline uint32_t _next_mask(self):
        cdef uint32_t mask
        if self._pool_pos + 4 > _MASK_POOL_SIZE:
            self._pool = os.urandom(_MASK_POOL_SIZE)
            self._pool_pos = 0
        memcpy(&mask, PyBytes_AS_STRING(self._pool) + self._pool_pos, 4)
        self._pool_pos += 4
        return mask

    cdef Py_ssize_t _write_frame(self, uint8_t* out, int opcode, const uint8_t* payload,
                                 Py_ssize_t size):
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t i
        cdef uint32_t mask = self._next_mask()
        cdef uint8_t* mask_bytes = <uint8_t*>&mask
        cdef uint64_t length64
        out[0] = <uint8_t>(0x80 | opcode)
        if size < 126:
            out[1] = <uint8_t>(0x80 | size)
            pos = 2
        elif size < 65536:
            out[1] = 0x80 | 126
            out[2] = <uint8_t>(size >> 8)
            out[3] = <uint8_t>(size & 0xFF)
            pos = 4
        else:
            out[1] = 0x80 | 127
            length64 = <uint64_t>size
            for i in range(8):
                out[2 + i] = <uint8_t>((length64 >> (8 * (7 - i))) & 0xFF)
            pos = 10
        memcpy(out + pos, &mask, 4)
        pos += 4
        # XOR eight bytes at a time with the key repeated, then the tail.
        cdef uint64_t mask64 = (<uint64_t>mask << 32) | mask
        cdef uint64_t word
        cdef Py_ssize_t j = 0
        while j + 8 <= size:
            memcpy(&word, payload + j, 8)
            word ^= mask64
            memcpy(out + pos + j, &word, 8)
            j += 8
        while j < size:
            out[pos + j] = payload[j] ^ mask_bytes[j & 3]
            j += 1
        return pos + size

    def encode_one(self, payload, bint binary=False):
        """Encode one payload (``bytes``-like or ``str``) as one masked frame."""
        if isinstance(payload, str):
            payload = PyUnicode_AsUTF8String(payload)
        cdef Py_buffer view
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        cdef bytearray out
        cdef Py_ssize_t written
        try:
            out = PyByteArray_FromStringAndSize(NULL, view.len + 14)
            written = self._write_frame(<uint8_t*>PyByteArray_AS_STRING(out),
                                        OP_BINARY if binary else OP_TEXT,
                                        <const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        del out[written:]
        return out

    def encode(self, list payloads, bint binary=False):
        """Encode payloads as consecutive masked frames in one ``bytearray``.

        Args:
            payloads: ``bytes``, ``bytearray``, ``memoryview`` or ``str`` items.
            binary: send BINARY frames instead of TEXT frames.

        Returns:
            A bytearray holding every frame, ready for a single write.
        """
        cdef int opcode = OP_BINARY if binary else OP_TEXT
        cdef list buffers = []
        cdef Py_ssize_t total = 0
        cdef object item
        for item in payloads:
            if isinstance(item, str):
                item = PyUnicode_AsUTF8String(item)
            mv = memoryview(item)
            total += mv.nbytes + 14
            buffers.append(mv)
        cdef bytearray out = PyByteArray_FromStringAndSize(NULL, total)
        cdef uint8_t* base = <uint8_t*>PyByteArray_AS_STRING(out)
        cdef Py_ssize_t pos = 0
        cdef Py_buffer view
        for mv in buffers:
            PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
            try:
                pos += self._write_frame(base + pos, opcode, <const uint8_t*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        del out[pos:]
        return out


cdef char* _FORMAT_B = b"B"


def decode_keeps_no_reference(decode):
    """Whether ``decode`` provably keeps no reference to the view it is given.

    Only then may the view point into the receive buffer (zero copy): user code sees
    only the decoded result. True for ``orjson.loads`` and for the ``decode`` method of
    a msgspec JSON/MessagePack ``Decoder`` whose type contains no ``msgspec.Raw`` and
    no ``memoryview`` (the only msgspec results that alias the input). False for
    anything else, including ``None`` (the view itself is delivered).
    """
    if decode is orjson.loads:
        return True
    owner = getattr(decode, "__self__", None)
    if owner is None or getattr(decode, "__name__", None) != "decode":
        return False
    try:
        import msgspec
        import msgspec.inspect
    except ImportError:
        return False
    if not isinstance(owner, (msgspec.json.Decoder, msgspec.msgpack.Decoder)):
        return False
    aliasing = (msgspec.inspect.RawType, msgspec.inspect.MemoryViewType)
    seen = set()
    todo = [msgspec.inspect.type_info(owner.type)]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, aliasing):
            return False
        if isinstance(node, (tuple, list)):
            todo.extend(node)
        elif isinstance(node, msgspec.Struct):
            todo.extend(getattr(node, name) for name in node.__struct_fields__)
    return True


@cython.auto_pickle(False)
cdef class _Payload:
    """Memory a delivered payload lives in, exported as a read-only byte buffer.

    A listener writes into it only while nothing outside the listener refers to it;
    once something does (see :meth:`FeedListener._keep_or_hand_off`), the listener lets
    go of it and the keepers own it until the last export is released.
    """

    cdef char* data
    cdef Py_ssize_t capacity
    cdef Py_ssize_t length
    cdef Py_ssize_t exports
    cdef bint open_for_export

    def __cinit__(self, Py_ssize_t capacity):
        self.data = <char*>PyMem_Malloc(capacity if capacity > 0 else 1)
        if self.data == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.length = 0
        self.exports = 0
        self.open_for_export = False

    def __dealloc__(self):
        PyMem_Free(self.data)

    cdef int reserve(self, Py_ssize_t needed, Py_ssize_t limit) except -1:
        """Grow to hold ``needed`` bytes (only while nothing is exported)."""
        cdef Py_ssize_t new_cap
        cdef char* grown
        if needed <= self.capacity:
            return 0
        if self.exports != 0:
            raise BufferError("cannot grow an exported payload buffer")
        new_cap = max(needed, 2 * self.capacity, 4096)
        if new_cap > limit:
            new_cap = max(limit, needed)
        grown = <char*>PyMem_Realloc(self.data, new_cap)
        if grown == NULL:
            raise MemoryError()
        self.data = grown
        self.capacity = new_cap
        return 0

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # Only the listener's own view is made from this object directly; everything
        # else goes through that view, so the listener sees it (``view.obj`` held by a
        # user gives no access to memory).
        if not self.open_for_export:
            raise BufferError("a borrowed payload cannot be exported again after its "
                              "call; keep bytes(view) or the view itself instead")
        if flags & PyBUF_WRITABLE:
            raise BufferError("a borrowed payload is read-only")
        buffer.buf = self.data
        buffer.obj = self
        buffer.len = self.length
        buffer.readonly = 1
        buffer.itemsize = 1
        buffer.format = _FORMAT_B if (flags & PyBUF_FORMAT) == PyBUF_FORMAT else NULL
        buffer.ndim = 1
        buffer.shape = &buffer.len if (flags & PyBUF_ND) == PyBUF_ND else NULL
        buffer.strides = &buffer.itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self.exports -= 1


cdef inline object _view_of(_Payload payload):
    """A read-only memoryview of ``payload[:payload.length]`` (its one direct export)."""
    payload.open_for_export = True
    try:
        return PyMemoryView_FromObject(payload)
    finally:
        payload.open_for_export = False


cdef inline void _repoint(object view, char* ptr, Py_ssize_t size) noexcept:
    """Point a view that nothing else refers to at ``ptr[:size]``."""
    cdef MemoryView* mv = <MemoryView*>view
    mv.view.buf = ptr
    mv.view.len = size
    mv.view.shape[0] = size
    mv.hash = -1


cdef inline bint _view_escaped(PyObject* view) noexcept:
    """Whether anything but its one owner refers to ``view`` or shares its buffer.

    Takes a raw pointer: passing the attribute as an object would add a reference.
    """
    cdef MemoryView* mv = <MemoryView*>view
    return (refcount_of(view) > 1 or mv.exports != 0 or mv.mbuf.exports != 1
            or mv.weakreflist != NULL or (mv.flags & MEMORYVIEW_RELEASED) != 0)


@cython.auto_pickle(False)
cdef class FeedListener(WSListener):
    """Per-connection frame handler: counters, RFC 6455 rules, reassembly, decode.

    One instance serves one connection. picows drives it through
    :meth:`on_ws_frame`; any other transport drives the same logic through
    :meth:`feed`.

    Args:
        on_message: called with each decoded data message; ``None`` counts data
            messages without decoding them (health-only, no Python call per frame).
        decode: called with a read-only ``memoryview`` of each complete data
            message; its result goes to ``on_message``. ``None`` passes the
            memoryview itself. With ``orjson.loads`` (the default) the view points
            into the receive buffer (zero copy, see :attr:`zero_copy`); otherwise
            into a buffer the listener owns. Anything kept of the view (slices,
            casts, exports) keeps reading its own message: the listener hands the
            buffer off instead of reusing it (see the module docstring).
        events: the owner's control hooks (see :class:`defi_ws.transport.ListenerEvents`):
            ``on_open()``, ``on_pong(recv_ns, payload)``, ``on_close_received(code, reason)``,
            ``on_violation(code, reason)``, ``on_handler_error(stage, exc)``,
            ``on_disconnected()``. ``None`` ignores them.
        on_control: if given, messages whose raw payload starts with one of
            ``control_prefixes`` (all messages when ``control_prefixes`` is
            ``None``) go to it instead of ``on_message``.
        control_prefixes: byte prefixes that mark control messages (acks,
            auth replies) so data messages skip the control router.
        max_message_size: largest message (after reassembly) accepted; larger
            ones close the connection with 1009.
        validate_utf8: check that TEXT messages are valid UTF-8 (close 1007).
        error_policy: ``ERROR_POLICY_CONTINUE`` (default) counts a decode or
            callback exception and goes on; ``ERROR_POLICY_DISCONNECT`` also
            closes the connection with 1011.
        errors: a bounded ``deque`` receiving ``(ts_ns, stage, message)`` for
            each decode/callback error; a new one (64 entries) if ``None``.

    Attributes:
        message_opcode: the opcode of the message being delivered (1 TEXT, 2 BINARY),
            valid during ``decode``/``on_message``/``on_control``; :meth:`reply`
            answers with it by default.
        wire: the object this connection's frames are sent on (a picows
            ``WSTransport`` or a memory wire); ``None`` before ``attach``.
        zero_copy: whether ``decode`` reads single-frame payloads in place in the
            receive buffer (only for ``orjson.loads``, which never keeps its input).
        frames, messages, bytes_received, control_messages, pongs, decode_errors,
            callback_errors: counters since the connection opened (read-only).
    """

    # --- counters (read by Health; never reset during a connection) ---
    cdef readonly uint64_t frames
    cdef readonly uint64_t messages
    cdef readonly uint64_t bytes_received
    cdef readonly uint64_t control_messages
    cdef readonly uint64_t pongs
    cdef readonly uint64_t decode_errors
    cdef readonly uint64_t callback_errors
    cdef readonly int64_t connected_ns
    cdef readonly int64_t last_recv_ns
    cdef readonly int64_t last_data_ns
    cdef readonly size_t last_payload_addr
    cdef readonly int message_opcode

    # --- close / violation record ---
    cdef readonly int close_code_received
    cdef readonly str close_reason_received
    cdef readonly int close_code_sent
    cdef readonly str violation
    cdef readonly bint closing

    # --- configuration ---
    cdef readonly Py_ssize_t max_message_size
    cdef readonly bint validate_utf8
    cdef public int error_policy
    cdef object _decode
    cdef object _on_message
    cdef object _on_control
    cdef tuple _control_prefixes
    cdef const char* _prefix_ptr[MAX_CONTROL_PREFIXES]
    cdef Py_ssize_t _prefix_len[MAX_CONTROL_PREFIXES]
    cdef int _prefix_count
    cdef bint _control_all
    cdef readonly bint zero_copy
    cdef object _direct_view        # zero-copy: re-pointed into the receive buffer
    cdef _Payload _scratch          # copy target of single-frame payloads
    cdef object _scratch_view       # the one view of _scratch, re-pointed per message
    cdef object _owned_view         # view of a reassembled/large message, per message
    cdef object _events
    cdef readonly object errors
    cdef bytes _app_pong
    cdef bint _app_pong_exact

    # --- per-connection state ---
    cdef object _wire
    cdef bint _stamp_next
    cdef int64_t _now
    cdef int _frag_opcode
    cdef int _frag_utf8
    cdef _Payload _frag             # reassembly buffer (None until needed)

    def __init__(self, on_message, decode=orjson.loads, events=None, *,
                 on_control=None, control_prefixes=None,
                 Py_ssize_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 bint validate_utf8=True, int error_policy=ERROR_POLICY_CONTINUE,
                 errors=None):
        if max_message_size <= 0:
            raise ValueError("max_message_size must be > 0")
        self._on_message = on_message
        self._decode = decode
        self.zero_copy = decode_keeps_no_reference(decode)
        self._scratch = _Payload(_SCRATCH_CAPACITY)
        self._events = events
        self._on_control = on_control
        self._control_all = on_control is not None and control_prefixes is None
        self._control_prefixes = tuple(control_prefixes or ())
        if len(self._control_prefixes) > MAX_CONTROL_PREFIXES:
            raise ValueError(f"at most {MAX_CONTROL_PREFIXES} control_prefixes")
        self._prefix_count = 0
        for prefix in self._control_prefixes:
            if not isinstance(prefix, bytes) or not prefix:
                raise TypeError("control_prefixes must be non-empty bytes")
            # the tuple keeps each bytes alive, so the pointers stay valid
            self._prefix_ptr[self._prefix_count] = PyBytes_AS_STRING(prefix)
            self._prefix_len[self._prefix_count] = PyBytes_GET_SIZE(prefix)
            self._prefix_count += 1
        self.max_message_size = max_message_size
        self.validate_utf8 = validate_utf8
        self.error_policy = error_policy
        self.errors = deque(maxlen=64) if errors is None else errors
        self._app_pong = None
        self._app_pong_exact = True
        self._stamp_next = True
        self.close_code_received = 0
        self.close_reason_received = None
        self.close_code_sent = 0
        self.violation = None
        self.closing = False

    def set_app_pong(self, pattern, bint exact=True):
        """Recognise application-level pongs by their raw bytes.

        A data message equal to ``pattern`` (``exact``) or starting with it is
        counted as a pong, handed to ``events.on_pong`` and never delivered as
        data. ``None`` turns recognition off.
        """
        if pattern is not None and (not isinstance(pattern, bytes) or not pattern):
            raise TypeError("pattern must be non-empty bytes or None")
        self._app_pong = pattern
        self._app_pong_exact = exact

    @property
    def wire(self):
        """The object frames are answered on (a picows ``WSTransport`` or a memory wire)."""
        return self._wire

    @property
    def in_fragmented_message(self):
        """Whether a fragmented message is being reassembled."""
        return self._frag_opcode != 0

    @property
    def view_address(self):
        """Address the view of the latest single-frame message pointed at (0 if none).

        With :attr:`zero_copy` it equals :attr:`last_payload_addr` (the receive buffer);
        otherwise it is the listener's own buffer. For zero-copy checks and debugging.
        """
        cdef object view = self._direct_view if self.zero_copy else self._scratch_view
        if view is None:
            return 0
        return <size_t>(<MemoryView*>view).view.buf

    def reply(self, payload, binary=None):
        """Send one data message on this listener's connection (an echo or an answer).

        Args:
            payload: ``bytes``-like or ``str`` (sent as UTF-8).
            binary: ``True`` for a BINARY frame, ``False`` for TEXT; ``None`` (the
                default) uses the opcode of the message being delivered
                (:attr:`message_opcode`), TEXT outside a delivery.

        Raises:
            NotConnectedError: no connection is open, or it is closing.
        """
        cdef int opcode
        if binary is None:
            opcode = OP_BINARY if self.message_opcode == OP_BINARY else OP_TEXT
        else:
            opcode = OP_BINARY if binary else OP_TEXT
        if self._wire is None or self.closing:
            raise NotConnectedError("no open connection to reply on")
        if isinstance(payload, str):
            payload = PyUnicode_AsUTF8String(payload)
        self._wire.send(WSMsgType(opcode), payload)

    # ------------------------------------------------------------------ picows API

    cpdef on_ws_connected(self, WSTransport transport):
        self.attach(transport)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef int rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        # One clock read per socket read: picows marks the last frame of a buffer.
        if self._stamp_next:
            self._now = monotonic_ns()
        self._stamp_next = frame.last_in_buffer
        self.last_payload_addr = <size_t>frame.payload_ptr
        self._process(<int>frame.msg_type, frame.payload_ptr, frame.payload_size,
                      frame.fin, rsv)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.detach()

    # ------------------------------------------------------- transport-neutral API

    def attach(self, wire):
        """Start a connection on ``wire`` (called by the transport once open).

        ``wire`` needs ``send_close(code, reason)``, ``send_pong(payload)`` and
        ``disconnect()``.
        """
        self._wire = wire
        self.connected_ns = monotonic_ns()
        self._now = self.connected_ns
        self.last_recv_ns = self.connected_ns
        self.last_data_ns = self.connected_ns
        self._stamp_next = True
        if self._events is not None:
            self._events.on_open()

    def detach(self):
        """End the connection (called by the transport once closed)."""
        self._frag_opcode = 0
        if self._frag is not None:
            self._frag.length = 0
        if self._events is not None:
            self._events.on_disconnected()

    def feed(self, int opcode, payload, bint fin=True, int rsv=0):
        """Process one frame, exactly as if picows had parsed it.

        Args:
            opcode: the frame opcode (0 continuation, 1 text, 2 binary, 8 close,
                9 ping, 10 pong).
            payload: the unmasked payload (any bytes-like object).
            fin: the FIN bit.
            rsv: the three RSV bits as an integer (RSV1 = 4, RSV2 = 2, RSV3 = 1).
        """
        cdef Py_buffer view
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self._now = monotonic_ns()
            self.last_payload_addr = <size_t>view.buf
            self._process(opcode, <char*>view.buf, view.len, fin, rsv)
        finally:
            PyBuffer_Release(&view)

    # ------------------------------------------------------------------ hot path

    cdef int _process(self, int opcode, char* ptr, Py_ssize_t size, bint fin,
                      int rsv) except -1:
        self.frames += 1
        self.bytes_received += size
        self.last_recv_ns = self._now
        if self.closing and opcode != OP_CLOSE:
            return 0    # closing handshake under way: only the peer's CLOSE matters
        if rsv != 0:
            return self._violate(CLOSE_PROTOCOL_ERROR,
                                 "RSV bits set without a negotiated extension")
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if self._frag_opcode != 0:
                return self._violate(CLOSE_PROTOCOL_ERROR,
                                     "new data frame before the fragmented message ended")
            if size > self.max_message_size:
                return self._violate(CLOSE_TOO_BIG, "message exceeds max_message_size")
            if fin:
                if (opcode == OP_TEXT and self.validate_utf8
                        and utf8_step(UTF8_OK, <const uint8_t*>ptr, size) != UTF8_OK):
                    return self._violate(CLOSE_INVALID_TEXT, "text message is not valid UTF-8")
                self.message_opcode = opcode
                return self._deliver(ptr, size, None)
            self._frag_opcode = opcode
            if self._frag is None:
                self._frag = _Payload(0)
            self._frag.length = 0
            self._frag_utf8 = UTF8_OK
            return self._append_fragment(ptr, size, False)
        if opcode == OP_CONT:
            if self._frag_opcode == 0:
                return self._violate(CLOSE_PROTOCOL_ERROR,
                                     "continuation frame without a message in progress")
            return self._append_fragment(ptr, size, fin)
        return self._control(opcode, ptr, size, fin)

    cdef int _append_fragment(self, char* ptr, Py_ssize_t size, bint fin) except -1:
        cdef _Payload frag = self._frag
        cdef Py_ssize_t needed = frag.length + size
        if needed > self.max_message_size:
            return self._violate(CLOSE_TOO_BIG, "fragmented message exceeds max_message_size")
        if self._frag_opcode == OP_TEXT and self.validate_utf8:
            # Fail fast: reject as soon as a fragment makes the text invalid.
            self._frag_utf8 = utf8_step(self._frag_utf8, <const uint8_t*>ptr, size)
            if self._frag_utf8 == UTF8_BAD or (fin and self._frag_utf8 != UTF8_OK):
                return self._violate(CLOSE_INVALID_TEXT, "text message is not valid UTF-8")
        frag.reserve(needed, self.max_message_size)
        memcpy(frag.data + frag.length, ptr, size)
        frag.length = needed
        if not fin:
            return 0
        self.message_opcode = self._frag_opcode
        self._frag_opcode = 0
        self._deliver(frag.data, frag.length, frag)
        if self._frag is frag:
            frag.length = 0
            if frag.capacity > _SHRINK_ABOVE:
                self._frag = None   # give a large buffer back
        return 0

    cdef inline object _borrow_view(self, char* ptr, Py_ssize_t size, _Payload owned):
        """A read-only memoryview of the payload, safe whatever the user keeps.

        ``owned`` is the buffer a reassembled message already lives in (``None`` for a
        single frame in the receive buffer). Views are reused while nothing escapes:
        re-pointing one saves allocating a memoryview per message.
        """
        cdef _Payload scratch
        if owned is None:
            if self.zero_copy:
                if self._direct_view is not None:
                    _repoint(self._direct_view, ptr, size)
                    return self._direct_view
            else:
                scratch = self._scratch
                if self._scratch_view is not None and size <= scratch.capacity:
                    memcpy(scratch.data, ptr, size)
                    scratch.length = size
                    _repoint(self._scratch_view, scratch.data, size)
                    return self._scratch_view
        return self._new_view(ptr, size, owned)

    cdef object _new_view(self, char* ptr, Py_ssize_t size, _Payload owned):
        """:meth:`_borrow_view` when no reusable view fits (first message, growth,
        after a hand-off, reassembled or large messages)."""
        cdef _Payload scratch
        if owned is None and self.zero_copy:
            self._direct_view = PyMemoryView_FromMemory(ptr, size, PyBUF_READ)
            return self._direct_view
        if owned is None and size > _SHRINK_ABOVE:
            # A large single frame: its own buffer, not a scratch grown for good.
            owned = _Payload(size)
            memcpy(owned.data, ptr, size)
            owned.length = size
        if owned is not None:
            self._owned_view = _view_of(owned)
            return self._owned_view
        scratch = self._scratch
        if size > scratch.capacity:
            scratch = self._scratch = _Payload(max(size, 2 * scratch.capacity))
        memcpy(scratch.data, ptr, size)
        scratch.length = size
        self._scratch_view = _view_of(scratch)
        return self._scratch_view

    cdef inline int _return_view(self, _Payload owned) except -1:
        """After the callbacks: hand off whatever the user kept.

        If anything still refers to the view or shares its buffer, the listener lets
        go of that buffer (the keepers own it now; it is never written again) and
        takes a fresh one for the next message. Reads fields only: no Python call.
        """
        if self._owned_view is not None:
            if owned is self._frag and _view_escaped(<PyObject*>self._owned_view):
                self._frag = None
            self._owned_view = None
        elif self.zero_copy:
            if self._direct_view is not None and _view_escaped(<PyObject*>self._direct_view):
                # Unreachable with orjson.loads; never re-point a view someone holds.
                self._direct_view = None
        elif self._scratch_view is not None and _view_escaped(<PyObject*>self._scratch_view):
            self._scratch = _Payload(self._scratch.capacity)
            self._scratch_view = None
        return 0

    cdef int _deliver(self, char* ptr, Py_ssize_t size, _Payload owned) except -1:
        cdef Py_ssize_t plen
        cdef bint control = False
        cdef int i
        if self._app_pong is not None:
            plen = PyBytes_GET_SIZE(self._app_pong)
            if (size == plen or (size > plen and not self._app_pong_exact)) and \
                    memcmp(ptr, PyBytes_AS_STRING(self._app_pong), plen) == 0:
                self.pongs += 1
                if self._events is not None:
                    self._events.on_pong(self._now, PyBytes_FromStringAndSize(ptr, size))
                return 0
        if self._on_control is not None:
            if self._control_all:
                control = True
            else:
                for i in range(self._prefix_count):
                    plen = self._prefix_len[i]
                    if size >= plen and memcmp(ptr, self._prefix_ptr[i], plen) == 0:
                        control = True
                        break
        if self._on_message is None and not control:
            # Count-only mode: per-frame C work, no Python call at all.
            self.messages += 1
            self.last_data_ns = self._now
            return 0
        cdef object view = self._borrow_view(ptr, size, owned)
        cdef object decoded
        try:
            if self._decode is None:
                decoded = view
            else:
                try:
                    decoded = self._decode(view)
                except Exception as exc:
                    self.decode_errors += 1
                    self._handler_error(STAGE_DECODE, exc)
                    return 0
            if control:
                self.control_messages += 1
                try:
                    self._on_control(decoded)
                except Exception as exc:
                    self.callback_errors += 1
                    self._handler_error(STAGE_CONTROL, exc)
                return 0
            self.messages += 1
            self.last_data_ns = self._now
            try:
                self._on_message(decoded)
            except Exception as exc:
                self.callback_errors += 1
                self._handler_error(STAGE_CALLBACK, exc)
            return 0
        finally:
            decoded = None
            view = None
            self._return_view(owned)

    cdef int _control(self, int opcode, char* ptr, Py_ssize_t size, bint fin) except -1:
        cdef int code
        cdef str reason
        if opcode != OP_CLOSE and opcode != OP_PING and opcode != OP_PONG:
            return self._violate(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if not fin:
            return self._violate(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        if size > 125:
            return self._violate(CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes")
        if opcode == OP_PONG:
            self.pongs += 1
            if self._events is not None:
                self._events.on_pong(self._now, PyBytes_FromStringAndSize(ptr, size))
            return 0
        if opcode == OP_PING:
            # picows answers PINGs itself; this path serves other transports.
            if self._wire is not None:
                self._wire.send_pong(PyBytes_FromStringAndSize(ptr, size))
            return 0
        # CLOSE. An invalid one still ends the handshake: answer 1002/1007, then drop.
        if size == 0:
            code = 1005     # no status code present
            reason = ""
        elif size == 1:
            return self._violate_and_drop(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        else:
            code = ntohs((<uint16_t*>ptr)[0])
            if not valid_close_code(code):
                return self._violate_and_drop(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            if utf8_step(UTF8_OK, <const uint8_t*>ptr + 2, size - 2) != UTF8_OK:
                return self._violate_and_drop(CLOSE_INVALID_TEXT, "close reason is not valid UTF-8")
            reason = PyUnicode_DecodeUTF8(ptr + 2, size - 2, NULL)
        self.close_code_received = code
        self.close_reason_received = reason
        if not self.closing and not self._record_transport_close():
            # Peer-initiated: echo the code (1000 when none was given), then close.
            self.closing = True
            self.close_code_sent = CLOSE_NORMAL if code == 1005 else code
            if self._wire is not None:
                self._wire.send_close(self.close_code_sent, "")
        if self._events is not None:
            self._events.on_close_received(code, reason)
        if self._wire is not None:
            self._wire.disconnect()
        return 0

    cdef int _violate(self, int code, str reason) except -1:
        """Record a protocol violation, start the closing handshake, tell the owner."""
        self.violation = reason
        self._frag_opcode = 0
        if self._frag is not None:
            self._frag.length = 0
        if not self.closing and not self._record_transport_close():
            self.closing = True
            self.close_code_sent = code
            if self._wire is not None:
                self._wire.send_close(code, reason)
        if self._events is not None:
            self._events.on_violation(code, reason)
        return 0

    cdef bint _record_transport_close(self) except -1:
        """Whether the transport already sent CLOSE on its own (picows answers its
        parser's errors itself, possibly before we see the frame before). If so, record
        its code instead of claiming one: a second CLOSE would never leave anyway."""
        handshake = getattr(self._wire, "close_handshake", None)
        if handshake is None or handshake.sent is None:
            return False
        self.closing = True
        self.close_code_sent = int(handshake.sent.code)
        return True

    cdef int _violate_and_drop(self, int code, str reason) except -1:
        self._violate(code, reason)
        if self._wire is not None:
            self._wire.disconnect()
        return 0

    cdef int _handler_error(self, str stage, exc) except -1:
        message = f"{type(exc).__name__}: {exc}"
        if len(message) > 200:
            message = message[:197] + "..."
        self.errors.append((self._now, stage, message))
        if self._events is not None:
            self._events.on_handler_error(stage, exc)
        if self.error_policy == ERROR_POLICY_DISCONNECT and not self.closing:
            self.closing = True
            self.close_code_sent = CLOSE_INTERNAL_ERROR
            if self._wire is not None:
                self._wire.send_close(CLOSE_INTERNAL_ERROR, "handler error")
        return 0

    # ------------------------------------------------------------------ closing

    def close(self, int code=CLOSE_NORMAL, str reason=""):
        """Start a local closing handshake (idempotent)."""
        if self.closing:
            return
        self.closing = True
        self.close_code_sent = code
        if self._wire is not None:
            self._wire.send_close(code, reason)
