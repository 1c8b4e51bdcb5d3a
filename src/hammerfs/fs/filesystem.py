"""The POSIX filesystem over the RecordStore contract, addressed by object id (like the FUSE
low-level API): inodes, directories, file data, symlinks, hard links, xattrs, device nodes.

One ``FileSystem`` is one *view*: a PFS, live (``asof=None``) or as of a TID (read-only).
Every change lands in the store's open transaction; ``fsync`` commits it (durable).  Callers
serialise access (the mount holds one coarse lock around every call); the object itself keeps
no state besides open counts, so any number of views over one store may coexist.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator

from hammerfs.errors import ErrnoError, NoSpace, ReadOnly
from hammerfs.fs.asof import as_of_attributes, is_history_view, restrict_to_live
from hammerfs.fs.layout import (
    BLOCK,
    COLLISION_MASK,
    HISTORY_KEY,
    NAME_MAX,
    NOHISTORY,
    PAGE,
    REC_DATA,
    REC_DIRENT,
    REC_INODE,
    REC_ORPHAN,
    REC_SYMLINK,
    REC_XATTR,
    SYMLINK_MAX,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    DirEntry,
    Inode,
    decode_dirent,
    decode_history_config,
    decode_xattr,
    encode_dirent,
    encode_xattr,
    name_hash,
)
from hammerfs.store.api import RecordStore
from hammerfs.store.records import HISTORY_ALL, HISTORY_NONE, MAX_U64, REC_CONFIG, ROOT_OBJ

XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
MAX_REC_TYPE = 0xFFFF
INODE_CACHE = 65536  # decoded inodes a view keeps at most (~512 bytes each)
# A write into a window left in more extents than this rewrites the whole window as one
# extent: always for a nohistory file (the fragments it replaces are freed at once), else if
# the bytes it copies are at most MERGE_COPY of those written into the window since it was
# last written whole (history then grows by at most that share: a merge copies the window,
# so with history kept it comes once per ~3 rewrites of the window).
MERGE_EXTENTS = 6
MERGE_COPY = 1 / 3


class CacheStats:
    """Lookups in the inode caches of every view of this process, and the misses (metrics:
    a mount is one process)."""

    lookups = 0
    misses = 0


class FsError(ErrnoError):
    """A POSIX error (ENOENT, EEXIST, ...) with a message; FUSE returns its errno."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(code, message or os.strerror(code))


def now_ns() -> int:
    return time.time_ns()


def init_pfs_root(store: RecordStore, pfs: int, *, mode: int = 0o755, uid: int = 0,
                  gid: int = 0) -> bool:
    """Create the root directory of ``pfs`` if it has none.  True if it was created."""
    if store.get((pfs, ROOT_OBJ, REC_INODE, 0)) is not None:
        return False
    t = now_ns()
    root = Inode(ROOT_OBJ, stat.S_IFDIR | (mode & 0o7777), uid, gid, 2, 0, 0, t, t, t, t,
                 ROOT_OBJ)
    store.put((pfs, ROOT_OBJ, REC_INODE, 0), root.encode())
    return True


