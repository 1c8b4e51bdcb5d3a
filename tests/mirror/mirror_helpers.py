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


def craft_stream(source_desc, batches, *, version_ok: bool = True) -> bytes:
    """A checksum-valid one-way stream, as a hostile or buggy source could send it.

    ``batches``: a list of (beg, end, items, sync) where items are ("rec", Record) or
    ("pass", Record) and sync is (end, end_ts, count) or None for the honest one."""
    from hammerfs.mirror import stream as s

    frames = [(s.HELLO, s.hello_payload(s.ROLE_SOURCE)),
              (s.PFSD, s.pfsd_payload(1, source_desc))]
    for beg, end, items, sync in batches:
        frames.append((s.BATCH, s.batch_payload(beg, end)))
        for kind, rec in items:
            if kind == "rec":
                frames.append((s.REC, s.rec_payload(rec, rec.delete_tid, rec.delete_ts)))
            else:
                frames.append((s.PASS, s.pass_payload(rec)))
        frames.append((s.SYNC, s.sync_payload(*(sync or (end, 0, len(items))))))
    frames.append((s.TERM, b""))
    return b"".join(s.encode_frame(t, p, i) for i, (t, p) in enumerate(frames))
