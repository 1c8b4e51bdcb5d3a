"""Issue 12, point 9: the small things a new user trips over (each test fails on the code
before its fix)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import hammer_env, run_hammer
from hammerfs.cli.fs_cmds import prune_summary


@pytest.mark.parametrize(("n", "word"), [(0, "versions"), (1, "version"), (2, "versions")])
def test_prune_summary_counts_in_english(n, word):
    done = {"pfs": 0, "destroyed": n, "freed_bytes": 1 << 20, "free_bytes": 3 << 20}
    assert prune_summary(done) == \
        f"PFS 0: destroyed {n} history {word}, freed 1.0 MiB (3.0 MiB free)"


@pytest.mark.parametrize("content", [b"", b"myhost\n", bytes(range(256)) * 64])
def test_history_of_a_file_elsewhere_says_so(tmp_path, content):
    """`hammer history /etc/hostname` is about a file outside any mount, not a volume that
    is 'too small to hold a hammerfs volume (0 bytes)'."""
    path = tmp_path / "hostname"
    path.write_bytes(content)
    for command in ("history", "undo"):
        res = run_hammer(command, path, check=False)
        assert res.returncode == 1, res
        assert f"{path}: not a file inside a mounted hammerfs, and not a hammerfs volume " \
            "either; mounts were looked up in the runtime directory" in res.stderr, res.stderr
        assert "too small" not in res.stderr and "Traceback" not in res.stderr


def test_a_damaged_volume_keeps_its_own_error(tmp_path):
    image = tmp_path / "v.img"
    run_hammer("newfs", "--size", "16M", image)
    with open(image, "r+b") as f:  # both header copies: magic intact, checksums broken
        for offset in (64, 4096 + 64):
            f.seek(offset)
            f.write(b"\xff" * 16)
    res = run_hammer("history", image, check=False)
    assert res.returncode == 1 and "checksum mismatch" in res.stderr, res.stderr


def hammer_in(cwd, *args: str) -> str:
    """`hammer ARGS` run in ``cwd``: its stdout, stripped."""
    return subprocess.run([sys.executable, "-m", "hammerfs", *args], cwd=cwd, env=hammer_env(),
                          capture_output=True, text=True, check=True).stdout.strip()


def test_snapshot_prints_absolute_links_whatever_dir_is(tmp_path):
    image, mnt = tmp_path / "v.img", tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "snaps").mkdir()
    run_hammer("newfs", "--size", "16M", image)
    run_hammer("mount", image, mnt)
    try:
        lines = [hammer_in(tmp_path, "snapshot", str(mnt), d)
                 for d in ("snaps", str(tmp_path / "snaps"), "./snaps/../snaps")]
        lines.append(hammer_in(mnt, "snapshot", "."))
    finally:
        run_hammer("umount", mnt)
    for line in lines:
        link, arrow, target = line.partition(" -> ")
        assert arrow and link.startswith("/") and target.startswith(f"{mnt}/@@0x"), line
    assert [line.partition(" -> ")[0].rsplit("/", 1)[0] for line in lines] == \
        [str(tmp_path / "snaps")] * 3 + [str(mnt)]


def test_umount_of_a_busy_mount_names_who_holds_it(tmp_path):
    """As fuser: a shell sitting in the mount (cwd), a process with a file open, one with
    a file mapped; each is named with its pid and command line."""
    image, mnt = tmp_path / "v.img", tmp_path / "mnt"
    mnt.mkdir()
    run_hammer("newfs", "--size", "16M", image)
    run_hammer("mount", image, mnt)
    (mnt / "data").write_bytes(b"x" * 8192)
    script = ("import mmap, sys, time; f = open('data', 'rb'); "
              "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); g = open('data', 'rb'); "
              "print('ready', flush=True); sys.stdin.read()")
    sitter = subprocess.Popen(["sleep", "600"], cwd=mnt)
    opener = subprocess.Popen([sys.executable, "-c", script], cwd=mnt, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert opener.stdout.readline().strip() == "ready"
        res = run_hammer("umount", mnt, check=False)
        assert res.returncode == 1, res
        err = res.stderr
        assert f"cannot unmount {mnt}: it is busy, in use by" in err, err
        assert f"pid {sitter.pid} (sleep 600): cwd" in err, err
        assert f"pid {opener.pid} ({sys.executable} -c import mmap" in err, err
        opener_part = err.split(f"pid {opener.pid} ")[1].split("; pid")[0]
        assert "cwd" in opener_part and f"open {mnt}/data" in opener_part \
            and "mapped" in opener_part, err
        assert os.path.ismount(mnt)
    finally:
        sitter.kill()
        opener.stdin.close()
        opener.wait()
        sitter.wait()
    run_hammer("umount", mnt)
    assert not os.path.ismount(mnt)


def test_mount_over_a_nonempty_directory_needs_o_nonempty(tmp_path):
    image, mnt = tmp_path / "v.img", tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "old-notes.txt").write_text("under the mount")
    run_hammer("newfs", "--size", "16M", image)
    res = run_hammer("mount", image, mnt, check=False)
    assert res.returncode == 1 and not os.path.ismount(mnt)
    assert f"{mnt}: mount point is not empty (1 entry: 'old-notes.txt'); they would be " \
        "hidden while mounted.  Use an empty directory, or -o nonempty" in res.stderr, res
    run_hammer("mount", "-o", "nonempty", image, mnt)
    try:
        assert os.listdir(mnt) == []  # the volume's root, hiding the old file
    finally:
        run_hammer("umount", mnt)
    assert (mnt / "old-notes.txt").read_text() == "under the mount"
