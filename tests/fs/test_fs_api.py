"""The filesystem API used directly (no kernel mount), on every store implementation."""

from __future__ import annotations

import errno
import stat

import pytest
from fs_helpers import store_kinds
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.errors import ReadOnly
from hammerfs.fs import FileSystem, Namespace, init_pfs_root
from hammerfs.fs import filesystem as fsmod
from hammerfs.fs.layout import BLOCK, REC_DATA
from hammerfs.store.records import ROOT_OBJ

R = ROOT_OBJ


@pytest.fixture(params=store_kinds())
def fs(request, tmp_path):
    store = request.param(tmp_path)
    init_pfs_root(store, 0)
    yield FileSystem(store)
    store.close()


def err(code):
    return _Raises(code)


class _Raises:
    def __init__(self, code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        assert exc is not None, f"expected errno {errno.errorcode[self.code]}"
        assert isinstance(exc, OSError), exc
        assert exc.errno == self.code, (exc.errno, self.code, exc)
        return True


def test_create_write_read_and_attributes(fs):
    f = fs.create(R, b"a.txt", 0o644, uid=7, gid=8)
    assert fs.lookup(R, b"a.txt").obj_id == f.obj_id
    assert fs.write(f.obj_id, 0, b"hello world") == 11
    assert fs.read(f.obj_id, 0, 100) == b"hello world"
    assert fs.read(f.obj_id, 6, 3) == b"wor"
    ino = fs.getattr(f.obj_id)
    assert (ino.size, ino.uid, ino.gid, stat.S_IMODE(ino.mode)) == (11, 7, 8, 0o644)
    assert stat.S_ISREG(ino.mode) and ino.nlink == 1
    fs.setattr(f.obj_id, mode=0o600, uid=1, gid=2, atime=123456789012345678,
               mtime=987654321123456789)
    ino = fs.getattr(f.obj_id)
    assert (stat.S_IMODE(ino.mode), ino.uid, ino.gid) == (0o600, 1, 2)
    assert (ino.atime, ino.mtime) == (123456789012345678, 987654321123456789)


def test_sparse_files_holes_and_truncate(fs):
    f = fs.create(R, b"sparse", 0o644).obj_id
    fs.write(f, 10 * BLOCK + 5, b"xyz")
    assert fs.getattr(f).size == 10 * BLOCK + 8
    data = fs.read(f, 0, 11 * BLOCK)
    assert data == bytes(10 * BLOCK + 5) + b"xyz"
    # only one data block exists: the hole costs nothing
    recs = list(fs.store.scan((0, f, REC_DATA, 0), (0, f, REC_DATA, 1 << 63)))
    assert [r.key for r in recs] == [10 * BLOCK]
    fs.truncate(f, 10 * BLOCK + 6)
    assert fs.read(f, 10 * BLOCK, 100) == bytes(5) + b"x"
    fs.truncate(f, 20 * BLOCK)  # grow: the cut tail must read back as zeros
    assert fs.read(f, 10 * BLOCK, 16) == bytes(5) + b"x" + bytes(10)
    fs.truncate(f, 0)
    assert fs.read(f, 0, 10) == b"" and fs.getattr(f).size == 0


def test_directories_and_readdir(fs):
    d = fs.mkdir(R, b"dir", 0o755)
    assert fs.getattr(R).nlink == 3
    names = {f"f{i}".encode() for i in range(50)}
    for n in names:
        fs.create(d.obj_id, n, 0o644)
    entries = list(fs.readdir(d.obj_id))
    assert {e.name for e in entries} == names
    # readdir resumes after any key
    tail = list(fs.readdir(d.obj_id, entries[20].key))
    assert [e.name for e in tail] == [e.name for e in entries[21:]]
    with err(errno.ENOTEMPTY):
        fs.rmdir(R, b"dir")
    with err(errno.EEXIST):
        fs.mkdir(R, b"dir", 0o755)
    with err(errno.ENOTDIR):
        fs.rmdir(d.obj_id, b"f1")
    with err(errno.EISDIR):
        fs.unlink(R, b"dir")
    for n in names:
        fs.unlink(d.obj_id, n)
    fs.rmdir(R, b"dir")
    assert fs.getattr(R).nlink == 2
    with err(errno.ENOENT):
        fs.lookup(R, b"dir")


def test_name_errors(fs):
    with err(errno.ENAMETOOLONG):
        fs.create(R, b"x" * 256, 0o644)
    fs.create(R, b"x" * 255, 0o644)
    with err(errno.ENAMETOOLONG):
        fs.lookup(R, b"y" * 300)
    with err(errno.ENOENT):
        fs.unlink(R, b"missing")


def test_hash_collisions_are_handled(fs, monkeypatch):
    monkeypatch.setattr(fsmod, "name_hash", lambda name: 5 << 32)
    names = [f"n{i}".encode() for i in range(20)]
    objs = {n: fs.create(R, n, 0o644).obj_id for n in names}
    for n in names:
        assert fs.lookup(R, n).obj_id == objs[n]
    fs.unlink(R, b"n3")
    fs.create(R, b"again", 0o644)  # reuses the freed collision slot
    assert sorted(e.name for e in fs.readdir(R)) == sorted([n for n in names if n != b"n3"]
                                                           + [b"again"])
    fs.rename(R, b"n5", R, b"n6")
    assert fs.lookup(R, b"n6").obj_id == objs[b"n5"]


def test_rename_semantics(fs):
    a = fs.create(R, b"a", 0o644).obj_id
    b = fs.create(R, b"b", 0o644).obj_id
    fs.write(a, 0, b"AAA")
    fs.rename(R, b"a", R, b"b")  # atomically replaces b
    assert fs.lookup(R, b"b").obj_id == a
    with err(errno.ENOENT):
        fs.getattr(b)
    d1 = fs.mkdir(R, b"d1", 0o755).obj_id
    d2 = fs.mkdir(R, b"d2", 0o755).obj_id
    fs.create(d1, b"inner", 0o644)
    fs.rename(R, b"d1", R, b"d2")  # over an empty directory
    assert fs.lookup(R, b"d2").obj_id == d1
    with err(errno.ENOENT):
        fs.getattr(d2)
    assert fs.getattr(R).nlink == 3
    sub = fs.mkdir(d1, b"sub", 0o755).obj_id
    with err(errno.EINVAL):
        fs.rename(R, b"d2", sub, b"loop")
    with err(errno.ENOTEMPTY):
        fs.rename(d1, b"sub", R, b"d2")
    with err(errno.EISDIR):
        fs.rename(R, b"b", R, b"d2")
    with err(errno.ENOTDIR):
        fs.rename(R, b"d2", R, b"b")
    with err(errno.EEXIST):
        fs.rename(R, b"b", R, b"d2", fsmod.RENAME_NOREPLACE)
    fs.rename(d1, b"sub", R, b"moved")  # directory across parents: nlinks and '..'
    assert fs.getattr(R).nlink == 4 and fs.getattr(d1).nlink == 2
    assert fs.getattr(sub).parent == R
    fs.link(a, R, b"hard")
    fs.rename(R, b"hard", R, b"b")  # same file under both names: nothing happens
    assert fs.getattr(a).nlink == 2


def test_unlink_of_open_file_keeps_data_until_release(fs):
    f = fs.create(R, b"tmp", 0o644).obj_id
    fs.write(f, 0, b"still here")
    fs.open(f)
    fs.unlink(R, b"tmp")
    assert fs.read(f, 0, 100) == b"still here"
    fs.write(f, 10, b"!")
    assert fs.getattr(f).nlink == 0
    fs.release(f)
    with err(errno.ENOENT):
        fs.getattr(f)


def test_orphans_of_a_dead_owner_are_reaped(fs):
    f = fs.create(R, b"tmp", 0o644).obj_id
    fs.open(f)
    fs.unlink(R, b"tmp")
    fresh = FileSystem(fs.store)  # as a new mount after the owner died
    assert fresh.reap_orphans() == 1
    with err(errno.ENOENT):
        fresh.getattr(f)


def test_links_symlinks_and_special_files(fs):
    f = fs.create(R, b"f", 0o644).obj_id
    fs.link(f, R, b"g")
    assert fs.getattr(f).nlink == 2
    fs.unlink(R, b"f")
    assert fs.lookup(R, b"g").nlink == 1
    d = fs.mkdir(R, b"d", 0o755).obj_id
    with err(errno.EPERM):
        fs.link(d, R, b"dirlink")
    s = fs.symlink(R, b"s", b"../some/where")
    assert fs.readlink(s.obj_id) == b"../some/where"
    assert stat.S_ISLNK(fs.getattr(s.obj_id).mode) and fs.getattr(s.obj_id).size == 13
    p = fs.create(R, b"pipe", stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(fs.getattr(p.obj_id).mode)
    c = fs.create(R, b"null", stat.S_IFCHR | 0o666, rdev=0x0103)
    assert fs.getattr(c.obj_id).rdev == 0x0103
    with err(errno.EINVAL):
        fs.read(p.obj_id, 0, 1)


def test_xattrs(fs):
    f = fs.create(R, b"f", 0o644).obj_id
    fs.setxattr(f, b"user.a", b"1")
    fs.setxattr(f, b"user.b", b"2" * 1000)
    assert fs.getxattr(f, b"user.a") == b"1"
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.b"]
    with err(errno.EEXIST):
        fs.setxattr(f, b"user.a", b"x", fsmod.XATTR_CREATE)
    with err(errno.ENODATA):
        fs.setxattr(f, b"user.c", b"x", fsmod.XATTR_REPLACE)
    fs.setxattr(f, b"user.a", b"new", fsmod.XATTR_REPLACE)
    assert fs.getxattr(f, b"user.a") == b"new"
    fs.removexattr(f, b"user.a")
    with err(errno.ENODATA):
        fs.getxattr(f, b"user.a")
    assert fs.listxattr(f) == [b"user.b"]


def test_history_views_are_exact_and_read_only(fs):
    f = fs.create(R, b"f", 0o644).obj_id
    fs.write(f, 0, b"version one")
    t1 = fs.fsync()
    fs.write(f, 0, b"VERSION TWO, longer")
    fs.rename(R, b"f", R, b"renamed")
    t2 = fs.fsync()
    fs.unlink(R, b"renamed")
    fs.fsync()
    old = FileSystem(fs.store, asof=t1)
    assert old.read(old.lookup(R, b"f").obj_id, 0, 100) == b"version one"
    mid = FileSystem(fs.store, asof=t2)
    assert mid.read(mid.lookup(R, b"renamed").obj_id, 0, 100) == b"VERSION TWO, longer"
    with pytest.raises(ReadOnly):
        old.write(f, 0, b"x")
    with err(errno.EROFS):
        old.create(R, b"new", 0o644)


def test_namespace_history_names_and_pfs_links(fs):
    store = fs.store
    f = fs.create(R, b"f", 0o644).obj_id
    fs.write(f, 0, b"old")
    t1 = fs.fsync()
    fs.write(f, 0, b"new")
    fs.fsync()
    ns = Namespace(store)
    view, ino = ns.resolve(b"/f@@0x%016x" % t1)
    assert view.read(ino.obj_id, 0, 10) == b"old" and view.readonly
    view, ino = ns.resolve(b"/@@0x%016x/f" % t1)
    assert view.read(ino.obj_id, 0, 10) == b"old"
    view, ino = ns.resolve(b"/f@@-1")
    assert view.read(ino.obj_id, 0, 10) == b"new"
    # a master PFS link walks into the live PFS; a slave's shows it as of sync_end_tid
    from hammerfs.store.pfs import PFS_SLAVE, PfsData
    store.put_pfs(1, PfsData(label="m"))
    init_pfs_root(store, 1)
    m = FileSystem(store, 1)
    m.create(R, b"in-master", 0o644)
    fs.symlink(R, b"master", b"@@-1:00001")
    assert ns.readlink(fs, fs.lookup(R, b"master")) == b"@@-1:00001"
    view, ino = ns.resolve(b"/@@-1:00001/in-master")
    assert view.pfs == 1 and not view.readonly
    sync = store.commit()
    m.create(R, b"after-sync", 0o644)
    store.put_pfs(1, store.get_pfs(1).evolve(mirror_flags=PFS_SLAVE, sync_end_tid=sync))
    store.commit()
    assert ns.readlink(fs, fs.lookup(R, b"master")) == b"@@0x%016x:00001" % sync
    view, _ = ns.resolve(b"/@@0x%016x:00001/in-master" % sync)
    assert view.readonly and view.asof == sync
    with err(errno.ENOENT):
        ns.resolve(b"/@@-1:00001/after-sync")
    with err(errno.ENOENT):
        ns.resolve(b"/@@-1:00007")


class _Model:
    """A file as a bytearray: the oracle for data-path property tests."""

    def __init__(self):
        self.data = bytearray()

    def write(self, off, data):
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(data)] = data

    def truncate(self, size):
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


_offsets = st.integers(0, 4 * BLOCK + 100)
_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), _offsets, st.binary(min_size=1, max_size=BLOCK + 300)),
    st.tuples(st.just("truncate"), _offsets, st.none()),
    st.tuples(st.just("commit"), st.none(), st.none()),
), max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops=_ops)
def test_file_data_matches_a_bytearray_model(ops):
    from hammerfs.store.memory import MemoryStore
    store = MemoryStore()
    init_pfs_root(store, 0)
    fs = FileSystem(store)
    f = fs.create(R, b"f", 0o644).obj_id
    model = _Model()
    states = []
    for op, off, data in ops:
        if op == "write":
            fs.write(f, off, data)
            model.write(off, data)
        elif op == "truncate":
            fs.truncate(f, off)
            model.truncate(off)
        else:
            states.append((fs.fsync(), bytes(model.data)))
        assert fs.getattr(f).size == len(model.data)
    assert fs.read(f, 0, len(model.data) + 10) == bytes(model.data)
    for tid, expect in states:  # every committed state stays readable
        assert FileSystem(store, asof=tid).read(f, 0, len(expect) + 10) == expect
