"""Kernel inode numbers of a mount and the kernel's references to them (no FUSE binding here).

The kernel addresses a low-level FUSE filesystem by inode number.  hammerfs objects already
have stable ids, so the number of an object in the *current* view of a PFS (the live tree of a
master, a slave at its sync point, the mount's own ``-o asof`` state) is computed, not
allocated: ``pfs << 48 | obj_id``, the same on every mount of the volume (NFS handles hold it
and stay valid across a remount).  The mount's root is inode 1 (FUSE's root); the number it
would have had is given to what would have been 1 (PFS 0's root), so the mapping stays a
bijection.  The *generation* is taken from the object's birth time, so a handle of a removed
object never reaches a later object that got the same id (mirroring copies the birth time,
undo restores it: the same object keeps its generation).

Objects seen through other views (``name@@0x<tid>`` history, a past slave state, PFS ids
beyond 15 bits) get *synthetic* numbers (bit 63 set): ``1 << 63 | view << 48 | obj_id``,
where ``view`` (1..32767) names the view's (PFS, as-of TID) in a store-private record of the
volume (``ViewIds``), so an NFS handle of a history file opens the same version after a
remount.  Their generation mixes a checksum of the view into the birth time, so a view id
handed to another view later (after 32767 others) never aliases an old handle.  Where no id
can be kept (a read-only volume meeting a new view, object ids beyond 48 bits) the number is
allocated for the mount (view 0), valid while the kernel holds it.

``lookup`` counts follow the FUSE protocol: every entry handed to the kernel (lookup, create,
mkdir, mknod, symlink, link, readdirplus) adds one; ``forget`` takes them back.  What the
kernel forgot is given back here: synthetic numbers, their views, and the views' cached
inodes.
"""

from __future__ import annotations

import errno
import time
import zlib
from array import array
from collections.abc import Callable, Iterable

from hammerfs.errors import HammerError
from hammerfs.fs.filesystem import FileSystem, FsError
from hammerfs.fs.namespace import ROOT_TTL, Namespace
from hammerfs.store.api import RecordStore
from hammerfs.store.format import HISTORY_VIEW, HISTORY_VIEW_NEXT, HISTORY_VIEW_OBJ
from hammerfs.store.records import ROOT_OBJ

ROOT_INODE = 1  # FUSE's root
OBJ_BITS = 48
OBJ_MASK = (1 << OBJ_BITS) - 1
DIRECT_PFS_LIMIT = 1 << 15  # PFS ids below this get computed numbers (bit 63 stays clear)
SYNTHETIC = 1 << 63
GENERATION_MASK = 0xFFFFFFFF  # the kernel keeps 32 bits of it in an export handle
VIEW_SHIFT = OBJ_BITS
VIEW_IDS = (1 << 15) - 1  # history view ids 1..32767 (bits 48-62 of a synthetic number)

ViewKey = tuple[int, int | None]  # (pfs, asof)


def direct_ino(pfs: int, obj: int, root_pfs: int) -> int | None:
    """The computed inode number of ``obj`` in the current view of ``pfs`` (None when it
    does not fit: then it gets a synthetic one)."""
    if pfs >= DIRECT_PFS_LIMIT or not 0 < obj <= OBJ_MASK:
        return None
    ino = pfs << OBJ_BITS | obj
    root = root_pfs << OBJ_BITS | ROOT_OBJ
    if ino == root:
        return ROOT_INODE
    if ino == ROOT_INODE:  # PFS 0's root, seen from a mount of another PFS
        return root
    return ino


def split_direct(ino: int, root_pfs: int) -> tuple[int, int]:
    """(pfs, obj) of a computed inode number (the inverse of ``direct_ino``)."""
    root = root_pfs << OBJ_BITS | ROOT_OBJ
    if ino == ROOT_INODE:
        return root_pfs, ROOT_OBJ
    if ino == root:
        return 0, ROOT_OBJ
    return ino >> OBJ_BITS, ino & OBJ_MASK


