"""A damaged volume header copy (issue 11 point 5): the store falls back to the other copy,
but never silently.  It judges whether the damaged copy was the newest (then the volume was
rolled back and a commit is lost), and `hammer info`, `hammer mount` and `hammer scrub` all
say so; scrub fails."""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import subprocess
import sys
import time

import pytest
from devices import MemDevice
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hammer_env, run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.control.server import mount_key, runtime_dir
from hammerfs.errors import HammerError
from hammerfs.store import Store
from hammerfs.store.format import BLOCK, HEADER_SIZE, decode_header
from hammerfs.store.scrub import scrub
from hammerfs.store.store import read_headers

KEY = b"header damage test key\n"
LUKS2_PAYLOAD = 16 << 20  # cryptsetup's (and our) default LUKS2 data offset


def _three_commits() -> tuple[MemDevice, list[int]]:
    dev = MemDevice(4 << 20)
    store = Store.create(dev, "h")
    tids = []
    for i in range(3):
        store.put((1, 2 + i, 0x10, 0), b"x" * (100 + i))
        tids.append(store.commit())
    store.device = dev  # keep the image: close() would only mark the MemDevice closed
    store.close()
    return dev, tids


def _slots(dev: MemDevice):
    return [decode_header(bytes(dev.buf[s * BLOCK:(s + 1) * BLOCK]), "t") for s in (0, 1)]


def test_both_copies_valid_and_fresh_volume_report_nothing():
    dev, _ = _three_commits()
    assert read_headers(dev)[1] is None
    fresh = MemDevice(4 << 20)
    Store.create(fresh, "f").close()  # one commit: slot 0 was never written
    hdr, damage = read_headers(fresh)
    assert hdr.seq == 1 and damage is None


def _image() -> tuple[bytes, list[int]]:
    dev, tids = _three_commits()
    return bytes(dev.buf), tids


def test_every_damaged_byte_of_the_newest_copy_is_reported_as_a_lost_commit():
    image, tids = _image()
    newest = max(_slots(MemDevice(len(image), image)), key=lambda h: h.seq)
    rng = random.Random(11)
    for pos in range(HEADER_SIZE):  # every byte of the header, a random damage each
        dev = MemDevice(len(image), image)
        dev.buf[newest.slot * BLOCK + pos] ^= rng.randrange(1, 256)
        hdr, damage = read_headers(dev)
        assert hdr.seq == newest.seq - 1 and hdr.last_tid == tids[-2]  # the rollback itself
        assert damage is not None and damage.slot == newest.slot
        assert damage.newer is True, (pos, damage.message)
        assert "ROLLED BACK" in damage.message
        if not 208 <= pos < 216:  # unless the damage is in the last-commit TID itself
            assert f"{tids[-1]:#018x}" in damage.message
        if not 120 <= pos < 144:  # unless it is in the root's offset or checksum
            assert "B-tree root still verifies" in damage.message


def test_every_damaged_byte_of_the_older_copy_loses_nothing():
    image, tids = _image()
    older = min(_slots(MemDevice(len(image), image)), key=lambda h: h.seq)
    rng = random.Random(12)
    for pos in range(HEADER_SIZE):
        dev = MemDevice(len(image), image)
        dev.buf[older.slot * BLOCK + pos] ^= rng.randrange(1, 256)
        hdr, damage = read_headers(dev)
        assert hdr.last_tid == tids[-1]
        assert damage is not None and damage.slot == older.slot
        assert damage.newer is False, (pos, damage.message)
        assert "no commit was lost" in damage.message


def test_a_zeroed_copy_cannot_be_judged_and_says_so():
    dev, _ = _three_commits()
    dev.buf[0:BLOCK] = bytes(BLOCK)
    damage = read_headers(dev)[1]
    assert damage is not None and damage.newer is None and "may be lost" in damage.message


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_header_parser_fuzz_never_crashes(data):
    """Bit flips and random bytes in both header slots: a header, or a HammerError."""
    dev, _ = _three_commits()
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, 2 * BLOCK - 1))
        dev.buf[pos] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        slot = data.draw(st.integers(0, 1))
        junk = data.draw(st.binary(min_size=0, max_size=HEADER_SIZE))
        dev.buf[slot * BLOCK:slot * BLOCK + len(junk)] = junk
    before = bytes(dev.buf)
    try:
        hdr, damage = read_headers(dev)
    except HammerError:
        pass
    else:
        assert damage is None or damage.message
        with contextlib.suppress(HammerError):
            Store.open(dev, readonly=True)
    assert bytes(dev.buf) == before  # nothing written when only looking


