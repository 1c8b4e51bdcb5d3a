"""The control channel on its own: requests, streams, errors, discovery and the owner check."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import tempfile

import pytest
from fs_helpers import disk_store
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.control import ControlClient, ControlServer, find_mount
from hammerfs.control.client import ForgedMount, RemoteError, registered_mounts
from hammerfs.control.ops import OPS, local_context
from hammerfs.control.server import read_line
from hammerfs.fs import FsError, init_pfs_root
from hammerfs.store.memory import MemoryStore


def op_echo(ctx, args, conn):
    return {"echo": args, "pfs": ctx.pfs}


def op_fail(ctx, args, conn):
    raise FsError(errno.ENOENT, "nothing here")


def op_upper(ctx, args, conn):  # streaming: read until EOF-marker, answer upper-cased
    data = b""
    while not data.endswith(b"\n"):
        data += conn.recv(4096)
    conn.sendall(data.upper())
    return {}


@pytest.fixture
def server(tmp_path, monkeypatch):
    # outside pytest's 0700 tmp tree, so that another uid can reach the socket at all
    base = tempfile.mkdtemp(prefix="hammerfs-ctl-")
    os.chmod(base, 0o755)
    monkeypatch.setenv("HAMMERFS_RUNTIME_DIR", os.path.join(base, "run"))
    store = MemoryStore()
    init_pfs_root(store, 0)
    ctx = local_context(store, 0, "vol")
    mp = tmp_path / "mnt"
    (mp / "sub").mkdir(parents=True)
    ctx.mountpoint = str(mp)
    srv = ControlServer(ctx, {"echo": op_echo, "fail": op_fail, "upper": op_upper})
    srv.start()
    yield srv, mp
    srv.stop()
    shutil.rmtree(base)


def test_requests_streams_errors_and_discovery(server):
    srv, mp = server
    assert oct(os.stat(srv.socket_path).st_mode & 0o777) == "0o600"
    # mp is a plain directory: its registration is refused, never trusted (discovery of a
    # real FUSE mount is tested in test_fs_fuse.py and test_runtime_security.py)
    with pytest.raises(ForgedMount, match="nothing is mounted on"):
        find_mount(str(mp / "sub" / "file"))
    assert find_mount("/") is None
    client = ControlClient(srv.socket_path)
    assert client.call("echo", a=1, b="x") == {"echo": {"a": 1, "b": "x"}, "pfs": 0}
    with pytest.raises(RemoteError) as err:
        client.call("fail")
    assert err.value.errno == errno.ENOENT and "nothing here" in str(err.value)
    with pytest.raises(RemoteError):
        client.call("no-such-op")
    sock = client.open_stream("upper")
    sock.sendall(b"raw bytes after the header\n")
    got = b""
    while chunk := sock.recv(4096):
        got += chunk
    assert got == b"RAW BYTES AFTER THE HEADER\n"


def test_other_users_are_refused(server):
    srv, _mp = server
    os.chmod(os.path.dirname(srv.socket_path), 0o755)
    os.chmod(srv.socket_path, 0o666)  # even if the modes were opened, SO_PEERCRED refuses
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            try:
                ControlClient(srv.socket_path).call("echo")
                os.write(w, b"served")
            except Exception as exc:  # report whatever happened to the parent
                os.write(w, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    answer = os.read(r, 1000)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == b"permission denied"


# -- fuzzing the requests: whatever arrives, the mount answers and logs no traceback ---------

_ARG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(allow_nan=True), st.text(max_size=20),
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_REQUESTS = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                     inner, max_size=3),
        max_leaves=10)),
    st.builds(lambda op, args, stream: json.dumps({"op": op, "args": args,
                                                   "stream": stream}).encode(),
              st.sampled_from(sorted(OPS)) | st.text(max_size=8),
              st.dictionaries(st.sampled_from(["relpath", "tid", "note", "force", "text",
                                               "pfs", "x"]), _ARG_VALUES, max_size=4)
              | _ARG_VALUES,
              st.booleans() | _ARG_VALUES),
)


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_fuzzed_requests_get_an_answer_and_no_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMMERFS_RUNTIME_DIR", str(tmp_path / "run"))
    store = disk_store(tmp_path, 64 << 20)  # as a mount's: the volume ops read its header
    init_pfs_root(store, 0)
    ctx = local_context(store, 0, str(tmp_path / "vol.img"))
    ctx.mountpoint = str(tmp_path / "mnt")
    srv = ControlServer(ctx, OPS)
    crashes = _Crashes()
    logging.getLogger("hammerfs.control").addHandler(crashes)
    srv.start()
    try:
        @settings(max_examples=300, deadline=None)
        @given(_REQUESTS)
        def check(line: bytes) -> None:
            line = line.replace(b"\n", b" ")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(srv.socket_path)
                sock.sendall(line + b"\n")
                sock.shutdown(socket.SHUT_WR)  # a streaming op reads until EOF
                first = read_line(sock)
            reply = json.loads(first)
            assert isinstance(reply.get("ok"), bool)
            assert not crashes.records, crashes.records[0].getMessage()

        check()
        assert ControlClient(srv.socket_path).call("synctid")["tid"] > 0  # still serving
    finally:
        logging.getLogger("hammerfs.control").removeHandler(crashes)
        srv.stop()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(
    st.sampled_from(["mountpoint", "socket", "pid", "pfs", "volume"]),
    st.none() | st.integers(-5, 1 << 40) | st.just(os.getpid()) | st.text(max_size=12)
    | st.just("/") | st.just("/tmp"),
    max_size=5)))
def test_garbage_registrations_are_never_trusted(data):
    base = tempfile.mkdtemp(prefix="hammerfs-reg-")
    try:
        run = os.path.join(base, "run")
        os.mkdir(run, 0o700)
        with open(os.path.join(run, "0123.json"), "wb") as f:
            f.write(data)
        env = {"HAMMERFS_RUNTIME_DIR": run}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert registered_mounts() == []
            for path in ("/", base, "/tmp"):
                try:
                    info = find_mount(path)
                except ForgedMount:
                    continue
                assert info is None
    finally:
        shutil.rmtree(base)
