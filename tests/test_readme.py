"""The README's by-hand walkthrough, run as written: its shell block is taken from README.md
and run by bash in a temporary directory.  Only paths and sizes are substituted (mount points
under the temporary directory, 64M images, a cheap KDF), plus the two values a reader copies
from the output before (the shared-uuid and a TID)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SRC, hammer_env, run_hammer

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.skipif(shutil.which("fusermount3") is None or os.geteuid() != 0,
                                reason="the walkthrough mounts as root (fuse3 from bootstrap)")


def shell_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    m = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert m, f"no sh block after {heading!r}"
    return m.group(1)


def substituted(block: str, tmp: Path) -> str:
    script = re.sub(r"(?<=\s)/fort_knox", f"{tmp}/fort_knox", block)
    script = script.replace("--size 2G", "--size 64M")
    script = script.replace("--encrypt", "--encrypt --pbkdf pbkdf2 --pbkdf-force-iterations 1000")
    script = script.replace(
        "shared-uuid=<that uuid>",
        f"shared-uuid=$(hammer pfs-status {tmp}/fort_knox | sed -n 's/^ *shared-uuid=//p')")
    script = script.replace(
        "@@<tid>", f"@@$(hammer history {tmp}/fort_knox/tree/file | awk 'NR==2 {{print $1}}')")
    assert "<" not in re.sub(r"#.*", "", script), script  # every placeholder is filled
    return script


def test_readme_walkthrough_runs_as_written(tmp_path):
    block = shell_block("## What `hammer demo` does, by hand")
    for needed in ("head -c 32 /dev/urandom > k1; chmod 600 k1", "mkdir -p", "kill %1",
                   "hammer umount"):
        assert needed in block
    tree = tmp_path / "some" / "tree"
    tree.mkdir(parents=True)
    (tree / "file").write_text("first version\n")
    (tree / "sub").mkdir()
    (tree / "sub" / "other").write_bytes(os.urandom(100_000))
    preamble = (f'hammer() {{ "{sys.executable}" -m hammerfs "$@"; }}\n'
                "set -e -o pipefail\n")
    script = preamble + substituted(block, tmp_path) + "wait\n"
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, timeout=240, env=hammer_env({"PYTHONPATH": str(SRC)}))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Creating PFS" in proc.stdout and "first version" in proc.stdout
        assert re.search(r"snap-\d{8}-\d{4}", proc.stdout)
        assert (tmp_path / "k1").stat().st_mode & 0o777 == 0o600
        for mp in ("fort_knox", "fort_knox_slave"):
            assert not os.path.ismount(tmp_path / mp)
        # what the stream delivered is in the slave image
        run_hammer("mount", "-o", "ro", "--key-file", tmp_path / "k2", tmp_path / "slave.img",
                   tmp_path / "fort_knox_slave")
        try:
            copied = tmp_path / "fort_knox_slave" / "pfs" / "slave" / "tree" / "sub" / "other"
            assert copied.read_bytes() == (tree / "sub" / "other").read_bytes()
        finally:
            run_hammer("umount", tmp_path / "fort_knox_slave")
    finally:
        for mp in ("fort_knox_slave", "fort_knox"):
            if os.path.ismount(tmp_path / mp):
                subprocess.run(["fusermount3", "-u", str(tmp_path / mp)], check=False)