# -- the commands, on real volumes -------------------------------------------------------------

@pytest.fixture(scope="module", params=["plain", "luks2"])
def damaged(request, tmp_path_factory):
    """A real volume (plain or LUKS2) whose newest header copy has one damaged byte:
    (path, extra CLI args).  Checked healthy before the damage.  Only read afterwards."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    path = tmp_path / "vol.img"
    key = tmp_path / "key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    if request.param == "plain":
        run_hammer("newfs", "--size", "32M", path)
        extra, base = [], 0
    else:
        run_hammer("newfs", "--encrypt", "--key-file", key, "--pbkdf", "pbkdf2",
                   "--pbkdf-force-iterations", "1000", "--size", "48M", path)
        extra, base = ["--key-file", str(key)], LUKS2_PAYLOAD
    # one more commit after newfs: the one the damaged header will lose
    run_hammer("config", *extra, path, "-", input=b"prune 1d 5m\n")
    assert "prune 1d 5m" in run_hammer("config", *extra, path).stdout
    healthy = run_hammer("info", *extra, path)
    assert "WARNING" not in healthy.stderr
    assert run_hammer("scrub", *extra, path).returncode == 0
    _flip_newest(path, extra, base)
    assert "prune 1d 5m" not in run_hammer("config", *extra, path).stdout  # rolled back
    return path, extra


def _newest_slot(path, extra) -> int:
    seq = int(re.search(r"Commit seq:\s+(\d+)", run_hammer("info", *extra, path).stdout)[1])
    return seq % 2


def _flip_newest(path, extra, base) -> None:
    """XOR one byte of the seq field (in an encrypted volume: of the ciphertext, which
    garbles that whole 16-byte block of the decrypted header)."""
    slot = _newest_slot(path, extra)
    with open(path, "r+b") as f:
        f.seek(base + slot * BLOCK + 20)
        byte = f.read(1)
        f.seek(base + slot * BLOCK + 20)
        f.write(bytes([byte[0] ^ 0x40]))


def test_info_warns_about_the_rollback(damaged):
    path, extra = damaged
    info = run_hammer("info", *extra, path)
    assert info.returncode == 0
    assert "WARNING" in info.stderr and "ROLLED BACK" in info.stderr
    assert re.search(r"Header copies:\s+DAMAGED", info.stdout)


def test_scrub_fails_on_a_damaged_header_copy(damaged):
    path, extra = damaged
    bad = run_hammer("scrub", *extra, path, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert re.search(r"DAMAGED: volume header copy in slot [01] is damaged.*ROLLED BACK",
                     bad.stdout)


def test_mount_warns_on_stderr_and_in_its_log(damaged, tmp_path):
    path, extra = damaged
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        mounted = run_hammer("mount", "-o", "ro", *extra, path, mp)
        assert os.path.ismount(mp)  # a warning, not a refusal
        assert "WARNING" in mounted.stderr and "ROLLED BACK" in mounted.stderr
        log = os.path.join(runtime_dir(), mount_key(os.path.realpath(mp)) + ".log")
        with open(log) as f:
            assert "ROLLED BACK" in f.read()
    finally:
        run_hammer("umount", mp, check=False)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_foreground_mount_logs_the_warning(tmp_path):
    path = tmp_path / "vol.img"
    run_hammer("newfs", "--size", "32M", path)
    run_hammer("config", path, "-", input=b"prune 1d 5m\n")
    _flip_newest(path, [], 0)
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hammerfs", "mount", "-f", "-o", "ro", str(path), str(mp)],
        stderr=subprocess.PIPE, env=hammer_env())
    try:
        ready = select.select([proc.stderr], [], [], 30)[0]  # old code: no line at all
        line = proc.stderr.readline().decode() if ready else ""
        assert "WARNING" in line and "ROLLED BACK" in line
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mp)  # a warning, not a refusal
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_damage_is_not_invented_for_a_volume_with_a_random_image(tmp_path):
    """A file of random bytes is no volume: refused, never 'damaged header'."""
    path = tmp_path / "junk.img"
    path.write_bytes(random.Random(1).randbytes(2 << 20))
    with pytest.raises(HammerError):
        Store.open(FileDevice(str(path), readonly=True), readonly=True)
    out = run_hammer("info", path, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr


def test_scrub_report_lists_the_header_damage_first():
    dev, _ = _three_commits()
    older = min(_slots(dev), key=lambda h: h.seq)
    dev.buf[older.slot * BLOCK + 100] ^= 1
    report = scrub(Store.open(dev, readonly=True))
    assert not report.ok and "older one" in report.errors[0]
