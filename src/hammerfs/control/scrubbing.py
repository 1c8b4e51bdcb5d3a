"""Online scrub in the process that owns a volume: `hammer scrub MOUNTPOINT` starts a
``ScrubJob`` (a thread running ``store.scrub.Scrubber``) and follows it with
``scrub-status``; ``scrub-stop`` stops it (its progress stays in the volume, so the next
`hammer scrub` continues).  Damage is reported with the path of the file it belongs to.

A replica to heal from (``heal_from``) is opened by ``store.healer_factory``, which the
command that opened the volume sets (cli: the one resolver of replica paths, the mirror
layer's healer): this layer imports neither."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import threading
import time

from hammerfs.control.server import ControlContext
from hammerfs.errors import HammerError
from hammerfs.fs.paths import paths_of
from hammerfs.store.format import BLOCK, STORE_PFS
from hammerfs.store.scrub import DEFAULT_RATE, Damage, Scrubber, load_damage, load_state

log = logging.getLogger("hammerfs.scrub")


IOPRIO_SET = 251  # the ioprio_set system call on x86_64
IOPRIO_IDLE = 3 << 13  # the idle I/O class: served when no other I/O waits


def background_priority() -> None:
    """Put this thread (the scrub) in the idle I/O class, as `btrfs scrub start` does by
    default: on a disk, the mount's reads and writes go first.  Best effort (another
    architecture, or a kernel without it: the rate limit still applies)."""
    if platform.machine() != "x86_64":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).syscall(IOPRIO_SET, 1, threading.get_native_id(),
                                                   IOPRIO_IDLE)


class ScrubJob:
    """One scrub running in a thread of the mount process."""

    def __init__(self, store, scrubber: Scrubber, healer=None):
        self.store = store
        self.scrubber = scrubber
        self.healer = healer  # one opened for this scrub (closed at its end)
        self.error: str | None = None
        self.started = time.monotonic()
        self.first_bytes = scrubber.report.bytes_verified
        self.thread = threading.Thread(target=self._run, name="hammerfs-scrub", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        background_priority()
        try:
            report = self.scrubber.run()
            if report.finished_ns:
                log.info("scrub finished: %d nodes, %d records, %d bytes verified; %d damaged, "
                         "%d repaired, %d unrepairable", report.nodes, report.records,
                         report.bytes_verified, len(report.damaged_offsets), report.repaired,
                         report.unrepairable)
        except Exception as exc:  # reported by scrub-status
            if getattr(self.store, "closed", False):
                return  # unmounted under it: its cursor was committed, the next one goes on
            self.error = str(exc) if isinstance(exc, HammerError) else repr(exc)
            log.exception("scrub failed")
        finally:
            if self.healer is not None:
                self.healer.close()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self.scrubber.stop()
        self.thread.join(timeout)


def _job(ctx: ControlContext) -> ScrubJob | None:
    job = ctx.extra.get("scrub")
    return job if isinstance(job, ScrubJob) else None


def _check_store(ctx: ControlContext) -> None:
    if not hasattr(ctx.store, "private_record"):
        raise HammerError("scrub needs an on-disk volume")


def start(ctx: ControlContext, rate: int | None, heal_from: str | None, restart: bool,
          port: int | None = None) -> dict:
    """Start (or continue) a scrub unless one runs; the status either way."""
    _check_store(ctx)
    job = _job(ctx)
    if job is None or not job.running:
        healer = None
        if heal_from:
            factory = getattr(ctx.store, "healer_factory", None)
            if factory is None:
                raise HammerError("this mount cannot open a replica (--from)")
            healer = factory(ctx.store, heal_from, port)
        scrubber = Scrubber(ctx.store, rate=DEFAULT_RATE if rate is None else rate,
                            healer=healer or getattr(ctx.store, "healer", None),
                            restart=restart)
        ctx.extra["scrub"] = ScrubJob(ctx.store, scrubber, healer)
    return status(ctx)


def stop(ctx: ControlContext) -> dict:
    job = _job(ctx)
    if job is not None and job.running:
        job.stop()
    return status(ctx)


def status(ctx: ControlContext) -> dict:
    """Where the scrub is: ``state`` running, stopped (to be continued), finished, failed or
    none; counts, progress, rate and ETA; the damage found, with paths."""
    _check_store(ctx)
    job = _job(ctx)
    if job is None:
        return _stored_status(ctx)
    sc = job.scrubber
    r = sc.report
    elapsed = max(1e-3, time.monotonic() - job.started)
    rate = (r.bytes_verified - job.first_bytes) / elapsed
    left = sc.total * (1 - sc.fraction())
    state = "running" if job.running else "failed" if job.error else \
        "finished" if r.finished_ns else "stopped"
    return {"state": state, "fraction": sc.fraction(), "bytes": r.bytes_verified,
            "total": sc.total, "rate": rate, "eta": left / rate if rate > 0 else None,
            "limit": sc.rate, "nodes": r.nodes, "records": r.records, "extents": r.extents,
            "found": len(r.damaged_offsets), "repaired": r.repaired,
            "unrepairable": r.unrepairable, "errors": r.errors[-50:],
            "damage": describe(ctx.store, ctx.pfs, ctx.mountpoint, r.damage), "resumed": r.resumed,
            "resumed_at": sc.resumed_at,
            "started_ns": r.started_ns, "finished_ns": r.finished_ns, "error": job.error,
            "healing": sc.healer is not None}


def _stored_status(ctx: ControlContext) -> dict:
    """No scrub ran in this process: what the volume remembers."""
    state = load_state(ctx.store)
    out = {"state": "none", "damage": describe(ctx.store, ctx.pfs, ctx.mountpoint,
                                          load_damage(ctx.store)), "error": None}
    if state.get("cursor") is not None:
        out["state"] = "stopped"
        out["started_ns"] = state.get("started", 0)
        out.update(zip(("nodes", "records", "extents"), state["counts"][:3], strict=True))
        out["bytes"] = state["counts"][3] + state["counts"][0] * BLOCK  # as bytes_verified
        out["total"] = max(1, ctx.store.space().used_bytes)
        out["fraction"] = min(0.999, out["bytes"] / out["total"])
    last = state.get("last")
    if last:
        n = last["counts"]
        out["last"] = {"started_ns": last["started"], "finished_ns": last["finished"],
                       "bytes": last["bytes"], "nodes": n[0], "records": n[1],
                       "repaired": n[4], "unrepairable": n[5], "found": n[6]}
        if out["state"] == "none":
            out["state"] = "finished"
            out.update(out["last"])
    return out


def describe(store, pfs: int, mountpoint: str, damage: list[Damage]) -> list[dict]:
    """Each damage entry with the file it hit: PFS ``pfs`` as a path under ``mountpoint``
    (when mounted), another PFS as ``PFS #n:/path``."""
    objs: dict[int, set[int]] = {}
    for d in damage:
        if d.key[0] != STORE_PFS:
            objs.setdefault(d.key[0], set()).add(d.key[1])
    names: dict[tuple[int, int], str] = {}
    for in_pfs, ids in objs.items():
        try:
            for obj, path in paths_of(store, in_pfs, ids).items():
                names[(in_pfs, obj)] = path
        except HammerError:  # a damaged directory on the way: the ids are still given
            continue
    out = []
    for d in damage:
        in_pfs, obj = d.key[0], d.key[1]
        path = names.get((in_pfs, obj))
        if in_pfs == STORE_PFS:
            where = "volume metadata"
        elif path is None:
            where = f"PFS #{in_pfs} object {obj:#x} (not linked in the current tree)"
        elif in_pfs == pfs and mountpoint:
            where = mountpoint.rstrip("/") + path
        else:
            where = f"PFS #{in_pfs}:{path}"
        if d.kind == "node":
            where = f"records from {where}" + (
                f" to PFS #{d.end[0]} object {d.end[1]:#x}" if d.end else " on")
        out.append({"kind": d.kind, "offset": d.offset, "pfs": in_pfs, "obj": obj,
                    "create_tid": d.key[4], "path": where, "repaired": d.repaired,
                    "message": d.message})
    return out


def summary(ctx: ControlContext) -> dict:
    """The last finished scrub of the volume and whether one runs (metrics)."""
    last = load_state(ctx.store).get("last") or {}
    n = last.get("counts") or [0] * 7
    job = _job(ctx)
    return {"running": bool(job and job.running), "last_finished_ns": last.get("finished", 0),
            "found": n[6], "repaired": n[4], "unrepairable": n[5]}
