"""The mirror protocol at the store level, against MemoryStore (the reference model)."""

from __future__ import annotations

import contextlib
import io
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mirror_helpers import assert_replica, history, visible

from hammerfs.errors import HammerError
from hammerfs.mirror import pfs_ops
from hammerfs.mirror import stream as s
from hammerfs.mirror.local import copy_local, read_stream, write_stream
from hammerfs.mirror.reader import SourceOptions
from hammerfs.mirror.writer import ReplayError
from hammerfs.store.memory import MemoryStore
from hammerfs.store.records import REC_CONFIG, ROOT_OBJ

RT = 0x20  # a record type of the layers above


def pair(master_pfs: int = 1):
    master, slave = MemoryStore("m"), MemoryStore("s")
    if master_pfs:
        pfs_ops.create_master(master, master_pfs)
    shared = master.get_pfs(master_pfs).shared_uuid
    pfs_ops.create_slave(slave, 1, shared)
    return master, slave


def put(store, pfs, obj, key, data=b"x"):
    store.put((pfs, obj, RT, key), data)


def one_way(master, mpfs, begin=1, chunk=64 << 20) -> bytes:
    buf = io.BytesIO()
    read_stream(master, mpfs, buf, begin_tid=begin, chunk_bytes=chunk)
    return buf.getvalue()


def test_bulk_then_incremental_copy_is_exact():
    master, slave = pair()
    for i in range(50):
        put(master, 1, 100 + i, 0, b"v1-%d" % i)
    master.commit()
    copy_local(master, 1, slave, 1)
    assert_replica(master, 1, slave, 1)
    # updates, deletions, a new file: all travel in the next increment
    put(master, 1, 100, 0, b"v2")
    master.delete((1, 101, RT, 0))
    put(master, 1, 500, 7, b"new")
    master.commit()
    res = copy_local(master, 1, slave, 1)
    assert res.records == 4  # new v2 of obj 100, PASS ending v1 of 100, PASS for 101, obj 500
    end = assert_replica(master, 1, slave, 1)
    assert end == master.last_committed_tid


def test_a_batch_is_a_snapshot_at_its_end_tid():
    """Versions changed after a batch's end travel later: a delete after ``end`` is sent as
    live, a version created after ``end`` is not sent."""
    from hammerfs.mirror.reader import Chunk, Source

    master, _ = pair()
    put(master, 1, 100, 0, b"a")
    first = master.commit()
    master.delete((1, 100, RT, 0))
    put(master, 1, 101, 0, b"later")
    master.commit()
    buf = io.BytesIO()
    Source(master, 1, None, buf, SourceOptions())._send_batch(Chunk(1, first, None))
    recs = []
    reader = s.FrameReader(io.BytesIO(buf.getvalue()))
    frame = reader.recv()
    while frame.type != s.SYNC:
        if frame.type == s.REC:
            recs.append(s.decode_rec(frame, 1))
        frame = reader.recv()
    obj100 = [r for r in recs if r.obj_id == 100]
    assert len(obj100) == 1 and obj100[0].delete_tid == 0
    assert not [r for r in recs if r.obj_id == 101]


def test_source_commits_a_master_first():
    """A master's open transaction (a mount commits about once a second) is part of the copy."""
    master, slave = pair()
    put(master, 1, 100, 0, b"a")
    master.commit()
    master.delete((1, 100, RT, 0))  # not committed yet
    copy_local(master, 1, slave, 1)
    assert_replica(master, 1, slave, 1)
    assert 100 not in {r[0] for r in visible(slave, 1, slave.get_pfs(1).sync_end_tid)}


