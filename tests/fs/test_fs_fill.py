"""A fragmented volume fills to the space it reports: after cycles of random creates,
deletes and prunes, writing until ENOSPC stores at least 99 % of the statfs f_bavail reported
at the start (extents that find no contiguous run are stored as 4 KiB pieces)."""

from __future__ import annotations

import os
import random

from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import NoSpace
from hammerfs.fs import FileSystem, init_pfs_root
from hammerfs.fs.history import prune_everything
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ


def _avail(fs: FileSystem) -> int:
    st = fs.statfs()
    return st["f_bavail"] * st["f_bsize"]


def test_fill_after_fragmentation_reaches_the_reported_free_space(tmp_path):
    store = Store.create(FileDevice(str(tmp_path / "v.img"), create_size=48 << 20), "frag")
    init_pfs_root(store, 0)
    fs = FileSystem(store)
    rng = random.Random(3)
    files: list[bytes] = []
    for cycle in range(4):
        while _avail(fs) > 12 << 20:  # fill up to ~75 %, in files of 4 KiB to 200 KiB
            name = f"c{cycle}-{len(files)}".encode()
            obj = fs.create(ROOT_OBJ, name, 0o644).obj_id
            size = rng.choice([4096, 12288, 40000, 70000, 200000])
            fs.write(obj, 0, os.urandom(size))
            files.append(name)
            if len(files) % 20 == 0:
                fs.fsync()
        rng.shuffle(files)
        for name in files[:len(files) * 2 // 3]:  # delete two thirds, then drop history
            fs.unlink(ROOT_OBJ, name)
        del files[:len(files) * 2 // 3]
        prune_everything(store, 0)
    fill = store.bigblock_fill()
    assert sum(1 for f in fill if 0 < f < 2048) >= len(fill) // 2  # really fragmented
    avail = _avail(fs)
    obj = fs.create(ROOT_OBJ, b"fill", 0o644).obj_id
    chunk = os.urandom(64 << 10)
    written = 0
    try:
        while True:
            fs.write(obj, written, chunk)
            written += len(chunk)
            if written % (8 << 20) == 0:
                fs.fsync()
    except NoSpace:
        pass
    fs.fsync()
    assert written >= 0.99 * avail, (written, avail)
    assert _avail(fs) < 2 << 20  # what it reports at the end is (nearly) nothing
    store.close()
