"""Store: the on-disk RecordStore (copy-on-write B+tree, Merkle checksums, two headers).

A commit writes every dirty B-tree node into free blocks, then the free-map region of the new
header slot, flushes, writes the header (slot = seq % 2) and flushes again.  The previous
header and everything it references stay untouched until the new header is durable, so a
crash at any instant leaves the last committed state (or the new one) to open, with no fsck.
Semantics follow store.memory.MemoryStore exactly; see store/api.py for the contract.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from time import monotonic  # commit latency: real time even where tests fake time_ns

import numpy as np

from hammerfs.blockdev.base import BlockDevice, write_parts
from hammerfs.errors import (
    CorruptionError,
    HammerError,
    NoSpace,
    NotAVolume,
    NoVolumeSignature,
    ReadOnly,
)
from hammerfs.steps import NO_LOCK, Steps
from hammerfs.store.alloc import DATA, Allocator
from hammerfs.store.api import SpaceInfo
from hammerfs.store.btree import BTree
from hammerfs.store.commitlog import doomed_entries
from hammerfs.store.format import (
    BIGBLOCK,
    BLOCK,
    COMMITLOG_OBJ,
    EXT_SHARED,
    FORMAT_VERSION,
    INLINE_MAX,
    STORE_PFS,
    ZERO_CSUM,
    FullKey,
    Header,
    LeafVal,
    checksum,
    decode_header,
    extent_off,
    freemap_geometry,
    header_claims,
    share_window,
)
from hammerfs.store.noderepair import NodeRepairer
from hammerfs.store.pfs import PfsData, PfsTable
from hammerfs.store.records import (
    HISTORY_ALL,
    MAX_DATA,
    MAX_PFS,
    MAX_U64,
    REC_SNAPSHOT,
    ROOT_OBJ,
    RecKey,
    Record,
    check_delete_tid,
    check_raw_version,
    check_slice,
)

log = logging.getLogger("hammerfs.heal")

MIN_VOLUME = 1 << 20
SCAN_BATCH = 256
SCAN_BATCH_DATA = 32
COMMITLOG_KEY = (STORE_PFS, COMMITLOG_OBJ, 0)  # + (tid, tid): the commit log's entries
COMMITLOG_BATCH = 2048  # entries per step of the lock: removing them takes ~20 ms
COMMITLOG_COMMIT = 16384  # entries removed per commit (each commit adds one entry)
# Data of extents put in the open transaction is kept in memory until commit (blocks are
# allocated at once, so space is accounted and contiguity known): rewrites of the same record
# before the commit cost no device write.  Past this many bytes it is written out early.
UNWRITTEN_MAX = 32 << 20
# A mount writes it out in steps of this much, under the store's lock only (``write_out``):
# encrypting and writing 32 MiB at once would stop every request for a few 100 ms (a
# loaded machine, or the kernel throttling a writer of much dirty data: 1 MiB takes 5-30 ms).
WRITE_OUT_STEP = 1 << 20
PREFETCH_EXTENTS = 64  # adjacent extents read with one device read (scans, at most 4 MiB)


class Store(PfsTable):
    """The on-disk record store.  Build with ``Store.create`` or ``Store.open``."""

    def __init__(self, device, hdr: Header, alloc: Allocator, tree: BTree, readonly: bool):
        self.device = device
        self.readonly = readonly
        self.label = hdr.label
        self.uuid = hdr.uuid
        self.format_version = hdr.version  # a v1 volume becomes v2 at its first commit
        self._hdr = hdr
        self._alloc = alloc
        self._tree = tree
        self._nblocks = hdr.volume_bytes // BLOCK
        self._reserve = min(16384, max(64, self._nblocks // 64))
        self._lock = threading.RLock()
        self._committed = threading.Condition(self._lock)
        self._last_committed = hdr.last_tid
        self._max_tid_seen = hdr.max_tid
        self._next_obj = hdr.next_obj
        self._current = self._next_tid(hdr.last_tid)
        self._dirty = False
        self._closed = False
        self.freemap_damage: CorruptionError | None = None  # set if rebuilt at open
        self.header_damage: HeaderDamage | None = None  # a header copy failed verification
        self._broken: BaseException | None = None  # a commit failed half-way
        self._where = getattr(device, "path", "device")
        # Self-heal: given a damaged data record, the good bytes from a replica (or None);
        # set by the mount or scrub when a mirror of the volume is known (mirror/heal.py).
        self.healer: Callable[[FullKey, LeafVal], bytes | None] | None = None
        # (store, spec, port) -> a healer for `hammer scrub --from` (set with the healer)
        self.healer_factory: Callable | None = None
        self.damage = DamageCounts()
        self.node_repair = NodeRepairer(self)  # damaged B-tree nodes: on reads and for scrub
        tree.node_healer = self.node_repair.on_read
        self.stats = CommitStats()  # for metrics (`hammer up`'s exporter)
        self.read_retries = 0  # extent reads done without the lock that raced a reuse
        self._history_floor = hdr.last_tid  # versions at or below are never dropped
        self._unwritten: set[FullKey] = set()  # entries whose extent data is still in memory
        self._unwritten_bytes = 0
        self._last_extent: tuple[int, bytes, bytes] = (0, b"", b"")  # off, csum, padded data
        self._prefetched: dict[tuple[int, bytes], memoryview] = {}  # see _prefetch
        self._in_flight: PreparedCommit | None = None  # between commit_begin and commit_end

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(cls, device: BlockDevice, label: str = "", *, uuid: str | None = None) -> Store:
        """Write a new, empty volume (with PFS #0) over the whole device."""
        if device.readonly:
            raise ReadOnly("cannot create a volume on a device opened read-only")
        if len(label.encode()) > 63:
            raise HammerError(f"label is longer than 63 bytes: {label!r}")
        if device.size < MIN_VOLUME:
            where = getattr(device, "path", "device")
            raise HammerError(f"{where} is too small for a volume ({device.size} bytes, "
                              f"need at least {MIN_VOLUME})")
        nblocks = device.size // BLOCK
        pages, tblocks = freemap_geometry(nblocks)
        region = (2, 2 + tblocks + pages)
        reserved = region[1] + tblocks + pages
        # Invalidate any older volume's headers first, so a crash mid-newfs cannot revive it.
        device.write(0, bytes(2 * BLOCK))
        device.flush()
        alloc = Allocator.fresh(nblocks, pages, reserved, region, tblocks)
        hdr = Header(0, uuid or str(uuidlib.uuid4()), label, nblocks * BLOCK, 0, ZERO_CSUM, 0,
                     pages, tblocks, region[0], region[1], ZERO_CSUM, 0, ROOT_OBJ + 1, 0, 0)
        store = cls(device, hdr, alloc, BTree.empty(device, alloc), readonly=False)
        store.put_pfs(0, PfsData(label=label))
        store.commit()
        return store

    @classmethod
    def open(cls, device: BlockDevice, *, readonly: bool = False) -> Store:
        """Open the volume on ``device`` at its last committed state (writes nothing)."""
        hdr, header_damage = read_headers(device)
        nblocks = hdr.volume_bytes // BLOCK
        regions = (hdr.fm_region0, hdr.fm_region1)
        tree = BTree.load(device, None, hdr.root_off, hdr.root_csum)
        damage = None
        try:
            alloc = Allocator.load(device, nblocks, hdr.fm_pages, hdr.fm_table_blocks, regions,
                                   hdr.slot, hdr.fm_table_csum)
        except CorruptionError as exc:
            damage = exc
            # The free-map is redundant: rebuild it from what the B-tree references.
            alloc = Allocator.fresh(nblocks, hdr.fm_pages, regions[1] + hdr.fm_table_blocks
                                    + hdr.fm_pages, regions, hdr.fm_table_blocks)
            for block, count in _distinct_runs(used_extents(tree), nblocks):
                alloc.mark_used(block, count)
        tree.alloc = alloc
        store = cls(device, hdr, alloc, tree, readonly=readonly or device.readonly)
        store.freemap_damage = damage
        store.header_damage = header_damage
        return store

    # -- transactions -------------------------------------------------------------------------------
    @property
    def current_tid(self) -> int:
        return self._current

    @property
    def last_committed_tid(self) -> int:
        return self._last_committed

    @property
    def header(self) -> Header:
        return self._hdr

    def _next_tid(self, after: int) -> int:
        return max(after + 1, self._max_tid_seen + 1, time.time_ns())

    def commit(self) -> int:
        """Make the open transaction durable (see ``commit_outside`` for one that holds a
        caller's lock only while its writes are built)."""
        prepared = self.commit_begin()
        return self._last_committed if prepared is None else self.commit_end(prepared)

    def commit_outside(self, lock: AbstractContextManager) -> int:
        """Commit, holding ``lock`` (the mount's filesystem lock, which makes the state it
        captures consistent) only while the commit's writes are built and issued: the device
        flushes and the header write run after it is released, so the mount serves on."""
        while True:
            with self._lock:  # not while holding ``lock``: the flush of a commit in flight
                self._committed.wait_for(lambda: self._in_flight is None)
            while self.write_out():  # the data first, in steps, without ``lock``
                pass
            with lock, self._lock:
                if self._in_flight is None:  # (another commit may have begun meanwhile)
                    prepared = self.commit_begin()
                    break
        return self._last_committed if prepared is None else self.commit_end(prepared)

    def commit_begin(self) -> PreparedCommit | None:
        """First half of a commit, under the store's lock: data, B-tree nodes and free-map
        of the open transaction are written (not flushed) and its header is built; a new
        transaction opens at once.  None when there is nothing to commit.  The caller must
        pass the result to ``commit_end``.  One commit is in flight at a time: this waits
        for the previous one's ``commit_end`` first.

        While it is in flight the next transaction allocates and writes, but never into
        blocks the previous header references: the blocks this commit frees stay held
        (``Allocator.prepare_commit``) until its header is durable."""
        with self._lock:
            self._committed.wait_for(lambda: self._in_flight is None)
            if not self._dirty or self.readonly:
                return None
            self._writable()
            tree = self._tree
            if self._alloc.free_blocks < tree.dirty_count + 2 * (tree.height() + 2):
                raise NoSpace("no space left on volume for the commit")
            done = self._current
            ts = time.time_ns()
            self._tree.upsert((*COMMITLOG_KEY, done, done),
                              (0, ts, 0, 8, 0, ZERO_CSUM, ts.to_bytes(8, "little")))
            self._max_tid_seen = max(self._max_tid_seen, done)
            started = monotonic()
            try:
                prepared = self._write_commit(done, ts, started)
            except BaseException as exc:
                # Memory now disagrees with the disk (nodes look written, freed blocks look
                # reusable): refuse every further change; reopening gives the last commit.
                self._broken = exc
                raise
            self._in_flight = prepared
            self._current = self._next_tid(done)
            self._dirty = False
            return prepared

    def commit_end(self, prepared: PreparedCommit) -> int:
        """Second half, without the store's lock: flush, header, flush.  Readers and the
        next transaction go on meanwhile (what they read was written by ``commit_begin``).
        Returns the committed TID, durable on return."""
        hdr = prepared.hdr
        try:
            _write_coalesced(self.device, prepared.writes)
            self.device.flush()
            self.device.write(hdr.slot * BLOCK, hdr.encode())
            self.device.flush()
        except BaseException as exc:
            with self._lock:
                self._broken = exc
                self._dirty = True  # its changes are not durable: the next commit refuses
                self._in_flight = None
                self._committed.notify_all()
            raise
        with self._lock:
            self._tree.unwritten_nodes.clear()  # on the device now
            self._alloc.release_held(prepared.held)
            self.format_version = FORMAT_VERSION
            self._hdr = replace(hdr, version=FORMAT_VERSION)
            self.stats.commits += 1
            self.stats.last_commit_seconds = monotonic() - prepared.started
            self.stats.commit_seconds += self.stats.last_commit_seconds
            self._last_committed = prepared.tid
            self._in_flight = None
            self._committed.notify_all()
            return prepared.tid

    def _write_commit(self, done: int, ts: int, started: float) -> PreparedCommit:
        """Data written, nodes and free-map encoded (written by ``commit_end``, without the
        lock; until then the tree serves its nodes' bytes from memory:
        ``BTree.unwritten_nodes``, so a node evicted from the cache reads right)."""
        _write_coalesced(self.device, self._unwritten_data())
        writes = self._tree.flush()
        self._tree.unwritten_nodes.update(writes)
        seq = self._hdr.seq + 1
        fm_writes, fm_csum, held = self._alloc.prepare_commit(seq % 2)
        root = self._tree.root
        hdr = replace(self._hdr, seq=seq, root_off=root.off, root_csum=root.csum,
                      root_level=root.level, fm_table_csum=fm_csum, max_tid=self._max_tid_seen,
                      next_obj=self._next_obj, last_tid=done, last_ts=ts)
        return PreparedCommit(done, hdr, held, started, writes + fm_writes)

    def wait_commit(self, after_tid: int, timeout: float | None = None) -> int:
        with self._lock:
            self._committed.wait_for(lambda: self._last_committed > after_tid, timeout)
            return self._last_committed

    def tid_time(self, tid: int) -> int:
        with self._lock:
            hit = self._tree.floor((*COMMITLOG_KEY, tid, MAX_U64))
        if hit is None or hit[0][:3] != COMMITLOG_KEY:
            return 0
        return int.from_bytes(hit[1][6], "little")

    def thin_commit_log(self, now_ns: int | None = None, *,
                        lock: AbstractContextManager = NO_LOCK) -> int:
        now = time.time_ns() if now_ns is None else now_ns
        cursor: FullKey = (*COMMITLOG_KEY, 0, 0)
        end: FullKey = (*COMMITLOG_KEY, MAX_U64, MAX_U64 + 1)
        prev: list[tuple[int, int]] = []  # the last entry of the previous batch
        dropped = uncommitted = 0
        while True:
            # A batch per step of the lock, a commit (its flush without the lock) every
            # COMMITLOG_COMMIT removals: a mount goes on between batches, and a crash leaves
            # a partly thinned log, which is as valid as a fully thinned one.
            with Steps(lock) as steps:
                with self._lock:
                    self._writable()
                    found = self._tree.collect(cursor, end, COMMITLOG_BATCH)
                    entries = prev + [(k[3], int.from_bytes(v[6], "little"))
                                      for k, v in found]
                    doomed = doomed_entries(entries, now)
                    for tid in doomed:
                        self._need(0, privileged=True)
                        self._tree.remove((*COMMITLOG_KEY, tid, tid))
                        self._dirty = True
                    dropped += len(doomed)
                    uncommitted += len(doomed)
                steps.pause()  # (never under the store's lock: its waiters hold ``lock``)
            last = len(found) < COMMITLOG_BATCH
            if uncommitted and (last or uncommitted >= COMMITLOG_COMMIT):
                self.commit_outside(lock)
                uncommitted = 0
            if last:
                return dropped
            prev = entries[-1:]
            cursor = (*COMMITLOG_KEY, prev[0][0] + 1, 0)

    def alloc_obj_id(self) -> int:
        with self._lock:
            self._writable()
            obj = self._next_obj
            self._next_obj += 1
            self._dirty = True
            return obj

    # -- reads --------------------------------------------------------------------------------------
    def get(self, reckey: RecKey, asof: int | None = None) -> Record | None:
        _check_key(reckey)
        with self._lock:  # the hot path: _visible and _record, inlined
            tid = self._current if asof is None else asof
            hit = self._tree.floor((*reckey, tid))
            if hit is None:
                return None
            k, v = hit
            if k[:4] != reckey or (v[0] and tid >= v[0]):
                return None
            data = v[6] if v[6] is not None else self._data(k, v)
            return _make_record(k[0], k[1], k[2], k[3], k[4], v[0], v[1], v[2], data)

    def get_version(self, reckey: RecKey, create_tid: int) -> Record | None:
        """The version of ``reckey`` created at ``create_tid``, whatever its delete TID, read
        without the healer (a replica serving a repair must not ask for one in turn)."""
        _check_key(reckey)
        with self._lock, self.node_repair.without_healing():
            v = self._tree.exact((*reckey, create_tid))
            if v is None:
                return None
            data = v[6]  # inline, or not written yet
            if data is None:
                off = extent_off(v[4])
                raw = self.device.read(off, _blocks(v[3]) * BLOCK)
                if checksum(raw) != v[5]:
                    raise CorruptionError(f"data extent at offset {off:#x} of record "
                                          f"{_fmt_key((*reckey, create_tid))} failed checksum "
                                          "verification here too", off)
                data = raw[:v[3]]
            return _make_record(*reckey, create_tid, v[0], v[1], v[2], bytes(data))

    def versions_between(self, lo: FullKey, hi: FullKey, limit: int,
                         ) -> tuple[list[tuple[FullKey, LeafVal]], bool]:
        """Up to ``limit`` leaf entries with lo <= key < hi in key order, their data checksum
        computed for extents still in memory, and whether there are more: what a replica
        tells a volume rebuilding a damaged leaf (mirror/heal.py).  Read without healing,
        as ``get_version``."""
        with self._lock, self.node_repair.without_healing():
            found = [(k, v) for k, v in self._tree.collect(lo, hi, limit + 1) if k < hi]
        more = len(found) > limit
        return [(k, (*v[:5], checksum(_padded(v[6])), None) if v[4] and v[6] is not None
                 else v) for k, v in found[:limit]], more

    def _visible(self, reckey: RecKey, tid: int) -> tuple[FullKey, LeafVal] | None:
        hit = self._tree.floor((*reckey, tid))
        if hit is None or hit[0][:4] != reckey:
            return None
        dtid = hit[1][0]
        return hit if dtid == 0 or tid < dtid else None

    def scan(self, lo: RecKey, hi: RecKey, asof: int | None = None, *, history: bool = False,
             with_data: bool = True) -> Iterator[Record]:
        _check_key(lo)
        _check_key(hi)
        tid = self._current if asof is None else asof

        def wanted(k: FullKey, v: LeafVal) -> bool:
            return history or (k[4] <= tid and (v[0] == 0 or tid < v[0]))
        yield from self._batches(lo, hi, None, SCAN_BATCH_DATA if with_data else SCAN_BATCH,
                                 wanted, with_data)

    def extent_lengths(self, lo: RecKey, hi: RecKey) -> list[tuple[int, int, int]]:
        _check_key(lo)
        _check_key(hi)
        with self._lock:
            tid = self._current
            found = self._tree.collect((*lo, 0), (*hi, MAX_U64 + 1), 1 << 30)
            return [(k[3], v[3], k[4]) for k, v in found
                    if k[4] <= tid and (v[0] == 0 or tid < v[0])]

    def changed_since(self, lo: RecKey, hi: RecKey, since_tid: int, *,
                      pin_history: bool = True, with_data: bool = True) -> Iterator[Record]:
        _check_key(lo)
        _check_key(hi)
        with self._lock:  # a mirror may now hold every committed version
            if pin_history:
                self._history_floor = max(self._history_floor, self._last_committed)
        yield from self._batches(lo, hi, since_tid, SCAN_BATCH_DATA if with_data else SCAN_BATCH,
                                 lambda k, v: True, with_data, inline=not with_data)

    def _batches(self, lo: RecKey, hi: RecKey, since: int | None, batch: int, wanted,
                 with_data: bool, inline: bool = False) -> Iterator[Record]:
        """Records built in batches, so callers may change the store, even commit, while
        iterating: each batch resumes after the last key seen.  The B-tree is searched under
        the lock; extent data is read and verified outside it (a reader never waits for
        another reader's I/O and decryption, nor a writer for them), see _read_unlocked.
        ``inline``: records carry the data their leaf holds, no extent is read."""
        cursor: FullKey = (*lo, 0)
        end: FullKey = (*hi, MAX_U64 + 1)
        while True:
            with self._lock:
                found = self._tree.collect(cursor, end, batch, since)
                picked = [(k, v) for k, v in found if wanted(k, v)]
            datas = self._read_unlocked(picked) if with_data else \
                [v[6] if inline else None for _, v in picked]
            if datas is None:  # an extent moved or was reused meanwhile: again, locked
                with self._lock:
                    self.read_retries += 1
                    found = self._tree.collect(cursor, end, batch, since)
                    picked = [(k, v) for k, v in found if wanted(k, v)]
                    self._prefetch(picked)
                    datas = [self._data(k, v) for k, v in picked]
                    self._prefetched.clear()
            yield from [_make_record(k[0], k[1], k[2], k[3], k[4], v[0], v[1], v[2], data)
                        for (k, v), data in zip(picked, datas, strict=True)]
            if len(found) < batch:
                return
            last = found[-1][0]
            cursor = (*last[:4], last[4] + 1)

    def _read_unlocked(self, entries: list[tuple[FullKey, LeafVal]]) -> list[bytes] | None:
        """The data of leaf entries found under the lock, read without it: None unless every
        extent matched its checksum.  Safe because an extent's blocks are never rewritten
        while a leaf references them (copy-on-write; a reblock moves data to new blocks),
        and blocks freed by a commit may be reused after it: a read that raced that reads
        other bytes, fails the (128-bit) checksum, and the caller repeats the batch under
        the lock, where a real checksum failure goes to the healer as before."""
        datas: list[bytes | None] = [v[6] for _, v in entries]  # inline / not written yet
        for run in _adjacent_runs([(i, v) for i, (_, v) in enumerate(entries)
                                   if v[6] is None]):
            for i, v, piece in self._read_run(run):
                if checksum(piece) != v[5]:
                    return None
                # a lone extent without padding: the bytes the device returned, no copy
                datas[i] = piece.obj if len(piece) == len(piece.obj) == v[3] \
                    else bytes(piece[:v[3]])
        return datas  # type: ignore[return-value]  # every None was filled

    def _read_run(self, run: list[tuple[object, LeafVal]]
                  ) -> Iterator[tuple[object, LeafVal, memoryview]]:
        """One device read for a run of adjacent extents: (tag, value, its padded blocks)."""
        start = extent_off(run[0][1][4])
        last = run[-1][1]
        view = memoryview(self.device.read(start, extent_off(last[4]) + _blocks(last[3]) * BLOCK
                                           - start))
        for tag, v in run:
            at = extent_off(v[4]) - start
            yield tag, v, view[at:at + _blocks(v[3]) * BLOCK]

    def _prefetch(self, entries: list[tuple[FullKey, LeafVal]]) -> None:
        """Read runs of extents that lie back to back on disk (a file written in one go) with
        one device read each, and verify them into the extent cache that _extent consults:
        a 1 MiB read of a file is then one read, not 16."""
        for run in _adjacent_runs([(None, v) for _, v in entries if v[6] is None]):
            if len(run) < 2:
                continue
            for _, v, piece in self._read_run(run):
                if checksum(piece) == v[5]:  # else _extent reads it again and reports it
                    self._prefetched[(extent_off(v[4]), v[5])] = piece

    def _data(self, k: FullKey, v: LeafVal) -> bytes:
        if v[6] is not None:  # inline, or not written yet
            return v[6]
        raw = self._extent(k, v)
        return raw if len(raw) == v[3] else raw[:v[3]]

    def _extent(self, k: FullKey, v: LeafVal) -> bytes:
        """The verified blocks of an external extent, padding included.  The last one read
        is kept: a write into a record reads it, then cuts slices of it (put_slice)."""
        off, csum = extent_off(v[4]), v[5]
        last = self._last_extent
        if last[0] == off and last[1] == csum:
            return last[2]
        hit = self._prefetched.pop((off, csum), None)
        if hit is not None:
            return bytes(hit)
        raw = self.device.read(off, _blocks(v[3]) * BLOCK)
        if checksum(raw) != csum:
            raw = _padded(self._heal(k, v))
        self._last_extent = (off, csum, raw)
        return raw

    def _heal(self, k: FullKey, v: LeafVal) -> bytes:
        """A data extent failed its checksum on a read: the good bytes from the healer (a
        replica's copy of the same record version, checked against the checksum this leaf
        expects, then written back in place), else CorruptionError (EIO)."""
        off = extent_off(v[4])
        damage = CorruptionError(f"data extent at offset {off:#x} ({v[3]} bytes) of record "
                                 f"{_fmt_key(k)} failed checksum verification", off)
        self.damage.found += 1
        good = None
        if self.healer is not None:
            try:
                good = self.healer(k, v)
            except Exception as exc:  # a broken link to the replica: the read still fails
                log.warning("self-heal of %s: the replica failed: %s", _fmt_key(k), exc)
        if good is None or not self._matches(k, v, good):
            self.damage.unrepairable += 1
            raise damage
        if self._write_back(v, good):
            self.damage.repaired += 1
            log.warning("repaired on read from the replica: %s", damage)
        else:  # a read-only volume: the reader gets the replica's bytes, the disk stays
            self.damage.unrepairable += 1
            log.warning("served from the replica (volume read-only, not rewritten): %s",
                        damage)
        return good

    def verify_extent(self, k: FullKey, v: LeafVal) -> bool:
        """Does the data extent of leaf entry (k, v) match its checksum on disk (scrub)?"""
        if not v[4] or v[6] is not None:  # inline, or not written yet
            return True
        return checksum(self.device.read(extent_off(v[4]), _blocks(v[3]) * BLOCK)) == v[5]

    def rewrite_data(self, k: FullKey, v: LeafVal, data: bytes) -> bool:
        """Write ``data`` back over the damaged extent of (k, v), in place: only if the leaf
        still holds that entry and ``data`` matches the checksum it expects (nothing is ever
        "repaired" with other bytes).  False if either check fails."""
        with self._lock:
            now = self._tree.exact(k)
            if now is None or now[3:6] != v[3:6]:
                return False  # changed or freed since the damage was seen
            return self._matches(k, v, data) and self._write_back(v, data)

    def _matches(self, k: FullKey, v: LeafVal, data: bytes) -> bool:
        n = len(data)
        if n == v[3] and v[4] and checksum(_padded(data)) == v[5]:
            return True
        log.warning("self-heal of %s: the replica's bytes do not match the checksum this "
                    "volume expects: refused", _fmt_key(k))
        return False

    def _write_back(self, v: LeafVal, data: bytes) -> bool:
        if self.readonly or self._broken is not None or self._closed:
            return False
        # The bytes the extent was written with: no B-tree change, nothing to commit.
        self.device.write(extent_off(v[4]), _padded(data))
        self.device.flush()
        return True

    def private_record(self, obj: int, key: int = 0) -> bytes | None:
        """The store's own small record (obj, key) (STORE_PFS: never mirrored, no history)."""
        with self._lock:
            val = self._tree.exact((STORE_PFS, obj, 0, key, 0))
            return None if val is None else val[6]

    def set_private_record(self, obj: int, data: bytes | None, key: int = 0) -> None:
        """Replace (None: remove) the store's own record (obj, key): inline, committed with
        the next commit."""
        if data is not None and len(data) > INLINE_MAX:
            raise HammerError(f"store record of {len(data)} bytes exceeds {INLINE_MAX}")
        fk = (STORE_PFS, obj, 0, key, 0)
        with self._lock:
            self._writable()
            self._need(0, privileged=True)
            if data is None:
                if self._tree.exact(fk) is None:
                    return
                self._tree.remove(fk)
            else:
                self._tree.upsert(fk, (0, time.time_ns(), 0, len(data), 0, ZERO_CSUM,
                                       bytes(data)))
            self._dirty = True

    # -- changes --------------------------------------------------------------------------------------
    def put(self, reckey: RecKey, data: bytes, history_ns: int = HISTORY_ALL) -> Record:
        _check_key(reckey)
        _check_data(data)
        with self._lock:
            self._writable()
            now = time.time_ns()
            ext = _ext_blocks(len(data))
            if reckey[2] == REC_SNAPSHOT:  # the state a snapshot names is kept
                self._history_floor = max(self._history_floor, min(reckey[3], self._current))
            self._put_val(reckey, now, ext, lambda: self._store_data(data, 0, now, 0, True),
                          history_ns)
            return _make_record(*reckey, self._current, 0, now, 0, bytes(data))

    def _put_val(self, reckey: RecKey, now: int, ext: int, make_val,
                 history_ns: int = HISTORY_ALL) -> None:
        """Replace the live version of ``reckey`` by ``make_val()`` (called once the space
        for ``ext`` data blocks is known to be there)."""
        cur = self._current
        k = (*reckey, cur)
        # One descent serves the lookup of the live version and both changes: the ended
        # version and the new one sort next to each other in the same leaf.
        path, leaf, i = self._tree.locate(k)
        same_key = i >= 0 and leaf.keys[i][:4] == reckey
        live = same_key and (leaf.vals[i][0] == 0 or cur < leaf.vals[i][0])
        # An inline update of a live record (an inode's nlink or mtime) goes with deletes
        # (unlink, rmdir), so it may use the reserve that keeps deletes possible.
        self._need(ext, privileged=live and ext == 0)
        val = make_val()
        drop = None
        if same_key:
            lk, lv = leaf.keys[i], leaf.vals[i]
            if lk[4] != cur and (lv[0] == 0 or cur < lv[0]):  # visible: end it
                if history_ns and self._droppable(lk, lv, history_ns, now):
                    drop = lk, lv  # ...or destroy it, once the new version references
                    # what it shares of its blocks
                else:
                    self._tree.set_val_at(path, leaf, i, (cur, lv[1], now, *lv[3:]))
        replaced = self._tree.upsert_at(path, leaf, k, val)
        self._free_data(k, replaced)
        if drop is not None:
            self._drop_version(*drop, now)
        if val[4] and val[6] is not None:  # data kept in memory until commit
            self._unwritten.add(k)
            self._unwritten_bytes += val[3]
            if self._unwritten_bytes > UNWRITTEN_MAX:  # a few MiB: this change waits for it
                _write_coalesced(self.device, self._unwritten_data(4 * WRITE_OUT_STEP))
        self._dirty = True
        self._next_obj = max(self._next_obj, reckey[1] + 1)
        self._max_tid_seen = max(self._max_tid_seen, cur)

    def put_slice(self, reckey: RecKey, src: RecKey, start: int, length: int,
                  history_ns: int = HISTORY_ALL) -> Record:
        """Create or replace the live version of ``reckey`` with bytes ``[start, start +
        length)`` of the live version of ``src``.  ``start`` is a multiple of 4096, both keys
        are of one (pfs, obj_id, rec_type) and in one 64 KiB key window (format.SHARE_WINDOW);
        the slice ends on a multiple of 4096 or where the source ends (so the bytes after it
        in its last block are zeros, as in every extent: its checksum is that of its data
        zero-padded, the end-to-end checksum of mirroring).
        A committed external extent is not copied: the new version references that slice of
        its blocks (both are marked shared; a block is freed when no version in the window
        references it any more).  Used to cut the part of a file extent a write leaves alone
        and to truncate one."""
        _check_key(reckey)
        _check_key(src)
        if reckey[:3] != src[:3] or share_window(reckey[3]) != share_window(src[3]):
            raise HammerError(f"put_slice: {reckey!r} and {src!r} are not in one key window")
        with self._lock:
            self._writable()
            hit = self._visible(src, self._current)
            if hit is None:
                raise HammerError(f"put_slice: no live version of {src!r}")
            sk, sv = hit
            check_slice(start, length, sv[3])
            now = time.time_ns()
            if sv[6] is not None or length <= INLINE_MAX:  # in memory or small: a copy
                data = self._data(sk, sv)[start:start + length]
                ext = _ext_blocks(length)
                self._put_val(reckey, now, ext, lambda: self._store_data(data, 0, now, 0, True),
                              history_ns)
                return _make_record(*reckey, self._current, 0, now, 0, bytes(data))
            raw = self._extent(sk, sv)
            piece = raw[start:start + _blocks(length) * BLOCK]
            val = (0, now, 0, length, (extent_off(sv[4]) + start) | EXT_SHARED,
                   checksum(piece), None)
            if not sv[4] & EXT_SHARED:
                path, leaf, i = self._tree.locate(sk)
                self._tree.set_val_at(path, leaf, i, (*sv[:4], sv[4] | EXT_SHARED, *sv[5:]))
            self._put_val(reckey, now, 0, lambda: val, history_ns)
            return _make_record(*reckey, self._current, 0, now, 0, piece[:length])

    def room_for(self, length: int) -> int:
        """Check that a record of ``length`` bytes can be put now: NoSpace if not; returns
        ``length`` when its extent finds a contiguous run, else 4096 (the caller then stores
        the data as records of at most 4096 bytes, which always fit while space is free)."""
        with self._lock:
            ext = _ext_blocks(length)
            self._need(ext + ext // 16)  # ext // 16: leaf entries if it is cut into 4 KiB
            return length if ext <= 1 or self._alloc.has_run(ext, DATA) else BLOCK

    def delete(self, reckey: RecKey, history_ns: int = HISTORY_ALL) -> bool:
        _check_key(reckey)
        with self._lock:
            self._writable()
            live = self._visible(reckey, self._current)
            if live is None:
                return False
            self._need(0, privileged=True)
            now = time.time_ns()
            if live[0][4] != self._current and history_ns and \
                    self._droppable(*live, history_ns, now):
                self._drop_version(*live, now)
            else:
                self._end_or_drop(*live, now)
            return True

    def delete_range(self, lo: RecKey, hi: RecKey, history_ns: int = HISTORY_ALL) -> int:
        with self._lock:
            live = list(self.scan(lo, hi, with_data=False))
            for rec in live:
                self.delete(rec.reckey, history_ns)
            return len(live)

    def insert_raw(self, record: Record) -> bool:
        _check_key(record.reckey)
        check_raw_version(record.obj_id, record.create_tid, record.delete_tid, record.delete_ts)
        data = record.data or b""
        _check_data(data)
        with self._lock:
            self._writable()
            fk = record.fullkey
            old = self._tree.exact(fk)
            if old is not None:
                if old[0] == 0 and record.delete_tid != 0:
                    return self.set_delete_tid(record.reckey, record.create_tid,
                                               record.delete_tid, record.delete_ts)
                return False
            self._need(_ext_blocks(len(data)))
            val = self._store_data(data, record.delete_tid, record.create_ts, record.delete_ts)
            replaced = self._tree.upsert(fk, val)
            self._free_data(fk, replaced)
            self._dirty = True
            self._next_obj = max(self._next_obj, record.obj_id + 1)
            self._max_tid_seen = max(self._max_tid_seen, record.create_tid, record.delete_tid)
            return True

    def set_delete_tid(self, reckey: RecKey, create_tid: int, delete_tid: int,
                       delete_ts: int) -> bool:
        _check_key(reckey)
        check_delete_tid(create_tid, delete_tid)
        with self._lock:
            self._writable()
            fk = (*reckey, create_tid)
            old = self._tree.exact(fk)
            if old is None:
                return False
            self._need(0, privileged=True)
            self._tree.upsert(fk, (delete_tid, old[1], delete_ts if delete_tid else 0, *old[3:]))
            self._max_tid_seen = max(self._max_tid_seen, delete_tid)
            self._dirty = True
            return True

    def destroy(self, reckey: RecKey, create_tid: int) -> bool:
        _check_key(reckey)
        with self._lock:
            self._writable()
            fk = (*reckey, create_tid)
            if self._tree.exact(fk) is None:
                return False
            self._need(0, privileged=True)
            self._free_data(fk, self._tree.remove(fk))
            self._dirty = True
            return True

    def _droppable(self, k: FullKey, v: LeafVal, history_ns: int, now: int) -> bool:
        """May ending this committed version destroy it (history granularity, api.py)?"""
        if k[4] <= self._history_floor:
            return False
        return history_ns < 0 or v[1] // history_ns == now // history_ns

    def _drop_version(self, k: FullKey, v: LeafVal, now: int) -> None:
        """Destroy an intermediate version; the one it replaced lives on until now."""
        self._free_data(k, self._tree.remove(k))
        prev = self._tree.floor((*k[:4], k[4] - 1))
        if prev is not None and prev[0][:4] == k[:4] and prev[1][0] == k[4]:
            pv = prev[1]
            self._tree.upsert(prev[0], (self._current, pv[1], now, *pv[3:]))
        self._dirty = True

    def _end_or_drop(self, k: FullKey, v: LeafVal, now: int) -> None:
        """End a live version; one created in this transaction never existed durably, so it is
        dropped instead (no history inside a transaction)."""
        if k[4] == self._current:
            self._free_data(k, self._tree.remove(k))
        else:
            self._tree.upsert(k, (self._current, v[1], now, *v[3:]))
        self._dirty = True

    def _store_data(self, data: bytes, dtid: int, cts: int, dts: int,
                    defer: bool = False) -> LeafVal:
        """Inline small data; give larger data its own extent: written now (one pwrite), or
        with ``defer`` kept in the value until the commit writes it (_unwritten_data)."""
        n = len(data)
        if n <= INLINE_MAX:
            return (dtid, cts, dts, n, 0, ZERO_CSUM, bytes(data))
        nblocks = _blocks(n)
        block = self._alloc.alloc(nblocks, DATA)
        if defer:
            return (dtid, cts, dts, n, block * BLOCK, ZERO_CSUM, bytes(data))
        buf = _padded(data)
        self.device.write(block * BLOCK, buf)
        return (dtid, cts, dts, n, block * BLOCK, checksum(buf), None)

    @property
    def unwritten_bytes(self) -> int:
        """Extent data of the open transaction still in memory (about)."""
        return self._unwritten_bytes

    def write_out(self, limit: int = WRITE_OUT_STEP) -> bool:
        """Write about ``limit`` bytes of the extent data still in memory to its blocks
        (what the commit, or a write past UNWRITTEN_MAX, would do), under the store's lock
        only: the content does not change, so a mount calls it without its own lock, in
        steps.  True if some is left."""
        with self._lock:
            if not self._unwritten or self._broken is not None or self._closed:
                return False
            _write_coalesced(self.device, self._unwritten_data(limit))
            return bool(self._unwritten)

    def _unwritten_data(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        """The writes of the extents whose data is still in memory (all, or the first in
        key order up to about ``limit`` bytes); their entries get the checksum and lose the
        bytes.  In key order, so a file's extents are written in one pass over contiguous
        blocks."""
        writes = []
        tree = self._tree
        done = 0
        keys = sorted(self._unwritten)
        for n, k in enumerate(keys):
            if limit is not None and done >= limit:
                self._unwritten.difference_update(keys[:n])
                self._unwritten_bytes = max(0, self._unwritten_bytes - done)
                return writes
            path, leaf, i = tree.locate(k)
            if i < 0 or leaf.keys[i] != k:
                continue  # dropped since
            v = leaf.vals[i]
            if not v[4] or v[6] is None:
                continue  # replaced since (by an inline or written value)
            pad = -v[3] % BLOCK
            buf = v[6] + bytes(pad) if pad else v[6]
            tree.set_val_at(path, leaf, i, (*v[:5], checksum(buf), None))
            writes.append((extent_off(v[4]), buf))
            done += len(buf)
        self._unwritten.clear()
        self._unwritten_bytes = 0
        return writes

    def _free_data(self, k: FullKey, val: LeafVal | None) -> None:
        """Release the blocks of a version just removed or replaced in the tree: all of
        them, or for a shared extent those no other version in its window references."""
        if val is None or not val[4]:
            return
        first, count = val[4] // BLOCK, _blocks(val[3])
        if not val[4] & EXT_SHARED:
            self._alloc.free(first, count, data=True)
            return
        lo, hi = share_window(k[3])
        taken = bytearray(count)
        for _, v in self._tree.collect((*k[:3], lo, 0), (*k[:3], hi, MAX_U64), 1 << 30):
            if v[4] & EXT_SHARED:
                b, n = v[4] // BLOCK, _blocks(v[3])
                for x in range(max(b, first), min(b + n, first + count)):
                    taken[x - first] = 1
        run = None
        for x in range(count + 1):
            if x < count and not taken[x]:
                run = x if run is None else run
            elif run is not None:
                self._alloc.free(first + run, x - run, data=True)
                run = None

    def _need(self, data_blocks: int, privileged: bool = False) -> None:
        """Refuse a change that could leave the commit without room for its B-tree nodes.
        Ordinary writes keep a reserve free so that deletes and commits always proceed."""
        tree = self._tree
        spare = self._alloc.free_blocks - tree.dirty_count - 2 * (tree.height() + 2)
        if not privileged:
            spare -= self._reserve
        if data_blocks + tree.height() + 1 > spare:
            raise NoSpace("no space left on volume")

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnly("volume is open read-only")
        if self._closed:
            raise HammerError("volume is closed")
        if self._broken is not None:
            raise HammerError(f"volume {self._where} failed to commit ({self._broken}); "
                              f"reopen it to continue from its last commit")

    # -- space and lifecycle ----------------------------------------------------------------------------
    def space(self) -> SpaceInfo:
        with self._lock:
            free = self._alloc.free_blocks
            tree = self._tree
            # What ordinary writes can still use: the reserve for deletes and commits and
            # the B-tree entries of the data (one per 4 KiB at worst, 1/32 of it) held back.
            spare = free - self._reserve - tree.dirty_count - 2 * (tree.height() + 2)
            avail = max(0, spare - spare // 32)
            return SpaceInfo(self._nblocks * BLOCK, (self._nblocks - free) * BLOCK, free * BLOCK,
                             BLOCK, BIGBLOCK, self._alloc.bb_count, self._alloc.bigblocks_free(),
                             avail * BLOCK)

    def bigblock_fill(self) -> list[int]:
        """Blocks in use per big-block (for `hammer info`)."""
        with self._lock:
            return self._alloc.bigblock_fill()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if not self.readonly and self._broken is None:
                    self.commit()
            finally:
                self._closed = True
                self.device.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals shared with scrub/show ---------------------------------------------------------------
    @property
    def tree(self) -> BTree:
        return self._tree

    @property
    def allocator(self) -> Allocator:
        return self._alloc

    @property
    def held_runs(self) -> list[tuple[int, int]]:
        """Blocks the commit in flight freed, still marked in use until it is durable."""
        return self._in_flight.held if self._in_flight is not None else []

    def data_of(self, k: FullKey, v: LeafVal) -> bytes:
        return self._data(k, v)


@dataclass(frozen=True, slots=True)
class PreparedCommit:
    """A commit between ``Store.commit_begin`` and ``Store.commit_end``."""

    tid: int
    hdr: Header  # to write once the data, nodes and free-map are flushed
    held: list[tuple[int, int]]  # blocks it freed, reusable once ``hdr`` is durable
    started: float  # monotonic(), for CommitStats
    writes: list[tuple[int, bytes]]  # nodes and free-map, written before the first flush


@dataclass
class DamageCounts:
    """Damaged data extents and B-tree nodes met by reads and scrubs since the volume was
    opened."""

    found: int = 0
    repaired: int = 0
    unrepairable: int = 0


@dataclass
class CommitStats:
    """Commits that wrote something since the volume was opened, and how long they took."""

    commits: int = 0
    commit_seconds: float = 0.0
    last_commit_seconds: float = 0.0


def used_extents(tree: BTree) -> Iterator[tuple[int, int]]:
    """(first block, count) of every node and data extent reachable from the root."""
    for _, node in tree.walk_nodes():
        if node.off:
            yield node.off // BLOCK, 1
        if not node.level:
            for v in node.vals:
                if v[4]:
                    yield v[4] // BLOCK, _blocks(v[3])


def _distinct_runs(extents: Iterator[tuple[int, int]], nblocks: int) -> Iterator[tuple[int, int]]:
    """The runs of blocks covered by ``extents``, each block once (shared extents overlap)."""
    used = np.zeros(nblocks + 1, dtype=np.int8)
    for block, count in extents:
        used[block:block + count] = 1
    edges = np.flatnonzero(np.diff(np.concatenate(([0], used))))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        yield int(start), int(end - start)


@dataclass(frozen=True, slots=True)
class HeaderDamage:
    """A volume header copy that failed verification while the other copy is valid.

    ``newer`` is the verdict on whether the damaged copy held a later commit than the copy in
    use: True (the volume was rolled back: that commit is lost), False (it was the older copy:
    nothing lost) or None (cannot tell).  ``message`` says all of it in one line."""

    slot: int
    reason: str
    in_use_seq: int
    claimed: Header | None  # the damaged copy's fields as they read (never trusted alone)
    newer: bool | None
    message: str


def read_header(device: BlockDevice) -> Header:
    """The valid header with the highest seq; NotAVolume (nothing written) if there is none."""
    return read_headers(device)[0]


def read_headers(device: BlockDevice) -> tuple[Header, HeaderDamage | None]:
    """The valid header with the highest seq, and what is wrong with the other copy (None
    when both are valid or the other was never written).  NotAVolume if there is none."""
    where = getattr(device, "path", "device")
    if device.size < 2 * BLOCK:
        raise NoVolumeSignature(f"{where}: too small to hold a hammerfs volume ({device.size} bytes)")
    raw = device.read(0, 2 * BLOCK)
    found, errors = {}, {}
    for slot in (0, 1):
        try:
            found[slot] = decode_header(raw[slot * BLOCK:(slot + 1) * BLOCK], where)
        except (NotAVolume, CorruptionError) as exc:
            errors[slot] = exc
    if not found:
        for exc in errors.values():
            if isinstance(exc, NotAVolume) and "version" in str(exc):
                raise exc
        if any(isinstance(e, CorruptionError) for e in errors.values()):
            raise NotAVolume(f"{where}: no valid volume header (checksum mismatch)")
        raise errors[0]
    hdr = max(found.values(), key=lambda h: h.seq)
    if hdr.volume_bytes > device.size:
        raise NotAVolume(f"{where}: volume is truncated: the header says {hdr.volume_bytes} "
                         f"bytes, the device has {device.size}")
    damage = None
    if errors:
        slot = next(iter(errors))
        damage = _judge_damaged_copy(device, hdr, slot, raw[slot * BLOCK:(slot + 1) * BLOCK],
                                     errors[slot])
    return hdr, damage


def _judge_damaged_copy(device: BlockDevice, valid: Header, slot: int, raw: bytes,
                        exc: HammerError) -> HeaderDamage | None:
    """Was the damaged copy newer than ``valid``?  A commit writes seq + 1, a higher commit
    TID, max TID and commit time into the other slot, and one damaged byte can falsify at most
    one of these four fields: so the majority of them decides (see docs/format.md)."""
    claimed = header_claims(raw)
    if claimed is None:
        if valid.seq <= 1:  # the first commit writes slot 1 only: slot 0 was never written
            return None
        reason, newer = "blank (all zeros)", None
    else:
        reason = str(exc).split(": ", 1)[-1]
        votes = [_cmp(claimed.seq, valid.seq, exact=True), _cmp(claimed.last_tid, valid.last_tid),
                 _cmp(claimed.max_tid, valid.max_tid), _cmp(claimed.last_ts, valid.last_ts)]
        up, down = votes.count(1), votes.count(-1)
        newer = True if up >= 2 and up > down else False if down >= 2 and down > up else None
    head = f"volume header copy in slot {slot} is damaged ({reason}); using slot {valid.slot} " \
           f"(commit seq {valid.seq}, TID {valid.last_tid:#018x})"
    if newer:
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claimed.last_ts / 1e9))
        except (OverflowError, OSError, ValueError):  # that field may be the damaged one
            when = "an unreadable time"
        intact = _root_verifies(device, valid, claimed)
        message = (f"{head}: the damaged copy was the NEWEST (it claims seq {claimed.seq}, "
                   f"TID {claimed.last_tid:#018x} of {when}): the volume is ROLLED BACK and "
                   f"that last commit is lost"
                   + ("; its B-tree root still verifies on disk until the next commit "
                      "reuses its blocks" if intact else ""))
    elif newer is False:
        message = (f"{head}: the damaged copy was the older one (it claims seq {claimed.seq}), "
                   f"no commit was lost; the next commit rewrites it")
    else:
        message = (f"{head}: cannot tell whether the damaged copy held a newer commit; the "
                   f"last commit may be lost")
    return HeaderDamage(slot, reason, valid.seq, claimed, newer, message)


def _cmp(claimed: int, valid: int, *, exact: bool = False) -> int:
    """+1 if ``claimed`` is what a later commit would hold, -1 if an earlier one, else 0."""
    if exact:
        return 1 if claimed == valid + 1 else -1 if claimed == valid - 1 else 0
    return (claimed > valid) - (claimed < valid)


def _root_verifies(device: BlockDevice, valid: Header, claimed: Header) -> bool:
    off = claimed.root_off
    if not off or off % BLOCK or off + BLOCK > valid.volume_bytes:
        return False
    return checksum(device.read(off, BLOCK)) == claimed.root_csum


def _adjacent_runs(entries: list[tuple[object, LeafVal]]) -> list[list[tuple[object, LeafVal]]]:
    """(tag, leaf value) pairs of external extents grouped into runs that lie back to back on
    disk (one device read each), at most PREFETCH_EXTENTS per run, in the given order."""
    runs: list[list[tuple[object, LeafVal]]] = []
    for tag, v in entries:
        if runs and len(runs[-1]) < PREFETCH_EXTENTS:
            prev = runs[-1][-1][1]
            if extent_off(prev[4]) + _blocks(prev[3]) * BLOCK == extent_off(v[4]):
                runs[-1].append((tag, v))
                continue
        runs.append([(tag, v)])
    return runs


def _write_coalesced(device, writes: list[tuple[int, bytes]]) -> None:
    """Write blocks in offset order, merging adjacent ones into single writes."""
    writes.sort(key=lambda w: w[0])
    i = 0
    while i < len(writes):
        start, parts = writes[i][0], [writes[i][1]]
        end = start + len(writes[i][1])
        i += 1
        while i < len(writes) and writes[i][0] == end and len(parts) < 256:
            parts.append(writes[i][1])
            end += len(writes[i][1])
            i += 1
        write_parts(device, start, parts)


def _record_factory():
    """A Record constructor for the hot paths: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``; setting the slots directly builds the same object
    (equal, same hash) in about half the time."""
    new = object.__new__
    s_pfs, s_obj, s_type, s_key, s_ctid, s_dtid, s_cts, s_dts, s_data = (
        getattr(Record, f.name).__set__ for f in fields(Record))

    def make(pfs: int, obj_id: int, rec_type: int, key: int, create_tid: int, delete_tid: int,
             create_ts: int, delete_ts: int, data: bytes | None) -> Record:
        rec = new(Record)
        s_pfs(rec, pfs)
        s_obj(rec, obj_id)
        s_type(rec, rec_type)
        s_key(rec, key)
        s_ctid(rec, create_tid)
        s_dtid(rec, delete_tid)
        s_cts(rec, create_ts)
        s_dts(rec, delete_ts)
        s_data(rec, data)
        return rec
    return make


_make_record = _record_factory()


def _padded(data: bytes) -> bytes:
    """Data as its extent holds it: zero-padded to whole blocks (what its checksum covers)."""
    n = len(data)
    return data if n % BLOCK == 0 else bytes(data) + bytes(_blocks(n) * BLOCK - n)


def _blocks(length: int) -> int:
    return -(-length // BLOCK)


def _ext_blocks(length: int) -> int:
    return 0 if length <= INLINE_MAX else _blocks(length)


def _check_key(reckey: RecKey) -> None:
    try:
        pfs, obj, rec_type, key = reckey
        ok = 0 <= pfs <= MAX_PFS and 0 <= obj <= MAX_U64 and 0 <= rec_type <= 0xFFFF \
            and 0 <= key <= MAX_U64
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HammerError(f"record key out of range: {reckey!r}")


def _check_data(data: bytes) -> None:
    if len(data) > MAX_DATA:
        raise HammerError(f"record data of {len(data)} bytes exceeds the {MAX_DATA}-byte limit")


def _fmt_key(k: FullKey) -> str:
    return f"{k[0]}:{k[1]:#x}:{k[2]:#x}:{k[3]:#x}@{k[4]:#018x}"
