"""The thin FUSE adapter: maps mfusepy's path-based requests onto a ``Namespace``.

This is the only module that imports the binding.  Requests are served one at a time (the
single-threaded libfuse loop), each under the namespace's coarse lock, which the control
channel and the commit thread share; errors become errno values (never tracebacks): OSErrors keep their errno,
CorruptionError is EIO and is logged with its location, anything unexpected is logged and
returned as EIO.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable
from ctypes.util import find_library
from dataclasses import dataclass

# Prefer libfuse3 (1 MiB requests, rename flags) when both major versions are installed.
if "FUSE_LIBRARY_PATH" not in os.environ and "FUSE_LIBRARY_NAME" not in os.environ \
        and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy  # noqa: E402  (must follow the library choice above)

from hammerfs.errors import CorruptionError, HammerError
from hammerfs.fs.filesystem import FileSystem, FsError
from hammerfs.fs.layout import BLOCK, Inode
from hammerfs.fs.namespace import Namespace

log = logging.getLogger("hammerfs.fuse")

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_EXCHANGE = 2
SYNTHETIC_INO = 1 << 56  # inode numbers of history/other-PFS views start here
MAX_REQUEST = 1 << 20  # largest read/write request the kernel may send
FUSE_READDIR_PLUS = 1  # readdir flag: the kernel asked for READDIRPLUS
FUSE_FILL_DIR_PLUS = 2  # filler flag: this entry carries full attributes
ENTRY_TTL = 60.0  # seconds the kernel keeps a name of a tree that changes only through it
ATTR_TTL = 1.0  # seconds it keeps attributes that may change behind it (see run())
READDIR_BATCH = 256  # entries produced per readdir call at most (a request holds fewer)
FUSE_CAP_EXPORT_SUPPORT = 1 << 4  # libfuse3: the kernel may LOOKUP "." and ".." by node id
INVALIDATE_WAIT = 0.2  # seconds a link/unlink/rename waits for its names' invalidation
MAX_LINKED_NAMES = 65536  # names of multi-linked files remembered for invalidation


def _stat_layout() -> tuple[struct.Struct, tuple[str, ...]]:
    """A struct that writes a whole ``struct stat`` in one call (laid out from the binding's
    c_stat, so it follows the platform), and the value names in the order it takes them."""
    parts: list[tuple[int, str, type]] = []
    for name, ctype, *_ in mfusepy.c_stat._fields_:
        offset = getattr(mfusepy.c_stat, name).offset
        if name.endswith("timespec"):
            for sub, stype in ctype._fields_:
                parts.append((offset + getattr(ctype, sub).offset, f"{name[:-4]}_{sub}", stype))
        elif not name.startswith(("__", "reserved")):
            parts.append((offset, name, ctype))
    fmt, pos, names = "=", 0, []
    for offset, name, ctype in sorted(parts):
        fmt += "x" * (offset - pos)
        size = ctypes.sizeof(ctype)
        code = {8: "q", 4: "i", 2: "h"}[size]
        fmt += code if ctype._type_.islower() else code.upper()
        names.append(name)
        pos = offset + size
    fmt += "x" * (ctypes.sizeof(mfusepy.c_stat) - pos)
    return struct.Struct(fmt), tuple(names)


_STAT, _STAT_FIELDS = _stat_layout()


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


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


def _op(func: Callable) -> Callable:
    """Serialise the request and turn every failure into an errno."""

    @functools.wraps(func)
    def wrapper(self: HammerOperations, *args):
        try:
            with self.ns.lock:
                return func(self, *args)
        except Exception as exc:
            raise mfusepy.FuseOSError(_errno(exc, func.__name__, args)) from None

    return wrapper


@dataclass
class Handle:
    fs: FileSystem
    obj_id: int
    append: bool = False
    written: bool = False  # since the last flush: other names' attributes are stale


class HammerOperations(mfusepy.Operations):
    use_ns = True  # times in ns; unlinked-but-open files come with a None path and a handle

    def __init__(self, ns: Namespace, on_ready: Callable[[], None] | None = None,
                 on_destroy: Callable[[], None] | None = None):
        self.ns = ns
        self._on_ready = on_ready
        self._on_destroy = on_destroy
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._inos: dict[tuple[int, int | None, int], int] = {}
        self._packed: dict[int, tuple[Inode, bytes]] = {}  # st_ino -> (inode, its stat)
        self._fh_lock = threading.Lock()
        self._fuse_ptr: ctypes.c_void_p | None = None
        self.export_support = False  # set by run(nfs=True)
        self._links = LinkNames()
        self._pending: queue.SimpleQueue[tuple[list[bytes], threading.Event] | None] = \
            queue.SimpleQueue()

    # -- helpers -------------------------------------------------------------------------------
    def _ino(self, fs: FileSystem, obj: int) -> int:
        if fs.pfs == self.ns.pfs and fs.asof is None:
            return obj
        key = (fs.pfs, fs.asof, obj)
        ino = self._inos.get(key)
        if ino is None:
            ino = self._inos[key] = SYNTHETIC_INO + len(self._inos)
        return ino

    def _stat(self, fs: FileSystem, ino: Inode) -> bytes:
        """``struct stat`` of ``ino``, packed, and kept while the view hands out the same
        Inode object (views replace the object on every change)."""
        st_ino = self._ino(fs, ino.obj_id)
        cached = self._packed.get(st_ino)
        if cached is not None and cached[0] is ino:
            return cached[1]
        if len(self._packed) > 65536:
            self._packed.clear()
        packed = self._pack_stat(st_ino, ino)
        self._packed[st_ino] = (ino, packed)
        return packed

    @staticmethod
    def _pack_stat(st_ino: int, ino: Inode) -> bytes:
        """``struct stat`` of ``ino`` (st_dev stays 0: the kernel reports the mount's device
        for every file of a FUSE mount, whatever we say)."""
        atime_s, atime_ns = divmod(ino.atime, 1_000_000_000)
        mtime_s, mtime_ns = divmod(ino.mtime, 1_000_000_000)
        ctime_s, ctime_ns = divmod(ino.ctime, 1_000_000_000)
        values = {
            "st_dev": 0, "st_ino": st_ino, "st_nlink": ino.nlink,
            "st_mode": ino.mode, "st_uid": ino.uid, "st_gid": ino.gid, "st_rdev": ino.rdev,
            "st_size": ino.size, "st_blksize": BLOCK, "st_blocks": (ino.size + 511) // 512,
            "st_atime_tv_sec": atime_s, "st_atime_tv_nsec": atime_ns,
            "st_mtime_tv_sec": mtime_s, "st_mtime_tv_nsec": mtime_ns,
            "st_ctime_tv_sec": ctime_s, "st_ctime_tv_nsec": ctime_ns,
        }
        return _STAT.pack(*[values.get(name, 0) for name in _STAT_FIELDS])

    def _new_fh(self, handle: Handle) -> int:
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
            return fh

    def _handle(self, fh) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "stale file handle")
        return handle

    def _target(self, path: bytes | None, fh: int | None) -> tuple[FileSystem, Inode]:
        """What a request is about: the open file ``fh`` if the kernel named one, else the
        object at ``path``."""
        handle = self._handles.get(fh) if fh else None
        if handle is not None:
            return handle.fs, handle.fs.getattr(handle.obj_id)
        if path is None:
            raise FsError(errno.ENOENT, "no path")
        return self.ns.resolve(path)

    def _resolve(self, path: str | None, fh=None) -> tuple[FileSystem, Inode]:
        return self._target(None if path is None else _b(path), fh)

    def _parent(self, path: str) -> tuple[FileSystem, Inode, bytes]:
        return self.ns.resolve_parent(_b(path))

    @staticmethod
    def _caller() -> tuple[int, int]:
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid

    # -- lifecycle -------------------------------------------------------------------------------
    def init(self, path):
        if hasattr(mfusepy._libfuse, "fuse_invalidate_path"):
            self._fuse_ptr = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
            threading.Thread(target=self._invalidate_loop, name="hammerfs-invalidate",
                             daemon=True).start()
        if self._on_ready:
            self._on_ready()

    def invalidate(self, path: str) -> None:
        """Drop the kernel's cached attributes and pages of ``path`` after a change made
        outside FUSE requests (undo restore through the control channel).  Call it without
        holding the namespace lock: the kernel may wait for requests that need it."""
        if self._fuse_ptr is not None:
            mfusepy._libfuse.fuse_invalidate_path(self._fuse_ptr, _b("/" + path.strip("/")))

    def _invalidate_loop(self) -> None:
        """Invalidate the names queued by requests, outside the request thread: the kernel
        may wait for page locks held by requests queued behind the one being served."""
        while (item := self._pending.get()) is not None:
            paths, done = item
            for path in paths:
                if self._fuse_ptr is not None:
                    mfusepy._libfuse.fuse_invalidate_path(self._fuse_ptr, path)
            done.set()

    def _invalidate_later(self, paths: list[bytes]) -> None:
        """Have the other names of a file whose link count changed re-read their attributes.

        libfuse's high-level API gives each name its own kernel inode, so the kernel does not
        know that ``a`` changed when ``b`` was linked or removed.  The invalidation runs in
        the background thread; the request waits for it a short while, so in the normal case
        the change is visible when the syscall returns (``ln a b && cp -a a b dst`` keeps the
        link), and when the kernel holds it up the request returns anyway (no deadlock) and
        the invalidation lands right after."""
        if not paths or self._fuse_ptr is None:
            return
        done = threading.Event()
        self._pending.put((paths, done))
        done.wait(INVALIDATE_WAIT)

    def init_with_config(self, conn, config):
        if conn is not None:
            # libfuse3 insists that the session's max_read matches the mount option
            if hasattr(conn, "max_read"):
                conn.max_read = MAX_REQUEST
            conn.max_readahead = MAX_REQUEST
            if self.export_support:
                if conn.capable & FUSE_CAP_EXPORT_SUPPORT:
                    conn.want |= FUSE_CAP_EXPORT_SUPPORT
                else:
                    log.error("-o nfs: this kernel cannot export a FUSE mount (no export "
                              "support); NFS clients will see stale file handles")
        self.init("/")

    def destroy(self, path):
        self._fuse_ptr = None
        self._pending.put(None)
        if self._on_destroy:
            self._on_destroy()

    # -- attributes ------------------------------------------------------------------------------
    def stat_into(self, path: bytes | None, fh: int | None, buf) -> int:
        """getattr straight into libfuse's ``struct stat`` buffer (the hottest request)."""
        try:
            with self.ns.lock:
                packed = self._stat(*self._target(path, fh))
        except Exception as exc:
            return -_errno(exc, "getattr", (path,))
        ctypes.memmove(buf, packed, _STAT.size)
        return 0

    @_op
    def access(self, path, amode):
        self._resolve(path)
        return 0

    def setattr_at(self, path: bytes | None, fh: int | None, **changes) -> int:
        """chmod/chown/utimens (``fs.setattr`` arguments) of a path, or of an open file
        when the kernel names its handle (then it may be unlinked already)."""
        try:
            with self.ns.lock:
                fs, ino = self._target(path, fh)
                fs.setattr(ino.obj_id, **changes)
        except Exception as exc:
            return -_errno(exc, "setattr", (path,))
        return 0

    def utimens_at(self, path: bytes | None, fh: int | None, atime: tuple[int, int] | None,
                   mtime: tuple[int, int] | None) -> int:
        """Times as (seconds, nanoseconds) with UTIME_NOW/UTIME_OMIT in the nanoseconds;
        None for both means now."""
        now = time.time_ns()
        return self.setattr_at(path, fh, atime=_time_arg(atime, now),
                               mtime=_time_arg(mtime, now))

    @_op
    def truncate(self, path, length, fh=None):
        fs, ino = self._resolve(path, fh)
        fs.truncate(ino.obj_id, length)
        return 0

    # -- names -------------------------------------------------------------------------------------
    @_op
    def readlink(self, path):
        fs, ino = self._resolve(path)
        return self.ns.readlink(fs, ino).decode("utf-8", "surrogateescape")

    @_op
    def mknod(self, path, mode, dev):
        fs, parent, name = self._parent(path)
        uid, gid = self._caller()
        fs.create(parent.obj_id, name, mode, uid, gid, dev)
        return 0

    @_op
    def mkdir(self, path, mode):
        fs, parent, name = self._parent(path)
        uid, gid = self._caller()
        ino = fs.mkdir(parent.obj_id, name, mode, uid, gid)
        self.ns.created(fs, _b(path), ino.obj_id)
        return 0

    @_op
    def symlink(self, target, source):
        fs, parent, name = self._parent(target)
        uid, gid = self._caller()
        fs.symlink(parent.obj_id, name, _b(source), uid, gid)
        return 0

    def link(self, target, source):
        """link, then the other names' invalidation (outside the namespace lock: requests
        queued behind this one may need it before the kernel lets the invalidation finish)."""
        self._invalidate_later(self._link(target, source))
        return 0

    @_op
    def _link(self, target, source) -> list[bytes]:
        src_fs, src = self._resolve(source)
        fs, parent, name = self._parent(target)
        if fs is not src_fs:
            raise FsError(errno.EXDEV, "cannot link across views")
        fs.link(src.obj_id, parent.obj_id, name)
        return self._links.linked((fs.pfs, src.obj_id), _b(source), _b(target))

    def unlink(self, path):
        self._invalidate_later(self._unlink(path))
        return 0

    @_op
    def _unlink(self, path) -> list[bytes]:
        fs, parent, name = self._parent(path)
        fs.unlink(parent.obj_id, name)
        self.ns.forget_path(_b(path))
        return self._links.removed(_b(path))


    @_op
    def rmdir(self, path):
        fs, parent, name = self._parent(path)
        fs.rmdir(parent.obj_id, name)
        self.ns.forget_path(_b(path), subtree=True)
        return 0

    def rename(self, old, new, flags=0):
        self._invalidate_later(self._rename(old, new, flags))
        return 0

    @_op
    def _rename(self, old, new, flags=0) -> list[bytes]:
        ofs, oparent, oname = self._parent(old)
        nfs, nparent, nname = self._parent(new)
        if ofs is not nfs:
            raise FsError(errno.EXDEV, "cannot rename across PFSs or views")
        ofs.rename(oparent.obj_id, oname, nparent.obj_id, nname, flags)
        self.ns.forget_path(_b(old), subtree=True)
        self.ns.forget_path(_b(new), subtree=True)
        return self._links.renamed(_b(old), _b(new), exchange=bool(flags & RENAME_EXCHANGE))

    # -- files -------------------------------------------------------------------------------------
    @_op
    def create(self, path, mode, flags=0):
        fs, parent, name = self._parent(path)
        uid, gid = self._caller()
        ino = fs.create(parent.obj_id, name, mode, uid, gid)
        self.ns.created(fs, _b(path), ino.obj_id)
        fs.open(ino.obj_id)
        return self._new_fh(Handle(fs, ino.obj_id, bool(flags & os.O_APPEND)))

    @_op
    def open(self, path, flags):
        fs, ino = self._resolve(path)
        if fs.readonly and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise FsError(errno.EROFS, "read-only")
        if ino.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        if flags & os.O_TRUNC and ino.size:  # libfuse3 asks the kernel for atomic O_TRUNC:
            fs.truncate(ino.obj_id, 0)       # no separate truncate request comes
        fs.open(ino.obj_id)
        return self._new_fh(Handle(fs, ino.obj_id, bool(flags & os.O_APPEND)))

    @_op
    def read(self, path, size, offset, fh):
        h = self._handle(fh)
        return h.fs.read(h.obj_id, offset, size)

    @_op
    def write(self, path, data, offset, fh):
        h = self._handle(fh)
        if h.append:  # O_APPEND: always at the current end, whatever the kernel thinks
            offset = h.fs.getattr(h.obj_id).size
        h.written = True
        return h.fs.write(h.obj_id, offset, data)

    def flush(self, path, fh):
        """close(): a file written through one name has its other known names' size and
        mtime invalidated (here, not at release, which the kernel sends after close returned)."""
        self._invalidate_later(self._written_names(path, fh))
        return 0

    @_op
    def _written_names(self, path, fh) -> list[bytes]:
        h = self._handles.get(fh)
        if h is None or not h.written:
            return []
        h.written = False
        this = None if path is None else _b(path)
        return [n for n in self._links.names_of((h.fs.pfs, h.obj_id)) if n != this]

    @_op
    def release(self, path, fh):
        with self._fh_lock:
            h = self._handles.pop(fh, None)
        if h is not None:
            h.fs.release(h.obj_id)
        return 0

    @_op
    def fsync(self, path, datasync, fh):
        if not self.ns.readonly:
            self.ns.store.commit()
        return 0

    @_op
    def fsyncdir(self, path, datasync, fh):
        if not self.ns.readonly:
            self.ns.store.commit()
        return 0

    @_op
    def statfs(self, path):
        return self.ns.root()[0].statfs()

    # -- directories -------------------------------------------------------------------------------
    @_op
    def opendir(self, path):
        fs, ino = self._resolve(path)
        if not ino.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        return 0

    def fill_dir(self, path: bytes, buf, filler, offset: int, plus: bool) -> int:
        """readdir(plus): entries after ``offset`` into libfuse's buffer until it is full.
        With ``plus`` each entry carries its attributes, which saves the kernel a LOOKUP per
        name (``find``, ``ls -l``, ``rm -r``)."""
        st = mfusepy.c_stat()
        try:
            with self.ns.lock:
                fs, ino = self.ns.resolve(path)
                if not ino.is_dir:
                    return -errno.ENOTDIR
                if offset < 1:
                    self._fill_mode(st, stat.S_IFDIR, self._ino(fs, ino.obj_id))
                    if filler(buf, b".", st, 1, 0):
                        return 0
                if offset < 2:
                    self._fill_mode(st, stat.S_IFDIR, 0)
                    if filler(buf, b"..", st, 2, 0):
                        return 0
                after = offset - 3 if offset >= 3 else -1
                for n, entry in enumerate(fs.readdir(ino.obj_id, after)):
                    if n >= READDIR_BATCH:  # the kernel asks again from the last offset
                        break
                    if plus:
                        child = fs.getattr(entry.obj_id)
                        ctypes.memmove(ctypes.byref(st), self._stat(fs, child), _STAT.size)
                        flags = FUSE_FILL_DIR_PLUS
                    else:
                        self._fill_mode(st, entry.mode_type, self._ino(fs, entry.obj_id))
                        flags = 0
                    if filler(buf, entry.name, st, entry.key + 3, flags):
                        break
        except Exception as exc:
            return -_errno(exc, "readdir", (path,))
        return 0

    @staticmethod
    def _fill_mode(st, mode: int, ino: int) -> None:
        ctypes.memset(ctypes.byref(st), 0, _STAT.size)
        st.st_mode = mode
        st.st_ino = ino

    @_op
    def releasedir(self, path, fh):
        return 0

    # -- xattrs --------------------------------------------------------------------------------------
    @_op
    def setxattr(self, path, name, value, options, position=0):
        fs, ino = self._resolve(path)
        fs.setxattr(ino.obj_id, _b(name), value, options)
        return 0

    def getxattr_into(self, path: bytes, name: bytes, buf, size: int) -> int:
        """getxattr into libfuse's buffer (size 0 asks for the length).  Hot: the kernel
        asks for security.capability before every write and chown."""
        try:
            with self.ns.lock:
                fs, ino = self.ns.resolve(path)
                value = fs.getxattr(ino.obj_id, name)
        except Exception as exc:
            return -_errno(exc, "getxattr", (path,))
        if not buf:
            return len(value)
        if len(value) > size:
            return -errno.ERANGE
        ctypes.memmove(buf, value, len(value))
        return len(value)

    @_op
    def listxattr(self, path):
        fs, ino = self._resolve(path)
        return [n.decode("utf-8", "surrogateescape") for n in fs.listxattr(ino.obj_id)]

    @_op
    def removexattr(self, path, name):
        fs, ino = self._resolve(path)
        fs.removexattr(ino.obj_id, _b(name))
        return 0

    # The binding registers a libfuse callback only for operations defined here; _Fuse
    # serves these (with libfuse's own arguments) through the methods named.
    getattr = stat_into
    readdir_with_offset = fill_dir
    chmod = chown = setattr_at
    utimens = utimens_at
    getxattr = getxattr_into


