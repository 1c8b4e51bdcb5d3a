"""Test block devices: an in-memory disk that can model a crash (what reached the platter)."""

from __future__ import annotations

import random


class MemDevice:
    """A bytearray disk.  Every write and flush is logged so a crash can be replayed."""

    def __init__(self, size: int, image: bytes | None = None):
        self.size = size
        self.readonly = False
        self.buf = bytearray(image) if image is not None else bytearray(size)
        self.log: list[tuple[str, int, bytes]] = []  # ("w", off, data) | ("f", 0, b"")
        self.closed = False

    def read(self, offset: int, length: int) -> bytes:
        assert offset % 4096 == 0 and length % 4096 == 0, (offset, length)
        assert offset >= 0 and offset + length <= self.size
        return bytes(self.buf[offset:offset + length])

    def write(self, offset: int, data) -> None:
        data = bytes(data)
        assert offset % 4096 == 0 and len(data) % 4096 == 0, (offset, len(data))
        assert offset >= 0 and offset + len(data) <= self.size
        self.buf[offset:offset + len(data)] = data
        self.log.append(("w", offset, data))

    def flush(self) -> None:
        self.log.append(("f", 0, b""))

    def close(self) -> None:
        self.closed = True


def crash_image(base: bytes, log: list, upto: int, rng: random.Random | None) -> bytes:
    """The disk after a crash once ``upto`` log entries were issued: everything before the last
    flush among them is on disk; of the blocks written after it, all (rng None) or a random
    subset (the device may reorder, drop or tear any unflushed 4 KiB block)."""
    img = bytearray(base)
    last_flush = max((i for i in range(upto) if log[i][0] == "f"), default=-1)
    for i in range(upto):
        kind, off, data = log[i]
        if kind != "w":
            continue
        if i < last_flush or rng is None:
            img[off:off + len(data)] = data
            continue
        for b in range(0, len(data), 4096):
            roll = rng.random()
            if roll < 0.4:
                img[off + b:off + b + 4096] = data[b:b + 4096]
            elif roll < 0.6:  # torn: only the first few 512-byte sectors reached the disk
                cut = 512 * rng.randint(1, 7)
                img[off + b:off + b + cut] = data[b:b + cut]
    return bytes(img)
