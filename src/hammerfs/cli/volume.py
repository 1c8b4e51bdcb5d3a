"""Opening a VOLUME argument the same way for every command.

A volume is a plain image file or block device, a Ceph RBD image (``rbd:POOL/IMAGE``) or an
S3 bucket prefix (``s3://BUCKET/PREFIX``), each holding either the volume or a LUKS container (unlocked with
``--key-file`` or an interactive prompt) whose payload holds the hammerfs volume.  Commands
call ``add_volume_args`` on their parser and ``open_volume_device`` with the parsed args, so
encryption works identically in `info`, `show`, `scrub`, `mount`, mirroring, ...
A volume the kernel already opened (/dev/mapper/NAME) carries no LUKS header and is opened
as a plain volume.  ``--header FILE`` names a detached LUKS header (cryptsetup --header): the
container's metadata lives in FILE and its payload fills the VOLUME from byte 0.

``newfs`` calls ``add_volume_args(creating=True)``, which adds ``--encrypt`` and the
`hammer luks format` options; ``open_volume_device`` with ``create_size`` (or on an
existing file, not read-only) then formats a LUKS2 container first when --encrypt is given.
"""

from __future__ import annotations

import argparse
import os

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError


def add_volume_args(parser: argparse.ArgumentParser, *, creating: bool = False,
                    key_file_help: str | None = None) -> None:
    """Add the options that say how to open (or, for newfs, create) a volume."""
    from hammerfs.cli.luks_cmds import add_header_arg, add_keyfile_slice_args

    parser.add_argument("--key-file", metavar="FILE",
                        help=key_file_help or "passphrase file of an encrypted volume ('-' "
                        "reads stdin; without it you are asked on the terminal)")
    add_keyfile_slice_args(parser)
    add_header_arg(parser)
    add_remote_args(parser)
    if creating:
        from hammerfs.cli.luks_cmds import add_format_args

        group = parser.add_argument_group(
            "encryption", "--encrypt formats a LUKS container (cryptsetup-compatible) and "
            "builds the volume in its payload; these options are those of `hammer luks "
            "format`")
        group.add_argument("--encrypt", action="store_true",
                           help="create an encrypted volume (LUKS2 by default)")
        add_format_args(group, for_newfs=True)


def add_remote_args(parser: argparse.ArgumentParser) -> None:
    """How an rbd: or s3:// volume is reached (ignored for files)."""
    from hammerfs.cli.sizes import parse_size

    group = parser.add_argument_group(
        "remote volumes", "VOLUME may be rbd:POOL/IMAGE (Ceph RBD) or s3://BUCKET/PREFIX (an "
        "S3-compatible store; endpoint and credentials from the standard AWS environment "
        "and files)")
    group.add_argument("--ceph-conf", metavar="FILE",
                       help="Ceph configuration (default: $CEPH_CONF, /etc/ceph/ceph.conf)")
    group.add_argument("--ceph-id", metavar="ID", help="Ceph client id (default: admin)")
    group.add_argument("--break-lock", action="store_true",
                       help="take the volume over from the host holding its lock (RBD: "
                       "fencing that host out); only when it is down or must stop")
    group.add_argument("--s3-cache", metavar="SIZE", type=parse_size,
                       help="S3: size of the local write-back cache (default 64M)")


def remote_options(args: argparse.Namespace | None):
    """The RemoteOptions the parsed ``args`` give."""
    from hammerfs.blockdev.spec import RemoteOptions

    if args is None:
        return RemoteOptions()
    return RemoteOptions(ceph_conf=getattr(args, "ceph_conf", None),
                         ceph_id=getattr(args, "ceph_id", None),
                         break_lock=bool(getattr(args, "break_lock", False)),
                         s3_cache_bytes=getattr(args, "s3_cache", None))


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
    passphrase = get_passphrase(key_file, text, confirm=confirm,
                                offset=getattr(args, "keyfile_offset", None) or 0,
                                size=getattr(args, "keyfile_size", None) or 0)
    if args is not None:
        args._luks_passphrase = passphrase
    return passphrase


def forget_passphrase(args: argparse.Namespace) -> None:
    """Drop the cached passphrase once the volume is open (a long-lived process such as a
    mount has no further use for it).  The bytes are released, not zeroed: Python gives no
    way to wipe them (the process is non-dumpable, see hammerfs.luks.secmem)."""
    if hasattr(args, "_luks_passphrase"):
        del args._luks_passphrase


