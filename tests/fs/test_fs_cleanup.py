"""`hammer cleanup` at the API level: the config format and periods, snapshot-driven prune
(every kept snapshot's view and the live state unchanged, the rest of the history gone and
its space freed), expiry, catch-up after downtime, and mirroring after a prune."""

from __future__ import annotations

import contextlib
import datetime
import errno
import time

import pytest
from fs_helpers import disk_store, lock_handovers, rooted_store, store_kinds
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hammerfs import steps as steps_mod
from hammerfs.errors import HammerError
from hammerfs.fs import FileSystem, FsError, Namespace, init_pfs_root
from hammerfs.fs import cleanup as cl
from hammerfs.fs.history import list_snapshots, prune, take_snapshot
from hammerfs.fs.layout import Snapshot
from hammerfs.store import Store
from hammerfs.store.memory import MemoryStore
from hammerfs.store.pfs import PFS_SLAVE, PfsData
from hammerfs.store.records import MAX_U64, REC_CONFIG, REC_PFS, REC_SNAPSHOT, ROOT_OBJ

R = ROOT_OBJ
DAY = 86400 * 10**9


def pfs_range(pfs):
    return (pfs, 0, 0, 0), (pfs, MAX_U64, 0xFFFF, MAX_U64)


def visible(store, pfs, tid=None) -> set:
    return {(r.obj_id, r.rec_type, r.key, r.create_tid, r.data)
            for r in store.scan(*pfs_range(pfs), tid) if r.rec_type != REC_PFS}


def history_of(store, pfs) -> list:
    return [r for r in store.scan(*pfs_range(pfs), history=True, with_data=False)
            if r.delete_tid and r.rec_type != REC_PFS]


@pytest.fixture(params=store_kinds())
def store(request, tmp_path):
    with rooted_store(request.param, tmp_path) as s:
        yield s


# -- config -----------------------------------------------------------------------------------------
def test_config_parses_hammer_format_and_names_bad_lines():
    cfg = cl.parse_config(cl.DEFAULT_CONFIG)
    assert cfg.get("snapshots") == cl.Directive("snapshots", 86400, 60 * 86400)
    assert cfg.get("prune") == cl.Directive("prune", 86400, 300)
    assert cfg.get("recopy").period == 30 * 86400 and cfg.get("dedup") is None  # commented
    assert cl.parse_config("snapshots 0 0 any # comment\n\n").get("snapshots").any_name
    assert cl.parse_config("prune 90 2h\n").get("prune") == cl.Directive("prune", 90, 7200)
    for text, where in [("snapshots 1d 60d\nfrobnicate 1d 5m\n", "line 2: unknown"),
                        ("prune 1x 5m\n", "line 1: bad time"),
                        ("prune 1d\n", "line 1: expected"),
                        ("prune 1d 5m any\n", "line 1: expected"),
                        ("prune 1d 5m\nprune 2d 5m\n", "line 2: prune is given twice"),
                        ("#" * 1100, "longer than 1024")]:
        with pytest.raises(cl.ConfigError, match=where):
            cl.parse_config(text)
    assert cl.format_duration(86400 * 60) == "60d" and cl.format_duration(90) == "90s"


def test_periods_follow_local_midnight_for_whole_days():
    noon = int(datetime.datetime(2026, 3, 10, 12, 0).timestamp()) * 10**9
    late = int(datetime.datetime(2026, 3, 10, 23, 50).timestamp()) * 10**9
    after_midnight = int(datetime.datetime(2026, 3, 11, 0, 10).timestamp()) * 10**9
    assert cl.is_due(86400, None, noon)  # never ran
    assert not cl.is_due(86400, noon, late)
    assert cl.is_due(86400, late, after_midnight)  # 20 minutes, but a new day
    assert not cl.is_due(2 * 86400, late, after_midnight)
    assert cl.is_due(2 * 86400, noon, noon + 2 * DAY)
    assert cl.is_due(86400, noon, noon + 5 * DAY)  # was off for days: catches up once
    assert not cl.is_due(3600, noon, noon + 3599 * 10**9)
    assert cl.is_due(3600, noon, noon + 3600 * 10**9)
    assert cl.is_due(86400, noon, late, force=True)


def test_config_and_state_records_persist(tmp_path):
    s = disk_store(tmp_path)
    init_pfs_root(s, 0)
    cl.save_config(s, 0, "snapshots 1h 2d\nprune 1h 0\n")
    cl.save_state(s, 0, {"snapshots": 5, "prune": 7})
    s.close()
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.store import Store
    s = Store.open(FileDevice(str(tmp_path / "vol.img")))
    assert cl.load_config(s, 0).get("snapshots") == cl.Directive("snapshots", 3600, 2 * 86400)
    assert cl.load_state(s, 0) == {"snapshots": 5, "prune": 7}
    assert s.get((0, R, REC_CONFIG, cl.CONFIG_KEY)) is not None
    with pytest.raises(cl.ConfigError):
        cl.save_config(s, 0, "bogus 1d 1d\n")
    with pytest.raises(FsError) as exc:
        cl.save_config(s, 7, cl.DEFAULT_CONFIG)
    assert exc.value.errno == errno.ENOENT
    s.close()


