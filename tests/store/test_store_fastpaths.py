"""The hot-path shortcuts build exactly what the plain code would: leaves packed in one call
decode back to the same entries with the per-entry layout, the fast Record constructor gives
records equal (and as frozen) as Record(...), and a commit's batched release of freed nodes
leaves the free-map exactly as freeing them one by one does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.store.alloc import Allocator
from hammerfs.store.format import (
    _LEAF,
    _NODE_HDR,
    NODE_HDR_SIZE,
    NODE_MAGIC,
    NODE_SIZE,
    checksum,
    decode_node,
    encode_leaf,
    leaf_entry_bytes,
)
from hammerfs.store.records import Record
from hammerfs.store.store import _make_record

U64 = st.integers(0, (1 << 64) - 1)
KEYS = st.tuples(st.integers(0, 1 << 16), U64, st.integers(0, 0xFFFF), U64, U64)


@st.composite
def leaves(draw):
    keys = sorted(draw(st.sets(KEYS, max_size=40)))
    vals, used = [], NODE_HDR_SIZE
    for _ in keys:
        dtid, cts, dts = draw(U64), draw(U64), draw(U64)
        if draw(st.booleans()):
            data = draw(st.binary(max_size=96))
            val = (dtid, cts, dts, len(data), 0, bytes(16), data)
        else:
            val = (dtid, cts, dts, draw(st.integers(513, 1 << 20)),
                   draw(st.integers(1, 1 << 40)) * 4096, checksum(draw(st.binary())), None)
        used += leaf_entry_bytes(val)
        vals.append(val)
    while used > NODE_SIZE:
        used -= leaf_entry_bytes(vals.pop())
        keys.pop()
    return keys, vals


def reference_leaf(keys, vals) -> bytes:
    """The leaf layout of docs/format.md, packed one entry at a time."""
    ents = b"".join(_LEAF.pack(*k, *v[:6]) for k, v in zip(keys, vals, strict=True))
    heap = b"".join(v[6] for v in vals if v[6] is not None)
    max_tid = max([k[4] for k in keys] + [v[0] for v in vals], default=0)
    body = _NODE_HDR.pack(NODE_MAGIC, 0, 0, len(keys), len(heap), max_tid) + ents + heap
    return body + bytes(NODE_SIZE - len(body))


@settings(max_examples=150, deadline=None)
@given(leaves())
def test_leaves_packed_in_one_call_match_the_per_entry_layout(leaf):
    keys, vals = leaf
    raw, max_tid = encode_leaf(keys, vals)
    assert raw == reference_leaf(keys, vals)
    assert max_tid == max([k[4] for k in keys] + [v[0] for v in vals], default=0)
    level, dkeys, dvals = decode_node(raw, 0x1000)
    assert (level, dkeys, dvals) == (0, keys, vals)


def test_a_leaf_with_mismatched_keys_and_values_is_refused():
    with pytest.raises(ValueError):
        encode_leaf([(1, 2, 3, 4, 5)], [])


@given(KEYS, U64, U64, U64, st.one_of(st.none(), st.binary(max_size=8)))
def test_fast_records_equal_plain_records(k, dtid, cts, dts, data):
    fast = _make_record(*k, dtid, cts, dts, data)
    plain = Record(*k, dtid, cts, dts, data)
    assert type(fast) is Record
    assert fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.key = 0


def _full_allocator() -> Allocator:
    alloc = Allocator.fresh(70_000, 3, 40, (2, 8), 1)  # 3 free-map pages, 9 big-blocks
    alloc.mark_used(40, 69_000)
    alloc.dirty_pages = [set(), set()]
    return alloc


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(40, 69_039), min_size=1, max_size=400))
def test_batched_release_of_single_blocks_matches_freeing_one_by_one(blocks):
    one_by_one, batched = _full_allocator(), _full_allocator()
    for block in blocks:
        one_by_one._mark(block, 1, False)
    singles = np.array(sorted(blocks), dtype=np.int64)
    batched._mark_singles(singles, False)
    assert bytes(batched.bits) == bytes(one_by_one.bits)
    assert batched.bb_used.tolist() == one_by_one.bb_used.tolist()
    assert batched.free_blocks == one_by_one.free_blocks
    assert batched.dirty_pages == one_by_one.dirty_pages
    assert batched.free_blocks == 70_000 - 69_040 + len(blocks)
    # held again (a commit in flight keeps the blocks it freed): back to the full map
    full = _full_allocator()
    batched._mark_singles(singles, True)
    assert bytes(batched.bits) == bytes(full.bits)
    assert batched.bb_used.tolist() == full.bb_used.tolist()
    assert batched.free_blocks == full.free_blocks
