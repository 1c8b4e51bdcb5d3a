"""`hammer config`, `hammer cleanup` and `hammer prune` run as a user would: through a mount
(snapshot softlinks made and expired in the PFS's snapshots directory) and on an unmounted
volume."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
import time

import pytest
from fs_helpers import memory_mount, slurp

from conftest import run_hammer

TID = re.compile(r"0x[0-9a-f]{16}")


@pytest.fixture
def mnt(tmp_path):
    with memory_mount(tmp_path) as m:
        yield m


@pytest.fixture
def short_dir():
    path = tempfile.mkdtemp(prefix="hsnap", dir="/tmp")
    yield pathlib.Path(path)
    shutil.rmtree(path)


def test_config_and_cleanup_through_a_mount(mnt, tmp_path, short_dir):
    mp = mnt.mountpoint
    shown = run_hammer("config", mp).stdout
    assert "snapshots 1d 60d" in shown and "(the default" in shown
    bad = tmp_path / "bad.conf"
    bad.write_text("snapshots 1d 60d\nprune 1d forever\n")
    out = run_hammer("config", mp, bad, check=False)
    assert out.returncode == 1 and "line 2" in out.stderr and "Traceback" not in out.stderr
    good = tmp_path / "good.conf"
    good.write_text("snapshots 1d 1s\nprune 1d 0\nreblock 1d 5m\n")
    run_hammer("config", mp, good)
    assert run_hammer("config", mp).stdout.startswith("snapshots 1d 1s\nprune 1d 0\n")
    snapdir = short_dir  # the PFS field holds at most 63 bytes
    run_hammer("pfs-update", mp, f"snapshots={snapdir}")

    with open(f"{mp}/f", "wb") as f:
        f.write(b"first" * 1000)
    run_hammer("synctid", mp)
    with open(f"{mp}/f", "wb") as f:
        f.write(b"second" * 1000)
    out = run_hammer("cleanup", mp).stdout
    assert re.search(r"snapshots - run \(snapshot 0x", out) and "prune - run" in out
    assert "reblock - not applicable" in out and "recopy - disabled" in out
    (link,) = os.listdir(snapdir)
    target = os.readlink(snapdir / link)
    assert target.startswith(f"{mp}/@@0x") and slurp(f"{snapdir}/{link}/f") == b"second" * 1000
    skipped = run_hammer("cleanup", mp).stdout
    assert "snapshots - skip" in skipped  # same day: not due
    assert "last ran" in run_hammer("config", mp).stdout

    time.sleep(1.1)  # the first snapshot is now older than its 1 s retention
    out = run_hammer("cleanup", "-F", mp).stdout
    assert "expired 1 older than 1s" in skipped + out  # expiry runs every time
    links = os.listdir(snapdir)
    assert len(links) == 1 and os.readlink(snapdir / links[0]) != target
    assert TID.search(target).group(0) not in run_hammer("snapls", mp).stdout
    assert slurp(f"{mp}/f") == b"second" * 1000
    out = run_hammer("prune", mp).stdout
    assert out.startswith("PFS 0: destroyed ")


def test_cleanup_on_an_unmounted_volume(tmp_path):
    vol = tmp_path / "vol.img"
    run_hammer("newfs", "-L", "t", "--size", "64M", vol)
    out = run_hammer("cleanup", vol).stdout
    assert "(created the default config)" in out and "snapshots - run" in out
    assert "(the default" not in run_hammer("config", vol).stdout
    snaps = run_hammer("snapls", vol).stdout
    assert len(TID.findall(snaps)) == 1
    run_hammer("viconfig", vol, env={"EDITOR": "sed -i s/60d/30d/"})
    assert "snapshots 1d 30d" in run_hammer("config", vol).stdout
    broken = run_hammer("viconfig", vol, env={"EDITOR": "sed -i s/prune/prnue/"}, check=False)
    assert broken.returncode == 1 and "unknown directive 'prnue'" in broken.stderr
    assert "Traceback" not in broken.stderr and "prune" in run_hammer("config", vol).stdout
    missing = run_hammer("cleanup", f"{vol}:00007", check=False)
    assert missing.returncode == 1 and "PFS 7 does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cleanup_without_a_target_takes_writable_live_mounts(monkeypatch):
    from hammerfs.cli import cleanup_cmds
    from hammerfs.control import client
    from hammerfs.errors import HammerError

    mounts = [{"mountpoint": "/b", "readonly": False, "asof": None},
              {"mountpoint": "/ro", "readonly": True, "asof": None},
              {"mountpoint": "/old", "readonly": True, "asof": 5},
              {"mountpoint": "/a", "readonly": False, "asof": None}]
    monkeypatch.setattr(client, "registered_mounts", lambda: mounts)
    assert cleanup_cmds._cleanup_targets([]) == ["/a", "/b"]
    assert cleanup_cmds._cleanup_targets(["/x"]) == ["/x"]
    monkeypatch.setattr(client, "registered_mounts", lambda: mounts[1:3])
    with pytest.raises(HammerError, match="no writable hammerfs mount"):
        cleanup_cmds._cleanup_targets([])
