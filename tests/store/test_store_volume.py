"""Volumes as users meet them: the CLI, bad input, locking, a full volume, a loop device."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import hammer_env, run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.errors import HammerError, NoSpace, NotAVolume, VolumeLocked
from hammerfs.store import Store
from hammerfs.store.format import BLOCK, HEADER_SIZE
from hammerfs.store.scrub import scrub


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_newfs_info_show_scrub(tmp_path):
    vol = tmp_path / "v.img"
    out = run_hammer("newfs", "-L", "data", "--size", "20M", vol)
    assert "label 'data'" in out.stdout
    assert os.path.getsize(vol) == 20 << 20
    refused = run_hammer("newfs", "--size", "20M", vol, check=False)
    assert refused.returncode == 1 and "already holds a hammerfs volume" in refused.stderr
    with Store.open(FileDevice(str(vol))) as store:
        store.put((1, 5, 0x10, 0), b"x" * 10000)
        store.put((1, 6, 0x10, 0), b"small")
    info = run_hammer("info", vol).stdout
    assert re.search(r"Label:\s+data", info) and re.search(r"PFS count:\s+1", info)
    assert re.search(r"Next TID:\s+0x[0-9a-f]{16}\n", info)
    assert re.search(r"Format version:\s+2", info) and "Big-blocks:" in info
    assert re.search(r"Available:\s+\S+", info)
    show = run_hammer("show", vol, "1:6").stdout
    assert "ELM 1:0x6:0x10:0x0" in show and "0x5:" not in show
    assert re.match(r"HEADER slot [01] seq \d+ root 0x[0-9a-f]+ level 0 ", show)
    assert run_hammer("scrub", vol).stdout.strip().endswith("no damage found")
    tiny = tmp_path / "tiny.img"
    out = run_hammer("newfs", "--size", "100K", tiny, check=False)
    assert out.returncode == 1 and f"{tiny} is too small" in out.stderr
    assert not tiny.exists()  # no half-made image left behind
    uuid_before = re.search(r"UUID:\s+(\S+)", info).group(1)
    run_hammer("newfs", "-f", vol)
    assert uuid_before not in run_hammer("info", vol).stdout


@pytest.mark.parametrize("kind", ["empty", "truncated", "zeroed", "random", "future",
                                  "damaged-headers"])
def test_bad_volumes_give_clear_errors_and_stay_untouched(tmp_path, kind):
    vol = tmp_path / "bad.img"
    if kind in ("truncated", "future", "damaged-headers"):
        run_hammer("newfs", "--size", "4M", vol)
    if kind == "empty":
        vol.write_bytes(b"")
    elif kind == "truncated":
        os.truncate(vol, 2 << 20)
    elif kind == "zeroed":
        vol.write_bytes(bytes(4 << 20))
    elif kind == "random":
        vol.write_bytes(os.urandom(4 << 20))
    elif kind == "future":
        with open(vol, "r+b") as f:
            for slot in (0, 1):
                f.seek(slot * BLOCK + 8)
                f.write((99).to_bytes(4, "little"))
    else:
        with open(vol, "r+b") as f:
            for slot in (0, 1):
                f.seek(slot * BLOCK + HEADER_SIZE - 3)
                f.write(b"\xff\xff\xff")
    before = digest(vol)
    dev = FileDevice(str(vol))
    with pytest.raises(NotAVolume):
        Store.open(dev)
    dev.close()
    # each command meets two kinds of bad volume (a CLI run costs a second of start-up)
    cmd = {"empty": "info", "truncated": "show", "zeroed": "scrub", "random": "info",
           "future": "show", "damaged-headers": "scrub"}[kind]
    out = run_hammer(cmd, vol, check=False)
    assert out.returncode == 1, out
    assert out.stderr.startswith("hammer: ") and "Traceback" not in out.stderr
    assert str(vol) in out.stderr
    if kind == "future":
        assert "version 99 is not supported" in out.stderr
    assert digest(vol) == before


def test_second_opener_is_told_who_holds_the_volume(tmp_path):
    vol = tmp_path / "v.img"
    store = Store.create(FileDevice(str(vol), create_size=4 << 20))
    with pytest.raises(VolumeLocked, match=rf"in use by process {os.getpid()} \(.*python"):
        FileDevice(str(vol), readonly=True)
    out = run_hammer("info", vol, check=False)
    assert out.returncode == 1 and f"in use by process {os.getpid()}" in out.stderr
    store.close()
    assert "Label:" in run_hammer("info", vol).stdout


def test_full_volume_stays_usable_and_destroy_gives_space_back(tmp_path):
    vol = tmp_path / "small.img"
    store = Store.create(FileDevice(str(vol), create_size=4 << 20))
    written = []
    with pytest.raises(NoSpace):
        for i in range(10_000):
            store.put((1, 2, 0x10, i), os.urandom(64 << 10))
            written.append(i)
            if i % 8 == 0:
                store.commit()
    assert len(written) > 20
    with pytest.raises(NoSpace):  # still full, still a clean error
        store.put((1, 3, 0x10, 0), os.urandom(64 << 10))
    tid = store.commit()
    for i in written[: len(written) // 2]:  # deletes proceed when full (history is kept)...
        assert store.delete((1, 2, 0x10, i))
    store.commit()
    store.close()
    store = Store.open(FileDevice(str(vol)))
    assert store.get((1, 2, 0x10, written[-1])) is not None
    assert store.get((1, 2, 0x10, 0), tid) is not None
    free_before = store.space().free_bytes
    for i in written[: len(written) // 2]:  # ...and destroying history gives the space back
        versions = list(store.scan((1, 2, 0x10, i), (1, 2, 0x10, i), history=True, with_data=False))
        for v in versions:
            assert store.destroy(v.reckey, v.create_tid)
    store.commit()
    assert store.space().free_bytes > free_before + (len(written) // 2 - 2) * (64 << 10)
    for i in range(3):
        store.put((1, 4, 0x10, i), os.urandom(64 << 10))
    store.commit()
    assert scrub(store).ok
    store.close()


def test_put_and_get_large_records_through_a_file(tmp_path):
    with Store.create(FileDevice(str(tmp_path / "v.img"), create_size=8 << 20)) as store:
        data = os.urandom(1 << 20)
        store.put((1, 9, 0x10, 0), data)
        assert store.get((1, 9, 0x10, 0)).data == data
        store.commit()
        assert store.get((1, 9, 0x10, 0)).data == data


def _losetup_possible() -> bool:
    return shutil.which("losetup") is not None and os.geteuid() == 0 and os.path.exists(
        "/dev/loop-control")


@pytest.mark.skipif(not _losetup_possible(), reason="losetup needs root and /dev/loop-control")
def test_volume_on_a_loop_device(tmp_path):
    image = tmp_path / "loop.img"
    with open(image, "wb") as f:
        f.truncate(24 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        refused = run_hammer("newfs", "--size", "8M", dev, check=False)
        assert refused.returncode == 1 and "block device" in refused.stderr
        run_hammer("newfs", "-L", "loop", dev)
        with Store.open(FileDevice(dev)) as store:
            assert store.space().total_bytes == 24 << 20
            store.put((1, 2, 0x10, 0), b"on a block device" * 1000)
        info = run_hammer("info", dev).stdout
        assert re.search(r"Label:\s+loop", info) and "24.0 MiB" in info
        run_hammer("scrub", dev)
        with Store.open(FileDevice(dev, readonly=True)) as store:
            assert store.get((1, 2, 0x10, 0)).data == b"on a block device" * 1000
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, env=hammer_env())


def test_lock_inherited_by_a_daemon_names_the_daemon(tmp_path):
    """A mount daemonizes: the flock is then held by a child whose parent (the pid in
    /proc/locks) has exited; the error still names a live holder."""
    vol = tmp_path / "v.img"
    run_hammer("newfs", "--size", "4M", vol)
    script = ("import os, sys, time\n"
              "from hammerfs.blockdev.file import FileDevice\n"
              f"dev = FileDevice({str(vol)!r})\n"
              "if os.fork():\n"
              "    os._exit(0)\n"
              "print(os.getpid(), flush=True)\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=hammer_env())
    daemon = int(proc.stdout.readline())
    try:
        proc.wait(10)
        out = run_hammer("info", vol, check=False)
        assert out.returncode == 1
        assert f"in use by process {daemon} (" in out.stderr and "(?)" not in out.stderr
    finally:
        os.kill(daemon, 9)


def test_gathered_file_writes_equal_joined_writes(tmp_path):
    """FileDevice.write_parts (pwritev, how a commit writes adjacent extents) = write()."""
    dev = FileDevice(str(tmp_path / "g.img"), create_size=4 << 20)
    parts = [os.urandom(BLOCK * n) for n in (1, 16, 3, 40)]
    dev.write_parts(BLOCK * 5, parts)
    dev.write_parts(0, [bytes(BLOCK)])
    assert dev.read(BLOCK * 5, sum(map(len, parts))) == b"".join(parts)
    with pytest.raises(HammerError):
        dev.write_parts(4 << 20, parts)  # beyond the end: refused, nothing written
    dev.close()
