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
    counts, model = LookupCounts(), {}
    for add, ino, n in ops:
        if add:
            counts.add(ino, n)
            model[ino] = model.get(ino, 0) + n
        else:
            left = counts.sub(ino, n)
            want = max(0, model.get(ino, 0) - n)
            assert left == want
            if want:
                model[ino] = want
            else:
                model.pop(ino, None)
        assert len(counts) == len(model)
    for ino in {ino for _add, ino, _n in ops}:
        assert (ino in counts) == (ino in model)
        assert counts.get(ino) == model.get(ino, 0)


def test_held_inodes_are_compact_and_given_back():
    n = 200_000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        counts = LookupCounts()
        for ino in range(2, n + 2):  # a walk of a tree: neighbouring object ids
            counts.add(ino)
        held = tracemalloc.get_traced_memory()[0] - base
        for ino in range(2, n + 2):
            assert counts.sub(ino, 1) == 0
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held < 12 * n  # a dict of int -> int: ~90 bytes each
    assert len(counts) == 0 and left < 4096
