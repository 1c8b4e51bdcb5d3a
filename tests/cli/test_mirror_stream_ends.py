"""A mirror-stream whose source and target are both unmounted for good ends with a clear
message (it used to retry forever after the README's two unmounts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from conftest import hammer_env, run_hammer


def test_stream_ends_when_both_ends_are_gone(tmp_path):
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    mm, sm = tmp_path / "master", tmp_path / "slave"
    mm.mkdir()
    sm.mkdir()
    run_hammer("newfs", "--size", "32M", m)
    run_hammer("newfs", "--size", "32M", s)
    run_hammer("mount", m, mm)
    run_hammer("mount", s, sm)
    proc = None
    try:
        uuid = re.search(r"shared-uuid=(\S+)", run_hammer("pfs-status", mm).stdout).group(1)
        run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hammerfs", "mirror-stream", "--reconnect-delay", "0.2",
             "--give-up", "1", str(mm), str(sm / "pfs" / "slave")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hammer_env())
        (mm / "f").write_text("hello")
        deadline = time.monotonic() + 20
        while not (sm / "pfs" / "slave" / "f").exists():
            assert time.monotonic() < deadline, "never mirrored"
            time.sleep(0.1)
        time.sleep(0.5)  # the session has run for longer than the reconnect delay
        run_hammer("umount", sm)
        run_hammer("umount", mm)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1, err
        assert "are both gone" in err and "Run the same command again" in err, err
        assert "Traceback" not in err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for mp in (sm, mm):
            if os.path.ismount(mp):
                run_hammer("umount", mp)