def test_root_pfs_source_skips_pfs_descriptors_and_config():
    master, slave = pair(master_pfs=0)
    put(master, 0, ROOT_OBJ, 0, b"root")
    master.put((0, ROOT_OBJ, REC_CONFIG, 0), b"snapshots 1d 60d")
    pfs_ops.create_master(master, 5)  # a REC_PFS record on pfs 0
    master.commit()
    copy_local(master, 0, slave, 1)
    got = visible(slave, 1, slave.get_pfs(1).sync_end_tid)
    assert got == {(ROOT_OBJ, RT, 0, master.get((0, ROOT_OBJ, RT, 0)).create_tid, b"root")}
    assert slave.get_pfs(1).is_slave and slave.get_pfs(5) is None


def test_slave_refuses_mismatch_master_target_and_root_pfs():
    master, slave = pair()
    put(master, 1, 100, 0)
    master.commit()
    pfs_ops.create_slave(slave, 2, "11111111-2222-3333-4444-555555555555")
    with pytest.raises(HammerError, match="shared-uuid mismatch"):
        copy_local(master, 1, slave, 2)
    pfs_ops.create_master(slave, 3)
    master_before = history(slave, 3, 1 << 63)
    with pytest.raises(HammerError, match="is a master"):
        write_stream(slave, 3, io.BytesIO(one_way(master, 1)))
    with pytest.raises(HammerError, match="PFS #0"):
        write_stream(slave, 0, io.BytesIO(one_way(master, 1)))
    assert history(slave, 2, 1 << 63) == set() and history(slave, 3, 1 << 63) == master_before


def test_one_way_replay_is_refused_and_changes_nothing():
    master, slave = pair()
    put(master, 1, 100, 0)
    master.commit()
    raw = one_way(master, 1)
    write_stream(slave, 1, io.BytesIO(raw))
    before = history(slave, 1, 1 << 63), slave.get_pfs(1)
    with pytest.raises(ReplayError, match="already applied"):
        write_stream(slave, 1, io.BytesIO(raw))
    assert (history(slave, 1, 1 << 63), slave.get_pfs(1)) == before


def test_gap_is_refused():
    master, slave = pair()
    put(master, 1, 100, 0)
    master.commit()
    put(master, 1, 101, 0)
    master.commit()
    raw = one_way(master, 1, begin=master.last_committed_tid)
    with pytest.raises(HammerError, match="would be missing"):
        write_stream(slave, 1, io.BytesIO(raw))
    assert slave.get_pfs(1).sync_end_tid == 1


def test_increment_across_pruned_history_is_refused():
    from hammerfs.fs.history import prune_everything

    master, slave = pair()
    put(master, 1, 100, 0)
    put(master, 1, 101, 0)
    master.commit()
    copy_local(master, 1, slave, 1)
    master.delete((1, 101, RT, 0))
    master.commit()
    prune_everything(master, 1)  # the ended version of 101 is gone with the history
    before = history(slave, 1, 1 << 63), slave.get_pfs(1)
    with pytest.raises(HammerError, match="pruned"):
        copy_local(master, 1, slave, 1)
    with pytest.raises(HammerError, match="pruned"):
        one_way(master, 1, begin=slave.get_pfs(1).sync_end_tid + 1)
    assert (history(slave, 1, 1 << 63), slave.get_pfs(1)) == before
    # a fresh slave gets the live state, without the deleted record
    fresh = MemoryStore("f")
    pfs_ops.create_slave(fresh, 1, master.get_pfs(1).shared_uuid)
    copy_local(master, 1, fresh, 1)
    end = fresh.get_pfs(1).sync_end_tid
    assert visible(fresh, 1, end) == visible(master, 1, end)
    assert fresh.get((1, 101, RT, 0)) is None


