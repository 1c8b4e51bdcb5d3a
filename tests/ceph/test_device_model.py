"""RbdDevice and S3Device against a bytearray model: random aligned writes (overlapping, so
queued RBD writes must land in order; continuing the previous one, so RBD joins them into one
run; crossing objects, so the S3 cache merges, evicts and
re-reads objects still uploading) and reads; after flush and a reopen the device holds exactly
the model."""

from __future__ import annotations

import random

import pytest
from ceph_helpers import ceph, unique  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hammerfs.blockdev.base import BLOCK
from hammerfs.blockdev.rbd import RbdDevice
from hammerfs.blockdev.s3 import S3Device

SIZE = 8 << 20  # 8 S3 objects; the S3 cache holds 2 of them
BLOCKS = SIZE // BLOCK

ops = st.lists(st.tuples(st.sampled_from(["write", "write", "append", "append", "read",
                                          "flush"]),
                         st.integers(0, BLOCKS - 1), st.integers(1, 400),
                         st.integers(0, 2**32)), min_size=1, max_size=25)


def opener(kind: str, name: str):
    if kind == "rbd":
        return lambda create=False: RbdDevice("hammerfs", name,
                                              create_size=SIZE if create else None)
    return lambda create=False: S3Device("hammerfs", name + "/", cache_bytes=2 << 20,
                                         create_size=SIZE if create else None)


@pytest.mark.parametrize("kind", ["rbd", "s3"])
def test_device_matches_a_bytearray(ceph, unique, kind):
    open_dev = opener(kind, unique)
    open_dev(create=True).close()
    model = bytearray(SIZE)

    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops)
    def run(steps):
        dev = open_dev()
        end = 0  # where the last write ended: "append" continues it (RBD joins such runs)
        try:
            for op, block, count, seed in steps:
                if op == "append":
                    block = end // BLOCK % BLOCKS
                off, length = block * BLOCK, min(count, BLOCKS - block) * BLOCK
                if op in ("write", "append"):
                    end = off + length
                    data = random.Random(seed).randbytes(length)
                    dev.write(off, data)
                    model[off:off + length] = data
                elif op == "read":
                    assert dev.read(off, length) == model[off:off + length]
                else:
                    dev.flush()
            dev.flush()
        finally:
            dev.close()
        again = open_dev()
        try:
            assert again.read(0, SIZE) == model
        finally:
            again.close()

    run()
