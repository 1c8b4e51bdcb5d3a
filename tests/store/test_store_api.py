"""Contract details beyond the model test: threads waiting for commits, read-only opens,
and incremental scans (changed_since) whose cost follows the change, not the volume."""

from __future__ import annotations

import threading

import pytest
from devices import MemDevice

from hammerfs.errors import HammerError, ReadOnly
from hammerfs.store import Store
from hammerfs.store.alloc import DATA
from hammerfs.store.scrub import scrub

ALL = ((0, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))


def test_wait_commit_wakes_waiters():
    store = Store.create(MemDevice(8 << 20))
    before = store.last_committed_tid
    got = []
    waiter = threading.Thread(target=lambda: got.append(store.wait_commit(before, 10)))
    waiter.start()
    store.put((1, 2, 0x10, 0), b"x")
    done = store.commit()
    waiter.join(10)
    assert got == [done] and done > before
    assert store.wait_commit(done, timeout=0.01) == done  # times out, returns the last
    assert store.commit() == done  # nothing to do


def test_read_only_open_refuses_changes_and_writes_nothing():
    dev = MemDevice(8 << 20)
    store = Store.create(dev)
    store.put((1, 2, 0x10, 0), b"x")
    store.close()
    image = bytes(dev.buf)
    ro_dev = MemDevice(dev.size, image)
    ro = Store.open(ro_dev, readonly=True)
    with pytest.raises(ReadOnly):
        ro.put((1, 2, 0x10, 1), b"y")
    with pytest.raises(ReadOnly):
        ro.alloc_obj_id()
    assert ro.get((1, 2, 0x10, 0)).data == b"x"
    ro.close()
    assert ro_dev.log == [] and bytes(ro_dev.buf) == image


def test_bad_keys_and_oversized_data_are_clear_errors():
    store = Store.create(MemDevice(8 << 20))
    with pytest.raises(HammerError, match="out of range"):
        store.put((1 << 16, 2, 0x10, 0), b"x")
    with pytest.raises(HammerError, match="exceeds"):
        store.put((1, 2, 0x10, 0), bytes((1 << 20) + 1))


def test_object_ids_are_never_reused_across_remounts():
    dev = MemDevice(8 << 20)
    store = Store.create(dev)
    first = [store.alloc_obj_id() for _ in range(3)]
    store.commit()
    store.close()
    store = Store.open(MemDevice(dev.size, bytes(dev.buf)))
    assert store.alloc_obj_id() > max(first)


def test_changed_since_skips_unchanged_subtrees():
    dev = MemDevice(64 << 20)
    store = Store.create(dev)
    for obj in range(2, 20_002):
        store.put((1, obj, 0x10, 0), b"v" * 40)
    base = store.commit()
    store.put((1, 7_777, 0x10, 0), b"changed")
    store.delete((1, 15_000, 0x10, 0))
    store.commit()
    store.close()
    store = Store.open(MemDevice(dev.size, bytes(dev.buf)))
    reads = []
    real = store.tree.read_node
    store.tree.read_node = lambda off, csum: reads.append(off) or real(off, csum)
    changed = list(store.changed_since(ALL[0], ALL[1], base + 1))
    assert {(r.obj_id, r.create_tid > base, r.delete_tid > base) for r in changed} >= {
        (7_777, True, False), (7_777, False, True), (15_000, False, True)}
    assert all(r.pfs == 1 for r in changed)
    read = len(reads)
    total = sum(1 for _ in store.tree.walk_nodes())
    assert store.tree.height() >= 3 and read <= 4 * store.tree.height() < total // 20


class FailingDevice(MemDevice):
    """Fails every write once armed (a dying disk, or a host file system that filled up)."""

    armed = False

    def write(self, offset, data):
        if self.armed:
            raise HammerError("write error: injected")
        super().write(offset, data)


def test_a_failed_commit_stops_changes_and_the_volume_reopens_at_the_last_commit():
    dev = FailingDevice(8 << 20)
    store = Store.create(dev)
    store.put((1, 2, 0x10, 0), b"kept")
    kept = store.commit()
    store.put((1, 2, 0x10, 0), b"lost")
    dev.armed = True
    with pytest.raises(HammerError, match="injected"):
        store.commit()
    with pytest.raises(HammerError, match="failed to commit"):
        store.put((1, 3, 0x10, 0), b"x")
    assert store.get((1, 2, 0x10, 0)).data == b"lost"  # reads still work
    store.close()  # no further commit attempt
    again = Store.open(MemDevice(dev.size, bytes(dev.buf)))
    assert again.last_committed_tid == kept
    assert again.get((1, 2, 0x10, 0)).data == b"kept"


def test_scrub_reports_blocks_marked_in_use_that_nothing_references():
    dev = MemDevice(8 << 20)
    store = Store.create(dev)
    store.put((1, 2, 0x10, 0), b"d" * 9000)
    store.commit()
    assert scrub(store).ok
    lost = store.allocator.alloc(3, DATA)  # allocated, never referenced: a leak
    store.alloc_obj_id()  # something to commit
    store.commit()
    again = Store.open(MemDevice(dev.size, bytes(dev.buf)), readonly=True)
    report = scrub(again)
    assert report.errors == [f"free-map: 3 blocks are marked in use but not referenced "
                             f"(first at offset {lost * 4096:#x})"]
