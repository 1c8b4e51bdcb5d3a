"""The README's workflow with the slave on Ceph: a local encrypted master streams to a slave PFS
on an RBD image and on an S3 bucket (radosgw) of a real cluster; the replica is browsable
(@@0x<tid> views) wherever the key is, and the cluster only ever holds ciphertext."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from ceph_helpers import FAST_KDF, ceph, key, stored_bytes, unique, volume_spec  # noqa: F401

from conftest import hammer_env, run_hammer

MARKER = b"PLAINTEXT-MARKER-7f3a9c"  # must never reach the cluster


def wait_for(path, content: bytes, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and path.read_bytes() == content):
        assert time.monotonic() < deadline, f"{path} never got the mirrored content"
        time.sleep(0.2)


def history_tids(path) -> list[str]:
    return re.findall(r"^\s*(0x[0-9a-f]{16}) ", run_hammer("history", path).stdout, re.M)


@pytest.mark.parametrize("kind", ["rbd", "s3"])
def test_stream_to_a_slave_on_ceph(ceph, key, unique, tmp_path, kind):
    spec = volume_spec(kind, unique)
    master, mm, sm = tmp_path / "master.img", tmp_path / "master", tmp_path / "slave"
    mm.mkdir()
    sm.mkdir()
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "64M", master)
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "-L", "offsite",
               "--size", "64M", spec)
    first = MARKER * 2000 + os.urandom(50_000)
    second = MARKER * 3000 + b"second version"
    stream = None
    try:
        run_hammer("mount", "--key-file", key, master, mm)
        run_hammer("mount", "--key-file", key, spec, sm)
        uuid = re.search(r"shared-uuid=(\S+)", run_hammer("pfs-status", mm).stdout).group(1)
        run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
        stream = subprocess.Popen(
            [sys.executable, "-m", "hammerfs", "mirror-stream", "-q", str(mm),
             str(sm / "pfs" / "slave")], stderr=subprocess.PIPE, env=hammer_env())
        (mm / "tree").mkdir()
        (mm / "tree" / "file").write_bytes(first)
        wait_for(sm / "pfs" / "slave" / "tree" / "file", first)
        info = run_hammer("info", spec)  # the mount holds the volume: read through it
        assert f"is mounted on {sm}" in info.stderr and "offsite" in info.stdout
        (mm / "tree" / "file").write_bytes(second)
        wait_for(sm / "pfs" / "slave" / "tree" / "file", second)
        stream.terminate()
        assert stream.wait(timeout=30) in (0, 1, -15), stream.stderr.read()
        stream = None
        run_hammer("umount", sm)
        run_hammer("umount", mm)
        # another host with the key: open the replica read-only, browse its history
        run_hammer("mount", "-o", "ro", "--key-file", key, f"{spec}:1", sm)
        replica = sm / "tree" / "file"
        assert replica.read_bytes() == second
        versions = [t for t in history_tids(replica)
                    if (sm / f"tree/file@@{t}").read_bytes() == first]
        assert versions, run_hammer("history", replica).stdout
        assert (sm / f"@@{versions[0]}" / "tree" / "file").read_bytes() == first
        run_hammer("umount", sm)
        run_hammer("scrub", "--key-file", key, spec)
        raw = stored_bytes(kind, unique)
        assert len(raw) > len(first)  # the replica's blocks are there ...
        assert MARKER not in raw  # ... as ciphertext only
    finally:
        if stream is not None:
            stream.kill()
            stream.wait()
        for mp in (sm, mm):
            if os.path.ismount(mp):
                run_hammer("umount", mp, check=False)
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
