"""`undo -r` of whole directories at the API level: after a restore the live tree is exactly
the tree as of the TID (names, kinds, bytes with holes, modes, owners, atime/mtime, xattrs,
symlink targets, device numbers, hard links), on MemoryStore and the on-disk Store."""

from __future__ import annotations

import contextlib
import errno
import stat

import pytest
from fs_helpers import lock_handovers, rooted_store, store_kinds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hammerfs import steps as steps_mod
from hammerfs.fs import FileSystem, FsError, Namespace, init_pfs_root
from hammerfs.fs import history as history_mod
from hammerfs.fs.history import restore, stored_inode
from hammerfs.fs.layout import BLOCK
from hammerfs.store.memory import MemoryStore
from hammerfs.store.records import ROOT_OBJ

R = ROOT_OBJ


def dump(fs: FileSystem, top: int = R) -> dict:
    """Everything undo -r promises to restore, keyed by path; hard links show up as the same
    link-group number (order of first appearance), not as object ids (restore may make new
    objects)."""
    out: dict = {}
    groups: dict[int, int] = {}
    todo = [(b"", top)]
    while todo:
        path, obj = todo.pop()
        ino = stored_inode(fs, obj)
        entry = {"mode": ino.mode, "uid": ino.uid, "gid": ino.gid, "atime": ino.atime,
                 "mtime": ino.mtime, "size": ino.size, "rdev": ino.rdev,
                 "xattrs": {n: fs.getxattr(obj, n) for n in fs.listxattr(obj)}}
        if ino.is_reg:
            entry["data"] = fs.read(obj, 0, ino.size)
            entry["nlink"] = ino.nlink
            entry["group"] = groups.setdefault(obj, len(groups))
        elif ino.is_symlink:
            entry["target"] = fs.readlink(obj)
        elif ino.is_dir:
            entry["nlink"] = ino.nlink
            for e in fs.readdir(obj):
                todo.append((path + b"/" + e.name, e.obj_id))
        out[path or b"/"] = entry
    return _renumber(out)


def _renumber(tree: dict) -> dict:
    """Link groups numbered in path order, so two dumps compare independent of walk order."""
    seen: dict[int, int] = {}
    for path in sorted(tree):
        if "group" in tree[path]:
            tree[path]["group"] = seen.setdefault(tree[path]["group"], len(seen))
    return tree


def subtree(fs: FileSystem, path: bytes) -> int:
    obj = R
    for name in path.strip(b"/").split(b"/"):
        if name:
            obj = fs.lookup(obj, name).obj_id
    return obj


@pytest.fixture(params=store_kinds())
def store(request, tmp_path):
    with rooted_store(request.param, tmp_path) as s:
        yield s


def build_tree(fs: FileSystem) -> None:
    d = fs.mkdir(R, b"d", 0o750, 10, 20).obj_id
    sub = fs.mkdir(d, b"sub", 0o700).obj_id
    deep = fs.mkdir(sub, b"deep", 0o755).obj_id
    f = fs.create(d, b"f", 0o640, 1, 2).obj_id
    fs.write(f, 0, b"hello" * 1000)
    sparse = fs.create(sub, b"sparse", 0o600).obj_id
    fs.write(sparse, 3 * BLOCK + 7, b"tail")  # holes before
    fs.setxattr(f, b"user.tag", b"v1")
    fs.setxattr(d, b"user.dirtag", b"dir")
    fs.symlink(d, b"link", b"sub/sparse")
    fs.create(deep, b"fifo", stat.S_IFIFO | 0o644)
    fs.create(deep, b"dev", stat.S_IFCHR | 0o600, rdev=0x0103)
    fs.link(f, sub, b"f-hard")
    fs.create(d, b"empty", 0o644)
    fs.setattr(f, atime=1_600_000_000_000_000_001, mtime=1_600_000_000_000_000_002)
    fs.setattr(d, atime=1_600_000_000_000_000_003, mtime=1_600_000_000_000_000_004)


