"""`hammer up`, `hammer down` and `hammer service install|cleanup|status`: running hammerfs
at boot from one config file (``hammerfs.service``), instead of hand-written scripts.

The config format and its validation live in ``hammerfs.service.config``, the supervision
in ``hammerfs.service.supervisor``, the systemd units in ``hammerfs.service.units``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import textwrap
import time

from hammerfs.control.runtime import nofollow_opener
from hammerfs.errors import HammerError
from hammerfs.service.config import DEFAULT_CONFIG, ServiceConfig, check_keys, load_config

CONFIG_EXAMPLE = """\
config (TOML):
  [[mount]]                        # one per volume
  volume = "/dev/sdb"              # or an image file
  pfs = 0                          # optional
  mountpoint = "/fort_knox"
  key_file = "/etc/hammerfs/master.key"   # encrypted volumes (chmod 600)
  options = ["ro"]                 # optional, as `hammer mount -o`
  optional = true                  # a failure is retried in the background instead of
                                   # stopping 'hammer up' (default false)
  # also: name, header, keyfile_offset, keyfile_size

  [[stream]]                       # kept running: hammer mirror-stream SOURCE TARGET
  source = "/fort_knox"
  target = "/fort_knox_slave/pfs/slave"   # path, VOLUME[:PFS] or [user@]host:PATH
  # also: name, bwlimit, chunk_size, reconnect_delay, port, verbose,
  #       source_key_file, target_key_file

  [cleanup]                        # what the daily `hammer service cleanup` covers
  paths = ["/fort_knox"]           # default: every writable [[mount]]
  schedule = "daily"               # OnCalendar= of hammerfs-cleanup.timer

  [scrub]                          # what the monthly `hammer service scrub` covers
  paths = ["/fort_knox"]           # default: every [[mount]]
  schedule = "monthly"             # OnCalendar= of hammerfs-scrub.timer
  rate = "200m"                    # bytes/s (hammer scrub --rate)

  [metrics]                        # Prometheus metrics (port and/or textfile)
  port = 9123                      # http://127.0.0.1:9123/metrics
  textfile = "/var/lib/node_exporter/hammerfs.prom"
  interval = "15s"                 # textfile rewrite period
  # a [[mount]] holding one end of a [[stream]] repairs damaged data from the other end"""


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"the service config (default {DEFAULT_CONFIG})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up", help="unlock and mount the configured volumes, run and supervise the streams",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Mount every [[mount]] of the config (keeping ones hammerfs already has mounted "
            "there), then start every [[stream]] and restart it with backoff whenever it "
            "exits.  SIGTERM, SIGINT or 'hammer down' stop the streams and unmount cleanly; "
            "SIGHUP ('hammer service reload', 'systemctl reload hammerfs') applies an edited "
            "config, touching only what changed.  "
            "Under systemd or with -f it stays in the foreground; otherwise it returns once "
            "everything is up and keeps running in the background.", 92)
        + "\n\n" + CONFIG_EXAMPLE)
    _config_arg(p)
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (always so under systemd)")
    p.add_argument("--check", action="store_true",
                   help="only validate the config and list every problem; mounts nothing")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what 'hammer up' started: streams, then unmount")
    _config_arg(p)
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECS",
                   help="how long to wait for 'hammer up' to finish (default 300)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("service", help="systemd units and the scheduled cleanup")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    q = ssub.add_parser("install", help="write hammerfs.service and the cleanup timer "
                                        "(enables nothing)")
    _config_arg(q)
    q.add_argument("--prefix", default="/etc/systemd/system", metavar="DIR",
                   help="where the unit files go (default /etc/systemd/system)")
    q.set_defaults(func=cmd_service_install)
    q = ssub.add_parser("cleanup", help="run 'hammer cleanup' on the configured PFSs "
                                        "(what the timer runs)")
    _config_arg(q)
    q.set_defaults(func=cmd_service_cleanup)
    q = ssub.add_parser("scrub", help="run 'hammer scrub' on the configured mounts (what "
                                      "the monthly timer runs)")
    _config_arg(q)
    q.set_defaults(func=cmd_service_scrub)
    q = ssub.add_parser("reload", help="make a running 'hammer up' apply the edited config "
                                       "(SIGHUP; as systemctl reload hammerfs)")
    _config_arg(q)
    q.set_defaults(func=cmd_service_reload)
    q = ssub.add_parser("status", help="what 'hammer up' runs: mounts, streams, restarts")
    _config_arg(q)
    q.set_defaults(func=cmd_service_status)