def frames(raw: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each frame of a stream."""
    out, off = [], 0
    while off < len(raw):
        length = int.from_bytes(raw[off + 12:off + 16], "little")
        out.append((off, s.HEADER_SIZE + length))
        off += s.HEADER_SIZE + length
    return out


def _stream_with_two_batches():
    master, slave = pair()
    for i in range(6):
        put(master, 1, 100 + i, 0, b"%d" % i * 100)
        master.commit()
    raw = one_way(master, 1, chunk=200)  # several batches
    return master, slave, raw


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupt_or_truncated_stream_leaves_slave_at_last_complete_batch(data):
    master, slave, raw = _stream_with_two_batches()
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
        bad = raw[:cut]
    else:
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        bad = bytearray(raw)
        bad[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        bad = bytes(bad)
    with pytest.raises(HammerError):
        write_stream(slave, 1, io.BytesIO(bad))
    end = slave.get_pfs(1).sync_end_tid
    # the slave is exactly at a sync point of the stream: nothing newer exists at all
    assert history(slave, 1, 1 << 63) == history(master, 1, end)
    # and the rest of the stream (a two-way resume) completes it
    copy_local(master, 1, slave, 1)
    assert assert_replica(master, 1, slave, 1) == master.last_committed_tid


def test_reordered_frames_are_refused():
    master, slave, raw = _stream_with_two_batches()
    spans = frames(raw)
    (a, la), (b, lb) = spans[3], spans[4]
    swapped = raw[:a] + raw[b:b + lb] + raw[a:a + la] + raw[b + lb:]
    with pytest.raises(s.StreamError, match="out of order"):
        write_stream(slave, 1, io.BytesIO(swapped))
    assert history(slave, 1, 1 << 63) == set()


def test_records_out_of_key_order_are_refused_even_with_valid_frames():
    master, slave = pair()
    put(master, 1, 100, 0)
    put(master, 1, 101, 0)
    master.commit()
    raw = one_way(master, 1)
    parsed = []
    reader = s.FrameReader(io.BytesIO(raw))
    for _ in frames(raw):
        parsed.append(reader.recv())
    recs = [i for i, f in enumerate(parsed) if f.type == s.REC]
    parsed[recs[0]], parsed[recs[1]] = parsed[recs[1]], parsed[recs[0]]
    rebuilt = b"".join(s.encode_frame(f.type, f.payload, i, f.flags)
                       for i, f in enumerate(parsed))
    with pytest.raises(s.StreamError, match="key order"):
        write_stream(slave, 1, io.BytesIO(rebuilt))
    assert history(slave, 1, 1 << 63) == set()


def test_chunked_bulk_copy_resumes_from_last_sync_point():
    master, slave, raw = _stream_with_two_batches()
    spans = frames(raw)
    syncs = [off + ln for off, ln in spans
             if int.from_bytes(raw[off + 4:off + 6], "little") == s.SYNC]
    assert len(syncs) >= 3, "the bulk copy was cut into chunks"
    with pytest.raises(HammerError, match="truncated"):
        write_stream(slave, 1, io.BytesIO(raw[:syncs[1] + 30]))
    mid = slave.get_pfs(1).sync_end_tid
    assert 1 < mid < master.last_committed_tid
    assert visible(slave, 1, mid) == visible(master, 1, mid)
    res = copy_local(master, 1, slave, 1, SourceOptions(chunk_bytes=200))
    assert res.batches >= 1
    assert assert_replica(master, 1, slave, 1) == master.last_committed_tid


def test_failover_and_reverse_mirror_from_last_common_tid():
    a, b = pair()
    for i in range(5):
        put(a, 1, 100 + i, 0, b"a%d" % i)
    a.commit()
    copy_local(a, 1, b, 1)
    common = b.get_pfs(1).sync_end_tid
    # the master changes more, then dies before mirroring it
    put(a, 1, 100, 0, b"lost")
    put(a, 1, 900, 0, b"lost-new")
    a.commit()
    # the slave takes over: upgrade, then new writes
    pfs_ops.upgrade(b, 1)
    put(b, 1, 101, 0, b"b-write")
    b.delete((1, 102, RT, 0))
    b.commit()
    # the old master comes back as a slave and is fed from the new master
    pfs_ops.downgrade(a, 1)
    res = copy_local(b, 1, a, 1)
    assert res.batches >= 1
    end = assert_replica(b, 1, a, 1)
    assert end == b.last_committed_tid
    objs = {r[0]: r[4] for r in visible(a, 1, end)}
    assert objs[100] == b"a0" and 900 not in objs and objs[101] == b"b-write" and 102 not in objs
    assert common < end
    # and from now on increments are ordinary
    put(b, 1, 103, 0, b"more")
    b.commit()
    assert copy_local(b, 1, a, 1).records == 2
    assert_replica(b, 1, a, 1)


def test_upgrade_drops_half_applied_batch():
    master, slave = pair()
    put(master, 1, 100, 0)
    master.commit()
    copy_local(master, 1, slave, 1)
    sync = slave.get_pfs(1).sync_end_tid
    # records above sync_end_tid (as a crash in the middle of a batch would leave them)
    slave.insert_raw(master.get((1, 100, RT, 0)).__class__(1, 200, RT, 0, sync + 10, 0, 0, 0,
                                                           b"half"))
    slave.commit()
    pfs_ops.upgrade(slave, 1)
    assert history(slave, 1, 1 << 63) == history(master, 1, sync)
    assert not slave.get_pfs(1).is_slave


def test_destroy_removes_records_and_marks_deleted():
    master, _ = pair()
    put(master, 1, 100, 0)
    master.commit()
    assert pfs_ops.destroy(master, 1) == 2  # the root inode and obj 100
    assert master.get_pfs(1).is_deleted
    with pytest.raises(HammerError, match="does not exist"):
        pfs_ops.status(master, 1)
    pfs_ops.create_master(master, 1)  # the id can be reused
    with pytest.raises(HammerError):
        pfs_ops.destroy(master, 0)


def test_update_and_status_fields():
    master, slave = pair()
    pfs_ops.update(slave, 1, pfs_ops.parse_options(["label=backup", "prune-min=1d"]))
    lines = pfs_ops.format_status(pfs_ops.status(slave, 1))
    assert 'label="backup"' in lines and "prune-min=1/00:00:00" in lines
    assert "operating as a SLAVE" in lines
    assert any(x.startswith("sync-end-tid=0x") for x in lines)
    put(master, 1, 100, 0)
    master.commit()
    copy_local(master, 1, slave, 1)
    # an idle master an hour later: the slave is not "behind", its newest commit is old
    ts = slave.get_pfs(1).sync_end_ts
    lines = pfs_ops.format_status(pfs_ops.status(slave, 1), now_ns=ts + 3600 * 10**9)
    assert not any("behind=" in x.split()[0] for x in lines), lines
    assert any(x.startswith("newest-commit-age=3600.0s ") for x in lines), lines
    with pytest.raises(HammerError, match="unknown PFS option"):
        pfs_ops.parse_options(["colour=blue"])


# -- the model check: random histories, random mirror points -----------------------------------

ops = st.lists(st.tuples(st.sampled_from(["put", "put", "del", "commit", "mirror", "oneway"]),
                         st.integers(100, 108), st.integers(0, 2)), max_size=60)


@settings(max_examples=80, deadline=None)
@given(steps=ops, chunk=st.sampled_from([200, 1 << 20]))
def test_random_histories_replicate_exactly_at_every_sync_tid(steps, chunk):
    master, slave = pair()
    seen_syncs = []
    for n, (op, obj, key) in enumerate(steps):
        if op == "put":
            put(master, 1, obj, key, b"%d" % n * (n % 7))
        elif op == "del":
            master.delete((1, obj, RT, key))
        elif op == "commit":
            master.commit()
        elif op == "mirror":
            copy_local(master, 1, slave, 1, SourceOptions(chunk_bytes=chunk))
            seen_syncs.append(slave.get_pfs(1).sync_end_tid)
        else:
            begin = slave.get_pfs(1).sync_end_tid + 1 - random.Random(n).randint(0, 1)
            with contextlib.suppress(ReplayError):
                write_stream(slave, 1, io.BytesIO(one_way(master, 1, max(1, begin), chunk)))
            seen_syncs.append(slave.get_pfs(1).sync_end_tid)
    master.commit()
    copy_local(master, 1, slave, 1, SourceOptions(chunk_bytes=chunk))
    seen_syncs.append(slave.get_pfs(1).sync_end_tid)
    for tid in seen_syncs:
        assert visible(slave, 1, tid) == visible(master, 1, tid)
    assert_replica(master, 1, slave, 1)


def test_relay_progress_and_bandwidth_cap():
    """The relay counts what passes, shows progress with an ETA, and -b caps the rate."""
    import socket

    from hammerfs.mirror.transport import Meter, Progress, Throttle, pump_frames

    master, _ = pair()
    for i in range(20):
        put(master, 1, 100 + i, 0, bytes(5000))
    master.commit()
    raw = one_way(master, 1)
    a, b = socket.socketpair()
    a.sendall(raw)
    a.close()
    meter, out = Meter(), io.StringIO()
    out.isatty = lambda: True
    progress = Progress(meter, 0, out)
    sink = io.BytesIO()
    t0 = time.monotonic()
    pump_frames(b.makefile("rb"), sink, meter, progress, Throttle(len(raw) // 2))
    elapsed = time.monotonic() - t0
    assert sink.getvalue() == raw
    assert meter.records == 21 and meter.batches == 1 and meter.bytes == len(raw)
    assert meter.synced_tid == master.last_committed_tid
    assert 0.9 < elapsed < 5, "half the stream per second: about one second of waiting"
    assert "records" in progress.status() and "ETA" in progress.status()


def test_first_eta_waits_for_a_rate_worth_the_name(monkeypatch):
    """Right after the ESTIMATE a few header bytes over the set-up time would promise months
    (issue 12: `864469:30`): the ETA reads --:-- until data has flowed for a second, then
    comes from the rate since the ESTIMATE."""
    from hammerfs.mirror import transport
    from hammerfs.mirror.transport import Meter, Progress, _account

    clock = [1000.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: clock[0])
    meter = Meter(start=clock[0])
    _account(meter, s.HELLO, b"", 60, "source")
    clock[0] += 0.7  # the session's set-up: unlocking, opening, planning
    frame = s.estimate_payload(5 << 30, 1000, 1, 2)
    _account(meter, s.ESTIMATE, frame, 60, "source")
    progress = Progress(meter, 0, io.StringIO())
    assert progress.status().endswith("ETA --:--")
    clock[0] += 0.5
    meter.bytes += 1 << 20
    assert progress.status().endswith("ETA --:--")
    clock[0] += 1.5  # 2 s after the estimate, 10 MiB/s: 5100 MiB in 510 s
    meter.bytes += 19 << 20
    assert progress.status().endswith("ETA 8:30"), progress.status()
    meter.bytes = 20 << 20  # hours: h:mm:ss
    meter.estimate_bytes = (20 << 20) + (10 << 20) * 3700
    meter.estimate_base = 0
    assert progress.status().endswith("ETA 1:01:40"), progress.status()


def test_master_status_reports_slave_lag():
    from hammerfs.mirror.control_ops import slave_lines

    master, slave = pair()
    put(master, 1, 100, 0)
    master.commit()
    copy_local(master, 1, slave, 1)
    synced = slave.get_pfs(1).sync_end_tid
    slaves = {(1, "u1"): {"synced": synced, "at": 100.0}}
    assert slave_lines(master, 1, slaves, now=103.0) == [
        f"slave unique-uuid=u1 synced-to=0x{synced:016x} behind=0.0s last-ack=3s ago"]
    master.put_pfs(2, master.get_pfs(1))  # a commit elsewhere is nothing this slave misses
    master.commit()
    assert "behind=0.0s" in slave_lines(master, 1, slaves)[0]
    time.sleep(0.2)
    put(master, 1, 101, 0)
    master.commit()
    behind = float(slave_lines(master, 1, slaves)[0].split("behind=")[1].split("s")[0])
    assert behind > 0
    assert slave_lines(master, 2, slaves) == []
