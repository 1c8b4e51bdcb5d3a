"""Batched AES-XTS with the ``plain64`` IV, as dm-crypt/cryptsetup use it.

One cipher call per sector costs ~20 us in Python, so runs of sectors are processed together:
one AES-ECB call (key 2) turns every sector's IV into its first tweak, numpy multiplies those
by alpha^j in GF(2^128) to get the tweak of every 16-byte block, and one AES-ECB call (key 1)
over the whole buffer, between two XORs with the tweaks, does the data.  The output is
byte-identical to per-sector XTS (sector sizes are multiples of 16, so no ciphertext stealing).

The plain64 IV counts 512-byte units from the start of the segment (plus ``iv_tweak``), even
when the encryption sector is 4096 bytes: callers pass the IV of the first sector and the step.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hammerfs.errors import HammerError

AES_BLOCK = 16
MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)

# Tweak j of a sector is T0 * x^j.  Blocks are grouped in columns of STEP: for b < STEP,
# x^b is a shift whose overflow (< 2^STEP) times the reduction polynomial 0x87 still fits in
# 64 bits, so group 0 is T0 times per-column shift amounts, and each later group is the
# previous one times x^STEP.  Numpy works fastest on full contiguous operands (broadcasting
# and strides cost 2-4x), so the shift amounts and T0 are expanded to full planes first.
# Numpy defines shifts by >= 64 bits as giving 0, which makes column 0 (k = 0) work too.
STEP = 32
_U64 = np.uint64


class _TweakWorkspace:
    """Preallocated arrays for the tweak computation (fresh multi-hundred-KiB temporaries
    cost page faults on every call).  Planes are (group, sector, column) so every group is
    one contiguous block, interleaved into (sector, block, word) order once at the end."""

    def __init__(self) -> None:
        self.capacity = 0
        self.planes = np.empty(0, dtype=np.uint64)
        self.tweaks = np.empty(0, dtype=np.uint64)
        self.shift_key: tuple[int, int] = (0, 0)
        self.shifts = (np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64))

    def arrays(self, count: int, blocks: int) -> tuple[np.ndarray, ...]:
        """(tweaks, lo, hi, overflow, tmp, first_lo, first_hi, k, 64 - k): lo..tmp are
        (groups, count, width) planes; the rest are (count, width): the expanded first tweak
        and the per-column shift amounts of group 0."""
        need = count * blocks
        if need > self.capacity:
            self.capacity = need
            self.planes = np.empty(need * 6, dtype=np.uint64)
            self.tweaks = np.empty(need * 2, dtype=np.uint64)
        width = min(STEP, blocks)
        if self.shift_key != (count, width):
            k = np.ascontiguousarray(np.broadcast_to(np.arange(width, dtype=np.uint64),
                                                     (count, width)))
            self.shifts, self.shift_key = (k, _U64(64) - k), (count, width)
        shape = (blocks // width, count, width)
        planes = [self.planes[i * need:(i + 1) * need].reshape(shape) for i in range(4)]
        group0 = count * width
        firsts = [self.planes[4 * need + i * group0:4 * need + (i + 1) * group0]
                  .reshape(count, width) for i in range(2)]
        return (self.tweaks[:need * 2].reshape(count, blocks // width, width, 2), *planes,
                *firsts, *self.shifts)


def _mul_xk_into(lo: np.ndarray, hi: np.ndarray, k, rk, out_lo: np.ndarray,
                 out_hi: np.ndarray, overflow: np.ndarray, tmp: np.ndarray) -> None:
    """(out_lo, out_hi) = (lo, hi) * x^k in GF(2^128) (XTS's little-endian convention), for
    0 <= k < STEP; ``rk`` is 64 - k; k/rk are scalars or arrays of the output's shape.
    ``out_*`` may not alias the inputs; ``overflow`` and ``tmp`` are scratch."""
    np.right_shift(hi, rk, out=overflow)
    np.left_shift(hi, k, out=out_hi)
    np.right_shift(lo, rk, out=tmp)
    np.bitwise_or(out_hi, tmp, out=out_hi)
    np.left_shift(lo, k, out=out_lo)
    # overflow * x^128 == overflow * (x^7 + x^2 + x + 1): a carry-less multiply by 0x87.
    np.bitwise_xor(out_lo, overflow, out=out_lo)
    for shift in (_U64(1), _U64(2), _U64(7)):
        np.left_shift(overflow, shift, out=tmp)
        np.bitwise_xor(out_lo, tmp, out=out_lo)


def block_tweaks(first: np.ndarray, blocks: int,
                 workspace: _TweakWorkspace | None = None) -> np.ndarray:
    """Tweaks of every 16-byte block: ``first`` is (n, 2) uint64 (lo, hi) encrypted IVs;
    returns (n, blocks, 2) uint64 with [:, j] = first * x^j (a view into the workspace)."""
    ws = workspace or _TweakWorkspace()
    n = first.shape[0]
    tweaks, lo, hi, overflow, tmp, first_lo, first_hi, k, rk = ws.arrays(n, blocks)
    np.copyto(first_lo, first[:, 0:1])
    np.copyto(first_hi, first[:, 1:2])
    _mul_xk_into(first_lo, first_hi, k, rk, lo[0], hi[0], overflow[0], tmp[0])
    step, rstep = _U64(STEP), _U64(64 - STEP)
    for group in range(1, lo.shape[0]):
        _mul_xk_into(lo[group - 1], hi[group - 1], step, rstep, lo[group], hi[group],
                     overflow[group], tmp[group])
    tweaks[..., 0] = lo.transpose(1, 0, 2)
    tweaks[..., 1] = hi.transpose(1, 0, 2)
    return tweaks.reshape(n, blocks, 2)


class _Lane:
    """One worker's ECB contexts and scratch buffers (cryptography's contexts are not for
    concurrent use, and the buffers are reused between calls)."""

    def __init__(self, data_key: bytes, tweak_key: bytes):
        data_aes = algorithms.AES(data_key)
        self.data_enc = Cipher(data_aes, modes.ECB()).encryptor()
        self.data_dec = Cipher(data_aes, modes.ECB()).decryptor()
        self.tweak_enc = Cipher(algorithms.AES(tweak_key), modes.ECB()).encryptor()
        self.lock = threading.Lock()
        self.workspace = _TweakWorkspace()
        self.scratch_in = bytearray(0)
        self.scratch_out = bytearray(0)

    def _scratch(self, size: int) -> tuple[np.ndarray, memoryview, memoryview]:
        # update_into wants room for one block more than it writes.
        if len(self.scratch_in) < size:
            self.scratch_in = bytearray(size)
            self.scratch_out = bytearray(size + AES_BLOCK)
        return (np.frombuffer(self.scratch_in, dtype=np.uint64, count=size // 8),
                memoryview(self.scratch_in)[:size], memoryview(self.scratch_out))

    def _tweaks(self, count: int, first_iv: int, iv_step: int, blocks: int) -> np.ndarray:
        ivs = np.zeros((count, 2), dtype=np.uint64)
        # plain64: the IV is the 64-bit little-endian sector number, upper half zero.
        ivs[:, 0] = (np.arange(count, dtype=np.uint64) * np.uint64(iv_step)
                     + np.uint64(first_iv & 0xFFFFFFFFFFFFFFFF))
        encrypted = np.empty((count * 2 + 2,), dtype=np.uint64)
        self.tweak_enc.update_into(ivs.view(np.uint8).reshape(-1), encrypted.view(np.uint8))
        return block_tweaks(encrypted[:count * 2].reshape(count, 2), blocks, self.workspace)

    def run(self, data: memoryview, out: memoryview, first_iv: int, sector_size: int,
            iv_step: int, decrypt: bool) -> None:
        size = len(data)
        words = size // 8
        ctx = self.data_dec if decrypt else self.data_enc
        with self.lock:
            tweaks = self._tweaks(size // sector_size, first_iv, iv_step,
                                  sector_size // AES_BLOCK).reshape(-1)
            work, work_view, ecb_out = self._scratch(size)
            np.bitwise_xor(np.frombuffer(data, dtype=np.uint64, count=words), tweaks, out=work)
            ctx.update_into(work_view, ecb_out)
            np.bitwise_xor(np.frombuffer(ecb_out, dtype=np.uint64, count=words), tweaks,
                           out=np.frombuffer(out, dtype=np.uint64, count=words))


# Below this, splitting a request between threads costs more than it saves.
PARALLEL_MIN = 256 * 1024


class XtsCipher:
    """AES-XTS over whole sectors with plain64 IVs; one key schedule for the device's life.

    With ``threads`` > 1, large requests are split between lanes: numpy releases the GIL, so
    one half's tweak arithmetic can run while the other half is in AES.  The default is one
    lane: on the shared 2-vCPU machines measured (bench/xts_bench.py) two lanes were never
    faster, as the GIL hand-offs between ~100 short numpy calls per half and CPU contention
    ate the overlap.  Thread-safe either way.
    """

    def __init__(self, key: bytes, threads: int | None = None):
        if len(key) not in (32, 64):
            raise HammerError(f"aes-xts needs a 256- or 512-bit key, not {len(key) * 8} bits")
        half = len(key) // 2
        if key[:half] == key[half:]:
            # Same rule as the kernel's xts_verify_key in FIPS mode; a LUKS key never repeats.
            raise HammerError("aes-xts key halves are identical")
        count = threads or 1
        self._lanes = [_Lane(key[:half], key[half:]) for _ in range(max(1, count))]
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
        if sectors <= sector_size // 512:
            # A few sectors: per-sector XTS calls (~20 us each) beat the batch's fixed cost
            # (~50 us + ~25 us per 512 bytes of sector for the tweak arithmetic).
            self._per_sector(src, dst, first_iv, sector_size, iv_step, decrypt)
            return
        lanes = len(self._lanes) if size >= PARALLEL_MIN else 1
        per_lane = -(-sectors // lanes) * sector_size
        jobs = []
        for i in range(1, lanes):
            start, end = i * per_lane, min(size, (i + 1) * per_lane)
            if start < end:
                jobs.append(self._executor().submit(
                    self._lanes[i].run, src[start:end], dst[start:end],
                    first_iv + start // sector_size * iv_step, sector_size, iv_step, decrypt))
        self._lanes[0].run(src[:per_lane], dst[:per_lane], first_iv, sector_size, iv_step,
                           decrypt)
        for job in jobs:
            job.result()

    def _per_sector(self, src: memoryview, dst: memoryview, first_iv: int, sector_size: int,
                    iv_step: int, decrypt: bool) -> None:
        for index, start in enumerate(range(0, len(src), sector_size)):
            iv = (first_iv + index * iv_step) & 0xFFFFFFFFFFFFFFFF
            cipher = Cipher(self._xts_key, modes.XTS(iv.to_bytes(16, "little")))
            ctx = cipher.decryptor() if decrypt else cipher.encryptor()
            dst[start:start + sector_size] = ctx.update(src[start:start + sector_size])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self._lanes) - 1,
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
