"""Opening a VOLUME argument the same way for every command.

A volume is a plain image file or block device, or a LUKS container (unlocked with
``--key-file`` or an interactive prompt) whose payload holds the hammerfs volume.  Commands
call ``add_volume_args`` on their parser and ``open_volume_device`` with the parsed args, so
encryption works identically in `info`, `show`, `scrub`, `mount`, mirroring, ...
A volume the kernel already opened (/dev/mapper/NAME) carries no LUKS header and is opened
as a plain volume.

``newfs`` calls ``add_volume_args(creating=True)``, which adds ``--encrypt`` and the
`hammer luks format` options; ``open_volume_device`` with ``create_size`` (or on an
existing file, not read-only) then formats a LUKS2 container first when --encrypt is given.
"""

from __future__ import annotations

import argparse

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError


def add_volume_args(parser: argparse.ArgumentParser, *, creating: bool = False) -> None:
    """Add the options that say how to open (or, for newfs, create) a volume."""
    parser.add_argument("--key-file", metavar="FILE",
                        help="passphrase file for an encrypted volume ('-' reads stdin)")
    if creating:
        from hammerfs.cli.luks_cmds import add_format_args

        group = parser.add_argument_group(
            "encryption", "--encrypt formats a LUKS container (cryptsetup-compatible) and "
            "builds the volume in its payload; these options are those of `hammer luks "
            "format`")
        group.add_argument("--encrypt", action="store_true",
                           help="create an encrypted volume (LUKS2 by default)")
        add_format_args(group, for_newfs=True)


def _passphrase(args: argparse.Namespace | None, *, confirm: bool) -> bytes:
    """The passphrase for this command, read once (a command may open the volume twice,
    and stdin or the user can only be asked once).  Kept in memory only."""
    from hammerfs.luks.passphrase import get_passphrase

    cached = getattr(args, "_luks_passphrase", None)
    if cached is not None:
        return cached
    key_file = getattr(args, "key_file", None)
    text = "Enter passphrase for the new encrypted volume: " if confirm \
        else "Enter passphrase for the encrypted volume: "
    passphrase = get_passphrase(key_file, text, confirm=confirm)
    if args is not None:
        args._luks_passphrase = passphrase
    return passphrase


def _unlock(dev: BlockDevice, args: argparse.Namespace | None, readonly: bool) -> BlockDevice:
    from hammerfs.luks import open_payload
    from hammerfs.luks.container import is_luks

    if not is_luks(dev):
        return dev
    return open_payload(dev, _passphrase(args, confirm=False), readonly=readonly)


def _format_encrypted(dev: BlockDevice, args: argparse.Namespace) -> BlockDevice:
    from hammerfs.cli.luks_cmds import format_device
    from hammerfs.luks import payload_device

    container, key = format_device(dev, _passphrase(args, confirm=True), args)
    return payload_device(container, key)


_FORMAT_ONLY = ("pbkdf", "pbkdf_memory", "pbkdf_parallel", "pbkdf_force_iterations",
                "iter_time", "sector_size", "luks_uuid")


def _check_format_options(args: argparse.Namespace | None) -> None:
    """newfs: the LUKS format options mean nothing without --encrypt; say so rather than
    silently building an unencrypted volume."""
    if args is None or not hasattr(args, "encrypt") or args.encrypt:
        return
    given = [name for name in _FORMAT_ONLY if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise HammerError(f"{flags}: only valid with --encrypt")


def open_volume_device(path: str, args: argparse.Namespace | None = None, *,
                       readonly: bool = False, create_size: int | None = None) -> BlockDevice:
    """Open ``path`` with an exclusive lock; if it is a LUKS container, unlock it and return
    the decrypted payload.  ``create_size`` creates a regular file of that size first.
    With ``args.encrypt`` (newfs) and a writable open, a new LUKS container is formatted
    first and its payload returned."""
    from hammerfs.blockdev.file import FileDevice

    _check_format_options(args)
    dev = FileDevice(path, readonly=readonly, create_size=create_size)
    try:
        if getattr(args, "encrypt", False) and not readonly:
            return _format_encrypted(dev, args)
        return _unlock(dev, args, readonly)
    except BaseException:
        dev.close()
        raise
