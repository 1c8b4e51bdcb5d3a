"""Issue 12.4: what a mount leaves in the runtime directory, and errors that say where
mounts were looked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import run_hammer
from hammerfs.control.client import pid_alive
from hammerfs.control.server import mount_key


@pytest.fixture
def setup(tmp_path):
    vol, mp, run = tmp_path / "vol.img", tmp_path / "mnt", tmp_path / "run"
    run_hammer("newfs", "--size", "32M", vol)
    mp.mkdir()
    env = {"HAMMERFS_RUNTIME_DIR": str(run)}
    yield vol, mp, run, env
    if os.path.ismount(mp):
        run_hammer("umount", mp, check=False, env=env)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def files(run) -> set[str]:
    return set(os.listdir(run)) if os.path.isdir(run) else set()


def test_unmount_leaves_nothing_behind(setup):
    vol, mp, run, env = setup
    key = mount_key(str(mp))
    run_hammer("mount", vol, mp, env=env)
    assert files(run) == {f"{key}.sock", f"{key}.json", f"{key}.log"}
    assert oct(os.stat(run).st_mode & 0o777) == "0o700"
    for name in files(run):
        assert os.stat(run / name).st_mode & 0o077 == 0, name
    (mp / "f").write_bytes(b"x")
    run_hammer("umount", mp, env=env)
    assert files(run) == set()


def test_dead_mount_keeps_its_log_and_the_next_mount_keeps_it_too(setup):
    vol, mp, run, env = setup
    key = mount_key(str(mp))
    run_hammer("mount", vol, mp, env=env)
    pid = json.loads((run / f"{key}.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        time.sleep(0.05)
    run_hammer("umount", mp, env=env)  # clears the dead FUSE mount and its registration
    assert files(run) == {f"{key}.log"}
    (run / f"{key}.log").write_text("what the dead mount said\n")
    run_hammer("mount", vol, mp, env=env)
    assert (run / f"{key}.log.1").read_text() == "what the dead mount said\n"
    run_hammer("umount", mp, env=env)
    assert files(run) == set()


def test_not_inside_a_mount_names_the_runtime_dir_searched(setup, tmp_path):
    vol, mp, run, env = setup
    run_hammer("mount", vol, mp, env=env)
    elsewhere = {"HAMMERFS_RUNTIME_DIR": str(tmp_path / "other")}
    plain = tmp_path / "plain"
    plain.mkdir()
    for argv in (("synctid", mp), ("mirror-copy", f"{vol}:0", mp), ("synctid", plain),
                 ("mirror-copy", f"{vol}:0", plain)):
        out = run_hammer(*argv, check=False, env=elsewhere)
        assert out.returncode != 0
        assert f"runtime directory {tmp_path / 'other'}" in out.stderr, out.stderr
        assert "HAMMERFS_RUNTIME_DIR" in out.stderr and "Traceback" not in out.stderr
        # a path inside a mount registered elsewhere is called what it is
        assert (f"{mp} is a hammerfs mount" in out.stderr) == (argv[-1] == mp), out.stderr
    assert run_hammer("synctid", mp, env=env).stdout.startswith("0x")
    run_hammer("umount", mp, env=env)


def test_mount_help_documents_the_runtime_dir():
    out = run_hammer("mount", "--help").stdout
    for text in ("HAMMERFS_RUNTIME_DIR", "/run/hammerfs", "/tmp/hammerfs-<uid>",
                 "$XDG_RUNTIME_DIR/hammerfs", "mode 0700", "<key>.log"):
        assert text in out, text


def test_umount_never_touches_another_filesystem(tmp_path):
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(other)], check=True)
    try:
        out = run_hammer("umount", other, check=False)
        assert out.returncode != 0 and "is not a mounted hammerfs" in out.stderr
        assert os.path.ismount(other)
    finally:
        subprocess.run(["umount", str(other)], capture_output=True)
