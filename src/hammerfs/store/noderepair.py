"""Rebuild a damaged B-tree node block bit for bit, or not at all.

A node's checksum lives in its parent (the root's in the volume header), so a rebuilt block
is believed only when its checksum is that one: nothing else is ever written back, and the
rewrite is in place (the same bytes at the same offset: no tree change, nothing to commit).
Candidate bytes come from, best first:

- the decoded copy of the node in memory (the node cache, the root), re-encoded;
- for a leaf: the damaged block itself (whatever the damage did not reach) and a replica's
  versions of the leaf's key range (mirror/heal.py: keys, TIDs, timestamps, lengths, the
  checksums of the data, inline data).  Data offsets are this volume's own, which no
  replica knows: an offset is taken from the damaged block when the extent there matches
  the replica's checksum, else searched for next to the other entries' extents and among
  the values a damaged run of its bytes could have held (aligned, inside the volume, in use);
- for an internal node: the damaged block and its children on disk (a child read at an
  offset the block names gives its checksum, first key and max TID).

Where the sources disagree on a field, each value is tried (at most ``MAX_COMBOS`` blocks
per node); damage that reached a field no source knows is not repairable.  A replica that
holds other versions of the range (a slave behind its master, different history kept)
gives candidates that do not verify: refused like a wrong data version.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hammerfs.errors import CorruptionError
from hammerfs.store.btree import Node
from hammerfs.store.format import (
    BLOCK,
    EXT_SHARED,
    INLINE_MAX,
    LEAF_ENTRY_SIZE,
    NODE_HDR_SIZE,
    NODE_SIZE,
    ZERO_CSUM,
    FullKey,
    checksum,
    decode_node,
    encode_inner,
    encode_leaf,
    extent_off,
    inner_rows,
    leaf_rows,
    max_entries,
    node_claims,
)

log = logging.getLogger("hammerfs.heal")

MAX_COMBOS = 1 << 14  # candidate blocks checksummed at most for one node
MAX_GUESSES = 4096  # values tried at most for one damaged offset field
MAX_GAP_CHOICES = 8  # replica versions tried for one entry whose key is damaged
START: FullKey = (0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Version:
    """One record version as a replica holds it, its key in THIS volume's PFS numbering."""

    key: FullKey
    delete_tid: int
    create_ts: int
    delete_ts: int
    length: int
    csum: bytes  # of the zero-padded data of an extent; ZERO_CSUM for inline data
    inline: bytes | None  # the data when length <= INLINE_MAX


