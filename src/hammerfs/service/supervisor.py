"""`hammer up`: unlock and mount every configured volume, keep every mirror stream running,
and on SIGTERM/SIGINT (or `hammer down`) stop the streams and unmount cleanly.

Each mount is a `hammer mount` daemon and each stream a `hammer mirror-stream` child in its
own session, so a crashing stream cannot take a mount down and the supervisor only has to
watch pids.  A stream that exits is restarted with exponential backoff (1 s doubling to
60 s, back to 1 s once it has run for a minute); a mount whose process died is cleaned up
(a dead FUSE mount answers ENOTCONN) and mounted again the same way.

The supervisor keeps its state in ``<runtime dir>/service/up-<key>.json`` (``key`` derives
from the config path): pid, mounts, streams with their pids and restart counts.  `hammer
down` and `hammer service status` read it; an flock on ``up-<key>.lock`` makes a second
`hammer up` of the same config refuse to start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hammerfs.control.client import pid_alive
from hammerfs.control.runtime import create_private, nofollow_opener
from hammerfs.errors import HammerError, MountBusy, UnmountCommitFailed
from hammerfs.service.config import MountSpec, ServiceConfig, StreamSpec

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STABLE_AFTER = 60.0  # a child that ran this long gets its backoff reset
POLL = 0.25  # how often stream processes are checked (a cheap waitpid each)
MOUNT_POLL = 2.0  # how often mount owners are checked (reads the mount registrations)
STREAM_STOP_TIMEOUT = 10.0
BUSY_TIMEOUT = 30.0
MOUNT_TIMEOUT = 600.0  # generous: a slow KDF on a small CPU, a big volume's first open


def hammer_argv() -> list[str]:
    """How to run `hammer` as a child: the same interpreter and package as this one."""
    return [sys.executable, "-m", "hammerfs"]


def service_dir() -> str:
    from hammerfs.control.runtime import ensure_private_dir, ensure_runtime_dir
    return ensure_private_dir(os.path.join(ensure_runtime_dir(), "service"))


def instance_paths(config_path: str) -> dict[str, str]:
    key = hashlib.sha256(os.path.realpath(config_path).encode()).hexdigest()[:12]
    base = os.path.join(service_dir(), f"up-{key}")
    return {"lock": base + ".lock", "state": base + ".json", "log": base + ".log",
            "base": base}


def read_state_file(config_path: str) -> dict | None:
    """What the last `hammer up` of this config wrote, live or not: a stopped one leaves its
    final state (``exit`` set), a killed one what it last knew."""
    try:
        with open(instance_paths(config_path)["state"], opener=nofollow_opener) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def read_state(config_path: str) -> dict | None:
    """The state a live `hammer up` of this config wrote, or None."""
    state = read_state_file(config_path)
    if state is None or "exit" in state:
        return None
    return state if pid_alive(int(state.get("pid", 0))) else None


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness and status; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


LOG_LIMIT = 4 << 20


def rotate_log(path: str, limit: int = LOG_LIMIT) -> None:
    """Keep a log in the runtime dir (RAM) bounded: past ``limit`` it becomes ``path.1``."""
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > limit:
            os.replace(path, path + ".1")


def say(text: str) -> None:
    print(f"hammer up: {text}", flush=True)


# -- mounts ------------------------------------------------------------------------------------
def mount_owner(mountpoint: str) -> dict | None:
    """The registration of the live hammerfs mount on ``mountpoint``, if any."""
    from hammerfs.control.client import registered_mounts
    return next((m for m in registered_mounts() if m["mountpoint"] == mountpoint), None)


def is_stale_mount(mountpoint: str) -> bool:
    """A FUSE mount whose process died: every request fails with ENOTCONN (ECONNABORTED
    while the kernel is still tearing the connection down).  statfs, not stat: the kernel
    answers stat from attributes it keeps (an hour on a hammerfs mount) without asking."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def clear_stale_mount(mountpoint: str) -> None:
    subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)


def check_mountpoint(m: MountSpec) -> str:
    """'free', 'ours' (this volume and PFS is already mounted there by hammerfs), or an
    error explaining who else is there."""
    owner = mount_owner(m.mountpoint)
    if owner is not None:
        same = owner.get("volume") == m.volume and int(owner.get("pfs", -1)) == m.pfs
        if same:
            return "ours"
        raise HammerError(f"{m.name}: {m.mountpoint} already has another hammerfs mounted "
                          f"({owner.get('volume')}:{owner.get('pfs')})")
    if is_stale_mount(m.mountpoint):
        say(f"{m.name}: clearing the dead mount left on {m.mountpoint}")
        clear_stale_mount(m.mountpoint)
    if os.path.ismount(m.mountpoint):
        raise HammerError(f"{m.name}: something else is mounted on {m.mountpoint}")
    return "free"


