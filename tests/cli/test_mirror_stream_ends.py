"""A mirror-stream whose source and target are both unmounted for good ends with a clear
message (it used to retry forever after the README's two unmounts); one whose target comes
back says it is connected again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from conftest import hammer_env, run_hammer


@pytest.fixture
def pair(tmp_path):
    """A mounted master and a mounted slave volume with a slave PFS at pfs/slave; yields
    (master image, slave image, master mount, slave mount) and a starter of mirror-stream
    between them; unmounts and stops whatever is left."""
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    mm, sm = tmp_path / "master", tmp_path / "slave"
    mm.mkdir()
    sm.mkdir()
    run_hammer("newfs", "--size", "32M", m)
    run_hammer("newfs", "--size", "32M", s)
    run_hammer("mount", m, mm)
    run_hammer("mount", s, sm)
    procs = []

    def stream(*extra: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hammerfs", "mirror-stream", "--reconnect-delay", "0.2",
             *extra, str(mm), str(sm / "pfs" / "slave")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hammer_env())
        procs.append(proc)
        return proc

    try:
        uuid = re.search(r"shared-uuid=(\S+)", run_hammer("pfs-status", mm).stdout).group(1)
        run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
        yield m, s, mm, sm, stream
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for mp in (sm, mm):
            if os.path.ismount(mp):
                run_hammer("umount", mp)


def wait_file(path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"never mirrored: {path}"
        time.sleep(0.1)


def test_stream_ends_when_both_ends_are_gone(pair):
    _m, _s, mm, sm, stream = pair
    proc = stream("--give-up", "1")
    (mm / "f").write_text("hello")
    wait_file(sm / "pfs" / "slave" / "f")
    time.sleep(0.5)  # the session has run for longer than the reconnect delay
    run_hammer("umount", sm)
    run_hammer("umount", mm)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "are both gone" in err and "Run the same command again" in err, err
    assert "Traceback" not in err


def test_stream_says_when_it_is_connected_again(pair):
    """After a reported failure, mirror-stream says when it streams again: its last line
    (what `hammer service status` shows) must not stay an error that has passed."""
    _m, s, mm, sm, stream = pair
    proc = stream()
    (mm / "f").write_text("hello")
    wait_file(sm / "pfs" / "slave" / "f")
    time.sleep(0.5)  # the session has run for longer than the reconnect delay
    run_hammer("umount", sm)  # the target goes away for a while...
    time.sleep(1.0)
    run_hammer("mount", s, sm)  # ...and comes back
    (mm / "g").write_text("again")
    wait_file(sm / "pfs" / "slave" / "g")
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.startswith("hammer: mirror-stream")]
    assert any("retrying in" in line or "reconnecting in" in line for line in lines), err
    assert re.fullmatch(r"hammer: mirror-stream: connected again after \d+ failed "
                        r"attempts?; streaming", lines[-1]), err
