/* Optional C accelerator for fullduplex.protocol: apply_mask(data, key) -> bytes for
 * fullduplex.protocol.mask, the frame fast paths read_simple_frame / build_frame for
 * fullduplex.protocol.frames, split_head for fullduplex.protocol.http11, and MessageWaiter for
 * fullduplex.asyncio (what `async for message in ws` awaits).
 *
 * RFC 6455 5.3: "Octet i of the transformed data ("transformed-octet-i") is the XOR of octet i
 * of the original data ("original-octet-i") with octet at index i modulo 4 of the masking key".
 *
 * setup.py builds this with optional=True: without a compiler the package installs anyway and
 * mask.py falls back to pure Python. Figures below: CPython 3.11, gcc 12 -O3, AMD EPYC, 2 cores.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* XOR n bytes of src with the repeating key into dst. Every step below advances i by a multiple
 * of 4, so byte i of a wide key is always key[i % 4]: widening the key never shifts its phase. */
static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n, const unsigned char *key)
{
    Py_ssize_t i = 0;
    uint32_t key32;
    uint64_t key64;

    memcpy(&key32, key, 4);
    key64 = ((uint64_t)key32 << 32) | key32;

#ifdef __SSE2__
    /* 64 bytes per iteration in four independent 16-byte lanes, unaligned loads and stores
     * (as fast as aligned ones on aligned data on any x86-64 since Nehalem). Measured, in-cache
     * payload, best of 7: 64 KiB 0.83 us (79 GB/s) and 1 MiB 17 us (60 GB/s), against 2.0 us and
     * 30 us for the 8-byte loop alone, which gcc does not vectorize even with restrict. An AVX2
     * build (-mavx2, auto-vectorized) measured 1.0 us and 18.6 us: no gain, so no AVX2 path and
     * no runtime CPU dispatch. */
    if (n >= 16) {
        __m128i k = _mm_set1_epi32((int)key32);
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
            _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, k));
            _mm_storeu_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, k));
            _mm_storeu_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, k));
            _mm_storeu_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, k));
        }
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, k));
        }
    }
#endif

    /* Portable path (and the SSE2 tail): 8 bytes at a time. memcpy is how C spells an
     * unaligned load; gcc and clang compile it to one mov. */
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, src + i, 8);
        x ^= key64;
        memcpy(dst + i, &x, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

PyDoc_STRVAR(apply_mask_doc,
"apply_mask(data, mask, /)\n"
"--\n"
"\n"
"Return data XORed with the repeating 4-byte mask (RFC 6455 5.3).\n"
"\n"
"data and mask may be any objects supporting the buffer protocol (bytes,\n"
"bytearray, memoryview). Raises ValueError if mask is not 4 bytes long.");

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "apply_mask() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* Exact bytes, the common case, skip the buffer protocol: a 32-byte payload takes 33 ns
     * against 38 ns through PyObject_GetBuffer/PyBuffer_Release (memoryview or bytearray). */
    if (PyBytes_CheckExact(args[0]) && PyBytes_CheckExact(args[1])) {
        Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
        if (PyBytes_GET_SIZE(args[1]) != 4) {
            PyErr_SetString(PyExc_ValueError, "masking key must be 4 bytes");
            return NULL;
        }
        result = PyBytes_FromStringAndSize(NULL, n);
        if (result != NULL) {
            xor_mask((const unsigned char *)PyBytes_AS_STRING(args[0]),
                     (unsigned char *)PyBytes_AS_STRING(result), n,
                     (const unsigned char *)PyBytes_AS_STRING(args[1]));
        }
        return result;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "masking key must be 4 bytes");
    }
    else {
        result = PyBytes_FromStringAndSize(NULL, data.len);
        if (result != NULL) {
            xor_mask((const unsigned char *)data.buf,
                     (unsigned char *)PyBytes_AS_STRING(result), data.len,
                     (const unsigned char *)mask.buf);
        }
    }
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

/* The header of a whole data message starting at buf[pos]: FIN set, no RSV bit, opcode 1 (text)
 * or 2 (binary), masked exactly when require_mask, at most max_size bytes (max_size < 0: no
 * limit) and complete in buf. Returns the opcode and sets *head (header bytes, masking key
 * included) and *length (payload bytes); returns 0 for anything else, which the caller leaves to
 * the Python parser: it holds every check and error message, so the fast paths can only ever
 * accept less. */