def generation(btime: int, view: ViewKey | None = None) -> int:
    """The generation of an object born at ``btime``, seen in ``view`` (None: a current
    view, whose numbers are computed)."""
    if view is not None:
        btime ^= zlib.crc32(HISTORY_VIEW.pack(view[0], view[1] or 0))
    return btime & GENERATION_MASK


class ViewIds:
    """Ids of history views ((pfs, asof) -> 1..VIEW_IDS), kept in the volume's store-private
    records so that an inode number means the same view on every mount.  Ids are handed out
    in turn; after the last one the oldest not held by this mount's kernel is taken again
    (the generation tells its old handles apart).  Read at first use."""

    def __init__(self, store: RecordStore):
        self.store = store
        self._of: dict[ViewKey, int] | None = None
        self._key: dict[int, ViewKey] = {}
        self._used = 0
        self._next = 1

    def _load(self) -> dict[ViewKey, int]:
        if self._of is not None:
            return self._of
        self._of = {}
        read = getattr(self.store, "private_record", None)  # MemoryStore keeps none
        raw = read(HISTORY_VIEW_OBJ, 0) if read is not None else None
        if raw is None or len(raw) != HISTORY_VIEW_NEXT.size:
            return self._of
        self._used, self._next = HISTORY_VIEW_NEXT.unpack(raw)
        for vid in range(1, min(self._used, VIEW_IDS) + 1):
            rec = read(HISTORY_VIEW_OBJ, vid)
            if rec is not None and len(rec) == HISTORY_VIEW.size:
                pfs, asof = HISTORY_VIEW.unpack(rec)
                key = (pfs, asof or None)
                self._of[key], self._key[vid] = vid, key
        return self._of

    def key_of(self, vid: int) -> ViewKey | None:
        self._load()
        return self._key.get(vid)

    def id_of(self, key: ViewKey, busy: Callable[[ViewKey], bool]) -> int | None:
        """The id of view ``key``, handed out now if it has none (None: it cannot be kept,
        the volume is read-only)."""
        vid = self._load().get(key)
        if vid is not None:
            return vid
        if self.store.readonly or not hasattr(self.store, "set_private_record"):
            return None
        for _ in range(VIEW_IDS):
            vid, self._next = self._next, self._next % VIEW_IDS + 1
            old = self._key.get(vid)
            if old is None or not busy(old):
                break
        else:
            return None  # every id is held by the kernel right now
        try:
            self.store.set_private_record(HISTORY_VIEW_OBJ, HISTORY_VIEW.pack(key[0], key[1] or 0),
                                          key=vid)
            self._used = max(self._used, vid)
            self.store.set_private_record(HISTORY_VIEW_OBJ,
                                          HISTORY_VIEW_NEXT.pack(self._used, self._next))
        except HammerError:  # full or read-only after all: a number for this mount only
            return None
        if old is not None:
            del self._of[old]
        self._of[key], self._key[vid] = vid, key
        return vid


