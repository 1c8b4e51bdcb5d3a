#!/usr/bin/env python3
"""Cost of the target's checks: a full mirror copy between two on-disk volumes in one
process (no FUSE, no ssh), ~100 MiB in 64 KiB records plus 20,000 small records.

Run: ``python bench/mirror_apply_bench.py [--src DIR]``.  ``--src`` imports hammerfs from
another checkout's src/ (e.g. one exported with ``git archive <commit> src | tar -x -C
/tmp/old``), so two versions can be compared on the same machine.  Prints the best of
``--rounds`` copies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.mirror import pfs_ops
    from hammerfs.mirror.local import copy_local
    from hammerfs.store import Store

    work = tempfile.mkdtemp(dir=args.workdir)
    try:
        master = Store.create(FileDevice(f"{work}/m.img", create_size=512 << 20), "m")
        pfs_ops.create_master(master, 1)
        for i in range(1600):
            master.put((1, 1000 + i, 0x10, 0), os.urandom(65536))
            if i % 200 == 0:
                master.commit()
        for i in range(20000):
            master.put((1, 10000 + i, 0x01, 0), os.urandom(200))
        master.commit()
        times = []
        for r in range(args.rounds):
            slave = Store.create(FileDevice(f"{work}/s{r}.img", create_size=512 << 20), "s")
            pfs_ops.create_slave(slave, 1, master.get_pfs(1).shared_uuid)
            t0 = time.perf_counter()
            copy_local(master, 1, slave, 1)
            times.append(time.perf_counter() - t0)
            slave.close()
            os.unlink(f"{work}/s{r}.img")
        master.close()
        print(f"{args.src}: full copy of ~105 MiB + 20,000 small records: best "
              f"{min(times):.2f} s of {[round(t, 2) for t in times]}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
