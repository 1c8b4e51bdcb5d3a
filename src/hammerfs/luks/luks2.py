"""LUKS2 on-disk header: the two binary header copies, their checksums and seqid, and the JSON
metadata with cryptsetup's validation rules (LUKS2 on-disk format spec v1.1.x, and
cryptsetup's lib/luks2 for the details the spec leaves open).

The JSON is kept as the parsed (ordered) dict so that fields and tokens we do not interpret
survive a rewrite unchanged; the accessors below validate what we rely on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError

MAGIC_PRIMARY = b"LUKS\xba\xbe"
MAGIC_SECONDARY = b"SKUL\xba\xbe"
BINARY_SIZE = 4096
HDR_SIZES = tuple(16384 << i for i in range(9))   # 16 KiB ... 4 MiB
MAX_KEYSLOTS_SIZE = 128 * 1024 * 1024
MAX_OBJECTS = 32
SECTOR_SIZES = (512, 1024, 2048, 4096)
CSUM_ALG = "sha256"
# magic, version, hdr_size, seqid, label, csum_alg, salt, uuid, subsystem, hdr_offset
_BINARY = struct.Struct(">6sHQQ48s32s64s40s48sQ")
CSUM_OFFSET = 448
CSUM_SIZE = 64
MAX_OFFSET = 1 << 62


class HeaderError(HammerError):
    """The LUKS2 metadata is damaged or not something we can safely use."""


@dataclass
class BinaryHeader:
    magic: bytes
    version: int
    hdr_size: int
    seqid: int
    label: str
    csum_alg: str
    salt: bytes
    uuid: str
    subsystem: str
    hdr_offset: int

    def pack(self) -> bytearray:
        buf = bytearray(BINARY_SIZE)
        _BINARY.pack_into(buf, 0, self.magic, 2, self.hdr_size, self.seqid,
                          _cstr(self.label, 48, "label"), _cstr(self.csum_alg, 32, "csum_alg"),
                          self.salt, _cstr(self.uuid, 40, "uuid"),
                          _cstr(self.subsystem, 48, "subsystem"), self.hdr_offset)
        return buf


def _cstr(text: str, size: int, name: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise HammerError(f"{name} is too long (at most {size - 1} bytes)")
    return raw


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def parse_binary(buf: bytes) -> BinaryHeader:
    fields = _BINARY.unpack_from(buf, 0)
    return BinaryHeader(fields[0], fields[1], fields[2], fields[3], _text(fields[4]),
                        _text(fields[5]), fields[6], _text(fields[7]), _text(fields[8]),
                        fields[9])


def checksum(binary: bytes | bytearray, json_area: bytes | bytearray) -> bytes:
    """sha256 over the binary header with its csum field zeroed, then the whole JSON area."""
    h = hashlib.sha256()
    zeroed = bytearray(binary)
    zeroed[CSUM_OFFSET:CSUM_OFFSET + CSUM_SIZE] = bytes(CSUM_SIZE)
    h.update(zeroed)
    h.update(json_area)
    return h.digest()


@dataclass
class Luks2Header:
    """A validated LUKS2 header: the metadata dict plus the binary header fields."""

    hdr_size: int
    seqid: int
    label: str
    subsystem: str
    uuid: str
    meta: dict
    notices: list[str] = field(default_factory=list)

    # ---- geometry -------------------------------------------------------------------------
    @property
    def json_size(self) -> int:
        return self.hdr_size - BINARY_SIZE

    @property
    def keyslots_size(self) -> int:
        return _num(self.meta["config"]["keyslots_size"], "config.keyslots_size")

    @property
    def keyslots_start(self) -> int:
        return 2 * self.hdr_size

    def segment(self) -> dict:
        """The single crypt data segment (reencryption leaves several; refused elsewhere)."""
        segments = self.meta["segments"]
        if len(segments) != 1:
            raise HeaderError("the volume has several data segments (a reencryption in "
                              "progress?); this is not supported")
        seg = next(iter(segments.values()))
        if seg.get("type") != "crypt":
            raise HeaderError(f"unsupported data segment type '{seg.get('type')}'")
        return seg

    def requirements(self) -> list[str]:
        return list(self.meta["config"].get("requirements", {}).get("mandatory", []))

    def digest_for_keyslot(self, slot: int) -> dict | None:
        for digest in self.meta["digests"].values():
            if str(slot) in digest["keyslots"]:
                return digest
        return None

    def keyslot_ids(self) -> list[int]:
        return sorted(int(k) for k in self.meta["keyslots"])


def b64decode(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise HeaderError(f"LUKS2 metadata: {where} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HeaderError(f"LUKS2 metadata: {where} is not valid base64") from None


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _num(value: object, where: str) -> int:
    """A JSON decimal-string number (offsets and sizes are strings in LUKS2)."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() \
            or len(value) > 20:
        raise HeaderError(f"LUKS2 metadata: {where} must be a decimal string")
    number = int(value)
    if number > MAX_OFFSET:
        raise HeaderError(f"LUKS2 metadata: {where} is out of range")
    return number


