"""Opening a VOLUME argument the same way for every command.

A volume is a plain image file or block device, or a LUKS container (unlocked with
``--key-file`` or an interactive prompt) whose payload holds the hammerfs volume.  Commands
call ``add_volume_args`` on their parser and ``open_volume_device`` with the parsed args, so
encryption works identically in `info`, `show`, `scrub`, `mount`, mirroring, ...

Owned by the LUKS work (issue 3), which adds unlocking and ``newfs --encrypt``.
"""

from __future__ import annotations

import argparse

from hammerfs.blockdev.base import BlockDevice


def add_volume_args(parser: argparse.ArgumentParser, *, creating: bool = False) -> None:
    """Add the options that say how to open (or, for newfs, create) a volume."""
    parser.add_argument("--key-file", metavar="FILE",
                        help="passphrase file for an encrypted volume ('-' reads stdin)")


def open_volume_device(path: str, args: argparse.Namespace | None = None, *,
                       readonly: bool = False, create_size: int | None = None) -> BlockDevice:
    """Open ``path`` with an exclusive lock; if it is a LUKS container, unlock it and return
    the decrypted payload.  ``create_size`` creates a regular file of that size first."""
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.luks import unlock_if_luks

    dev = FileDevice(path, readonly=readonly, create_size=create_size)
    try:
        return unlock_if_luks(dev, key_file=getattr(args, "key_file", None))
    except BaseException:
        dev.close()
        raise
