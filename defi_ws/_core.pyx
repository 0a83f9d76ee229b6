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

Redundant connections: listeners given one shared :class:`Deduplicator` drop a data
message another connection already delivered, from a key read out of the raw bytes
(an id field, a hash of one field's value, or a Python hook) before any view is made
or anything decoded. Without one, the check costs a pointer test per message.

Conflation (state-like streams: book tickers, mark prices): a listener given a key (the
raw value of a JSON field, read with the same field finder, or a Python hook) keeps,
within one socket read, only the newest message per key pending and delivers the
pending messages at the end of the read, in the order of their arrival; superseded ones
are counted and never decoded. Pending payloads stay where picows parsed them: picows
2.3.1 parses and delivers every frame of a read out of one receive buffer and moves or
grows that buffer only before the first frame and after the last one of the read
(``_process_new_data``), so a pointer into it stays valid until the frame picows marks
``last_in_buffer``. Frames picows answers itself (a PING under auto-pong) never reach the
listener, so a frame followed by a control frame ends the batch too. Payloads given to
:meth:`FeedListener.feed` with ``last_in_buffer=False`` are copied into a buffer the
listener owns.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (PyByteArray_AS_STRING, PyByteArray_FromStringAndSize,
                               PyByteArray_GET_SIZE)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

from picows.picows cimport WSFrame, WSListener, WSTransport

import os
from collections import deque

import orjson
from picows import WSMsgType

from defi_ws.errors import NotConnectedError

cdef object _orjson_dumps = orjson.dumps


cdef extern from "Python.h":
    ctypedef struct PyObject
    Py_ssize_t refcount_of "Py_REFCNT"(PyObject* op)
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    object PyMemoryView_FromObject(object exporter)
    int PyBUF_READ
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
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
STAGE_CONFLATE = "conflate"

# What to do when decode or the user's callback raises.
ERROR_POLICY_CONTINUE = 0
ERROR_POLICY_DISCONNECT = 1

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
cdef enum:
    _SHRINK_ABOVE = 1024 * 1024     # reassembly/scratch buffers above this are given back
    _SCRATCH_CAPACITY = 4096        # initial copy buffer of single-frame payloads
    _MAX_PENDING = 65536            # pending conflated messages before a forced flush
    _ARENA_LIMIT = 4 * 1024 * 1024  # copied pending payloads before a forced flush
DEF MAX_CONTROL_PREFIXES = 8


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


cdef extern from "Python.h":
    ctypedef enum PyMemAllocatorDomain:
        PYMEM_DOMAIN_RAW
        PYMEM_DOMAIN_MEM
        PYMEM_DOMAIN_OBJ
    ctypedef struct PyMemAllocatorEx:
        void* ctx
        void* (*malloc)(void* ctx, size_t size) noexcept nogil
        void* (*calloc)(void* ctx, size_t nelem, size_t elsize) noexcept nogil
        void* (*realloc)(void* ctx, void* ptr, size_t new_size) noexcept nogil
        void (*free)(void* ctx, void* ptr) noexcept nogil
    void PyMem_GetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx* allocator)
    void PyMem_SetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx* allocator)


cdef PyMemAllocatorEx _saved_mem
cdef PyMemAllocatorEx _saved_obj
cdef Py_ssize_t _allocations = 0


cdef void* _counting_malloc(void* ctx, size_t size) noexcept nogil:
    global _allocations
    _allocations += 1
    cdef PyMemAllocatorEx* inner = <PyMemAllocatorEx*>ctx
    return inner.malloc(inner.ctx, size)


cdef void* _counting_calloc(void* ctx, size_t nelem, size_t elsize) noexcept nogil:
    global _allocations
    _allocations += 1
    cdef PyMemAllocatorEx* inner = <PyMemAllocatorEx*>ctx
    return inner.calloc(inner.ctx, nelem, elsize)


cdef void* _counting_realloc(void* ctx, void* ptr, size_t new_size) noexcept nogil:
    global _allocations
    _allocations += 1
    cdef PyMemAllocatorEx* inner = <PyMemAllocatorEx*>ctx
    return inner.realloc(inner.ctx, ptr, new_size)


cdef void _counting_free(void* ctx, void* ptr) noexcept nogil:
    cdef PyMemAllocatorEx* inner = <PyMemAllocatorEx*>ctx
    inner.free(inner.ctx, ptr)


def _count_allocations(func, Py_ssize_t repeat=1):
    """Call ``func()`` ``repeat`` times; return how many blocks Python allocated meanwhile.

    Counts every ``malloc``/``calloc``/``realloc`` of the object and PyMem domains
    (every Python object and most interpreter memory) while the calls run, freed or
    not, by wrapping the allocators the way ``tracemalloc`` does. A test and bench
    helper: not reentrant, not thread-aware.
    """
    global _allocations
    cdef PyMemAllocatorEx hook_mem, hook_obj
    cdef Py_ssize_t i
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &_saved_mem)
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &_saved_obj)
    hook_mem.ctx = &_saved_mem
    hook_obj.ctx = &_saved_obj
    hook_mem.malloc = _counting_malloc
    hook_mem.calloc = _counting_calloc
    hook_mem.realloc = _counting_realloc
    hook_mem.free = _counting_free
    hook_obj.malloc = _counting_malloc
    hook_obj.calloc = _counting_calloc
    hook_obj.realloc = _counting_realloc
    hook_obj.free = _counting_free
    _allocations = 0
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &hook_mem)
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &hook_obj)
    try:
        for i in range(repeat):
            func()
    finally:
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &_saved_obj)
        PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &_saved_mem)
    return _allocations


cdef inline bint valid_close_code(int code) noexcept nogil:
    # RFC 6455 7.4.1 / 7.4.2 and the IANA registry: 1004-1006 and 1015 must not be
    # sent on the wire; 1016-2999 are reserved; 3000-4999 are for libraries and apps.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef extern from "<sys/random.h>" nogil:
    ssize_t c_getrandom "getrandom"(void* buf, size_t buflen, unsigned int flags)


cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    int MSG_NOSIGNAL


cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR


cdef enum:
    _MASK_POOL_SIZE = 4096          # bytes of masking keys drawn per getrandom()
    _MAX_HEADER = 14                # 2 + 8 (64-bit length) + 4 (masking key)
    _SMALL_HEADER = 6               # 2 + 4: what begin() reserves (payloads < 126 B)
    _OUT_CAPACITY = 4096            # an OutBuffer's initial region


cdef inline Py_ssize_t _put_header(uint8_t* out, int opcode, Py_ssize_t size,
                                   uint32_t mask) noexcept nogil:
    """Write a FIN frame header with ``mask`` at ``out``; return its length."""
    cdef Py_ssize_t pos
    cdef uint64_t length64
    cdef int i
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
    return pos + 4


cdef inline Py_ssize_t _header_size(Py_ssize_t size) noexcept nogil:
    if size < 126:
        return 6
    if size < 65536:
        return 8
    return 14


cdef inline void _mask_into(uint8_t* dst, const uint8_t* src, Py_ssize_t size,
                            uint32_t mask) noexcept nogil:
    """XOR ``size`` bytes of ``src`` with the repeated key into ``dst`` (may be ``src``)."""
    cdef uint64_t mask64 = (<uint64_t>mask << 32) | mask
    cdef uint64_t word
    cdef const uint8_t* mask_bytes = <const uint8_t*>&mask
    cdef Py_ssize_t j = 0
    while j + 8 <= size:
        memcpy(&word, src + j, 8)
        word ^= mask64
        memcpy(dst + j, &word, 8)
        j += 8
    while j < size:
        dst[j] = src[j] ^ mask_bytes[j & 3]
        j += 1


# Bumped in a forked child: masking keys drawn before the fork are not used after it
# (parent and child would otherwise send the same keys).
cdef unsigned long _fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef class FrameEncoder:
    """Builds masked client frames (RFC 6455 5.3).

    Masking keys come from the kernel's CSPRNG (``getrandom``) in 4 KiB blocks, so
    they are unpredictable without a system call (or a Python object) per frame; a
    forked child draws its own.
    """

    cdef uint8_t _pool[_MASK_POOL_SIZE]
    cdef Py_ssize_t _pool_pos
    cdef unsigned long _generation

    def __cinit__(self):
        self._pool_pos = _MASK_POOL_SIZE  # filled on first use

    cdef int _refill(self) except -1:
        cdef Py_ssize_t got = 0
        cdef ssize_t n
        while got < _MASK_POOL_SIZE:
            n = c_getrandom(self._pool + got, _MASK_POOL_SIZE - got, 0)
            if n > 0:
                got += n
            elif n < 0 and errno == EINTR:
                continue
            else:  # no getrandom (old kernel, seccomp): Python's own CSPRNG
                block = os.urandom(_MASK_POOL_SIZE - got)
                memcpy(self._pool + got, PyBytes_AS_STRING(block), _MASK_POOL_SIZE - got)
                got = _MASK_POOL_SIZE
        self._pool_pos = 0
        self._generation = _fork_generation
        return 0

    cdef inline uint32_t _next_mask(self) except? 0:
        cdef uint32_t mask
        if self._pool_pos + 4 > _MASK_POOL_SIZE or self._generation != _fork_generation:
            self._refill()
        memcpy(&mask, self._pool + self._pool_pos, 4)
        self._pool_pos += 4
        return mask

    cdef Py_ssize_t _write_frame(self, uint8_t* out, int opcode, const uint8_t* payload,
                                 Py_ssize_t size) except -1:
        """Write one masked frame of ``payload`` at ``out`` (room for size + 14)."""
        cdef uint32_t mask = self._next_mask()
        cdef Py_ssize_t pos = _put_header(out, opcode, size, mask)
        _mask_into(out + pos, payload, size, mask)
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
            out = PyByteArray_FromStringAndSize(NULL, view.len + _MAX_HEADER)
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
            total += mv.nbytes + _MAX_HEADER
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

    def encode_into(self, OutBuffer out not None, payload, bint binary=False):
        """Append one masked frame of ``payload`` to ``out``, masked with this encoder's
        keys straight from the payload's memory (no intermediate copy).

        Args:
            out: the buffer the frame is appended to.
            payload: ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (UTF-8).
            binary: a BINARY frame instead of a TEXT frame.
        """
        out._check_closed()
        out._frame_payload(self, payload, OP_BINARY if binary else OP_TEXT)


