"""Batched AES-XTS with the ``plain64`` IV, as dm-crypt/cryptsetup use it.

By default the whole computation below runs in C (``_xtsfast.xts_crypt``: libcrypto's
AES-ECB and the tweak XOR in 64 KiB pieces, the GIL released, so concurrent readers decrypt
in parallel); the Python lanes described next are the fallback and the tested reference.

One cipher call per sector costs ~20 us in Python, so runs of sectors are processed together:
one AES-ECB call (key 2) turns every sector's IV into its first tweak T, the compiled helper
``_xtsfast.xor_tweaks`` XORs every 16-byte block j with T * x^j (GF(2^128)), one AES-ECB call
(key 1) does the whole buffer, and a second ``xor_tweaks`` pass finishes it.  The output is
byte-identical to per-sector XTS (sector sizes are multiples of 16, so no ciphertext stealing).
Without the extension (a checkout nobody built), ``xts_numpy`` computes the tweaks instead,
about 4x slower.

The plain64 IV counts 512-byte units from the start of the segment (plus ``iv_tweak``), even
when the encryption sector is 4096 bytes: callers pass the IV of the first sector and the step.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hammerfs.errors import HammerError
from hammerfs.luks.xts_numpy import NumpyTweaks

try:
    from hammerfs.luks import _xtsfast
except ImportError:     # not built: pip install -e . (scripts/bootstrap) builds it
    _xtsfast = None

AES_BLOCK = 16
# "openssl": the whole XTS in _xtsfast.xts_crypt (libcrypto's AES-ECB, GIL released);
# "compiled": cryptography's ECB + _xtsfast.xor_tweaks; "numpy": ECB + numpy tweaks.
BACKENDS = ("openssl", "compiled", "numpy")


def default_backend() -> str:
    """The backend XtsCipher uses unless told otherwise: the fastest one built."""
    if _xtsfast is None:
        return "numpy"
    return "openssl" if hasattr(_xtsfast, "xts_crypt") else "compiled"


class CompiledTweaks:
    """The tweaks of one request, recomputed by the C helper on every ``xor`` (storing 1 MiB
    of tweaks between the two passes would cost more than the shifts)."""

    def __init__(self) -> None:
        if _xtsfast is None:
            raise HammerError("the compiled XTS helper hammerfs.luks._xtsfast is not built "
                              "(run scripts/bootstrap or pip install -e .)")
        self.enc_ivs = np.empty(0, dtype=np.uint64)
        self.sector_size = AES_BLOCK

    def prepare(self, enc_ivs: np.ndarray, sector_size: int) -> None:
        self.enc_ivs, self.sector_size = enc_ivs, sector_size

    def xor(self, dst: memoryview, src: memoryview) -> None:
        """dst = src ^ tweaks (whole sectors, as many as prepared)."""
        _xtsfast.xor_tweaks(dst, self.enc_ivs, self.sector_size, src)


class _Lane:
    """One worker's ECB contexts and scratch buffers (cryptography's contexts are not for
    concurrent use, and the buffers are reused between calls).  A lane serves one call at a
    time: XtsCipher hands each concurrent call a lane of its own."""

    def __init__(self, data_key: bytes, tweak_key: bytes, backend: str):
        data_aes = algorithms.AES(data_key)
        self.data_enc = Cipher(data_aes, modes.ECB()).encryptor()
        self.data_dec = Cipher(data_aes, modes.ECB()).decryptor()
        self.tweak_enc = Cipher(algorithms.AES(tweak_key), modes.ECB()).encryptor()
        self.tweaks = CompiledTweaks() if backend == "compiled" else NumpyTweaks()
        self.scratch_in = bytearray(0)
        self.scratch_out = bytearray(0)

    def _scratch(self, size: int) -> tuple[memoryview, memoryview]:
        # update_into wants room for one block more than it writes.
        if len(self.scratch_in) < size:
            self.scratch_in = bytearray(size)
            self.scratch_out = bytearray(size + AES_BLOCK)
        return memoryview(self.scratch_in)[:size], memoryview(self.scratch_out)

    def _encrypted_ivs(self, count: int, first_iv: int, iv_step: int) -> np.ndarray:
        """(2 * count,) uint64: AES_k2 of each sector's IV, i.e. its first tweak (lo, hi)."""
        ivs = np.zeros((count, 2), dtype=np.uint64)
        # plain64: the IV is the 64-bit little-endian sector number, upper half zero
        # (numpy's uint64 arithmetic wraps mod 2^64, as the IV does).
        ivs[:, 0] = (np.arange(count, dtype=np.uint64) * np.uint64(iv_step)
                     + np.uint64(first_iv & 0xFFFFFFFFFFFFFFFF))
        encrypted = np.empty((count * 2 + 2,), dtype=np.uint64)
        self.tweak_enc.update_into(ivs.view(np.uint8).reshape(-1), encrypted.view(np.uint8))
        return encrypted[:count * 2]

    def run(self, data: memoryview, out: memoryview, first_iv: int, sector_size: int,
            iv_step: int, decrypt: bool) -> None:
        size = len(data)
        ctx = self.data_dec if decrypt else self.data_enc
        self.tweaks.prepare(self._encrypted_ivs(size // sector_size, first_iv, iv_step),
                            sector_size)
        work, ecb_out = self._scratch(size)
        self.tweaks.xor(work, data)
        ctx.update_into(work, ecb_out)
        self.tweaks.xor(out, ecb_out[:size])


# Below this, splitting a request between threads costs more than it saves.
PARALLEL_MIN = 256 * 1024


class XtsCipher:
    """AES-XTS over whole sectors with plain64 IVs; one key schedule for the device's life.

    With ``threads`` > 1, large requests are split between lanes (the tweak helper releases
    the GIL; AES in cryptography does not, but it is the cheap part).  The default is no
    split: see docs/performance.md for why.  Concurrent calls each get a lane of their own.
    ``backend`` picks the tweak arithmetic ("compiled" or "numpy"; default: compiled when
    built).  Thread-safe either way.
    """

    def __init__(self, key: bytes | memoryview, threads: int | None = None, *,
                 backend: str | None = None):
        if len(key) not in (32, 64):
            raise HammerError(f"aes-xts needs a 256- or 512-bit key, not {len(key) * 8} bits")
        half = len(key) // 2
        if key[:half] == key[half:]:
            # Same rule as the kernel's xts_verify_key in FIPS mode; a LUKS key never repeats.
            raise HammerError("aes-xts key halves are identical")
        backend = backend or default_backend()
        if backend not in BACKENDS:
            raise HammerError(f"unknown xts backend {backend!r} (one of {', '.join(BACKENDS)})")
        if backend == "openssl" and not hasattr(_xtsfast, "xts_crypt"):
            raise HammerError("the compiled XTS helper hammerfs.luks._xtsfast is not built "
                              "with xts_crypt (run scripts/bootstrap or pip install -e .)")
        self.backend = backend
        self._threads = max(1, threads or 1)
        self._key = key  # the caller's (locked) key: views of it, never copies
        self._keys = (key[:half], key[half:])
        # Idle lanes: a call takes one (or makes one) and gives it back, so concurrent
        # callers (FUSE readers in worker threads, the commit) never wait for each other;
        # there are at most as many lanes as calls ever ran at once.
        # made now: a missing backend fails here ("openssl" needs none)
        self._idle = [] if backend == "openssl" else [_Lane(*self._keys, backend)]
        self._idle_lock = threading.Lock()
        self.lanes = len(self._idle)  # lanes made so far = the most calls ever at once
        self._pool: ThreadPoolExecutor | None = None
        self._xts_key = algorithms.AES(key)   # for the per-sector path (XTS mode, full key)

    def crypt_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview,
                   first_iv: int, sector_size: int, iv_step: int, *, decrypt: bool) -> None:
        """Encrypt or decrypt whole sectors of ``data`` into ``out`` (same length, may be the
        same buffer); ``first_iv`` is the plain64 IV of the first sector and ``iv_step`` the
        IV increment per sector (sector_size // 512 for LUKS)."""
        size = len(data)
        if size % sector_size or sector_size % AES_BLOCK or len(out) != size:
            raise ValueError("xts: data must be whole sectors")
        if size == 0:
            return
        src, dst = memoryview(data).cast("B"), memoryview(out).cast("B")
        sectors = size // sector_size
        if self.backend == "numpy" and sectors <= sector_size // 512:
            # A few sectors: per-sector XTS calls (~20 us each) beat numpy's fixed cost (~50 us
            # + ~25 us per 512 bytes of sector).  The compiled batch wins even for one sector.
            self._per_sector(src, dst, first_iv, sector_size, iv_step, decrypt)
            return
        parts = self._threads if size >= PARALLEL_MIN else 1
        per_part = -(-sectors // parts) * sector_size
        jobs = []
        for i in range(1, parts):
            start, end = i * per_part, min(size, (i + 1) * per_part)
            if start < end:
                jobs.append(self._executor().submit(
                    self._run, src[start:end], dst[start:end],
                    first_iv + start // sector_size * iv_step, sector_size, iv_step, decrypt))
        self._run(src[:per_part], dst[:per_part], first_iv, sector_size, iv_step, decrypt)
        for job in jobs:
            job.result()

    def _run(self, src: memoryview, dst: memoryview, first_iv: int, sector_size: int,
             iv_step: int, decrypt: bool) -> None:
        if self.backend == "openssl":
            _xtsfast.xts_crypt(self._key, dst, src, first_iv & 0xFFFFFFFFFFFFFFFF, sector_size,
                               iv_step, decrypt)
            return
        with self._idle_lock:
            lane = self._idle.pop() if self._idle else None
            if lane is None:
                self.lanes += 1
        if lane is None:
            lane = _Lane(*self._keys, self.backend)
        try:
            lane.run(src, dst, first_iv, sector_size, iv_step, decrypt)
        finally:
            with self._idle_lock:
                self._idle.append(lane)

    def _per_sector(self, src: memoryview, dst: memoryview, first_iv: int, sector_size: int,
                    iv_step: int, decrypt: bool) -> None:
        for index, start in enumerate(range(0, len(src), sector_size)):
            iv = (first_iv + index * iv_step) & 0xFFFFFFFFFFFFFFFF
            cipher = Cipher(self._xts_key, modes.XTS(iv.to_bytes(16, "little")))
            ctx = cipher.decryptor() if decrypt else cipher.encryptor()
            dst[start:start + sector_size] = ctx.update(src[start:start + sector_size])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads - 1,
                                            thread_name_prefix="xts")
        return self._pool

    def crypt(self, data: bytes | bytearray | memoryview, first_iv: int, sector_size: int,
              iv_step: int, *, decrypt: bool) -> bytearray:
        """Like crypt_into, returning a new buffer."""
        out = bytearray(len(data))
        self.crypt_into(data, out, first_iv, sector_size, iv_step, decrypt=decrypt)
        return out

    def encrypt(self, data: bytes | bytearray | memoryview, first_iv: int, sector_size: int,
                iv_step: int) -> bytearray:
        return self.crypt(data, first_iv, sector_size, iv_step, decrypt=False)

    def decrypt(self, data: bytes | bytearray | memoryview, first_iv: int, sector_size: int,
                iv_step: int) -> bytearray:
        return self.crypt(data, first_iv, sector_size, iv_step, decrypt=True)
