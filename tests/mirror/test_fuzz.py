"""Fuzzing the mirror stream's parsers (issue 11): the frame reader, every payload decoder,
and the target applying structure-aware mutations of a real stream to an on-disk slave.
Each asserts: only HammerError (no traceback), no hang (bounded by a timeout), and nothing
modified on refusal (the volume byte-identical while no batch completed; never a state the
volume cannot commit after)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import HammerError
from hammerfs.mirror import pfs_ops
from hammerfs.mirror import stream as s
from hammerfs.mirror.local import read_stream, write_stream
from hammerfs.store import Store
from hammerfs.store.memory import MemoryStore
from hammerfs.store.records import MAX_TID

TIMEOUT = 20.0
RT = 0x20


def bounded(fn, *args):
    """Run ``fn`` in a thread; fail on a hang, re-raise what it raised."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as exc:  # handed back to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive(), f"{fn.__name__} hung"
    if "error" in out:
        raise out["error"]
    return out.get("result")


DECODERS = {
    s.HELLO: s.decode_hello, s.PFSD: s.decode_pfsd, s.BATCH: s.decode_batch,
    s.REC: lambda f: s.decode_rec(f, 1), s.PASS: s.decode_pass, s.SYNC: s.decode_sync,
    s.UPDATE: s.decode_tid, s.IDLE: s.decode_tid, s.ESTIMATE: s.decode_estimate,
    s.ERROR: lambda f: s.decode_error(f, "peer"),
}


def _read_all(raw: bytes) -> list[s.Frame]:
    reader = s.FrameReader(io.BytesIO(raw))
    frames = []
    try:
        while True:
            frames.append(reader.recv())
    except s.StreamClosed:
        pass
    except s.StreamError:
        pass
    return frames


def _decode_all(frames: list[s.Frame]) -> None:
    from hammerfs.cli.mirror_cmds import describe
    for frame in frames:
        try:
            DECODERS.get(frame.type, lambda f: None)(frame)
            describe(frame)  # mirror-dump's view of the same frame
        except HammerError:
            pass


def _valid_prefix() -> bytes:
    return s.encode_frame(s.HELLO, s.hello_payload(s.ROLE_SOURCE), 0)


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=600), keep=st.integers(0, 40), seq=st.integers(0, 3))
def test_frame_reader_takes_arbitrary_bytes_without_traceback(tail, keep, seq):
    head = _valid_prefix()[:keep]
    bounded(lambda: _decode_all(_read_all(head + tail)))
    # a frame with a correct check but an arbitrary header and payload
    ftype = int.from_bytes(tail[:2] or b"\x04\x00", "little")
    frame = s.encode_frame(ftype, tail[2:], seq)
    bounded(lambda: _decode_all(_read_all(frame)))


SIZES = [0, 1, 7, 8, 12, 16, 20, 24, 32, 50, 66, 67, 236, 240, 244, 300]


@settings(max_examples=400, deadline=None)
@given(ftype=st.sampled_from(sorted(DECODERS)), size=st.sampled_from(SIZES),
       fill=st.binary(min_size=300, max_size=300))
def test_payload_decoders_raise_only_hammer_errors(ftype, size, fill):
    frame = s.Frame(ftype, fill[:size])
    with contextlib.suppress(HammerError):
        DECODERS[ftype](frame)


# -- the target, on an on-disk slave ------------------------------------------------------------

def _master_stream() -> tuple[MemoryStore, bytes]:
    master = MemoryStore("m")
    pfs_ops.create_master(master, 1)
    for i in range(4):
        master.put((1, 100 + i, RT, 0), bytes([i]) * (700 if i % 2 else 40))
    master.commit()
    master.delete((1, 101, RT, 0))
    master.put((1, 100, RT, 0), b"second version")
    master.commit()
    buf = io.BytesIO()
    read_stream(master, 1, buf, chunk_bytes=600)  # several batches, RECs and PASSes
    return master, buf.getvalue()


