"""LUKS1 partition header (phdr): 592 big-endian bytes at offset 0 with eight fixed key slots
(LUKS1 on-disk format spec v1.2.3)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError

MAGIC = b"LUKS\xba\xbe"
PHDR_SIZE = 592
SLOT_COUNT = 8
SLOT_ENABLED = 0x00AC71F3
SLOT_DISABLED = 0x0000DEAD
SECTOR = 512
STRIPES = 4000
DIGEST_SIZE = 20
SALT_SIZE = 32
# magic, version, cipherName, cipherMode, hashSpec, payloadOffset, keyBytes, mkDigest,
# mkDigestSalt, mkDigestIterations, uuid
_PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")
SLOTS_OFFSET = 208


@dataclass
class Luks1Slot:
    active: int = SLOT_DISABLED
    iterations: int = 0
    salt: bytes = bytes(SALT_SIZE)
    material_offset: int = 0      # in 512-byte sectors
    stripes: int = STRIPES

    @property
    def enabled(self) -> bool:
        return self.active == SLOT_ENABLED


@dataclass
class Luks1Header:
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset: int          # in 512-byte sectors
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: str
    slots: list[Luks1Slot] = field(default_factory=list)

    def pack(self) -> bytes:
        buf = bytearray(PHDR_SIZE)
        _PHDR.pack_into(buf, 0, MAGIC, 1, _cstr(self.cipher_name, "cipher name"),
                        _cstr(self.cipher_mode, "cipher mode"), _cstr(self.hash_spec, "hash"),
                        self.payload_offset, self.key_bytes, self.mk_digest,
                        self.mk_digest_salt, self.mk_digest_iterations,
                        _cstr(self.uuid, "uuid", 40))
        for i, slot in enumerate(self.slots):
            _SLOT.pack_into(buf, SLOTS_OFFSET + 48 * i, slot.active, slot.iterations, slot.salt,
                            slot.material_offset, slot.stripes)
        return bytes(buf)

    def material_sectors(self) -> int:
        """Sectors one slot's AF material occupies."""
        return -(-self.key_bytes * STRIPES // SECTOR)


def _cstr(text: str, name: str, size: int = 32) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise HammerError(f"LUKS1 {name} is too long")
    return raw


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def parse(buf: bytes) -> Luks1Header:
    """Parse a phdr and check what every key slot depends on (magic, key size, digest).
    A damaged key slot does not make the header unusable: ``slot_problem`` says why one
    slot cannot be used, and unlocking tries the others (cryptsetup does the same)."""
    if len(buf) < PHDR_SIZE:
        raise HammerError("LUKS1 header is truncated")
    fields = _PHDR.unpack_from(buf, 0)
    if fields[0] != MAGIC or fields[1] != 1:
        raise HammerError("not a LUKS1 header")
    hdr = Luks1Header(_text(fields[2]), _text(fields[3]), _text(fields[4]), fields[5],
                      fields[6], fields[7], fields[8], fields[9], _text(fields[10]))
    for i in range(SLOT_COUNT):
        active, iterations, salt, offset, stripes = _SLOT.unpack_from(buf,
                                                                     SLOTS_OFFSET + 48 * i)
        hdr.slots.append(Luks1Slot(active, iterations, salt, offset, stripes))
    if hdr.key_bytes not in (16, 24, 32, 48, 64):
        raise HammerError(f"LUKS1 header: invalid key size {hdr.key_bytes}")
    if hdr.mk_digest_iterations < 1:
        raise HammerError("LUKS1 header: invalid digest iteration count")
    return hdr


def _material_range(hdr: Luks1Header, slot: Luks1Slot) -> tuple[int, int]:
    start = slot.material_offset * SECTOR
    return start, start + hdr.material_sectors() * SECTOR


def _layout_problem(hdr: Luks1Header, slot: Luks1Slot, device_size: int | None) -> str | None:
    if slot.stripes != STRIPES:
        return f"{slot.stripes} AF stripes (not {STRIPES})"
    start, end = _material_range(hdr, slot)
    if start < PHDR_SIZE or (hdr.payload_offset and end > hdr.payload_offset * SECTOR):
        return "key material lies outside the header area"
    if device_size is not None and end > device_size:
        return "key material lies beyond the device end"
    return None


def slot_problem(hdr: Luks1Header, index: int, device_size: int | None) -> str | None:
    """Why key slot ``index`` cannot be used, or None.  A slot whose state field is neither
    enabled nor disabled (a damaged byte) counts as disabled, as in cryptsetup."""
    slot = hdr.slots[index]
    if slot.active not in (SLOT_ENABLED, SLOT_DISABLED):
        return f"invalid state 0x{slot.active:08x}"
    if slot.enabled and slot.iterations < 1:
        return "no iterations"
    return _layout_problem(hdr, slot, device_size)


def check_layout(hdr: Luks1Header, device_size: int | None) -> None:
    """cryptsetup's checks of all eight slots' areas (used or not) and of their overlaps:
    what a header we write must pass, and what must hold before we write into any slot
    area.  A damaged state field is no obstacle: that slot counts as free."""
    for i, slot in enumerate(hdr.slots):
        problem = _layout_problem(hdr, slot, device_size)
        if problem:
            raise HammerError(f"LUKS1 header: key slot {i}: {problem}")
    ranges = sorted((*_material_range(hdr, slot), i) for i, slot in enumerate(hdr.slots))
    for (_, a_end, a), (b_start, _, b) in zip(ranges, ranges[1:], strict=False):
        if b_start < a_end:
            raise HammerError(f"LUKS1 header: key slots {a} and {b} overlap")


def read_header(dev: BlockDevice) -> Luks1Header:
    if dev.size < 4096:
        raise HammerError("device is too small for a LUKS1 header")
    return parse(dev.read(0, 4096))


def write_header(dev: BlockDevice, hdr: Luks1Header) -> None:
    check_layout(hdr, None)
    block = bytearray(dev.read(0, 4096))
    block[:PHDR_SIZE] = hdr.pack()
    dev.write(0, block)
    dev.flush()


def layout(key_bytes: int, align_sectors: int = 2048) -> tuple[list[int], int]:
    """cryptsetup's key-material offsets (sectors) and payload offset: the first slot at
    sector 8 (4 KiB), each slot rounded up to 4 KiB, the payload aligned to 1 MiB."""
    per_slot = -(-key_bytes * STRIPES // SECTOR)
    per_slot = -(-per_slot // 8) * 8
    offsets = [8 + i * per_slot for i in range(SLOT_COUNT)]
    end = offsets[-1] + per_slot
    return offsets, -(-end // align_sectors) * align_sectors