class FileSystem:
    def __init__(self, store: RecordStore, pfs: int = 0, asof: int | None = None, *,
                 readonly: bool = False, live_perms: bool = True):
        """``live_perms``: a history view presents permission bits restricted by the live
        object's (fs/asof.py, mount option history_perms)."""
        self.store = store
        self.pfs = pfs
        self.asof = asof
        self.readonly = readonly or asof is not None or store.readonly
        self.is_history = is_history_view(store, pfs, asof)  # fs/asof.py
        self.live_perms = live_perms and self.is_history
        self._open: Counter[int] = Counter()
        # Decoded inodes of the live view, written through by every change made here.
        # Whoever changes this PFS's records behind the view calls forget().
        self._inodes: dict[int, Inode] = {}
        # Objects known to have no xattrs: the kernel asks for security.capability on every
        # write and chown, and new files have none.  Written through like _inodes.
        self._no_xattrs: set[int] = set()
        self._interval_ns: int | None = None  # the PFS's history interval, read once
        # File extents this view wrote with new data in the open transaction (obj, key):
        # the ones a later write next to them merges with.  (Slices of older extents made in
        # this transaction are not: merging would copy old data the slice shares.)
        self._fresh: set[tuple[int, int]] = set()
        self._fresh_tid = 0
        # Live view: bytes of file data each object has stored (st_blocks), counted once by
        # a scan and then kept exact by writes (the kernel asks for it after every write).
        self._stored: dict[int, int] = {}
        # (obj, window) -> bytes written into it through this view since it was last written
        # whole: what pays for merging its fragments (MERGE_COPY).  Lost on remount (no
        # merge until written again: never more copying than the rule allows).
        self._credit: dict[tuple[int, int], int] = {}

    def forget(self) -> None:
        """Drop cached inodes (after records were changed other than through this view)."""
        self._inodes.clear()
        self._no_xattrs.clear()
        self._stored.clear()
        self._interval_ns = None

    # -- history granularity: what each change passes as the store's history_ns -----------------
    def history_interval(self) -> int:
        """The PFS's history interval in seconds (0: every commit is kept); REC_CONFIG key
        HISTORY_KEY, set by ``hammer history-interval``."""
        rec = self.store.get((self.pfs, ROOT_OBJ, REC_CONFIG, HISTORY_KEY))
        return decode_history_config(rec.data) if rec is not None else 0

    def _hist(self, obj: int, ino: Inode | None = None) -> int:
        """history_ns for a change to ``obj``'s records: none for a nohistory object,
        else the PFS's interval."""
        if ino is None:
            ino = self._inodes.get(obj)
            if ino is None:
                rec = self.store.get(self._key(obj, REC_INODE))
                ino = Inode.decode(obj, rec.data) if rec is not None else None
        if ino is not None and ino.flags & NOHISTORY:
            return HISTORY_NONE
        if self._interval_ns is None:
            self._interval_ns = self.history_interval() * 1_000_000_000 or HISTORY_ALL
        return self._interval_ns

    def _put(self, key: tuple[int, int, int, int], data: bytes, ino: Inode | None = None) -> None:
        self.store.put(key, data, self._hist(key[1], ino))

    def _delete(self, key: tuple[int, int, int, int]) -> bool:
        return self.store.delete(key, self._hist(key[1]))

    def set_nohistory(self, obj: int, on: bool) -> Inode:
        """Set or clear an object's nohistory flag (new children inherit it)."""
        self.check_writable()
        ino = self.getattr(obj)
        flags = ino.flags | NOHISTORY if on else ino.flags & ~NOHISTORY
        if flags == ino.flags:
            return ino
        return self._put_inode(ino.evolve(flags=flags, ctime=now_ns()))

    def drop(self, obj: int) -> None:
        """Drop the cached inode of ``obj`` (the FUSE kernel forgot it: memory goes back)."""
        self._inodes.pop(obj, None)
        self._no_xattrs.discard(obj)
        self._stored.pop(obj, None)

    # -- helpers -------------------------------------------------------------------------------
    def _key(self, obj: int, rec_type: int, key: int = 0) -> tuple[int, int, int, int]:
        return (self.pfs, obj, rec_type, key)

    def check_writable(self) -> None:
        if self.readonly:
            raise ReadOnly("read-only view" if self.asof is None
                           else f"history view as of 0x{self.asof:016x} is read-only")

    def _put_inode(self, ino: Inode) -> Inode:
        self._put(self._key(ino.obj_id, REC_INODE), ino.encode(), ino)
        self._inodes[ino.obj_id] = ino
        return ino

    def put_inode(self, ino: Inode) -> Inode:
        """Store an inode as given (undo's restore of attributes, after it copied the
        object's other records itself: its xattrs may have changed too)."""
        self.check_writable()
        self._no_xattrs.discard(ino.obj_id)
        return self._put_inode(ino)

    def _touch_dir(self, dir_ino: Inode, t: int, nlink_delta: int = 0) -> Inode:
        return self._put_inode(dir_ino.evolve(mtime=t, ctime=t, nlink=dir_ino.nlink + nlink_delta))

    @staticmethod
    def _check_name(name: bytes) -> None:
        if not name or name in (b".", b".."):
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        if b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL, f"invalid name {name!r}")

    # -- inodes ----------------------------------------------------------------------------------
    def getattr(self, obj: int) -> Inode:
        CacheStats.lookups += 1
        ino = self._inodes.get(obj)
        if ino is not None:
            return ino
        CacheStats.misses += 1
        rec = self.store.get(self._key(obj, REC_INODE), self.asof)
        if rec is None:
            raise FsError(errno.ENOENT, f"no object {obj:#x}")
        ino = Inode.decode(obj, rec.data)
        if self.is_history:  # HAMMER's as-of rule (fs/asof.py)
            ino = as_of_attributes(ino)
        if self.live_perms:
            live = self.store.get(self._key(obj, REC_INODE))
            if live is not None:
                ino = restrict_to_live(ino, Inode.decode(obj, live.data))
        if len(self._inodes) > INODE_CACHE:
            self._inodes.clear()
        self._inodes[obj] = ino
        return ino

    def _dir(self, obj: int) -> Inode:
        ino = self.getattr(obj)
        if not ino.is_dir:
            raise FsError(errno.ENOTDIR, f"object {obj:#x} is not a directory")
        return ino

    def setattr(self, obj: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, atime: int | None = None, mtime: int | None = None,
                ctime: int | None = None) -> Inode:
        """chmod/chown/utimens (times in ns).  ctime moves to now unless given."""
        self.check_writable()
        ino = self.getattr(obj)
        changes: dict[str, int] = {"ctime": now_ns() if ctime is None else ctime}
        if mode is not None:
            changes["mode"] = stat.S_IFMT(ino.mode) | (mode & 0o7777)
        if uid is not None and uid != -1 and uid != 0xFFFFFFFF:
            changes["uid"] = uid
        if gid is not None and gid != -1 and gid != 0xFFFFFFFF:
            changes["gid"] = gid
        if atime is not None:
            changes["atime"] = atime
        if mtime is not None:
            changes["mtime"] = mtime
        return self._put_inode(ino.evolve(**changes))

    # -- directories -------------------------------------------------------------------------
    def _find(self, dir_obj: int, name: bytes) -> DirEntry | None:
        h = name_hash(name)
        lo, hi = self._key(dir_obj, REC_DIRENT, h), self._key(dir_obj, REC_DIRENT, h | COLLISION_MASK)
        for rec in self.store.scan(lo, hi, self.asof):
            entry = decode_dirent(rec.key, rec.data)
            if entry.name == name:
                return entry
        return None

    def _free_key(self, obj: int, rec_type: int, name: bytes) -> int:
        """The first unused key for ``name`` among its hash collisions (dirents, xattrs)."""
        h = name_hash(name)
        lo, hi = self._key(obj, rec_type, h), self._key(obj, rec_type, h | COLLISION_MASK)
        return _first_unused_key(h, {rec.key for rec in self.store.scan(lo, hi, with_data=False)})

    def lookup(self, dir_obj: int, name: bytes) -> Inode:
        self._dir(dir_obj)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        entry = self._find(dir_obj, name)
        if entry is None:
            raise FsError(errno.ENOENT, f"{name.decode(errors='replace')}: no such entry")
        return self.getattr(entry.obj_id)

    def readdir(self, dir_obj: int, after_key: int = -1) -> Iterator[DirEntry]:
        """Entries in key order, starting after ``after_key`` (resumable)."""
        self._dir(dir_obj)
        lo = self._key(dir_obj, REC_DIRENT, after_key + 1)
        hi = self._key(dir_obj, REC_DIRENT, MAX_U64)
        for rec in self.store.scan(lo, hi, self.asof):
            yield decode_dirent(rec.key, rec.data)

    def _vacant_key(self, dir_obj: int, name: bytes) -> int:
        """The key a new entry ``name`` gets in ``dir_obj``; EEXIST if the name is taken.
        One scan of the name's collision range answers both."""
        h = name_hash(name)
        lo, hi = self._key(dir_obj, REC_DIRENT, h), self._key(dir_obj, REC_DIRENT, h | COLLISION_MASK)
        used = set()
        for rec in self.store.scan(lo, hi, self.asof):
            if decode_dirent(rec.key, rec.data).name == name:
                raise FsError(errno.EEXIST, f"{name.decode(errors='replace')}: exists")
            used.add(rec.key)
        return _first_unused_key(h, used)

    def _add_entry(self, dir_obj: int, name: bytes, child: Inode, key: int | None = None) -> None:
        if key is None:
            key = self._free_key(dir_obj, REC_DIRENT, name)
        self._put(self._key(dir_obj, REC_DIRENT, key), encode_dirent(child.obj_id, child.mode, name))

    def _new_child(self, dir_obj: int, name: bytes, mode: int, uid: int, gid: int,
                   rdev: int = 0) -> tuple[Inode, Inode, int]:
        """Checks shared by every create: returns (parent, new inode not yet stored, the
        key of its directory entry)."""
        self.check_writable()
        self._check_name(name)
        parent = self._dir(dir_obj)
        if parent.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        key = self._vacant_key(dir_obj, name)
        t = now_ns()
        obj = self.store.alloc_obj_id()
        is_dir = stat.S_ISDIR(mode)
        ino = Inode(obj, mode, uid, gid, 2 if is_dir else 1, 0, rdev, t, t, t, t,
                    dir_obj if is_dir else 0, parent.flags & NOHISTORY)
        if len(self._no_xattrs) > INODE_CACHE:  # a cache (bounded like the inodes')
            self._no_xattrs.clear()
        self._no_xattrs.add(obj)
        return parent, ino, key

    def create(self, dir_obj: int, name: bytes, mode: int, uid: int = 0, gid: int = 0,
               rdev: int = 0) -> Inode:
        """A regular file, fifo, socket or device node (mknod)."""
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
            raise FsError(errno.EINVAL, "use mkdir/symlink")
        parent, ino, key = self._new_child(dir_obj, name, mode, uid, gid, rdev)
        self._put_inode(ino)
        self._add_entry(dir_obj, name, ino, key)
        self._touch_dir(parent, ino.ctime)
        return ino

    def mkdir(self, dir_obj: int, name: bytes, mode: int, uid: int = 0, gid: int = 0) -> Inode:
        parent, ino, key = self._new_child(dir_obj, name, stat.S_IFDIR | (mode & 0o7777), uid,
                                           gid)
        self._put_inode(ino)
        self._add_entry(dir_obj, name, ino, key)
        self._touch_dir(parent, ino.ctime, +1)
        return ino

    def symlink(self, dir_obj: int, name: bytes, target: bytes, uid: int = 0,
                gid: int = 0) -> Inode:
        if len(target) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG, "symlink target too long")
        parent, ino, key = self._new_child(dir_obj, name, stat.S_IFLNK | 0o777, uid, gid)
        ino = ino.evolve(size=len(target))
        self._put_inode(ino)
        self._put(self._key(ino.obj_id, REC_SYMLINK), target, ino)
        self._add_entry(dir_obj, name, ino, key)
        self._touch_dir(parent, ino.ctime)
        return ino

    def readlink(self, obj: int) -> bytes:
        ino = self.getattr(obj)
        if not ino.is_symlink:
            raise FsError(errno.EINVAL, "not a symlink")
        rec = self.store.get(self._key(obj, REC_SYMLINK), self.asof)
        return rec.data if rec else b""

    def link(self, obj: int, dir_obj: int, name: bytes) -> Inode:
        self.check_writable()
        ino = self.getattr(obj)
        if ino.is_dir:
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        if ino.nlink == 0:
            raise FsError(errno.ENOENT, "file was removed")
        self._check_name(name)
        parent = self._dir(dir_obj)
        key = self._vacant_key(dir_obj, name)
        t = now_ns()
        ino = self._put_inode(ino.evolve(nlink=ino.nlink + 1, ctime=t))
        self._add_entry(dir_obj, name, ino, key)
        self._touch_dir(parent, t)
        return ino

    def _drop_link(self, ino: Inode, t: int) -> None:
        """One name of ``ino`` is gone: decrement, and remove the object once unreferenced."""
        nlink = 0 if ino.is_dir else ino.nlink - 1
        if nlink > 0:
            self._put_inode(ino.evolve(nlink=nlink, ctime=t))
        elif self._open[ino.obj_id] > 0:
            self._put_inode(ino.evolve(nlink=0, ctime=t))
            self.store.put(self._key(ROOT_OBJ, REC_ORPHAN, ino.obj_id), b"")
        else:
            self._remove_object(ino.obj_id)

    def _remove_object(self, obj: int) -> None:
        hist = self._hist(obj)
        self._inodes.pop(obj, None)
        self._no_xattrs.discard(obj)
        self._stored.pop(obj, None)
        self.store.delete_range(self._key(obj, 0, 0), self._key(obj, MAX_REC_TYPE, MAX_U64),
                                hist)

    def unlink(self, dir_obj: int, name: bytes) -> None:
        self.check_writable()
        parent = self._dir(dir_obj)
        entry = self._entry(dir_obj, name)
        ino = self.getattr(entry.obj_id)
        if ino.is_dir:
            raise FsError(errno.EISDIR, f"{name.decode(errors='replace')}: is a directory")
        t = now_ns()
        self._delete(self._key(dir_obj, REC_DIRENT, entry.key))
        self._drop_link(ino, t)
        self._touch_dir(parent, t)

    def _entry(self, dir_obj: int, name: bytes) -> DirEntry:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
        entry = self._find(dir_obj, name)
        if entry is None:
            raise FsError(errno.ENOENT, f"{name.decode(errors='replace')}: no such entry")
        return entry

    def _is_empty(self, dir_obj: int) -> bool:
        return next(self.readdir(dir_obj), None) is None

    def rmdir(self, dir_obj: int, name: bytes) -> None:
        self.check_writable()
        if name == b".":
            raise FsError(errno.EINVAL, "cannot remove '.'")
        if name == b"..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
        parent = self._dir(dir_obj)
        entry = self._entry(dir_obj, name)
        ino = self.getattr(entry.obj_id)
        if not ino.is_dir:
            raise FsError(errno.ENOTDIR, f"{name.decode(errors='replace')}: not a directory")
        if not self._is_empty(ino.obj_id):
            raise FsError(errno.ENOTEMPTY, f"{name.decode(errors='replace')}: not empty")
        t = now_ns()
        self._delete(self._key(dir_obj, REC_DIRENT, entry.key))
        self._drop_link(ino, t)
        self._touch_dir(parent, t, -1)

    def _is_ancestor(self, anc: int, obj: int) -> bool:
        """True if directory ``anc`` is ``obj`` or one of its ancestors."""
        seen = 0
        while True:
            if obj == anc:
                return True
            if obj == ROOT_OBJ or seen > 4096:
                return False
            obj = self.getattr(obj).parent
            seen += 1

    def rename(self, old_dir: int, old_name: bytes, new_dir: int, new_name: bytes,
               flags: int = 0) -> None:
        """Atomic rename, replacing a file or an empty directory at the destination."""
        self.check_writable()
        if flags & ~RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "unsupported rename flags")
        self._check_name(new_name)
        src_parent = self._dir(old_dir)
        entry = self._entry(old_dir, old_name)
        src = self.getattr(entry.obj_id)
        dst_entry = self._find(new_dir, new_name)
        self._dir(new_dir)
        if src.is_dir and self._is_ancestor(src.obj_id, new_dir):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if dst_entry is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST, f"{new_name.decode(errors='replace')}: exists")
            if dst_entry.obj_id == src.obj_id:
                return  # both names are links to one file: POSIX says do nothing
            dst = self.getattr(dst_entry.obj_id)
            if src.is_dir and not dst.is_dir:
                raise FsError(errno.ENOTDIR, "destination is not a directory")
            if not src.is_dir and dst.is_dir:
                raise FsError(errno.EISDIR, "destination is a directory")
            if dst.is_dir and not self._is_empty(dst.obj_id):
                raise FsError(errno.ENOTEMPTY, "destination directory is not empty")
        t = now_ns()
        self._delete(self._key(old_dir, REC_DIRENT, entry.key))
        dst_nlink_delta = 0
        if dst_entry is not None:
            dst = self.getattr(dst_entry.obj_id)
            self._delete(self._key(new_dir, REC_DIRENT, dst_entry.key))
            self._drop_link(dst, t)
            if dst.is_dir:
                dst_nlink_delta -= 1
        moved = src.evolve(ctime=t, parent=new_dir if src.is_dir else src.parent)
        self._put_inode(moved)
        self._add_entry(new_dir, new_name, moved)
        if old_dir == new_dir:
            self._touch_dir(src_parent, t, dst_nlink_delta)
            return
        moving_dir = 1 if src.is_dir else 0
        self._touch_dir(self.getattr(old_dir), t, -moving_dir)
        self._touch_dir(self.getattr(new_dir), t, moving_dir + dst_nlink_delta)

    # -- open files ----------------------------------------------------------------------------
    def open(self, obj: int) -> Inode:
        ino = self.getattr(obj)
        self._open[obj] += 1
        return ino

    def release(self, obj: int) -> None:
        self._open[obj] -= 1
        if self._open[obj] > 0:
            return
        del self._open[obj]
        if self.readonly:
            return
        try:
            unlinked = self.getattr(obj).nlink == 0
        except FsError:  # already gone (removed behind this view)
            return
        if unlinked:
            self._remove_object(obj)
            self.store.delete(self._key(ROOT_OBJ, REC_ORPHAN, obj))

    def reap_orphans(self) -> int:
        """Remove objects unlinked while open by an owner that died.  Returns how many."""
        if self.readonly:
            return 0
        lo, hi = self._key(ROOT_OBJ, REC_ORPHAN, 0), self._key(ROOT_OBJ, REC_ORPHAN, MAX_U64)
        orphans = [rec.key for rec in self.store.scan(lo, hi, with_data=False)]
        for obj in orphans:
            self._remove_object(obj)
            self.store.delete(self._key(ROOT_OBJ, REC_ORPHAN, obj))
        return len(orphans)

    # -- file data -------------------------------------------------------------------------------
    def allocated(self, ino: Inode) -> int:
        """Bytes of file data ``ino`` has stored (``st_blocks``): holes count nothing.
        A file of at most one extent is taken as dense (its only record is its data: no
        scan on the hot path of small files).  The live view sums its extents' lengths once
        and keeps the sum exact as it writes; a history view counts its extents (each up to
        BLOCK bytes), capped at its size rounded to 512."""
        if not ino.is_reg or ino.size <= BLOCK:
            return ino.size
        obj = ino.obj_id
        lo, hi = self._key(obj, REC_DATA, 0), self._key(obj, REC_DATA, MAX_U64)
        if self.asof is None:
            n = self._stored.get(obj)
            if n is None:
                if len(self._stored) > INODE_CACHE:
                    self._stored.clear()
                n = self._stored[obj] = sum(e[1] for e in self.store.extent_lengths(lo, hi))
            return n
        extents = sum(1 for _ in self.store.scan(lo, hi, self.asof, with_data=False))
        return min(extents * BLOCK, ino.size + 511 & ~511)

    def regular_file(self, obj: int) -> Inode:
        """The inode of ``obj``; EISDIR/EINVAL unless a regular file."""
        return self._file(obj)

    def _file(self, obj: int) -> Inode:
        ino = self.getattr(obj)
        if ino.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        if not ino.is_reg:
            raise FsError(errno.EINVAL, "not a regular file")
        return ino

    def read(self, obj: int, offset: int, size: int) -> bytes:
        return self.read_data(self._file(obj), offset, size)

    def read_data(self, ino: Inode, offset: int, size: int) -> bytes:
        """``read`` of a regular file whose inode the caller has: touches no cache of this
        view, so it may run without the caller's lock (the store serialises its calls)."""
        obj = ino.obj_id
        end = min(ino.size, offset + size)
        if offset >= end:
            return b""
        first = offset - offset % BLOCK  # extents never cross a window: none starts earlier
        lo, hi = self._key(obj, REC_DATA, first), self._key(obj, REC_DATA, end - 1)
        blocks = [(rec.key, rec.data) for rec in self.store.scan(lo, hi, self.asof)]
        while blocks and blocks[0][0] + len(blocks[0][1]) <= offset:
            del blocks[0]  # ends before the range
        if blocks and blocks[0][0] <= offset and _dense(blocks, blocks[0][0], end):
            first = blocks[0][0]  # the common case: one join, no zero-filling
            joined = b"".join(data for _key, data in blocks)
            return joined[offset - first:end - first]
        buf = bytearray(end - offset)  # zeros: holes read as zero
        for key, data in blocks:
            lo_b, hi_b = max(key, offset), min(key + len(data), end)
            if lo_b < hi_b:
                buf[lo_b - offset:hi_b - offset] = memoryview(data)[lo_b - key:hi_b - key]
        return bytes(buf)

    def write(self, obj: int, offset: int, data: bytes | memoryview) -> int:
        self.check_writable()
        ino = self._file(obj)
        view = memoryview(data)
        end = offset + len(view)
        pos = offset
        hist = self._hist(obj, ino)
        while pos < end:
            stop = min(end, pos - pos % BLOCK + BLOCK)
            self._write_window(obj, pos, stop, view[pos - offset:stop - offset], ino.size, hist)
            pos = stop
        t = now_ns()
        self._put_inode(ino.evolve(size=max(ino.size, end), mtime=t, ctime=t))
        return len(view)

    def _write_window(self, obj: int, a: int, b: int, chunk: memoryview, size: int,
                      hist: int) -> None:
        """Write ``chunk`` at [a, b), inside one window: the new extent covers the pages the
        write touches (their other bytes read from the file), merged with the extents this
        transaction already made next to it (no history between them: they cost no new
        version).  Extents of earlier transactions keep their untouched parts as slices of
        their blocks (put_slice: nothing copied), so a 4 KiB write costs about 4 KiB."""
        win = a - a % BLOCK
        recs = self.store.extent_lengths(self._key(obj, REC_DATA, win),
                                         self._key(obj, REC_DATA, win + BLOCK - 1))
        cur = self.store.current_tid
        if self._fresh_tid != cur:
            self._fresh.clear()
            self._fresh_tid = cur
        fresh = self._fresh
        lo = a - a % PAGE
        hi = b if b >= size else min(b + (-b % PAGE), size)
        grown = True
        while grown:  # take in the new extents of this transaction touching [lo, hi)
            grown = False
            for key, n, ctid in recs:
                if ctid == cur and (obj, key) in fresh and key <= hi and \
                        key + n >= lo and (key < lo or key + n > hi):
                    lo, hi = min(lo, key), max(hi, key + n)
                    grown = True
        credit = self._credit.get((obj, win), 0) + b - a
        if hist == HISTORY_NONE:
            credit = BLOCK / MERGE_COPY  # the replaced fragments cost nothing once dropped
        whole = _whole_window(recs, lo, hi, win, max(size, b), credit)
        if whole is not None and self._fits(whole[1] - whole[0]):
            lo, hi = whole  # the fragments become one extent again
            credit = 0
        if len(self._credit) > INODE_CACHE:
            self._credit.clear()
        self._credit[obj, win] = credit
        if lo == a and hi == b:  # nothing of the old bytes is kept (whole pages)
            buf = chunk
        else:
            buf = bytearray(hi - lo)
            for key, n, _ in recs:  # what the new extent keeps of the old bytes: read only
                s, e = max(key, lo), min(key + n, hi)  # the extents the write leaves a
                if s < e and (s < a or e > b):  # part of
                    rdata = self.store.get(self._key(obj, REC_DATA, key)).data
                    buf[s - lo:e - lo] = memoryview(rdata)[s - key:e - key]
            buf[a - lo:b - lo] = chunk
        room = self.store.room_for(len(buf))
        stored = self._stored.get(obj)
        for key, n, _ in recs:
            rend = key + n
            if rend <= lo or key >= hi:
                continue
            if stored is not None:
                stored -= min(rend, hi) - max(key, lo)
            at = self._key(obj, REC_DATA, key)
            if rend > hi:  # the untouched tail stays, as a slice of the old extent
                self.store.put_slice(self._key(obj, REC_DATA, hi), at, hi - key, rend - hi,
                                     hist)
            if key < lo:  # ...and the untouched head
                self.store.put_slice(at, at, 0, lo - key, hist)
            elif key != lo:
                self.store.delete(at, hist)
        if stored is not None:
            self._stored[obj] = stored + hi - lo
        # A volume too fragmented for one extent still takes the data, a page per record.
        for at in range(lo, hi, room):
            self.store.put(self._key(obj, REC_DATA, at), bytes(buf[at - lo:at - lo + room]),
                           hist)
            fresh.add((obj, at))

    def _fits(self, length: int) -> bool:
        """Is there a contiguous run for an extent of ``length`` (a merge is optional)?"""
        try:
            return self.store.room_for(length) >= length
        except NoSpace:
            return False

    def truncate(self, obj: int, size: int) -> Inode:
        self.check_writable()
        if size < 0:
            raise FsError(errno.EINVAL, "negative size")
        ino = self._file(obj)
        if size < ino.size:
            self._stored.pop(obj, None)  # counted again when asked
            self.store.delete_range(self._key(obj, REC_DATA, size),
                                    self._key(obj, REC_DATA, MAX_U64), self._hist(obj, ino))
            if size % BLOCK:  # an extent across the new end is cut, so growing the file
                # again shows zeros there: its whole pages as a slice, the last partial page
                # copied (an extent's bytes past its end are zeros)
                win = size - size % BLOCK
                for rec in self.store.scan(self._key(obj, REC_DATA, win),
                                           self._key(obj, REC_DATA, size - 1)):
                    if rec.key + len(rec.data) > size:
                        self._cut(obj, rec.key, rec.data, size - rec.key)
        t = now_ns()
        return self._put_inode(ino.evolve(size=size, mtime=t, ctime=t))

    def _cut(self, obj: int, key: int, data: bytes, keep: int) -> None:
        whole = keep - keep % PAGE
        if whole:
            at = self._key(obj, REC_DATA, key)
            self.store.put_slice(at, at, 0, whole, self._hist(obj))
        if keep > whole:
            self._put(self._key(obj, REC_DATA, key + whole), data[whole:keep])

    # -- xattrs ------------------------------------------------------------------------------------
    def _find_xattr(self, obj: int, name: bytes) -> tuple[int, bytes] | None:
        h = name_hash(name)
        lo, hi = self._key(obj, REC_XATTR, h), self._key(obj, REC_XATTR, h | COLLISION_MASK)
        for rec in self.store.scan(lo, hi, self.asof):
            rname, value = decode_xattr(rec.data)
            if rname == name:
                return rec.key, value
        return None

    def getxattr(self, obj: int, name: bytes) -> bytes:
        self.getattr(obj)
        found = None if obj in self._no_xattrs else self._find_xattr(obj, name)
        if found is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return found[1]

    def listxattr(self, obj: int) -> list[bytes]:
        self.getattr(obj)
        lo, hi = self._key(obj, REC_XATTR, 0), self._key(obj, REC_XATTR, MAX_U64)
        return [decode_xattr(rec.data)[0] for rec in self.store.scan(lo, hi, self.asof)]

    def setxattr(self, obj: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.check_writable()
        ino = self.getattr(obj)
        if not name or len(name) > XATTR_NAME_MAX:
            raise FsError(errno.ERANGE, "bad attribute name length")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG, "attribute value too large")
        found = self._find_xattr(obj, name)
        if found is not None and flags & XATTR_CREATE:
            raise FsError(errno.EEXIST, "attribute exists")
        if found is None and flags & XATTR_REPLACE:
            raise FsError(errno.ENODATA, "no such attribute")
        key = found[0] if found is not None else self._free_key(obj, REC_XATTR, name)
        self._no_xattrs.discard(obj)
        self._put(self._key(obj, REC_XATTR, key), encode_xattr(name, value), ino)
        self._put_inode(ino.evolve(ctime=now_ns()))

    def removexattr(self, obj: int, name: bytes) -> None:
        self.check_writable()
        ino = self.getattr(obj)
        found = self._find_xattr(obj, name)
        if found is None:
            raise FsError(errno.ENODATA, "no such attribute")
        self._delete(self._key(obj, REC_XATTR, found[0]))
        self._put_inode(ino.evolve(ctime=now_ns()))

    # -- volume ----------------------------------------------------------------------------------
    def statfs(self) -> dict[str, int]:
        space = self.store.space()
        bsize = space.block_size
        return {
            "f_bsize": bsize, "f_frsize": bsize,
            "f_blocks": space.total_bytes // bsize,
            "f_bfree": space.free_bytes // bsize, "f_bavail": space.avail_bytes // bsize,
            "f_files": 1 << 32, "f_ffree": (1 << 32) - 1, "f_favail": (1 << 32) - 1,
            "f_namemax": NAME_MAX,
        }

    def fsync(self) -> int:
        """Make every change so far durable; returns the committed TID."""
        if self.readonly:
            return self.store.last_committed_tid
        return self.store.commit()


