"""A volume in use can be inspected: `info`, `show`, `luks dump` and `luks test-passphrase`
on a mount point, a path inside it, or the mounted image itself (through the mount, which
holds the image's lock)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import run_hammer

FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
pytestmark = pytest.mark.skipif(shutil.which("fusermount3") is None,
                                reason="fuse3 is installed by scripts/bootstrap")


@pytest.fixture
def mounted(tmp_path):
    key = tmp_path / "k1"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    vol, mnt = tmp_path / "enc.img", tmp_path / "mnt"
    mnt.mkdir()
    run_hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "-L", "busy",
               "--size", "48M", vol)
    run_hammer("mount", "--key-file", key, vol, mnt)
    try:
        (mnt / "sub").mkdir()
        (mnt / "sub" / "f").write_bytes(b"x" * 10000)
        run_hammer("synctid", mnt)
        yield vol, mnt, key
    finally:
        if os.path.ismount(mnt):
            run_hammer("umount", mnt)


def test_info_and_show_on_a_mounted_volume(mounted):
    vol, mnt, key = mounted
    for where in (mnt, mnt / "sub"):
        info = run_hammer("info", where).stdout
        assert re.search(r"Label:\s+busy", info) and re.search(r"Mounted on:\s+" + str(mnt), info)
    by_image = run_hammer("info", vol)  # locked by the mount: read through it, and say so
    assert f"is mounted on {mnt}" in by_image.stderr
    assert re.search(r"Label:\s+busy", by_image.stdout)
    show = run_hammer("show", mnt).stdout
    assert show.startswith("HEADER slot") and "ELM 0:" in show
    assert run_hammer("show", vol, "0").stdout.count("ELM 0:") == show.count("ELM 0:")
    outside = run_hammer("info", mnt.parent, check=False)
    assert outside.returncode == 1 and "not inside a mounted hammerfs" in outside.stderr


def test_luks_dump_and_test_passphrase_on_a_mounted_volume(mounted, tmp_path):
    vol, mnt, key = mounted
    dumps = [run_hammer("luks", "dump", where).stdout for where in (vol, mnt)]
    assert dumps[0] == dumps[1] and "LUKS header information" in dumps[0]
    for where in (vol, mnt):
        ok = run_hammer("luks", "test-passphrase", "--key-file", key, where)
        assert "unlocked" in ok.stdout
    bad = tmp_path / "bad"
    bad.write_bytes(b"wrong")
    wrong = run_hammer("luks", "test-passphrase", "--key-file", bad, vol, check=False)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    run_hammer("umount", mnt)
    assert run_hammer("luks", "dump", vol).stdout == dumps[0]  # the same header, directly
    cs = subprocess.run(["cryptsetup", "luksDump", str(vol)], capture_output=True, text=True)
    assert cs.returncode == 0


def test_plain_mounted_volume_is_not_luks(tmp_path):
    vol, mnt = tmp_path / "plain.img", tmp_path / "mnt"
    mnt.mkdir()
    run_hammer("newfs", "--size", "16M", vol)
    run_hammer("mount", vol, mnt)
    try:
        out = run_hammer("luks", "dump", vol, check=False)
        assert out.returncode == 1 and "not encrypted" in out.stderr
        assert re.search(r"Size:\s+16.0 MiB", run_hammer("info", vol).stdout)
    finally:
        run_hammer("umount", mnt)
