"""The filesystem's control ops (history, snapshots, undo, synctid, prune, prune-everything,
cleanup, config), run in the process that owns the volume: the mount process through the
control socket, or the command itself on an unmounted volume (``local_context``).  Paths are
``relpath``s below the mount root."""

from __future__ import annotations

import errno
import socket
import threading

from hammerfs.control import chunks as framing
from hammerfs.control.server import ControlContext, takes
from hammerfs.errors import HammerError, ReadOnly
from hammerfs.fs import cleanup, history
from hammerfs.fs.namespace import Namespace


def local_context(store, pfs: int, volume: str, *, readonly: bool = False) -> ControlContext:
    """A context for a command that opened an unmounted volume itself."""
    ns = Namespace(store, pfs, readonly=readonly)
    return ControlContext(store=store, ns=ns, fs=ns.root()[0], pfs=pfs, mountpoint="",
                          volume=volume, lock=ns.lock)


@takes()
def op_info(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        return {"mountpoint": ctx.mountpoint, "pfs": ctx.pfs, "volume": ctx.volume,
                "current_tid": ctx.store.current_tid,
                "last_committed_tid": ctx.store.last_committed_tid}


@takes()
def op_synctid(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        return {"tid": ctx.store.commit() if not ctx.store.readonly
                else ctx.store.last_committed_tid}


@takes(relpath="str", tid="tid?")
def op_history(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs, ino = history.resolve_version(ctx.ns, args.get("relpath", ""), args.get("tid"))
        vers = history.versions(fs, ino.obj_id)
        return {"obj_id": ino.obj_id, "pfs": fs.pfs, "mode": ino.mode,
                "versions": [[v.tid, v.ts, v.size, v.deleted_tid] for v in vers]}


@takes(relpath="str", tid="tid?")
def op_stat_version(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs, ino = history.resolve_version(ctx.ns, args.get("relpath", ""), args.get("tid"))
        ino = history.stored_inode(fs, ino.obj_id)  # the real times, not the as-of view's
        return {"obj_id": ino.obj_id, "mode": ino.mode, "uid": ino.uid, "gid": ino.gid,
                "size": ino.size, "mtime": ino.mtime, "atime": ino.atime}


def read_version(ctx: ControlContext, relpath: str, tid: int | None):
    """Yield the bytes of ``relpath`` as of ``tid`` (taking the lock per chunk)."""
    with ctx.lock:
        fs, ino = history.resolve_version(ctx.ns, relpath, tid)
        chunks = history.read_all(fs, ino)
    while True:
        with ctx.lock:
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


@takes(relpath="str", tid="tid?")
def op_read_version(ctx: ControlContext, args: dict, conn: socket.socket | None) -> dict:
    """Streaming: sends the bytes of the version framed (``control.chunks``: a failure is
    told apart from data), then closes."""
    framing.send_chunks(conn, read_version(ctx, args.get("relpath", ""), args.get("tid")))
    return {}


MAX_INVALIDATIONS = 1000  # past this many changed names, dropping the top one is cheaper


@takes(relpath="str", tid="tid", required=("relpath", "tid"))
def op_restore(ctx: ControlContext, args: dict, conn) -> dict:
    """undo -r: a file or a whole directory tree as of a TID (fs.history.restore)."""
    relpath = args["relpath"]
    with ctx.lock:
        done = history.restore(ctx.ns, relpath, int(args["tid"]))
        tid = ctx.store.commit()
    changed = done.changed if len(done.changed) <= MAX_INVALIDATIONS else []
    for path in [*changed, history.split_path(relpath)]:
        ctx.invalidate(path.decode("utf-8", "surrogateescape"))
    return {"obj_id": done.inode.obj_id, "tid": tid, "created": done.created,
            "removed": done.removed, "updated": done.updated}


def _pfs_view(ctx: ControlContext, relpath: str, *, changes: bool = False):
    """The view of the PFS ``relpath`` is in.  ``changes``: the op changes that PFS
    (snapshot, snaprm, prune, prune-everything, cleanup, config): a path that names a history
    view (``@@0x<tid>``, a snapshot softlink, an ``-o asof`` mount) is refused, since it
    names a read-only past state and the op would change the live PFS and its history."""
    fs, _ino = ctx.ns.resolve(history.split_path(relpath))
    if changes and fs.is_history:
        raise ReadOnly(f"{relpath or '/'}: a history view as of 0x{fs.asof:016x} is "
                       "read-only; name a live path of the PFS instead")
    return ctx.ns.live(fs.pfs) if fs.asof is None or ctx.ns.readonly else fs


def _require_writable(fs) -> None:
    if fs.readonly:
        raise ReadOnly(f"PFS {fs.pfs} is read-only here (slave, as-of or read-only mount)")


def _require_writable_volume(ctx: ControlContext) -> None:
    """Maintenance (prune, cleanup) also works on a slave PFS, but not on a read-only volume."""
    if ctx.ns.readonly:
        raise ReadOnly("the volume is mounted or opened read-only")


@takes(relpath="str", note="str?")
def op_snapshot(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs = _pfs_view(ctx, args.get("relpath", ""), changes=True)
        _require_writable(fs)
        snap = history.take_snapshot(fs, args.get("note", ""))
        pd = ctx.store.get_pfs(fs.pfs)
        return {"tid": snap.tid, "ts": snap.ts, "note": snap.note, "pfs": fs.pfs,
                "snapshots_dir": pd.snapshots if pd else ""}


@takes(relpath="str")
def op_snapls(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs = _pfs_view(ctx, args.get("relpath", ""))
        return {"pfs": fs.pfs, "snapshots": [[s.tid, s.ts, s.note]
                                             for s in history.list_snapshots(fs)]}


@takes(relpath="str", tid="tid", required=("tid",))
def op_snaprm(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs = _pfs_view(ctx, args.get("relpath", ""), changes=True)
        _require_writable(fs)
        return {"removed": history.remove_snapshot(fs, int(args["tid"]))}


@takes(relpath="str")
def op_prune_everything(ctx: ControlContext, args: dict, conn) -> dict:
    """Destroy all history of the PFS that ``relpath`` is in; report the space it freed."""
    return _prune_pfs(ctx, args, history.prune_everything)


@takes(relpath="str", force="bool")
def op_cleanup(ctx: ControlContext, args: dict, conn) -> dict:
    """hammer cleanup of the PFS that ``relpath`` is in (fs.cleanup)."""
    relpath = args.get("relpath", "")
    with ctx.lock:
        fs = _pfs_view(ctx, relpath, changes=True)
        _require_writable_volume(ctx)
        report = cleanup.cleanup(fs, force=bool(args.get("force")))
        ctx.ns.forget()  # pruned versions may be cached in views
        pd = ctx.store.get_pfs(fs.pfs)
        free = ctx.store.space().free_bytes
    ctx.invalidate(relpath)
    snap = report.snapshot
    return {"pfs": report.pfs, "config_created": report.config_created,
            "lines": report.lines, "expired": report.expired, "destroyed": report.destroyed,
            "freed_bytes": report.freed_bytes, "free_bytes": free,
            "snapshot": [snap.tid, snap.ts, snap.note] if snap else None,
            "snapshots_dir": pd.snapshots if pd else ""}


@takes(relpath="str", text="str?")
def op_config(ctx: ControlContext, args: dict, conn) -> dict:
    """Show (no ``text``) or set the cleanup config of the PFS that ``relpath`` is in."""
    with ctx.lock:
        text = args.get("text")
        fs = _pfs_view(ctx, args.get("relpath", ""), changes=text is not None)
        if text is not None:
            _require_writable(fs)
            cleanup.save_config(ctx.store, fs.pfs, text)
            ctx.store.commit()
        stored = cleanup.load_config(ctx.store, fs.pfs)
        state = cleanup.load_state(ctx.store, fs.pfs)
        return {"pfs": fs.pfs, "text": stored.text if stored else cleanup.DEFAULT_CONFIG,
                "stored": stored is not None, "last_run": state}


@takes(relpath="str")
def op_prune(ctx: ControlContext, args: dict, conn) -> dict:
    """Snapshot-driven prune of the PFS that ``relpath`` is in (fs.history.prune)."""
    return _prune_pfs(ctx, args, lambda store, pfs: history.prune(store, pfs).destroyed)


def _prune_pfs(ctx: ControlContext, args: dict, prune) -> dict:
    """Run ``prune(store, pfs) -> versions destroyed`` and report the space it freed."""
    relpath = args.get("relpath", "")
    with ctx.lock:
        fs = _pfs_view(ctx, relpath, changes=True)
        _require_writable_volume(ctx)
        before = ctx.store.space().free_bytes
        destroyed = prune(ctx.store, fs.pfs)
        after = ctx.store.space().free_bytes
        ctx.ns.forget()  # cached views may hold versions that no longer exist
    ctx.invalidate(relpath)
    return {"pfs": fs.pfs, "destroyed": destroyed, "freed_bytes": max(0, after - before),
            "free_bytes": after}


class FinalCommit:
    """The outcome of a mount's last commit (after the kernel unmounted it), for the
    ``hammer umount`` waiting on the control channel: it must not exit 0 when that commit
    failed.  The mount process reports it, then lingers until its waiters have their answer
    (at most ``linger`` seconds), and only then stops the control server and exits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done = False
        self._error: str | None = None
        self._waiters = 0

    def report(self, error: BaseException | None, linger: float = 5.0) -> None:
        with self._cond:
            self._done = True
            self._error = None if error is None else (
                f"the final commit failed: {error}; changes since the last commit are lost")
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._waiters == 0, timeout=linger)

    def serve_waiter(self, conn: socket.socket) -> None:
        """Tell the waiter it is registered (one data frame), then answer with the end
        marker (success) or an error line, sent here, before the process may exit."""
        with self._cond:
            self._waiters += 1
        try:
            framing.send_frame(conn, b"registered")
            with self._cond:
                self._cond.wait_for(lambda: self._done)
                error = self._error
            if error is None:
                framing.send_end(conn)
            else:
                framing.send_error(conn, error, errno.EIO)
        finally:
            with self._cond:
                self._waiters -= 1
                self._cond.notify_all()


def op_await_unmount(ctx: ControlContext, args: dict, conn: socket.socket | None) -> dict:
    """Streaming (``hammer umount``): registers, then blocks until the mount has made its
    final commit and answers with its outcome (``FinalCommit``)."""
    final = ctx.extra.get("final_commit")
    if not isinstance(final, FinalCommit):
        raise HammerError("this mount reports no final commit")
    final.serve_waiter(conn)
    return {}


OPS = {
    "info": op_info,
    "await-unmount": op_await_unmount,
    "synctid": op_synctid,
    "history": op_history,
    "stat_version": op_stat_version,
    "read_version": op_read_version,
    "restore": op_restore,
    "snapshot": op_snapshot,
    "snapls": op_snapls,
    "snaprm": op_snaprm,
    "prune-everything": op_prune_everything,
    "prune": op_prune,
    "cleanup": op_cleanup,
    "config": op_config,
}