class LinkNames:
    """The names of multi-linked files that this mount created links for, so that a link,
    unlink or rename through one name can invalidate the kernel's attributes of the others.
    Names linked before the mount (or forgotten when the table is full) are not known: their
    link count lags by ATTR_TTL at most, as before.  Every method returns the names to
    invalidate."""

    def __init__(self) -> None:
        self._obj: dict[bytes, tuple[int, int]] = {}  # name -> (pfs, obj_id)
        self._names: dict[tuple[int, int], set[bytes]] = {}

    def linked(self, key: tuple[int, int], source: bytes, target: bytes) -> list[bytes]:
        if len(self._obj) > MAX_LINKED_NAMES:
            self._obj.clear()
            self._names.clear()
        self.removed(target)  # a stale entry (the name was replaced behind us)
        old = self._obj.get(source)
        if old is not None and old != key:
            self.removed(source)
        names = self._names.setdefault(key, set())
        names.update((source, target))
        self._obj[source] = self._obj[target] = key
        return sorted(names - {target})

    def names_of(self, key: tuple[int, int]) -> list[bytes]:
        return sorted(self._names.get(key, ()))

    def removed(self, name: bytes) -> list[bytes]:
        key = self._obj.pop(name, None)
        if key is None:
            return []
        names = self._names[key]
        names.discard(name)
        if len(names) <= 1:  # a single name left: its own inode is the only one
            del self._names[key]
            for left in names:
                self._obj.pop(left, None)
        return sorted(names)

    def renamed(self, old: bytes, new: bytes, exchange: bool = False) -> list[bytes]:
        """A rename moves a name (keeping the link count) and removes the replaced one."""
        key_old, key_new = self._obj.get(old), self._obj.get(new)
        if key_old is not None and key_old == key_new:
            return []  # two names of one file: rename does nothing
        if exchange:
            for name, key in ((new, key_old), (old, key_new)):
                self._forget_name(name)
                if key is not None:
                    self._add_name(key, name)
            return []
        stale = [] if key_new is None or key_new == key_old else self.removed(new)
        if key_old is not None:
            self._forget_name(old)
            self._forget_name(new)
            self._add_name(key_old, new)
        return stale

    def _forget_name(self, name: bytes) -> None:
        key = self._obj.pop(name, None)
        if key is not None:
            self._names[key].discard(name)

    def _add_name(self, key: tuple[int, int], name: bytes) -> None:
        self._obj[name] = key
        self._names.setdefault(key, set()).add(name)


