"""The README's main job, end to end: it must keep working at every commit."""

import subprocess
from pathlib import Path

from conftest import run_hammer


def test_demo_runs_the_master_slave_workflow(tmp_path: Path):
    work = tmp_path / "demo"
    out = run_hammer("demo", "--fast-kdf", "--size", "128M", str(work), timeout=600).stdout
    assert "the change arrived on the slave" in out
    assert "operating as a SLAVE" in out and "sync-end-time=never" in out
    assert not (work / "master").is_mount() and not (work / "slave").is_mount()
    # the master file shows two versions, and the undo diff shows what changed
    assert "-first version" in out and "+second version" in out
    # the images are real encrypted volumes that cryptsetup recognises as LUKS
    for img in ("master.img", "slave.img"):
        assert subprocess.run(["cryptsetup", "isLuks", str(work / img)]).returncode == 0


def test_demo_refuses_a_foreign_folder(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    out = run_hammer("demo", str(tmp_path), check=False)
    assert out.returncode != 0 and "not made by 'hammer demo'" in out.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
