"""The filesystem's control ops (history, snapshots, undo, synctid, prune, prune-everything,
cleanup, config; volume-info, show and the LUKS header for `hammer info/show/luks` on a
mounted volume), run in the process that owns the volume: the mount process through the
control socket, or the command itself on an unmounted volume (``local_context``).  Paths are
``relpath``s below the mount root."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator

from hammerfs.control import chunks as framing
from hammerfs.control import scrubbing
from hammerfs.control.server import ControlContext, streamed, takes
from hammerfs.errors import ErrnoError, HammerError, ReadOnly
from hammerfs.fs import cleanup, history
from hammerfs.fs.filesystem import CacheStats
from hammerfs.fs.layout import NOHISTORY
from hammerfs.fs.namespace import Namespace
from hammerfs.store.format import EXT_SHARED, STORE_PFS, extent_off
from hammerfs.store.reblock import reblock
from hammerfs.store.records import MAX_U64


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
    if ctx.store.readonly:
        return {"tid": ctx.store.last_committed_tid}
    return {"tid": ctx.store.commit_outside(ctx.lock)}  # the flush without the lock


@takes(relpath="str", tid="tid?")
def op_history(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        fs, ino = history.resolve_version(ctx.ns, args.get("relpath", ""), args.get("tid"))
        vers = history.versions(fs, ino.obj_id)
        return {"obj_id": ino.obj_id, "pfs": fs.pfs, "mode": ino.mode,
                "nohistory": bool(ino.flags & NOHISTORY),
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
    framing.send_chunks(streamed(conn, "read_version"), read_version(ctx, args.get("relpath", ""), args.get("tid")))
    return {}


@takes(relpath="str", tid="tid", required=("relpath", "tid"))
def op_restore(ctx: ControlContext, args: dict, conn) -> dict:
    """undo -r: a file or a whole directory tree as of a TID (fs.history.restore)."""
    relpath = args["relpath"]
    # the lock is held in steps: the mount serves its users during a long restore
    done = history.restore(ctx.ns, relpath, int(args["tid"]), lock=ctx.lock)
    tid = ctx.store.commit_outside(ctx.lock)
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
    snap = history.take_snapshot(fs, args.get("note", ""), lock=ctx.lock)
    with ctx.lock:
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
    return _prune_pfs(ctx, args,
                      lambda store, pfs, lock: history.prune_everything(store, pfs, lock=lock))


@takes(relpath="str", force="bool")
def op_cleanup(ctx: ControlContext, args: dict, conn) -> dict:
    """hammer cleanup of the PFS that ``relpath`` is in (fs.cleanup)."""
    relpath = args.get("relpath", "")
    with ctx.lock:
        fs = _pfs_view(ctx, relpath, changes=True)
        _require_writable_volume(ctx)
    # the lock is held per directive, and per step of reblock (the mount serves in between)
    report = cleanup.cleanup(fs, force=bool(args.get("force")), lock=ctx.lock)
    with ctx.lock:
        ctx.ns.forget()  # pruned versions may be cached in views
        pd = ctx.store.get_pfs(fs.pfs)
        free = ctx.store.space().free_bytes
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


@takes(relpath="str", on="bool?")
def op_nohistory(ctx: ControlContext, args: dict, conn) -> dict:
    """Show or set (``on``) the nohistory flag of the object at ``relpath``."""
    relpath = args.get("relpath", "")
    with ctx.lock:
        fs, ino = ctx.ns.resolve(history.split_path(relpath))
        if args.get("on") is not None:
            if fs.is_history:
                raise ReadOnly(f"{relpath or '/'}: a history view is read-only")
            _require_writable(fs)
            ino = fs.set_nohistory(ino.obj_id, bool(args["on"]))
            fs.store.commit()
            ctx.ns.forget()  # other views hold the inode cached
        return {"obj_id": ino.obj_id, "nohistory": bool(ino.flags & NOHISTORY)}


@takes(relpath="str", seconds="seconds?")
def op_history_interval(ctx: ControlContext, args: dict, conn) -> dict:
    """Show or set (``seconds``) the history interval of the PFS ``relpath`` is in."""
    with ctx.lock:
        seconds = args.get("seconds")
        fs = _pfs_view(ctx, args.get("relpath", ""), changes=seconds is not None)
        if seconds is not None:
            _require_writable(fs)
            history.set_history_interval(fs, seconds)
            ctx.ns.forget()
        return {"pfs": fs.pfs, "seconds": fs.history_interval()}


@takes(relpath="str", fill="percent?", seconds="seconds?")
def op_reblock(ctx: ControlContext, args: dict, conn) -> dict:
    """`hammer reblock`: empty big-blocks below ``fill`` % (store/reblock.py), one step at a
    time under the mount's lock, for at most ``seconds``."""
    fill = args.get("fill") or 90
    with ctx.lock:
        _pfs_view(ctx, args.get("relpath", ""))
        _require_writable_volume(ctx)
        store = _volume(ctx)
    seconds = args.get("seconds")
    done = reblock(store, fill, lock=ctx.lock,
                   deadline=time.monotonic() + seconds if seconds else None)
    return {"bigblocks": done.bigblocks, "extents": done.extents, "nodes": done.nodes,
            "bytes_moved": done.bytes_moved, "complete": done.complete,
            "bigblocks_free": store.space().bigblocks_free}


