"""Exceptions shared by every layer.

Every error a user can provoke is a ``HammerError`` with a message fit to print; the CLI prints
``hammer: <message>`` and exits non-zero instead of showing a traceback.  Errors that map to an
errno (for FUSE) subclass ``OSError`` as well so the adapter can return ``e.errno``.
"""

from __future__ import annotations

import errno


class HammerError(Exception):
    """Base class: a clear, user-facing failure."""

    exit_code = 1


class Interrupted(HammerError):
    """The user interrupted the command (Ctrl-C); the message says what that left behind."""

    exit_code = 130  # as a shell reports SIGINT


class VolumeLocked(HammerError):
    """Another process holds the volume's exclusive lock."""


class NotAVolume(HammerError):
    """The device holds no hammerfs volume (or an unsupported format version)."""


class NoVolumeSignature(NotAVolume):
    """Not even a damaged hammerfs volume: too small, or no hammerfs header magic at all
    (some other file or filesystem)."""


class MountBusy(HammerError):
    """The kernel refuses to unmount: processes use the mount (``holders``, as
    hammerfs.control.holders finds them)."""

    def __init__(self, message: str, holders: list | None = None):
        super().__init__(message)
        self.holders = holders or []


class UnmountCommitFailed(HammerError):
    """A mount's final commit failed: it is unmounted, its last changes are lost."""


class ErrnoError(HammerError, OSError):
    """A HammerError that also carries an errno, so the FUSE adapter can return it."""

    def __init__(self, code: int | None, message: str):
        HammerError.__init__(self, message)
        self.errno = code
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


class CorruptionError(ErrnoError):
    """A block failed verification.  Never returned as data: raised with its location."""

    def __init__(self, message: str, location: int | None = None):
        super().__init__(errno.EIO, message)
        self.location = location


class StorageUnavailable(ErrnoError):
    """The storage under a volume failed an operation (a Ceph cluster or an S3 endpoint
    out of reach, a request refused): what was committed is safe, and trying again later
    may work, so a stream retries it instead of giving up."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class NoSpace(ErrnoError):
    """The volume is full.  The volume stays consistent and usable."""

    def __init__(self, message: str = "no space left on volume"):
        super().__init__(errno.ENOSPC, message)


class FragmentedSpace(NoSpace):
    """Enough blocks are free, but no run of them is long enough for one extent: the caller
    may store the data as smaller records (the file layer falls back to 4 KiB pieces)."""


class ReadOnly(ErrnoError):
    """A write was attempted on a read-only view (as-of view, slave PFS, -o ro)."""

    def __init__(self, message: str = "read-only"):
        super().__init__(errno.EROFS, message)
