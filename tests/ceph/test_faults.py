"""Faults on Ceph volumes: a mount killed with SIGKILL mid-write reopens at a commit with
nothing fsynced lost and scrub clean; a second host is refused the RBD volume until it breaks
the lock, which fences the first out; the S3 cache stays bounded and a crash while it uploads
(objects stored or not, in any order) never leaves a header pointing at missing data."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from ceph_helpers import FAST_KDF, ceph, key, unique, volume_spec  # noqa: F401

from conftest import run_hammer
from hammerfs.blockdev.rbd import RbdDevice
from hammerfs.blockdev.s3 import S3Device
from hammerfs.control.server import mount_key, runtime_dir
from hammerfs.errors import HammerError, VolumeLocked
from hammerfs.store import Store
from hammerfs.store.scrub import scrub


def owner_pid(mp) -> int:
    with open(os.path.join(runtime_dir(), mount_key(os.path.realpath(mp)) + ".json")) as f:
        return json.load(f)["pid"]


def reopen(*args: str, timeout: float = 40):
    """Run a command on a volume whose killed holder's RBD lock has yet to expire."""
    deadline = time.monotonic() + timeout
    while True:
        out = run_hammer(*args, check=False)
        if out.returncode == 0 or "in use by" not in out.stderr or \
                time.monotonic() > deadline:
            return out
        time.sleep(1)


