"""The history commands run as a user would, against a mounted filesystem (through the
mount's control channel)."""

from __future__ import annotations

import os
import re
import stat

import pytest
from fs_helpers import memory_mount, slurp

from conftest import run_hammer

TID = re.compile(r"0x[0-9a-f]{16}")


@pytest.fixture
def mnt(tmp_path):
    with memory_mount(tmp_path) as m:
        yield m


def test_synctid_history_and_undo(mnt, tmp_path):
    mp = mnt.mountpoint
    path = f"{mp}/file.txt"
    with open(path, "w") as f:
        f.write("one\ntwo\n")
    os.setxattr(path, "user.tag", b"first")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_002))
    t1 = run_hammer("synctid", mp).stdout.strip()
    assert TID.fullmatch(t1)
    with open(path, "w") as f:
        f.write("one\nTWO\nthree\n")
    os.setxattr(path, "user.tag", b"second")
    os.chmod(path, 0o600)
    t2 = run_hammer("synctid", path).stdout.strip()
    assert int(t2, 16) > int(t1, 16)

    hist = run_hammer("history", path).stdout
    tids = TID.findall(hist.split("\n", 1)[1])
    assert t1 in tids and t2 in tids and tids == sorted(tids)
    assert "(current)" in hist.splitlines()[-1]

    assert run_hammer("undo", "-t", t1, path).stdout == "one\ntwo\n"
    assert run_hammer("undo", path).stdout == "one\ntwo\n"  # default: the previous version
    diff = run_hammer("undo", "-d", "-t", t1, path).stdout
    assert "-two\n" in diff and "+TWO\n" in diff and "+three\n" in diff
    listing = run_hammer("undo", "-i", path).stdout
    assert t1 in listing and t2 in listing
    out = tmp_path / "copy"
    run_hammer("undo", "-t", t1, "-o", str(out), path)
    assert out.read_bytes() == b"one\ntwo\n"

    run_hammer("undo", "-r", "-t", t1, path)  # restore exact bytes and metadata
    st = os.stat(path)
    assert slurp(path, "r") == "one\ntwo\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_500_000_000_000_000_002
    assert os.getxattr(path, "user.tag") == b"first"

    os.unlink(path)  # a deleted file comes back under its name
    run_hammer("undo", "-r", "-t", t2, path)
    assert slurp(path, "r") == "one\nTWO\nthree\n"
    assert os.getxattr(path, "user.tag") == b"second"

    bad = run_hammer("history", f"{mp}/missing", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_snapshots(mnt):
    mp = mnt.mountpoint
    os.mkdir(f"{mp}/snaps")
    with open(f"{mp}/data", "wb") as f:
        f.write(b"before")
    out = run_hammer("snapshot", mp, f"{mp}/snaps", "nightly").stdout
    link = out.split(" -> ")[0]
    assert os.path.basename(link).startswith("snap-")
    tid = TID.search(out).group(0)
    assert os.readlink(link) == f"{mp}/@@{tid}"
    with open(f"{mp}/data", "wb") as f:
        f.write(b"after!")
    assert slurp(f"{link}/data") == b"before"  # the link shows the old tree
    ls = run_hammer("snapls", mp).stdout
    assert tid in ls and "nightly" in ls
    run_hammer("snaprm", link)
    assert not os.path.lexists(link)
    assert tid not in run_hammer("snapls", mp).stdout
    t2 = TID.search(run_hammer("snapshot", mp, f"{mp}/snaps").stdout).group(0)
    run_hammer("snaprm", mp, t2)
    assert t2 not in run_hammer("snapls", mp).stdout
    bad = run_hammer("snaprm", mp, t2, check=False)
    assert bad.returncode == 1 and "no snapshot" in bad.stderr


# -- undo -r of whole directories ----------------------------------------------------------------
def tree_state(root: str) -> dict:
    """What undo -r restores, of every entry under ``root`` (a real directory tree)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                     "mtime": st.st_mtime_ns,
                     "xattrs": {} if stat.S_ISLNK(st.st_mode) else
                     {x: os.getxattr(path, x) for x in os.listxattr(path)}}
            if stat.S_ISREG(st.st_mode):
                entry["data"], entry["nlink"] = slurp(path), st.st_nlink
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            out.setdefault(rel, entry)
    return out


def make_tree(top: str) -> None:
    os.makedirs(f"{top}/sub/deep")
    with open(f"{top}/f", "wb") as f:
        f.write(b"data " * 5000)
    with open(f"{top}/sub/sparse", "wb") as f:
        f.seek(300_000)
        f.write(b"end")
    os.symlink("sub/sparse", f"{top}/link")
    os.mkfifo(f"{top}/sub/deep/fifo", 0o640)
    os.setxattr(f"{top}/f", "user.tag", b"one")
    os.setxattr(f"{top}/sub", "user.dir", b"yes")
    os.chmod(f"{top}/sub/sparse", 0o600)
    os.chown(f"{top}/f", 1234, 5678)
    os.utime(f"{top}/f", ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789))
    # the link after f's attributes: the kernel caches a second inode for a hard link's path
    os.link(f"{top}/f", f"{top}/sub/f-hard")
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):  # children first
        for name in [*filenames, *dirnames, ""]:
            os.utime(os.path.join(dirpath, name) if name else dirpath, follow_symlinks=False,
                     ns=(1_500_000_000_000_000_000, 1_500_000_000_123_456_789 + len(name)))


def wreck_tree(top: str) -> None:
    with open(f"{top}/f", "r+b") as f:
        f.write(b"OVERWRITTEN")
    os.setxattr(f"{top}/f", "user.tag", b"two")
    os.unlink(f"{top}/sub/f-hard")
    os.unlink(f"{top}/sub/deep/fifo")
    os.rmdir(f"{top}/sub/deep")
    os.unlink(f"{top}/link")
    os.symlink("elsewhere", f"{top}/link")
    os.makedirs(f"{top}/new/nested")
    with open(f"{top}/new/nested/file", "wb") as f:
        f.write(b"created after the TID")
    os.chmod(top, 0o700)


def test_undo_restores_a_directory_tree_through_the_mount(mnt, tmp_path):
    mp = mnt.mountpoint
    make_tree(f"{mp}/d")
    tid = run_hammer("synctid", mp).stdout.strip()
    # The copy kept at the TID is built the same way on a plain filesystem.
    make_tree(str(tmp_path / "copy"))
    then = tree_state(str(tmp_path / "copy"))
    wreck_tree(f"{mp}/d")
    assert tree_state(f"{mp}/d") != then
    out = run_hammer("undo", "-r", "-t", tid, f"{mp}/d").stdout
    assert f"restored the version as of {tid}" in out and "removed" in out
    assert tree_state(f"{mp}/d") == then
    assert os.stat(f"{mp}/d/f").st_ino == os.stat(f"{mp}/d/sub/f-hard").st_ino


def test_undo_restores_a_directory_on_an_unmounted_volume(tmp_path):
    vol, mp = tmp_path / "vol.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "-L", "t", "--size", "64M", vol)
    run_hammer("mount", vol, mp)
    try:
        make_tree(f"{mp}/d")
        tid = run_hammer("synctid", mp).stdout.strip()
        make_tree(str(tmp_path / "copy"))
        wreck_tree(f"{mp}/d")
    finally:
        run_hammer("umount", mp)
    run_hammer("undo", "-r", "-t", tid, f"{vol}:0", "--path", "d")
    run_hammer("mount", "-o", "ro", vol, mp)
    try:
        assert tree_state(f"{mp}/d") == tree_state(str(tmp_path / "copy"))
    finally:
        run_hammer("umount", mp)
    bad = run_hammer("undo", "-r", "-t", tid, str(vol), "--path", "nowhere/x", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_changing_ops_refuse_a_path_that_names_a_history_view(mnt):
    """prune-everything MNT/@@0x<tid> used to destroy the live PFS's history (issue 11.10):
    every op that changes the PFS refuses history paths the way snapshot does."""
    mp = mnt.mountpoint
    os.mkdir(f"{mp}/snaps")
    with open(f"{mp}/f", "w") as f:
        f.write("old")
    tid = run_hammer("synctid", mp).stdout.strip()
    with open(f"{mp}/f", "w") as f:
        f.write("new")
    run_hammer("synctid", mp)
    link = run_hammer("snapshot", mp, f"{mp}/snaps").stdout.split(" -> ")[0]
    snaps = run_hammer("snapls", mp).stdout
    for path in (f"{mp}/@@{tid}", f"{mp}/f@@{tid}", link, f"{link}/f"):
        for cmd in (["prune-everything", path], ["prune", path], ["cleanup", "-F", path],
                    ["snapshot", path], ["config", path, "/dev/null"]):
            res = run_hammer(*cmd, check=False)
            assert res.returncode == 1, (cmd, res.stdout)
            assert "history view" in res.stderr and "Traceback" not in res.stderr, cmd
    assert slurp(f"{mp}/f@@{tid}") == b"old"  # nothing was pruned
    assert run_hammer("snapls", mp).stdout == snaps
    assert run_hammer("snapls", f"{mp}/@@{tid}").returncode == 0  # reading is fine
    run_hammer("prune-everything", mp)  # the live path still works
    assert not os.path.exists(f"{mp}/f@@{tid}")


def test_undo_through_a_mount_reports_errors_and_exits_non_zero(mnt, tmp_path):
    """`hammer undo DIR` printed the control channel's raw JSON error and exited 0, and -u
    saved that JSON as the undo file (issue 11.9)."""
    mp = mnt.mountpoint
    os.mkdir(f"{mp}/d")
    with open(f"{mp}/d/f", "w") as f:
        f.write("x")
    tid = run_hammer("synctid", mp).stdout.strip()
    with open(f"{mp}/d/g", "w") as f:
        f.write("y")
    run_hammer("synctid", mp)
    for extra in ([], ["-u"], ["-o", str(tmp_path / "out")], ["-t", tid], ["-d", "-t", tid]):
        res = run_hammer("undo", *extra, f"{mp}/d", check=False)
        assert res.returncode == 1, (extra, res.stdout)
        assert res.stderr == "hammer: only regular files and symlinks have contents\n", extra
        assert "{" not in res.stdout, extra
    assert not os.path.exists(tmp_path / "out")
    assert [n for n in os.listdir(mp) if ".undo." in n] == []
    assert run_hammer("undo", "-t", tid, f"{mp}/d/f").stdout == "x"  # data still flows


def test_nohistory_and_history_interval_commands(mnt):
    mp = mnt.mountpoint
    os.mkdir(f"{mp}/scratch")
    assert run_hammer("nohistory", f"{mp}/scratch").stdout.endswith("nohistory off\n")
    assert run_hammer("nohistory", f"{mp}/scratch", "on").stdout.endswith("nohistory on\n")
    with open(f"{mp}/scratch/tmp.db", "w") as f:  # created inside: inherits the flag
        f.write("v1")
    run_hammer("synctid", mp)
    with open(f"{mp}/scratch/tmp.db", "w") as f:
        f.write("v2")
    run_hammer("synctid", mp)
    hist = run_hammer("history", f"{mp}/scratch/tmp.db").stdout
    assert "\tnohistory" in hist.splitlines()[0]
    assert len(TID.findall(hist.split("\n", 1)[1])) == 1  # only the current version
    assert run_hammer("nohistory", f"{mp}/scratch", "off").stdout.endswith("nohistory off\n")

    assert "history interval 0 s (every commit)" in run_hammer("history-interval", mp).stdout
    out = run_hammer("history-interval", mp, "2m").stdout
    assert "history interval 120 s (one version per 120 s)" in out
    assert "120 s" in run_hammer("history-interval", f"{mp}/scratch").stdout
    bad = run_hammer("history-interval", mp, "soon", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    run_hammer("history-interval", mp, "0")
    assert "(every commit)" in run_hammer("history-interval", mp).stdout
