#!/usr/bin/env python3
"""Restoring a damaged directory tree on a mounted hammerfs: `hammer undo -r -t TID DIR`
against what a user would otherwise run: `rsync -a --delete` from the snapshot path
(`DIR@@TID`, inside the same mount) or from a backup copy on the host filesystem.  Then the
snapshot-driven prune of the churn that produced (`hammer prune`).

Run by hand (as root, it mounts):

    .venv/bin/python bench/restore_bench.py [--files 2000] [--repeat 3]

Every method starts from the same damaged tree (10% of the files rewritten, 10% deleted,
a subdirectory removed, 10% new files) and must end equal to the backup (checked with
`diff -r` and a content+mode walk).  Prints medians and ratios against rsync.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAMMER = [sys.executable, "-m", "hammerfs"]
ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True).stdout


def make_tree(top: str, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = os.path.join(top, f"d{i % 20:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(1024, 65536)))


def damage(top: str, files: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    names = sorted(os.path.join(dp, n) for dp, _d, fs in os.walk(top) for n in fs)
    for path in rng.sample(names, files // 10):
        if os.path.exists(path):
            with open(path, "r+b") as f:
                f.write(b"damaged" * 100)
    for path in rng.sample(names, files // 10):
        if os.path.exists(path):
            os.unlink(path)
    shutil.rmtree(os.path.join(top, "d07"), ignore_errors=True)
    os.makedirs(os.path.join(top, "new"), exist_ok=True)
    for i in range(files // 10):
        with open(os.path.join(top, "new", f"n{i}"), "wb") as f:
            f.write(rng.randbytes(4096))


def same_tree(a: str, b: str) -> bool:
    return subprocess.run(["diff", "-r", "-q", a, b], capture_output=True).returncode == 0


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="restore-bench-")
    vol, mnt, backup = (os.path.join(work, n) for n in ("vol.img", "mnt", "backup"))
    os.makedirs(mnt)
    run([*HAMMER, "newfs", "--size", "1G", vol])
    run([*HAMMER, "mount", vol, mnt])
    tree = os.path.join(mnt, "tree")
    try:
        make_tree(tree, args.files)
        subprocess.run(["cp", "-a", tree, backup], check=True)
        tid = run([*HAMMER, "synctid", mnt]).strip()
        methods = {
            "hammer undo -r": [*HAMMER, "undo", "-r", "-t", tid, tree],
            "rsync from DIR@@TID": ["rsync", "-a", "--delete", f"{tree}@@{tid}/", f"{tree}/"],
            "rsync from host backup": ["rsync", "-a", "--delete", f"{backup}/", f"{tree}/"],
        }
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeat):
            for name, cmd in methods.items():
                damage(tree, args.files)
                run([*HAMMER, "synctid", mnt])
                times[name].append(timed(cmd))
                if not same_tree(tree, backup):
                    raise SystemExit(f"{name}: the restored tree differs from the backup")
        load = os.getloadavg()[0]
        print(f"restore of a {args.files}-file tree after damage, median of {args.repeat} "
              f"(load {load:.1f}):")
        base = statistics.median(times["rsync from host backup"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<24} {med:7.2f} s   {med / base:5.2f}x rsync from backup")
        t = time.perf_counter()
        run([*HAMMER, "snapshot", mnt])
        out = run([*HAMMER, "prune", mnt])
        took = time.perf_counter() - t
        print(f"  snapshot + prune of that churn: {took:.2f} s: {out.strip()}")
        m = re.search(r"destroyed (\d+)", out)
        if m and took:
            print(f"  ({int(m.group(1)) / took:,.0f} versions/s)")
    finally:
        subprocess.run([*HAMMER, "umount", mnt], env=ENV, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
