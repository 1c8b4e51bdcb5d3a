"""A LUKS1 or LUKS2 container on a BlockDevice: format, unlock, key-slot management, label and
uuid, dump.  One class per version behind the same methods, used by the commands and by
``unlock_if_luks``.  Every check that can refuse runs before the first write.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import uuid as uuidlib
from dataclasses import dataclass

from hammerfs.blockdev.base import BlockDevice
from hammerfs.errors import HammerError
from hammerfs.luks import kdf, keyslots, luks1, luks2
from hammerfs.luks.kdf import KdfParams

LUKS_MAGIC = b"LUKS\xba\xbe"
DEFAULT_KEY_SIZE = 64
DEFAULT_HASH = "sha256"
DEFAULT_SECTOR_SIZE = 4096
LUKS2_HDR_SIZE = 16384
LUKS2_DATA_OFFSET = 16 * 1024 * 1024
LUKS2_MAX_SLOTS = 32
WIPE_CHUNK = 1024 * 1024


class UnlockFailed(HammerError):
    """No key slot opened.  ``failures``: why each tried slot failed (None: the passphrase
    did not match it)."""

    def __init__(self, message: str, failures: dict[int, HammerError | None] | None = None):
        super().__init__(message)
        self.failures = failures or {}


class WrongPassphrase(UnlockFailed):
    """No key slot opens with the passphrase (cryptsetup exits 2 here too)."""

    exit_code = 2


class NoUsableKeySlot(UnlockFailed):
    """Every key slot that could open the volume is damaged or unsupported."""


def _unlock_error(failures: dict[int, HammerError | None]) -> HammerError:
    """The error after no slot opened: wrong passphrase, unless no slot could even be
    compared with it; the reasons of damaged slots are named."""
    if all(reason is None for reason in failures.values()):
        return WrongPassphrase("no key available with this passphrase", failures)
    detail = "; ".join(f"key slot {slot}: {reason or 'passphrase does not match'}"
                       for slot, reason in failures.items())
    if any(reason is None for reason in failures.values()):
        return WrongPassphrase(f"no key available with this passphrase ({detail})", failures)
    return NoUsableKeySlot(f"no usable key slot ({detail})", failures)


@dataclass
class KdfSpec:
    """What the user asked for (cryptsetup's --pbkdf* / --iter-time); unset means default."""

    type: str | None = None
    hash: str = DEFAULT_HASH
    iter_time_ms: int | None = None
    memory: int | None = None
    parallel: int | None = None
    force_iterations: int | None = None

    def resolve(self, version: int, key_size: int) -> KdfParams:
        """Concrete KDF parameters for a new key slot, benchmarked unless forced."""
        kind = self.type or ("argon2id" if version == 2 else "pbkdf2")
        if version == 1 and kind != "pbkdf2":
            raise HammerError("LUKS1 supports only the pbkdf2 key derivation function")
        target = self.iter_time_ms or kdf.DEFAULT_ITER_TIME_MS
        if kind == "pbkdf2":
            iterations = self.force_iterations or kdf.benchmark_pbkdf2(self.hash, target,
                                                                        key_size)
            params = KdfParams("pbkdf2", os.urandom(32), hash=self.hash,
                               iterations=iterations)
        elif kind in kdf.ARGON2_TYPES:
            parallel = self.parallel or kdf.default_parallel()
            max_memory = self.memory or kdf.default_argon2_memory()
            if self.force_iterations:
                time_cost, memory = self.force_iterations, max_memory
            else:
                time_cost, memory = kdf.benchmark_argon2(kind, target, max_memory, parallel,
                                                         key_size)
            params = KdfParams(kind, os.urandom(32), time=time_cost, memory=memory,
                               parallel=parallel)
        else:
            raise HammerError(f"unknown key derivation function '{kind}' "
                              "(use argon2id, argon2i or pbkdf2)")
        kdf.check_params(params)
        return params

    def digest_iterations(self, key_size: int) -> int:
        """Iterations of the volume-key digest: benchmarked to 125 ms, or the minimum when
        the user forced costs (as cryptsetup does)."""
        if self.force_iterations:
            return kdf.PBKDF2_MIN_ITERATIONS
        return kdf.benchmark_pbkdf2(self.hash, kdf.DIGEST_ITER_TIME_MS, key_size)


def is_luks(dev: BlockDevice) -> bool:
    """A LUKS header at the start, or (primary damaged) a LUKS2 secondary copy."""
    if dev.size < 4096:
        return False
    if dev.read(0, 4096)[:6] == LUKS_MAGIC:
        return True
    return any(offset + 4096 <= dev.size
               and dev.read(offset, 4096)[:6] == luks2.MAGIC_SECONDARY
               for offset in luks2.HDR_SIZES)


def open_container(dev: BlockDevice, *, validate_device: bool = True) -> Container:
    """Parse the header on ``dev`` (LUKS1 or LUKS2); raises HammerError if it has none.
    Reading checks nothing against the device size (cryptsetup neither: a damaged offset
    makes only its slot or the payload unusable, checked where used); ``validate_device``
    is kept for callers and has no effect."""
    if dev.size < 4096:
        raise HammerError("device is too small to hold a LUKS header")
    head = dev.read(0, 4096)
    if head[:6] != LUKS_MAGIC:
        try:
            # A damaged primary LUKS2 header: look for a secondary copy.
            return Luks2Container(dev, luks2.read_header(dev))
        except HammerError:
            raise HammerError("not a LUKS device (no LUKS header found)") from None
    version = int.from_bytes(head[6:8], "big")
    if version == 1:
        return Luks1Container(dev, luks1.parse(head))
    if version == 2:
        return Luks2Container(dev, luks2.read_header(dev))
    raise HammerError(f"unsupported LUKS version {version}")


def _verify_digest(hash_name: str, key: bytes, salt: bytes, iterations: int,
                   digest: bytes) -> bool:
    candidate = kdf.pbkdf2(hash_name, key, salt, iterations, len(digest))
    return hmac.compare_digest(candidate, digest)


def _wipe(dev: BlockDevice, offset: int, length: int) -> None:
    """Overwrite with random bytes: AF-split material is useless once any part is gone."""
    end = offset + length
    while offset < end:
        size = min(WIPE_CHUNK, end - offset)
        dev.write(offset, os.urandom(size))
        offset += size
    dev.flush()


def _zero(dev: BlockDevice, offset: int, length: int) -> None:
    end = offset + length
    zeros = bytes(min(WIPE_CHUNK, length))
    while offset < end:
        size = min(WIPE_CHUNK, end - offset)
        dev.write(offset, zeros[:size])
        offset += size


class Container:
    """Common interface of LUKS1 and LUKS2 containers."""

    version: int
    dev: BlockDevice

    # geometry of the data segment
    cipher: str
    key_size: int
    sector_size: int
    data_offset: int
    iv_tweak: int = 0

    def data_size(self, device_size: int | None = None) -> int:
        """Payload bytes (the rest of the device for a dynamic segment); ``device_size`` is
        that of the data device when the header is detached from it."""
        size = self.dev.size if device_size is None else device_size
        return max(0, size - self.data_offset)

    def notices(self) -> list[str]:
        return []

    # ---- key slots --------------------------------------------------------------------
    def active_slots(self) -> list[int]:
        raise NotImplementedError

    def check_usable(self) -> None:
        """Refuse volumes whose requirements or ciphers we cannot honour."""
        keyslots.check_cipher(self.cipher, self.key_size)

    def unlock(self, passphrase: bytes, slot: int | None = None) -> tuple[int, bytes]:
        """(slot, volume key) for the first slot the passphrase opens.  A slot that cannot
        be tried (damaged parameters, a KDF cost refused) is recorded and the next one
        tried; the final error names why each slot failed."""
        self.check_usable()
        candidates = self._unlock_order() if slot is None else [slot]
        if slot is not None and slot not in self.active_slots():
            raise HammerError(f"key slot {slot} is not active")
        failures: dict[int, HammerError | None] = {}
        for candidate in candidates:
            try:
                key = self._try_slot(candidate, passphrase)
            except HammerError as exc:
                failures[candidate] = exc
                continue
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                # Metadata the header checks let through but this slot cannot use.
                failures[candidate] = keyslots.KeySlotError(
                    f"malformed key slot ({type(exc).__name__}: {exc})")
                continue
            if key is not None:
                return candidate, key
            failures[candidate] = None
        raise _unlock_error(failures)

    def check_writable(self) -> None:
        """Refuse to change a header whose layout cryptsetup would refuse: called before
        the first write of every key-slot or identity change."""
        self.check_usable()

    def _unlock_order(self) -> list[int]:
        return self.active_slots()

    def _try_slot(self, slot: int, passphrase: bytes) -> bytes | None:
        raise NotImplementedError

    def verify_volume_key(self, key: bytes) -> bool:
        raise NotImplementedError

    def add_slot(self, volume_key: bytes, passphrase: bytes, spec: KdfSpec | KdfParams,
                 slot: int | None = None) -> int:
        """Store ``volume_key`` in a new slot opened by ``passphrase``; ``spec`` is what the
        user asked for, or already resolved parameters."""
        raise NotImplementedError

    def remove_slot(self, slot: int) -> None:
        raise NotImplementedError

    def change_slot(self, slot: int, volume_key: bytes, passphrase: bytes,
                    spec: KdfSpec | KdfParams) -> int:
        raise NotImplementedError

    def free_slot(self) -> int:
        raise NotImplementedError

    # ---- identity ---------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        raise NotImplementedError

    def set_uuid(self, value: str) -> None:
        raise NotImplementedError

    def set_label(self, label: str | None, subsystem: str | None) -> None:
        raise HammerError("labels are supported only on LUKS2")

    def dump(self, volume_key: bytes | None = None) -> str:
        raise NotImplementedError

    def header_area_size(self) -> int:
        """Bytes from the device start that header-backup saves."""
        raise NotImplementedError


def _hexlines(raw: bytes, indent: str, per_line: int = 16) -> str:
    """cryptsetup's hex layout: 16 bytes a line (the LUKS1 digest: all 20 on one),
    continuation lines indented."""
    lines = [" ".join(f"{b:02x}" for b in raw[i:i + per_line]) + " "
             for i in range(0, len(raw), per_line)]
    return ("\n" + indent).join(lines)


def _check_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise HammerError(f"'{value}' is not a valid UUID") from None


def _b(value: int) -> str:
    return str(value)


# =========================================================================================
# LUKS2
# =========================================================================================

class Luks2Container(Container):
    version = 2

    def __init__(self, dev: BlockDevice, hdr: luks2.Luks2Header):
        self.dev = dev
        self.hdr = hdr
        self._load_segment()

    def _load_segment(self) -> None:
        segments = self.hdr.meta["segments"]
        if len(segments) == 1 and next(iter(segments.values()))["type"] == "crypt":
            seg = next(iter(segments.values()))
            self.cipher = seg["encryption"]
            self.sector_size = seg["sector_size"]
            self.data_offset = int(seg["offset"])
            self.iv_tweak = int(seg["iv_tweak"])
            self._size = None if seg["size"] == "dynamic" else int(seg["size"])
            digest = self._segment_digest()
            self.key_size = self._digest_key_size(digest)
        else:
            self.cipher, self.sector_size, self.data_offset = "(none)", 512, 0
            self._size, self.key_size = 0, 0

    def _segment_digest(self) -> dict | None:
        seg_id = next(iter(self.hdr.meta["segments"]))
        for digest in self.hdr.meta["digests"].values():
            if seg_id in digest["segments"]:
                return digest
        return None

    def _digest_key_size(self, digest: dict | None) -> int:
        """The volume key size: that of the segment's luks2 key slots (one with a damaged
        key size does not decide it)."""
        sizes = [self.hdr.meta["keyslots"][slot_id]["key_size"]
                 for slot_id in (digest or {}).get("keyslots", [])
                 if self.hdr.meta["keyslots"][slot_id]["type"] == "luks2"]
        usable = [size for size in sizes if size in (32, 64)]
        return (usable or sizes or [DEFAULT_KEY_SIZE])[0]

    def data_size(self, device_size: int | None = None) -> int:
        if self._size is not None:
            return self._size
        return super().data_size(device_size)

    def notices(self) -> list[str]:
        return list(self.hdr.notices)

    def check_usable(self) -> None:
        required = self.hdr.requirements()
        if required:
            raise HammerError("this LUKS2 volume has mandatory requirements we do not "
                              f"support ({', '.join(required)}; e.g. online reencryption "
                              "or OPAL); refusing to use it")
        seg = self.hdr.segment()
        if "integrity" in seg:
            raise HammerError("LUKS2 integrity/AEAD segments are not supported")
        super().check_usable()

    def check_writable(self) -> None:
        super().check_writable()
        luks2.validate(self.hdr.meta, self.hdr.hdr_size,
                       self.dev.size if luks2.hdr_attached(self.hdr) else None)

    # ---- key slots --------------------------------------------------------------------
    def active_slots(self) -> list[int]:
        return self.hdr.keyslot_ids()

    def _unlock_order(self) -> list[int]:
        # cryptsetup: priority 2 (prefer) first, then 1 (normal); 0 (ignore) only by number.
        slots = self.hdr.meta["keyslots"]
        prio = {sid: slots[str(sid)].get("priority", 1) for sid in self.active_slots()}
        return [s for p in (2, 1) for s in self.active_slots() if prio[s] == p]

    def _try_slot(self, slot: int, passphrase: bytes) -> bytes | None:
        ks = self.hdr.meta["keyslots"][str(slot)]
        digest = self.hdr.digest_for_keyslot(slot)
        if ks["type"] != "luks2":
            raise keyslots.KeySlotError(f"unsupported key slot type '{ks['type']}'")
        if digest is None:
            raise keyslots.KeySlotError("no digest refers to it")
        area = ks["area"]
        keyslots.check_cipher(area["encryption"], area["key_size"])
        if ks["key_size"] not in (32, 64):
            raise keyslots.KeySlotError(f"volume key size {ks['key_size']} is not supported")
        params = _kdf_from_json(ks["kdf"])
        kdf.check_params(params)
        # af.stripes is not read: cryptsetup always merges 4000 stripes (the digest tells
        # whether the result is the volume key).
        size = keyslots.material_size(ks["key_size"])
        offset = int(area["offset"])
        if offset + size > self.dev.size:
            raise keyslots.KeySlotError("key material lies beyond the device end")
        slot_key = kdf.derive(passphrase, params, area["key_size"])
        encrypted = self.dev.read(offset, size)
        key = keyslots.unseal(encrypted, slot_key, ks["key_size"], ks["af"]["hash"],
                              area["encryption"])
        return key if self._digest_matches(digest, key) else None

    def _digest_matches(self, digest: dict, key: bytes) -> bool:
        if digest["type"] != "pbkdf2":
            raise keyslots.KeySlotError(f"unsupported digest type '{digest['type']}'")
        return _verify_digest(digest["hash"], key, luks2.b64decode(digest["salt"], "salt"),
                              digest["iterations"],
                              luks2.b64decode(digest["digest"], "digest"))

    def verify_volume_key(self, key: bytes) -> bool:
        digest = self._segment_digest()
        return digest is not None and self._digest_matches(digest, key)

    def free_slot(self) -> int:
        for slot in range(LUKS2_MAX_SLOTS):
            if str(slot) not in self.hdr.meta["keyslots"]:
                return slot
        raise HammerError("all key slots are full")

    def _allocate_area(self, size: int) -> int:
        """First-fit gap in the key-slot area, as cryptsetup allocates."""
        start = self.hdr.keyslots_start
        end = start + self.hdr.keyslots_size
        used = sorted((int(ks["area"]["offset"]), int(ks["area"]["offset"])
                       + int(ks["area"]["size"])) for ks in self.hdr.meta["keyslots"].values())
        cursor = start
        for a_start, a_end in used:
            if a_start - cursor >= size:
                break
            cursor = max(cursor, a_end)
        if cursor + size > end:
            raise HammerError("no space left in the LUKS2 key-slot area")
        return cursor

    def add_slot(self, volume_key: bytes, passphrase: bytes, spec: KdfSpec | KdfParams,
                 slot: int | None = None) -> int:
        self.check_writable()
        slot = self.free_slot() if slot is None else slot
        if not 0 <= slot < LUKS2_MAX_SLOTS:
            raise HammerError(f"key slot {slot} is out of range (0-{LUKS2_MAX_SLOTS - 1})")
        if str(slot) in self.hdr.meta["keyslots"]:
            raise HammerError(f"key slot {slot} is already in use")
        digest_id = self._digest_id_for(volume_key)
        self.hdr.meta["keyslots"][str(slot)] = self._seal_new_slot(volume_key, passphrase,
                                                                   spec, digest_id)
        self.hdr.meta["keyslots"] = _sorted_ids(self.hdr.meta["keyslots"])
        digest = self.hdr.meta["digests"][digest_id]
        digest["keyslots"] = sorted(set(digest["keyslots"]) | {str(slot)}, key=int)
        luks2.write_header(self.dev, self.hdr)
        return slot

    def _seal_new_slot(self, volume_key: bytes, passphrase: bytes,
                       spec: KdfSpec | KdfParams, digest_id: str) -> dict:
        """Write sealed material into a free area; return the keyslot's JSON object."""
        key_size = len(volume_key)
        area_size = -(-keyslots.material_size(key_size) // 4096) * 4096
        offset = self._allocate_area(area_size)
        params = spec if isinstance(spec, KdfParams) else spec.resolve(2, key_size)
        slot_key = kdf.derive(passphrase, params, key_size)
        af_hash = self.hdr.meta["digests"][digest_id].get("hash", DEFAULT_HASH)
        sealed = keyslots.seal(volume_key, slot_key, af_hash, keyslots.SUPPORTED_CIPHER)
        self.dev.write(offset, sealed + bytes(area_size - len(sealed)))
        self.dev.flush()
        return {
            "type": "luks2", "key_size": key_size,
            "af": {"type": "luks1", "stripes": 4000, "hash": af_hash},
            "area": {"type": "raw", "offset": str(offset), "size": str(area_size),
                     "encryption": keyslots.SUPPORTED_CIPHER, "key_size": key_size},
            "kdf": _kdf_to_json(params),
        }

    def change_slot(self, slot: int, volume_key: bytes, passphrase: bytes,
                    spec: KdfSpec | KdfParams) -> int:
        """New passphrase for ``slot``, keeping its number: the new material goes to a free
        area, one header write switches to it, then the old area is wiped (a crash leaves
        either the old or the new passphrase working)."""
        self.check_writable()
        old = self.hdr.meta["keyslots"].get(str(slot))
        if old is None:
            raise HammerError(f"key slot {slot} is not active")
        digest_id = self._digest_id_for(volume_key)
        new = self._seal_new_slot(volume_key, passphrase, spec, digest_id)
        if "priority" in old:
            new["priority"] = old["priority"]
        self.hdr.meta["keyslots"][str(slot)] = new
        luks2.write_header(self.dev, self.hdr)
        _wipe(self.dev, int(old["area"]["offset"]), int(old["area"]["size"]))
        return slot

    def _digest_id_for(self, volume_key: bytes) -> str:
        for digest_id, digest in self.hdr.meta["digests"].items():
            if digest["type"] == "pbkdf2" and self._digest_matches(digest, volume_key):
                return digest_id
        raise HammerError("volume key does not match this volume")

    def remove_slot(self, slot: int) -> None:
        self.check_writable()
        ks = self.hdr.meta["keyslots"].get(str(slot))
        if ks is None:
            raise HammerError(f"key slot {slot} is not active")
        _wipe(self.dev, int(ks["area"]["offset"]), int(ks["area"]["size"]))
        del self.hdr.meta["keyslots"][str(slot)]
        for section in ("digests", "tokens"):
            for obj in self.hdr.meta[section].values():
                if str(slot) in obj.get("keyslots", []):
                    obj["keyslots"] = [k for k in obj["keyslots"] if k != str(slot)]
        luks2.write_header(self.dev, self.hdr)

    # ---- identity ---------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        return self.hdr.uuid

    def set_uuid(self, value: str) -> None:
        self.hdr.uuid = _check_uuid(value)
        luks2.write_header(self.dev, self.hdr)

    def set_label(self, label: str | None, subsystem: str | None) -> None:
        if label is not None:
            luks2._cstr(label, 48, "label")
            self.hdr.label = label
        if subsystem is not None:
            luks2._cstr(subsystem, 48, "subsystem")
            self.hdr.subsystem = subsystem
        luks2.write_header(self.dev, self.hdr)

    def header_area_size(self) -> int:
        return self.hdr.keyslots_start + self.hdr.keyslots_size

    # ---- dump -------------------------------------------------------------------------
    def dump(self, volume_key: bytes | None = None) -> str:
        h, meta = self.hdr, self.hdr.meta
        flags = meta["config"].get("flags") or []
        out = ["LUKS header information",
               "Version:       \t2",
               f"Epoch:         \t{h.seqid}",
               f"Metadata area: \t{h.json_size + luks2.BINARY_SIZE} [bytes]",
               f"Keyslots area: \t{h.keyslots_size} [bytes]",
               f"UUID:          \t{h.uuid}",
               f"Label:         \t{h.label or '(no label)'}",
               f"Subsystem:     \t{h.subsystem or '(no subsystem)'}",
               f"Flags:       \t{' '.join(flags) if flags else '(no flags)'}"]
        required = h.requirements()
        if required:
            out.append(f"Requirements:\t{' '.join(required)}")
        out += ["", "Data segments:"]
        for seg_id, seg in meta["segments"].items():
            out.append(f"  {seg_id}: {seg['type']}")
            out.append(f"\toffset: {seg['offset']} [bytes]")
            length = "(whole device)" if seg.get("size") == "dynamic" \
                else f"{seg.get('size')} [bytes]"
            out.append(f"\tlength: {length}")
            if seg["type"] == "crypt":
                out.append(f"\tcipher: {seg['encryption']}")
                out.append(f"\tsector: {seg['sector_size']} [bytes]")
        out += ["", "Keyslots:"]
        for slot_id, ks in meta["keyslots"].items():
            out += self._dump_keyslot(slot_id, ks)
        out.append("Tokens:")
        for token_id, token in meta["tokens"].items():
            out.append(f"  {token_id}: {token['type']}")
            out.append(f"\tKeyslot:    {', '.join(token['keyslots'])}")
        out.append("Digests:")
        for digest_id, digest in meta["digests"].items():
            out.append(f"  {digest_id}: {digest['type']}")
            if digest["type"] == "pbkdf2":
                out.append(f"\tHash:       {digest['hash']}")
                out.append(f"\tIterations: {digest['iterations']}")
                out.append("\tSalt:       " + _hexlines(
                    luks2.b64decode(digest["salt"], "salt"), "\t            "))
                out.append("\tDigest:     " + _hexlines(
                    luks2.b64decode(digest["digest"], "digest"), "\t            "))
        if volume_key is not None:
            out += _dump_volume_key(volume_key)
        return "\n".join(out) + "\n"

    def _dump_keyslot(self, slot_id: str, ks: dict) -> list[str]:
        out = [f"  {slot_id}: {ks['type']}"]
        if ks["type"] != "luks2":
            return out
        value = ks.get("priority", 1)
        prio = {0: "ignored", 1: "normal", 2: "preferred"}.get(value, "?") \
            if type(value) is int else "?"
        area, kdf_obj = ks["area"], ks["kdf"]
        out += [f"\tKey:        {ks['key_size'] * 8} bits",
                f"\tPriority:   {prio}",
                f"\tCipher:     {area['encryption']}",
                f"\tCipher key: {area['key_size'] * 8} bits",
                f"\tPBKDF:      {kdf_obj['type']}"]
        # The header checks guarantee the fields of known KDF types; an unknown type is
        # shown as it is (unlocking skips that slot).
        if kdf_obj["type"] == "pbkdf2":
            out += [f"\tHash:       {kdf_obj['hash']}",
                    f"\tIterations: {kdf_obj['iterations']}"]
        elif kdf_obj["type"] in kdf.ARGON2_TYPES:
            out += [f"\tTime cost:  {kdf_obj['time']}",
                    f"\tMemory:     {kdf_obj['memory']}",
                    f"\tThreads:    {kdf_obj['cpus']}"]
        else:
            out.append("\t            (unknown key derivation function: slot unusable)")
            out += [f"\t{name}: {json.dumps(value)}" for name, value in kdf_obj.items()
                    if name not in ("type", "salt")]
        out.append("\tSalt:       " + _salt_lines(kdf_obj.get("salt")))
        digest = self.hdr.digest_for_keyslot(int(slot_id))
        digest_id = next((d for d, obj in self.hdr.meta["digests"].items() if obj is digest),
                         None)
        out += [f"\tAF stripes: {ks['af']['stripes']}",
                f"\tAF hash:    {ks['af']['hash']}",
                f"\tArea offset:{area['offset']} [bytes]",
                f"\tArea length:{area['size']} [bytes]",
                f"\tDigest ID:  {digest_id}"]
        return out


def _salt_lines(value: object) -> str:
    """A base64 salt as cryptsetup's hex lines, or a mark when it is damaged."""
    try:
        return _hexlines(luks2.b64decode(value, "salt"), "\t            ")
    except HammerError:
        return "(invalid: not base64)"


def _sorted_ids(section: dict) -> dict:
    return {k: section[k] for k in sorted(section, key=int)}


def _kdf_from_json(obj: dict) -> KdfParams:
    """A key slot's KDF; an unknown type or a missing field is that slot's KdfError."""
    if obj["type"] == "pbkdf2":
        params = KdfParams("pbkdf2", b"", hash=obj["hash"], iterations=obj["iterations"])
    elif obj["type"] in kdf.ARGON2_TYPES:
        params = KdfParams(obj["type"], b"", time=obj["time"], memory=obj["memory"],
                           parallel=obj["cpus"])
    else:
        raise kdf.KdfError(f"unsupported key derivation function '{obj['type']}'")
    params.salt = luks2.b64decode(obj.get("salt"), "kdf.salt")
    return params


def _kdf_to_json(params: KdfParams) -> dict:
    salt = luks2.b64encode(params.salt)
    if params.type == "pbkdf2":
        return {"type": "pbkdf2", "hash": params.hash, "iterations": params.iterations,
                "salt": salt}
    return {"type": params.type, "time": params.time, "memory": params.memory,
            "cpus": params.parallel, "salt": salt}


def _dump_volume_key(key: bytes) -> list[str]:
    return ["", f"MK bits:       \t{len(key) * 8}",
            "MK dump:\t" + _hexlines(key, "\t\t")]


# =========================================================================================
# LUKS1
# =========================================================================================

class Luks1Container(Container):
    version = 1
    sector_size = 512

    def __init__(self, dev: BlockDevice, hdr: luks1.Luks1Header):
        self.dev = dev
        self.hdr = hdr
        self.cipher = f"{hdr.cipher_name}-{hdr.cipher_mode}"
        self.key_size = hdr.key_bytes
        self.data_offset = hdr.payload_offset * luks1.SECTOR

    def active_slots(self) -> list[int]:
        return [i for i, s in enumerate(self.hdr.slots) if s.enabled]

    def notices(self) -> list[str]:
        return [f"LUKS1 key slot {i} is damaged ({problem}); it is not used"
                for i in range(luks1.SLOT_COUNT)
                if (problem := luks1.slot_problem(self.hdr, i, None))]

    def check_writable(self) -> None:
        super().check_writable()
        luks1.check_layout(self.hdr, self.dev.size)

    def _try_slot(self, slot: int, passphrase: bytes) -> bytes | None:
        s = self.hdr.slots[slot]
        problem = luks1.slot_problem(self.hdr, slot, self.dev.size)
        if problem:
            raise keyslots.KeySlotError(problem)
        slot_key = kdf.pbkdf2(self.hdr.hash_spec, passphrase, s.salt, s.iterations,
                              self.key_size)
        size = keyslots.material_size(self.key_size)
        encrypted = self.dev.read(s.material_offset * luks1.SECTOR, size)
        key = keyslots.unseal(encrypted, slot_key, self.key_size, self.hdr.hash_spec,
                              self.cipher)
        return key if self.verify_volume_key(key) else None

    def verify_volume_key(self, key: bytes) -> bool:
        return _verify_digest(self.hdr.hash_spec, key, self.hdr.mk_digest_salt,
                              self.hdr.mk_digest_iterations, self.hdr.mk_digest)

    def free_slot(self) -> int:
        for i, s in enumerate(self.hdr.slots):
            if not s.enabled:
                return i
        raise HammerError("all key slots are full")

    def add_slot(self, volume_key: bytes, passphrase: bytes, spec: KdfSpec | KdfParams,
                 slot: int | None = None) -> int:
        self.check_writable()
        if not self.verify_volume_key(volume_key):
            raise HammerError("volume key does not match this volume")
        slot = self.free_slot() if slot is None else slot
        if not 0 <= slot < luks1.SLOT_COUNT:
            raise HammerError(f"key slot {slot} is out of range (0-{luks1.SLOT_COUNT - 1})")
        s = self.hdr.slots[slot]
        if s.enabled:
            raise HammerError(f"key slot {slot} is already in use")
        if spec.type not in (None, "pbkdf2"):
            raise HammerError("LUKS1 supports only the pbkdf2 key derivation function")
        if isinstance(spec, KdfSpec):
            # LUKS1 slots always use the header's hash.
            spec = KdfSpec("pbkdf2", self.hdr.hash_spec, spec.iter_time_ms,
                           force_iterations=spec.force_iterations).resolve(1, self.key_size)
        params = spec
        slot_key = kdf.derive(passphrase, params, self.key_size)
        sealed = keyslots.seal(volume_key, slot_key, self.hdr.hash_spec, self.cipher)
        self.dev.write(s.material_offset * luks1.SECTOR, sealed)
        self.dev.flush()
        s.active, s.iterations, s.salt = luks1.SLOT_ENABLED, params.iterations, params.salt
        luks1.write_header(self.dev, self.hdr)
        return slot

    def remove_slot(self, slot: int) -> None:
        self.check_writable()
        if not 0 <= slot < luks1.SLOT_COUNT or not self.hdr.slots[slot].enabled:
            raise HammerError(f"key slot {slot} is not active")
        s = self.hdr.slots[slot]
        _wipe(self.dev, s.material_offset * luks1.SECTOR, keyslots.material_size(self.key_size))
        s.active, s.iterations, s.salt = luks1.SLOT_DISABLED, 0, bytes(luks1.SALT_SIZE)
        luks1.write_header(self.dev, self.hdr)

    def change_slot(self, slot: int, volume_key: bytes, passphrase: bytes,
                    spec: KdfSpec | KdfParams) -> int:
        """LUKS1 slots sit at fixed places: the new passphrase goes to a free slot first
        (as cryptsetup does), then the old slot is removed."""
        new_slot = self.add_slot(volume_key, passphrase, spec)
        self.remove_slot(slot)
        return new_slot

    @property
    def uuid(self) -> str:
        return self.hdr.uuid

    def set_uuid(self, value: str) -> None:
        self.hdr.uuid = _check_uuid(value)
        luks1.write_header(self.dev, self.hdr)

    def header_area_size(self) -> int:
        """Up to the end of the last key-material area, as cryptsetup backs it up."""
        sectors = -(-self.hdr.material_sectors() // 8) * 8
        return (max(s.material_offset for s in self.hdr.slots) + sectors) * luks1.SECTOR

    def dump(self, volume_key: bytes | None = None) -> str:
        h = self.hdr
        out = ["LUKS header information", "",
               "Version:       \t1",
               f"Cipher name:   \t{h.cipher_name}",
               f"Cipher mode:   \t{h.cipher_mode}",
               f"Hash spec:     \t{h.hash_spec}",
               f"Payload offset:\t{h.payload_offset}",
               f"MK bits:       \t{h.key_bytes * 8}",
               "MK digest:     \t" + _hexlines(h.mk_digest, "\t", per_line=20),
               "MK salt:       \t" + _hexlines(h.mk_digest_salt, "               \t"),
               f"MK iterations: \t{h.mk_digest_iterations}",
               f"UUID:          \t{h.uuid}", ""]
        for i, s in enumerate(h.slots):
            if not s.enabled:
                out.append(f"Key Slot {i}: DISABLED")
                continue
            out += [f"Key Slot {i}: ENABLED",
                    f"\tIterations:         \t{s.iterations}",
                    "\tSalt:               \t" + _hexlines(s.salt, "\t                      \t"),
                    f"\tKey material offset:\t{s.material_offset}",
                    f"\tAF stripes:            \t{s.stripes}"]
        if volume_key is not None:
            out += _dump_volume_key(volume_key)
        return "\n".join(out) + "\n"


# =========================================================================================
# format
# =========================================================================================

def format_container(dev: BlockDevice, passphrase: bytes, *, version: int = 2,
                     key_size: int = DEFAULT_KEY_SIZE, sector_size: int = DEFAULT_SECTOR_SIZE,
                     spec: KdfSpec | None = None, label: str = "", subsystem: str = "",
                     uuid: str | None = None, volume_key: bytes | None = None,
                     hash_name: str = DEFAULT_HASH, slot: int = 0, detached: bool = False
                     ) -> tuple[Container, bytes]:
    """Write a new container over the start of ``dev`` (the previous header area is zeroed
    first) with one key slot for ``passphrase``; returns it and its volume key.
    ``detached``: ``dev`` holds only the header (cryptsetup --header); the payload is a
    separate data device from its offset 0."""
    spec = dataclasses.replace(spec or KdfSpec(), hash=hash_name)
    keyslots.check_cipher(keyslots.SUPPORTED_CIPHER, key_size)
    volume_key = volume_key or _new_volume_key(key_size)
    if len(volume_key) != key_size:
        raise HammerError(f"the volume key must be {key_size} bytes")
    uuid = _check_uuid(uuid) if uuid else str(uuidlib.uuid4())
    kdf.pbkdf2(hash_name, b"", b"", 1, 1)   # refuse an unknown hash before writing
    if version == 1:
        return _format_luks1(dev, passphrase, volume_key, sector_size, spec, uuid, hash_name,
                             slot, label, subsystem, detached)
    if version != 2:
        raise HammerError(f"unsupported LUKS version {version}")
    if sector_size not in luks2.SECTOR_SIZES:
        raise HammerError(f"invalid sector size {sector_size} (use 512, 1024, 2048 or 4096)")
    if dev.size < header_file_size(2, key_size) + (0 if detached else sector_size):
        raise HammerError(f"{'header file' if detached else 'device'} is too small for "
                          f"LUKS2 (needs {'' if detached else 'more than '}"
                          f"{LUKS2_DATA_OFFSET // (1024 * 1024)} MiB)")
    params = spec.resolve(2, key_size)   # benchmark before touching the device
    digest_salt = os.urandom(32)
    digest_iterations = spec.digest_iterations(key_size)
    digest = kdf.pbkdf2(hash_name, volume_key, digest_salt, digest_iterations, 32)
    meta = {
        "keyslots": {},
        "tokens": {},
        "segments": {"0": {"type": "crypt",
                           "offset": "0" if detached else str(LUKS2_DATA_OFFSET),
                           "size": "dynamic", "iv_tweak": "0",
                           "encryption": keyslots.SUPPORTED_CIPHER,
                           "sector_size": sector_size}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": [], "segments": ["0"],
                          "hash": hash_name, "iterations": digest_iterations,
                          "salt": luks2.b64encode(digest_salt),
                          "digest": luks2.b64encode(digest)}},
        "config": {"json_size": str(LUKS2_HDR_SIZE - luks2.BINARY_SIZE),
                   "keyslots_size": str(LUKS2_DATA_OFFSET - 2 * LUKS2_HDR_SIZE)},
    }
    for name, value in (("label", label), ("subsystem", subsystem)):
        luks2._cstr(value, 48, name)
    hdr = luks2.Luks2Header(LUKS2_HDR_SIZE, 0, label, subsystem, uuid, meta)
    _zero(dev, 0, LUKS2_DATA_OFFSET)
    container = Luks2Container(dev, hdr)
    container.add_slot(volume_key, passphrase, params, slot)
    return container, volume_key


def header_file_size(version: int, key_size: int) -> int:
    """Bytes a detached header needs (cryptsetup sizes a new --header file the same way):
    LUKS2 its metadata and key-slot areas, LUKS1 up to the end of the last key material."""
    if version == 1:
        return luks1.layout(key_size, align_sectors=8)[1] * luks1.SECTOR
    return LUKS2_DATA_OFFSET


def _new_volume_key(key_size: int) -> bytes:
    while True:
        key = os.urandom(key_size)
        if key[:key_size // 2] != key[key_size // 2:]:
            return key


def _format_luks1(dev: BlockDevice, passphrase: bytes, volume_key: bytes, sector_size: int,
                  spec: KdfSpec, uuid: str, hash_name: str, slot: int, label: str,
                  subsystem: str, detached: bool) -> tuple[Container, bytes]:
    if sector_size != 512:
        raise HammerError("LUKS1 supports only 512-byte sectors")
    if label or subsystem:
        raise HammerError("labels are supported only on LUKS2")
    if spec.type not in (None, "pbkdf2"):
        raise HammerError("LUKS1 supports only the pbkdf2 key derivation function")
    key_size = len(volume_key)
    # A detached header ends with its key material; an attached one aligns the payload.
    offsets, payload = luks1.layout(key_size, align_sectors=8 if detached else 2048)
    if dev.size < payload * luks1.SECTOR + (0 if detached else 512):
        raise HammerError(f"{'header file' if detached else 'device'} is too small for "
                          f"LUKS1 (needs {'' if detached else 'more than '}"
                          f"{payload * luks1.SECTOR} bytes)")
    params = spec.resolve(1, key_size)
    salt = os.urandom(32)
    iterations = spec.digest_iterations(key_size)
    hdr = luks1.Luks1Header("aes", "xts-plain64", hash_name, 0 if detached else payload,
                            key_size,
                            kdf.pbkdf2(hash_name, volume_key, salt, iterations,
                                       luks1.DIGEST_SIZE),
                            salt, iterations, uuid,
                            [luks1.Luks1Slot(material_offset=o) for o in offsets])
    _zero(dev, 0, payload * luks1.SECTOR)
    luks1.write_header(dev, hdr)
    container = Luks1Container(dev, hdr)
    container.add_slot(volume_key, passphrase, params, slot)
    return container, volume_key
