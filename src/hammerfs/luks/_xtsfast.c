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
 *
 *   xts_crypt(key, dst, src, first_iv, sector_size, iv_step, decrypt)
 *
 * The whole of aes-xts-plain64 over whole sectors, the GIL released (concurrent readers
 * decrypt in parallel): the same algorithm as xts.py's lanes (ECB of the IVs with key 2, the
 * tweak XOR, ECB of the data with key 1, the tweak XOR), with libcrypto's AES-ECB (AES-NI),
 * in 64 KiB pieces that stay in the cache.  (EVP's own aes-xts needs one init per sector,
 * which costs more than the AES.)  key: 32 or 64 bytes (AES-128/256-XTS); sector s uses the
 * IV first_iv + s * iv_step (mod 2^64, little-endian, upper half zero).  src and dst have
 * the same length (a whole number of sectors up to 64 KiB each) and may be the same buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

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

#define XTS_CHUNK (64 * 1024)  /* bytes per pass: the three passes stay in the L2 cache */

/* One chunk of whole sectors: the IVs through AES_k2 (ECB), dst = src ^ tweaks, AES_k1
 * over dst in place (ECB: AES-NI pipelines it), dst ^= tweaks.  0 on an OpenSSL failure. */
static int xts_chunk(EVP_CIPHER_CTX *data_ctx, EVP_CIPHER_CTX *tweak_ctx, unsigned char *ivs,
                     unsigned char *dst, const unsigned char *src, size_t len,
                     size_t sector_size, uint64_t iv, uint64_t iv_step)
{
    size_t sectors = len / sector_size;
    int outl = 0;
    memset(ivs, 0, sectors * XTS_BLOCK);
    for (size_t s = 0; s < sectors; s++)
        store_le64(ivs + s * XTS_BLOCK, iv + (uint64_t)s * iv_step);
    if (!EVP_CipherUpdate(tweak_ctx, ivs, &outl, ivs, (int)(sectors * XTS_BLOCK)))
        return 0;
    for (size_t s = 0; s < sectors; s++)
        xor_sector(dst + s * sector_size, src + s * sector_size, ivs + s * XTS_BLOCK,
                   sector_size);
    if (!EVP_CipherUpdate(data_ctx, dst, &outl, dst, (int)len) || (size_t)outl != len)
        return 0;
    for (size_t s = 0; s < sectors; s++)
        xor_sector(dst + s * sector_size, dst + s * sector_size, ivs + s * XTS_BLOCK,
                   sector_size);
    return 1;
}

static PyObject *xts_crypt(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"key", "dst", "src", "first_iv", "sector_size", "iv_step",
                               "decrypt", NULL};
    Py_buffer key, dst, src;
    unsigned long long first_iv, iv_step;
    Py_ssize_t sector_size;
    int decrypt, failed = 0;
    PyObject *result = NULL;
    (void)module;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*w*y*KnKp:xts_crypt", keywords, &key,
                                     &dst, &src, &first_iv, &sector_size, &iv_step, &decrypt))
        return NULL;
    const EVP_CIPHER *ecb = key.len == 32 ? EVP_aes_128_ecb()
                          : key.len == 64 ? EVP_aes_256_ecb() : NULL;
    if (ecb == NULL) {
        PyErr_Format(PyExc_ValueError, "aes-xts key of %zd bytes (32 or 64)", key.len);
        goto done;
    }
    if (sector_size <= 0 || sector_size % XTS_BLOCK || sector_size > XTS_CHUNK) {
        PyErr_Format(PyExc_ValueError, "sector size %zd is not a multiple of 16 up to %d",
                     sector_size, XTS_CHUNK);
        goto done;
    }
    if (dst.len != src.len || dst.len % sector_size) {
        PyErr_Format(PyExc_ValueError, "%zd bytes into %zd: not the same whole number of "
                     "%zd-byte sectors", src.len, dst.len, sector_size);
        goto done;
    }
    const unsigned char *in = src.buf;
    unsigned char *out = dst.buf;
    const unsigned char *k = key.buf;
    size_t half = (size_t)key.len / 2, total = (size_t)dst.len, ss = (size_t)sector_size;
    size_t chunk = XTS_CHUNK / ss * ss;
    Py_BEGIN_ALLOW_THREADS
    /* Contexts per call (they are not for concurrent use; two key schedules cost less than
     * a sector); OpenSSL wipes them when freed. */
    EVP_CIPHER_CTX *data_ctx = EVP_CIPHER_CTX_new(), *tweak_ctx = EVP_CIPHER_CTX_new();
    unsigned char *ivs = PyMem_RawMalloc(chunk / ss * XTS_BLOCK);
    if (data_ctx == NULL || tweak_ctx == NULL || ivs == NULL ||
        !EVP_CipherInit_ex(data_ctx, ecb, NULL, k, NULL, !decrypt) ||
        !EVP_CipherInit_ex(tweak_ctx, ecb, NULL, k + half, NULL, 1) ||
        !EVP_CIPHER_CTX_set_padding(data_ctx, 0) || !EVP_CIPHER_CTX_set_padding(tweak_ctx, 0))
        failed = 1;
    for (size_t off = 0; off < total && !failed; off += chunk) {
        size_t len = total - off < chunk ? total - off : chunk;
        uint64_t iv = (uint64_t)first_iv + (uint64_t)(off / ss) * (uint64_t)iv_step;
        failed = !xts_chunk(data_ctx, tweak_ctx, ivs, out + off, in + off, len, ss, iv,
                            (uint64_t)iv_step);
    }
    PyMem_RawFree(ivs);
    EVP_CIPHER_CTX_free(data_ctx);
    EVP_CIPHER_CTX_free(tweak_ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL aes-ecb failed");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"xor_tweaks", (PyCFunction)(void (*)(void))xor_tweaks, METH_VARARGS | METH_KEYWORDS,
     "xor_tweaks(dst, enc_ivs, sector_size, src=None)\n--\n\n"
     "XOR every 16-byte block j of every sector with its XTS tweak T*x^j (T = that sector's\n"
     "16 bytes of enc_ivs): dst ^= tweaks, or dst = src ^ tweaks when src is given."},
    {"xts_crypt", (PyCFunction)(void (*)(void))xts_crypt, METH_VARARGS | METH_KEYWORDS,
     "xts_crypt(key, dst, src, first_iv, sector_size, iv_step, decrypt)\n--\n\n"
     "aes-xts-plain64 of whole sectors of src into dst (same length, may be the same\n"
     "buffer) through libcrypto, the GIL released; sector s has IV first_iv + s * iv_step."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_xtsfast",
    .m_doc = "Compiled XTS for hammerfs.luks.xts: the tweak arithmetic (GF(2^128) multiply by "
             "x) and aes-xts-plain64 through libcrypto.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__xtsfast(void)
{
    return PyModule_Create(&module_def);
}
