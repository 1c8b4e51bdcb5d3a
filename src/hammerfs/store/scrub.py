"""Scrub: verify every block reachable from the volume header and report each damaged one.

Reads every B-tree node from disk (not the cache) against the checksum in its parent, every
data extent against the checksum in its leaf entry, and checks that each reachable block is
marked in use in the free-map.  A damaged node hides its subtree: that is reported too.

The walk goes in key order in bounded steps (about ``STEP_BYTES``, a tenth of a second's
worth at low rates): the nodes of a step are walked under the store lock, its data extents
read and checksummed after it is released, then the walk sleeps as long as ``rate``
requires, so a mounted volume stays responsive while it is scrubbed.  Each step resumes at a key, not at
a node: the tree may change between steps (records written behind the cursor are new and
were checksummed as they were written).  On a writable volume the cursor and the counts are
kept in the volume itself (store-private records ``SCRUB_OBJ``, committed with the mount's
next commit), so a scrub interrupted by ``--stop``, a crash or a reboot continues where it
was.  A damaged data extent is repaired when the store has a healer (a replica, see
``hammerfs.mirror.heal``): outside the lock, then written back only if the leaf still holds
that entry and the bytes match its checksum (``Store.rewrite_data``).
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hammerfs.errors import CorruptionError, HammerError
from hammerfs.store.btree import Node
from hammerfs.store.format import BLOCK, SCRUB_OBJ, FullKey, LeafVal, checksum, extent_off
from hammerfs.store.store import Store, _fmt_key

# Bytes/s read by an online scrub unless --rate says otherwise.  The mount's requests wait
# for a scrub only while it walks a step's nodes (its data is checked without the store
# lock) and its thread is in the idle I/O class (control/scrubbing.py), so the
# limit is about the disk's bandwidth left to others, not latency: stat p99 stays a few ms
# unlimited (docs/performance.md "Online scrub").  2 GiB/s leaves an NVMe disk some room.
DEFAULT_RATE = 2 << 30
STEP_BYTES = 8 << 20  # verified per step (the tree walked under the store lock, then the
#                      step's extents read and checksummed without it)
NODES_PER_STEP = 24  # B-tree nodes read (and decrypted, decoded) per hold of the store lock
RUN_BYTES = 1 << 20  # adjacent (small) extents read with one device read (larger reads
#                      cost more in fresh memory than they save in calls: measured)
LEAF_COST = 4 * BLOCK  # a leaf counts as this much work (a node read is a small random read)
CHECKPOINT_SECONDS = 1.0  # how often a running scrub saves its cursor
MAX_DAMAGE_KEPT = 1000  # damage entries kept in the volume (the counts are always exact)
STATE_KEY = 0  # (STORE_PFS, SCRUB_OBJ, 0, STATE_KEY): the state; keys 1.. the damage entries
START: FullKey = (0, 0, 0, 0, 0)


@dataclass
class Damage:
    """One damaged block: a data extent (``key`` is its record) or a B-tree node (``key`` ..
    ``end`` is the key range it held, as its parent says)."""

    kind: str  # "extent" or "node"
    offset: int
    key: FullKey
    message: str
    end: FullKey | None = None
    repaired: bool = False

    def encode(self) -> bytes:
        return json.dumps([self.kind, self.offset, list(self.key), self.message[:300],
                           list(self.end) if self.end else None, self.repaired]).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Damage:
        kind, off, key, msg, end, repaired = json.loads(raw)
        return cls(kind, off, tuple(key), msg, tuple(end) if end else None, repaired)


@dataclass
class ScrubReport:
    nodes: int = 0
    records: int = 0
    extents: int = 0
    data_bytes: int = 0
    errors: list[str] = field(default_factory=list)  # what is still wrong
    damaged_offsets: list[int] = field(default_factory=list)  # every damaged block found
    damage: list[Damage] = field(default_factory=list)
    repaired: int = 0
    unrepairable: int = 0
    started_ns: int = 0
    finished_ns: int = 0  # 0: not finished (stopped, to be continued)
    resumed: bool = False  # continued an earlier, interrupted scrub

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bytes_verified(self) -> int:
        return self.data_bytes + self.nodes * BLOCK

    def damage_found(self, exc: HammerError, where: int | None) -> None:
        self.errors.append(str(exc))
        if where is not None:
            self.damaged_offsets.append(where)

    def counts(self) -> list[int]:
        return [self.nodes, self.records, self.extents, self.data_bytes, self.repaired,
                self.unrepairable, len(self.damaged_offsets)]


def scrub(store: Store, *, healer: Callable[[FullKey, LeafVal], bytes | None] | None = None,
          ) -> ScrubReport:
    """A whole scrub of a volume at rest (no rate limit, progress not kept): every block,
    and the free-map against what the tree references."""
    return Scrubber(store, rate=None, healer=healer, persist=False, leaks=True).run()


class Scrubber:
    """One scrub pass (or the rest of an interrupted one): ``run`` in any thread, ``stop``
    and ``status`` from others."""

    def __init__(self, store: Store, *, rate: int | None = DEFAULT_RATE,
                 healer: Callable[[FullKey, LeafVal], bytes | None] | None = None,
                 persist: bool | None = None, restart: bool = False, leaks: bool = False):
        self.store = store
        self.rate = rate or None
        # a slow rate in small steps: smooth pacing, and a stop or crash loses little
        self.step_bytes = min(STEP_BYTES, max(64 << 10, self.rate // 10)) if self.rate \
            else STEP_BYTES
        self.healer = healer
        self.persist = (not store.readonly) if persist is None else persist
        self.report = ScrubReport(started_ns=time.time_ns())
        self.cursor: FullKey | None = START
        self.total = max(1, store.space().used_bytes)
        self.stopping = threading.Event()
        self.resumed_at = 0.0  # the fraction an interrupted scrub had done
        self._reached = np.zeros(store.allocator.nblocks, dtype=bool) if leaks else None
        self._given_up: set[int] = set()  # damaged nodes met in this run (each repaired once)
        state = load_state(store)
        if state.get("cursor") is not None and not restart:
            self._resume(state)

    def _resume(self, state: dict) -> None:
        r = self.report
        r.resumed = True
        self.cursor = tuple(state["cursor"])
        r.started_ns = state["started"]
        (r.nodes, r.records, r.extents, r.data_bytes, r.repaired, r.unrepairable,
         _found) = state["counts"]
        r.damage = load_damage(self.store)
        r.damaged_offsets = [d.offset for d in r.damage]
        r.errors = [d.message for d in r.damage if not d.repaired]
        self._reached = None  # blocks seen before the interruption are not known
        self.resumed_at = self.fraction()

    # -- the walk --------------------------------------------------------------------------
    def run(self, progress: Callable[[Scrubber], None] | None = None) -> ScrubReport:
        store, r = self.store, self.report
        if not r.resumed:
            self._header_findings()
            self._save(force=True)
        last_save = pace_start = time.monotonic()
        paced = r.bytes_verified
        while self.cursor is not None and not self.stopping.is_set():
            with store._lock:
                self._step()
            broken = self._verify_extents()
            for k, v, damage in broken:  # the replica is asked without the lock
                self._repair(k, v, damage)
            for node in self._broken_nodes:
                self._repair_node(*node)
            now = time.monotonic()
            ahead = (r.bytes_verified - paced) / self.rate - (now - pace_start) \
                if self.rate and self.cursor is not None else 0
            # saved every second, and before a long pause (a slow scrub loses little)
            if now - last_save >= CHECKPOINT_SECONDS or ahead >= CHECKPOINT_SECONDS / 2 \
                    or self.cursor is None:
                self._save()
                last_save = now
            if progress is not None:
                progress(self)
            if ahead > 0:
                self.stopping.wait(ahead)
        if self.cursor is None:
            r.finished_ns = time.time_ns()
            if self._reached is not None and store.freemap_damage is None \
                    and not r.damaged_offsets:
                with store._lock:
                    _check_leaks(store, self._reached, r)
        self._save(force=True)
        return r

    def _header_findings(self) -> None:
        store, r = self.store, self.report
        if store.header_damage is not None:  # the volume may have been rolled back
            r.errors.append(store.header_damage.message)
        if store.freemap_damage is not None:
            r.damage_found(store.freemap_damage, store.freemap_damage.location)
            r.errors[-1] += " (rebuilt from the B-tree; the next commit rewrites it)"

    def _step(self) -> None:
        """Walk from the cursor on until the step's budget is spent (nodes verified, extents
        listed for ``_verify_extents``); move the cursor to the first key not walked (None
        at the end).  Holds the store lock."""
        self._budget = self.step_bytes
        self._reads_left = NODES_PER_STEP  # a step of small files is mostly its leaves
        self._broken_nodes: list[tuple] = []
        self._extents: list[tuple[int, int, FullKey, LeafVal]] = []  # verified after the step
        root = self.store.tree.root
        if self.cursor == START:
            self._count_node(root)
            if not root.dirty:
                try:
                    self.store.tree.read_node(root.off, root.csum)  # the disk copy, verified
                except CorruptionError as exc:
                    self._broken_nodes.append((root.off, root.csum, root.level, None, None,
                                               exc))
        self._next: FullKey | None = None
        self._walk(root, self.cursor, None)
        self.cursor = self._next

    def _walk(self, node: Node, cursor: FullKey, hi: FullKey | None) -> bool:
        """True when the budget ran out or a damaged node is to be repaired (``_next`` set
        to where to go on).  ``hi``: the first key after the node's range (None: the end)."""
        keys = node.keys
        if not node.level:
            self._leaf(node, cursor)
            return False
        tree = self.store.tree
        start = max(0, bisect_right(keys, cursor) - 1)
        for j in range(start, len(keys)):
            if self._budget <= 0 or self._reads_left <= 0:
                self._next = max(keys[j], cursor)
                return True
            ref = node.vals[j]
            fresh = keys[j] >= cursor or j > start  # entered from its first key
            child = ref[3]
            end = keys[j + 1] if j + 1 < len(keys) else hi
            if child is None:
                self._reads_left -= 1
                try:
                    child = tree.read_node(ref[0], ref[1])  # from disk, never the cache
                    if child.level != node.level - 1:
                        raise CorruptionError(f"B-tree node at offset {ref[0]:#x} has level "
                                              f"{child.level}, expected {node.level - 1}",
                                              ref[0])
                except CorruptionError as exc:
                    self._budget -= BLOCK
                    if ref[0] in self._given_up:
                        continue  # reported already: its subtree cannot be reached
                    # repaired without the lock, then the next step walks into it
                    self._broken_nodes.append((ref[0], ref[1], node.level - 1, keys[j], end,
                                               exc))
                    self._next = max(keys[j], cursor)
                    return True
            if fresh:
                self._count_node(child)
            if self._walk(child, cursor, end):
                return True
        return False

    def _leaf(self, node: Node, cursor: FullKey) -> None:
        r, store = self.report, self.store
        alloc = store.allocator
        self._budget -= LEAF_COST
        for i in range(bisect_left(node.keys, cursor), len(node.keys)):
            k, v = node.keys[i], node.vals[i]
            r.records += 1
            if not v[4]:
                continue
            first, count = v[4] // BLOCK, -(-v[3] // BLOCK)
            off = first * BLOCK  # without the shared-extent flag bit (format 2)
            if self._reached is not None:
                self._reached[first:first + count] = True
            r.extents += 1
            r.data_bytes += v[3]
            self._budget -= count * BLOCK
            if not (alloc.is_used(first) and alloc.is_used(first + count - 1)):
                r.errors.append(f"data extent at offset {off:#x} is not marked in use "
                                f"in the free-map")
            if v[6] is None:  # else not written yet
                self._extents.append((off, count * BLOCK, k, v))

    def _verify_extents(self) -> list[tuple[FullKey, LeafVal, Damage]]:
        """Read and checksum the extents the last step met, WITHOUT the store lock (a mount
        goes on meanwhile), runs of adjacent ones with one device read each.  Extents are
        copy-on-write, so a mismatch is either damage or a block freed and reused since the
        step: it is confirmed under the lock (the leaf still holds the entry and its extent
        still fails) before it counts."""
        pending, self._extents = sorted(self._extents, key=lambda e: e[0]), []
        dev, failed, i = self.store.device, [], 0
        while i < len(pending):
            start = end = pending[i][0]
            j = i
            while j < len(pending) and pending[j][0] == end and end - start < RUN_BYTES:
                end += pending[j][1]
                j += 1
            if j == i:  # overlapping (shared) extents: one at a time
                end, j = start + pending[i][1], i + 1
            raw = memoryview(dev.read(start, end - start))
            failed += [(k, v) for off, n, k, v in pending[i:j]
                       if checksum(raw[off - start:off - start + n]) != v[5]]
            i = j
        if not failed:
            return []
        store, out = self.store, []
        with store._lock:
            for k, v in failed:
                now = store.tree.exact(k)
                if now is None or now[3:6] != v[3:6] or store.verify_extent(k, v):
                    continue  # changed since (its new extent was checksummed when written)
                off = extent_off(v[4])
                out.append((k, v, Damage("extent", off, k, f"data extent at offset {off:#x} "
                                         f"({v[3]} bytes) of record {_fmt_key(k)} failed "
                                         "checksum verification")))
        return out

    def _count_node(self, node: Node) -> None:
        r = self.report
        r.nodes += 1
        self._budget -= BLOCK
        if not node.off:
            return
        if self._reached is not None:
            self._reached[node.off // BLOCK] = True
        if not self.store.allocator.is_used(node.off // BLOCK):
            r.errors.append(f"B-tree node at offset {node.off:#x} is not marked in use "
                            f"in the free-map")

    # -- damage --------------------------------------------------------------------------
    def _repair(self, k: FullKey, v: LeafVal, damage: Damage) -> None:
        store = self.store
        store.damage.found += 1
        good = None
        if self.healer is not None:
            try:
                good = self.healer(k, v)
            except Exception as exc:  # a broken link: the damage stays, the scrub goes on
                damage.message += f" (the replica failed: {exc})"
        if good is not None and store.rewrite_data(k, v, good):
            damage.repaired = True
            store.damage.repaired += 1
            self.report.repaired += 1
        else:
            store.damage.unrepairable += 1
            self.report.unrepairable += 1
        self._found(damage)

    def _repair_node(self, off: int, csum: bytes, level: int, lo: FullKey | None,
                     hi: FullKey | None, exc: CorruptionError) -> None:
        """Rebuild a damaged node (store/noderepair.py: only bit for bit, verified by the
        checksum its parent holds); unrepairable ones are skipped for the rest of the run."""
        source = self.store.node_repair.repair(off, csum, level, lo, hi, self.healer)
        self._given_up.add(off)  # met again (a repair that did not hold): skipped
        if source is None:
            return  # rewritten by a commit since it was read: the next step walks the new one
        what = "leaf" if level == 0 else "internal node"
        damage = Damage("node", off, lo or START, f"{exc} ({what})", hi, repaired=bool(source))
        if source:
            damage.message += f"; rebuilt from {source}"
            self.report.repaired += 1
        else:
            self.report.unrepairable += 1
        self._found(damage)

    def _found(self, damage: Damage) -> None:
        r = self.report
        r.damage.append(damage)
        r.damaged_offsets.append(damage.offset)
        if not damage.repaired:
            r.errors.append(damage.message)
        if self.persist and len(r.damage) <= MAX_DAMAGE_KEPT:
            self.store.set_private_record(SCRUB_OBJ, damage.encode(), key=len(r.damage))

    # -- progress kept in the volume -----------------------------------------------------------
    def _save(self, force: bool = False) -> None:
        if not self.persist:
            return
        r = self.report
        state = load_state(self.store)
        if self.cursor is None:
            state.update(cursor=None, last={
                "started": r.started_ns, "finished": r.finished_ns or time.time_ns(),
                "counts": r.counts(), "bytes": r.bytes_verified})
        else:
            if not r.resumed and force and self.cursor == START:  # a new scrub
                state["damage_entries"] = 0
                clear_damage(self.store)
            state.update(cursor=list(self.cursor), started=r.started_ns, counts=r.counts())
        state["damage_entries"] = min(len(r.damage), MAX_DAMAGE_KEPT)
        self.store.set_private_record(SCRUB_OBJ, json.dumps(state).encode())

    # -- for status lines -------------------------------------------------------------------
    def fraction(self) -> float:
        if self.cursor is None:
            return 1.0
        return min(0.999, self.report.bytes_verified / self.total)

    def stop(self) -> None:
        self.stopping.set()


def load_state(store: Store) -> dict:
    """The scrub state kept in the volume: ``cursor`` (None: no scrub under way),
    ``started``, ``counts`` of the scrub under way, ``last`` (the last finished one)."""
    raw = store.private_record(SCRUB_OBJ)
    if not raw:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def load_damage(store: Store) -> list[Damage]:
    out = []
    for key in range(1, load_state(store).get("damage_entries", 0) + 1):
        raw = store.private_record(SCRUB_OBJ, key=key)
        if raw:
            try:
                out.append(Damage.decode(raw))
            except (ValueError, TypeError):
                continue
    return out


def clear_damage(store: Store) -> None:
    for key in range(1, MAX_DAMAGE_KEPT + 1):
        if store.private_record(SCRUB_OBJ, key=key) is None:
            return
        store.set_private_record(SCRUB_OBJ, None, key=key)


def _check_leaks(store: Store, reached: np.ndarray, report: ScrubReport) -> None:
    """Blocks the free-map marks in use that nothing references (space lost until fixed)."""
    alloc = store.allocator
    hdr = store.header
    reached[: hdr.fm_region1 + hdr.fm_table_blocks + hdr.fm_pages] = True  # headers, free-map
    # freed in the open transaction, or by the commit in flight: still held
    for block, count in [*alloc.pending, *store.held_runs]:
        reached[block:block + count] = True
    used = np.unpackbits(alloc.bits, bitorder="little")[: alloc.nblocks].astype(bool)
    leaked = np.flatnonzero(used & ~reached)
    if len(leaked):
        report.errors.append(f"free-map: {len(leaked)} blocks are marked in use but not "
                             f"referenced (first at offset {int(leaked[0]) * BLOCK:#x})")
