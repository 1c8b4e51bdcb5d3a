"""`hammer luks ...` and encrypted volumes through `hammer newfs/info/scrub`, run as a user
would, cross-checked with cryptsetup and qemu."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import run_hammer

from .helpers import CS_ARGON, CS_PBKDF2, PASS, MiB, cs_volume_key, keyfile, make_file, run

pytestmark = pytest.mark.skipif(shutil.which("cryptsetup") is None,
                                reason="cryptsetup-bin is installed by scripts/bootstrap")

FAST = ["--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4",
        "--pbkdf-parallel", "1"]
FAST_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


def test_newfs_encrypt_then_info_scrub_and_wrong_key(tmp_path):
    kf = keyfile(tmp_path)
    vol = tmp_path / "enc.img"
    run_hammer("newfs", "--encrypt", "--key-file", kf, *FAST, "--size", "48M", vol)
    run("cryptsetup", "isLuks", vol)
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol)
    info = run_hammer("info", "--key-file", kf, vol)
    assert "Format version" in info.stdout
    assert "no damage" in run_hammer("scrub", "--key-file", kf, vol).stdout
    wrong = run_hammer("info", "--key-file", keyfile(tmp_path, b"nope", "bad.txt"), vol,
                       check=False)
    assert wrong.returncode == 2
    assert "no key available with this passphrase" in wrong.stderr
    no_traceback(wrong)
    prompt = run_hammer("info", vol, input=b"", check=False)
    assert prompt.returncode != 0 and "--key-file" in prompt.stderr
    no_traceback(prompt)
    # the passphrase may come from stdin
    assert "Format version" in run_hammer("info", "--key-file", "-", vol, input=PASS).stdout


def test_newfs_in_cryptsetup_container(tmp_path):
    kf = keyfile(tmp_path)
    vol = make_file(tmp_path / "cs.img", 40 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CS_ARGON,
        "--sector-size", "4096", "--key-file", kf, vol)
    run_hammer("newfs", "--key-file", kf, vol)
    assert "no damage" in run_hammer("scrub", "--key-file", kf, vol).stdout
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf, vol)


def _check_plain_hammerfs(raw) -> None:
    info = run_hammer("info", raw)
    assert "Format version" in info.stdout
    assert "no damage" in run_hammer("scrub", raw).stdout


needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils")


@needs_qemu
@pytest.mark.parametrize("layout", ["luks1", "luks2-512"])
def test_encrypted_volume_decrypted_by_qemu_is_plain_hammerfs(tmp_path, layout):
    kf = keyfile(tmp_path)
    vol = tmp_path / "enc.img"
    if layout == "luks1":
        opts = ["--type", "luks1", *FAST_PBKDF2]
    else:
        opts = ["--type", "luks2", "--sector-size", "512", *FAST_PBKDF2]
    run_hammer("newfs", "--encrypt", "--key-file", kf, *opts, "--size", "40M", vol)
    if layout != "luks1":
        run("cryptsetup", "convert", "--batch-mode", "--type", "luks1", vol)
    raw = tmp_path / "plain.raw"
    run("qemu-img", "convert", "--object", f"secret,id=s0,data={PASS.decode()}",
        "--image-opts", f"driver=luks,key-secret=s0,file.filename={vol}", "-O", "raw", raw)
    _check_plain_hammerfs(raw)


def test_encrypted_luks2_4096_decrypted_by_cryptsetup_is_plain_hammerfs(tmp_path):
    from .test_interop import detached_copy

    kf = keyfile(tmp_path)
    vol = tmp_path / "enc.img"
    run_hammer("newfs", "--encrypt", "--key-file", kf, *FAST, "--size", "40M", vol)
    hdr, data = detached_copy(vol, tmp_path)
    run("cryptsetup", "reencrypt", "--decrypt", "--batch-mode", "--force-offline-reencrypt",
        "--key-file", kf, "--header", hdr, data)
    _check_plain_hammerfs(data)


def test_luks_commands_round_trip_with_cryptsetup(tmp_path):
    kf, kf2, kf3 = (keyfile(tmp_path, p, n) for p, n in
                    ((PASS, "k1"), (b"second", "k2"), (b"third", "k3")))
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    refused = run_hammer("luks", "format", "--key-file", kf, *FAST, vol, check=False)
    assert refused.returncode != 0 and "--batch-mode" in refused.stderr
    run_hammer("luks", "format", "-q", "--key-file", kf, *FAST, "--label", "data",
               "--sector-size", "512", vol)
    assert "Label:         \tdata" in run("cryptsetup", "luksDump", vol).stdout.decode()
    assert run_hammer("luks", "test-passphrase", "--key-file", kf, vol).stdout.strip() == \
        "Key slot 0 unlocked."
    assert "Key slot 4 created." in run_hammer("luks", "add-key", "--key-file", kf, *FAST,
                                               "--key-slot", "4", vol, kf2).stdout
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf2, "--key-slot", "4", vol)
    run_hammer("luks", "change-key", "--key-file", kf2, "--new-key-file", kf3, *FAST, vol)
    run("cryptsetup", "open", "--test-passphrase", "--key-file", kf3, "--key-slot", "4", vol)
    assert run("cryptsetup", "open", "--test-passphrase", "--key-file", kf2, vol,
               check=False).returncode == 2
    run_hammer("luks", "remove-key", vol, kf3)
    assert "4: luks2" not in run_hammer("luks", "dump", vol).stdout
    # kill-slot needs a remaining passphrase (or --batch-mode)
    run_hammer("luks", "add-key", "--key-file", kf, *FAST, vol, kf2)
    bad = run_hammer("luks", "kill-slot", "--key-file", kf3, vol, "0", check=False)
    assert bad.returncode != 0 and "no remaining key slot" in bad.stderr
    no_traceback(bad)
    # the slot being killed does not count as "remaining"
    alone = run_hammer("luks", "kill-slot", "--key-file", kf2, vol, "1", check=False)
    assert alone.returncode != 0
    run_hammer("luks", "kill-slot", "--key-file", kf, vol, "1")
    assert run("cryptsetup", "open", "--test-passphrase", "--key-file", kf2, vol,
               check=False).returncode == 2
    # uuid and label, seen by cryptsetup
    uuid = "12345678-1234-4234-8234-123456789abc"
    run_hammer("luks", "uuid", "--uuid", uuid, vol)
    assert run("cryptsetup", "luksUUID", vol).stdout.decode().strip() == uuid
    assert run_hammer("luks", "uuid", vol).stdout.strip() == uuid
    run_hammer("luks", "label", "--label", "other", "--subsystem", "sys", vol)
    dump = run("cryptsetup", "luksDump", vol).stdout.decode()
    assert "Label:         \tother" in dump and "Subsystem:     \tsys" in dump
    # volume key: same as cryptsetup's, only with confirmation
    out = tmp_path / "ours.vk"
    run_hammer("luks", "dump", "-q", "--dump-volume-key", "--key-file", kf,
               "--volume-key-file", out, vol)
    assert out.read_bytes() == cs_volume_key(vol, kf)
    assert out.stat().st_mode & 0o777 == 0o400


def test_header_backup_and_restore(tmp_path):
    kf = keyfile(tmp_path)
    for version, opts in (("luks2", CS_ARGON), ("luks1", CS_PBKDF2)):
        vol = make_file(tmp_path / f"{version}.img", 20 * MiB)
        run("cryptsetup", "luksFormat", "--batch-mode", "--type", version, *opts, "--key-file",
            kf, vol)
        ours, theirs = tmp_path / f"{version}.ours", tmp_path / f"{version}.cs"
        run_hammer("luks", "header-backup", "--header-backup-file", ours, vol)
        run("cryptsetup", "luksHeaderBackup", "--header-backup-file", theirs, vol)
        assert ours.read_bytes() == theirs.read_bytes()
        assert ours.stat().st_mode & 0o777 == 0o400
        again = run_hammer("luks", "header-backup", "--header-backup-file", ours, vol,
                           check=False)
        assert again.returncode != 0 and "exists" in again.stderr
        key = cs_volume_key(vol, kf)
        with open(vol, "r+b") as f:          # destroy the header
            f.write(os.urandom(64 * 1024))
        assert run("cryptsetup", "isLuks", vol, check=False).returncode != 0
        run_hammer("luks", "header-restore", "-q", "--header-backup-file", theirs, vol)
        assert cs_volume_key(vol, kf) == key
        bogus = tmp_path / "bogus"
        bogus.write_bytes(os.urandom(4096))
        bad = run_hammer("luks", "header-restore", "-q", "--header-backup-file", bogus, vol,
                         check=False)
        assert bad.returncode != 0 and "not a valid LUKS header backup" in bad.stderr
        assert cs_volume_key(vol, kf) == key


def test_loose_key_file_permissions_warn(tmp_path):
    kf = keyfile(tmp_path)
    kf.chmod(0o644)
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CS_ARGON, "--key-file",
        kf, vol)
    proc = run_hammer("luks", "test-passphrase", "--key-file", kf, vol)
    assert "warning" in proc.stderr and "group or others" in proc.stderr


def test_format_defaults_are_cryptsetup_defaults(tmp_path):
    """Without --type/--sector-size/--key-size: LUKS2, aes-xts-plain64, 512-bit key,
    4096-byte sectors, argon2id (costs forced here only to keep the test fast)."""
    kf = keyfile(tmp_path)
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    run_hammer("luks", "format", "-q", "--key-file", kf, "--pbkdf-memory", "32",
               "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1", vol)
    dump = run("cryptsetup", "luksDump", vol).stdout.decode()
    for expected in ("Version:       \t2", "cipher: aes-xts-plain64", "sector: 4096 [bytes]",
                     "Key:        512 bits", "PBKDF:      argon2id", "offset: 16777216 [bytes]"):
        assert expected in dump, expected
    luks1 = make_file(tmp_path / "v1.img", 4 * MiB)
    run_hammer("luks", "format", "-q", "--type", "luks1", "--key-file", kf,
               "--pbkdf-force-iterations", "1000", luks1)
    dump = run("cryptsetup", "luksDump", luks1).stdout.decode()
    assert "Cipher mode:   \txts-plain64" in dump and "MK bits:       \t512" in dump
    assert "Payload offset:\t4096" in dump


def test_cryptsetup_token_survives_our_changes(tmp_path):
    kf, kf2 = keyfile(tmp_path), keyfile(tmp_path, b"second", "k2")
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *CS_ARGON, "--key-file",
        kf, vol)
    token = '{"type":"example-vendor","keyslots":["0"],"blob":{"a":[1,2,"x"],"b":null}}'
    (tmp_path / "tok.json").write_text(token)
    run("cryptsetup", "token", "import", "--json-file", tmp_path / "tok.json", "--token-id",
        "5", vol)
    run_hammer("luks", "add-key", "--key-file", kf, *FAST, vol, kf2)
    run_hammer("luks", "label", "--label", "x", vol)
    assert run("cryptsetup", "token", "export", "--token-id", "5", vol).stdout.decode() \
        .strip() == token
    assert "5: example-vendor" in run_hammer("luks", "dump", vol).stdout
    # removing slot 0 drops it from the token's keyslots, as cryptsetup does
    run_hammer("luks", "kill-slot", "--key-file", kf2, vol, "0")
    exported = run("cryptsetup", "token", "export", "--token-id", "5", vol).stdout.decode()
    assert '"keyslots":[]' in exported and '"blob":{"a":[1,2,"x"],"b":null}' in exported


def test_format_options_without_encrypt_are_refused(tmp_path):
    vol = tmp_path / "plain.img"
    proc = run_hammer("newfs", "--pbkdf", "pbkdf2", "--size", "40M", vol, check=False)
    assert proc.returncode != 0 and "--pbkdf: only valid with --encrypt" in proc.stderr
    assert not vol.exists()
