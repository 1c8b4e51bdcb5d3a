"""Block allocator: a 1-bit-per-4-KiB-block map, handed out from 8 MiB big-blocks.

Metadata (B-tree nodes) and data extents are appended from different current big-blocks so
that sequential file data stays contiguous.  A block freed in the open transaction that was
part of the last committed state stays allocated until the freeing commit is durable (a crash
must still find the old state intact); a block allocated and freed inside the same
transaction is reusable at once.

The map is persisted per commit into one of two fixed regions (matching the header slot), each
a checksum table (whose checksum is in the header) followed by the bitmap pages.  Only pages
changed since that region was last written are rewritten.
"""

from __future__ import annotations

import numpy as np

from hammerfs.errors import CorruptionError, FragmentedSpace, NoSpace
from hammerfs.store.format import BITS_PER_PAGE, BLOCK, BLOCKS_PER_BIGBLOCK, CSUM_SIZE, checksum

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
_BB_BYTES = BLOCKS_PER_BIGBLOCK // 8
META, DATA = 0, 1
_SMALL_RUN = 64  # runs up to this many blocks are tested and set with int ops, not numpy


class Allocator:
    def __init__(self, nblocks: int, bitmap: bytearray, region_blocks: tuple[int, int],
                 table_blocks: int):
        self.nblocks = nblocks
        self.bits = np.frombuffer(bitmap, dtype=np.uint8)  # writable view of the bytearray
        self._raw = bitmap
        self.pages = len(bitmap) // BLOCK
        self.region_blocks = region_blocks
        self.table_blocks = table_blocks
        self.bb_count = -(-nblocks // BLOCKS_PER_BIGBLOCK)
        self._recount()
        self.cursor = [0, 0]  # next block to try, per kind (META, DATA)
        self.window = [(0, 0), (0, 0)]  # per kind: a known free run [next, end) to append to
        self.avoid = -1  # a big-block being emptied (store/reblock.py): never allocated from
        self.txn_allocated: set[int] = set()  # data extents allocated in the open transaction
        self.pending: list[tuple[int, int]] = []  # (block, count) freed, committed-state blocks
        self.dirty_pages: list[set[int]] = [set(), set()]
        self.page_csums = [bytearray(self.pages * CSUM_SIZE), bytearray(self.pages * CSUM_SIZE)]

    def _padding_bits(self) -> int:
        return self.pages * BITS_PER_PAGE - self.nblocks

    # -- creation and loading -------------------------------------------------------------------
    @classmethod
    def fresh(cls, nblocks: int, pages: int, reserved: int, region_blocks: tuple[int, int],
              table_blocks: int) -> Allocator:
        """A map with blocks [0, reserved) and the padding past the volume end in use."""
        bitmap = bytearray(pages * BLOCK)
        alloc = cls(nblocks, bitmap, region_blocks, table_blocks)
        alloc._set_range(0, reserved, True)
        alloc._set_range(nblocks, pages * BITS_PER_PAGE - nblocks, True)
        alloc._recount()
        alloc.dirty_pages = [set(range(pages)), set(range(pages))]  # regions hold garbage
        return alloc

    def _recount(self) -> None:
        per_bb = self.bits.reshape(-1, _BB_BYTES)
        self.bb_used = _POPCOUNT[per_bb].sum(axis=1).astype(np.int64)[: self.bb_count]
        self.free_blocks = self.nblocks - int(_POPCOUNT[self.bits].sum()) + self._padding_bits()

    @classmethod
    def load(cls, dev, nblocks: int, pages: int, table_blocks: int,
             region_blocks: tuple[int, int], slot: int, table_csum: bytes) -> Allocator:
        base = region_blocks[slot] * BLOCK
        table = dev.read(base, table_blocks * BLOCK)
        if checksum(table) != table_csum:
            raise CorruptionError(f"free-map table at offset {base:#x} failed verification", base)
        raw = bytearray(dev.read(base + table_blocks * BLOCK, pages * BLOCK))
        for p in range(pages):
            page = memoryview(raw)[p * BLOCK:(p + 1) * BLOCK]
            if checksum(page) != table[p * CSUM_SIZE:(p + 1) * CSUM_SIZE]:
                where = base + (table_blocks + p) * BLOCK
                raise CorruptionError(f"free-map page at offset {where:#x} failed verification",
                                      where)
        alloc = cls(nblocks, raw, region_blocks, table_blocks)
        alloc.page_csums[slot][:] = table[: pages * CSUM_SIZE]
        alloc.dirty_pages[1 - slot] = set(range(pages))  # the other region's content is unknown
        return alloc

    # -- bit manipulation ---------------------------------------------------------------------
    def _set_range(self, block: int, count: int, used: bool) -> None:
        if count <= 0:
            return
        lo, hi = block // 8, (block + count - 1) // 8 + 1
        start = block - lo * 8
        if count <= _SMALL_RUN:  # one int op beats numpy's per-call cost (small files)
            word = int.from_bytes(self._raw[lo:hi], "little")
            mask = ((1 << count) - 1) << start
            word = word | mask if used else word & ~mask
            self._raw[lo:hi] = word.to_bytes(hi - lo, "little")
        else:
            bits = np.unpackbits(self.bits[lo:hi], bitorder="little")
            bits[start:start + count] = used
            self.bits[lo:hi] = np.packbits(bits, bitorder="little")
        for page in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
            self.dirty_pages[0].add(page)
            self.dirty_pages[1].add(page)

    def _mark_singles(self, blocks: np.ndarray, used: bool) -> None:
        """Mark many single blocks at once: a commit replaces thousands of B-tree nodes,
        and one numpy pass beats a bit-unpacking ``_mark`` per block."""
        bits = np.left_shift(1, blocks & 7).astype(np.uint8)
        if used:
            np.bitwise_or.at(self.bits, blocks >> 3, bits)
        else:
            np.bitwise_and.at(self.bits, blocks >> 3, np.bitwise_not(bits))
        np.add.at(self.bb_used, blocks // BLOCKS_PER_BIGBLOCK, 1 if used else -1)
        self.free_blocks += -len(blocks) if used else len(blocks)
        for page in np.unique(blocks // BITS_PER_PAGE).tolist():
            self.dirty_pages[0].add(page)
            self.dirty_pages[1].add(page)

    def _mark(self, block: int, count: int, used: bool) -> None:
        self._set_range(block, count, used)
        delta = count if used else -count
        self.free_blocks -= delta
        first, last = block // BLOCKS_PER_BIGBLOCK, (block + count - 1) // BLOCKS_PER_BIGBLOCK
        if first == last:
            self.bb_used[first] += delta
        else:
            for b in range(first, last + 1):
                lo = max(block, b * BLOCKS_PER_BIGBLOCK)
                hi = min(block + count, (b + 1) * BLOCKS_PER_BIGBLOCK)
                self.bb_used[b] += (hi - lo) if used else -(hi - lo)

    def mark_used(self, block: int, count: int) -> None:
        """Mark committed blocks in use (rebuilding a damaged map from the B-tree)."""
        self._mark(block, count, True)

    def is_used(self, block: int) -> bool:
        return bool(self.bits[block // 8] >> (block % 8) & 1)

    # -- allocation ---------------------------------------------------------------------------
    def alloc(self, count: int, kind: int) -> int:
        """Allocate ``count`` contiguous blocks; returns the first block number."""
        nxt, end = self.window[kind]
        if nxt + count <= end and self._range_free(nxt, count):
            block = nxt  # fast path: appending to the current free run
        else:
            block = self._find(count, kind)
            end = self._run_end(block)
        self._mark(block, count, True)
        self.cursor[kind] = block + count
        self.window[kind] = (block + count, end)
        if kind == DATA:
            self.txn_allocated.add(block)
        return block

    def alloc_many(self, count: int, kind: int) -> list[int]:
        """``count`` blocks, not necessarily contiguous, taken run by run; returned in
        descending order so that ``pop()`` hands them out in ascending order."""
        if count > self.free_blocks:  # checked first: a partial allocation would leak
            raise NoSpace(f"no space left on volume ({count} blocks needed)")
        blocks: list[int] = []
        while len(blocks) < count:
            nxt, end = self.window[kind]
            if nxt >= end or not self._range_free(nxt, 1):
                nxt = self._find(1, kind)
                end = self._run_end(nxt)
            take = min(count - len(blocks), end - nxt)
            if not self._range_free(nxt, take):
                take = 1
            self._mark(nxt, take, True)
            self.cursor[kind] = nxt + take
            self.window[kind] = (nxt + take, end)
            blocks.extend(range(nxt, nxt + take))
        blocks.reverse()
        return blocks

    def set_avoid(self, bb: int) -> None:
        """Allocate nothing in big-block ``bb`` until called with -1 (reblock empties it)."""
        self.avoid = bb
        self.window = [(0, 0), (0, 0)]

    def _find(self, count: int, kind: int) -> int:
        cur = self.cursor[kind]
        bb = cur // BLOCKS_PER_BIGBLOCK
        if cur and bb < self.bb_count and bb != self.avoid:
            hit = self._run_in_bigblock(bb, count, cur)
            if hit is not None:
                return hit
        other_bb = self.cursor[1 - kind] // BLOCKS_PER_BIGBLOCK
        capacity = BLOCKS_PER_BIGBLOCK - self.bb_used
        if self.avoid >= 0:
            capacity[self.avoid] = 0
        candidates = np.flatnonzero(capacity >= count)
        if self.avoid >= 0:  # reblock packs what it moves into the fullest big-blocks
            for cand in candidates[np.argsort(-self.bb_used[candidates], kind="stable")]:
                hit = self._run_in_bigblock(int(cand), count, 0)
                if hit is not None:
                    return hit
        # prefer empty big-blocks (keeps data contiguous), then any not used by the other kind
        empty = candidates[self.bb_used[candidates] == 0]
        for group in (empty[empty != other_bb], candidates[candidates != other_bb],
                      candidates):
            for cand in _rotate(group, bb):
                hit = self._run_in_bigblock(int(cand), count, 0)
                if hit is not None:
                    return hit
        if count <= self.free_blocks:
            raise FragmentedSpace(f"no run of {count} free blocks on the volume "
                                  f"({self.free_blocks} blocks free, fragmented)")
        raise NoSpace(f"no space left on volume (no run of {count} free blocks)")

    def has_run(self, count: int, kind: int) -> bool:
        """Would ``alloc(count, kind)`` find a contiguous run now?"""
        nxt, end = self.window[kind]
        if nxt + count <= end and self._range_free(nxt, count):
            return True
        try:
            self._find(count, kind)
        except NoSpace:
            return False
        return True

    def _range_free(self, block: int, count: int) -> bool:
        lo, hi = block // 8, (block + count - 1) // 8 + 1
        start = block - lo * 8
        if count <= _SMALL_RUN:
            word = int.from_bytes(self._raw[lo:hi], "little")
            return not word >> start & ((1 << count) - 1)
        bits = np.unpackbits(self.bits[lo:hi], bitorder="little")
        return not bits[start:start + count].any()

    def _run_end(self, block: int) -> int:
        """End of the free run starting at ``block``, within its big-block."""
        bb = block // BLOCKS_PER_BIGBLOCK
        used = np.unpackbits(self.bits[bb * _BB_BYTES:(bb + 1) * _BB_BYTES], bitorder="little")
        rest = used[block - bb * BLOCKS_PER_BIGBLOCK:]
        taken = np.flatnonzero(rest)
        return block + (int(taken[0]) if len(taken) else len(rest))

    def _run_in_bigblock(self, bb: int, count: int, start: int) -> int | None:
        base = bb * BLOCKS_PER_BIGBLOCK
        used = np.unpackbits(self.bits[bb * _BB_BYTES:(bb + 1) * _BB_BYTES], bitorder="little")
        offset = max(0, start - base)
        if count == 1:
            free = np.flatnonzero(used[offset:] == 0)
            return base + offset + int(free[0]) if len(free) else None
        sums = np.concatenate(([0], np.cumsum(used[offset:], dtype=np.int32)))
        window = sums[count:] - sums[:-count]
        free = np.flatnonzero(window == 0)
        return base + offset + int(free[0]) if len(free) else None

    def free(self, block: int, count: int, *, data: bool) -> None:
        """Release blocks: at once if allocated in this transaction, else after commit."""
        if data and block in self.txn_allocated:
            self.txn_allocated.discard(block)
            self._mark(block, count, False)
        else:
            self.pending.append((block, count))

    def pending_blocks(self) -> int:
        return sum(c for _, c in self.pending)

    # -- commit -----------------------------------------------------------------------------------
    def release_pending(self) -> None:
        """Called by commit once no more blocks will be allocated before the header write:
        the map written now (and every later allocation) treats the freed blocks as free."""
        self._mark_runs(self.pending, False)
        self.pending.clear()
        self.txn_allocated.clear()

    def prepare_commit(self, slot: int) -> tuple[list[tuple[int, bytes]], bytes,
                                                  list[tuple[int, int]]]:
        """For a commit whose header is written later, while the next transaction already
        allocates: the writes and table checksum of map region ``slot`` with the freed blocks
        free (as the new header's state has them), and those blocks, which stay *held* (not
        handed out) until ``release_held`` is called once that header is durable: until then
        the previous header, which still references them, is the one a crash would find."""
        held = list(self.pending)
        self.release_pending()
        writes, csum = self.persist(slot)
        self._mark_runs(held, True)
        return writes, csum, held

    def release_held(self, held: list[tuple[int, int]]) -> None:
        """The blocks ``prepare_commit`` held: free now that its header is durable."""
        self._mark_runs(held, False)

    def _mark_runs(self, runs: list[tuple[int, int]], used: bool) -> None:
        singles = [block for block, count in runs if count == 1]
        for block, count in runs:
            if count != 1:
                self._mark(block, count, used)
        if singles:
            self._mark_singles(np.array(singles, dtype=np.int64), used)

    def persist(self, slot: int) -> tuple[list[tuple[int, bytes]], bytes]:
        """Writes bringing region ``slot`` up to date, and that region's table checksum."""
        base = self.region_blocks[slot] * BLOCK
        writes = []
        csums = self.page_csums[slot]
        for page in sorted(self.dirty_pages[slot]):
            data = self._raw[page * BLOCK:(page + 1) * BLOCK]
            csums[page * CSUM_SIZE:(page + 1) * CSUM_SIZE] = checksum(data)
            writes.append((base + (self.table_blocks + page) * BLOCK, bytes(data)))
        self.dirty_pages[slot].clear()
        table = bytes(csums) + bytes(self.table_blocks * BLOCK - len(csums))
        writes.append((base, table))
        return writes, checksum(table)

    # -- statistics -------------------------------------------------------------------------------
    def bigblocks_free(self) -> int:
        return int(np.count_nonzero(self.bb_used == 0))

    def bigblock_fill(self) -> list[int]:
        return [int(x) for x in self.bb_used]


def _rotate(group: np.ndarray, after: int) -> list[int]:
    """Candidates after ``after`` first, then the ones before it (round-robin)."""
    if not len(group):
        return []
    split = int(np.searchsorted(group, after, side="right"))
    return [int(x) for x in np.concatenate((group[split:], group[:split]))]
