"""Online scrub at the store level: bounded steps, progress kept in the volume (resume after
a stop or a crash), repair of damaged data extents through a healer that is only believed
when its bytes match the checksum the damaged leaf expects."""

from __future__ import annotations

import random

import pytest

from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import CorruptionError
from hammerfs.store import Store
from hammerfs.store import scrub as scrub_mod
from hammerfs.store.format import BLOCK
from hammerfs.store.scrub import Scrubber, load_damage, load_state, scrub

ALL = ((0, 0, 0, 0), (0, 1 << 63, 0xFFFF, 1 << 63))


def populate(path, n=120, seed=3) -> dict:
    rng = random.Random(seed)
    store = Store.create(FileDevice(str(path), create_size=64 << 20))
    wrote = {}
    for i in range(n):
        key = (0, 100 + i, 0x10, 0)
        data = rng.randbytes(rng.choice([100, 5000, 70000]))
        store.put(key, data)
        wrote[key] = data
        if i % 30 == 0:
            store.commit()
    store.close()
    return wrote


def extents(path) -> list[tuple]:
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        return [(k, v) for _, node in store.tree.walk_nodes() if not node.level
                for k, v in zip(node.keys, node.vals, strict=True) if v[4]]


def flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset + 17)
        b = f.read(1)
        f.seek(offset + 17)
        f.write(bytes([b[0] ^ 0x5A]))


def replica_healer(wrote: dict, *, tamper: bool = False):
    """A healer answering from what was written (a perfect replica), or with other bytes."""
    asked = []

    def heal(k, v):
        asked.append(k)
        data = wrote[k[:4]]
        return bytes([data[0] ^ 1]) + data[1:] if tamper else data
    heal.asked = asked
    return heal


def test_scrub_repairs_every_damaged_extent_from_a_healer(tmp_path):
    path = tmp_path / "vol.img"
    wrote = populate(path)
    damaged = random.Random(1).sample(extents(path), 6)
    for _, v in damaged:
        flip(path, v[4])
    with Store.open(FileDevice(str(path))) as store:
        report = Scrubber(store, rate=None, healer=replica_healer(wrote)).run()
        assert report.ok and report.repaired == 6 and report.unrepairable == 0
        assert sorted(report.damaged_offsets) == sorted(v[4] for _, v in damaged)
        assert store.damage.repaired == 6
        for key, data in wrote.items():
            assert store.get(key).data == data
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        again = scrub(store)  # repaired on disk, not just in memory
        assert again.ok and not again.damaged_offsets


def test_bytes_that_do_not_match_the_checksum_are_refused(tmp_path):
    path = tmp_path / "vol.img"
    wrote = populate(path)
    (k, v), = random.Random(2).sample(extents(path), 1)
    flip(path, v[4])
    before = path.read_bytes()
    with Store.open(FileDevice(str(path))) as store:
        healer = replica_healer(wrote, tamper=True)
        report = Scrubber(store, rate=None, healer=healer).run()
        assert healer.asked == [k]
        assert not report.ok and report.repaired == 0 and report.unrepairable == 1
        # the read path refuses it too: EIO, and the extent is left as it was
        store.healer = healer
        with pytest.raises(CorruptionError):
            store.get(k[:4])
        assert store.damage.unrepairable == 2
    after = path.read_bytes()
    assert after[v[4]:v[4] + v[3]] == before[v[4]:v[4] + v[3]]


def test_a_read_of_damaged_data_is_healed_in_place(tmp_path):
    path = tmp_path / "vol.img"
    wrote = populate(path)
    (k, v), = random.Random(4).sample(extents(path), 1)
    flip(path, v[4])
    with Store.open(FileDevice(str(path))) as store:
        with pytest.raises(CorruptionError):
            store.get(k[:4])
        store.healer = replica_healer(wrote)
        assert store.get(k[:4]).data == wrote[k[:4]]
        store.healer = None
        assert store.get(k[:4]).data == wrote[k[:4]]  # the disk holds the good bytes again


def test_a_stopped_scrub_continues_where_it_was(tmp_path, monkeypatch):
    path = tmp_path / "vol.img"
    populate(path, n=300)
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        full = scrub(store)
    monkeypatch.setattr(scrub_mod, "STEP_BYTES", 64 << 10)  # many small steps
    victim = extents(path)[-5][1]  # damage near the end: found after the resume
    flip(path, victim[4])
    with Store.open(FileDevice(str(path))) as store:
        scrubber = Scrubber(store, rate=None)
        steps = []

        def progress(sc):
            steps.append(sc.cursor)
            if len(steps) == 4:
                sc.stop()
        first = scrubber.run(progress)
        assert not first.finished_ns and load_state(store)["cursor"] is not None
    # a new process (after a crash: the cursor was committed with the close)
    with Store.open(FileDevice(str(path))) as store:
        second = Scrubber(store, rate=None).run()
        assert second.resumed and second.finished_ns
        # every extent once; records: + the commits' log entries and the scrub's own
        assert (second.extents, second.data_bytes) == (full.extents, full.data_bytes)
        assert full.records < second.records <= full.records + 4
        assert second.damaged_offsets == [victim[4]] and second.unrepairable == 1
        state = load_state(store)
        assert state["cursor"] is None and state["last"]["counts"][5] == 1
        assert [d.offset for d in load_damage(store)] == [victim[4]]


def test_rate_limit_is_kept(tmp_path):
    import time
    path = tmp_path / "vol.img"
    populate(path, n=60)
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        t0 = time.monotonic()
        report = Scrubber(store, rate=2 << 20).run()
        took = time.monotonic() - t0
    assert report.finished_ns
    # the last step is not waited for: at least (bytes - one step) / rate
    assert took >= (report.bytes_verified - scrub_mod.STEP_BYTES - 4 * BLOCK) / (2 << 20) - 0.1


def test_extents_checked_outside_the_lock_are_confirmed_under_it(tmp_path):
    """A scrub reads extents without the store lock: a block freed and reused between its
    step and that read must not be reported, real damage still is."""
    path = tmp_path / "vol.img"
    wrote = populate(path, n=40)
    with Store.open(FileDevice(str(path))) as store:
        changed = []

        class Racing(Scrubber):
            def _step(self):
                super()._step()
                for off, n, k, _ in self._extents[:3]:  # rewritten, old blocks reused
                    store.destroy(k[:4], k[4])
                    store.put(k[:4], bytes(len(wrote[k[:4]])))
                    store.commit()
                    store.commit()
                    store.device.write(off, bytes(range(256)) * (n // 256))
                    changed.append(k)
        report = Racing(store, rate=None, persist=False).run()
        assert changed and report.ok, report.errors
    victim = random.Random(4).choice(extents(path))
    flip(path, victim[1][4])
    with Store.open(FileDevice(str(path))) as store:
        report = Scrubber(store, rate=None, persist=False).run()
        assert report.damaged_offsets == [victim[1][4] & ~(BLOCK - 1)]