class LookupCounts:
    """The kernel's lookup count of each inode number it holds, in runs of 128 neighbouring
    numbers (an array of counts each, freed when the kernel forgot all of them).  Object
    ids are handed out in sequence, so a walk of a tree holds runs of neighbours: 300,000
    held inodes cost ~3 MB instead of a dict's ~25 MB, and the memory goes back as the
    kernel forgets them (a dict never shrinks)."""

    SHIFT = 7
    MASK = (1 << SHIFT) - 1
    USED = 1 << SHIFT  # the last slot of a run: how many of its numbers are held

    def __init__(self) -> None:
        self._runs: dict[int, array] = {}
        self._parents: dict[int, array] = {}  # runs of the directory a name was seen in
        self._held = 0

    def __contains__(self, ino: int) -> bool:
        run = self._runs.get(ino >> self.SHIFT)
        return run is not None and run[ino & self.MASK] != 0

    def __len__(self) -> int:
        return self._held

    def get(self, ino: int) -> int:
        run = self._runs.get(ino >> self.SHIFT)
        return 0 if run is None else run[ino & self.MASK]

    def add(self, ino: int, n: int = 1) -> None:
        run = self._runs.get(ino >> self.SHIFT)
        if run is None:
            run = self._runs[ino >> self.SHIFT] = array("Q", bytes(8 * (self.USED + 1)))
        i = ino & self.MASK
        if run[i] == 0:
            run[self.USED] += 1
            self._held += 1
        run[i] += n

    def sub(self, ino: int, n: int) -> int:
        """Take ``n`` references back; returns how many are left (0: forgotten)."""
        key = ino >> self.SHIFT
        run = self._runs.get(key)
        if run is None:
            return 0
        i = ino & self.MASK
        if run[i] == 0:
            return 0
        if run[i] > n:
            run[i] -= n
            return run[i]
        run[i] = 0
        parents = self._parents.get(key)
        if parents is not None:
            parents[i] = 0
        self._held -= 1
        run[self.USED] -= 1
        if run[self.USED] == 0:
            del self._runs[key]
            self._parents.pop(key, None)
            if not self._held:
                self._runs = {}  # a dict keeps its peak size: this one goes back
                self._parents = {}
        return 0

    def set_parent(self, ino: int, parent: int) -> None:
        """Remember a directory the kernel holds a name of ``ino`` in (8 bytes per inode:
        how the mount finds a name to drop when a file changes behind the kernel)."""
        key = ino >> self.SHIFT
        if key not in self._runs:
            return
        parents = self._parents.get(key)
        if parents is None:
            parents = self._parents[key] = array("Q", bytes(8 * self.USED))
        parents[ino & self.MASK] = parent

    def parent(self, ino: int) -> int:
        """The directory remembered for ``ino`` (0: none)."""
        parents = self._parents.get(ino >> self.SHIFT)
        return 0 if parents is None else parents[ino & self.MASK]