cdef class OutBuffer:
    """One reusable region where outbound frames are built in place and written at once.

    Frames are appended (masked straight from the payload's memory, or written piece
    by piece with :meth:`begin`/:meth:`write`/:meth:`end`); :meth:`flush` writes
    everything appended since the last flush in one write and empties the buffer for
    the next one. One per connection (or per client: a flush leaves nothing behind
    that refers to the region).

    Reuse is safe whatever the transport does with what it cannot send at once: to a
    picows ``WSTransport`` on plain TCP with nothing queued, the region is sent with
    one ``send()`` system call (no Python object); whatever the kernel does not take,
    and everything written while the transport has data queued or over TLS, is
    handed to the transport as a copy (``bytes``; aiofastnet, which copies itself,
    gets a view that is released if anything still holds it after the write). Any
    other sink gets ``sink.write(bytes)``.

    Args:
        encoder: the source of masking keys (default: a new :class:`FrameEncoder`).
        capacity: initial size of the region in bytes; it grows as needed and goes
            back to this size after a flush of more than 1 MiB.
    """

    cdef char* _data
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _initial
    cdef Py_ssize_t _open           # offset of the open frame's header; -1: none
    cdef int _open_opcode
    cdef readonly FrameEncoder encoder
    cdef Py_ssize_t _pending        # frames appended since the last flush
    cdef uint64_t _frames
    cdef uint64_t _writes
    cdef uint64_t _copied_writes
    cdef uint64_t _abandoned

    def __cinit__(self, *args, **kwargs):
        self._data = NULL
        self._open = -1
        self.encoder = FrameEncoder()  # replaced by __init__'s, if given

    def __init__(self, FrameEncoder encoder=None, Py_ssize_t capacity=_OUT_CAPACITY):
        if capacity < 64:
            capacity = 64
        cdef char* data = <char*>PyMem_Realloc(self._data, capacity)
        if data == NULL:
            raise MemoryError("cannot allocate an OutBuffer")
        self._data = data
        self._cap = capacity
        self._initial = capacity
        self._len = 0
        self._pending = 0
        self._open = -1
        if encoder is not None:
            self.encoder = encoder

    def __dealloc__(self):
        if self._data != NULL:
            PyMem_Free(self._data)
            self._data = NULL

    @property
    def frames(self):
        """Frames written (flushed) since the buffer was made."""
        return self._frames

    @property
    def pending_frames(self):
        """Frames appended since the last flush."""
        return self._pending

    @property
    def writes(self):
        """Flushes that wrote something."""
        return self._writes

    @property
    def copied_writes(self):
        """Writes handed to the transport as a copy (the socket could not take them
        at once, TLS, or a sink other than picows)."""
        return self._copied_writes

    @property
    def capacity(self):
        """The region's current size in bytes."""
        return self._cap

    def __len__(self):
        return self._len

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._len + extra
        if need <= self._cap:
            return 0
        cdef Py_ssize_t cap = self._cap * 2
        if cap < need:
            cap = need
        cdef char* data = <char*>PyMem_Realloc(self._data, cap)
        if data == NULL:
            raise MemoryError(f"cannot grow an OutBuffer to {cap} bytes")
        self._data = data
        self._cap = cap
        return 0

    cdef inline int _check_closed(self) except -1:
        if self._open >= 0:
            raise RuntimeError("a frame is open: end() or cancel() it first")
        return 0

    cdef int _frame_ptr(self, FrameEncoder encoder, int opcode, const uint8_t* payload,
                        Py_ssize_t size) except -1:
        self._reserve(size + _MAX_HEADER)
        self._len += encoder._write_frame(<uint8_t*>self._data + self._len, opcode,
                                          payload, size)
        self._pending += 1
        return 0

    cdef int _frame_payload(self, FrameEncoder encoder, object payload, int opcode) except -1:
        """One frame of a bytes-like or str payload, masked straight from its memory."""
        cdef const char* ptr
        cdef Py_ssize_t size
        cdef Py_buffer view
        if isinstance(payload, bytes):
            return self._frame_ptr(encoder, opcode, <const uint8_t*>PyBytes_AS_STRING(payload),
                                   PyBytes_GET_SIZE(payload))
        if isinstance(payload, str):
            ptr = PyUnicode_AsUTF8AndSize(payload, &size)  # ASCII: the str's own bytes
            return self._frame_ptr(encoder, opcode, <const uint8_t*>ptr, size)
        try:  # a buffer export: the object cannot be resized while it is masked
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        except BufferError:  # a non-contiguous view: as bytes
            return self._frame_payload(encoder, bytes(payload), opcode)
        try:
            return self._frame_ptr(encoder, opcode, <const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _add(self, object message, int opcode) except -1:
        """One frame of a message: bytes-like or str as is, a payload writer called
        inside an open frame, anything else as JSON (``orjson.dumps``)."""
        if isinstance(message, (bytes, str, bytearray, memoryview)):
            return self._frame_payload(self.encoder, message, opcode)
        if callable(message):
            self._begin(opcode)
            try:
                message(self)
            except BaseException:
                self.cancel()
                raise
            self._end()
            return 0
        data = _orjson_dumps(message)
        return self._frame_ptr(self.encoder, opcode, <const uint8_t*>PyBytes_AS_STRING(data),
                               PyBytes_GET_SIZE(data))

    def add(self, message, bint binary=False):
        """Append one frame: ``bytes``/``bytearray``/``memoryview``/``str`` payloads are
        masked straight from their memory; a payload writer (a callable) is called with
        this buffer inside an open frame and writes the payload with :meth:`write`;
        anything else is serialised with ``orjson.dumps``. Nothing is appended when
        this raises."""
        self._check_closed()
        cdef Py_ssize_t start = self._len
        cdef Py_ssize_t pending = self._pending
        try:
            self._add(message, OP_BINARY if binary else OP_TEXT)
        except BaseException:
            self._len = start
            self._pending = pending
            raise

    cdef int _begin(self, int opcode) except -1:
        self._check_closed()
        self._reserve(_SMALL_HEADER)
        self._open = self._len
        self._open_opcode = opcode
        self._len += _SMALL_HEADER
        return 0

    def begin(self, bint binary=False):
        """Open a frame whose payload the following :meth:`write` calls append."""
        self._begin(OP_BINARY if binary else OP_TEXT)

    def write(self, data):
        """Append ``data`` (``bytes``-like, or ``str`` as UTF-8) to the open frame's payload."""
        if self._open < 0:
            raise RuntimeError("no open frame: call begin() first")
        cdef const char* ptr
        cdef Py_ssize_t size
        cdef Py_buffer view
        if isinstance(data, bytes):
            ptr = PyBytes_AS_STRING(data)
            size = PyBytes_GET_SIZE(data)
        elif isinstance(data, str):
            ptr = PyUnicode_AsUTF8AndSize(data, &size)
        elif isinstance(data, bytearray):
            ptr = PyByteArray_AS_STRING(data)
            size = PyByteArray_GET_SIZE(data)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._reserve(view.len)
                memcpy(self._data + self._len, view.buf, view.len)
                self._len += view.len
            finally:
                PyBuffer_Release(&view)
            return
        self._reserve(size)
        memcpy(self._data + self._len, ptr, size)
        self._len += size

    cdef int _end(self) except -1:
        if self._open < 0:
            raise RuntimeError("no open frame: call begin() first")
        cdef Py_ssize_t start = self._open
        cdef Py_ssize_t payload_at = start + _SMALL_HEADER
        cdef Py_ssize_t size = self._len - payload_at
        cdef Py_ssize_t shift = _header_size(size) - _SMALL_HEADER
        if shift:  # a longer length field: move the payload up
            self._reserve(shift)
            memmove(self._data + payload_at + shift, self._data + payload_at, size)
            payload_at += shift
            self._len += shift
        cdef uint32_t mask = self.encoder._next_mask()
        _put_header(<uint8_t*>self._data + start, self._open_opcode, size, mask)
        _mask_into(<uint8_t*>self._data + payload_at, <const uint8_t*>self._data + payload_at,
                   size, mask)
        self._open = -1
        self._pending += 1
        return 0

    def end(self):
        """Close the open frame: header and masking key in front, payload masked in place."""
        self._end()

    def cancel(self):
        """Drop the open frame (and what was written into it), if any."""
        if self._open >= 0:
            self._len = self._open
            self._open = -1

    def clear(self):
        """Drop everything not yet flushed."""
        self._len = 0
        self._pending = 0
        self._open = -1

    def getvalue(self):
        """The frames not yet flushed, as ``bytes`` (a copy)."""
        return PyBytes_FromStringAndSize(self._data, self._len)

    cdef int _write_ws(self, WSTransport ws) except -1:
        """picows' own write path (``WSTransport._fast_write``), reusing our region."""
        cdef Py_ssize_t size = self._len
        cdef ssize_t sent = -1
        if ws.is_disconnected or ws.is_close_frame_sent:
            raise NotConnectedError("connection is closing or closed")
        if not ws.is_client_side:
            raise ValueError("OutBuffer writes masked client frames: not for a server side")
        if not ws.is_secure and ws._tr_get_write_buffer_size() == 0:
            # Nothing queued: the kernel takes the bytes now or we hand over a copy.
            sent = c_send(ws._socket, self._data, <size_t>size, MSG_NOSIGNAL)
            if sent == size:
                return 0
        if sent > 0:
            ws._tr_write(PyBytes_FromStringAndSize(self._data + sent, size - sent))
        elif ws._is_aiofn_transport:
            # aiofastnet copies whatever it cannot send at once (verified in its
            # write_nocheck / make_write_request_tail); if anything still holds the view
            # afterwards, it is released so it can never read the reused region.
            view = PyMemoryView_FromMemory(self._data, size, PyBUF_READ)
            ws._tr_write(view)
            if refcount_of(<PyObject*>view) > 1:
                try:
                    view.release()
                except BufferError:  # exported further: never reuse or free this region
                    self._abandon()
        else:
            ws._tr_write(PyBytes_FromStringAndSize(self._data, size))
        self._copied_writes += 1
        return 0

    cdef void _abandon(self) noexcept:
        """Leave the region to whatever still refers to it; take a fresh one."""
        cdef char* fresh = <char*>PyMem_Malloc(self._initial)
        if fresh == NULL:
            return  # keep the old one rather than fail; nothing better to do
        self._data = fresh
        self._cap = self._initial
        self._len = 0
        self._abandoned += 1

    cdef int _flush(self, object sink) except -1:
        self._check_closed()
        if self._len == 0:
            return 0
        try:
            if isinstance(sink, WSTransport):
                self._write_ws(<WSTransport>sink)
            else:
                sink.write(PyBytes_FromStringAndSize(self._data, self._len))
                self._copied_writes += 1
            self._writes += 1
            self._frames += self._pending
        finally:
            self._len = 0
            self._pending = 0
            if self._cap > _SHRINK_ABOVE:
                self._shrink()
        return 0

    cdef void _shrink(self) noexcept:
        cdef char* data = <char*>PyMem_Realloc(self._data, self._initial)
        if data != NULL:
            self._data = data
            self._cap = self._initial

    def flush(self, sink):
        """Write every frame appended since the last flush in one write, then empty
        the buffer (also when the write raises).

        Args:
            sink: a picows ``WSTransport`` (client side), or any object with
                ``write(bytes)`` (a :class:`~defi_ws.transport.Connection`).

        Raises:
            NotConnectedError: ``sink`` is a picows transport that is closing or closed.
        """
        self._flush(sink)

    def send(self, sink, message, bint binary=False):
        """:meth:`add` one message and :meth:`flush` to ``sink``: one frame, one write.

        Raises:
            NotConnectedError: see :meth:`flush`.
        """
        self._check_closed()
        cdef Py_ssize_t start = self._len
        cdef Py_ssize_t pending = self._pending
        try:
            self._add(message, OP_BINARY if binary else OP_TEXT)
        except BaseException:
            self._len = start
            self._pending = pending
            raise
        self._flush(sink)

    def send_batch(self, sink, messages, bint binary=False):
        """:meth:`add` each message, then :meth:`flush`: consecutive frames in one
        write. Nothing of ``messages`` is appended or written when one of them cannot
        be encoded.

        Raises:
            NotConnectedError: see :meth:`flush`.
        """
        self._check_closed()
        cdef int opcode = OP_BINARY if binary else OP_TEXT
        cdef Py_ssize_t start = self._len
        cdef Py_ssize_t pending = self._pending
        try:
            for message in messages:
                self._add(message, opcode)
        except BaseException:
            self._len = start
            self._pending = pending
            raise
        self._flush(sink)


cdef char* _FORMAT_B = b"B"


def decode_keeps_no_reference(decode):
    """Whether ``decode`` provably keeps no reference to the view it is given.

    Only then may the view point into the receive buffer (zero copy): user code sees
    only the decoded result. True for ``orjson.loads`` and for the ``decode`` method of
    a msgspec JSON/MessagePack ``Decoder`` whose type contains no ``msgspec.Raw`` and
    no ``memoryview`` and that has no ``ext_hook`` (the only ways a msgspec result
    aliases its input). False for
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
    if getattr(owner, "ext_hook", None) is not None:
        return False  # a MessagePack ext_hook is handed a memoryview of the input
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


# ------------------------------------------------------------------ de-duplication

cdef extern from *:
    """
    /* XXH64 (xxHash, Yann Collet, BSD 2-clause): a fast 64-bit hash of good quality.
       Reads 8 bytes at a time, little-endian (byte-swapped on big-endian hosts). */
    #include <stdint.h>
    #include <string.h>
    #define DW_P1 0x9E3779B185EBCA87ULL
    #define DW_P2 0xC2B2AE3D27D4EB4FULL
    #define DW_P3 0x165667B19E3779F9ULL
    #define DW_P4 0x85EBCA77C2B2AE63ULL
    #define DW_P5 0x27D4EB2F165667C5ULL
    static inline uint64_t dw_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t dw_read64(const uint8_t* p) {
        uint64_t v; memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    static inline uint64_t dw_read32(const uint8_t* p) {
        uint32_t v; memcpy(&v, p, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap32(v);
    #endif
        return v;
    }
    static inline uint64_t dw_round(uint64_t acc, uint64_t input) {
        acc += input * DW_P2; acc = dw_rotl(acc, 31); return acc * DW_P1;
    }
    static inline uint64_t dw_merge(uint64_t acc, uint64_t val) {
        acc ^= dw_round(0, val); return acc * DW_P1 + DW_P4;
    }
    static uint64_t dw_xxh64(const void* data, size_t len, uint64_t seed) {
        const uint8_t* p = (const uint8_t*)data;
        const uint8_t* end = p + len;
        uint64_t h;
        if (len >= 32) {
            const uint8_t* limit = end - 32;
            uint64_t v1 = seed + DW_P1 + DW_P2, v2 = seed + DW_P2, v3 = seed, v4 = seed - DW_P1;
            do {
                v1 = dw_round(v1, dw_read64(p)); v2 = dw_round(v2, dw_read64(p + 8));
                v3 = dw_round(v3, dw_read64(p + 16)); v4 = dw_round(v4, dw_read64(p + 24));
                p += 32;
            } while (p <= limit);
            h = dw_rotl(v1, 1) + dw_rotl(v2, 7) + dw_rotl(v3, 12) + dw_rotl(v4, 18);
            h = dw_merge(h, v1); h = dw_merge(h, v2); h = dw_merge(h, v3); h = dw_merge(h, v4);
        } else {
            h = seed + DW_P5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) { h ^= dw_round(0, dw_read64(p)); h = dw_rotl(h, 27) * DW_P1 + DW_P4; p += 8; }
        if (p + 4 <= end) { h ^= dw_read32(p) * DW_P1; h = dw_rotl(h, 23) * DW_P2 + DW_P3; p += 4; }
        while (p < end) { h ^= (*p) * DW_P5; h = dw_rotl(h, 11) * DW_P1; p++; }
        h ^= h >> 33; h *= DW_P2; h ^= h >> 29; h *= DW_P3; h ^= h >> 32;
        return h;
    }

    /* First offset >= start of the k-byte needle key (k >= 3: a quoted name) in p[:n],
       or -1. SSE2 (every x86-64): 16 candidate offsets per step, filtered on three
       bytes of the needle (its opening quote, the name's first byte, its closing quote),
       then compared in full. glibc's memmem costs ~380 instructions per call here. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Whether a[:n] == b[:n]: a byte loop for the short rest of a key (a libc call
       costs more than the compare), memcmp beyond. */
    static inline int dw_equal(const uint8_t* a, const uint8_t* b, Py_ssize_t n) {
        if (n > 16)
            return memcmp(a, b, (size_t)n) == 0;
        for (Py_ssize_t j = 0; j < n; j++)
            if (a[j] != b[j])
                return 0;
        return 1;
    }

    static inline Py_ssize_t dw_find_key(const uint8_t* p, Py_ssize_t n, const char* key_,
                                         Py_ssize_t k, Py_ssize_t start) {
        const uint8_t* key = (const uint8_t*)key_;
        Py_ssize_t i = start;
        const uint8_t c0 = key[0], c1 = key[1], last = key[k - 1];
    #if defined(__SSE2__)
        const __m128i v0 = _mm_set1_epi8((char)c0), v1 = _mm_set1_epi8((char)c1);
        const __m128i vl = _mm_set1_epi8((char)last);
        for (; i + k - 1 + 16 <= n; i += 16) {
            __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + i)), v0);
            __m128i b = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + i + 1)), v1);
            __m128i c = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + i + k - 1)), vl);
            unsigned int mask = (unsigned int)_mm_movemask_epi8(_mm_and_si128(_mm_and_si128(a, b), c));
            while (mask) {
                Py_ssize_t at = i + __builtin_ctz(mask);
                if (dw_equal(p + at + 2, key + 2, k - 3))
                    return at;
                mask &= mask - 1;
            }
        }
    #endif
        for (; i + k <= n; i++) {
            if (p[i] == c0 && p[i + 1] == c1 && p[i + k - 1] == last
                    && dw_equal(p + i + 2, key + 2, k - 3))
                return i;
        }
        return -1;
    }

    /* Offset of the closing quote of the JSON string opening at p[i], or -1 (cut off).
       A backslash escapes the byte after it. SSE2: 16 bytes per step while neither a
       quote nor a backslash is among them. */
    static inline Py_ssize_t dw_string_end(const uint8_t* p, Py_ssize_t n, Py_ssize_t i) {
        i += 1;
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8(0x5C);
        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + i));
            unsigned int mask = (unsigned int)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)));
            if (mask == 0) {
                i += 16;
                continue;
            }
            i += __builtin_ctz(mask);
            if (p[i] == '"')
                return i;
            i += 2;
        }
    #endif
        while (i < n) {
            if (p[i] == 0x5C)
                i += 2;
            else if (p[i] == '"')
                return i;
            else
                i++;
        }
        return -1;
    }

    /* A seeded 64-bit hash of a short key (a conflation key: a symbol or stream name):
       overlapping 8-byte loads folded by 64x64->128 multiplies up to 32 bytes, XXH64
       above. Keys are compared in full on a hash match, so this only spreads them. */
    static inline uint64_t dw_key_hash(const uint8_t* p, size_t len, uint64_t seed) {
    #if defined(__SIZEOF_INT128__)
        uint64_t a, b;
        __uint128_t m;
        if (len > 32)
            return dw_xxh64(p, len, seed);
        if (len > 16) {
            m = (__uint128_t)(dw_read64(p) ^ seed ^ DW_P3) * (dw_read64(p + 8) ^ DW_P4);
            seed = (uint64_t)m ^ (uint64_t)(m >> 64);
            a = dw_read64(p + len - 16);
            b = dw_read64(p + len - 8);
        } else if (len >= 8) {
            a = dw_read64(p);
            b = dw_read64(p + len - 8);
        } else if (len >= 4) {
            a = dw_read32(p);
            b = dw_read32(p + len - 4);
        } else if (len > 0) {
            a = ((uint64_t)p[0] << 16) | ((uint64_t)p[len >> 1] << 8) | p[len - 1];
            b = 0;
        } else {
            a = b = 0;
        }
        m = (__uint128_t)(a ^ seed ^ DW_P1) * (b ^ (uint64_t)len ^ DW_P2);
        return (uint64_t)m ^ (uint64_t)(m >> 64);
    #else
        return dw_xxh64(p, len, seed);
    #endif
    }

    /* Read the decimal digits at p[i:] into *out (0 <= value <= 2**63 - 1). Returns the
       offset after the last digit (i itself: no digit), or -1 above 2**63 - 1. Eight
       digits per step while eight are there (SWAR, D. Lemire's method), then one by one. */
    static inline Py_ssize_t dw_parse_digits(const uint8_t* p, Py_ssize_t n, Py_ssize_t i,
                                             int64_t* out) {
        uint64_t value = 0, w, chunk;
        while (i + 8 <= n) {
            memcpy(&w, p + i, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            w = __builtin_bswap64(w);
    #endif
            /* all eight bytes '0'..'9'? (high nibble 3, and no carry out when adding 6) */
            if ((w & 0xF0F0F0F0F0F0F0F0ULL) != 0x3030303030303030ULL
                    || ((w + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL)
                        != 0x3030303030303030ULL)
                break;
            w -= 0x3030303030303030ULL;
            w = (w * 10) + (w >> 8);
            chunk = (((w & 0x000000FF000000FFULL) * (100 + (1000000ULL << 32)))
                     + (((w >> 16) & 0x000000FF000000FFULL) * (1 + (10000ULL << 32)))) >> 32;
            if (value > (9223372036854775807ULL - chunk) / 100000000ULL)
                return -1;
            value = value * 100000000ULL + chunk;
            i += 8;
        }
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            uint64_t digit = (uint64_t)(p[i] - '0');
            if (value > (9223372036854775807ULL - digit) / 10)
                return -1;
            value = value * 10 + digit;
            i++;
        }
        *out = (int64_t)value;
        return i;
    }
    """
    Py_ssize_t parse_digits "dw_parse_digits"(const uint8_t* p, Py_ssize_t n, Py_ssize_t i,
                                              int64_t* out) noexcept nogil
    uint64_t xxh64 "dw_xxh64"(const void* data, size_t length, uint64_t seed) noexcept nogil
    uint64_t key_hash "dw_key_hash"(const uint8_t* p, size_t length, uint64_t seed) noexcept nogil
    Py_ssize_t string_end "dw_string_end"(const uint8_t* p, Py_ssize_t n,
                                          Py_ssize_t i) noexcept nogil
    Py_ssize_t find_key "dw_find_key"(const uint8_t* p, Py_ssize_t n, const char* key,
                                      Py_ssize_t k, Py_ssize_t start) noexcept nogil




# JSON bytes the field scanner looks at.
cdef enum:
    CH_TAB = 9
    CH_LF = 10
    CH_CR = 13
    CH_SPACE = 32
    CH_QUOTE = 34
    CH_COMMA = 44
    CH_DOT = 46
    CH_COLON = 58
    CH_UPPER_E = 69
    CH_LBRACKET = 91
    CH_BACKSLASH = 92
    CH_RBRACKET = 93
    CH_LOWER_E = 101
    CH_LBRACE = 123
    CH_RBRACE = 125


def _xxh64(data, uint64_t seed=0):
    """XXH64 of a bytes-like object (the hash of the dedup fallback; for tests)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return xxh64(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)


cdef inline bint _is_ws(uint8_t c) noexcept nogil:
    return c == CH_SPACE or c == CH_TAB or c == CH_LF or c == CH_CR


cdef inline Py_ssize_t _find_field(const uint8_t* p, Py_ssize_t n, const char* key,
                                   Py_ssize_t klen) noexcept nogil:
    """Offset of the value of the first ``"field"`` key in ``p[:n]``, or -1.

    ``key`` is the field name with its quotes. A match is the first occurrence of
    ``key`` whose opening quote is not preceded by a backslash (an escaped quote is
    inside a string), followed by optional whitespace and ``:``. In valid JSON that is
    exactly the first key of that name in document order, at any depth.
    """
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t at, i
    while start < n:
        at = find_key(p, n, key, klen, start)
        if at < 0:
            return -1
        start = at + 1
        if at > 0 and p[at - 1] == CH_BACKSLASH:
            continue
        i = at + klen
        while i < n and _is_ws(p[i]):
            i += 1
        if i < n and p[i] == CH_COLON:
            i += 1
            while i < n and _is_ws(p[i]):
                i += 1
            return i if i < n else -1
    return -1


cdef inline bint _parse_id(const uint8_t* p, Py_ssize_t n, Py_ssize_t i,
                           int64_t* out) noexcept nogil:
    """Read a non-negative integer (bare or quoted) at ``p[i]`` into ``out``.

    False (no id) for a negative, fractional or exponent number, anything but digits,
    an empty or unterminated quoted string, and a value above 2**63 - 1.
    """
    cdef bint quoted = p[i] == CH_QUOTE
    cdef int64_t value = 0
    cdef Py_ssize_t start
    if quoted:
        i += 1
    start = i
    i = parse_digits(p, n, i, &value)
    if i <= start:
        return False    # no digit, or above 2**63 - 1
    if quoted:
        if i >= n or p[i] != CH_QUOTE:
            return False
    elif i < n and (p[i] == CH_DOT or p[i] == CH_LOWER_E or p[i] == CH_UPPER_E):
        return False
    out[0] = value
    return True


cdef inline Py_ssize_t _string_end(const uint8_t* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Offset of the closing quote of the JSON string opening at ``p[i]``, or -1."""
    return string_end(p, n, i)


cdef inline Py_ssize_t _value_end(const uint8_t* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """Offset one past the JSON value starting at ``p[i]``, or -1 if it is cut off.

    A string (escapes skipped), an object or array (balanced brackets; strings inside,
    with any brackets they contain, skipped), or a scalar (up to ``,``, ``}``, ``]``
    or whitespace).
    """
    cdef Py_ssize_t start = i
    cdef Py_ssize_t depth = 0
    cdef uint8_t c = p[i]
    if c == CH_QUOTE:
        i = _string_end(p, n, i)
        return i + 1 if i >= 0 else -1
    if c == CH_LBRACE or c == CH_LBRACKET:
        while i < n:
            c = p[i]
            if c == CH_QUOTE:
                i = _string_end(p, n, i)
                if i < 0:
                    return -1
            elif c == CH_LBRACE or c == CH_LBRACKET:
                depth += 1
            elif c == CH_RBRACE or c == CH_RBRACKET:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n and not (_is_ws(c) or c == CH_COMMA or c == CH_RBRACE or c == CH_RBRACKET):
        i += 1
        if i < n:
            c = p[i]
    return i if i > start else -1


ctypedef struct _Topic:
    uint64_t hash           # xxh64 of name
    int64_t high_water      # highest id delivered
    char* name              # raw bytes of the topic (NULL: a free slot)
    Py_ssize_t length
    Py_ssize_t newer        # recency list (-1: none); ``older`` is also the free-list link
    Py_ssize_t older


ctypedef struct _Pending:
    char* ptr               # borrowed payload (valid until the read ends); NULL: in the arena
    Py_ssize_t offset       # where its copy starts in the arena (ptr NULL)
    Py_ssize_t size
    uint64_t superseded     # earlier messages of its key it replaces (this read)
    int opcode
    bint live               # False once a newer message of its key arrived


ctypedef struct _KeySlot:
    uint64_t hash
    uint64_t generation     # the listener's current generation: in use (else empty)
    Py_ssize_t pending      # index of the key's newest pending message
    Py_ssize_t key_offset   # the key's raw bytes inside that message
    Py_ssize_t key_length


cdef inline uint64_t _nonzero(uint64_t h) noexcept nogil:
    return h if h != 0 else 1     # 0 marks an empty slot of the recent set


cdef _field_key(str field, str name):
    """``"field"`` as UTF-8 bytes, the needle the fast path searches for."""
    if field is None:
        return None
    if not field or '"' in field or "\\" in field or any(ord(c) < 0x20 for c in field):
        raise ValueError(f"{name} must be a non-empty JSON key without quotes, "
                         f"backslashes or control characters")
    return b'"' + PyUnicode_AsUTF8String(field) + b'"'


@cython.auto_pickle(False)
@cython.final
cdef class Deduplicator:
    """Recognises duplicate messages from a cheap key read out of their raw bytes.

    One instance is shared by the :class:`FeedListener` of every redundant connection
    of a pool (all on one event loop thread: no locking). Each listener asks it about
    every data message before a view is made or anything is decoded; a duplicate is
    dropped there (counted in the listener's ``duplicates``), so it never costs a decode.

    The key of a message, first that applies:

    1. ``id_field`` (with ``topic_field``, if given): an **id key** ``(topic, id)``.
       The id is a non-negative integer, bare or quoted (``"t":123``,
       ``"tradeId":"123"``), at most 2**63 - 1; the topic is the raw bytes of a
       JSON string (escapes are not decoded; ``""`` names the one implicit topic when
       ``topic_field`` is None). A message in which either is missing or malformed
       (negative, fractional, too large, a topic that is not a string) has no id key.
    2. ``hash_field``: a **hash key**, the 64-bit XXH64 (seeded per instance) of the
       raw bytes of that field's value: a string (quotes included, escapes skipped), a
       number or literal, or a whole object/array (balanced, strings inside skipped).
    3. ``key_of(view)``, a Python hook, for what the fast path can't read: it returns
       ``(topic, id)`` (an id key), any other hashable (an exact key in a recent set),
       or None (no key). It is given a ``memoryview`` of a copy of the payload (safe to
       keep). If it raises, the message is delivered and ``key_errors`` counted.
    4. With none of the three configured: the hash of the whole payload.

    A message with no key is delivered (``unkeyed``).

    Fields are found in the raw bytes, not parsed: the first occurrence of ``"field"``
    (byte for byte) whose opening quote is not preceded by a backslash, followed by
    optional whitespace and ``:``. For valid JSON that is the first key of that name
    in document order, at any depth: ``{"stream":"s","data":{"t":1}}`` finds ``t``
    inside ``data``; with several objects carrying the key, the first one wins.

    Semantics of :meth:`check`:

    - Id key: duplicate iff ``id <= high_water(topic)``; otherwise the message is
      delivered and becomes the high-water mark. If a high-water mark existed and
      ``id > high_water + 1``, the skipped ids are recorded as a gap
      ``(topic, high_water + 1, id - 1)`` (counted in ``gaps``, queued for
      :meth:`drain_gaps`). Hence, per topic, the delivered ids are strictly increasing
      and, from the first delivered id to the high-water mark, every id is either
      delivered exactly once or inside exactly one reported gap. An id that arrives
      after a higher one was delivered (e.g. one connection lost it, a slower one
      still brings it) is dropped and stays inside its gap.
    - Hash key: duplicate iff the key is among the last ``window`` keys delivered
      (FIFO). Order is not restored and gaps can't be seen; a copy that arrives more
      than ``window`` new keys later is delivered again.

    Memory is bounded: at most ``max_topics`` high-water marks (the least recently
    updated one is evicted, counted in ``topic_evictions``: that topic then starts
    afresh, so an old copy still in flight may be delivered again), and at most
    ``window`` recent hash keys (about 24 bytes each) plus ``window`` hook keys.

    Args:
        id_field: JSON key of a monotonic per-topic id (``"seq"``, ``"t"``, ``"u"``).
        topic_field: JSON key whose string value names the topic (``"topic"``,
            ``"stream"``, ``"s"``); None: one implicit topic, ``""``.
        hash_field: JSON key whose value's raw bytes identify a message (venues whose
            ids are per connection).
        window: how many recent hash keys (and, separately, hook keys) are kept.
        max_topics: how many high-water marks are kept.
        key_of: the Python hook described above.
        max_gaps: how many undrained gaps are queued (older ones are dropped from the
            queue, still counted in ``gaps``).

    Attributes:
        delivered: messages let through (``unkeyed`` ones included).
        duplicates: messages recognised as duplicates (dropped).
        unkeyed: messages delivered because no key could be read.
        gaps: gaps recorded (see :meth:`drain_gaps`).
        key_errors: exceptions raised by ``key_of`` (those messages were delivered).
        last_key_error: ``"Type: message"`` of the latest one (None if none).
        topic_evictions: high-water marks evicted to stay within ``max_topics``.
    """

    cdef readonly str id_field
    cdef readonly str topic_field
    cdef readonly str hash_field
    cdef readonly object key_of
    cdef readonly Py_ssize_t window
    cdef readonly Py_ssize_t max_topics
    cdef readonly uint64_t delivered
    cdef readonly uint64_t duplicates
    cdef readonly uint64_t unkeyed
    cdef readonly uint64_t gaps
    cdef readonly uint64_t key_errors
    cdef readonly uint64_t topic_evictions
    cdef readonly str last_key_error

    cdef bytes _id_key              # b'"seq"' (the needle), or None; keeps the pointers valid
    cdef bytes _topic_key
    cdef bytes _hash_key
    cdef const char* _id_ptr
    cdef const char* _topic_ptr
    cdef const char* _hash_ptr
    cdef Py_ssize_t _id_len         # 0: not configured
    cdef Py_ssize_t _topic_len
    cdef Py_ssize_t _hash_len
    cdef bint _whole                # nothing configured: hash the whole payload
    cdef uint64_t _seed
    cdef object _gap_log

    # high-water marks: slots + open-addressing index (entries hold slot + 1; 0 empty)
    cdef _Topic* _topics
    cdef Py_ssize_t _topics_cap
    cdef Py_ssize_t _topics_used    # slots ever handed out
    cdef Py_ssize_t _topic_count
    cdef Py_ssize_t _free           # free-list head (-1: none)
    cdef Py_ssize_t _newest         # recency list ends (-1: empty)
    cdef Py_ssize_t _oldest
    cdef Py_ssize_t _last_topic     # slot of the latest id key's topic (-1: none)
    cdef Py_ssize_t* _tindex
    cdef Py_ssize_t _tindex_mask

    # recent hash keys: FIFO ring + open-addressing set (0 empty)
    cdef uint64_t* _ring
    cdef Py_ssize_t _ring_cap
    cdef Py_ssize_t _ring_len
    cdef Py_ssize_t _ring_pos       # oldest entry once the ring is full
    cdef uint64_t* _set
    cdef Py_ssize_t _set_mask

    # recent hook keys (exact, Python objects)
    cdef set _py_recent
    cdef object _py_order

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._topics != NULL:
            for i in range(self._topics_used):
                PyMem_Free(self._topics[i].name)
        PyMem_Free(self._topics)
        PyMem_Free(self._tindex)
        PyMem_Free(self._ring)
        PyMem_Free(self._set)

    def __init__(self, *, id_field=None, topic_field=None, hash_field=None,
                 Py_ssize_t window=65536, Py_ssize_t max_topics=100_000, key_of=None,
                 Py_ssize_t max_gaps=1024):
        if window < 1:
            raise ValueError("window must be >= 1")
        if max_topics < 1:
            raise ValueError("max_topics must be >= 1")
        if max_gaps < 1:
            raise ValueError("max_gaps must be >= 1")
        if topic_field is not None and id_field is None:
            raise ValueError("topic_field needs id_field (topics scope id keys only)")
        if key_of is not None and not callable(key_of):
            raise TypeError("key_of must be callable or None")
        if self._topics != NULL or self._ring != NULL:
            raise RuntimeError("Deduplicator.__init__ called twice")
        self._id_key = _field_key(id_field, "id_field")
        self._topic_key = _field_key(topic_field, "topic_field")
        self._hash_key = _field_key(hash_field, "hash_field")
        self.id_field = id_field
        self.topic_field = topic_field
        self.hash_field = hash_field
        self.key_of = key_of
        self.window = window
        self.max_topics = max_topics
        if self._id_key is not None:
            self._id_ptr = PyBytes_AS_STRING(self._id_key)
            self._id_len = PyBytes_GET_SIZE(self._id_key)
        if self._topic_key is not None:
            self._topic_ptr = PyBytes_AS_STRING(self._topic_key)
            self._topic_len = PyBytes_GET_SIZE(self._topic_key)
        if self._hash_key is not None:
            self._hash_ptr = PyBytes_AS_STRING(self._hash_key)
            self._hash_len = PyBytes_GET_SIZE(self._hash_key)
        self._whole = id_field is None and hash_field is None and key_of is None
        self._seed = int.from_bytes(os.urandom(8), "little")
        self._gap_log = deque(maxlen=max_gaps)
        self._free = -1
        self._newest = -1
        self._oldest = -1
        self._last_topic = -1
        self._py_recent = set()
        self._py_order = deque()
        self.last_key_error = None

    # ------------------------------------------------------------------ public API

    def check(self, payload):
        """Whether a message is new: True to deliver it, False for a duplicate.

        Exactly what a listener with ``dedup=self`` does per data message (counters,
        high-water marks and gaps included).

        Args:
            payload: the raw message (any bytes-like object).
        """
        cdef Py_buffer view
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            return self._admit(<const char*>view.buf, view.len) == 1
        finally:
            PyBuffer_Release(&view)

    def high_water(self, str topic):
        """The highest id delivered on ``topic`` (None if it has no mark).

        ``topic`` is matched against the raw bytes of the topic's JSON string as UTF-8;
        ``""`` is the implicit topic (no ``topic_field``).
        """
        cdef bytes name = topic.encode("utf-8", "surrogateescape")
        cdef Py_ssize_t i = self._topic_find(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                                             xxh64(PyBytes_AS_STRING(name),
                                                   <size_t>PyBytes_GET_SIZE(name), self._seed))
        return None if i < 0 else self._topics[i].high_water

    def forget(self, str topic):
        """Drop ``topic``'s high-water mark (after a deliberate unsubscribe).

        Its next message then starts it afresh, with no gap reported for what was
        not subscribed in between. Returns whether there was a mark.
        """
        cdef bytes name = topic.encode("utf-8", "surrogateescape")
        cdef Py_ssize_t i = self._topic_find(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                                             xxh64(PyBytes_AS_STRING(name),
                                                   <size_t>PyBytes_GET_SIZE(name), self._seed))
        if i < 0:
            return False
        self._topic_drop(i)
        return True

    def drain_gaps(self):
        """Take the queued gaps: ``[(topic, first_missing, last_missing), ...]``, oldest first."""
        gaps = list(self._gap_log)
        self._gap_log.clear()
        return gaps

    @property
    def topic_count(self):
        """High-water marks held (at most ``max_topics``)."""
        return self._topic_count

    @property
    def recent_count(self):
        """Recent keys held: hash keys plus hook keys (each at most ``window``)."""
        return self._ring_len + len(self._py_recent)

    # ------------------------------------------------------------------ per message

    cdef int _admit(self, const char* data, Py_ssize_t n) except -1:
        """1: deliver, 0: duplicate. No Python call unless ``key_of`` is used, a
        gap is recorded, or a table grows."""
        cdef const uint8_t* p = <const uint8_t*>data
        cdef Py_ssize_t pos, end
        cdef int64_t ident
        if self._id_len != 0:
            pos = _find_field(p, n, self._id_ptr, self._id_len)
            if pos >= 0 and _parse_id(p, n, pos, &ident):
                if self._topic_len == 0:
                    return self._admit_id(b"", 0, ident)
                pos = _find_field(p, n, self._topic_ptr, self._topic_len)
                if pos >= 0 and p[pos] == CH_QUOTE:
                    end = _string_end(p, n, pos)
                    if end >= 0:
                        return self._admit_id(data + pos + 1, end - pos - 1, ident)
        if self._hash_len != 0:
            pos = _find_field(p, n, self._hash_ptr, self._hash_len)
            if pos >= 0:
                end = _value_end(p, n, pos)
                if end >= 0:
                    return self._admit_hash(xxh64(p + pos, <size_t>(end - pos), self._seed))
        if self.key_of is not None:
            return self._admit_hook(data, n)
        if self._whole:
            return self._admit_hash(xxh64(p, <size_t>n, self._seed))
        self.unkeyed += 1
        self.delivered += 1
        return 1

    cdef int _admit_id(self, const char* name, Py_ssize_t length, int64_t ident) except -1:
        cdef uint64_t h
        cdef int64_t mark
        cdef Py_ssize_t i = self._last_topic
        if i < 0 or self._topics[i].length != length or \
                memcmp(self._topics[i].name, name, length) != 0:
            # not the previous message's topic: hash and look it up
            h = xxh64(name, <size_t>length, self._seed)
            i = self._topic_find(name, length, h)
            if i < 0:
                self._topic_insert(name, length, h, ident)
                self.delivered += 1
                return 1
            self._last_topic = i
        mark = self._topics[i].high_water
        if ident <= mark:
            self.duplicates += 1
            return 0
        if ident > mark + 1:
            self._record_gap(i, mark + 1, ident - 1)
        self._topics[i].high_water = ident
        self._touch(i)
        self.delivered += 1
        return 1

    cdef int _admit_hash(self, uint64_t h) except -1:
        h = _nonzero(h)
        if self._recent_has(h):
            self.duplicates += 1
            return 0
        self._recent_add(h)
        self.delivered += 1
        return 1

    cdef int _admit_hook(self, const char* data, Py_ssize_t n) except -1:
        """The ``key_of`` path (Python by nature): a view of a copy, never of borrowed memory."""
        cdef object key
        cdef bytes name
        cdef int64_t ident
        try:
            key = self.key_of(PyMemoryView_FromObject(PyBytes_FromStringAndSize(data, n)))
            if key is None:
                pass
            elif (type(key) is tuple and len(<tuple>key) == 2 and isinstance(key[0], str)
                    and isinstance(key[1], int) and not isinstance(key[1], bool)):
                name = (<str>key[0]).encode("utf-8", "surrogateescape")
                ident = key[1]
                return self._admit_id(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), ident)
            elif key in self._py_recent:
                self.duplicates += 1
                return 0
            else:
                if len(self._py_order) >= self.window:
                    self._py_recent.discard(self._py_order.popleft())
                self._py_recent.add(key)
                self._py_order.append(key)
                self.delivered += 1
                return 1
        except MemoryError:
            raise
        except Exception as exc:
            self.key_errors += 1
            message = f"{type(exc).__name__}: {exc}"
            self.last_key_error = message if len(message) <= 200 else message[:197] + "..."
        self.unkeyed += 1
        self.delivered += 1
        return 1

    cdef int _record_gap(self, Py_ssize_t i, int64_t first, int64_t last) except -1:
        cdef _Topic* t = &self._topics[i]
        self.gaps += 1
        self._gap_log.append(
            (PyUnicode_DecodeUTF8(t.name, t.length, "surrogateescape"), first, last))
        return 0

    # ------------------------------------------------------------ high-water marks

    cdef Py_ssize_t _topic_find(self, const char* name, Py_ssize_t length,
                                uint64_t h) noexcept:
        cdef Py_ssize_t slot, entry
        cdef _Topic* t
        if self._tindex == NULL:
            return -1
        slot = <Py_ssize_t>(h & <uint64_t>self._tindex_mask)
        while True:
            entry = self._tindex[slot]
            if entry == 0:
                return -1
            t = &self._topics[entry - 1]
            if t.hash == h and t.length == length and memcmp(t.name, name, length) == 0:
                return entry - 1
            slot = (slot + 1) & self._tindex_mask

    cdef void _index_put(self, Py_ssize_t i) noexcept:
        cdef Py_ssize_t slot = <Py_ssize_t>(self._topics[i].hash & <uint64_t>self._tindex_mask)
        while self._tindex[slot] != 0:
            slot = (slot + 1) & self._tindex_mask
        self._tindex[slot] = i + 1

    cdef void _index_remove(self, Py_ssize_t i) noexcept:
        """Remove slot ``i`` from the index (linear probing, backward-shift deletion)."""
        cdef Py_ssize_t mask = self._tindex_mask
        cdef Py_ssize_t hole = <Py_ssize_t>(self._topics[i].hash & <uint64_t>mask)
        cdef Py_ssize_t j, home
        while self._tindex[hole] != i + 1:
            hole = (hole + 1) & mask
        j = (hole + 1) & mask
        while self._tindex[j] != 0:
            home = <Py_ssize_t>(self._topics[self._tindex[j] - 1].hash & <uint64_t>mask)
            # move the entry at j into the hole unless its home lies cyclically in (hole, j]
            if (hole <= j and (home <= hole or home > j)) or (hole > j and home <= hole and home > j):
                self._tindex[hole] = self._tindex[j]
                hole = j
            j = (j + 1) & mask
        self._tindex[hole] = 0

    cdef int _grow_topics(self) except -1:
        cdef Py_ssize_t cap = min(max(2 * self._topics_cap, 16), self.max_topics)
        cdef Py_ssize_t icap = 16
        cdef Py_ssize_t i
        cdef Py_ssize_t* index
        cdef _Topic* grown = <_Topic*>PyMem_Realloc(self._topics, cap * sizeof(_Topic))
        if grown == NULL:
            raise MemoryError()
        self._topics = grown
        self._topics_cap = cap
        while icap < 2 * cap:
            icap *= 2
        if icap - 1 != self._tindex_mask or self._tindex == NULL:
            index = <Py_ssize_t*>PyMem_Calloc(icap, sizeof(Py_ssize_t))
            if index == NULL:
                raise MemoryError()
            PyMem_Free(self._tindex)
            self._tindex = index
            self._tindex_mask = icap - 1
            for i in range(self._topics_used):
                if self._topics[i].name != NULL:
                    self._index_put(i)
        return 0

    cdef int _topic_insert(self, const char* name, Py_ssize_t length, uint64_t h,
                           int64_t mark) except -1:
        cdef Py_ssize_t i
        cdef char* copy = <char*>PyMem_Malloc(length if length > 0 else 1)
        if copy == NULL:
            raise MemoryError()
        if self._free < 0 and self._topics_used == self._topics_cap:
            if self._topics_cap < self.max_topics:
                try:
                    self._grow_topics()
                except MemoryError:
                    PyMem_Free(copy)
                    raise
            else:
                self.topic_evictions += 1
                self._topic_drop(self._oldest)
        if self._free >= 0:
            i = self._free
            self._free = self._topics[i].older
        else:
            i = self._topics_used
            self._topics_used += 1
        memcpy(copy, name, length)
        self._topics[i].hash = h
        self._topics[i].high_water = mark
        self._topics[i].name = copy
        self._topics[i].length = length
        self._topics[i].newer = -1
        self._topics[i].older = -1
        self._index_put(i)
        self._link_newest(i)
        self._topic_count += 1
        return 0

    cdef void _topic_drop(self, Py_ssize_t i) noexcept:
        if self._last_topic == i:
            self._last_topic = -1
        self._index_remove(i)
        self._unlink(i)
        PyMem_Free(self._topics[i].name)
        self._topics[i].name = NULL
        self._topics[i].older = self._free
        self._free = i
        self._topic_count -= 1

    cdef inline void _unlink(self, Py_ssize_t i) noexcept:
        cdef _Topic* t = &self._topics[i]
        if t.newer >= 0:
            self._topics[t.newer].older = t.older
        else:
            self._newest = t.older
        if t.older >= 0:
            self._topics[t.older].newer = t.newer
        else:
            self._oldest = t.newer
        t.newer = -1
        t.older = -1

    cdef inline void _link_newest(self, Py_ssize_t i) noexcept:
        cdef _Topic* t = &self._topics[i]
        t.newer = -1
        t.older = self._newest
        if self._newest >= 0:
            self._topics[self._newest].newer = i
        else:
            self._oldest = i
        self._newest = i

    cdef inline void _touch(self, Py_ssize_t i) noexcept:
        if self._newest != i:
            self._unlink(i)
            self._link_newest(i)

    # ------------------------------------------------------------ recent hash keys

    cdef inline bint _recent_has(self, uint64_t h) noexcept:
        cdef Py_ssize_t slot
        if self._set == NULL:
            return False
        slot = <Py_ssize_t>(h & <uint64_t>self._set_mask)
        while self._set[slot] != 0:
            if self._set[slot] == h:
                return True
            slot = (slot + 1) & self._set_mask
        return False

    cdef void _set_put(self, uint64_t h) noexcept:
        cdef Py_ssize_t slot = <Py_ssize_t>(h & <uint64_t>self._set_mask)
        while self._set[slot] != 0:
            slot = (slot + 1) & self._set_mask
        self._set[slot] = h

    cdef void _set_remove(self, uint64_t h) noexcept:
        """Remove ``h`` (present) from the set (linear probing, backward-shift deletion)."""
        cdef Py_ssize_t mask = self._set_mask
        cdef Py_ssize_t hole = <Py_ssize_t>(h & <uint64_t>mask)
        cdef Py_ssize_t j, home
        while self._set[hole] != h:
            hole = (hole + 1) & mask
        j = (hole + 1) & mask
        while self._set[j] != 0:
            home = <Py_ssize_t>(self._set[j] & <uint64_t>mask)
            if (hole <= j and (home <= hole or home > j)) or (hole > j and home <= hole and home > j):
                self._set[hole] = self._set[j]
                hole = j
            j = (j + 1) & mask
        self._set[hole] = 0

    cdef int _recent_add(self, uint64_t h) except -1:
        cdef Py_ssize_t cap, scap, i
        cdef uint64_t* ring
        cdef uint64_t* table
        if self._ring_len == self.window:
            # full: evict the oldest key (FIFO)
            self._set_remove(self._ring[self._ring_pos])
            self._ring[self._ring_pos] = h
            self._ring_pos += 1
            if self._ring_pos == self.window:
                self._ring_pos = 0
            self._set_put(h)
            return 0
        if self._ring_len == self._ring_cap:
            # grow (the ring only wraps once it holds ``window`` keys)
            cap = min(max(2 * self._ring_cap, 1024), self.window)
            scap = 16
            while scap < 2 * cap:
                scap *= 2
            ring = <uint64_t*>PyMem_Realloc(self._ring, cap * sizeof(uint64_t))
            if ring == NULL:
                raise MemoryError()
            self._ring = ring
            self._ring_cap = cap
            table = <uint64_t*>PyMem_Calloc(scap, sizeof(uint64_t))
            if table == NULL:
                raise MemoryError()
            PyMem_Free(self._set)
            self._set = table
            self._set_mask = scap - 1
            for i in range(self._ring_len):
                self._set_put(self._ring[i])
        self._ring[self._ring_len] = h
        self._ring_len += 1
        self._set_put(h)
        return 0


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
        dedup: a :class:`Deduplicator` shared with the listeners of the other
            redundant connections. Each data message (never an app-level pong or a
            control message) is checked against it before a view is made or anything
            is decoded; a duplicate is dropped there: counted in ``duplicates``, not
            in ``messages``, never decoded nor delivered, but it refreshes
            ``last_data_ns`` (the connection's feed is flowing). ``None`` (the
            default) costs one pointer test per message. May be set at any time.
        conflate_field: turns conflation on, keyed by the raw value of this JSON
            field (e.g. ``"stream"``, ``"topic"``, ``"s"``), found in the raw bytes
            like the :class:`Deduplicator`'s fields (the first ``"field":`` in
            document order; a string's key is its raw bytes, quotes included,
            escapes not decoded).
        conflate_key: turns conflation on, keyed by this hook instead: called with a
            ``memoryview`` of a copy of each data message (safe to keep), it returns
            any hashable key, or ``None`` for a message that is not conflated. An
            exception is recorded (stage ``"conflate"``) and the message delivered
            unconflated.

    Conflation: within one socket read (picows' ``last_in_buffer``; one
    :meth:`feed` call unless ``last_in_buffer=False``, up to :meth:`flush`), a data
    message with a key waits; a newer message with the same key replaces it (the
    older one is counted in :attr:`conflated`, never decoded nor delivered). At the
    end of the read the waiting messages are decoded and delivered in the order of
    their arrival, each one valid for its key's newest state; :attr:`superseded`
    tells how many it replaced. Everything else keeps its order relative to them: a
    data message without a key, a control message, a fragmented message, a control
    frame or a protocol violation first delivers what is waiting. App-level pongs
    and duplicates (``dedup``) are handled as before, without delivering anything.
    Duplicates are dropped before conflation, so a :class:`Deduplicator` still sees
    (and checks the ids of) every message.

    Attributes:
        message_opcode: the opcode of the message being delivered (1 TEXT, 2 BINARY),
            valid during ``decode``/``on_message``/``on_control``; :meth:`reply`
            answers with it by default.
        wire: the object this connection's frames are sent on (a picows
            ``WSTransport`` or a memory wire); ``None`` before ``attach``.
        zero_copy: whether ``decode`` reads single-frame payloads in place in the
            receive buffer (only for ``orjson.loads``, which never keeps its input).
        superseded: while a conflated message is decoded and delivered, how many
            earlier messages of its key (of the same read) it replaced; 0 otherwise.
        frames, messages, bytes_received, control_messages, pongs, decode_errors,
            callback_errors, duplicates, conflated: counters since the connection
            opened (read-only). ``conflated`` counts messages replaced by a newer
            one of their key (never decoded nor delivered, not in ``messages``).
    """

    # --- counters (read by Health; never reset during a connection) ---
    cdef readonly uint64_t frames
    cdef readonly uint64_t messages
    cdef readonly uint64_t bytes_received
    cdef readonly uint64_t control_messages
    cdef readonly uint64_t pongs
    cdef readonly uint64_t decode_errors
    cdef readonly uint64_t callback_errors
    cdef readonly uint64_t duplicates       # data messages dropped by ``dedup``
    cdef readonly uint64_t conflated        # data messages replaced by a newer one of their key
    cdef readonly uint64_t superseded       # of the message being delivered
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
    cdef public Deduplicator dedup

    # --- per-connection state ---
    cdef object _wire
    cdef bint _stamp_next
    cdef int64_t _now
    cdef int _frag_opcode
    cdef int _frag_utf8
    cdef _Payload _frag             # reassembly buffer (None until needed)

    # --- conflation (see the class docstring) ---
    cdef readonly str conflate_field
    cdef readonly object conflate_key
    cdef bytes _conflate_needle     # b'"field"'; keeps _conflate_ptr valid
    cdef const char* _conflate_ptr
    cdef Py_ssize_t _conflate_len   # 0: no fast-path field
    cdef bint _conflating
    cdef bint _flushing
    cdef bint _borrow_ok            # pending payloads may point into the caller's buffer
    cdef bint _utf8_by_decoder      # orjson validates TEXT itself: see _utf8_deferred
    cdef _Pending* _pending         # waiting messages, in arrival order
    cdef Py_ssize_t _pending_count
    cdef Py_ssize_t _pending_cap
    cdef char* _arena               # copies of pending payloads that can't be borrowed
    cdef Py_ssize_t _arena_len
    cdef Py_ssize_t _arena_cap
    cdef _KeySlot* _keys            # open addressing, linear probing, by generation
    cdef Py_ssize_t _keys_mask
    cdef Py_ssize_t _keys_used      # slots of the current generation
    cdef uint64_t _generation
    cdef uint64_t _key_seed
    cdef dict _py_keys              # hook keys -> pending index (this read)

    def __init__(self, on_message, decode=orjson.loads, events=None, *,
                 on_control=None, control_prefixes=None,
                 Py_ssize_t max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 bint validate_utf8=True, int error_policy=ERROR_POLICY_CONTINUE,
                 errors=None, Deduplicator dedup=None, conflate_field=None,
                 conflate_key=None):
        if max_message_size <= 0:
            raise ValueError("max_message_size must be > 0")
        if conflate_field is not None and conflate_key is not None:
            raise ValueError("give conflate_field or conflate_key, not both")
        if conflate_key is not None and not callable(conflate_key):
            raise TypeError("conflate_key must be callable or None")
        self._conflate_needle = _field_key(conflate_field, "conflate_field")
        self.conflate_field = conflate_field
        self.conflate_key = conflate_key
        if self._conflate_needle is not None:
            self._conflate_ptr = PyBytes_AS_STRING(self._conflate_needle)
            self._conflate_len = PyBytes_GET_SIZE(self._conflate_needle)
        self._conflating = conflate_field is not None or conflate_key is not None
        self._py_keys = {} if conflate_key is not None else None
        # a new generation empties the key table (also if __init__ runs again)
        self._generation += 1
        self._keys_used = 0
        self._pending_count = 0
        self._arena_len = 0
        self._key_seed = int.from_bytes(os.urandom(8), "little")
        self._borrow_ok = True
        self._on_message = on_message
        self._decode = decode
        self.zero_copy = decode_keeps_no_reference(decode)
        self._utf8_by_decoder = decode is orjson.loads and on_message is not None
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
        self.dedup = dedup
        self._app_pong = None
        self._app_pong_exact = True
        self._stamp_next = True
        self.close_code_received = 0
        self.close_reason_received = None
        self.close_code_sent = 0
        self.violation = None
        self.closing = False

    def __dealloc__(self):
        PyMem_Free(self._pending)
        PyMem_Free(self._arena)
        PyMem_Free(self._keys)

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
        if not self._conflating:
            self._process(<int>frame.msg_type, frame.payload_ptr, frame.payload_size,
                          frame.fin, rsv)
            return
        # Pending payloads point into picows' receive buffer, which stays put until the
        # read's last frame has been handled (see the module docstring).
        self._borrow_ok = True
        try:
            self._process(<int>frame.msg_type, frame.payload_ptr, frame.payload_size,
                          frame.fin, rsv)
        finally:
            # The batch ends with the read, or before a control frame: picows answers a
            # PING itself (auto-pong) without calling us, so this frame may be the
            # last we see of the read although it is not marked last_in_buffer. A
            # frame not marked last has a complete frame after it: its first byte
            # holds the opcode (bit 3: control).
            if self._pending_count != 0 and (
                    frame.last_in_buffer or frame.tail_size <= 0
                    or ((<const uint8_t*>frame.payload_ptr)[frame.payload_size] & 0x08) != 0):
                self._flush()

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
        """End the connection (called by the transport once closed).

        Conflated messages still waiting (after ``feed(..., last_in_buffer=False)``)
        are delivered first, unless the connection was closing.
        """
        self._flush()
        self._frag_opcode = 0
        if self._frag is not None:
            self._frag.length = 0
        if self._events is not None:
            self._events.on_disconnected()

    def feed(self, int opcode, payload, bint fin=True, int rsv=0, bint last_in_buffer=True):
        """Process one frame, exactly as if picows had parsed it.

        Args:
            opcode: the frame opcode (0 continuation, 1 text, 2 binary, 8 close,
                9 ping, 10 pong).
            payload: the unmasked payload (any bytes-like object).
            fin: the FIN bit.
            rsv: the three RSV bits as an integer (RSV1 = 4, RSV2 = 2, RSV3 = 1).
            last_in_buffer: the frame ends a read (picows' flag of the same name).
                Only conflation looks at it: with ``False`` more frames of the same
                read follow, so a conflated message waits (its payload copied into
                the listener's own buffer) until a frame with ``True`` or
                :meth:`flush`.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self._now = monotonic_ns()
            self.last_payload_addr = <size_t>view.buf
            # the caller's buffer is valid during this call only
            self._borrow_ok = last_in_buffer
            try:
                self._process(opcode, <char*>view.buf, view.len, fin, rsv)
            finally:
                if last_in_buffer and self._pending_count != 0:
                    self._flush()
        finally:
            PyBuffer_Release(&view)

    def flush(self):
        """Deliver the conflated messages waiting now (the end of a read).

        picows' reads end by themselves; :meth:`feed` callers that pass
        ``last_in_buffer=False`` call this (or feed a frame with ``True``) when the
        read ends. A no-op when nothing waits.
        """
        self._flush()

    @property
    def pending(self):
        """Conflated messages waiting for the end of the read (one per key)."""
        cdef Py_ssize_t i, n = 0
        for i in range(self._pending_count):
            if self._pending[i].live:
                n += 1
        return n

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
                if (opcode == OP_TEXT and self.validate_utf8 and not self._utf8_deferred()
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

    cdef inline bint _utf8_deferred(self) noexcept:
        """Whether an unfragmented TEXT message is left to the decoder to validate.

        ``orjson.loads`` rejects any invalid UTF-8 in its input (every non-ASCII byte of
        JSON is inside a string, and orjson validates strings and keys), so checking
        first is work done twice. When it fails, :meth:`_dispatch` checks the bytes and
        closes with 1007 if they are not UTF-8, as RFC 6455 requires. Not deferred when
        a message can reach the user without that decode: no callback (count-only),
        de-duplication or conflation (dropped unseen), an application pong matched by
        prefix. (msgspec's typed decoders skip unknown fields unchecked: not deferred.)
        """
        return (self._utf8_by_decoder and self.dedup is None and not self._conflating
                and (self._app_pong is None or self._app_pong_exact))

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
        if self.dedup is not None and not control and self.dedup._admit(ptr, size) == 0:
            # A copy another connection delivered first: dropped before any view or
            # decode. The feed is flowing, so it counts for the stale clock.
            self.duplicates += 1
            self.last_data_ns = self._now
            return 0
        if self._conflating and not self._flushing:
            if not control and owned is None and self._pend(ptr, size):
                return 0    # waits for the end of the read
            if self._pending_count != 0:
                self._flush()   # what waits arrived first
        return self._dispatch(ptr, size, owned, control)

    cdef int _dispatch(self, char* ptr, Py_ssize_t size, _Payload owned,
                       bint control) except -1:
        """Decode and deliver one message (data, or control when ``control``)."""
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
                    if (owned is None and self.message_opcode == OP_TEXT
                            and self.validate_utf8 and self._utf8_deferred()
                            and utf8_step(UTF8_OK, <const uint8_t*>ptr, size) != UTF8_OK):
                        return self._violate(CLOSE_INVALID_TEXT,
                                             "text message is not valid UTF-8")
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

    # ------------------------------------------------------------------ conflation

    cdef inline char* _pending_bytes(self, Py_ssize_t i) noexcept:
        cdef _Pending* rec = &self._pending[i]
        return rec.ptr if rec.ptr != NULL else self._arena + rec.offset

    cdef int _pend(self, char* ptr, Py_ssize_t size) except -1:
        """Make a keyed data message wait for the end of the read.

        1: it waits (a waiting one of its key, if any, is superseded); 0: it has no
        key (or can't wait) and is delivered now.
        """
        cdef const uint8_t* p = <const uint8_t*>ptr
        cdef Py_ssize_t pos, end, klen, slot, index
        cdef Py_ssize_t prev = -1
        cdef uint64_t h
        cdef _KeySlot* entry
        if not self._borrow_ok and (size > _SHRINK_ABOVE or (
                self._arena_len + size > _ARENA_LIMIT and self._pending_count != 0)):
            if size > _SHRINK_ABOVE:
                return 0    # a large payload is not copied to wait
            self._flush()
        if self._pending_count >= _MAX_PENDING:
            self._flush()
        if self._conflate_len == 0:
            return self._pend_hooked(ptr, size)
        pos = _find_field(p, size, self._conflate_ptr, self._conflate_len)
        if pos < 0:
            return 0
        end = _value_end(p, size, pos)
        if end < 0:
            return 0
        klen = end - pos
        h = key_hash(p + pos, <size_t>klen, self._key_seed)
        if 2 * (self._keys_used + 1) > self._keys_mask + 1:
            self._grow_keys()
        slot = <Py_ssize_t>(h & <uint64_t>self._keys_mask)
        while True:
            entry = &self._keys[slot]
            if entry.generation != self._generation:
                entry.generation = self._generation
                entry.hash = h
                self._keys_used += 1
                break
            if entry.hash == h and entry.key_length == klen and memcmp(
                    self._pending_bytes(entry.pending) + entry.key_offset, p + pos, klen) == 0:
                prev = entry.pending
                break
            slot = (slot + 1) & self._keys_mask
        index = self._append_pending(ptr, size)
        entry = &self._keys[slot]
        entry.pending = index
        entry.key_offset = pos
        entry.key_length = klen
        if prev >= 0:
            self._supersede(prev, index)
        self.last_data_ns = self._now
        return 1

    cdef int _pend_hooked(self, char* ptr, Py_ssize_t size) except -1:
        """:meth:`_pend` with the ``conflate_key`` hook (a Python call per message)."""
        cdef object key
        cdef object prev
        cdef Py_ssize_t index
        try:
            key = self.conflate_key(PyMemoryView_FromObject(PyBytes_FromStringAndSize(ptr, size)))
            if key is None:
                return 0
            prev = self._py_keys.get(key)     # TypeError for an unhashable key
        except MemoryError:
            raise
        except Exception as exc:
            self._handler_error(STAGE_CONFLATE, exc)
            return 0
        index = self._append_pending(ptr, size)
        self._py_keys[key] = index
        if prev is not None:
            self._supersede(<Py_ssize_t>prev, index)
        self.last_data_ns = self._now
        return 1

    cdef inline void _supersede(self, Py_ssize_t prev, Py_ssize_t index) noexcept:
        self._pending[prev].live = False
        self._pending[index].superseded = self._pending[prev].superseded + 1
        self.conflated += 1

    cdef Py_ssize_t _append_pending(self, char* ptr, Py_ssize_t size) except -1:
        """Append a waiting message (borrowed, or copied into the arena); its index."""
        cdef Py_ssize_t cap
        cdef _Pending* grown
        cdef char* arena
        cdef _Pending* rec
        if self._pending_count == self._pending_cap:
            cap = max(64, 2 * self._pending_cap)
            grown = <_Pending*>PyMem_Realloc(self._pending, cap * sizeof(_Pending))
            if grown == NULL:
                raise MemoryError()
            self._pending = grown
            self._pending_cap = cap
        rec = &self._pending[self._pending_count]
        if self._borrow_ok:
            rec.ptr = ptr
            rec.offset = 0
        else:
            if self._arena_len + size > self._arena_cap:
                cap = max(self._arena_len + size, 2 * self._arena_cap, 4096)
                arena = <char*>PyMem_Realloc(self._arena, cap)
                if arena == NULL:
                    raise MemoryError()
                self._arena = arena
                self._arena_cap = cap
            memcpy(self._arena + self._arena_len, ptr, size)
            rec.ptr = NULL
            rec.offset = self._arena_len
            self._arena_len += size
        rec.size = size
        rec.superseded = 0
        rec.opcode = self.message_opcode
        rec.live = True
        self._pending_count += 1
        return self._pending_count - 1

    cdef int _grow_keys(self) except -1:
        """Double the key table, keeping the current generation's keys."""
        cdef Py_ssize_t cap = max(16, 2 * (self._keys_mask + 1))
        cdef Py_ssize_t i, slot
        cdef _KeySlot* old = self._keys
        cdef Py_ssize_t old_cap = self._keys_mask + 1 if old != NULL else 0
        cdef _KeySlot* table = <_KeySlot*>PyMem_Calloc(cap, sizeof(_KeySlot))
        if table == NULL:
            raise MemoryError()
        for i in range(old_cap):
            if old[i].generation == self._generation:
                slot = <Py_ssize_t>(old[i].hash & <uint64_t>(cap - 1))
                while table[slot].generation == self._generation:
                    slot = (slot + 1) & (cap - 1)
                table[slot] = old[i]
        self._keys = table
        self._keys_mask = cap - 1
        PyMem_Free(old)
        return 0

    cdef int _flush(self) except -1:
        """Deliver the waiting messages in arrival order; start a new batch.

        Stops delivering once the connection is closing (the rest are dropped, like
        frames arriving after a close).
        """
        cdef Py_ssize_t i, count
        cdef _Pending* rec
        cdef char* ptr
        cdef Py_ssize_t size
        cdef int opcode = self.message_opcode
        if self._pending_count == 0 or self._flushing:
            return 0
        self._flushing = True
        try:
            count = self._pending_count
            for i in range(count):
                if self.closing:
                    break
                rec = &self._pending[i]
                if not rec.live:
                    continue
                ptr = rec.ptr if rec.ptr != NULL else self._arena + rec.offset
                size = rec.size
                self.message_opcode = rec.opcode
                self.superseded = rec.superseded
                self._dispatch(ptr, size, None, False)
        finally:
            self._pending_count = 0
            self._arena_len = 0
            if self._arena_cap > _SHRINK_ABOVE:
                PyMem_Free(self._arena)
                self._arena = NULL
                self._arena_cap = 0
            self._generation += 1
            self._keys_used = 0
            if self._py_keys:
                self._py_keys.clear()
            self.superseded = 0
            self.message_opcode = opcode
            self._flushing = False
        return 0

    cdef int _control(self, int opcode, char* ptr, Py_ssize_t size, bint fin) except -1:
        cdef int code
        cdef str reason
        if self._pending_count != 0:
            self._flush()   # data that arrived before this control frame
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
        if self._pending_count != 0:
            self._flush()   # data that arrived before the violation
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
