"""MemoryStore: the in-memory reference implementation of the RecordStore contract.

It is deliberately simple (a dict plus a sorted key list) so that it can serve as the oracle
in property tests of the on-disk ``Store`` and as a fast backend for tests of the layers
above.  It has no durability: ``commit`` only advances the TID.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

from hammerfs.errors import HammerError, NoSpace, ReadOnly
from hammerfs.steps import NO_LOCK
from hammerfs.store.api import SpaceInfo
from hammerfs.store.commitlog import doomed_entries
from hammerfs.store.format import SHARE_WINDOW
from hammerfs.store.pfs import PfsData, PfsTable
from hammerfs.store.records import (
    HISTORY_ALL,
    REC_SNAPSHOT,
    ROOT_OBJ,
    RecKey,
    Record,
    check_delete_tid,
    check_raw_version,
    check_slice,
)

FullKey = tuple[int, int, int, int, int]


class MemoryStore(PfsTable):
    def __init__(self, label: str = "", uuid: str = "00000000-0000-0000-0000-000000000000",
                 total_bytes: int = 1 << 30, readonly: bool = False):
        self.label = label
        self.uuid = uuid
        self.readonly = readonly
        self._total = total_bytes
        self._records: dict[FullKey, Record] = {}
        self._keys: list[FullKey] = []
        self._lock = threading.RLock()
        self._committed = threading.Condition(self._lock)
        self._last_committed = 0
        self._max_tid_seen = 0
        self._current = self._next_tid(0)
        self._commit_times: list[tuple[int, int]] = []
        self._dirty = False
        self._next_obj = ROOT_OBJ + 1
        self._history_floor = 0  # see api.py "History granularity"
        if not readonly:
            self.put_pfs(0, PfsData(label=label))

    # -- transactions -------------------------------------------------------------------------
    @property
    def current_tid(self) -> int:
        return self._current

    @property
    def last_committed_tid(self) -> int:
        return self._last_committed

    def _next_tid(self, after: int) -> int:
        return max(after + 1, self._max_tid_seen + 1, time.time_ns())

    def commit(self) -> int:
        with self._lock:
            if not self._dirty:
                return self._last_committed
            done = self._current
            self._commit_times.append((done, time.time_ns()))
            self._last_committed = done
            self._current = self._next_tid(done)
            self._dirty = False
            self._committed.notify_all()
            return done

    unwritten_bytes = 0  # data is never kept back for the device

    def write_out(self, limit: int = 0) -> bool:
        return False

    def commit_outside(self, lock: AbstractContextManager) -> int:
        with lock:
            return self.commit()

    def wait_commit(self, after_tid: int, timeout: float | None = None) -> int:
        with self._lock:
            self._committed.wait_for(lambda: self._last_committed > after_tid, timeout)
            return self._last_committed

    def tid_time(self, tid: int) -> int:
        i = bisect.bisect_right(self._commit_times, (tid, 1 << 64)) - 1
        return self._commit_times[i][1] if i >= 0 else 0

    def thin_commit_log(self, now_ns: int | None = None, *,
                        lock: AbstractContextManager = NO_LOCK) -> int:
        with lock, self._lock:
            self._writable()
            now = time.time_ns() if now_ns is None else now_ns
            doomed = set(doomed_entries(self._commit_times, now))
            if not doomed:
                return 0
            self._commit_times = [e for e in self._commit_times if e[0] not in doomed]
            self._dirty = True
            self.commit()
            return len(doomed)

    def alloc_obj_id(self) -> int:
        with self._lock:
            self._writable()
            obj = self._next_obj
            self._next_obj += 1
            self._dirty = True
            return obj

    # -- reads --------------------------------------------------------------------------------
    def get(self, reckey: RecKey, asof: int | None = None) -> Record | None:
        with self._lock:
            tid = self._current if asof is None else asof
            i = bisect.bisect_right(self._keys, (*reckey, tid)) - 1
            if i < 0 or self._keys[i][:4] != reckey:
                return None
            rec = self._records[self._keys[i]]
            return rec if rec.visible_at(tid) else None

    def scan(self, lo: RecKey, hi: RecKey, asof: int | None = None, *, history: bool = False,
             with_data: bool = True) -> Iterator[Record]:
        with self._lock:
            tid = self._current if asof is None else asof
            start = bisect.bisect_left(self._keys, (*lo, 0))
            end = bisect.bisect_right(self._keys, (*hi, 1 << 64))
            found = [self._records[k] for k in self._keys[start:end]]
        for rec in found:
            if history or rec.visible_at(tid):
                yield rec if with_data else _without_data(rec)

    def extent_lengths(self, lo: RecKey, hi: RecKey) -> list[tuple[int, int, int]]:
        return [(r.key, len(r.data), r.create_tid) for r in self.scan(lo, hi)]

    def changed_since(self, lo: RecKey, hi: RecKey, since_tid: int, *,
                      pin_history: bool = True, with_data: bool = True) -> Iterator[Record]:
        with self._lock:  # a mirror may now hold every committed version
            if pin_history:
                self._history_floor = max(self._history_floor, self._last_committed)
        for rec in self.scan(lo, hi, history=True):
            if rec.create_tid >= since_tid or rec.delete_tid >= since_tid:
                yield rec

    # -- changes ------------------------------------------------------------------------------
    def put(self, reckey: RecKey, data: bytes, history_ns: int = HISTORY_ALL) -> Record:
        with self._lock:
            self._writable()
            now = time.time_ns()
            if reckey[2] == REC_SNAPSHOT:
                self._history_floor = max(self._history_floor, min(reckey[3], self._current))
            live = self.get(reckey)
            drop = live is not None and self._droppable(live, history_ns, now)
            if live is not None and not drop:
                self._end_or_drop(live, now)
            rec = Record(*reckey, self._current, 0, now, 0, bytes(data))
            self._store(rec)
            if drop:
                self._drop_version(live, now)
            return rec

    def put_slice(self, reckey: RecKey, src: RecKey, start: int, length: int,
                  history_ns: int = HISTORY_ALL) -> Record:
        if reckey[:3] != src[:3] or reckey[3] // SHARE_WINDOW != src[3] // SHARE_WINDOW:
            raise HammerError(f"put_slice: {reckey!r} and {src!r} are not in one key window")
        with self._lock:
            live = self.get(src)
            if live is None:
                raise HammerError(f"put_slice: no live version of {src!r}")
            check_slice(start, length, len(live.data))
            return self.put(reckey, live.data[start:start + length], history_ns)

    def room_for(self, length: int) -> int:
        if length > self.space().free_bytes:
            raise NoSpace("no space left on volume")
        return length

    def delete(self, reckey: RecKey, history_ns: int = HISTORY_ALL) -> bool:
        with self._lock:
            self._writable()
            live = self.get(reckey)
            if live is None:
                return False
            now = time.time_ns()
            if self._droppable(live, history_ns, now):
                self._drop_version(live, now)
            else:
                self._end_or_drop(live, now)
            return True

    def delete_range(self, lo: RecKey, hi: RecKey, history_ns: int = HISTORY_ALL) -> int:
        with self._lock:
            live = list(self.scan(lo, hi, with_data=False))
            for rec in live:
                self.delete(rec.reckey, history_ns)
            return len(live)

    def insert_raw(self, record: Record) -> bool:
        check_raw_version(record.obj_id, record.create_tid, record.delete_tid, record.delete_ts)
        with self._lock:
            self._writable()
            old = self._records.get(record.fullkey)
            if old is not None:
                if old.delete_tid == 0 and record.delete_tid != 0:
                    return self.set_delete_tid(record.reckey, record.create_tid,
                                               record.delete_tid, record.delete_ts)
                return False
            self._store(record)
            return True

    def set_delete_tid(self, reckey: RecKey, create_tid: int, delete_tid: int,
                       delete_ts: int) -> bool:
        check_delete_tid(create_tid, delete_tid)
        with self._lock:
            self._writable()
            old = self._records.get((*reckey, create_tid))
            if old is None:
                return False
            self._records[old.fullkey] = _with_delete(old, delete_tid, delete_ts)
            self._seen(delete_tid)
            self._dirty = True
            return True

    def destroy(self, reckey: RecKey, create_tid: int) -> bool:
        with self._lock:
            self._writable()
            fk = (*reckey, create_tid)
            if self._records.pop(fk, None) is None:
                return False
            self._keys.pop(bisect.bisect_left(self._keys, fk))
            self._dirty = True
            return True

    # -- space and lifecycle ----------------------------------------------------------------------
    def space(self) -> SpaceInfo:
        used = sum(64 + len(r.data or b"") for r in self._records.values())
        free = max(0, self._total - used)
        return SpaceInfo(self._total, used, free, 4096, 8 << 20, self._total >> 23, free >> 23,
                         free)

    def close(self) -> None:
        if not self.readonly:
            self.commit()

    # -- internals -------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnly("volume is open read-only")

    def _seen(self, tid: int) -> None:
        self._max_tid_seen = max(self._max_tid_seen, tid)

    def _store(self, rec: Record) -> None:
        fk = rec.fullkey
        if fk not in self._records:
            bisect.insort(self._keys, fk)
        self._records[fk] = rec
        self._next_obj = max(self._next_obj, rec.obj_id + 1)
        self._seen(max(rec.create_tid, rec.delete_tid))
        self._dirty = True

    def _droppable(self, live: Record, history_ns: int, now: int) -> bool:
        if not history_ns or live.create_tid == self._current or \
                live.create_tid <= self._history_floor:
            return False
        return history_ns < 0 or live.create_ts // history_ns == now // history_ns

    def _drop_version(self, live: Record, now: int) -> None:
        """Destroy an intermediate version; the one it replaced lives on until now."""
        self.destroy(live.reckey, live.create_tid)
        i = bisect.bisect_right(self._keys, (*live.reckey, live.create_tid - 1)) - 1
        if i >= 0 and self._keys[i][:4] == live.reckey:
            prev = self._records[self._keys[i]]
            if prev.delete_tid == live.create_tid:
                self._records[prev.fullkey] = _with_delete(prev, self._current, now)

    def _end_or_drop(self, live: Record, now: int) -> None:
        """End a live version; one created in this transaction never existed durably, so it
        is dropped instead (no history inside a transaction)."""
        if live.create_tid == self._current:
            self.destroy(live.reckey, live.create_tid)
        else:
            self._records[live.fullkey] = _with_delete(live, self._current, now)
            self._dirty = True


def _with_delete(rec: Record, delete_tid: int, delete_ts: int) -> Record:
    return Record(rec.pfs, rec.obj_id, rec.rec_type, rec.key, rec.create_tid, delete_tid,
                  rec.create_ts, delete_ts if delete_tid else 0, rec.data)


def _without_data(rec: Record) -> Record:
    return Record(rec.pfs, rec.obj_id, rec.rec_type, rec.key, rec.create_tid, rec.delete_tid,
                  rec.create_ts, rec.delete_ts, None)
