"""Shared helpers of the filesystem tests."""

from __future__ import annotations

from hammerfs.store.memory import MemoryStore


def memory_store(tmp_path):
    return MemoryStore(label="test")


def disk_store(tmp_path, size=256 << 20):
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.store import Store
    dev = FileDevice(str(tmp_path / "vol.img"), create_size=size)
    return Store.create(dev, label="test")


def store_kinds():
    """Every RecordStore implementation on this checkout (the on-disk one once it exists)."""
    import hammerfs.store as store_pkg
    kinds = [memory_store]
    if hasattr(store_pkg, "Store"):
        kinds.append(disk_store)
    return kinds
