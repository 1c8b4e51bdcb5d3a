"""Key material in memory: processes that hold it are not dumpable, and the volume key of an
open LUKS device lives in a locked buffer.

What this protects: no core dump of a process that read a passphrase or holds a volume key
(``PR_SET_DUMPABLE`` 0 also stops other processes of the same user from ptrace-attaching or
reading ``/proc/<pid>/mem``); the long-lived copy of the volume key is in an mlock'd page
(never written to swap) excluded from core dumps (MADV_DONTDUMP) and zeroed when the device
closes.  What it cannot protect: Python copies bytes freely (the passphrase and the
unsealed key pass through ordinary ``bytes`` objects that are released, not zeroed) and
OpenSSL keeps its own AES key schedule in its heap; root can read any process's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap

from hammerfs.errors import HammerError

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(None, use_errno=True)


def make_undumpable() -> None:
    """From now on (and in forked children until they exec) no core dump, no ptrace by
    same-uid processes.  Call before reading a passphrase or a key."""
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise HammerError(f"cannot make this process non-dumpable (prctl: errno {err}); "
                          "refusing to handle key material")


def is_dumpable() -> bool:
    return _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1


class LockedBuffer:
    """A copy of ``data`` in its own anonymous mapping: mlock'd when the memlock limit
    allows (``locked`` says whether it is), never in a core dump, zeroed by ``close``.
    ``view()`` is a memoryview of the bytes (cryptography's AES keeps that view, no copy)."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self.size = len(data)
        length = -(-max(self.size, 1) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with contextlib.suppress(OSError):
            self._map.madvise(mmap.MADV_DONTDUMP)
        anchor = ctypes.c_char.from_buffer(self._map)
        self._addr = ctypes.addressof(anchor)
        del anchor  # releases its export of the mapping
        self._length = length
        self.locked = _libc.mlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(length)) == 0
        self._map[:self.size] = data

    def view(self) -> memoryview:
        if self._map.closed:
            raise ValueError("LockedBuffer is closed")
        return memoryview(self._map)[:self.size]

    def close(self) -> None:
        """Zero the bytes, unlock and unmap (unmapped later if a view is still alive)."""
        if self._map.closed:
            return
        self._map[:] = bytes(self._length)
        if self.locked:
            _libc.munlock(ctypes.c_void_p(self._addr), ctypes.c_size_t(self._length))
            self.locked = False
        with contextlib.suppress(BufferError):  # a view still exported: zeroed, freed at GC
            self._map.close()

    def __enter__(self) -> LockedBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
