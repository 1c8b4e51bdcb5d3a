"""POSIX answers through the kernel that the path-addressed adapter got wrong: open unlinked
files, POSIX ACL xattrs (cp -a), ``..`` in listings, symlink sizes, st_blocks of sparse files,
and NFS file handles that outlive a remount."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
import tempfile

from fs_helpers import ForkedMount, disk_store, errno_of, memory_store, slurp

from conftest import run_hammer


def test_open_unlinked_file_works_as_on_ext4(tmp_path):
    """``tempfile.TemporaryFile`` (create, unlink, then use by descriptor): fstat, fchmod,
    ftruncate, write and read all work after the last name is gone."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: disk_store(tmp_path), mp):
        with tempfile.TemporaryFile(dir=mp) as f:
            f.write(b"x" * 100_000)
            f.flush()
            fd = f.fileno()
            st = os.fstat(fd)
            assert (st.st_size, st.st_nlink) == (100_000, 0)
            os.fchmod(fd, 0o604)
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o604
            os.ftruncate(fd, 10)
            assert os.fstat(fd).st_size == 10
            os.utime(fd, ns=(5, 6))
            assert os.fstat(fd).st_mtime_ns == 6
            f.seek(0)
            assert f.read() == b"x" * 10
        assert os.listdir(mp) == []
        # the same by hand, with a second descriptor of the file open meanwhile
        p = mp / "tmp"
        p.write_bytes(b"abc")
        fd = os.open(p, os.O_RDWR)
        try:
            os.unlink(p)
            os.write(fd, b"ABCDEF")
            assert os.fstat(fd).st_size == 6
            assert os.pread(fd, 10, 0) == b"ABCDEF"
        finally:
            os.close(fd)


