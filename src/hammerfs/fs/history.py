"""History on top of the filesystem: versions of an object, snapshots, undo (restore), and
prune-everything (destroy all history so its space comes back).

Every committed transaction keeps the state before it, so a version of a file is simply the
file as of a TID.  ``versions`` lists the TIDs at which an object changed (each change
rewrites its inode record); ``restore`` copies an older version's data, attributes and
xattrs back into the live tree as a new change (itself undoable).
"""

from __future__ import annotations

import bisect
import errno
import stat
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from hammerfs.errors import ReadOnly
from hammerfs.fs.filesystem import FileSystem, FsError, now_ns
from hammerfs.fs.layout import (
    HISTORY_KEY,
    REC_DATA,
    REC_INODE,
    REC_XATTR,
    Inode,
    Snapshot,
    encode_history_config,
)
from hammerfs.fs.namespace import Namespace, format_tid
from hammerfs.steps import NO_LOCK, Steps
from hammerfs.store.api import RecordStore
from hammerfs.store.records import (
    MAX_U64,
    REC_CONFIG,
    REC_PFS,
    REC_SNAPSHOT,
    ROOT_OBJ,
    Record,
)


@dataclass(frozen=True, slots=True)
class Version:
    tid: int
    ts: int  # wall-clock ns of the change
    size: int
    deleted_tid: int  # 0 while this version is the live one


def versions(fs: FileSystem, obj: int) -> list[Version]:
    """Each committed (or pending) version of ``obj``'s inode, oldest first."""
    key = (fs.pfs, obj, REC_INODE, 0)
    out = []
    for rec in fs.store.scan(key, key, history=True):
        if fs.asof is not None and rec.create_tid > fs.asof:
            continue
        ino = Inode.decode(obj, rec.data)
        out.append(Version(rec.create_tid, rec.create_ts, ino.size, rec.delete_tid))
    return out


def split_path(relpath: str) -> bytes:
    return ("/" + relpath.strip("/")).encode("utf-8", "surrogateescape")


def resolve_version(ns: Namespace, relpath: str, tid: int | None) -> tuple[FileSystem, Inode]:
    """``relpath`` as of ``tid``: the name looked up in its parent directory as of ``tid``
    (as ``PATH@@0x<tid>`` does), so deleted files can be reached too."""
    path = split_path(relpath)
    if tid is None:
        return ns.resolve(path)
    head, _, name = path.rpartition(b"/")
    if not name:
        fs, ino = ns.resolve(path)
        old = ns.view(fs.pfs, tid)
        return old, old.getattr(ino.obj_id)
    return ns.resolve(head + b"/" + name + b"@@" + format_tid(tid).encode())


def read_all(fs: FileSystem, ino: Inode, chunk: int = 1 << 20):
    """Yield the contents of a regular file in chunks (or a symlink's target)."""
    if ino.is_symlink:
        yield fs.readlink(ino.obj_id)
        return
    if not ino.is_reg:
        raise FsError(errno.EINVAL, "only regular files and symlinks have contents")
    for off in range(0, ino.size, chunk):
        yield fs.read(ino.obj_id, off, chunk)


@dataclass
class RestoreResult:
    inode: Inode  # the live object now at the restored path
    created: int = 0  # objects created (deleted ones brought back, replaced ones)
    removed: int = 0  # live entries removed (created after the TID, or of another kind)
    updated: int = 0  # existing objects whose contents or attributes were rewritten
    # paths whose entry appeared or went, or whose object was rewritten (kernel caches to drop)
    changed: list[bytes] = field(default_factory=list)


