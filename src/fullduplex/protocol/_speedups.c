/* Optional C accelerator for fullduplex.protocol: apply_mask(data, key) -> bytes for
 * fullduplex.protocol.mask, and the frame fast paths read_simple_frame / build_frame for
 * fullduplex.protocol.frames.
 *
 * RFC 6455 5.3: "Octet i of the transformed data ("transformed-octet-i") is the XOR of octet i
 * of the original data ("original-octet-i") with octet at index i modulo 4 of the masking key".
 *
 * setup.py builds this with optional=True: without a compiler the package installs anyway and
 * mask.py falls back to pure Python. Figures below: CPython 3.11, gcc 12 -O3, AMD EPYC, 2 cores.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
 * (bench/frames_bench.py). Anything unusual returns None and goes through the Python parser,
 * which holds every check and error message, so this function can only ever accept less. */
static PyObject *
read_simple_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t len, pos, head, length, end, max_size;
    int require_mask, masked;
    unsigned char b0, b1;
    PyObject *payload, *result = NULL;
    int release = 0;

    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "read_simple_frame() takes exactly 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    require_mask = PyObject_IsTrue(args[2]);
    if (require_mask < 0) {
        return NULL;
    }
    max_size = PyLong_AsSsize_t(args[3]);
    if (max_size == -1 && PyErr_Occurred()) {
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
    if (pos < 0 || len - pos < 2) {
        goto none;
    }
    b0 = buf[pos];
    b1 = buf[pos + 1];
    masked = (b1 & 0x80) != 0;
    /* FIN, no RSV bit, opcode 1 (text) or 2 (binary); masked as the side requires. */
    if ((b0 != 0x81 && b0 != 0x82) || masked != (require_mask != 0)) {
        goto none;
    }
    length = b1 & 0x7F;
    head = 2;
    if (length == 126) {
        if (len - pos < 4) {
            goto none;
        }
        length = ((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3];
        head = 4;
    }
    else if (length == 127) {
        uint64_t n = 0;
        int i;
        if (len - pos < 10) {
            goto none;
        }
        for (i = 0; i < 8; i++) {
            n = (n << 8) | buf[pos + 2 + i];
        }
        if (n > (uint64_t)PY_SSIZE_T_MAX - 14) {
            goto none; /* the Python parser reports it (MSB set, or over any limit) */
        }
        length = (Py_ssize_t)n;
        head = 10;
    }
    if (max_size >= 0 && length > max_size) {
        goto none;
    }
    if (masked) {
        head += 4;
    }
    if (len - pos - head < length) {
        goto none;
    }
    end = pos + head + length;
    if (masked) {
        payload = PyBytes_FromStringAndSize(NULL, length);
        if (payload == NULL) {
            goto done;
        }
        xor_mask(buf + pos + head, (unsigned char *)PyBytes_AS_STRING(payload), length,
                 buf + pos + head - 4);
    }
    else {
        payload = PyBytes_FromStringAndSize((const char *)buf + pos + head, length);
        if (payload == NULL) {
            goto done;
        }
    }
    result = Py_BuildValue("(iNn)", b0 & 0x0F, payload, end);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    if (release) {
        PyBuffer_Release(&view);
    }
    return result;
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

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {"read_simple_frame", (PyCFunction)(void (*)(void))read_simple_frame, METH_FASTCALL,
     read_simple_frame_doc},
    {"build_frame", (PyCFunction)(void (*)(void))build_frame, METH_FASTCALL, build_frame_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot speedups_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    /* No module state at all: safe in every sub-interpreter. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* No shared mutable state: safe without the GIL on free-threaded builds. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fullduplex.protocol._speedups",
    .m_doc = "C accelerator for WebSocket masking and framing; see fullduplex.protocol.mask.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