def mutate_tree(fs: FileSystem) -> None:
    d = fs.lookup(R, b"d").obj_id
    sub = fs.lookup(d, b"sub").obj_id
    f = fs.lookup(d, b"f").obj_id
    fs.write(f, 10, b"CHANGED")
    fs.truncate(f, 20000)
    fs.setxattr(f, b"user.tag", b"v2")
    fs.setxattr(f, b"user.new", b"x")
    fs.setattr(f, mode=0o600, uid=5)
    fs.unlink(sub, b"f-hard")
    fs.unlink(sub, b"sparse")
    deep = fs.lookup(sub, b"deep").obj_id
    fs.unlink(deep, b"fifo")
    fs.unlink(deep, b"dev")
    fs.rmdir(sub, b"deep")
    fs.unlink(d, b"link")
    fs.symlink(d, b"link", b"elsewhere")  # same name, other target
    fs.unlink(d, b"empty")
    fs.mkdir(d, b"empty", 0o755)  # a file replaced by a directory
    fs.write(fs.create(fs.lookup(d, b"empty").obj_id, b"inside", 0o644).obj_id, 0, b"new")
    newdir = fs.mkdir(d, b"newdir", 0o755).obj_id
    fs.mkdir(newdir, b"nested", 0o755)
    fs.write(fs.create(d, b"newfile", 0o644).obj_id, 0, b"created after")
    fs.rename(d, b"sub", R, b"moved-away")
    fs.removexattr(d, b"user.dirtag")
    fs.setattr(d, mode=0o777)


def test_restore_directory_tree_exactly(store):
    ns = Namespace(store, 0)
    fs = ns.live(0)
    build_tree(fs)
    fs.write(fs.create(R, b"outside", 0o644).obj_id, 0, b"not part of it")
    tid = store.commit()
    then = dump(FileSystem(store, 0, tid), subtree(FileSystem(store, 0, tid), b"d"))
    mutate_tree(fs)
    fs.write(fs.lookup(R, b"outside").obj_id, 0, b"changed too")
    store.commit()
    assert dump(fs, subtree(fs, b"d")) != then

    done = restore(ns, "d", tid)
    assert done.created >= 6 and done.removed >= 3 and done.updated >= 1
    assert dump(fs, subtree(fs, b"d")) == then
    # outside the restored tree nothing moved back
    assert fs.read(fs.lookup(R, b"outside").obj_id, 0, 100) == b"changed too it"
    assert fs.lookup(R, b"moved-away").is_dir
    # hard links within the tree are links again; the restore is itself undoable history
    f = fs.lookup(subtree(fs, b"d"), b"f")
    assert f.nlink == 2 and fs.lookup(subtree(fs, b"d/sub"), b"f-hard").obj_id == f.obj_id
    store.commit()
    again = restore(ns, "d", tid)  # idempotent: nothing left to do
    assert (again.created, again.removed, again.updated) == (0, 0, 0)


def test_restore_deleted_directory_and_pfs_root(store):
    ns = Namespace(store, 0)
    fs = ns.live(0)
    build_tree(fs)
    tid = store.commit()
    whole = dump(FileSystem(store, 0, tid))
    mutate_tree(fs)
    d = fs.lookup(R, b"d").obj_id
    for name in [e.name for e in fs.readdir(d)]:
        ino = fs.lookup(d, name)
        if not ino.is_dir:
            fs.unlink(d, name)
    for name in (b"empty", b"newdir"):
        target = fs.lookup(d, name).obj_id
        for e in list(fs.readdir(target)):
            (fs.rmdir if e.mode_type == stat.S_IFDIR else fs.unlink)(target, e.name)
        fs.rmdir(d, name)
    fs.rmdir(R, b"d")
    store.commit()
    restore(ns, "d", tid)  # a deleted directory comes back with its whole tree
    assert dump(fs, subtree(fs, b"d")) == dump(FileSystem(store, 0, tid), subtree(
        FileSystem(store, 0, tid), b"d"))
    fs.write(fs.create(R, b"later", 0o644).obj_id, 0, b"x")
    restore(ns, "/", tid)  # the PFS root: everything, 'moved-away' and 'later' go
    assert dump(fs) == whole


