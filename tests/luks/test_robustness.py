"""Bad input never gives a traceback, a wrong key or a write: truncated, bit-flipped and
random headers, JSON with wrong types, overlaps and out-of-range offsets (hypothesis), and
what cannot be honoured (requirements, integrity, other ciphers) is refused untouched."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_hammer
from hammerfs.errors import HammerError
from hammerfs.luks import kdf, luks1, luks2
from hammerfs.luks.container import format_container, open_container

from .helpers import CHEAP_ARGON, CHEAP_PBKDF2, CS_ARGON, PASS, MiB, PlainFile, keyfile, run

HEADER_BYTES = 2 * MiB   # header copies plus the first key-slot areas


@pytest.fixture(autouse=True, scope="module")
def bounded_kdf_costs():
    """Fuzzed headers ask for up to 2^32 PBKDF2 iterations or 4 GiB of argon2 memory.  The
    real cost caps (kdf.check_pbkdf2/check_params, the same code a user runs) turn them
    into a KdfError; here they are only lowered so that every example stays fast."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kdf, "PBKDF2_SANE_ITERATIONS", 100_000)
        mp.setattr(kdf, "ARGON2_SANE_WORK", 1 << 16)
        mp.delenv(kdf.UNLIMITED_ENV, raising=False)
        yield


class RecordingDevice:
    """In-memory device that fails the test on any write attempt."""

    readonly = True

    def __init__(self, data: bytes, size: int | None = None):
        self.data = data
        self.size = size if size is not None else len(data)

    def read(self, offset, length):
        if offset < 0 or offset + length > self.size:
            raise HammerError("read beyond end")
        chunk = self.data[offset:offset + length]
        return chunk + bytes(length - len(chunk))

    def write(self, offset, data):
        raise AssertionError(f"unexpected write at {offset}")

    def flush(self):
        raise AssertionError("unexpected flush")

    def close(self):
        pass


class Image(tuple):
    """(header bytes, volume key) with a short repr for hypothesis reports."""

    def __repr__(self) -> str:
        return f"<image {len(self[0])} bytes>"


def _format_bytes(tmp_path_factory, version, spec, sector):
    path = tmp_path_factory.mktemp("base") / "v.img"
    with open(path, "wb") as f:
        f.truncate(20 * MiB)
    dev = PlainFile(path)
    _, key = format_container(dev, PASS, version=version, sector_size=sector, spec=spec)
    dev.close()
    return Image((path.read_bytes()[:HEADER_BYTES], key))


@pytest.fixture(scope="module")
def luks2_image(tmp_path_factory):
    return _format_bytes(tmp_path_factory, 2, CHEAP_ARGON, 4096)


@pytest.fixture(scope="module")
def luks1_image(tmp_path_factory):
    return _format_bytes(tmp_path_factory, 1, CHEAP_PBKDF2, 512)


def open_and_unlock(data: bytes, size: int = 20 * MiB):
    """Either the right key or a HammerError; anything else fails the test."""
    dev = RecordingDevice(data, size)
    container = open_container(dev)
    return container.unlock(PASS)[1]


EXAMPLE_SECONDS = 10   # no hang: with the caps above one example takes well under this


def expect_clean(data: bytes, key: bytes, size: int = 20 * MiB) -> bool:
    """Open, dump and unlock ``data``: the right key or a HammerError (no other exception,
    no write: RecordingDevice fails the test on one), in bounded time."""
    start = time.monotonic()
    try:
        dev = RecordingDevice(data, size)
        container = open_container(dev)
        assert container.dump()
        got = container.unlock(PASS)[1]
    except HammerError as exc:
        assert str(exc)
        return False
    finally:
        assert time.monotonic() - start < EXAMPLE_SECONDS
    assert got == key
    return True


