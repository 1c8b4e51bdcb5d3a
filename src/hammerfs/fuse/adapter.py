"""The FUSE adapter: pyfuse3's low-level, inode-addressed requests onto hammerfs views.

This is the only module that imports the binding.  The kernel addresses files by inode number
(``fuse.inodes``: stable numbers computed from PFS and object id, lookup counts), so a file
has one kernel inode however many names it has, and an open file stays reachable after its
last name is gone.

Requests run on pyfuse3's trio loop.  Metadata requests are short and run inline under the
namespace's lock (which the control channel and the commit thread share); big reads and
writes and fsync run in worker threads (``trio.to_thread``), so the loop goes on taking
requests while they wait.  Errors become errno values (never tracebacks): OSErrors keep their
errno, CorruptionError is EIO and is logged with its location, anything unexpected is logged
and returned as EIO.

Caches are long (``CACHE_TTL``) and exact: every change made through the kernel updates its
caches itself, and every change made behind it (control ops such as ``undo -r``, prune and
cleanup, mirroring into a mounted slave, a chmod of an object whose history views the kernel
holds) is invalidated precisely (``Invalidator``), from a thread outside the request loop.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import queue
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3
import trio

from hammerfs.control.client import kernel_mount
from hammerfs.errors import CorruptionError, HammerError
from hammerfs.fs.filesystem import FileSystem, FsError
from hammerfs.fs.layout import BLOCK, REC_DIRENT, REC_INODE, Inode, decode_dirent
from hammerfs.fs.namespace import Namespace, parse_magic
from hammerfs.fuse.inodes import (
    SYNTHETIC,
    InodeTable,
    direct_ino,
    generation,
    split_direct,
)
from hammerfs.steps import Steps
from hammerfs.store.records import MAX_U64, ROOT_OBJ

log = logging.getLogger("hammerfs.fuse")

CACHE_TTL = 3600.0  # seconds the kernel keeps names and attributes (invalidated exactly)
THREADED_IO = 128 * 1024  # reads/writes of at least this many bytes run in a worker thread
# Big writes (in worker threads) past this much data held in memory write it out in steps
# without the lock (Store.write_out), not all at once under it (UNWRITTEN_MAX)
WRITE_OUT_AT = 8 << 20
READDIR_BATCH = 256  # entries produced per readdir request at most
ACL_XATTR = b"system.posix_acl_"  # POSIX ACLs are refused: cp -a / rsync -A fall back to chmod
INVALIDATE_WAIT = 2.0  # seconds a control op waits for its invalidations to reach the kernel
# The kernel's readahead for the mount: with the default 128 KiB a sequential reader sends
# 128 KiB reads one or two at a time and Python's cost per request caps it (~350 MB/s); at
# 4 MiB it sends 1 MiB reads, several in flight, served at once by worker threads.  Set
# through sysfs (root only; HAMMERFS_READAHEAD_KB, 0 leaves the kernel's default).
READAHEAD_KB = 4096


def _nodeid_offset() -> int | None:
    """Where an ``EntryAttributes`` keeps the node id it hands the kernel, apart from the
    ``st_ino`` of its attributes (pyfuse3 sets both through ``st_ino``; its object starts
    with libfuse's ``fuse_entry_param``: ino, generation, struct stat).  Checked on a live
    object, so another layout only turns the names-only entries off (None)."""
    probe = pyfuse3.EntryAttributes()
    probe.st_ino, probe.generation = 0x5EED_1D00_0000_0F1E, 0x0BAD_CAFE
    base = id(probe)
    for offset in (16, 24, 32):  # after the object header (refcount, type[, GC links])
        words = (ctypes.c_uint64 * 4).from_address(base + offset)
        if words[0] == probe.st_ino and words[1] == probe.generation and \
                words[3] == probe.st_ino:  # struct stat: st_dev, then st_ino
            words[0] = 0
            if probe.st_ino == 0:
                return offset
    return None


NODEID_OFFSET = _nodeid_offset()
TRIM_AFTER = 16384  # forgotten inodes after which the freed heap goes back to the system


def _libc_trim() -> Callable[[], None]:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


# What the kernel forgot frees cached inodes and table entries, but the C heap keeps the
# pages (only its top is ever given back): malloc_trim returns the free ones, so the
# mount's RSS comes down when a tree is removed or the kernel drops its caches.
_trim_heap = _libc_trim()


class NamesOnly:
    """READDIRPLUS entries that carry only the name, number and type: node id 0 tells the
    kernel there are no attributes to take (its dentry and cached attributes of an inode it
    already holds stay as they are; an unknown name is looked up when used).  One object
    serves every entry: ``readdir_reply`` copies it into the reply at once."""

    def __init__(self) -> None:
        self._entry = pyfuse3.EntryAttributes()
        self._nodeid = ctypes.c_uint64.from_address(id(self._entry) + NODEID_OFFSET)

    def __call__(self, kino: int, mode: int) -> pyfuse3.EntryAttributes:
        e = self._entry
        e.st_ino = kino  # sets the node id too
        e.st_mode = mode
        self._nodeid.value = 0
        return e


def _errno(exc: Exception, what: str, args: tuple) -> int:
    """The errno a failed request returns; the unexpected is logged, never raised."""
    if isinstance(exc, CorruptionError):
        log.error("%s %r: checksum failure at %s: %s", what, args[:1],
                  hex(exc.location) if exc.location is not None else "?", exc)
        return errno.EIO
    if isinstance(exc, OSError):
        if isinstance(exc.errno, int) and exc.errno > 0:
            return exc.errno
        log.error("%s failed: %s", what, exc, exc_info=exc)
        return errno.EIO
    if isinstance(exc, HammerError):
        log.error("%s %r: %s", what, args[:1], exc)
        return errno.EIO
    log.error("%s crashed", what, exc_info=exc)
    return errno.EIO


def _locked(func: Callable) -> Callable:
    """A request served inline on the loop, under the namespace lock; failures -> errno."""

    name = func.__name__

    @functools.wraps(func)
    async def wrapper(self: HammerOperations, *args):
        self.requests[name] += 1
        if self.readahead_dev is not None:
            self.tune_readahead()
        try:
            with self.ns.lock:
                return func(self, *args)
        except Exception as exc:
            raise self.failed(name, _errno(exc, name, args)) from None

    return wrapper


@dataclass
class Handle:
    fs: FileSystem
    obj_id: int
    append: bool = False


class Invalidator:
    """Sends the kernel its cache invalidations from a thread of its own: the kernel may
    hold an invalidation until requests related to it are answered, so it must never run in
    the request loop or under the namespace lock.  ``barrier`` lets a control op wait until
    its invalidations are through (so the change shows when the command returns)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hammerfs-invalidate",
                                        daemon=True)
        self._alive = False

    def start(self) -> None:
        self._alive = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._alive

    def stop(self) -> None:
        """Before the session is closed: nothing is sent after this returns."""
        if self._alive:
            self._alive = False
            self._queue.put(None)
            self._thread.join()

    def inode(self, ino: int, attr_only: bool = False) -> None:
        if self._alive:
            self._queue.put(("inode", ino, attr_only))

    def entry(self, parent: int, name: bytes) -> None:
        if self._alive:
            self._queue.put(("entry", parent, name))

    def barrier(self, timeout: float = INVALIDATE_WAIT) -> None:
        if self._alive:
            done = threading.Event()
            self._queue.put(("barrier", done))
            done.wait(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind = item[0]
            try:
                if kind == "barrier":
                    item[1].set()
                elif kind == "inode":
                    pyfuse3.invalidate_inode(item[1], item[2])
                else:
                    pyfuse3.invalidate_entry(item[1], item[2])
            except OSError as exc:  # ENOENT: the kernel does not hold it (any more)
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                    log.warning("cache invalidation %s failed: %s", item[:2], exc)


class HammerOperations(pyfuse3.Operations):
    enable_acl = False

    def __init__(self, ns: Namespace, on_ready: Callable[[], None] | None = None,
                 *, nfs: bool = False, mountpoint: str | None = None, writeback: bool = False):
        super().__init__()
        self.ns = ns
        # The kernel's writeback cache: a write() lands in the page cache and returns; the
        # kernel hands dirty pages over in the background, on close, fsync and syncfs.
        # Without it every write is a request, and (libfuse's auto_inval_data) the GETATTR
        # after it sees a new mtime and drops the file's whole page cache: 4 KiB random
        # I/O ran at 1/5-1/20 of gocryptfs's rate.  Kernel-side i_size and mtime are then
        # authoritative for regular files.  Read-only mounts gain nothing, and the files of
        # a slave PFS change behind the kernel all the time (a mirror stream), so a mount
        # of a volume holding one keeps write-through.  Opt-in (`-o writeback`): a cache
        # invalidation (Invalidator) of a file with dirty pages waits for their writeback,
        # which only the request loop serves; SIGKILL of the mount at that instant leaves
        # that thread, so the process and /dev/fuse, stuck until the FUSE connection is
        # aborted (/sys/fs/fuse/connections/N/abort).
        self.enable_writeback_cache = writeback and not ns.root_view().readonly and not any(
            pd.is_slave for _, pd in ns.store.list_pfs())
        self.mountpoint = mountpoint
        # ...so a regular file changed behind the kernel (undo -r, a slave PFS reached
        # through this mount) must leave the kernel's inode cache: its names the kernel may
        # hold are kept here (with the cache only), and dropping them evicts the inode
        # once no file keeps it open.
        self._names: dict[int, set[tuple[int, bytes]]] = {}
        self._name_of: dict[tuple[int, bytes], int] = {}
        self._more_parents: dict[int, set[int]] = {}  # files named in several directories
        self.supports_dot_lookup = nfs  # export support: NFS handles, LOOKUP of "." / ".."
        self._on_ready = on_ready
        self.table = InodeTable(ns, on_forget=lambda fs, obj: fs.drop(obj))
        self.invalidator = Invalidator()
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, tuple[FileSystem, int]] = {}
        self._next_fh = 1
        self._blocks: dict[tuple[int, int | None, int], tuple[Inode, int]] = {}
        self._slave_ends: dict[int, int] = {}  # slave PFS -> the sync point the kernel saw
        self.requests: Counter[str] = Counter()  # served, by request type (metrics)
        self.readahead_dev: str | None = None  # "major:minor" while readahead is to be set
        self.errors: Counter[tuple[str, str]] = Counter()  # (type, errno name) answered
        # READDIRPLUS entries sent with attributes, and as names only (inodes the kernel
        # holds): a warm walk of a tree reads no inode
        self.entries_with_attributes = 0
        self.entries_names_only = 0
        self._names_only = NamesOnly() if NODEID_OFFSET is not None else None
        self._forgotten = 0  # since the heap was last trimmed

    def failed(self, request: str, code: int) -> pyfuse3.FUSEError:
        """The error a request answers with, counted (ENOENT of a lookup included: a
        Prometheus query can leave it out)."""
        self.errors[request, errno.errorcode.get(code, str(code))] += 1
        return pyfuse3.FUSEError(code)

    def request_counts(self) -> dict:
        """For the control op `metrics`: requests and errors so far (read from another
        thread: copies of counters only the loop thread changes)."""
        return {"requests": dict(self.requests),
                "errors": [[op, name, n] for (op, name), n in dict(self.errors).items()],
                "readdir_entries": {"attributes": self.entries_with_attributes,
                                    "names_only": self.entries_names_only}}

    # -- helpers ---------------------------------------------------------------------------------
    def _attrs(self, fs: FileSystem, ino: Inode, kino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = kino
        e.generation = generation(ino.btime, (fs.pfs, fs.asof) if kino & SYNTHETIC else None)
        e.entry_timeout = CACHE_TTL
        e.attr_timeout = CACHE_TTL
        e.st_mode = ino.mode
        e.st_nlink = ino.nlink
        e.st_uid = ino.uid
        e.st_gid = ino.gid
        e.st_rdev = ino.rdev
        size = ino.size
        if ino.is_symlink:  # exactly what readlink returns (PFS links report their state)
            size = len(self.ns.readlink(fs, ino))
        e.st_size = size
        e.st_blksize = BLOCK
        e.st_blocks = (self._allocated(fs, ino) + 511) // 512
        e.st_atime_ns = ino.atime
        e.st_mtime_ns = ino.mtime
        e.st_ctime_ns = ino.ctime
        return e

    def _allocated(self, fs: FileSystem, ino: Inode) -> int:
        if not ino.is_reg or ino.size <= BLOCK:
            return ino.size
        key = (fs.pfs, fs.asof, ino.obj_id)
        cached = self._blocks.get(key)
        if cached is not None and cached[0] is ino:
            return cached[1]
        if len(self._blocks) > 4096:
            self._blocks.clear()
        n = fs.allocated(ino)
        self._blocks[key] = (ino, n)
        return n

    def _entry(self, fs: FileSystem, ino: Inode) -> pyfuse3.EntryAttributes:
        """An entry handed to the kernel: one more lookup reference."""
        kino = self.table.ino_of(fs, ino.obj_id)
        self.table.looked_up(kino)
        return self._attrs(fs, ino, kino)

    def _get(self, kino: int) -> tuple[FileSystem, Inode]:
        fs, obj = self.table.resolve(kino)
        return fs, fs.getattr(obj)

    def _dir(self, kino: int) -> tuple[FileSystem, Inode]:
        fs, ino = self._get(kino)
        if not ino.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        return fs, ino

    def _new_name(self, parent: int, name: bytes) -> tuple[FileSystem, Inode]:
        fs, dir_ino = self._dir(parent)
        if parse_magic(name) is not None:
            raise FsError(errno.EROFS if b"@@" in name else errno.EINVAL,
                          "history and PFS names are read-only")
        return fs, dir_ino

    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "stale file handle")
        return handle

    def _live_changed(self, fs: FileSystem, obj: int) -> None:
        """A live object's attributes changed: history views restrict their permission
        bits by the live ones (fs/asof.py), so the kernel's copies of those go stale."""
        for kino in self.table.synthetic_of(fs.pfs, obj):
            view, _ = self.table.resolve(kino)
            view.drop(obj)  # its restricted copy is computed again from the live inode
            self.invalidator.inode(kino, attr_only=True)

    def tune_readahead(self) -> None:
        """Set the mount's readahead (READAHEAD_KB).  Done at the first request after INIT,
        not before: the kernel lowers it to what INIT agreed (128 KiB) when it gets the
        reply, and a file takes the value in force when it is opened."""
        dev, self.readahead_dev = self.readahead_dev, None
        try:
            with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
                f.write(f"{readahead_kb()}\n")
        except OSError as exc:  # not root: the kernel's default stays
            log.debug("readahead of the mount (%s) not set: %s", dev, exc)

    # -- lifecycle -------------------------------------------------------------------------------
    def init(self) -> None:
        self.invalidator.start()
        with self.ns.lock:
            self._slave_ends = self._sync_points()
        if self._on_ready:
            self._on_ready()

    async def statfs(self, ctx):
        self.requests["statfs"] += 1
        try:
            with self.ns.lock:
                values = self.ns.root()[0].statfs()
        except Exception as exc:
            raise self.failed("statfs", _errno(exc, "statfs", ())) from None
        st = pyfuse3.StatvfsData()
        for name, value in values.items():
            setattr(st, name, value)
        return st

    # -- names -----------------------------------------------------------------------------------
    @_locked
    def lookup(self, parent: int, name: bytes, ctx=None):
        fs, dir_ino = self._get(parent)
        if name == b".":  # export support: the kernel reopens a handle by node id
            return self._entry(fs, dir_ino)
        if not dir_ino.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        if name == b"..":
            up = dir_ino.parent if dir_ino.obj_id != ROOT_OBJ and dir_ino.parent else ROOT_OBJ
            return self._entry(fs, fs.getattr(up))
        fs2, ino = self.ns.step(fs, dir_ino, name)
        entry = self._entry(fs2, ino)
        if entry.st_ino & SYNTHETIC:
            self.table.magic_names.setdefault(entry.st_ino, set()).add((parent, name))
        self._named(entry.st_ino, ino, parent, name)
        return entry

    def _named(self, kino: int, ino: Inode, parent: int, name: bytes) -> None:
        """The kernel holds a dentry ``parent/name`` of ``kino`` (see ``_names``).  Names are
        kept for files of PFSs reached through a link only (a slave made after this mount,
        which a stream changes all the time): ~500 bytes a file would double the mount's
        memory at 300k files held.  Of a file of the mounted PFS, which changes behind the
        kernel only by a control op (undo -r), only the directory is kept (8 bytes); its
        names there are read when it changes (``_names_of_changed``)."""
        if not (self.enable_writeback_cache and ino.is_reg) or kino & SYNTHETIC:
            return
        if split_direct(kino, self.ns.pfs)[0] == self.ns.pfs:
            lookups = self.table.lookups
            old = lookups.parent(kino)
            if old and old != parent:  # a hard link in another directory (rare)
                self._more_parents.setdefault(kino, set()).add(old)
            lookups.set_parent(kino, parent)
        else:
            old = self._name_of.get((parent, name))
            if old is not None and old != kino:
                self._names.get(old, set()).discard((parent, name))
            self._names.setdefault(kino, set()).add((parent, name))
            self._name_of[parent, name] = kino

    def _unnamed(self, kino: int) -> None:
        self._more_parents.pop(kino, None)
        for key in self._names.pop(kino, ()):
            if self._name_of.get(key) == kino:
                del self._name_of[key]

    async def forget(self, inode_list):
        try:  # no reply goes back: a failure here must never end the loop
            with self.ns.lock:
                self.table.forget(inode_list)
                for kino, _ in inode_list:
                    if kino not in self.table.lookups:
                        self._unnamed(kino)
            self._forgotten += len(inode_list)
            if self._forgotten >= TRIM_AFTER:
                self._forgotten = 0
                _trim_heap()
        except Exception:
            log.exception("forget failed")

    @_locked
    def getattr(self, kino: int, ctx=None):
        fs, ino = self._get(kino)
        return self._attrs(fs, ino, kino)

    @_locked
    def setattr(self, kino: int, attr, fields, fh, ctx):
        handle = self._handles.get(fh) if fh is not None else None
        fs, obj = (handle.fs, handle.obj_id) if handle is not None else self.table.resolve(kino)
        if fields.update_size:
            fs.truncate(obj, attr.st_size)
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if changes or fields.update_ctime:
            fs.setattr(obj, **changes)
        if changes.keys() & {"mode", "uid", "gid"}:
            self._live_changed(fs, obj)
        return self._attrs(fs, fs.getattr(obj), kino)

    @_locked
    def readlink(self, kino: int, ctx):
        fs, ino = self._get(kino)
        return self.ns.readlink(fs, ino)

    @_locked
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx):
        fs, dir_ino = self._new_name(parent, name)
        ino = fs.create(dir_ino.obj_id, name, mode, ctx.uid, ctx.gid, rdev)
        entry = self._entry(fs, ino)
        self._named(entry.st_ino, ino, parent, name)
        return entry

    @_locked
    def mkdir(self, parent: int, name: bytes, mode: int, ctx):
        fs, dir_ino = self._new_name(parent, name)
        return self._entry(fs, fs.mkdir(dir_ino.obj_id, name, mode, ctx.uid, ctx.gid))

    @_locked
    def symlink(self, parent: int, name: bytes, target: bytes, ctx):
        fs, dir_ino = self._new_name(parent, name)
        return self._entry(fs, fs.symlink(dir_ino.obj_id, name, target, ctx.uid, ctx.gid))

    @_locked
    def link(self, kino: int, new_parent: int, new_name: bytes, ctx):
        src_fs, obj = self.table.resolve(kino)
        fs, dir_ino = self._new_name(new_parent, new_name)
        if fs is not src_fs:
            raise FsError(errno.EXDEV, "cannot link across views")
        ino = fs.link(obj, dir_ino.obj_id, new_name)
        entry = self._entry(fs, ino)
        self._named(entry.st_ino, ino, new_parent, new_name)
        return entry

    @_locked
    def unlink(self, parent: int, name: bytes, ctx):
        fs, dir_ino = self._new_name(parent, name)
        fs.unlink(dir_ino.obj_id, name)

    @_locked
    def rmdir(self, parent: int, name: bytes, ctx):
        fs, dir_ino = self._new_name(parent, name)
        fs.rmdir(dir_ino.obj_id, name)

    @_locked
    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int, ctx):
        ofs, odir = self._new_name(old_parent, old_name)
        nfs, ndir = self._new_name(new_parent, new_name)
        if ofs is not nfs:
            raise FsError(errno.EXDEV, "cannot rename across PFSs or views")
        ofs.rename(odir.obj_id, old_name, ndir.obj_id, new_name, flags)
        if not self.enable_writeback_cache:
            return
        moved = self._name_of.pop((old_parent, old_name), None)
        if moved is not None:  # the kernel moved its dentry
            self._names.get(moved, set()).discard((old_parent, old_name))
        ino = ofs.lookup(ndir.obj_id, new_name)
        kino = moved or self.table.peek(ofs, ino.obj_id)
        if kino is not None and kino in self.table.lookups:
            self._named(kino, ino, new_parent, new_name)

    # -- files -----------------------------------------------------------------------------------
    @_locked
    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx):
        fs, dir_ino = self._new_name(parent, name)
        ino = fs.create(dir_ino.obj_id, name, mode, ctx.uid, ctx.gid)
        fs.open(ino.obj_id)
        fh = self._new_fh(Handle(fs, ino.obj_id, bool(flags & os.O_APPEND)))
        entry = self._entry(fs, ino)
        self._named(entry.st_ino, ino, parent, name)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry

    @_locked
    def open(self, kino: int, flags: int, ctx):
        fs, ino = self._get(kino)
        if fs.readonly and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise FsError(errno.EROFS, "read-only")
        if ino.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        if flags & os.O_TRUNC and ino.size:  # libfuse3 asks the kernel for atomic O_TRUNC:
            fs.truncate(ino.obj_id, 0)       # no separate truncate request comes
        fs.open(ino.obj_id)
        fh = self._new_fh(Handle(fs, ino.obj_id, bool(flags & os.O_APPEND)))
        # pages stay cached across opens: every change behind the kernel invalidates them
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _read(self, fh: int, off: int, size: int) -> bytes:
        with self.ns.lock:
            h = self._handle(fh)
            if h.fs.asof is not None:  # a history view: prune may destroy its versions
                return h.fs.read(h.obj_id, off, size)
            ino = h.fs.regular_file(h.obj_id)
        # The data of the live view is read without the filesystem lock (each store call
        # is atomic under the store's own lock; prune destroys only history): metadata
        # requests go on meanwhile.
        return h.fs.read_data(ino, off, size)

    def _write(self, fh: int, off: int, buf: bytes) -> int:
        with self.ns.lock:
            h = self._handle(fh)
            if h.append and not self.enable_writeback_cache:  # O_APPEND: at the current
                off = h.fs.getattr(h.obj_id).size  # end (with the cache the kernel says)
            done = h.fs.write(h.obj_id, off, buf)
        store = self.ns.store
        if len(buf) >= THREADED_IO and store.unwritten_bytes >= WRITE_OUT_AT:
            store.write_out()  # in this worker thread, without the lock
        return done

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._io("read", self._read, size, fh, off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._io("write", self._write, len(buf), fh, off, buf)

    async def _io(self, name: str, func: Callable, size: int, *args):
        self.requests[name] += 1
        try:
            if size >= THREADED_IO:  # the loop keeps serving while this one waits
                return await trio.to_thread.run_sync(func, *args)
            return func(*args)
        except Exception as exc:
            raise self.failed(name, _errno(exc, name, args)) from None

    async def flush(self, fh: int) -> None:
        """Nothing to do at close (changes are in the open transaction, committed within a
        second): ENOSYS makes the kernel stop sending FLUSH, one request less per file."""
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_locked
    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is not None:
            h.fs.release(h.obj_id)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._commit("fsync")

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self._commit("fsyncdir")

    async def _commit(self, name: str) -> None:
        def commit() -> None:
            if not self.ns.readonly:  # the flush waits without the lock
                self.ns.store.commit_outside(self.ns.lock)
        self.requests[name] += 1
        try:
            await trio.to_thread.run_sync(commit)
        except Exception as exc:
            raise self.failed(name, _errno(exc, name, ())) from None

    # -- directories -----------------------------------------------------------------------------
    @_locked
    def opendir(self, kino: int, ctx):
        fs, ino = self._dir(kino)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = (fs, ino.obj_id)
        return fh

    @_locked
    def readdir(self, fh: int, start: int, token) -> None:
        """Entries after ``start`` (``.`` is 1, ``..`` 2, an entry its key + 3).  The kernel
        asks for READDIRPLUS: an entry whose inode it does not hold comes with attributes
        (one lookup reference); one it holds, and ``.`` and ``..``, which it never links,
        come as names only."""
        fs, obj = self._dirs[fh]
        dir_ino = fs.getattr(obj)
        if start < 2:  # the kernel takes no attributes of "." and ".." (never links them)
            up = dir_ino.parent if dir_ino.parent and obj != ROOT_OBJ else obj
            here = self.table.peek(fs, obj) or 0
            for name, dot, off in ((b".", obj, 1), (b"..", up, 2)):
                kino = self.table.peek(fs, dot) or here
                e = self._names_only(kino, dir_ino.mode) if self._names_only else \
                    self._attrs(fs, fs.getattr(dot), kino)
                if off > start and not pyfuse3.readdir_reply(token, name, e, off):
                    return
        after = start - 3 if start >= 3 else -1
        direct = self.table.is_current(fs)  # the same for every entry: asked once
        names_only = self._names_only
        bare = direct and names_only is not None
        held = self.table.lookups
        dkino = self.table.peek(fs, obj) or 0
        for n, entry in enumerate(fs.readdir(obj, after)):
            if n >= READDIR_BATCH:  # the kernel asks again from the last offset
                break
            kino = direct_ino(fs.pfs, entry.obj_id, self.ns.pfs) if direct else None
            if bare and kino in held:
                # the kernel holds this inode with exact attributes (every change reaches
                # it): the name alone, no inode read (a warm `du` or `ls -l` is this loop)
                if not pyfuse3.readdir_reply(token, entry.name,
                                             names_only(kino, entry.mode_type),
                                             entry.key + 3):
                    break
                self.entries_names_only += 1
                continue
            child = fs.getattr(entry.obj_id)
            if kino is None:
                kino = self.table.ino_of(fs, child.obj_id)
            if not pyfuse3.readdir_reply(token, entry.name, self._attrs(fs, child, kino),
                                         entry.key + 3):
                self.table.unused(kino)
                break
            self.table.looked_up(kino)
            self.entries_with_attributes += 1
            self._named(kino, child, dkino, entry.name)

    async def releasedir(self, fh: int) -> None:
        with self.ns.lock:
            self._dirs.pop(fh, None)

    # -- xattrs ----------------------------------------------------------------------------------
    @_locked
    def setxattr(self, kino: int, name: bytes, value: bytes, ctx):
        if name.startswith(ACL_XATTR):
            raise FsError(errno.EOPNOTSUPP, "POSIX ACLs are not supported")
        fs, obj = self.table.resolve(kino)
        fs.setxattr(obj, name, value)

    @_locked
    def getxattr(self, kino: int, name: bytes, ctx):
        if name.startswith(ACL_XATTR):
            raise FsError(errno.EOPNOTSUPP, "POSIX ACLs are not supported")
        fs, obj = self.table.resolve(kino)
        return fs.getxattr(obj, name)

    @_locked
    def listxattr(self, kino: int, ctx):
        fs, obj = self.table.resolve(kino)
        return [n for n in fs.listxattr(obj) if not n.startswith(ACL_XATTR)]

    @_locked
    def removexattr(self, kino: int, name: bytes, ctx):
        if name.startswith(ACL_XATTR):
            raise FsError(errno.EOPNOTSUPP, "POSIX ACLs are not supported")
        fs, obj = self.table.resolve(kino)
        fs.removexattr(obj, name)

    # -- changes behind the kernel -----------------------------------------------------------------
    def _sync_points(self) -> dict[int, int]:
        """The sync point of every slave PFS the kernel may hold objects of."""
        ends = {}
        for pfs in self.table.pfs_known():
            pd = self.ns.store.get_pfs(pfs)
            if pd is not None and pd.is_slave:
                ends[pfs] = pd.sync_end_tid
        return ends

    def flush_kernel(self) -> None:
        """Hand the kernel's dirty pages of this mount over (writeback cache): before a
        control op (a snapshot, undo or mirror read sees every write made before it) and
        before each periodic commit (what an application wrote is committed within about a
        second, as without the cache).  Never on the request loop (syncfs waits for the
        loop to serve the writes) nor under the lock.  Only while files are open: closing a
        file hands its pages over, and an fd on the mount would make an unmount racing with
        it fail (EBUSY).  The syncfs runs in a child process (`sync -f`): a thread of this
        process waiting on its own mount could never be killed (a request the loop has read
        is waited for uninterruptibly, and SIGKILL ends the loop), so the process could not
        exit and release /dev/fuse; a child is released when this process dies."""
        if not self.enable_writeback_cache or not self._handles or self.mountpoint is None:
            return
        done = subprocess.run(["sync", "-f", self.mountpoint], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if done.returncode:  # (unmounted meanwhile: nothing was dirty any more)
            log.info("sync -f %s failed: %s", self.mountpoint,
                        done.stderr.decode(errors="replace").strip())

    def begin_change(self) -> dict:
        """Before a control op: what the kernel's view is based on (its dirty pages
        handed over first)."""
        self.flush_kernel()
        with self.ns.lock:
            return {"tid": self.ns.store.current_tid, "ends": dict(self._slave_ends)}

    def end_change(self, mark: dict) -> None:
        """After a control op (without the lock): invalidate what it changed, and wait
        (briefly) until the kernel has it.  Never fails the op."""
        if not self.invalidator.alive:  # the mount is gone (await-unmount outlives it)
            return
        try:
            with self.ns.lock:
                tid = self.ns.store.current_tid
                if tid == mark["tid"] and self._sync_points() == self._slave_ends:
                    return
                self.table.refresh()
            with Steps(self.ns.lock) as steps:  # undo -r of 10k files: 10k+ changed records
                self._invalidate_changes(mark["tid"], steps.tick)
        except Exception:
            log.warning("cache invalidation after a control op failed", exc_info=True)
            return
        self.invalidator.barrier()

    def poll_slaves(self) -> None:
        """Mirroring into a mounted slave moves its sync point (a stream may run for
        hours): invalidate what changed as soon as it shows."""
        with Steps(self.ns.lock) as steps:
            if self._sync_points() != self._slave_ends:
                self.ns.forget()
                self.table.refresh()
                self._invalidate_changes(None, steps.tick)

    def _invalidate_changes(self, since_tid: int | None,
                            tick: Callable[[], None] = lambda: None) -> None:
        """Queue the invalidation of every record of a PFS the kernel knows that changed
        since ``since_tid`` (masters; None: only slaves), or since the sync point the kernel
        saw (slaves), and of every history inode (prune and cleanup remove versions)."""
        ends = self._sync_points()
        for pfs in self.table.pfs_known():
            if pfs in ends:
                seen = self._slave_ends.get(pfs)
                if ends[pfs] == seen:
                    continue
                if seen is None:  # a slave the kernel got numbers of since the last look
                    seen = self.table.direct_since(pfs)
                since = seen + 1 if seen is not None else since_tid or 1
            elif since_tid is None:
                continue
            else:
                since = since_tid
            self._invalidate_pfs(pfs, since, tick)
        self._slave_ends = ends
        if since_tid is not None:
            for kino in self.table.synthetic():
                self.invalidator.inode(kino)
                for parent, name in self.table.magic_names.get(kino, ()):
                    self.invalidator.entry(parent, name)

    def _invalidate_pfs(self, pfs: int, since: int, tick: Callable[[], None]) -> None:
        """Queue the invalidations of what changed in ``pfs`` since ``since``; ``tick``
        between records (the scan resumes by key: the lock may be handed over)."""
        known = self.table.lookups
        seen: set[int] = set()
        untracked: dict[int, set[int]] = {}  # parent dir -> changed files of unknown names
        lo, hi = (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)
        for rec in self.ns.store.changed_since(lo, hi, since, pin_history=False,
                                               with_data=False):
            tick()
            kino = direct_ino(pfs, rec.obj_id, self.ns.pfs)
            if kino is None or (kino not in known and kino != pyfuse3.ROOT_INODE):
                continue
            if kino not in seen:
                seen.add(kino)
                self.invalidator.inode(kino)
                for parent, name in self._names.get(kino, ()):  # kernel size and mtime
                    self.invalidator.entry(parent, name)  # are its own (writeback cache)
                for syn in self.table.synthetic_of(pfs, rec.obj_id):
                    self.invalidator.inode(syn, attr_only=True)
            if rec.rec_type == REC_DIRENT and rec.data is not None:
                self.invalidator.entry(kino, decode_dirent(rec.key, rec.data).name)
            elif rec.rec_type == REC_INODE and self.enable_writeback_cache:
                for parent in (known.parent(kino), *self._more_parents.get(kino, ())):
                    if parent:
                        untracked.setdefault(parent, set()).add(rec.obj_id)
        for parent, objs in untracked.items():
            self._names_of_changed(parent, objs)

    def _names_of_changed(self, dkino: int, objs: set[int]) -> None:
        """Drop the kernel's names of files ``objs`` in directory ``dkino`` (its entries
        read once): with the writeback cache the kernel trusts its own size and mtime of a
        file it holds, so the inode must leave its cache (a file with names in several
        directories has each of them read: ``_more_parents``)."""
        try:
            fs, dir_obj = self.table.resolve(dkino)
            entries = list(fs.readdir(dir_obj))
        except FsError:  # the directory is gone: its names went with it
            return
        for entry in entries:
            if entry.obj_id in objs:
                self.invalidator.entry(dkino, entry.name)


def readahead_kb() -> int:
    """READAHEAD_KB, or HAMMERFS_READAHEAD_KB when set to a number (0: leave it alone)."""
    value = os.environ.get("HAMMERFS_READAHEAD_KB", "")
    return int(value) if value.isdigit() else READAHEAD_KB


def mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the FUSE mount at ``mountpoint`` (an absolute, resolved path),
    from /proc/self/mountinfo: no request to the mount itself."""
    km = kernel_mount(mountpoint)
    if km is None or not km.fstype.startswith("fuse"):
        return None
    return f"{km.device[0]}:{km.device[1]}"


async def _serve_until_signalled(ops: HammerOperations) -> None:
    """pyfuse3's loop, ended cleanly by SIGINT, SIGTERM or SIGHUP (as libfuse's own loop
    is): the kernel unmounts and the final commit runs.  Mirroring into a mounted slave is
    watched here too."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signal, ops)
        nursery.start_soon(_watch_slaves, ops)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _on_signal(ops: HammerOperations) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _sig in signals:
            # the kernel's dirty pages first: once the loop stops nobody takes them; and the
            # invalidations queued (one may wait for a writeback only the loop serves)
            await trio.to_thread.run_sync(ops.flush_kernel)
            await trio.to_thread.run_sync(ops.invalidator.barrier)
            pyfuse3.terminate()
            return


async def _watch_slaves(ops: HammerOperations, interval: float = 0.25) -> None:
    # Always: the kernel may get numbers of a slave PFS (through a PFS link) at any time,
    # and a stream into it changes nothing this mount is told about.
    while True:
        await trio.sleep(interval)
        try:
            await trio.to_thread.run_sync(ops.poll_slaves)
        except Exception:
            log.exception("watching the slave's sync point failed")


def run(ops: HammerOperations, mountpoint: str, *, fsname: str, readonly: bool,
        debug: bool = False) -> None:
    """Mount and serve until unmounted (or SIGINT/SIGTERM/SIGHUP)."""
    options = {f"fsname={fsname}", "subtype=hammerfs", "default_permissions"}
    if os.geteuid() == 0:
        options.add("allow_other")
    if readonly:
        options.add("ro")
    if debug:
        options.add("debug")
    where = os.path.realpath(mountpoint)  # before mounting: afterwards this asks us
    pyfuse3.init(ops, mountpoint, options)
    if readahead_kb() > 0:
        ops.readahead_dev = mount_device(where)
    try:
        trio.run(_serve_until_signalled, ops)
    except BaseException:
        ops.invalidator.stop()
        pyfuse3.close(unmount=False)
        raise
    ops.invalidator.stop()
    pyfuse3.close()
