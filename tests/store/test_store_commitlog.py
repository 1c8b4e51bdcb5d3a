"""Thinning of the commit log (store/commitlog.py): for every TID, tid_time afterwards is never
later than before, never 0 where it had a time, and within the policy's granularity; the
on-disk Store and the MemoryStore model agree; space comes back; a crash at any point of the
(batched) thinning opens at a valid, partly thinned log; user records are never touched."""

from __future__ import annotations

import random

import hypothesis.strategies as st
from devices import MemDevice, crash_image
from hypothesis import HealthCheck, given, settings

from hammerfs.steps import SteppedLock
from hammerfs.store import Store, memory
from hammerfs.store import store as store_mod
from hammerfs.store.commitlog import (
    HOUR_NS,
    KEEP_ALL_FOR_NS,
    MINUTE_NS,
    MINUTES_FOR_NS,
    NS_PER_S,
    granularity,
)
from hammerfs.store.format import ZERO_CSUM
from hammerfs.store.records import MAX_U64

DAY = 86_400 * NS_PER_S
BASE_TS = 1_700_000_000 * NS_PER_S  # injected commit times: Nov 2023 on
ALL = ((0, 0, 0, 0), (0xFFFF, MAX_U64, 0xFFFF, MAX_U64))
LOG_LO = (*store_mod.COMMITLOG_KEY, 0, 0)
LOG_HI = (*store_mod.COMMITLOG_KEY, MAX_U64, MAX_U64 + 1)


def inject(store, entries: list[tuple[int, int]]) -> None:
    """Put commit-log entries (tid, ts) as commits would have (tids far below the real ones)."""
    for tid, ts in entries:
        if isinstance(store, memory.MemoryStore):
            store._commit_times.append((tid, ts))
        else:
            store.tree.upsert((*store_mod.COMMITLOG_KEY, tid, tid),
                              (0, ts, 0, 8, 0, ZERO_CSUM, ts.to_bytes(8, "little")))
            store._dirty = True
    if isinstance(store, memory.MemoryStore):
        store._commit_times.sort()
    else:
        store.commit()


def log_entries(store) -> list[tuple[int, int]]:
    return [(k[3], int.from_bytes(v[6], "little"))
            for k, v in store.tree.collect(LOG_LO, LOG_HI, 1 << 30)]


def new_store(size: int = 16 << 20) -> Store:
    store = Store.create(MemDevice(size), "log")
    store.put((1, 5, 0x10, 0), b"user data")  # user history: must survive untouched
    store.commit()
    store.put((1, 5, 0x10, 0), b"user data v2")
    store.commit()
    return store


def check_bound(before: dict[int, int], after_fn, queries, now: int) -> None:
    """``before``: tid -> tid_time before any thinning; ``now``: the latest thinning."""
    for q in queries:
        b, a = before[q], after_fn(q)
        assert a <= b, (q, a, b)
        if b == 0:
            assert a == 0
            continue
        assert a > 0
        if a != b:  # the answer is the first entry of the (aligned) bucket the truth is in
            g = granularity(a, now)
            assert g > 0 and a // g == b // g, (q, a, b, g)
            assert b - a < g
            assert granularity(b, now) > 0  # the last day stays exact


def floor_time(entries: list[tuple[int, int]], tid: int) -> int:
    best = 0
    for t, ts in entries:
        if t > tid:
            break
        best = ts
    return best


commit_logs = st.lists(
    st.tuples(st.integers(1, 50),  # tid gap
              st.one_of(st.integers(0, 90 * NS_PER_S),  # seconds apart (mostly)
                        st.integers(0, 3 * HOUR_NS),  # idle hours
                        st.integers(-120 * NS_PER_S, 0))),  # the wall clock stepped back
    min_size=1, max_size=120)


def build_log(steps, start_ts: int) -> list[tuple[int, int]]:
    entries, tid, ts = [], 1000, start_ts
    for gap, dt in steps:
        tid += gap
        ts += dt
        entries.append((tid, ts))
    return entries


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=commit_logs,
       age_days=st.integers(0, 60),
       later=st.lists(st.integers(0, 40 * DAY), min_size=1, max_size=3))
