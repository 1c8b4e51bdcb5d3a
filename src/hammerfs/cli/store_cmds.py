"""`hammer` subcommands of the store layer: newfs, info, show (scrub: scrub_cmds.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from hammerfs.blockdev.spec import device_exists, is_remote, open_device
from hammerfs.cli.sizes import human as _human
from hammerfs.cli.sizes import parse_size
from hammerfs.cli.volume import (
    add_volume_args,
    open_volume_device,
    remote_options,
    serving_mount,
)
from hammerfs.errors import HammerError, NotAVolume
from hammerfs.fs.filesystem import init_pfs_root
from hammerfs.store.format import FORMAT_VERSION
from hammerfs.store.records import MAX_U64
from hammerfs.store.store import Store, read_header


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
    p = sub.add_parser(
        "newfs", help="create a new volume",
        description="Create a new, empty hammerfs volume (with the root PFS #0) on a regular "
        "file or a block device.  An existing hammerfs volume is never overwritten without "
        "-f/--force.")
    p.add_argument("-L", "--label", default="", help="volume label (up to 63 bytes)")
    p.add_argument("--size", metavar="N", type=parse_size,
                   help="create (or resize) a regular file of N bytes; K/M/G/T suffixes "
                   "(powers of 1024), fractions allowed: 512M, 1.5G")
    p.add_argument("-f", "--force", action="store_true",
                   help="overwrite whatever VOLUME holds: a hammerfs volume, another "
                   "filesystem, a LUKS container (its old key is not needed), a partition "
                   "table, swap, a RAID member, or data of no known type")
    p.add_argument("volume", metavar="VOLUME", help="image file or block device")
    add_volume_args(p, creating=True)
    p.set_defaults(func=cmd_newfs)

    p = sub.add_parser(
        "info", help="show volume summary",
        description="Show the label, uuid, format version, size and space use, big-block "
        "fill, PFS count and TIDs of a volume.")
    p.add_argument("volume", metavar="VOLUME", help="image file or block device")
    add_volume_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "show", help="dump the B-tree, verifying every checksum",
        description="Dump the record index (B-tree nodes and records), verifying the "
        "checksum of every node and data block read on the way.  KEY-PREFIX limits the "
        "records shown: PFS[:OBJ[:TYPE[:KEY]]], numbers in decimal or 0x-hex.")
    p.add_argument("volume", metavar="VOLUME", help="image file or block device")
    p.add_argument("prefix", metavar="KEY-PREFIX", nargs="?",
                   help="show only records under PFS[:OBJ[:TYPE[:KEY]]]")
    add_volume_args(p)
    p.set_defaults(func=cmd_show)


def _open(args: argparse.Namespace, readonly: bool) -> Store:
    dev = open_volume_device(args.volume, args, readonly=readonly)
    try:
        return Store.open(dev, readonly=readonly)
    except BaseException:
        dev.close()
        raise


def cmd_newfs(args: argparse.Namespace) -> int:
    if is_remote(args.volume):  # an RBD image or S3 volume: nothing to clean up locally
        return _newfs(args)
    created = not os.path.exists(args.volume)
    try:
        return _newfs(args)
    except BaseException:
        if created and os.path.isfile(args.volume):  # leave no half-made image behind
            os.unlink(args.volume)
        raise


def _newfs(args: argparse.Namespace) -> int:
    if device_exists(args.volume, remote_options(args)):
        _refuse_to_overwrite(args)
    elif args.size is None:
        what = "the volume" if is_remote(args.volume) else "an image file"
        raise HammerError(f"{args.volume} does not exist; give --size to create {what}")
    size = args.size // 4096 * 4096 if args.size is not None else None
    if size is not None and not is_remote(args.volume):
        _warn_if_larger_than_free_space(args.volume, size)
    dev = open_volume_device(args.volume, args, create_size=size)
    try:
        if not args.force and not getattr(args, "encrypt", False):
            _refuse_payload_in_use(args.volume, dev)
        store = Store.create(dev, args.label)
    except BaseException:
        dev.close()
        raise
    init_pfs_root(store, 0)  # a complete, empty filesystem, usable unmounted too
    space = store.space()
    print(f"newfs: {args.volume}: {_human(space.total_bytes)}, label {store.label!r}, "
          f"uuid {store.uuid}")
    store.close()
    return 0


def _refuse_to_overwrite(args: argparse.Namespace) -> None:
    """Refuse (without -f) when VOLUME holds anything newfs would destroy: a hammerfs
    volume, a signature util-linux or the built-in table knows, or (a regular file) data of
    no known type.  Looks at the raw device only: a LUKS container is never unlocked here,
    so -f works over one whose key is lost."""
    from hammerfs.blockdev.signatures import find_signatures, holds_data
    from hammerfs.luks.container import is_luks
    from hammerfs.luks.passphrase import interactive

    remote = is_remote(args.volume)
    dev = open_device(args.volume, readonly=True, options=remote_options(args))
    try:
        if not getattr(args, "encrypt", False) and _detached(args):
            return  # VOLUME is the payload of a container: checked once unlocked
        keep_luks = is_luks(dev) and not getattr(args, "encrypt", False)
        if keep_luks and not args.key_file and not interactive():
            raise HammerError(f"{args.volume} is a LUKS container: give its --key-file to "
                              "build the volume inside it, or -f --encrypt to replace it "
                              "(its old key is then not needed)")
        found = None if args.force else _hammerfs_header(dev)
        if found is None and not args.force:
            # util-linux cannot see a remote volume: the built-in table only
            sigs = [s.text for s in find_signatures("" if remote else args.volume, dev.read,
                                                    dev.size)
                    if not (keep_luks and s.kind == "luks")]
            if sigs:
                found = " and ".join(sigs)
            elif not keep_luks and (remote or os.path.isfile(args.volume)) and \
                    holds_data(dev.read, dev.size):
                found = "data of no known type (it is not all zeros)"
    finally:
        dev.close()
    if found is not None:
        raise HammerError(f"{args.volume} already holds {found}; newfs would destroy it: "
                          "use -f to overwrite it")


def _detached(args: argparse.Namespace) -> bool:
    from hammerfs.cli.luks_cmds import detached_header
    return bool(detached_header(args))


def _refuse_payload_in_use(volume: str, dev) -> None:
    """newfs inside an existing LUKS container keeps the container: refuse (without -f)
    when its payload already holds a hammerfs volume or another known signature."""
    from hammerfs.blockdev.signatures import find_signatures
    from hammerfs.luks.device import LuksDevice

    if not isinstance(dev, LuksDevice):  # a plain volume: checked before it was opened
        return
    found = _hammerfs_header(dev)
    if found is None:
        sigs = find_signatures("", dev.read, dev.size)  # in memory: built-in table only
        found = " and ".join(s.text for s in sigs) if sigs else None
    if found is not None:
        raise HammerError(f"the encrypted payload of {volume} already holds {found}; "
                          "newfs would destroy it: use -f to overwrite it")


def _hammerfs_header(dev) -> str | None:
    existing = None
    with contextlib.suppress(NotAVolume, HammerError):
        existing = read_header(dev)
    if existing is None:
        return None
    return f"a hammerfs volume (label {existing.label!r}, uuid {existing.uuid})"


def _warn_if_larger_than_free_space(volume: str, size: int) -> None:
    """An image file larger than its host file system's free space is created sparse and
    fails with ENOSPC once it fills: say so now."""
    from hammerfs.luks.passphrase import warn

    try:
        have = os.path.getsize(volume) if os.path.isfile(volume) else 0
        st = os.statvfs(os.path.dirname(os.path.abspath(volume)))
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if size - have > free:
        warn(f"--size {_human(size)} is larger than the free space on the file system of "
             f"{volume} ({_human(free)} free): the image is sparse and writes will fail "
             "with 'no space left' once the host file system is full")


def cmd_info(args: argparse.Namespace) -> int:
    from hammerfs.control import ControlClient
    from hammerfs.control.ops import volume_info

    mount = serving_mount(args.volume)
    if mount is not None:
        info = ControlClient.for_mount(mount).call("volume-info")
        volume = mount.volume or args.volume
    else:
        store = _open(args, readonly=True)
        try:
            info = volume_info(store)
        finally:
            store.close()
        volume = args.volume
    _print_info(info, volume, mount.mountpoint if mount else None)
    return 0


def _print_info(info: dict, volume: str, mountpoint: str | None) -> None:
    total, used = info["total_bytes"], info["used_bytes"]
    fill, per_bb = info["fill"], info["bigblock_size"] // info["block_size"]
    full = sum(1 for f in fill if f >= per_bb)
    damage = info.get("header_damage")
    lines = [
        ("Volume", volume),
        *([("Mounted on", mountpoint)] if mountpoint else []),
        ("Label", info["label"]),
        ("UUID", info["uuid"]),
        ("Format version", str(info.get("format_version", FORMAT_VERSION))),
        ("Size", _human(total)),
        ("Used", f"{_human(used)} ({used * 100 // total}%)"),
        ("Free", _human(info["free_bytes"])),
        *([("Available", _human(info["avail_bytes"]) + " (what writes can still fill)")]
          if "avail_bytes" in info else []),
        ("Big-blocks", f"{info['bigblocks_total']} of {_human(info['bigblock_size'])}: "
                       f"{info['bigblocks_free']} empty, "
                       f"{info['bigblocks_total'] - info['bigblocks_free'] - full} partly "
                       f"used, {full} full"),
        ("Big-block fill", _fill_histogram(fill, per_bb)),
        ("PFS count", str(info["pfs_count"])),
        ("Commit seq", str(info["seq"])),
        ("Last commit TID", _tid(info["last_committed_tid"])),
        ("Next TID", _tid(info["current_tid"])),
        ("Header copies", "2 valid" if damage is None else
         f"DAMAGED: slot {damage['slot']} (see the warning)"),
    ]
    if damage is not None:  # a rollback must never pass silently
        print(f"hammer: WARNING: {damage['message']}", file=sys.stderr)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")


def cmd_show(args: argparse.Namespace) -> int:
    import sys

    from hammerfs.control import ControlClient
    from hammerfs.control.ops import SHOW_ERROR, show_lines

    prefix = _parse_prefix(args.prefix) if args.prefix else ()
    mount = serving_mount(args.volume)
    if mount is None:
        store = _open(args, readonly=True)
        try:
            for line in show_lines(store, prefix):
                print(line)
        finally:
            store.close()
        return 0
    sock = ControlClient.for_mount(mount).open_stream("show", prefix=list(prefix))
    pending = b""
    with sock:
        while chunk := sock.recv(1 << 16):
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(SHOW_ERROR):
                    sys.stdout.flush()
                    raise HammerError(line[len(SHOW_ERROR):].decode(errors="replace"))
                sys.stdout.write(line.decode(errors="replace") + "\n")
    if pending:
        raise HammerError("the mount process ended the show output early")
    return 0


def _fill_histogram(fill: list[int], per_bb: int) -> str:
    """How many big-blocks are empty, 1-25%, ..., 76-99% and 100% full."""
    labels = ("empty", "1-25%", "26-50%", "51-75%", "76-99%", "full")
    counts = [0] * len(labels)
    for used in fill:
        if used == 0:
            counts[0] += 1
        elif used >= per_bb:
            counts[5] += 1
        else:
            counts[1 + min(3, (used * 4 - 1) // per_bb)] += 1
    return ", ".join(f"{label} {n}" for label, n in zip(labels, counts, strict=True) if n)


def _parse_prefix(text: str) -> tuple[int, ...]:
    parts = text.split(":")
    if len(parts) > 4:
        raise HammerError(f"invalid key prefix {text!r}: use PFS[:OBJ[:TYPE[:KEY]]]")
    try:
        values = tuple(int(p, 0) for p in parts)
    except ValueError:
        raise HammerError(f"invalid key prefix {text!r}: fields are numbers") from None
    if any(not 0 <= v <= MAX_U64 for v in values):
        raise HammerError(f"invalid key prefix {text!r}: field out of range")
    return values


def _tid(tid: int) -> str:
    return f"0x{tid:016x}"
