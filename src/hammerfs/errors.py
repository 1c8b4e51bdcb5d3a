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


class VolumeLocked(HammerError):
    """Another process holds the volume's exclusive lock."""


class NotAVolume(HammerError):
    """The device holds no hammerfs volume (or an unsupported format version)."""


class CorruptionError(HammerError, OSError):
    """A block failed verification.  Never returned as data: raised with its location."""

    def __init__(self, message: str, location: int | None = None):
        HammerError.__init__(self, message)
        self.errno = errno.EIO
        self.strerror = message
        self.location = location

    def __str__(self) -> str:
        return self.strerror


class NoSpace(HammerError, OSError):
    """The volume is full.  The volume stays consistent and usable."""

    def __init__(self, message: str = "no space left on volume"):
        HammerError.__init__(self, message)
        self.errno = errno.ENOSPC
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


class ReadOnly(HammerError, OSError):
    """A write was attempted on a read-only view (as-of view, slave PFS, -o ro)."""

    def __init__(self, message: str = "read-only"):
        HammerError.__init__(self, message)
        self.errno = errno.EROFS
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror
