"""The target side of mirroring (HAMMER's mirror-write).

Every frame is validated (ranges of the format, the batch's TIDs, the slave's sync point,
key order) before anything of it is applied.  Records are held back until the batch's SYNC,
or until APPLY_BUFFER bytes of them are pending: a batch that fits is refused whole with
nothing written; a larger one is applied as it streams (with the master's TIDs), and since a
slave shows its data as of its ``sync_end_tid``, nothing of it is visible until its SYNC moves
that TID and the store commits.  On any failure an applied part is rolled back to the last
sync point, so the slave stays exactly at its last complete batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import BinaryIO

from hammerfs.errors import HammerError
from hammerfs.mirror import stream as s
from hammerfs.mirror.pfs_ops import PFS_DOWNGRADED, require_pfs, rollback
from hammerfs.store.api import RecordStore
from hammerfs.store.pfs import PfsData
from hammerfs.store.records import (
    MAX_DATA,
    MAX_REC_TYPE,
    MAX_TID,
    REC_CONFIG,
    REC_PFS,
    Record,
    check_raw_version,
)

APPLY_BUFFER = 8 << 20  # record bytes of a batch held back before applying any of them
_PENDING_OVERHEAD = 96  # per held-back record, so that many tiny records count too


@dataclass
class WriteResult:
    batches: int = 0  # batches applied
    stale: int = 0  # batches the slave already had (replays), skipped
    records: int = 0  # REC/PASS frames applied
    sync_end_tid: int = 0


class ReplayError(HammerError):
    """Every batch of the stream was already applied."""


@dataclass
class _Batch:
    beg: int
    end: int
    stale: bool
    rollback_to: int | None = None  # a downgraded ex-master: roll back to this TID first
    count: int = 0
    last_key: tuple[int, ...] = ()
    pending: list[Record | tuple[tuple[int, int, int, int], int, int, int]] = field(
        default_factory=list)  # validated, not yet applied: REC records, PASS arguments
    pending_bytes: int = 0
    applied: bool = False  # part of it is in the store: a failure must roll it back


class Target:
    """Runs one target session: ``inp`` carries the source's frames; ``out`` (two-way mode)
    carries our HELLO/PFSD and UPDATE acknowledgements back."""

    def __init__(self, store: RecordStore, pfs: int, inp: BinaryIO, out: BinaryIO | None,
                 stats: dict | None = None):
        self.store = store
        self.pfs = pfs
        self.rx = s.FrameReader(inp)
        self.tx = s.FrameWriter(out) if out is not None else None
        self.result = WriteResult()
        self.batch: _Batch | None = None
        # metrics, kept across sessions by the mount: bytes and REC frames received, the
        # newest master TID the source announced (BATCH, ESTIMATE, IDLE) and the sync point
        self.stats = stats if stats is not None else {}
        for name in ("bytes", "records", "master_tid", "synced"):
            self.stats.setdefault(name, 0)
        self._bytes_before = self.stats["bytes"]

    def run(self) -> WriteResult:
        try:
            desc = self._check_target()
            if self.tx is not None:
                self.tx.send(s.HELLO, s.hello_payload(s.ROLE_TARGET))
                self.tx.send(s.PFSD, s.pfsd_payload(self.pfs, desc), flush=True)
            self._handshake(desc)
            self._loop()
            if self.result.batches == 0 and self.result.stale:
                raise ReplayError(
                    f"stream already applied: its last batch ends at or before this slave's "
                    f"sync-end-tid 0x{self.result.sync_end_tid:016x}; slave unchanged")
        except HammerError as exc:
            self._abort_batch()
            if self.tx is not None and not isinstance(exc, (s.StreamClosed, s.PeerError)):
                self._tell_peer(exc)
            raise
        except BaseException:
            self._abort_batch()
            raise
        return self.result

    # -- checks ----------------------------------------------------------------------------
    def _check_target(self) -> PfsData:
        if self.pfs == 0:
            raise HammerError("PFS #0 is always a master and cannot be a mirror target")
        desc = require_pfs(self.store, self.pfs)
        if not desc.is_slave:
            raise HammerError(f"PFS #{self.pfs} is a master: only a slave accepts "
                              f"mirror-write (see pfs-downgrade)")
        self.result.sync_end_tid = desc.sync_end_tid
        self.stats["synced"] = desc.sync_end_tid
        return desc

    def _handshake(self, desc: PfsData) -> None:
        frame = self._recv()
        if s.decode_hello(frame) != s.ROLE_SOURCE:
            raise s.StreamError("the mirror peer is not a source (mirror-read)")
        _, source = s.decode_pfsd(self._recv())
        if source.shared_uuid != desc.shared_uuid:
            raise HammerError(f"shared-uuid mismatch: source {source.shared_uuid}, target "
                              f"{desc.shared_uuid} (create the slave with pfs-slave "
                              f"shared-uuid={source.shared_uuid})")
        if source.unique_uuid == desc.unique_uuid:
            raise HammerError("source and target are the same PFS")

    def _recv(self) -> s.Frame:
        try:
            frame = self.rx.recv()
        except s.StreamClosed:
            raise s.StreamError("mirror stream is truncated: it ended without TERM") from None
        if frame.type == s.ERROR:
            raise s.decode_error(frame, "mirror source")
        self.stats["bytes"] = self._bytes_before + self.rx.bytes
        return frame

    def _master_at(self, tid: int) -> None:
        self.stats["master_tid"] = max(self.stats["master_tid"], tid)

    def _tell_peer(self, exc: BaseException) -> None:
        with contextlib.suppress(s.StreamError):
            self.tx.send(s.ERROR, s.error_payload(exc), flush=True)

    # -- the frame loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            frame = self._recv()
            if frame.type == s.TERM:
                if self.batch is not None:
                    raise s.StreamError("mirror stream is truncated: TERM inside a batch")
                return
            handler = self._handlers.get(frame.type)
            if handler is None:
                raise s.StreamError(f"unexpected {frame.name} frame in a mirror stream")
            handler(self, frame)

    def _on_batch(self, frame: s.Frame) -> None:
        beg, end, flags = s.decode_batch(frame)
        if self.batch is not None:
            raise s.StreamError("mirror stream is out of order: BATCH inside a batch")
        if flags != 0:
            raise s.StreamError(f"mirror stream is corrupt: unknown batch flags {flags:#x}")
        if not 0 < beg <= end:
            raise s.StreamError(f"mirror stream is corrupt: batch 0x{beg:x}..0x{end:x}")
        if end > MAX_TID:
            raise HammerError(f"mirror stream refused: batch ends at TID 0x{end:016x}, beyond "
                              f"the highest TID a volume accepts (0x{MAX_TID:016x}); a volume "
                              f"holding it could not commit after it.  Slave unchanged")
        desc = require_pfs(self.store, self.pfs)
        have = desc.sync_end_tid
        if beg > have + 1:
            raise HammerError(f"mirror stream starts at TID 0x{beg:016x} but this slave is "
                              f"at 0x{have:016x}: the changes in between would be missing "
                              f"(mirror-read from begin-tid 0x{have + 1:016x} or lower)")
        rollback_to = None
        if desc.mirror_flags & PFS_DOWNGRADED and beg - 1 < have:
            rollback_to = have = beg - 1
        self.batch = _Batch(beg, end, stale=end <= have, rollback_to=rollback_to)
        self._master_at(end)

    def _rollback_to_common(self, common: int) -> None:
        """An ex-master being re-synced: drop what it did after the last shared TID."""
        desc = require_pfs(self.store, self.pfs)
        rollback(self.store, self.pfs, common)
        self.store.put_pfs(self.pfs, desc.evolve(sync_end_tid=common,
                                                 mirror_flags=desc.mirror_flags
                                                 & ~PFS_DOWNGRADED))
        self.store.commit()
        self.result.sync_end_tid = common

    def _in_batch(self, frame: s.Frame) -> _Batch:
        if self.batch is None:
            raise s.StreamError(f"mirror stream is out of order: {frame.name} outside a batch")
        return self.batch

    def _ordered(self, batch: _Batch, fullkey: tuple[int, ...]) -> None:
        if fullkey <= batch.last_key:
            raise s.StreamError("mirror stream is out of order: records not in key order")
        batch.last_key = fullkey
        batch.count += 1

    def _on_rec(self, frame: s.Frame) -> None:
        batch = self._in_batch(frame)
        rec = s.decode_rec(frame, self.pfs)
        if not batch.beg <= rec.create_tid <= batch.end or (
                rec.delete_tid and not rec.create_tid < rec.delete_tid <= batch.end):
            raise s.StreamError("mirror stream is corrupt: record TIDs outside its batch")
        _check_version(rec.obj_id, rec.rec_type, rec.create_tid, rec.delete_tid,
                       rec.delete_ts)
        if len(rec.data) > MAX_DATA:
            raise s.StreamError(f"mirror stream is corrupt: record of {len(rec.data)} bytes")
        self._ordered(batch, rec.fullkey[1:])
        self.stats["records"] += 1
        if not batch.stale:
            self._hold(batch, rec, len(rec.data))

    def _on_pass(self, frame: s.Frame) -> None:
        batch = self._in_batch(frame)
        obj_id, rec_type, key, ctid, dtid, dts = s.decode_pass(frame)
        if not (0 < ctid < batch.beg <= dtid <= batch.end):
            raise s.StreamError("mirror stream is corrupt: PASS TIDs outside its batch")
        _check_version(obj_id, rec_type, ctid, dtid, dts)
        self._ordered(batch, (obj_id, rec_type, key, ctid))
        if not batch.stale:
            self._hold(batch, ((self.pfs, obj_id, rec_type, key), ctid, dtid, dts), 0)

    def _hold(self, batch: _Batch, op, size: int) -> None:
        batch.pending.append(op)
        batch.pending_bytes += size + _PENDING_OVERHEAD
        if batch.pending_bytes > APPLY_BUFFER:
            self._apply(batch)

    def _apply(self, batch: _Batch) -> None:
        """Write the held-back, validated records of the batch into the store."""
        if batch.rollback_to is not None:
            self._rollback_to_common(batch.rollback_to)
            batch.rollback_to = None
        batch.applied = True
        for op in batch.pending:
            if isinstance(op, Record):
                self.store.insert_raw(op)
            else:
                # A version the slave pruned meanwhile is simply gone: nothing to end.
                self.store.set_delete_tid(*op)
            self.result.records += 1
        batch.pending.clear()
        batch.pending_bytes = 0

    def _on_sync(self, frame: s.Frame) -> None:
        batch = self._in_batch(frame)
        end, end_ts, count = s.decode_sync(frame)
        if end != batch.end or count != batch.count:
            raise s.StreamError(f"mirror stream is corrupt: SYNC for 0x{end:x} with {count} "
                                f"records closes batch 0x{batch.end:x} of {batch.count}")
        if batch.stale:
            self.result.stale += 1
        else:
            self._apply(batch)
            desc = require_pfs(self.store, self.pfs)
            self.store.put_pfs(self.pfs, desc.evolve(
                sync_end_tid=end, sync_end_ts=end_ts,
                mirror_flags=desc.mirror_flags & ~PFS_DOWNGRADED))
            self.store.commit()
            self.result.batches += 1
            self.result.sync_end_tid = end
            self.stats["synced"] = end
        self.batch = None
        if self.tx is not None:
            self.tx.send(s.UPDATE, s.tid_payload(end), flush=True)

    def _on_between(self, frame: s.Frame) -> None:
        """IDLE and ESTIMATE: only between batches, and well-formed."""
        if self.batch is not None:
            raise s.StreamError(f"mirror stream is out of order: {frame.name} inside a batch")
        if frame.type == s.IDLE:
            self._master_at(s.decode_tid(frame))
        else:
            self._master_at(s.decode_estimate(frame)[3])

    _handlers = {s.BATCH: _on_batch, s.REC: _on_rec, s.PASS: _on_pass, s.SYNC: _on_sync,
                 s.IDLE: _on_between, s.ESTIMATE: _on_between}

    def _abort_batch(self) -> None:
        """Leave the slave exactly at its last complete batch (nothing written at all when
        nothing of the batch had been applied)."""
        batch, self.batch = self.batch, None
        if batch is None or batch.stale or not batch.applied:
            return
        desc = self.store.get_pfs(self.pfs)
        if desc is not None and desc.is_slave:
            rollback(self.store, self.pfs, desc.sync_end_tid)
            self.store.commit()


def _check_version(obj_id: int, rec_type: int, create_tid: int, delete_tid: int,
                   delete_ts: int) -> None:
    """The format's ranges for one mirrored version (the TIDs are already inside the batch,
    itself below MAX_TID)."""
    if not 0 < rec_type <= MAX_REC_TYPE or rec_type in (REC_PFS, REC_CONFIG):
        raise s.StreamError(f"mirror stream is corrupt: record type {rec_type:#x} is not "
                            f"one that is mirrored")
    try:
        check_raw_version(obj_id, create_tid, delete_tid, delete_ts)
    except HammerError as exc:
        raise s.StreamError(f"mirror stream is corrupt: {exc}") from None
