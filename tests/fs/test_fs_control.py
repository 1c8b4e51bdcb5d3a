"""The control channel on its own: requests, streams, errors, discovery and the owner check."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

import pytest

from hammerfs.control import ControlClient, ControlServer, find_mount
from hammerfs.control.client import ForgedMount, RemoteError
from hammerfs.control.ops import local_context
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