def _int(obj: dict, key: str, where: str, low: int = 0, high: int = 0xFFFFFFFF) -> int:
    value = obj.get(key)
    if type(value) is not int or not low <= value <= high:
        raise HeaderError(f"LUKS2 metadata: {where}.{key} must be an integer in "
                          f"[{low}, {high}]")
    return value


def _is_int(obj: dict, key: str, where: str) -> None:
    """A JSON integer of any value: cryptsetup checks only the type of a key slot's costs
    and sizes when it reads the header; their ranges make only that slot unusable."""
    if type(obj.get(key)) is not int:
        raise HeaderError(f"LUKS2 metadata: {where}.{key} must be an integer")


def _obj(parent: dict, key: str, where: str) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise HeaderError(f"LUKS2 metadata: {where}{key} must be an object")
    return value


def _str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise HeaderError(f"LUKS2 metadata: {where}.{key} must be a string")
    return value


def _ids(section: dict, name: str) -> None:
    if len(section) > MAX_OBJECTS:
        raise HeaderError(f"LUKS2 metadata: too many {name}")
    for key, value in section.items():
        if not key.isascii() or not key.isdigit() or int(key) >= MAX_OBJECTS:
            raise HeaderError(f"LUKS2 metadata: invalid {name} id '{key}'")
        if not isinstance(value, dict):
            raise HeaderError(f"LUKS2 metadata: {name}.{key} must be an object")


def _id_list(obj: dict, key: str, where: str, known: dict) -> None:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HeaderError(f"LUKS2 metadata: {where}.{key} must be a list of ids")
    for ref in value:
        if ref not in known:
            raise HeaderError(f"LUKS2 metadata: {where} references missing {key[:-1]} {ref}")


def validate(meta: object, hdr_size: int, device_size: int | None = None) -> dict:
    """Check the JSON metadata as cryptsetup does when it loads a header (types, ranges of
    the layout, references, overlaps); returns it unchanged or raises HeaderError.  What
    makes one key slot unusable (its KDF costs, key size, cipher) is checked when that slot
    is tried, so that a damaged slot never makes the others unusable.  ``device_size``
    (given before a write) also checks the areas against the device end; a reader checks
    them where it reads (the slot it tries, the payload it opens), as cryptsetup does."""
    if not isinstance(meta, dict):
        raise HeaderError("LUKS2 metadata is not a JSON object")
    for section in ("keyslots", "tokens", "segments", "digests", "config"):
        _obj(meta, section, "")
    config = meta["config"]
    json_size = _num(config.get("json_size"), "config.json_size")
    if json_size + BINARY_SIZE != hdr_size:
        raise HeaderError("LUKS2 metadata: config.json_size does not match the header size")
    keyslots_size = _num(config.get("keyslots_size"), "config.keyslots_size")
    if keyslots_size % 4096 or keyslots_size > MAX_KEYSLOTS_SIZE:
        raise HeaderError("LUKS2 metadata: invalid config.keyslots_size")
    if "requirements" in config:
        req = _obj(config, "requirements", "config.")
        mandatory = req.get("mandatory", [])
        if not isinstance(mandatory, list) or not all(isinstance(r, str) for r in mandatory):
            raise HeaderError("LUKS2 metadata: config.requirements.mandatory must be a list "
                              "of strings")
    for name in ("keyslots", "tokens", "segments", "digests"):
        _ids(meta[name], name)
    _validate_keyslots(meta["keyslots"], hdr_size, keyslots_size, device_size)
    _validate_segments(meta["segments"], hdr_size, keyslots_size, device_size)
    for token_id, token in meta["tokens"].items():
        _str(token, "type", f"tokens.{token_id}")
        _id_list(token, "keyslots", f"tokens.{token_id}", meta["keyslots"])
    for digest_id, digest in meta["digests"].items():
        where = f"digests.{digest_id}"
        _str(digest, "type", where)
        _id_list(digest, "keyslots", where, meta["keyslots"])
        _id_list(digest, "segments", where, meta["segments"])
        if digest["type"] == "pbkdf2":
            _str(digest, "hash", where)
            _is_int(digest, "iterations", where)
            b64decode(digest.get("salt"), f"{where}.salt")
            b64decode(digest.get("digest"), f"{where}.digest")
    for seg_id, seg in meta["segments"].items():
        if seg["type"] == "crypt" and not any(
                seg_id in d["segments"] for d in meta["digests"].values()):
            raise HeaderError(f"LUKS2 metadata: segment {seg_id} has no digest")
    return meta