static int
simple_header(const unsigned char *buf, Py_ssize_t len, Py_ssize_t pos, int require_mask,
              Py_ssize_t max_size, Py_ssize_t *head, Py_ssize_t *length)
{
    unsigned char b0, b1;
    int masked;
    Py_ssize_t h, n;

    if (pos < 0 || len - pos < 2) {
        return 0;
    }
    b0 = buf[pos];
    b1 = buf[pos + 1];
    masked = (b1 & 0x80) != 0;
    if ((b0 != 0x81 && b0 != 0x82) || masked != (require_mask != 0)) {
        return 0;
    }
    n = b1 & 0x7F;
    h = 2;
    if (n == 126) {
        if (len - pos < 4) {
            return 0;
        }
        n = ((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3];
        if (n < 126) {
            return 0; /* not minimal (RFC 6455 5.2): the Python parser reports it */
        }
        h = 4;
    }
    else if (n == 127) {
        uint64_t m = 0;
        int i;
        if (len - pos < 10) {
            return 0;
        }
        for (i = 0; i < 8; i++) {
            m = (m << 8) | buf[pos + 2 + i];
        }
        if (m > (uint64_t)PY_SSIZE_T_MAX - 14 || m < 65536) {
            return 0; /* the Python parser reports it (MSB set, over any limit, not minimal) */
        }
        n = (Py_ssize_t)m;
        h = 10;
    }
    if (max_size >= 0 && n > max_size) {
        return 0;
    }
    if (masked) {
        h += 4;
    }
    if (len - pos - h < n) {
        return 0;
    }
    *head = h;
    *length = n;
    return b0 & 0x0F;
}

/* The payload of the frame whose header simple_header read, unmasked, as a new bytes object. */
static PyObject *
simple_payload(const unsigned char *buf, Py_ssize_t pos, int masked, Py_ssize_t head,
               Py_ssize_t length)
{
    PyObject *payload;

    if (!masked) {
        return PyBytes_FromStringAndSize((const char *)buf + pos + head, length);
    }
    payload = PyBytes_FromStringAndSize(NULL, length);
    if (payload != NULL) {
        xor_mask(buf + pos + head, (unsigned char *)PyBytes_AS_STRING(payload), length,
                 buf + pos + head - 4);
    }
    return payload;
}

/* The four arguments shared by read_simple_frame and read_message, after the buffer. */
static int
simple_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name,
            Py_ssize_t *pos, int *require_mask, Py_ssize_t *max_size)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", name, want,
                     nargs);
        return -1;
    }
    *pos = 0;
    if (want == 4) {
        *pos = PyLong_AsSsize_t(args[1]);
        if (*pos == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    *require_mask = PyObject_IsTrue(args[want - 2]);
    if (*require_mask < 0) {
        return -1;
    }
    *max_size = PyLong_AsSsize_t(args[want - 1]);
    if (*max_size == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(read_simple_frame_doc,
"read_simple_frame(buf, pos, require_mask, max_size, /)\n"
"--\n"
"\n"
"Parse the frame starting at buf[pos] if it is a whole data message.\n"
"\n"
"Returns (opcode, payload, end) for a complete text or binary frame with FIN set,\n"
"no RSV bit, masked exactly when require_mask is true and at most max_size bytes\n"
"(max_size < 0: no limit); the payload is unmasked. Returns None for anything\n"
"else (incomplete, control, continuation, fragmented, reserved bits, masking or\n"
"size violations): the caller's general parser decides what that means.");

/* The receive fast path of fullduplex.protocol.frames.FrameParser.next_simple: one call per
 * 32-byte message instead of the Python header parse, the Frame object and apply_mask
 * (bench/frames_bench.py). */
static PyObject *
read_simple_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t len, pos, head, length, max_size;
    int require_mask, opcode;
    PyObject *payload, *result = NULL;
    int release = 0;

    (void)module;
    if (simple_args(args, nargs, 4, "read_simple_frame", &pos, &require_mask, &max_size) < 0) {
        return NULL;
    }
    if (PyBytes_CheckExact(args[0])) {
        buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        len = PyBytes_GET_SIZE(args[0]);
    }
    else {
        if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        release = 1;
        buf = (const unsigned char *)view.buf;
        len = view.len;
    }
    opcode = simple_header(buf, len, pos, require_mask, max_size, &head, &length);
    if (opcode == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    payload = simple_payload(buf, pos, require_mask, head, length);
    if (payload == NULL) {
        goto done;
    }
    /* A tuple filled in place rather than Py_BuildValue("(iNn)"): its format parsing cost ~280
     * instructions per message (callgrind, 32 B listener echo). */
    result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(payload);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, PyLong_FromLong(opcode)); /* small ints: cached, never NULL */
    PyTuple_SET_ITEM(result, 1, payload);
    PyObject *end = PyLong_FromSsize_t(pos + head + length);
    if (end == NULL) {
        Py_CLEAR(result);
        goto done;
    }
    PyTuple_SET_ITEM(result, 2, end);
done:
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}

PyDoc_STRVAR(read_message_doc,
"read_message(data, require_mask, max_size, /)\n"
"--\n"
"\n"
"Return the message if data (bytes) is exactly one whole data message.\n"
"\n"
"For a complete text or binary frame with FIN set, no RSV bit, masked exactly when\n"
"require_mask is true, at most max_size bytes (max_size < 0: no limit) and nothing\n"
"after it, returns the unmasked payload: str for text (strict UTF-8), bytes for\n"
"binary. Returns None for anything else, invalid UTF-8 included: the caller's\n"
"general parser decides what that means.");

/* The receive fast path of fullduplex.protocol.connection.Connection.receive_data for the
 * commonest read: one whole message, nothing buffered before it. No (opcode, payload, end)
 * tuple, no parser state to update, and text is unmasked into a scratch buffer and decoded
 * straight to str, without an intermediate bytes object. */
static PyObject *
read_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *buf;
    Py_ssize_t len, pos, head, length, max_size;
    int require_mask, opcode;
    unsigned char stack[512];
    unsigned char *scratch;
    PyObject *text;

    (void)module;
    if (simple_args(args, nargs, 3, "read_message", &pos, &require_mask, &max_size) < 0) {
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_message() needs bytes");
        return NULL;
    }
    buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    len = PyBytes_GET_SIZE(args[0]);
    opcode = simple_header(buf, len, 0, require_mask, max_size, &head, &length);
    if (opcode == 0 || head + length != len) {
        Py_RETURN_NONE;
    }
    if (opcode == 2) {
        return simple_payload(buf, 0, require_mask, head, length);
    }
    if (!require_mask) {
        text = PyUnicode_DecodeUTF8((const char *)buf + head, length, "strict");
    }
    else {
        scratch = length <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc((size_t)length);
        if (scratch == NULL) {
            return PyErr_NoMemory();
        }
        xor_mask(buf + head, scratch, length, buf + head - 4);
        text = PyUnicode_DecodeUTF8((const char *)scratch, length, "strict");
        if (scratch != stack) {
            PyMem_Free(scratch);
        }
    }
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        /* Left to the Python path, which fails the connection with 1007 and its message. */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return text;
}

PyDoc_STRVAR(build_frame_doc,
"build_frame(first_byte, payload, /)\n"
"--\n"
"\n"
"Return an unmasked frame: first_byte (FIN, RSV bits and opcode), the minimal\n"
"length encoding (RFC 6455 5.2), then payload (any bytes-like object).");

/* The server's send fast path: header and payload written into one new bytes object, against
 * a header built in Python and a concatenation (bench/frames_bench.py). */
static PyObject *
build_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const char *data;
    Py_ssize_t n, head;
    long b0;
    unsigned char *out;
    PyObject *result;
    int release = 0;

    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "build_frame() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    b0 = PyLong_AsLong(args[0]);
    if (b0 == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (b0 < 0 || b0 > 255) {
        PyErr_SetString(PyExc_ValueError, "first_byte must be in range(256)");
        return NULL;
    }
    if (PyBytes_CheckExact(args[1])) {
        data = PyBytes_AS_STRING(args[1]);
        n = PyBytes_GET_SIZE(args[1]);
    }
    else {
        if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        release = 1;
        data = (const char *)view.buf;
        n = view.len;
    }
    head = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    result = PyBytes_FromStringAndSize(NULL, head + n);
    if (result != NULL) {
        out = (unsigned char *)PyBytes_AS_STRING(result);
        out[0] = (unsigned char)b0;
        if (head == 2) {
            out[1] = (unsigned char)n;
        }
        else if (head == 4) {
            out[1] = 126;
            out[2] = (unsigned char)(n >> 8);
            out[3] = (unsigned char)n;
        }
        else {
            int i;
            uint64_t m = (uint64_t)n;
            out[1] = 127;
            for (i = 9; i >= 2; i--) {
                out[i] = (unsigned char)m;
                m >>= 8;
            }
        }
        memcpy(out + head, data, n);
    }
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
}


/* -- Module state ------------------------------------------------------------------------- */

/* Names MessageWaiter looks up and asyncio's objects it uses (imported by the first waiter). */
typedef struct {
    PyObject *str_queue;
    PyObject *str_lost;
    PyObject *str_take_queued;
    PyObject *str_requeue;
    PyObject *str_end_of_messages;
    PyObject *str_create_future;
    PyObject *str_blocking;
    PyObject *str_callbacks;
    PyObject *str_remove_done_callback;
    PyObject *str_add_done_callback;
    PyObject *str_done;
    PyObject *str_set_result;
    PyObject *str_await;
    PyObject *kw_context;
    PyObject *current_task;
    PyObject *current_tasks; /* asyncio's {loop: task} on Python 3.11, else NULL */
} speedups_state;

/* -- PayloadBuffer ------------------------------------------------------------------------ */

PyDoc_STRVAR(payload_buffer_doc,
"PayloadBuffer(size, key, /)\n"
"--\n"
"\n"
"The payload of one large frame, filled as its bytes arrive and unmasked on the way in.\n"
"\n"
"key is the 4-byte masking key, or None for an unmasked frame. write(data, pos)\n"
"copies what fits from data[pos:] and returns the number of bytes taken; take()\n"
"returns the payload as bytes once missing is 0. The bytes object is allocated once,\n"
"at its final size, and is never visible to Python before take().");

/* What FrameParser uses for large frames instead of growing a bytearray and then slicing and
 * unmasking it: one allocation and one pass over the data instead of three or four. It also
 * keeps the heap small enough that glibc stops trimming it after every message: a listener
 * echoing 1 MiB messages took ~870 page faults per message before (bench/README.md). */
typedef struct {
    PyObject_HEAD
    PyObject *data; /* bytes of the final size, filled up to `filled`; NULL once taken */
    Py_ssize_t size;
    Py_ssize_t filled;
    unsigned char key[4];
    int masked;
} PayloadBuffer;

static PyObject *
payload_buffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    PyObject *key;
    PayloadBuffer *self;

    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "PayloadBuffer() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "nO:PayloadBuffer", &size, &key)) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    self = (PayloadBuffer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (key != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(key, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(self);
            return NULL;
        }
        if (view.len != 4) {
            PyBuffer_Release(&view);
            Py_DECREF(self);
            PyErr_SetString(PyExc_ValueError, "masking key must be 4 bytes");
            return NULL;
        }
        memcpy(self->key, view.buf, 4);
        PyBuffer_Release(&view);
        self->masked = 1;
    }
    /* Uninitialised: pages are touched only as data arrives. Never the shared empty or
     * one-byte objects: with a NULL source CPython allocates a new object for any size > 0. */
    self->data = PyBytes_FromStringAndSize(NULL, size);
    if (self->data == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->size = size;
    return (PyObject *)self;
}