def restore(ns: Namespace, relpath: str, tid: int, *,
            lock: AbstractContextManager = NO_LOCK) -> RestoreResult:
    """Make the live ``relpath`` exactly what it was as of ``tid`` (``undo -r``).

    A file, symlink or device node gets its bytes (holes stay holes), mode, owner, atime,
    mtime and xattrs back; a deleted one is recreated under its name.  A directory is restored
    as a whole tree, by name: every entry it had at ``tid`` is restored the same way (deleted
    ones recreated, hard links within the tree linked again), and every entry it has now that
    it did not have then is removed (with everything below it).  Objects are not moved back:
    a file renamed away since ``tid`` is restored as a new object, the renamed one stays.
    ctime is now (the restore is itself a change, undoable like any other).  If ``relpath``
    now names a different kind of object it is refused (EEXIST): remove it first.

    ``lock`` (the mount's filesystem lock) is held in steps (hammerfs.steps): between two
    entries (or windows of a big file) the mount serves its users, and the periodic commit
    may make the restore so far durable.  Each step leaves a consistent filesystem; entries
    are looked up again after each step, so changes made meanwhile are taken as they are.  A
    restore that was interrupted (crash, error) is finished by running it again."""
    with Steps(lock) as steps:
        return _restore(ns, relpath, tid, steps)


def _restore(ns: Namespace, relpath: str, tid: int, steps: Steps) -> RestoreResult:
    old_fs, old = resolve_version(ns, relpath, tid)
    old = stored_inode(old_fs, old.obj_id)
    path = split_path(relpath)
    ns.forget()  # names may get new objects
    if path == b"/":
        live_fs, cur = ns.resolve(path)
        _check_restorable(live_fs)
        parent_obj, name = 0, b""
    else:
        live_fs, parent, name = ns.resolve_parent(path)
        _check_restorable(live_fs)
        parent_obj = parent.obj_id
        cur = _lookup_or_none(live_fs, parent_obj, name)
        if cur is not None and stat.S_IFMT(cur.mode) != stat.S_IFMT(old.mode):
            raise FsError(errno.EEXIST, "a different kind of object now has that name "
                          "(remove it first)")
    rest = _Restorer(old_fs, live_fs, steps)
    ino = rest.restore_entry(parent_obj, name, old, cur, path)
    rest.finish()
    ns.forget()
    rest.result.inode = live_fs.getattr(ino.obj_id)
    return rest.result


def stored_inode(fs: FileSystem, obj: int) -> Inode:
    """``obj``'s inode exactly as stored in ``fs``'s view (as-of views present times locked
    to ctime; restore needs the real ones)."""
    rec = fs.store.get((fs.pfs, obj, REC_INODE, 0), fs.asof)
    if rec is None:
        raise FsError(errno.ENOENT, f"no object {obj:#x}")
    return Inode.decode(obj, rec.data)


def _check_restorable(live_fs: FileSystem) -> None:
    if live_fs.readonly:
        raise FsError(errno.EROFS, "cannot restore into a read-only view")


def _lookup_or_none(fs: FileSystem, dir_obj: int, name: bytes) -> Inode | None:
    try:
        return fs.lookup(dir_obj, name)
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return None


