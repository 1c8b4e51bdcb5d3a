"""Scrub: verify every block reachable from the volume header and report each damaged one.

Reads every B-tree node from disk (not the cache) against the checksum in its parent, every
data extent against the checksum in its leaf entry, and checks that each reachable block is
marked in use in the free-map.  A damaged node hides its subtree: that is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hammerfs.errors import CorruptionError, HammerError
from hammerfs.store.btree import Node
from hammerfs.store.format import BLOCK
from hammerfs.store.store import Store


@dataclass
class ScrubReport:
    nodes: int = 0
    records: int = 0
    extents: int = 0
    data_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    damaged_offsets: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def damage(self, exc: HammerError, where: int | None) -> None:
        self.errors.append(str(exc))
        if where is not None:
            self.damaged_offsets.append(where)


def scrub(store: Store) -> ScrubReport:
    report = ScrubReport()
    tree = store.tree
    alloc = store.allocator
    if store.header_damage is not None:  # the volume may have been rolled back
        report.errors.append(store.header_damage.message)
    if store.freemap_damage is not None:
        report.damage(store.freemap_damage, store.freemap_damage.location)
        report.errors[-1] += " (rebuilt from the B-tree; the next commit rewrites it)"
    with store._lock:
        reached = np.zeros(alloc.nblocks, dtype=bool)
        _scrub_node(store, tree.root, report, alloc, reached)
        if store.freemap_damage is None and not report.damaged_offsets:
            _check_leaks(store, reached, report)
    return report


def _check_leaks(store: Store, reached: np.ndarray, report: ScrubReport) -> None:
    """Blocks the free-map marks in use that nothing references (space lost until fixed)."""
    alloc = store.allocator
    hdr = store.header
    reached[: hdr.fm_region1 + hdr.fm_table_blocks + hdr.fm_pages] = True  # headers, free-map
    for block, count in alloc.pending:  # freed in the open transaction, still held
        reached[block:block + count] = True
    used = np.unpackbits(alloc.bits, bitorder="little")[: alloc.nblocks].astype(bool)
    leaked = np.flatnonzero(used & ~reached)
    if len(leaked):
        report.errors.append(f"free-map: {len(leaked)} blocks are marked in use but not "
                             f"referenced (first at offset {int(leaked[0]) * BLOCK:#x})")


def _scrub_node(store: Store, node: Node, report: ScrubReport, alloc, reached) -> None:
    report.nodes += 1
    if node.off:
        reached[node.off // BLOCK] = True
    if node.off and not alloc.is_used(node.off // BLOCK):
        report.errors.append(f"B-tree node at offset {node.off:#x} is not marked in use "
                             f"in the free-map")
    if not node.level:
        for k, v in zip(node.keys, node.vals, strict=True):
            report.records += 1
            if v[4]:
                reached[v[4] // BLOCK:v[4] // BLOCK + -(-v[3] // BLOCK)] = True
                _scrub_extent(store, k, v, report, alloc)
        return
    for ref in node.vals:
        child = ref[3]
        if child is None:
            try:
                child = store.tree.read_node(ref[0], ref[1])
            except CorruptionError as exc:
                report.damage(exc, ref[0])
                continue
        _scrub_node(store, child, report, alloc, reached)


def _scrub_extent(store: Store, k, v, report: ScrubReport, alloc) -> None:
    report.extents += 1
    report.data_bytes += v[3]
    first, count = v[4] // BLOCK, -(-v[3] // BLOCK)
    off = first * BLOCK  # without the shared-extent flag bit (format 2)
    if not all(alloc.is_used(b) for b in (first, first + count - 1)):
        report.errors.append(f"data extent at offset {off:#x} is not marked in use "
                             f"in the free-map")
    try:
        store.data_of(k, v)
    except CorruptionError as exc:
        report.damage(exc, off)
