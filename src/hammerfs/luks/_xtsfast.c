/* XTS tweak arithmetic for hammerfs.luks.xts (IEEE 1619 / dm-crypt aes-xts-plain64).
 *
 * Python does the AES itself with two large ECB calls (cryptography, AES-NI).  What is left is
 * cheap per block but hopeless per block in Python or numpy: every 16-byte block j of a sector
 * is XORed with T * x^j, where T = AES_k2(IV) and the multiplication by x is in GF(2^128).
 * This module does exactly that and nothing else, so it needs no crypto library.
 *
 *   xor_tweaks(dst, enc_ivs, sector_size, src=None)
 *
 * dst: writable contiguous buffer, a whole number of sectors.  enc_ivs: the encrypted IV of
 * every sector, 16 bytes each.  With src (same length as dst), dst = src ^ tweaks, else
 * dst ^= tweaks in place (src may be dst itself, but must not partially overlap it).
 * The tweaks are recomputed on every call rather than stored: a shift and an XOR per block
 * are cheaper than writing and re-reading 1 MiB of tweaks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define XTS_BLOCK 16

/* XTS numbers bytes little-endian: byte 0 of the tweak is the lowest coefficient.  memcpy
 * loads compile to single unaligned moves; the swap only exists on big-endian hosts. */
static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void store_le64(unsigned char *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, sizeof v);
}

/* One sector: dst[j] = src[j] ^ T*x^j for every 16-byte block j (src may equal dst). */
static void xor_sector(unsigned char *dst, const unsigned char *src, const unsigned char *iv,
                       size_t sector_size)
{
    uint64_t lo = load_le64(iv), hi = load_le64(iv + 8);
    for (size_t off = 0; off < sector_size; off += XTS_BLOCK) {
        store_le64(dst + off, load_le64(src + off) ^ lo);
        store_le64(dst + off + 8, load_le64(src + off + 8) ^ hi);
        /* T * x: a 128-bit left shift; the bit shifted out is x^128 = x^7 + x^2 + x + 1
         * (0x87).  Branch-free so the loop does not mispredict on random tweaks. */
        uint64_t carry = 0 - (hi >> 63);
        hi = (hi << 1) | (lo >> 63);
        lo = (lo << 1) ^ (carry & 0x87);
    }
}

static PyObject *xor_tweaks(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"dst", "enc_ivs", "sector_size", "src", NULL};
    Py_buffer dst, ivs, src = {0};
    Py_ssize_t sector_size;
    PyObject *result = NULL;
    (void)module;

    /* w* and y* both insist on C-contiguous buffers. */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "w*y*n|y*:xor_tweaks", keywords, &dst, &ivs,
                                     &sector_size, &src))
        return NULL;
    if (sector_size <= 0 || sector_size % XTS_BLOCK) {
        PyErr_Format(PyExc_ValueError, "sector size %zd is not a positive multiple of 16",
                     sector_size);
        goto done;
    }
    if (dst.len % sector_size) {
        PyErr_Format(PyExc_ValueError, "buffer length %zd is not a whole number of %zd-byte "
                     "sectors", dst.len, sector_size);
        goto done;
    }
    Py_ssize_t sectors = dst.len / sector_size;
    if (ivs.len != sectors * XTS_BLOCK) {
        PyErr_Format(PyExc_ValueError, "%zd sectors need %zd bytes of IVs, got %zd", sectors,
                     sectors * XTS_BLOCK, ivs.len);
        goto done;
    }
    if (src.obj != NULL && src.len != dst.len) {
        PyErr_Format(PyExc_ValueError, "source length %zd differs from destination length %zd",
                     src.len, dst.len);
        goto done;
    }
    unsigned char *out = dst.buf;
    const unsigned char *in = src.obj != NULL ? src.buf : dst.buf;
    const unsigned char *iv = ivs.buf;
    /* No Python objects are touched in the loop: let other threads (the store, FUSE, the
     * other XTS lane) run while this one works through a MiB. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < sectors; s++) {
        size_t off = (size_t)s * (size_t)sector_size;
        xor_sector(out + off, in + off, iv + (size_t)s * XTS_BLOCK, (size_t)sector_size);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&dst);
    PyBuffer_Release(&ivs);
    PyBuffer_Release(&src);   /* a no-op when src was not given (obj is NULL) */
    return result;
}

static PyMethodDef methods[] = {
    {"xor_tweaks", (PyCFunction)(void (*)(void))xor_tweaks, METH_VARARGS | METH_KEYWORDS,
     "xor_tweaks(dst, enc_ivs, sector_size, src=None)\n--\n\n"
     "XOR every 16-byte block j of every sector with its XTS tweak T*x^j (T = that sector's\n"
     "16 bytes of enc_ivs): dst ^= tweaks, or dst = src ^ tweaks when src is given."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_xtsfast",
    .m_doc = "Compiled XTS tweak arithmetic (GF(2^128) multiply by x) for hammerfs.luks.xts.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__xtsfast(void)
{
    return PyModule_Create(&module_def);
}
