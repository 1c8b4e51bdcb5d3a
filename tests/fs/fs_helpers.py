"""Shared helpers of the filesystem tests."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable

from hammerfs.store.memory import MemoryStore


def lock_handovers(lock, work: Callable[[], object]) -> int:
    """Run ``work()`` in this thread while another keeps asking for ``lock`` (as the
    mount's requests do): how often that thread got the lock while ``work`` ran.  Work that
    holds the lock for its whole run scores 0."""
    running, stop = threading.Event(), threading.Event()
    got = [0]

    def contender() -> None:
        while not stop.is_set():
            with lock:
                if running.is_set():
                    got[0] += 1
            time.sleep(0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the contender gets the GIL to ask often, as FUSE threads do
    thread = threading.Thread(target=contender, daemon=True)
    thread.start()
    try:
        running.set()
        work()
        running.clear()
    finally:
        stop.set()
        thread.join(10)
        sys.setswitchinterval(interval)
    return got[0]


def memory_store(tmp_path):
    return MemoryStore(label="test")


def disk_store(tmp_path, size=256 << 20):
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.store import Store
    dev = FileDevice(str(tmp_path / "vol.img"), create_size=size)
    return Store.create(dev, label="test")


@contextlib.contextmanager
def rooted_store(kind, tmp_path):
    """A store made by ``kind`` with PFS #0's root directory committed; closed on exit."""
    from hammerfs.fs import init_pfs_root
    s = kind(tmp_path)
    init_pfs_root(s, 0)
    s.commit()
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def memory_mount(tmp_path):
    """A FUSE mount of a fresh MemoryStore at ``tmp_path/mnt``, served by a forked process."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp) as m:
        yield m


def store_kinds():
    """Every RecordStore implementation on this checkout (the on-disk one once it exists)."""
    import hammerfs.store as store_pkg
    kinds = [memory_store]
    if hasattr(store_pkg, "Store"):
        kinds.append(disk_store)
    return kinds


class ForkedMount:
    """Serve a store through FUSE from a forked child (the way the mount daemon runs)."""

    def __init__(self, make_store, mountpoint, *, pfs=0, asof=None, readonly=False,
                 volume="test-volume", writeback=False):
        self.make_store = make_store
        self.mountpoint = str(mountpoint)
        self.kw = dict(pfs=pfs, asof=asof, readonly=readonly, volume=volume,
                       writeback=writeback)
        self.pid = 0

    def __enter__(self):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(r)
                logging.basicConfig(level=logging.INFO)
                from hammerfs.fuse.mount import serve
                store = self.make_store()

                def ready():
                    os.write(w, b"ok")
                    os.close(w)

                serve(store, mountpoint=self.mountpoint, on_ready=ready, **self.kw)
                code = 0
            except BaseException as exc:  # report to the parent, never return into pytest
                traceback.print_exc()
                with contextlib.suppress(OSError):
                    os.write(w, f"error: {exc}".encode())
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        msg = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            msg += chunk
            if msg == b"ok":
                break
        os.close(r)
        if msg != b"ok":
            os.waitpid(pid, 0)
            raise RuntimeError(f"mount failed: {msg.decode()}")
        return self

    def unmount(self):
        from hammerfs.fuse.mount import unmount
        if self.pid:
            unmount(self.mountpoint)  # waits for the owner to exit (and reaps our child)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def kill(self):
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = 0
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)

    def __exit__(self, *exc):
        try:
            self.unmount()
        except Exception:
            self.kill()
            raise


def slurp(path, mode="rb"):
    with open(path, mode) as f:
        return f.read()


def errno_of(func, *args) -> int:
    """The errno ``func(*args)`` fails with, 0 if it succeeds."""
    try:
        func(*args)
    except OSError as exc:
        return exc.errno
    return 0
