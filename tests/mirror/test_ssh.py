"""Mirroring over a real OpenSSH server on 127.0.0.1 (temporary host and user keys)."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from test_cli import change, check_replica, fill, shared_uuid

from conftest import SRC, run_hammer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REMOTE_HAMMER = f"env PYTHONPATH={shlex.quote(str(SRC))} {shlex.quote(sys.executable)} -m hammerfs"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if shutil.which("sshd") is None:
        pytest.fail("openssh-server is not installed (scripts/bootstrap installs it)")
    d = tmp_path_factory.mktemp("sshd")
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host"],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "user"],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "limited"],
                   check=True)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin yes\n"
        "KbdInteractiveAuthentication no\n")
    os.chmod(d, 0o700)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield d, port
    proc.terminate()
    proc.wait(10)


def _ssh_opts(key) -> str:
    return (f"ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o BatchMode=yes -o LogLevel=ERROR")


def _authorize(d, lines: list[str]) -> None:
    (d / "authorized_keys").write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def vols(tmp_path):
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    run_hammer("newfs", "--size", "64M", m)
    run_hammer("newfs", "--size", "64M", s)
    run_hammer("pfs-master", f"{m}:1")
    run_hammer("pfs-slave", f"{s}:1", f"shared-uuid={shared_uuid(f'{m}:1')}")
    fill(m, 1, files=30)
    return m, s


def test_copy_to_and_from_remote_over_ssh(sshd, vols):
    d, port = sshd
    m, s = vols
    _authorize(d, [(d / "user.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "user"), "HAMMER_REMOTE_CMD": REMOTE_HAMMER}
    # local master -> remote slave, with -p as HAMMER takes it
    run_hammer("mirror-copy", "-p", str(port), f"{m}:1", f"root@127.0.0.1:{s}:1", env=env)
    check_replica(m, s)
    change(m, 1, seed=1)
    # remote master -> local slave (the port given inside HAMMER_RSH this time)
    env2 = dict(env, HAMMER_RSH=_ssh_opts(d / "user") + f" -p {port}")
    run_hammer("mirror-copy", f"127.0.0.1:{m}:1", f"{s}:1", env=env2)
    check_replica(m, s)
    # a refusal on the far side reaches the user as a clear message
    run_hammer("pfs-master", f"{s}:2")
    out = run_hammer("mirror-copy", "-p", str(port), f"{m}:1", f"127.0.0.1:{s}:2", env=env,
                     check=False)
    assert out.returncode != 0 and "is a master" in out.stderr
    assert "Traceback" not in out.stderr


def test_ssh_remote_forced_command_allows_only_its_path(sshd, vols, tmp_path):
    d, port = sshd
    m, s = vols
    forced = f"{REMOTE_HAMMER} ssh-remote mirror-write {s}:1"
    _authorize(d, [f'command="{forced}",no-pty,no-port-forwarding '
                   + (d / "limited.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "limited"), "HAMMER_REMOTE_CMD": "hammer"}
    run_hammer("mirror-copy", "-p", str(port), f"{m}:1", f"127.0.0.1:{s}:1", env=env)
    check_replica(m, s)
    # another path, or reading instead of writing, is refused by the forced command
    other = tmp_path / "other.img"
    run_hammer("newfs", "--size", "64M", other)
    out = run_hammer("mirror-copy", "-p", str(port), f"{m}:1", f"127.0.0.1:{other}:1",
                     env=env, check=False)
    assert out.returncode != 0 and "path not allowed" in out.stderr
    out = run_hammer("mirror-read", "-p", str(port), f"127.0.0.1:{s}:1", env=env,
                     check=False)
    assert out.returncode != 0 and "only mirror-write is allowed" in out.stderr
