"""Hard links through the mount: one kernel inode per file, however many names, so every
change through one name (link count, mode, owner, times, size) shows through the others at
once, including in the kernel's permission checks for other users."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile

from fs_helpers import ForkedMount, disk_store, memory_store
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.fuse.inodes import (
    OBJ_MASK,
    ROOT_INODE,
    SYNTHETIC,
    direct_ino,
    split_direct,
)


def test_other_names_show_link_count_and_cp_keeps_links(tmp_path):
    mp = tmp_path / "m"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp):
        for i in range(8):  # the lag was a race against the attribute time: try repeatedly
            d = mp / f"d{i}"
            d.mkdir()
            (d / "a").write_bytes(b"data %d" % i)
            assert os.stat(d / "a").st_nlink == 1  # cached by the kernel from here on
            os.link(d / "a", d / "b")
            assert os.stat(d / "a").st_nlink == 2
            out = tmp_path / f"out{i}"
            out.mkdir()
            # named files, no readdir (whose READDIRPLUS would refresh the attributes)
            subprocess.run(["cp", "-a", str(d / "a"), str(d / "b"), str(out)], check=True)
            assert os.stat(out / "a").st_ino == os.stat(out / "b").st_ino
            os.link(d / "b", d / "c")
            assert [os.stat(d / n).st_nlink for n in "abc"] == [3, 3, 3]
            os.unlink(d / "a")
            assert [os.stat(d / n).st_nlink for n in "bc"] == [2, 2]
            (d / "x").write_bytes(b"other")
            os.rename(d / "x", d / "c")  # replaces one name of the linked file
            assert os.stat(d / "b").st_nlink == 1
            os.stat(d / "c")
            with open(d / "b", "ab") as f:  # written through one name, seen through the other
                f.write(b"more")
            os.link(d / "b", d / "w")
            os.stat(d / "w")
            with open(d / "b", "ab") as f:
                f.write(b"again")
            assert os.stat(d / "w").st_size == os.stat(d / "b").st_size
            os.unlink(d / "w")
            os.link(d / "b", d / "y")
            os.rename(d / "y", d / "z")  # a moved name stays known
            os.unlink(d / "b")
            assert os.stat(d / "z").st_nlink == 1


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *argv], capture_output=True, text=True)


def test_attribute_changes_through_one_name_show_through_every_name_at_once(tmp_path):
    """chmod/chown/utimens/truncate of ``a`` are what ``b`` shows right away, and another
    user's access through ``b`` is refused at once (the path-addressed adapter gave each
    name its own kernel inode: ``b`` kept the old mode for up to a second)."""
    top = tempfile.mkdtemp(prefix="hammerfs-links-", dir="/tmp")  # walkable by nobody
    os.chmod(top, 0o755)
    try:
        mp = pathlib.Path(top) / "m"
        mp.mkdir()
        with ForkedMount(lambda: disk_store(tmp_path), mp):
            os.chmod(mp, 0o755)
            a, b = mp / "a", mp / "b"
            a.write_bytes(b"secret data")
            os.chmod(a, 0o644)
            os.link(a, b)
            assert as_nobody("cat", str(b)).stdout == "secret data"  # b's attributes now cached
            os.chmod(a, 0o600)
            assert stat.S_IMODE(os.stat(b).st_mode) == 0o600
            denied = as_nobody("cat", str(b))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
            os.chown(a, 65534, 65534)
            assert (os.stat(b).st_uid, os.stat(b).st_gid) == (65534, 65534)
            assert as_nobody("cat", str(b)).stdout == "secret data"
            os.utime(a, ns=(1_000_000_007, 2_000_000_009))
            assert os.stat(b).st_mtime_ns == 2_000_000_009
            os.truncate(a, 6)
            assert os.stat(b).st_size == 6 and b.read_bytes() == b"secret"
            assert os.stat(a).st_ino == os.stat(b).st_ino
            os.unlink(a)
            assert os.stat(b).st_nlink == 1
    finally:
        shutil.rmtree(top, ignore_errors=True)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0x7FFF), st.integers(1, OBJ_MASK), st.integers(0, 0x7FFF))
def test_inode_numbers_are_a_bijection_with_the_root_at_one(pfs, obj, root_pfs):
    ino = direct_ino(pfs, obj, root_pfs)
    assert ino is not None and 0 < ino < SYNTHETIC
    assert split_direct(ino, root_pfs) == (pfs, obj)
    assert (ino == ROOT_INODE) == ((pfs, obj) == (root_pfs, 1))
    assert direct_ino(pfs, OBJ_MASK + 1, root_pfs) is None
    assert direct_ino(0x8000, obj, root_pfs) is None


def test_unknown_inode_numbers_are_refused(tmp_path):
    from hammerfs.fs.namespace import Namespace
    from hammerfs.fuse.inodes import InodeTable
    from hammerfs.store.memory import MemoryStore
    table = InodeTable(Namespace(MemoryStore(label="t")))
    try:
        table.resolve(SYNTHETIC | 12345)
    except OSError as exc:
        assert exc.errno == errno.ESTALE
    else:
        raise AssertionError("a synthetic number nobody handed out resolved")