# -- up ----------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from hammerfs.service.supervisor import Supervisor, read_state
    config = load_config(args.config)
    if args.check:
        check_keys(config)  # the key slots are tried: slow (the KDF), so only here
        _print_summary(config)
        return 0
    state = read_state(config.path)
    if state is not None:
        raise HammerError(f"hammer up is already running for {config.path} "
                          f"(pid {state['pid']}); 'hammer down' stops it")
    if args.foreground or os.environ.get("NOTIFY_SOCKET") or os.environ.get("INVOCATION_ID"):
        return Supervisor(config).run()
    return _run_in_background(config)


def _print_summary(config: ServiceConfig) -> None:
    print(f"config {config.path}: OK")
    for m in config.mounts:
        extra = " (key file)" if m.key_file else ""
        opts = f" -o {','.join(m.options)}" if m.options else ""
        print(f"  mount  {m.name}: {m.volume}:{m.pfs} on {m.mountpoint}{opts}{extra}")
    for s in config.streams:
        print(f"  stream {s.name}: {s.source} -> {s.target}")
    print(f"  cleanup ({config.schedule}): {', '.join(config.cleanup_paths) or '(nothing)'}")


def _run_in_background(config: ServiceConfig) -> int:
    """Fork the supervisor (no threads exist yet, so forking is safe) and relay its progress
    until it says READY (the same sd_notify message systemd gets), or show why it failed."""
    from hammerfs.service.supervisor import instance_paths, rotate_log
    paths = instance_paths(config.path)
    rotate_log(paths["log"])
    notify_path = paths["base"] + ".notify"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        sock.settimeout(0.2)
        with open(paths["log"], "ab", opener=nofollow_opener) as log:
            offset = log.tell()
        try:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                sock.close()
                _supervise_detached(config, paths["log"], notify_path)
            ready = False
            while not ready and _running(pid):
                with contextlib.suppress(TimeoutError):
                    ready = b"READY=1" in sock.recv(4096)
                offset = _relay_log(paths["log"], offset)
            _relay_log(paths["log"], offset)
        finally:
            os.unlink(notify_path)
    if not ready:
        raise HammerError(f"hammer up failed (log: {paths['log']})")
    print(f"hammer up: running in the background (pid {pid}, log {paths['log']}); "
          "'hammer down' stops it")
    return 0


def _supervise_detached(config: ServiceConfig, log_path: str, notify_path: str) -> None:
    """The forked child: a session of its own, output to the log, then `hammer up -f`."""
    from hammerfs.service.supervisor import Supervisor
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        for fd, target in ((0, null), (1, log), (2, log)):
            os.dup2(target, fd)
        os.close(null)
        os.close(log)
        os.environ["NOTIFY_SOCKET"] = notify_path
        code = Supervisor(config).run()
    except HammerError as exc:
        print(f"hammer: {exc}", file=sys.stderr, flush=True)
    except BaseException:  # never a traceback on the user's terminal: it goes to the log
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _running(pid: int) -> bool:
    """True while the forked child runs (reaps it once it has exited)."""
    done, _status = os.waitpid(pid, os.WNOHANG)
    return done == 0


