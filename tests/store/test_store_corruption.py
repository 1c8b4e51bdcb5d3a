"""Flipped bits anywhere in a populated volume: every read touching a damaged block raises
CorruptionError naming it, scrub reports each one, and nothing else is affected."""

from __future__ import annotations

import random

import pytest

from conftest import run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import CorruptionError
from hammerfs.store import Store
from hammerfs.store.format import BLOCK
from hammerfs.store.scrub import scrub

ALL = ((0, 0, 0, 0), (0xFFFF, (1 << 64) - 1, 0xFFFF, (1 << 64) - 1))


def populate(path, rng: random.Random) -> list[tuple]:
    store = Store.create(FileDevice(str(path), create_size=16 << 20), "bits")
    for txn in range(3):
        for obj in range(2, 200):
            size = rng.choice([20, 100, 700, 9000])
            store.put((1, obj, 0x10, txn % 2), rng.randbytes(size))
        store.commit()
    store.close()
    return []


def tree_map(store: Store):
    """For each reckey, the node/extent blocks its scan depends on; plus every block's
    parent blocks (to know what scrub can still reach)."""
    ancestors: dict[int, list[int]] = {}  # block -> blocks above it
    extent_blocks: dict[int, int] = {}  # every block of an extent -> its first block
    keys = set()

    def walk(node, above):
        ancestors[node.off // BLOCK] = above
        if node.level:
            for j in range(len(node.keys)):
                walk(store.tree.child(node, j), above + [node.off // BLOCK])
            return
        for k, v in zip(node.keys, node.vals, strict=True):
            if k[0] <= 0xFFFF:  # not the store's own commit log
                keys.add(k[:4])
            if v[4]:
                first = v[4] // BLOCK
                for b in range(first, first + -(-v[3] // BLOCK)):
                    extent_blocks[b] = first
                ancestors[first] = above + [node.off // BLOCK]
    walk(store.tree.root, [])
    return ancestors, extent_blocks, sorted(keys)


def blocks_read_by(store: Store, reckey) -> set[int]:
    """Blocks a cold scan of one key reads (nodes and data extents)."""
    seen: set[int] = set()
    tree = store.tree
    real_read = tree.read_node
    real_dev_read = store.device.read

    def read_node(off, csum):
        seen.add(off // BLOCK)
        return real_read(off, csum)

    def dev_read(off, length):
        seen.update(range(off // BLOCK, (off + length) // BLOCK))
        return real_dev_read(off, length)
    tree.cache.clear()
    tree.read_node, store.device.read = read_node, dev_read
    try:
        list(store.scan(reckey, reckey, history=True))
    finally:
        tree.read_node, store.device.read = real_read, real_dev_read
        tree.cache.clear()
    return seen


def flip_bit(path, block: int, rng: random.Random) -> None:
    with open(path, "r+b") as f:
        pos = block * BLOCK + rng.randrange(BLOCK)
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ (1 << rng.randrange(8))]))


@pytest.mark.parametrize("seed", range(6))
def test_flipped_bits_are_caught_and_contained(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "vol.img"
    populate(path, rng)
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        pristine = {k: list(store.scan(k, k, history=True)) for k in tree_map(store)[2]}
        ancestors, extent_blocks, keys = tree_map(store)
        reads = {k: blocks_read_by(store, k) for k in keys}
        root = store.tree.root.off // BLOCK
    candidates = sorted(set(ancestors) - {root} | set(extent_blocks))
    damaged = set(rng.sample(candidates, 4))
    for block in damaged:
        flip_bit(path, block, rng)

    heads = {extent_blocks.get(b, b) for b in damaged}  # an extent is reported at its start
    store = Store.open(FileDevice(str(path), readonly=True))
    for k in keys:
        if reads[k] & damaged:
            try:
                got = list(store.scan(k, k, history=True))
            except CorruptionError as err:
                assert err.location // BLOCK in heads
                assert f"{err.location:#x}" in str(err)
            else:  # a damaged node rebuilt bit for bit (its header, padding or children)
                assert got == pristine[k] and store.damage.found
        else:
            assert list(store.scan(k, k, history=True)) == pristine[k]
    report = scrub(store)
    store.close()
    reachable = {b for b in heads if not set(ancestors[b]) & heads}
    assert {off // BLOCK for off in report.damaged_offsets} == reachable
    out = run_hammer("scrub", path, check=False)
    assert out.returncode == 1
    assert out.stdout.count("DAMAGED:") == len(reachable)


def test_damaged_root_or_free_map(tmp_path):
    rng = random.Random(7)
    path = tmp_path / "vol.img"
    populate(path, rng)
    with Store.open(FileDevice(str(path), readonly=True)) as store:
        root = store.tree.root.off
        hdr = store.header
        expected = list(store.scan(*ALL, history=True))
    # the free-map is redundant: a damaged page is reported and rebuilt from the B-tree
    fm_page = (hdr.fm_region1 if hdr.slot else hdr.fm_region0) + hdr.fm_table_blocks
    flip_bit(path, fm_page, rng)
    with Store.open(FileDevice(str(path))) as store:
        report = scrub(store)
        assert not report.ok and "free-map" in report.errors[0]
        assert list(store.scan(*ALL, history=True)) == expected
        store.put((3, 3, 3, 3), b"x" * 5000)
    with Store.open(FileDevice(str(path))) as store:
        assert scrub(store).ok
    # a damaged root node: the volume cannot be read, and says where
    flip_bit(path, root // BLOCK, rng)
    out = run_hammer("info", path, check=False)
    if "failed checksum" not in out.stderr:  # the put above moved the root; damage the new one
        with Store.open(FileDevice(str(path), readonly=True)) as store:
            root = store.tree.root.off
        flip_bit(path, root // BLOCK, rng)
        out = run_hammer("info", path, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"B-tree node at offset {root:#x} failed checksum" in out.stderr
