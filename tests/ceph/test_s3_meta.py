"""The S3 volume description is read from a bucket someone else may write: any bytes give a
size or a HammerError, never another exception (no cluster needed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hammerfs.blockdev.s3 import OBJECT_SIZE, parse_meta
from hammerfs.errors import HammerError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["size", "object_size", "format", "x"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_description_gives_a_size_or_a_clear_error(body):
    try:
        size = parse_meta(body, "s3://b/p/")
    except HammerError:
        return
    assert size > 0 and size % 4096 == 0


def test_the_description_newfs_writes_parses():
    body = json.dumps({"format": "hammerfs-s3", "size": 1 << 30,
                       "object_size": OBJECT_SIZE}).encode()
    assert parse_meta(body, "s3://b/p/") == 1 << 30
    for bad in (b'{"size": 1e400, "object_size": 1048576}', b"[" * 100_000, b"\xff"):
        with pytest.raises(HammerError):
            parse_meta(bad, "s3://b/p/")