@takes(relpath="str")
def op_prune(ctx: ControlContext, args: dict, conn) -> dict:
    """Snapshot-driven prune of the PFS that ``relpath`` is in (fs.history.prune)."""
    return _prune_pfs(ctx, args,
                      lambda store, pfs, lock: history.prune(store, pfs, lock=lock).destroyed)


def _prune_pfs(ctx: ControlContext, args: dict, prune) -> dict:
    """Run ``prune(store, pfs, lock) -> versions destroyed`` and report the space it freed.
    The prune takes the filesystem lock per bounded step: the mount keeps serving."""
    relpath = args.get("relpath", "")
    with ctx.lock:
        fs = _pfs_view(ctx, relpath, changes=True)
        _require_writable_volume(ctx)
        before = ctx.store.space().free_bytes
    destroyed = prune(ctx.store, fs.pfs, ctx.lock)
    with ctx.lock:
        after = ctx.store.space().free_bytes
        ctx.ns.forget()  # cached views may hold versions that no longer exist
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


@takes()
def op_await_unmount(ctx: ControlContext, args: dict, conn: socket.socket | None) -> dict:
    """Streaming (``hammer umount``): registers, then blocks until the mount has made its
    final commit and answers with its outcome (``FinalCommit``)."""
    final = ctx.extra.get("final_commit")
    if not isinstance(final, FinalCommit):
        raise HammerError("this mount reports no final commit")
    final.serve_waiter(streamed(conn, "await-unmount"))
    return {}


# -- the volume as a whole: info, show, the LUKS header (`hammer info/show/luks MNT`) ------------
def volume_info(store) -> dict:
    """What `hammer info` shows of a volume."""
    space = store.space()
    return {"label": store.label, "uuid": str(store.uuid), "total_bytes": space.total_bytes,
            "used_bytes": space.used_bytes, "free_bytes": space.free_bytes,
            "avail_bytes": space.avail_bytes, "format_version": store.format_version,
            "bigblock_size": space.bigblock_size, "block_size": space.block_size,
            "bigblocks_total": space.bigblocks_total, "bigblocks_free": space.bigblocks_free,
            "fill": store.bigblock_fill(), "pfs_count": len(store.list_pfs()),
            "seq": store.header.seq, "last_committed_tid": store.last_committed_tid,
            "current_tid": store.current_tid,
            "header_damage": None if store.header_damage is None else
            {"slot": store.header_damage.slot, "message": store.header_damage.message}}


def _volume(ctx: ControlContext):
    """The mounted on-disk store; an in-memory one (tests, the demo's model) has no header."""
    if not hasattr(ctx.store, "header"):
        raise ErrnoError(errno.EOPNOTSUPP, "this mount is not backed by an on-disk volume")
    return ctx.store


@takes()
def op_volume_info(ctx: ControlContext, args: dict, conn) -> dict:
    with ctx.lock:
        return volume_info(_volume(ctx))


SHOW_ERROR = b"\0error: "  # ends a show stream that hit damage (text never holds a NUL)


def show_lines(store, prefix: tuple[int, ...]) -> Iterator[str]:
    """`hammer show`: the B-tree nodes and records under ``prefix`` (PFS[, OBJ[, TYPE[,
    KEY]]]), verifying every node's and data block's checksum on the way."""
    hdr = store.header
    yield (f"HEADER slot {hdr.slot} seq {hdr.seq} root {hdr.root_off:#x} level "
           f"{hdr.root_level} last-commit {_tid(hdr.last_tid)} next-obj {hdr.next_obj:#x}")
    lo = (*prefix, *(0,) * (5 - len(prefix)))
    hi = (*prefix, *(MAX_U64 + 1,) * (5 - len(prefix))) if prefix else None
    for depth, node in store.tree.walk_nodes(lo=lo, hi=hi):
        indent = "  " * depth
        kind = f"INTERNAL level {node.level}" if node.level else "LEAF"
        yield f"{indent}NODE {node.off:#x} {kind} {len(node.keys)} elements"
        if node.level:
            continue
        for k, v in zip(node.keys, node.vals, strict=True):
            if k[:len(prefix)] != prefix:
                continue
            where = f"data@{extent_off(v[4]):#x}" if v[4] else "inline"
            if v[4] & EXT_SHARED:
                where += " shared"
            store.data_of(k, v)  # verifies the data checksum
            name = "store" if k[0] == STORE_PFS else f"{k[0]}"
            yield (f"{indent}  ELM {name}:{k[1]:#x}:{k[2]:#x}:{k[3]:#x} "
                   f"create {_tid(k[4])} delete {_tid(v[0])} len {v[3]} {where}")


