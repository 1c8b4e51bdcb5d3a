"""Real volumes mounted with `hammer mount` (daemonized), plain and encrypted: persistence
across remounts, and faults (a full volume, a flipped bit, a killed mount process)."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest
from fs_helpers import slurp

from conftest import run_hammer
from hammerfs.control.server import mount_key, runtime_dir

KEY = b"correct horse battery staple\n"


@pytest.fixture
def vol(tmp_path):
    path = tmp_path / "vol.img"
    run_hammer("newfs", "-L", "t", "--size", "128M", path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield path, str(mp)
    if os.path.ismount(mp):
        run_hammer("umount", mp, check=False)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def mount(volume, mp, *extra):
    run_hammer("mount", *extra, volume, mp)
    assert os.path.ismount(mp)


def owner_pid(mp: str) -> int:
    with open(os.path.join(runtime_dir(), mount_key(os.path.realpath(mp)) + ".json")) as f:
        return json.load(f)["pid"]


def test_remount_keeps_data_inode_numbers_and_history(vol):
    path, mp = vol
    mount(path, mp)
    os.makedirs(f"{mp}/a/b")
    with open(f"{mp}/a/b/f", "wb") as f:
        f.write(b"first")
    inos = {p: os.stat(f"{mp}/{p}").st_ino for p in ("a", "a/b", "a/b/f")}
    tid = run_hammer("synctid", mp).stdout.strip()
    with open(f"{mp}/a/b/f", "wb") as f:
        f.write(b"second")
    run_hammer("umount", mp)
    assert not os.path.ismount(mp)
    held = run_hammer("mount", path, mp, check=False)  # the volume is free again
    assert held.returncode == 0, held.stderr
    assert {p: os.stat(f"{mp}/{p}").st_ino for p in inos} == inos
    assert slurp(f"{mp}/a/b/f") == b"second"  # a clean unmount committed it
    assert slurp(f"{mp}/a/b/f@@{tid}") == b"first"
    twice = run_hammer("mount", path, f"{mp}/a", check=False)
    assert twice.returncode == 1 and "Traceback" not in twice.stderr
    run_hammer("umount", mp)
    # a read-only as-of mount shows the old tree
    mount(path, mp, "-o", f"asof={tid}")
    assert slurp(f"{mp}/a/b/f") == b"first"
    with pytest.raises(OSError) as err:
        os.open(f"{mp}/new", os.O_CREAT | os.O_WRONLY)
    assert err.value.errno == errno.EROFS
    run_hammer("umount", mp)
    # history works on the unmounted volume too
    out = run_hammer("history", path, "--path", "a/b/f").stdout
    assert tid in out
    assert run_hammer("undo", "-t", tid, path, "--path", "a/b/f").stdout == "first"


def test_encrypted_volume_mounts_with_its_key(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY)
    path = tmp_path / "enc.img"
    run_hammer("newfs", "--encrypt", "--key-file", key, "--size", "64M", path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    data = random.Random(3).randbytes(3 << 20)
    try:
        run_hammer("mount", "--key-file", key, path, mp)
        with open(f"{mp}/secret", "wb") as f:
            f.write(data)
        run_hammer("umount", mp)
        assert data[:4096] not in path.read_bytes()  # only ciphertext on disk
        bad = tmp_path / "bad"
        bad.write_bytes(b"wrong\n")
        wrong = run_hammer("mount", "--key-file", bad, path, mp, check=False)
        assert wrong.returncode != 0 and not os.path.ismount(mp)
        assert "Traceback" not in wrong.stderr
        run_hammer("mount", "--key-file", key, path, mp)
        assert slurp(f"{mp}/secret") == data
    finally:
        run_hammer("umount", mp, check=False)


def test_kill_9_loses_nothing_fsynced(vol):
    path, mp = vol
    mount(path, mp)
    payload = os.urandom(300_000)
    with open(f"{mp}/durable", "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.kill(owner_pid(mp), signal.SIGKILL)
    time.sleep(0.2)
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    mount(path, mp)
    assert slurp(f"{mp}/durable") == payload
    run_hammer("umount", mp)


def test_flipped_bit_gives_eio_for_the_damaged_file_only(vol):
    path, mp = vol
    mount(path, mp)
    rng = random.Random(5)
    victim, bystander = rng.randbytes(64 << 10), rng.randbytes(64 << 10)
    for name, data in (("victim", victim), ("bystander", bystander)):
        with open(f"{mp}/{name}", "wb") as f:
            f.write(data)
    run_hammer("umount", mp)
    image = bytearray(path.read_bytes())
    at = image.find(victim[:4096])
    assert at > 0
    image[at + 100] ^= 0x10
    path.write_bytes(image)
    mount(path, mp)
    with pytest.raises(OSError) as err:
        slurp(f"{mp}/victim")
    assert err.value.errno == errno.EIO
    assert slurp(f"{mp}/bystander") == bystander
    log = os.path.join(runtime_dir(), mount_key(os.path.realpath(mp)) + ".log")
    with open(log) as f:
        assert f"checksum failure at {hex(at - at % 4096)}" in f.read()
    run_hammer("umount", mp)


def fill_until_enospc(path: str, chunk: bytes) -> int:
    """Append ``chunk`` to ``path`` until the volume is full; returns the chunks written."""
    n = 0
    with pytest.raises(OSError) as err, open(path, "wb") as f:
        for n in range(64):  # noqa: B007
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    assert err.value.errno == errno.ENOSPC
    return n


def test_full_volume_returns_enospc_and_stays_usable(tmp_path):
    path = tmp_path / "small.img"
    run_hammer("newfs", "--size", "16M", path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    mount(path, str(mp))
    try:
        chunk = os.urandom(1 << 20)
        assert fill_until_enospc(f"{mp}/fill", chunk) > 2
        with open(f"{mp}/keep", "wb") as f:  # small metadata changes may still fail cleanly
            pass
        assert slurp(f"{mp}/fill")[: 1 << 20] == chunk
        old = run_hammer("synctid", mp).stdout.strip()
        os.unlink(f"{mp}/fill")  # deletes proceed on a full volume
        assert "fill" not in os.listdir(mp)
        sv = os.statvfs(mp)
        assert sv.f_bfree < sv.f_blocks
        with pytest.raises(OSError) as err, open(f"{mp}/again", "wb") as f:
            f.write(chunk)  # history still holds the deleted data (even the create may fail)
            f.flush()
            os.fsync(f.fileno())
        assert err.value.errno == errno.ENOSPC
        if os.path.exists(f"{mp}/again"):
            os.unlink(f"{mp}/again")
        assert slurp(f"{mp}/@@{old}/fill")[: 1 << 20] == chunk
        # prune-everything destroys that history, and the space comes back
        out = run_hammer("prune-everything", mp).stdout
        assert re.search(r"destroyed [1-9]\d* history versions?, freed ([1-9]\d*\.\d) MiB",
                         out), out
        assert float(re.search(r"freed (\S+) MiB", out).group(1)) >= 2
        with open(f"{mp}/again", "wb") as f:
            f.write(chunk * 2)
        assert slurp(f"{mp}/again") == chunk * 2
        assert not os.path.exists(f"{mp}/@@{old}/fill")  # that history is gone
    finally:
        run_hammer("umount", mp)
    assert run_hammer("scrub", path).stdout.strip().endswith("no damage found")
    # the unmounted volume: only the overwritten root-directory versions are left to prune
    assert re.match(r"PFS 0: destroyed [1-9]\d* history versions?",
                    run_hammer("prune-everything", path).stdout)
    missing = run_hammer("prune-everything", f"{path}:00009", check=False)
    assert missing.returncode == 1 and "PFS 9 does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    mount(path, str(mp))
    assert "fill" not in os.listdir(mp) and slurp(f"{mp}/again") == chunk * 2
    run_hammer("umount", mp)


def test_differential_operations_survive_remount(vol, tmp_path):
    from test_fs_fuse import Differ, settle_times, snapshot_tree
    path, mp = vol
    ref = tmp_path / "ref"
    ref.mkdir()
    mount(path, mp)
    differ = Differ(mp, str(ref), seed=4242)
    for i in range(200):
        op, rel, (got, want) = differ.step()
        assert got == want, f"op {i} {op} {rel}: mount {got} vs reference {want}"
    settle_times(mp)
    settle_times(str(ref))
    expected = snapshot_tree(str(ref))
    assert snapshot_tree(mp) == expected
    run_hammer("umount", mp)
    mount(path, mp)
    assert snapshot_tree(mp) == expected  # the same tree after unmount and remount
    differ.roots = (mp, str(ref))
    for i in range(100):
        op, rel, (got, want) = differ.step()
        assert got == want, f"after remount, op {i} {op} {rel}: {got} vs {want}"
    settle_times(mp)
    settle_times(str(ref))
    assert snapshot_tree(mp) == snapshot_tree(str(ref))
    run_hammer("umount", mp)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                    reason="a loop device needs root")
@pytest.mark.parametrize("periodic", [False, True], ids=["final", "periodic-then-final"])
def test_umount_fails_when_the_final_commit_fails(tmp_path, periodic):
    """The device turns read-only under the mount (blockdev --setro): the last changes can
    not be committed, so `hammer umount` must say so and exit non-zero (issue 11.9), whether
    only the final commit fails or a periodic one failed before it."""
    image = tmp_path / "loop.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                         text=True, check=True).stdout.strip()
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        run_hammer("newfs", dev)
        mount(dev, str(mp))
        with open(mp / "kept", "w") as f:
            f.write("committed")
        run_hammer("synctid", mp)
        subprocess.run(["blockdev", "--setro", dev], check=True)
        with open(mp / "lost", "w") as f:
            f.write("never committed")
        if periodic:
            time.sleep(2.5)  # the mount's 1 s commit fails first
        res = run_hammer("umount", mp, check=False)
        assert res.returncode == 1, res.stderr
        assert "commit failed" in res.stderr and "Traceback" not in res.stderr
        assert not os.path.ismount(mp)
        subprocess.run(["blockdev", "--setrw", dev], check=True)
        mount(dev, str(mp))  # the volume is intact as of its last commit
        assert slurp(mp / "kept") == b"committed" and not os.path.exists(mp / "lost")
        assert run_hammer("umount", mp, check=False).returncode == 0
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        subprocess.run(["blockdev", "--setrw", dev], capture_output=True)
        for _ in range(50):  # the mount process may still hold the device for a moment
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
