"""Extent data is read and verified outside the store's lock (issue 9): a reader blocked in
the device does not stop a writer or a commit, two readers are in the device at once, and a
read that races a commit, prune or reblock freeing and reusing its blocks never returns
wrong data (it is repeated under the lock)."""

from __future__ import annotations

import os
import random
import threading

from devices import MemDevice

from hammerfs.luks.device import LuksDevice
from hammerfs.store import Store
from hammerfs.store.format import extent_off
from hammerfs.store.reblock import reblock

KEY = bytes(range(1, 65))
WAIT = 10.0  # seconds a test waits for a thread that should not be blocked


def rk(obj: int, key: int = 0) -> tuple[int, int, int, int]:
    return (1, obj, 0x10, key)


def extent_of(store: Store, reckey, ctid: int) -> int:
    return extent_off(store.tree.exact((*reckey, ctid))[4])


class GatedDevice(MemDevice):
    """Reads of the extent at ``gate_at`` wait until ``release`` is set; ``entered`` tells
    that a reader is in there."""

    def __init__(self, size: int):
        super().__init__(size)
        self.gate_at: int | None = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self, offset: int, length: int) -> bytes:
        if self.gate_at is not None and offset <= self.gate_at < offset + length:
            self.entered.set()
            assert self.release.wait(WAIT)
        return super().read(offset, length)


def test_a_reader_in_the_device_does_not_stop_writes_and_commits():
    dev = GatedDevice(16 << 20)
    store = Store.create(dev)
    data = os.urandom(65536)
    ctid = store.put(rk(5), data).create_tid
    store.commit()
    dev.gate_at = extent_of(store, rk(5), ctid)
    got = []
    reader = threading.Thread(target=lambda: got.extend(store.scan(rk(5), rk(5))))
    reader.start()
    try:
        assert dev.entered.wait(WAIT)
        writer = threading.Thread(target=lambda: (store.put(rk(6), b"y" * 9000),
                                                  store.commit()))
        writer.start()
        writer.join(WAIT)
        assert not writer.is_alive(), "a write and commit waited for a reader's device read"
    finally:
        dev.release.set()
        reader.join(WAIT)
    assert [r.data for r in got] == [data]
    assert store.get(rk(6)).data == b"y" * 9000


class BarrierContainer(MemDevice):
    """The ciphertext under a LuksDevice: big reads wait until two are in here at once."""

    def __init__(self, size: int):
        super().__init__(size)
        self.barrier: threading.Barrier | None = None

    def read(self, offset: int, length: int) -> bytes:
        if self.barrier is not None and length >= 65536:
            self.barrier.wait(WAIT)
        return super().read(offset, length)


def test_two_readers_read_and_decrypt_at_once():
    """Both readers are inside the encrypted device together (under one lock, the second
    would wait for the first and the barrier would break)."""
    container = BarrierContainer(16 << 20)
    dev = LuksDevice(container, KEY, data_offset=0, data_size=16 << 20, sector_size=4096)
    store = Store.create(dev)
    files = {obj: os.urandom(65536) for obj in (7, 8)}
    for obj, data in files.items():
        store.put(rk(obj), data)
    store.commit()
    container.barrier = threading.Barrier(2)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def read(obj: int) -> None:
        try:
            results[obj] = b"".join(r.data for r in store.scan(rk(obj), rk(obj)))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(obj,)) for obj in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT)
    assert not errors, errors
    assert results == files


class RacingDevice(MemDevice):
    """Runs ``race`` (once per arming) inside a read made without the store's lock: between
    the B-tree lookup and the bytes, exactly where a concurrent commit could land."""

    def __init__(self, size: int):
        super().__init__(size)
        self.store: Store | None = None
        self.race = None

    def read(self, offset: int, length: int) -> bytes:
        race, store = self.race, self.store
        if race is not None and store is not None and not store._lock._is_owned():
            self.race = None
            race()
        return super().read(offset, length)


def test_a_read_racing_block_reuse_is_repeated_not_wrong():
    """The extent a reader found is freed (deleted, destroyed, committed) and its blocks
    reused by another record before the reader's device read: the reader must not return
    the other record's bytes."""
    dev = RacingDevice(16 << 20)
    store = dev.store = Store.create(dev)
    old = os.urandom(65536)
    ctid = store.put(rk(5), old).create_tid
    store.commit()
    where = extent_of(store, rk(5), ctid)
    reused = []

    def race() -> None:
        store.delete(rk(5))
        store.commit()
        store.destroy(rk(5), ctid)
        store.commit()
        for obj in range(6, 200):  # other records until one lands on the freed blocks
            other = store.put(rk(obj), os.urandom(65536))
            store.commit()
            if extent_of(store, rk(obj), other.create_tid) == where:
                reused.append(other)
                return

    dev.race = race
    got = list(store.scan(rk(5), rk(5), history=True))
    assert reused  # the blocks were reused...
    assert dev.read(where, 65536) == reused[0].data != old
    assert got == []  # ...and the read saw the record gone, never the other bytes
    assert store.read_retries == 1


def test_reads_racing_random_commits_prunes_and_reblocks_return_written_bytes():
    """Random interleavings: every record a scan returns has bytes that version was
    written with, whatever rewrites, deletes, destroys (prune), reblocks and block reuse ran
    between its lookup and its device read."""
    rng = random.Random(9)
    dev = RacingDevice(12 << 20)
    store = dev.store = Store.create(dev)
    written: dict[tuple, set[bytes]] = {}  # (reckey, create_tid) -> bytes it ever held

    def put(obj: int, key: int) -> None:
        data = rng.randbytes(rng.choice([5000, 20000, 65536]))
        ctid = store.put(rk(obj, key), data).create_tid
        written.setdefault((rk(obj, key), ctid), set()).add(data)

    def prune(obj: int) -> None:
        for version in [v for v in written if v[0][1] == obj]:
            if rng.random() < 0.7:
                store.destroy(*version)

    def mutate(target: int) -> None:
        for _ in range(rng.randrange(1, 6)):
            obj, key = rng.randrange(4), rng.randrange(3) * 65536
            if rng.random() < 0.6:
                put(obj, key)
            else:
                store.delete(rk(obj, key))
            if rng.random() < 0.5:
                store.commit()
        if rng.random() < 0.5:
            prune(target)  # the versions being read may go
        store.commit()
        if rng.random() < 0.3:
            reblock(store, 100)  # ...or move
        for _ in range(rng.randrange(25)):  # churn, so freed blocks are soon reused
            put(10, 0)
            store.commit()
            prune(10)
            store.commit()

    for obj in range(4):
        for key in range(3):
            put(obj, key * 65536)
    store.commit()
    for _ in range(120):
        obj = rng.randrange(4)
        dev.race = (lambda target=obj: mutate(target)) if rng.random() < 0.8 else None
        history = rng.random() < 0.5
        for rec in store.scan(rk(obj, 0), rk(obj, 1 << 62), history=history):
            assert rec.data in written[(rk(obj, rec.key), rec.create_tid)]
    print("RETRIES", store.read_retries)
    assert store.read_retries > 0  # the interleavings did reach the repeated read