# -- prune ------------------------------------------------------------------------------------------
def tree(fs: FileSystem) -> dict:
    out, todo = {}, [(b"", R)]
    while todo:
        path, obj = todo.pop()
        ino = fs.getattr(obj)
        if ino.is_dir:
            todo += [(path + b"/" + e.name, e.obj_id) for e in fs.readdir(obj)]
            out[path or b"/"] = "dir"
        else:
            out[path] = fs.read(obj, 0, ino.size)
    return out


def generations(fs: FileSystem, store, n: int, snapshot_every: int):
    """n generations of churn (rewrites, deletes, new files); a snapshot every few.
    Returns ([(snapshot tid, tree)], [(plain tid, names deleted in that generation)])."""
    snaps, plain = [], []
    for gen in range(n):
        for i in range(6):
            name = b"f%d" % i
            with contextlib.suppress(FsError):  # gen 0: not there yet
                fs.unlink(R, name)
            obj = fs.create(R, name, 0o644).obj_id
            fs.write(obj, 0, bytes([gen, i]) * (3000 + 500 * i))
        tmp = fs.create(R, b"tmp%d" % gen, 0o644).obj_id
        fs.write(tmp, 0, b"short-lived" * 1000)
        tid = store.commit()
        fs.unlink(R, b"tmp%d" % gen)
        if gen % snapshot_every == 0:
            snap = take_snapshot(fs, f"gen{gen}").tid  # the copy of its tree, before any prune
            snaps.append((snap, tree(fs_at(store, snap))))
        else:
            plain.append((tid, b"tmp%d" % gen))
        store.commit()
    return snaps, plain


def fs_at(store, tid):
    return FileSystem(store, 0, tid)


def test_prune_keeps_every_snapshot_and_the_live_tree(store):
    ns = Namespace(store, 0)
    fs = ns.live(0)
    snaps, plain = generations(fs, store, 9, 3)
    live = tree(fs)
    before_free = store.space().free_bytes
    n_history = len(history_of(store, 0))
    result = prune(store, 0)
    assert result.complete and 0 < result.destroyed < n_history
    assert tree(fs) == live
    for tid, expected in snaps:
        assert tree(fs_at(store, tid)) == expected
    newest = snaps[-1][0]
    for tid, name in plain:  # short-lived files no snapshot saw are gone for good
        if tid < newest:
            with pytest.raises(FsError):
                fs_at(store, tid).lookup(R, name)
    # every remaining version is needed by a snapshot, or ended after the newest one
    keep = [t for t, _ in snaps]
    for rec in history_of(store, 0):
        assert rec.delete_tid > newest or any(rec.create_tid <= k < rec.delete_tid
                                              for k in keep)
    assert store.get_pfs(0).sync_beg_tid > 1
    if not isinstance(store, MemoryStore):
        assert store.space().free_bytes > before_free  # the space really came back
    assert prune(store, 0).destroyed == 0  # nothing left to do


def test_prune_honours_prune_min_deadline_and_refuses_slaves(store):
    fs = FileSystem(store, 0)
    generations(fs, store, 4, 2)
    store.put_pfs(0, store.get_pfs(0).evolve(prune_min=3600))
    store.commit()
    assert prune(store, 0).destroyed == 0  # all of it ended within the last hour
    assert prune(store, 0, now_ns=time.time_ns() + 2 * 3600 * 10**9).destroyed > 0
    generations(fs, store, 4, 2)
    store.put_pfs(0, store.get_pfs(0).evolve(prune_min=0))
    stopped = prune(store, 0, deadline=time.monotonic() - 1, batch=5)  # past: one batch
    assert not stopped.complete and stopped.destroyed == 5
    assert prune(store, 0).complete
    store.put_pfs(3, PfsData(mirror_flags=PFS_SLAVE))
    with pytest.raises(HammerError, match="slave"):
        prune(store, 3)


RECORD_OP = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("del"), st.integers(0, 7)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("commit")),  # twice: history needs several transactions
    st.tuples(st.just("snap")),
    st.tuples(st.just("unsnap"), st.integers(0, 5)),
    st.tuples(st.just("state"), st.binary(min_size=1, max_size=4)),  # cleanup's own record
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD_OP, max_size=40))
@example([("snap",), ("put", 0, b"a"), ("commit",), ("put", 0, b"b")])  # ends after the newest
@example([("put", 0, b"a"), ("snap",), ("put", 0, b"b"), ("commit",), ("put", 0, b"c"),
          ("commit",), ("snap",), ("del", 0), ("unsnap", 0)])