def _whole_window(recs: list[tuple[int, int, int]], lo: int, hi: int, win: int, size: int,
                  credit: int) -> tuple[int, int] | None:
    """The span of the whole window if a new extent [lo, hi) should become it (MERGE_EXTENTS,
    MERGE_COPY): the window is left with too many extents, has no hole, and copying the rest
    costs at most MERGE_COPY of ``credit``."""
    end = min(win + BLOCK, size)
    pieces, covered = 1, hi - lo
    for key, n, _ in recs:
        rend = key + n
        inside = max(0, min(rend, hi) - max(key, lo))
        covered += n - inside
        pieces += (key < lo) + (rend > hi) if inside else 1
    copy = end - win - (hi - lo)
    if pieces <= MERGE_EXTENTS or covered != end - win or copy > MERGE_COPY * credit:
        return None
    return win, end


def _dense(blocks: list[tuple[int, bytes]], first: int, end: int) -> bool:
    """True if ``blocks`` cover [first, end) back to back, with no hole."""
    expect = first
    for key, data in blocks:
        if key != expect:
            return False
        expect += len(data)
    return expect >= end


def _first_unused_key(name_hash_key: int, used: set[int]) -> int:
    """The first key of a name's collision range not in ``used``; ENOSPC when all are taken."""
    key = name_hash_key
    while key in used:
        key += 1
    if key > (name_hash_key | COLLISION_MASK):
        raise FsError(errno.ENOSPC, "too many name hash collisions")
    return key