static void
payload_buffer_dealloc(PayloadBuffer *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Py_XDECREF(self->data);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* a heap type: its instances hold a reference */
}

static PyObject *
payload_buffer_write(PayloadBuffer *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, n;
    unsigned char *dst;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "write() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the payload was taken already");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }
    n = view.len - pos;
    if (n > self->size - self->filled) {
        n = self->size - self->filled;
    }
    dst = (unsigned char *)PyBytes_AS_STRING(self->data) + self->filled;
    if (self->masked) {
        /* Byte i of the payload is XORed with key[i % 4]: start the key where `filled` is. */
        unsigned char key[4];
        int i;
        for (i = 0; i < 4; i++) {
            key[i] = self->key[(self->filled + i) & 3];
        }
        xor_mask((const unsigned char *)view.buf + pos, dst, n, key);
    }
    else {
        memcpy(dst, (const char *)view.buf + pos, (size_t)n);
    }
    self->filled += n;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
}

static PyObject *
payload_buffer_take(PayloadBuffer *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *data = self->data;

    if (data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the payload was taken already");
        return NULL;
    }
    if (self->filled != self->size) {
        PyErr_Format(PyExc_ValueError, "the payload is incomplete: %zd of %zd bytes",
                     self->filled, self->size);
        return NULL;
    }
    self->data = NULL;
    return data; /* the buffer's reference, handed over */
}

static PyObject *
payload_buffer_missing(PayloadBuffer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->size - self->filled);
}

