"""`hammer luks ...`: cryptsetup-compatible LUKS container management, in userspace.

Flags follow cryptsetup's (--key-file with '-' for stdin, --new-key-file, --key-slot,
--batch-mode, --type, --pbkdf*, --iter-time, --sector-size, --header, --keyfile-offset/size).
Passphrases come from key files or a hidden prompt; nothing secret is ever written except the
volume key when the user explicitly asks for it (dump --dump-volume-key --volume-key-file).
"""

from __future__ import annotations

import argparse
import os
import sys

from hammerfs.errors import HammerError

PROG = "hammer luks"


# ---- shared option groups ---------------------------------------------------------------

def add_format_args(parser, *, for_newfs: bool = False) -> None:
    """The options of `luks format`, shared with `newfs --encrypt` (where the container's
    UUID option is --luks-uuid, as --uuid would read as the volume's)."""
    parser.add_argument("--type", dest="luks_type", choices=("luks1", "luks2"), default="luks2",
                        help="LUKS on-disk format (default luks2)")
    parser.add_argument("--pbkdf", choices=("argon2id", "argon2i", "pbkdf2"),
                        help="key derivation function (default argon2id; pbkdf2 for LUKS1)")
    parser.add_argument("--pbkdf-memory", type=int, metavar="KiB",
                        help="argon2 memory cost in KiB (default: benchmarked, at most 1 GiB "
                        "and half the RAM)")
    parser.add_argument("--pbkdf-parallel", type=int, metavar="N",
                        help="argon2 threads (default: CPUs, at most 4)")
    parser.add_argument("--pbkdf-force-iterations", type=int, metavar="N",
                        help="fixed iteration/time cost instead of a benchmark")
    parser.add_argument("--iter-time", type=int, metavar="MS",
                        help="target unlock time in milliseconds (default 2000)")
    parser.add_argument("--sector-size", type=int, choices=(512, 1024, 2048, 4096),
                        help="encryption sector size (default 4096; LUKS1 always 512)")
    parser.add_argument("--key-size", type=int, choices=(256, 512), default=512,
                        metavar="BITS", help="volume key size in bits (default 512)")
    parser.add_argument("--hash", default="sha256",
                        help="hash for PBKDF2, AF splitter and digest (default sha256)")
    parser.add_argument("--luks-uuid" if for_newfs else "--uuid", dest="luks_uuid",
                        metavar="UUID", help="UUID of the new LUKS container")


def add_kdf_args(parser: argparse.ArgumentParser) -> None:
    """The KDF options for a new key slot (add-key, change-key)."""
    parser.add_argument("--pbkdf", choices=("argon2id", "argon2i", "pbkdf2"),
                        help="key derivation function of the new slot (default: the "
                        "container's kind, argon2id for LUKS2)")
    parser.add_argument("--pbkdf-memory", type=int, metavar="KiB",
                        help="argon2 memory cost in KiB (default: benchmarked)")
    parser.add_argument("--pbkdf-parallel", type=int, metavar="N",
                        help="argon2 threads (default: CPUs, at most 4)")
    parser.add_argument("--pbkdf-force-iterations", type=int, metavar="N",
                        help="fixed iteration/time cost instead of a benchmark")
    parser.add_argument("--iter-time", type=int, metavar="MS",
                        help="target unlock time in milliseconds (default 2000)")
    parser.add_argument("--hash", default="sha256", help=argparse.SUPPRESS)


