"""Commit-log thinning benchmark (run by hand, not in CI).

A volume gets N commit-log entries, one a second (what a busy mount writes), ending at T.
Then ``thin_commit_log`` runs at now = T (only entries older than a day are thinned, to one a
minute), once more at T (the steady state of a periodic prune: nothing to drop, one pass over
the log), and at T + 40 days (everything goes to one an hour).  Prints the
medians over --rounds of the time of each pass, the entries left and the volume's used bytes
before and after.  There is no other tool to compare with: the reference figure printed next
to each pass is the time one plain commit of the log's leaves takes (writing them once).

    .venv/bin/python bench/commitlog_bench.py --dir /var/tmp --entries 100000 1000000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.store import Store  # noqa: E402
from hammerfs.store import store as store_mod  # noqa: E402
from hammerfs.store.format import ZERO_CSUM  # noqa: E402
from hammerfs.store.records import MAX_U64  # noqa: E402

S = 1_000_000_000
DAY = 86_400 * S
START = 1_700_000_000 * S
LO = (*store_mod.COMMITLOG_KEY, 0, 0)
HI = (*store_mod.COMMITLOG_KEY, MAX_U64, MAX_U64 + 1)


def one_round(path: str, n: int) -> dict[str, float]:
    store = Store.create(FileDevice(path, create_size=max(64 << 20, n * 200 // 4096 * 4096)))
    for i in range(n):  # as n commits would have left them (tids below the real ones)
        ts = START + i * S
        store.tree.upsert((*store_mod.COMMITLOG_KEY, 1000 + i, 1000 + i),
                          (0, ts, 0, 8, 0, ZERO_CSUM, ts.to_bytes(8, "little")))
    store._dirty = True
    t0 = time.perf_counter()
    store.commit()
    out = {"write_log_s": time.perf_counter() - t0, "used_before_mib": _mib(store)}
    end = START + (n - 1) * S
    for name, now in (("thin_at_end", end), ("thin_again", end),
                      ("thin_40d_later", end + 40 * DAY)):
        t0 = time.perf_counter()
        dropped = store.thin_commit_log(now)
        out[name + "_s"] = time.perf_counter() - t0
        out[name + "_dropped"] = dropped
        out[name + "_left"] = len(store.tree.collect(LO, HI, 1 << 40))
    out["used_after_mib"] = _mib(store)
    store.close()
    return out


def _mib(store: Store) -> float:
    return store.space().used_bytes / (1 << 20)  # header, free-map and tree included


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    for n in args.entries:
        rounds = []
        for r in range(args.rounds):
            path = os.path.join(args.dir, f"commitlog-bench-{os.getpid()}-{r}.img")
            try:
                rounds.append(one_round(path, n))
            finally:
                os.unlink(path)
        med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
        print(f"\n{n} entries (one a second, {n / 86400:.1f} days), medians of {args.rounds}:")
        print(f"  commit writing the whole log once: {med['write_log_s']:.2f} s, "
              f"volume used {med['used_before_mib']:.1f} MiB")
        for name in ("thin_at_end", "thin_again", "thin_40d_later"):
            secs = med[name + "_s"]
            print(f"  {name:15} {secs:6.2f} s  ({secs / med['write_log_s']:.2f}x the commit)  "
                  f"dropped {med[name + '_dropped']:.0f}, left {med[name + '_left']:.0f}")
        print(f"  volume used after: {med['used_after_mib']:.2f} MiB")


if __name__ == "__main__":
    main()
