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
from collections.abc import Callable, Generator
from dataclasses import dataclass

from hammerfs.control import ops as fs_ops
from hammerfs.control.client import kernel_mount, pid_alive, registered_mounts
from hammerfs.control.runtime import ensure_runtime_dir, read_json, remove_files
from hammerfs.control.server import FSTYPE, ControlContext, ControlServer, runtime_files
from hammerfs.errors import HammerError, UnmountCommitFailed
from hammerfs.fs.asof import HISTORY_PERMS
from hammerfs.fs.filesystem import FsError, init_pfs_root
from hammerfs.fs.namespace import Namespace, parse_tid

log = logging.getLogger("hammerfs.mount")
COMMIT_INTERVAL = 1.0
FUSE_DEVICE = "/dev/fuse"


CACHE_ENV = "HAMMERFS_CACHE_MB"
DEFAULT_CACHE_MB = 64
# What one cached entry costs (measured with tracemalloc on a volume of 4-KiB files: a
# decoded 4-KiB B-tree leaf ~12 KB, a decoded inode with its dict slot ~390 bytes).
INODE_BYTES = 400
NODE_BYTES = 12 << 10
NODE_SHARE = 1 / 2  # of the budget for decoded B-tree nodes, the rest for inodes


def cache_budget_mb() -> int:
    """The mount's cache budget in MiB: ``HAMMERFS_CACHE_MB`` (default 64)."""
    text = os.environ.get(CACHE_ENV, "")
    if not text:
        return DEFAULT_CACHE_MB
    try:
        mb = int(text)
    except ValueError:
        raise HammerError(f"{CACHE_ENV}={text!r}: expected a number of MiB") from None
    if not 4 <= mb <= 1 << 20:
        raise HammerError(f"{CACHE_ENV}={text!r}: must be between 4 and 1048576 (MiB)")
    return mb