def _time_arg(value: tuple[int, int] | None, now: int) -> int | None:
    if value is None:
        return now
    sec, nsec = value
    if nsec == UTIME_OMIT:
        return None
    if nsec == UTIME_NOW:
        return now
    return sec * 1_000_000_000 + nsec


class _Fuse(mfusepy.FUSE):
    """The binding with our hot paths: getattr packs ``struct stat`` in one call, readdir
    answers READDIRPLUS, create skips the binding's per-call signature inspection, and
    rename flags (RENAME_NOREPLACE), which the binding drops, are passed on."""

    def getattr_fuse_3(self, path: bytes | None, buf, fip) -> int:
        return self.operations.stat_into(path, fip.contents.fh if fip else None, buf)

    def readdir_fuse_3(self, path: bytes, buf, filler, offset: int, fip, flags: int) -> int:
        return self.operations.fill_dir(path, buf, filler, offset,
                                        bool(flags & FUSE_READDIR_PLUS))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip) -> int:
        return self.operations.setattr_at(path, fip.contents.fh if fip else None, mode=mode)

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip) -> int:
        return self.operations.setattr_at(path, fip.contents.fh if fip else None,
                                          uid=uid, gid=gid)

    def utimens_fuse_3(self, path: bytes | None, buf, fip) -> int:
        times = buf.contents if buf else None
        atime = (times.actime.tv_sec, times.actime.tv_nsec) if times else None
        mtime = (times.modtime.tv_sec, times.modtime.tv_nsec) if times else None
        return self.operations.utimens_at(path, fip.contents.fh if fip else None, atime, mtime)

    def getxattr(self, path: bytes, name: bytes, value, size: int, *args) -> int:
        return self.operations.getxattr_into(path, name, value, size)

    def create(self, path: bytes, mode: int, fip) -> int:
        fi = fip.contents
        fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)


