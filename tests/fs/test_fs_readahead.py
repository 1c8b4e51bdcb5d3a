"""The mount raises the kernel's readahead for itself (sequential readers then send 1 MiB
reads, several at once, instead of 128 KiB ones): set at the first request after INIT,
through sysfs, which only root may write."""

from __future__ import annotations

import os

import pytest
from fs_helpers import ForkedMount, memory_store

from hammerfs.fuse import adapter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sysfs read_ahead_kb is root's")


def bdi_readahead(path) -> int:
    dev = os.stat(path).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        return int(f.read())


@pytest.mark.parametrize("env, expected", [(None, adapter.READAHEAD_KB), ("1024", 1024),
                                           ("0", None)])
def test_mount_sets_its_readahead(tmp_path, monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("HAMMERFS_READAHEAD_KB", raising=False)
    else:
        monkeypatch.setenv("HAMMERFS_READAHEAD_KB", env)
    mp = tmp_path / "mnt dir"  # mountinfo escapes the space: found all the same
    mp.mkdir()
    data = os.urandom(3 << 20)
    with ForkedMount(lambda: memory_store(tmp_path), mp):
        (mp / "f").write_bytes(data)
        got = bdi_readahead(mp)
        if expected is None:  # left alone: whatever the kernel agreed at INIT
            assert got != adapter.READAHEAD_KB
        else:
            assert got == expected
        assert (mp / "f").read_bytes() == data


def test_readahead_setting_parses_only_numbers(monkeypatch):
    for value, kib in (("2048", 2048), ("0", 0), ("lots", adapter.READAHEAD_KB),
                       ("-5", adapter.READAHEAD_KB), ("", adapter.READAHEAD_KB)):
        monkeypatch.setenv("HAMMERFS_READAHEAD_KB", value)
        assert adapter.readahead_kb() == kib
