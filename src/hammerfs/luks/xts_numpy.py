"""numpy fallback for the XTS tweak arithmetic, used when the compiled ``_xtsfast`` extension
is not built: the tweak of every 16-byte block, T * x^j in GF(2^128), as numpy planes.  About
4x slower than the extension (13 numpy passes per element), but byte-identical."""

from __future__ import annotations

import numpy as np

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


class NumpyTweaks:
    """The tweaks of one request, computed once by ``prepare`` and XORed by ``xor`` (twice per
    request: before and after the ECB pass).  Same interface as xts.CompiledTweaks."""

    def __init__(self) -> None:
        self.workspace = _TweakWorkspace()
        self.tweaks = np.empty(0, dtype=np.uint64)

    def prepare(self, enc_ivs: np.ndarray, sector_size: int) -> None:
        count = enc_ivs.shape[0] // 2
        self.tweaks = block_tweaks(enc_ivs.reshape(count, 2), sector_size // 16,
                                   self.workspace).reshape(-1)

    def xor(self, dst: memoryview, src: memoryview) -> None:
        """dst = src ^ tweaks (whole sectors, as many as prepared)."""
        words = len(src) // 8
        np.bitwise_xor(np.frombuffer(src, dtype=np.uint64, count=words), self.tweaks,
                       out=np.frombuffer(dst, dtype=np.uint64, count=words))