def test_posix_acls_are_refused_so_cp_a_keeps_modes(tmp_path):
    """cp -a sets a copy's mode through system.posix_acl_access when the filesystem takes
    it; stored as a plain xattr the mode stayed 0600/0700.  Refused (EOPNOTSUPP), cp falls
    back to chmod, on a master and on what is mirrored from it."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp):
        src = mp / "src"
        (src / "sub").mkdir(parents=True)
        modes = {"src/a": 0o644, "src/b": 0o755, "src/sub/c": 0o640}
        for name, mode in modes.items():
            (mp / name).write_bytes(name.encode())
            os.chmod(mp / name, mode)
        os.chmod(src / "sub", 0o751)
        os.chmod(src, 0o755)
        assert errno_of(os.setxattr, mp / "src/a", "system.posix_acl_access",
                        b"\x02\x00\x00\x00") == errno.EOPNOTSUPP
        assert errno_of(os.getxattr, mp / "src/a", "system.posix_acl_access") == \
            errno.EOPNOTSUPP
        subprocess.run(["cp", "-a", str(src), str(mp / "dst")], check=True)
        for name, mode in modes.items():
            copy = mp / name.replace("src", "dst", 1)
            assert stat.S_IMODE(os.stat(copy).st_mode) == mode, name
        assert stat.S_IMODE(os.stat(mp / "dst" / "sub").st_mode) == 0o751
        assert stat.S_IMODE(os.stat(mp / "dst").st_mode) == 0o755
        os.setxattr(mp / "src/a", "user.kept", b"yes")  # other xattrs still work
        assert os.getxattr(mp / "src/a", "user.kept") == b"yes"


def test_listing_shows_dot_dot_and_symlink_sizes_are_exact(tmp_path):
    from hammerfs.fs import FileSystem, init_pfs_root
    from hammerfs.store.pfs import PFS_SLAVE, PfsData

    def make_store():
        store = memory_store(tmp_path)
        init_pfs_root(store, 0)
        store.put_pfs(2, PfsData(label="p2"))
        init_pfs_root(store, 2)
        FileSystem(store, 2).create(1, b"f", 0o644)
        sync = store.commit()
        store.put_pfs(2, store.get_pfs(2).evolve(mirror_flags=PFS_SLAVE, sync_end_tid=sync))
        store.commit()
        return store

    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(make_store, mp):
        (mp / "d").mkdir()
        listing = subprocess.run(["ls", "-a", str(mp / "d")], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert listing == [".", ".."]
        os.symlink("some/target/name", mp / "plain")
        os.symlink("@@-1:00002", mp / "slave")  # a PFS link: readlink reports the sync point
        for name in ("plain", "slave"):
            target = os.readlink(mp / name)
            assert os.lstat(mp / name).st_size == len(target), (name, target)
        assert os.readlink(mp / "slave").startswith("@@0x")


def test_st_blocks_count_allocated_space_not_the_size(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: disk_store(tmp_path), mp):
        p = mp / "sparse"
        with open(p, "wb") as f:
            f.truncate(1 << 40)  # 1 TiB of hole
        st = os.stat(p)
        assert st.st_size == 1 << 40 and st.st_blocks == 0
        with open(p, "r+b") as f:
            f.seek(1 << 30)
            f.write(b"y" * 4096)
        assert 0 < os.stat(p).st_blocks * 512 <= 128 << 10
        du = subprocess.run(["du", "-k", str(p)], capture_output=True, text=True, check=True)
        assert int(du.stdout.split()[0]) <= 128
        dense = mp / "dense"
        dense.write_bytes(os.urandom(1 << 20))
        assert os.stat(dense).st_blocks * 512 == 1 << 20
        small = mp / "small"
        small.write_bytes(b"z" * 5000)
        assert os.stat(small).st_blocks == (5000 + 511) // 512


# -- NFS: file handles across a remount ------------------------------------------------------------
class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def name_to_handle(path: str) -> FileHandle:
    fh = FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh),
                               ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fh


def open_by_handle(mount_fd: int, fh: FileHandle) -> int:
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_RDONLY)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


@contextlib.contextmanager
def nfs_mount(tmp_path):
    """A fresh volume mounted with export support: (volume, mount point, remount())."""
    vol, mp = tmp_path / "v.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "--size", "128M", vol)
    run_hammer("mount", "-o", "nfs", vol, mp)

    def remount() -> None:
        run_hammer("umount", mp)
        run_hammer("mount", "-o", "nfs", vol, mp)
    try:
        yield mp, remount
    finally:
        run_hammer("umount", mp, check=False)


def test_nfs_file_handles_stay_valid_across_remount(tmp_path):
    """What an NFS server keeps (the kernel's file handle: inode number and generation)
    opens the same file after unmount and mount; a removed file's handle is stale even
    when its object id could come back."""
    with nfs_mount(tmp_path) as (mp, remount):
        (mp / "d").mkdir()
        (mp / "d" / "f").write_bytes(b"kept across remounts")
        (mp / "gone").write_bytes(b"removed")
        handles = {name: name_to_handle(str(mp / name)) for name in ("d", "d/f", "gone")}
        remount()
        os.unlink(mp / "gone")
        mount_fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = open_by_handle(mount_fd, handles["d/f"])
            try:
                assert os.read(fd, 100) == b"kept across remounts"
            finally:
                os.close(fd)
            fd = open_by_handle(mount_fd, handles["d"])
            try:
                assert os.fstat(fd).st_ino == os.stat(mp / "d").st_ino
            finally:
                os.close(fd)
            assert errno_of(open_by_handle, mount_fd, handles["gone"]) == errno.ESTALE
        finally:
            os.close(mount_fd)
        assert slurp(mp / "d" / "f") == b"kept across remounts"


def read_by_handle(mp, fh: FileHandle) -> bytes:
    mount_fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_by_handle(mount_fd, fh)
    finally:
        os.close(mount_fd)
    try:
        return os.read(fd, 1000)
    finally:
        os.close(fd)


def test_nfs_handles_of_history_views_stay_valid_across_remount(tmp_path):
    """A handle of ``f@@0x<tid>`` (and of a file below ``d@@0x<tid>``) opens that version
    after unmount and mount, also after other views were opened in between; the volume
    keeps which view a number names."""
    with nfs_mount(tmp_path) as (mp, remount):
        (mp / "d").mkdir()
        (mp / "d" / "f").write_bytes(b"first version")
        t1 = run_hammer("synctid", mp).stdout.strip()
        (mp / "d" / "f").write_bytes(b"second version")
        t2 = run_hammer("synctid", mp).stdout.strip()
        (mp / "d" / "f").write_bytes(b"live")
        old = {t: name_to_handle(str(mp / "d" / f"f@@{t}")) for t in (t1, t2)}
        below = name_to_handle(str(mp / f"d@@{t1}" / "f"))
        assert read_by_handle(mp, old[t1]) == b"first version"
        remount()
        assert slurp(mp / "d" / f"f@@{t2}") == b"second version"  # another order of views
        assert read_by_handle(mp, old[t1]) == b"first version"
        assert read_by_handle(mp, below) == b"first version"
        remount()
        assert read_by_handle(mp, old[t2]) == b"second version"
        assert slurp(mp / "d" / "f") == b"live"
