#!/usr/bin/env python3
"""Filesystem benchmark through FUSE: hammerfs (plain and encrypted volume) vs gocryptfs.

Run by hand as root (it drops the page cache before reads):

    .venv/bin/python bench/fs_bench.py [--size-mb 1024] [--files 10000] [--repeat 3]

Per system, in one run: sequential write of one file (dd bs=1M, conv=fsync), sequential read
after dropping caches, then extracting a tar of FILES small files, walking it (find | stat)
and removing it.  Prints medians and the ratio against gocryptfs (goal: >= 0.5x its
throughput for big files, <= 3x its time for the tree).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAMMER = [sys.executable, "-m", "hammerfs"]
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
PASS = b"benchmark passphrase\n"


def sh(cmd: list[str] | str, **kw) -> None:
    done = subprocess.run(cmd, shell=isinstance(cmd, str), env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    if done.returncode:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        done.check_returncode()


def timed(cmd: str) -> float:
    t = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - t


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Hammer:
    def __init__(self, work: str, encrypted: bool, volume_mb: int, name: str | None = None):
        self.name = name or ("hammerfs-luks" if encrypted else "hammerfs")
        self.vol = os.path.join(work, self.name + ".img")
        self.mnt = os.path.join(work, self.name + "-mnt")
        self.key = os.path.join(work, "key")
        os.makedirs(self.mnt, exist_ok=True)
        with open(os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(PASS)
        extra = ["--encrypt", "--key-file", self.key] if encrypted else []
        sh([*HAMMER, "newfs", *extra, "--size", f"{volume_mb}M", self.vol])
        self.keyargs = ["--key-file", self.key] if encrypted else []
        self.mount_opts: list[str] = []  # e.g. ["-o", "writeback"]

    def mount(self) -> str:
        sh([*HAMMER, "mount", *self.keyargs, *self.mount_opts, self.vol, self.mnt])
        return self.mnt

    def umount(self) -> None:
        sh([*HAMMER, "umount", self.mnt])

    def end_round(self) -> None:
        # Deleted data stays as history until pruned (as in HAMMER, where the nightly
        # `hammer cleanup` prunes): without this, round 3 of 1 GiB fills the volume.
        sh([*HAMMER, "prune-everything", self.mnt])


class Gocryptfs:
    name = "gocryptfs"

    def __init__(self, work: str):
        self.cipher = os.path.join(work, "gc-cipher")
        self.mnt = os.path.join(work, "gc-mnt")
        self.key = os.path.join(work, "gc-key")
        os.makedirs(self.cipher)
        os.makedirs(self.mnt)
        with open(self.key, "wb") as f:
            f.write(PASS)
        sh(["gocryptfs", "-init", "-q", "-passfile", self.key, self.cipher])

    def mount(self) -> str:
        sh(["gocryptfs", "-q", "-passfile", self.key, self.cipher, self.mnt])
        return self.mnt

    def umount(self) -> None:
        sh(["fusermount3", "-u", self.mnt])


def make_tarball(work: str, files: int) -> str:
    rng = random.Random(1)
    src = os.path.join(work, "tree-src")
    for i in range(files):
        d = os.path.join(src, f"d{i % 100:02d}", f"s{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(200, 8000)))
    tar = os.path.join(work, "tree.tar")
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname="tree")
    shutil.rmtree(src)
    return tar


def run_system(sysm, size_mb: int, tar: str) -> dict[str, float]:
    mnt = sysm.mount()
    try:
        out = {}
        out["write"] = timed(f"dd if=/dev/zero of={mnt}/big bs=1M count={size_mb} conv=fsync")
        sysm.umount()
        drop_caches()
        mnt = sysm.mount()
        out["read"] = timed(f"dd if={mnt}/big of=/dev/null bs=1M")
        sh(f"rm -f {mnt}/big")
        out["extract"] = timed(f"tar -xf {tar} -C {mnt} && sync -f {mnt}")
        sysm.umount()
        drop_caches()
        mnt = sysm.mount()
        out["walk"] = timed(f"find {mnt}/tree | xargs stat > /dev/null")
        out["remove"] = timed(f"rm -rf {mnt}/tree && sync -f {mnt}")
        if hasattr(sysm, "end_round"):
            sysm.end_round()  # untimed
        return out
    finally:
        sysm.umount()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="where volumes and gocryptfs live")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (drops the page cache)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="fs-bench-", dir=args.dir)
    load_before = os.getloadavg()[0]
    try:
        tar = make_tarball(work, args.files)
        volume_mb = max(512, args.size_mb * 2 + 512)
        systems = [Gocryptfs(work), Hammer(work, False, volume_mb), Hammer(work, True, volume_mb)]
        results: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
        for rep in range(args.repeat):
            for s in systems:
                for k, v in run_system(s, args.size_mb, tar).items():
                    results[s.name].setdefault(k, []).append(v)
            print(f"round {rep + 1}/{args.repeat} done", file=sys.stderr)
        report(results, args.size_mb, args.files)
        print(f"load average (1 min): {load_before:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results, size_mb: int, files: int) -> None:
    base = {k: statistics.median(v) for k, v in results["gocryptfs"].items()}
    print(f"sequential {size_mb} MiB file, tree of {files} files; medians of "
          f"{len(results['gocryptfs']['write'])} runs")
    print(f"{'system':15} {'write MB/s':>11} {'read MB/s':>10} {'extract s':>10} "
          f"{'walk s':>8} {'remove s':>9}")
    for name, r in results.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        print(f"{name:15} {size_mb / m['write']:11.1f} {size_mb / m['read']:10.1f} "
              f"{m['extract']:10.2f} {m['walk']:8.2f} {m['remove']:9.2f}")
    for name, r in results.items():
        if name == "gocryptfs":
            continue
        m = {k: statistics.median(v) for k, v in r.items()}
        print(f"{name} vs gocryptfs: write {base['write'] / m['write']:.2f}x speed, "
              f"read {base['read'] / m['read']:.2f}x speed, extract {m['extract'] / base['extract']:.2f}x "
              f"time, walk {m['walk'] / base['walk']:.2f}x time, remove "
              f"{m['remove'] / base['remove']:.2f}x time")


if __name__ == "__main__":
    raise SystemExit(main())
