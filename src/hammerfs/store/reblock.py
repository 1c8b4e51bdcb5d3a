"""Reblock: move live data extents and B-tree nodes out of sparsely used big-blocks.

Freed blocks are reused directly, but after much create/delete/prune a volume ends up with
most big-blocks partly used: free space in small holes, no long run for a 64 KiB extent (the
file layer then stores 4 KiB extents) and reads of a file scattered over the disk.  Reblock
empties the least-filled big-blocks one at a time (HAMMER's ``hammer reblock`` with a fill
level): every extent and node stored in it is copied to blocks outside it (the allocator
avoids it meanwhile and packs the copies into the fullest big-blocks that take them, so
they do not land in a fresh big-block that would be sparse in turn), the leaf entries and
parents are repointed, and a commit makes that durable.  The old blocks are freed by that commit.

Each big-block is emptied in steps of the mount's lock (``lock``, hammerfs.steps): the scan
for what it holds, then the moves, a group of overlapping extents at a time, each leaving a
consistent tree (an extent is looked up again before it moves: users may have changed or
removed it between steps), then a commit whose flush runs without the lock.  The allocator
avoids the big-block from the start, so nothing new lands in it meanwhile.  A crash at any
point leaves the last committed state, which is always valid (copies go to blocks free in
it); a run stops at a deadline and the next run simply starts again from the then
least-filled big-block (nothing to resume: reblock keeps no state).

Shared extents (format 2) move as a group: every version of the same 64 KiB key window
whose blocks overlap is moved together, keeping their offsets relative to each other, so a
shared block is still copied once.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

from hammerfs.errors import CorruptionError, NoSpace
from hammerfs.steps import NO_LOCK, Steps
from hammerfs.store.alloc import DATA
from hammerfs.store.format import (
    BLOCK,
    BLOCKS_PER_BIGBLOCK,
    EXT_SHARED,
    FullKey,
    LeafVal,
    checksum,
    extent_off,
    share_window,
)
from hammerfs.store.records import MAX_U64

SCAN_LEAVES = 32  # B-tree leaves looked at per step (a cold leaf is a read and a decode)


@dataclass
class ReblockResult:
    bigblocks: int = 0  # big-blocks emptied
    extents: int = 0  # data extents moved
    nodes: int = 0  # B-tree nodes rewritten elsewhere
    bytes_moved: int = 0
    complete: bool = True  # False: the deadline stopped it (run again to go on)


def candidates(store, fill_percent: int) -> list[int]:
    """Big-blocks in use below ``fill_percent`` % full, least filled first (never one that
    holds the headers and free-map)."""
    fill = store.allocator.bb_used
    hdr = store.header
    fixed = -(-(hdr.fm_region1 + hdr.fm_table_blocks + hdr.fm_pages) // BLOCKS_PER_BIGBLOCK)
    limit = BLOCKS_PER_BIGBLOCK * fill_percent / 100
    found = [bb for bb in range(fixed, len(fill)) if 0 < fill[bb] < limit]
    return sorted(found, key=lambda bb: int(fill[bb]))


def reblock(store, fill_percent: int = 90, *, deadline: float | None = None,
            lock: AbstractContextManager = NO_LOCK) -> ReblockResult:
    """Empty every big-block below ``fill_percent`` % (least filled first), one commit per
    big-block, until done or ``deadline`` (time.monotonic()).  ``lock`` (a mount's, so its
    views stay consistent) is taken in steps, never for a whole big-block."""
    result = ReblockResult()
    tried: set[int] = set()
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            result.complete = False
            return result
        with lock, store._lock:
            todo = [bb for bb in candidates(store, fill_percent) if bb not in tried]
        if not todo:
            return result
        bb = todo[0]
        tried.add(bb)
        if not empty_bigblock(store, bb, result, lock):
            return result  # no room outside it: nothing more can move now


def empty_bigblock(store, bb: int, result: ReblockResult,
                   lock: AbstractContextManager = NO_LOCK) -> bool:
    """Move everything stored in big-block ``bb`` elsewhere and commit.  False if the free
    space outside it cannot take what it holds."""
    alloc, tree = store.allocator, store.tree
    first, end = bb * BLOCKS_PER_BIGBLOCK, (bb + 1) * BLOCKS_PER_BIGBLOCK
    with lock, store._lock:
        alloc.set_avoid(bb)  # from now on nothing new is allocated in it
    try:
        store.commit_outside(lock)  # nothing pending: every extent in it is on disk
        with Steps(lock) as steps:
            with store._lock:
                held = int(alloc.bb_used[bb])
                outside = alloc.free_blocks - (BLOCKS_PER_BIGBLOCK - held)
                if outside < held + 4 * (tree.height() + 2) + store._reserve:
                    return False
            moved: set[FullKey] = set()
            cursor: FullKey | None = None
            while True:  # the tree, SCAN_LEAVES leaves per step, then what they hold
                with store._lock:
                    dirty_before = tree.dirty_count
                    entries, cursor = tree.relocate_scan(first, end, cursor, SCAN_LEAVES)
                    result.nodes += max(0, tree.dirty_count - dirty_before)
                steps.tick()
                for k, _v in entries:
                    with store._lock:
                        _move_entry(store, k, first, end, moved, result)
                    steps.tick()
                if cursor is None:
                    break
            with store._lock:
                store._dirty = True
        store.commit_outside(lock)
    except NoSpace:
        store.commit_outside(lock)  # what moved so far is valid; the rest stays
        return False
    finally:
        with store._lock:
            alloc.set_avoid(-1)
    result.bigblocks += 1
    return True


def _move_entry(store, k: FullKey, first: int, end: int, moved: set[FullKey],
                result: ReblockResult) -> None:
    """Move the extent of entry ``k`` (and every extent sharing blocks with it) out of
    blocks [first, end), as the tree holds it now (it may have changed since the scan)."""
    if k in moved:
        return
    v = store.tree.exact(k)
    if v is None or not v[4] or v[6] is not None or not first <= v[4] // BLOCK < end:
        return  # removed, replaced or moved since the scan
    for base, count, members in _components(_group(store.tree, k, v)):
        if first <= base < end:
            _move(store, base, count, members)
            result.extents += len(members)
            result.bytes_moved += count * BLOCK
        moved.update(mk for mk, _ in members)


def _group(tree, k: FullKey, v: LeafVal) -> list[tuple[FullKey, LeafVal]]:
    """The versions whose blocks may overlap this entry's: itself, or for a shared extent
    every shared version in its key window."""
    if not v[4] & EXT_SHARED:
        return [(k, v)]
    lo, hi = share_window(k[3])
    return [(gk, gv) for gk, gv in tree.collect((*k[:3], lo, 0), (*k[:3], hi, MAX_U64),
                                                 1 << 30) if gv[4] & EXT_SHARED]


def _components(group: list[tuple[FullKey, LeafVal]]):
    """(first block, block count, members) of each set of entries whose blocks overlap."""
    spans = sorted((v[4] // BLOCK, -(-v[3] // BLOCK), k, v) for k, v in group)
    comp: list = []
    start = stop = -1
    for b, n, k, v in spans:
        if comp and b < stop:
            comp.append((k, v))
            stop = max(stop, b + n)
            continue
        if comp:
            yield start, stop - start, comp
        comp, start, stop = [(k, v)], b, b + n
    if comp:
        yield start, stop - start, comp


def _move(store, base: int, count: int, members: list[tuple[FullKey, LeafVal]]) -> None:
    """Copy blocks [base, base + count) to a new run, verifying every member's checksum on
    the way, and repoint the members.  The old run is freed by the commit."""
    raw = store.device.read(base * BLOCK, count * BLOCK)
    for _, v in members:
        at = v[4] // BLOCK - base
        if checksum(raw[at * BLOCK:(at + -(-v[3] // BLOCK)) * BLOCK]) != v[5]:
            off = extent_off(v[4])
            raise CorruptionError(f"reblock: data extent at offset {off:#x} failed checksum "
                                  f"verification (scrub the volume)", off)
    alloc, tree = store.allocator, store.tree
    new = alloc.alloc(count, DATA)
    store.device.write(new * BLOCK, raw)
    for k, v in members:
        path, leaf, i = tree.locate(k)
        off = (new + v[4] // BLOCK - base) * BLOCK | (v[4] & EXT_SHARED)
        tree.set_val_at(path, leaf, i, (*v[:4], off, *v[5:]))
    alloc.free(base, count, data=False)