class NodeRepairer:
    """The damaged-node repairs of one store: ``on_read`` is its B-tree's hook (a lookup
    met a damaged node), ``repair`` is the scrub's."""

    def __init__(self, store):
        self.store = store
        self._busy = threading.local()

    @contextlib.contextmanager
    def without_healing(self) -> Iterator[None]:
        """Reads in this thread meet damage as CorruptionError (a replica serving a repair
        must not ask for one in turn; a repair must not recurse into itself)."""
        was = getattr(self._busy, "on", False)
        self._busy.on = True
        try:
            yield
        finally:
            self._busy.on = was

    def on_read(self, off: int, csum: bytes, level: int, lo: FullKey | None,
                hi: FullKey | None, exc: CorruptionError) -> Node:
        """A lookup (store lock held) read a node that fails its checksum: the rebuilt node,
        written back, else ``exc`` is raised (EIO)."""
        if getattr(self._busy, "on", False):
            raise exc
        store = self.store
        store.damage.found += 1
        with self.without_healing():
            raw, source = self._rebuild(off, csum, level,
                                        self._versions(store.healer, level, lo, hi))
        if raw is None:
            store.damage.unrepairable += 1
            log.warning("unrepairable: %s", exc)
            raise exc
        if self._write(off, raw):
            store.damage.repaired += 1
            log.warning("repaired on read from %s: %s", source, exc)
        else:
            store.damage.unrepairable += 1
            log.warning("served from %s (volume read-only, not rewritten): %s", source, exc)
        level_read, keys, vals = decode_node(raw, off)
        return Node(level_read, keys, vals, off, csum)

    def repair(self, off: int, csum: bytes, level: int, lo: FullKey | None,
               hi: FullKey | None, healer=None) -> str | None | bool:
        """For scrub, called without the store lock (``healer``, the replica, is asked
        first): what the node was rebuilt from, False if it could not be, None if the tree
        no longer references it (changed since: nothing to repair)."""
        store = self.store
        with self.without_healing():
            versions = self._versions(healer, level, lo, hi)
            with store._lock:
                try:
                    if not self._referenced(off, csum, level, lo):
                        return None
                    raw, source = self._rebuild(off, csum, level, versions)
                except CorruptionError:  # another damaged node on its path: not now
                    raw = None
                store.damage.found += 1
                if raw is not None and self._write(off, raw):
                    store.damage.repaired += 1
                    log.warning("repaired B-tree node at offset %#x from %s", off, source)
                    return source
        store.damage.unrepairable += 1
        return False

    # -- sources ------------------------------------------------------------------------------
    def _versions(self, healer, level: int, lo: FullKey | None,
                  hi: FullKey | None) -> list[Version]:
        """A replica's versions of a damaged leaf's key range ([] if none is known)."""
        fetch = getattr(healer, "versions", None)
        if level or fetch is None:
            return []
        try:
            return fetch(lo or START, hi)
        except Exception as exc:  # a broken link: the node stays damaged
            log.warning("self-heal of a B-tree node: the replica failed: %s", exc)
            return []

    def _rebuild(self, off: int, csum: bytes, level: int,
                 versions: list[Version]) -> tuple[bytes | None, str]:
        tree = self.store.tree
        held = tree.cache.get(off) or (tree.root if tree.root.off == off else None)
        if held is not None and not held.dirty and held.csum == csum:
            raw = re_encode(held)
            if checksum(raw) == csum:
                return raw, "the copy in memory"
        damaged = self.store.device.read(off, NODE_SIZE)
        vol = self.store.header.volume_bytes
        if level:
            return rebuild_inner(damaged, csum, level, self._child_block, vol), "its children"
        return (rebuild_leaf(damaged, csum, versions, self._extent_at, vol),
                "the replica's records" if versions else "its undamaged entries")

    def _child_block(self, off: int) -> bytes | None:
        if not self._in_use(off, 1):
            return None
        return self.store.device.read(off, NODE_SIZE)

    def _extent_at(self, off: int, nblocks: int, csum: bytes) -> bool:
        return self._in_use(off, nblocks) and \
            checksum(self.store.device.read(off, nblocks * BLOCK)) == csum

    def _in_use(self, off: int, nblocks: int) -> bool:
        alloc = self.store.allocator
        first = off // BLOCK
        return off > 0 and off % BLOCK == 0 and first + nblocks <= alloc.nblocks \
            and alloc.is_used(first) and alloc.is_used(first + nblocks - 1)

    # -- the block on disk --------------------------------------------------------------------
    def _referenced(self, off: int, csum: bytes, level: int, lo: FullKey | None) -> bool:
        """Does the tree still reference the block (off, csum) as a node of ``level`` whose
        range starts at ``lo``?  (Else it was rewritten and freed since it was seen.)"""
        tree = self.store.tree
        node, k = tree.root, lo or START
        if node.level == level:
            return not node.dirty and node.off == off and node.csum == csum
        if node.level < level:
            return False
        while node.level > level + 1:
            node = tree.child(node, max(0, bisect_right(node.keys, k) - 1))
        ref = node.vals[max(0, bisect_right(node.keys, k) - 1)]
        return ref[3] is None and ref[0] == off and ref[1] == csum

    def _write(self, off: int, raw: bytes) -> bool:
        store = self.store
        if store.readonly or store.closed or getattr(store, "_broken", None) is not None:
            return False
        store.device.write(off, raw)
        store.device.flush()
        return True


def re_encode(node: Node) -> bytes:
    """The block a clean decoded node was read from or written as."""
    if node.level:
        return encode_inner(node.level, node.keys, node.vals)[0]
    return encode_leaf(node.keys, node.vals)[0]


# -- the search ---------------------------------------------------------------------------------

def _search(slots: list[list], build: Callable[[tuple], bytes], want: bytes) -> bytes | None:
    """The first block built from one candidate per slot whose checksum is ``want``."""
    total = 1
    for s in slots:
        total *= len(s)
        if not total or total > MAX_COMBOS:
            return None
    for combo in itertools.product(*slots):
        try:
            raw = build(combo)
        except (AssertionError, OverflowError, ValueError):  # does not fit a node
            continue
        if checksum(raw) == want:
            return raw
    return None


def _uniq(values) -> list:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _counts(claimed: int, cap: int, *others: int) -> list[int]:
    return _uniq(n if 0 < n <= cap else None for n in (claimed, *others))


# -- leaves -----------------------------------------------------------------------------------

