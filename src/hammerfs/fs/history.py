"""History on top of the filesystem: versions of an object, snapshots, undo (restore), and
prune-everything (destroy all history so its space comes back).

Every committed transaction keeps the state before it, so a version of a file is simply the
file as of a TID.  ``versions`` lists the TIDs at which an object changed (each change
rewrites its inode record); ``restore`` copies an older version's data, attributes and
xattrs back into the live tree as a new change (itself undoable).
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass

from hammerfs.errors import ReadOnly
from hammerfs.fs.filesystem import FileSystem, FsError, now_ns
from hammerfs.fs.layout import (
    REC_DATA,
    REC_INODE,
    REC_XATTR,
    Inode,
    Snapshot,
)
from hammerfs.fs.namespace import Namespace, format_tid
from hammerfs.store.api import RecordStore
from hammerfs.store.records import MAX_U64, REC_PFS, REC_SNAPSHOT, ROOT_OBJ, Record


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


def restore(ns: Namespace, relpath: str, tid: int) -> Inode:
    """Make the live ``relpath`` the exact version as of ``tid``: bytes, mode, owner, times,
    xattrs.  A deleted file is recreated under its name."""
    old_fs, old = resolve_version(ns, relpath, tid)
    path = split_path(relpath)
    ns.forget()  # the name may get a new object
    live_fs, parent, name = ns.resolve_parent(path)
    if live_fs.readonly:
        raise FsError(errno.EROFS, "cannot restore into a read-only view")
    try:
        cur = live_fs.lookup(parent.obj_id, name)
    except FsError as exc:
        if exc.errno != errno.ENOENT:
            raise
        cur = None
    if cur is not None and stat.S_IFMT(cur.mode) != stat.S_IFMT(old.mode):
        raise FsError(errno.EEXIST, "a different kind of object now has that name")
    if old.is_symlink:
        if cur is not None:
            live_fs.unlink(parent.obj_id, name)
        cur = live_fs.symlink(parent.obj_id, name, old_fs.readlink(old.obj_id), old.uid, old.gid)
    elif old.is_reg:
        if cur is None:
            cur = live_fs.create(parent.obj_id, name, old.mode, old.uid, old.gid)
        _copy_records(old_fs, old.obj_id, live_fs, cur.obj_id, REC_DATA)
    elif old.is_dir:
        raise FsError(errno.EISDIR, "undo restores files and symlinks, not directories")
    else:
        if cur is None:
            cur = live_fs.create(parent.obj_id, name, old.mode, old.uid, old.gid, old.rdev)
    _copy_records(old_fs, old.obj_id, live_fs, cur.obj_id, REC_XATTR)
    cur = live_fs.getattr(cur.obj_id)
    restored = cur.evolve(mode=old.mode, uid=old.uid, gid=old.gid, size=old.size,
                          rdev=old.rdev, atime=old.atime, mtime=old.mtime, ctime=now_ns())
    return live_fs.put_inode(restored)


def _copy_records(src: FileSystem, src_obj: int, dst: FileSystem, dst_obj: int,
                  rec_type: int) -> None:
    """Replace ``dst_obj``'s records of one type by ``src_obj``'s (holes stay holes)."""
    store = dst.store
    lo, hi = (dst.pfs, dst_obj, rec_type, 0), (dst.pfs, dst_obj, rec_type, MAX_U64)
    wanted = {rec.key: rec.data for rec in
              src.store.scan((src.pfs, src_obj, rec_type, 0), (src.pfs, src_obj, rec_type, MAX_U64),
                             src.asof)}
    for rec in store.scan(lo, hi):
        if rec.key not in wanted:
            store.delete(rec.reckey)
        elif rec.data == wanted[rec.key]:
            del wanted[rec.key]  # unchanged: keep it, no new version
    for key, data in wanted.items():
        store.put((dst.pfs, dst_obj, rec_type, key), data)


# -- snapshots -----------------------------------------------------------------------------------
def take_snapshot(fs: FileSystem, note: str = "") -> Snapshot:
    """Commit, then record the committed TID as a snapshot of the PFS (REC_SNAPSHOT)."""
    tid = fs.store.commit()
    snap = Snapshot(tid, time.time_ns(), note)
    fs.store.put((fs.pfs, ROOT_OBJ, REC_SNAPSHOT, tid), snap.encode())
    fs.store.commit()
    return snap


def list_snapshots(fs: FileSystem) -> list[Snapshot]:
    lo, hi = (fs.pfs, ROOT_OBJ, REC_SNAPSHOT, 0), (fs.pfs, ROOT_OBJ, REC_SNAPSHOT, MAX_U64)
    return [Snapshot.decode(rec.data) for rec in fs.store.scan(lo, hi, fs.asof)]


def remove_snapshot(fs: FileSystem, tid: int) -> bool:
    removed = fs.store.delete((fs.pfs, ROOT_OBJ, REC_SNAPSHOT, tid))
    if removed:
        fs.store.commit()
    return removed


# -- prune-everything ----------------------------------------------------------------------------
def prune_everything(store: RecordStore, pfs: int) -> int:
    """Destroy every version of ``pfs`` that is history (``delete_tid != 0``) and its
    snapshot records (their TIDs no longer name a readable state); keep the live state.
    The descriptor's ``sync_beg_tid`` moves to the current TID: nothing older is complete.
    Commits; returns how many versions were destroyed.  Space comes back with the commit."""
    pd = store.get_pfs(pfs)
    if pd is None or pd.is_deleted:
        raise FsError(errno.ENOENT, f"PFS {pfs} does not exist")
    if pd.is_slave:
        raise ReadOnly(f"PFS {pfs} is a slave (read-only): prune its master instead")
    store.commit()  # uncommitted changes become ordinary versions first
    lo, hi = (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)  # rec_type is u16
    # Collected before destroying: a B-tree scan must not run under its own removals.
    doomed = [(rec.reckey, rec.create_tid)
              for rec in store.scan(lo, hi, history=True, with_data=False) if _prunable(rec)]
    for reckey, create_tid in doomed:
        store.destroy(reckey, create_tid)
    store.commit()  # frees the space first: on a full volume the descriptor update needs it
    store.put_pfs(pfs, pd.evolve(sync_beg_tid=store.current_tid, sync_beg_ts=time.time_ns()))
    store.commit()
    return len(doomed)


def _prunable(rec: Record) -> bool:
    """History, and every snapshot record.  The PFS table (REC_PFS, on pfs 0) is the store's
    metadata about all PFSs, not this PFS's history."""
    if rec.rec_type == REC_PFS:
        return False
    return rec.delete_tid != 0 or (rec.obj_id == ROOT_OBJ and rec.rec_type == REC_SNAPSHOT)