def test_prune_against_a_model(ops):
    """Records visible at every kept snapshot TID and now are unchanged; every other version
    that ended by the newest snapshot is gone; another PFS is untouched."""
    store = MemoryStore(label="m")
    for pfs in (1, 2):
        store.put_pfs(pfs, PfsData())
    snaps: list[int] = []
    for op in ops:
        if op[0] == "put":
            for pfs in (1, 2):
                store.put((pfs, 100, 0x20, op[1]), op[2])
        elif op[0] == "del":
            store.delete((1, 100, 0x20, op[1]))
        elif op[0] == "commit":
            store.commit()
        elif op[0] == "snap":
            tid = store.commit()
            store.put((1, R, REC_SNAPSHOT, tid), Snapshot(tid, 0, "").encode())
            snaps.append(tid)
        elif op[0] == "state":
            store.put((1, R, REC_CONFIG, cl.STATE_KEY), op[1])
        elif op[0] == "unsnap" and snaps:
            store.delete((1, R, REC_SNAPSHOT, snaps.pop(op[1] % len(snaps))))
    store.commit()
    keep = sorted(s.tid for s in list_snapshots(FileSystem(store, 1)))
    views = {t: visible(store, 1, t) for t in keep}
    live, other = visible(store, 1), set(store.scan(*pfs_range(2), history=True))
    old_history = history_of(store, 1)
    needed = [r for r in old_history
              if (keep and r.delete_tid > keep[-1]) or any(r.create_tid <= k < r.delete_tid
                                                            for k in keep)]
    result = prune(store, 1)
    assert {t: visible(store, 1, t) for t in keep} == views
    assert visible(store, 1) == live
    assert set(store.scan(*pfs_range(2), history=True)) == other
    if keep:  # exactly the versions no snapshot needs are gone
        assert history_of(store, 1) == needed
        assert result.destroyed == len(old_history) - len(needed)
        # a slave synced before the last destroyed (mirrored) deletion would miss it
        gone = [r.delete_tid for r in old_history if r not in needed
                and r.rec_type != REC_CONFIG]
        assert store.get_pfs(1).sync_beg_tid == (max(gone) + 1 if gone else 1)
    else:  # no snapshot: nothing to go by, nothing pruned
        assert history_of(store, 1) == old_history and result.destroyed == 0


# -- cleanup ----------------------------------------------------------------------------------------
def lines(report) -> dict:
    return dict(report.lines)


def test_cleanup_runs_due_directives_and_catches_up(store):
    fs = FileSystem(store, 0)
    generations(fs, store, 3, 100)  # history, but only one snapshot (gen 0)
    day0 = int(datetime.datetime(2026, 5, 1, 3, 0).timestamp()) * 10**9
    first = cl.cleanup(fs, now_ns=day0)
    assert first.config_created and first.snapshot is not None
    assert lines(first)["snapshots"].startswith("run") and lines(first)["prune"].startswith("run")
    assert first.destroyed > 0
    on_disk = isinstance(store, Store)  # reblock moves blocks: a volume has them
    assert lines(first)["reblock"].startswith("run (" if on_disk else "not applicable")
    assert lines(first)["dedup"] == "disabled"
    assert cl.load_config(store, 0).text == cl.DEFAULT_CONFIG
    again = cl.cleanup(fs, now_ns=day0 + 3600 * 10**9)  # same day: nothing is due
    assert lines(again)["snapshots"].startswith("skip") and lines(again)["prune"].startswith("skip")
    assert again.snapshot is None
    forced = cl.cleanup(fs, now_ns=day0 + 3600 * 10**9, force=True)
    assert forced.snapshot is not None and lines(forced)["prune"].startswith("run")
    later = cl.cleanup(fs, now_ns=day0 + 3 * DAY)  # the machine was off: one catch-up run
    assert later.snapshot is not None
    # recopy (every 30 days) last ran at the forced run
    moved = {"reblock": day0 + 3 * DAY, "recopy": day0 + 3600 * 10**9} if on_disk else {}
    assert cl.load_state(store, 0) == {"snapshots": day0 + 3 * DAY, "prune": day0 + 3 * DAY,
                                       **moved}


