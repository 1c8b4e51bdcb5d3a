"""The pfs-* and mirror-* commands on unmounted volumes, run as a user would (local pipes)."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import time

import pytest
from mirror_helpers import assert_replica, history, visible

from conftest import hammer_env, run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.fs import FileSystem
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ


def open_store(path, readonly=False):
    return Store.open(FileDevice(str(path), readonly=readonly), readonly=readonly)


def shared_uuid(vol_spec) -> str:
    out = run_hammer("pfs-status", vol_spec).stdout
    return out.split("shared-uuid=")[1].split()[0]


@pytest.fixture
def vols(tmp_path):
    """A master volume with PFS #1 holding a small tree, and a slave volume with slave #1."""
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    run_hammer("newfs", "-L", "master", "--size", "64M", m)
    run_hammer("newfs", "-L", "slave", "--size", "64M", s)
    run_hammer("pfs-master", f"{m}:1", "label=data")
    run_hammer("pfs-slave", f"{s}:1", f"shared-uuid={shared_uuid(f'{m}:1')}")
    fill(m, 1, files=20)
    return m, s


def fill(vol, pfs, files, size=3000, seed=0, commits=4):
    """Files, a directory, a symlink, a hard link, xattrs; several commits."""
    rnd = random.Random(seed)
    store = open_store(vol)
    fs = FileSystem(store, pfs)
    d = fs.mkdir(ROOT_OBJ, b"dir%d" % seed, 0o755)
    for i in range(files):
        ino = fs.create(d.obj_id, b"f%05d" % i, 0o644)
        fs.write(ino.obj_id, 0, rnd.randbytes(rnd.randint(0, size)))
        if i % 7 == 0:
            fs.setxattr(ino.obj_id, b"user.k", b"v%d" % i)
        if i % (max(1, files // commits)) == 0:
            store.commit()
    fs.symlink(d.obj_id, b"link", b"f00000")
    fs.link(fs.lookup(d.obj_id, b"f00001").obj_id, ROOT_OBJ, b"hard%d" % seed)
    store.commit()
    store.close()


def change(vol, pfs, seed):
    """Modify, truncate, rename and delete some files of fill()'s tree."""
    store = open_store(vol)
    fs = FileSystem(store, pfs)
    d = fs.lookup(ROOT_OBJ, b"dir0")
    fs.write(fs.lookup(d.obj_id, b"f00002").obj_id, 10, b"changed %d" % seed)
    fs.truncate(fs.lookup(d.obj_id, b"f00003").obj_id, 5)
    fs.rename(d.obj_id, b"f00004", ROOT_OBJ, b"moved%d" % seed)
    fs.unlink(d.obj_id, b"f00005")
    fs.create(d.obj_id, b"new%d" % seed, 0o600)
    store.commit()
    store.close()


def check_replica(m, s, mpfs=1, spfs=1):
    ms, ss = open_store(m, True), open_store(s, True)
    try:
        end = assert_replica(ms, mpfs, ss, spfs)
        assert end == ms.last_committed_tid
        return end
    finally:
        ms.close()
        ss.close()


def test_copy_incremental_and_status(vols):
    m, s = vols
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    check_replica(m, s)
    change(m, 1, seed=1)
    out = run_hammer("mirror-copy", "-v", f"{m}:1", f"{s}:1")
    assert "synced to 0x" in out.stderr
    check_replica(m, s)
    status = run_hammer("pfs-status", f"{s}:1").stdout
    assert "operating as a SLAVE" in status and "newest-commit-age=" in status
    for field in ("sync-beg-tid=0x", "sync-end-tid=0x", "shared-uuid=", "unique-uuid=",
                  "label="):
        assert field in status


def test_read_write_pipe_and_dump(vols):
    m, s = vols
    raw = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", f"{m}:1"],
                         capture_output=True, env=hammer_env(), check=True).stdout
    dump = run_hammer("mirror-dump", input=raw).stdout
    assert dump.splitlines()[0] == "HELLO role=source" and "SYNC 0x" in dump
    assert dump.splitlines()[-1] == "TERM"
    run_hammer("mirror-write", f"{s}:1", input=raw)
    check_replica(m, s)
    # the same stream again: refused, nothing changes
    before = snapshot(s)
    out = run_hammer("mirror-write", f"{s}:1", input=raw, check=False)
    assert out.returncode != 0 and "already applied" in out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(s) == before


def snapshot(vol, pfs=1):
    st = open_store(vol, True)
    try:
        return history(st, pfs, 1 << 63), st.get_pfs(pfs)
    finally:
        st.close()


def test_corrupt_and_truncated_streams_leave_slave_unchanged(vols):
    m, s = vols
    raw = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", "-S", "4k",
                          f"{m}:1"], capture_output=True, env=hammer_env(), check=True).stdout
    rnd = random.Random(5)
    for _ in range(3):
        before = snapshot(s)
        bad = bytearray(raw)
        bad[rnd.randrange(len(raw))] ^= 0x40
        out = run_hammer("mirror-write", f"{s}:1", input=bytes(bad), check=False)
        assert out.returncode != 0 and "hammer:" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        after = snapshot(s)
        # at most some complete batches were applied: the slave sits on a sync point
        end = after[1].sync_end_tid
        ms = open_store(m, True)
        assert after[0] == history(ms, 1, end)
        ms.close()
        assert end >= before[1].sync_end_tid
    out = run_hammer("mirror-write", f"{s}:1", input=raw[: len(raw) // 2], check=False)
    assert out.returncode != 0 and "truncated" in out.stderr
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    check_replica(m, s)


def test_refusals(vols, tmp_path):
    m, s = vols
    run_hammer("pfs-slave", f"{s}:2", "shared-uuid=11111111-2222-3333-4444-555555555555")
    out = run_hammer("mirror-copy", f"{m}:1", f"{s}:2", check=False)
    assert out.returncode != 0 and "shared-uuid mismatch" in out.stderr
    run_hammer("pfs-master", f"{s}:3")
    out = run_hammer("mirror-copy", f"{m}:1", f"{s}:3", check=False)
    assert out.returncode != 0 and "is a master" in out.stderr
    out = run_hammer("pfs-slave", f"{s}:4", check=False)
    assert out.returncode != 0 and "shared-uuid" in out.stderr
    out = run_hammer("mirror-copy", f"{m}:1", tmp_path / "nope.img", check=False)
    assert out.returncode != 0 and "no such volume" in out.stderr
    for res in (out,):
        assert "Traceback" not in res.stderr


def _kill_midway(argv_reader, argv_writer, forward: int, victim: str) -> None:
    """reader | writer through this process: after ``forward`` bytes have passed, SIGKILL
    the reader (the pipe breaks) or the writer."""
    env = hammer_env()
    r = subprocess.Popen(argv_reader, stdout=subprocess.PIPE, env=env,
                         stderr=subprocess.DEVNULL)
    w = subprocess.Popen(argv_writer, stdin=subprocess.PIPE, env=env,
                         stderr=subprocess.DEVNULL)
    passed = 0
    while passed < forward:
        data = r.stdout.read(min(65536, forward - passed))
        if not data:
            break
        w.stdin.write(data)
        w.stdin.flush()
        passed += len(data)
    if victim == "writer":
        time.sleep(0.2)  # let it apply what it has
        w.send_signal(signal.SIGKILL)
    r.send_signal(signal.SIGKILL)
    for p in (r, w):
        with contextlib.suppress(OSError):
            (p.stdout or p.stdin).close()
        p.wait(60)


@pytest.mark.slow
def test_kill_reader_or_writer_mid_bulk_copy_then_resume(tmp_path):
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    run_hammer("newfs", "--size", "128M", m)
    run_hammer("newfs", "--size", "128M", s)
    run_hammer("pfs-master", f"{m}:1")
    run_hammer("pfs-slave", f"{s}:1", f"shared-uuid={shared_uuid(f'{m}:1')}")
    fill(m, 1, files=300, size=20000, commits=30)
    py = [sys.executable, "-m", "hammerfs"]
    reader = [*py, "mirror-read", "-S", "256k", f"{m}:1"]
    total = len(subprocess.run(reader, capture_output=True, env=hammer_env(),
                               check=True).stdout)
    ends = []
    rnd = random.Random(11)
    for fraction in (0.25, 0.5, 0.8):
        begin = snapshot(s)[1].sync_end_tid
        # one-way resume: read from just after the slave's sync point
        argv = [*reader, f"0x{begin + 1:x}"] if begin > 1 else reader
        _kill_midway(argv, [*py, "mirror-write", f"{s}:1"], int(total * fraction * 0.6),
                     rnd.choice(["reader", "writer"]))
        st, ms = open_store(s, True), open_store(m, True)
        end = st.get_pfs(1).sync_end_tid
        # wherever it stopped, the slave is exactly at a sync point of the master
        assert visible(st, 1, end) == visible(ms, 1, end)
        assert history(st, 1, 1 << 63) == history(ms, 1, end)
        last = ms.last_committed_tid
        st.close()
        ms.close()
        ends.append(end)
    assert any(1 < e < last for e in ends), "a kill landed in the middle of the bulk copy"
    assert ends == sorted(ends), "each run continued from the last sync point"
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    check_replica(m, s)
    change(m, 1, seed=3)
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    check_replica(m, s)


def test_failover_and_reverse_mirror(vols):
    m, s = vols
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    common = snapshot(s)[1].sync_end_tid
    change(m, 1, seed=7)  # the master changes, then "dies" before mirroring it
    out = run_hammer("pfs-upgrade", f"{s}:1")
    assert "now a master" in out.stdout
    change(s, 1, seed=8)  # the new master takes writes
    run_hammer("pfs-downgrade", f"{m}:1")
    assert "downgraded" in run_hammer("pfs-status", f"{m}:1").stdout
    out = run_hammer("mirror-copy", "-v", f"{s}:1", f"{m}:1")
    check_replica(s, m)
    # incremental: far fewer records than the tree holds
    ms = open_store(m, True)
    names = {r.key for r in ms.scan((1, 0, 0, 0), (1, 1 << 63, 0xFFFF, 1 << 63),
                                    asof=ms.get_pfs(1).sync_end_tid)}
    ms.close()
    assert names and common < snapshot(m)[1].sync_end_tid
    assert "moved7" not in out.stdout


def test_pfs_update_destroy(vols):
    m, s = vols
    run_hammer("pfs-update", f"{s}:1", "label=backup", "prune-min=2h")
    st = run_hammer("pfs-status", f"{s}:1").stdout
    assert 'label="backup"' in st and "prune-min=0/02:00:00" in st
    out = run_hammer("pfs-update", f"{s}:1", "colour=red", check=False)
    assert out.returncode != 0 and "unknown PFS option" in out.stderr
    run_hammer("pfs-destroy", f"{m}:1")
    out = run_hammer("pfs-status", f"{m}:1", check=False)
    assert out.returncode != 0 and "does not exist" in out.stderr
    out = run_hammer("pfs-destroy", f"{m}:0", check=False)
    assert out.returncode != 0 and "cannot be destroyed" in out.stderr



# A cheap key derivation keeps the test fast; unlocking itself is the luks tests' subject.
FAST_KDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


def test_encrypted_volumes_each_with_its_own_key(tmp_path):
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    k1.write_text("master secret\n")
    k2.write_text("slave secret\n")
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", k1, "-L", "sec_master", "--size", "64M", m)
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", k2, "-L", "sec_slave", "--size", "64M", s)
    run_hammer("pfs-master", "--key-file", k1, f"{m}:1")
    out = run_hammer("pfs-status", "--key-file", k1, f"{m}:1").stdout
    uuid = out.split("shared-uuid=")[1].split()[0]
    run_hammer("pfs-slave", "--key-file", k2, f"{s}:1", f"shared-uuid={uuid}")
    run_hammer("mirror-copy", "--source-key-file", k1, "--target-key-file", k2,
               f"{m}:1", f"{s}:1")
    # the slave side never sees the master's key: a one-way pipe, each side its own key
    raw = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", "--key-file", k1,
                          f"{m}:1"], capture_output=True, env=hammer_env(), check=True).stdout
    out = run_hammer("mirror-write", "--key-file", k2, f"{s}:1", input=raw, check=False)
    assert "already applied" in out.stderr
    wrong = run_hammer("pfs-status", "--key-file", k1, f"{s}:1", check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    st = run_hammer("pfs-status", "--key-file", k2, f"{s}:1").stdout
    assert "sync-end-tid=0x0000000000000001" not in st and "SLAVE" in st
