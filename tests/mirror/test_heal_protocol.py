"""The mirror-fetch protocol against hostile peers: a replica answers any request bytes with
a reply line (never a crash, never a record of another PFS); a damaged side given arbitrary
replies gets nothing it would use, only None (and the store then refuses anything whose
checksum does not match, see tests/store/test_store_scrub.py)."""

from __future__ import annotations

import io
import json
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hammerfs.blockdev.file import FileDevice
from hammerfs.mirror.heal import Healer, serve_fetch
from hammerfs.mirror.transport import SocketChannel
from hammerfs.store import Store
from hammerfs.store.pfs import PfsData


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fetch") / "vol.img"
    s = Store.create(FileDevice(str(path), create_size=16 << 20))
    s.put_pfs(1, PfsData(label="one"))
    s.put((1, 100, 0x10, 0), b"secret of pfs 1" * 100)
    s.put((0, 100, 0x10, 0), b"pfs 0 data" * 100)
    s.commit()
    yield s
    s.close()


def serve(store, pfs: int, requests: bytes) -> list[bytes]:
    out = io.BytesIO()
    serve_fetch(store, pfs, io.BytesIO(requests), out)
    return out.getvalue().split(b"\n")


def test_a_version_is_served_by_key_and_tid_and_only_of_its_pfs(store):
    rec = store.get((1, 100, 0x10, 0))
    req = json.dumps({"get": [100, 0x10, 0, rec.create_tid]}).encode() + b"\n"
    lines = serve(store, 1, req)
    hello = json.loads(lines[0])
    assert hello["pfs"] == 1 and hello["shared_uuid"] == store.get_pfs(1).shared_uuid
    head = json.loads(lines[1])
    assert head == {"found": True, "length": len(rec.data)}
    # the same key on the session of PFS 0 is PFS 0's record, never PFS 1's
    other = serve(store, 0, json.dumps({"get": [100, 0x10, 0, rec.create_tid]}).encode()
                  + b"\n")
    assert json.loads(other[1]) == {"found": False} or b"secret" not in b"".join(other)
    # another TID: not found (a replica holding another version is not used)
    wrong = serve(store, 1, json.dumps({"get": [100, 0x10, 0, rec.create_tid + 1]}).encode()
                  + b"\n")
    assert json.loads(wrong[1]) == {"found": False}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), st.recursive(
        st.none() | st.booleans() | st.integers(-2, 1 << 70) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
            st.sampled_from(["get", "put", "x"]), inner, max_size=2), max_leaves=8))),
    max_size=6))
def test_any_request_bytes_get_reply_lines(store, requests):
    raw = b"\n".join(r.replace(b"\n", b" ") for r in requests) + b"\n"
    out = io.BytesIO()
    serve_fetch(store, 1, io.BytesIO(raw), out)
    data = out.getvalue()
    hello, _, rest = data.partition(b"\n")
    assert json.loads(hello)["pfs"] == 1
    while rest:  # every reply is a JSON object line, followed by exactly its length
        line, _, rest = rest.partition(b"\n")
        reply = json.loads(line)
        assert set(reply) <= {"found", "length", "error"}
        rest = rest[reply.get("length", 0):]


class FakeReplica:
    """A replica that answers with whatever bytes the test gives."""

    def __init__(self, script: bytes):
        self.ours, theirs = socket.socketpair()
        self.thread = threading.Thread(target=self._run, args=(theirs, script), daemon=True)
        self.thread.start()

    @staticmethod
    def _run(sock: socket.socket, script: bytes) -> None:
        try:
            sock.sendall(script)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:
            pass
        finally:
            sock.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.booleans())
def test_a_hostile_replica_gives_nothing_usable(store, junk, good_hello):
    hello = json.dumps({"hammerfs-fetch": 1, "pfs": 5, "shared_uuid":
                        store.get_pfs(1).shared_uuid, "unique_uuid": "x"}).encode() + b"\n"
    script = (hello if good_hello else b"") + junk
    fake = FakeReplica(script)
    healer = Healer(store, "fake", lambda: SocketChannel(fake.ours))
    k = (1, 100, 0x10, 0, store.get((1, 100, 0x10, 0)).create_tid)
    v = store.tree.exact(k)
    got = healer(k, v)
    # the answer, if any, has the right length; whether its bytes are right is the
    # store's check (rewrite_data refuses a checksum mismatch)
    assert got is None or len(got) == v[3]
    healer.close()
