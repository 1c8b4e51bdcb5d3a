"""`hammer luks convert --type luks1|luks2` against `cryptsetup convert` on copies of the same
volume: the same JSON metadata and the same bytes, refusals that leave the volume untouched,
and a hammerfs volume that survives a round trip."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_hammer

from .helpers import CS_ARGON, CS_PBKDF2, MiB, cs_volume_key, keyfile, make_file, run

pytestmark = pytest.mark.skipif(shutil.which("cryptsetup") is None,
                                reason="cryptsetup-bin is installed by scripts/bootstrap")

HEADER_AREA = 32768       # LUKS2 binary headers carry random salts: compare what follows


def json_metadata(path) -> dict:
    return json.loads(run("cryptsetup", "luksDump", "--dump-json-metadata", path).stdout)


def twins(tmp_path, *format_args, extra_slot: str | None = None):
    """A cryptsetup-made volume and a byte copy: (ours, theirs, key files)."""
    kf, kf2 = keyfile(tmp_path), keyfile(tmp_path, b"second", "k2")
    ours = make_file(tmp_path / "ours.img", 20 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", *format_args, "--key-file", kf, ours)
    if extra_slot is not None:
        run("cryptsetup", "luksAddKey", "--batch-mode", *CS_PBKDF2, "-S", extra_slot,
            "--key-file", kf, ours, kf2)
    theirs = tmp_path / "theirs.img"
    shutil.copyfile(ours, theirs)
    return ours, theirs, (kf, kf2)


@pytest.mark.parametrize("key_size", ["512", "256"])
def test_luks1_to_luks2_is_what_cryptsetup_writes(tmp_path, key_size):
    ours, theirs, keys = twins(tmp_path, "--type", "luks1", *CS_PBKDF2, "--key-size",
                               key_size, extra_slot="3")
    volume_key = cs_volume_key(ours, keys[0])
    run("cryptsetup", "convert", "--batch-mode", "--type", "luks2", theirs)
    out = run_hammer("luks", "convert", "-q", "--type", "luks2", ours)
    assert "converted to LUKS2" in out.stdout
    assert json_metadata(ours) == json_metadata(theirs)
    assert ours.read_bytes()[HEADER_AREA:] == theirs.read_bytes()[HEADER_AREA:]
    for kf in keys:
        run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, ours)
    assert cs_volume_key(ours, keys[1]) == volume_key


def test_luks2_to_luks1_is_byte_identical_to_cryptsetup(tmp_path):
    ours, theirs, keys = twins(tmp_path, "--type", "luks2", *CS_PBKDF2, "--sector-size", "512",
                               "--label", "gone", extra_slot="5")
    run("cryptsetup", "convert", "--batch-mode", "--type", "luks1", theirs)
    out = run_hammer("luks", "convert", "-q", "--type", "luks1", ours)
    assert "label and subsystem were dropped" in out.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    run("cryptsetup", "open", "--test-passphrase", "--key-file", keys[1], ours)


def test_hammerfs_volume_survives_a_round_trip(tmp_path):
    kf = keyfile(tmp_path)
    vol = tmp_path / "enc.img"
    run_hammer("newfs", "--encrypt", "--type", "luks1", *CS_PBKDF2, "--key-file", kf,
               "--size", "16M", vol)
    for version in ("luks2", "luks1", "luks2"):
        run_hammer("luks", "convert", "-q", "--type", version, vol)
        run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol)
        assert "no damage" in run_hammer("scrub", "--key-file", kf, vol).stdout
    assert json_metadata(vol)["segments"]["0"]["sector_size"] == 512


REFUSALS = {
    "argon2id key slot": (["--type", "luks2", *CS_ARGON, "--sector-size", "512"], None,
                          "luks1", "uses argon2id"),
    "4096-byte sectors": (["--type", "luks2", *CS_PBKDF2, "--sector-size", "4096"], None,
                          "luks1", "sector size is 4096"),
    "slot above 7": (["--type", "luks2", *CS_PBKDF2, "--sector-size", "512"], "9", "luks1",
                     "only slots 0-7"),
    "token": (["--type", "luks2", *CS_PBKDF2, "--sector-size", "512"], "token", "luks1",
              "1 token(s)"),
    "same version": (["--type", "luks1", *CS_PBKDF2], None, "luks1", "already LUKS1"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unrepresentable_volumes_are_refused_untouched(tmp_path, case):
    format_args, extra, target, message = REFUSALS[case]
    vol, _, (kf, kf2) = twins(tmp_path, *format_args,
                              extra_slot=extra if extra and extra.isdigit() else None)
    if extra == "token":
        run("cryptsetup", "token", "import", vol, input=b'{"type":"x-test","keyslots":[]}')
    before = vol.read_bytes()
    refused = run_hammer("luks", "convert", "-q", "--type", target, vol, check=False)
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert vol.read_bytes() == before
    # cryptsetup refuses the same volumes
    assert run("cryptsetup", "convert", "--batch-mode", "--type", target, vol,
               check=False).returncode != 0


@pytest.mark.parametrize("version", ["luks1", "luks2"])
def test_dump_is_cryptsetups_line_for_line(tmp_path, version):
    """`luks dump` prints what `cryptsetup luksDump` prints (after a conversion, too)."""
    ours, _, _ = twins(tmp_path, "--type", "luks1", *CS_PBKDF2, extra_slot="2")
    if version == "luks2":
        run_hammer("luks", "convert", "-q", "--type", "luks2", ours)
    assert run_hammer("luks", "dump", ours).stdout == \
        run("cryptsetup", "luksDump", ours).stdout.decode()
