"""What a device holds before `hammer newfs` overwrites it: foreign signatures.

``find_signatures(path)`` lists what util-linux's ``wipefs --no-act`` (every signature, with
its offset) and ``blkid -p`` (low-level probe, partition tables too) detect, plus a built-in
check of the common magic numbers, so the check works on a machine without util-linux too
(and catches what an old blkid does not know).  Each finding is a short text fit to print,
e.g. ``ext4 filesystem (uuid ..., at offset 0x438)``.

The built-in table covers what a sysadmin most often points newfs at by mistake: Linux
filesystems, LUKS, partition tables (MBR, GPT), swap, RAID members (md, LVM), ZFS, FAT, NTFS,
ISO 9660 and squashfs.  hammerfs's own header is recognised by the store (``read_header``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

PROBE_TIMEOUT = 20  # seconds: wipefs/blkid on a hung device must not hang newfs
_HEAD = 128 * 1024  # bytes read from the start for the built-in checks
_MD_MAGIC = bytes.fromhex("fc4e2ba9")  # 0xa92b4efc little-endian


@dataclass(frozen=True, slots=True)
class Signature:
    kind: str  # canonical: "luks", "ext", "swap", "mbr", "gpt", "md", ...
    text: str  # what to tell the user


def find_signatures(path: str, read: Callable[[int, int], bytes], size: int
                    ) -> list[Signature]:
    """Every known signature on the device ``path`` (``read(offset, length)`` reads it,
    ``size`` is its length; an empty ``path``: a device util-linux cannot see, such as a
    decrypted payload, gets the built-in table only): the union of util-linux's findings and the built-in table,
    one per kind of signature."""
    found: dict[str, Signature] = {}
    probed = _util_linux(path) if path else []
    for kind, text in [*probed, *_builtin(read, size)]:
        canonical = _canonical(kind)
        found.setdefault(canonical, Signature(canonical, text))
    return list(found.values())


def _canonical(kind: str) -> str:
    """One name per kind, so wipefs's ``crypto_LUKS`` and ours are reported once."""
    kind = kind.lower()
    aliases = {"crypto_luks": "luks", "linux_raid_member": "md", "lvm2_member": "lvm",
               "zfs_member": "zfs", "iso9660": "iso", "vfat": "fat", "dos": "mbr",
               "ext2": "ext", "ext3": "ext", "ext4": "ext", "jbd": "ext",
               "pmbr": "gpt"}
    return aliases.get(kind, kind)


# ---- util-linux ---------------------------------------------------------------------------

def _util_linux(path: str) -> list[tuple[str, str]]:
    return [*_wipefs(path), *_blkid(path)]


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _wipefs(path: str) -> list[tuple[str, str]]:
    out = _run(["wipefs", "--no-act", "--json", path])
    if not out:
        return []
    try:
        sigs = json.loads(out).get("signatures", [])
    except ValueError:
        return []
    found = []
    for sig in sigs:
        kind = str(sig.get("type") or "")
        if not kind:
            continue
        extra = [f"uuid {sig['uuid']}"] if sig.get("uuid") else []
        if sig.get("label"):
            extra.append(f"label {sig['label']!r}")
        extra.append(f"at offset {sig.get('offset', '?')}")
        found.append((kind, f"{_describe(kind)} ({', '.join(extra)})"))
    return found


def _blkid(path: str) -> list[tuple[str, str]]:
    out = _run(["blkid", "-p", "-o", "export", path])
    if not out:
        return []
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    found = []
    if fields.get("TYPE"):
        extra = f" (uuid {fields['UUID']})" if fields.get("UUID") else ""
        found.append((fields["TYPE"], _describe(fields["TYPE"]) + extra))
    if fields.get("PTTYPE"):
        found.append((fields["PTTYPE"], _describe(fields["PTTYPE"])))
    return found


_DESCRIPTIONS = {
    "crypto_luks": "LUKS encrypted container", "swap": "swap area",
    "linux_raid_member": "Linux md RAID member", "lvm2_member": "LVM physical volume",
    "zfs_member": "ZFS pool member", "dos": "DOS/MBR partition table",
    "gpt": "GPT partition table", "PMBR": "protective MBR (GPT)", "iso9660": "ISO 9660 image",
    "vfat": "FAT filesystem", "squashfs": "squashfs image",
}


def _describe(kind: str) -> str:
    text = _DESCRIPTIONS.get(kind) or _DESCRIPTIONS.get(kind.lower())
    return text or f"{kind} filesystem"


# ---- built-in magic numbers ---------------------------------------------------------------

