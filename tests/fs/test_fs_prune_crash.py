"""Power loss during `hammer prune` (and cleanup): at every crash point the volume opens at a
committed state in which the live tree and every kept snapshot's tree are exactly as before
the prune, the store scrubs clean, and running prune again finishes the job."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from hammerfs.fs import FileSystem, init_pfs_root
from hammerfs.fs.history import prune, take_snapshot
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ
from hammerfs.store.scrub import scrub

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))
from devices import MemDevice, crash_image  # noqa: E402  (the store tests' crash model)

R = ROOT_OBJ
SIZE = 8 << 20


def tree(store, tid=None) -> dict:
    fs = FileSystem(store, 0, tid)
    return {e.name: fs.read(e.obj_id, 0, 1 << 20) for e in fs.readdir(R)}


def build(store) -> list[int]:
    """Generations of rewrites and short-lived files; snapshots of some.  Returns their TIDs."""
    fs = FileSystem(store, 0)
    rng = random.Random(5)
    snaps = []
    for gen in range(8):
        for i in range(5):
            name = b"f%d" % i
            if gen:
                fs.unlink(R, name)
            fs.write(fs.create(R, name, 0o644).obj_id, 0, rng.randbytes(rng.choice([50, 9000])))
        fs.write(fs.create(R, b"tmp", 0o644).obj_id, 0, rng.randbytes(3000))
        store.commit()
        fs.unlink(R, b"tmp")
        store.commit()
        if gen % 3 == 1:
            snaps.append(take_snapshot(fs, f"g{gen}").tid)
    return snaps


def test_prune_survives_power_loss_at_any_point():
    dev = MemDevice(SIZE)
    store = Store.create(dev, "crash")
    init_pfs_root(store, 0)
    snaps = build(store)
    store.commit()
    expected = {tid: tree(store, tid) for tid in snaps}
    live = tree(store)
    base = bytes(dev.buf)
    dev.log.clear()
    done = prune(store, 0, batch=7)  # many small batches: many commits to crash between
    assert done.destroyed > 30
    log = list(dev.log)
    rng = random.Random(99)
    points = [(i, None) for i in range(0, len(log) + 1, max(1, len(log) // 40))]
    points += [(rng.randint(0, len(log)), random.Random(seed)) for seed in range(20)]
    left_over = set()
    for upto, subset in points:
        crashed = Store.open(MemDevice(SIZE, crash_image(base, log, upto, subset)))
        assert tree(crashed) == live, f"crash at {upto}: live tree changed"
        for tid, want in expected.items():
            assert tree(crashed, tid) == want, f"crash at {upto}: snapshot {tid:#x} changed"
        report = scrub(crashed)
        assert report.ok, report.errors
        again = prune(crashed, 0)
        assert again.complete
        left_over.add(again.destroyed)
        assert {tid: tree(crashed, tid) for tid in snaps} == expected and tree(crashed) == live
    # the crash points cover before, during (some batches durable) and after the prune
    assert 0 in left_over and done.destroyed in left_over
    assert any(0 < n < done.destroyed for n in left_over)