def test_restore_refusals(store):
    ns = Namespace(store, 0)
    fs = ns.live(0)
    fs.mkdir(R, b"x", 0o755)
    tid = store.commit()
    fs.rmdir(R, b"x")
    fs.create(R, b"x", 0o644)
    store.commit()
    with pytest.raises(FsError) as exc:
        restore(ns, "x", tid)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(FsError) as exc:
        restore(Namespace(store, 0, readonly=True), "x", tid)
    assert exc.value.errno in (errno.EROFS, errno.EEXIST)


# -- property: restore to any committed TID gives exactly that tree ----------------------------
NAMES = [b"a", b"b", b"c"]
op = st.one_of(
    st.tuples(st.just("file"), st.integers(0, 2), st.sampled_from(NAMES), st.binary(max_size=300),
              st.integers(0, 2 * BLOCK)),
    st.tuples(st.just("mkdir"), st.integers(0, 2), st.sampled_from(NAMES)),
    st.tuples(st.just("rm"), st.integers(0, 2), st.sampled_from(NAMES)),
    st.tuples(st.just("chmod"), st.integers(0, 2), st.sampled_from(NAMES), st.integers(0, 0o777)),
    st.tuples(st.just("xattr"), st.integers(0, 2), st.sampled_from(NAMES), st.binary(max_size=8)),
    st.tuples(st.just("link"), st.integers(0, 2), st.sampled_from(NAMES), st.integers(0, 2)),
    st.tuples(st.just("commit"),),
)


def _dirs(fs: FileSystem) -> list[int]:
    """Up to three directories of the tree under 'top' (depth first, stable order)."""
    out, todo = [], [fs.lookup(R, b"top").obj_id]
    while todo and len(out) < 3:
        obj = todo.pop(0)
        out.append(obj)
        todo += [e.obj_id for e in fs.readdir(obj) if e.mode_type == stat.S_IFDIR]
    return out


def _apply(fs: FileSystem, step: tuple) -> None:
    kind = step[0]
    if kind == "commit":
        return
    dirs = _dirs(fs)
    where = dirs[step[1] % len(dirs)]
    name = step[2]
    try:
        cur = fs.lookup(where, name)
    except FsError:
        cur = None
    if kind == "file":
        if cur is None:
            cur = fs.create(where, name, 0o644)
        if cur.is_reg:
            fs.write(cur.obj_id, step[4], step[3])
    elif kind == "mkdir" and cur is None:
        fs.mkdir(where, name, 0o755)
    elif kind == "rm" and cur is not None:
        if not cur.is_dir:
            fs.unlink(where, name)
        elif next(fs.readdir(cur.obj_id), None) is None:
            fs.rmdir(where, name)
    elif kind == "chmod" and cur is not None:
        fs.setattr(cur.obj_id, mode=step[3], mtime=step[3] * 1000)
    elif kind == "xattr" and cur is not None:
        fs.setxattr(cur.obj_id, b"user.k", step[3])
    elif kind == "link" and cur is not None and not cur.is_dir:
        other = dirs[step[3] % len(dirs)]
        with contextlib.suppress(FsError):  # EEXIST: that name is taken already
            fs.link(cur.obj_id, other, name + b"2")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=25), st.lists(op, max_size=25), st.data())
def test_restore_matches_any_committed_tree(before, after, data):
    store = MemoryStore(label="p")
    init_pfs_root(store, 0)
    ns = Namespace(store, 0)
    fs = ns.live(0)
    fs.mkdir(R, b"top", 0o755)
    tids = [store.commit()]
    for step in before + after:
        _apply(fs, step)
        if step[0] == "commit":
            tids.append(store.commit())
    tids.append(store.commit())
    tid = data.draw(st.sampled_from(tids))
    old = FileSystem(store, 0, tid)
    then = dump(old, old.lookup(R, b"top").obj_id)
    window, history_mod.COPY_WINDOW = history_mod.COPY_WINDOW, 2  # files span windows
    try:
        restore(ns, "top", tid)
    finally:
        history_mod.COPY_WINDOW = window
    assert dump(fs, fs.lookup(R, b"top").obj_id) == then