def kdf_spec(args: argparse.Namespace):
    from hammerfs.luks.container import KdfSpec

    for name in ("pbkdf_memory", "pbkdf_parallel", "pbkdf_force_iterations", "iter_time"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise HammerError(f"--{name.replace('_', '-')} must be positive")
    return KdfSpec(type=args.pbkdf, hash=getattr(args, "hash", "sha256"),
                   iter_time_ms=args.iter_time, memory=args.pbkdf_memory,
                   parallel=args.pbkdf_parallel, force_iterations=args.pbkdf_force_iterations)


def format_device(dev, passphrase: bytes, args: argparse.Namespace, *, label: str = "",
                  subsystem: str = "", slot: int = 0, detached: bool = False):
    """Format ``dev`` as the args say (``detached``: ``dev`` is a --header file); returns
    (container, volume key)."""
    from hammerfs.luks.container import format_container

    version = 1 if args.luks_type == "luks1" else 2
    return format_container(dev, passphrase, version=version, key_size=args.key_size // 8,
                            sector_size=format_sector_size(args), spec=kdf_spec(args),
                            label=label, subsystem=subsystem, uuid=args.luks_uuid,
                            hash_name=args.hash, slot=slot, detached=detached)


def format_sector_size(args: argparse.Namespace) -> int:
    return args.sector_size or (512 if args.luks_type == "luks1" else 4096)


def add_keyfile_slice_args(parser, *, new: bool = False, short: bool = False) -> None:
    """cryptsetup's --keyfile-offset/--keyfile-size (--new-keyfile-* for the new key);
    ``short`` adds cryptsetup's -l (only `hammer luks`: other commands may use -l)."""
    prefix, which = ("--new-keyfile", "new key file") if new else ("--keyfile", "key file")
    parser.add_argument(f"{prefix}-offset", type=int, metavar="BYTES",
                        help=f"skip BYTES at the start of the {which}")
    parser.add_argument(*(["-l"] if short else []), f"{prefix}-size", type=int, metavar="BYTES",
                        help=f"use BYTES of the {which}, which must hold that many (default 0: "
                        "all of it)")


def add_header_arg(parser) -> None:
    parser.add_argument("--header", metavar="FILE",
                        help="detached LUKS header: the header lives in FILE, the payload "
                        "fills VOLUME from its first byte (as cryptsetup --header)")


def detached_header(args: argparse.Namespace, volume: str | None = None) -> str | None:
    """The --header file, unless it is the volume itself (then the header is simply
    attached); ``volume`` defaults to args.volume."""
    header = getattr(args, "header", None)
    if not header:
        return None
    try:
        if os.path.samefile(header, volume or args.volume):
            return None
    except OSError:
        pass        # one of them does not exist (yet): not the same file
    return header


def open_header_for_format(path: str, args: argparse.Namespace):
    """The --header file for a new container: created (mode 0600) or grown to the size the
    header needs, as cryptsetup does; a block device is used as it is."""
    import stat

    from hammerfs.blockdev.file import FileDevice
    from hammerfs.luks.container import header_file_size

    version = 1 if args.luks_type == "luks1" else 2
    need = header_file_size(version, args.key_size // 8)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    grow = st is None or (stat.S_ISREG(st.st_mode) and st.st_size < need)
    return FileDevice(path, create_size=need if grow else None)


def check_data_device_size(path: str, args: argparse.Namespace, size: int) -> None:
    if size < format_sector_size(args):
        raise HammerError(f"{path} is too small to hold encrypted data "
                          f"({size} bytes)")


def _common(parser: argparse.ArgumentParser, *, key_file: bool = True,
            key_slot: bool = True) -> None:
    parser.add_argument("volume", metavar="VOLUME", help="LUKS container (file or device)")
    if key_file:
        parser.add_argument("-d", "--key-file", metavar="FILE",
                            help="read the passphrase from FILE ('-' for stdin)")
        add_keyfile_slice_args(parser, short=True)
    if key_slot:
        parser.add_argument("-S", "--key-slot", type=int, metavar="N", help="key slot number")
    parser.add_argument("-q", "--batch-mode", action="store_true",
                        help="do not ask for confirmation")
    add_header_arg(parser)


def _new_key_args(p: argparse.ArgumentParser) -> None:
    """Where the new passphrase comes from (add-key, change-key) and its KDF cost."""
    p.add_argument("new_key_file_pos", metavar="NEW_KEY_FILE", nargs="?",
                   help="file holding the new passphrase")
    p.add_argument("--new-key-file", "--new-keyfile", metavar="FILE",
                   help="file holding the new passphrase ('-' for stdin)")
    add_keyfile_slice_args(p, new=True)
    add_kdf_args(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
    luks = sub.add_parser(
        "luks", help="manage LUKS encrypted containers (cryptsetup-compatible)",
        description="Userspace LUKS1/LUKS2 containers that open with cryptsetup too.")
    cmds = luks.add_subparsers(dest="luks_command", metavar="ACTION")
    luks.set_defaults(func=lambda args: _usage(luks))

    p = cmds.add_parser("format", help="create a LUKS container (destroys the device's data)")
    _common(p, key_slot=False)
    add_format_args(p)
    p.add_argument("--label", default="", help="LUKS2 label")
    p.add_argument("--subsystem", default="", help="LUKS2 subsystem")
    p.add_argument("-S", "--key-slot", type=int, default=0, metavar="N",
                   help="key slot for the passphrase (default 0)")
    p.set_defaults(func=cmd_format)

    p = cmds.add_parser("test-passphrase", help="check that a passphrase opens the volume")
    _common(p)
    p.set_defaults(func=cmd_test_passphrase)

    p = cmds.add_parser("dump", help="show the header (like cryptsetup luksDump)")
    _common(p)
    p.add_argument("--dump-volume-key", "--dump-master-key", action="store_true",
                   help="also show the volume key (needs the passphrase and confirmation)")
    p.add_argument("--volume-key-file", metavar="FILE",
                   help="with --dump-volume-key: write the key to FILE instead")
    p.add_argument("--dump-json-metadata", action="store_true",
                   help="print the LUKS2 JSON metadata")
    p.set_defaults(func=cmd_dump)

    p = cmds.add_parser("add-key", help="add a passphrase in a new key slot")
    _common(p)
    _new_key_args(p)
    p.set_defaults(func=cmd_add_key)

    p = cmds.add_parser("remove-key", help="remove the key slot a passphrase opens")
    _common(p, key_slot=False)
    p.add_argument("key_file_pos", metavar="KEY_FILE", nargs="?",
                   help="file holding the passphrase to remove")
    p.set_defaults(func=cmd_remove_key)

    p = cmds.add_parser("kill-slot", help="wipe a key slot by number")
    _common(p, key_slot=False)
    p.add_argument("slot", type=int, metavar="SLOT", help="key slot to wipe")
    p.set_defaults(func=cmd_kill_slot)

    p = cmds.add_parser("change-key", help="change a passphrase")
    _common(p)
    _new_key_args(p)
    p.set_defaults(func=cmd_change_key)

    for name, func, text in (("header-backup", cmd_header_backup, "save the header to a file"),
                             ("header-restore", cmd_header_restore,
                              "restore the header from a backup file")):
        p = cmds.add_parser(name, help=text)
        _common(p, key_file=False, key_slot=False)
        p.add_argument("--header-backup-file", required=True, metavar="FILE",
                       help="the backup file (header-backup creates it; it must not exist)")
        p.set_defaults(func=func)

    p = cmds.add_parser("convert", help="convert the header between LUKS1 and LUKS2 in place "
                        "(like cryptsetup convert)")
    _common(p, key_file=False, key_slot=False)
    p.add_argument("--type", dest="luks_type", choices=("luks1", "luks2"), required=True,
                   help="the format to convert to")
    p.set_defaults(func=cmd_convert)

    p = cmds.add_parser("uuid", help="show or set the container UUID")
    _common(p, key_file=False, key_slot=False)
    p.add_argument("--uuid", metavar="UUID", help="set this UUID")
    p.set_defaults(func=cmd_uuid)

    p = cmds.add_parser("label", help="show or set the LUKS2 label and subsystem")
    _common(p, key_file=False, key_slot=False)
    p.add_argument("--label", help="set the label ('' clears it)")
    p.add_argument("--subsystem", help="set the subsystem ('' clears it)")
    p.set_defaults(func=cmd_label)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# ---- helpers ------------------------------------------------------------------------------

def _open_device(path: str, readonly: bool):
    from hammerfs.blockdev.file import FileDevice
    return FileDevice(path, readonly=readonly)


def _header_through_mount(path: str):
    """The LUKS header area of a volume that is mounted (``path`` the image or device, or a
    directory inside the mount), read through the mount process, which holds the volume's
    lock; None when nothing mounted serves ``path``."""
    from hammerfs.cli.volume import serving_mount
    from hammerfs.control import ControlClient
    from hammerfs.luks.memdev import BytesDevice

    mount = serving_mount(path)
    if mount is None:
        return None
    client = ControlClient.for_mount(mount)
    info = client.call("luks-info")
    if not info.get("luks"):
        if info.get("detached"):
            raise HammerError(f"{path}: the mounted volume's LUKS header is detached: give "
                              "--header FILE")
        raise HammerError(f"{path}: the mounted volume is not encrypted (no LUKS header)")
    data = bytearray()
    with client.open_stream("luks-header") as sock:
        while chunk := sock.recv(1 << 20):
            data += chunk
    if len(data) != info["header_size"]:
        raise HammerError(f"{path}: the mount process sent {len(data)} of "
                          f"{info['header_size']} header bytes")
    dev = BytesDevice(bytes(data))
    dev.through_mount = True
    return dev


def _from_mount(dev) -> bool:
    return bool(getattr(dev, "through_mount", False))


class _Opened:
    """Context manager: the container on VOLUME (or in its --header file), its device closed
    on exit.  Read-only commands on a mounted volume read its header through the mount."""

    def __init__(self, args: argparse.Namespace, readonly: bool = False):
        self.path, self.readonly = detached_header(args) or args.volume, readonly

    def __enter__(self):
        from hammerfs.luks.container import open_container
        from hammerfs.luks.passphrase import warn

        self.dev = _header_through_mount(self.path) if self.readonly else None
        if self.dev is None:
            self.dev = _open_device(self.path, self.readonly)
        try:
            container = open_container(self.dev, validate_device=not _from_mount(self.dev))
        except BaseException:
            self.dev.close()
            raise
        for notice in container.notices():
            warn(notice)
        return container

    def __exit__(self, *exc) -> None:
        self.dev.close()


def _passphrase(key_file: str | None, text: str, args: argparse.Namespace, *,
                confirm: bool = False, new: bool = False) -> bytes:
    """The passphrase from ``key_file`` (cut by --keyfile-offset/--keyfile-size, or by the
    --new-keyfile-* pair when ``new``) or a prompt."""
    from hammerfs.luks.passphrase import get_passphrase

    prefix = "new_keyfile" if new else "keyfile"
    return get_passphrase(key_file, text, confirm=confirm,
                          offset=getattr(args, f"{prefix}_offset", None) or 0,
                          size=getattr(args, f"{prefix}_size", None) or 0)


def _confirm(args: argparse.Namespace, question: str) -> None:
    """cryptsetup's 'Type YES' confirmation; --batch-mode skips it."""
    if args.batch_mode:
        return
    from hammerfs.luks.passphrase import interactive
    if not interactive():
        raise HammerError(f"{question} Refusing without confirmation: use --batch-mode")
    print(f"WARNING!\n========\n{question}\n", file=sys.stderr)
    try:
        answer = input("Are you sure? (Type 'yes' in capital letters): ")
    except EOFError:
        answer = ""
    if answer != "YES":
        raise HammerError("operation aborted")


def _unlock(container, args: argparse.Namespace, text: str | None = None,
            key_file: str | None = None) -> tuple[int, bytes]:
    """(slot, volume key): the passphrase from the key file, or typed (three tries, as
    cryptsetup) at a prompt naming the volume."""
    from hammerfs.luks.passphrase import unlock_with_tries

    prompt = text or f"Enter passphrase for {args.volume}: "
    slot_key, _ = unlock_with_tries(
        lambda pw: container.unlock(pw, getattr(args, "key_slot", None)),
        key_file if key_file is not None else args.key_file, prompt,
        offset=getattr(args, "keyfile_offset", None) or 0,
        size=getattr(args, "keyfile_size", None) or 0)
    return slot_key


def _new_passphrase(args: argparse.Namespace) -> bytes:
    source = args.new_key_file or args.new_key_file_pos
    if source and source == "-" and args.key_file == "-":
        raise HammerError("only one of --key-file and --new-key-file can read stdin")
    return _passphrase(source, "Enter new passphrase for key slot: ", args, confirm=True,
                       new=True)


# ---- commands -----------------------------------------------------------------------------

def cmd_format(args: argparse.Namespace) -> int:
    header = detached_header(args)
    data_size = None
    new_header = bool(header) and not os.path.exists(header)
    if header:
        # As cryptsetup: the data device must exist but is not written.
        data = _open_device(args.volume, readonly=True)
        data_size = data.size
        data.close()
        check_data_device_size(args.volume, args, data_size)
        dev = open_header_for_format(header, args)
    else:
        dev = _open_device(args.volume, readonly=False)
    try:
        container = _format_confirmed(dev, args, header or args.volume, detached=bool(header))
    except BaseException:
        if new_header:
            os.unlink(header)     # do not leave a half-made header file behind
        raise
    finally:
        dev.close()
    where = f" of {args.volume} (header in {header})" if header else ""
    print(f"{args.volume}: LUKS{container.version} container, uuid {container.uuid}, "
          f"payload {container.data_size(data_size)} bytes at offset "
          f"{container.data_offset}{where}")
    return 0


def _format_confirmed(dev, args: argparse.Namespace, target: str, *, detached: bool):
    from hammerfs.luks.container import is_luks

    existing = " (it holds a LUKS header now)" if is_luks(dev) else ""
    _confirm(args, f"This will overwrite data on {target} irrevocably{existing}.")
    passphrase = _passphrase(args.key_file, f"Enter passphrase for {args.volume}: ", args,
                             confirm=True)
    container, _ = format_device(dev, passphrase, args, label=args.label,
                                 subsystem=args.subsystem, slot=args.key_slot,
                                 detached=detached)
    return container


def cmd_test_passphrase(args: argparse.Namespace) -> int:
    with _Opened(args, readonly=True) as container:
        slot, _ = _unlock(container, args)
    print(f"Key slot {slot} unlocked.")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    import json

    with _Opened(args, readonly=True) as container:
        if args.dump_json_metadata:
            if container.version != 2:
                raise HammerError("--dump-json-metadata needs a LUKS2 volume")
            print(json.dumps(container.hdr.meta, indent=2))
            return 0
        key = None
        if args.dump_volume_key:
            _confirm(args, "Header dump with volume key is sensitive information that "
                     "allows access to the encrypted partition without a passphrase.")
            _, key = _unlock(container, args)
            if args.volume_key_file:
                _write_secret_file(args.volume_key_file, key)
                print(f"Volume key written to {args.volume_key_file}.", file=sys.stderr)
                key = None
        elif args.volume_key_file:
            raise HammerError("--volume-key-file needs --dump-volume-key")
        text = container.dump(key)
        if container.version == 1:     # cryptsetup names the device in LUKS1 dumps only
            where = detached_header(args) or args.volume
            text = text.replace("LUKS header information",
                                f"LUKS header information for {where}", 1)
        sys.stdout.write(text)
    return 0


def _write_secret_file(path: str, data: bytes) -> None:
    """Create ``path`` (it must not exist) readable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        raise HammerError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise HammerError(f"cannot create {path}: {exc.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_add_key(args: argparse.Namespace) -> int:
    with _Opened(args) as container:
        new_slot = args.key_slot
        args.key_slot = None      # --key-slot names the new slot, any slot may unlock
        _, key = _unlock(container, args, f"Enter any existing passphrase for {args.volume}: ")
        passphrase = _new_passphrase(args)
        slot = container.add_slot(key, passphrase, kdf_spec(args), new_slot)
    print(f"Key slot {slot} created.")
    return 0


def cmd_remove_key(args: argparse.Namespace) -> int:
    with _Opened(args) as container:
        source = args.key_file_pos or args.key_file
        slot, _ = _unlock(container, args, f"Enter passphrase to be deleted from {args.volume}: ", source)
        if len(container.active_slots()) == 1:
            _confirm(args, f"This is the last key slot. {args.volume} will become unusable "
                     "after purging this key.")
        container.remove_slot(slot)
    print(f"Key slot {slot} removed.")
    return 0


def cmd_kill_slot(args: argparse.Namespace) -> int:
    with _Opened(args) as container:
        active = container.active_slots()
        if args.slot not in active:
            raise HammerError(f"key slot {args.slot} is not active")
        if len(active) == 1:
            _confirm(args, f"This is the last key slot. {args.volume} will become unusable "
                     "after purging this key.")
        elif not args.batch_mode or args.key_file:
            # As cryptsetup: prove you keep access through another slot.
            passphrase = _passphrase(args.key_file, "Enter any remaining passphrase: ", args)
            others = [s for s in active if s != args.slot]
            if not _opens_any(container, passphrase, others):
                raise HammerError("no remaining key slot opens with this passphrase")
        container.remove_slot(args.slot)
    print(f"Key slot {args.slot} removed.")
    return 0


def _opens_any(container, passphrase: bytes, slots: list[int]) -> bool:
    from hammerfs.luks.container import UnlockFailed

    for slot in slots:
        try:
            container.unlock(passphrase, slot)
        except UnlockFailed:     # wrong passphrase, or that slot is damaged: try the next
            continue
        return True
    return False


def cmd_change_key(args: argparse.Namespace) -> int:
    with _Opened(args) as container:
        slot, key = _unlock(container, args, f"Enter passphrase to be changed in {args.volume}: ")
        passphrase = _new_passphrase(args)
        new_slot = container.change_slot(slot, key, passphrase, kdf_spec(args))
    print(f"Key slot {slot} changed" + (f" (now key slot {new_slot})." if new_slot != slot
                                        else "."))
    return 0


def cmd_header_backup(args: argparse.Namespace) -> int:
    with _Opened(args, readonly=True) as container:
        data = container.dev.read(0, container.header_area_size())
    _write_secret_file(args.header_backup_file, data)
    print(f"Header of {args.volume} saved to {args.header_backup_file} ({len(data)} bytes).")
    return 0


def cmd_header_restore(args: argparse.Namespace) -> int:
    from hammerfs.luks.container import is_luks, open_container
    from hammerfs.luks.memdev import BytesDevice

    try:
        with open(args.header_backup_file, "rb") as f:
            backup = f.read(128 * 1024 * 1024 + 1)
    except OSError as exc:
        raise HammerError(f"cannot read {args.header_backup_file}: {exc.strerror}") from None
    try:
        saved = open_container(BytesDevice(backup), validate_device=False)
    except HammerError as exc:
        raise HammerError(f"{args.header_backup_file} is not a valid LUKS header backup: "
                          f"{exc}") from None
    if saved.header_area_size() != len(backup):
        raise HammerError(f"{args.header_backup_file} is not a LUKS header backup (size "
                          f"{len(backup)} does not match the header's {saved.header_area_size()})")
    target = detached_header(args) or args.volume
    dev = _open_device(target, readonly=False)
    try:
        if saved.data_offset and saved.data_offset > dev.size:
            raise HammerError(f"the backup's data offset lies beyond the end of {target}")
        note = ""
        if is_luks(dev):
            try:
                current = open_container(dev)
                if current.uuid != saved.uuid or current.version != saved.version:
                    note = (f" The device holds a different LUKS header (uuid {current.uuid}); "
                            "its key slots will be lost.")
            except HammerError:
                note = " The device's current header is damaged."
        _confirm(args, f"Device {target} will have its header replaced from "
                 f"{args.header_backup_file}.{note}")
        if len(backup) > dev.size:
            raise HammerError(f"the backup ({len(backup)} bytes) does not fit in {target} "
                              f"({dev.size} bytes)")
        dev.write(0, backup)
        dev.flush()
    finally:
        dev.close()
    print(f"Header of {target} restored from {args.header_backup_file}.")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from hammerfs.luks.convert import convert

    version = 1 if args.luks_type == "luks1" else 2
    with _Opened(args) as container:
        if container.version == version:
            raise HammerError(f"{args.volume} is already LUKS{version}")
        _confirm(args, f"This operation will convert {args.volume} to LUKS{version} format. "
                 "It is not crash-safe: take a header-backup first.")
        dropped = container.version == 2 and bool(container.hdr.label
                                                  or container.hdr.subsystem)
        converted = convert(container, version)
    if dropped:
        from hammerfs.luks.passphrase import warn
        warn("the LUKS2 label and subsystem were dropped (LUKS1 has neither)")
    print(f"{args.volume}: converted to LUKS{converted.version}.")
    return 0


def cmd_uuid(args: argparse.Namespace) -> int:
    with _Opened(args, readonly=args.uuid is None) as container:
        if args.uuid is None:
            print(container.uuid)
            return 0
        container.check_usable()
        container.set_uuid(args.uuid)
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    changing = args.label is not None or args.subsystem is not None
    with _Opened(args, readonly=not changing) as container:
        if container.version != 2:
            raise HammerError("labels are supported only on LUKS2")
        if changing:
            container.check_usable()
            container.set_label(args.label, args.subsystem)
        else:
            print(f"Label:     {container.hdr.label}")
            print(f"Subsystem: {container.hdr.subsystem}")
    return 0
