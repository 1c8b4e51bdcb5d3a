"""Online scrub benchmark (run by hand as root, not in CI): hammerfs next to btrfs.

The same data (files of random bytes, --data in total) is copied into a mounted hammerfs
volume (encrypted unless --plain) and into btrfs on a loop device of the same size, in the
same run.  Then ``hammer scrub MOUNTPOINT`` at its default rate, with ``--rate 0`` (and any
other ``--rates``), and ``btrfs scrub start -B`` are timed (medians over --rounds): the
whole command, and the scrub itself (its start and end as the mount records them: no
interpreter start, no status polling; what ``btrfs scrub -B`` reports is also its own).
While each scrub runs, a thread stats names that do not exist in the mount's directories,
a new name each time (the kernel caches attributes and names of existing files for an
hour, so a stat of a file would not reach the mount; a lookup of a new name always does),
2 ms apart, and reports the p50/p99 latency, next to the same with no scrub.

    sudo .venv/bin/python bench/scrub_bench.py --dir /var/tmp --size 4G --data 2G --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

from hammerfs.quantity import parse_size  # noqa: E402

HAMMER = [sys.executable, "-m", "hammerfs"]
ENV = dict(os.environ, PYTHONPATH=str(SRC))
FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def hammer(*args) -> str:
    return subprocess.run([*HAMMER, *map(str, args)], env=ENV, check=True,
                          capture_output=True, text=True).stdout


def make_data(root: Path, total: int, seed: int = 1) -> int:
    """Files of 4 KiB to 8 MiB, random bytes, ``total`` bytes; returns the file count."""
    rng = random.Random(seed)
    n, left = 0, total
    while left > 0:
        size = min(left, rng.choice([4096, 65536, 1 << 20, 8 << 20]))
        d = root / f"d{n % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{n}").write_bytes(os.urandom(size))
        n, left = n + 1, left - size
    return n


def stat_latencies(mount: Path, files: list[Path], stop: threading.Event,
                   limit: int | None = None) -> list[float]:
    """Lookups the mount answers itself: a new absent name in a directory of the data."""
    out = []
    dirs = sorted({f.parent for f in files})
    while not stop.is_set() and (limit is None or len(out) < limit):
        name = mount / random.choice(dirs) / f"absent-{random.getrandbits(64):x}"
        t0 = time.perf_counter()
        with contextlib.suppress(FileNotFoundError):
            os.stat(name)
        out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0


def scrub_seconds(mnt: Path) -> float:
    """How long the last scrub of the mount took, by its own clock."""
    from hammerfs.control import ControlClient, find_mount
    st = ControlClient.for_mount(find_mount(str(mnt))).call("scrub-status")
    return (st["finished_ns"] - st["started_ns"]) / 1e9


def hammer_round(work: Path, data: Path, size: int, plain: bool, files: list[Path],
                 rates: list[str]) -> dict:
    img, mnt, key = work / "h.img", work / "hmnt", work / "key"
    key.write_text("bench")
    key.chmod(0o600)
    mnt.mkdir(exist_ok=True)
    enc = [] if plain else ["--encrypt", *FAST_KDF, "--key-file", key]
    hammer("newfs", *enc, "--size", size, img)
    hammer("mount", *([] if plain else ["--key-file", key]), img, mnt)
    try:
        subprocess.run(["cp", "-a", f"{data}/.", str(mnt)], check=True)
        hammer("synctid", mnt)
        subprocess.run(["sync"], check=True)  # the copy's writeback done before any timing
        time.sleep(1.5)
        idle = stat_latencies(mnt, files, threading.Event(), limit=500)
        out = {}
        for label in rates:
            rate = [] if label == "default" else ["--rate", label]
            stop = threading.Event()
            lat: list[float] = []
            t = threading.Thread(target=lambda lat=lat, stop=stop: lat.extend(
                stat_latencies(mnt, files, stop)))
            t.start()
            t0 = time.perf_counter()
            report = hammer("scrub", "--restart", *rate, mnt)
            took = time.perf_counter() - t0
            stop.set()
            t.join()
            out[f"{label}_stat_p50_ms"] = pct(lat, 0.5)
            out[f"{label}_stat_p99_ms"] = pct(lat, 0.99)
            out[f"{label}_stats"] = len(lat)
            scrubbed = report.split(" records, ")[1].split(" verified")[0]
            out[f"{label}_s"] = took
            out[f"{label}_engine_s"] = scrub_seconds(mnt)
            out["scrubbed"] = scrubbed
            out["records"] = int(report.split(" B-tree nodes, ")[1].split(" records")[0])
        out["idle_stat_p50_ms"], out["idle_stat_p99_ms"] = pct(idle, 0.5), pct(idle, 0.99)
        return out
    finally:
        hammer("umount", mnt)
        img.unlink()


def btrfs_round(work: Path, data: Path, size: int) -> dict:
    img, mnt = work / "b.img", work / "bmnt"
    mnt.mkdir(exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(img)], check=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(img)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            subprocess.run(["cp", "-a", f"{data}/.", str(mnt)], check=True)
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            res = subprocess.run(["btrfs", "scrub", "start", "-B", "-R", str(mnt)],
                                 check=True, capture_output=True, text=True).stdout
            took = time.perf_counter() - t0
            fields = {k.strip(): v for k, v in (line.split(":", 1) for line in res.splitlines()
                                                if ":" in line)}
            nbytes = sum(int(fields.get(k, "0").strip()) for k in
                         ("data_bytes_scrubbed", "tree_bytes_scrubbed"))
            return {"btrfs_s": took, "btrfs_bytes": nbytes}
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        img.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--size", default="4G", help="volume size (both)")
    ap.add_argument("--data", default="1G", help="bytes of files copied into both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plain", action="store_true", help="hammerfs without LUKS")
    ap.add_argument("--rates", default="default,0",
                    help="scrub rates to time, comma-separated (default: the built-in one; 0: "
                         "no limit; else a size per second, e.g. 1g)")
    args = ap.parse_args()
    size, total = parse_size(args.size), parse_size(args.data)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        data = work / "data"
        n = make_data(data, total)
        files = [p.relative_to(data) for p in data.rglob("f*")]
        rates = args.rates.split(",")
        rows = [(hammer_round(work, data, size, args.plain, files, rates),
                 btrfs_round(work, data, size)) for _ in range(args.rounds)]
    med = {k: statistics.median(r[0][k] for r in rows) for k in rows[0][0]
           if isinstance(rows[0][0][k], float | int)}
    bt = {k: statistics.median(r[1][k] for r in rows) for k in rows[0][1]}
    mib = total / (1 << 20)
    print(f"data: {n} files, {mib:.0f} MiB; hammerfs {'plain' if args.plain else 'LUKS2'}; "
          f"scrubbed {rows[0][0]['scrubbed']}, {med['records']:.0f} records; "
          f"medians of {args.rounds}")
    btrfs_mibs = bt["btrfs_bytes"] / (1 << 20) / bt["btrfs_s"]
    for label in rates:
        s, e = med[f"{label}_s"], med[f"{label}_engine_s"]
        print(f"hammer scrub (rate {label}): command {s:.2f} s, {mib / s:.0f} MiB/s; scrub "
              f"itself {e:.2f} s, {mib / e:.0f} MiB/s, {med['records'] / e:.0f} records/s; "
              f"ratio to btrfs {mib / s / btrfs_mibs:.2f} (command), "
              f"{mib / e / btrfs_mibs:.2f} (scrub)")
    print(f"btrfs scrub -B: {bt['btrfs_s']:.2f} s, {btrfs_mibs:.0f}"
          f" MiB/s ({bt['btrfs_bytes'] / (1 << 20):.0f} MiB scrubbed)")
    for label in rates:
        print(f"stat latency during the {label}-rate scrub: p50 "
              f"{med[f'{label}_stat_p50_ms']:.2f} ms, p99 {med[f'{label}_stat_p99_ms']:.2f} ms "
              f"({med[f'{label}_stats']:.0f} stats)")
    print(f"stat latency, no scrub: p50 {med['idle_stat_p50_ms']:.2f} ms, p99 "
          f"{med['idle_stat_p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