static PyMethodDef payload_buffer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))payload_buffer_write, METH_FASTCALL,
     "write(data, pos, /)\n--\n\nCopy (unmasking) what fits from data[pos:]; return the count."},
    {"take", (PyCFunction)payload_buffer_take, METH_NOARGS,
     "take($self, /)\n--\n\nReturn the complete payload (once)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef payload_buffer_getset[] = {
    {"missing", (getter)payload_buffer_missing, NULL, "Bytes still to write.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot payload_buffer_slots[] = {
    {Py_tp_new, payload_buffer_new},
    {Py_tp_dealloc, payload_buffer_dealloc},
    {Py_tp_methods, payload_buffer_methods},
    {Py_tp_getset, payload_buffer_getset},
    {Py_tp_doc, (void *)payload_buffer_doc},
    {0, NULL},
};

static PyType_Spec payload_buffer_spec = {
    .name = "fullduplex.protocol._speedups.PayloadBuffer",
    .basicsize = sizeof(PayloadBuffer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = payload_buffer_slots,
};

/* -- MessageWaiter -------------------------------------------------------------------- */

PyDoc_STRVAR(message_waiter_doc,
"MessageWaiter(owner, loop, done, /)\n"
"--\n"
"\n"
"What ``WebSocket.__aiter__`` and ``__anext__`` return: one per connection, awaited again for\n"
"every message, and its own async iterator (``__anext__`` returns itself).\n"
"\n"
"Awaiting it returns the next message: a queued one at once (``owner._take_queued()``), else\n"
"the awaiting task is suspended on a pending asyncio future kept for the next waits, and\n"
"``wake(message)`` hands a message over. When no task is running on the loop, wake() takes the\n"
"task's wake-up off that future and runs it at once, in the task's context, with ``done``\n"
"(a future whose result is None) as its argument: the task steps inside the caller, without a\n"
"future resolved or a handle scheduled. Otherwise the future's result is set, as for any\n"
"future. owner is the WebSocket: its ``_queue``, ``_lost``, ``_take_queued()``,\n"
"``_requeue(message)`` and ``_end_of_messages()`` are what this reads and calls.\n"
"fullduplex.asyncio.waiter.PyMessageWaiter is the same contract in Python.");

enum { W_IDLE, W_WAITING, W_DONE, W_LOST };

typedef struct {
    PyObject_HEAD
    PyObject *owner;  /* the WebSocket (which lets go of its waiter when the connection is lost:
                       * no cycle is left then) */
    PyObject *loop;
    PyObject *done;   /* a completed future: the argument of a wake-up run at once */
    PyObject *future; /* the pending future the task waits on; kept between waits */
    PyObject *waiting; /* future.__await__() when C's (it yields the future again and again) */
    PyObject *result; /* the message handed over (W_DONE) */
    PyTypeObject *owner_type; /* the owner's type when its slots below were found */
    Py_ssize_t queue_offset;  /* where the owner's `_queue` and `_lost` slots are, or 0 */
    Py_ssize_t lost_offset;
    int state;
    int detached;     /* the connection is lost: no future kept once idle */
} MessageWaiter;

/* The offset of a `__slots__` entry of type, or 0 if name is not a plain slot there. */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    Py_ssize_t offset = 0;

    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
            offset = member->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

/* owner.<slot at offset>, a new reference; NULL with an error if unset or not found. */
static PyObject *
owner_slot(MessageWaiter *self, Py_ssize_t offset, PyObject *name)
{
    if (offset != 0 && Py_TYPE(self->owner) == self->owner_type) {
        PyObject *value = *(PyObject **)((char *)self->owner + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(self->owner, name);
}

static speedups_state *
waiter_state(MessageWaiter *self)
{
    return (speedups_state *)PyModule_GetState(PyType_GetModule(Py_TYPE(self)));
}

static PyObject *
message_waiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *owner, *loop, *done;
    MessageWaiter *self;

    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "MessageWaiter() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO:MessageWaiter", &owner, &loop, &done)) {
        return NULL;
    }
    self = PyObject_GC_New(MessageWaiter, type);
    if (self == NULL) {
        return NULL;
    }
    self->owner = Py_NewRef(owner);
    self->loop = Py_NewRef(loop);
    self->done = Py_NewRef(done);
    self->future = NULL;
    self->waiting = NULL;
    self->result = NULL;
    /* Read as slots, not looked up by name each time: ~300 instructions a message. */
    self->owner_type = (PyTypeObject *)Py_NewRef((PyObject *)Py_TYPE(owner));
    {
        speedups_state *st = (speedups_state *)PyModule_GetState(PyType_GetModule(type));
        self->queue_offset = slot_offset(self->owner_type, st->str_queue);
        self->lost_offset = slot_offset(self->owner_type, st->str_lost);
    }
    self->state = W_IDLE;
    self->detached = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
message_waiter_traverse(MessageWaiter *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->owner);
    Py_VISIT(self->loop);
    Py_VISIT(self->done);
    Py_VISIT(self->future);
    Py_VISIT(self->waiting);
    Py_VISIT(self->result);
    Py_VISIT(self->owner_type);
    return 0;
}

static int
message_waiter_clear(MessageWaiter *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->done);
    Py_CLEAR(self->future);
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->result);
    Py_CLEAR(self->owner_type);
    return 0;
}

static void
message_waiter_dealloc(MessageWaiter *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    message_waiter_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* Not waited on again (cancelled with its task, resolved, or the connection lost). */
static void
waiter_drop_future(MessageWaiter *self)
{
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->future);
}

/* Back to idle, the wait over. */
static void
waiter_reset(MessageWaiter *self)
{
    self->state = W_IDLE;
    if (self->detached) {
        waiter_drop_future(self);
    }
}

