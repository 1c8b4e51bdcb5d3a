"""systemd units for `hammer service install`: the supervisor and the daily cleanup.

hammerfs.service runs `hammer up -f` as Type=notify (ready once every volume is mounted and
the streams run).  KillMode=mixed sends SIGTERM to `hammer up` alone, which stops the streams
and unmounts (the mounts commit) before it exits; only leftovers are killed afterwards.
ExecReload sends SIGHUP: `hammer up` applies an edited config (`systemctl reload hammerfs`).
hammerfs-cleanup.timer fires daily with Persistent=true, so a machine that was off at the
time runs the cleanup at its next boot; `hammer service cleanup` reads the config when it
runs, so editing the config needs no reinstall.  hammerfs-scrub.timer runs `hammer service
scrub` monthly the same way (the scrub is rate-limited, and continues where it was if the
machine goes down in the middle).
"""

from __future__ import annotations

import re

from hammerfs.errors import HammerError

SERVICE = "hammerfs.service"
CLEANUP_SERVICE = "hammerfs-cleanup.service"
CLEANUP_TIMER = "hammerfs-cleanup.timer"
SCRUB_SERVICE = "hammerfs-scrub.service"
SCRUB_TIMER = "hammerfs-scrub.timer"

# Characters that unit-file parsing would turn into something else (a new line, a quote or
# escape, systemd's own escapes) and that no sane path or schedule needs: refused.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\'\\]')
_SIMPLE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def _value(text: str, what: str) -> str:
    """A value written into a unit file: one line, nothing systemd would reinterpret.  The
    config validation refuses such values first; this is the last line of defence."""
    if not text or _UNSAFE.search(text):
        raise HammerError(f"{what} {text!r} cannot be written into a systemd unit (control "
                          "characters, quotes and backslashes are refused)")
    return text


def _arg(text: str, what: str) -> str:
    """One ExecStart= word: %specifiers and $variables escaped, quoted if it has spaces."""
    text = _value(text, what).replace("%", "%%").replace("$", "$$")
    return text if _SIMPLE.fullmatch(text) else f'"{text}"'


def _cmd(hammer: list[str], *args: str) -> str:
    return " ".join(_arg(a, "command word") for a in [*hammer, *args])


def render_units(hammer: list[str], config_path: str, schedule: str = "daily",
                 scrub_schedule: str = "monthly") -> dict[str, str]:
    """Unit file name -> content.  ``hammer`` is the absolute command line of `hammer`.
    Raises HammerError for a value that cannot be written safely (see ``_value``)."""
    schedule = _value(schedule, "schedule").replace("%", "%%")
    scrub_schedule = _value(scrub_schedule, "scrub schedule").replace("%", "%%")
    _value(config_path, "config path")
    service = f"""\
[Unit]
Description=hammerfs: unlock and mount volumes, run mirror streams (hammer up)
Wants=network-online.target
After=local-fs.target network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={_cmd(hammer, "up", "-f", "--config", config_path)}
ExecReload=/bin/kill -HUP $MAINPID
KillMode=mixed
TimeoutStartSec=600
TimeoutStopSec=300
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
    cleanup, timer = _scheduled(hammer, config_path, "cleanup", "snapshots, expiry, prune of "
                                "the configured PFSs", schedule, "15min")
    scrub, scrub_timer = _scheduled(hammer, config_path, "scrub", "verify every block of the "
                                    "configured volumes, repair from replicas",
                                    scrub_schedule, "1h")
    return {SERVICE: service, CLEANUP_SERVICE: cleanup, CLEANUP_TIMER: timer,
            SCRUB_SERVICE: scrub, SCRUB_TIMER: scrub_timer}


def _scheduled(hammer: list[str], config_path: str, action: str, what: str, schedule: str,
               delay: str) -> tuple[str, str]:
    """The oneshot service running `hammer service ACTION` at idle priority, and its timer
    (Persistent=true: a run missed while the machine was off happens at the next boot)."""
    service = f"""\
[Unit]
Description=hammerfs {action}: {what}
After=local-fs.target {SERVICE}

[Service]
Type=oneshot
ExecStart={_cmd(hammer, "service", action, "--config", config_path)}
Nice=10
IOSchedulingClass=idle
"""
    timer = f"""\
[Unit]
Description=Run the hammerfs {action} {schedule}, catching up after downtime

[Timer]
OnCalendar={schedule}
Persistent=true
RandomizedDelaySec={delay}

[Install]
WantedBy=timers.target
"""
    return service, timer


ENABLE_LINES = ("systemctl daemon-reload",
                f"systemctl enable --now {SERVICE}",
                f"systemctl enable --now {CLEANUP_TIMER}",
                f"systemctl enable --now {SCRUB_TIMER}")
