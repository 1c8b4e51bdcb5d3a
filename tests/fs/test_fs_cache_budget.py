"""The mount's cache budget (HAMMERFS_CACHE_MB): parsed once, sizes the store's node cache
and the views' inode caches, refuses nonsense with a clear error."""

from __future__ import annotations

import pytest

from hammerfs.errors import HammerError
from hammerfs.fs import filesystem
from hammerfs.fuse import mount
from hammerfs.store import btree


@pytest.fixture
def restore_caches():
    saved = btree.CACHE_NODES, filesystem.INODE_CACHE
    yield
    btree.CACHE_NODES, filesystem.INODE_CACHE = saved


def test_budget_sizes_the_caches(monkeypatch, restore_caches):
    monkeypatch.delenv(mount.CACHE_ENV, raising=False)
    assert mount.cache_budget_mb() == mount.DEFAULT_CACHE_MB
    sizes = []
    for mb in ("16", "256"):
        monkeypatch.setenv(mount.CACHE_ENV, mb)
        mount.apply_cache_budget()
        sizes.append((btree.CACHE_NODES, filesystem.INODE_CACHE))
    (nodes16, inodes16), (nodes256, inodes256) = sizes
    assert abs(nodes256 - 16 * nodes16) <= 16 and abs(inodes256 - 16 * inodes16) <= 16
    budget = 256 << 20
    assert nodes256 * mount.NODE_BYTES + inodes256 * mount.INODE_BYTES <= budget


@pytest.mark.parametrize("bad", ["lots", "-5", "0", "3", "9999999"])
def test_bad_budget_is_refused(monkeypatch, bad):
    monkeypatch.setenv(mount.CACHE_ENV, bad)
    with pytest.raises(HammerError, match=mount.CACHE_ENV):
        mount.cache_budget_mb()
