"""Password-based key derivation for key slots (PBKDF2, Argon2id, Argon2i) and cryptsetup's
cost benchmark: cost parameters are chosen so one derivation takes about ``iter_time`` ms."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from hammerfs.luks.keyslots import KeySlotError

PBKDF2_HASHES = ("sha1", "sha256", "sha512", "sha384", "sha224", "ripemd160")
ARGON2_TYPES = ("argon2id", "argon2i")
ARGON2_MIN_TIME = 4
ARGON2_MIN_MEMORY = 32            # KiB
ARGON2_MAX_MEMORY = 4 * 1024 * 1024
ARGON2_MAX_PARALLEL = 4
DEFAULT_MAX_MEMORY = 1024 * 1024  # cryptsetup's cap (KiB), also capped at half the RAM
PBKDF2_MIN_ITERATIONS = 1000
DEFAULT_ITER_TIME_MS = 2000
DIGEST_ITER_TIME_MS = 125
# Hard limit: hashlib/OpenSSL take a C int iteration count (more raises OverflowError).
PBKDF2_MAX_ITERATIONS = 2**31 - 1
# Soft caps against damaged or hostile headers: a cost beyond these would keep a command
# busy for minutes to days (or exhaust memory) before it could try the next key slot.
# A bit flip in an iteration count easily gives 2^24..2^31.  UNLIMITED_ENV=1 lifts them.
PBKDF2_SANE_ITERATIONS = 1 << 28      # ~1-2 min of SHA-256 on a current CPU
ARGON2_SANE_WORK = 1 << 30            # time cost x memory KiB (cryptsetup's defaults: 2^22)
UNLIMITED_ENV = "HAMMERFS_KDF_UNLIMITED"


class KdfError(KeySlotError):
    """The key slot's (or digest's) KDF parameters are invalid, unsupported or refused."""


class KdfCostRefused(KdfError):
    """Valid KDF costs above the soft caps (UNLIMITED_ENV lifts them)."""


@dataclass
class KdfParams:
    """One key slot's KDF: type, salt and costs (memory in KiB, parallel = lanes)."""

    type: str
    salt: bytes
    hash: str = "sha256"
    iterations: int = 0
    time: int = 0
    memory: int = 0
    parallel: int = 0


def unlimited() -> bool:
    """The user lifted the soft KDF cost caps (``HAMMERFS_KDF_UNLIMITED=1``)."""
    return os.environ.get(UNLIMITED_ENV, "") not in ("", "0")


