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
    out = run_hammer("mirror-copy", "-v", f"127.0.0.1:{m}:1", f"{s}:1", env=env2)
    check_replica(m, s)
    # -v: each batch is reported once, by this end (the far end gets no -v of its own)
    synced = [line for line in out.stderr.splitlines() if "synced to 0x" in line]
    assert synced and len(synced) == len(set(synced)), out.stderr
    assert sum(line.startswith("Mirror-copy: synced to") for line in synced) == 1
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


# -- confinement is decided on the PFS actually opened (issue 11, point 2) ---------------------

@pytest.fixture
def mounted(tmp_path):
    """A master volume and a slave volume, each mounted (PFS #0 at the mount root)."""
    m, s = tmp_path / "m.img", tmp_path / "s.img"
    mm, sm = tmp_path / "mm", tmp_path / "sm"
    mm.mkdir()
    sm.mkdir()
    run_hammer("newfs", "--size", "256M", m)
    run_hammer("newfs", "--size", "256M", s)
    run_hammer("mount", m, mm)
    try:
        run_hammer("mount", s, sm)
        try:
            yield m, s, mm, sm
        finally:
            run_hammer("umount", sm, check=False)
    finally:
        run_hammer("umount", mm, check=False)


def test_ssh_remote_read_is_confined_to_the_pfs_dir_designates(sshd, mounted, tmp_path):
    d, port = sshd
    _m, _s, mm, _sm = mounted
    run_hammer("pfs-master", mm / "tenantA")
    run_hammer("pfs-master", mm / "tenantB")
    (mm / "root-secret").write_bytes(b"PFS0-SECRET-" * 10)
    (mm / "tenantB" / "b-secret").write_bytes(b"TENANTB-SECRET-" * 10)
    (mm / "tenantA" / "a-file").write_bytes(b"tenant A's own data")
    # Tenant A (who may write in its own PFS) plants softlinks to PFS #0 and to tenant B.
    os.symlink("@@-1:00000", mm / "tenantA" / "evil")
    os.symlink("@@-1:00002", mm / "tenantA" / "other")
    os.symlink("../tenantB", mm / "tenantA" / "updir")
    run_hammer("synctid", mm)
    forced = f"{REMOTE_HAMMER} ssh-remote mirror-read {mm / 'tenantA'}"
    _authorize(d, [f'command="{forced}",no-pty,no-port-forwarding '
                   + (d / "limited.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "limited") + f" -p {port}",
           "HAMMER_REMOTE_CMD": "hammer"}
    ok = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", "-q",
                         f"127.0.0.1:{mm / 'tenantA'}"], capture_output=True,
                        env=_env(env), timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert b"tenant A's own data" in ok.stdout
    for name in ("evil", "other", "updir"):
        out = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", "-q",
                              f"127.0.0.1:{mm / 'tenantA' / name}"], capture_output=True,
                             env=_env(env), timeout=120)
        err = out.stderr.decode()
        assert out.returncode != 0, name
        assert b"SECRET" not in out.stdout, name
        assert "ssh-remote" in err and "Traceback" not in err, err
    # DIR a plain directory of PFS softlinks: only its own entries, never PFS #0
    (mm / "tenants").mkdir()
    os.symlink("@@-1:00001", mm / "tenants" / "a")
    os.symlink("@@-1:00000", mm / "tenants" / "root")
    forced = f"{REMOTE_HAMMER} ssh-remote mirror-read {mm / 'tenants'}"
    _authorize(d, [f'command="{forced}",no-pty,no-port-forwarding '
                   + (d / "limited.pub").read_text().strip()])
    for name, allowed in (("a", True), ("root", False), ("a/evil", False)):
        out = subprocess.run([sys.executable, "-m", "hammerfs", "mirror-read", "-q",
                              f"127.0.0.1:{mm / 'tenants' / name}"], capture_output=True,
                             env=_env(env), timeout=120)
        assert (out.returncode == 0) == allowed, (name, out.stderr)
        assert b"SECRET" not in out.stdout, name


