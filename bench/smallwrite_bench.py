#!/usr/bin/env python3
"""Small writes, databases, cold sequential I/O and a fragmented volume: hammerfs on an
encrypted (LUKS) volume vs gocryptfs, through FUSE, in the same run (issue 10).

Run by hand as root (it drops the page cache before cold reads):

    .venv/bin/python bench/smallwrite_bench.py [--fio-mb 256] [--fio-seconds 30]
        [--seq-mb 1024] [--rows 200000] [--repeat 1] [--dir /var/tmp]

Per system: fio 4 KiB random read/write with crc32c verification over a --fio-mb file
(IOPS; for hammerfs also the volume's growth per byte fio wrote, history kept); SQLite
(--rows rows inserted in 200 transactions, an index, a bulk update and delete) with a
rollback journal and with WAL; a cold sequential write (dd bs=1M conv=fsync) and read
(page cache dropped, remounted) of --seq-mb.  For hammerfs alone: a fill after
fragmentation (random create/delete cycles and prune-everything on a 256 MiB volume, then
writing until ENOSPC: the share of the free space statfs reported that was really
written).  Medians of --repeat runs; ratios against gocryptfs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs_bench import HAMMER, Gocryptfs, Hammer, drop_caches, sh, timed  # noqa: E402


def used_bytes(mnt: str) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def fio(mnt: str, size_mb: int, seconds: int) -> dict:
    path = f"{mnt}/fio.dat"
    with open(path, "wb") as f:  # laid out first, so the run measures overwrites
        chunk = os.urandom(1 << 20)
        for _ in range(size_mb):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    before = used_bytes(mnt)
    out = subprocess.run(["fio", "--name=randrw", f"--filename={path}", f"--size={size_mb}M",
                          "--rw=randrw", "--bs=4k", "--ioengine=psync", "--time_based",
                          f"--runtime={seconds}", "--verify=crc32c", "--verify_backlog=1024", "--verify_state_save=0",
                          "--output-format=json"], check=True, capture_output=True).stdout
    job = json.loads(out)["jobs"][0]
    if job["error"]:
        raise SystemExit(f"fio failed: error {job['error']}")
    os.sync()
    time.sleep(2)  # the mount's commit
    return {"read_iops": job["read"]["iops"], "write_iops": job["write"]["iops"],
            "written": job["write"]["io_bytes"], "growth": used_bytes(mnt) - before}


def sqlite_run(mnt: str, rows: int, journal: str) -> float:
    path = f"{mnt}/bench-{journal}.db"
    t = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)")
    rng = random.Random(1)
    per = rows // 200
    for _ in range(200):
        db.execute("BEGIN")
        db.executemany("INSERT INTO t (k, v) VALUES (?, ?)",
                       [(rng.randrange(1 << 30), "x" * rng.randrange(20, 200))
                        for _ in range(per)])
        db.execute("COMMIT")
    db.execute("CREATE INDEX tk ON t (k)")
    db.execute("BEGIN")
    db.execute("UPDATE t SET v = v || 'y' WHERE k % 3 = 0")
    db.execute("DELETE FROM t WHERE k % 5 = 0")
    db.execute("COMMIT")
    db.close()
    elapsed = time.perf_counter() - t
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return elapsed


def run_system(sysm, args) -> dict[str, float]:
    out: dict[str, float] = {}
    mnt = sysm.mount()
    try:
        if "fio" in args.parts:
            r = fio(mnt, args.fio_mb, args.fio_seconds)
            out["fio_read_iops"], out["fio_write_iops"] = r["read_iops"], r["write_iops"]
            out["fio_growth"] = r["growth"] / max(1, r["written"])
            os.unlink(f"{mnt}/fio.dat")
        if "sqlite" in args.parts:
            out["sqlite_delete"] = sqlite_run(mnt, args.rows, "DELETE")
            out["sqlite_wal"] = sqlite_run(mnt, args.rows, "WAL")
        if "seq" not in args.parts:
            if hasattr(sysm, "end_round"):
                sysm.end_round()
            return out
        out["seq_write"] = timed(f"dd if=/dev/zero of={mnt}/big bs=1M count={args.seq_mb} "
                                 f"conv=fsync")
    finally:
        sysm.umount()
    drop_caches()
    mnt = sysm.mount()
    try:
        out["seq_read"] = timed(f"dd if={mnt}/big of=/dev/null bs=1M")
        os.unlink(f"{mnt}/big")
        if hasattr(sysm, "end_round"):
            sysm.end_round()  # untimed: history of this round goes
    finally:
        sysm.umount()
    return out


def fill_after_fragmentation(work: str) -> tuple[int, int]:
    """(bytes statfs reported free, bytes written until ENOSPC) on a fragmented volume."""
    work = os.path.join(work, "fill")
    os.makedirs(work)
    vol = Hammer(work, True, 256)
    mnt = vol.mount()
    try:
        rng = random.Random(3)
        names: list[str] = []
        for cycle in range(4):
            while os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize > 64 << 20:
                name = f"{mnt}/c{cycle}-{len(names)}"
                with open(name, "wb") as f:
                    f.write(rng.randbytes(rng.choice([4096, 12288, 40000, 70000, 200000])))
                names.append(name)
            rng.shuffle(names)
            for name in names[:len(names) * 2 // 3]:
                os.unlink(name)
            del names[:len(names) * 2 // 3]
            sh([*HAMMER, "prune-everything", mnt])
        st = os.statvfs(mnt)
        avail = st.f_bavail * st.f_frsize
        written = 0
        chunk = os.urandom(1 << 16)
        try:
            with open(f"{mnt}/fill", "wb") as f:
                while True:
                    f.write(chunk)
                    written += len(chunk)
                    if written % (16 << 20) == 0:
                        f.flush()
                        os.fsync(f.fileno())
        except OSError:
            pass
        return avail, written
    finally:
        vol.umount()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fio-mb", type=int, default=256)
    ap.add_argument("--fio-seconds", type=int, default=30)
    ap.add_argument("--seq-mb", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", default="/var/tmp", help="where volumes and gocryptfs live")
    ap.add_argument("--writeback", action="store_true",
                    help="mount hammerfs with -o writeback (the kernel's writeback cache)")
    ap.add_argument("--parts", default="fio,sqlite,seq,fill",
                    help="which parts to run (comma-separated: fio, sqlite, seq, fill)")
    args = ap.parse_args()
    args.parts = set(args.parts.split(","))
    if os.geteuid() != 0:
        print("run as root (drops the page cache)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="smallwrite-bench-", dir=args.dir)
    load_before = os.getloadavg()[0]
    try:
        volume_mb = args.seq_mb * 2 + args.fio_mb * 4 + 1024
        systems = [Gocryptfs(work), Hammer(work, True, volume_mb)]
        if args.writeback:  # the kernel's writeback cache (hammer mount -o writeback)
            systems[1].mount_opts = ["-o", "writeback"]
            systems[1].name = "hammerfs-luks-wb"
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
        for rep in range(args.repeat):
            for s in systems:
                for k, v in run_system(s, args).items():
                    results[s.name].setdefault(k, []).append(v)
            print(f"round {rep + 1}/{args.repeat} done", file=sys.stderr)
        report(results, args)
        if "fill" not in args.parts:
            return 0
        avail, written = fill_after_fragmentation(work)
        print(f"fill after fragmentation (hammerfs-luks, 256 MiB volume): statfs reported "
              f"{avail / 2**20:.1f} MiB free, {written / 2**20:.1f} MiB written until ENOSPC "
              f"({100 * written / max(1, avail):.1f} %)")
        print(f"load average (1 min): {load_before:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results, args) -> None:
    """Medians per system, and each against gocryptfs (of the parts that ran)."""
    med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    print(f"fio 4 KiB randrw (verify=crc32c) over {args.fio_mb} MiB for {args.fio_seconds} s; "
          f"SQLite {args.rows} rows; sequential {args.seq_mb} MiB; medians of {args.repeat}")
    cols = [  # key, heading, value as shown, ratio vs gocryptfs (>1 = hammerfs better)
        ("fio_read_iops", "fio r IOPS", lambda v: f"{v:.0f}", lambda h, g: h / g),
        ("fio_write_iops", "fio w IOPS", lambda v: f"{v:.0f}", lambda h, g: h / g),
        ("fio_growth", "growth", lambda v: f"{v:.2f}x", None),
        ("sqlite_delete", "sql DEL s", lambda v: f"{v:.2f}", lambda h, g: h / g),
        ("sqlite_wal", "sql WAL s", lambda v: f"{v:.2f}", lambda h, g: h / g),
        ("seq_write", "write MB/s", lambda v: f"{args.seq_mb / v:.1f}", lambda h, g: g / h),
        ("seq_read", "read MB/s", lambda v: f"{args.seq_mb / v:.1f}", lambda h, g: g / h),
    ]
    cols = [c for c in cols if any(c[0] in m for m in med.values())]
    print(f"{'system':15} " + " ".join(f"{c[1]:>10}" for c in cols))
    for name, m in med.items():
        shown = [c[2](m[c[0]]) if c[0] in m and (c[3] or name != "gocryptfs") else "-"
                 for c in cols]  # (growth of gocryptfs' backing dir: not measured)
        print(f"{name:15} " + " ".join(f"{v:>10}" for v in shown))
    base = med["gocryptfs"]
    for name, m in med.items():
        if name != "gocryptfs":
            print(f"{name} vs gocryptfs (IOPS and speed: x of gocryptfs's; SQLite: x of its "
                  "time): " + ", ".join(f"{c[1]} {c[3](m[c[0]], base[c[0]]):.2f}x"
                                        for c in cols if c[3] and c[0] in m and c[0] in base))


if __name__ == "__main__":
    raise SystemExit(main())
