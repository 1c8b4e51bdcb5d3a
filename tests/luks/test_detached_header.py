"""Detached LUKS headers (--header FILE, as cryptsetup): `hammer luks` commands, newfs and
opening volumes, cross-checked with cryptsetup in both directions."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from conftest import run_hammer

from .helpers import CS_ARGON, CS_PBKDF2, MiB, cs_volume_key, keyfile, make_file, run

pytestmark = pytest.mark.skipif(shutil.which("cryptsetup") is None,
                                reason="cryptsetup-bin is installed by scripts/bootstrap")

FAST = {"luks2": ["--type", "luks2", *CS_ARGON], "luks1": ["--type", "luks1", *CS_PBKDF2]}
# What cryptsetup 2.6 makes for a new --header file with a 512-bit key.
HEADER_SIZE = {"luks2": 16 * MiB, "luks1": 2068480}


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def plain_hammerfs(path) -> None:
    assert "Format version" in run_hammer("info", path).stdout
    assert "no damage" in run_hammer("scrub", path).stdout


def decrypt_in_place(kf, hdr, data) -> None:
    """cryptsetup (userspace, no dm) decrypts a detached-header LUKS2 payload in place."""
    run("cryptsetup", "reencrypt", "--decrypt", "--batch-mode", "--force-offline-reencrypt",
        "--key-file", kf, "--header", hdr, data)


@pytest.mark.parametrize("luks_type", ["luks2", "luks1"])
def test_our_detached_header_opens_in_cryptsetup(tmp_path, luks_type):
    kf = keyfile(tmp_path)
    data = make_file(tmp_path / "data.img", 16 * MiB)
    hdr = tmp_path / "hdr.img"
    out = run_hammer("luks", "format", "-q", "--key-file", kf, *FAST[luks_type],
                     "--header", hdr, data)
    assert "at offset 0" in out.stdout
    assert hdr.stat().st_size == HEADER_SIZE[luks_type]
    assert stat.S_IMODE(hdr.stat().st_mode) == 0o600
    assert data.read_bytes() == bytes(16 * MiB)       # the data device is not written
    run("cryptsetup", "isLuks", hdr)
    assert run("cryptsetup", "isLuks", data, check=False).returncode != 0
    dump = run("cryptsetup", "luksDump", "--header", hdr, data).stdout.decode()
    assert ("offset: 0 [bytes]" if luks_type == "luks2" else "Payload offset:\t0") in dump
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, "--header", hdr, data)
    # hammerfs in the payload; the volume key is the one cryptsetup reads from our header
    run_hammer("newfs", "--key-file", kf, "--header", hdr, data)
    assert "no damage" in run_hammer("scrub", "--key-file", kf, "--header", hdr, data).stdout
    ours = tmp_path / "ours.vk"
    run_hammer("luks", "dump", "-q", "--dump-volume-key", "--volume-key-file", ours,
               "--key-file", kf, "--header", hdr, data)
    assert ours.read_bytes() == cs_volume_key(hdr, kf)
    if luks_type == "luks2":
        decrypt_in_place(kf, hdr, data)
        plain_hammerfs(data)


@pytest.mark.parametrize("luks_type", ["luks2", "luks1"])
def test_cryptsetup_detached_header_opens_here(tmp_path, luks_type):
    kf, kf2 = keyfile(tmp_path), keyfile(tmp_path, b"second", "k2")
    data = make_file(tmp_path / "data.img", 16 * MiB)
    hdr = tmp_path / "hdr.img"
    run("cryptsetup", "luksFormat", "--batch-mode", *FAST[luks_type], "--key-file", kf,
        "--header", hdr, data)
    assert "Version" in run_hammer("luks", "dump", "--header", hdr, data).stdout
    run_hammer("luks", "add-key", "--key-file", kf, *FAST[luks_type][2:], "--header", hdr,
               data, kf2)
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf2, "--header", hdr, data)
    run_hammer("newfs", "--key-file", kf2, "--header", hdr, data)
    assert "Format version" in run_hammer("info", "--key-file", kf, "--header", hdr,
                                          data).stdout
    if luks_type == "luks2":
        decrypt_in_place(kf, hdr, data)
        plain_hammerfs(data)


def test_newfs_encrypt_with_detached_header(tmp_path):
    kf = keyfile(tmp_path)
    vol, hdr = tmp_path / "vol.img", tmp_path / "hdr.img"
    run_hammer("newfs", "--encrypt", "--key-file", kf, *FAST["luks2"], "--header", hdr,
               "--size", "16M", vol)
    assert vol.stat().st_size == 16 * MiB         # the whole file is payload
    run("cryptsetup", "isLuks", hdr)
    without = run_hammer("info", vol, check=False)   # ciphertext everywhere, no header
    assert without.returncode != 0
    no_traceback(without)
    assert "no damage" in run_hammer("scrub", "--key-file", kf, "--header", hdr, vol).stdout
    decrypt_in_place(kf, hdr, vol)
    plain_hammerfs(vol)


def test_header_equal_to_volume_is_an_attached_header(tmp_path):
    kf = keyfile(tmp_path)
    vol = tmp_path / "vol.img"
    run_hammer("newfs", "--encrypt", "--key-file", kf, *FAST["luks2"], "--size", "24M", vol)
    assert "Format version" in run_hammer("info", "--key-file", kf, "--header", vol,
                                          vol).stdout


def test_detached_header_errors(tmp_path):
    kf = keyfile(tmp_path)
    data = make_file(tmp_path / "data.img", 20 * MiB)
    not_luks = make_file(tmp_path / "junk.img", 1 * MiB)
    bad = run_hammer("info", "--key-file", kf, "--header", not_luks, data, check=False)
    assert bad.returncode != 0 and "junk.img is not a LUKS header" in bad.stderr
    no_traceback(bad)
    # a missing data device: refused before the header file is created
    hdr = tmp_path / "hdr.img"
    missing = run_hammer("luks", "format", "-q", "--key-file", kf, *FAST["luks2"],
                         "--header", hdr, tmp_path / "nothing.img", check=False)
    assert missing.returncode != 0 and "nothing.img" in missing.stderr
    assert not hdr.exists()
    # a failed format (here: a wrong LUKS1 option) removes the header file it created
    failed = run_hammer("luks", "format", "-q", "--key-file", kf, *FAST["luks1"],
                        "--sector-size", "4096", "--header", hdr, data, check=False)
    assert failed.returncode != 0 and "512-byte sectors" in failed.stderr
    assert not hdr.exists()
    no_traceback(failed)
    # a detached header opened without --header names the fix
    run_hammer("luks", "format", "-q", "--key-file", kf, *FAST["luks2"], "--header", hdr, data)
    os.rename(hdr, tmp_path / "moved.img")
    alone = run_hammer("info", "--key-file", kf, tmp_path / "moved.img", check=False)
    assert alone.returncode != 0 and "--header" in alone.stderr
    no_traceback(alone)


def test_header_backup_and_restore_of_a_detached_header(tmp_path):
    kf = keyfile(tmp_path)
    data = make_file(tmp_path / "data.img", 16 * MiB)
    hdr, backup = tmp_path / "hdr.img", tmp_path / "hdr.backup"
    run_hammer("luks", "format", "-q", "--key-file", kf, *FAST["luks2"], "--header", hdr, data)
    run_hammer("luks", "header-backup", "--header", hdr, "--header-backup-file", backup, data)
    assert backup.read_bytes() == hdr.read_bytes()        # the whole 16 MiB header file
    with open(hdr, "r+b") as f:
        f.write(bytes(64 * 1024))                         # both header copies gone
    assert run_hammer("luks", "test-passphrase", "--key-file", kf, "--header", hdr, data,
                      check=False).returncode != 0
    run_hammer("luks", "header-restore", "-q", "--header", hdr, "--header-backup-file",
               backup, data)
    assert data.read_bytes() == bytes(16 * MiB)           # the data device was not touched
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, "--header", hdr, data)