def test_truncated_headers(luks2_image, luks1_image):
    for data, key in (luks2_image, luks1_image):
        for cut in (0, 6, 100, 591, 4095, 4096, 16383, 20000, 32768, 100000):
            assert not expect_clean(data[:cut], key, size=cut)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bit_flips_luks2(luks2_image, data):
    image, key = luks2_image
    flips = data.draw(st.lists(st.integers(0, 2 * luks2.HDR_SIZES[0] * 8 - 1), min_size=1,
                               max_size=4))
    mutated = bytearray(image)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    expect_clean(bytes(mutated), key)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bit_flips_luks1_and_key_material(luks1_image, data):
    image, key = luks1_image
    bit = data.draw(st.integers(0, (4096 + 512 * 500) * 8 - 1))
    mutated = bytearray(image)
    mutated[bit // 8] ^= 1 << (bit % 8)
    expect_clean(bytes(mutated), key)


@settings(max_examples=40, deadline=None)
@given(version=st.sampled_from([1, 2]), body=st.binary(min_size=0, max_size=4096))
def test_random_headers(version, body):
    data = b"LUKS\xba\xbe" + version.to_bytes(2, "big") + body
    assert not expect_clean(data + bytes(64 * 1024), b"", 64 * 1024 + len(data))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_luks1_phdr_damage(luks1_image, data):
    """Several damaged bytes anywhere in the LUKS1 phdr (slot fields, digest, offsets)."""
    image, key = luks1_image
    mutated = bytearray(image)
    for _ in range(data.draw(st.integers(1, 4))):
        offset = data.draw(st.integers(0, luks1.PHDR_SIZE - 1))
        mutated[offset] = data.draw(st.integers(0, 255))
    expect_clean(bytes(mutated), key)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from([1, 2]), cut=st.integers(0, 3 * luks2.HDR_SIZES[0]))
def test_truncated_anywhere(luks1_image, luks2_image, version, cut):
    image, key = luks1_image if version == 1 else luks2_image
    assert not expect_clean(image[:cut], key, size=cut)


JSON_TOKEN = re.compile(rb'"[^"\\]*"|-?[0-9]+')
TOKEN_VALUES = [b"0", b"-1", b"2147484648", b"4294968296", b"18446744073709551616", b"1e400",
                b"1.5", b'"scrypt"', b'"argon2x"', b'"pbkdf2"', b'"argon2i"', b'"***"', b'""',
                b'"99999999999999999999"', b"null", b"[]", b"{}", b"true", b'"sha1"']


def _json_text(image: bytes, copy_offset: int) -> bytes:
    area = image[copy_offset + luks2.BINARY_SIZE:copy_offset + luks2.HDR_SIZES[0]]
    return area.split(b"\0", 1)[0]


def _with_json(image: bytes, copy_offset: int, text: bytes, seqid_bump: int) -> bytes:
    """``image`` with the JSON text of the copy at ``copy_offset`` replaced (zero-padded)
    and that copy's checksum fixed, so that the damage reaches the JSON parser."""
    out = bytearray(image)
    size = luks2.HDR_SIZES[0]
    json_area = (text + bytes(size))[:size - luks2.BINARY_SIZE]
    binary = bytearray(out[copy_offset:copy_offset + luks2.BINARY_SIZE])
    seqid = int.from_bytes(binary[16:24], "big") + seqid_bump
    binary[16:24] = seqid.to_bytes(8, "big")
    binary[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + 32] = luks2.checksum(binary, json_area)
    out[copy_offset:copy_offset + luks2.BINARY_SIZE] = binary
    out[copy_offset + luks2.BINARY_SIZE:copy_offset + size] = json_area
    return bytes(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_text_damage_in_either_copy(luks2_image, data):
    """Bytes of the JSON text changed, inserted or deleted in the primary copy, the
    secondary copy or both, checksums valid (the newer or the older copy damaged)."""
    image, key = luks2_image
    copies = data.draw(st.sampled_from([(0,), (luks2.HDR_SIZES[0],),
                                        (0, luks2.HDR_SIZES[0])]))
    mutated = image
    for copy_offset in copies:
        text = bytearray(_json_text(image, copy_offset))
        for _ in range(data.draw(st.integers(1, 3))):
            pos = data.draw(st.integers(0, len(text) - 1))
            action = data.draw(st.sampled_from(["set", "insert", "delete", "digit", "token",
                                                "token", "token"]))
            if action == "token":    # a whole JSON value or key: stays parseable
                tokens = list(JSON_TOKEN.finditer(text))
                token = tokens[data.draw(st.integers(0, len(tokens) - 1))]
                text[token.start():token.end()] = data.draw(st.sampled_from(TOKEN_VALUES))
            elif action == "set":
                text[pos] = data.draw(st.integers(0, 255))
            elif action == "insert":
                text[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            elif action == "delete":
                del text[pos:pos + data.draw(st.integers(1, 8))]
            else:   # a digit changed: sizes, offsets and costs stay well-formed JSON
                text[pos] = data.draw(st.sampled_from(b"0123456789"))
        mutated = _with_json(mutated, copy_offset, bytes(text), data.draw(st.integers(0, 1)))
    expect_clean(mutated, key)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["pbkdf2", "argon2id", "argon2i", "scrypt", ""]),
       hash_name=st.sampled_from(["sha256", "sha1", "nohash", ""]),
       costs=st.lists(st.one_of(st.integers(-2**70, 2**70), st.none(), st.booleans(),
                                st.floats(), st.text(max_size=4)), min_size=4, max_size=4))
