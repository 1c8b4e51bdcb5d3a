"""Power loss at any instant: replay every prefix of a workload's write log (and random subsets
of the writes after the last flush); the volume must open, with no repair, at a committed state
holding everything that was committed before the crash."""

from __future__ import annotations

import random

from devices import MemDevice, crash_image

from hammerfs.store import Store
from hammerfs.store.scrub import scrub

ALL = ((0, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))
SIZE = 3 << 20


def snapshot(store: Store) -> list:
    return list(store.scan(*ALL, history=True))


def run_workload(store: Store, rng: random.Random) -> dict[int, list]:
    """Transactions of puts (inline and extent data), deletes, destroys; returns the state
    (every version) as of each commit, by commit TID."""
    states = {store.last_committed_tid: snapshot(store)}
    for txn in range(8):
        for _ in range(rng.randint(1, 25)):
            k = (1, rng.randint(2, 40), 0x10, rng.randint(0, 3))
            roll = rng.random()
            if roll < 0.5:
                size = rng.choice([10, 300, 5000, 20000])
                store.put(k, rng.randbytes(size), rng.choice([0, 0, -1]))
            elif roll < 0.6:  # a slice sharing the blocks of a committed extent
                src = store.get(k)
                if src is not None and len(src.data) > 4096:
                    start = rng.choice(range(0, len(src.data), 4096))
                    length = min(rng.choice([len(src.data), 4096]), len(src.data) - start)
                    store.put_slice((*k[:3], rng.randint(0, 3)), k, start, length)
            elif roll < 0.85:
                store.delete(k)
            else:
                versions = [r for r in store.scan(k, k, history=True, with_data=False)]
                if versions:
                    store.destroy(k, rng.choice(versions).create_tid)
        if txn % 3 == 2:
            store.alloc_obj_id()
        states[store.commit()] = snapshot(store)
    return states


def test_every_crash_point_opens_at_a_committed_state():
    rng = random.Random(1234)
    dev = MemDevice(SIZE)
    store = Store.create(dev, "crash")
    for i in range(30):  # some committed history before the logged workload
        store.put((1, i + 2, 0x10, 0), rng.randbytes(rng.choice([8, 6000])))
    store.commit()
    base = bytes(dev.buf)
    dev.log.clear()
    states = run_workload(store, rng)
    log = list(dev.log)
    flushes = [i for i, (kind, _, _) in enumerate(log) if kind == "f"]
    # a commit is durable once the flush after its header write is issued: every second flush
    durable_at = {}
    commit_tids = sorted(states)[1:]
    for n, tid in enumerate(commit_tids):
        durable_at[tid] = flushes[2 * n + 1] + 1
    points = [(i, None) for i in range(len(log) + 1)]
    points += [(rng.randint(0, len(log)), random.Random(seed)) for seed in range(250)]
    assert len(points) > 280  # extent data is written at commit, in few coalesced writes
    for upto, subset_rng in points:
        image = crash_image(base, log, upto, subset_rng)
        check_crash_image(image, upto, states, durable_at)


def check_crash_image(image, upto, states, durable_at):
    must_have = max([t for t, at in durable_at.items() if at <= upto], default=min(states))
    store = Store.open(MemDevice(SIZE, image))
    got = store.last_committed_tid
    assert got in states, f"crash at {upto}: opened at unknown TID {got:#x}"
    assert got >= must_have, f"crash at {upto}: lost commit {must_have:#x}"
    assert snapshot(store) == states[got]
    report = scrub(store)
    assert report.ok, report.errors
    # still usable: commit on top and reopen
    store.put((2, 5, 0x10, 0), b"after crash" * 1000)
    tid = store.commit()
    store.close()
    again = Store.open(MemDevice(SIZE, bytes(store.device.buf)))
    assert again.last_committed_tid == tid
    assert again.get((2, 5, 0x10, 0)).data == b"after crash" * 1000