def _tid(tid: int) -> str:
    return f"0x{tid:016x}"


@takes(prefix="key?")
def op_show(ctx: ControlContext, args: dict, conn: socket.socket | None) -> dict:
    """Streaming: the text of `hammer show`.  The mount pauses while it runs (the walk holds
    the lock: the tree must not change under it); damage ends the text with SHOW_ERROR."""
    conn = streamed(conn, "show")
    prefix = tuple(args.get("prefix") or ())
    out = bytearray()
    with ctx.lock:
        store = _volume(ctx)
        try:
            for line in show_lines(store, prefix):
                out += line.encode() + b"\n"
                if len(out) >= 1 << 16:
                    conn.sendall(out)
                    out.clear()
        except HammerError as exc:
            out += SHOW_ERROR + str(exc).encode(errors="replace") + b"\n"
    conn.sendall(out)
    return {}


def _luks_header_area(ctx: ControlContext) -> tuple[object | None, int]:
    """(the raw device, the size of its LUKS header area) under a mounted encrypted volume:
    the bytes before the payload (both header copies and the key slots).  (None, 0) for a
    plain volume, (device, 0) when the header is detached (the mount does not keep a
    detached header file open: the command reads that file itself)."""
    payload = getattr(ctx.store, "device", None)
    raw = getattr(payload, "container", None)  # a LuksDevice over the raw device
    if raw is None:
        return None, 0
    return raw, int(getattr(payload, "data_offset", 0))


@takes()
def op_luks_info(ctx: ControlContext, args: dict, conn) -> dict:
    raw, size = _luks_header_area(ctx)
    return {"luks": raw is not None and size > 0, "detached": raw is not None and not size,
            "header_size": size}


@takes()
def op_luks_header(ctx: ControlContext, args: dict, conn: socket.socket | None) -> dict:
    """Streaming: the raw LUKS header area (header copies and key slots; never the payload
    or a key), for `hammer luks dump`/`test-passphrase` on a mounted volume."""
    conn = streamed(conn, "luks-header")
    raw, size = _luks_header_area(ctx)
    for offset in range(0, size, 1 << 20):
        conn.sendall(raw.read(offset, min(1 << 20, size - offset)))
    return {}


@takes(rate="int?", heal_from="str?", port="int?", restart="bool")
def op_scrub(ctx: ControlContext, args: dict, conn) -> dict:
    """`hammer scrub MOUNTPOINT`: start (or continue) the online scrub, at most ``rate``
    bytes/s, healing from ``heal_from`` (or the mount's --heal-from replica)."""
    return scrubbing.start(ctx, args.get("rate"), args.get("heal_from"),
                           bool(args.get("restart")), args.get("port"))


@takes()
def op_scrub_status(ctx: ControlContext, args: dict, conn) -> dict:
    return scrubbing.status(ctx)


@takes()
def op_scrub_stop(ctx: ControlContext, args: dict, conn) -> dict:
    return scrubbing.stop(ctx)


@takes()
def op_metrics(ctx: ControlContext, args: dict, conn) -> dict:
    """For `hammer up`'s exporter: space, commits, reads, damage and scrub of the volume."""
    store = ctx.store
    with ctx.lock:
        space = store.space()
    out = {"total_bytes": space.total_bytes, "used_bytes": space.used_bytes,
           "free_bytes": space.free_bytes, "volume": ctx.volume, "mountpoint": ctx.mountpoint}
    stats = getattr(store, "stats", None)
    if stats is not None:
        out.update(commits=stats.commits, commit_seconds=stats.commit_seconds,
                   last_commit_seconds=stats.last_commit_seconds,
                   node_reads=store.tree.node_reads, node_cache=len(store.tree.cache),
                   node_lookups=store.tree.node_lookups, node_misses=store.tree.node_misses)
    out.update(inode_lookups=CacheStats.lookups, inode_misses=CacheStats.misses, pfs=ctx.pfs)
    damage = getattr(store, "damage", None)
    if damage is not None:
        out.update(damage_found=damage.found, damage_repaired=damage.repaired,
                   damage_unrepairable=damage.unrepairable)
    if hasattr(store, "private_record"):
        out["scrub"] = scrubbing.summary(ctx)
    if ctx.fuse_requests is not None:
        out["fuse"] = ctx.fuse_requests()
    return out


OPS = {
    "metrics": op_metrics,
    "scrub": op_scrub,
    "scrub-status": op_scrub_status,
    "scrub-stop": op_scrub_stop,
    "volume-info": op_volume_info,
    "show": op_show,
    "luks-info": op_luks_info,
    "luks-header": op_luks_header,
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
    "nohistory": op_nohistory,
    "history-interval": op_history_interval,
    "reblock": op_reblock,
}