def rebuild_leaf(damaged: bytes, want: bytes, versions: list[Version],
                 extent_ok: Callable[[int, int, bytes], bool], volume_bytes: int) -> bytes | None:
    """The leaf block whose checksum is ``want``, from its damaged copy and a replica's
    versions of its range; ``extent_ok(offset, blocks, csum)`` checks an extent on disk."""
    _, claimed, _, _ = node_claims(damaged)
    for n in _counts(claimed, max_entries(0), len(versions)):
        rows = leaf_rows(damaged, n)
        options = _align([r[:5] for r in rows], versions)
        lengths = [o[0].length if len(o) == 1 and o[0] else r[8] for r, o in zip(rows, options,
                                                                                 strict=True)]
        heap = _heap_pieces(damaged, n, lengths)
        offsets = _Offsets(extent_ok, volume_bytes)
        for r, opts in zip(rows, options, strict=True):  # extents found where the block says
            for o in opts:
                for length, csum in _extent_claims(r, o):
                    offsets.direct(r[9], length, csum)
        slots = [_leaf_slot(r, opts, heap[i], offsets) for i, (r, opts)
                 in enumerate(zip(rows, options, strict=True))]
        found = _search(slots, lambda combo: encode_leaf([c[0] for c in combo],
                                                         [c[1] for c in combo])[0], want)
        if found is not None:
            return found
    return None


def _align(dkeys: list[FullKey], versions: list[Version]) -> list[list[Version | None]]:
    """For each entry of the damaged leaf, the replica versions it may be: the one with its
    key, else (a damaged key) those between its neighbours' versions; None: an entry no
    replica has (another PFS, the store's own records), taken from the damaged block."""
    index = {v.key: i for i, v in enumerate(versions)}
    anchors, last = [], -1
    for k in dkeys:
        a = index.get(k)
        if a is not None and a > last:
            last = a
            anchors.append(a)
        else:
            anchors.append(None)
    out: list[list[Version | None]] = []
    prev = -1
    for i, a in enumerate(anchors):
        if a is not None:
            out.append([versions[a]])
            prev = a
            continue
        nxt = next((b for b in anchors[i + 1:] if b is not None), len(versions))
        between = versions[prev + 1:nxt][:MAX_GAP_CHOICES]
        out.append([*between, None])
    return out


def _heap_pieces(damaged: bytes, n: int, lengths: list[int]) -> list[bytes | None]:
    pos, out = NODE_HDR_SIZE + n * LEAF_ENTRY_SIZE, []
    for length in lengths:
        if length <= INLINE_MAX and pos + length <= NODE_SIZE:
            out.append(damaged[pos:pos + length])
            pos += length
        else:
            out.append(None)
    return out


def _extent_claims(row: tuple, version: Version | None) -> list[tuple[int, bytes]]:
    """The (length, checksum) of an external entry: the replica's (the same version has the
    same bytes on both sides), else the damaged block's."""
    if version is not None:
        return [(version.length, version.csum)] if version.length > INLINE_MAX else []
    return [(row[8], row[10])] if row[8] > INLINE_MAX else []


def _leaf_slot(row: tuple, options: list[Version | None], piece: bytes | None,
               offsets: _Offsets) -> list[tuple]:
    """Every (key, value) entry this slot may hold."""
    out = []
    for v in options:
        keys = _uniq([v.key if v else None, row[:5]])
        dtids = _uniq([v.delete_tid if v else None, row[5]])
        ctss = _uniq([v.create_ts if v else None, row[6]])
        dtss = _uniq([v.delete_ts if v else None, row[7]])
        payloads = []
        for length in _uniq([v.length if v else None, row[8]]):
            if length <= INLINE_MAX:
                datas = _uniq([v.inline if v and v.length == length else None,
                               piece if piece is not None and len(piece) == length else None])
                payloads += [(length, 0, ZERO_CSUM, d) for d in datas]
            else:
                for ln, cs in _extent_claims(row, v):
                    if ln == length:
                        payloads += [(length, o, cs, None) for o in offsets(row[9], ln, cs)]
        for k, dt, ct, ds, (ln, off, cs, data) in itertools.product(keys, dtids, ctss, dtss,
                                                                   payloads):
            entry = (k, (dt, ct, ds, ln, off, cs, data))
            if entry not in out:
                out.append(entry)
    return out


