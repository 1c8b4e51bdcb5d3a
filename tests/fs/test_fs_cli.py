"""The history commands run as a user would, against a mounted filesystem (through the
mount's control channel)."""

from __future__ import annotations

import os
import re
import stat

import pytest
from fs_helpers import ForkedMount, memory_store, slurp

from conftest import run_hammer

TID = re.compile(r"0x[0-9a-f]{16}")


@pytest.fixture
def mnt(tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: memory_store(tmp_path), mp) as m:
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