def test_thinning_keeps_the_bound_for_every_tid_and_store_matches_model(steps, age_days, later):
    entries = build_log(steps, BASE_TS)
    store, model = new_store(4 << 20), memory.MemoryStore("log")
    inject(store, entries)
    inject(model, entries)
    user_before = list(store.scan(*ALL, history=True))
    queries = sorted({0, 999} | {t + d for t, _ in entries for d in (-1, 0, 1)})
    before = {q: floor_time(entries, q) for q in queries}
    assert all(store.tid_time(q) == before[q] for q in queries)
    now = entries[-1][1] + age_days * DAY
    for step in sorted(later):  # thinning again later (entries age into coarser classes)
        t = now + step
        assert store.thin_commit_log(t) == model.thin_commit_log(t)
        check_bound(before, store.tid_time, queries, t)
        assert [store.tid_time(q) for q in queries] == [model.tid_time(q) for q in queries]
        assert [e for e in log_entries(store) if e[0] < 1 << 40] == \
            [e for e in model._commit_times if e[0] < 1 << 40]
    assert list(store.scan(*ALL, history=True)) == user_before
    store.close()


def test_policy_keeps_a_day_then_minutes_then_hours():
    now = BASE_TS + 100 * DAY
    n = 100 * 8640  # one commit every 10 s for 100 days
    entries = [(1000 + i, now - (n - 1 - i) * 10 * NS_PER_S) for i in range(n)]
    model = memory.MemoryStore("log")
    inject(model, entries)
    dropped = model.thin_commit_log(now)
    kept = [e for e in model._commit_times if e[0] < 1 << 40]  # not the thinning's own commit
    assert dropped == len(entries) - len(kept)
    ages = [now - ts for _, ts in kept]
    assert sum(a < KEEP_ALL_FOR_NS for a in ages) == 8640  # every 10 s entry of the last day
    minutes = sum(KEEP_ALL_FOR_NS <= a < MINUTES_FOR_NS for a in ages)
    assert abs(minutes - (MINUTES_FOR_NS - KEEP_ALL_FOR_NS) // MINUTE_NS) <= 2
    hours = sum(a >= MINUTES_FOR_NS for a in ages)
    assert abs(hours - (100 * DAY - MINUTES_FOR_NS) // HOUR_NS) <= 2
    assert model.thin_commit_log(now) == 0  # thinning is idempotent at the same now


def test_100k_commits_space_comes_back():
    store = new_store(64 << 20)
    end = BASE_TS + 100_000 * NS_PER_S
    inject(store, [(1000 + i, BASE_TS + i * NS_PER_S) for i in range(100_000)])  # 1 a second
    full = store.space().used_bytes
    assert store.thin_commit_log(end) > 0  # ~28 h: the oldest ~4 h go to one a minute
    assert len(log_entries(store)) < 100_000 - 10_000
    dropped = store.thin_commit_log(end + 40 * DAY)  # all of it is now older than 30 days
    entries = log_entries(store)
    assert dropped > 80_000 and len(entries) <= 40
    emptied = store.space().used_bytes
    assert emptied < full - 100 * 4096, (full, emptied)  # the log's leaves were freed
    store.close()
    reopened = Store.open(store.device)
    assert log_entries(reopened) == entries
    assert reopened.space().used_bytes == emptied
    assert reopened.get((1, 5, 0x10, 0)).data == b"user data v2"


def test_thinning_a_read_only_store_is_refused():
    store = new_store()
    store.close()
    ro = Store.open(store.device, readonly=True)
    try:
        ro.thin_commit_log()
        raise AssertionError("thinning a read-only store must fail")
    except Exception as exc:  # ReadOnly, a HammerError with a message
        assert "read-only" in str(exc)


def test_crash_at_any_point_of_a_batched_thinning(monkeypatch):
    monkeypatch.setattr(store_mod, "COMMITLOG_BATCH", 500)
    monkeypatch.setattr(store_mod, "COMMITLOG_COMMIT", 400)  # a commit per batch
    store = new_store(4 << 20)
    entries = [(1000 + i, BASE_TS + i * 20 * NS_PER_S) for i in range(2000)]
    inject(store, entries)
    user = list(store.scan(*ALL, history=True))
    dev = store.device
    base = bytes(dev.buf)
    dev.log.clear()
    now = entries[-1][1] + 40 * DAY
    dropped = store.thin_commit_log(now)
    assert dropped > 1500
    log = list(dev.log)
    commits = sum(1 for kind, _, _ in log if kind == "f") // 2
    assert commits >= 4  # one commit per batch
    before = {t: ts for t, ts in entries}
    queries = [t for t, _ in entries]
    rng = random.Random(7)
    seen = set()
    for upto in range(len(log) + 1):
        image = crash_image(base, log, upto, rng if upto % 3 == 0 else None)
        reopened = Store.open(MemDevice(len(image), image))
        kept = [e for e in log_entries(reopened) if e[0] < 1 << 40]
        seen.add(len(kept))
        assert set(kept) <= set(entries)
        check_bound(before, reopened.tid_time, queries, now)
        assert list(reopened.scan(*ALL, history=True)) == user
    assert len(seen) >= 4  # the crash points saw the log partly thinned, batch by batch


def test_prune_and_prune_everything_thin_the_log():
    from hammerfs.fs.history import prune, prune_everything

    for run in (lambda s: prune(s, 0, now_ns=BASE_TS + 60 * DAY), lambda s: prune_everything(s, 0)):
        store = new_store()
        inject(store, [(1000 + i, BASE_TS + i * NS_PER_S) for i in range(5000)])  # 2023: old
        run(store)
        kept = [e for e in log_entries(store) if e[0] < 1 << 40]
        assert 1 <= len(kept) <= 3  # 5000 s of commits, long ago: one an hour
        assert store.tid_time(1000 + 4999) >= BASE_TS
        assert store.get((1, 5, 0x10, 0)).data == b"user data v2"  # other PFS untouched
        store.close()


def test_cleanup_thins_the_log_on_a_slave_and_with_prune_disabled():
    from hammerfs.fs import FileSystem, init_pfs_root
    from hammerfs.fs.cleanup import cleanup, save_config
    from hammerfs.store.pfs import PFS_SLAVE, PfsData

    store = new_store()
    init_pfs_root(store, 0)
    store.put_pfs(3, PfsData(mirror_flags=PFS_SLAVE))
    save_config(store, 0, "snapshots 1d 60d\nprune 0 0\n")  # prune off: the log still ages
    store.commit()
    for pfs in (3, 0):
        inject(store, [(1000 + i, BASE_TS + i * NS_PER_S) for i in range(5000)])
        cleanup(FileSystem(store, pfs), now_ns=BASE_TS + 60 * DAY)
        assert 1 <= len([e for e in log_entries(store) if e[0] < 1 << 40]) <= 3, pfs
    store.close()


def test_thinning_takes_the_callers_lock_per_batch(monkeypatch):
    """Through a mount (prune, cleanup) the mount's lock is taken per batch of entries
    (and offered to waiting requests after each), never for the whole log."""
    monkeypatch.setattr(store_mod, "COMMITLOG_BATCH", 500)
    store = new_store(8 << 20)
    inject(store, [(1000 + i, BASE_TS + i * NS_PER_S) for i in range(10_000)])
    lock = SteppedLock()
    holds = []
    real_acquire = lock.acquire

    def acquire(*args):
        holds.append(len(log_entries(store)))  # entries left when each step begins
        return real_acquire(*args)
    lock.acquire = acquire
    dropped = store.thin_commit_log(BASE_TS + 40 * DAY, lock=lock)
    assert dropped > 9_000
    assert len(holds) >= 10_000 // 500  # one hold per batch at least
    assert holds[0] > holds[len(holds) // 2] > holds[-1]  # the work spread over the holds
