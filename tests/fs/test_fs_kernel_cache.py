"""What the kernel and the mount may cache, and when it must let go.

The mount lets the kernel keep names and attributes for an hour (fuse/adapter.py CACHE_TTL)
on every mount kind, answers READDIRPLUS with attributes, and invalidates exactly what
changes behind the kernel.  These tests change names and attributes in every order that
could leave a stale entry behind, and check that a mirror into a mounted slave (changes
behind the kernel) shows as soon as the mirror command returns."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time

from fs_helpers import ForkedMount, disk_store, errno_of, slurp

from conftest import hammer_env, run_hammer
from hammerfs.control import ControlClient, find_mount


def drop_kernel_caches() -> None:
    """Forget dentries and inodes, so the next walk asks the mount again."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_cached_names_follow_renames_removals_and_replacements(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: disk_store(tmp_path), mp):
        (mp / "a" / "b").mkdir(parents=True)
        (mp / "a" / "b" / "f").write_bytes(b"one")
        assert slurp(mp / "a" / "b" / "f") == b"one"
        os.rename(mp / "a", mp / "c")  # a whole cached subtree moves
        assert slurp(mp / "c" / "b" / "f") == b"one"
        assert errno_of(os.stat, mp / "a" / "b" / "f") == errno.ENOENT
        (mp / "a").mkdir()  # the old name comes back as a different directory
        assert os.listdir(mp / "a") == []
        assert errno_of(os.stat, mp / "a" / "b") == errno.ENOENT
        (mp / "a" / "b").write_bytes(b"two")  # ... and an old directory name as a file
        assert slurp(mp / "a" / "b") == b"two"
        os.rename(mp / "c" / "b" / "f", mp / "a" / "b")  # replace a cached file
        assert slurp(mp / "a" / "b") == b"one"
        assert errno_of(os.stat, mp / "c" / "b" / "f") == errno.ENOENT
        os.unlink(mp / "a" / "b")
        (mp / "a" / "b").mkdir()  # a removed file's name becomes a directory
        assert stat.S_ISDIR(os.stat(mp / "a" / "b").st_mode)
        (mp / "a" / "b" / "g").write_bytes(b"three")
        os.link(mp / "a" / "b" / "g", mp / "c" / "h")  # removing one link keeps the other
        os.unlink(mp / "a" / "b" / "g")
        assert slurp(mp / "c" / "h") == b"three"
        os.rmdir(mp / "a" / "b")
        assert errno_of(os.stat, mp / "a" / "b" / "g") == errno.ENOENT
        os.rename(mp / "c", mp / "a" / "b")  # a directory into a fresh name
        assert slurp(mp / "a" / "b" / "h") == b"three"
        assert sorted(os.listdir(mp / "a" / "b")) == ["b", "h"]


def test_readdirplus_attributes_and_our_own_writes_are_never_stale(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: disk_store(tmp_path), mp):
        want = {}
        for i in range(40):
            p = mp / "d" / f"f{i:02d}"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(os.urandom(i * 301))
            os.chmod(p, 0o600 + i % 8)
            os.utime(p, ns=(1_000_000_000 + i, 1_600_000_000_123_456_789 + i))
            st = os.stat(p)
            want[p.name] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)
        drop_kernel_caches()
        # one READDIRPLUS brings every entry's attributes; they must be the stored ones
        got = {e.name: (e.inode(), e.stat(follow_symlinks=False).st_mode,
                        e.stat(follow_symlinks=False).st_size,
                        e.stat(follow_symlinks=False).st_mtime_ns,
                        e.stat(follow_symlinks=False).st_nlink)
               for e in os.scandir(mp / "d")}
        assert got == want
        # changes through the kernel show at once, whatever the attribute timeout
        p = mp / "d" / "f07"
        with open(p, "r+b") as f:
            f.write(b"x" * 5000)
            f.flush()
            assert os.stat(p).st_size == 5000
            os.ftruncate(f.fileno(), 10)
            assert os.stat(p).st_size == 10
            os.fchmod(f.fileno(), 0o640)
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
        os.utime(p, ns=(5, 7))
        assert os.stat(p).st_mtime_ns == 7
        os.link(p, mp / "d" / "link")
        assert os.stat(mp / "d" / "link").st_nlink == 2
        assert slurp(mp / "d" / "link") == b"x" * 10
        # one kernel inode for both names
        assert os.stat(p).st_nlink == 2
        assert os.stat(p).st_ino == os.stat(mp / "d" / "link").st_ino


