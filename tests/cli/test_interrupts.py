"""Ctrl-C: mirror-copy says it is resumable and exits 130 (no "mirror done", no "stream is
truncated"); running the same command again completes the copy.  Ctrl-C anywhere else in
the CLI is a message and 130 too, never a traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from conftest import hammer_env, run_hammer


def make_pair(tmp_path, data_bytes: int):
    m, s, mnt = tmp_path / "m.img", tmp_path / "s.img", tmp_path / "mnt"
    mnt.mkdir()
    run_hammer("newfs", "--size", "96M", m)
    run_hammer("newfs", "--size", "96M", s)
    run_hammer("mount", m, mnt)
    try:
        for i in range(data_bytes >> 20):
            (mnt / f"f{i}").write_bytes(os.urandom(1 << 20))
    finally:
        run_hammer("umount", mnt)
    uuid = re.search(r"shared-uuid=(\S+)", run_hammer("pfs-status", m).stdout).group(1)
    run_hammer("pfs-slave", f"{s}:1", f"shared-uuid={uuid}")
    return m, s


def ctrl_c(argv: list[str], after: float) -> subprocess.CompletedProcess:
    """Run `hammer ARGV` in its own process group and send SIGINT to the whole group after
    ``after`` seconds, as a terminal does on Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "hammerfs", *argv], env=hammer_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err.decode(errors="replace"))


def test_ctrl_c_during_mirror_copy_is_resumable(tmp_path):
    m, s = make_pair(tmp_path, 24 << 20)
    argv = ["mirror-copy", "-v", "-b", "2M", str(m), f"{s}:1"]
    proc = ctrl_c(argv, after=3.0)
    assert proc.returncode == 130, proc.stderr
    assert "interrupted (resumable: run the same command again)" in proc.stderr
    for noise in ("mirror done", "truncated", "Traceback", "mirror source failed"):
        assert noise not in proc.stderr, proc.stderr
    done = run_hammer(*argv[:2], *argv[4:])  # the same copy, without the bandwidth cap
    assert "synced to" in done.stderr
    status = run_hammer("pfs-status", f"{s}:1").stdout
    assert "sync-end-tid=0x0000000000000001" not in status


def test_ctrl_c_elsewhere_is_a_message_and_130(tmp_path):
    vol = tmp_path / "v.img"
    run_hammer("newfs", "--size", "16M", vol)
    # mirror-read-stream waits for commits forever: a stand-in for any long command
    proc = ctrl_c(["mirror-read-stream", str(vol)], after=2.0)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert "interrupted" in proc.stderr
