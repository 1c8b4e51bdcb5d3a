"""History views and permissions (issue 11.11): after ``chmod 600 secret`` another user must
not read the old contents through ``secret@@0x<tid>`` or ``@@0x<tid>/secret``, unless the
mount asks for HAMMER's rule (``-o history_perms=asof``).  Real FUSE mounts, a real second
user (created here), reads through ``setpriv``."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import run_hammer
from hammerfs.fs.asof import restrict_to_live
from hammerfs.fs.layout import Inode

USER = "hammerfs-hperm"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"),
    reason="a second user needs root, useradd and setpriv")


def inode(mode: int, uid: int, gid: int) -> Inode:
    return Inode(5, stat.S_IFREG | mode, uid, gid, 1, 0, 0, 0, 0, 0, 0, 1)


@pytest.mark.parametrize("old, live, want", [
    ((0o644, 1, 1), (0o600, 1, 1), 0o600),    # chmod 600: group and others lose read
    ((0o600, 1, 1), (0o644, 1, 1), 0o600),    # widened since: the old bits still bound it
    ((0o755, 1, 1), (0o700, 1, 1), 0o700),    # a directory made private
    ((0o640, 1, 1), (0o604, 1, 1), 0o600),    # exact per class with the same owner/group
    ((0o644, 1, 1), (0o644, 2, 1), 0o444),    # chowned: old owner may be anyone now
    ((0o644, 1, 1), (0o640, 1, 2), 0o600),    # chgrp: group members may be "other" now
    ((0o664, 1, 1), (0o660, 1, 2), 0o600),    # chgrp: old group may be "other" now
    ((0o4755, 1, 1), (0o755, 1, 1), 0o755),   # a setuid bit the live file lost is gone
])
def test_restrict_to_live(old, live, want):
    got = restrict_to_live(inode(*old), inode(*live))
    assert stat.S_IMODE(got.mode) == want and stat.S_ISREG(got.mode)
    assert (got.uid, got.gid) == (old[1], old[2])  # the owner shown is the old one


@pytest.fixture
def other_user():
    created = False
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True, capture_output=True)
        created = True
        pw = pwd.getpwnam(USER)
    yield pw.pw_uid, pw.pw_gid
    if created:
        subprocess.run(["userdel", USER], capture_output=True)


def as_user(user: tuple[int, int], *cmd: str) -> subprocess.CompletedProcess:
    uid, gid = user
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                           *cmd], capture_output=True, text=True, timeout=60)


@pytest.fixture
def world_mountpoint():
    """pytest's tmp dirs are 0700: the second user needs a path it can walk."""
    top = tempfile.mkdtemp(prefix="hammerfs-hperm-", dir="/tmp")
    os.chmod(top, 0o755)
    mp = os.path.join(top, "mnt")
    os.mkdir(mp)
    yield mp
    if os.path.ismount(mp):
        run_hammer("umount", mp, check=False)
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_history_views_check_the_current_permissions(tmp_path, other_user, world_mountpoint):
    mp = world_mountpoint
    vol = tmp_path / "vol.img"
    run_hammer("newfs", "--size", "64M", vol)
    run_hammer("mount", vol, mp)
    os.chmod(mp, 0o755)
    with open(f"{mp}/secret", "w") as f:
        f.write("old secret\n")
    os.chmod(f"{mp}/secret", 0o644)
    os.mkdir(f"{mp}/private", 0o755)
    with open(f"{mp}/private/f", "w") as f:
        f.write("old private\n")
    os.chmod(f"{mp}/private/f", 0o644)
    tid = run_hammer("synctid", mp).stdout.strip()
    old_paths = [f"{mp}/secret@@{tid}", f"{mp}/@@{tid}/secret", f"{mp}/private@@{tid}/f",
                 f"{mp}/@@{tid}/private/f"]
    for path in old_paths:  # readable by everyone while the files are
        assert as_user(other_user, "cat", path).returncode == 0, path

    os.chmod(f"{mp}/secret", 0o600)
    os.chmod(f"{mp}/private", 0o700)
    with open(f"{mp}/secret", "w") as f:
        f.write("new secret\n")
    run_hammer("synctid", mp)
    time.sleep(1.2)  # the kernel keeps attributes of a live mount for 1 s
    for path in old_paths:
        res = as_user(other_user, "cat", path)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (path, res.stdout)
    res = as_user(other_user, "ls", f"{mp}/@@{tid}/private")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    with open(f"{mp}/secret@@{tid}") as f:  # the owner (root) still reads the history
        assert f.read() == "old secret\n"
    assert run_hammer("undo", "-t", tid, f"{mp}/secret").stdout == "old secret\n"

    run_hammer("umount", mp)  # HAMMER's rule on request: the permissions as of the TID
    run_hammer("mount", "-o", "history_perms=asof", vol, mp)
    for path in old_paths:
        res = as_user(other_user, "cat", path)
        assert res.returncode == 0 and res.stdout.startswith("old"), (path, res.stderr)
    run_hammer("umount", mp)

    run_hammer("mount", "-o", f"asof={tid}", vol, mp)  # an as-of mount checks the live tree
    assert as_user(other_user, "cat", f"{mp}/secret").returncode != 0
    assert as_user(other_user, "cat", f"{mp}/private/f").returncode != 0
    run_hammer("umount", mp)
    bad = run_hammer("mount", "-o", "history_perms=maybe", vol, mp, check=False)
    assert bad.returncode == 1 and "history_perms" in bad.stderr and not os.path.ismount(mp)
