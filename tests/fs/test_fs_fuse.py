"""The real FUSE mount: POSIX behaviour seen through the kernel, history paths, and a
differential test against a plain directory."""

from __future__ import annotations

import errno
import os
import random
import stat

import pytest
from fs_helpers import ForkedMount, errno_of, slurp, store_kinds

from hammerfs.control import ControlClient, find_mount


@pytest.fixture(params=store_kinds())
def mnt(request, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    kind = request.param
    with ForkedMount(lambda: kind(tmp_path), mp) as m:
        m.kind = kind
        yield m


def synctid(path: str) -> int:
    info = find_mount(path)
    return ControlClient(info.socket_path).call("synctid")["tid"]



def test_posix_basics_through_the_kernel(mnt):
    mp = mnt.mountpoint
    os.mkdir(f"{mp}/d", 0o750)
    with open(f"{mp}/d/f", "wb") as f:
        f.write(b"hello")
    assert slurp(f"{mp}/d/f") == b"hello"
    st = os.stat(f"{mp}/d/f")
    assert st.st_size == 5 and stat.S_IMODE(os.stat(f"{mp}/d").st_mode) == 0o750
    assert os.stat(mp).st_ino == 1  # the PFS root keeps its object id as inode number
    os.utime(f"{mp}/d/f", ns=(1_000_000_001, 2_000_000_002))
    st = os.stat(f"{mp}/d/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    os.chmod(f"{mp}/d/f", 0o604)
    assert stat.S_IMODE(os.stat(f"{mp}/d/f").st_mode) == 0o604
    os.link(f"{mp}/d/f", f"{mp}/hard")
    assert os.stat(f"{mp}/hard").st_nlink == 2
    assert os.stat(f"{mp}/hard").st_ino == os.stat(f"{mp}/d/f").st_ino
    os.symlink("d/f", f"{mp}/sym")
    assert os.readlink(f"{mp}/sym") == "d/f" and slurp(f"{mp}/sym") == b"hello"
    os.mkfifo(f"{mp}/fifo")
    assert stat.S_ISFIFO(os.lstat(f"{mp}/fifo").st_mode)
    os.mknod(f"{mp}/dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    assert os.lstat(f"{mp}/dev").st_rdev == os.makedev(1, 3)
    os.setxattr(f"{mp}/d/f", "user.k", b"v")
    assert os.getxattr(f"{mp}/d/f", "user.k") == b"v"
    assert os.listxattr(f"{mp}/d/f") == ["user.k"]
    assert errno_of(os.getxattr, f"{mp}/d/f", "user.none") == errno.ENODATA
    assert errno_of(os.open, f"{mp}/{'x' * 256}", os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert errno_of(os.rmdir, f"{mp}/d") == errno.ENOTEMPTY
    # rename over an existing file and over an empty directory
    os.close(os.open(f"{mp}/other", os.O_CREAT | os.O_WRONLY))
    os.rename(f"{mp}/hard", f"{mp}/other")
    assert slurp(f"{mp}/other") == b"hello"
    os.mkdir(f"{mp}/empty")
    os.mkdir(f"{mp}/e2")
    os.rename(f"{mp}/e2", f"{mp}/empty")
    assert sorted(os.listdir(mp)) == ["d", "dev", "empty", "fifo", "other", "sym"]
    sv = os.statvfs(mp)
    assert sv.f_blocks > 0 and sv.f_bfree <= sv.f_blocks and sv.f_namemax == 255


def test_sparse_truncate_append_and_open_unlinked(mnt):
    mp = mnt.mountpoint
    fd = os.open(f"{mp}/sparse", os.O_CREAT | os.O_RDWR)
    os.pwrite(fd, b"end", 5 << 20)
    assert os.fstat(fd).st_size == (5 << 20) + 3
    assert os.pread(fd, 16, 4 << 20) == bytes(16)
    os.ftruncate(fd, 100)
    os.ftruncate(fd, 200)
    assert os.pread(fd, 300, 0) == bytes(200)
    os.close(fd)
    fd = os.open(f"{mp}/log", os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    for i in range(5):
        os.write(fd, b"line %d\n" % i)
    os.close(fd)
    assert slurp(f"{mp}/log") == b"".join(b"line %d\n" % i for i in range(5))
    with open(f"{mp}/log", "wb") as f:  # O_TRUNC: the kernel leaves truncating to open
        f.write(b"short")
    assert os.stat(f"{mp}/log").st_size == 5 and slurp(f"{mp}/log") == b"short"
    fd = os.open(f"{mp}/tmp", os.O_CREAT | os.O_RDWR)
    os.write(fd, b"unlinked but open")
    os.unlink(f"{mp}/tmp")
    assert not os.path.exists(f"{mp}/tmp")
    assert os.pread(fd, 100, 0) == b"unlinked but open"
    os.close(fd)
    assert os.listdir(mp) == ["sparse", "log"] or sorted(os.listdir(mp)) == ["log", "sparse"]


def test_large_sequential_io_round_trips(mnt):
    mp = mnt.mountpoint
    data = random.Random(1).randbytes(12 << 20)
    with open(f"{mp}/big", "wb") as f:
        for off in range(0, len(data), 1 << 20):
            f.write(data[off:off + (1 << 20)])
        f.flush()
        os.fsync(f.fileno())
    with open(f"{mp}/big", "rb") as f:
        assert f.read() == data


def test_history_paths_show_every_generation(mnt):
    """After many generations of changes every recorded TID shows exactly its tree."""
    mp = mnt.mountpoint
    rng = random.Random(7)
    copies = []
    for gen in range(6):
        for _ in range(4):
            name = f"f{rng.randrange(5)}"
            if rng.random() < 0.2 and os.path.exists(f"{mp}/{name}"):
                os.unlink(f"{mp}/{name}")
            else:
                with open(f"{mp}/{name}", "ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 70000)))
        if gen == 3:
            os.mkdir(f"{mp}/sub")
            with open(f"{mp}/sub/inner", "wb") as f:
                f.write(b"gen3")
        copies.append((synctid(mp), tree(mp)))
    for tid, expected in copies:
        assert tree(f"{mp}/@@0x{tid:016x}") == expected
        for name, data in expected.items():
            if "/" not in name:
                assert slurp(f"{mp}/{name}@@0x{tid:016x}") == data
    assert errno_of(os.open, f"{mp}/@@0x{copies[0][0]:016x}/new",
                    os.O_CREAT | os.O_WRONLY) == errno.EROFS


def tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = slurp(path)
    return out


# -- differential test -------------------------------------------------------------------------
NAMES = ["a", "b", "c", "dd", "e e", "f.txt"]


class Differ:
    """Applies the same random POSIX operation to two roots and compares the outcome."""

    def __init__(self, mnt: str, ref: str, seed: int):
        self.roots = (mnt, ref)
        self.rng = random.Random(seed)

    def existing(self) -> list[str]:
        out = []
        for dirpath, dirs, files in os.walk(self.roots[1]):
            rel = os.path.relpath(dirpath, self.roots[1])
            for n in dirs + files:
                out.append(n if rel == "." else f"{rel}/{n}")
        return out

    def pick(self, new_ok: bool = True) -> str:
        have = self.existing()
        dirs = [p for p in have if os.path.isdir(os.path.join(self.roots[1], p))
                and not os.path.islink(os.path.join(self.roots[1], p))]
        if have and (not new_ok or self.rng.random() < 0.6):
            return self.rng.choice(have)
        parent = self.rng.choice(dirs + [""] * 2)
        name = self.rng.choice(NAMES)
        return f"{parent}/{name}" if parent else name

    def pick_file(self) -> str:
        """Mostly an existing regular file (so data ops do work), sometimes anything."""
        ref = self.roots[1]
        files = [p for p in self.existing() if os.path.isfile(os.path.join(ref, p))
                 and not os.path.islink(os.path.join(ref, p))]
        if files and self.rng.random() < 0.85:
            return self.rng.choice(files)
        return self.pick()

    def both(self, func, *rels, **kw):
        results = []
        for root in self.roots:
            paths = [os.path.join(root, r) for r in rels]
            try:
                results.append(("ok", func(*paths, **kw)))
            except OSError as exc:
                results.append(("err", exc.errno))
        return results

    def step(self) -> tuple:
        r = self.rng
        op = r.choice(["create", "write", "write", "truncate", "rename", "link", "unlink",
                       "mkdir", "rmdir", "symlink", "chmod", "utime", "setxattr",
                       "removexattr", "append"])
        a = self.pick_file() if op in ("write", "append", "truncate", "link", "unlink",
                                          "setxattr") else self.pick()
        if op in ("create", "write", "append"):
            off = r.choice([0, r.randrange(200000)])
            data = r.randbytes(r.choice([1, 100, 5000, 70000]))
            flags = os.O_WRONLY | (os.O_CREAT if op == "create" else 0)
            flags |= os.O_APPEND if op == "append" else 0
            flags |= os.O_TRUNC if op == "create" and r.random() < 0.5 else 0
            res = self.both(_write, a, flags=flags, off=off, data=data)
        elif op == "truncate":
            res = self.both(os.truncate, a, length=r.randrange(150000))
        elif op == "rename":
            res = self.both(os.rename, a, self.pick())
        elif op == "link":
            res = self.both(os.link, a, self.pick())
        elif op == "unlink":
            res = self.both(os.unlink, a)
        elif op == "mkdir":
            res = self.both(os.mkdir, a)
        elif op == "rmdir":
            res = self.both(os.rmdir, a)
        elif op == "symlink":
            target = r.choice(["a", "../b", "/nonexistent", "dd/x"])
            res = [self._symlink(target, root, a) for root in self.roots]
        elif op == "chmod":
            res = self.both(_lchmod, a, mode=r.choice([0o600, 0o644, 0o755, 0o700]))
        elif op == "utime":
            t = r.randrange(1 << 40) * 1000 + r.randrange(1000)
            res = self.both(os.utime, a, ns=(t, t + 17), follow_symlinks=False)
        elif op == "setxattr":
            res = self.both(_setxattr, a, name=f"user.{r.choice('xyz')}", value=r.randbytes(9))
        else:
            res = self.both(_removexattr, a, name=f"user.{r.choice('xyz')}")
        return op, a, res

    @staticmethod
    def _symlink(target, root, rel):
        try:
            os.symlink(target, os.path.join(root, rel))
            return ("ok", None)
        except OSError as exc:
            return ("err", exc.errno)


def _write(path, *, flags, off, data):
    fd = os.open(path, flags, 0o644)
    try:
        if flags & os.O_APPEND:
            return os.write(fd, data)
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def _lchmod(path, *, mode):
    if os.path.islink(path):
        return None
    return os.chmod(path, mode)


def _setxattr(path, *, name, value):
    if os.path.islink(path):
        return None
    return os.setxattr(path, name, value)


def _removexattr(path, *, name):
    if os.path.islink(path):
        return None
    return os.removexattr(path, name)


def snapshot_tree(root: str) -> dict:
    """Everything a user can observe, except times the two filesystems set themselves."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = {"mode": st.st_mode}
            if stat.S_ISREG(st.st_mode):
                entry.update(size=st.st_size, nlink=st.st_nlink,
                             data=slurp(path), mtime=st.st_mtime_ns)
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            else:
                entry["xattrs"] = {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
            out[rel] = entry
    return out


def settle_times(root: str) -> None:
    """Give every regular file the same (odd-ns) mtime in both trees so times compare."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.utime(path, ns=(1_234_567_890_123_456_789, 1_111_111_111_222_222_333))


def test_differential_random_operations(mnt, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    differ = Differ(mnt.mountpoint, str(ref), seed=20261127)
    for i in range(300):
        op, path, (got, want) = differ.step()
        assert got == want, f"op {i} {op} {path}: mount {got} vs reference {want}"
    settle_times(mnt.mountpoint)
    settle_times(str(ref))
    expected = snapshot_tree(str(ref))
    assert snapshot_tree(mnt.mountpoint) == expected


def test_pfs_softlinks_walk_into_master_and_slave(tmp_path):
    """PFS links (@@-1:NNNNN for a master, @@0x<sync_end_tid>:NNNNN for a slave) are walked
    by the kernel into the PFS; a slave shows its data as of sync_end_tid, read-only."""
    from hammerfs.fs import FileSystem, init_pfs_root
    from hammerfs.store.pfs import PFS_SLAVE, PfsData

    def make_store():
        from fs_helpers import memory_store
        store = memory_store(tmp_path)
        init_pfs_root(store, 0)
        for pfs in (1, 2):
            store.put_pfs(pfs, PfsData(label=f"p{pfs}"))
            init_pfs_root(store, pfs)
            FileSystem(store, pfs).write(FileSystem(store, pfs).create(1, b"f", 0o644).obj_id,
                                         0, b"synced")
        sync = store.commit()
        slave = FileSystem(store, 2)
        slave.write(slave.lookup(1, b"f").obj_id, 0, b"partial")  # after the sync point
        store.put_pfs(2, store.get_pfs(2).evolve(mirror_flags=PFS_SLAVE, sync_end_tid=sync))
        store.commit()
        return store

    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(make_store, mp):
        os.symlink("@@-1:00001", f"{mp}/master")
        os.symlink("@@-1:00002", f"{mp}/slave")
        assert os.readlink(f"{mp}/master") == "@@-1:00001"
        assert os.readlink(f"{mp}/slave").startswith("@@0x")
        assert slurp(f"{mp}/master/f") == b"synced"
        with open(f"{mp}/master/new", "wb") as f:
            f.write(b"in pfs 1")
        assert slurp(f"{mp}/@@-1:00001/new") == b"in pfs 1"
        assert slurp(f"{mp}/slave/f") == b"synced"  # not the unsynced write
        assert errno_of(os.open, f"{mp}/slave/x", os.O_CREAT | os.O_WRONLY) == errno.EROFS
        assert errno_of(os.rename, f"{mp}/master/new", f"{mp}/moved") == errno.EXDEV
