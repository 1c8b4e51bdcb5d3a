"""The block-device contract every layer above builds on.

A device is a flat byte array of ``size`` bytes.  Callers above the LUKS layer always read and
write whole, aligned 4096-byte blocks (``BLOCK``), so an encrypted device with 512- or
4096-byte sectors can serve them without read-modify-write.
"""

from __future__ import annotations

from typing import Protocol

BLOCK = 4096


class BlockDevice(Protocol):
    size: int
    """Usable size in bytes (a multiple of BLOCK)."""

    readonly: bool

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset`` (short reads are an error)."""

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; not durable until ``flush``."""

    def flush(self) -> None:
        """Make every completed write durable (fsync)."""

    def close(self) -> None:
        """Release the device (and its lock).  Does not flush implicitly."""


def write_parts(device: BlockDevice, offset: int, parts: list) -> None:
    """Write ``parts`` back to back from ``offset``: through the device's own
    ``write_parts`` when it has one (a gathered write: no joined copy of a commit's data),
    else as one joined write."""
    gather = getattr(device, "write_parts", None)
    if gather is not None:
        gather(offset, parts)
    else:
        device.write(offset, b"".join(parts) if len(parts) > 1 else parts[0])
