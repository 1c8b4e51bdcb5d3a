#!/usr/bin/env python3
"""Sequential throughput through FUSE: hammerfs on an encrypted (LUKS) volume vs gocryptfs,
in the same run, systems interleaved round by round (issues 9 and 10).

Run by hand as root (it drops the page cache before cold reads):

    .venv/bin/python bench/seqio_bench.py [--size-mb 1024] [--repeat 3] [--dir /var/tmp]
        [--variant NAME:VAR=VALUE[,VAR=VALUE]]...

Per system and round: a cold sequential write of two files of --size-mb (dd bs=1M
conv=fsync; the first one timed), then after a remount and dropped caches one cold reader
(dd bs=1M of the first file), again after a remount and dropped caches two concurrent cold
readers (one per file: the time until both are done, against the time one took: more than
twice means they do not overlap), and a warm re-read (page cache kept).  A --variant is
one more hammerfs system whose mount runs with those environment variables (e.g.
``ra128:HAMMERFS_READAHEAD_KB=128``), for A/B runs.  Prints medians in MB/s and the speed
ratio against gocryptfs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs_bench import ENV, HAMMER, Gocryptfs, Hammer, drop_caches, sh, timed  # noqa: E402


class Variant(Hammer):
    """hammerfs-luks mounted with extra environment variables."""

    def __init__(self, work: str, volume_mb: int, name: str, env: dict[str, str]):
        super().__init__(work, True, volume_mb, name=name)
        self.env = env

    def mount(self) -> str:
        subprocess.run([*HAMMER, "mount", *self.keyargs, self.vol, self.mnt], check=True,
                       env=dict(ENV, **self.env), stdout=subprocess.DEVNULL)
        return self.mnt


def parallel(cmds: list[str]) -> float:
    t = time.perf_counter()
    procs = [subprocess.Popen(c, shell=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for c in cmds]
    if any(p.wait() for p in procs):
        raise SystemExit(f"failed: {cmds}")
    return time.perf_counter() - t


def remount_cold(sysm) -> str:
    sysm.umount()
    drop_caches()
    return sysm.mount()


def run_system(sysm, size_mb: int) -> dict[str, float]:
    out: dict[str, float] = {}
    mnt = sysm.mount()
    try:
        out["write"] = timed(f"dd if=/dev/zero of={mnt}/a bs=1M count={size_mb} conv=fsync")
        sh(f"dd if=/dev/urandom of={mnt}/b bs=1M count={size_mb} conv=fsync")
        mnt = remount_cold(sysm)
        out["read"] = timed(f"dd if={mnt}/a of=/dev/null bs=1M")
        out["warm"] = timed(f"dd if={mnt}/a of=/dev/null bs=1M")
        mnt = remount_cold(sysm)
        out["two"] = parallel([f"dd if={mnt}/{f} of=/dev/null bs=1M" for f in "ab"])
        sh(f"rm -f {mnt}/a {mnt}/b")
        if hasattr(sysm, "end_round"):
            sysm.end_round()  # untimed: the deleted files' history goes
    finally:
        sysm.umount()
    return out


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assigns = text.partition(":")
    env = dict(a.split("=", 1) for a in assigns.split(",") if a)
    return name, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="where volumes and gocryptfs live")
    ap.add_argument("--variant", action="append", default=[], type=parse_variant)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (drops the page cache)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="seqio-bench-", dir=args.dir)
    load_before = os.getloadavg()[0]
    try:
        volume_mb = args.size_mb * 3 + 512
        systems = [Gocryptfs(work), Hammer(work, True, volume_mb)]
        systems += [Variant(work, volume_mb, name, env) for name, env in args.variant]
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
        for rep in range(args.repeat):
            for s in systems:
                for k, v in run_system(s, args.size_mb).items():
                    results[s.name].setdefault(k, []).append(v)
            print(f"round {rep + 1}/{args.repeat} done", file=sys.stderr)
        report(results, args.size_mb)
        print(f"load average (1 min): {load_before:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results, size_mb: int) -> None:
    base = {k: statistics.median(v) for k, v in results["gocryptfs"].items()}
    print(f"{size_mb} MiB files, medians of {len(results['gocryptfs']['write'])} rounds (MB/s; "
          "two readers: both files together; overlap = one reader's time x 2 / two readers' time)")
    print(f"{'system':18} {'write':>7} {'cold read':>10} {'warm read':>10} {'two cold':>9} "
          f"{'overlap':>8}")
    mb = size_mb * 1.048576
    for name, r in results.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        print(f"{name:18} {mb / m['write']:7.0f} {mb / m['read']:10.0f} {mb / m['warm']:10.0f} "
              f"{2 * mb / m['two']:9.0f} {2 * m['read'] / m['two']:8.2f}")
    for name, r in results.items():
        if name == "gocryptfs":
            continue
        m = {k: statistics.median(v) for k, v in r.items()}
        print(f"{name} vs gocryptfs (speed): write {base['write'] / m['write']:.2f}x, cold read "
              f"{base['read'] / m['read']:.2f}x, warm read {base['warm'] / m['warm']:.2f}x, two "
              f"cold readers {base['two'] / m['two']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
