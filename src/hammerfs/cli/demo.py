"""`hammer demo`: the README's main job, the user's DragonFly workflow on a local default.

It drives the real `hammer` commands, exactly as a user's script would: two encrypted image
files in a local folder, both mounted, a slave PFS following the master through
mirror-stream, files copied in and shown arriving on the slave, history and a snapshot, then a
clean unmount.  Every command is printed before it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hammerfs.errors import HammerError

IMAGES = ("master.img", "slave.img")
MARKER = ".hammer-demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the master/slave workflow on two encrypted image files",
        description="Create two encrypted volumes in DIR, mount both, make a slave PFS follow "
        "the master with mirror-stream, copy files in and show them on the slave, then show "
        "history and a snapshot and unmount.  DIR is reused on later runs (its images are "
        "recreated).")
    p.add_argument("dir", nargs="?", default="hammer-demo", metavar="DIR",
                   help="working folder for images, key files and mount points "
                   "(default ./hammer-demo)")
    p.add_argument("--size", default="512M", help="size of each image (default 512M)")
    p.add_argument("--fast-kdf", action="store_true",
                   help="cheap key derivation (for tests; the default cost is cryptsetup's)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir).resolve()
    _prepare_folder(work)
    demo = _Demo(work)
    try:
        demo.run(args.size, args.fast_kdf)
    finally:
        demo.clean_up()
    return 0


def _prepare_folder(work: Path) -> None:
    """Only ever recreate images in a folder that is empty or was made by an earlier demo."""
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise HammerError(f"{work} is not empty and was not made by 'hammer demo'; "
                          "name an empty or new folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by hammer demo\n")
    for mnt in ("master", "slave"):
        if os.path.ismount(work / mnt):
            raise HammerError(f"{work / mnt} is still mounted; run 'hammer umount {work / mnt}'")
    for name in IMAGES:
        (work / name).unlink(missing_ok=True)


class _Demo:
    def __init__(self, work: Path):
        self.work = work
        self.master = work / "master"
        self.slave = work / "slave"
        self.stream: subprocess.Popen | None = None

    def hammer(self, *args: str, quiet: bool = False) -> str:
        shown = " ".join(shlex.quote(_short(self.work, a)) for a in args)
        print(f"\n$ hammer {shown}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "hammerfs", *args], cwd=self.work,
                              capture_output=True, text=True)
        if not quiet or proc.returncode:
            sys.stdout.write(proc.stdout + proc.stderr)
        if proc.returncode:
            raise HammerError(f"demo step failed: hammer {shown}")
        return proc.stdout

    def run(self, size: str, fast_kdf: bool) -> None:
        kdf = ["--pbkdf", "argon2id", "--pbkdf-memory", "32768", "--pbkdf-force-iterations",
               "4", "--pbkdf-parallel", "1"] if fast_kdf else []
        for role, label in (("master", "hammer1_secure_master"), ("slave", "hammer1_secure_slave")):
            key = self.work / f"{role}.key"
            key.write_text(secrets.token_urlsafe(24))
            key.chmod(0o600)
            self.hammer("newfs", "--encrypt", "--key-file", str(key), *kdf, "-L", label,
                        "--size", size, str(self.work / f"{role}.img"))
        for role in ("master", "slave"):
            (self.work / role).mkdir(exist_ok=True)
            self.hammer("mount", "--key-file", str(self.work / f"{role}.key"),
                        str(self.work / f"{role}.img"), str(self.work / role))

        status = self.hammer("pfs-status", str(self.master))
        uuid = next(w.split("=", 1)[1] for w in status.split() if w.startswith("shared-uuid="))
        (self.slave / "pfs").mkdir(exist_ok=True)
        slave_pfs = self.slave / "pfs" / "slave"
        self.hammer("pfs-slave", str(slave_pfs), f"shared-uuid={uuid}")

        print(f"\n$ hammer mirror-stream {_short(self.work, str(self.master))} "
              f"{_short(self.work, str(slave_pfs))} &", flush=True)
        self.stream = subprocess.Popen(
            [sys.executable, "-m", "hammerfs", "mirror-stream", "-q", str(self.master),
             str(slave_pfs)], cwd=self.work)

        tree = self.master / "docs"
        print(f"\n$ cp -a <hammerfs sources> {_short(self.work, str(tree))}", flush=True)
        started = time.monotonic()
        _copy_sample_tree(tree)
        notes = self.master / "notes.txt"
        notes.write_text("first version\n")
        self.hammer("synctid", str(self.master))
        _wait_for(lambda: _same_tree(tree, slave_pfs / "docs")
                  and _same_file(notes, slave_pfs / "notes.txt"), "the slave to catch up")
        files = sum(len(f) for _, _, f in os.walk(slave_pfs / "docs"))
        print(f"  slave has all {files} files {time.monotonic() - started:.1f} s after the "
              "copy started")

        notes.write_text("second version\n")
        self.hammer("synctid", str(self.master))
        _wait_for(lambda: _same_file(notes, slave_pfs / "notes.txt"), "the change to arrive")
        print("  the change arrived on the slave")
        self.hammer("history", str(notes))
        self.hammer("undo", "-d", str(notes))
        self.hammer("snapshot", str(self.master), str(self.master), "demo snapshot")
        self.hammer("snapls", str(self.master))
        self.hammer("pfs-status", str(slave_pfs))
        print(f"\nDone.  Images and keys are in {self.work}; mount them again with\n"
              f"  hammer mount --key-file {self.work}/master.key {self.work}/master.img MNT")

    def clean_up(self) -> None:
        if self.stream is not None:
            self.stream.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stream.wait(10)
        for mnt in (self.slave, self.master):
            if os.path.ismount(mnt):
                self.hammer("umount", str(mnt), quiet=True)


def _copy_sample_tree(dest: Path) -> None:
    """Copy this package's own sources: a real tree of a few dozen files."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parent.parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__"))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _same_tree(a: Path, b: Path) -> bool:
    """Same names and same bytes in every file (compared by content, not by stat)."""
    if not b.is_dir():
        return False
    names_a = sorted(p.relative_to(a) for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b) for p in b.rglob("*"))
    return names_a == names_b and all(
        (a / n).is_dir() or _same_file(a / n, b / n) for n in names_a)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise HammerError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _short(work: Path, arg: str) -> str:
    return arg.replace(str(work) + "/", "")
