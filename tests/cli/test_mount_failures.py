"""A mount that cannot happen says what failed, names the log and shows its tail; with -f
there is no traceback.  Run as a real unprivileged user (useradd) through setpriv, in a mount
namespace where /dev/fuse is a root-only node (so the test does not depend on, nor change,
the host's /dev/fuse mode)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import SRC, run_hammer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in ("useradd", "userdel", "setpriv",
                                                             "unshare")),
    reason="needs root to create a user (useradd, util-linux's setpriv and unshare)")


@pytest.fixture
def unprivileged_user():
    name = "hmt" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    user = pwd.getpwnam(name)
    try:
        yield user
    finally:
        subprocess.run(["userdel", name], check=False)
        # its runtime dir (the mount log), wherever this version of hammerfs puts it
        for path in (f"/tmp/hammerfs-{user.pw_uid}", f"/run/user/{user.pw_uid}/hammerfs"):
            shutil.rmtree(path, ignore_errors=True)


def user_python() -> str:
    """An interpreter the unprivileged user may run: ours unless it lives in a private
    directory (pyenv under /root), then the system's of the same version."""
    for candidate in (sys.executable, os.path.realpath(sys.executable),
                      f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        if os.path.exists(candidate) and _world_executable(candidate):
            return candidate
    pytest.skip("no Python interpreter the unprivileged user can run")


def _world_executable(path: str) -> bool:
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        if not os.stat("/".join(parts[:i])).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o001)


def run_as(user, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`hammer ARGS` as ``user``, in a mount namespace whose /dev/fuse is mode 0600 root."""
    node = tmp_path / "fuse-node"
    if not node.exists():
        os.mknod(node, 0o600 | 0o020000, os.makedev(10, 229))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path), "LC_ALL": "C",
           "PYTHONPATH": os.pathsep.join([str(SRC), sysconfig.get_paths()["purelib"]])}
    inner = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
             user_python(), "-m", "hammerfs", *args]
    script = 'mount --bind "$0" /dev/fuse && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(node), *inner], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.fixture
def world_dir():
    """A directory the unprivileged user can reach (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="hammer-unpriv-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def volume_for(unprivileged_user, world_dir):
    tmp_path = world_dir
    vol = tmp_path / "v.img"
    run_hammer("newfs", "--size", "16M", vol)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for path in (vol, mnt):
        os.chown(path, unprivileged_user.pw_uid, unprivileged_user.pw_gid)
    return vol, mnt


def test_mount_without_dev_fuse_access_explains(unprivileged_user, volume_for, world_dir):
    vol, mnt = volume_for
    proc = run_as(unprivileged_user, world_dir, "mount", str(vol), str(mnt))
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback" not in err
    assert "no access to /dev/fuse" in err and "FUSE could not mount" in err, err
    assert "log: " in err and ".log" in err, err
    # the tail of the log: libfuse's own message is there
    assert "last lines" in err and "Permission denied" in err, err
    assert not os.path.ismount(mnt)


def test_foreground_mount_failure_has_no_traceback(unprivileged_user, volume_for, world_dir):
    vol, mnt = volume_for
    proc = run_as(unprivileged_user, world_dir, "mount", "-f", str(vol), str(mnt))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr
    assert "hammer: FUSE could not mount" in proc.stderr
    assert "no access to /dev/fuse" in proc.stderr
