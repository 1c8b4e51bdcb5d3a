"""Mirror and PFS operations served by a mounting process over its control channel.

A command given a path inside a mount cannot open the volume (the mount holds its lock), so
it asks the mount: ``ControlClient.call(op, **args)`` for the PFS operations, and
``open_stream(op, **args)`` for mirror-read/mirror-write, which then speak the mirror
protocol on that socket.  The mount registers ``OPS``; each handler gets ``ctx`` (with
``ctx.store``), the request's arguments and the connection.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from hammerfs.errors import HammerError
from hammerfs.mirror import pfs_ops
from hammerfs.mirror.heal import serve_fetch
from hammerfs.mirror.local import channel
from hammerfs.mirror.reader import Source, SourceOptions, changes
from hammerfs.mirror.writer import Target
from hammerfs.store.records import MAX_PFS


class LockedStore:
    """The mount's store seen through its coarse fs lock: every call (and every step of a
    scan) holds the lock, so a long mirror session never blocks the filesystem for longer
    than one store call.  ``wait_commit`` waits without it."""

    def __init__(self, store, lock):
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        if not callable(attr) or name == "wait_commit":
            return attr
        if name in ("scan", "changed_since"):
            return lambda *a, **kw: self._locked_iter(attr, a, kw)

        def locked(*a, **kw):
            with self._lock:
                return attr(*a, **kw)
        return locked

    @property
    def last_committed_tid(self) -> int:
        return self._store.last_committed_tid

    @property
    def current_tid(self) -> int:
        return self._store.current_tid

    def _locked_iter(self, fn, a, kw):
        with self._lock:
            it = iter(fn(*a, **kw))
        while True:
            with self._lock:
                item = next(it, None)
            if item is None:
                return
            yield item


def _store(ctx) -> LockedStore:
    lock = getattr(ctx, "lock", None)
    return LockedStore(ctx.store, lock) if lock is not None else ctx.store


def _pfs(args: dict[str, Any]) -> int:
    pfs = args.get("pfs")
    if not isinstance(pfs, int) or isinstance(pfs, bool) or not 0 <= pfs <= MAX_PFS:
        raise HammerError("request names no PFS")
    return pfs


def _arg(args: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    """One argument of the request (the client is untrusted: check its JSON type)."""
    value = args.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HammerError(f"control request: {name} must be {kind.__name__}, not "
                          f"{type(value).__name__}")
    return value


def _stream(conn: socket.socket | None, op: str) -> socket.socket:
    if conn is None:
        raise HammerError(f"{op} is a streaming control op")
    return conn


def _slaves(ctx) -> dict[tuple[int, str], dict[str, Any]]:
    """Slaves this mount has fed in two-way mode: (pfs, slave unique-uuid) -> last ack."""
    extra = getattr(ctx, "extra", None)
    if extra is None:
        return {}
    return extra.setdefault("mirror_slaves", {})


def _received(ctx, pfs: int) -> dict[str, int]:
    """What this mount's slave PFS ``pfs`` has received (writer.Target keeps it up to date):
    for the metrics of a stream whose source is not local (ssh)."""
    extra = getattr(ctx, "extra", None)
    if extra is None:
        return {}
    return extra.setdefault("mirror_received", {}).setdefault(pfs, {})


def slave_info(store, pfs: int, slaves: dict, now: float | None = None) -> list[dict]:
    """Each slave of ``pfs`` fed through this mount: how far behind it is (0 when nothing
    of this PFS changed after its sync point), what it was sent, its last acknowledgement."""
    now = time.time() if now is None else now
    out = []
    for (spfs, unique), info in sorted(slaves.items()):
        if spfs != pfs:
            continue
        synced, last = info["synced"], store.last_committed_tid
        pending = next(changes(store, pfs, synced + 1, last), None) is not None
        behind = max(0, store.tid_time(last) - store.tid_time(synced)) / 1e9 if pending else 0
        out.append({"unique_uuid": unique, "synced": synced, "behind": behind,
                    "ack_age": now - info["at"], "bytes": info.get("bytes", 0),
                    "records": info.get("records", 0)})
    return out


def slave_lines(store, pfs: int, slaves: dict, now: float | None = None) -> list[str]:
    """pfs-status lines for a master: its slaves (``slave_info``)."""
    return [f"slave unique-uuid={s['unique_uuid']} synced-to=0x{s['synced']:016x} "
            f"behind={s['behind']:.1f}s last-ack={s['ack_age']:.0f}s ago"
            for s in slave_info(store, pfs, slaves, now)]


def mirror_metrics(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    """For `hammer up`'s exporter: the slaves of every PFS this mount has fed."""
    store, slaves = _store(ctx), _slaves(ctx)
    received = (getattr(ctx, "extra", None) or {}).get("mirror_received", {})
    # a slave's lag as the master's TIDs tell it (a TID is the nanosecond time of its
    # commit): the newest master TID announced, less the slave's sync point
    return {"slaves": [dict(s, pfs=pfs) for pfs in sorted({p for p, _ in slaves})
                       for s in slave_info(store, pfs, slaves)],
            "received": [{"pfs": pfs, "bytes": r["bytes"], "records": r["records"],
                          "behind": max(0, r["master_tid"] - r["synced"]) / 1e9}
                         for pfs, r in sorted(received.items()) if "bytes" in r]}


