"""Mirroring a PFS with a history interval and nohistory files: the slave stays an exact
replica (a version a mirror read returned is never dropped on the master, so the slave
learns of every end of a version it holds)."""

from __future__ import annotations

from mirror_helpers import assert_replica

from hammerfs.blockdev.file import FileDevice
from hammerfs.fs import FileSystem, history, init_pfs_root
from hammerfs.fs.layout import REC_DATA
from hammerfs.mirror import pfs_ops
from hammerfs.mirror.local import copy_local
from hammerfs.store import Store
from hammerfs.store.memory import MemoryStore
from hammerfs.store.records import MAX_U64, ROOT_OBJ


def _volume(tmp_path):
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=64 << 20), "h")
    pfs_ops.create_master(store, 1)
    init_pfs_root(store, 1)
    store.commit()
    return store, FileSystem(store, 1)


def _data_versions(store, pfs, obj):
    return list(store.scan((pfs, obj, REC_DATA, 0), (pfs, obj, REC_DATA, MAX_U64),
                           history=True))


def test_mirroring_with_interval_and_nohistory_stays_exact(tmp_path, store_clock):
    master, fs = _volume(tmp_path)
    history.set_history_interval(fs, 3600)
    slave = MemoryStore("s")
    pfs_ops.create_slave(slave, 1, master.get_pfs(1).shared_uuid)
    f = fs.create(ROOT_OBJ, b"f", 0o644).obj_id
    g = fs.create(ROOT_OBJ, b"g", 0o644).obj_id
    fs.set_nohistory(g, True)
    fs.write(f, 0, b"1" * 9000)
    fs.write(g, 0, b"1" * 9000)
    fs.fsync()
    copy_local(master, 1, slave, 1)  # the slave now holds version 1: never dropped
    assert_replica(master, 1, slave, 1)
    for v in (b"2", b"3", b"4"):
        fs.write(f, 0, v * 9000)
        fs.write(g, 4096, v * 100)
        fs.fsync()
    copy_local(master, 1, slave, 1)
    end = assert_replica(master, 1, slave, 1)
    view = FileSystem(slave, 1, asof=end)
    assert view.read(f, 0, 9000) == b"4" * 9000
    assert view.read(g, 0, 9000) == b"1" * 4096 + b"4" * 100 + b"1" * 4804
    for store in (master, slave):  # one live version per record, none lost
        for obj in (f, g):
            live = [r for r in _data_versions(store, 1, obj) if not r.delete_tid]
            assert len({r.key for r in live}) == len(live)
    assert [v.data[:1] for v in _data_versions(master, 1, f)] == [b"1", b"4"]
    master.close()