MASTER, STREAM = _master_stream()
FRAMES = _read_all(STREAM)
assert FRAMES[-1].type == s.TERM and sum(f.type == s.SYNC for f in FRAMES) >= 2

INTERESTING = [0, 1, 2, MAX_TID - 1, MAX_TID, MAX_TID + 1, (1 << 64) - 1, 0x7F, 0x80, 0x17,
               0x15]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "slave.img"
    with Store.create(FileDevice(str(path), create_size=4 << 20), "s") as st:
        pfs_ops.create_slave(st, 1, MASTER.get_pfs(1).shared_uuid)
    return path


mutation = st.one_of(
    st.tuples(st.just("u64"), st.integers(0, 1000), st.integers(0, 400),
              st.sampled_from(INTERESTING) | st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("u16"), st.integers(0, 1000), st.integers(0, 400),
              st.integers(0, 0xFFFF)),
    st.tuples(st.just("byte"), st.integers(0, 1000), st.integers(0, 4000),
              st.integers(1, 255)),
    st.tuples(st.just("drop"), st.integers(0, 1000)),
    st.tuples(st.just("dup"), st.integers(0, 1000)),
    st.tuples(st.just("type"), st.integers(0, 1000), st.integers(0, 13)),
    st.tuples(st.just("cut"), st.integers(0, 1000), st.integers(0, 400)),
)


def _mutate(frames: list[list], m: tuple) -> None:
    i = m[1] % len(frames)
    payload = frames[i][1]
    if m[0] in ("u64", "u16"):
        width = 8 if m[0] == "u64" else 2
        if len(payload) >= width:
            off = m[2] % (len(payload) - width + 1)
            payload[off:off + width] = m[3].to_bytes(width, "little")
    elif m[0] == "byte" and payload:
        payload[m[2] % len(payload)] ^= m[3]
    elif m[0] == "drop" and len(frames) > 1:
        del frames[i]
    elif m[0] == "dup":
        frames.insert(i, [frames[i][0], bytearray(payload)])
    elif m[0] == "type":
        frames[i][0] = m[2]
    elif m[0] == "cut":
        del payload[m[2] % (len(payload) + 1):]


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_target_on_mutated_streams_refuses_cleanly_and_never_bricks(template, tmp_path,
                                                                    mutations):
    frames = [[f.type, bytearray(f.payload)] for f in FRAMES]
    for m in mutations:
        _mutate(frames, m)
    # valid frame checks and sequence numbers: only the target's own checks stand between
    raw = b"".join(s.encode_frame(t, bytes(p), n) for n, (t, p) in enumerate(frames))
    path = tmp_path / "slave.img"
    shutil.copyfile(template, path)
    before = _sha(path)

    def apply() -> bool:
        with Store.open(FileDevice(str(path))) as st:
            try:
                write_stream(st, 1, io.BytesIO(raw))
                return True
            except HammerError:
                return False
    accepted = bounded(apply)
    with Store.open(FileDevice(str(path))) as st:
        sync = st.get_pfs(1).sync_end_tid
        if not accepted and sync == 1:
            assert _sha(path) == before, "a refused stream wrote to the volume"
        # no half-applied batch is left, and the volume still commits
        for rec in st.scan(*pfs_ops.pfs_range(1), history=True, with_data=False):
            assert rec.create_tid <= sync <= MAX_TID
        assert st.header.max_tid <= MAX_TID and st.header.next_obj <= MAX_TID + 1
        st.put((2, 7, RT, 0), b"still commits")
        assert st.commit() > 0


def test_unmutated_stream_is_accepted(template, tmp_path):
    path = tmp_path / "slave.img"
    shutil.copyfile(template, path)
    with Store.open(FileDevice(str(path))) as st:
        res = write_stream(st, 1, io.BytesIO(STREAM))
        assert res.sync_end_tid == MASTER.last_committed_tid




# -- the mirror/PFS control ops with untrusted arguments ----------------------------------------

def _json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers(-3, 1 << 70) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["label", "prune-min", "sync-end-tid", "x"]), inner, max_size=3),
        max_leaves=8)