def pfs_status(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    store = _store(ctx)
    st = pfs_ops.status(store, _pfs(args))
    lines = pfs_ops.format_status(st)
    if not st.desc.is_slave:
        lines += slave_lines(store, st.pfs, _slaves(ctx))
    return {"pfs": st.pfs, "lines": lines, "is_slave": st.desc.is_slave,
            "shared_uuid": st.desc.shared_uuid, "sync_end_tid": st.sync_end}


def pfs_create(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    store = _store(ctx)
    pfs = _pfs(args) if args.get("pfs") is not None else pfs_ops.free_pfs_id(store)
    label = _arg(args, "label", str, "")
    if _arg(args, "slave", bool, False):
        desc = pfs_ops.create_slave(store, pfs, _arg(args, "shared_uuid", str, ""), label)
    else:
        desc = pfs_ops.create_master(store, pfs, label)
    return {"pfs": pfs, "shared_uuid": desc.shared_uuid}


def pfs_upgrade(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    pfs_ops.upgrade(_store(ctx), _pfs(args))
    return {"pfs": _pfs(args)}


def pfs_downgrade(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    desc = pfs_ops.downgrade(_store(ctx), _pfs(args))
    return {"pfs": _pfs(args), "sync_end_tid": desc.sync_end_tid}


def pfs_destroy(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    return {"pfs": _pfs(args), "removed": pfs_ops.destroy(_store(ctx), _pfs(args))}


def pfs_update(ctx, args: dict[str, Any], conn: socket.socket | None) -> dict[str, Any]:
    options = _arg(args, "options", dict, {})
    if not all(isinstance(v, str) for v in options.values()):
        raise HammerError("control request: PFS option values must be strings")
    pfs_ops.update(_store(ctx), _pfs(args), pfs_ops.parse_options(
        [f"{k}={v}" if k != "snapshots-clear" else k for k, v in options.items()]))
    return {"pfs": _pfs(args)}


def mirror_read(ctx, args: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
    conn = _stream(conn, "mirror-read")
    opts = SourceOptions(two_way=_arg(args, "two_way", bool, False),
                         begin_tid=_arg(args, "begin_tid", int, 1),
                         stream=_arg(args, "stream", bool, False),
                         chunk_bytes=_arg(args, "chunk_bytes", int, 64 << 20))
    if opts.chunk_bytes <= 0:
        raise HammerError("control request: chunk_bytes must be positive")
    slaves, pfs = _slaves(ctx), _pfs(args)
    base: dict[str, tuple[int, int]] = {}  # what earlier sessions sent each slave

    def ack(target, tid: int) -> None:
        key = (pfs, target.unique_uuid)
        old = slaves.get(key, {})
        b, r = base.setdefault(target.unique_uuid, (old.get("bytes", 0), old.get("records", 0)))
        slaves[key] = {"synced": tid, "at": time.time(), "bytes": b + source.tx.bytes,
                       "records": r + source.tx.records}

    with channel(conn) as (inp, out):
        source = Source(_store(ctx), pfs, inp if opts.two_way else None, out, opts,
                        on_ack=ack)
        synced = source.run()
    return {"synced": synced}


def mirror_write(ctx, args: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
    # Always answer on the socket: in one-way mode the caller only reads ERROR frames.
    with channel(_stream(conn, "mirror-write")) as (inp, out):
        res = Target(_store(ctx), _pfs(args), inp, out, _received(ctx, _pfs(args))).run()
    return {"batches": res.batches, "sync_end_tid": res.sync_end_tid}


def mirror_fetch(ctx, args: dict[str, Any], conn: socket.socket) -> dict[str, Any]:
    """Streaming: serve record versions of the PFS to a damaged replica (mirror/heal.py)."""
    with channel(_stream(conn, "mirror-fetch")) as (inp, out):
        served = serve_fetch(_store(ctx), _pfs(args), inp, out)
    return {"served": served}


OPS = {
    "mirror-fetch": mirror_fetch,
    "mirror-metrics": mirror_metrics,
    "pfs-status": pfs_status,
    "pfs-create": pfs_create,
    "pfs-upgrade": pfs_upgrade,
    "pfs-downgrade": pfs_downgrade,
    "pfs-destroy": pfs_destroy,
    "pfs-update": pfs_update,
    "mirror-read": mirror_read,
    "mirror-write": mirror_write,
}
