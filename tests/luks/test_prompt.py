"""Interactive use on a terminal: hidden passphrase prompts (getpass), confirmation when a
passphrase is set, 'YES' confirmation before destroying data.  Driven through a real pty."""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time

import pytest

from conftest import SRC

from .helpers import MiB, keyfile, make_file, run

pytestmark = pytest.mark.skipif(shutil.which("cryptsetup") is None, reason="cryptsetup-bin")

FAST = ["--pbkdf", "argon2id", "--pbkdf-memory", "32", "--pbkdf-force-iterations", "4",
        "--pbkdf-parallel", "1"]


def converse(args: list[str], script: list[tuple[str, str]], timeout: float = 60
             ) -> tuple[int, str]:
    """Run `hammer ARGS` on a new pty; for each (prompt, answer) wait for the prompt and type
    the answer.  Returns (exit status, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        env = dict(os.environ, PYTHONPATH=str(SRC))
        os.execve(sys.executable, [sys.executable, "-m", "hammerfs", *args], env)
    seen = b""
    deadline = time.monotonic() + timeout
    pending = list(script)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            if pending and pending[0][0].encode() in seen:
                prompt, answer = pending.pop(0)
                # marked answered without the prompt's text, so that the same prompt asked
                # again (a retry) is waited for, not answered ahead
                seen = seen.replace(prompt.encode(), b"<answered>", 1)
                os.write(fd, answer.encode() + b"\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_format_and_unlock_on_a_terminal(tmp_path):
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    code, shown = converse(["luks", "format", *FAST, str(vol)], [
        ("Type 'yes' in capital letters", "YES"),
        ("Enter passphrase for", "typed secret"),
        ("Verify passphrase:", "typed secret"),
    ])
    assert code == 0, shown
    assert "typed secret" not in shown          # hidden input: never echoed
    run("cryptsetup", "open", "--test-passphrase", "--key-file",
        keyfile(tmp_path, b"typed secret"), vol)
    code, shown = converse(["luks", "test-passphrase", str(vol)],
                           [("Enter passphrase for", "typed secret")])
    assert code == 0 and "Key slot 0 unlocked." in shown
    code, shown = converse(["luks", "test-passphrase", str(vol)],
                           [(f"Enter passphrase for {vol}", "wrong")] * 3)  # three tries
    assert code == 2 and "no key available" in shown
    assert shown.count("No key available with this passphrase.") == 2
    code, shown = converse(["luks", "test-passphrase", str(vol)],
                           [(f"Enter passphrase for {vol}", "wrong"),
                            (f"Enter passphrase for {vol}", "typed secret")])
    assert code == 0 and "Key slot 0 unlocked." in shown


def test_mismatched_confirmation_and_refused_yes(tmp_path):
    vol = make_file(tmp_path / "v.img", 20 * MiB)
    before = vol.read_bytes()[:8192]
    code, shown = converse(["luks", "format", *FAST, str(vol)],
                           [("Type 'yes' in capital letters", "yes")])
    assert code != 0 and "aborted" in shown
    code, shown = converse(["luks", "format", *FAST, str(vol)], [
        ("Type 'yes' in capital letters", "YES"),
        ("Enter passphrase for", "one"),
        ("Verify passphrase:", "two"),
    ])
    assert code != 0 and "do not match" in shown and "Traceback" not in shown
    assert vol.read_bytes()[:8192] == before


def test_encrypted_newfs_and_info_prompt(tmp_path):
    vol = tmp_path / "enc.img"
    code, shown = converse(["newfs", "--encrypt", *FAST, "--size", "40M", str(vol)], [
        ("Enter passphrase for the new encrypted volume", "pw"),
        ("Verify passphrase:", "pw"),
    ])
    assert code == 0, shown
    code, shown = converse(["info", str(vol)],
                           [(f"Enter passphrase for {vol}", "bad"),
                            (f"Enter passphrase for {vol}", "pw")])  # names it, tries again
    assert code == 0 and "Format version" in shown, shown