def test_kdf_params_from_damaged_headers(kind, hash_name, costs):
    """Any cost values a damaged header can hold: accepted or a KdfError, never another
    exception (kdf.check_params runs before every derivation)."""
    params = kdf.KdfParams(kind, bytes(16), hash_name, *costs)
    try:
        kdf.check_params(params)
    except kdf.KdfError as exc:
        assert str(exc)


# ---- a damaged key slot never stops a good one ---------------------------------------------

PASS_B = b"the other slot"


def _two_slots(tmp_path_factory, version, spec, sector):
    """A volume whose slot 0 opens with PASS and slot 1 with PASS_B."""
    path = tmp_path_factory.mktemp("two") / "v.img"
    with open(path, "wb") as f:
        f.truncate(20 * MiB)
    dev = PlainFile(path)
    container, key = format_container(dev, PASS, version=version, sector_size=sector,
                                      spec=spec)
    container.add_slot(key, PASS_B, spec, 1)
    dev.close()
    return Image((path.read_bytes()[:HEADER_BYTES], key))


@pytest.fixture(scope="module")
def two_slot_images(tmp_path_factory):
    return {1: _two_slots(tmp_path_factory, 1, CHEAP_PBKDF2, 512),
            2: _two_slots(tmp_path_factory, 2, CHEAP_ARGON, 4096)}


def _slot1_still_opens(data: bytes, key: bytes, header_may_refuse: bool) -> None:
    start = time.monotonic()
    try:
        container = open_container(RecordingDevice(data, 20 * MiB))
    except HammerError:
        assert header_may_refuse
        return
    assert container.dump()
    assert container.unlock(PASS_B) == (1, key)
    try:
        container.unlock(PASS)
    except HammerError as exc:
        assert str(exc)
    assert time.monotonic() - start < EXAMPLE_SECONDS


