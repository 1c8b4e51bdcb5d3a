"""The cluster goes away mid-stream: radosgw is killed while `mirror-stream` feeds a slave on
S3; the stream keeps retrying, and once radosgw is back it catches up (what was committed on
the master meanwhile included), the replica consistent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from ceph_helpers import FAST_KDF, ceph, key, unique, volume_spec  # noqa: F401

from conftest import hammer_env, run_hammer


def fsynced(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def wait_replicated(spec: str, key, name: str, timeout: float = 120) -> None:
    """Until the slave has ``name`` (read from the bucket while the stream writes it: an
    attempt that meets a half-updated state is retried)."""
    deadline = time.monotonic() + timeout
    while True:
        out = run_hammer("history", "--key-file", key, "--path", name, f"{spec}:1",
                         check=False)
        if out.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{name} never reached the slave: {out.stderr}"
        time.sleep(1)


def restart_radosgw(cluster: dict[str, str]) -> None:
    subprocess.run(["radosgw", "--conf", cluster["CEPH_CONF"], "-n", "client.rgw"],
                   check=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(cluster["AWS_ENDPOINT_URL"], timeout=2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "radosgw did not come back"
            time.sleep(0.2)


def test_stream_to_s3_survives_losing_radosgw(ceph, key, unique, tmp_path):
    spec = volume_spec("s3", unique)
    master, mm = tmp_path / "master.img", tmp_path / "master"
    mm.mkdir()
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "64M", master)
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "64M", spec)
    stream = None
    pidfile = os.path.join(ceph["DIR"], "run", "client.rgw.pid")
    try:
        run_hammer("mount", "--key-file", key, master, mm)
        uuid = re.search(r"shared-uuid=(\S+)", run_hammer("pfs-status", mm).stdout).group(1)
        run_hammer("pfs-slave", "--key-file", key, f"{spec}:1", f"shared-uuid={uuid}")
        stream = subprocess.Popen(
            [sys.executable, "-m", "hammerfs", "mirror-stream", "-q", "--reconnect-delay",
             "0.5", "--target-key-file", str(key), str(mm), f"{spec}:1"],
            stderr=subprocess.PIPE, env=hammer_env())
        fsynced(mm / "before", b"before the outage")
        wait_replicated(spec, key, "before")
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGKILL)  # the S3 endpoint is gone
        fsynced(mm / "during", os.urandom(200_000))
        time.sleep(4)  # the stream meets the outage (and retries)
        assert stream.poll() is None, stream.stderr.read()
        restart_radosgw(ceph)
        fsynced(mm / "after", b"after the outage")
        wait_replicated(spec, key, "after")
        wait_replicated(spec, key, "during")
        stream.terminate()
        stream.wait(timeout=30)
        stream = None
        out = run_hammer("scrub", "--key-file", key, spec)
        assert "no damage found" in out.stdout
    finally:
        if stream is not None:
            stream.kill()
            stream.wait()
        if not os.path.exists(pidfile) or not _alive(pidfile):
            restart_radosgw(ceph)  # leave the cluster whole for the other tests
        if os.path.ismount(mm):
            run_hammer("umount", mm, check=False)


def _alive(pidfile: str) -> bool:
    try:
        with open(pidfile) as f:
            os.kill(int(f.read()), 0)
    except (OSError, ValueError):
        return False
    return True
