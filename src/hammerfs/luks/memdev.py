"""BytesDevice: a read-only BlockDevice over bytes in memory (header backups are parsed with
the same code as devices, without touching any device)."""

from __future__ import annotations

from hammerfs.errors import HammerError


class BytesDevice:
    readonly = True

    def __init__(self, data: bytes):
        self._data = bytes(data)
        self.size = len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise HammerError(f"read beyond the end of the data ({offset}+{length})")
        return self._data[offset:offset + length]

    def write(self, offset: int, data) -> None:
        raise HammerError("read-only in-memory device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
