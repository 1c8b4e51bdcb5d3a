"""`hammer up` with a [[mount]] on an RBD image: the supervisor unlocks and mounts it, keeps a
stream from a local master into a slave PFS on it, and unmounts it on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from ceph_helpers import FAST_KDF, ceph, key, unique, volume_spec  # noqa: F401

from conftest import hammer_env, run_hammer


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_up_mounts_an_rbd_volume_and_streams_into_it(ceph, key, unique, tmp_path):
    spec = volume_spec("rbd", unique)
    master, mm, sm = tmp_path / "master.img", tmp_path / "fort_knox", tmp_path / "offsite"
    mm.mkdir()
    sm.mkdir()
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "64M", master)
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "64M", spec)
    uuid = re.search(r"shared-uuid=(\S+)",
                     run_hammer("pfs-status", "--key-file", key, master).stdout).group(1)
    run_hammer("mount", "--key-file", key, spec, sm)  # the one-time setup, by hand
    try:
        (sm / "pfs").mkdir()
        run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
    finally:
        run_hammer("umount", sm)
    config = tmp_path / "hammerfs.toml"
    config.write_text(f"""\
[[mount]]
name = "master"
volume = "{master}"
mountpoint = "{mm}"
key_file = "{key}"

[[mount]]
name = "offsite"
volume = "{spec}"
mountpoint = "{sm}"
key_file = "{key}"

[[stream]]
name = "offsite"
source = "{mm}"
target = "{sm}/pfs/slave"
reconnect_delay = 0.5
""")
    run_hammer("up", "--check", "--config", config)
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.Popen([sys.executable, "-m", "hammerfs", "up", "-f", "--config",
                               str(config)], env=hammer_env(), stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mm) and os.path.ismount(sm), 60, "both mounts")
        (mm / "notes.txt").write_text("offsite copy")
        copy = sm / "pfs" / "slave" / "notes.txt"
        wait_for(lambda: copy.exists() and copy.read_text() == "offsite copy", 30,
                 "the stream")
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        for mp in (mm, sm):
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
    assert up.returncode == 0, (tmp_path / "up.out").read_text()
    assert not os.path.ismount(sm)
    # unmounted: the volume (its lock released) opens directly, the copy is in it
    out = run_hammer("history", "--key-file", key, "--path", "notes.txt", f"{spec}:1")
    assert "0x" in out.stdout
