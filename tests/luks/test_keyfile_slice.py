"""--keyfile-offset / --keyfile-size (and --new-keyfile-* for add-key) as cryptsetup: a slice
of the key file is the passphrase.  Cross-checked with cryptsetup both ways."""

from __future__ import annotations

import io
import shutil
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_hammer
from hammerfs.errors import HammerError
from hammerfs.luks.passphrase import get_passphrase, read_key_file

from .helpers import CS_ARGON, MiB, keyfile, make_file, run

needs_cryptsetup = pytest.mark.skipif(shutil.which("cryptsetup") is None,
                                      reason="cryptsetup-bin is installed by scripts/bootstrap")
FAST = ["--type", "luks2", *CS_ARGON]
WHOLE = b"0123456789abcdef"          # the slice at offset 4, size 6 is "456789"
SLICE = ["--keyfile-offset", "4", "--keyfile-size", "6"]


@settings(max_examples=60, deadline=None)
@given(content=st.binary(min_size=0, max_size=64), offset=st.integers(0, 80),
       size=st.integers(0, 80), stdin=st.booleans())
def test_slice_is_cut_as_cryptsetup_does(tmp_path_factory, content, offset, size, stdin):
    """size 0 means "to the end"; a file too short for offset+size is an error, never a
    shorter passphrase; an empty result is an error too."""
    path = tmp_path_factory.mktemp("kf") / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    source = "-" if stdin else str(path)
    expected = content[offset:offset + size] if size else content[offset:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content)))
        if (size and offset + size > len(content)) or not expected:
            with pytest.raises(HammerError):
                read_key_file(source, offset, size)
        else:
            assert read_key_file(source, offset, size) == expected


def test_slice_options_need_a_key_file():
    with pytest.raises(HammerError, match="give --key-file"):
        get_passphrase(None, offset=3)
    with pytest.raises(HammerError, match="negative"):
        read_key_file("-", -1, 0)


@needs_cryptsetup
def test_cryptsetup_sliced_key_opens_here_and_ours_there(tmp_path):
    whole, part = keyfile(tmp_path, WHOLE, "whole"), keyfile(tmp_path, WHOLE[4:10], "part")
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    run("cryptsetup", "luksFormat", "--batch-mode", *FAST, "--key-file", whole, *SLICE, vol)
    run_hammer("luks", "test-passphrase", "--key-file", part, vol)
    run_hammer("luks", "test-passphrase", "--key-file", whole, "--keyfile-offset", "4",
               "-l", "6", vol)
    wrong = run_hammer("luks", "test-passphrase", "--key-file", whole, "--keyfile-offset", "4",
                       vol, check=False)     # offset alone: the rest of the file
    assert wrong.returncode == 2
    short = run_hammer("luks", "test-passphrase", "--key-file", whole, "--keyfile-offset",
                       "12", "--keyfile-size", "6", vol, check=False)
    assert short.returncode == 1 and "cannot read 6 bytes at offset 12" in short.stderr
    # add-key: the new passphrase is a slice of its own file
    new_whole = keyfile(tmp_path, b"XXnew-passYY", "new_whole")
    run_hammer("luks", "add-key", "--key-file", whole, *SLICE, *CS_ARGON,
               "--new-keyfile-offset", "2", "--new-keyfile-size", "8", vol, new_whole)
    run("cryptsetup", "open", "--test-passphrase", "--key-file",
        keyfile(tmp_path, b"new-pass", "new_part"), vol)
    # our format with a slice opens in cryptsetup with the slice alone
    ours = make_file(tmp_path / "ours.img", 20 * MiB)
    run_hammer("luks", "format", "-q", *FAST, "--key-file", whole, *SLICE, ours)
    run("cryptsetup", "open", "--test-passphrase", "--key-file", part, ours)


@needs_cryptsetup
def test_encrypted_volume_with_sliced_key(tmp_path):
    whole, part = keyfile(tmp_path, WHOLE, "whole"), keyfile(tmp_path, WHOLE[4:10], "part")
    vol = tmp_path / "enc.img"
    run_hammer("newfs", "--encrypt", *CS_ARGON, "--key-file", whole, *SLICE, "--size", "24M",
               vol)
    run("cryptsetup", "open", "--test-passphrase", "--key-file", part, vol)
    assert "Format version" in run_hammer("info", "--key-file", "-", *SLICE, vol,
                                          input=WHOLE).stdout
    bad = run_hammer("info", *SLICE, vol, check=False)
    assert bad.returncode != 0 and "give --key-file" in bad.stderr
    assert "Traceback" not in bad.stderr
