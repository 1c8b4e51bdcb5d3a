#!/usr/bin/env python3
"""`hammer up` / `hammer down` next to the boot script a user writes by hand (mount, mount,
`mirror-stream &`; at shutdown kill the stream and unmount twice), on two volumes (the master
encrypted) with a mirror stream between them.  Also: what supervision costs while idle (CPU
seconds per hour of the `hammer up` process) and how long the slave lags after the stream
process is killed (the supervisor restarts it).

Run by hand as root: ``python bench/service_bench.py [--rounds 5]``.  The key slot uses
PBKDF2 with 1000 iterations so the figures show the service, not the KDF (a real key slot
adds its unlock time, about 1-2 s, to both columns alike).  Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hammerfs.service.supervisor import read_state  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
HAMMER = [sys.executable, "-m", "hammerfs"]
FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def hammer(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*HAMMER, *map(str, args)], check=True, env=ENV,
                          stdout=subprocess.DEVNULL, **kw)


def wait_file(path: Path, text: str, timeout: float = 30.0) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if path.read_text() == text:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {path}")


def setup(d: Path) -> dict:
    key = d / "k1"
    key.write_bytes(b"bench key")
    key.chmod(0o600)
    m, s, mm, sm = d / "m.img", d / "s.img", d / "m", d / "s"
    mm.mkdir()
    sm.mkdir()
    hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", key, "--size", "256M", m)
    hammer("newfs", "--size", "256M", s)
    out = subprocess.run([*HAMMER, "pfs-status", "--key-file", key, m], env=ENV,
                         capture_output=True, text=True, check=True).stdout
    uuid = out.split("shared-uuid=")[1].split()[0]
    hammer("mount", s, sm)
    (sm / "pfs").mkdir()
    hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
    hammer("umount", sm)
    config = d / "hammerfs.toml"
    config.write_text(f'[[mount]]\nvolume = "{m}"\nmountpoint = "{mm}"\nkey_file = "{key}"\n'
                      f'[[mount]]\nvolume = "{s}"\nmountpoint = "{sm}"\n'
                      f'[[stream]]\nsource = "{mm}"\ntarget = "{sm}/pfs/slave"\n'
                      'reconnect_delay = 0.5\n')
    return {"key": key, "m": m, "s": s, "mm": mm, "sm": sm, "config": config,
            "slave": sm / "pfs" / "slave"}


def round_service(v: dict, n: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    hammer("up", "--config", v["config"])
    up = time.perf_counter() - t0
    (v["mm"] / f"svc{n}").write_text("x")
    lag = wait_file(v["slave"] / f"svc{n}", "x")
    t0 = time.perf_counter()
    hammer("down", "--config", v["config"])
    return up, lag, time.perf_counter() - t0


def round_by_hand(v: dict, n: int) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    hammer("mount", "--key-file", v["key"], v["m"], v["mm"])
    hammer("mount", v["s"], v["sm"])
    stream = subprocess.Popen([*HAMMER, "mirror-stream", v["mm"], v["slave"]], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up = time.perf_counter() - t0
    (v["mm"] / f"hand{n}").write_text("x")
    lag = wait_file(v["slave"] / f"hand{n}", "x")
    t0 = time.perf_counter()
    stream.send_signal(signal.SIGTERM)
    stream.wait()
    hammer("umount", v["sm"])
    hammer("umount", v["mm"])
    return up, lag, time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_and_restart(v: dict, idle: float) -> tuple[float, float]:
    """CPU seconds per hour of an idle `hammer up`, and the slave's lag after its stream
    process was killed (write right after the kill)."""
    hammer("up", "--config", v["config"])
    try:
        pid = read_state(str(v["config"]))["pid"]
        c0 = cpu_seconds(pid)
        time.sleep(idle)
        per_hour = (cpu_seconds(pid) - c0) / idle * 3600
        os.kill(read_state(str(v["config"]))["streams"][0]["pid"], signal.SIGKILL)
        (v["mm"] / "after-kill").write_text("x")
        lag = wait_file(v["slave"] / "after-kill", "x")
    finally:
        hammer("down", "--config", v["config"])
    return per_hour, lag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="svcbench-") as d:
        v = setup(Path(d))
        svc = [round_service(v, i) for i in range(args.rounds)]
        hand = [round_by_hand(v, i) for i in range(args.rounds)]
        per_hour, restart_lag = idle_and_restart(v, args.idle)
    print(f"{'median of ' + str(args.rounds):<34}{'hammer up/down':>16}{'by hand':>12}"
          f"{'ratio':>8}")
    for i, label in enumerate(("up: ready (mounts + stream)", "first write on the slave",
                               "down: streams stopped, unmounted")):
        a = statistics.median(r[i] for r in svc)
        b = statistics.median(r[i] for r in hand)
        print(f"{label:<34}{a:>15.2f}s{b:>11.2f}s{a / b:>8.2f}")
    print(f"idle supervisor CPU: {per_hour:.1f} s per hour")
    print(f"slave lag after the stream process was killed: {restart_lag:.2f}s")


if __name__ == "__main__":
    main()
