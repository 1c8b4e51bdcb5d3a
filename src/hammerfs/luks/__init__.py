"""Userspace LUKS1/LUKS2 containers, byte-compatible with cryptsetup (layer 1b).

Depends only on hammerfs.blockdev and hammerfs.errors."""

from __future__ import annotations

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError

LUKS_MAGIC = b"LUKS\xba\xbe"


def unlock_if_luks(device: BlockDevice, key_file: str | None = None) -> BlockDevice:
    """Return ``device`` itself if it holds no LUKS header, else its unlocked payload."""
    if device.size >= 4096 and device.read(0, 4096)[:6] == LUKS_MAGIC:
        raise HammerError("this volume is LUKS-encrypted; encrypted volumes are not supported yet")
    return device
