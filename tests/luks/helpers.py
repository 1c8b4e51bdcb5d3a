"""Helpers for the LUKS tests: a minimal file-backed BlockDevice (so these tests do not
depend on the store's FileDevice), cheap KDF settings and cryptsetup/qemu wrappers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hammerfs.luks.container import KdfSpec

PASS = b"correct horse battery"
CHEAP_ARGON = KdfSpec("argon2id", memory=32, parallel=1, force_iterations=4)
CHEAP_PBKDF2 = KdfSpec("pbkdf2", force_iterations=1000)
CS_ARGON = ["--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4",
            "--pbkdf-parallel", "1"]
CS_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
MiB = 1024 * 1024


class PlainFile:
    """Tiny BlockDevice over a regular file (pread/pwrite, no lock)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        self.fd = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        self.writes = 0

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"short read at {offset}")
        return data

    def write(self, offset: int, data) -> None:
        if self.readonly:
            raise OSError("read-only")
        self.writes += 1
        os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def keyfile(tmp: Path, data: bytes = PASS, name: str = "pass.txt") -> Path:
    path = tmp / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def run(*cmd, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def cs_volume_key(image: Path, key_file: Path) -> bytes:
    """The volume key as cryptsetup sees it."""
    out = image.parent / "vk.bin"
    run("cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", key_file,
        "--volume-key-file", out, image)
    key = out.read_bytes()
    out.unlink()
    return key