@pytest.fixture(scope="module")
def pfs_server():
    import os
    import tempfile

    from hammerfs.control import ControlServer
    from hammerfs.control.ops import local_context
    from hammerfs.fs import init_pfs_root
    from hammerfs.mirror.control_ops import OPS

    base = tempfile.mkdtemp(prefix="hammerfs-fuzz-")
    old = os.environ.get("HAMMERFS_RUNTIME_DIR")
    os.environ["HAMMERFS_RUNTIME_DIR"] = os.path.join(base, "run")
    store = MemoryStore()
    init_pfs_root(store, 0)
    pfs_ops.create_master(store, 1)
    pfs_ops.create_slave(store, 2, store.get_pfs(1).shared_uuid)
    ctx = local_context(store, 0, "vol")
    ctx.mountpoint = os.path.join(base, "mnt")
    srv = ControlServer(ctx, OPS)
    srv.start()
    yield srv, store
    srv.stop()
    if old is None:
        del os.environ["HAMMERFS_RUNTIME_DIR"]
    else:
        os.environ["HAMMERFS_RUNTIME_DIR"] = old
    shutil.rmtree(base)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["pfs-status", "pfs-create", "pfs-upgrade", "pfs-downgrade",
                           "pfs-destroy", "pfs-update", "mirror-read", "mirror-write"]),
       args=st.dictionaries(st.sampled_from(["pfs", "label", "slave", "shared_uuid",
                                             "options", "two_way", "begin_tid",
                                             "chunk_bytes", "stream"]), _json_values(),
                            max_size=4))
def test_pfs_and_mirror_ops_refuse_wrongly_typed_arguments_cleanly(pfs_server, op, args):
    import json
    import socket

    srv, store = pfs_server
    # a well-typed request may change the volume (that is its job); a refused one may not
    before = (store.last_committed_tid, store.list_pfs())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(srv.socket_path)
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    answer = json.loads(reply)
    if not answer["ok"]:
        assert "internal error" not in answer["error"], (op, args, answer)
        assert (store.last_committed_tid, store.list_pfs()) == before, (op, args)


# -- ssh-remote's parser of $SSH_ORIGINAL_COMMAND (what the remote side sends) -------------------

@pytest.fixture(scope="module")
def confined_volume(tmp_path_factory):
    d = tmp_path_factory.mktemp("confine")
    vol = d / "s.img"
    with Store.create(FileDevice(str(vol), create_size=2 << 20), "s") as st:
        pfs_ops.create_master(st, 1)
    return f"{vol}:1"


words = st.sampled_from(["mirror-write", "mirror-read", "mirror-read-stream", "-2", "-q",
                         "-v", "-vv", "--stream", "-S", "-b", "-p", "--key-file", "..", "'",
                         '"', "\\", ";", "$(id)", "`id`", "|", "@@-1:00000", "/", ":0", "*"])
commands = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=80),
    st.lists(words | st.text(alphabet=st.characters(blacklist_characters="\x00"),
                             max_size=10), max_size=8).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(command=commands, verb=st.sampled_from(["mirror-read", "mirror-write"]),
       with_dir=st.booleans())
def test_ssh_remote_command_parser_allows_only_dir(confined_volume, command, verb, with_dir):
    from hammerfs.cli.mirror_cmds import REMOTE_ALLOWED, _check_remote

    if with_dir:
        command = f"{command} {verb} {confined_volume}"
    try:
        argv = bounded(_check_remote, command, verb, confined_volume)
    except HammerError:
        return
    assert argv[0] in REMOTE_ALLOWED[verb]
    # the only path it will open is DIR itself; every other word is an allowed option
    assert confined_volume in argv
    assert all(w in ("-2", "-q", "-v", "-vv", "--stream", "-S", "-b", confined_volume)
               or argv[i - 1] in ("-S", "-b") or (verb == "mirror-read" and i == len(argv) - 1)
               for i, w in enumerate(argv) if i > 0)