def _relay_log(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()
    return offset + len(chunk)


# -- down --------------------------------------------------------------------------------------
def cmd_down(args: argparse.Namespace) -> int:
    """SIGTERM to `hammer up`, then follow its state file: each mount's progress (a busy one
    with who holds it) is shown as it happens, and how each unmount ended decides the exit
    status.  Needs only the config's path: a config broken since `hammer up` read it does
    not keep it running."""
    from hammerfs.control.client import pid_alive
    from hammerfs.service.supervisor import read_state, read_state_file
    path = _config_path(args.config)
    state = read_state(path)
    if state is None:
        if not os.path.exists(path) and read_state_file(path) is None:
            raise HammerError(f"{path}: no such config file (and no hammer up ran with it)")
        return _unmount_leftovers(path)
    pid = int(state["pid"])
    print(f"hammer down: stopping hammer up (pid {pid})", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    shown: dict[str, tuple[str, str]] = {}
    while pid_alive(pid):
        _show_mounts(read_state_file(path), shown)
        if time.monotonic() > deadline:
            raise HammerError(f"hammer up (pid {pid}) did not stop in {args.timeout:g}s"
                              + _pending(read_state_file(path)))
        time.sleep(0.2)
    final = read_state_file(path)
    _show_mounts(final, shown)
    problems = [f"{m['name']}: {m['detail'] or m['state']}"
                for m in (final or {}).get("mounts", [])
                if m.get("state") not in ("down", "kept")]
    if final is None or "exit" not in final:
        problems.append("hammer up ended without recording how its unmounts went; "
                        "see its log")
    if problems:
        raise HammerError("hammer up stopped, but not cleanly: " + "; ".join(problems))
    kept = [m["mountpoint"] for m in final["mounts"] if m["state"] == "kept"]
    print("hammer down: streams stopped, everything unmounted"
          + (f" (left mounted, as hammer up found them: {', '.join(kept)})" if kept else ""))
    return 0


def _config_path(given: str) -> str:
    """The config's path as `hammer up` keys its state by it (the file need not parse)."""
    return os.path.abspath(given)


_STEPS = {"unmounting": "unmounting", "busy": "", "down": "unmounted",
          "kept": "left mounted (not mounted by hammer up)"}


def _show_mounts(state: dict | None, shown: dict[str, tuple[str, str]]) -> None:
    """Print each mount whose state changed since the last look."""
    for m in (state or {}).get("mounts", []):
        now = (m.get("state", ""), m.get("detail", ""))
        if shown.get(m["name"], ("mounted", "")) == now or now[0] not in _STEPS:
            continue
        shown[m["name"]] = now
        what = now[1] or _STEPS[now[0]]
        print(f"hammer down: {m['name']}: {m['mountpoint']}: {what}", flush=True)


def _pending(state: dict | None) -> str:
    busy = [f"{m['name']}: {m['detail'] or m['state']}" for m in (state or {}).get("mounts", [])
            if m.get("state") in ("unmounting", "busy")]
    return f"; still waiting for {'; '.join(busy)}" if busy else ""


def _mounted_here(m) -> bool:
    from hammerfs.service.supervisor import mount_owner
    owner = mount_owner(m.mountpoint)
    return owner is not None and owner.get("volume") == m.volume


def _unmount_leftovers(path: str) -> int:
    """No `hammer up` is running (it was killed, or a busy mount outlasted it): unmount what
    its state file says it mounted and is still mounted by the same mount process.  Other
    mounts, made by hand, are left alone."""
    from hammerfs.control.holders import unmount_naming_holders
    from hammerfs.fuse.mount import unmount
    from hammerfs.service.supervisor import mount_owner, read_state_file
    state = read_state_file(path) or {}
    ours, others = [], []
    for m in state.get("mounts", []):
        owner = mount_owner(m["mountpoint"])
        if owner is None:
            continue
        made = m.get("made") and int(owner.get("pid", -1)) == m.get("mount_pid")
        (ours if made else others).append(m)
    head = f"hammer down: hammer up is not running for {path}"
    for m in others:
        print(f"{head}; {m['name']}: {m['mountpoint']} stays mounted (not mounted by "
              "hammer up)")
    if not ours:
        print(f"{head}; nothing it mounted is left")
        return 0
    print(f"{head}; unmounting what it left mounted", flush=True)
    failed = []
    for m in reversed(ours):
        print(f"hammer down: {m['name']}: unmounting {m['mountpoint']}", flush=True)
        try:
            unmount_naming_holders(unmount, m["mountpoint"])
        except HammerError as exc:
            print(f"hammer: {exc}", file=sys.stderr, flush=True)
            failed.append(m["mountpoint"])
    if failed:
        raise HammerError(f"could not unmount cleanly: {', '.join(failed)}")
    return 0


# -- service install / cleanup / status --------------------------------------------------------
def _hammer_command() -> list[str]:
    """The absolute command line the units run: the `hammer` next to this interpreter (a
    venv), else one on PATH, else this interpreter with -m hammerfs."""
    beside = os.path.join(os.path.dirname(sys.executable), "hammer")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("hammer")
    return [os.path.abspath(found)] if found else [sys.executable, "-m", "hammerfs"]


def cmd_service_install(args: argparse.Namespace) -> int:
    from hammerfs.service.units import ENABLE_LINES, render_units
    config = load_config(args.config)
    if not os.path.isdir(args.prefix):
        raise HammerError(f"{args.prefix}: no such directory")
    for name, text in render_units(_hammer_command(), config.path, config.schedule,
                                   config.scrub_schedule).items():
        path = os.path.join(args.prefix, name)
        old = _read_or_none(path)
        if old == text:
            print(f"unchanged {path}")
            continue
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        print(f"{'updated' if old is not None else 'wrote'} {path}")
    print("nothing is enabled; to start now and at every boot:")
    for line in ENABLE_LINES:
        print(f"  {line}")
    return 0


def _read_or_none(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HammerError(f"{path}: {exc.strerror}") from None


def cmd_service_cleanup(args: argparse.Namespace) -> int:
    """`hammer cleanup` of each configured path: through the mount when it is mounted, else
    on the volume itself (unlocked with the mount's key file)."""
    config = load_config(args.config)
    return _each_path(config, config.cleanup_paths, ["cleanup"],
                      lambda m: f"{m.volume}:{m.pfs}")


def _each_path(config: ServiceConfig, paths: tuple[str, ...], argv: list[str], unmounted,
               *, keep_going: bool = False) -> int:
    """`hammer ARGV PATH` for each path: through its mount when mounted, else on
    ``unmounted(mount)`` (the volume) with the mount's key file and header."""
    from hammerfs.cli.main import build_parser
    if not paths:
        print(f"hammer service {argv[0]}: nothing configured")
        return 0
    by_mountpoint = {m.mountpoint: m for m in config.mounts}
    status = 0
    parser = build_parser()
    for path in paths:
        m = by_mountpoint.get(os.path.realpath(path))
        words = [*argv, path]
        if m is not None and not _mounted_here(m):
            words = [*argv, unmounted(m)] + (
                ["--key-file", m.key_file] if m.key_file else []) + (
                ["--header", m.header] if m.header else [])
        sub = parser.parse_args(words)
        try:
            status |= int(sub.func(sub) or 0)
        except HammerError as exc:
            if not keep_going:
                raise
            print(f"hammer service {argv[0]}: {path}: {exc}", file=sys.stderr)
            status |= 1
    return status


def cmd_service_scrub(args: argparse.Namespace) -> int:
    """`hammer scrub` of each configured path through its mount (which heals from the other
    end of its stream); an unmounted one on the volume itself, with the mount's key file.
    One broken volume does not stop the others' scrubs."""
    config = load_config(args.config)
    rate = ["--rate", config.scrub_rate] if config.scrub_rate else []
    return _each_path(config, config.scrub_paths, ["scrub", *rate], lambda m: m.volume,
                      keep_going=True)


def cmd_service_reload(args: argparse.Namespace) -> int:
    """Validate first (a broken config is refused here, not just in the log), then SIGHUP."""
    from hammerfs.service.supervisor import read_state
    config = load_config(args.config)
    state = read_state(config.path)
    if state is None:
        raise HammerError(f"hammer up is not running for {config.path}")
    os.kill(int(state["pid"]), signal.SIGHUP)
    print(f"hammer service reload: asked hammer up (pid {state['pid']}) to apply "
          f"{config.path}; 'hammer service status' shows the result")
    return 0


def cmd_service_status(args: argparse.Namespace) -> int:
    """What the running `hammer up` does, from its state file: shown even when the config
    no longer loads (the supervisor runs what it loaded; the error says what to fix)."""
    from hammerfs.control.client import pid_alive
    from hammerfs.service.supervisor import read_state
    path = _config_path(args.config)
    try:
        path = load_config(args.config).path
    except HammerError as exc:
        print(f"hammer: warning: {exc}\nhammer: (a running hammer up keeps the config it "
              "loaded last; 'hammer service reload' applies the file once it is fixed)",
              file=sys.stderr)
    state = read_state(path)
    if state is None:
        print(f"hammer up is not running for {path}")
        return 3  # as `systemctl status` for a stopped unit
    phase = state.get("phase", "running")
    print(f"hammer up {phase} (pid {state['pid']}) for {path}")
    for m in state["mounts"]:
        pid = f" (mount pid {m['mount_pid']})" if m.get("mount_pid") else ""
        made = "" if m.get("made") or m["state"] != "mounted" else \
            " (mounted before hammer up: left mounted by 'hammer down')"
        print(f"  mount  {m['name']:<16} {m['state']:<10} {m['volume']} on "
              f"{m['mountpoint']}{pid}{made}")
        if m.get("detail"):
            print(f"         {m['detail']}")
    for s in state["streams"]:
        pid = s.get("pid")
        if pid and pid_alive(int(pid)):
            run = f"running, pid {pid}"
        else:
            run = "stopped" if phase == "stopping" else "waiting to restart"
        print(f"  stream {s['name']:<16} {run:<18} restarts={s['restarts']} "
              f"{s['source']} -> {s['target']}")
        if s.get("last"):
            when = time.strftime("%H:%M:%S", time.localtime(s["last_at"])) \
                if s.get("last_at") else "?"
            print(f"         last message ({when}): {s['last']}")
        if s.get("last_exit"):
            print(f"         previous run ended: {s['last_exit']}")
    return 0
