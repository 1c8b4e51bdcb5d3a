"""Damaged B-tree nodes rebuilt bit for bit: leaves from a replica's versions of their key
range (data offsets found on this volume), internal nodes from their children; a block is
written back only when its checksum is the one its parent holds, so a replica in another
state, or damage no source covers, leaves the node reported unrepairable."""

from __future__ import annotations

import random
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import CorruptionError
from hammerfs.store import Store
from hammerfs.store.format import BLOCK, INLINE_MAX, LEAF_ENTRY_SIZE, NODE_HDR_SIZE, checksum
from hammerfs.store.noderepair import Version, byte_repairs, rebuild_inner, rebuild_leaf
from hammerfs.store.scrub import Scrubber, scrub

ALL = ((0, 100, 0, 0), (0, 1 << 63, 0xFFFF, 1 << 63))  # the records populate wrote


def populate(path, n=5000, seed=5) -> dict:
    """A three-level tree: small inline records and 700-byte extents, some history."""
    rng = random.Random(seed)
    store = Store.create(FileDevice(str(path), create_size=64 << 20))
    wrote = {}
    for i in range(n):
        key = (0, 100 + i // 4, 0x10, (i % 4) * 4096)
        data = rng.randbytes(rng.choice([60, 700, 700, 3000]))
        store.put(key, data)
        wrote[key] = data
        if i % 400 == 0:
            store.commit()
    for key in list(wrote)[::7]:  # a second version of some (the first ends)
        wrote[key] = rng.randbytes(200)
        store.put(key, wrote[key])
    store.close()
    return wrote


class CopyReplica:
    """A replica in the same state: the volume's image copied before the damage."""

    def __init__(self, path):
        self.store = Store.open(FileDevice(str(path), readonly=True), readonly=True)
        self.asked = 0

    def __call__(self, k, v):
        rec = self.store.get_version(k[:4], k[4])
        return rec.data if rec else None

    def versions(self, lo, hi):
        self.asked += 1
        end = hi if hi is not None else (lo[0] + 1, 0, 0, 0, 0)
        found, _ = self.store.versions_between(lo, end, 4096)
        return [Version(k, v[0], v[1], v[2], v[3], v[5], v[6] if v[3] <= INLINE_MAX else None)
                for k, v in found]


def nodes(path) -> tuple[list[int], list[int], int]:
    """(leaf offsets, offsets of internal nodes below the root, root offset)."""
    with Store.open(FileDevice(str(path), readonly=True), readonly=True) as store:
        leaves, inner = [], []
        for depth, node in store.tree.walk_nodes():
            if not node.level:
                leaves.append(node.off)
            elif depth:
                inner.append(node.off)
        return leaves, inner, store.tree.root.off


def garble(path, off: int, at: int, n: int = 16, seed: int = 0) -> None:
    """Overwrite ``n`` bytes at ``off + at`` with random ones (what a flipped ciphertext
    byte does to a LUKS sector: one 16-byte block of plaintext garbled)."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(off + at)
        old = f.read(n)
        new = bytes(b ^ (rng.randrange(255) + 1) for b in old)
        f.seek(off + at)
        f.write(new)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    base = tmp_path_factory.mktemp("nodes")
    path = base / "pristine.img"
    wrote = populate(path)
    leaves, inner, root = nodes(path)
    assert len(inner) >= 3 and len(leaves) >= 100
    return path, wrote, leaves, inner, root


def fresh(volume, tmp_path):
    path, wrote, leaves, inner, root = volume
    work, copy = tmp_path / "vol.img", tmp_path / "replica.img"
    shutil.copy(path, work)
    shutil.copy(path, copy)
    return work, copy, wrote, leaves, inner, root


def leaf_entry(i: int) -> int:
    return NODE_HDR_SIZE + i * LEAF_ENTRY_SIZE


def test_scrub_rebuilds_leaves_from_the_replica_and_internal_nodes_from_children(volume,
                                                                                 tmp_path):
    work, copy, wrote, leaves, inner, _ = fresh(volume, tmp_path)
    rng = random.Random(2)
    hit_leaves = rng.sample(leaves, 6)
    hit_inner = rng.sample(inner, 2)
    # entry fields (keys, TIDs, offsets, checksums), the header, the inline heap
    for n, off in enumerate(hit_leaves):
        garble(work, off, [0, leaf_entry(0) + 64, leaf_entry(2) + 10, leaf_entry(1) + 50,
                           leaf_entry(3) + 30, 2000][n], seed=n)
    for n, off in enumerate(hit_inner):
        garble(work, off, [96, 40][n], seed=10 + n)
    replica = CopyReplica(copy)
    with Store.open(FileDevice(str(work))) as store:
        store.healer = replica
        report = Scrubber(store, rate=None, healer=replica).run()
        assert report.ok, report.errors
        assert sorted(report.damaged_offsets) == sorted(hit_leaves + hit_inner)
        assert report.repaired == 8 and report.unrepairable == 0
        assert store.damage.repaired == 8
        msgs = {d.offset: d.message for d in report.damage}
        assert all("rebuilt from the replica's records" in msgs[o] for o in hit_leaves[1:])
        assert all("rebuilt from its children" in msgs[o] for o in hit_inner)
    with Store.open(FileDevice(str(work), readonly=True), readonly=True) as store:
        assert scrub(store).ok  # on disk, not only in memory
        got = {r.reckey: r.data for r in store.scan(*ALL)}
        assert got == wrote
    assert replica.asked >= 5


def test_a_lookup_meeting_a_damaged_leaf_gets_it_rebuilt(volume, tmp_path):
    work, copy, wrote, leaves, _, _ = fresh(volume, tmp_path)
    victim = leaves[len(leaves) // 2]
    garble(work, victim, leaf_entry(1) + 14)  # the key and create TID of an entry
    with Store.open(FileDevice(str(work))) as store:
        with pytest.raises(CorruptionError):  # no replica: EIO
            {r.reckey: r.data for r in store.scan(*ALL)}
        assert store.damage.unrepairable == 1
        store.healer = CopyReplica(copy)
        assert {r.reckey: r.data for r in store.scan(*ALL)} == wrote
        assert store.damage.repaired == 1
    with Store.open(FileDevice(str(work), readonly=True), readonly=True) as store:
        assert scrub(store).ok


def test_a_replica_in_another_state_is_not_used(volume, tmp_path):
    work, copy, wrote, leaves, _, _ = fresh(volume, tmp_path)
    victim = leaves[5]
    with Store.open(FileDevice(str(copy))) as other:  # the replica's versions differ there
        node = next(n for _, n in other.tree.walk_nodes() if n.off == victim)
        for k in node.keys:
            other.put(k[:4], b"another version" * 3)
            other.destroy(k[:4], k[4])
        other.commit()
    garble(work, victim, leaf_entry(1) + 20)  # TIDs of an entry
    with Store.open(FileDevice(str(work))) as store:
        replica = CopyReplica(copy)
        report = Scrubber(store, rate=None, healer=replica).run()
        assert report.damaged_offsets == [victim] and report.unrepairable == 1
        assert not report.repaired and replica.asked == 1
        assert "B-tree node at offset" in report.errors[0]


def test_damage_no_source_covers_stays_reported(volume, tmp_path):
    work, _, _, leaves, inner, _ = fresh(volume, tmp_path)
    garble(work, leaves[-3], leaf_entry(2), n=LEAF_ENTRY_SIZE)  # a whole entry, no replica
    garble(work, inner[0], NODE_HDR_SIZE, n=300)  # five children's refs
    with Store.open(FileDevice(str(work))) as store:
        report = Scrubber(store, rate=None).run()
        assert sorted(report.damaged_offsets) == sorted([leaves[-3], inner[0]])
        assert report.unrepairable == 2 and not report.repaired


def test_the_root_is_rewritten_from_memory(volume, tmp_path):
    work, _, wrote, _, _, root = fresh(volume, tmp_path)
    with Store.open(FileDevice(str(work))) as store:
        garble(work, root, 200)  # after open: the decoded root is intact in memory
        report = Scrubber(store, rate=None, persist=False).run()  # (saving dirties it)
        assert report.damaged_offsets == [root] and report.repaired == 1
        assert "rebuilt from the copy in memory" in report.damage[0].message
    with Store.open(FileDevice(str(work), readonly=True), readonly=True) as store:
        assert scrub(store).ok


@pytest.fixture(scope="module")
def replica_of_volume(volume, tmp_path_factory):
    copy = tmp_path_factory.mktemp("replica") / "replica.img"
    shutil.copy(volume[0], copy)
    replica = CopyReplica(copy)
    yield replica
    replica.store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_short_run_of_damage_is_rebuilt_exactly_or_refused(volume, replica_of_volume, data):
    """Random damage to a leaf or an internal node: the rebuild is the original block, or
    nothing (never another block)."""
    path, wrote, leaves, inner, _ = volume
    off = data.draw(st.sampled_from(leaves + inner))
    at = data.draw(st.integers(0, BLOCK - 1))
    n = data.draw(st.integers(1, 24))
    with Store.open(FileDevice(str(path), readonly=True), readonly=True) as store:
        dev = store.device
        good = dev.read(off, BLOCK)
        damaged = bytearray(good)
        rng = random.Random(at * 31 + n)
        for i in range(at, min(BLOCK, at + n)):
            damaged[i] ^= rng.randrange(1, 256)
        want = checksum(good)
        level = good[4]
        if level:
            got = rebuild_inner(bytes(damaged), want, level,
                                lambda o: dev.read(o, BLOCK) if o < dev.size else None,
                                dev.size)
        else:
            replica = replica_of_volume
            rep = store.node_repair
            node = next(nd for _, nd in store.tree.walk_nodes() if nd.off == off)
            hi = (node.keys[-1][:4] + (node.keys[-1][4] + 1,))
            got = rebuild_leaf(bytes(damaged), want, replica.versions(node.keys[0], hi),
                               rep._extent_at, dev.size)
        assert got is None or got == good
        if level == 0 and at < NODE_HDR_SIZE + 3 * LEAF_ENTRY_SIZE and n <= 16:
            assert got == good  # what the replica and the disk know covers a short run


def test_byte_repairs_enumerate_aligned_offsets_inside_the_volume():
    true = 0x12345000
    damaged = true ^ (0xAB << 40)  # a high byte: only zero fits a 1 GiB volume
    assert next(byte_repairs(damaged, 1 << 30)) == true
    damaged = true ^ (0x7 << 16)  # a middle byte: one of 256
    assert true in list(byte_repairs(damaged, 1 << 30))[:300]
    assert all(v % BLOCK in (0, 1) and v < 1 << 30 for v in byte_repairs(damaged, 1 << 30))