def available_memory_kib() -> int | None:
    """MemAvailable + SwapFree from /proc/meminfo (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        return sum(int(fields[name].split()[0]) for name in (b"MemAvailable", b"SwapFree"))
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _refuse_cost(what: str) -> None:
    if not unlimited():
        raise KdfCostRefused(f"{what}; refusing it (a damaged header?). Set {UNLIMITED_ENV}=1 "
                             "to try anyway")


def _cost(value: object, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise KdfError(f"invalid {name} {value!r} (must be {low}..{high})")
    return value


def check_pbkdf2(hash_name: str, iterations: object) -> None:
    """PBKDF2 parameters a key slot or digest may use (see check_params)."""
    if hash_name not in PBKDF2_HASHES:
        raise KdfError(f"unsupported PBKDF2 hash '{hash_name}'")
    count = _cost(iterations, "PBKDF2 iteration count", 1, PBKDF2_MAX_ITERATIONS)
    if count > PBKDF2_SANE_ITERATIONS:
        _refuse_cost(f"PBKDF2 iteration count {count} exceeds {PBKDF2_SANE_ITERATIONS}")


def check_params(params: KdfParams) -> None:
    """Refuse costs cryptsetup would refuse, costs our libraries cannot compute (PBKDF2
    >= 2^31 iterations) and, unless UNLIMITED_ENV is set, absurd ones a damaged header
    could give (they would hang the command or exhaust memory)."""
    if params.type == "pbkdf2":
        check_pbkdf2(params.hash, params.iterations)
    elif params.type in ARGON2_TYPES:
        time_cost = _cost(params.time, "argon2 time cost", 1, 0xFFFFFFFF)
        memory = _cost(params.memory, "argon2 memory cost (KiB)", ARGON2_MIN_MEMORY,
                       ARGON2_MAX_MEMORY)
        _cost(params.parallel, "argon2 parallel cost", 1, ARGON2_MAX_PARALLEL)
        if time_cost * memory > ARGON2_SANE_WORK:
            _refuse_cost(f"argon2 cost (time {time_cost} x memory {memory} KiB) exceeds "
                         f"{ARGON2_SANE_WORK}")
        available = available_memory_kib()
        if available is not None and memory > available:
            _refuse_cost(f"argon2 needs {memory} KiB of memory, only {available} KiB are "
                         "available")
    else:
        raise KdfError(f"unsupported key derivation function '{params.type}'")


def derive(passphrase: bytes, params: KdfParams, length: int) -> bytes:
    """The slot key for ``passphrase``."""
    check_params(params)
    if params.type == "pbkdf2":
        return pbkdf2(params.hash, passphrase, params.salt, params.iterations, length)
    from argon2.exceptions import HashingError

    try:
        return _argon2(passphrase, params, length)
    except (ValueError, TypeError, MemoryError, HashingError) as exc:
        # The libraries reject what a damaged header may still ask for (tiny salts, ...).
        raise KdfError(f"invalid {params.type} parameters: {exc}") from None


def _argon2(passphrase: bytes, params: KdfParams, length: int) -> bytes:
    if params.type == "argon2id":
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        return Argon2id(salt=params.salt, length=length, iterations=params.time,
                        lanes=params.parallel, memory_cost=params.memory).derive(passphrase)
    from argon2.low_level import Type, hash_secret_raw
    return hash_secret_raw(passphrase, params.salt, time_cost=params.time,
                           memory_cost=params.memory, parallelism=params.parallel,
                           hash_len=length, type=Type.I, version=0x13)


def pbkdf2(hash_name: str, secret: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC; parameters from a header are checked first (check_pbkdf2)."""
    check_pbkdf2(hash_name, iterations)
    try:
        return hashlib.pbkdf2_hmac(hash_name, secret, salt, iterations, length)
    except (ValueError, OverflowError) as exc:
        raise KdfError(f"PBKDF2 refused its parameters: {exc}") from None


def physical_memory_kib() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024
    except (ValueError, OSError):
        return DEFAULT_MAX_MEMORY * 2


def default_argon2_memory() -> int:
    """cryptsetup caps Argon2 memory at 1 GiB and at half of the physical RAM; we also
    stay within the memory available now, which check_params demands."""
    available = available_memory_kib() or DEFAULT_MAX_MEMORY
    return max(ARGON2_MIN_MEMORY, min(DEFAULT_MAX_MEMORY, physical_memory_kib() // 2,
                                      available))


def default_parallel() -> int:
    return max(1, min(ARGON2_MAX_PARALLEL, os.cpu_count() or 1))


def _elapsed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def benchmark_pbkdf2(hash_name: str, target_ms: int, length: int) -> int:
    """Iterations of PBKDF2 that take about ``target_ms`` (at least 1000)."""
    iterations = 1000
    while True:
        spent = _elapsed_ms(lambda n=iterations: pbkdf2(hash_name, b"benchmark", bytes(32), n,
                                                        length))
        if spent > 200 or iterations >= 1 << 26:
            break
        iterations *= 4
    return max(PBKDF2_MIN_ITERATIONS, int(iterations * target_ms / max(spent, 0.001)))


def benchmark_argon2(kind: str, target_ms: int, max_memory: int, parallel: int,
                     length: int) -> tuple[int, int]:
    """(time, memory KiB) for Argon2 taking about ``target_ms``, cryptsetup-style: keep the
    minimum time cost of 4 and scale memory up to ``max_memory``; if even that is faster than
    the target, raise the time cost."""
    probe = KdfParams(kind, bytes(16), time=ARGON2_MIN_TIME,
                      memory=max(ARGON2_MIN_MEMORY, min(max_memory, 16 * 1024)),
                      parallel=parallel)
    while True:
        spent = _elapsed_ms(lambda: derive(b"benchmark", probe, length))
        if spent > 200 or probe.memory >= max_memory:
            break
        probe.memory = min(max_memory, probe.memory * 4)
    per_kib_ms = spent / (probe.memory * probe.time)
    memory = int(target_ms / (per_kib_ms * ARGON2_MIN_TIME))
    if memory <= max_memory:
        return ARGON2_MIN_TIME, max(ARGON2_MIN_MEMORY, memory)
    return max(ARGON2_MIN_TIME, int(target_ms / (per_kib_ms * max_memory))), max_memory
