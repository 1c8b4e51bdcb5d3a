"""Views and path resolution: the live tree, HAMMER ``@@`` history names and PFS links.

A path component ``NAME@@0x<16 hex>`` (or ``NAME@@-1`` = now) opens NAME as of that TID, and
everything below it in that read-only view.  An empty NAME (``@@0x...``) is the directory
itself as of the TID.  A ``:NNNNN`` suffix with an empty NAME (``@@-1:00001``,
``@@0x...:00001``) is the root of PFS NNNNN: live for a master, as of its ``sync_end_tid`` for
a slave.  PFS softlinks are plain symlinks whose target is such a name; ``readlink`` reports
the current value (``@@-1:%05d`` for a master, ``@@0x<sync_end_tid>:%05d`` for a slave), so
the kernel walks from the link into the PFS.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass

from hammerfs.fs.asof import HISTORY_PERMS
from hammerfs.fs.filesystem import FileSystem, FsError
from hammerfs.fs.layout import Inode
from hammerfs.steps import SteppedLock
from hammerfs.store.api import RecordStore
from hammerfs.store.records import MAX_U64, ROOT_OBJ

ROOT_TTL = 0.5
_MAGIC = re.compile(rb"^(?P<name>.*?)@@(?P<tid>0x[0-9a-fA-F]{16}|-1)(?::(?P<pfs>\d{5}))?$",
                    re.DOTALL)


@dataclass(frozen=True, slots=True)
class Magic:
    name: bytes
    tid: int | None  # None = now (@@-1)
    pfs: int | None


def parse_magic(name: bytes) -> Magic | None:
    m = _MAGIC.match(name)
    if m is None:
        return None
    tid = None if m["tid"] == b"-1" else int(m["tid"], 16)
    if tid is not None and not 0 < tid <= MAX_U64:
        return None
    return Magic(m["name"], tid, int(m["pfs"]) if m["pfs"] is not None else None)


def format_tid(tid: int) -> str:
    """TIDs are shown everywhere as 0x + 16 hex digits (pasteable into @@ paths)."""
    return f"0x{tid:016x}"


def parse_tid(text: str) -> int:
    try:
        tid = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise FsError(errno.EINVAL, f"bad transaction id {text!r} (expected 0x<16 hex>)") from None
    if not 0 < tid <= MAX_U64:
        raise FsError(errno.EINVAL, f"transaction id {text!r} out of range")
    return tid


def _canonical(path: bytes) -> bool:
    """True for the one spelling of a live path the cache keys on (as FUSE sends them)."""
    return path.startswith(b"/") and b"@@" not in path and b"//" not in path \
        and b"/./" not in path and not path.endswith((b"/.", b"/")) or path == b"/"


class Namespace:
    """Every view reachable from one mount (or one command on an unmounted volume).

    ``lock`` is the coarse lock the mount holds around each operation."""

    def __init__(self, store: RecordStore, pfs: int = 0, asof: int | None = None, *,
                 readonly: bool = False, history_perms: str = "current"):
        if history_perms not in HISTORY_PERMS:
            raise FsError(errno.EINVAL, f"history_perms must be one of "
                          f"{', '.join(HISTORY_PERMS)}, not {history_perms!r}")
        self.store = store
        self.pfs = pfs
        self.asof = asof
        # history views check the live object's permissions too (fs/asof.py)
        self.live_perms = history_perms == "current"
        self.readonly = readonly or store.readonly or asof is not None
        self.lock = SteppedLock()  # long maintenance hands it over in steps (steps.py)
        self._live: dict[int, FileSystem] = {}
        # path -> obj_id of live paths in the mounted PFS (canonical, no @@ names), for the
        # control ops' path lookups; dropped when records change behind us (``forget``).
        self._paths: dict[bytes, int] = {}
        self._root: tuple[float, FileSystem] | None = None

    def live(self, pfs: int) -> FileSystem:
        """The one live view of ``pfs`` (it keeps the open counts)."""
        fs = self._live.get(pfs)
        if fs is None:
            fs = self._live[pfs] = FileSystem(self.store, pfs, readonly=self.readonly)
        return fs

    def view(self, pfs: int, asof: int | None) -> FileSystem:
        """``pfs`` as of ``asof`` (None = now).  A slave never shows past its sync point."""
        pd = self.store.get_pfs(pfs)
        if pd is None or pd.is_deleted:
            raise FsError(errno.ENOENT, f"PFS {pfs} does not exist")
        if pd.is_slave:
            end = pd.sync_end_tid
            return FileSystem(self.store, pfs, end if asof is None else min(asof, end),
                              readonly=True, live_perms=self.live_perms)
        if asof is None:
            return self.live(pfs)
        return FileSystem(self.store, pfs, asof, readonly=True, live_perms=self.live_perms)

    def root_view(self) -> FileSystem:
        """The view the mount shows at its root.  The PFS descriptor it depends on (slave or
        not, sync point) is re-read at most every ROOT_TTL seconds: path lookups are hot."""
        now = time.monotonic()
        cached = self._root
        if cached is not None and now - cached[0] < ROOT_TTL:
            return cached[1]
        fs = self.view(self.pfs, self.asof)
        self._root = (now, fs)
        return fs

    def root(self) -> tuple[FileSystem, Inode]:
        fs = self.root_view()
        return fs, fs.getattr(ROOT_OBJ)

    def step(self, fs: FileSystem, dir_ino: Inode, name: bytes) -> tuple[FileSystem, Inode]:
        """Look ``name`` up in ``dir_ino`` of view ``fs`` (history and PFS names included)."""
        magic = parse_magic(name)
        if magic is None:
            return fs, fs.lookup(dir_ino.obj_id, name)
        if magic.pfs is not None:
            if magic.name:
                raise FsError(errno.ENOENT, "a PFS name has no prefix")
            target = self.view(magic.pfs, magic.tid)
            return target, target.getattr(ROOT_OBJ)
        target = self.view(fs.pfs, magic.tid)
        if not magic.name:
            return target, target.getattr(dir_ino.obj_id)
        return target, target.lookup(dir_ino.obj_id, magic.name)

    def forget(self) -> None:
        """Drop cached path lookups, inodes and the root view (after records changed behind
        this namespace: control ops, mirroring, PFS changes)."""
        self._paths.clear()
        self._root = None
        for fs in self._live.values():
            fs.forget()

    def resolve(self, path: bytes) -> tuple[FileSystem, Inode]:
        """Walk an absolute path (relative to the mount root); symlinks are not followed."""
        fs = self.root_view()
        if fs.asof is None and path in self._paths:  # only canonical paths are cached
            hit = self._cached(fs, path)
            if hit is not None:
                return fs, hit
        cacheable = fs.asof is None and _canonical(path)
        start = b""
        if cacheable:
            head = path.rpartition(b"/")[0]
            parent = self._cached(fs, head) if head else None
            if parent is not None:  # walking a tree: the parent was just looked up
                ino, start = parent, head
        if not start:
            ino = fs.getattr(ROOT_OBJ)
        walked = start
        for name in path[len(start):].split(b"/"):
            if name in (b"", b"."):
                continue
            if not ino.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            fs, ino = self.step(fs, ino, name)
            walked += b"/" + name
            if cacheable and ino.is_dir:  # the next lookup below resumes from here
                self._remember(walked, ino.obj_id)
        if cacheable and fs.pfs == self.pfs and fs.asof is None:
            self._remember(path, ino.obj_id)
        return fs, ino

    def _remember(self, path: bytes, obj: int) -> None:
        if len(self._paths) > 100_000:
            self._paths.clear()
        self._paths[path] = obj

    def _cached(self, fs: FileSystem, path: bytes) -> Inode | None:
        obj = self._paths.get(path)
        if obj is None:
            return None
        try:
            return fs.getattr(obj)
        except FsError:
            self.forget()
            return None

    def resolve_parent(self, path: bytes) -> tuple[FileSystem, Inode, bytes]:
        """(view, parent directory, last name) for creating or removing ``path``."""
        head, _, name = path.rstrip(b"/").rpartition(b"/")
        fs, parent = self.resolve(head)
        if not parent.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        if parse_magic(name) is not None:
            raise FsError(errno.EROFS if name.find(b"@@") >= 0 else errno.EINVAL,
                          "history and PFS names are read-only")
        return fs, parent, name

    def readlink(self, fs: FileSystem, ino: Inode) -> bytes:
        """A symlink's target; PFS links report the PFS's current state."""
        target = fs.readlink(ino.obj_id)
        magic = parse_magic(target)
        if magic is None or magic.pfs is None or magic.name:
            return target
        pd = self.store.get_pfs(magic.pfs)
        if pd is None or not pd.is_slave:
            return b"@@-1:%05d" % magic.pfs
        return b"@@0x%016x:%05d" % (pd.sync_end_tid, magic.pfs)
