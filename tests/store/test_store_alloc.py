"""The block allocator against a set model: no block handed out twice, frees of committed
blocks held until the commit, counts exact, and the persisted map reloads identically."""

from __future__ import annotations

import os

import hypothesis.strategies as st
from devices import MemDevice
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hammerfs.errors import NoSpace
from hammerfs.store.alloc import DATA, META, Allocator
from hammerfs.store.format import BLOCK, freemap_geometry

NBLOCKS = 3 * 2048 + 300  # three big-blocks and a partial one
PAGES, TABLE = freemap_geometry(NBLOCKS)
REGIONS = (2, 2 + TABLE + PAGES)
RESERVED = REGIONS[1] + TABLE + PAGES


class AllocatorModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dev = MemDevice(NBLOCKS * BLOCK)
        self.alloc = Allocator.fresh(NBLOCKS, PAGES, RESERVED, REGIONS, TABLE)
        self.committed: set[int] = set(range(RESERVED))  # in use as of the last commit
        self.txn_new: dict[int, int] = {}  # extents allocated in the open transaction
        self.txn_freed: set[int] = set()  # committed blocks freed in the open transaction
        self.seq = 0
        self.table_csum = b""

    def in_use(self) -> set[int]:
        new = {b for start, n in self.txn_new.items() for b in range(start, start + n)}
        return self.committed | new

    @rule(count=st.integers(1, 300), kind=st.sampled_from([META, DATA]))
    def allocate(self, count, kind):
        try:
            block = self.alloc.alloc(count, kind) if kind == DATA else \
                self.alloc.alloc_many(count, META)
        except NoSpace:
            return
        got = range(block, block + count) if kind == DATA else block
        assert not set(got) & self.in_use(), "a block in use was handed out again"
        assert all(0 <= b < NBLOCKS for b in got)
        if kind == DATA:
            self.txn_new[block] = count
        else:
            self.committed |= set(got)  # nodes: written by the commit, committed with it

    @precondition(lambda self: self.txn_new)
    @rule(i=st.integers(0, 1000))
    def free_new(self, i):
        start = sorted(self.txn_new)[i % len(self.txn_new)]
        self.alloc.free(start, self.txn_new.pop(start), data=True)

    @precondition(lambda self: len(self.committed) > RESERVED)
    @rule(i=st.integers(0, 10_000), n=st.integers(1, 4))
    def free_committed(self, i, n):
        candidates = sorted(self.committed - set(range(RESERVED)) - self.txn_freed)
        if not candidates:
            return
        start = candidates[i % len(candidates)]
        run = [b for b in range(start, start + n) if b in self.committed
               and b not in self.txn_freed]
        run = run[: next((j for j in range(1, len(run)) if run[j] != run[0] + j), len(run))]
        self.alloc.free(run[0], len(run), data=False)
        self.txn_freed |= set(run)

    @rule()
    def commit(self):
        self.alloc.release_pending()
        self.seq += 1
        writes, self.table_csum = self.alloc.persist(self.seq % 2)
        for off, data in writes:
            self.dev.write(off, data)
        self.committed = (self.committed | {b for s, n in self.txn_new.items()
                                            for b in range(s, s + n)}) - self.txn_freed
        self.txn_new.clear()
        self.txn_freed.clear()

    @precondition(lambda self: self.seq)
    @rule()
    def reload(self):
        self.commit()
        loaded = Allocator.load(self.dev, NBLOCKS, PAGES, TABLE, REGIONS, self.seq % 2,
                                self.table_csum)
        assert bytes(loaded.bits) == bytes(self.alloc.bits)
        assert loaded.free_blocks == self.alloc.free_blocks
        self.alloc = loaded

    @invariant()
    def counts_match(self):
        # blocks freed from the committed state still count as used until the commit
        assert self.alloc.free_blocks == NBLOCKS - len(self.in_use())
        assert all(self.alloc.is_used(b) for b in self.txn_freed)


AllocatorModel.TestCase.settings = settings(max_examples=int(os.environ.get("HAMMER_MODEL_EXAMPLES", "40")),
                                            stateful_step_count=40,
                                            deadline=None)
TestAllocatorModel = AllocatorModel.TestCase