def test_restore_of_a_big_sparse_file_in_windows(store, monkeypatch):
    monkeypatch.setattr(history_mod, "COPY_WINDOW", 3)
    ns = Namespace(store, 0)
    fs = ns.live(0)
    f = fs.create(R, b"big", 0o644).obj_id
    for i in range(0, 20, 2):  # every other block: holes between
        fs.write(f, i * BLOCK, bytes([i + 1]) * BLOCK)
    tid = store.commit()
    expect = fs.read(f, 0, 21 * BLOCK)
    for i in range(1, 20, 3):  # fill holes, overwrite blocks, then grow past the end
        fs.write(f, i * BLOCK + 5, b"changed")
    fs.write(f, 40 * BLOCK, b"far")
    store.commit()
    done = restore(ns, "big", tid)
    assert done.updated == 1 and fs.read(f, 0, 50 * BLOCK) == expect
    assert fs.getattr(f).size == 19 * BLOCK


def test_restore_of_a_big_tree_hands_the_lock_over_between_steps(store, monkeypatch):
    """undo -r of a tree through a mount: the mount's lock is given to waiting requests
    between entries (steps of STEP_SECONDS, 0 here: every entry), never held for the run."""
    monkeypatch.setattr(steps_mod, "STEP_SECONDS", 0.0)
    ns = Namespace(store, 0)
    fs = ns.live(0)
    d = fs.mkdir(R, b"d", 0o755).obj_id
    for i in range(400):
        fs.write(fs.create(d, b"f%d" % i, 0o644).obj_id, 0, b"v1 %d" % i)
    tid = store.commit()
    then = dump(FileSystem(store, 0, tid), subtree(FileSystem(store, 0, tid), b"d"))
    for i in range(0, 400, 2):
        fs.unlink(d, b"f%d" % i)
    for i in range(1, 400, 2):
        fs.write(fs.lookup(d, b"f%d" % i).obj_id, 0, b"v2")
    fs.mkdir(d, b"new", 0o755)
    store.commit()
    handed = lock_handovers(ns.lock, lambda: restore(ns, "d", tid, lock=ns.lock))
    assert handed >= 10, f"the lock went to another thread only {handed} times"
    assert dump(fs, subtree(fs, b"d")) == then


def test_an_interrupted_restore_is_finished_by_running_it_again(store, monkeypatch):
    """Each step leaves a consistent tree: a restore stopped half-way (here: an error at
    the 150th step; in a mount also a crash after the periodic commit) is completed by
    running it again."""
    ns = Namespace(store, 0)
    fs = ns.live(0)
    build_tree(fs)
    d = fs.lookup(R, b"d").obj_id
    for i in range(100):
        fs.write(fs.create(d, b"n%d" % i, 0o644).obj_id, 0, b"then %d" % i)
    tid = store.commit()
    then = dump(FileSystem(store, 0, tid), subtree(FileSystem(store, 0, tid), b"d"))
    mutate_tree(fs)
    for i in range(0, 100, 3):
        fs.unlink(subtree(fs, b"d"), b"n%d" % i)
    store.commit()
    ticks = [0]
    real_tick = steps_mod.Steps.tick

    def failing_tick(self) -> None:
        ticks[0] += 1
        if ticks[0] == 150:
            raise FsError(errno.EIO, "interrupted")
        real_tick(self)
    monkeypatch.setattr(steps_mod.Steps, "tick", failing_tick)
    with pytest.raises(FsError):
        restore(ns, "d", tid, lock=ns.lock)
    store.commit()  # what the steps did so far is a valid state
    assert dump(fs, subtree(fs, b"d")) != then
    monkeypatch.setattr(steps_mod.Steps, "tick", real_tick)
    restore(ns, "d", tid, lock=ns.lock)
    assert dump(fs, subtree(fs, b"d")) == then
