"""Damaged LUKS headers against the real cryptsetup (issue 11.7): hammer opens every header
cryptsetup opens, a damaged key slot (a bit flip in its PBKDF2 iteration count, an unknown
KDF, a bad salt...) never stops a good one, the final error names why each slot failed,
``dump`` shows whatever cryptsetup's luksDump shows, and nothing is written."""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_hammer
from hammerfs.errors import HammerError
from hammerfs.luks import kdf, luks1, luks2
from hammerfs.luks.container import (
    NoUsableKeySlot,
    WrongPassphrase,
    format_container,
    open_container,
)

from .helpers import (
    CHEAP_PBKDF2,
    CS_ARGON,
    CS_PBKDF2,
    PASS,
    MiB,
    PlainFile,
    keyfile,
    make_file,
    run,
)

pytestmark = pytest.mark.skipif(shutil.which("cryptsetup") is None,
                                reason="cryptsetup-bin is installed by scripts/bootstrap")

PASS_B = b"second passphrase"
PASSES = {"A": PASS, "B": PASS_B}     # A opens key slot 0, B key slot 1
# cryptsetup grinds through a damaged 2^31-iteration PBKDF2 for many minutes before it
# tries the next slot: not opening within this bound counts as "does not open".
CS_TIMEOUT = 1.0
SLOT = 208          # LUKS1: key slot i's fields start at SLOT + 48 * i
L1_DIGEST_ITERATIONS = 164
L1_PAYLOAD_OFFSET = 104


# ---- base volumes, made by cryptsetup ----------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{version: image path}: slot 0 (pbkdf2) opens with A, slot 1 (LUKS2: argon2id) with B."""
    tmp = tmp_path_factory.mktemp("bases")
    kfa, kfb = keyfile(tmp), keyfile(tmp, PASS_B, "b.txt")
    out = {}
    for version, slot1 in ((1, CS_PBKDF2), (2, CS_ARGON)):
        image = make_file(tmp / f"luks{version}.img", 20 * MiB)
        run("cryptsetup", "luksFormat", "--batch-mode", "--type", f"luks{version}", *CS_PBKDF2,
            "--key-file", kfa, image)
        run("cryptsetup", "luksAddKey", "--batch-mode", *slot1, "--key-file", kfa,
            "--key-slot", "1", image, kfb)
        out[version] = image
    return out


# ---- damage ------------------------------------------------------------------------------

def u32_or(offset: int, bits: int):
    """LUKS1: OR ``bits`` into the big-endian u32 at ``offset`` (a high-bit flip)."""
    def change(buf: bytearray) -> None:
        value = int.from_bytes(buf[offset:offset + 4], "big") | bits
        buf[offset:offset + 4] = value.to_bytes(4, "big")
    return change


def byte_xor(offset: int, mask: int):
    def change(buf: bytearray) -> None:
        buf[offset] ^= mask
    return change


def rewrite_json(change, copies: str = "both"):
    """LUKS2: apply ``change`` to the metadata, checksums valid.  ``copies``: "both", or
    one copy ("primary"/"secondary") made newer (seqid + 1) with the damage, the other
    copy left as it was."""
    def apply(buf: bytearray) -> None:
        hdr = luks2.read_header(_BytesDev(bytes(buf)))
        hdr.meta = copy.deepcopy(hdr.meta)
        change(hdr.meta)
        if copies != "both":
            hdr.seqid += 1
        primary, secondary = luks2.header_copies(hdr)
        if copies in ("both", "primary"):
            buf[:len(primary)] = primary
        if copies in ("both", "secondary"):
            buf[hdr.hdr_size:hdr.hdr_size + len(secondary)] = secondary
    return apply


class _BytesDev:
    def __init__(self, data: bytes):
        self.data, self.size = data, 20 * MiB

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


def slot(i):
    return lambda m: m["keyslots"][str(i)]


