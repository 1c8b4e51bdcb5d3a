"""Cost of `history_perms=current` (history views check the live object's permissions,
fs/asof.py) against HAMMER's rule (`history_perms=asof`), at the fs layer (run by hand).

A disk volume gets N files in a directory, committed; a history view of that TID is then
walked the way `ls -l` / `tar` through `@@0x<tid>` walk it: readdir, then getattr of every
entry, each through a fresh view (the FUSE adapter opens one per request).  Prints the
median over --rounds of both modes.  The reference figure (the peer) is the same walk of
the live tree.

    .venv/bin/python bench/history_perms_bench.py --dir /var/tmp --files 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.fs import FileSystem, init_pfs_root  # noqa: E402
from hammerfs.store import Store  # noqa: E402
from hammerfs.store.records import ROOT_OBJ  # noqa: E402


def walk(store, tid, live_perms: bool) -> float:
    t0 = time.perf_counter()
    view = FileSystem(store, 0, tid, live_perms=live_perms)
    names = [e.obj_id for e in view.readdir(ROOT_OBJ)]
    for obj in names:
        FileSystem(store, 0, tid, live_perms=live_perms).getattr(obj)
    return time.perf_counter() - t0


def walk_live(store) -> float:
    t0 = time.perf_counter()
    live = FileSystem(store, 0)
    for obj in [e.obj_id for e in live.readdir(ROOT_OBJ)]:
        FileSystem(store, 0).getattr(obj)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    path = os.path.join(args.dir, f"history-perms-bench-{os.getpid()}.img")
    try:
        store = Store.create(FileDevice(path, create_size=512 << 20), label="bench")
        init_pfs_root(store, 0)
        fs = FileSystem(store, 0)
        for i in range(args.files):
            fs.create(ROOT_OBJ, b"f%06d" % i, 0o644)
        tid = store.commit()
        for obj in [e.obj_id for e in fs.readdir(ROOT_OBJ)][::2]:
            fs.setattr(obj, mode=0o600)  # half of them made private since
        store.commit()
        rows = {"live tree (reference)": [walk_live(store) for _ in range(args.rounds)],
                "history_perms=asof": [walk(store, tid, False) for _ in range(args.rounds)],
                "history_perms=current": [walk(store, tid, True)
                                          for _ in range(args.rounds)]}
        for name, times in rows.items():
            med = statistics.median(times)
            print(f"{name:<24} {med * 1e3:8.1f} ms  ({args.files / med:,.0f} getattr/s)")
        store.close()
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
