"""The source side of mirroring (HAMMER's mirror-read / mirror-read-stream).

A batch covers the TIDs ``[beg, end]`` where ``end`` is the source's last complete TID.  For
every version that ``store.changed_since(beg)`` returns (unchanged subtrees are skipped by the
store, so the cost follows the change):

* ``beg <= create_tid <= end``  -> REC with its data; a delete_tid after ``end`` is sent as 0
  (the batch is a snapshot as of ``end``);
* ``create_tid < beg`` and ``beg <= delete_tid <= end`` -> PASS: the target ends that version;
* anything else happened after ``end`` and waits for a later batch.

Deletions therefore travel explicitly and the target never has to infer them from gaps.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from hammerfs.errors import HammerError
from hammerfs.mirror import stream as s
from hammerfs.mirror.pfs_ops import (
    PFS_DOWNGRADED,
    is_mirrored,
    pfs_range,
    require_pfs,
    sync_end_of,
)
from hammerfs.store.api import RecordStore
from hammerfs.store.pfs import PfsData
from hammerfs.store.records import Record

REC_OVERHEAD = s.HEADER_SIZE + 66  # frame header + REC header: used to size chunks


@dataclass
class SourceOptions:
    two_way: bool = False
    begin_tid: int = 1  # one-way mode only; two-way asks the target
    stream: bool = False  # keep following commits (mirror-read-stream)
    chunk_bytes: int = 64 << 20  # bulk transfers are cut into batches of about this size
    idle_interval: float = 5.0  # keep-alive period, and minimum gap between empty batches
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class Chunk:
    beg: int
    end: int
    records: list[Record] | None  # already scanned (small transfers), or None: rescan
    full: bool = False  # part of a first, full copy (the whole range started at TID 1)


@dataclass(frozen=True, slots=True)
class Plan:
    chunks: list[Chunk]
    total_bytes: int
    records: int


def event_tid(rec: Record, beg: int, end: int) -> int | None:
    """The TID at which ``rec`` changes inside ``[beg, end]``, or None."""
    if beg <= rec.create_tid <= end:
        return rec.create_tid
    if rec.create_tid < beg and beg <= rec.delete_tid <= end:
        return rec.delete_tid
    return None


def changes(store: RecordStore, pfs: int, beg: int, end: int) -> Iterator[Record]:
    """Mirrored versions that change inside ``[beg, end]``, in key order."""
    for rec in store.changed_since(*pfs_range(pfs), beg):
        if is_mirrored(rec) and event_tid(rec, beg, end) is not None:
            yield rec


def plan_chunks(store: RecordStore, pfs: int, beg: int, end: int, chunk_bytes: int,
                ) -> Plan:
    """Cut ``[beg, end]`` into TID ranges of about ``chunk_bytes`` each.

    One pass collects a histogram of bytes per TID; if everything fits in one chunk the
    records from that pass are reused, otherwise each chunk rescans (changed_since from its
    own beginning).  One transaction is never split, so a chunk may be larger."""
    per_tid: Counter[int] = Counter()
    kept: list[Record] | None = []
    total = count = 0
    for rec in changes(store, pfs, beg, end):
        count += 1
        size = REC_OVERHEAD + (len(rec.data or b"") if rec.create_tid >= beg else 0)
        per_tid[event_tid(rec, beg, end)] += size
        total += size
        if kept is not None:
            kept.append(rec)
            if total > chunk_bytes:
                kept = None  # too big to hold: the chunks will rescan
    if kept is not None:
        return Plan([Chunk(beg, end, kept)], total, count)
    chunks: list[Chunk] = []
    start, acc, full = beg, 0, beg <= 1
    for tid in sorted(per_tid):
        acc += per_tid[tid]
        if acc >= chunk_bytes and tid < end:
            chunks.append(Chunk(start, tid, None, full))
            start, acc = tid + 1, 0
    chunks.append(Chunk(start, end, None, full))
    return Plan(chunks, total, count)


def _complete_history_from(desc: PfsData, beg: int) -> int:
    """Refuse an increment that needs history the source no longer has.  Deletions travel as
    ended versions; after a prune (which moves sync_beg_tid up) the versions ended before
    sync_beg_tid are gone, so a target behind that point would silently keep deleted files.
    A first copy (the target synced to TID 1 or less, i.e. nothing) needs no history."""
    if beg - 1 > 1 and beg < desc.sync_beg_tid:
        raise HammerError(
            f"the source's history before 0x{desc.sync_beg_tid:016x} was pruned, but the "
            f"target is only synced up to 0x{beg - 1:016x}: deletions in between cannot be "
            f"replayed.  Recreate the slave (pfs-destroy, then pfs-slave) for a full copy")
    return beg


class Source:
    """Runs one source session over a byte channel (``inp`` is None in one-way mode)."""

    def __init__(self, store: RecordStore, pfs: int, inp: BinaryIO | None, out: BinaryIO,
                 opts: SourceOptions, on_ack: Callable[[PfsData, int], None] | None = None):
        self.store = store
        self.pfs = pfs
        self.opts = opts
        self.on_ack = on_ack  # called with (target descriptor, tid) on each UPDATE
        self.target: PfsData | None = None
        self.tx = s.FrameWriter(out)
        self.rx = s.FrameReader(inp) if inp is not None else None
        self.synced = 0  # last TID the target acknowledged (or we sent, one-way)

    def run(self) -> int:
        """Send batches until caught up (or forever with ``stream``); returns the last
        synced TID."""
        try:
            beg = self._handshake()
            self._loop(beg)
            self.tx.send(s.TERM, flush=True)
            return self.synced
        except (s.StreamClosed, s.PeerError):
            raise
        except HammerError as exc:
            self._tell_peer(exc)
            raise

    def _tell_peer(self, exc: BaseException) -> None:
        with contextlib.suppress(s.StreamError):
            self.tx.send(s.ERROR, s.error_payload(exc), flush=True)

    def _handshake(self) -> int:
        desc = require_pfs(self.store, self.pfs)
        if not desc.is_slave and not self.store.readonly:
            # A mounted master commits about once a second: make what was written just
            # before this command part of the copy.
            self.store.commit()
        self.tx.send(s.HELLO, s.hello_payload(s.ROLE_SOURCE))
        self.tx.send(s.PFSD, s.pfsd_payload(self.pfs, desc), flush=True)
        if self.rx is None:
            return _complete_history_from(desc, max(1, self.opts.begin_tid))
        frame = self._recv()
        if s.decode_hello(frame) != s.ROLE_TARGET:
            raise s.StreamError("the mirror peer is not a target (mirror-write)")
        _, target = s.decode_pfsd(self._recv())
        self.target = target
        if target.shared_uuid != desc.shared_uuid:
            raise HammerError(f"shared-uuid mismatch: source {desc.shared_uuid}, "
                              f"target {target.shared_uuid}")
        return _complete_history_from(desc, self._start_tid(desc, target))

    def _start_tid(self, desc: PfsData, target: PfsData) -> int:
        """Two-way mode: continue after the target's sync point.  A downgraded ex-master may
        hold changes we never had after the last TID both share: start at that TID so the
        target rolls back to it first."""
        if target.mirror_flags & PFS_DOWNGRADED:
            # A master's stored sync_end_tid is where it was upgraded from a slave (1 if it
            # never was one): the last TID it is known to share with its old master.
            common = min(target.sync_end_tid, desc.sync_end_tid)
            return common + 1
        return target.sync_end_tid + 1

    def _recv(self) -> s.Frame:
        assert self.rx is not None
        frame = self.rx.recv()
        if frame.type == s.ERROR:
            raise s.decode_error(frame, "mirror target")
        return frame

    def _loop(self, beg: int) -> None:
        last_commit = self.store.last_committed_tid
        last_sent = time.monotonic()
        while True:
            end = sync_end_of(self.store, self.pfs, require_pfs(self.store, self.pfs))
            if end >= beg:
                quiet = self.opts.stream and time.monotonic() - last_sent < \
                    self.opts.idle_interval and not self._has_changes(beg, end)
                if not quiet:
                    beg = self._send_range(beg, end)
                    last_sent = time.monotonic()
            if not self.opts.stream or self.opts.stop.is_set():
                return
            got = self.store.wait_commit(last_commit, timeout=self.opts.idle_interval)
            if self.opts.stop.is_set():
                return
            if got == last_commit:
                self.tx.send(s.IDLE, s.tid_payload(end), flush=True)
            last_commit = got

    def _has_changes(self, beg: int, end: int) -> bool:
        return next(changes(self.store, self.pfs, beg, end), None) is not None

    def _send_range(self, beg: int, end: int) -> int:
        plan = plan_chunks(self.store, self.pfs, beg, end, self.opts.chunk_bytes)
        self.tx.send(s.ESTIMATE, s.estimate_payload(plan.total_bytes, plan.records, beg, end))
        for chunk in plan.chunks:
            self._send_batch(chunk)
            if self.opts.stop.is_set() and not self.opts.stream:
                break
        return self.synced + 1

    def _chunk_records(self, chunk: Chunk) -> Iterable[Record]:
        if chunk.records is not None:
            return chunk.records
        if chunk.full:
            # A full copy cut into chunks: walk keys only and read each sent version's data
            # once, instead of re-reading every later chunk's data for each chunk.
            return (rec for rec in self.store.scan(*pfs_range(self.pfs), history=True,
                                                   with_data=False)
                    if is_mirrored(rec) and event_tid(rec, chunk.beg, chunk.end) is not None)
        return changes(self.store, self.pfs, chunk.beg, chunk.end)

    def _send_batch(self, chunk: Chunk) -> None:
        recs = self._chunk_records(chunk)
        self.tx.send(s.BATCH, s.batch_payload(chunk.beg, chunk.end))
        count = 0
        for rec in recs:
            self._send_record(rec, chunk.beg, chunk.end)
            count += 1
        end_ts = self.store.tid_time(chunk.end)
        self.tx.send(s.SYNC, s.sync_payload(chunk.end, end_ts, count), flush=True)
        if self.rx is not None:
            frame = self._recv()
            if frame.type != s.UPDATE or s.decode_tid(frame) != chunk.end:
                raise s.StreamError(f"mirror target answered {frame.name} instead of "
                                    f"acknowledging TID 0x{chunk.end:016x}")
            if self.on_ack is not None and self.target is not None:
                self.on_ack(self.target, chunk.end)
        self.synced = chunk.end

    def _send_record(self, rec: Record, beg: int, end: int) -> None:
        if rec.create_tid >= beg:
            if rec.data is None:  # some stores may defer data; fetch this version's
                rec = self._with_data(rec)
            deleted = rec.delete_tid if 0 < rec.delete_tid <= end else 0
            self.tx.send(s.REC, s.rec_payload(rec, deleted, rec.delete_ts if deleted else 0))
        else:
            self.tx.send(s.PASS, s.pass_payload(rec))

    def _with_data(self, rec: Record) -> Record:
        full = self.store.get(rec.reckey, asof=rec.create_tid)
        if full is None or full.create_tid != rec.create_tid:
            raise HammerError(f"record {rec.fullkey} vanished while mirroring")
        return full
