#!/usr/bin/env python3
"""Latency of the mount while long operations run: how long a stat + readdir + statfs of a
small tree waits (p50/p99/max) during `hammer undo -r` of a 10k-file directory, a 1 GiB
sequential write, `hammer prune-everything` of N history versions and `hammer cleanup`,
next to the same loop on an idle hammerfs mount and on gocryptfs (idle and during the same
1 GiB write), in the same run.  Encrypted hammerfs volume.  Goal (issue 9): max <= 50 ms.

Run by hand as root:

    .venv/bin/python bench/latency_bench.py [--files 10000] [--versions 1000000]

The history for prune-everything: 1,000 files rewritten in passes, each pass committed
(fsync), two versions (inode, data) per file and pass; plus what undo -r left.  With
``--offline`` it is made faster on the unmounted volume (FileSystem API, 50,000 files), for
10^6 versions and more.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs_bench import ENV, HAMMER, Gocryptfs, Hammer, sh  # noqa: E402
from scale_bench import CREATE, DIR_FILES, latency_during  # noqa: E402

HISTORY_FILES = 1000
REWRITE = """
import os, sys
root, files, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
fds = [os.open(os.path.join(root, "h%04d" % i), os.O_RDWR | os.O_CREAT, 0o644)
       for i in range(files)]
for p in range(passes):
    data = p.to_bytes(4, "little") * 16
    for fd in fds:
        os.pwrite(fd, data, 0)
    os.fsync(fds[0])  # a commit: every file's new version ends the previous one
for fd in fds:
    os.close(fd)
"""
OFFLINE_FILES = 50_000
OFFLINE = """
import argparse, sys
from hammerfs.cli.volume import open_volume_device
from hammerfs.fs import FileSystem
from hammerfs.store import Store
vol, key, files, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store.open(open_volume_device(vol, argparse.Namespace(key_file=key)))
fs = FileSystem(store, 0)
top = fs.mkdir(1, b"offline", 0o755).obj_id
objs = [fs.create(top, b"o%06d" % i, 0o644).obj_id for i in range(files)]
store.commit()
for p in range(passes):
    data = p.to_bytes(4, "little") * 16
    for obj in objs:
        fs.write(obj, 0, data)
    store.commit()
store.close()
"""


def row(name: str, lat: dict) -> str:
    return (f"  {name:<44s} {lat['op_s']:7.1f} s  {lat['n']:6d} probes  p50 "
            f"{lat['p50_ms']:6.1f}  p99 {lat['p99_ms']:6.1f}  max {lat['max_ms']:6.1f} ms")


def synctid(mnt: str) -> int:
    out = subprocess.run([*HAMMER, "synctid", mnt], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0], 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000, help="files in the undo -r tree")
    ap.add_argument("--versions", type=int, default=1_000_000,
                    help="history versions to make for prune-everything")
    ap.add_argument("--write-mb", type=int, default=1024)
    ap.add_argument("--offline", action="store_true",
                    help="make the history on the unmounted volume (faster)")
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--volume-mb", type=int, default=8192)
    ap.add_argument("--work", default=None, help="directory for volumes (default: a tmp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (mounts)")
    work = tempfile.mkdtemp(prefix="latency-bench-", dir=args.work)
    hm, gc = Hammer(work, True, args.volume_mb), Gocryptfs(work)
    try:
        mnt, gmnt = hm.mount(), gc.mount()
        write = ("dd if=/dev/zero of={mnt}/big bs=1M count=" + str(args.write_mb)
                 + " conv=fsync status=none")
        print(f"stat + readdir + statfs loop latency (load {os.getloadavg()[0]:.1f}):",
              flush=True)
        print(row("gocryptfs idle", latency_during(["sleep", str(args.idle_s)], gmnt)))
        print(row("hammerfs idle", latency_during(["sleep", str(args.idle_s)], mnt)))
        print(row(f"gocryptfs during a {args.write_mb} MiB write",
                  latency_during(["sh", "-c", write.format(mnt=gmnt)], gmnt)), flush=True)
        print(row(f"hammerfs during a {args.write_mb} MiB write",
                  latency_during(["sh", "-c", write.format(mnt=mnt)], mnt)), flush=True)
        sh(f"rm -f {mnt}/big {gmnt}/big")
        # undo -r of a directory of N files that was removed
        os.makedirs(f"{mnt}/tree")
        sh([sys.executable, "-c", CREATE, f"{mnt}/tree", str(args.files), str(DIR_FILES),
            str(args.files)])
        tid = synctid(mnt)
        sh(f"rm -rf {mnt}/tree")
        synctid(mnt)
        lat = latency_during([*HAMMER, "undo", "-r", "-t", f"0x{tid:016x}", f"{mnt}/tree"],
                             mnt)
        print(row(f"hammerfs during undo -r of {args.files} files", lat), flush=True)
        # history for prune-everything
        files = OFFLINE_FILES if args.offline else HISTORY_FILES
        passes = max(1, args.versions // (2 * files))
        t = time.perf_counter()
        if args.offline:
            hm.umount()
            sh([sys.executable, "-c", OFFLINE, hm.vol, hm.key, str(files), str(passes)])
            hm.mount()
        else:
            sh([sys.executable, "-c", REWRITE, f"{mnt}/hist", str(files), str(passes)])
        made = 2 * files * passes
        print(f"  ({passes} passes over {files} files{' offline' * args.offline}: ~{made:,}"
              f" versions made in {time.perf_counter() - t:.0f} s)", flush=True)
        lat = latency_during([*HAMMER, "prune-everything", mnt], mnt)
        print(row(f"hammerfs during prune-everything (~{made:,} v.)", lat), flush=True)
        lat = latency_during([*HAMMER, "cleanup", "-F", mnt], mnt)
        print(row("hammerfs during cleanup -F (default config)", lat), flush=True)
        print(f"  load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        subprocess.run([*HAMMER, "umount", hm.mnt], env=ENV, capture_output=True)
        subprocess.run(["fusermount3", "-u", gc.mnt], capture_output=True)
        subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
