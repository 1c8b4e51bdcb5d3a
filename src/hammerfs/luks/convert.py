"""LUKS1 <-> LUKS2 header conversion in place, as `cryptsetup convert` does it.

The payload and the key-slot material stay as they are; only the material moves.  A LUKS2
header needs two 16 KiB copies before its first key slot, where LUKS1 starts its material
at 4 KiB, so the whole material area shifts by 28 KiB: LUKS1 sector-8 material sits at
32 KiB in LUKS2.  The resulting JSON is the one cryptsetup writes for the same volume
(tests compare them).  LUKS2 -> LUKS1 is possible only when the volume is representable in
LUKS1: pbkdf2 slots 0-7 at LUKS1's fixed places, 512-byte sectors, no tokens, one hash.

Not crash-safe, like cryptsetup's: the material is moved before the new header is written.
The command asks for confirmation and recommends a header backup.
"""

from __future__ import annotations

from hammerfs.errors import HammerError
from hammerfs.luks import luks1, luks2
from hammerfs.luks.container import (
    Container,
    Luks1Container,
    Luks2Container,
    open_container,
)
from hammerfs.luks.kdf import check_pbkdf2

LUKS2_HDR_SIZE = 16384
MATERIAL_SHIFT = 2 * LUKS2_HDR_SIZE - 8 * luks1.SECTOR     # 28 KiB
LUKS1_MATERIAL_START = 8 * luks1.SECTOR


class ConvertError(HammerError):
    """The volume cannot be represented in the other format; nothing was written."""


def _refuse(version: int, reason: str) -> ConvertError:
    return ConvertError(f"cannot convert to LUKS{version}: {reason}")


def _area_size(key_bytes: int) -> int:
    """LUKS2 key-slot area of one LUKS1 slot: its material rounded up to 4 KiB."""
    sectors = -(-key_bytes * luks1.STRIPES // luks1.SECTOR)
    return -(-sectors * luks1.SECTOR // 4096) * 4096


# ---- LUKS1 -> LUKS2 -------------------------------------------------------------------------

def luks2_meta_from_luks1(hdr: luks1.Luks1Header) -> dict:
    """The LUKS2 JSON metadata of a converted LUKS1 header (cryptsetup's layout)."""
    cipher = f"{hdr.cipher_name}-{hdr.cipher_mode}"
    payload = hdr.payload_offset * luks1.SECTOR
    keyslots = {}
    for slot, s in enumerate(hdr.slots):
        if not s.enabled:
            continue
        keyslots[str(slot)] = {
            "type": "luks2", "key_size": hdr.key_bytes,
            "kdf": {"type": "pbkdf2", "hash": hdr.hash_spec, "iterations": s.iterations,
                    "salt": luks2.b64encode(s.salt)},
            "af": {"type": "luks1", "hash": hdr.hash_spec, "stripes": s.stripes},
            "area": {"type": "raw", "encryption": cipher, "key_size": hdr.key_bytes,
                     "offset": str(s.material_offset * luks1.SECTOR + MATERIAL_SHIFT),
                     "size": str(_area_size(hdr.key_bytes))},
        }
    return {
        "keyslots": keyslots,
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": str(payload), "iv_tweak": "0",
                           "size": "dynamic", "encryption": cipher, "sector_size": 512}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": list(keyslots), "segments": ["0"],
                          "hash": hdr.hash_spec, "salt": luks2.b64encode(hdr.mk_digest_salt),
                          "digest": luks2.b64encode(hdr.mk_digest),
                          "iterations": hdr.mk_digest_iterations}},
        "config": {"json_size": str(LUKS2_HDR_SIZE - luks2.BINARY_SIZE),
                   "keyslots_size": str(payload - 2 * LUKS2_HDR_SIZE)},
    }


def _check_luks1_convertible(container: Luks1Container) -> None:
    """Refuses what does not fit a LUKS2 layout."""
    hdr = container.hdr
    container.check_writable()
    payload = hdr.payload_offset * luks1.SECTOR
    if payload == 0:
        raise _refuse(2, "the header is detached (payload offset 0); this is not supported")
    end = max((s.material_offset * luks1.SECTOR + _area_size(hdr.key_bytes)
               for s in hdr.slots), default=LUKS1_MATERIAL_START)
    if end + MATERIAL_SHIFT > payload:
        raise _refuse(2, f"no room for the LUKS2 header: the key material would end at "
                      f"{end + MATERIAL_SHIFT}, beyond the data offset {payload}")
    if payload % 4096:
        raise _refuse(2, f"the data offset {payload} is not a multiple of 4096")


