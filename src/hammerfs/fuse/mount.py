"""The mount process: owns the open store, serves FUSE and the control channel, commits.

Changes are committed about every second while the volume is dirty (mirror-stream promises
delivery within 2 s), on every fsync, and when the filesystem is unmounted cleanly.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable

from hammerfs.control import ops as fs_ops
from hammerfs.control.client import registered_mounts
from hammerfs.control.server import ControlContext, ControlServer
from hammerfs.errors import HammerError
from hammerfs.fs.filesystem import FsError, init_pfs_root
from hammerfs.fs.namespace import Namespace

log = logging.getLogger("hammerfs.mount")
COMMIT_INTERVAL = 1.0
FUSE_DEVICE = "/dev/fuse"


class MountFailed(HammerError):
    """FUSE could not mount (or serve) the volume; the message says why when we can tell."""


def control_ops() -> dict:
    """The fs ops plus the mirroring engineer's, when that module exists."""
    ops = dict(fs_ops.OPS)
    try:
        mirror = importlib.import_module("hammerfs.mirror.control_ops")
    except ModuleNotFoundError as exc:
        if exc.name not in ("hammerfs.mirror.control_ops", "hammerfs.mirror"):
            raise
    else:
        ops.update(getattr(mirror, "OPS", {}))
    return ops


class Committer(threading.Thread):
    """Commits the open transaction about once a second."""

    def __init__(self, ns: Namespace, interval: float = COMMIT_INTERVAL):
        super().__init__(name="hammerfs-commit", daemon=True)
        self.ns = ns
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                with self.ns.lock:
                    self.ns.store.commit()
            except Exception:  # keep committing: ENOSPC may clear after deletes
                log.exception("periodic commit failed")


def prepare(store, pfs: int, asof: int | None, readonly: bool) -> Namespace:
    """The namespace of a mount; creates a master PFS's root dir and reaps orphans."""
    ns = Namespace(store, pfs, asof, readonly=readonly)
    pd = store.get_pfs(pfs)
    if pd is None or pd.is_deleted:
        raise HammerError(f"PFS {pfs} does not exist on this volume")
    if not ns.readonly and not pd.is_slave:
        init_pfs_root(store, pfs)
        ns.live(pfs).reap_orphans()
        store.commit()
    try:
        ns.root()
    except FsError:
        raise HammerError(f"PFS {pfs} has no root directory yet (a slave before its first "
                          "mirror-write)" if pd.is_slave else
                          f"PFS {pfs} has no root directory as of the requested TID") from None
    return ns


def serve(store, *, volume: str, pfs: int, mountpoint: str, asof: int | None = None,
          readonly: bool = False, on_ready: Callable[[], None] | None = None,
          debug: bool = False, nfs: bool = False) -> None:
    """Mount and serve until unmounted; then commit and close the store.  ``nfs`` makes
    the mount exportable by an NFS server (see ``fuse.adapter.run``)."""
    from hammerfs.fuse.adapter import HammerOperations, run

    mountpoint = os.path.realpath(mountpoint)
    ns = prepare(store, pfs, asof, readonly)
    ctx = ControlContext(store=store, ns=ns, fs=ns.root()[0], pfs=pfs, mountpoint=mountpoint,
                         volume=volume, lock=ns.lock)
    ops = HammerOperations(ns, on_ready=lambda: ready())
    ctx.invalidator = ops.invalidate
    server = ControlServer(ctx, control_ops(), info={"asof": asof, "readonly": ns.readonly})
    committer = Committer(ns)
    ready_once = threading.Event()

    def ready() -> None:
        if not ready_once.is_set():
            ready_once.set()
            server.start()
            if on_ready:
                on_ready()

    try:
        if not ns.readonly:
            committer.start()
        try:
            run(ops, mountpoint, fsname=volume,
                readonly=ns.readonly, debug=debug, nfs=nfs)
        except HammerError:
            raise
        except Exception as exc:  # the FUSE binding's own errors (e.g. RuntimeError(4))
            if ready_once.is_set():
                raise MountFailed(f"serving {mountpoint} failed: {exc!r}") from exc
            raise MountFailed(f"FUSE could not mount {volume} on {mountpoint}: "
                              f"{fuse_diagnosis()}") from None
    finally:
        committer.stopping.set()
        server.stop()
        with ns.lock:
            store.close()
        if ready_once.is_set():
            log.info("unmounted %s", mountpoint)


def fuse_diagnosis(device: str = FUSE_DEVICE) -> str:
    """Why a FUSE mount failed, as far as we can tell from here."""
    import shutil
    import stat

    try:
        st = os.stat(device)
    except FileNotFoundError:
        return (f"{device} does not exist: load the fuse kernel module (modprobe fuse) or, "
                "in a container, pass the device in (--device /dev/fuse)")
    except OSError as exc:
        return f"cannot look at {device}: {exc.strerror}"
    if not os.access(device, os.R_OK | os.W_OK):
        return (f"no access to {device} (mode {stat.filemode(st.st_mode)}, owner uid "
                f"{st.st_uid}) for uid {os.geteuid()}: run as root, or have the "
                f"administrator allow FUSE (chmod 0666 {device}, the default of most "
                "distributions)")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (package fuse3): users need it to mount"
    return "see the FUSE messages above (or in the mount log)"


def unmount(mountpoint: str, timeout: float = 120.0) -> None:
    """Unmount and wait until the owner has committed and released the volume."""
    real = os.path.realpath(mountpoint)
    owner = next((m for m in registered_mounts() if m["mountpoint"] == real), None)
    if owner is None and not os.path.ismount(real):
        raise HammerError(f"{mountpoint} is not a mounted hammerfs")
    proc = subprocess.run(["fusermount3", "-u", real], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise HammerError(f"cannot unmount {mountpoint}: {msg.removeprefix('fusermount3: ')}")
    if owner is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(owner["pid"]), os.WNOHANG)
        time.sleep(0.05)
    raise HammerError(f"the mount process of {mountpoint} did not exit in {timeout:.0f}s")