def kdf_set(i, **fields):
    return rewrite_json(lambda m: slot(i)(m)["kdf"].update(fields))


# (id, version, damage, passphrases hammer opens with).  The old code failed every case
# marked "old:" (traceback, whole volume refused, hang or wrong slot); the others pin
# behaviour that already matched cryptsetup.
CASES = [
    # old: OverflowError before slot 1 was tried
    ("l1-slot0-iterations-2^31", 1, u32_or(SLOT + 4, 1 << 31), {"B"}),
    ("l1-slot1-iterations-2^31", 1, u32_or(SLOT + 48 + 4, 1 << 31), {"A"}),
    # old: minutes of PBKDF2 (cryptsetup too) before slot 1
    ("l1-slot0-iterations-2^28", 1, u32_or(SLOT + 4, 1 << 28), {"B"}),
    # old: OverflowError; now a clear "no usable key slot"
    ("l1-digest-iterations-2^31", 1, u32_or(L1_DIGEST_ITERATIONS, 1 << 31), set()),
    # old: the whole volume refused (cryptsetup opens it)
    ("l1-unused-slot2-state", 1, byte_xor(SLOT + 2 * 48 + 3, 0x01), {"A", "B"}),
    ("l1-slot0-state", 1, byte_xor(SLOT + 3, 0x01), {"B"}),
    ("l1-payload-offset-beyond-end", 1, byte_xor(L1_PAYLOAD_OFFSET, 0x80), {"A", "B"}),
    # cryptsetup refuses this header; hammer opens it (only writes need that slot's area)
    ("l1-unused-slot3-stripes", 1, byte_xor(SLOT + 3 * 48 + 47, 0x01), {"A", "B"}),
    # old: dump KeyError; open refused both
    ("l2-slot0-kdf-type-unknown", 2, kdf_set(0, type="scrypt"), {"B"}),
    # old: OverflowError
    ("l2-slot0-iterations-2^31", 2, kdf_set(0, iterations=2**31 + 1000), {"B"}),
    # old: whole header refused (cryptsetup's luksDump shows it)
    ("l2-slot0-iterations-2^32", 2, kdf_set(0, iterations=2**32 + 1000), {"B"}),
    ("l2-slot0-iterations-0", 2, kdf_set(0, iterations=0), {"B"}),
    ("l2-slot0-salt-not-base64", 2, kdf_set(0, salt="***"), {"B"}),
    ("l2-slot1-cpus-0", 2, kdf_set(1, cpus=0), {"A"}),
    ("l2-slot0-stripes-3999", 2,
     rewrite_json(lambda m: slot(0)(m)["af"].update(stripes=3999)), {"A", "B"}),
    ("l2-slot0-area-too-small", 2,
     rewrite_json(lambda m: slot(0)(m)["area"].update(size="4096")), {"A", "B"}),
    ("l2-segment-beyond-end", 2,
     rewrite_json(lambda m: m["segments"]["0"].update(offset=str(64 * MiB))), {"A", "B"}),
    # old: slot 0's key size decided the volume's, and the whole volume was refused
    ("l2-slot0-key-size-48", 2, rewrite_json(lambda m: slot(0)(m).update(key_size=48)),
     {"B"}),
    # old: hung (argon2 with 2^31 passes)
    ("l2-slot1-argon2-time-2^31", 2, kdf_set(1, time=2**31), {"A"}),
    # old: OverflowError
    ("l2-digest-iterations-2^31", 2,
     rewrite_json(lambda m: m["digests"]["0"].update(iterations=2**31 + 1000)), set()),
    # one copy damaged: the other one is used, as cryptsetup does
    ("l2-newer-primary-invalid-json", 2,
     rewrite_json(lambda m: slot(0)(m)["kdf"].update(type=5), "primary"), {"A", "B"}),
    ("l2-newer-secondary-invalid-json", 2,
     rewrite_json(lambda m: slot(0)(m)["area"].update(offset="100"), "secondary"),
     {"A", "B"}),
    ("l2-primary-checksum", 2, byte_xor(4096 + 20, 0x20), {"A", "B"}),
    ("l2-secondary-checksum", 2, byte_xor(16384 + 4096 + 20, 0x20), {"A", "B"}),
    ("l2-both-copies-checksum", 2,
     lambda b: (byte_xor(4096 + 20, 0x20)(b), byte_xor(16384 + 4096 + 20, 0x20)(b)), set()),
]