SLOT_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**31 + 1000, 2**32, 2**32 + 1000, 2**63,
                     2**70, 3999, 48, "scrypt", "argon2x", "pbkdf2", "argon2i", "***", "",
                     "nohash", "sha1", None, [], {}, True, 1.5]),
    st.integers(-2**70, 2**70), st.text(max_size=6))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_luks2_slot_never_stops_a_good_one(two_slot_images, data):
    """Any field of key slot 0 (its KDF, AF, area, sizes, priority) set to any value in
    both header copies: slot 1 still opens, unless the header itself is refused (a
    field cryptsetup checks when it loads the header: types, area offsets, overlaps)."""
    image, key = two_slot_images[2]
    meta = _meta(image)
    paths = [p for p in _paths(meta["keyslots"]["0"]) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        target = meta["keyslots"]["0"]
        for part in path[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue     # an earlier change removed or replaced its parent
        if data.draw(st.integers(0, 5)) == 0:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = data.draw(SLOT_VALUES)
    _slot1_still_opens(_rewrite(image, meta), key, header_may_refuse=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=st.lists(st.tuples(st.integers(0, 47), st.integers(0, 255)), min_size=1,
                       max_size=6))
def test_damaged_luks1_slot_never_stops_a_good_one(two_slot_images, damage):
    """Any bytes of LUKS1 key slot 0's 48 (state, iterations, salt, offset, stripes):
    slot 1 still opens, always (hammer refuses no LUKS1 header for one slot's damage)."""
    image, key = two_slot_images[1]
    mutated = bytearray(image)
    for offset, value in damage:
        mutated[luks1.SLOTS_OFFSET + offset] = value
    _slot1_still_opens(bytes(mutated), key, header_may_refuse=False)


def _rewrite(image: bytes, meta: dict) -> bytes:
    """The image with ``meta`` as JSON in both copies, checksums valid."""
    hdr = luks2.read_header(RecordingDevice(image, 20 * MiB))
    hdr.meta = meta
    primary, secondary = luks2.header_copies(hdr)
    return primary + secondary + image[2 * hdr.hdr_size:]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=12)
    | st.sampled_from(["0", "4096", "dynamic", "16777216", "-1", "1e3", "99999999999999999999",
                       "aes-xts-plain64", "argon2id", "pbkdf2", "sha1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_mutations(luks2_image, data):
    image, key = luks2_image
    meta = luks2.read_header(RecordingDevice(image, 20 * MiB)).meta
    paths = [p for p in _paths(meta) if p]
    mutated = copy.deepcopy(meta)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        target = mutated
        try:
            for part in path[:-1]:
                target = target[part]
            if data.draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue
    expect_clean(_rewrite(image, mutated), key)


def _meta(image):
    return copy.deepcopy(luks2.read_header(RecordingDevice(image, 20 * MiB)).meta)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["keyslots"]["0"]["area"].update(offset="100"), "outside the key-slot area"),
    (lambda m: m["keyslots"]["0"]["area"].update(offset=32768), "decimal string"),
    (lambda m: m["keyslots"]["0"].update(key_size="64"), "key_size"),
    (lambda m: m["keyslots"].update({"1": copy.deepcopy(m["keyslots"]["0"])}), "overlap"),
    (lambda m: m["segments"]["0"].update(offset="8192"), "overlaps the header"),
    (lambda m: m["segments"]["0"].update(sector_size=3000), "sector_size"),
    (lambda m: m["digests"]["0"].update(keyslots=["7"]), "missing keyslot"),
    (lambda m: m["digests"]["0"].update(salt="***"), "base64"),
    (lambda m: m["config"].update(json_size="4096"), "json_size"),
    (lambda m: m.update(tokens=[]), "tokens must be an object"),
    (lambda m: m["keyslots"].update({"x": {}}), "invalid keyslots id"),
])
def test_invalid_json_is_refused_clearly(luks2_image, change, message):
    image, _ = luks2_image
    meta = _meta(image)
    change(meta)
    with pytest.raises(HammerError, match=message):
        open_and_unlock(_rewrite(image, meta))


def test_unknown_tokens_are_kept(tmp_path, luks2_image):
    image, key = luks2_image
    meta = _meta(image)
    token = {"type": "vendor-thing", "keyslots": ["0"], "opaque": {"x": [1, 2, 3]}}
    meta["tokens"]["3"] = token
    path = tmp_path / "v.img"
    path.write_bytes(_rewrite(image, meta))
    with open(path, "r+b") as f:
        f.truncate(20 * MiB)
    dev = PlainFile(path)
    container = open_container(dev)
    container.add_slot(key, b"other", CHEAP_ARGON, 2)
    dev.close()
    dev = PlainFile(path)
    assert open_container(dev).hdr.meta["tokens"]["3"] == token
    dev.close()


# ---- refusals: nothing is written ---------------------------------------------------------