class InodeTable:
    """The mount's inode numbers and the kernel's lookup counts.  Callers hold the
    namespace lock."""

    def __init__(self, ns: Namespace, on_forget: Callable[[FileSystem, int], None] | None = None):
        self.ns = ns
        self.lookups = LookupCounts()  # inode number -> the kernel's lookup count
        self._syn: dict[int, tuple[ViewKey, int]] = {}
        self._syn_of: dict[tuple[ViewKey, int], int] = {}
        self._views: dict[ViewKey, FileSystem] = {}  # held by synthetic numbers
        self._view_refs: dict[ViewKey, int] = {}
        self._next_syn = SYNTHETIC | 2  # view 0: numbers of this mount only
        self.view_ids = ViewIds(ns.store)
        self._current: dict[int, tuple[float, FileSystem]] = {}  # other PFSs' current views
        # PFS -> the state (asof) of the first current view whose computed numbers the kernel
        # got: those numbers outlive any cached view, so invalidation must know the PFS even
        # when no view of it is cached right now
        self._direct_since: dict[int, int | None] = {}
        # names under which the kernel looked up synthetic inodes (``f@@0x...``): invalidated
        # when history changes behind the kernel (prune, cleanup)
        self.magic_names: dict[int, set[tuple[int, bytes]]] = {}
        self._on_forget = on_forget

    # -- views ----------------------------------------------------------------------------------
    def current(self, pfs: int) -> FileSystem:
        """The view of ``pfs`` that computed numbers address."""
        if pfs == self.ns.pfs:
            return self.ns.root_view()
        now = time.monotonic()
        cached = self._current.get(pfs)
        if cached is not None and now - cached[0] < ROOT_TTL:
            return cached[1]
        fs = self.ns.view(pfs, None)
        self._current[pfs] = (now, fs)
        return fs

    def refresh(self) -> None:
        """Views are re-read (records changed behind the mount: a slave moved on)."""
        self._current.clear()

    def pfs_known(self) -> set[int]:
        """PFSs whose objects the kernel may hold (for invalidation)."""
        known = {self.ns.pfs, *self._current, *self._direct_since}
        known.update(key[0] for key in self._views)
        return known

    def direct_since(self, pfs: int) -> int | None:
        """The state of ``pfs`` the kernel's computed numbers of it were first handed out at
        (None: a live master view, or none handed out)."""
        return self._direct_since.get(pfs)

    def is_current(self, fs: FileSystem) -> bool:
        try:
            return fs.asof == self.current(fs.pfs).asof
        except FsError:  # the PFS is gone
            return False

    # -- numbers --------------------------------------------------------------------------------
    def ino_of(self, fs: FileSystem, obj: int) -> int:
        """The inode number of ``obj`` in view ``fs`` (allocating a synthetic one)."""
        if self.is_current(fs):
            ino = direct_ino(fs.pfs, obj, self.ns.pfs)
            if ino is not None:
                self._direct_since.setdefault(fs.pfs, fs.asof)
                return ino
        key = (fs.pfs, fs.asof)
        ino = self._syn_of.get((key, obj))
        if ino is None:
            vid = self.view_ids.id_of(key, self._view_refs.__contains__) \
                if 0 < obj <= OBJ_MASK else None
            if vid is not None:
                ino = SYNTHETIC | vid << VIEW_SHIFT | obj
            else:
                ino = self._next_syn
                self._next_syn += 1
            self._syn[ino] = (key, obj)
            self._syn_of[(key, obj)] = ino
            self._views.setdefault(key, fs)
            self._view_refs[key] = self._view_refs.get(key, 0) + 1
        return ino

    def peek(self, fs: FileSystem, obj: int) -> int | None:
        """Like ``ino_of`` but never allocates."""
        if self.is_current(fs):
            ino = direct_ino(fs.pfs, obj, self.ns.pfs)
            if ino is not None:
                return ino
        return self._syn_of.get(((fs.pfs, fs.asof), obj))

    def resolve(self, ino: int) -> tuple[FileSystem, int]:
        """(view, obj) of an inode number the kernel sent."""
        if ino & SYNTHETIC:
            found = self._syn.get(ino)
            if found is not None:
                key, obj = found
                return self._views[key], obj
            # a handle from an earlier mount (NFS): its view, if the volume still names it
            key = self.view_ids.key_of(ino >> VIEW_SHIFT & VIEW_IDS)
            if key is None:
                raise FsError(errno.ESTALE, f"inode {ino:#x} is not known")
            try:
                fs = self._views.get(key) or self.ns.view(*key)
            except FsError:  # the PFS is gone
                raise FsError(errno.ESTALE, f"inode {ino:#x}: its PFS is gone") from None
            return fs, ino & OBJ_MASK
        pfs, obj = split_direct(ino, self.ns.pfs)
        return self.current(pfs), obj

    def synthetic_of(self, pfs: int, obj: int) -> list[int]:
        """Synthetic numbers the kernel holds for ``obj`` of ``pfs`` in other views."""
        return [ino for (key, o), ino in self._syn_of.items() if o == obj and key[0] == pfs] \
            if self._syn_of else []

    def synthetic(self) -> list[int]:
        return list(self._syn)

    # -- the kernel's references ----------------------------------------------------------------
    def looked_up(self, ino: int) -> None:
        self.lookups.add(ino)

    def unused(self, ino: int) -> None:
        """An allocated number was not handed to the kernel after all."""
        if ino not in self.lookups:
            self._release(ino)

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        for ino, n in items:
            if self.lookups.sub(ino, n) == 0:
                self._release(ino)

    def _release(self, ino: int) -> None:
        if ino & SYNTHETIC:
            found = self._syn.pop(ino, None)
            self.magic_names.pop(ino, None)
            if found is None:
                return
            key, obj = found
            del self._syn_of[(key, obj)]
            self._view_refs[key] -= 1
            if self._view_refs[key] == 0:
                del self._view_refs[key]
                self._views.pop(key, None)
            return
        if self._on_forget is not None:
            pfs, obj = split_direct(ino, self.ns.pfs)
            cached = self._current.get(pfs)
            fs = self.ns.root_view() if pfs == self.ns.pfs else cached[1] if cached else None
            if fs is not None:
                self._on_forget(fs, obj)
