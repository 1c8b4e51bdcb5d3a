"""The mount's table of the kernel's lookup counts: exact (a dict is the model) and compact
(held inodes cost a few bytes each, and the memory goes back when the kernel forgets)."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.fuse.inodes import SYNTHETIC, LookupCounts

INOS = st.one_of(st.integers(1, 600), st.integers(1 << 48, (1 << 48) + 300),
                 st.integers(SYNTHETIC, SYNTHETIC + 300))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), INOS, st.integers(1, 5)), max_size=200))
def test_counts_follow_lookups_and_forgets(ops):
    """Counts, and the directory remembered per held inode: set with a lookup (the name
    the kernel got), gone with the last forget (a number held again has none)."""
    counts, model, parents = LookupCounts(), {}, {}
    for add, ino, n in ops:
        if add:
            counts.add(ino, n)
            model[ino] = model.get(ino, 0) + n
            counts.set_parent(ino, n + 1)
            parents[ino] = n + 1
        else:
            left = counts.sub(ino, n)
            want = max(0, model.get(ino, 0) - n)
            assert left == want
            if want:
                model[ino] = want
            else:
                model.pop(ino, None)
                parents.pop(ino, None)
        assert len(counts) == len(model)
    for ino in {ino for _add, ino, _n in ops}:
        assert (ino in counts) == (ino in model)
        assert counts.get(ino) == model.get(ino, 0)
        assert counts.parent(ino) == parents.get(ino, 0)


def test_held_inodes_are_compact_and_given_back():
    n = 200_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        counts = LookupCounts()
        for ino in range(2, n + 2):  # a walk of a tree: neighbouring object ids
            counts.add(ino)
            counts.set_parent(ino, 1)
        held = tracemalloc.get_traced_memory()[0] - base
        for ino in range(2, n + 2):
            assert counts.sub(ino, 1) == 0
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 20 * n  # a dict of int -> int: ~90 bytes each
    assert len(counts) == 0 and left < 4096


def test_history_view_ids_are_kept_in_the_volume_and_reused_in_turn(tmp_path, monkeypatch):
    from fs_helpers import disk_store

    from hammerfs.blockdev.file import FileDevice
    from hammerfs.fuse import inodes
    from hammerfs.store import Store

    monkeypatch.setattr(inodes, "VIEW_IDS", 3)
    store = disk_store(tmp_path)
    ids = inodes.ViewIds(store)
    a, b, c, d = (0, 10), (0, 20), (1, 30), (0, None)
    assert [ids.id_of(v, lambda _k: False) for v in (a, b, c)] == [1, 2, 3]
    assert ids.id_of(b, lambda _k: False) == 2  # a view keeps its id
    assert ids.id_of(d, lambda k: k == a) == 2  # the oldest not held is taken again
    assert ids.key_of(2) == d and ids.id_of(b, lambda k: k in (a, d)) == 3
    store.commit()
    store.close()
    again = inodes.ViewIds(Store.open(FileDevice(str(tmp_path / "vol.img"))))
    assert [again.key_of(i) for i in (1, 2, 3)] == [a, d, b]
    # a reused id never aliases an old handle: the view is part of the generation
    assert len({inodes.generation(12345, v) for v in (a, b, c, d, None)}) == 5


def test_a_read_only_volume_gives_new_views_numbers_of_the_mount_only(tmp_path):
    from fs_helpers import disk_store

    from hammerfs.blockdev.file import FileDevice
    from hammerfs.fuse.inodes import ViewIds
    from hammerfs.store import Store

    store = disk_store(tmp_path)
    assert ViewIds(store).id_of((0, 10), lambda _k: False) == 1
    store.commit()
    store.close()
    ro = ViewIds(Store.open(FileDevice(str(tmp_path / "vol.img"), readonly=True),
                            readonly=True))
    assert ro.id_of((0, 10), lambda _k: False) == 1
    assert ro.id_of((0, 11), lambda _k: False) is None