def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _volume_with(tmp_path, luks2_image, change):
    image, _ = luks2_image
    meta = _meta(image)
    change(meta)
    path = tmp_path / "v.img"
    path.write_bytes(_rewrite(image, meta))
    with open(path, "r+b") as f:
        f.truncate(20 * MiB)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["config"].update(requirements={"mandatory": ["online-reencrypt-v2"]}),
     "mandatory requirements"),
    (lambda m: m["config"].update(requirements={"mandatory": ["opal"]}), "OPAL"),
    (lambda m: m["segments"]["0"].update(integrity={"type": "hmac(sha256)",
                                                    "journal_encryption": "none",
                                                    "journal_integrity": "none"}),
     "integrity"),
    (lambda m: m["segments"]["0"].update(encryption="serpent-xts-plain64"),
     "cipher 'serpent-xts-plain64' is not supported"),
])
def test_unsupported_features_refused_untouched(tmp_path, luks2_image, change, message):
    vol = _volume_with(tmp_path, luks2_image, change)
    kf, kf2 = keyfile(tmp_path), keyfile(tmp_path, b"new", "new.txt")
    before = _digest(vol)
    for args in (("luks", "test-passphrase", "--key-file", kf, vol),
                 ("luks", "add-key", "--key-file", kf, *CS_ARGON, vol, kf2),
                 ("luks", "kill-slot", "-q", vol, "0"),
                 ("info", "--key-file", kf, vol)):
        proc = run_hammer(*args, check=False)
        assert proc.returncode != 0, args
        assert message in proc.stderr and "Traceback" not in proc.stderr
    assert _digest(vol) == before


@pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="cryptsetup-bin")
@pytest.mark.parametrize("cipher", ["aes-cbc-essiv:sha256", "aes-xts-plain"])
def test_other_ciphers_refused(tmp_path, cipher):
    kf = keyfile(tmp_path)
    vol = tmp_path / "v.img"
    with open(vol, "wb") as f:
        f.truncate(20 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CS_ARGON,
        "--cipher", cipher, "--key-size", "256", "--key-file", kf, vol)
    before = _digest(vol)
    proc = run_hammer("info", "--key-file", kf, vol, check=False)
    assert proc.returncode != 0 and "is not supported" in proc.stderr
    assert _digest(vol) == before


# ---- damaged copies -----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="cryptsetup-bin")
def test_damaged_primary_uses_secondary_and_says_so(tmp_path, luks2_image):
    image, key = luks2_image
    vol = tmp_path / "v.img"
    vol.write_bytes(image)
    with open(vol, "r+b") as f:
        f.truncate(20 * MiB)
        f.seek(4096 + 10)
        f.write(b"garbage")          # primary JSON: checksum no longer matches
    kf = keyfile(tmp_path)
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, vol)
    assert "using the secondary copy" in proc.stderr
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol)
    # magic destroyed too: still found through the secondary copy
    with open(vol, "r+b") as f:
        f.write(b"\0" * 4096)
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, vol)
    assert "using the secondary copy" in proc.stderr
    # a write repairs the primary copy
    run_hammer("luks", "add-key", "--key-file", kf, *CS_ARGON, vol, keyfile(tmp_path, b"x", "x"))
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, vol)
    assert "secondary" not in proc.stderr
    with open(vol, "r+b") as f:
        f.write(b"\0" * 32768)
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, vol, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_interrupted_header_write_keeps_a_valid_copy(luks2_image):
    """A crash after the primary copy was written: the newer (higher seqid) copy wins; a
    crash during it: the older secondary copy is used."""
    image, key = luks2_image
    hdr = luks2.read_header(RecordingDevice(image, 20 * MiB))
    meta = json.loads(json.dumps(hdr.meta))
    meta["tokens"]["0"] = {"type": "marker", "keyslots": []}
    hdr.meta, hdr.seqid = meta, hdr.seqid + 1
    primary, _ = luks2.header_copies(hdr)
    newer = primary + image[len(primary):]
    assert "0" in luks2.read_header(RecordingDevice(newer, 20 * MiB)).meta["tokens"]
    torn = primary[:4200] + image[4200:]   # new binary header, mostly old JSON
    got = luks2.read_header(RecordingDevice(torn, 20 * MiB))
    assert got.meta["tokens"] == {} and got.notices
    assert open_and_unlock(torn) == key
