"""LUKS anti-forensic (AF) splitter: a key is spread over ``stripes`` times its size so that
destroying any small part of the key-slot area destroys the key (LUKS1 spec section 2.4)."""

from __future__ import annotations

import hashlib
import os

from hammerfs.errors import HammerError

STRIPES = 4000


def _digest_size(hash_name: str) -> int:
    try:
        return hashlib.new(hash_name).digest_size
    except ValueError:
        raise HammerError(f"unsupported hash '{hash_name}'") from None


def _diffuse(block: bytes, hash_name: str) -> bytes:
    """H1 of the spec: hash each digest-sized piece j as H(be32(j) || piece), truncating
    the last piece's output to its length."""
    size = _digest_size(hash_name)
    out = bytearray()
    for index, start in enumerate(range(0, len(block), size)):
        piece = block[start:start + size]
        h = hashlib.new(hash_name, index.to_bytes(4, "big"))
        h.update(piece)
        out += h.digest()[:len(piece)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def split(key: bytes, hash_name: str, stripes: int = STRIPES) -> bytes:
    """AF-split ``key`` into ``stripes`` stripes (random except the last)."""
    size = len(key)
    material = bytearray(os.urandom(size * (stripes - 1)))
    digest = bytes(size)
    for i in range(stripes - 1):
        digest = _diffuse(_xor(digest, material[i * size:(i + 1) * size]), hash_name)
    material += _xor(digest, key)
    return bytes(material)


def merge(material: bytes, key_size: int, hash_name: str, stripes: int = STRIPES) -> bytes:
    """Recover the key from AF-split material (the inverse of ``split``)."""
    if len(material) < key_size * stripes:
        raise HammerError("key material is shorter than the AF stripes need")
    digest = bytes(key_size)
    for i in range(stripes - 1):
        digest = _diffuse(_xor(digest, material[i * key_size:(i + 1) * key_size]), hash_name)
    return _xor(digest, material[(stripes - 1) * key_size:stripes * key_size])


def split_size(key_size: int, stripes: int = STRIPES) -> int:
    """Bytes of AF material, before rounding up to whole sectors."""
    return key_size * stripes
