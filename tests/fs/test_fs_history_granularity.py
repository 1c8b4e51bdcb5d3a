"""History granularity: a PFS history interval keeps one version per interval, the nohistory
flag none; fsync stays durable; snapshots, undo and mirroring keep their meaning (a version a
snapshot or a mirror read covers is never dropped)."""

from __future__ import annotations

from hammerfs.blockdev.file import FileDevice
from hammerfs.fs import FileSystem, Namespace, history, init_pfs_root
from hammerfs.fs.layout import NOHISTORY, REC_DATA, REC_INODE
from hammerfs.mirror import pfs_ops
from hammerfs.store import Store
from hammerfs.store.records import MAX_U64, ROOT_OBJ


def _volume(tmp_path, pfs=0):
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=64 << 20), "h")
    if pfs:
        pfs_ops.create_master(store, pfs)
    init_pfs_root(store, pfs)
    store.commit()
    return store, FileSystem(store, pfs)


def _versions(store, pfs, obj, rec_type):
    key_lo, key_hi = (pfs, obj, rec_type, 0), (pfs, obj, rec_type, MAX_U64)
    return list(store.scan(key_lo, key_hi, history=True))


def test_interval_keeps_the_last_version_of_each_interval(tmp_path, store_clock):
    store, fs = _volume(tmp_path)
    history.set_history_interval(fs, 3600)
    assert fs.history_interval() == 3600
    f = fs.create(ROOT_OBJ, b"f", 0o644).obj_id
    tids = {}
    for name in (b"A", b"B", b"C"):  # three fsyncs in one hour: each durable at once...
        fs.write(f, 0, name * 5000)
        tids[name] = fs.fsync()
        assert store.last_committed_tid == tids[name]
    data = _versions(store, 0, f, REC_DATA)
    assert [v.data[:1] for v in data] == [b"C"]  # ...but only the last is kept
    store_clock.now += store_clock.HOUR  # the next interval: C was the state at its end, it stays
    fs.write(f, 0, b"D" * 5000)
    tids[b"D"] = fs.fsync()
    assert [v.data[:1] for v in _versions(store, 0, f, REC_DATA)] == [b"C", b"D"]
    assert FileSystem(store, asof=tids[b"C"]).read(f, 0, 5) == b"CCCCC"
    assert fs.read(f, 0, 5) == b"DDDDD"
    ns = Namespace(store, 0)  # undo to the kept version
    history.restore(ns, "f", tids[b"C"])
    assert ns.live(0).read(f, 0, 5) == b"CCCCC"
    store.close()


def test_snapshot_inside_an_interval_keeps_its_state(tmp_path, store_clock):
    store, fs = _volume(tmp_path)
    history.set_history_interval(fs, 3600)
    f = fs.create(ROOT_OBJ, b"f", 0o644).obj_id
    fs.write(f, 0, b"E" * 100)
    snap = history.take_snapshot(fs)
    fs.write(f, 0, b"F" * 100)
    fs.fsync()
    fs.write(f, 0, b"G" * 100)
    fs.fsync()
    assert FileSystem(store, asof=snap.tid).read(f, 0, 3) == b"EEE"
    assert [v.data[:1] for v in _versions(store, 0, f, REC_DATA)] == [b"E", b"G"]
    store.close()


def test_nohistory_keeps_no_versions_and_is_inherited(tmp_path, store_clock):
    store, fs = _volume(tmp_path)
    d = fs.mkdir(ROOT_OBJ, b"scratch", 0o755).obj_id
    fs.set_nohistory(d, True)
    old = fs.create(d, b"old", 0o644).obj_id  # created after: inherits
    fs.fsync()
    assert fs.getattr(old).flags & NOHISTORY
    kept = fs.create(ROOT_OBJ, b"kept", 0o644).obj_id
    assert not fs.getattr(kept).flags & NOHISTORY
    for i in range(5):
        for obj in (old, kept):
            fs.write(obj, 0, bytes([65 + i]) * 3000)
        fs.fsync()
    assert len(_versions(store, 0, old, REC_DATA)) == 1
    assert len(_versions(store, 0, old, REC_INODE)) == 1
    assert len(_versions(store, 0, kept, REC_DATA)) == 5
    fs.unlink(d, b"old")  # no history of a deleted nohistory file either
    fs.fsync()
    assert not _versions(store, 0, old, REC_DATA)
    store.close()


def test_a_cache_invalidation_scan_does_not_pin_history(tmp_path, store_clock):
    """The mount scans changed_since after every control op to invalidate the kernel's
    caches; unlike a mirror's read, that must not make every committed version permanent
    (nohistory files kept every version written before a synctid)."""
    store, fs = _volume(tmp_path)
    d = fs.mkdir(ROOT_OBJ, b"scratch", 0o755).obj_id
    fs.set_nohistory(d, True)
    f = fs.create(d, b"f", 0o644).obj_id
    scan = (0, 0, 0, 0), (0, MAX_U64, 0xFFFF, MAX_U64)
    for i in range(3):
        fs.write(f, 0, bytes([65 + i]) * 3000)
        fs.fsync()
        list(store.changed_since(*scan, 0, pin_history=False))
    assert len(_versions(store, 0, f, REC_DATA)) == 1
    list(store.changed_since(*scan, 0))  # a mirror's read pins what it may have copied
    fs.write(f, 0, b"Z" * 3000)
    fs.fsync()
    assert len(_versions(store, 0, f, REC_DATA)) == 2
    store.close()
