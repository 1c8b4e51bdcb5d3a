"""The kernel's writeback cache on writable mounts (`-o writeback`): small writes land in the page cache and
reach the filesystem in the background, on close, fsync, before every control op and before
each periodic commit; what the mount shows and what the volume holds stay exact."""

from __future__ import annotations

import contextlib
import os
import random
import time

from fs_helpers import ForkedMount, slurp

from conftest import run_hammer
from hammerfs.blockdev.file import FileDevice
from hammerfs.control import ControlClient, find_mount
from hammerfs.fs import FileSystem, init_pfs_root
from hammerfs.fs.layout import PAGE
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ


def _volume(tmp_path) -> str:
    path = str(tmp_path / "vol.img")
    store = Store.create(FileDevice(path, create_size=128 << 20), label="wb")
    init_pfs_root(store, 0)
    store.close()
    return path


def _read_volume(path: str, name: bytes) -> bytes:
    """The file as the volume holds it (its last commit), read without any mount."""
    store = Store.open(FileDevice(path), readonly=True)
    try:
        fs = FileSystem(store)
        obj = fs.lookup(ROOT_OBJ, name).obj_id
        return fs.read(obj, 0, fs.getattr(obj).size + 1)
    finally:
        store.close()


def test_random_small_writes_and_reads_match_a_model(tmp_path):
    """pwrite/pread of odd sizes at odd offsets (partial pages: the kernel reads the page
    first), a truncate and an O_APPEND writer: the mount and, after unmount, the volume
    hold exactly the model's bytes."""
    path = _volume(tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    rng = random.Random(5)
    model = bytearray(rng.randbytes(300_000))
    with ForkedMount(lambda: Store.open(FileDevice(path)), mp, writeback=True):
        (mp / "f").write_bytes(model)
        fd = os.open(mp / "f", os.O_RDWR)
        try:
            for i in range(1500):
                off = rng.randrange(len(model) + 5000)
                if rng.random() < 0.6:
                    data = rng.randbytes(rng.choice([PAGE, rng.randrange(1, 9000)]))
                    assert os.pwrite(fd, data, off) == len(data)
                    model.extend(bytes(max(0, off - len(model))))
                    model[off:off + len(data)] = data
                else:
                    assert os.pread(fd, 5000, off) == bytes(model[off:off + 5000])
                if i == 700:
                    os.ftruncate(fd, 123_457)
                    del model[123_457:]
        finally:
            os.close(fd)
        with open(mp / "f", "ab") as f:  # the kernel places O_APPEND writes itself
            for _ in range(20):
                tail = rng.randbytes(rng.randrange(1, 3000))
                f.write(tail)
                f.flush()
                model += tail
        assert slurp(mp / "f") == bytes(model)
        assert os.stat(mp / "f").st_size == len(model)
    assert _read_volume(path, b"f") == bytes(model)


def test_data_of_a_file_held_open_is_committed_within_seconds(tmp_path):
    """Written, never closed nor synced: the commit thread hands the kernel's dirty pages
    over before it commits, so a crash of the mount process (SIGKILL: the kernel's pages
    are lost with it) two seconds later loses nothing (the kernel alone would keep them
    up to 30 s)."""
    path = _volume(tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    data = random.Random(6).randbytes(40_000)
    m = ForkedMount(lambda: Store.open(FileDevice(path)), mp, writeback=True).__enter__()
    try:
        fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        for off in range(0, len(data), PAGE):
            os.pwrite(fd, data[off:off + PAGE], off)
        time.sleep(3)  # held open until the crash
        m.kill()
        with contextlib.suppress(OSError):  # ENOTCONN: its mount is gone
            os.close(fd)
    finally:
        m.kill()
    assert _read_volume(path, b"f") == data


def test_a_control_op_sees_what_was_written_before_it(tmp_path):
    """A snapshot (synctid) taken while the writer still has the file open holds the
    bytes written before it: the control op hands the kernel's dirty pages over first."""
    path = _volume(tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: Store.open(FileDevice(path)), mp, writeback=True):
        fd = os.open(mp / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"first", 0)
            tid = _synctid(mp)
            os.pwrite(fd, b"SECOND", 0)
            assert slurp(mp / f"f@@0x{tid:016x}") == b"first"
        finally:
            os.close(fd)
        assert slurp(mp / "f") == b"SECOND"


def _synctid(mp) -> int:
    return ControlClient(find_mount(str(mp)).socket_path).call("synctid")["tid"]


def test_files_restored_behind_the_kernel_show_their_restored_bytes_and_size(tmp_path):
    """``undo -r`` changes files behind the kernel, which keeps a regular file's size and
    mtime itself under the writeback cache: the mount must make it let go of them."""
    path = _volume(tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    with ForkedMount(lambda: Store.open(FileDevice(path)), mp, writeback=True):
        (mp / "d").mkdir()
        names = [f"f{i}" for i in range(40)]
        for name in names:
            (mp / "d" / name).write_bytes(b"old")
        tid = _synctid(mp)
        for name in names:
            (mp / "d" / name).write_bytes(b"new, and longer")
        os.link(mp / "d" / "f0", mp / "d" / "f0-link")
        os.rename(mp / "d" / "f2", mp / "f2")  # the kernel moves the name it holds ...
        os.rename(mp / "f2", mp / "d" / "f2")  # ... and back
        assert os.stat(mp / "d" / "f0").st_size == 15  # held by the kernel, size included
        _synctid(mp)
        run_hammer("undo", "-r", "-t", f"0x{tid:016x}", mp / "d" / "f1")  # one file
        assert (os.stat(mp / "d" / "f1").st_size, slurp(mp / "d" / "f1")) == (3, b"old")
        run_hammer("undo", "-r", "-t", f"0x{tid:016x}", mp / "d")  # a whole tree
        for name in names:
            assert (os.stat(mp / "d" / name).st_size, slurp(mp / "d" / name)) == (3, b"old")
        assert not os.path.exists(mp / "d" / "f0-link")  # created since: removed
