/* Optional C accelerator for fullduplex.protocol.mask: apply_mask(data, key) -> bytes.
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

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
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
    .m_doc = "C accelerator for WebSocket masking; see fullduplex.protocol.mask.",
    .m_size = 0,
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
