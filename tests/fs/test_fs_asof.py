"""HAMMER's rule for history views: as of a TID, atime and mtime read as ctime (so a
snapshot's `tar | md5sum` is reproducible); live views and slaves show the real times."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from fs_helpers import ForkedMount, memory_store, store_kinds

from conftest import run_hammer
from hammerfs.fs import FileSystem, Namespace, init_pfs_root
from hammerfs.fs.history import stored_inode
from hammerfs.store.pfs import PFS_SLAVE, PfsData
from hammerfs.store.records import ROOT_OBJ

R = ROOT_OBJ
T_ATIME, T_MTIME = 1_400_000_000_000_000_001, 1_400_000_000_000_000_002


@pytest.mark.parametrize("kind", store_kinds())
def test_history_views_lock_times_but_live_and_slave_views_do_not(kind, tmp_path):
    store = kind(tmp_path)
    init_pfs_root(store, 0)
    fs = FileSystem(store, 0)
    f = fs.create(R, b"f", 0o644).obj_id
    fs.setattr(f, atime=T_ATIME, mtime=T_MTIME)
    tid = store.commit()
    live = fs.getattr(f)
    assert (live.atime, live.mtime) == (T_ATIME, T_MTIME)
    old = Namespace(store, 0).view(0, tid).getattr(f)
    assert old.atime == old.mtime == old.ctime == live.ctime
    assert (stored_inode(FileSystem(store, 0, tid), f).mtime) == T_MTIME  # undo sees the truth
    # a slave's replicated state keeps the master's times (it is a copy of a live tree)
    store.put_pfs(1, PfsData(mirror_flags=PFS_SLAVE, sync_end_tid=tid))
    for rec in store.scan((0, 0, 0, 0), (0, 1 << 63, 0x14, 0)):
        if rec.rec_type != 0x15:
            store.put((1, *rec.reckey[1:]), rec.data)
    end = store.commit()
    store.put_pfs(1, PfsData(mirror_flags=PFS_SLAVE, sync_end_tid=end))
    store.commit()
    slave = Namespace(store, 0).view(1, None).getattr(f)
    assert (slave.atime, slave.mtime) == (T_ATIME, T_MTIME)
    store.close()


def tar_md5(path: str) -> str:
    out = subprocess.run(["tar", "-C", path, "-cf", "-", "."], capture_output=True, check=True)
    return hashlib.md5(out.stdout).hexdigest()


def test_tar_of_a_snapshot_is_reproducible(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp):
        os.makedirs(f"{mp}/d/sub")
        for i in range(5):
            with open(f"{mp}/d/sub/f{i}", "wb") as f:
                f.write(os.urandom(1000 * i))
            os.utime(f"{mp}/d/sub/f{i}", ns=(T_ATIME, T_MTIME))
        tid = run_hammer("synctid", str(mp)).stdout.strip()
        snap = f"{mp}/d@@{tid}"
        first = tar_md5(snap)
        st = os.stat(f"{snap}/sub/f3")
        assert st.st_atime_ns == st.st_mtime_ns == st.st_ctime_ns != T_MTIME
        assert os.stat(f"{mp}/d/sub/f3").st_mtime_ns == T_MTIME  # the live file: real time
        for i in range(5):  # reading and changing the live tree leaves the snapshot alone
            with open(f"{mp}/d/sub/f{i}", "r+b") as f:
                f.read()
                f.write(b"changed")
        assert tar_md5(snap) == first
        assert tar_md5(f"{mp}/d") != first
