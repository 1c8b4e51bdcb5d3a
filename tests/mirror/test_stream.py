"""Streaming (mirror-stream's engine) on the on-disk Store: a committed change reaches the
slave within 2 s, without rescans; the protocol model check on real volumes."""

from __future__ import annotations

import socket
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from mirror_helpers import assert_replica, visible

from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import HammerError, StorageUnavailable
from hammerfs.fs import FileSystem
from hammerfs.mirror import pfs_ops
from hammerfs.mirror import stream as wire
from hammerfs.mirror.local import Thread, copy_local, serve_source, serve_target
from hammerfs.mirror.reader import SourceOptions
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ


def disk_pair(tmp_path, tag=""):
    m = Store.create(FileDevice(str(tmp_path / f"m{tag}.img"), create_size=64 << 20), "m")
    s = Store.create(FileDevice(str(tmp_path / f"s{tag}.img"), create_size=64 << 20), "s")
    pfs_ops.create_master(m, 1)
    pfs_ops.create_slave(s, 1, m.get_pfs(1).shared_uuid)
    return m, s


def test_stream_delivers_each_commit_within_two_seconds(tmp_path):
    master, slave = disk_pair(tmp_path)
    fs = FileSystem(master, 1)
    opts = SourceOptions(two_way=True, stream=True, idle_interval=0.5)
    a, b = socket.socketpair()
    source = Thread(serve_source, master, 1, a, opts)
    target = Thread(serve_target, slave, 1, b)
    source.start()
    target.start()
    latencies = []
    try:
        for i in range(5):
            ino = fs.create(ROOT_OBJ, b"file%d" % i, 0o644)
            fs.write(ino.obj_id, 0, b"payload %d" % i * 100)
            tid = master.commit()
            t0 = time.monotonic()
            while slave.get_pfs(1).sync_end_tid < tid:
                assert time.monotonic() - t0 < 2.0, "change not on the slave within 2 s"
                time.sleep(0.005)
            latencies.append(time.monotonic() - t0)
            assert visible(slave, 1, tid) == visible(master, 1, tid)
            time.sleep(0.1)
        # the stream stays quiet (no empty batch storm) while nothing changes
        before = slave.last_committed_tid
        time.sleep(0.3)
        assert slave.last_committed_tid == before
    finally:
        opts.stop.set()
        master.commit()
        source.outcome(10)
        target.outcome(10)
    assert max(latencies) < 2.0
    assert_replica(master, 1, slave, 1)
    master.close()
    slave.close()


ops = st.lists(st.tuples(st.sampled_from(["write", "write", "unlink", "commit", "mirror"]),
                         st.integers(0, 5)), max_size=25)


@settings(max_examples=15, deadline=None)
@given(steps=ops)
def test_random_fs_histories_replicate_on_disk(tmp_path_factory, steps):
    tmp = tmp_path_factory.mktemp("h")
    master, slave = disk_pair(tmp)
    fs = FileSystem(master, 1)
    for n, (op, i) in enumerate(steps):
        name = b"f%d" % i
        try:
            ino = fs.lookup(ROOT_OBJ, name)
        except OSError:
            ino = None
        if op == "write":
            if ino is None:
                ino = fs.create(ROOT_OBJ, name, 0o644)
            fs.write(ino.obj_id, n * 10, b"x%d" % n * 50)
        elif op == "unlink" and ino is not None:
            fs.unlink(ROOT_OBJ, name)
        elif op == "commit":
            master.commit()
        elif op == "mirror":
            copy_local(master, 1, slave, 1, SourceOptions(chunk_bytes=512))
    master.commit()
    copy_local(master, 1, slave, 1, SourceOptions(chunk_bytes=512))
    assert assert_replica(master, 1, slave, 1) == master.last_committed_tid
    master.close()
    slave.close()


def test_an_error_frame_says_whether_trying_again_may_help():
    """A target whose storage is out of reach (radosgw down mid-stream) must not end a
    stream for good; a refusal must."""
    cases = [(StorageUnavailable("s3://b/p/: storing an object failed"), False),
             (wire.StreamError("mirror stream is corrupt"), False),
             (HammerError("PFS 1 is not a slave"), True)]
    for exc, fatal in cases:
        err = wire.decode_error(wire.Frame(wire.ERROR, wire.error_payload(exc)), "mirror target")
        assert (err.fatal, str(err)) == (fatal, f"mirror target: {exc}")
