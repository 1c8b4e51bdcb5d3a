"""Record-store benchmark (run by hand, not in CI).

1. Records inserted and looked up per second at 10^4, 10^5, 10^6 records (random keys, 64-byte
   inline payloads, a commit every 10^4 inserts; lookups after a remount with the page cache
   dropped (cold), then again (warm node cache)).
2. Sequential write and read of 1 GiB through put()/get() of 64 KiB records, next to `dd` with
   the same block size on the same disk, in the same run; printed as MB/s and as a ratio.

Medians of --rounds runs.  Example:

    .venv/bin/python bench/store_bench.py --dir /var/tmp --records 10000 100000 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.store import Store  # noqa: E402

EXTENT = 64 << 10
COMMIT_INTERVAL = 1.0  # seconds, hammerfs.fuse.mount.COMMIT_INTERVAL


def records_round(path: str, n: int, seed: int) -> tuple[float, float, float]:
    rng = random.Random(seed)
    keys = [(1, rng.randrange(2, 1 << 40), 0x10, rng.randrange(1 << 20)) for _ in range(n)]
    payload = b"r" * 64
    size = max(256 << 20, n * 600 // 4096 * 4096)
    store = Store.create(FileDevice(path, create_size=size))
    start = time.perf_counter()
    for i, k in enumerate(keys):
        store.put(k, payload)
        if i % 10_000 == 9_999:
            store.commit()
    store.commit()
    inserts = n / (time.perf_counter() - start)
    store.close()
    _drop_cache(path)
    store = Store.open(FileDevice(path, readonly=True))
    rates = []
    for _ in range(2):  # cold (nodes read from disk and verified), then warm (node cache)
        rng.shuffle(keys)
        start = time.perf_counter()
        for k in keys:
            if store.get(k) is None:
                raise SystemExit(f"lookup of {k} failed")
        rates.append(n / (time.perf_counter() - start))
    store.close()
    os.unlink(path)
    return inserts, rates[0], rates[1]


def _drop_cache(path: str) -> None:
    """Evict the file's pages so reads come from the disk (for both contenders alike)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def store_sequential(path: str, total: int) -> tuple[float, float]:
    data = os.urandom(EXTENT * 16)
    chunks = [data[i * EXTENT:(i + 1) * EXTENT] for i in range(16)]
    count = total // EXTENT
    store = Store.create(FileDevice(path, create_size=total + total // 8 + (64 << 20)))
    start = last_commit = time.perf_counter()
    for i in range(count):
        store.put((1, 2, 0x10, i * EXTENT), chunks[i % 16])
        if i % 64 == 63 and time.perf_counter() - last_commit >= COMMIT_INTERVAL:
            store.commit()  # as the FUSE mount does: a commit every second
            last_commit = time.perf_counter()
    store.commit()
    write = total / (time.perf_counter() - start)
    store.close()
    _drop_cache(path)
    store = Store.open(FileDevice(path, readonly=True))
    start = time.perf_counter()
    for rec in store.scan((1, 2, 0x10, 0), (1, 2, 0x10, (1 << 64) - 1)):
        if len(rec.data) != EXTENT:
            raise SystemExit("short extent")
    read = total / (time.perf_counter() - start)
    store.close()
    os.unlink(path)
    return write, read


def dd_sequential(path: str, total: int) -> tuple[float, float]:
    """What a user would otherwise do: dd of the same size and block size, fsync'd."""
    count = total // EXTENT
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", f"bs={EXTENT}", f"count={count}",
                    "conv=fsync"], check=True, capture_output=True)
    write = total / (time.perf_counter() - start)
    _drop_cache(path)
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={EXTENT}"], check=True,
                   capture_output=True)
    read = total / (time.perf_counter() - start)
    os.unlink(path)
    return write, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="directory on the disk to test")
    ap.add_argument("--records", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--gib", type=float, default=1.0, help="sequential data size in GiB")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    path = os.path.join(args.dir, "store-bench.img")
    print(f"# store bench: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, dir {args.dir}")
    for n in args.records:
        rounds = [records_round(path, n, seed) for seed in range(args.rounds)]
        ins = statistics.median(r[0] for r in rounds)
        cold = statistics.median(r[1] for r in rounds)
        warm = statistics.median(r[2] for r in rounds)
        print(f"records {n:>9,}: insert {ins:>9,.0f}/s   lookup cold {cold:>9,.0f}/s   "
              f"warm {warm:>9,.0f}/s")
    total = int(args.gib * (1 << 30)) // EXTENT * EXTENT
    if not total:
        return
    mine, theirs = [], []
    for _ in range(args.rounds):
        mine.append(store_sequential(path, total))
        theirs.append(dd_sequential(path, total))
    mb = 1e6
    sw, sr = (statistics.median(m[i] for m in mine) / mb for i in (0, 1))
    dw, dr = (statistics.median(t[i] for t in theirs) / mb for i in (0, 1))
    print(f"sequential {args.gib:g} GiB, 64 KiB records (median of {args.rounds}):")
    print(f"  write: store {sw:7.0f} MB/s   dd {dw:7.0f} MB/s   ratio {sw / dw:.2f}")
    print(f"  read:  store {sr:7.0f} MB/s   dd {dr:7.0f} MB/s   ratio {sr / dr:.2f}")


if __name__ == "__main__":
    main()
