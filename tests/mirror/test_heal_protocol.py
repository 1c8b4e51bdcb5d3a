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


def range_request(lo, hi, limit=4096) -> bytes:
    return json.dumps({"range": lo, "to": hi, "limit": limit}).encode() + b"\n"


def parse_versions(raw: bytes) -> list[tuple[dict, bytes]]:
    """The replies of a range session, each (head, inline data)."""
    hello, _, rest = raw.partition(b"\n")
    assert json.loads(hello)["hammerfs-fetch"] == 1
    out = []
    while rest:
        line, _, rest = rest.partition(b"\n")
        head = json.loads(line)
        assert set(head) <= {"versions", "more", "error"}
        for _ in range(head.get("versions", 0)):
            vline, _, rest = rest.partition(b"\n")
            v = json.loads(vline)
            n = v["v"][7] if v["csum"] is None else 0
            out.append((v, rest[:n]))
            rest = rest[n:]
    return out


def test_a_range_is_served_with_checksums_and_inline_data_of_its_pfs_only(store):
    store.put((1, 200, 0x10, 0), b"small")
    store.commit()
    got = parse_versions(b"\n".join(serve(store, 1, range_request([0, 0, 0, 0], None))))
    keys = [tuple(v["v"][:4]) for v, _ in got]
    assert keys == sorted(keys) and {k[0] for k in keys} >= {100, 200}
    big = next(v for v, _ in got if v["v"][0] == 100)
    rec = store.get((1, 100, 0x10, 0))
    assert big["v"][7] == len(rec.data) and bytes.fromhex(big["csum"]) == \
        store.tree.exact((1, 100, 0x10, 0, rec.create_tid))[5]
    assert next(d for v, d in got if v["v"][0] == 200) == b"small"
    assert not any(b"pfs 0 data" in d for _, d in got)
    # `to` is exclusive, `limit` is kept
    upto = parse_versions(b"\n".join(serve(store, 1, range_request([0, 0, 0, 0],
                                                                    [200, 0, 0, 0]))))
    assert [v["v"][0] for v, _ in upto] == [100]
    one = serve(store, 1, range_request([0, 0, 0, 0], None, limit=1))
    assert json.loads(one[1]) == {"versions": 1, "more": True}


def test_the_healer_asks_the_pfs_of_the_replica_mapped_to_its_own(store, tmp_path):
    """A volume whose PFS 3 mirrors the served PFS 1 gets PFS 1's versions as PFS 3's."""
    path = tmp_path / "other.img"
    other = Store.create(FileDevice(str(path), create_size=16 << 20))
    try:
        other.put_pfs(3, PfsData(label="slave", shared_uuid=store.get_pfs(1).shared_uuid))
        other.commit()
        a, b = socket.socketpair()

        def run():
            with a.makefile("rb") as r, a.makefile("wb") as w:
                serve_fetch(store, 1, r, w)
            a.close()
        threading.Thread(target=run, daemon=True).start()
        healer = Healer(other, "pair", lambda: SocketChannel(b), keep_open=True)
        got = healer.versions((3, 0, 0, 0, 0), (3, 150, 0, 0, 0))
        assert [v.key[:2] for v in got] == [(3, 100)]
        assert got[0].length == len(store.get((1, 100, 0x10, 0)).data)
        assert healer.versions((0, 0, 0, 0, 0), (2, 0, 0, 0, 0)) == []  # not mirrored
        healer.close()
    finally:
        other.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.builds(lambda lo, hi, n: json.dumps({"range": lo, "to": hi, "limit": n}).encode(),
              st.one_of(st.lists(st.integers(-1, 1 << 65), max_size=5), st.text(max_size=3)),
              st.one_of(st.none(), st.lists(st.integers(-1, 1 << 65), max_size=5)),
              st.one_of(st.integers(-1, 10000), st.none(), st.text(max_size=2))),
    st.binary(max_size=100)), max_size=5))
def test_any_range_request_gets_a_reply_with_versions_in_range(store, requests):
    raw = b"\n".join(r.replace(b"\n", b" ") for r in requests) + b"\n"
    out = io.BytesIO()
    serve_fetch(store, 1, io.BytesIO(raw), out)
    for v, data in parse_versions(out.getvalue()):
        assert v["v"][0] in (100, 200) and (v["csum"] is None) == (v["v"][7] <= 512)
        assert b"pfs 0 data" not in data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.builds(lambda n, more: json.dumps({"versions": n, "more": more}).encode() + b"\n",
              st.integers(-1, 5), st.booleans()),
    st.builds(lambda v, c: json.dumps({"v": v, "csum": c}).encode() + b"\n",
              st.lists(st.integers(-1, 1 << 64), min_size=7, max_size=9),
              st.one_of(st.none(), st.text("0123456789abcdef", min_size=30, max_size=34))),
    st.binary(max_size=40)), max_size=8))
def test_a_hostile_replica_gives_only_checked_versions(store, frames):
    hello = json.dumps({"hammerfs-fetch": 1, "pfs": 5, "shared_uuid":
                        store.get_pfs(1).shared_uuid, "unique_uuid": "x"}).encode() + b"\n"
    fake = FakeReplica(hello + b"".join(frames))
    healer = Healer(store, "fake", lambda: SocketChannel(fake.ours))
    lo, hi = (1, 50, 0, 0, 0), (1, 300, 0, 0, 0)
    got = healer.versions(lo, hi)
    keys = [v.key for v in got]
    assert keys == sorted(set(keys)) and all(lo <= k < hi for k in keys)
    for v in got:
        assert v.key[4] > 0 and (v.delete_tid == 0 or v.delete_tid > v.key[4])
        assert len(v.csum) == 16 and (v.inline is None) == (v.length > 512)
        assert v.inline is None or len(v.inline) == v.length
    healer.close()
