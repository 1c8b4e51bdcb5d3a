"""Opening a VOLUME argument the same way for every command: a plain image file or block
device, or a LUKS container (unlocked with --key-file or an interactive prompt) whose payload
holds the hammerfs volume.  Owned by the LUKS work (issue 3); until then plain volumes only."""

from __future__ import annotations

from hammerfs.blockdev.base import BlockDevice


def open_block_device(path: str, *, readonly: bool = False, key_file: str | None = None,
                      create_size: int | None = None) -> BlockDevice:
    """Open ``path`` (locking it) and, if it is a LUKS container, unlock it and return the
    decrypted payload device."""
    raise NotImplementedError("filled in by the store and LUKS work")