class _Offsets:
    """Where a leaf entry's extent is on this volume: verified by reading it."""

    def __init__(self, extent_ok: Callable[[int, int, bytes], bool], volume_bytes: int):
        self.ok = extent_ok
        self.volume_bytes = volume_bytes
        self.memo: dict[tuple[int, int, bytes], list[int]] = {}
        self.found: list[tuple[int, int]] = []  # (start, end) of extents verified so far

    def direct(self, claimed: int, length: int, csum: bytes) -> bool:
        if self.ok(extent_off(claimed), _blocks(length), csum):
            self.memo[(claimed, length, csum)] = [claimed]
            start = extent_off(claimed)
            self.found.append((start, start + _blocks(length) * BLOCK))
            return True
        return False

    def __call__(self, claimed: int, length: int, csum: bytes) -> list[int]:
        key = (claimed, length, csum)
        if key not in self.memo:
            self.memo[key] = []
            size = _blocks(length) * BLOCK
            guesses = itertools.chain((e for _, e in self.found), (s - size for s, _ in self.found),
                                      byte_repairs(claimed, self.volume_bytes))
            for g in itertools.islice(guesses, MAX_GUESSES):
                if g > 0 and self.ok(extent_off(g), _blocks(length), csum):
                    base = extent_off(g)  # the damage may have reached the shared flag too
                    self.memo[key] = [base | (claimed & EXT_SHARED), base | (~claimed & 1)]
                    break
        return self.memo[key]


def byte_repairs(value: int, volume_bytes: int) -> Iterator[int]:
    """The values a 64-bit offset field could have held before damage overwrote one run of
    its bytes: multiples of 4096 inside the volume (bit 0, the shared flag, as it reads),
    fewest replaced bytes first."""
    top = (1 << max(12, (volume_bytes - 1).bit_length())) - 1
    for span in range(1, 9):
        for start in range(9 - span):
            mask = ((1 << (8 * span)) - 1) << (8 * start)
            base = value & ~mask
            if base & ~top or base & (BLOCK - 2):
                continue  # bytes outside the run are wrong too: not one damaged run
            free = [b for b in range(12, 64) if mask >> b & 1 and top >> b & 1]
            if len(free) > 12:
                continue
            for x in range(1 << len(free)):
                yield base | sum(1 << b for i, b in enumerate(free) if x >> i & 1)


def _blocks(length: int) -> int:
    return -(-length // BLOCK)


# -- internal nodes -------------------------------------------------------------------------------

def rebuild_inner(damaged: bytes, want: bytes, level: int,
                  read_block: Callable[[int], bytes | None], volume_bytes: int) -> bytes | None:
    """The internal node block whose checksum is ``want``, from its damaged copy and its
    children (``read_block(offset)``: a block in use, else None)."""
    _, claimed, _, _ = node_claims(damaged)
    cap = max_entries(level)
    rows_all = inner_rows(damaged, cap)
    inferred = max((i + 1 for i, r in enumerate(rows_all) if any(r[:7]) or r[7] != ZERO_CSUM),
                   default=0)
    for n in _counts(claimed, cap, inferred):
        rows = rows_all[:n]
        facts = [_child_facts(r[5], r[7], r[:5], level, read_block) for r in rows]
        for i, r in enumerate(rows):  # children not where the block says: look around
            if facts[i] is None:
                near = [f[0] + d for f in (facts[i - 1] if i else None,
                                            facts[i + 1] if i + 1 < n else None)
                        if f is not None for d in (-2 * BLOCK, -BLOCK, BLOCK, 2 * BLOCK)]
                for g in itertools.islice(itertools.chain(near, byte_repairs(r[5], volume_bytes)),
                                          MAX_GUESSES):
                    facts[i] = _child_facts(g, r[7], r[:5], level, read_block)
                    if facts[i] is not None:
                        break
        slots = []
        for r, f in zip(rows, facts, strict=True):
            slot = []
            for k, o, m, c in itertools.product(_uniq([r[:5], f and f[2]]), _uniq([r[5], f and f[0]]),
                                                _uniq([r[6], f and f[3]]), _uniq([r[7], f and f[1]])):
                slot.append((k, [o, c, m, None]))
            slots.append(slot)
        found = _search(slots, lambda combo: encode_inner(level, [c[0] for c in combo],
                                                          [c[1] for c in combo])[0], want)
        if found is not None:
            return found
    return None


def _child_facts(off: int, csum: bytes, key: FullKey, level: int,
                 read_block: Callable[[int], bytes | None]) -> tuple | None:
    """(offset, checksum, first key, max TID) of the child at ``off`` when the block there is
    a node of the level below that has the checksum ``csum`` or the first key ``key``."""
    raw = read_block(off) if off > 0 and off % BLOCK == 0 else None
    if raw is None:
        return None
    try:
        child_level, keys, _ = decode_node(raw, off)
    except CorruptionError:
        return None
    if child_level != level - 1 or not keys:
        return None
    sum_ = checksum(raw)
    if sum_ != csum and keys[0] != key:
        return None
    return off, sum_, keys[0], node_claims(raw)[3]
