"""The target side of mirroring (HAMMER's mirror-write).

Records are inserted with the master's TIDs as they arrive, but a slave shows its data as of
its ``sync_end_tid``, so nothing of a batch is visible until its SYNC frame moves that TID and
the store commits.  On any failure the batch in progress is rolled back to the last sync
point, so the slave stays exactly at its last complete batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import BinaryIO

from hammerfs.errors import HammerError
from hammerfs.mirror import stream as s
from hammerfs.mirror.pfs_ops import PFS_DOWNGRADED, require_pfs, rollback
from hammerfs.store.api import RecordStore
from hammerfs.store.pfs import PfsData


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
    count: int = 0
    last_key: tuple[int, ...] = ()


class Target:
    """Runs one target session: ``inp`` carries the source's frames; ``out`` (two-way mode)
    carries our HELLO/PFSD and UPDATE acknowledgements back."""

    def __init__(self, store: RecordStore, pfs: int, inp: BinaryIO, out: BinaryIO | None):
        self.store = store
        self.pfs = pfs
        self.rx = s.FrameReader(inp)
        self.tx = s.FrameWriter(out) if out is not None else None
        self.result = WriteResult()
        self.batch: _Batch | None = None

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
        return frame

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

    def _on_idle(self, frame: s.Frame) -> None:
        if self.batch is not None:
            raise s.StreamError(f"mirror stream is out of order: {frame.name} inside a batch")

    def _on_batch(self, frame: s.Frame) -> None:
        beg, end, _flags = s.decode_batch(frame)
        if self.batch is not None:
            raise s.StreamError("mirror stream is out of order: BATCH inside a batch")
        if not 0 < beg <= end:
            raise s.StreamError(f"mirror stream is corrupt: batch 0x{beg:x}..0x{end:x}")
        desc = require_pfs(self.store, self.pfs)
        have = desc.sync_end_tid
        if beg > have + 1:
            raise HammerError(f"mirror stream starts at TID 0x{beg:016x} but this slave is "
                              f"at 0x{have:016x}: the changes in between would be missing "
                              f"(mirror-read from begin-tid 0x{have + 1:016x} or lower)")
        if desc.mirror_flags & PFS_DOWNGRADED and beg - 1 < have:
            self._rollback_to_common(desc, beg - 1)
            have = beg - 1
        self.batch = _Batch(beg, end, stale=end <= have)

    def _rollback_to_common(self, desc: PfsData, common: int) -> None:
        """An ex-master being re-synced: drop what it did after the last shared TID."""
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
        self._ordered(batch, rec.fullkey[1:])
        if not batch.stale:
            self.store.insert_raw(rec)
            self.result.records += 1

    def _on_pass(self, frame: s.Frame) -> None:
        batch = self._in_batch(frame)
        obj_id, rec_type, key, ctid, dtid, dts = s.decode_pass(frame)
        if not (ctid < batch.beg <= dtid <= batch.end):
            raise s.StreamError("mirror stream is corrupt: PASS TIDs outside its batch")
        self._ordered(batch, (obj_id, rec_type, key, ctid))
        if not batch.stale:
            # A version the slave pruned meanwhile is simply gone: nothing to end.
            self.store.set_delete_tid((self.pfs, obj_id, rec_type, key), ctid, dtid, dts)
            self.result.records += 1

    def _on_sync(self, frame: s.Frame) -> None:
        batch = self._in_batch(frame)
        end, end_ts, count = s.decode_sync(frame)
        if end != batch.end or count != batch.count:
            raise s.StreamError(f"mirror stream is corrupt: SYNC for 0x{end:x} with {count} "
                                f"records closes batch 0x{batch.end:x} of {batch.count}")
        if batch.stale:
            self.result.stale += 1
        else:
            desc = require_pfs(self.store, self.pfs)
            self.store.put_pfs(self.pfs, desc.evolve(
                sync_end_tid=end, sync_end_ts=end_ts,
                mirror_flags=desc.mirror_flags & ~PFS_DOWNGRADED))
            self.store.commit()
            self.result.batches += 1
            self.result.sync_end_tid = end
        self.batch = None
        if self.tx is not None:
            self.tx.send(s.UPDATE, s.tid_payload(end), flush=True)

    _handlers = {s.BATCH: _on_batch, s.REC: _on_rec, s.PASS: _on_pass, s.SYNC: _on_sync,
                 s.IDLE: _on_idle, s.ESTIMATE: _on_idle}

    def _abort_batch(self) -> None:
        """Leave the slave exactly at its last complete batch."""
        if self.batch is None or self.batch.stale:
            self.batch = None
            return
        self.batch = None
        desc = self.store.get_pfs(self.pfs)
        if desc is not None and desc.is_slave:
            rollback(self.store, self.pfs, desc.sync_end_tid)
            self.store.commit()