@pytest.mark.parametrize("kind", ["rbd", "s3"])
def test_kill_9_mid_write_reopens_at_a_commit(ceph, key, unique, tmp_path, kind):
    spec = volume_spec(kind, unique)
    mp = tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "128M", spec)
    durable = random.Random(1).randbytes(300_000)
    chunk = random.Random(2).randbytes(64 << 10)
    run_hammer("mount", "--key-file", key, spec, mp)
    stop = threading.Event()

    def writer() -> None:  # keeps writing (and so uploading) until the mount dies
        i = 0
        try:
            while not stop.is_set():
                with open(mp / f"busy{i % 50}", "wb") as f:
                    for _ in range(8):
                        f.write(chunk)
                i += 1
        except OSError:
            pass

    try:
        with open(mp / "durable", "wb") as f:
            f.write(durable)
            f.flush()
            os.fsync(f.fileno())
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(2)
        os.kill(owner_pid(mp), signal.SIGKILL)
        stop.set()
        thread.join(timeout=30)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    out = reopen("scrub", "--key-file", key, spec)
    assert out.returncode == 0 and "no damage found" in out.stdout, out.stdout + out.stderr
    run_hammer("mount", "--key-file", key, spec, mp)
    try:
        assert (mp / "durable").read_bytes() == durable
        for name in os.listdir(mp):  # every file is whole chunks of what was written
            data = (mp / name).read_bytes()
            if name.startswith("busy"):
                assert data == chunk * (len(data) // len(chunk)), name
    finally:
        run_hammer("umount", mp)


def test_rbd_second_host_refused_until_it_breaks_the_lock(ceph, key, unique, tmp_path):
    spec = volume_spec("rbd", unique)
    run_hammer("newfs", "--size", "64M", spec)
    first = RbdDevice("hammerfs", unique)
    try:
        first.write(0, b"1" * 4096)
        first.flush()
        refused = run_hammer("info", spec, check=False)  # another process ~ another host
        assert refused.returncode != 0 and "in use by" in refused.stderr, refused.stderr
        assert f"pid {os.getpid()}" in refused.stderr  # says who holds it
        with pytest.raises(VolumeLocked):
            RbdDevice("hammerfs", unique)
        second = RbdDevice("hammerfs", unique, break_lock=True)
        try:
            second.write(0, b"2" * 4096)
            second.flush()
            with pytest.raises(HammerError):  # the first holder is fenced out (blocklisted)
                first.write(0, b"1" * 4096)
                first.flush()
            assert second.read(0, 4096) == b"2" * 4096
        finally:
            second.close()
    finally:
        first.close()


def test_s3_cache_is_bounded_and_reads_back(ceph, unique):
    spec_prefix = unique + "/"
    dev = S3Device("hammerfs", spec_prefix, create_size=64 << 20, cache_bytes=4 << 20)
    data = random.Random(3).randbytes(24 << 20)
    try:
        for off in range(0, len(data), 256 << 10):
            dev.write(off, data[off:off + (256 << 10)])
            assert len(dev._cache) <= 4  # evicted objects were uploaded, not dropped
        dev.write(60 << 20, b"x" * 4096)  # a lone block: its object is merged, not fetched
        dev.flush()
    finally:
        dev.close()
    again = S3Device("hammerfs", spec_prefix, readonly=True, cache_bytes=4 << 20)
    try:
        assert again.read(0, len(data)) == data
        assert again.read(60 << 20, 8192) == b"x" * 4096 + bytes(4096)
    finally:
        again.close()


class _Crash(Exception):
    pass


@pytest.mark.parametrize("survivors", [0, 1, 3])
def test_s3_crash_while_uploading_leaves_the_last_commit(ceph, unique, survivors):
    """The upload of a commit fails after ``survivors`` objects (a crashed flusher): the
    volume reopens at the previous commit, scrub clean."""
    prefix = unique + "/"
    store = Store.create(S3Device("hammerfs", prefix, create_size=64 << 20), "t")
    rnd = random.Random(survivors)
    for i in range(40):
        store.put((1, 100 + i, 1, 0), rnd.randbytes(20_000))
    committed = store.commit()
    for i in range(40):
        store.put((1, 200 + i, 1, 0), rnd.randbytes(20_000))
    dev = store.device
    uploads: list[int] = []
    lock = threading.Lock()
    real = dev._upload

    def dying_upload(index: int, data: bytes) -> None:
        with lock:  # uploads run in parallel
            uploads.append(index)
            if len(uploads) > survivors:
                raise _Crash()
        real(index, data)

    dev._upload = dying_upload
    with pytest.raises(HammerError, match="storing an object failed"):
        store.commit()
    with pytest.raises(HammerError):  # the lost upload fails every later flush too
        dev.flush()
    dev._cache.clear()  # the process is gone: its cache with it
    reopened = Store.open(S3Device("hammerfs", prefix, readonly=True), readonly=True)
    try:
        assert reopened.last_committed_tid == committed
        assert reopened.get((1, 100, 1, 0)) is not None
        assert reopened.get((1, 200, 1, 0)) is None
        report = scrub(reopened)
        assert report.ok and report.records >= 40, report
    finally:
        reopened.close()


def test_s3_second_writer_refused_until_it_breaks_the_lock(ceph, key, unique):
    import boto3
    spec = volume_spec("s3", unique)
    run_hammer("newfs", "--size", "64M", spec)
    first = S3Device("hammerfs", unique + "/")
    try:
        refused = run_hammer("pfs-master", f"{spec}:1", check=False)  # another writer
        assert refused.returncode != 0 and "in use by" in refused.stderr, refused.stderr
        assert f"pid {os.getpid()}" in refused.stderr
        run_hammer("info", spec)  # readers are not refused (browsing a live replica)
        with pytest.raises(VolumeLocked):
            S3Device("hammerfs", unique + "/")
        S3Device("hammerfs", unique + "/", break_lock=True).close()
    finally:
        first.close()
    s3 = boto3.client("s3")
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"host": os.uname().nodename, "pid": dead.pid, "token": "x"}
    s3.put_object(Bucket="hammerfs", Key=f"{unique}/lock", Body=json.dumps(lock).encode())
    S3Device("hammerfs", unique + "/").close()  # a holder on this host that is gone
    lock["host"] = "elsewhere"
    s3.put_object(Bucket="hammerfs", Key=f"{unique}/lock", Body=json.dumps(lock).encode())
    with pytest.raises(VolumeLocked):  # another host: only --break-lock takes it
        S3Device("hammerfs", unique + "/")
    run_hammer("pfs-master", "--break-lock", f"{spec}:1")
    assert s3.list_objects_v2(Bucket="hammerfs", Prefix=f"{unique}/lock")["KeyCount"] == 0