def test_cleanup_expires_snapshots_and_prunes_what_they_held(store):
    fs = FileSystem(store, 0)
    cl.save_config(store, 0, "snapshots 1d 2d\nprune 1d 0\n")
    now = time.time_ns()
    obj = fs.create(R, b"f", 0o644).obj_id
    fs.write(obj, 0, b"old contents" * 500)
    old = take_snapshot(fs, "old")
    store.put((0, R, REC_SNAPSHOT, old.tid), Snapshot(old.tid, now - 5 * DAY, "old").encode())
    fs.write(obj, 0, b"new contents" * 500)
    store.commit()
    assert fs_at(store, old.tid).read(obj, 0, 12) == b"old contents"
    report = cl.cleanup(fs, now_ns=now)
    assert report.expired == [old.tid] and "expired 1 older than 2d" in lines(report)["snapshots"]
    assert [s.tid for s in list_snapshots(fs)] == [report.snapshot.tid]
    with pytest.raises(FsError):  # its view went with it: the inode version is pruned
        fs_at(store, old.tid).read(obj, 0, 12)
    assert fs.read(obj, 0, 12) == b"new contents"


def test_cleanup_with_snapshots_off_prunes_everything_and_skips_slaves(store):
    fs = FileSystem(store, 0)
    generations(fs, store, 3, 100)
    cl.save_config(store, 0, "snapshots 0 0\nprune 1d 0\nreblock 0 0\n")
    report = cl.cleanup(fs)
    assert "all history" in lines(report)["prune"] and lines(report)["reblock"] == "disabled"
    assert history_of(store, 0) == [] or all(r.rec_type == REC_CONFIG
                                             for r in history_of(store, 0))
    assert list_snapshots(fs) == []
    store.put_pfs(4, PfsData(mirror_flags=PFS_SLAVE))
    init_pfs_root(store, 4)
    slave = cl.cleanup(FileSystem(store, 4))
    assert all(what.startswith("skip (a slave") for _d, what in slave.lines)
    assert cl.load_config(store, 4) is None  # nothing written to the slave


# -- mirroring after a prune --------------------------------------------------------------------------
def test_mirroring_after_a_snapshot_prune():
    from hammerfs.mirror import pfs_ops
    from hammerfs.mirror.local import copy_local

    master = MemoryStore("m")
    pfs_ops.create_master(master, 1)
    init_pfs_root(master, 1)
    fs = FileSystem(master, 1)
    shared = master.get_pfs(1).shared_uuid
    current, lagging = MemoryStore("s1"), MemoryStore("s2")
    for slave in (current, lagging):
        pfs_ops.create_slave(slave, 1, shared)
    fs.write(fs.create(R, b"doomed", 0o644).obj_id, 0, b"x" * 5000)
    master.commit()
    copy_local(master, 1, current, 1)
    copy_local(master, 1, lagging, 1)
    fs.unlink(R, b"doomed")
    master.commit()
    take_snapshot(fs, "after")
    copy_local(master, 1, current, 1)  # received the deletion before the prune
    assert prune(master, 1).destroyed > 0
    fs.write(fs.create(R, b"new", 0o644).obj_id, 0, b"after the prune")
    master.commit()
    copy_local(master, 1, current, 1)  # an up-to-date slave goes on mirroring
    end = current.get_pfs(1).sync_end_tid
    assert FileSystem(current, 1, end).read(
        FileSystem(current, 1, end).lookup(R, b"new").obj_id, 0, 100) == b"after the prune"
    with pytest.raises(FsError):
        FileSystem(current, 1, end).lookup(R, b"doomed")
    with pytest.raises(HammerError, match="pruned"):  # it would keep 'doomed' forever
        copy_local(master, 1, lagging, 1)


def test_cleanup_hands_the_mount_lock_over_in_steps(store, monkeypatch):
    """cleanup through a mount: prune, reblock and the commit-log thinning hold the
    mount's lock in steps (STEP_SECONDS, 0 here: every version destroyed), never the run."""
    monkeypatch.setattr(steps_mod, "STEP_SECONDS", 0.0)
    ns = Namespace(store, 0)
    fs = ns.live(0)
    cl.save_config(store, 0, "snapshots 0 0\nprune 1d 0\n")  # prune-everything
    for gen in range(4):
        for i in range(300):
            with contextlib.suppress(FsError):
                fs.unlink(R, b"f%d" % i)
            fs.write(fs.create(R, b"f%d" % i, 0o644).obj_id, 0, bytes([gen]) * 5000)
        store.commit()
    live = visible(store, 0)
    done = []
    handed = lock_handovers(ns.lock, lambda: done.append(cl.cleanup(fs, lock=ns.lock)))
    assert done[0].destroyed >= 600
    assert handed >= 10, f"the lock went to another thread only {handed} times"
    assert {v for v in visible(store, 0) if v[1] != REC_CONFIG} == \
        {v for v in live if v[1] != REC_CONFIG}