def mount_one(m: MountSpec) -> None:
    """`hammer mount` (unlocks with the key file, returns once the mount serves)."""
    # A session of its own: a Ctrl-C meant for `hammer up` must not kill a mount half-way
    # (hammer up finishes it, then unmounts everything in order).
    try:
        proc = subprocess.run([*hammer_argv(), *m.mount_argv()], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=MOUNT_TIMEOUT,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise HammerError(f"{m.name}: mounting {m.volume}:{m.pfs} took more than "
                          f"{MOUNT_TIMEOUT:g}s") from None
    if proc.returncode != 0:
        lines = [ln.removeprefix("hammer: ") for ln in proc.stderr.strip().splitlines()
                 if "warning:" not in ln]
        raise HammerError(f"{m.name}: cannot mount {m.volume}:{m.pfs} on {m.mountpoint}: "
                          f"{lines[-1] if lines else 'failed'}")


def unmount_one(name: str, mountpoint: str, busy_timeout: float = BUSY_TIMEOUT,
                on_busy: Callable[[str], None] | None = None) -> None:
    """Unmount (the mount commits and releases the volume).  A busy mount is retried for
    ``busy_timeout`` seconds, saying who holds it (and telling ``on_busy``) whenever that
    changes; then MountBusy naming them."""
    from hammerfs.control.holders import describe, unmount_naming_holders
    from hammerfs.fuse.mount import unmount
    deadline = time.monotonic() + busy_timeout
    said = None
    while True:
        try:
            unmount_naming_holders(unmount, mountpoint)
            return
        except UnmountCommitFailed:
            raise  # unmounted, but its last changes are lost: never "gone meanwhile"
        except MountBusy as exc:
            if time.monotonic() >= deadline:
                raise
            who = describe(exc.holders)
            if who != said:
                say(f"{name}: {mountpoint} is busy, in use by {who}; retrying until it is "
                    f"free (for up to {busy_timeout:g}s)")
                if on_busy is not None:
                    on_busy(f"busy, in use by {who}")
                said = who
            time.sleep(1.0)
        except HammerError:
            if mount_owner(mountpoint) is None and not os.path.ismount(mountpoint):
                return  # gone meanwhile
            raise


# -- streams -----------------------------------------------------------------------------------
@dataclass
class Child:
    """One supervised stream: its process and restart bookkeeping."""

    spec: StreamSpec
    log_path: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = MIN_BACKOFF
    next_start: float = 0.0
    last_line: str = ""  # this run's latest message, shown by `hammer service status`
    last_at: float = 0.0  # its wall time
    last_exit: str = ""  # how the previous run ended, and its last message
    last_exit_at: float = 0.0  # wall-clock time the process last ended (metrics)
    relay: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        # A new run: what the previous one said last is history (see ``last_exit``), not
        # the stream's present state.
        self.last_line, self.last_at = "", 0.0
        self.proc = subprocess.Popen(
            [*hammer_argv(), *self.spec.stream_argv()], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.relay = threading.Thread(target=self._relay, args=(self.proc,), daemon=True,
                                      name=f"relay-{self.spec.name}")
        self.relay.start()

    def _relay(self, proc: subprocess.Popen) -> None:
        """Copy the stream's output to its log file and to our stderr, line by line."""
        rotate_log(self.log_path)
        with open(self.log_path, "a", encoding="utf-8", errors="replace",
                  opener=nofollow_opener) as log:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip().removeprefix("hammer: ")
                self.last_line, self.last_at = line, time.time()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"{stamp} [{proc.pid}] {line}\n")
                log.flush()
                print(f"hammer up: stream {self.spec.name}: {line}", file=sys.stderr,
                      flush=True)

    def stop(self, timeout: float = STREAM_STOP_TIMEOUT) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.relay is not None:
            self.relay.join(2.0)
        self.proc = None


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child: get SIGTERM when `hammer up` dies, even by SIGKILL, so a stream
    never outlives its supervisor (a new `hammer up` would start a second one)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# -- the supervisor ----------------------------------------------------------------------------
class Supervisor:
    def __init__(self, config: ServiceConfig):
        self.config = config
        self.paths = instance_paths(config.path)
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.mount_state: dict[str, str] = {m.name: "down" for m in config.mounts}
        self.mounted: list[MountSpec] = []  # ours to watch (and unmount if we made them)
        self.made: dict[str, int] = {}  # name -> pid of the mount process we started
        self.detail: dict[str, str] = {}  # name -> why it is in its state (busy: holders)
        self.phase = "starting"  # running, stopping: what `service status`/`down` show
        self.remount_at: dict[str, float] = {}
        self.remount_backoff: dict[str, float] = {}
        self.next_mount_check = 0.0
        self.children = [Child(s, self._stream_log(s)) for s in config.streams]
        self.exporter = None
        self._lock_fd: int | None = None

    def _stream_log(self, s: StreamSpec) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.name)
        return f"{self.paths['base']}.stream-{safe}.log"

    # lifecycle ------------------------------------------------------------------------------
    def run(self) -> int:
        """Everything `hammer up -f` does; returns the exit status."""
        from hammerfs.luks.secmem import make_undumpable
        make_undumpable()  # it reads key files (config checks); its children inherit this
        self._take_lock()
        self._install_signals()
        code = 1
        try:
            self._write_state()
            self.mount_all()
            if self.stopping.is_set():
                code = self.shutdown()
                return code
            for child in self.children:
                say(f"starting stream {child.spec.name}: {child.spec.source} -> "
                    f"{child.spec.target} (log {child.log_path})")
                child.start()
            self._start_metrics()
            self._write_state()
            self.phase = "running"
            self._write_state()
            say(f"up: {self._summary()}; stop with Ctrl-C, SIGTERM or 'hammer down'")
            sd_notify(f"READY=1\nSTATUS={self._summary()}")
            while not self.stopping.wait(POLL):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.reload()
                if self.poll():
                    self._write_state()
            code = self.shutdown()
            return code
        finally:
            # The final state stays (``exit`` set): `hammer down` reads how the unmounts went,
            # and after a failure which mounts are still there and made by us.
            with contextlib.suppress(OSError):
                self._write_state(exit_code=code)

    def _start_metrics(self) -> None:
        """[metrics]: the Prometheus endpoint/textfile (changing it needs a restart)."""
        spec = self.config.metrics
        if spec is None:
            return
        from hammerfs.service.metrics import Exporter, HammerCollector, stream_views
        collector = HammerCollector(lambda: list(self.mounted),
                                    lambda: stream_views(self.children))
        self.exporter = Exporter(spec, collector)
        try:
            self.exporter.start()
        except HammerError as exc:  # the mounts and streams matter more than metrics
            say(f"{exc}; no metrics")
            self.exporter = None
            return
        where = [f"http://127.0.0.1:{spec.port}/metrics"] if spec.port else []
        where += [spec.textfile] if spec.textfile else []
        say(f"metrics: {', '.join(where)}")

    def _summary(self) -> str:
        up = sum(self.mount_state.get(m.name) == "mounted" for m in self.mounted)
        waiting = len(self.mounted) - up
        return (f"{up} mount(s)" + (f" ({waiting} still being retried)" if waiting else "")
                + f", {len(self.children)} stream(s)")

    def _take_lock(self) -> None:
        fd = os.open(self.paths["lock"], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            state = read_state(self.config.path) or {}
            raise HammerError(f"hammer up is already running for {self.config.path}"
                              + (f" (pid {state['pid']})" if state else "")) from None
        self._lock_fd = fd

    def _install_signals(self) -> None:
        def stop(signum, _frame) -> None:
            if not self.stopping.is_set():
                say(f"{signal.Signals(signum).name}: stopping")
            self.stopping.set()

        def hangup(signum, frame) -> None:
            if attached:  # the terminal went away: stop, as any foreground command
                stop(signum, frame)
            else:  # a daemon's SIGHUP (systemctl reload, hammer service reload)
                self.reload_requested.set()

        attached = sys.stdin is not None and sys.stdin.isatty()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        signal.signal(signal.SIGHUP, hangup)

    def mount_all(self) -> None:
        """Mount every entry in order; if one fails, unmount what this run mounted (an
        ``optional`` entry is retried in the background instead)."""
        for m in self.config.mounts:
            if self.stopping.is_set():
                return
            if m.optional:
                self._bring_up_later_on_failure(m)
            else:
                try:
                    self._bring_up(m)
                except HammerError:
                    self.mount_state[m.name] = "failed"
                    self._unmount_all(quiet=True)
                    raise
            self._write_state()

    def _bring_up(self, m: MountSpec) -> None:
        if check_mountpoint(m) == "ours":
            say(f"{m.name}: {m.volume}:{m.pfs} is already mounted on {m.mountpoint}; "
                "keeping it (and leaving it mounted on the way down)")
        else:
            how = "unlocking and mounting" if m.key_file else "mounting"
            t0 = time.monotonic()
            say(f"{m.name}: {how} {m.volume}:{m.pfs} on {m.mountpoint}")
            mount_one(m)
            self._made(m)
            say(f"{m.name}: mounted ({time.monotonic() - t0:.1f}s)")
        self.mount_state[m.name] = "mounted"
        self.mounted.append(m)

    def _made(self, m: MountSpec) -> None:
        """Remember that we mounted ``m`` (its mount process): ours to unmount, also for a
        `hammer down` after this process was killed."""
        owner = mount_owner(m.mountpoint)
        self.made[m.name] = int(owner["pid"]) if owner is not None else 0

    def poll(self) -> bool:
        """One supervision pass; True when something changed."""
        changed = False
        now = time.monotonic()
        for child in self.children:
            changed |= self._poll_child(child, now)
        if now >= self.next_mount_check or any(
                self.mount_state[m.name] != "mounted" for m in self.mounted):
            self.next_mount_check = now + MOUNT_POLL
            for m in self.mounted:
                changed |= self._poll_mount(m, now)
        return changed

    def _poll_child(self, child: Child, now: float) -> bool:
        if child.proc is not None:
            code = child.proc.poll()
            if code is None:
                if now - child.started > STABLE_AFTER:
                    child.backoff = MIN_BACKOFF
                return False
            if child.relay is not None:
                child.relay.join(1.0)  # its last words are logged before we speak
            child.proc = None
            child.last_exit = f"{_status(code)} at {time.strftime('%H:%M:%S')}" + (
                f" after: {child.last_line}" if child.last_line else "")
            child.last_exit_at = time.time()
            child.next_start = now + child.backoff
            say(f"stream {child.spec.name} exited ({_status(code)}); restarting in "
                f"{child.backoff:g}s")
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            return True
        if now >= child.next_start:
            child.restarts += 1
            say(f"restarting stream {child.spec.name} (restart #{child.restarts})")
            child.start()
            return True
        return False

    def _poll_mount(self, m: MountSpec, now: float) -> bool:
        state = self.mount_state[m.name]
        if state == "mounted":
            if mount_owner(m.mountpoint) is not None:
                return False
            say(f"{m.name}: the mount process of {m.mountpoint} is gone; mounting again")
            self.mount_state[m.name] = "lost"
            self.remount_at[m.name] = now
            return True
        if now < self.remount_at.get(m.name, 0.0):
            return False
        try:
            if state == "pending":  # never mounted by us: someone else may be there
                adopt = check_mountpoint(m) == "ours"
            else:
                adopt = False
                if is_stale_mount(m.mountpoint):  # ours, its process died
                    clear_stale_mount(m.mountpoint)
            if not adopt:
                mount_one(m)
                self._made(m)
        except HammerError as exc:
            delay = self.remount_backoff.get(m.name, MIN_BACKOFF)
            say(f"{exc}; retrying in {delay:g}s")
            self.remount_at[m.name] = now + delay
            self.remount_backoff[m.name] = min(delay * 2, MAX_BACKOFF)
            return False
        say(f"{m.name}: mounted again on {m.mountpoint}")
        self.mount_state[m.name] = "mounted"
        self.remount_backoff.pop(m.name, None)
        for child in self.children:  # streams waiting for this mount may go at once
            if child.proc is None:
                child.next_start = now
                child.backoff = MIN_BACKOFF
        return True

    def reload(self) -> None:
        """Apply an edited config: stop the streams and unmount the mounts that are gone or
        changed, then mount and start the new ones; unchanged ones are not touched.  A
        config that does not validate changes nothing."""
        from hammerfs.service.config import load_config
        say(f"SIGHUP: reloading {self.config.path}")
        sd_notify("RELOADING=1")
        try:
            new = load_config(self.config.path)
        except HammerError as exc:
            say(f"reload refused, nothing changed: {exc}")
            sd_notify("READY=1")
            return
        for child in [c for c in self.children if c.spec not in new.streams]:
            say(f"stopping stream {child.spec.name} (not in the config any more)")
            child.stop()
            self.children.remove(child)
        for m in [m for m in reversed(self.mounted) if m not in new.mounts]:
            if m.name in self.made:
                say(f"{m.name}: unmounting {m.mountpoint} (not in the config any more)")
                try:
                    unmount_one(m.name, m.mountpoint)
                except UnmountCommitFailed as exc:  # it is gone all the same
                    say(f"{exc}; it is unmounted, but its last changes were not committed")
                except HammerError as exc:
                    say(f"{exc}; it stays mounted")
                    continue
            else:
                say(f"{m.name}: not in the config any more; leaving {m.mountpoint} mounted "
                    "(it was mounted before hammer up)")
            self.mounted.remove(m)
            self.mount_state.pop(m.name, None)
            self.made.pop(m.name, None)
        old_mounts, old_streams = set(self.mounted), {c.spec for c in self.children}
        self.config = new
        for m in new.mounts:
            if m not in old_mounts:
                self._bring_up_later_on_failure(m)
        for spec in new.streams:
            if spec not in old_streams:
                child = Child(spec, self._stream_log(spec))
                say(f"starting stream {spec.name}: {spec.source} -> {spec.target}")
                child.start()
                self.children.append(child)
        self._write_state()
        say(f"reloaded: {self._summary()}")
        sd_notify(f"READY=1\nSTATUS={self._summary()}")

    def _bring_up_later_on_failure(self, m: MountSpec) -> None:
        """Mount an entry; if that fails it is retried in the background with backoff."""
        try:
            self._bring_up(m)
        except HammerError as exc:
            say(f"{exc}; retrying")
            self.mount_state[m.name] = "pending"
            self.remount_at[m.name] = time.monotonic() + MIN_BACKOFF
            self.mounted.append(m)

    def shutdown(self) -> int:
        """Stop the streams, then unmount what we mounted (each mount commits); 0 when all
        went clean.  The state file follows every step (`hammer down` shows it)."""
        sd_notify("STOPPING=1")
        self.phase = "stopping"
        self._write_state()
        if self.exporter is not None:
            self.exporter.stop()
        for child in self.children:
            if child.proc is not None:
                say(f"stopping stream {child.spec.name}")
            child.stop()
            self._write_state()
        failed = self._unmount_all()
        if failed:
            say(f"could not unmount cleanly: {', '.join(failed)}")
            return 1
        say("down: everything unmounted" + (" (mounts made before hammer up are left "
                                           "mounted)" if self.mounted else ""))
        return 0

    def _unmount_all(self, quiet: bool = False) -> list[str]:
        """Unmount, newest first, what this run mounted; the rest stays.  Returns the mount
        points that failed (still mounted, or unmounted without their last commit)."""
        failed = []
        for m in reversed(self.mounted):
            if m.name not in self.made:
                if self.mount_state[m.name] == "mounted":
                    self._set_mount(m.name, "kept")
                    if not quiet:
                        say(f"{m.name}: leaving {m.mountpoint} mounted (it was mounted "
                            "before hammer up)")
                else:  # never mounted (still being retried): nothing to undo
                    self._set_mount(m.name, "down", "never mounted (its mount kept failing)")
                continue
            if not quiet:
                say(f"{m.name}: unmounting {m.mountpoint}")
            self._set_mount(m.name, "unmounting")
            try:
                unmount_one(m.name, m.mountpoint,
                            on_busy=lambda why, name=m.name: self._set_mount(name, "busy", why))
                self._set_mount(m.name, "down")
                self.made.pop(m.name)
            except UnmountCommitFailed as exc:
                say(str(exc))
                self._set_mount(m.name, "commit-failed", f"unmounted, but {exc}")
                self.made.pop(m.name)
                failed.append(m.mountpoint)
            except HammerError as exc:
                say(str(exc))
                self._set_mount(m.name, "busy" if isinstance(exc, MountBusy) else "failed",
                                str(exc))
                failed.append(m.mountpoint)
        self.mounted = [m for m in self.mounted if m.name in self.made or
                        self.mount_state[m.name] == "kept"]
        return failed

    def _set_mount(self, name: str, state: str, detail: str = "") -> None:
        self.mount_state[name] = state
        self.detail[name] = detail
        self._write_state()

    def _write_state(self, exit_code: int | None = None) -> None:
        state = {
            "pid": os.getpid(), "config": self.config.path, "phase": self.phase,
            "mounts": [{"name": m.name, "mountpoint": m.mountpoint,
                        "volume": f"{m.volume}:{m.pfs}", "state": self.mount_state[m.name],
                        "made": m.name in self.made, "mount_pid": self.made.get(m.name),
                        "detail": self.detail.get(m.name, "")}
                       for m in self.config.mounts],
            "streams": [{"name": c.spec.name, "source": c.spec.source,
                         "target": c.spec.target, "restarts": c.restarts,
                         "pid": c.proc.pid if c.proc is not None else None,
                         "last": c.last_line, "last_at": c.last_at,
                         "last_exit": c.last_exit, "log": c.log_path}
                        for c in self.children],
        }
        if exit_code is not None:
            state["exit"] = exit_code
        tmp = self.paths["state"] + ".tmp"
        with os.fdopen(create_private(tmp), "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.paths["state"])


def _status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