def _validate_keyslots(keyslots: dict, hdr_size: int, keyslots_size: int,
                       device_size: int | None) -> None:
    start, end = 2 * hdr_size, 2 * hdr_size + keyslots_size
    areas = []
    for slot_id, slot in keyslots.items():
        where = f"keyslots.{slot_id}"
        kind = _str(slot, "type", where)
        area = _obj(slot, "area", where + ".")
        _str(area, "type", where + ".area")
        offset = _num(area.get("offset"), where + ".area.offset")
        size = _num(area.get("size"), where + ".area.size")
        if offset < start or offset + size > end:
            raise HeaderError(f"LUKS2 metadata: {where} area lies outside the key-slot area")
        if device_size is not None and offset + size > device_size:
            raise HeaderError(f"LUKS2 metadata: {where} area lies beyond the device end")
        areas.append((offset, offset + size, slot_id))
        if kind != "luks2":
            continue
        _is_int(slot, "key_size", where)
        if area["type"] != "raw":
            raise HeaderError(f"LUKS2 metadata: {where} area type '{area['type']}' "
                              "is not supported")
        _str(area, "encryption", where + ".area")
        _is_int(area, "key_size", where + ".area")
        af = _obj(slot, "af", where + ".")
        if _str(af, "type", where + ".af") != "luks1":
            raise HeaderError(f"LUKS2 metadata: {where} af type '{af['type']}' unsupported")
        _is_int(af, "stripes", where + ".af")
        _str(af, "hash", where + ".af")
        kdf = _obj(slot, "kdf", where + ".")
        kdf_type = _str(kdf, "type", where + ".kdf")
        if kdf_type == "pbkdf2":
            _str(kdf, "hash", where + ".kdf")
            _is_int(kdf, "iterations", where + ".kdf")
        elif kdf_type in ("argon2i", "argon2id"):
            for name in ("time", "memory", "cpus"):
                _is_int(kdf, name, where + ".kdf")
    areas.sort()
    for (_, a_end, a_id), (b_start, _, b_id) in zip(areas, areas[1:], strict=False):
        if b_start < a_end:
            raise HeaderError(f"LUKS2 metadata: key slots {a_id} and {b_id} overlap")


def _validate_segments(segments: dict, hdr_size: int, keyslots_size: int,
                       device_size: int | None) -> None:
    for seg_id, seg in segments.items():
        where = f"segments.{seg_id}"
        kind = _str(seg, "type", where)
        offset = _num(seg.get("offset"), where + ".offset")
        if offset % 512:
            raise HeaderError(f"LUKS2 metadata: {where}.offset is not 512-byte aligned")
        size_text = seg.get("size")
        size = None if size_text == "dynamic" else _num(size_text, where + ".size")
        if kind != "crypt":
            continue
        _num(seg.get("iv_tweak"), where + ".iv_tweak")
        _str(seg, "encryption", where)
        sector = _int(seg, "sector_size", where, 512, 4096)
        if sector not in SECTOR_SIZES:
            raise HeaderError(f"LUKS2 metadata: {where}.sector_size {sector} is invalid")
        if size is not None and size % sector:
            raise HeaderError(f"LUKS2 metadata: {where}.size is not a multiple of the "
                              "sector size")
        if offset and offset < 2 * hdr_size + keyslots_size:
            raise HeaderError(f"LUKS2 metadata: {where} overlaps the header")
        if device_size is not None and offset and offset + (size or 0) > device_size:
            raise HeaderError(f"LUKS2 metadata: {where} lies beyond the device end")


# ---- reading ------------------------------------------------------------------------------

def _read_copy(dev: BlockDevice, offset: int, magic: bytes,
               expect_size: int | None) -> tuple[BinaryHeader, dict] | str:
    """One header copy, checked; or a reason why it is unusable."""
    if offset + BINARY_SIZE > dev.size:
        return "beyond the end of the device"
    binary = dev.read(offset, BINARY_SIZE)
    hdr = parse_binary(binary)
    if hdr.magic != magic or hdr.version != 2:
        return "bad magic or version"
    if hdr.hdr_size not in HDR_SIZES or (expect_size and hdr.hdr_size != expect_size):
        return "invalid header size"
    if hdr.hdr_offset != offset:
        return "header offset mismatch"
    if hdr.csum_alg != CSUM_ALG:
        return f"unsupported checksum algorithm '{hdr.csum_alg}'"
    if offset + hdr.hdr_size > dev.size:
        return "header extends beyond the device"
    json_area = dev.read(offset + BINARY_SIZE, hdr.hdr_size - BINARY_SIZE)
    stored = binary[CSUM_OFFSET:CSUM_OFFSET + 32]
    if checksum(binary, json_area) != stored:
        return "checksum mismatch"
    text = bytes(json_area).split(b"\0", 1)[0]
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        return "metadata is not valid JSON"
    return hdr, meta


