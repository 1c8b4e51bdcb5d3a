"""`hammer newfs` never destroys what a device holds without -f: real images made by
mkfs.ext4, cryptsetup, mkswap and sfdisk, each detected with util-linux (wipefs/blkid) and
with the built-in magic table alone (PATH without util-linux)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from conftest import hammer_env, run_hammer
from hammerfs.cli.sizes import parse_size

MiB = 1 << 20
FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
TOOLS = ("mkfs.ext4", "cryptsetup", "mkswap", "sfdisk", "wipefs", "blkid")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="e2fsprogs, cryptsetup-bin, fdisk and util-linux are "
                                "installed by scripts/bootstrap")


def sh(*argv, **kw) -> None:
    subprocess.run(list(map(str, argv)), check=True, capture_output=True, **kw)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def blank(path, size=32 * MiB):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def make_ext4(tmp_path):
    sh("mkfs.ext4", "-q", "-L", "precious", blank(tmp_path / "ext4.img"))
    return tmp_path / "ext4.img", "ext4"


def make_luks(tmp_path):
    key = tmp_path / "old.key"
    key.write_bytes(os.urandom(32))
    sh("cryptsetup", "luksFormat", "--batch-mode", *FAST_KDF, "--key-file", key,
       blank(tmp_path / "luks.img"))
    return tmp_path / "luks.img", "LUKS"


def make_swap(tmp_path):
    sh("mkswap", blank(tmp_path / "swap.img"))
    return tmp_path / "swap.img", "swap"


def make_gpt(tmp_path):
    sh("sfdisk", "-q", blank(tmp_path / "gpt.img"), input=b"label: gpt\n,8M\n")
    return tmp_path / "gpt.img", "GPT partition table"


def make_dos(tmp_path):
    sh("sfdisk", "-q", blank(tmp_path / "dos.img"), input=b"label: dos\n,8M\n")
    return tmp_path / "dos.img", "DOS/MBR partition table"


def make_md(tmp_path):
    """An md 1.2 superblock's magic at 4 KiB (mdadm is not needed to recognise one)."""
    path = blank(tmp_path / "md.img")
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(bytes.fromhex("fc4e2ba9") + (1).to_bytes(4, "little"))
    return path, "md RAID member"


def make_random(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(os.urandom(2 * MiB))
    return path, "data of no known type"


MAKERS = [make_ext4, make_luks, make_swap, make_gpt, make_dos, make_md, make_random]


def no_util_linux(tmp_path) -> dict[str, str]:
    """A PATH where wipefs and blkid do not exist: the built-in table must do."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    return {"PATH": str(bindir)}


@pytest.mark.parametrize("util_linux", [True, False], ids=["util-linux", "builtin"])
@pytest.mark.parametrize("make", MAKERS, ids=lambda m: m.__name__[5:])
def test_newfs_refuses_any_signature_and_names_it(tmp_path, make, util_linux):
    path, what = make(tmp_path)
    before = digest(path)
    env = None if util_linux else no_util_linux(tmp_path)
    encrypt = ["--encrypt", "--key-file", "-", *FAST_KDF]
    for extra in ([], encrypt) if util_linux else ([],):
        proc = run_hammer("newfs", *extra, path, input=b"new passphrase", check=False, env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert what in proc.stderr and "-f" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert digest(path) == before  # nothing written on refusal
    key = ["--encrypt", "--key-file", "-", *FAST_KDF] if what == "LUKS" else []
    done = run_hammer("newfs", "-f", *key, "-L", "new", path, input=b"new", env=env)
    assert "label 'new'" in done.stdout
    if util_linux:
        assert "Label:" in run_hammer("info", *key[1:3], path, input=b"new").stdout


def test_newfs_force_encrypt_over_luks_with_lost_key(tmp_path):
    """-f --encrypt replaces a LUKS container without asking for its (lost) key."""
    path, _ = make_luks(tmp_path)
    (tmp_path / "old.key").unlink()  # the old key is gone for good
    new = tmp_path / "new.key"
    new.write_bytes(os.urandom(32))
    new.chmod(0o600)
    run_hammer("newfs", "-f", "--encrypt", "--key-file", new, *FAST_KDF, path)
    sh("cryptsetup", "open", "--test-passphrase", "--key-file", new, path)
    assert "Format version" in run_hammer("info", "--key-file", new, path).stdout


def test_newfs_in_an_existing_luks_container_refuses_a_used_payload(tmp_path):
    """Without --encrypt newfs builds inside the container (kept); a hammerfs already in
    the payload is still refused without -f."""
    path, _ = make_luks(tmp_path)
    key = tmp_path / "old.key"
    run_hammer("newfs", "--key-file", key, path)
    again = run_hammer("newfs", "--key-file", key, path, check=False)
    assert again.returncode == 1 and "payload" in again.stderr
    assert "a hammerfs volume" in again.stderr
    run_hammer("newfs", "-f", "--key-file", key, path)


def test_newfs_zeroed_file_needs_no_force(tmp_path):
    run_hammer("newfs", blank(tmp_path / "zero.img", 16 * MiB))


def test_size_with_a_fraction(tmp_path):
    vol = tmp_path / "v.img"
    out = run_hammer("newfs", "--size", "1.5G", vol)
    assert os.path.getsize(vol) == 3 << 29 and "1.5 GiB" in out.stdout


def test_size_larger_than_free_space_warns(tmp_path):
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    size = free + (1 << 30)
    if size >= 8 << 40:
        pytest.skip("the host file system is too large for a sparse file past its free space")
    vol = tmp_path / "big.img"
    proc = run_hammer("newfs", "--size", str(size), vol)
    assert "warning: --size" in proc.stderr and "free space" in proc.stderr


@pytest.mark.parametrize(("text", "size"), [("1.5G", 3 << 29), ("512M", 512 * MiB),
                                            ("64MiB", 64 * MiB), ("100k", 102400),
                                            ("4096", 4096), ("0.5K", 512), ("2t", 2 << 40)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5", "-1G", "0", "1.G", "G", "1X", "1e9"])
def test_parse_size_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_one_size_parser_in_the_cli():
    """mirror -b/-S take the same sizes as newfs --size."""
    proc = subprocess.run([sys.executable, "-c",
                           "from hammerfs.cli.main import build_parser\n"
                           "a = build_parser().parse_args(['mirror-copy', '-b', '1.5M', "
                           "'-S', '2MiB', 'a', 'b'])\n"
                           "print(a.bwlimit, a.chunk_size)"],
                          capture_output=True, text=True, env=hammer_env())
    assert proc.stdout.split() == [str(3 << 19), str(2 * MiB)], proc.stderr
