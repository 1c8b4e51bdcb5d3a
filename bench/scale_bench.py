#!/usr/bin/env python3
"""Scale benchmark of the mount: many small files, concurrent cold readers, latency during
maintenance; hammerfs on an encrypted volume vs gocryptfs, in the same run.

Run by hand as root (it drops the page cache):

    .venv/bin/python bench/scale_bench.py --files 10000 100000 [--read-mb 512]

First 1 and 2 concurrent cold sequential readers of READ_MB files.  Then per N: create N
4-KiB files in directories of 1,000 (and the seconds per 10k-file batch), ``du -s`` cold
(unmount, drop caches, mount) and warm, ``tar c | wc -c``, ``rm -rf``; the mount process's
RSS after each step; and (hammerfs only) the latency of a stat + readdir + statfs loop while
``hammer prune-everything`` destroys the history the run left (every removed file's records).
Prints a table and the ratios against gocryptfs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fs_bench import HAMMER, Gocryptfs, Hammer, drop_caches, sh  # noqa: E402

DIR_FILES = 1000
BATCH = 10_000
CREATE = """
import os, sys
root, n, dir_files, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = os.urandom(4096)
import time
t = time.perf_counter()
for i in range(n):
    if i % dir_files == 0:
        os.mkdir(os.path.join(root, "d%05d" % (i // dir_files)))
    fd = os.open(os.path.join(root, "d%05d" % (i // dir_files), "f%07d" % i),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)
    if (i + 1) % batch == 0:
        now = time.perf_counter()
        print(now - t, flush=True)
        t = now
"""


def timed(cmd: str) -> float:
    t = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - t


def mount_pid(system) -> int:
    if isinstance(system, Hammer):
        for path in glob.glob("/run/hammerfs/*.json"):
            with open(path) as f:
                info = json.load(f)
            if info.get("mountpoint") == os.path.realpath(system.mnt):
                return int(info["pid"])
        raise RuntimeError("hammerfs mount not registered")
    out = subprocess.run(["pgrep", "-f", f"gocryptfs.*{system.cipher}"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0])


def rss_mb(system) -> float:
    with open(f"/proc/{mount_pid(system)}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def remount_cold(systems) -> None:
    for system in systems:
        system.umount()
    drop_caches()
    for system in systems:
        system.mount()


def each(systems, results: dict, phase: str, cmd: str) -> None:
    """One phase on every system, back to back (the load of this shared machine moves:
    phases, not whole runs, are what the ratios compare)."""
    for system in systems:
        results[system.name][phase] = timed(cmd.format(mnt=system.mnt))


def scale(systems, n: int) -> dict:
    out: dict = {system.name: {} for system in systems}
    for system in systems:
        system.mount()
    try:
        for system in systems:
            r = out[system.name]
            os.makedirs(f"{system.mnt}/tree")
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CREATE, f"{system.mnt}/tree", str(n),
                                   str(DIR_FILES), str(BATCH)], capture_output=True, text=True,
                                  check=True)
            sh(f"sync -f {system.mnt}")
            r["create"] = time.perf_counter() - t
            r["batches"] = [float(x) for x in proc.stdout.split()]
            r["rss_create"] = rss_mb(system)
        remount_cold(systems)
        each(systems, out, "du_cold", "du -s {mnt}/tree")
        for system in systems:
            out[system.name]["rss_du"] = rss_mb(system)
        each(systems, out, "du_warm", "du -s {mnt}/tree")
        each(systems, out, "tar", "tar cf - -C {mnt} tree | wc -c")
        for system in systems:
            out[system.name]["rss_tar"] = rss_mb(system)
        each(systems, out, "rm", "rm -rf {mnt}/tree && sync -f {mnt}")
        for system in systems:
            out[system.name]["rss_rm"] = rss_mb(system)
    finally:
        for system in systems:
            system.umount()
    return out


def readers(systems, read_mb: int) -> dict:
    out: dict = {system.name: {} for system in systems}
    for system in systems:
        system.mount()
    try:
        for system in systems:
            for name in ("r1", "r2"):
                sh(f"dd if=/dev/urandom of={system.mnt}/{name} bs=1M count={read_mb} "
                   "conv=fsync")
        remount_cold(systems)
        each(systems, out, "read1", "cat {mnt}/r1 > /dev/null")
        remount_cold(systems)
        each(systems, out, "read2", "cat {mnt}/r1 > /dev/null & cat {mnt}/r2 > /dev/null; wait")
        for system in systems:
            sh(f"rm -f {system.mnt}/r1 {system.mnt}/r2")
            r = out[system.name]
            r["read1_mbs"], r["read2_mbs"] = read_mb / r["read1"], 2 * read_mb / r["read2"]
    finally:
        for system in systems:
            system.umount()
    return out


def latency_during(cmd: list[str], mnt: str) -> dict:
    """stat + readdir + statfs of a small tree in a loop while ``cmd`` runs.  stat alone is
    answered from the kernel's attribute cache; readdir and statfs always reach the mount."""
    os.makedirs(f"{mnt}/probe", exist_ok=True)
    for i in range(10):
        with open(f"{mnt}/probe/p{i}", "w") as f:
            f.write("x")
    samples: list[float] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            os.stat(f"{mnt}/probe/p0")
            os.listdir(f"{mnt}/probe")
            os.statvfs(mnt)
            samples.append(time.perf_counter() - t)
            time.sleep(0.001)

    th = threading.Thread(target=loop)
    th.start()
    t = time.perf_counter()
    sh(cmd)
    took = time.perf_counter() - t
    stop.set()
    th.join()
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return {"op_s": took, "n": len(samples), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": samples[-1] * 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, nargs="+", default=[10_000])
    ap.add_argument("--read-mb", type=int, default=512, help="0: no reader phase")
    ap.add_argument("--volume-mb", type=int, default=8192)
    ap.add_argument("--work", default=None, help="directory for volumes (default: a tmp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (drop_caches)")
    work = tempfile.mkdtemp(prefix="scale-bench-", dir=args.work)
    try:
        systems = [Hammer(work, True, args.volume_mb), Gocryptfs(work)]
        res = readers(systems, args.read_mb) if args.read_mb else {}
        for system in systems if res else ():
            r = res[system.name]
            print(f"{system.name:14s} cold readers of {args.read_mb} MiB: one "
                  f"{r['read1']:.2f}s ({r['read1_mbs']:.0f} MB/s), two at once "
                  f"{r['read2']:.2f}s ({r['read2_mbs']:.0f} MB/s together; one after the "
                  f"other would take {2 * r['read1']:.2f}s)", flush=True)
        for n in args.files:
            res = scale(systems, n)
            for system in systems:
                r = res[system.name]
                print(f"{system.name:14s} N={n:>7d} create {r['create']:7.1f}s "
                      f"du cold {r['du_cold']:6.2f}s warm {r['du_warm']:6.2f}s "
                      f"tar {r['tar']:6.2f}s rm {r['rm']:6.2f}s  RSS MB create "
                      f"{r['rss_create']:.0f} du {r['rss_du']:.0f} tar {r['rss_tar']:.0f} "
                      f"rm {r['rss_rm']:.0f}  s/10k batch "
                      f"{' '.join(f'{b:.1f}' for b in r['batches'])}", flush=True)
            hm, gc = res[systems[0].name], res[systems[1].name]
            print("  ratios hammerfs/gocryptfs: " + "  ".join(
                f"{k} {hm[k] / gc[k]:.2f}x" for k in
                ("create", "du_cold", "du_warm", "tar", "rm", "rss_create", "rss_tar")),
                flush=True)
            print(f"  load average {os.getloadavg()[0]:.1f}", flush=True)
            mnt = systems[0].mount()
            try:
                lat = latency_during([*HAMMER, "prune-everything", mnt], mnt)
            finally:
                systems[0].umount()
            print(f"  hammerfs prune-everything after N={n}: {lat['op_s']:.1f}s, "
                  f"{lat['n']} probes, stat+readdir+statfs p50 {lat['p50_ms']:.1f} ms "
                  f"p99 {lat['p99_ms']:.1f} ms max {lat['max_ms']:.1f} ms", flush=True)
    finally:
        subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