def damaged(bases, tmp_path, version, change):
    image = tmp_path / "damaged.img"
    shutil.copy(bases[version], image)
    with open(image, "r+b") as f:
        head = bytearray(f.read(2 * MiB))
        change(head)
        f.seek(0)
        f.write(head)
    return image


def cryptsetup_ok(image, *args: str, on_copy: bool = True) -> bool:
    """cryptsetup's opinion, on a copy unless the caller rewrites the image anyway: it
    repairs a damaged LUKS2 header copy when it reads one (even for luksDump), hammer
    never writes while reading."""
    work = image.parent / "cs-copy.img" if on_copy else image
    if on_copy:
        shutil.copy(image, work)
    try:
        proc = subprocess.run(["cryptsetup", *args, str(work)], capture_output=True,
                              timeout=CS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    finally:
        if on_copy:
            work.unlink()
    return proc.returncode == 0


def cs_opens(image, kf, on_copy: bool = True) -> bool:
    return cryptsetup_ok(image, "open", "--test-passphrase", "--key-file", str(kf),
                         on_copy=on_copy)


def cs_dumps(image) -> bool:
    return cryptsetup_ok(image, "luksDump")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hammer_unlock(image, passphrase):
    """(slot or None, error): only HammerErrors, within a bounded time, nothing written."""
    dev = PlainFile(image, readonly=True)
    start = time.monotonic()
    try:
        return open_container(dev).unlock(passphrase)[0], None
    except HammerError as exc:
        return None, exc
    finally:
        dev.close()
        assert time.monotonic() - start < 20, "unlocking took too long (a KDF cap missing?)"


@pytest.mark.parametrize(("version", "change", "opens"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hammer_opens_what_cryptsetup_opens(bases, tmp_path, version, change, opens):
    image = damaged(bases, tmp_path, version, change)
    before = digest(image)
    for name, passphrase in PASSES.items():
        got, error = hammer_unlock(image, passphrase)
        if name in opens:
            assert got == (0 if name == "A" else 1), error
            continue
        assert isinstance(error, HammerError), got
        if isinstance(error, (WrongPassphrase, NoUsableKeySlot)):
            assert error.failures    # why each tried slot failed
        kf = keyfile(tmp_path, passphrase, f"{name}.txt")
        assert not cs_opens(image, kf), f"cryptsetup opens with {name}, hammer does not"
    if cs_dumps(image):
        dev = PlainFile(image, readonly=True)
        try:
            assert open_container(dev).dump()
        finally:
            dev.close()
    assert digest(image) == before


def test_failures_name_each_slot(bases, tmp_path):
    """Slot 0 has 2^31 iterations: the error for its passphrase says so for slot 0, and
    that slot 1 simply did not match (exit 2 as a wrong passphrase)."""
    image = damaged(bases, tmp_path, 1, u32_or(SLOT + 4, 1 << 31))
    _, error = hammer_unlock(image, PASS)
    assert isinstance(error, WrongPassphrase)
    assert error.failures[1] is None and isinstance(error.failures[0], kdf.KdfError)
    assert "iteration count" in str(error.failures[0])
    proc = run_hammer("luks", "test-passphrase", "--key-file", keyfile(tmp_path), image,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "key slot 0" in proc.stderr and "key slot 1: passphrase does not match" \
        in proc.stderr


def test_cli_dump_and_open_with_unknown_kdf(bases, tmp_path):
    """`hammer luks dump` printed a KeyError traceback for an unknown kdf.type; now it
    shows the slot as cryptsetup's luksDump does and marks it unusable."""
    image = damaged(bases, tmp_path, 2, kdf_set(0, type="scrypt", opaque=[1, 2]))
    assert cs_dumps(image)
    proc = run_hammer("luks", "dump", image)
    assert "PBKDF:      scrypt" in proc.stdout and "unknown key derivation" in proc.stdout
    assert "opaque: [1, 2]" in proc.stdout and "Time cost:  4" in proc.stdout
    proc = run_hammer("luks", "test-passphrase", "--key-file",
                      keyfile(tmp_path, PASS_B, "b.txt"), image)
    assert "Key slot 1 unlocked" in proc.stdout


def test_damaged_unused_slot_layout_refuses_writes_untouched(bases, tmp_path):
    """A damaged area of an unused LUKS1 slot: reading ignores it (with a warning), but
    add-key refuses before writing anything, as cryptsetup refuses the header."""
    image = damaged(bases, tmp_path, 1, byte_xor(SLOT + 2 * 48 + 40, 0x01))  # slot 2 offset
    before = digest(image)
    kf, kf3 = keyfile(tmp_path), keyfile(tmp_path, b"third", "c.txt")
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, image)
    assert "key slot 2 is damaged" in proc.stderr
    proc = run_hammer("luks", "add-key", "--key-file", kf, *CS_PBKDF2, image, kf3,
                      check=False)
    assert proc.returncode == 1 and "key slot 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(image) == before


def test_payload_beyond_device_end_is_refused_where_used(bases, tmp_path):
    """The passphrase tests (as in cryptsetup), but the payload is not opened."""
    image = damaged(bases, tmp_path, 2,
                    rewrite_json(lambda m: m["segments"]["0"].update(offset=str(64 * MiB))))
    before = digest(image)
    proc = run_hammer("info", "--key-file", keyfile(tmp_path), image, check=False)
    assert proc.returncode == 1 and "LUKS data" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(image) == before


# ---- KDF caps and their override ---------------------------------------------------------

def test_kdf_caps_and_override(tmp_path, monkeypatch):
    """Above the soft cap a slot is refused unless HAMMERFS_KDF_UNLIMITED=1; the hard
    limit (2^31-1 PBKDF2 iterations, what hashlib computes) holds even then."""
    image = make_file(tmp_path / "v.img", 20 * MiB)
    dev = PlainFile(image)
    format_container(dev, PASS, version=1, sector_size=512, spec=CHEAP_PBKDF2)  # 1000 iter.
    dev.close()
    monkeypatch.setattr(kdf, "PBKDF2_SANE_ITERATIONS", 999)
    monkeypatch.delenv(kdf.UNLIMITED_ENV, raising=False)
    _, error = hammer_unlock(image, PASS)
    assert isinstance(error, NoUsableKeySlot) and kdf.UNLIMITED_ENV in str(error)
    monkeypatch.setenv(kdf.UNLIMITED_ENV, "1")
    assert hammer_unlock(image, PASS)[0] == 0
    with pytest.raises(kdf.KdfError, match="iteration count"):
        kdf.pbkdf2("sha256", b"x", b"salt", 2**31, 32)
    with pytest.raises(kdf.KdfError, match="time cost"):
        kdf.check_params(kdf.KdfParams("argon2id", bytes(16), time=2**32, memory=32,
                                       parallel=1))


def test_argon2_memory_cap_follows_available_memory(monkeypatch):
    monkeypatch.delenv(kdf.UNLIMITED_ENV, raising=False)
    monkeypatch.setattr(kdf, "available_memory_kib", lambda: 1024)
    params = kdf.KdfParams("argon2id", bytes(16), time=4, memory=2048, parallel=1)
    with pytest.raises(kdf.KdfError, match="only 1024 KiB are available"):
        kdf.check_params(params)
    monkeypatch.setenv(kdf.UNLIMITED_ENV, "1")
    kdf.check_params(params)
    # new slots never ask for more than is available (format would refuse its own choice)
    assert kdf.default_argon2_memory() == 1024
    monkeypatch.undo()
    assert (kdf.available_memory_kib() or 0) > 0


@pytest.mark.parametrize("damage", [
    {"iterations": 2**32 + 1000}, {"iterations": 0}, {"salt": "AAAA"},
], ids=["iterations-2^32", "iterations-0", "salt-3-bytes"])
def test_convert_refuses_a_slot_luks1_cannot_hold_untouched(tmp_path, damage):
    """Reading accepts any integer cost (as cryptsetup); converting to LUKS1, whose fields
    are 32-bit, refuses such a slot before moving any material."""
    image, kf = make_file(tmp_path / "v.img", 20 * MiB), keyfile(tmp_path)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CS_PBKDF2,
        "--sector-size", "512", "--key-file", kf, image)
    with open(image, "r+b") as f:
        head = bytearray(f.read(2 * MiB))
        kdf_set(0, **damage)(head)
        f.seek(0)
        f.write(head)
    before = digest(image)
    proc = run_hammer("luks", "convert", "-q", "--type", "luks1", image, check=False)
    assert proc.returncode == 1 and "cannot convert to LUKS1: key slot 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(image) == before


# ---- random damage, cryptsetup as the oracle ------------------------------------------------

JSON_TOKEN = re.compile(rb'"[^"\\]*"|-?[0-9]+')
TOKENS = [b"0", b"-1", b"2147484648", b"4294968296", b"1e400", b'"scrypt"', b'"pbkdf2"',
          b'"argon2i"', b'"***"', b'""', b"null", b"[]", b"{}", b"true", b"3999", b'"4096"']


def _json_token_damage(data, head: bytearray) -> None:
    """Replace whole JSON tokens (values or keys) in both copies, checksums fixed: the
    damage reaches cryptsetup's and hammer's JSON validation alike."""
    hdr = luks2.read_header(_BytesDev(bytes(head)))
    text = bytearray(luks2.serialize_json(hdr.meta, hdr.json_size).split(b"\0", 1)[0])
    for _ in range(data.draw(st.integers(1, 2))):
        tokens = list(JSON_TOKEN.finditer(text))
        token = tokens[data.draw(st.integers(0, len(tokens) - 1))]
        text[token.start():token.end()] = data.draw(st.sampled_from(TOKENS))
    json_area = (bytes(text) + bytes(hdr.json_size))[:hdr.json_size]
    for offset in (0, hdr.hdr_size):
        binary = bytearray(head[offset:offset + luks2.BINARY_SIZE])
        binary[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + 32] = luks2.checksum(binary, json_area)
        head[offset:offset + luks2.BINARY_SIZE] = binary
        head[offset + luks2.BINARY_SIZE:offset + hdr.hdr_size] = json_area


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_hammer_opens_what_cryptsetup_opens(bases, tmp_path, monkeypatch,
                                                          data):
    """Random bytes of a LUKS1 phdr or of either LUKS2 copy, or whole JSON tokens of the
    LUKS2 metadata: whenever cryptsetup opens with a passphrase, hammer does too (with the
    same slot), only HammerErrors, nothing written.  cryptsetup is asked only where hammer
    refuses (the oracle is slow).  The KDF caps are lowered to keep examples fast (a
    damaged digest count just below the real cap costs minutes per slot, in both tools);
    a passphrase for which hammer refused a cost above them (KdfCostRefused, which the
    user can override) is not compared."""
    monkeypatch.setattr(kdf, "PBKDF2_SANE_ITERATIONS", 1 << 17)
    monkeypatch.setattr(kdf, "ARGON2_SANE_WORK", 1 << 16)
    monkeypatch.delenv(kdf.UNLIMITED_ENV, raising=False)
    version = data.draw(st.sampled_from([1, 2, 2]))
    image = tmp_path / f"fuzz{version}.img"
    if not image.exists():
        shutil.copy(bases[version], image)
    head = bytearray(bases[version].read_bytes()[:64 * 1024])
    if version == 2 and data.draw(st.booleans()):
        _json_token_damage(data, head)
    else:
        limit = luks1.PHDR_SIZE if version == 1 else 2 * luks2.HDR_SIZES[0]
        for _ in range(data.draw(st.integers(1, 3))):
            head[data.draw(st.integers(0, limit - 1))] = data.draw(st.integers(0, 255))
    with open(image, "r+b") as f:
        f.write(head)
    results = {}
    for name, passphrase in PASSES.items():
        results[name] = hammer_unlock(image, passphrase)
        with open(image, "rb") as f:
            assert f.read(len(head)) == head
    for name, passphrase in PASSES.items():
        got, error = results[name]
        # last use of the image in this example: cryptsetup may repair it in place
        capped = any(isinstance(f, kdf.KdfCostRefused)
                     for f in getattr(error, "failures", {}).values())
        if got is None and not capped and cs_opens(
                image, keyfile(tmp_path, passphrase, f"{name}.txt"), on_copy=False) \
                and not cs_opens(image, keyfile(tmp_path, WRONG, "wrong.txt"), on_copy=False):
            raise AssertionError(f"cryptsetup opens with {name}, hammer: {error}")
        assert got in (None, 0 if name == "A" else 1)


WRONG = b"not a passphrase of this volume"


def test_cryptsetup_accepting_any_passphrase_is_not_followed(bases, tmp_path):
    """cryptsetup 2.6.1 says "opens" to ANY passphrase (exit 0 of --test-passphrase) when
    the digest's salt, digest or hash is a JSON number instead of a string: its digest
    check is bypassed.  Such a header is no oracle (the random-damage test above checks
    that cryptsetup refuses a wrong passphrase before trusting it); hammer refuses it."""
    image = damaged(bases, tmp_path, 2,
                    rewrite_json(lambda m: m["digests"]["0"].update(salt=0)))
    for passphrase in (PASS, PASS_B, WRONG):
        got, error = hammer_unlock(image, passphrase)
        assert got is None and isinstance(error, HammerError)
    cryptsetup_says = cs_opens(image, keyfile(tmp_path, WRONG, "wrong.txt"))
    print(f"cryptsetup --test-passphrase with a wrong passphrase: exit 0 = {cryptsetup_says}")


def test_key_management_around_a_damaged_slot(bases, tmp_path):
    """LUKS1, slot 0 with 2^31 iterations, slot 2's state byte damaged: add-key fills the
    damaged-state slot 2 (cryptsetup then opens it), and kill-slot 1 is proved by the
    passphrase of slot 2 although slot 0, tried first, cannot be computed."""
    image = damaged(bases, tmp_path, 1, lambda b: (u32_or(SLOT + 4, 1 << 31)(b),
                                                   byte_xor(SLOT + 2 * 48 + 3, 0x01)(b)))
    kfb, kfc = keyfile(tmp_path, PASS_B, "b.txt"), keyfile(tmp_path, b"third", "c.txt")
    run_hammer("luks", "add-key", "--key-file", kfb, *CS_PBKDF2, "--key-slot", "2", image,
               kfc)
    # (cryptsetup itself would grind through slot 0 first: asked for slot 2 only)
    assert cryptsetup_ok(image, "open", "--test-passphrase", "--key-slot", "2",
                         "--key-file", str(kfc))
    proc = run_hammer("luks", "kill-slot", "--key-file", kfc, image, "1", check=False)
    assert proc.returncode == 0, proc.stderr
    dump = run("cryptsetup", "luksDump", image).stdout.decode()
    assert "Key Slot 1: DISABLED" in dump and "Key Slot 2: ENABLED" in dump
