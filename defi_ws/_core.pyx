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

Borrowed memory: the payload handed to ``decode`` is a read-only ``memoryview`` into
picows' receive buffer for unfragmented messages (into the reassembly buffer for
fragmented ones). It is valid only during the call; anything kept must be copied
(``bytes(view)``). A view that is still referenced after the call is released, so late
access raises ``ValueError`` instead of reading reused memory.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from picows.picows cimport WSFrame, WSListener, WSTransport

import os
from collections import deque

import orjson


cdef extern from "Python.h":
    ctypedef struct PyObject
    Py_ssize_t refcount_of "Py_REFCNT"(PyObject* op)
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    Py_buffer* PyMemoryView_GET_BUFFER(object view)
    int PyBUF_READ


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
_SHRINK_ABOVE = 1024 * 1024
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
            memoryview itself. The memoryview borrows the receive buffer and is
            valid only during the call: copy anything you keep.
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
    cdef object _view
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
    cdef char* _frag_buf
    cdef Py_ssize_t _frag_len
    cdef Py_ssize_t _frag_cap

    def __cinit__(self):
        self._frag_buf = NULL
        self._frag_len = 0
        self._frag_cap = 0

    def __init__(self, on_message, decode=orjson.loads, events=None, *,
                 on_control=None, control_prefixes=None,
                 Py_ssize_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 bint validate_utf8=True, int error_policy=ERROR_POLICY_CONTINUE,
                 errors=None):
        if max_message_size <= 0:
            raise ValueError("max_message_size must be > 0")
        self._on_message = on_message
        self._decode = decode
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

    def __dealloc__(self):
        if self._frag_buf != NULL:
            PyMem_Free(self._frag_buf)
            self._frag_buf = NULL

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
        self._frag_len = 0
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
                return self._deliver(ptr, size)
            self._frag_opcode = opcode
            self._frag_len = 0
            self._frag_utf8 = UTF8_OK
            return self._append_fragment(ptr, size, False)
        if opcode == OP_CONT:
            if self._frag_opcode == 0:
                return self._violate(CLOSE_PROTOCOL_ERROR,
                                     "continuation frame without a message in progress")
            return self._append_fragment(ptr, size, fin)
        return self._control(opcode, ptr, size, fin)

    cdef int _append_fragment(self, char* ptr, Py_ssize_t size, bint fin) except -1:
        cdef Py_ssize_t needed = self._frag_len + size
        cdef Py_ssize_t new_cap
        cdef char* grown
        if needed > self.max_message_size:
            return self._violate(CLOSE_TOO_BIG, "fragmented message exceeds max_message_size")
        if self._frag_opcode == OP_TEXT and self.validate_utf8:
            # Fail fast: reject as soon as a fragment makes the text invalid.
            self._frag_utf8 = utf8_step(self._frag_utf8, <const uint8_t*>ptr, size)
            if self._frag_utf8 == UTF8_BAD or (fin and self._frag_utf8 != UTF8_OK):
                return self._violate(CLOSE_INVALID_TEXT, "text message is not valid UTF-8")
        if needed > self._frag_cap:
            new_cap = max(needed, 2 * self._frag_cap, 4096)
            if new_cap > self.max_message_size:
                new_cap = self.max_message_size
            grown = <char*>PyMem_Realloc(self._frag_buf, new_cap)
            if grown == NULL:
                raise MemoryError()
            self._frag_buf = grown
            self._frag_cap = new_cap
        memcpy(self._frag_buf + self._frag_len, ptr, size)
        self._frag_len = needed
        if not fin:
            return 0
        self.message_opcode = self._frag_opcode
        self._frag_opcode = 0
        self._deliver(self._frag_buf, self._frag_len)
        self._frag_len = 0
        if self._frag_cap > _SHRINK_ABOVE:
            PyMem_Free(self._frag_buf)
            self._frag_buf = NULL
            self._frag_cap = 0
        return 0

    cdef inline object _borrow_view(self, char* ptr, Py_ssize_t size):
        """A read-only memoryview of ``ptr[:size]``, reusing one object per listener.

        Re-pointing the view's buffer saves allocating a memoryview per message. A
        view the user kept is never re-pointed: :meth:`_return_view` released it.
        """
        cdef Py_buffer* buf
        if self._view is None:
            self._view = PyMemoryView_FromMemory(ptr, size, PyBUF_READ)
            return self._view
        buf = PyMemoryView_GET_BUFFER(self._view)
        buf.buf = ptr
        buf.len = size
        buf.shape[0] = size
        return self._view

    cdef inline int _return_view(self) except -1:
        """After the callbacks: a view still referenced elsewhere is released (late
        access raises ValueError instead of reading reused memory) and replaced."""
        # Through a raw pointer: reading the attribute as an object would add a ref.
        if refcount_of(<PyObject*>self._view) > 1:
            try:
                self._view.release()
            except BufferError:
                pass  # a slice of it is still exported; it will never be re-pointed
            self._view = None
        return 0

    cdef int _deliver(self, char* ptr, Py_ssize_t size) except -1:
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
        cdef object view = self._borrow_view(ptr, size)
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
            self._return_view()

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
        self._frag_len = 0
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
