"""The OSD behind a mounted RBD volume stops while files are written and read.

Default (Ceph's own): I/O blocks while the OSD is down and resumes when it is back; nothing is
lost, nothing fails, the mount stays up.  With ``rados_osd_op_timeout`` set
(``CEPH_ARGS="--rados_osd_op_timeout N"`` or the client's ceph.conf) the same I/O fails with EIO
after N seconds instead; the mount stays up, reads work again once the OSD is back, writes stay
refused until a remount, and the volume reopens at its last commit: scrub clean, everything
fsynced before the outage intact."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from ceph_helpers import FAST_KDF, ceph, key, unique, volume_spec  # noqa: F401
from test_faults import owner_pid
from test_network_loss import fsynced

from conftest import run_hammer
from hammerfs.blockdev.rbd import RbdDevice
from hammerfs.errors import HammerError

BIG = random.Random(7).randbytes(6 << 20)


def osd_pid(cluster: dict[str, str]) -> int | None:
    try:
        with open(os.path.join(cluster["DIR"], "run", "osd.0.pid")) as f:
            pid = int(f.read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_osd(cluster: dict[str, str]) -> None:
    pid = osd_pid(cluster)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, "the OSD did not stop"
        time.sleep(0.1)


def start_osd(cluster: dict[str, str]) -> None:
    """Start the OSD again (if it is not running) and wait until the cluster has it up."""
    if osd_pid(cluster) is None:
        subprocess.run(["ceph-osd", "--conf", cluster["CEPH_CONF"], "-i", "0"], check=True,
                       stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        out = subprocess.run(["ceph", "--conf", cluster["CEPH_CONF"], "osd", "stat", "-f",
                              "json"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and json.loads(out.stdout).get("num_up_osds") == 1:
            return
        assert time.monotonic() < deadline, "the OSD did not come back up"
        time.sleep(0.5)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Background(threading.Thread):
    """Runs ``fn`` and keeps its result or its exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)  # never keeps a failed test's process alive
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test
            self.error = exc


def prepared_mount(spec: str, key, mp, env: dict[str, str] | None = None) -> None:
    """A volume with `durable` and `big` fsynced, mounted afresh: nothing of them cached."""
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "128M", spec)
    run_hammer("mount", "--key-file", key, spec, mp)
    fsynced(mp / "durable", b"fsynced before the outage")
    fsynced(mp / "big", BIG)
    run_hammer("umount", mp)
    run_hammer("mount", "--key-file", key, spec, mp, env=env)


def check_volume(spec: str, key, mp) -> None:
    """Scrub clean, and what was fsynced before the outage is there, byte for byte."""
    out = run_hammer("scrub", "--key-file", key, spec)
    assert "no damage found" in out.stdout, out.stdout + out.stderr
    run_hammer("mount", "--key-file", key, spec, mp)
    try:
        assert read(mp / "durable") == b"fsynced before the outage"
        assert read(mp / "big") == BIG
    finally:
        run_hammer("umount", mp)


@pytest.fixture
def outage(ceph, tmp_path):
    """(spec-less) cluster whose OSD is restarted at the end whatever happens; the mount
    point is unmounted."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        yield mp
    finally:
        start_osd(ceph)
        if os.path.ismount(mp):
            run_hammer("umount", mp, check=False)
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_io_blocks_while_the_osd_is_down_and_resumes(ceph, key, unique, outage):
    mp, spec = outage, volume_spec("rbd", unique)
    prepared_mount(spec, key, mp)
    daemon = owner_pid(mp)
    during = random.Random(8).randbytes(3 << 20)
    stop_osd(ceph)
    writer = Background(lambda: fsynced(mp / "during", during))
    reader = Background(lambda: read(mp / "big"))
    writer.start()
    reader.start()
    time.sleep(4)
    assert writer.is_alive() and reader.is_alive(), (writer.error, reader.error)
    os.kill(daemon, 0)  # the mount is up, its I/O waiting
    start_osd(ceph)
    writer.join(120)
    reader.join(120)
    assert not writer.is_alive() and not reader.is_alive()
    assert writer.error is None and reader.error is None, (writer.error, reader.error)
    assert reader.result == BIG
    fsynced(mp / "after", b"the mount goes on")
    run_hammer("umount", mp)
    check_volume(spec, key, mp)
    run_hammer("mount", "--key-file", key, spec, mp)
    assert read(mp / "during") == during
    assert read(mp / "after") == b"the mount goes on"


def test_with_an_op_timeout_io_fails_with_eio_and_the_volume_stays_consistent(
        ceph, key, unique, outage):
    mp, spec = outage, volume_spec("rbd", unique)
    timeout = 3
    prepared_mount(spec, key, mp, env={"CEPH_ARGS": f"--rados_osd_op_timeout {timeout}"})
    daemon = owner_pid(mp)
    fsynced(mp / "warm", b"the B-tree path of a new file is now in memory")
    pending = open(mp / "lost", "wb")  # noqa: SIM115 -- written before the outage,
    pending.write(b"x" * 300_000)  # fsynced during it: its commit's writes fail
    pending.flush()
    stop_osd(ceph)
    started = time.monotonic()
    with pytest.raises(OSError) as failed_read:
        read(mp / "big")
    with pytest.raises(OSError) as failed_fsync:
        os.fsync(pending.fileno())
    assert failed_read.value.errno == errno.EIO and failed_fsync.value.errno == errno.EIO
    assert time.monotonic() - started < 60  # a few timeouts, not a hang
    os.kill(daemon, 0)  # the mount is still up
    start_osd(ceph)
    assert read(mp / "big") == BIG  # reads work again
    with pytest.raises(OSError) as refused:  # a failed commit: writes wait for a remount
        fsynced(mp / "later", b"y" * 300_000)
    assert refused.value.errno == errno.EIO
    with contextlib.suppress(OSError):
        pending.close()
    run_hammer("umount", mp, check=False)
    check_volume(spec, key, mp)
    run_hammer("mount", "--key-file", key, spec, mp)
    fsynced(mp / "remounted", b"writes again")
    assert read(mp / "remounted") == b"writes again"


def test_a_failed_flush_refuses_every_later_write_until_reopened(ceph, unique, outage,
                                                                 monkeypatch):
    """The store's memory may hold extents a failed flush did not store: the device must not
    take a later write or flush that would commit a header pointing at them."""
    monkeypatch.setenv("CEPH_ARGS", "--rados_osd_op_timeout 2")
    dev = RbdDevice("hammerfs", unique, create_size=16 << 20)
    try:
        dev.write(0, b"a" * 8192)
        dev.flush()
        stop_osd(ceph)
        dev.write(8192, b"b" * 8192)  # into librbd's cache
        with pytest.raises(HammerError):
            dev.flush()
        start_osd(ceph)
        assert dev.read(0, 8192) == b"a" * 8192
        for attempt in (lambda: dev.write(16384, b"c" * 4096), dev.flush):
            with pytest.raises(HammerError, match="until it is reopened"):
                attempt()
    finally:
        dev.close()
    dev = RbdDevice("hammerfs", unique)
    try:
        dev.write(16384, b"c" * 4096)
        dev.flush()
    finally:
        dev.close()
