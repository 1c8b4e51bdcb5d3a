"""prune-everything at the API level: all history of one PFS is destroyed, its live state and
every other PFS stay exactly as they were (HAMMER's `hammer prune-everything`)."""

from __future__ import annotations

import errno
import pathlib
import tempfile

import pytest
from fs_helpers import store_kinds
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.errors import ReadOnly
from hammerfs.fs import FileSystem, Namespace, format_tid, init_pfs_root
from hammerfs.fs.history import list_snapshots, prune_everything, take_snapshot
from hammerfs.store.pfs import PFS_SLAVE, PfsData
from hammerfs.store.records import MAX_U64, REC_PFS, REC_SNAPSHOT, ROOT_OBJ

R = ROOT_OBJ


def pfs_range(pfs):
    return (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)


def live_records(store, pfs):
    """Every live record of ``pfs`` but its snapshot records (pruned too) and the PFS table
    on pfs 0 (its descriptor moves)."""
    return [r for r in store.scan(*pfs_range(pfs)) if r.rec_type not in (REC_PFS, REC_SNAPSHOT)]


def history_records(store, pfs):
    return [r for r in store.scan(*pfs_range(pfs), history=True, with_data=False)
            if r.delete_tid != 0 and r.rec_type != REC_PFS]


@pytest.fixture(params=store_kinds())
def store(request, tmp_path):
    s = request.param(tmp_path)
    init_pfs_root(s, 0)
    s.put_pfs(1, PfsData(label="other"))
    init_pfs_root(s, 1)
    s.commit()
    yield s
    s.close()


def test_prune_everything_keeps_live_state_and_drops_history(store):
    fs, other = FileSystem(store, 0), FileSystem(store, 1)
    a = fs.create(R, b"a", 0o644).obj_id
    fs.write(a, 0, b"version one" * 1000)
    gone = fs.create(R, b"gone", 0o644).obj_id
    fs.write(gone, 0, b"deleted later")
    d = fs.mkdir(R, b"d", 0o755).obj_id
    fs.write(fs.create(d, b"c", 0o600).obj_id, 0, b"kept")
    o = other.create(R, b"o", 0o644).obj_id
    other.write(o, 0, b"old")
    old_tid = take_snapshot(fs, "before").tid
    fs.write(a, 0, b"version two")
    fs.truncate(a, 11)
    fs.unlink(R, b"gone")
    other.write(o, 0, b"new")
    store.commit()
    ns = Namespace(store)
    assert ns.resolve(b"/gone@@" + format_tid(old_tid).encode())[1].obj_id == gone
    live0, live1 = live_records(store, 0), live_records(store, 1)
    hist0, hist1 = history_records(store, 0), history_records(store, 1)
    assert hist0 and hist1
    beg_before = store.get_pfs(0).sync_beg_tid

    free_before = store.space().free_bytes
    destroyed = prune_everything(store, 0)

    assert destroyed == len(hist0) + 1  # every old version plus the one snapshot record
    assert history_records(store, 0) == []
    assert store.space().free_bytes > free_before  # the 11 KB first version of a is gone
    assert list_snapshots(fs) == []
    assert live_records(store, 0) == live0
    assert history_records(store, 1) == hist1 and live_records(store, 1) == live1
    assert store.get_pfs(0).sync_beg_tid > max(old_tid, beg_before)
    fs.forget()
    assert fs.read(a, 0, 100) == b"version two"
    assert fs.read(fs.lookup(d, b"c").obj_id, 0, 10) == b"kept"
    ns.forget()
    with pytest.raises(OSError) as err:  # the deleted file is no longer reachable as of then
        ns.resolve(b"/gone@@" + format_tid(old_tid).encode())
    assert err.value.errno == errno.ENOENT
    assert prune_everything(store, 0) == 0  # nothing left to prune
    assert FileSystem(store, 1, asof=old_tid).read(o, 0, 10) == b"old"  # PFS 1 untouched


def test_prune_everything_refuses_a_slave_and_a_missing_pfs(store):
    store.put_pfs(1, store.get_pfs(1).evolve(mirror_flags=PFS_SLAVE))
    store.commit()
    with pytest.raises(ReadOnly, match="slave"):
        prune_everything(store, 1)
    with pytest.raises(OSError, match="does not exist"):
        prune_everything(store, 7)