def test_ssh_remote_write_cannot_feed_another_slave_through_a_mirrored_softlink(
        sshd, mounted, tmp_path):
    d, port = sshd
    _m, _s, mm, sm = mounted
    run_hammer("pfs-master", mm / "tenantA")
    run_hammer("pfs-master", mm / "tenantB")
    run_hammer("pfs-slave", sm / "backupA", f"shared-uuid={_shared(mm / 'tenantA')}")
    run_hammer("pfs-slave", sm / "backupB", f"shared-uuid={_shared(mm / 'tenantB')}")
    (mm / "tenantB" / "b-file").write_bytes(b"tenant B's data")
    # Tenant A's data holds a softlink to the slave volume's PFS #2 (tenant B's backup).
    os.symlink("@@-1:00002", mm / "tenantA" / "evil")
    run_hammer("synctid", mm)
    forced = f"{REMOTE_HAMMER} ssh-remote mirror-write {sm / 'backupA'}"
    _authorize(d, [f'command="{forced}",no-pty,no-port-forwarding '
                   + (d / "limited.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "limited"), "HAMMER_REMOTE_CMD": "hammer"}
    run_hammer("mirror-copy", "-p", str(port), mm / "tenantA", f"127.0.0.1:{sm / 'backupA'}",
               env=env)
    run_hammer("mirror-copy", mm / "tenantB", sm / "backupB")
    assert os.readlink(sm / "backupA" / "evil").endswith(":00002")
    before = _sync_end(sm / "backupB")
    # Tenant A forges a master with tenant B's shared-uuid and feeds it through the link.
    forged = tmp_path / "forged.img"
    run_hammer("newfs", "--size", "64M", forged)
    run_hammer("pfs-master", f"{forged}:1")
    run_hammer("pfs-update", f"{forged}:1", f"shared-uuid={_shared(mm / 'tenantB')}")
    fill(forged, 1, files=3)
    out = run_hammer("mirror-copy", "-p", str(port), f"{forged}:1",
                     f"127.0.0.1:{sm / 'backupA' / 'evil'}", env=env, check=False)
    assert out.returncode != 0 and "ssh-remote" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert _sync_end(sm / "backupB") == before
    assert (sm / "backupB" / "b-file").read_bytes() == b"tenant B's data"


def _shared(path) -> str:
    return run_hammer("pfs-status", path).stdout.split("shared-uuid=")[1].split()[0]


def _sync_end(path) -> str:
    return run_hammer("pfs-status", path).stdout.split("sync-end-tid=")[1].split()[0]


def _env(extra: dict[str, str]) -> dict[str, str]:
    from conftest import hammer_env
    return hammer_env(extra)


def test_scrub_repairs_from_a_remote_replica_confined_by_ssh_remote(sshd, vols, tmp_path):
    """Self-heal over ssh: the damaged slave asks the master through a key that
    `ssh-remote mirror-read` confines to the master's PFS; another path is refused."""
    import re
    d, port = sshd
    m, s = vols
    run_hammer("mirror-copy", f"{m}:1", f"{s}:1")
    show = run_hammer("show", s, "1").stdout
    offs = [int(x, 16) for x in re.findall(r"ELM 1:\S+ .* data@(0x[0-9a-f]+)", show)][:3]
    assert len(offs) == 3
    for off in offs:
        with open(s, "r+b") as f:
            f.seek(off + 9)
            b = f.read(1)
            f.seek(off + 9)
            f.write(bytes([b[0] ^ 0x11]))
    forced = f"{REMOTE_HAMMER} ssh-remote mirror-read {m}:1"
    _authorize(d, [f'command="{forced}",no-pty,no-port-forwarding '
                   + (d / "limited.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "limited"), "HAMMER_REMOTE_CMD": "hammer"}
    other = tmp_path / "other.img"
    run_hammer("newfs", "--size", "64M", other)
    refused = run_hammer("scrub", "-p", str(port), "--from", f"127.0.0.1:{other}", s,
                         env=env, check=False)
    assert refused.returncode != 0 and "path not allowed" in refused.stderr
    healed = run_hammer("scrub", "-p", str(port), "--from", f"127.0.0.1:{m}:1", s, env=env)
    assert healed.stdout.count("REPAIRED: PFS #1:/") == 3, healed.stdout
    assert run_hammer("scrub", s).stdout.rstrip().endswith("no damage found")
    check_replica(m, s)


def test_metrics_of_a_stream_whose_source_is_remote(sshd, mounted, tmp_path):
    """A slave mounted here fed over ssh by `mirror-stream host:PATH`: the exporter gets the
    stream's bytes, records and lag from the target's mount (no local source to ask), and
    they move as the master changes; scraped over HTTP and parsed as Prometheus text."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from test_mounts import start, stop

    from hammerfs.service.config import MetricsSpec, MountSpec, StreamSpec
    from hammerfs.service.metrics import Exporter, HammerCollector, StreamView

    d, port = sshd
    _m, s, mm, sm = mounted
    run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={_shared(mm)}")
    _authorize(d, [(d / "user.pub").read_text().strip()])
    env = {"HAMMER_RSH": _ssh_opts(d / "user") + f" -p {port}",
           "HAMMER_REMOTE_CMD": REMOTE_HAMMER}
    (mm / "first").write_bytes(os.urandom(5000))
    spec = StreamSpec("offsite", f"127.0.0.1:{mm}", str(sm / "pfs" / "slave"))
    stream = start(*spec.stream_argv(), env=env)
    web = _free_port()
    exporter = Exporter(MetricsSpec(port=web), HammerCollector(
        lambda: [MountSpec("slave", str(s), 0, str(sm))],
        lambda: [StreamView(spec, stream.poll() is None, 0, "", 0)]))
    exporter.start()

    def scrape() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {s.name: s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples if s.labels.get("stream") == "offsite"}

    def wait_for(cond, what):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = cond()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")
    try:
        first = wait_for(lambda: (m := scrape()).get("hammerfs_stream_sent_records_total")
                         and m, "the first batch")
        assert first["hammerfs_stream_up"] == 1
        assert first["hammerfs_stream_sent_bytes_total"] > 5000
        assert 0 <= first["hammerfs_stream_seconds_behind"] < 60
        for i in range(5):
            (mm / f"more{i}").write_bytes(os.urandom(3000))
        later = wait_for(lambda: (m := scrape())["hammerfs_stream_sent_records_total"]
                         > first["hammerfs_stream_sent_records_total"] + 5 and m, "more")
        assert later["hammerfs_stream_sent_bytes_total"] > \
            first["hammerfs_stream_sent_bytes_total"] + 15000
        wait_for(lambda: (sm / "pfs" / "slave" / "more4").exists(), "the slave")
        assert wait_for(lambda: scrape()["hammerfs_stream_seconds_behind"] == 0 or None,
                        "the slave to catch up") is not None
    finally:
        exporter.stop()
        stop(stream)
