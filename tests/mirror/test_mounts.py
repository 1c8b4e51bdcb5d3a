"""The user's workflow end to end: two encrypted volumes mounted through FUSE, a slave PFS
created through the slave's mount, mirror-stream between the mounts, `cp -a` on the master
appearing on the slave; link drops, failover and reverse mirroring through mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from test_cli import FAST_KDF

from conftest import hammer_env, run_hammer


def tree_signature(root) -> dict[str, tuple]:
    """Everything a replica must reproduce: types, modes, owners, sizes, mtimes, contents,
    symlink targets, xattrs, and which names are hard links of each other."""
    sig, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            group = inodes.setdefault(st.st_ino, len(inodes)) if st.st_nlink > 1 and \
                not stat.S_ISDIR(st.st_mode) else None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body = hashlib.sha256(f.read()).hexdigest()
            else:
                body = None
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for x in os.listxattr(path):
                    xattrs[x] = os.getxattr(path, x)
            sig[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size if not
                        stat.S_ISDIR(st.st_mode) else None, st.st_mtime_ns, body,
                        tuple(sorted(xattrs.items())), group)
    return sig


def make_tree(root, n=40):
    os.makedirs(os.path.join(root, "sub", "deeper"))
    for i in range(n):
        with open(os.path.join(root, "sub", f"f{i}"), "wb") as f:
            f.write(os.urandom(i * 997))
    with open(os.path.join(root, "sub", "deeper", "big"), "wb") as f:
        f.write(os.urandom(3 << 20))
    os.symlink("sub/f1", os.path.join(root, "link"))
    os.link(os.path.join(root, "sub", "f2"), os.path.join(root, "hard"))
    os.setxattr(os.path.join(root, "sub", "f3"), "user.colour", b"blue")
    os.chmod(os.path.join(root, "sub", "f4"), 0o600)
    os.utime(os.path.join(root, "sub", "f5"), ns=(1_000_000_000, 1_234_567_890_123))


def wait_equal(a, b, timeout=10.0) -> float:
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(OSError):
            if tree_signature(a) == tree_signature(b):
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            assert tree_signature(b) == tree_signature(a)
        time.sleep(0.1)


@pytest.fixture
def mounts(tmp_path):
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    for k, text in ((k1, "master key"), (k2, "slave key")):
        k.write_text(text)
        k.chmod(0o600)
    m, s = tmp_path / "master.img", tmp_path / "slave.img"
    fk, fks = tmp_path / "fort_knox", tmp_path / "fort_knox_slave"
    fk.mkdir()
    fks.mkdir()
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", k1, "-L",
               "hammer1_secure_master", "--size", "2G", m)
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", k2, "-L",
               "hammer1_secure_slave", "--size", "2G", s)
    run_hammer("mount", "--key-file", k1, m, fk)
    try:
        run_hammer("mount", "--key-file", k2, s, fks)
        try:
            yield {"m": m, "s": s, "k1": k1, "k2": k2, "fk": fk, "fks": fks}
        finally:
            run_hammer("umount", fks, check=False)
    finally:
        run_hammer("umount", fk, check=False)


def shared_uuid_of(path) -> str:
    return run_hammer("pfs-status", path).stdout.split("shared-uuid=")[1].split()[0]


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "hammerfs", *map(str, args)],
                            env=hammer_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_users_workflow_through_fuse_mounts(mounts, tmp_path):
    fk, fks = mounts["fk"], mounts["fks"]
    uuid = shared_uuid_of(fk)
    run_hammer("pfs-slave", fks / "pfs" / "slave", f"shared-uuid={uuid}")
    slave = fks / "pfs" / "slave"
    assert os.readlink(slave) == "@@0x0000000000000001:00001"
    stream = start("mirror-stream", fk, slave)
    try:
        src = tmp_path / "some" / "tree"
        make_tree(src)
        subprocess.run(["cp", "-a", str(src), str(fk)], check=True)
        # committed about every second by the mount, delivered within 2 s: allow both
        took = wait_equal(fk / "tree", slave / "tree", timeout=10)
        assert took < 6, f"slave lagged {took:.1f}s"
        assert os.readlink(slave).startswith("@@0x") and os.readlink(slave) != \
            "@@0x0000000000000001:00001"
        # renames, deletions, truncates and appends follow too
        os.rename(fk / "tree" / "sub" / "f6", fk / "tree" / "renamed")
        os.unlink(fk / "tree" / "sub" / "f7")
        os.truncate(fk / "tree" / "sub" / "f8", 3)
        with open(fk / "tree" / "sub" / "f9", "ab") as f:
            f.write(b"appended")
        os.removexattr(fk / "tree" / "sub" / "f3", "user.colour")
        wait_equal(fk / "tree", slave / "tree", timeout=10)
        # the slave is read-only, and says how far it is behind
        with pytest.raises(OSError):
            (slave / "tree" / "nope").write_bytes(b"x")
        status = run_hammer("pfs-status", slave).stdout
        assert "operating as a SLAVE" in status and "newest-commit-age=" in status
        # the master's mount knows its slave and how far behind it is
        master_status = run_hammer("pfs-status", fk).stdout
        unique = status.split("unique-uuid=")[1].split()[0]
        assert f"slave unique-uuid={unique} synced-to=0x" in master_status
    finally:
        stop(stream)
    assert stream.returncode is not None
    # one-way pipes through both mounts' control channels; a replay is refused
    (fk / "tree" / "piped").write_bytes(b"through a pipe")
    raw = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", str(fk)],
                         capture_output=True, env=hammer_env(), check=True).stdout
    run_hammer("mirror-write", slave, input=raw)
    wait_equal(fk / "tree", slave / "tree", timeout=5)
    again = run_hammer("mirror-write", slave, input=raw, check=False)
    assert again.returncode != 0 and "already applied" in again.stderr


FAKE_RSH = """#!/bin/sh
# Stands in for ssh: runs the remote command locally and records its pid, so the test can
# cut the "link" by killing it.
echo $$ > {pidfile}
for last; do :; done
eval "exec $last"
"""


def test_stream_reconnects_after_the_link_drops(mounts, tmp_path):
    fk, fks = mounts["fk"], mounts["fks"]
    run_hammer("pfs-slave", fks / "pfs" / "slave", f"shared-uuid={shared_uuid_of(fk)}")
    slave = fks / "pfs" / "slave"
    pidfile = tmp_path / "remote.pid"
    rsh = tmp_path / "fake-rsh"
    rsh.write_text(FAKE_RSH.format(pidfile=pidfile))
    rsh.chmod(0o755)
    env = {"HAMMER_RSH": str(rsh),
           "HAMMER_REMOTE_CMD": f"env PYTHONPATH={hammer_env()['PYTHONPATH']} "
                                f"{sys.executable} -m hammerfs"}
    stream = start("mirror-stream", "--reconnect-delay", "0.5", fk, f"localhost:{slave}",
                   env=env)
    try:
        (fk / "a").write_bytes(b"first")
        wait_equal(fk, slave)
        first_pid = int(pidfile.read_text())
        os.kill(first_pid, signal.SIGKILL)  # the link drops
        (fk / "b").write_bytes(b"second")
        wait_equal(fk, slave, timeout=15)
        assert int(pidfile.read_text()) != first_pid, "mirror-stream reconnected"
        assert stream.poll() is None
    finally:
        stop(stream)


def test_failover_and_reverse_mirroring_through_mounts(mounts):
    fk, fks = mounts["fk"], mounts["fks"]
    data, backup = fk / "pfs" / "data", fks / "pfs" / "data"
    run_hammer("pfs-master", data, "label=data")
    run_hammer("pfs-slave", backup, f"shared-uuid={shared_uuid_of(data)}")
    make_tree(data / "t")
    run_hammer("synctid", data)
    run_hammer("mirror-copy", data, backup)
    wait_equal(data, backup, timeout=5)
    # the master takes one more write that never reaches the slave, then dies
    (data / "lost").write_bytes(b"never mirrored")
    run_hammer("synctid", data)
    run_hammer("pfs-upgrade", backup)
    (backup / "after-failover").write_bytes(b"written on the new master")
    os.unlink(backup / "t" / "sub" / "f10")
    # the old master comes back as a slave and catches up incrementally
    run_hammer("pfs-downgrade", data)
    out = run_hammer("mirror-copy", "-v", backup, data)
    assert "synced to 0x" in out.stderr
    wait_equal(backup, data, timeout=5)
    assert not (data / "lost").exists()
    assert (data / "after-failover").read_bytes() == b"written on the new master"