def test_mirror_into_a_mounted_slave_shows_when_the_mirror_returns(tmp_path):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    ma, mb, ms = tmp_path / "ma", tmp_path / "mb", tmp_path / "ms"
    for d in (ma, mb, ms):
        d.mkdir()
    for img in (a, b):
        run_hammer("newfs", "--size", "256M", img)
    run_hammer("mount", a, ma)
    try:
        (ma / "f").write_bytes(b"first version")
        (ma / "gone").write_bytes(b"deleted on the master later")
        uuid = run_hammer("pfs-status", ma).stdout.split("shared-uuid=")[1].split()[0]
        run_hammer("mount", b, mb)
        try:
            run_hammer("pfs-slave", mb / "slave", f"shared-uuid={uuid}")
            run_hammer("synctid", ma)
            run_hammer("mirror-copy", ma, mb / "slave")
        finally:
            run_hammer("umount", mb)
        run_hammer("mount", f"{b}:1", ms)  # the slave PFS itself at the mount's root
        try:
            assert slurp(ms / "f") == b"first version"  # now in the kernel's caches
            assert os.stat(ms / "gone").st_size == 27
            assert errno_of(os.stat, ms / "new") == errno.ENOENT
            (ma / "f").write_bytes(b"second, longer version")
            os.unlink(ma / "gone")
            (ma / "new").write_bytes(b"new")
            run_hammer("synctid", ma)
            run_hammer("mirror-copy", ma, ms)  # through the slave mount's control channel
            seen = (slurp(ms / "f"), errno_of(os.stat, ms / "gone"), os.path.exists(ms / "new"))
            assert seen == (b"second, longer version", errno.ENOENT, True)
            assert (ms / "new").read_bytes() == b"new"
            # the kernel keeps it all an hour: a second round is invalidated as exactly
            (ma / "f").write_bytes(b"third")
            (ma / "new").write_bytes(b"newer")
            run_hammer("synctid", ma)
            run_hammer("mirror-copy", ma, ms)
            assert (slurp(ms / "f"), slurp(ms / "new")) == (b"third", b"newer")
        finally:
            run_hammer("umount", ms)
    finally:
        run_hammer("umount", ma)


def test_a_slave_reached_through_its_pfs_link_shows_every_mirrored_change(tmp_path):
    """The README's layout: the slave PFS is a link in a mount of PFS 0, a stream feeds it,
    and nothing else talks to that mount.  The kernel keeps what it read through the link
    an hour; every sync point the stream moves must reach it."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    ma, mb = tmp_path / "ma", tmp_path / "mb"
    for d in (ma, mb):
        d.mkdir()
    for img in (a, b):
        run_hammer("newfs", "--size", "256M", img)
    run_hammer("mount", a, ma)
    stream = None
    try:
        run_hammer("mount", b, mb)
        try:
            uuid = run_hammer("pfs-status", ma).stdout.split("shared-uuid=")[1].split()[0]
            run_hammer("pfs-slave", mb / "slave", f"shared-uuid={uuid}")
            (ma / "f").write_bytes(b"first version")
            run_hammer("synctid", ma)
            run_hammer("mirror-copy", ma, mb / "slave")
            assert slurp(mb / "slave" / "f") == b"first version"  # cached: computed numbers
            (ma / "f").write_bytes(b"second, longer version")
            run_hammer("synctid", ma)
            run_hammer("mirror-copy", ma, mb / "slave")  # a control op moves the sync point
            assert slurp(mb / "slave" / "f") == b"second, longer version"
            stream = subprocess.Popen(
                [sys.executable, "-m", "hammerfs", "mirror-stream", "-q", str(ma),
                 str(mb / "slave")], stderr=subprocess.PIPE, env=hammer_env())
            for text in (b"third", b"fourth version, longest of all"):
                (ma / "f").write_bytes(text)  # only the stream tells the slave's mount
                deadline = time.monotonic() + 60
                while slurp(mb / "slave" / "f") != text:
                    assert time.monotonic() < deadline, (slurp(mb / "slave" / "f"), text)
                    time.sleep(0.1)
                assert os.stat(mb / "slave" / "f").st_size == len(text)
        finally:
            if stream is not None:
                stream.terminate()
                stream.wait(timeout=30)
            run_hammer("umount", mb)
    finally:
        run_hammer("umount", ma)


def readdir_entries(mp) -> dict:
    """How many READDIRPLUS entries the mount sent with attributes and as names only."""
    info = find_mount(str(mp))
    return ControlClient.for_mount(info).call("metrics")["fuse"]["readdir_entries"]


def test_a_warm_walk_sends_names_only_and_stays_exact(tmp_path):
    """A listing of inodes the kernel already holds carries no attributes (no inode read):
    a warm `du` or `ls -l` is served from the kernel's exact caches.  What the kernel does
    not hold (after it forgot it, or another name of a held file) still comes right."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: disk_store(tmp_path), mp):
        d = mp / "d"
        d.mkdir()
        for i in range(300):
            (d / f"f{i:03d}").write_bytes(b"x" * i)
        os.link(d / "f007", d / "hard")
        drop_kernel_caches()
        before = readdir_entries(mp)
        want = {e.name: (e.stat(follow_symlinks=False).st_ino,
                         e.stat(follow_symlinks=False).st_size) for e in os.scandir(d)}
        cold = readdir_entries(mp)
        assert cold["attributes"] - before["attributes"] >= 300
        got = {e.name: (e.stat(follow_symlinks=False).st_ino,
                        e.stat(follow_symlinks=False).st_size) for e in os.scandir(d)}
        warm = readdir_entries(mp)
        assert got == want and want["hard"] == want["f007"] == (want["f007"][0], 7)
        assert warm["attributes"] == cold["attributes"]
        assert warm["names_only"] - cold["names_only"] >= 301
        # changes through the kernel reach its caches: a names-only listing stays exact
        os.truncate(d / "f010", 5000)
        os.chmod(d / "f011", 0o600)
        st = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(d)}
        assert st["f010"].st_size == 5000 and stat.S_IMODE(st["f011"].st_mode) == 0o600
        # the kernel holds f007's inode but no longer the name "hard": looked up on use
        drop_kernel_caches()
        os.stat(d / "f007")
        names = {e.name: e for e in os.scandir(d)}
        assert names["hard"].stat(follow_symlinks=False).st_ino == want["f007"][0]
        assert os.stat(d / "hard").st_nlink == 2 and slurp(d / "hard") == b"x" * 7
