"""`hammer up` / `hammer down` end to end with real components: two volumes (the master
encrypted with a key file), FUSE mounts, a supervised mirror-stream from the master's PFS to
a slave PFS; a killed stream and a killed mount process come back by themselves; SIGTERM
unmounts cleanly; the background mode, adopting a mount made by hand, and the cleanup the
timer runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import hammer_env, run_hammer
from hammerfs.control.client import pid_alive, registered_mounts
from hammerfs.service.supervisor import (
    instance_paths,
    read_state,
    read_state_file,
    rotate_log,
)

FAST_KDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = predicate()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def owner_pid(mountpoint) -> int | None:
    real = os.path.realpath(mountpoint)
    return next((int(m["pid"]) for m in registered_mounts() if m["mountpoint"] == real
                 and pid_alive(int(m["pid"]))), None)


def read_text(path) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Built once: a master volume (encrypted) and a slave volume holding a slave PFS of
    the master's PFS #0, reached through the softlink pfs/slave (the one-time setup a user
    does by hand).  Each test works on copies."""
    d = tmp_path_factory.mktemp("images")
    key = d / "master.key"
    key.write_bytes(b"master passphrase")
    key.chmod(0o600)
    master, slave, sm = d / "master.img", d / "slave.img", d / "mnt"
    sm.mkdir()
    run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", key, "-L", "master",
               "--size", "64M", master)
    run_hammer("newfs", "-L", "slave", "--size", "64M", slave)
    status = run_hammer("pfs-status", "--key-file", key, master).stdout
    uuid = status.split("shared-uuid=")[1].split()[0]
    run_hammer("mount", slave, sm)
    try:
        (sm / "pfs").mkdir()
        run_hammer("pfs-slave", sm / "pfs" / "slave", f"shared-uuid={uuid}")
    finally:
        run_hammer("umount", sm)
    return {"key": key, "master": master, "slave": slave}


@pytest.fixture
def setup(tmp_path, images):
    """Copies of the images and a config: master and slave each mounted whole, and a stream
    from the master's PFS #0 to the slave PFS."""
    key = tmp_path / "master.key"
    master, slave = tmp_path / "master.img", tmp_path / "slave.img"
    for name, dst in (("key", key), ("master", master), ("slave", slave)):
        subprocess.run(["cp", "--sparse=always", "-p", str(images[name]), str(dst)],
                       check=True)
    mm, sm = tmp_path / "fort_knox", tmp_path / "fort_knox_slave"
    mm.mkdir()
    sm.mkdir()
    config = tmp_path / "hammerfs.toml"
    config.write_text(f"""\
[[mount]]
name = "master"
volume = "{master}"
mountpoint = "{mm}"
key_file = "{key}"

[[mount]]
name = "slave"
volume = "{slave}"
mountpoint = "{sm}"

[[stream]]
name = "backup"
source = "{mm}"
target = "{sm}/pfs/slave"
reconnect_delay = 0.5
""")
    yield {"config": config, "key": key, "master": master, "slave": slave, "mm": mm,
           "sm": sm, "slave_pfs": sm / "pfs" / "slave"}
    for mp in (mm, sm):  # never leave a mount behind a failed test
        if os.path.ismount(mp) or str(mp) in {m["mountpoint"] for m in registered_mounts()}:
            run_hammer("umount", mp, check=False)
            subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)