def _builtin(read: Callable[[int, int], bytes], size: int) -> list[tuple[str, str]]:
    head = read(0, min(size, _HEAD)) if size else b""
    found = []
    for kind, offset, magic in _HEAD_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            found.append((kind, f"{_describe(kind)} (at offset {offset:#x})"))
    if _has_mbr(head):
        found.append(("dos", f"{_describe('dos')} (at offset 0x1fe)"))
    if head[1080:1082] == b"\x53\xef" and _plausible_ext(head):
        found.append(("ext4", "ext2/3/4 filesystem (at offset 0x438)"))
    for pagesize in (4096, 8192, 16384, 65536):
        sig = head[pagesize - 10:pagesize]
        if sig in (b"SWAPSPACE2", b"SWAP-SPACE"):
            found.append(("swap", f"swap area (at offset {pagesize - 10:#x})"))
            break
    found += _md_members(head, read, size)
    for sector in range(4):
        if head[sector * 512:sector * 512 + 8] == b"LABELONE" and \
                head[sector * 512 + 24:sector * 512 + 32] == b"LVM2 001":
            found.append(("lvm2_member", f"LVM physical volume (at offset {sector * 512:#x})"))
            break
    if head[0:6] == b"LUKS\xba\xbe":
        found.append(("crypto_LUKS", _luks_text(head)))
    return found


# (kind, offset, magic) tested against the first _HEAD bytes
_HEAD_MAGICS = [
    ("xfs", 0, b"XFSB"),
    ("btrfs", 0x10040, b"_BHRfS_M"),
    ("gpt", 512, b"EFI PART"),
    ("gpt", 4096, b"EFI PART"),
    ("ntfs", 3, b"NTFS    "),
    ("vfat", 54, b"FAT12   "),
    ("vfat", 54, b"FAT16   "),
    ("vfat", 82, b"FAT32   "),
    ("iso9660", 0x8001, b"CD001"),
    ("squashfs", 0, b"hsqs"),
    ("f2fs", 0x400, bytes.fromhex("1020f5f2")),
    ("bcache", 0x1018, bytes.fromhex("c68573f64e1a45ca8265f57f48ba6d81")),
]


def _has_mbr(head: bytes) -> bool:
    """A DOS partition table: the 0x55AA mark and at least one plausible entry (a FAT/NTFS
    boot sector carries the mark too; those are reported by their own magic)."""
    if head[510:512] != b"\x55\xaa" or head[3:11] == b"NTFS    " or \
            head[54:59] == b"FAT1" or head[82:87] == b"FAT32":
        return False
    entries = [head[446 + 16 * i:462 + 16 * i] for i in range(4)]
    if any(e[4] == 0xEE for e in entries):  # GPT's protective MBR: reported as GPT
        return False
    return any(e[4] != 0 and e[0] in (0, 0x80) for e in entries)


def _plausible_ext(head: bytes) -> bool:
    """The ext superblock's 0xEF53 plus a sane block-size field, so random data rarely
    matches (2 bytes alone would)."""
    log_block_size = int.from_bytes(head[1024 + 24:1024 + 28], "little")
    return log_block_size <= 6


def _md_members(head: bytes, read: Callable[[int, int], bytes], size: int
                ) -> list[tuple[str, str]]:
    """md superblocks: 1.1 at 0, 1.2 at 4 KiB, 1.0 near the end, 0.90 in the last 64 KiB."""
    offsets = [0, 4096]
    if size >= 16384:
        offsets.append((size - 8192) & ~4095)
    if size >= 131072:
        offsets.append((size & ~65535) - 65536)
    for offset in offsets:
        data = head[offset:offset + 4] if offset + 4 <= len(head) else _safe_read(read, offset)
        if data == _MD_MAGIC:
            return [("linux_raid_member", f"Linux md RAID member (at offset {offset:#x})")]
    return []


def _safe_read(read: Callable[[int, int], bytes], offset: int) -> bytes:
    try:
        return read(offset, 4096)[:4]  # whole blocks: a LUKS payload reads no less
    except Exception:  # a short or failing device is simply not an md member
        return b""


def _luks_text(head: bytes) -> str:
    version = int.from_bytes(head[6:8], "big")
    text = head[168:208].split(b"\0", 1)[0].decode("ascii", "replace")
    try:
        extra = f"uuid {uuidlib.UUID(text)}, "
    except ValueError:
        extra = ""
    return f"LUKS{version if version in (1, 2) else ''} encrypted container ({extra}at offset 0x0)"


def holds_data(read: Callable[[int, int], bytes], size: int) -> bool:
    """Whether the first MiB holds anything but zeros (a regular file with content that no
    signature explains is somebody's data, not an empty image)."""
    step = 1 << 16
    for offset in range(0, min(size, 1 << 20), step):
        if read(offset, min(step, size - offset)).strip(b"\0"):
            return True
    return False
