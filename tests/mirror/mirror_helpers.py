"""Shared helpers of the mirror tests: tree comparison at the record level."""

from __future__ import annotations

from hammerfs.mirror.pfs_ops import is_mirrored, pfs_range
from hammerfs.store.api import RecordStore


def visible(store: RecordStore, pfs: int, tid: int) -> set[tuple]:
    """The PFS's mirrored records visible as of ``tid`` (pfs id left out)."""
    return {(r.obj_id, r.rec_type, r.key, r.create_tid, r.data)
            for r in store.scan(*pfs_range(pfs), asof=tid) if is_mirrored(r)}


def history(store: RecordStore, pfs: int, upto: int) -> set[tuple]:
    """Every version created by ``upto``, its delete_tid as seen at ``upto``."""
    out = set()
    for r in store.scan(*pfs_range(pfs), history=True):
        if is_mirrored(r) and r.create_tid <= upto:
            dtid = r.delete_tid if 0 < r.delete_tid <= upto else 0
            out.add((r.obj_id, r.rec_type, r.key, r.create_tid, dtid, r.data))
    return out


def assert_replica(master: RecordStore, mpfs: int, slave: RecordStore, spfs: int) -> int:
    """The slave equals the master as of the slave's sync_end_tid, history included."""
    end = slave.get_pfs(spfs).sync_end_tid
    assert history(slave, spfs, end) == history(master, mpfs, end)
    assert visible(slave, spfs, end) == visible(master, mpfs, end)
    return end
