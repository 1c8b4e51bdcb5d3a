"""Reblock moves every live extent and B-tree node out of sparsely used big-blocks: every
version (history included) reads the same after, the volume scrubs clean, the emptied
big-blocks are free, shared extents stay shared, and long writes find contiguous space
again.  Power loss at any point of a reblock leaves a committed state with everything intact
(replay of every write prefix, as for prune), and running reblock again finishes the job."""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from pathlib import Path

from conftest import run_hammer
from hammerfs import steps as steps_mod
from hammerfs.blockdev.file import FileDevice
from hammerfs.fs import FileSystem, Namespace, init_pfs_root
from hammerfs.fs.history import prune_everything, take_snapshot
from hammerfs.store import Store
from hammerfs.store.format import EXT_SHARED
from hammerfs.store.reblock import candidates, reblock
from hammerfs.store.records import ROOT_OBJ
from hammerfs.store.scrub import scrub

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))
from devices import MemDevice, crash_image  # noqa: E402  (the store tests' crash model)

ALL = ((0, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))


def fragment(store: Store, rounds: int, seed: int = 1) -> None:
    """Files created and deleted in rounds, history pruned, plus small overwrites (shared
    extents) kept by a snapshot: most big-blocks end up partly used."""
    fs = FileSystem(store)
    rng = random.Random(seed)
    names: list[bytes] = []
    for r in range(rounds):
        for i in range(40):
            name = b"r%d-%d" % (r, i)
            obj = fs.create(ROOT_OBJ, name, 0o644).obj_id
            fs.write(obj, 0, rng.randbytes(rng.choice([3000, 20000, 65536, 150000])))
            names.append(name)
        fs.fsync()
        rng.shuffle(names)
        for name in names[:len(names) * 2 // 3]:
            fs.unlink(ROOT_OBJ, name)
        del names[:len(names) * 2 // 3]
        prune_everything(store, 0)
    for name in names[:5]:  # small overwrites: slices sharing blocks with kept history
        obj = fs.lookup(ROOT_OBJ, name).obj_id
        fs.write(obj, 4096, rng.randbytes(4096))
        take_snapshot(fs)


def everything(store: Store) -> list:
    return list(store.scan(*ALL, history=True))


def test_reblock_empties_sparse_bigblocks_and_keeps_every_version(tmp_path):
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=64 << 20), "rb")
    init_pfs_root(store, 0)
    fragment(store, 5)
    store.commit()
    before = everything(store)
    shared_before = sum(1 for _, n in store.tree.walk_nodes() if not n.level
                        for v in n.vals if v[4] & EXT_SHARED)
    sparse = candidates(store, 90)
    assert len(sparse) >= 3
    free_bbs = store.space().bigblocks_free
    result = reblock(store, 90)
    assert result.complete and result.bigblocks >= len(sparse) - 1
    assert result.extents > 0 and result.nodes > 0
    assert everything(store) == before
    assert scrub(store).ok
    assert store.space().bigblocks_free > free_bbs
    assert len(candidates(store, 90)) <= 2  # what is left: the ones the moves filled
    shared_after = sum(1 for _, n in store.tree.walk_nodes() if not n.level
                       for v in n.vals if v[4] & EXT_SHARED)
    assert shared_after == shared_before  # moved as groups, still shared
    assert store.room_for(65536) == 65536  # contiguous space again
    again = reblock(store, 90)  # packed into the fullest big-blocks: no churn
    assert again.bigblocks <= 1 and everything(store) == before and scrub(store).ok
    store.close()
    store = Store.open(FileDevice(str(tmp_path / "v.img")))
    assert everything(store) == before and scrub(store).ok
    store.close()