def to_luks2(container: Luks1Container) -> Luks2Container:
    _check_luks1_convertible(container)
    hdr = container.hdr
    payload = hdr.payload_offset * luks1.SECTOR
    new = luks2.Luks2Header(LUKS2_HDR_SIZE, 1, "", "", hdr.uuid,
                            luks2_meta_from_luks1(hdr))
    dev = container.dev
    luks2.validate(new.meta, new.hdr_size, dev.size)     # refuse before the first write
    # Everything between the phdr's sector and the data moves (the inverse of to_luks1).
    material = dev.read(LUKS1_MATERIAL_START, payload - MATERIAL_SHIFT - LUKS1_MATERIAL_START)
    dev.write(LUKS1_MATERIAL_START + MATERIAL_SHIFT, material)
    dev.flush()
    luks2.write_header(dev, new)
    return open_container(dev)      # type: ignore[return-value]


# ---- LUKS2 -> LUKS1 -------------------------------------------------------------------------

def _luks1_hash(container: Luks2Container) -> str:
    """The one hash LUKS1 has for the digest, the slots' PBKDF2 and the AF splitter."""
    meta = container.hdr.meta
    if len(meta["digests"]) != 1:
        raise _refuse(1, "LUKS1 has exactly one volume-key digest")
    digest = next(iter(meta["digests"].values()))
    if digest["type"] != "pbkdf2":
        raise _refuse(1, f"the digest type '{digest['type']}' does not exist in LUKS1")
    if len(luks2.b64decode(digest["digest"], "digest")) < luks1.DIGEST_SIZE:
        raise _refuse(1, "the volume-key digest is shorter than LUKS1's 20 bytes")
    _check_pbkdf2_fields(digest, "the volume-key digest", digest["hash"])
    return digest["hash"]


def _check_pbkdf2_fields(obj: dict, what: str, hash_name: str) -> None:
    """Iterations and salt LUKS1's fixed fields hold (reading checked only their types)."""
    try:
        check_pbkdf2(hash_name, obj.get("iterations"))
        salt = luks2.b64decode(obj.get("salt"), "salt")
    except HammerError as exc:
        raise _refuse(1, f"{what}: {exc}") from None
    if len(salt) != luks1.SALT_SIZE:
        raise _refuse(1, f"{what} has a {len(salt)}-byte salt; LUKS1 stores "
                      f"{luks1.SALT_SIZE} bytes")


def _check_luks2_keyslot(slot_id: str, ks: dict, hash_name: str, cipher: str, key_size: int,
                         material_offsets: list[int]) -> None:
    slot = int(slot_id)
    if slot >= luks1.SLOT_COUNT:
        raise _refuse(1, f"key slot {slot} is active and LUKS1 has only slots 0-7")
    kdf, af, area = ks.get("kdf", {}), ks.get("af", {}), ks.get("area", {})
    if ks.get("type") != "luks2" or kdf.get("type") != "pbkdf2":
        raise _refuse(1, f"key slot {slot} uses {kdf.get('type', ks.get('type'))}; LUKS1 "
                      "needs pbkdf2 (add a pbkdf2 key slot, or use `luks change-key "
                      "--pbkdf pbkdf2`)")
    if kdf.get("hash") != hash_name or af.get("hash") != hash_name:
        raise _refuse(1, f"key slot {slot} hashes differ from the digest's {hash_name} "
                      "(LUKS1 uses one hash for all)")
    _check_pbkdf2_fields(kdf, f"key slot {slot}", hash_name)
    if af.get("type") != "luks1" or af.get("stripes") != luks1.STRIPES:
        raise _refuse(1, f"key slot {slot} has an anti-forensic layout LUKS1 cannot express")
    if area.get("type") != "raw" or area.get("encryption") != cipher \
            or area.get("key_size") != key_size or ks.get("key_size") != key_size:
        raise _refuse(1, f"key slot {slot} area encryption differs from the data segment's")
    # The material stays where it is (shifted with the whole area), so it must sit at one
    # of LUKS1's fixed places, though not necessarily the one of its own slot number.
    places = {o * luks1.SECTOR + MATERIAL_SHIFT for o in material_offsets}
    if int(area["offset"]) not in places:
        raise _refuse(1, f"key slot {slot} material is at {area['offset']}, not at one of "
                      "LUKS1's fixed places")


