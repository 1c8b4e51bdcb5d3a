"""Issue 11.6: processes holding key material write no core dump, and the volume key of an
open device sits in a locked buffer that is zeroed on close."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

from conftest import hammer_env, run_hammer
from hammerfs.control.server import mount_key
from hammerfs.luks.secmem import LockedBuffer

FAST_KDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
CORE_PATTERN = "/proc/sys/kernel/core_pattern"


@contextlib.contextmanager
def cores_land_in(directory: str):
    """Core files of crashing processes go to ``directory`` while this runs (core_pattern
    is set to an absolute path there and restored afterwards): the mount daemon's working
    directory is "/", where a relative pattern would put its core."""
    with open(CORE_PATTERN) as f:
        old = f.read().rstrip("\n")
    with open(CORE_PATTERN, "w") as f:
        f.write(os.path.join(directory, "core.%p"))
    try:
        yield
    finally:
        with open(CORE_PATTERN, "w") as f:
            f.write(old)


def unlimited_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def cores(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith("core")]


def segv_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGSEGV)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    time.sleep(0.5)  # a core is written before the process is reaped; be generous anyway


def test_killed_mount_of_an_encrypted_volume_dumps_no_core(tmp_path):
    crashdir = tmp_path / "crash"
    crashdir.mkdir()
    key = tmp_path / "k"
    key.write_bytes(b"a passphrase that must never reach a core file\n")
    key.chmod(0o600)
    vol, mp = tmp_path / "vol.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", key, "--size", "32M", vol)
    env = hammer_env({"HAMMERFS_RUNTIME_DIR": str(tmp_path / "run")})
    with cores_land_in(str(crashdir)):
        # the control: this machine does write cores of a crashing process started this way
        sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=unlimited_cores)
        time.sleep(0.2)
        sleeper.send_signal(signal.SIGSEGV)
        sleeper.wait()
        time.sleep(0.2)
        assert cores(str(crashdir)), f"no core from the control process ({CORE_PATTERN})"
        for name in cores(str(crashdir)):
            os.unlink(crashdir / name)

        proc = subprocess.run([sys.executable, "-m", "hammerfs", "mount", "--key-file",
                               str(key), str(vol), str(mp)], cwd=crashdir, env=env,
                              preexec_fn=unlimited_cores, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        try:
            (mp / "f").write_bytes(b"data through the key" * 1000)
            reg = tmp_path / "run" / (mount_key(str(mp)) + ".json")
            pid = json.loads(reg.read_text())["pid"]
            with open(f"/proc/{pid}/limits") as f:  # the daemon inherited the raised limit
                assert re.search(r"Max core file size\s+unlimited", f.read())
            segv_and_wait(pid)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    assert cores(str(crashdir)) == []


def test_locked_buffer_is_locked_and_zeroed_on_close():
    def locked_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmLck:"))

    before = locked_kib()
    buf = LockedBuffer(b"k" * 64)
    assert buf.locked and locked_kib() >= before + 4
    view = buf.view()
    assert bytes(view) == b"k" * 64
    buf.close()  # the view still exists: the page stays mapped, but holds zeros now
    assert bytes(view) == bytes(64)
    assert locked_kib() == before
    view.release()


def _in_child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_reading_a_key_file_makes_the_process_undumpable(tmp_path):
    from hammerfs.luks.passphrase import read_key_file
    from hammerfs.luks.secmem import is_dumpable
    key = tmp_path / "k"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    assert _in_child(lambda: 0 if is_dumpable() else 1) == 0  # a fresh process is dumpable
    assert _in_child(lambda: 0 if read_key_file(str(key)) == b"secret"
                     and not is_dumpable() else 1) == 0
