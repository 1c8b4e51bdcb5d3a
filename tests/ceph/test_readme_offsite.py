"""The README's "Offsite copy on Ceph / S3" block, run as written against the test cluster
(the cluster's start/stop lines are the fixture's; names, paths, sizes and the KDF are
substituted, as in tests/test_readme.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from ceph_helpers import ceph, stored_bytes, unique  # noqa: F401

from conftest import SRC, hammer_env, run_hammer
from test_readme import shell_block


def test_offsite_walkthrough_runs_as_written(ceph, unique, tmp_path):
    block = shell_block("## Offsite copy on Ceph / S3")
    first, last = block.splitlines()[0], block.splitlines()[-1]
    assert first.startswith("scripts/ceph-test-cluster start /tmp/ceph && . /tmp/ceph/env")
    assert last == "scripts/ceph-test-cluster stop /tmp/ceph"
    script = "\n".join(block.splitlines()[1:-1]) + "\n"
    for mp in ("/fort_knox", "/offsite"):
        script = re.sub(rf"(?<=\s){mp}", f"{tmp_path}{mp}", script)
    script = script.replace("s3://hammerfs/offsite", f"s3://hammerfs/{unique}")
    script = script.replace("rbd:hammerfs/replica", f"rbd:hammerfs/{unique}")
    script = script.replace("--size 2G", "--size 64M")
    script = script.replace("--encrypt", "--encrypt --pbkdf pbkdf2 --pbkdf-force-iterations 1000")
    script = script.replace(
        "shared-uuid=<that uuid>",
        f"shared-uuid=$(hammer pfs-status {tmp_path}/fort_knox | sed -n 's/^ *shared-uuid=//p')")
    assert "<" not in re.sub(r"#.*", "", script), script
    tree = tmp_path / "some" / "tree"
    tree.mkdir(parents=True)
    (tree / "file").write_bytes(b"OFFSITE-PLAINTEXT-MARKER " * 400)
    preamble = (f'hammer() {{ "{sys.executable}" -m hammerfs "$@"; }}\n'
                f". {ceph['DIR']}/env\nset -e -o pipefail\n")
    try:
        proc = subprocess.run(["bash", "-c", preamble + script], cwd=tmp_path,
                              capture_output=True, text=True, timeout=240,
                              env=hammer_env({"PYTHONPATH": str(SRC)}))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "file" in proc.stdout and re.search(r"0x[0-9a-f]{16}", proc.stdout)
        for kind in ("s3", "rbd"):
            raw = stored_bytes(kind, unique)
            assert raw and b"OFFSITE-PLAINTEXT-MARKER" not in raw
    finally:
        for mp in ("offsite", "fort_knox"):
            if os.path.ismount(tmp_path / mp):
                run_hammer("umount", tmp_path / mp, check=False)
                subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / mp)], check=False)