def test_reblock_survives_power_loss_at_any_point():
    size = 40 << 20
    dev = MemDevice(size)
    store = Store.create(dev, "crash")
    init_pfs_root(store, 0)
    fragment(store, 3, seed=2)
    store.commit()
    want = everything(store)
    base = bytes(dev.buf)
    dev.log.clear()
    done = reblock(store, 90)
    assert done.bigblocks >= 2
    log = list(dev.log)
    rng = random.Random(7)
    points = [(i, None) for i in range(0, len(log) + 1, max(1, len(log) // 14))]
    points += [(rng.randint(0, len(log)), random.Random(seed)) for seed in range(5)]
    left = set()  # the big-block fills met: one per committed step of the reblock
    for upto, subset in points:
        crashed = Store.open(MemDevice(size, crash_image(base, log, upto, subset)))
        assert everything(crashed) == want, f"crash at {upto}: records changed"
        report = scrub(crashed)
        assert report.ok, report.errors
        left.add(tuple(crashed.bigblock_fill()))
        again = reblock(crashed, 90)
        assert again.complete and everything(crashed) == want and scrub(crashed).ok
        assert len(candidates(crashed, 90)) <= 2
    assert len(left) > 2  # crash points before, during and after the reblock


def test_fill_reaches_reported_space_after_reblock(tmp_path):
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=48 << 20), "rb")
    init_pfs_root(store, 0)
    fragment(store, 4, seed=3)
    reblock(store, 90)
    fs = FileSystem(store)
    st = fs.statfs()
    avail = st["f_bavail"] * st["f_bsize"]
    obj = fs.create(ROOT_OBJ, b"fill", 0o644).obj_id
    chunk, written = os.urandom(1 << 16), 0
    try:
        while True:
            fs.write(obj, written, chunk)
            written += len(chunk)
    except OSError:
        pass
    assert written >= 0.99 * avail
    store.close()




def test_reblock_command_through_a_mount(tmp_path):
    vol, mp = tmp_path / "vol.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "-L", "t", "--size", "64M", vol)
    run_hammer("mount", vol, mp)
    try:
        rng = random.Random(4)
        kept = {}
        for i in range(120):
            data = rng.randbytes(rng.choice([5000, 70000, 200000]))
            (mp / f"f{i}").write_bytes(data)
            if i % 3:
                kept[f"f{i}"] = data
        run_hammer("synctid", mp)
        for i in range(0, 120, 3):
            os.unlink(mp / f"f{i}")
        run_hammer("prune-everything", mp)
        out = run_hammer("reblock", mp, "95").stdout
        assert re.match(r"reblock: [1-9]\d* big-blocks emptied, \d+ data extents and \d+ "
                        r"B-tree nodes moved", out), out
        assert all((mp / name).read_bytes() == data for name, data in kept.items())
        bad = run_hammer("reblock", mp, "150", check=False)
        assert bad.returncode != 0 and "percentage" in bad.stderr
    finally:
        run_hammer("umount", mp)
    out = run_hammer("reblock", vol, "--time", "5").stdout  # unmounted: opened here
    assert out.startswith("reblock: ")
    run_hammer("scrub", vol)  # exits non-zero on any damage


def test_reblock_in_steps_while_files_change_between_them(tmp_path, monkeypatch):
    """Through a mount reblock takes the lock in steps (STEP_SECONDS, 0 here: every move);
    users overwrite parts of files (new extents sharing blocks with the old ones), remove
    and recreate files in between.  Every file reads what was last written, the volume
    scrubs clean, before and after a reopen."""
    monkeypatch.setattr(steps_mod, "STEP_SECONDS", 0.0)
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=64 << 20), "rb")
    init_pfs_root(store, 0)
    fragment(store, 5, seed=4)
    store.commit()
    ns = Namespace(store, 0)
    fs = ns.live(0)
    expect = {}
    for e in fs.readdir(ROOT_OBJ):
        expect[e.name] = fs.read(e.obj_id, 0, fs.getattr(e.obj_id).size)
    rng = random.Random(5)
    running, stop = threading.Event(), threading.Event()
    changes = [0]

    def user() -> None:
        while not stop.is_set():
            with ns.lock:
                name = rng.choice(sorted(expect))
                if rng.random() < 0.7 and len(expect[name]) > 8192:
                    at = rng.randrange(0, len(expect[name]) - 4096) // 4096 * 4096
                    data = rng.randbytes(4096)
                    fs.write(fs.lookup(ROOT_OBJ, name).obj_id, at, data)
                    expect[name] = expect[name][:at] + data + expect[name][at + 4096:]
                else:
                    fs.unlink(ROOT_OBJ, name)
                    expect[name] = rng.randbytes(rng.choice([3000, 70000]))
                    fs.write(fs.create(ROOT_OBJ, name, 0o644).obj_id, 0, expect[name])
                changes[0] += running.is_set()
            time.sleep(0.0005)

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    try:
        running.set()
        result = reblock(store, 90, lock=ns.lock)
        running.clear()
    finally:
        stop.set()
        thread.join(10)
    assert result.bigblocks >= 2 and result.extents > 0
    assert changes[0] >= 10, f"only {changes[0]} changes got the lock during the reblock"
    store.commit()
    for name, data in expect.items():
        assert fs.read(fs.lookup(ROOT_OBJ, name).obj_id, 0, len(data) + 10) == data
    assert scrub(store).ok
    store.close()
    store = Store.open(FileDevice(str(tmp_path / "v.img")))
    fs = FileSystem(store)
    for name, data in expect.items():
        assert fs.read(fs.lookup(ROOT_OBJ, name).obj_id, 0, len(data) + 10) == data
    assert scrub(store).ok
    store.close()
