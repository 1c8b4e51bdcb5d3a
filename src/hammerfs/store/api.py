"""The record-store contract.  Both ``hammerfs.store.Store`` (on disk) and
``hammerfs.store.memory.MemoryStore`` (the in-memory reference model used as a test oracle)
implement it; every layer above codes against this and nothing else of the store.

Transactions.  The store always has one open transaction whose TID is ``current_tid``.
Every change made now gets ``create_tid == current_tid`` (or ``delete_tid == current_tid``).
Changes inside one transaction overwrite each other with no history between them (as HAMMER's
history resolution is one flush).  ``commit()`` makes the transaction durable and opens the
next one with a strictly larger TID.  TIDs are 64-bit, strictly increasing, persistent across
remounts and crashes; they are derived from the wall clock in ns where possible
(``max(last + 1, time_ns())``).

History granularity.  put, put_slice, delete and delete_range take ``history_ns``
(records.HISTORY_ALL = 0, the default: the version a change ends is kept as history).  With
N > 0 an ended version that was created in the same aligned N-ns wall-clock interval as the
change (``create_ts // N == now // N``) is destroyed instead, and the version before it (if
it ended where the dropped one began) lives on until now; with HISTORY_NONE every ended
version is.  Never a version whose create_tid is at or below the *history floor*: the last
TID committed before the store was opened, the highest snapshot TID put (REC_SNAPSHOT
keys), and the last committed TID whenever ``changed_since`` ran (a mirror may hold what it
returned: a slave must learn of every end of a version it holds).  So snapshots, mirroring
and undo keep their meaning; only TIDs inside an interval stop being exact views.

Reads.  ``asof=None`` means "now", including the uncommitted transaction.  ``asof=T`` shows
the state as of the end of transaction T.

Thread safety: every method may be called from any thread (one internal lock).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from hammerfs.steps import NO_LOCK
from hammerfs.store.pfs import PfsData
from hammerfs.store.records import RecKey, Record


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    total_bytes: int
    used_bytes: int
    free_bytes: int
    block_size: int
    bigblock_size: int
    bigblocks_total: int
    bigblocks_free: int  # completely empty big-blocks
    avail_bytes: int  # what ordinary writes can still fill (statfs f_bavail, info "Available")


class RecordStore(Protocol):
    label: str
    uuid: str  # volume uuid, canonical text form
    readonly: bool

    # -- transactions ---------------------------------------------------------------------
    @property
    def current_tid(self) -> int: ...

    @property
    def last_committed_tid(self) -> int: ...

    def commit(self) -> int:
        """Make all changes durable.  Returns the TID whose state is now durable: the
        transaction just committed, or ``last_committed_tid`` when there was nothing to do."""

    @property
    def unwritten_bytes(self) -> int:
        """Data of the open transaction kept in memory, not yet written to the device."""

    def write_out(self, limit: int = ...) -> bool:
        """Write about ``limit`` bytes of that data out (its content does not change, so a
        mount does it without its own lock); True if some is left."""

    def commit_outside(self, lock: AbstractContextManager) -> int:
        """``commit()``, holding ``lock`` (the caller's, e.g. the mount's filesystem lock)
        only while the state to commit is captured: the wait for the device (flushes, the
        header) runs without it."""

    def wait_commit(self, after_tid: int, timeout: float | None = None) -> int:
        """Block until ``last_committed_tid > after_tid`` (or timeout); return it."""

    def tid_time(self, tid: int) -> int:
        """Wall-clock ns of the commit that closed ``tid`` (or the nearest earlier one)."""

    def thin_commit_log(self, now_ns: int | None = None, *,
                        lock: AbstractContextManager = NO_LOCK) -> int:
        """Drop old commit-log entries by the policy of ``store.commitlog`` (exact for a day,
        one a minute for 30 days, one an hour after that), so ``tid_time`` becomes at most
        that much earlier for old TIDs, never later, never 0.  The entries are destroyed
        (their space comes back) and committed, in batches; never touches PFS records.
        ``lock`` (a mount's filesystem lock) is taken per batch, in steps (hammerfs.steps).
        Returns how many entries were dropped."""

    def alloc_obj_id(self) -> int:
        """A fresh object id, never handed out before on this volume (persisted)."""

    # -- reads ----------------------------------------------------------------------------
    def get(self, reckey: RecKey, asof: int | None = None) -> Record | None:
        """The version of ``reckey`` visible at ``asof``, or None."""

    def scan(
        self,
        lo: RecKey,
        hi: RecKey,
        asof: int | None = None,
        *,
        history: bool = False,
        with_data: bool = True,
    ) -> Iterator[Record]:
        """Records with ``lo <= reckey <= hi`` in key order.  Without ``history`` only the
        version visible at ``asof``; with it every version (create_tid order within a key).
        ``with_data=False`` leaves ``data`` as None (no data blocks are read)."""

    def extent_lengths(self, lo: RecKey, hi: RecKey) -> list[tuple[int, int, int]]:
        """(key, data length, create_tid) of each live record with ``lo <= reckey <= hi``,
        in key order, without reading any data (the file layer's map of a window)."""

    def changed_since(self, lo: RecKey, hi: RecKey, since_tid: int, *,
                      pin_history: bool = True, with_data: bool = True) -> Iterator[Record]:
        """Every version in range with ``create_tid >= since_tid`` or
        ``delete_tid >= since_tid``, in key order, skipping whole subtrees whose aggregated
        max TID is older (cost proportional to the change, for mirroring).  A mirror may now
        hold every committed version, so none of them is dropped later by a history
        interval; ``pin_history=False`` (a cache invalidation scan, not a mirror) leaves
        that rule alone.  ``with_data=False``: a record's data is what costs no read (inline
        data, as of a directory entry), None for data kept in an extent."""

    # -- changes in the current transaction -------------------------------------------------
    def put(self, reckey: RecKey, data: bytes, history_ns: int = 0) -> Record:
        """Create or replace the live version of ``reckey``."""

    def put_slice(self, reckey: RecKey, src: RecKey, start: int, length: int,
                  history_ns: int = 0) -> Record:
        """Create or replace the live version of ``reckey`` with bytes ``[start, start +
        length)`` of the live version of ``src`` (``start`` a multiple of 4096; both keys of
        one (pfs, obj_id, rec_type) and in one 64 KiB key window).  The on-disk store shares
        the blocks instead of copying them."""

    def room_for(self, length: int) -> int:
        """NoSpace unless a record of ``length`` bytes can be put now; ``length`` if its
        data fits in one contiguous extent, else 4096 (store it in pieces of that size)."""

    def delete(self, reckey: RecKey, history_ns: int = 0) -> bool:
        """End the live version of ``reckey``.  False if there was none."""

    def delete_range(self, lo: RecKey, hi: RecKey, history_ns: int = 0) -> int:
        """End every live record in range; returns how many."""

    # -- raw changes (mirroring, pruning, PFS rollback) ------------------------------------------
    def insert_raw(self, record: Record) -> bool:
        """Insert exactly this version (TIDs as given).  If the same full key exists, only a
        delete_tid going from 0 to a value is applied; returns True if anything changed."""

    def set_delete_tid(self, reckey: RecKey, create_tid: int, delete_tid: int, delete_ts: int) -> bool:
        """Set (or with 0, clear) the delete_tid of one version.  False if no such version."""

    def destroy(self, reckey: RecKey, create_tid: int) -> bool:
        """Physically remove one version (its space is freed after the next durable commit)."""

    # -- PFS table (records REC_PFS on pfs 0) ----------------------------------------------------
    def get_pfs(self, pfs_id: int, asof: int | None = None) -> PfsData | None: ...

    def put_pfs(self, pfs_id: int, data: PfsData) -> None: ...

    def list_pfs(self) -> list[tuple[int, PfsData]]: ...

    # -- space and lifecycle -----------------------------------------------------------------
    def space(self) -> SpaceInfo: ...

    def close(self) -> None:
        """Commit (if writable and dirty) and release the device."""