def read_header(dev: BlockDevice) -> Luks2Header:
    """Read both copies and use the valid one with the higher seqid (a copy whose JSON
    fails validation counts as damaged, as in cryptsetup); say so when a copy is damaged.
    Raises HeaderError when neither copy is usable."""
    primary = _read_copy(dev, 0, MAGIC_PRIMARY, None)
    candidates = []
    reasons = {}
    if isinstance(primary, str):
        reasons["primary"] = primary
        secondary_offsets = HDR_SIZES
    else:
        candidates.append(("primary", primary))
        secondary_offsets = (primary[0].hdr_size,)
    secondary = None
    for offset in secondary_offsets:
        secondary = _read_copy(dev, offset, MAGIC_SECONDARY, None)
        if not isinstance(secondary, str):
            candidates.append(("secondary", secondary))
            break
    if isinstance(secondary, str):
        reasons["secondary"] = secondary
    if not candidates:
        raise HeaderError("LUKS2 header is damaged: primary copy: "
                          f"{reasons.get('primary')}; secondary copy: "
                          f"{reasons.get('secondary', 'not found')}")
    candidates.sort(key=lambda c: c[1][0].seqid, reverse=True)
    name, (binary, meta) = candidates[0]
    try:
        validate(meta, binary.hdr_size)
    except HeaderError as exc:
        if len(candidates) < 2:
            raise
        reasons[name] = f"invalid metadata: {exc}"
        name, (binary, meta) = candidates[1]
        validate(meta, binary.hdr_size)
    notices = []
    if "primary" in reasons:
        notices.append(f"the primary LUKS2 header is damaged ({reasons['primary']}); "
                       "using the secondary copy")
    elif "secondary" in reasons:
        notices.append(f"the secondary LUKS2 header is damaged ({reasons['secondary']})")
    elif len(candidates) == 2 and candidates[0][1][0].seqid != candidates[1][1][0].seqid:
        notices.append("the LUKS2 header copies differ; using the newer one "
                       f"({name})")
    return Luks2Header(binary.hdr_size, binary.seqid, binary.label, binary.subsystem,
                       binary.uuid, meta, notices)


# ---- writing ------------------------------------------------------------------------------

def serialize_json(meta: dict, json_size: int) -> bytes:
    """Compact JSON like cryptsetup's, zero-padded to the JSON area size."""
    text = json.dumps(meta, separators=(",", ":"), ensure_ascii=True).encode()
    if len(text) >= json_size:
        raise HammerError("LUKS2 metadata does not fit in the header's JSON area")
    return text + bytes(json_size - len(text))


def header_copies(hdr: Luks2Header) -> tuple[bytes, bytes]:
    """The primary and secondary copies (binary header + JSON area), each with its own salt
    and checksum, for the header's current seqid."""
    json_area = serialize_json(hdr.meta, hdr.json_size)
    copies = []
    for magic, offset in ((MAGIC_PRIMARY, 0), (MAGIC_SECONDARY, hdr.hdr_size)):
        binary = BinaryHeader(magic, 2, hdr.hdr_size, hdr.seqid, hdr.label, CSUM_ALG,
                              os.urandom(64), hdr.uuid, hdr.subsystem, offset).pack()
        binary[CSUM_OFFSET:CSUM_OFFSET + 32] = checksum(binary, json_area)
        copies.append(bytes(binary) + json_area)
    return copies[0], copies[1]


def write_header(dev: BlockDevice, hdr: Luks2Header) -> None:
    """Bump seqid and write the primary, then the secondary copy (a crash in between leaves
    one valid copy, which readers pick by seqid)."""
    validate(hdr.meta, hdr.hdr_size, dev.size if hdr_attached(hdr) else None)
    hdr.seqid += 1
    primary, secondary = header_copies(hdr)
    dev.write(0, primary)
    dev.flush()
    dev.write(hdr.hdr_size, secondary)
    dev.flush()


def hdr_attached(hdr: Luks2Header) -> bool:
    return any(_num(s["offset"], "offset") for s in hdr.meta["segments"].values())