/* Raise owner._end_of_messages() (StopAsyncIteration or a ConnectionClosed). */
static void
waiter_raise_end(MessageWaiter *self, speedups_state *st)
{
    PyObject *exc;
    if (self->owner == NULL) {
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return;
    }
    exc = PyObject_CallMethodNoArgs(self->owner, st->str_end_of_messages);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

static PySendResult
message_waiter_am_send(MessageWaiter *self, PyObject *arg, PyObject **presult)
{
    speedups_state *st = waiter_state(self);
    PyObject *value;

    (void)arg;
    *presult = NULL;
    switch (self->state) {
    case W_DONE:
        value = self->result;
        self->result = NULL;
        waiter_reset(self);
        *presult = value;
        return PYGEN_RETURN;
    case W_WAITING:
        PyErr_SetString(PyExc_RuntimeError,
                        "recv() is already being awaited by another coroutine");
        return PYGEN_ERROR;
    case W_LOST:
        waiter_raise_end(self, st); /* (before the reset lets go of the owner) */
        waiter_reset(self);
        return PYGEN_ERROR;
    default:
        break;
    }
    /* Idle: a queued message is returned at once, without suspending. */
    if (self->owner == NULL) {
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return PYGEN_ERROR;
    }
    value = owner_slot(self, self->queue_offset, st->str_queue);
    if (value == NULL) {
        return PYGEN_ERROR;
    }
    if (value != Py_None) {
        int queued = PyObject_IsTrue(value);
        Py_DECREF(value);
        if (queued < 0) {
            return PYGEN_ERROR;
        }
        if (queued) {
            value = PyObject_CallMethodNoArgs(self->owner, st->str_take_queued);
            if (value == NULL) {
                return PYGEN_ERROR;
            }
            *presult = value;
            return PYGEN_RETURN;
        }
    }
    else {
        Py_DECREF(value);
    }
    value = owner_slot(self, self->lost_offset, st->str_lost);
    if (value == NULL) {
        return PYGEN_ERROR;
    }
    Py_DECREF(value);
    if (value == Py_True) {
        waiter_raise_end(self, st);
        return PYGEN_ERROR;
    }
    /* Suspend on the pending future, as `await future` does. */
    if (self->future == NULL) {
        self->future = PyObject_CallMethodNoArgs(self->loop, st->str_create_future);
        if (self->future == NULL) {
            return PYGEN_ERROR;
        }
        /* C's future iterator yields its pending future on every send (a Python future's
         * __await__ is a generator, which would not): kept, it sets the future's
         * _asyncio_future_blocking without an attribute lookup (~150 instructions). */
        value = PyObject_CallMethodNoArgs(self->future, st->str_await);
        if (value == NULL) {
            return PYGEN_ERROR;
        }
        if (PyGen_Check(value) || Py_TYPE(value)->tp_as_async == NULL ||
            Py_TYPE(value)->tp_as_async->am_send == NULL) {
            Py_DECREF(value);
        }
        else {
            self->waiting = value;
        }
    }
    if (self->waiting != NULL) {
        PyObject *yielded;
        if (PyIter_Send(self->waiting, Py_None, &yielded) != PYGEN_NEXT) {
            Py_XDECREF(yielded);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "the message future completed");
            }
            return PYGEN_ERROR;
        }
        self->state = W_WAITING;
        *presult = yielded; /* the future */
        return PYGEN_NEXT;
    }
    if (PyObject_SetAttr(self->future, st->str_blocking, Py_True) < 0) {
        return PYGEN_ERROR;
    }
    self->state = W_WAITING;
    *presult = Py_NewRef(self->future);
    return PYGEN_NEXT;
}

static PyObject *
message_waiter_iternext(MessageWaiter *self)
{
    PyObject *result;
    switch (message_waiter_am_send(self, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            /* StopIteration(result), built: a tuple would be unpacked by PyErr_SetObject. */
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
        return NULL;
    default:
        return NULL;
    }
}

static PyObject *
message_waiter_send(MessageWaiter *self, PyObject *arg)
{
    (void)arg;
    return message_waiter_iternext(self);
}

static PyObject *
message_waiter_self(PyObject *self)
{
    return Py_NewRef(self);
}

/* The awaiting coroutine is thrown an exception (a cancellation) or closed: a message handed
 * over but not yet returned goes back to the front of the owner's queue, and the future, which
 * a cancellation cancelled, is not waited on again. */
static int
waiter_abandon(MessageWaiter *self)
{
    speedups_state *st = waiter_state(self);
    PyObject *message = NULL;
    int rc = 0;

    if (self->state == W_DONE) {
        message = self->result;
        self->result = NULL;
    }
    waiter_drop_future(self);
    waiter_reset(self);
    if (message != NULL) {
        if (self->owner != NULL) {
            PyObject *r = PyObject_CallMethodOneArg(self->owner, st->str_requeue, message);
            if (r == NULL) {
                rc = -1;
            }
            Py_XDECREF(r);
        }
        Py_DECREF(message);
    }
    return rc;
}

static PyObject *
message_waiter_throw(MessageWaiter *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *typ, *val = NULL, *tb = NULL;

    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return NULL;
    }
    typ = args[0];
    if (nargs > 1 && args[1] != Py_None) {
        val = args[1];
    }
    if (nargs > 2 && args[2] != Py_None) {
        tb = args[2];
    }
    if (waiter_abandon(self) < 0) {
        return NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        PyObject *t = (PyObject *)Py_TYPE(typ);
        Py_INCREF(t);
        Py_INCREF(typ);
        if (tb != NULL) {
            Py_INCREF(tb);
        }
        else {
            tb = PyException_GetTraceback(typ);
        }
        PyErr_Restore(t, typ, tb);
    }
    else if (PyExceptionClass_Check(typ)) {
        Py_INCREF(typ);
        Py_XINCREF(val);
        Py_XINCREF(tb);
        PyErr_NormalizeException(&typ, &val, &tb);
        PyErr_Restore(typ, val, tb);
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
    }
    return NULL;
}

