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
from hammerfs.mirror import stream as s
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


# -- end-to-end record checksums (issue 11, point 4) --------------------------------------------

def _reframe(raw: bytes, edit) -> bytes:
    """Parse a stream, let ``edit(frames)`` change payloads, re-encode with valid frame
    checks: what a buggy relay or a hostile peer re-framing the stream produces."""
    reader = s.FrameReader(io.BytesIO(raw))
    frames = []
    while True:
        frame = reader.recv()
        frames.append([frame.type, bytearray(frame.payload)])
        if frame.type == s.TERM:
            break
    edit(frames)
    return b"".join(s.encode_frame(t, bytes(p), i) for i, (t, p) in enumerate(frames))


def _flip_rec_data(frames, which: int = -1) -> None:
    recs = [p for t, p in frames if t == s.REC and len(p) > 70]
    recs[which][-1] ^= 0x40  # the last data byte


def test_cli_corrupted_record_payload_is_refused_then_copy_completes(tmp_path):
    from test_cli import check_replica, fill, shared_uuid

    m, s_img = tmp_path / "m.img", tmp_path / "s.img"
    run_hammer("newfs", "--size", "64M", m)
    run_hammer("newfs", "--size", "64M", s_img)
    run_hammer("pfs-master", f"{m}:1")
    run_hammer("pfs-slave", f"{s_img}:1", f"shared-uuid={shared_uuid(f'{m}:1')}")
    fill(m, 1, files=12, size=9000)
    raw = run_hammer_bytes("mirror-read", f"{m}:1")
    bad = _reframe(raw, _flip_rec_data)
    before = _sha(s_img)
    out = run_hammer("mirror-write", f"{s_img}:1", input=bad, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "end-to-end checksum" in out.stderr, out.stderr
    assert _sha(s_img) == before
    # the slave is not "up to date": a copy brings it exactly to the master
    run_hammer("mirror-copy", f"{m}:1", f"{s_img}:1")
    check_replica(m, s_img)


def run_hammer_bytes(*args) -> bytes:
    import subprocess
    import sys

    from conftest import hammer_env
    proc = subprocess.run([sys.executable, "-m", "hammerfs", *map(str, args)],
                          capture_output=True, env=hammer_env(), timeout=120, check=True)
    return proc.stdout


@pytest.mark.parametrize("where", ["inline", "extent"])
def test_corrupted_record_in_a_large_batch_is_rolled_back(slave_vol, where):
    """Past APPLY_BUFFER records are applied as they stream: a damaged one later in the
    batch still leaves the slave at its last sync point."""
    from hammerfs.mirror import writer

    path, master = slave_vol
    for i in range(40):
        master.put((1, 100 + i, RT, 0), os.urandom(300 if where == "inline" else 60_000))
    master.commit()
    raw = io.BytesIO()
    from hammerfs.mirror.local import read_stream
    read_stream(master, 1, raw)
    bad = _reframe(raw.getvalue(), _flip_rec_data)
    old = writer.APPLY_BUFFER
    writer.APPLY_BUFFER = 4096
    try:
        with pytest.raises(s.StreamError, match="end-to-end checksum"):
            _write(path, bad)
    finally:
        writer.APPLY_BUFFER = old
    with Store.open(FileDevice(str(path)), readonly=True) as st:
        assert st.get_pfs(1).sync_end_tid == 1
        assert list(st.scan(*pfs_ops.pfs_range(1), history=True)) == []


def test_record_checksum_is_the_one_the_masters_btree_holds(tmp_path):
    with Store.create(FileDevice(str(tmp_path / "v.img"), create_size=16 << 20), "v") as st:
        for n in (600, 4096, 5000, 70_000):
            st.put((1, n, RT, 0), os.urandom(n))
        st.commit()
        for rec in st.scan((1, 0, 0, 0), (1, 1 << 40, 0xFFFF, 0)):
            val = st.tree.exact(rec.fullkey)
            assert val[4] != 0  # stored in an extent
            assert s.record_checksum(rec.data) == val[5]


def test_old_protocol_peer_gets_a_clear_protocol_version_error(slave_vol):
    path, master = slave_vol
    raw = craft_stream(master.get_pfs(1), [(1, 2000, [("rec", _rec())], None)])

    def as_version_1(frames):
        frames[0][1][8:10] = (1).to_bytes(2, "little")
    old = _reframe(raw, as_version_1)
    before = _sha(path)
    with pytest.raises(s.ProtocolVersionError, match="protocol version 1 is not supported"):
        _write(path, old)
    assert _sha(path) == before
    # two-way: the refusal travels to the old peer as a fatal ERROR frame
    out = io.BytesIO()
    with Store.open(FileDevice(str(path))) as st, pytest.raises(s.ProtocolVersionError):
        from hammerfs.mirror.writer import Target
        Target(st, 1, io.BytesIO(old), out).run()
    frames = s.FrameReader(io.BytesIO(out.getvalue()))
    got = [frames.recv() for _ in range(3)]
    assert got[2].type == s.ERROR
    err = s.decode_error(got[2], "target")
    assert err.fatal and "protocol version" in str(err)


def test_rollback_can_always_clear_a_delete_tid(tmp_path):
    """Clearing a delete TID (how rollback and pfs-upgrade repair a slave) is never refused."""
    with Store.create(FileDevice(str(tmp_path / "v.img"), create_size=8 << 20), "v") as st:
        st.insert_raw(_rec(ctid=1000, dtid=2000, dts=5))
        assert st.set_delete_tid((1, 100, RT, 0), 1000, 0, 0)
        assert st.get((1, 100, RT, 0)).delete_tid == 0
        with pytest.raises(HammerError):
            st.set_delete_tid((1, 100, RT, 0), 1000, 1000, 1)
