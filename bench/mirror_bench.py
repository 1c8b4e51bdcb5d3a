#!/usr/bin/env python3
"""Incremental replication cost: hammer mirror-copy next to rsync -a --delete and
btrfs send -p | btrfs receive, after changing 10 files and adding 10 files, in trees of
10,000 and 100,000 files; plus the commit-to-slave latency of mirror-stream.

Run by hand (root, loop devices): ``python bench/mirror_bench.py [--sizes 10000 100000]``.
Trees are built through the filesystem API directly (not through FUSE) to save time; the
same files are written to a plain directory (rsync) and a btrfs subvolume (btrfs send).
Prints medians of ``--rounds`` rounds and our time relative to each other tool.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.fs import FileSystem  # noqa: E402
from hammerfs.mirror import pfs_ops  # noqa: E402
from hammerfs.mirror.local import Thread, copy_local, serve_source, serve_target  # noqa: E402
from hammerfs.mirror.reader import SourceOptions  # noqa: E402
from hammerfs.store import Store  # noqa: E402
from hammerfs.store.records import ROOT_OBJ  # noqa: E402

PER_DIR = 1000


def hammer(*args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hammerfs", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def timed(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def content(rnd: random.Random) -> bytes:
    return rnd.randbytes(rnd.randint(200, 4000))


class Trees:
    """The same tree in a hammerfs volume (PFS #1), a plain directory and a btrfs subvol."""

    def __init__(self, work: Path, nfiles: int):
        self.work, self.n = work, nfiles
        self.m, self.s = work / "m.img", work / "s.img"
        self.plain, self.plain_dst = work / "plain", work / "plain_dst"
        self.btrfs_img, self.btrfs_mnt = work / "btrfs.img", work / "btrfs"
        self.snap = 0
        self.rnd = random.Random(nfiles)

    def build(self) -> None:
        size = max(256 << 20, self.n * 12 << 10)
        hammer("newfs", "--size", str(size), str(self.m))
        hammer("newfs", "--size", str(size), str(self.s))
        hammer("pfs-master", f"{self.m}:1")
        store = Store.open(FileDevice(str(self.m)))
        hammer_slave_uuid = store.get_pfs(1).shared_uuid
        fs = FileSystem(store, 1)
        dirs = {}
        for i in range(self.n):
            d, name = divmod(i, PER_DIR)
            if d not in dirs:
                dirs[d] = fs.mkdir(ROOT_OBJ, b"d%03d" % d, 0o755).obj_id
                (self.plain / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
            data = content(self.rnd)
            ino = fs.create(dirs[d], b"f%05d" % name, 0o644)
            fs.write(ino.obj_id, 0, data)
            (self.plain / f"d{d:03d}" / f"f{name:05d}").write_bytes(data)
            if i % 5000 == 4999:
                store.commit()
        store.close()
        self.dirs = dirs
        hammer("pfs-slave", f"{self.s}:1", f"shared-uuid={hammer_slave_uuid}")
        self.initial = {
            "hammer mirror-copy": hammer("mirror-copy", f"{self.m}:1", f"{self.s}:1"),
            "rsync -a --delete": timed(f"rsync -a --delete {self.plain}/ {self.plain_dst}/"),
            "btrfs send | receive": self._btrfs_setup(),
        }

    def _btrfs_setup(self) -> float:
        with open(self.btrfs_img, "wb") as f:
            f.truncate(max(1 << 30, self.n * 16 << 10))
        timed(f"mkfs.btrfs -q -f {self.btrfs_img}")
        self.btrfs_mnt.mkdir(exist_ok=True)
        timed(f"mount -o loop {self.btrfs_img} {self.btrfs_mnt}")
        mnt = self.btrfs_mnt
        timed(f"btrfs subvolume create {mnt}/src && mkdir -p {mnt}/dst")
        timed(f"cp -a {self.plain}/. {mnt}/src/")
        timed(f"btrfs subvolume snapshot -r {mnt}/src {mnt}/snap0")
        return timed(f"btrfs send -q {mnt}/snap0 | btrfs receive -q {mnt}/dst")

    def change(self, rnd_round: int) -> None:
        """Rewrite 10 existing files and add 10 new ones, everywhere."""
        rnd = random.Random(rnd_round)
        store = Store.open(FileDevice(str(self.m)))
        fs = FileSystem(store, 1)
        picks = rnd.sample(range(self.n), 10)
        for i in picks:
            d, name = divmod(i, PER_DIR)
            data = content(rnd)
            ino = fs.lookup(self.dirs[d], b"f%05d" % name)
            fs.truncate(ino.obj_id, 0)
            fs.write(ino.obj_id, 0, data)
            for base in (self.plain, self.btrfs_mnt / "src"):
                (base / f"d{d:03d}" / f"f{name:05d}").write_bytes(data)
        for k in range(10):
            name = f"new{rnd_round}_{k}"
            data = content(rnd)
            ino = fs.create(self.dirs[0], name.encode(), 0o644)
            fs.write(ino.obj_id, 0, data)
            for base in (self.plain, self.btrfs_mnt / "src"):
                (base / "d000" / name).write_bytes(data)
        store.commit()
        store.close()

    def in_process(self) -> float:
        """The same incremental copy inside one process (volumes opened, no interpreter
        start-up): what mirror-stream pays per batch."""
        t0 = time.perf_counter()
        m = Store.open(FileDevice(str(self.m), readonly=True), readonly=True)
        s = Store.open(FileDevice(str(self.s)))
        copy_local(m, 1, s, 1)
        m.close()
        s.close()
        return time.perf_counter() - t0

    def others(self) -> dict[str, float]:
        mnt, prev = self.btrfs_mnt, self.snap
        self.snap += 1
        return {
            "rsync -a --delete": timed(f"rsync -a --delete {self.plain}/ {self.plain_dst}/"),
            "btrfs send -p | receive": timed(
                f"btrfs subvolume snapshot -r {mnt}/src {mnt}/snap{self.snap} && "
                f"btrfs send -q -p {mnt}/snap{prev} {mnt}/snap{self.snap} | "
                f"btrfs receive -q {mnt}/dst"),
        }

    def round(self, n: int) -> dict[str, float]:
        self.change(n)
        timed("sync")
        engine = self.in_process()
        self.others()  # untimed: every tool starts the measured round in step
        self.change(n + 1000)
        timed("sync")
        times = {"hammer mirror-copy": hammer("mirror-copy", f"{self.m}:1", f"{self.s}:1"),
                 "(hammer, in-process)": engine}
        times.update(self.others())
        return times

    def cleanup(self) -> None:
        subprocess.run(["umount", str(self.btrfs_mnt)], check=False)


def stream_latency(work: Path, commits: int = 20) -> list[float]:
    """Commit on the master, poll the slave's sync point: seconds until visible."""
    m = Store.create(FileDevice(str(work / "lm.img"), create_size=128 << 20), "m")
    s = Store.create(FileDevice(str(work / "ls.img"), create_size=128 << 20), "s")
    pfs_ops.create_master(m, 1)
    pfs_ops.create_slave(s, 1, m.get_pfs(1).shared_uuid)
    fs = FileSystem(m, 1)
    opts = SourceOptions(two_way=True, stream=True)
    a, b = socket.socketpair()
    threads = [Thread(serve_source, m, 1, a, opts), Thread(serve_target, s, 1, b)]
    for t in threads:
        t.start()
    out = []
    for i in range(commits):
        ino = fs.create(ROOT_OBJ, b"x%d" % i, 0o644)
        fs.write(ino.obj_id, 0, os.urandom(4096))
        tid = m.commit()
        t0 = time.perf_counter()
        while s.get_pfs(1).sync_end_tid < tid:
            time.sleep(0.0005)
        out.append(time.perf_counter() - t0)
        time.sleep(0.05)
    opts.stop.set()
    m.commit()
    for t in threads:
        t.outcome(10)
    m.close()
    s.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="mirror-bench-"))
    results = {}
    for n in args.sizes:
        work = base / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        trees = Trees(work, n)
        t0 = time.perf_counter()
        try:
            trees.build()
            print(f"# {n} files built and first copies done in "
                  f"{time.perf_counter() - t0:.0f}s; first full copy: " + ", ".join(
                      f"{k} {v:.1f}s" for k, v in trees.initial.items()), flush=True)
            rounds = [trees.round(r + 1) for r in range(args.rounds)]
        finally:
            trees.cleanup()
        results[n] = {tool: statistics.median(r[tool] for r in rounds) for tool in rounds[0]}
        shutil.rmtree(work, ignore_errors=True)
    print("\nincremental replication, 10 files changed + 10 added "
          f"(median of {args.rounds}, seconds)")
    print(f"{'files':>8}  {'tool':<26}{'median s':>10}  {'hammer/tool':>12}")
    for n, times in results.items():
        ours = times["hammer mirror-copy"]
        for tool, t in times.items():
            print(f"{n:>8}  {tool:<26}{t:>10.3f}  {ours / t:>12.2f}")
    lat = stream_latency(base)
    print(f"\nmirror-stream commit -> visible on slave: median {statistics.median(lat) * 1e3:.1f} "
          f"ms, max {max(lat) * 1e3:.1f} ms over {len(lat)} commits")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