def _check_luks2_convertible(container: Luks2Container) -> tuple[str, int]:
    """(hash, data offset) of a LUKS2 volume LUKS1 can represent; refuses anything else."""
    container.check_writable()
    meta = container.hdr.meta
    if meta["tokens"]:
        raise _refuse(1, f"the header holds {len(meta['tokens'])} token(s), which LUKS1 "
                      "cannot store")
    seg = container.hdr.segment()
    if seg["sector_size"] != 512:
        raise _refuse(1, f"the encryption sector size is {seg['sector_size']}; LUKS1 has only "
                      "512-byte sectors")
    if int(seg["iv_tweak"]) != 0:
        raise _refuse(1, "the data segment has an IV tweak, which LUKS1 cannot store")
    if seg["size"] != "dynamic":
        raise _refuse(1, "the data segment has a fixed size, which LUKS1 cannot store")
    offset = int(seg["offset"])
    if offset == 0:
        raise _refuse(1, "the header is detached (data offset 0); this is not supported")
    if offset % luks1.SECTOR:
        raise _refuse(1, "the data offset is not a multiple of 512")
    hash_name = _luks1_hash(container)
    key_size = container.key_size
    offsets, end_sectors = luks1.layout(key_size, align_sectors=8)
    if end_sectors * luks1.SECTOR > offset:
        raise _refuse(1, "the data starts before the end of LUKS1's key material")
    digest = next(iter(meta["digests"].values()))
    if sorted(digest["keyslots"], key=int) != sorted(meta["keyslots"], key=int):
        raise _refuse(1, "some key slots do not hold this volume's key (unbound key slots), "
                      "which LUKS1 cannot store")
    for slot_id, ks in meta["keyslots"].items():
        _check_luks2_keyslot(slot_id, ks, hash_name, seg["encryption"], key_size, offsets)
    return hash_name, offset


def to_luks1(container: Luks2Container) -> Luks1Container:
    hash_name, offset = _check_luks2_convertible(container)
    meta = container.hdr.meta
    digest = next(iter(meta["digests"].values()))
    cipher_name, _, cipher_mode = container.cipher.partition("-")
    offsets, _ = luks1.layout(container.key_size, align_sectors=8)
    slots = [luks1.Luks1Slot() for _ in offsets]
    for slot_id, ks in meta["keyslots"].items():
        s = slots[int(slot_id)]
        s.active, s.iterations = luks1.SLOT_ENABLED, ks["kdf"]["iterations"]
        s.salt = luks2.b64decode(ks["kdf"]["salt"], "salt")
        s.material_offset = (int(ks["area"]["offset"]) - MATERIAL_SHIFT) // luks1.SECTOR
    # Inactive slots get the places left over, in order (as cryptsetup assigns them).
    free = iter(sorted(set(offsets) - {s.material_offset for s in slots if s.enabled}))
    for s in slots:
        if not s.enabled:
            s.material_offset = next(free)
    hdr = luks1.Luks1Header(cipher_name, cipher_mode, hash_name, offset // luks1.SECTOR,
                            container.key_size,
                            luks2.b64decode(digest["digest"], "digest")[:luks1.DIGEST_SIZE],
                            luks2.b64decode(digest["salt"], "salt"), digest["iterations"],
                            container.uuid, slots)
    dev = container.dev
    luks1.check_layout(hdr, dev.size)     # refuse before the first write
    # Everything between the headers and the data moves, as cryptsetup moves it.
    material = dev.read(2 * LUKS2_HDR_SIZE, offset - 2 * LUKS2_HDR_SIZE)
    # The LUKS1 phdr is one sector: zero the rest of the first 4 KiB (old LUKS2 binary
    # header), then the material, then the phdr last.
    dev.write(0, bytes(LUKS1_MATERIAL_START))
    dev.write(LUKS1_MATERIAL_START, material)
    dev.flush()
    luks1.write_header(dev, hdr)
    return open_container(dev)      # type: ignore[return-value]


def convert(container: Container, version: int) -> Container:
    """Convert ``container`` in place to LUKS ``version``; returns the reopened container."""
    if version == container.version:
        raise HammerError(f"the volume is already LUKS{version}")
    if isinstance(container, Luks1Container):
        return to_luks2(container)
    if isinstance(container, Luks2Container):
        return to_luks1(container)
    raise HammerError(f"unsupported LUKS version {container.version}")
