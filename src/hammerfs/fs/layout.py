"""Filesystem record formats: how inodes, names, file data, symlinks and xattrs are kept as
store records.  Every encoding is explicit little-endian and versioned; docs/format.md
("Filesystem records") documents them field by field.

Record keys are ``(pfs, obj_id, rec_type, key)``:

- REC_INODE   (obj, 0x01, 0): the inode struct below.
- REC_DIRENT  (dir, 0x11, name_key): child obj_id + type + full name.  ``name_key`` is a
  31-bit name hash in bits 32..62 and a collision counter in the low 32 bits, so names with
  equal hashes get distinct keys and readdir can resume at ``key + 1``.
- REC_DATA    (file, 0x10, byte offset, a multiple of PAGE): an extent of file data, at most
  BLOCK bytes, never crossing a BLOCK-aligned window; live extents never overlap.  Bytes no
  live extent covers are a hole (zeros up to the file size).
- REC_SYMLINK (obj, 0x12, 0): the symlink target bytes.
- REC_XATTR   (obj, 0x13, name_key): name + value, keyed like directory entries.
- REC_ORPHAN  (ROOT_OBJ, 0x14, obj): an unlinked inode still open when the change was made;
  removed when its last user closes it (or at the next mount if the owner died).
- REC_SNAPSHOT (ROOT_OBJ, 0x16, tid): the store-owned snapshot record, whose payload format
  the fs layer defines (snapshot TID, wall-clock ns, note).
"""

from __future__ import annotations

import hashlib
import stat
import struct
from dataclasses import dataclass, replace

from hammerfs.errors import CorruptionError

REC_INODE = 0x01
REC_DATA = 0x10
REC_DIRENT = 0x11
REC_SYMLINK = 0x12
REC_XATTR = 0x13
REC_ORPHAN = 0x14

BLOCK = 64 * 1024  # largest file data extent, and the window none crosses
PAGE = 4096  # extents start at multiples of this; a write rewrites at most its edge pages
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
SYMLINK_MAX = 4095
COLLISION_MASK = 0xFFFFFFFF

NOHISTORY = 0x1  # inode flag: changes to this object keep no history (inherited by children)
HISTORY_INTERVAL_MAX = 366 * 86400  # seconds
HISTORY_KEY = 2  # REC_CONFIG key of a PFS's history settings (cleanup.py owns keys 0 and 1)
_HISTORY_MAGIC = b"hammerfs-history 1\n"

_INODE = struct.Struct("<B3xIIIIQQqqqqQI4x")
INODE_VERSION = 1
_DIRENT = struct.Struct("<QB")
_XATTR = struct.Struct("<H")
_SNAPSHOT = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class Inode:
    """One object's attributes (HAMMER's inode record).  Times are ns since the epoch."""

    obj_id: int
    mode: int
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    size: int = 0
    rdev: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    btime: int = 0
    parent: int = 0  # directories: the parent directory's obj_id (for '..' and history)
    flags: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def evolve(self, **changes) -> Inode:
        return replace(self, **changes)

    def encode(self) -> bytes:
        return _INODE.pack(INODE_VERSION, self.mode, self.uid, self.gid, self.nlink, self.size,
                           self.rdev, self.atime, self.mtime, self.ctime, self.btime,
                           self.parent, self.flags)

    @classmethod
    def decode(cls, obj_id: int, raw: bytes) -> Inode:
        if len(raw) != _INODE.size or raw[0] != INODE_VERSION:
            raise CorruptionError(f"inode {obj_id:#x}: bad inode record "
                                  f"({len(raw)} bytes, version {raw[:1].hex()})")
        (_v, mode, uid, gid, nlink, size, rdev, atime, mtime, ctime, btime, parent,
         flags) = _INODE.unpack(raw)
        return cls(obj_id, mode, uid, gid, nlink, size, rdev, atime, mtime, ctime, btime,
                   parent, flags)


@dataclass(frozen=True, slots=True)
class DirEntry:
    key: int
    name: bytes
    obj_id: int
    dtype: int  # the S_IFMT bits of the child's mode, >> 12

    @property
    def mode_type(self) -> int:
        return self.dtype << 12


def encode_dirent(obj_id: int, mode: int, name: bytes) -> bytes:
    return _DIRENT.pack(obj_id, stat.S_IFMT(mode) >> 12) + name


def decode_dirent(key: int, raw: bytes) -> DirEntry:
    if len(raw) <= _DIRENT.size:
        raise CorruptionError(f"directory entry {key:#x}: truncated record")
    obj_id, dtype = _DIRENT.unpack_from(raw)
    return DirEntry(key, raw[_DIRENT.size:], obj_id, dtype)


def name_hash(name: bytes) -> int:
    """The directory/xattr key of the first slot for ``name``: 31 hash bits above a 32-bit
    collision counter (31 so keys + small offsets stay positive in a signed off_t)."""
    digest = hashlib.blake2b(name, digest_size=4).digest()
    return (int.from_bytes(digest, "little") & 0x7FFFFFFF) << 32


def encode_xattr(name: bytes, value: bytes) -> bytes:
    return _XATTR.pack(len(name)) + name + value


def decode_xattr(raw: bytes) -> tuple[bytes, bytes]:
    (nlen,) = _XATTR.unpack_from(raw)
    if len(raw) < _XATTR.size + nlen:
        raise CorruptionError("xattr record truncated")
    return raw[2:2 + nlen], raw[2 + nlen:]


@dataclass(frozen=True, slots=True)
class Snapshot:
    tid: int
    ts: int  # wall-clock ns when taken
    note: str

    def encode(self) -> bytes:
        return _SNAPSHOT.pack(self.tid, self.ts) + self.note.encode("utf-8")[:64]

    @classmethod
    def decode(cls, raw: bytes) -> Snapshot:
        tid, ts = _SNAPSHOT.unpack_from(raw)
        return cls(tid, ts, raw[_SNAPSHOT.size:].decode("utf-8", "replace"))


def encode_history_config(interval_s: int) -> bytes:
    """The history settings record: ``hammerfs-history 1``, then ``interval <seconds>``."""
    return _HISTORY_MAGIC + b"interval %d\n" % interval_s


def decode_history_config(raw: bytes) -> int:
    """The history interval in seconds (0: every commit is kept)."""
    try:
        if not raw.startswith(_HISTORY_MAGIC):
            raise ValueError("bad magic")
        key, value = raw[len(_HISTORY_MAGIC):].decode("ascii").split()
        if key != "interval" or int(value) < 0:
            raise ValueError(key)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise CorruptionError(f"history settings record is malformed: {raw[:64]!r}") from None
