"""Hostile or corrupt streams against an on-disk slave (issue 11, points 3 and 4): every TID
and field is validated before anything is applied, a refused batch writes nothing, and the
volume never holds a state it cannot commit after."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from mirror_helpers import assert_replica, craft_stream

from conftest import run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import HammerError
from hammerfs.mirror import pfs_ops
from hammerfs.mirror.local import copy_local, write_stream
from hammerfs.store import Store
from hammerfs.store.memory import MemoryStore
from hammerfs.store.records import MAX_TID, REC_CONFIG, REC_PFS, Record

RT = 0x20
TOP = (1 << 64) - 1


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def slave_vol(tmp_path):
    """An on-disk slave volume (closed) and the master descriptor it follows."""
    path = tmp_path / "s.img"
    master = MemoryStore("m")
    pfs_ops.create_master(master, 1)
    with Store.create(FileDevice(str(path), create_size=32 << 20), "s") as st:
        pfs_ops.create_slave(st, 1, master.get_pfs(1).shared_uuid)
    return path, master


def _write(path, raw: bytes):
    with Store.open(FileDevice(str(path))) as st:
        return write_stream(st, 1, io.BytesIO(raw))


def _rec(obj=100, rt=RT, key=0, ctid=1000, dtid=0, cts=1, dts=0, data=b"x"):
    return Record(1, obj, rt, key, ctid, dtid, cts, dts, data)


HOSTILE = {
    "tid-top": [(1, TOP, [("rec", _rec(ctid=TOP))], None)],
    "tid-above-ceiling": [(1, MAX_TID + 1, [("rec", _rec(ctid=MAX_TID + 1))], None)],
    "delete-tid-top": [(1, TOP, [("rec", _rec(ctid=1000, dtid=TOP))], None)],
    "obj-id-top": [(1, 2000, [("rec", _rec(obj=TOP))], None)],
    "rec-type-config": [(1, 2000, [("rec", _rec(rt=REC_CONFIG))], None)],
    "rec-type-pfs": [(1, 2000, [("rec", _rec(rt=REC_PFS))], None)],
    "rec-type-zero": [(1, 2000, [("rec", _rec(rt=0))], None)],
    "rec-type-high": [(1, 2000, [("rec", _rec(rt=0x80))], None)],
    "delete-ts-of-live": [(1, 2000, [("rec", _rec(dts=5))], None)],
    "pass-ctid-zero": [(1500, 2000, [("pass", _rec(ctid=0, dtid=1600))], None)],
    "beg-zero": [(0, 2000, [("rec", _rec())], None)],
    "gap": [(5000, 6000, [("rec", _rec(ctid=5500))], None)],
    "sync-count": [(1, 2000, [("rec", _rec())], (2000, 0, 7))],
    # a good record first, then a bad one: the whole batch is refused, nothing written
    "bad-after-good": [(1, TOP, [("rec", _rec(obj=100)), ("rec", _rec(obj=101, ctid=TOP))],
                        None)],
    "second-batch-bad": [(1, 2000, [("rec", _rec())], None),
                         (2001, TOP, [("rec", _rec(obj=101, ctid=TOP))], None)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_stream_is_refused_before_anything_is_written(slave_vol, case):
    path, master = slave_vol
    raw = craft_stream(master.get_pfs(1), HOSTILE[case])
    before = _sha(path)
    with pytest.raises(HammerError) as info:
        _write(path, raw)
    assert str(info.value)
    if case == "second-batch-bad":  # the first, valid batch stays applied; nothing more
        with Store.open(FileDevice(str(path)), readonly=True) as st:
            assert st.get_pfs(1).sync_end_tid == 2000
            assert [r.obj_id for r in st.scan(*pfs_ops.pfs_range(1))] == [100]
        return
    assert _sha(path) == before, "a refused batch wrote to the volume"
    # the volume still commits, and takes an honest stream afterwards
    with Store.open(FileDevice(str(path))) as st:
        assert st.get_pfs(1).sync_end_tid < MAX_TID
        st.put((2, 5, RT, 0), b"still commits")
        assert st.commit() < MAX_TID
        for i in range(3):
            master.put((1, 300 + i, RT, 0), b"honest %d" % i)
        master.commit()
        copy_local(master, 1, st, 1)
        assert_replica(master, 1, st, 1)


def test_tid_at_the_ceiling_is_accepted_and_the_volume_still_commits(slave_vol):
    path, master = slave_vol
    raw = craft_stream(master.get_pfs(1), [(1, MAX_TID, [("rec", _rec(ctid=MAX_TID))], None)])
    _write(path, raw)
    with Store.open(FileDevice(str(path))) as st:
        assert st.get_pfs(1).sync_end_tid == MAX_TID
        st.put((2, 5, RT, 0), b"after")
        assert st.commit() > MAX_TID
    with Store.open(FileDevice(str(path))) as st:
        assert st.get((2, 5, RT, 0)).data == b"after"


@pytest.mark.parametrize("store_kind", ["disk", "memory"])
def test_store_refuses_raw_versions_it_could_not_commit_after(tmp_path, store_kind):
    if store_kind == "disk":
        st = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=8 << 20), "v")
    else:
        st = MemoryStore("v")
    st.put((1, 5, RT, 0), b"live")
    st.commit()
    for bad in (_rec(ctid=TOP), _rec(ctid=MAX_TID + 1), _rec(ctid=10, dtid=TOP),
                _rec(obj=TOP), _rec(ctid=0), _rec(ctid=10, dtid=10), _rec(dts=3)):
        with pytest.raises(HammerError):
            st.insert_raw(bad)
    with pytest.raises(HammerError):
        st.set_delete_tid((1, 5, RT, 0), st.get((1, 5, RT, 0)).create_tid, TOP, 1)
    st.put((1, 6, RT, 0), b"next")
    assert st.commit() < MAX_TID
    st.close()


def test_cli_mirror_write_refuses_tid_overflow_and_volume_stays_usable(tmp_path):
    """The issue's reproduction: a checksum-valid stream with TID 0xffffffffffffffff."""
    m, s_img = tmp_path / "m.img", tmp_path / "s.img"
    run_hammer("newfs", "--size", "64M", m)
    run_hammer("newfs", "--size", "64M", s_img)
    run_hammer("pfs-master", f"{m}:1")
    shared = run_hammer("pfs-status", f"{m}:1").stdout.split("shared-uuid=")[1].split()[0]
    run_hammer("pfs-slave", f"{s_img}:1", f"shared-uuid={shared}")
    run_hammer("pfs-master", f"{s_img}:2")
    with Store.open(FileDevice(str(m)), readonly=True) as st:
        desc = st.get_pfs(1)
    raw = craft_stream(desc, [(1, TOP, [("rec", _rec(ctid=TOP))], None)])
    before = _sha(s_img)
    out = run_hammer("mirror-write", f"{s_img}:1", input=raw, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "TID" in out.stderr, out.stderr
    assert _sha(s_img) == before
    # every PFS of the slave volume still commits; the slave still resyncs
    run_hammer("pfs-update", f"{s_img}:2", "label=still-fine")
    run_hammer("mirror-copy", f"{m}:1", f"{s_img}:1")
    assert "label=still-fine" in run_hammer("pfs-status", f"{s_img}:2").stdout.replace(
        '"', "")
    assert os.path.getsize(s_img) == 64 << 20
