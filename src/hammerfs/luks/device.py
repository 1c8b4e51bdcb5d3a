"""LuksDevice: the decrypted payload of a LUKS container as a BlockDevice over the
container's BlockDevice.  Reads and writes are batched through XtsCipher (one ECB pass per
chunk, not one cipher call per sector); the key schedule lives as long as the device."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hammerfs.blockdev.base import BLOCK, BlockDevice
from hammerfs.errors import HammerError, ReadOnly
from hammerfs.luks.secmem import LockedBuffer, make_undumpable
from hammerfs.luks.xts import XtsCipher

IV_UNIT = 512
CHUNK = 1024 * 1024   # bounds the scratch buffers; large requests are processed in pieces


class LuksDevice:
    """Payload bytes [0, size) map to container bytes [data_offset, data_offset + size)."""

    def __init__(self, container: BlockDevice, volume_key: bytes, *, data_offset: int,
                 data_size: int, sector_size: int, iv_tweak: int = 0,
                 readonly: bool | None = None):
        if sector_size not in (512, 1024, 2048, 4096):
            raise HammerError(f"invalid sector size {sector_size}")
        self.container = container
        self.data_offset = data_offset
        self.sector_size = sector_size
        self.iv_tweak = iv_tweak
        self.size = data_size - data_size % BLOCK
        self.readonly = container.readonly if readonly is None else readonly
        make_undumpable()
        # The one long-lived copy of the key: locked, zeroed on close; the AES contexts
        # keep views of it, not copies.
        self._key = LockedBuffer(volume_key)
        try:
            self._cipher = XtsCipher(self._key.view())
        except BaseException:
            self._key.close()
            raise
        # Scratch buffers reused between requests (fresh MiB-sized buffers cost page faults
        # on every call): a request takes an idle one or makes one, so concurrent reads and
        # writes never wait for each other here.
        self._idle: list[bytearray] = []
        self._idle_lock = threading.Lock()

    @contextmanager
    def _scratch(self, size: int) -> Iterator[memoryview]:
        with self._idle_lock:
            buf = self._idle.pop() if self._idle else bytearray(0)
        if len(buf) < size:
            buf = bytearray(size)
        try:
            yield memoryview(buf)[:size]
        finally:
            with self._idle_lock:
                self._idle.append(buf)

    def _first_iv(self, offset: int) -> int:
        # plain64 counts 512-byte units even for larger sectors (cryptsetup never sets
        # iv_large_sectors for LUKS).
        return self.iv_tweak + offset // IV_UNIT

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise HammerError(f"I/O beyond the end of the encrypted volume "
                              f"({offset}+{length} > {self.size})")

    def _aligned(self, offset: int, length: int) -> tuple[int, int]:
        start = offset - offset % self.sector_size
        end = -(-(offset + length) // self.sector_size) * self.sector_size
        return start, end

    def _read_sectors_into(self, start: int, end: int, view: memoryview) -> None:
        for pos in range(start, end, CHUNK):
            size = min(CHUNK, end - pos)
            cipher = self.container.read(self.data_offset + pos, size)
            self._cipher.crypt_into(cipher, view[pos - start:pos - start + size],
                                    self._first_iv(pos), self.sector_size,
                                    self.sector_size // IV_UNIT, decrypt=True)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        start, end = self._aligned(offset, length)
        with self._scratch(end - start) as plain:
            self._read_sectors_into(start, end, plain)
            return bytes(plain[offset - start:offset - start + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.readonly:
            raise ReadOnly("the encrypted volume is open read-only")
        data = memoryview(data).cast("B")
        self._check_range(offset, len(data))
        start, end = self._aligned(offset, len(data))
        if (start, end) != (offset, offset + len(data)):
            # Partial sectors: read-modify-write (the store never does this).
            plain = bytearray(end - start)
            self._read_sectors_into(start, end, memoryview(plain))
            plain[offset - start:offset - start + len(data)] = data
            data, offset = memoryview(plain), start
        with self._scratch(min(CHUNK, len(data))) as out:
            for pos in range(0, len(data), CHUNK):
                size = min(CHUNK, len(data) - pos)
                piece = out[:size]
                self._cipher.crypt_into(data[pos:pos + size], piece,
                                        self._first_iv(offset + pos), self.sector_size,
                                        self.sector_size // IV_UNIT, decrypt=False)
                self.container.write(self.data_offset + offset + pos, piece)

    def write_parts(self, offset: int, parts: list) -> None:
        """``write(offset, b"".join(parts))``: each part is encrypted straight into the
        scratch buffer (no joined plaintext copy), written a CHUNK at a time."""
        views = [memoryview(p).cast("B") for p in parts]
        if self.readonly or offset % self.sector_size or \
                any(len(v) % self.sector_size for v in views):
            self.write(offset, b"".join(views))
            return
        self._check_range(offset, sum(len(v) for v in views))
        step = self.sector_size // IV_UNIT
        with self._scratch(CHUNK) as out:
            base, fill = offset, 0
            for view in views:
                pos = 0
                while pos < len(view):
                    n = min(CHUNK - fill, len(view) - pos)
                    self._cipher.crypt_into(view[pos:pos + n], out[fill:fill + n],
                                            self._first_iv(base + fill), self.sector_size,
                                            step, decrypt=False)
                    fill, pos = fill + n, pos + n
                    if fill == CHUNK:
                        self.container.write(self.data_offset + base, out)
                        base, fill = base + fill, 0
            if fill:
                self.container.write(self.data_offset + base, out[:fill])

    def flush(self) -> None:
        self.container.flush()

    def close(self) -> None:
        self._cipher = None  # type: ignore[assignment]  # drop the key schedule
        self._key.close()
        with self._idle_lock:  # plaintext of the last requests
            for buf in self._idle:
                buf[:] = bytes(len(buf))
            self._idle.clear()
        self.container.close()
