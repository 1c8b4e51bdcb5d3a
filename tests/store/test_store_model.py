"""The on-disk Store must behave exactly like the MemoryStore reference model, across
commits, remounts (close + reopen) and as-of reads at past TIDs."""

from __future__ import annotations

import os
import tempfile

import hypothesis.strategies as st
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hammerfs.blockdev.file import FileDevice
from hammerfs.store import Record, Store, memory
from hammerfs.store import store as store_mod
from hammerfs.store.scrub import scrub

ALL = ((0, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))


class FakeClock:
    """Both stores read the same wall clock, which only moves when the test says so, so that
    they hand out identical TIDs and timestamps."""

    def __init__(self):
        self.now = 1_700_000_000_000_000_000

    def time_ns(self) -> int:
        return self.now


reckeys = st.tuples(st.integers(0, 2), st.integers(1, 6), st.sampled_from([0x10, 0x11]),
                    st.integers(0, 3))
# history_ns: keep all, keep none (nohistory), one per 3-ns interval of the fake clock
histories = st.sampled_from([0, 0, -1, 3])
payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=500, max_size=600),  # around the inline threshold
    st.integers(1, 70_000).map(lambda n: os.urandom(n)),  # data extents
)


class StoreVsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self._saved = (store_mod.time, memory.time)
        store_mod.time = memory.time = self.clock
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "vol.img")
        self.store = Store.create(FileDevice(self.path, create_size=32 << 20), "model")
        self.model = memory.MemoryStore("model")
        self.model.put_pfs(0, self.store.get_pfs(0))  # same random uuids in both
        self.model.commit()
        self.tids = [self.store.last_committed_tid]

    def teardown(self):
        store_mod.time, memory.time = self._saved
        self.store.close()
        self.dir.cleanup()

    @rule(dt=st.integers(0, 3))
    def tick(self, dt):
        self.clock.now += dt

    @rule(minutes=st.integers(1, 180))
    def tick_far(self, minutes):  # commits minutes or hours apart: the thinning has work
        self.clock.now += minutes * 60 * 10**9

    @rule(days=st.integers(0, 45))
    def thin_commit_log(self, days):
        now = self.clock.now + days * 86_400 * 10**9
        assert self.store.thin_commit_log(now) == self.model.thin_commit_log(now)

    @rule(k=reckeys, data=payloads, hist=histories)
    def put(self, k, data, hist):
        a, b = self.store.put(k, data, hist), self.model.put(k, data, hist)
        assert a == b

    @rule(k=reckeys, dst=st.integers(0, 3), page=st.integers(0, 17),
          length=st.integers(1, 70_000), hist=histories)
    def put_slice(self, k, dst, page, length, hist):
        """A slice of a live record to a key of its window (the store shares the blocks)."""
        live = self.model.get(k)
        if live is None or page * 4096 >= len(live.data):
            return
        start = page * 4096
        length = min(length, len(live.data) - start)
        if (start + length) % 4096 and start + length != len(live.data):
            length -= (start + length) % 4096  # a slice ends on a page or the source's end
        if length <= 0:
            return
        a = self.store.put_slice((*k[:3], dst), k, start, length, hist)
        b = self.model.put_slice((*k[:3], dst), k, start, length, hist)
        assert a == b

    @rule(k=reckeys, hist=histories)
    def delete(self, k, hist):
        assert self.store.delete(k, hist) == self.model.delete(k, hist)

    @rule(k=reckeys)
    def mirror_read(self, k):
        """A mirror read raises the history floor: what it returned is never dropped."""
        assert list(self.store.changed_since(k, k, 0)) == list(self.model.changed_since(k, k, 0))

    @rule(lo=reckeys, hi=reckeys)
    def delete_range(self, lo, hi):
        assert self.store.delete_range(lo, hi) == self.model.delete_range(lo, hi)

    def _versions(self):
        return list(self.model.scan(*ALL, history=True, with_data=False))

    @precondition(lambda self: self._versions())
    @rule(i=st.integers(0, 10_000), dtid=st.integers(0, 5), live=st.booleans())
    def set_delete_tid(self, i, dtid, live):
        versions = self._versions()
        v = versions[i % len(versions)]
        # delete TIDs in the past, now, or beyond the open transaction (mirrored records)
        tid = 0 if live else max(v.create_tid + 1, self.model.current_tid - 2 + dtid)
        assert self.store.set_delete_tid(v.reckey, v.create_tid, tid, tid + 7) == \
            self.model.set_delete_tid(v.reckey, v.create_tid, tid, tid + 7)

    @precondition(lambda self: self._versions())
    @rule(i=st.integers(0, 10_000))
    def destroy(self, i):
        versions = self._versions()
        v = versions[i % len(versions)]
        assert self.store.destroy(v.reckey, v.create_tid) == \
            self.model.destroy(v.reckey, v.create_tid)
        assert not self.store.destroy(v.reckey, v.create_tid)

    @rule(k=reckeys, back=st.integers(-3, 50), life=st.integers(0, 20), data=payloads)
    def insert_raw(self, k, back, life, data):
        ctid = self.model.current_tid - back
        dtid = ctid + life if life else 0
        rec = Record(*k, ctid, dtid, 11, dtid and 12, data)
        assert self.store.insert_raw(rec) == self.model.insert_raw(rec)

    @precondition(lambda self: self._versions())
    @rule(i=st.integers(0, 10_000))
    def insert_raw_existing(self, i):
        versions = list(self.model.scan(*ALL, history=True))
        v = versions[i % len(versions)]
        ended = Record(*v.fullkey, v.create_tid + 1, v.create_ts, 99, v.data)
        for rec in (v, ended):
            assert self.store.insert_raw(rec) == self.model.insert_raw(rec)

    @rule()
    def alloc_obj_id(self):
        assert self.store.alloc_obj_id() == self.model.alloc_obj_id()

    @rule()
    def commit(self):
        a, b = self.store.commit(), self.model.commit()
        assert a == b
        self.tids.append(a)

    @rule(readonly=st.booleans())
    def remount(self, readonly):
        self.tids.append(self.model.commit())
        self._reopen(readonly)
        if readonly:  # look around read-only, then come back writable
            self.check_everything()
            self._reopen(False)

    def _reopen(self, readonly):
        self.store.close()
        self.store = Store.open(FileDevice(self.path), readonly=readonly)
        # a reopened store takes its next TID from the clock again; the model cannot remount
        assert self.store.current_tid >= self.model.current_tid
        self.model._current = self.store.current_tid
        self.model._history_floor = self.store.last_committed_tid  # what open starts from

    @rule(i=st.integers(0, 10_000), delta=st.integers(-1, 1))
    def asof_reads(self, i, delta):
        tid = self.tids[i % len(self.tids)] + delta
        assert list(self.store.scan(*ALL, tid)) == list(self.model.scan(*ALL, tid))
        assert self.store.tid_time(tid) == self.model.tid_time(tid)
        for k in [(0, 1, 0x10, 0), (1, 2, 0x11, 3)]:
            assert self.store.get(k, tid) == self.model.get(k, tid)

    @rule(since=st.integers(0, 10_000), lo=reckeys)
    def changed_since(self, since, lo):
        tid = self.tids[since % len(self.tids)]
        assert list(self.store.changed_since(lo, ALL[1], tid)) == \
            list(self.model.changed_since(lo, ALL[1], tid))

    @invariant()
    def check_everything(self):
        s, m = self.store, self.model
        assert (s.current_tid, s.last_committed_tid) == (m.current_tid, m.last_committed_tid)
        assert list(s.scan(*ALL, history=True)) == list(m.scan(*ALL, history=True))
        assert list(s.scan(*ALL, with_data=False)) == list(m.scan(*ALL, with_data=False))
        assert s.extent_lengths(*ALL) == m.extent_lengths(*ALL)
        assert s.list_pfs() == m.list_pfs()
        assert s.tree.dirty_count == s.tree.count_dirty()  # commits rely on this count
        alloc = s.allocator  # no block freed twice (shared extents)
        used = int(np.unpackbits(alloc.bits, bitorder="little")[:alloc.nblocks].sum())
        assert alloc.free_blocks == alloc.nblocks - used

    @rule()
    def scrub_is_clean(self):
        """Every referenced block in use, none in use unreferenced: shared blocks are freed
        exactly when their last version goes."""
        self.commit()
        report = scrub(self.store)
        assert report.ok, report.errors


StoreVsModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("HAMMER_MODEL_EXAMPLES", "40")), stateful_step_count=40,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
TestStoreVsModel = StoreVsModel.TestCase
