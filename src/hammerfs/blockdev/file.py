"""FileDevice: a regular file or a block device, opened with an exclusive lock.

I/O is plain ``os.pread``/``os.pwrite`` (the kernel page cache does the caching); ``flush`` is
``fsync``.  The lock is a ``flock`` on the open file description, so a second open fails even
inside the same process, and ``/proc/locks`` tells who holds it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from hammerfs.blockdev.base import BLOCK
from hammerfs.errors import CorruptionError, HammerError, NoSpace, VolumeLocked


class FileDevice:
    def __init__(self, path: str, *, readonly: bool = False, create_size: int | None = None):
        self.path = str(path)
        self.readonly = readonly
        if create_size is not None:
            _prepare_file(self.path, create_size)
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags)
        except OSError as exc:
            raise HammerError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self._lock()
            st = os.fstat(self._fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise HammerError(f"{self.path} is neither a regular file nor a block device")
            self.size = os.lseek(self._fd, 0, os.SEEK_END) // BLOCK * BLOCK
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VolumeLocked(f"volume {self.path} is in use by {_lock_holder(self._fd)}") from None

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:  # a block the device cannot return is damaged data
            raise CorruptionError(f"{self.path}: read error at offset {offset:#x}: "
                                  f"{exc.strerror}", offset) from None
        if len(data) != length:
            raise HammerError(f"{self.path}: short read at offset {offset:#x} "
                              f"({len(data)} of {length} bytes)")
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.readonly:
            raise HammerError(f"{self.path} is open read-only")
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        try:
            while view:
                done = os.pwrite(self._fd, view, offset)
                view = view[done:]
                offset += done
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # an image file on a full host file system
                raise NoSpace(f"{self.path}: no space left on the host file system "
                              f"(write at offset {offset:#x})") from None
            raise HammerError(f"{self.path}: write error at offset {offset:#x}: "
                              f"{exc.strerror}") from None

    def write_parts(self, offset: int, parts: list) -> None:
        """``write(offset, b"".join(parts))`` without the joined copy (pwritev)."""
        total = sum(len(p) for p in parts)
        self._check_range(offset, total)
        if self.readonly or len(parts) > 512:
            self.write(offset, b"".join(parts))
            return
        try:
            done = os.pwritev(self._fd, parts, offset)
        except OSError:
            done = 0  # write() reports it, with the same errors as a plain write
        if done < total:
            self.write(offset + done, b"".join(parts)[done:])

    def flush(self) -> None:
        if not self.readonly:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise HammerError(f"{self.path}: flush failed: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise HammerError(f"{self.path}: I/O at offset {offset:#x} (+{length}) is beyond "
                              f"the end of the device ({self.size} bytes)")


def _prepare_file(path: str, size: int) -> None:
    """Create (or resize) a regular file for a new volume; block devices keep their size."""
    if size <= 0 or size % BLOCK:
        raise HammerError(f"volume size must be a positive multiple of {BLOCK} bytes")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISBLK(st.st_mode):
        raise HammerError(f"{path} is a block device: its size is fixed, do not give --size")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise HammerError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:
        raise HammerError(f"cannot size {path} to {size} bytes: {exc.strerror}") from None
    finally:
        os.close(fd)
    if st is None:  # a new file: make its directory entry durable too
        dirfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


def _lock_holder(fd: int) -> str:
    """Describe the process holding the flock on ``fd``'s file: the pid in /proc/locks, or, if
    that process is gone (the lock was inherited across a fork, e.g. by a daemonized mount),
    the processes that have the file open."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == ident:
            pid = fields[4]
            if os.path.exists(f"/proc/{pid}"):
                return f"process {pid} ({process_cmdline(pid)})"
    openers = _processes_with_open(st.st_dev, st.st_ino)
    if openers:
        return ", ".join(f"process {pid} ({process_cmdline(pid)})" for pid in openers)
    return "another process"


def _processes_with_open(dev: int, ino: int) -> list[str]:
    """Pids (other than ours) with the file (dev, ino) open, from /proc/*/fd."""
    found = []
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if st.st_ino == ino and st.st_dev == dev:
                found.append(pid)
                break
    return found


def process_cmdline(pid: str | int) -> str:
    """A process's command line, its words joined by spaces ("?" when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"
