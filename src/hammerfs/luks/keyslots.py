"""Key-slot material: the volume key AF-split and encrypted with a passphrase-derived key.

The material is encrypted like payload sectors (512-byte sectors, plain64 IV counting from 0
at the start of the slot's area), with the slot's cipher and the KDF output as key.
"""

from __future__ import annotations

from hammerfs.errors import HammerError
from hammerfs.luks import af
from hammerfs.luks.xts import XtsCipher

SUPPORTED_CIPHER = "aes-xts-plain64"
MATERIAL_SECTOR = 512


class KeySlotError(HammerError):
    """One key slot cannot be used (damaged or unsupported parameters).  Unlocking records
    it and goes on with the next slot: a damaged slot never stops a good one."""


def check_cipher(spec: str, key_size: int) -> None:
    """Refuse everything but aes-xts-plain64 (256- or 512-bit keys): what we cannot
    decrypt exactly as dm-crypt does, we do not touch."""
    if spec != SUPPORTED_CIPHER:
        raise HammerError(f"cipher '{spec}' is not supported (only {SUPPORTED_CIPHER})")
    if type(key_size) is not int or key_size not in (32, 64):
        size = f"{key_size * 8}-bit" if type(key_size) is int else "missing"
        raise HammerError(f"{spec} with a {size} key is not supported (use 256 or 512 bits)")


def material_size(key_size: int, stripes: int = af.STRIPES) -> int:
    """AF material rounded up to whole 512-byte sectors."""
    size = af.split_size(key_size, stripes)
    return -(-size // MATERIAL_SECTOR) * MATERIAL_SECTOR


def seal(volume_key: bytes, slot_key: bytes, hash_name: str, cipher: str) -> bytes:
    """Encrypted AF material for ``volume_key`` (padded to whole sectors)."""
    check_cipher(cipher, len(slot_key))
    material = bytearray(af.split(volume_key, hash_name))
    material += bytes(material_size(len(volume_key)) - len(material))
    return bytes(XtsCipher(slot_key).encrypt(material, 0, MATERIAL_SECTOR, 1))


def unseal(encrypted: bytes, slot_key: bytes, key_size: int, hash_name: str,
           cipher: str) -> bytes:
    """The candidate volume key from encrypted material (verify it with the digest)."""
    check_cipher(cipher, len(slot_key))
    size = material_size(key_size)
    if len(encrypted) < size:
        raise KeySlotError("key-slot material is truncated")
    material = XtsCipher(slot_key).decrypt(encrypted[:size], 0, MATERIAL_SECTOR, 1)
    return af.merge(bytes(material), key_size, hash_name)