_keys = st.tuples(st.integers(0, 1), st.integers(2, 5), st.integers(0, 3))
_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), _keys, st.binary(max_size=40)),
    st.tuples(st.just("delete"), _keys, st.none()),
    st.tuples(st.just("commit"), st.none(), st.none()),
), max_size=40)


@pytest.mark.parametrize("make_store", store_kinds())
@settings(max_examples=30, deadline=None)
@given(ops=_ops)
def test_prune_everything_property_live_state_is_unchanged(make_store, ops):
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(pathlib.Path(tmp))
        try:
            _check_prune_keeps_live_state(store, ops)
        finally:
            store.close()


def _check_prune_keeps_live_state(store, ops):
    store.put_pfs(1, PfsData())
    for op, key, data in ops:
        reckey = (key[0], key[1], 0x20, key[2]) if key else None
        if op == "put":
            store.put(reckey, data)
        elif op == "delete":
            store.delete(reckey)
        else:
            store.commit()
    live0 = live_records(store, 0)
    all1 = list(store.scan(*pfs_range(1), history=True))
    prune_everything(store, 0)
    assert history_records(store, 0) == []
    assert live_records(store, 0) == live0
    assert list(store.scan(*pfs_range(1), history=True)) == all1


def test_full_store_unlinks_after_a_commit_and_prune_makes_room(tmp_path):
    from fs_helpers import disk_store

    from hammerfs.errors import NoSpace
    store = disk_store(tmp_path, 16 << 20)
    try:
        init_pfs_root(store, 0)
        fs = FileSystem(store)
        f = fs.create(R, b"fill", 0o644).obj_id
        chunk = bytes(range(256)) * 4096
        with pytest.raises(NoSpace):
            for off in range(0, 64 << 20, len(chunk)):
                fs.write(f, off, chunk)
                store.commit()
        store.commit()  # the mount's committer does this within a second
        fs.unlink(R, b"fill")  # the reserve lets the inode updates of a delete through
        store.commit()
        with pytest.raises(NoSpace):
            fs.write(fs.create(R, b"new", 0o644).obj_id, 0, chunk * 2)
        free = store.space().free_bytes
        assert prune_everything(store, 0) > 0
        assert store.space().free_bytes - free > 8 << 20
        fs.forget()
        new = fs.lookup(R, b"new").obj_id
        fs.write(new, 0, chunk * 2)
        store.commit()
        assert fs.read(new, 0, 3 << 20) == chunk * 2
    finally:
        store.close()


class StepLock:
    """A lock that records how often it is taken and whether the store is scanned under it."""

    def __init__(self) -> None:
        self.held = False
        self.taken = 0

    def __enter__(self):
        self.held = True
        self.taken += 1

    def __exit__(self, *exc):
        self.held = False


def test_prunes_take_the_lock_per_bounded_step_never_across_the_scan(store):
    """Through a mount the prunes get the filesystem lock: they must take it per batch of
    destroys, and scan between batches without it, so the mount keeps serving."""
    from hammerfs.fs.history import prune

    fs = FileSystem(store, 0)
    obj = fs.create(R, b"f", 0o644).obj_id
    for i in range(60):  # 60 committed rewrites: 60+ versions of history
        fs.write(obj, 0, b"%d" % i)
        store.commit()
    take_snapshot(fs, "keep")
    fs.write(obj, 0, b"after the snapshot")
    store.commit()
    lock = StepLock()
    real_scan = store.scan

    def scan(*args, **kwargs):
        if kwargs.get("history"):  # the long scan over all versions of the PFS
            assert not lock.held, "the store is scanned under the filesystem lock"
        return real_scan(*args, **kwargs)

    store.scan = scan
    try:
        assert prune(store, 0, lock=lock, batch=8).destroyed > 8
        steps = lock.taken
        assert steps > 3
        destroyed = prune_everything(store, 0, lock=lock, batch=8)
    finally:
        del store.scan
    assert destroyed > 1 and lock.taken - steps > 3
    assert history_records(store, 0) == []
    assert fs.read(obj, 0, 100) == b"after the snapshot"