static PyObject *
message_waiter_close(MessageWaiter *self, PyObject *Py_UNUSED(ignored))
{
    if (waiter_abandon(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Resolve the future: its callbacks are scheduled by the loop, as for any future. Then a new
 * one for the next wait (a resolved future cannot wait again). */
static int
waiter_resolve(MessageWaiter *self, speedups_state *st)
{
    PyObject *future = self->future, *r;
    int done;

    self->future = NULL;
    Py_CLEAR(self->waiting);
    if (future == NULL) {
        return 0;
    }
    r = PyObject_CallMethodNoArgs(future, st->str_done);
    if (r == NULL) {
        Py_DECREF(future);
        return -1;
    }
    done = r == Py_True;
    Py_DECREF(r);
    if (!done) { /* (cancelled with its task: the task's cancellation wakes it) */
        r = PyObject_CallMethodOneArg(future, st->str_set_result, Py_None);
        if (r == NULL) {
            Py_DECREF(future);
            return -1;
        }
        Py_DECREF(r);
    }
    Py_DECREF(future);
    return 0;
}

/* The awaiting task's wake-up, taken off the future, run at once (see the type's doc).
 * Returns 1 if it ran, 0 if it cannot run at once (resolve the future instead), -1 on error. */
static int
waiter_step_now(MessageWaiter *self, speedups_state *st, PyObject *callbacks)
{
    PyObject *entry, *callback, *context, *running, *r;

    if (!PyList_CheckExact(callbacks) || PyList_GET_SIZE(callbacks) != 1) {
        return 0;
    }
    entry = PyList_GET_ITEM(callbacks, 0);
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
        return 0;
    }
    callback = PyTuple_GET_ITEM(entry, 0);
    context = PyTuple_GET_ITEM(entry, 1);
    if (!PyContext_CheckExact(context)) {
        return 0;
    }
    if (st->current_tasks != NULL) {
        running = PyDict_GetItemWithError(st->current_tasks, self->loop); /* borrowed */
        if (running == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    else {
        running = PyObject_CallOneArg(st->current_task, self->loop);
        if (running == NULL) {
            return -1;
        }
        Py_DECREF(running);
        if (running == Py_None) {
            running = NULL;
        }
    }
    if (running != NULL) {
        return 0; /* a task runs (this is called from one): the loop wakes the other */
    }
    Py_INCREF(callback);
    Py_INCREF(context);
    r = PyObject_CallMethodOneArg(self->future, st->str_remove_done_callback, callback);
    if (r == NULL) {
        goto fail;
    }
    Py_DECREF(r);
    if (PyContext_Enter(context) < 0) {
        /* Entered already (we are inside it): put the wake-up back and resolve instead. */
        PyErr_Clear();
        PyObject *stack[3] = {self->future, callback, context};
        r = PyObject_VectorcallMethod(st->str_add_done_callback, stack,
                                      2 | PY_VECTORCALL_ARGUMENTS_OFFSET, st->kw_context);
        Py_DECREF(callback);
        Py_DECREF(context);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        return 0;
    }
    r = PyObject_CallOneArg(callback, self->done);
    PyContext_Exit(context);
    Py_DECREF(callback);
    Py_DECREF(context);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 1;
fail:
    Py_DECREF(callback);
    Py_DECREF(context);
    return -1;
}

static PyObject *
message_waiter_wake(MessageWaiter *self, PyObject *message)
{
    speedups_state *st;
    PyObject *callbacks;
    int rc;

    if (self->state != W_WAITING || self->future == NULL) {
        Py_RETURN_FALSE;
    }
    st = waiter_state(self);
    /* The task's wake-up; None when no task waits (cancelled, or driven by hand). */
    callbacks = PyObject_GetAttr(self->future, st->str_callbacks);
    if (callbacks == NULL) {
        return NULL;
    }
    if (callbacks == Py_None) {
        Py_DECREF(callbacks);
        Py_RETURN_FALSE;
    }
    self->state = W_DONE;
    Py_XSETREF(self->result, Py_NewRef(message));
    Py_INCREF(self); /* the task may drop its references while it runs */
    rc = waiter_step_now(self, st, callbacks);
    Py_DECREF(callbacks);
    if (rc == 0) {
        rc = waiter_resolve(self, st);
    }
    Py_DECREF(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
message_waiter_lose(MessageWaiter *self, PyObject *Py_UNUSED(ignored))
{
    self->detached = 1;
    if (self->state == W_WAITING) {
        self->state = W_LOST;
        if (waiter_resolve(self, waiter_state(self)) < 0) {
            return NULL;
        }
    }
    else if (self->state == W_IDLE) {
        waiter_drop_future(self);
    }
    Py_RETURN_NONE;
}

static PyObject *
message_waiter_get_busy(MessageWaiter *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->state != W_IDLE);
}

static PyMethodDef message_waiter_methods[] = {
    {"wake", (PyCFunction)message_waiter_wake, METH_O,
     "wake($self, message, /)\n--\n\nHand message to the awaiting task; False if none waits."},
    {"lose", (PyCFunction)message_waiter_lose, METH_NOARGS,
     "lose($self, /)\n--\n\nThe connection is lost: a wait ends with the end of messages."},
    {"send", (PyCFunction)message_waiter_send, METH_O,
     "send($self, value, /)\n--\n\nResume: the message (StopIteration), or the future."},
    {"throw", (PyCFunction)(void (*)(void))message_waiter_throw, METH_FASTCALL,
     "throw($self, typ, val=None, tb=None, /)\n--\n\nAbandon the wait, then raise."},
    {"close", (PyCFunction)message_waiter_close, METH_NOARGS,
     "close($self, /)\n--\n\nAbandon the wait (a message handed over is requeued)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef message_waiter_getset[] = {
    {"busy", (getter)message_waiter_get_busy, NULL,
     "True while awaited, or holding what the awaiting task has not taken yet.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot message_waiter_slots[] = {
    {Py_tp_new, message_waiter_new},
    {Py_tp_dealloc, message_waiter_dealloc},
    {Py_tp_traverse, message_waiter_traverse},
    {Py_tp_clear, message_waiter_clear},
    {Py_tp_methods, message_waiter_methods},
    {Py_tp_getset, message_waiter_getset},
    {Py_tp_iter, message_waiter_self},
    {Py_tp_iternext, message_waiter_iternext},
    /* Its own async iterator: `async for` over a WebSocket gets the next awaitable from this
     * slot, without a Python call per message. */
    {Py_am_aiter, message_waiter_self},
    {Py_am_anext, message_waiter_self},
    {Py_am_await, message_waiter_self},
    {Py_am_send, message_waiter_am_send},
    {Py_tp_doc, (void *)message_waiter_doc},
    {0, NULL},
};

static PyType_Spec message_waiter_spec = {
    .name = "fullduplex.protocol._speedups.MessageWaiter",
    .basicsize = sizeof(MessageWaiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = message_waiter_slots,
};

static int
speedups_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &payload_buffer_spec, NULL);
    int rc;

    if (type == NULL) {
        return -1;
    }
    rc = PyModule_AddObjectRef(module, "PayloadBuffer", type);
    Py_DECREF(type);
    if (rc < 0) {
        return rc;
    }
    type = PyType_FromModuleAndSpec(module, &message_waiter_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    rc = PyModule_AddObjectRef(module, "MessageWaiter", type);
    Py_DECREF(type);
    if (rc < 0) {
        return rc;
    }
    {
        speedups_state *st = (speedups_state *)PyModule_GetState(module);
        st->str_queue = PyUnicode_InternFromString("_queue");
        st->str_lost = PyUnicode_InternFromString("_lost");
        st->str_take_queued = PyUnicode_InternFromString("_take_queued");
        st->str_requeue = PyUnicode_InternFromString("_requeue");
        st->str_end_of_messages = PyUnicode_InternFromString("_end_of_messages");
        st->str_create_future = PyUnicode_InternFromString("create_future");
        st->str_blocking = PyUnicode_InternFromString("_asyncio_future_blocking");
        st->str_callbacks = PyUnicode_InternFromString("_callbacks");
        st->str_remove_done_callback = PyUnicode_InternFromString("remove_done_callback");
        st->str_add_done_callback = PyUnicode_InternFromString("add_done_callback");
        st->str_done = PyUnicode_InternFromString("done");
        st->str_set_result = PyUnicode_InternFromString("set_result");
        st->str_await = PyUnicode_InternFromString("__await__");
        st->kw_context = Py_BuildValue("(s)", "context");
        if (st->str_queue == NULL || st->str_lost == NULL || st->str_take_queued == NULL ||
            st->str_requeue == NULL || st->str_end_of_messages == NULL ||
            st->str_create_future == NULL || st->str_blocking == NULL ||
            st->str_callbacks == NULL || st->str_remove_done_callback == NULL ||
            st->str_add_done_callback == NULL || st->str_done == NULL ||
            st->str_set_result == NULL || st->str_await == NULL || st->kw_context == NULL) {
            return -1;
        }
        /* asyncio is loaded already: importing fullduplex imports its asyncio layer. */
        PyObject *asyncio = PyImport_ImportModule("asyncio");
        if (asyncio == NULL) {
            return -1;
        }
        st->current_task = PyObject_GetAttrString(asyncio, "current_task");
        Py_DECREF(asyncio);
        if (st->current_task == NULL) {
            return -1;
        }
        /* Python 3.11's current_task() is a Python function (~1.2k instructions a call):
         * read the dict it reads instead. From 3.12 on it is C, and the dict may be gone. */
        if (!PyCFunction_Check(st->current_task)) {
            PyObject *tasks = PyImport_ImportModule("asyncio.tasks");
            if (tasks == NULL) {
                return -1;
            }
            st->current_tasks = PyObject_GetAttrString(tasks, "_current_tasks");
            Py_DECREF(tasks);
            if (st->current_tasks == NULL) {
                PyErr_Clear();
            }
            else if (!PyDict_CheckExact(st->current_tasks)) {
                Py_CLEAR(st->current_tasks);
            }
        }
    }
    return 0;
}

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    speedups_state *st = (speedups_state *)PyModule_GetState(module);
    Py_VISIT(st->current_task);
    Py_VISIT(st->current_tasks);
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    speedups_state *st = (speedups_state *)PyModule_GetState(module);
    Py_CLEAR(st->str_queue);
    Py_CLEAR(st->str_lost);
    Py_CLEAR(st->str_take_queued);
    Py_CLEAR(st->str_requeue);
    Py_CLEAR(st->str_end_of_messages);
    Py_CLEAR(st->str_create_future);
    Py_CLEAR(st->str_blocking);
    Py_CLEAR(st->str_callbacks);
    Py_CLEAR(st->str_remove_done_callback);
    Py_CLEAR(st->str_add_done_callback);
    Py_CLEAR(st->str_done);
    Py_CLEAR(st->str_set_result);
    Py_CLEAR(st->str_await);
    Py_CLEAR(st->kw_context);
    Py_CLEAR(st->current_task);
    Py_CLEAR(st->current_tasks);
    return 0;
}

static void
speedups_free(void *module)
{
    speedups_clear((PyObject *)module);
}

/* -- HTTP heads ------------------------------------------------------------------------ */

PyDoc_STRVAR(split_head_doc,
"split_head(head, /) -> (fields, hosts)\n\n"
"The header fields of an HTTP message head that llhttp accepted: lines end at CRLF; CR and\n"
"LF before the start line are skipped; the fields are the lines after the start line up to\n"
"the first empty one (or the end), each split at its first colon into a name and a value\n"
"without spaces and tabs at either end, both decoded as latin-1. hosts counts the fields\n"
"named Host in any case. fullduplex.protocol.http11._split_head is the same in Python.");

static int
is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* The next CRLF at or after p, or end. */
static const unsigned char *
find_crlf(const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        const unsigned char *cr = memchr(p, '\r', (size_t)(end - p));
        if (cr == NULL || cr + 1 >= end) {
            return end;
        }
        if (cr[1] == '\n') {
            return cr;
        }
        p = cr + 1;
    }
    return end;
}

static PyObject *
split_head(PyObject *module, PyObject *head)
{
    Py_buffer view;
    const unsigned char *p, *end, *eol;
    PyObject *fields = NULL, *result = NULL;
    Py_ssize_t hosts = 0;

    if (PyObject_GetBuffer(head, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    p = (const unsigned char *)view.buf;
    end = p + view.len;
    fields = PyList_New(0);
    if (fields == NULL) {
        goto done;
    }
    while (p < end && (*p == '\r' || *p == '\n')) {
        p++;
    }
    eol = find_crlf(p, end); /* the start line */
    p = eol < end ? eol + 2 : end;
    while (p < end) {
        const unsigned char *colon, *name_end, *value, *value_end;
        PyObject *name_obj, *value_obj, *pair;
        int rc;

        eol = find_crlf(p, end);
        if (eol == p) {
            break; /* the empty line that ends the head */
        }
        colon = memchr(p, ':', (size_t)(eol - p));
        name_end = colon != NULL ? colon : eol;
        value = colon != NULL ? colon + 1 : eol;
        value_end = eol;
        while (value < value_end && is_ows(*value)) {
            value++;
        }
        while (value_end > value && is_ows(value_end[-1])) {
            value_end--;
        }
        if (name_end - p == 4 && (p[0] | 0x20) == 'h' && (p[1] | 0x20) == 'o' &&
            (p[2] | 0x20) == 's' && (p[3] | 0x20) == 't') {
            hosts++;
        }
        name_obj = PyUnicode_DecodeLatin1((const char *)p, name_end - p, NULL);
        if (name_obj == NULL) {
            goto done;
        }
        value_obj = PyUnicode_DecodeLatin1((const char *)value, value_end - value, NULL);
        if (value_obj == NULL) {
            Py_DECREF(name_obj);
            goto done;
        }
        pair = PyTuple_Pack(2, name_obj, value_obj);
        Py_DECREF(name_obj);
        Py_DECREF(value_obj);
        if (pair == NULL) {
            goto done;
        }
        rc = PyList_Append(fields, pair);
        Py_DECREF(pair);
        if (rc < 0) {
            goto done;
        }
        p = eol < end ? eol + 2 : end;
    }
    result = Py_BuildValue("(On)", fields, hosts);
done:
    Py_XDECREF(fields);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(index_fields_doc,
"index_fields(pairs, /) -> dict\n\n"
"The values of (name, value) pairs by lowercased name, in order: {name.lower(): [value,\n"
"...]}. fullduplex.protocol.http11.index_fields_python is the same in Python.");

/* name.lower() for a str of ASCII characters (every field name a parser accepted: a token);
 * other strings through str.lower(). */
static PyObject *
lower_name(PyObject *name)
{
    Py_ssize_t i, n;
    const Py_UCS1 *src;
    Py_UCS1 *dst;
    PyObject *lowered;

    if (!PyUnicode_IS_ASCII(name)) {
        return PyObject_CallMethod(name, "lower", NULL);
    }
    n = PyUnicode_GET_LENGTH(name);
    src = PyUnicode_1BYTE_DATA(name);
    for (i = 0; i < n; i++) {
        if (src[i] >= 'A' && src[i] <= 'Z') {
            break;
        }
    }
    if (i == n) {
        Py_INCREF(name); /* already lowercase */
        return name;
    }
    lowered = PyUnicode_New(n, 127);
    if (lowered == NULL) {
        return NULL;
    }
    dst = PyUnicode_1BYTE_DATA(lowered);
    for (i = 0; i < n; i++) {
        dst[i] = (src[i] >= 'A' && src[i] <= 'Z') ? (Py_UCS1)(src[i] + 32) : src[i];
    }
    return lowered;
}

static PyObject *
index_fields(PyObject *module, PyObject *pairs)
{
    PyObject *seq, *index;
    Py_ssize_t i, n;

    seq = PySequence_Fast(pairs, "index_fields() needs a sequence of (name, value) pairs");
    if (seq == NULL) {
        return NULL;
    }
    index = PyDict_New();
    if (index == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *name, *value, *key, *values;

        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
            PyErr_SetString(PyExc_TypeError, "index_fields() needs (str, value) pairs");
            goto error;
        }
        name = PyTuple_GET_ITEM(pair, 0);
        value = PyTuple_GET_ITEM(pair, 1);
        key = lower_name(name);
        if (key == NULL) {
            goto error;
        }
        values = PyDict_GetItemWithError(index, key); /* borrowed */
        if (values != NULL) {
            int rc = PyList_Append(values, value);
            Py_DECREF(key);
            if (rc < 0) {
                goto error;
            }
            continue;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            goto error;
        }
        values = PyList_New(1);
        if (values == NULL) {
            Py_DECREF(key);
            goto error;
        }
        Py_INCREF(value);
        PyList_SET_ITEM(values, 0, value);
        if (PyDict_SetItem(index, key, values) < 0) {
            Py_DECREF(key);
            Py_DECREF(values);
            goto error;
        }
        Py_DECREF(key);
        Py_DECREF(values);
    }
    Py_DECREF(seq);
    return index;
error:
    Py_DECREF(seq);
    Py_DECREF(index);
    return NULL;
}

PyDoc_STRVAR(share_fields_doc,
"share_fields(pairs, table, names, limit, /) -> None\n\n"
"Replace each (name, value) pair of the list pairs by an equal one kept in the dict table;\n"
"a pair not in it enters it when its lowercased name is in names and the table has fewer\n"
"than limit entries. fullduplex.protocol.http11.Headers.share in C.");

static PyObject *
share_fields(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pairs, *table, *names;
    Py_ssize_t limit, i;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "share_fields() takes 4 arguments");
        return NULL;
    }
    pairs = args[0];
    table = args[1];
    names = args[2];
    if (!PyList_Check(pairs) || !PyDict_Check(table)) {
        PyErr_SetString(PyExc_TypeError, "share_fields() needs a list and a dict");
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (i = 0; i < PyList_GET_SIZE(pairs); i++) {
        PyObject *pair = PyList_GET_ITEM(pairs, i); /* borrowed */
        PyObject *shared = PyDict_GetItemWithError(table, pair); /* borrowed */

        if (shared == NULL) {
            PyObject *key;
            int known;

            if (PyErr_Occurred()) {
                return NULL;
            }
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
                PyErr_SetString(PyExc_TypeError, "share_fields() needs (str, value) pairs");
                return NULL;
            }
            key = lower_name(PyTuple_GET_ITEM(pair, 0));
            if (key == NULL) {
                return NULL;
            }
            known = PySequence_Contains(names, key);
            Py_DECREF(key);
            if (known < 0) {
                return NULL;
            }
            if (!known || PyDict_GET_SIZE(table) >= limit) {
                continue;
            }
            if (PyDict_SetItem(table, pair, pair) < 0) {
                return NULL;
            }
            continue; /* the pair itself is the shared copy now */
        }
        if (shared != pair) {
            Py_INCREF(shared);
            PyList_SET_ITEM(pairs, i, shared);
            Py_DECREF(pair);
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {"read_simple_frame", (PyCFunction)(void (*)(void))read_simple_frame, METH_FASTCALL,
     read_simple_frame_doc},
    {"read_message", (PyCFunction)(void (*)(void))read_message, METH_FASTCALL,
     read_message_doc},
    {"build_frame", (PyCFunction)(void (*)(void))build_frame, METH_FASTCALL, build_frame_doc},
    {"split_head", (PyCFunction)split_head, METH_O, split_head_doc},
    {"index_fields", (PyCFunction)index_fields, METH_O, index_fields_doc},
    {"share_fields", (PyCFunction)(void (*)(void))share_fields, METH_FASTCALL,
     share_fields_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* State per module object (MessageWaiter's names): safe in every sub-interpreter. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* No shared mutable state (the module's is written once, by exec): safe without the GIL
     * on free-threaded builds. A MessageWaiter is used from its event loop's thread. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fullduplex.protocol._speedups",
    .m_doc = "C accelerator for WebSocket masking and framing, HTTP heads and the asyncio "
             "layer's message waiter; see fullduplex.protocol.mask.",
    .m_size = sizeof(speedups_state),
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