def _unlock(dev: BlockDevice, args: argparse.Namespace | None, readonly: bool,
            data_device: BlockDevice | None = None, path: str | None = None) -> BlockDevice:
    """The payload of the container on ``dev``: the passphrase from --key-file, or typed at
    a prompt naming the volume (three tries); kept in ``args`` for a second open."""
    from hammerfs.luks import open_payload
    from hammerfs.luks.container import is_luks
    from hammerfs.luks.passphrase import unlock_with_tries

    if not is_luks(dev):
        return dev
    cached = getattr(args, "_luks_passphrase", None)
    if cached is not None:
        return open_payload(dev, cached, readonly=readonly, data_device=data_device)
    payload, passphrase = unlock_with_tries(
        lambda pw: open_payload(dev, pw, readonly=readonly, data_device=data_device),
        getattr(args, "key_file", None), f"Enter passphrase for {path or dev.path}: ",
        offset=getattr(args, "keyfile_offset", None) or 0,
        size=getattr(args, "keyfile_size", None) or 0)
    if args is not None:
        args._luks_passphrase = passphrase
    return payload


def _format_encrypted(dev: BlockDevice, args: argparse.Namespace) -> BlockDevice:
    from hammerfs.cli.luks_cmds import format_device
    from hammerfs.luks import payload_device

    container, key = format_device(dev, _passphrase(args, confirm=True), args)
    return payload_device(container, key)


def _open_detached(data: BlockDevice, header: str, args: argparse.Namespace,
                   readonly: bool) -> BlockDevice:
    """The payload on ``data`` of the container whose header is the file ``header``: a new
    one for newfs --encrypt, else unlocked.  The header file is only needed until the key
    is known."""
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.cli.luks_cmds import (
        check_data_device_size,
        format_device,
        open_header_for_format,
    )
    from hammerfs.luks import payload_device
    from hammerfs.luks.container import is_luks

    if getattr(args, "encrypt", False) and not readonly:
        check_data_device_size(data.path, args, data.size)
        hdr = open_header_for_format(header, args)
        try:
            container, key = format_device(hdr, _passphrase(args, confirm=True), args,
                                           detached=True)
            return payload_device(container, key, data_device=data)
        finally:
            hdr.close()
    hdr = FileDevice(header, readonly=True)
    try:
        if not is_luks(hdr):
            raise HammerError(f"{header} is not a LUKS header")
        return _unlock(hdr, args, readonly, data_device=data, path=data.path)
    finally:
        hdr.close()


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
    the decrypted payload.  ``create_size`` creates a regular file (RBD image, S3 volume) of
    that size first.  With ``args.encrypt`` (newfs) and a writable open, a new LUKS
    container is formatted first and its payload returned."""
    from hammerfs.blockdev.spec import open_device
    from hammerfs.cli.luks_cmds import detached_header

    _check_format_options(args)
    dev = open_device(path, readonly=readonly, create_size=create_size,
                      options=remote_options(args))
    try:
        header = detached_header(args, path) if args is not None else None
        if header:
            if getattr(args, "source", None) and getattr(args, "target", None):
                raise HammerError("--header is ambiguous when a command opens two volumes "
                                  "(mirror-copy/mirror-stream): mirror through a mount or "
                                  "ssh instead")
            return _open_detached(dev, header, args, readonly)
        if getattr(args, "encrypt", False) and not readonly:
            return _format_encrypted(dev, args)
        return _unlock(dev, args, readonly)
    except BaseException:
        dev.close()
        raise


def serving_mount(path: str):
    """The hammerfs mount that serves ``path``: the mount a directory is inside of, or the
    mount of the volume a device or image ``path`` is (the mount holds its lock, so commands
    that only read go through it).  None when nothing mounted serves it.  Tells the user
    when an image is read through its mount."""
    import sys

    from hammerfs.control import find_mount
    from hammerfs.control.client import MountInfo, registered_mounts

    if os.path.isdir(path):
        info = find_mount(path)
        if info is None:
            raise HammerError(f"{path}: a directory, but not inside a mounted hammerfs "
                              "(give the volume itself, or a path inside its mount)")
        return info
    for mount in registered_mounts():
        if same_file(path, mount.get("volume", "")):
            print(f"hammer: {path} is mounted on {mount['mountpoint']}: reading it through "
                  "the mount", file=sys.stderr)
            return MountInfo(mount["mountpoint"], mount["socket"], int(mount.get("pfs", 0)),
                             "", mount.get("volume", ""), int(mount.get("pid", 0)))
    return None


def same_file(a: str, b: str) -> bool:
    """The same image file or the same block device (by-id links, /dev/sdX, ...), or the
    same RBD image or S3 volume (by name)."""
    import stat

    from hammerfs.blockdev.spec import is_remote

    if is_remote(a) or is_remote(b):
        return a == b

    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
