"""Shared fixtures.  The CLI is always run from this checkout's src/ (never an installed copy),
so tests in any worktree exercise their own code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def hammer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_hammer(*args: str, input: bytes | None = None, check: bool = True,
               env: dict[str, str] | None = None, timeout: float = 300,
               ) -> subprocess.CompletedProcess:
    """Run `hammer ARGS...` as a user would; stdout/stderr captured as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "hammerfs", *map(str, args)],
        input=input, capture_output=True, env=hammer_env(env), timeout=timeout,
    )
    out = subprocess.CompletedProcess(proc.args, proc.returncode,
                                      proc.stdout.decode(errors="replace"),
                                      proc.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"hammer {' '.join(map(str, args))} failed ({out.returncode}):\n"
                             f"{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture
def hammer():
    return run_hammer


def _hammerfs_mounts_under(root: Path) -> list[str]:
    """Mount points of FUSE hammerfs mounts below ``root`` (from this process's mountinfo)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            if fields[sep + 1] == "fuse.hammerfs" and Path(point).is_relative_to(root):
                found.append(point)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a mount behind fails the run (and the mount is cleared, so a
    leaked mount never holds the next run's files)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or session.config.option.collectonly:
        return
    leaked = _hammerfs_mounts_under(factory.getbasetemp())
    for point in leaked:
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
    if leaked:
        sys.stderr.write("\nERROR: tests left hammerfs mounts behind:\n  " +
                         "\n  ".join(leaked) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class StoreClock:
    """The on-disk store's wall clock (create_ts decides a version's history interval), moved
    by the test: it starts 1 s into an aligned hour and ticks 1 us per reading."""

    HOUR = 3600 * 10**9

    def __init__(self):
        self.now = 1_800_000_000 * 10**9 // self.HOUR * self.HOUR + 10**9

    def time_ns(self) -> int:
        self.now += 1000
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)  # monotonic() etc.: the real clock


@pytest.fixture
def store_clock(monkeypatch):
    from hammerfs.store import store as store_mod
    clock = StoreClock()
    monkeypatch.setattr(store_mod, "time", clock)
    return clock