class Notify:
    """A stand-in for systemd's notify socket: collects what `hammer up` sends."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(word in m for m in self.messages):
            left = deadline - time.monotonic()
            assert left > 0, f"no {word} from hammer up (got {self.messages})"
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


def test_up_streams_restarts_and_shuts_down_cleanly(setup, tmp_path):
    mm, sm, slave_pfs = setup["mm"], setup["sm"], setup["slave_pfs"]
    notify = Notify(tmp_path / "notify.sock")
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.Popen([sys.executable, "-m", "hammerfs", "up", "-f",
                               "--config", str(setup["config"])],
                              env=hammer_env({"NOTIFY_SOCKET": notify.path}),
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        notify.wait("READY=1", 60)  # as systemd's Type=notify sees it
        assert os.path.ismount(mm) and os.path.ismount(sm)
        # written on the master mount, it appears on the slave mount
        (mm / "notes.txt").write_text("first")
        wait_for(lambda: read_text(slave_pfs / "notes.txt") == "first", 15, "the stream")

        # the stream process dies: the supervisor starts a new one
        state = read_state(str(setup["config"]))
        first = state["streams"][0]["pid"]
        os.kill(first, signal.SIGKILL)
        state = wait_for(lambda: (s := read_state(str(setup["config"])))
                         and s["streams"][0]["restarts"] >= 1 and s["streams"][0]["pid"]
                         and s, 15, "the stream restart")
        assert state["streams"][0]["pid"] != first
        (mm / "second.txt").write_text("second")
        wait_for(lambda: read_text(slave_pfs / "second.txt") == "second", 15,
                 "the restarted stream")

        # the master's mount process dies: the dead FUSE mount is cleared and remounted
        dead = owner_pid(mm)
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: owner_pid(mm) not in (None, dead), 30, "the remount")
        (mm / "third.txt").write_text("third")
        wait_for(lambda: read_text(slave_pfs / "third.txt") == "third", 20,
                 "the stream after the remount")
        # the stream complained when its source vanished; now it streams again, and the
        # status shows no error that has passed as its present state (a run that recovered
        # says "connected again"; a new run starts with no message)
        status = run_hammer("service", "status", "--config", setup["config"]).stdout
        assert "master" in status and "mounted" in status and "restarts=" in status
        assert "stream backup" in status and "running, pid" in status, status
        last = [line for line in status.splitlines() if "last message (" in line]
        assert all("connected again after" in line for line in last), status
        assert "previous run ended: " in status, status

        # `hammer down` from another shell: SIGTERM, then follows hammer up; a file still
        # open on the master makes its unmount wait until it is closed, and down says who
        # holds it; meanwhile the status shows the stopped stream as stopped
        busy = open(mm / "notes.txt")  # noqa: SIM115 (closed below)
        down = subprocess.Popen([sys.executable, "-m", "hammerfs", "down", "--config",
                                 str(setup["config"])], env=hammer_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        status = wait_for(lambda: (s := run_hammer("service", "status", "--config",
                                                   setup["config"]).stdout)
                          and "busy, in use by" in s and s, 30, "the busy master")
        assert "hammer up stopping" in status and "stopped" in status, status
        assert "running, pid" not in status, status
        busy.close()
        out, _ = down.communicate(timeout=60)
        assert down.returncode == 0, out
        assert f"stopping hammer up (pid {up.pid})" in out
        assert f"master: {mm}: busy, in use by pid {os.getpid()} (" in out, out
        assert f"open {mm}/notes.txt" in out, out
        assert f"master: {mm}: unmounted" in out and "everything unmounted" in out, out
        assert up.wait(5) == 0
        notify.wait("STOPPING=1", 1)
    finally:
        if up.poll() is None:
            up.kill()
        notify.close()
    log = read_text(tmp_path / "up.out")
    assert "master: unlocking and mounting" in log
    assert "stream backup exited (killed by SIGKILL); restarting in" in log
    assert "mount process of" in log and "mounted again" in log
    assert f"is busy, in use by pid {os.getpid()}" in log and "retrying until it is free" \
        in log
    assert "SIGTERM: stopping" in log and "down: everything unmounted" in log
    assert not os.path.ismount(mm) and not os.path.ismount(sm)
    assert read_state(str(setup["config"])) is None
    assert read_state_file(str(setup["config"]))["exit"] == 0

    # data intact after a remount, on both volumes
    run_hammer("mount", "--key-file", setup["key"], setup["master"], mm)
    try:
        assert read_text(mm / "third.txt") == "third"
    finally:
        run_hammer("umount", mm)
    run_hammer("mount", setup["slave"], sm)
    try:
        assert read_text(slave_pfs / "notes.txt") == "first"
        assert read_text(slave_pfs / "third.txt") == "third"
    finally:
        run_hammer("umount", sm)


def test_background_up_keeps_a_hand_made_mount_and_down_cleans_up_after_a_crash(setup):
    mm, sm, config = setup["mm"], setup["sm"], setup["config"]
    run_hammer("mount", "--key-file", setup["key"], setup["master"], mm)
    hand_pid = owner_pid(mm)
    up = run_hammer("up", "--config", config, timeout=120)
    assert "already mounted on" in up.stdout and "keeping it" in up.stdout
    assert "slave: mounting" in up.stdout
    assert "running in the background" in up.stdout
    assert owner_pid(mm) == hand_pid and os.path.ismount(sm)
    again = run_hammer("up", "--config", config, check=False)
    assert again.returncode != 0 and "already running" in again.stderr
    (mm / "bg.txt").write_text("background")
    wait_for(lambda: read_text(setup["slave_pfs"] / "bg.txt") == "background", 15,
             "the stream")

    # reload: an edited config is applied, touching only what changed
    original = config.read_text()
    master_only = original.split("[[mount]]\nname = \"slave\"")[0]
    config.write_text(master_only)
    run_hammer("service", "reload", "--config", config)
    wait_for(lambda: not os.path.ismount(sm), 20, "the slave to be unmounted")
    state = wait_for(lambda: (s := read_state(str(config))) and not s["streams"] and s, 10,
                     "the stream to stop")
    assert [m["name"] for m in state["mounts"]] == ["master"]
    assert owner_pid(mm) == hand_pid
    config.write_text(master_only + "[[mount]]\nvolume = 5\n")
    bad = run_hammer("service", "reload", "--config", config, check=False)
    assert bad.returncode == 1 and "'volume' must be a string" in bad.stderr
    os.kill(state["pid"], signal.SIGHUP)  # behind the command's back: refused in the log
    log = instance_paths(str(config))["log"]
    wait_for(lambda: "reload refused, nothing changed" in read_text(log), 10, "the refusal")
    config.write_text(original)
    run_hammer("service", "reload", "--config", config)
    wait_for(lambda: os.path.ismount(sm) and read_state(str(config))["streams"], 20,
             "the slave and its stream to come back")
    (mm / "reloaded.txt").write_text("reloaded")
    wait_for(lambda: read_text(setup["slave_pfs"] / "reloaded.txt") == "reloaded", 15,
             "the stream after the reload")

    # a config broken since: the status still shows the running state, with the error
    good = config.read_text()
    config.write_text(good + "[[mount]\n")
    res = run_hammer("service", "status", "--config", config)
    assert f"hammer up running (pid {state['pid']})" in res.stdout, res
    assert "mount  master" in res.stdout and "stream backup" in res.stdout
    assert "hammer: warning: config" in res.stderr and "reload" in res.stderr

    # `hammer up` dies without cleaning up: its stream goes with it, the mounts stay, and
    # `hammer down` (the config still broken) unmounts what it mounted, not the hand-made
    # mount it found
    state = read_state(str(config))
    stream_pid = state["streams"][0]["pid"]
    os.kill(state["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(stream_pid), 10, "the orphaned stream to exit")
    assert os.path.ismount(mm) and os.path.ismount(sm)
    res = run_hammer("service", "status", "--config", config, check=False)
    assert res.returncode == 3 and "not running" in res.stdout
    down = run_hammer("down", "--config", config, timeout=120)
    assert "hammer up is not running" in down.stdout, down.stdout
    assert f"slave: unmounting {sm}" in down.stdout
    assert f"master: {mm} stays mounted (not mounted by hammer up)" in down.stdout
    assert os.path.ismount(mm) and owner_pid(mm) == hand_pid and not os.path.ismount(sm)
    assert "nothing it mounted is left" in run_hammer("down", "--config", config).stdout
    run_hammer("umount", mm)
    config.write_text(good)

    # what the daily timer runs: volumes not mounted are cleaned up directly (unlocked
    # with the mount's key file)
    cleaned = run_hammer("service", "cleanup", "--config", config)
    assert cleaned.stdout.count("PFS #0") == 2, cleaned.stdout
    assert not os.path.ismount(mm)


def test_a_failing_mount_unmounts_the_others_unless_it_is_optional(setup, tmp_path):
    """The slave volume cannot be mounted (someone holds it): the master is unmounted again
    and the error says why.  Marked optional, the slave is retried in the background while
    the master serves, and mounted once it is free."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; "
                               f"f=open({str(setup['slave'])!r},'rb+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); "
                               "sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    up = None
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_hammer("up", "-f", "--config", setup["config"], check=False, timeout=120)
        assert res.returncode == 1
        assert "slave: cannot mount" in res.stderr, res.stderr
        assert not os.path.ismount(setup["mm"]) and not os.path.ismount(setup["sm"])

        config = setup["config"]
        config.write_text(config.read_text().replace('name = "slave"\n',
                                                     'name = "slave"\noptional = true\n'))
        up = subprocess.Popen([sys.executable, "-m", "hammerfs", "up", "-f", "--config",
                               str(config)], env=hammer_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        state = wait_for(lambda: (s := read_state(str(config))) and s["streams"][0]["pid"]
                         and s, 30, "hammer up to start its stream")
        assert {m["name"]: m["state"] for m in state["mounts"]} == {
            "master": "mounted", "slave": "pending"}
        assert os.path.ismount(setup["mm"]) and not os.path.ismount(setup["sm"])
    finally:
        holder.stdin.close()  # the slave volume is free from now on
        holder.wait()
    try:
        (setup["mm"] / "late.txt").write_text("late")
        wait_for(lambda: read_text(setup["slave_pfs"] / "late.txt") == "late", 40,
                 "the slave mounted by a retry, and the stream into it")
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    out = up.stdout.read()
    assert "retrying" in out and "slave: mounted again" in out, out
    assert not os.path.ismount(setup["mm"]) and not os.path.ismount(setup["sm"])


def test_check_reports_every_problem_and_mounts_nothing(setup, tmp_path):
    bad = tmp_path / "bad.toml"
    key = setup["key"]
    key.chmod(0o644)
    bad.write_text(f"""\
[[mount]]
volume = "{setup['master']}"
mountpoint = "{setup['mm']}"
key_file = "{key}"
optoins = ["ro"]

[[mount]]
volume = "{setup['slave']}"
mountpoint = "{setup['mm']}"
key_file = "{tmp_path}/missing.key"

[[stream]]
source = "{setup['mm']}"
target = "{tmp_path}/nowhere"
""")
    for args in (("up", "--check"), ("up", "-f"), ("up",), ("service", "install",
                                                            "--prefix", str(tmp_path))):
        res = run_hammer(*args, "--config", bad, check=False)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        err = res.stderr
        assert "unknown key 'optoins' (did you mean 'options'?)" in err
        assert f"key_file {tmp_path}/missing.key: no such file" in err
        assert f"mountpoint {setup['mm']} is used by both" in err
        assert "target" in err and "neither inside a configured [[mount]]" in err
        # the same warning `hammer luks` gives for a key file others can read
        assert f"warning: key file {key} is accessible by group or others (mode 0644)" \
            in err
        assert not os.path.ismount(setup["mm"]) and not os.path.ismount(setup["sm"])
    assert not (tmp_path / "hammerfs.service").exists()
    ok = run_hammer("up", "--check", "--config", setup["config"])
    assert "OK" in ok.stdout and "stream backup" in ok.stdout
    assert not os.path.ismount(setup["mm"])


def test_logs_in_the_runtime_dir_stay_bounded(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"a" * 100)
    rotate_log(str(log), limit=200)
    assert log.exists()
    log.write_bytes(b"b" * 300)
    rotate_log(str(log), limit=200)
    assert not log.exists() and (tmp_path / "x.log.1").read_bytes() == b"b" * 300


@pytest.fixture
def loop_volume(tmp_path):
    """A hammerfs volume on a loop device (blockdev --setro makes its commits fail)."""
    image = tmp_path / "loop.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        run_hammer("newfs", dev)
        yield dev
    finally:
        subprocess.run(["blockdev", "--setrw", dev], capture_output=True)
        for _ in range(50):  # a mount process may still hold the device for a moment
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def test_down_tells_a_lost_final_commit_and_leaves_hand_made_mounts(setup, loop_volume,
                                                                     tmp_path):
    """A mount whose final commit fails (the device turned read-only) is reported as such:
    by a reload that drops it (not "it stays mounted": it is gone) and by `hammer down`,
    which then exits non-zero.  A mount made by hand before `hammer up` stays mounted."""
    dev, lm, sm = loop_volume, tmp_path / "lm", setup["sm"]
    lm.mkdir()
    run_hammer("mount", setup["slave"], sm)  # by hand, before hammer up
    hand_pid = owner_pid(sm)
    config = tmp_path / "loop.toml"
    hand = f'[[mount]]\nname = "hand"\nvolume = "{setup["slave"]}"\nmountpoint = "{sm}"\n'
    loop = f'[[mount]]\nname = "loop"\nvolume = "{dev}"\nmountpoint = "{lm}"\n'
    config.write_text(hand + loop)
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.Popen([sys.executable, "-m", "hammerfs", "up", "-f", "--config",
                               str(config)], env=hammer_env(), stdout=out,
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (s := read_state(str(config))) and s["phase"] == "running", 60,
                 "hammer up")
        # a reload drops the loop mount, whose final commit fails
        (lm / "lost1").write_text("never committed")
        subprocess.run(["blockdev", "--setro", dev], check=True)
        config.write_text(hand)
        run_hammer("service", "reload", "--config", config)
        wait_for(lambda: not os.path.ismount(lm) and "reloaded" in read_text(
            tmp_path / "up.out"), 30, "the reload")
        log = read_text(tmp_path / "up.out")
        assert "unmounted, but its last changes were not committed" in log, log
        assert "it stays mounted" not in log, log
        # back in the config, mounted again; then `hammer down` with the device read-only
        subprocess.run(["blockdev", "--setrw", dev], check=True)
        config.write_text(hand + loop)
        run_hammer("service", "reload", "--config", config)
        wait_for(lambda: owner_pid(lm), 30, "the loop mount to come back")
        (lm / "lost2").write_text("never committed")
        subprocess.run(["blockdev", "--setro", dev], check=True)
        down = run_hammer("down", "--config", config, check=False, timeout=120)
        assert down.returncode == 1, (down.stdout, down.stderr)
        assert "hammer up stopped, but not cleanly: loop: unmounted, but" in down.stderr
        assert "commit failed" in down.stderr, down.stderr
        assert f"hand: {sm}: left mounted (not mounted by hammer up)" in down.stdout
        assert up.wait(10) == 1
    finally:
        if up.poll() is None:
            up.kill()
    assert not os.path.ismount(lm)
    assert os.path.ismount(sm) and owner_pid(sm) == hand_pid


def test_metrics_endpoint_textfile_and_the_scheduled_scrub(setup, tmp_path):
    """[metrics]: the endpoint scraped with a real HTTP client and parsed as Prometheus
    text; the textfile too; `hammer service scrub` (what the monthly timer runs) scrubs
    both mounts through them, and the metrics show it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    mm, slave_pfs = setup["mm"], setup["slave_pfs"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prom = tmp_path / "hammerfs.prom"
    with open(setup["config"], "a") as f:
        f.write(f'\n[metrics]\nport = {port}\ntextfile = "{prom}"\ninterval = "1s"\n'
                '\n[scrub]\nrate = "100m"\n')
    notify = Notify(tmp_path / "notify.sock")
    up = subprocess.Popen([sys.executable, "-m", "hammerfs", "up", "-f",
                           "--config", str(setup["config"])],
                          env=hammer_env({"NOTIFY_SOCKET": notify.path}),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        notify.wait("READY=1", 60)
        (mm / "notes.txt").write_text("metered")
        assert not (mm / "no-such-file").exists()  # a lookup answered ENOENT
        wait_for(lambda: read_text(slave_pfs / "notes.txt") == "metered", 15, "the stream")
        scrub = run_hammer("service", "scrub", "--config", setup["config"])
        assert scrub.stdout.count("no damage found") == 2, scrub.stdout

        def scrape() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in text_string_to_metric_families(text) for s in fam.samples}

        def value(samples, name, **labels):
            return next(v for (n, lab), v in samples.items()
                        if n == name and all(dict(lab).get(k) == x for k, x in labels.items()))

        samples = wait_for(lambda: (m := scrape()) and any(
            n == "hammerfs_stream_sent_records_total" for n, _ in m) and m, 15,
            "the stream's metrics")
        for mount in ("master", "slave"):
            assert value(samples, "hammerfs_mount_up", mount=mount) == 1
            assert value(samples, "hammerfs_volume_used_bytes", mount=mount) > 0
            assert value(samples, "hammerfs_volume_free_bytes", mount=mount) > 0
            assert value(samples, "hammerfs_mount_commits_total", mount=mount) >= 1
            assert value(samples, "hammerfs_scrub_last_finished_timestamp_seconds",
                         mount=mount) > time.time() - 120
            assert value(samples, "hammerfs_scrub_last_unrepairable", mount=mount) == 0
            assert value(samples, "hammerfs_volume_damage_unrepairable_total", mount=mount) == 0
        assert value(samples, "hammerfs_fuse_requests_total", mount="master", op="write") >= 1
        assert value(samples, "hammerfs_fuse_requests_total", mount="master",
                     op="lookup") >= 1
        assert value(samples, "hammerfs_fuse_errors_total", mount="master", op="lookup",
                     errno="ENOENT") >= 1
        # cache hit rates: lookups and misses of the node and inode caches move with use
        before = {c: (value(samples, "hammerfs_cache_lookups_total", mount="master", cache=c),
                      value(samples, "hammerfs_cache_misses_total", mount="master", cache=c))
                  for c in ("node", "inode")}
        assert all(0 <= m <= n and n > 0 for n, m in before.values()), before
        for i in range(10):
            (mm / f"cached{i}").write_text("x")
            os.stat(mm / f"cached{i}")
        after = scrape()
        for c, (n, _) in before.items():
            assert value(after, "hammerfs_cache_lookups_total", mount="master", cache=c) > n
            ratio = value(after, "hammerfs_cache_hit_ratio", mount="master", cache=c)
            assert 0 < ratio <= 1
        assert value(samples, "hammerfs_stream_up", stream="backup") == 1
        assert value(samples, "hammerfs_stream_restarts_total", stream="backup") == 0
        assert value(samples, "hammerfs_stream_sent_records_total", stream="backup") > 0
        assert value(samples, "hammerfs_stream_sent_bytes_total", stream="backup") > 0
        assert 0 <= value(samples, "hammerfs_stream_seconds_behind", stream="backup") < 60
        # the node_exporter textfile says the same
        text = wait_for(lambda: (t := read_text(prom)) and "hammerfs_stream_seconds_behind" in t
                        and t, 10, "the textfile with the stream's metrics")
        names = {fam.name for fam in text_string_to_metric_families(text)}
        assert {"hammerfs_volume_used_bytes", "hammerfs_stream_seconds_behind"} <= names
        run_hammer("down", "--config", setup["config"], timeout=120)
        assert up.wait(10) == 0
    finally:
        if up.poll() is None:
            up.kill()
        notify.close()


def test_unmount_one_gives_up_on_a_busy_mount_naming_its_holders(tmp_path):
    """What `hammer up` does on the way down when a mount stays busy: it says who holds it,
    retries for its busy timeout, then fails with MountBusy naming them (`hammer down`
    shows that and exits non-zero)."""
    from hammerfs.errors import MountBusy
    from hammerfs.service.supervisor import unmount_one

    image, mnt = tmp_path / "v.img", tmp_path / "mnt"
    mnt.mkdir()
    run_hammer("newfs", "--size", "16M", image)
    run_hammer("mount", image, mnt)
    sitter = subprocess.Popen(["sleep", "600"], cwd=mnt)
    told: list[str] = []
    try:
        t0 = time.monotonic()
        with pytest.raises(MountBusy) as err:
            unmount_one("vol", str(mnt), busy_timeout=1.5, on_busy=told.append)
        assert 1.5 <= time.monotonic() - t0 < 10
        assert told == [f"busy, in use by pid {sitter.pid} (sleep 600): cwd"]
        assert f"pid {sitter.pid} (sleep 600): cwd" in str(err.value)
        assert [h.pid for h in err.value.holders] == [sitter.pid]
        assert os.path.ismount(mnt)
        sitter.kill()
        sitter.wait()
        unmount_one("vol", str(mnt))
        assert not os.path.ismount(mnt)
    finally:
        sitter.kill()
        sitter.wait()
        if os.path.ismount(mnt):  # never leave a mount behind a failed test
            run_hammer("umount", mnt, check=False)