def kernel_cache_timeouts(ns: Namespace) -> dict[str, float]:
    """How long the kernel may keep names and attributes without asking us again.

    The high-level libfuse API is path based: a cached name only maps to a path, which we
    resolve afresh on every request, so a long entry timeout cannot show a removed or
    replaced file's contents; what the kernel keeps is attributes (and pages, which
    auto_cache checks against mtime and size on open).  Hence:

    * live master: every change comes through the kernel (which updates its cache) except
      control-channel ops, which invalidate what they change; names stay ENTRY_TTL,
      attributes ATTR_TTL (the bound for anything else, e.g. ``@@-1:NNNNN`` slave views);
    * as-of mount: nothing ever changes: both ENTRY_TTL;
    * slave: mirroring rewrites the tree behind the kernel: both ATTR_TTL.

    Negative lookups are never cached: ``undo`` and mirroring create names behind the
    kernel, and a cached "no such file" could not be invalidated through this API."""
    root = ns.root_view()
    if ns.asof is not None:
        entry, attr = ENTRY_TTL, ENTRY_TTL
    elif root.asof is None:
        entry, attr = ENTRY_TTL, ATTR_TTL
    else:
        entry, attr = ATTR_TTL, ATTR_TTL
    return {"entry_timeout": entry, "attr_timeout": attr, "negative_timeout": 0.0}