class _Restorer:
    """One tree restore: walks the old tree breadth-first with an explicit queue (trees may
    be deeper than Python's recursion limit) and sets directory attributes last, because
    creating and removing entries moves a directory's mtime."""

    def __init__(self, old_fs: FileSystem, live_fs: FileSystem, steps: Steps):
        self.old, self.live = old_fs, live_fs
        self.tick = steps.tick  # between units of work: the lock may be handed over
        self.result = RestoreResult(inode=Inode(0, 0))
        self.mapped: dict[int, int] = {}  # old obj_id -> live obj_id (hard links, dirs)
        self.dirs: list[tuple[Inode, int, bytes]] = []  # (old dir, live dir obj, path)
        self.created: set[int] = set()  # live objects made by this restore

    def restore_entry(self, parent_obj: int, name: bytes, old: Inode, cur: Inode | None,
                      path: bytes) -> Inode:
        """Make ``name`` in live directory ``parent_obj`` (or the tree root when ``name`` is
        empty) the version ``old``; directories are queued and handled by ``finish``."""
        live = self.live
        if not old.is_dir and old.obj_id in self.mapped:  # another name of a restored file
            target = self.mapped[old.obj_id]
            if cur is not None and cur.obj_id == target:
                return cur
            if cur is not None:
                self._remove(parent_obj, name, cur, path)
            self.result.changed.append(path)
            return live.link(target, parent_obj, name)
        if cur is not None and not self._same_kind(old, cur):
            self._remove(parent_obj, name, cur, path)
            cur = None
        if cur is None:
            cur = self._create(parent_obj, name, old)
            self.created.add(cur.obj_id)
            self.result.created += 1
            self.result.changed.append(path)
        self.mapped[old.obj_id] = cur.obj_id
        if old.is_dir:
            self.dirs.append((old, cur.obj_id, path))
        elif not self._unchanged_since(old, cur):
            self._restore_object(old, cur, path)
        return cur

    def _same_kind(self, old: Inode, cur: Inode) -> bool:
        if stat.S_IFMT(old.mode) != stat.S_IFMT(cur.mode):
            return False
        if old.is_symlink:  # a symlink's target cannot change in place
            return self.old.readlink(old.obj_id) == self.live.readlink(cur.obj_id)
        if stat.S_ISCHR(old.mode) or stat.S_ISBLK(old.mode):
            return old.rdev == cur.rdev
        return True

    def _unchanged_since(self, old: Inode, cur: Inode) -> bool:
        """The same object whose inode record has not changed since the TID: every change
        to its data, attributes or xattrs rewrites the inode, so nothing is to be done."""
        if old.obj_id != cur.obj_id:
            return False
        key = (self.live.pfs, cur.obj_id, REC_INODE, 0)
        then, now = self.live.store.get(key, self.old.asof), self.live.store.get(key)
        return then is not None and now is not None and then.create_tid == now.create_tid

    def _create(self, parent_obj: int, name: bytes, old: Inode) -> Inode:
        live = self.live
        if old.is_dir:
            return live.mkdir(parent_obj, name, old.mode, old.uid, old.gid)
        if old.is_symlink:
            return live.symlink(parent_obj, name, self.old.readlink(old.obj_id), old.uid,
                                old.gid)
        return live.create(parent_obj, name, old.mode, old.uid, old.gid, old.rdev)

    def _restore_object(self, old: Inode, cur: Inode, path: bytes) -> None:
        """Contents (regular files), xattrs and attributes of ``old`` onto live ``cur``."""
        changed = False
        if old.is_reg:
            changed |= _copy_records(self.old, old.obj_id, self.live, cur.obj_id, REC_DATA,
                                     self.tick)
        changed |= _copy_records(self.old, old.obj_id, self.live, cur.obj_id, REC_XATTR,
                                 self.tick)
        cur = self.live.getattr(cur.obj_id)
        wanted = cur.evolve(mode=old.mode, uid=old.uid, gid=old.gid, size=old.size,
                            rdev=old.rdev, atime=old.atime, mtime=old.mtime)
        if changed or wanted != cur:
            self.live.put_inode(wanted.evolve(ctime=now_ns()))
            if cur.obj_id not in self.created:
                self.result.updated += 1
                self.result.changed.append(path)

    def _remove(self, parent_obj: int, name: bytes, cur: Inode, path: bytes) -> None:
        """Remove a live entry, a directory with everything below it (post-order)."""
        self.result.changed.append(path)
        self.result.removed += 1
        if not cur.is_dir:
            self._gone_already_ok(self.live.unlink, parent_obj, name)
            return
        stack: list[tuple[int, bytes, int, bool]] = [(parent_obj, name, cur.obj_id, False)]
        while stack:
            p, n, obj, emptied = stack.pop()
            if emptied:
                self._gone_already_ok(self.live.rmdir, p, n)
                self.tick()
                continue
            stack.append((p, n, obj, True))
            for entry in list(self.live.readdir(obj)):
                if entry.mode_type == stat.S_IFDIR:
                    stack.append((obj, entry.name, entry.obj_id, False))
                else:
                    self._gone_already_ok(self.live.unlink, obj, entry.name)
                    self.tick()

    @staticmethod
    def _gone_already_ok(remove: Callable[[int, bytes], object], dir_obj: int,
                         name: bytes) -> None:
        """Remove an entry; one removed by a user between two steps is fine."""
        try:
            remove(dir_obj, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def finish(self) -> None:
        """Restore the queued directories' entries (breadth-first), then their attributes."""
        done = 0
        while done < len(self.dirs):
            old_dir, live_obj, path = self.dirs[done]
            done += 1
            self._restore_entries(old_dir, live_obj, path)
        for old_dir, live_obj, path in reversed(self.dirs):
            self._restore_object(old_dir, self.live.getattr(live_obj), path)
            self.tick()

    def _restore_entries(self, old_dir: Inode, live_obj: int, path: bytes) -> None:
        then = {}
        for e in self.old.readdir(old_dir.obj_id):  # history: steps do not change it
            then[e.name] = e
            self.tick()
        made_since = []
        for e in self.live.readdir(live_obj):
            if e.name not in then:
                made_since.append(e.name)
            self.tick()
        prefix = path.rstrip(b"/") + b"/"
        # Each name is looked up again: the lock may have been handed over since the listing.
        for name in made_since:  # first free the names of entries made since
            cur = _lookup_or_none(self.live, live_obj, name)
            if cur is not None:
                self._remove(live_obj, name, cur, prefix + name)
            self.tick()
        for name, entry in then.items():
            cur = _lookup_or_none(self.live, live_obj, name)
            self.restore_entry(live_obj, name, stored_inode(self.old, entry.obj_id), cur,
                               prefix + name)
            self.tick()


COPY_WINDOW = 256  # records compared at a time: 16 MiB of file data at most


def _copy_records(src: FileSystem, src_obj: int, dst: FileSystem, dst_obj: int,
                  rec_type: int, tick: Callable[[], None] = lambda: None) -> bool:
    """Replace ``dst_obj``'s records of one type by ``src_obj``'s (holes stay holes).
    Unchanged records are left alone (no new version).  True if anything changed.

    Works through the key space in windows of COPY_WINDOW source records, so a huge file
    never sits in memory whole; each window is read completely before it is changed (a scan
    must not run under its own changes: source and destination may be the same object)."""
    changed = False
    key = 0
    while True:
        wanted, last = _window(src, src_obj, rec_type, key)
        hi = MAX_U64 if last is None else last
        current = {rec.key: rec.data for rec in dst.store.scan(
            (dst.pfs, dst_obj, rec_type, key), (dst.pfs, dst_obj, rec_type, hi))}
        for k in current.keys() - wanted.keys():
            dst.store.delete((dst.pfs, dst_obj, rec_type, k))
            changed = True
        for k, data in wanted.items():
            if current.get(k) != data:  # unchanged records keep their version
                dst.store.put((dst.pfs, dst_obj, rec_type, k), data)
                changed = True
        if last is None or last == MAX_U64:
            return changed
        key = last + 1
        tick()  # a window at a time: the file is partly restored, and consistent


def _window(src: FileSystem, obj: int, rec_type: int, key: int) -> tuple[dict[int, bytes], int | None]:
    """Up to COPY_WINDOW of ``obj``'s records from ``key`` on, as of ``src``'s TID, and the
    last key of a full window (None: this window reaches the end)."""
    out: dict[int, bytes] = {}
    scan = src.store.scan((src.pfs, obj, rec_type, key), (src.pfs, obj, rec_type, MAX_U64),
                          src.asof)
    try:
        for rec in scan:
            out[rec.key] = rec.data
            if len(out) == COPY_WINDOW:
                return out, rec.key
    finally:
        scan.close()
    return out, None


# -- snapshots -----------------------------------------------------------------------------------
def take_snapshot(fs: FileSystem, note: str = "", *,
                  lock: AbstractContextManager = NO_LOCK) -> Snapshot:
    """Commit, then record the committed TID as a snapshot of the PFS (REC_SNAPSHOT).
    ``lock`` (a mount's) is held only while each commit's state is captured, not across
    the flushes."""
    tid = fs.store.commit_outside(lock)
    snap = Snapshot(tid, time.time_ns(), note)
    with lock:
        fs.store.put((fs.pfs, ROOT_OBJ, REC_SNAPSHOT, tid), snap.encode())
    fs.store.commit_outside(lock)
    return snap


def list_snapshots(fs: FileSystem) -> list[Snapshot]:
    lo, hi = (fs.pfs, ROOT_OBJ, REC_SNAPSHOT, 0), (fs.pfs, ROOT_OBJ, REC_SNAPSHOT, MAX_U64)
    return [Snapshot.decode(rec.data) for rec in fs.store.scan(lo, hi, fs.asof)]


def remove_snapshot(fs: FileSystem, tid: int) -> bool:
    removed = fs.store.delete((fs.pfs, ROOT_OBJ, REC_SNAPSHOT, tid))
    if removed:
        fs.store.commit()
    return removed


# -- history granularity -----------------------------------------------------------------------
def set_history_interval(fs: FileSystem, seconds: int) -> None:
    """Keep one version per ``seconds`` of wall clock in the PFS of ``fs`` (0: every commit,
    the default).  Stored as REC_CONFIG key HISTORY_KEY (not mirrored: each volume decides
    its own); commits."""
    key = (fs.pfs, ROOT_OBJ, REC_CONFIG, HISTORY_KEY)
    if seconds:
        fs.store.put(key, encode_history_config(seconds))
    else:
        fs.store.delete(key)
    fs.store.commit()
    fs.forget()


# -- prune-everything ----------------------------------------------------------------------------
def prune_everything(store: RecordStore, pfs: int, *,
                     lock: AbstractContextManager = NO_LOCK, batch: int = 256) -> int:
    """Destroy every version of ``pfs`` that is history (``delete_tid != 0``) and its
    snapshot records (their TIDs no longer name a readable state); keep the live state.
    The descriptor's ``sync_beg_tid`` moves to the current TID: nothing older is complete.
    Commits; returns how many versions were destroyed.  Space comes back with the commit.

    ``lock`` (the mount's filesystem lock) is taken per bounded step (a commit, one batch
    of destroys), never for the whole run: the mount keeps serving meanwhile.  The scan
    between steps needs no lock (history does not change; new history is left for later)."""
    with lock:
        pd = _prunable_pfs(store, pfs)
    store.commit_outside(lock)  # uncommitted changes become ordinary versions first
    lo, hi = (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)  # rec_type is u16
    destroyed = 0
    while True:
        doomed, resume = _doomed_batch(store, lo, hi, _prunable, batch)
        with Steps(lock) as steps:
            for reckey, create_tid, _delete_tid in doomed:
                store.destroy(reckey, create_tid)
                steps.tick()
        destroyed += len(doomed)
        if resume is None:
            break
        lo = resume
    store.commit_outside(lock)  # frees the space first: a full volume needs it for the next
    with lock:
        pd = store.get_pfs(pfs)
        store.put_pfs(pfs, pd.evolve(sync_beg_tid=store.current_tid, sync_beg_ts=time.time_ns()))
    store.commit_outside(lock)
    store.thin_commit_log(lock=lock)  # old commit times go coarse, not away (store/commitlog.py)
    return destroyed


# -- prune (keep what the snapshots see) -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PruneResult:
    destroyed: int  # versions destroyed
    complete: bool  # False if the deadline stopped it (the next run goes on from scratch)


def prune(store: RecordStore, pfs: int, *, now_ns: int | None = None,
          deadline: float | None = None, batch: int = 4096,
          lock: AbstractContextManager = NO_LOCK) -> PruneResult:
    """HAMMER's snapshot-driven prune: destroy the history of ``pfs`` that no snapshot needs.

    The kept TIDs are the PFS's live snapshot records (REC_SNAPSHOT).  A version that ended
    (``delete_tid != 0``) is destroyed when no kept TID sees it (none with ``create_tid <= T
    < delete_tid``) and it ended at or before the newest snapshot: history after the newest
    snapshot stays fine-grained (until the next snapshot), and so does history that ended
    less than the PFS's ``prune_min`` seconds ago.  The live state and the view as of every
    kept snapshot are unchanged; other TIDs before the newest snapshot become partial.
    Without snapshots nothing is pruned (``prune_everything`` is for that).  Either way the
    store's commit log is thinned (``RecordStore.thin_commit_log``) as of ``now_ns``.

    Works in batches (destroy, commit: the space comes back as it goes) and stops after
    ``deadline`` (time.monotonic()); the rule is stateless, so the next run continues.  The
    descriptor's ``sync_beg_tid`` moves past the latest destroyed deletion: a slave synced
    to before it would miss that deletion, and the mirror refuses such an increment.
    ``lock`` is taken per step, as in ``prune_everything``."""
    now = time.time_ns() if now_ns is None else now_ns
    with lock:
        pd = _prunable_pfs(store, pfs)
    store.commit_outside(lock)
    store.thin_commit_log(now, lock=lock)  # the store's own history ages too (commitlog.py)
    with lock:
        keep = sorted(snap.tid for snap in _snapshots(store, pfs))
    if not keep:
        return PruneResult(0, True)
    fine_after_ts = now - pd.prune_min * 1_000_000_000 if pd.prune_min else None
    lo, hi = (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)
    destroyed, last_deleted, complete = 0, 0, True
    while True:
        doomed, resume = _doomed_batch(
            store, lo, hi, lambda rec: _unneeded(rec, keep, fine_after_ts), batch)
        with Steps(lock) as steps:
            for reckey, create_tid, delete_tid in doomed:
                store.destroy(reckey, create_tid)
                if reckey[2] != REC_CONFIG:  # never mirrored: no slave misses its deletion
                    last_deleted = max(last_deleted, delete_tid)
                steps.tick()
        store.commit_outside(lock)
        destroyed += len(doomed)
        if resume is None:
            break
        if deadline is not None and time.monotonic() >= deadline:
            complete = False
            break
        lo = resume
    if last_deleted:
        with lock:
            pd = store.get_pfs(pfs)
            if pd.sync_beg_tid <= last_deleted:
                store.put_pfs(pfs, pd.evolve(sync_beg_tid=last_deleted + 1, sync_beg_ts=now))
        store.commit_outside(lock)
    return PruneResult(destroyed, complete)


def _doomed_batch(store: RecordStore, lo, hi, doomed_if: Callable[[Record], bool],
                  batch: int):
    """Up to ``batch`` versions to destroy from ``lo`` on, and the key to resume at (None at
    the end).  Collected first: the versions are destroyed after the scan is closed."""
    doomed = []
    scan = store.scan(lo, hi, history=True, with_data=False)
    try:
        for rec in scan:
            if len(doomed) >= batch:
                return doomed, rec.reckey
            if doomed_if(rec):
                doomed.append((rec.reckey, rec.create_tid, rec.delete_tid))
    finally:
        scan.close()
    return doomed, None


def _unneeded(rec: Record, keep: list[int], fine_after_ts: int | None) -> bool:
    if rec.delete_tid == 0 or rec.rec_type == REC_PFS:
        return False
    if rec.delete_tid > keep[-1]:
        return False  # ended after the newest snapshot: fine-grained history stays
    if fine_after_ts is not None and rec.delete_ts >= fine_after_ts:
        return False  # within prune-min
    i = bisect.bisect_left(keep, rec.create_tid)  # the first kept TID >= create_tid
    return not (i < len(keep) and keep[i] < rec.delete_tid)


def _prunable_pfs(store: RecordStore, pfs: int):
    pd = store.get_pfs(pfs)
    if pd is None or pd.is_deleted:
        raise FsError(errno.ENOENT, f"PFS {pfs} does not exist")
    if pd.is_slave:
        raise ReadOnly(f"PFS {pfs} is a slave (read-only): prune its master instead")
    return pd


def _snapshots(store: RecordStore, pfs: int) -> list[Snapshot]:
    lo, hi = (pfs, ROOT_OBJ, REC_SNAPSHOT, 0), (pfs, ROOT_OBJ, REC_SNAPSHOT, MAX_U64)
    return [Snapshot.decode(rec.data) for rec in store.scan(lo, hi)]


def _prunable(rec: Record) -> bool:
    """History, and every snapshot record.  The PFS table (REC_PFS, on pfs 0) is the store's
    metadata about all PFSs, not this PFS's history."""
    if rec.rec_type == REC_PFS:
        return False
    return rec.delete_tid != 0 or (rec.obj_id == ROOT_OBJ and rec.rec_type == REC_SNAPSHOT)
