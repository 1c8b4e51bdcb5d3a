#!/usr/bin/env python3
"""AES-XTS payload throughput: hammerfs's batched XTS (cipher only, with the compiled tweak
helper and with the numpy fallback, and LuksDevice over a file with 1 MiB sequential requests)
next to `openssl speed -evp aes-256-xts` on one core, in the same run. openssl is given the
sector size as its block size, i.e. one XTS data unit per call, which is what dm-crypt does per
sector. Prints medians (MB/s = 10^6 B/s) and ratios.

Run by hand (never from the test suite):
    .venv/bin/python bench/xts_bench.py [--runs 5] [--seconds 1] [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.luks.device import LuksDevice  # noqa: E402
from hammerfs.luks.xts import XtsCipher, default_backend  # noqa: E402

REQUEST = 1 << 20


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


# (backend, threads) pairs measured for the cipher alone.
CONFIGS = (("openssl", 1), ("openssl", 2), ("compiled", 1), ("compiled", 2), ("numpy", 1))


def cipher_rate(sector: int, decrypt: bool, seconds: float, backend: str, threads: int
                ) -> tuple[float, float]:
    """(wall-clock MB/s, MB per CPU-second) for 1 MiB requests."""
    cipher = XtsCipher(os.urandom(64), threads=threads, backend=backend)
    data, out = os.urandom(REQUEST), bytearray(REQUEST)
    cipher.crypt_into(data, out, 0, sector, sector // 512, decrypt=decrypt)   # warm buffers
    done, iv = 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        cipher.crypt_into(data, out, iv, sector, sector // 512, decrypt=decrypt)
        done += REQUEST
        iv += REQUEST // 512
    return mbps(done, elapsed), mbps(done, time.process_time() - cpu_start)


def config_name(verb: str, backend: str, threads: int, kind: str) -> str:
    return f"{verb} {backend} {threads} thread{'s' if threads > 1 else ''} {kind}"


def sequential_rates(dev, total: int) -> tuple[float, float]:
    """(write MB/s, read MB/s) of one pass of 1 MiB requests over [0, total)."""
    data = os.urandom(REQUEST)
    start = time.perf_counter()
    for offset in range(0, total, REQUEST):
        dev.write(offset, data)
    write = mbps(total, time.perf_counter() - start)
    start = time.perf_counter()
    for offset in range(0, total, REQUEST):
        dev.read(offset, REQUEST)
    return write, mbps(total, time.perf_counter() - start)


def device_rates(path: Path, sector: int, total: int) -> dict[str, tuple[float, float]]:
    """Sequential 1 MiB writes then reads through LuksDevice over a FileDevice, and through
    the bare FileDevice (the floor: page-cache copies).  The file was written in full
    beforehand and sits in the page cache, so this measures our CPU cost, not the disk or the
    filesystem's block allocation."""
    backing = FileDevice(str(path))
    plain = sequential_rates(backing, total)
    dev = LuksDevice(backing, os.urandom(64), data_offset=0, data_size=total,
                     sector_size=sector)
    encrypted = sequential_rates(dev, total)
    dev.close()
    return {"LuksDevice": encrypted, "FileDevice (no crypto)": plain}


def openssl_rate(block: int, seconds: float) -> float | None:
    try:
        out = subprocess.run(["openssl", "speed", "-evp", "aes-256-xts", "-bytes", str(block),
                              "-seconds", str(max(1, round(seconds)))], capture_output=True,
                             text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^AES-256-XTS\s+([\d.]+)k", out, re.MULTILINE)
    return float(match.group(1)) * 1000 / 1e6 if match else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--mib", type=int, default=256, help="file size for device runs")
    args = parser.parse_args()
    total = args.mib << 20
    results: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            results.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path = Path(tmp) / "payload.img"
        with open(path, "wb") as f:
            for _ in range(0, total, REQUEST):
                f.write(bytes(REQUEST))
        for _ in range(args.runs):
            for sector in (4096, 512):
                for backend, threads in CONFIGS:
                    for decrypt, verb in ((False, "encrypt"), (True, "decrypt")):
                        wall, cpu = cipher_rate(sector, decrypt, args.seconds, backend,
                                                threads)
                        add(f"{config_name(verb, backend, threads, 'wall')} {sector}", wall)
                        add(f"{config_name(verb, backend, threads, 'cpu')} {sector}", cpu)
                for device, (write, read) in device_rates(path, sector, total).items():
                    add(f"{device} write {sector}", write)
                    add(f"{device} read {sector}", read)
                add(f"openssl 1 core {sector}", openssl_rate(sector, args.seconds))

    print(f"AES-256-XTS, 1 MiB requests, {args.runs} runs, medians in MB/s (10^6 B/s); "
          f"LuksDevice uses the {default_backend()} tweak backend.")
    print("ratio = ours / `openssl speed -evp aes-256-xts -bytes SECTOR` (one core; openssl "
          "counts CPU time, so compare it with the 'cpu' rows: MB per CPU-second).")
    print(f"{'method':<40}{'sector':>7}{'MB/s':>9}{'ratio':>8}")
    names = [config_name(verb, backend, threads, kind) for verb in ("encrypt", "decrypt")
             for backend, threads in CONFIGS for kind in ("wall", "cpu")]
    names += [f"{device} {op}" for device in ("LuksDevice", "FileDevice (no crypto)")
              for op in ("write", "read")] + ["openssl 1 core"]
    for sector in (4096, 512):
        ref = results.get(f"openssl 1 core {sector}")
        ref_median = statistics.median(ref) if ref else None
        for name in names:
            values = results.get(f"{name} {sector}")
            if not values:
                continue
            median = statistics.median(values)
            ratio = f"{median / ref_median:.2f}" if ref_median else "-"
            print(f"{name:<40}{sector:>7}{median:>9.0f}{ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
