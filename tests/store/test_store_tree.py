"""B-tree structure under volume: thousands of records, splits at every level, removals down to
an empty tree, checked against the reference model and by scrub after each commit."""

from __future__ import annotations

import random

from devices import MemDevice

from hammerfs.store import Record, Store
from hammerfs.store.memory import MemoryStore
from hammerfs.store.scrub import scrub

ALL = ((1, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))


def same(store, model) -> None:
    assert list(store.scan(*ALL, history=True, with_data=False)) == \
        list(model.scan(*ALL, history=True, with_data=False))


def test_grow_to_three_levels_then_destroy_everything():
    rng = random.Random(5)
    dev = MemDevice(64 << 20)
    store = Store.create(dev)
    model = MemoryStore()
    keys = [(rng.randint(1, 3), rng.randint(2, 5000), 0x10, rng.randint(0, 1 << 40))
            for _ in range(6000)]
    for n, k in enumerate(keys):
        data = rng.randbytes(rng.choice([16, 200, 600]))
        for s in (store, model):
            s.insert_raw(Record(*k, 1000 + n % 7, 0, 1, 0, data))
        if n % 1500 == 0:
            store.commit()
    store.commit()
    assert store.tree.height() >= 3
    same(store, model)
    assert scrub(store).ok
    store.close()
    store = Store.open(MemDevice(dev.size, bytes(dev.buf)))
    rng.shuffle(keys)
    versions = list(model.scan(*ALL, history=True, with_data=False))
    rng.shuffle(versions)
    for n, v in enumerate(versions):
        assert store.destroy(v.reckey, v.create_tid) == model.destroy(v.reckey, v.create_tid)
        if n % 2000 == 0:
            assert store.tree.dirty_count == store.tree.count_dirty()
            store.commit()
            same(store, model)
    store.commit()
    same(store, model)
    assert store.tree.height() == 1  # the root collapsed back to a single leaf
    report = scrub(store)
    assert report.ok and report.nodes == 1 and report.records <= 12  # PFS #0 and the commit log
    used = store.space().used_bytes
    store.close()
    again = Store.open(MemDevice(dev.size, bytes(store.device.buf)))
    assert again.space().used_bytes == used
    assert list(again.scan(*ALL)) == []


def test_scan_while_destroying_committing_and_reusing_space():
    """A pruning pattern: the caller destroys what it scans, commits, and the freed blocks are
    reused before the scan ends; the scan still returns exactly the original records."""
    store = Store.create(MemDevice(16 << 20))
    for i in range(200):
        store.put((1, 2, 0x10, i), bytes([i]) * 5000)
    store.commit()
    seen = []
    for rec in store.scan((1, 2, 0x10, 0), (1, 2, 0x10, 1000)):
        seen.append(rec.key)
        assert rec.data == bytes([rec.key]) * 5000
        assert store.destroy(rec.reckey, rec.create_tid)
        store.commit()
        store.put((1, 3, 0x10, rec.key), b"n" * 5000)
    assert seen == list(range(200))
    assert scrub(store).ok