def run(ops: HammerOperations, mountpoint: str, *, fsname: str, readonly: bool,
        foreground: bool = True, debug: bool = False, nfs: bool = False) -> None:
    """Mount and serve until unmounted (or SIGINT/SIGTERM).

    ``nfs``: an NFS server hands out file handles holding the kernel's FUSE node id and
    later opens them by handle (open_by_handle_at), possibly after the kernel dropped the
    inode.  That needs export support (the kernel then asks libfuse to LOOKUP "." in the
    node id) and node ids that stay valid as long as the mount lives (``noforget``: libfuse
    keeps a node, about 160 bytes, for every name ever looked up, which is why it is not the
    default).  Node ids are handed out afresh by every mount: handles do not survive a
    remount (the NFS server must be restarted and its clients remount)."""
    with ops.ns.lock:
        timeouts = kernel_cache_timeouts(ops.ns)
    options = {
        "fsname": fsname, "subtype": "hammerfs", "default_permissions": True,
        "use_ino": True, "hard_remove": True, "auto_cache": True,
        "max_read": MAX_REQUEST, **timeouts,
    }
    if os.geteuid() == 0:
        options["allow_other"] = True
    if readonly:
        options["ro"] = True
    if nfs:
        options["noforget"] = True
        ops.export_support = True
    # One request at a time: every request takes the coarse lock anyway, and with several
    # libfuse threads the GIL and that lock convoy (measured: metadata ops 1.5-2.5x slower,
    # no gain for sequential I/O).  Nothing served here may wait for this mount's own
    # requests (control ops release the lock before invalidating kernel caches).
    _Fuse(ops, mountpoint, foreground=foreground, debug=debug, nothreads=True, **options)