def apply_cache_budget() -> None:
    """Size the caches of this process from the budget: decoded B-tree nodes (the store)
    and decoded inodes (each view); what the kernel forgets is given back at once."""
    from hammerfs.fs import filesystem
    from hammerfs.store import btree
    budget = cache_budget_mb() << 20
    btree.CACHE_NODES = max(256, int(budget * NODE_SHARE) // NODE_BYTES)
    filesystem.INODE_CACHE = max(1024, int(budget * (1 - NODE_SHARE)) // INODE_BYTES)


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

    def __init__(self, ns: Namespace, interval: float = COMMIT_INTERVAL,
                 flush: Callable[[], None] | None = None):
        super().__init__(name="hammerfs-commit", daemon=True)
        self.ns = ns
        self.interval = interval
        self.flush = flush  # the kernel's dirty pages to the filesystem (writeback cache)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if self.flush is not None:
                    self.flush()
                # the lock only while the commit's writes are built: the mount serves
                # on while the device flushes (Store.commit_outside)
                self.ns.store.commit_outside(self.ns.lock)
            except Exception:  # keep committing: ENOSPC may clear after deletes
                log.exception("periodic commit failed")


@dataclass(frozen=True, slots=True)
class MountOptions:
    readonly: bool = False
    asof: int | None = None
    debug: bool = False
    nfs: bool = False
    history_perms: str = "current"  # fs/asof.py
    nonempty: bool = False  # mount over a directory that has entries (`hammer mount` checks)
    writeback: bool = False  # the kernel's writeback cache (fuse/adapter.py)


MOUNT_OPTIONS_HELP = ("ro, rw, asof=0x<tid>, nfs, history_perms=current|asof, nonempty, debug, "
                      "writeback")


def parse_mount_options(text: str) -> MountOptions:
    """``hammer mount -o`` options (comma-separated): the one parser, also used by the
    service config.  Raises HammerError naming the bad option."""
    opts: dict = {}
    for item in text.split(","):
        item = item.strip()
        key, eq, value = item.partition("=")
        if not item or item == "rw":
            continue
        if item in ("ro", "debug", "nfs", "nonempty", "writeback"):
            opts["readonly" if item == "ro" else item] = True
        elif key == "asof" and eq:
            try:
                opts["asof"] = parse_tid(value)
            except FsError as exc:
                raise HammerError(f"mount option {item!r}: {exc}") from None
            opts["readonly"] = True
        elif key == "history_perms" and eq and value in HISTORY_PERMS:
            opts["history_perms"] = value
        else:
            raise HammerError(f"unknown mount option {item!r} (known: {MOUNT_OPTIONS_HELP})")
    return MountOptions(**opts)


def prepare(store, pfs: int, asof: int | None, readonly: bool,
            history_perms: str = "current") -> Namespace:
    """The namespace of a mount; creates a master PFS's root dir and reaps orphans."""
    ns = Namespace(store, pfs, asof, readonly=readonly, history_perms=history_perms)
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
          debug: bool = False, nfs: bool = False, history_perms: str = "current",
          writeback: bool = False) -> None:
    """Mount and serve until unmounted; then commit and close the store.  ``nfs`` makes
    the mount exportable by an NFS server (its file handles hold the kernel inode numbers,
    which ``fuse.inodes`` computes from object ids: they stay valid across remounts);
    ``history_perms``
    see fs/asof.py."""
    from hammerfs.fuse.adapter import HammerOperations, run

    mountpoint = os.path.realpath(mountpoint)
    ensure_runtime_dir()  # refuse a squatted one now, not in the middle of FUSE init
    apply_cache_budget()
    ns = prepare(store, pfs, asof, readonly, history_perms)
    ctx = ControlContext(store=store, ns=ns, fs=ns.root()[0], pfs=pfs, mountpoint=mountpoint,
                         volume=volume, lock=ns.lock)
    ops = HammerOperations(ns, on_ready=lambda: ready(), nfs=nfs, mountpoint=mountpoint,
                           writeback=writeback)
    ctx.changes = ops
    ctx.fuse_requests = ops.request_counts
    server = ControlServer(ctx, control_ops(), info={"asof": asof, "readonly": ns.readonly})
    committer = Committer(ns, flush=ops.flush_kernel)
    ready_once = threading.Event()

    def ready() -> None:
        if not ready_once.is_set():
            ready_once.set()
            server.start()
            if on_ready:
                on_ready()

    final = ctx.extra["final_commit"] = fs_ops.FinalCommit()
    try:
        if not ns.readonly:
            committer.start()
        try:
            run(ops, mountpoint, fsname=volume, readonly=ns.readonly, debug=debug)
        except HammerError:
            raise
        except Exception as exc:  # the FUSE binding's own errors (e.g. RuntimeError(4))
            if ready_once.is_set():
                raise MountFailed(f"serving {mountpoint} failed: {exc!r}") from exc
            raise MountFailed(f"FUSE could not mount {volume} on {mountpoint}: "
                              f"{fuse_diagnosis()}") from None
    finally:
        committer.stopping.set()
        error = _final_commit(ns)
        final.report(error)  # `hammer umount` waits for this on the control channel
        server.stop()
        if error is not None:
            log.error("unmounted %s: %s", mountpoint, error)
            raise error
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


def _final_commit(ns: Namespace) -> BaseException | None:
    """Commit and close the store; the failure, if any.  A store whose periodic commit
    failed half-way refuses the commit (its pending changes are lost), and says so."""
    with ns.lock:
        try:
            try:
                if not ns.store.readonly:
                    ns.store.commit()
            finally:
                ns.store.close()
        except Exception as exc:
            return exc
    return None


def _watch_final_commit(owner: dict, timeout: float) -> Generator[bytes, None, None] | None:
    """Register with the mount process for the outcome of its final commit (before the
    unmount: afterwards it may be gone).  None if it cannot be asked (then only the exit of
    the process is awaited, as before)."""
    from hammerfs.control.client import ControlClient, mount_info
    stream = ControlClient.for_mount(mount_info(owner), timeout=timeout).read_stream(
        "await-unmount")
    try:
        next(stream)  # registered: the answer comes after the final commit
    except (HammerError, StopIteration):
        stream.close()
        return None
    return stream


def unmount(mountpoint: str, timeout: float = 120.0) -> None:
    """Unmount and wait until the owner has committed and released the volume; a failed
    final commit raises HammerError."""
    real = os.path.realpath(mountpoint)
    owner = next((m for m in registered_mounts() if m["mountpoint"] == real), None)
    # mountinfo, not ismount(): the dead mount of a killed process fails every stat(); and
    # never another filesystem (fusermount3 run by root would unmount that too)
    km = kernel_mount(real)
    if owner is None and (km is None or km.fstype != FSTYPE):
        raise HammerError(f"{mountpoint} is not a mounted hammerfs")
    final = _watch_final_commit(owner, timeout) if owner is not None else None
    proc = subprocess.run(["fusermount3", "-u", real], capture_output=True, text=True)
    if proc.returncode != 0:
        if final is not None:
            final.close()
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise HammerError(f"cannot unmount {mountpoint}: {msg.removeprefix('fusermount3: ')}")
    if owner is None:
        forget_dead_registration(real)
        return
    if final is not None:
        try:
            for _ in final:  # the end marker, or the mount's failure as a HammerError
                pass
        except HammerError as exc:
            raise UnmountCommitFailed(f"{mountpoint}: {exc}") from None
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


def forget_dead_registration(mountpoint: str) -> None:
    """Remove the socket and registration a mount process that died left behind (its log
    stays: it tells why it died)."""
    files = runtime_files(mountpoint)
    try:
        info = read_json(files["info"])
        pid = int(info.get("pid", 0))
    except (OSError, TypeError, ValueError, HammerError):
        return
    if info.get("mountpoint") == mountpoint and not pid_alive(pid):
        remove_files(files["info"], files["socket"])
