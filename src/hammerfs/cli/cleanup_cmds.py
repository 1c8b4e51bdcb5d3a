"""`hammer` maintenance commands: cleanup, config, viconfig, prune (HAMMER's verbs).

The policy lives in ``hammerfs.fs.cleanup`` (config format, periods, what each directive does)
and ``hammerfs.fs.history.prune``; these commands find the PFS (a mounted PATH through its
control channel, or an unmounted VOLUME[:PFS]) and print what happened.  Snapshot softlinks
are made and removed here, in the PFS's `snapshots` directory (pfs-update snapshots=DIR),
because they are ordinary files of the user's tree; without one the records alone are the
snapshots (`hammer snapls`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import time

from hammerfs.cli.fs_cmds import (
    Target,
    _mib,
    _target_args,
    _volume_args,
    make_snapshot_link,
    prune_summary,
    target,
    tid_of_link,
)
from hammerfs.errors import HammerError
from hammerfs.fs.cleanup import ConfigError, parse_config

CONFIG_HELP = """\
config format (one directive a line, times with d/h/m/s, '#' comments):
  snapshots <period> <retention> [any]   snapshot every period; expire older than retention
  prune     <period> <runtime>           destroy history no kept snapshot needs
  reblock   <period> <runtime>           empty big-blocks under 90 % full (hammer reblock)
  recopy    <period> <runtime>           the same for every big-block not full
  rebalance|dedup <period> <runtime>     accepted, reported as not applicable here
A period of 0 disables a directive, a runtime of 0 is unlimited; 'snapshots 0 0' makes prune
destroy all history.  Whole-day periods are due once that many local midnights have passed
since the last run, so a machine that was off catches up at its next run."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cleanup", help="periodic maintenance: snapshots, expiry, prune (run daily by the systemd "
        "timer of 'hammer service install')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run the due directives of each PFS's cleanup config (see 'hammer config'; a PFS "
            "without one gets the default, stored on first use).  Without a target, every "
            "writable hammerfs mount.  Slaves are skipped: their snapshots and history come "
            "from their master.  Run it daily: `hammer service install` writes "
            "hammerfs-cleanup.timer, a systemd timer that runs `hammer service cleanup` "
            "(Persistent=, so a machine that was off catches up); cron works too.", 92) + "\n\n" + CONFIG_HELP)
    p.add_argument("-F", dest="force", action="store_true", help="ignore the periods")
    p.add_argument("paths", nargs="*", metavar="PATH|VOLUME[:PFS]",
                   help="PFSs to clean: paths inside mounts or unmounted volumes (default: "
                   "every writable hammerfs mount)")
    _volume_args(p)
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("config", help="show or set the cleanup config of a PFS",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=textwrap.fill(
                           "Without FILE print the config (the default if none is stored) "
                           "and when each directive last ran; with FILE ('-' = stdin) check "
                           "and store it.", 92) + "\n\n" + CONFIG_HELP)
    p.add_argument("path", nargs="?", default=".", metavar="PATH|VOLUME[:PFS]",
                   help="a path in the PFS (default: the current directory) or an unmounted "
                   "VOLUME[:PFS]")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="store the config in FILE ('-': stdin); without it, print the config")
    _volume_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("viconfig", help="edit the cleanup config with $EDITOR")
    _target_args(p)
    p.set_defaults(func=cmd_viconfig)

    p = sub.add_parser("prune", help="destroy the history that no snapshot needs",
                       description="Keep the live state, the view as of every snapshot "
                       "('hammer snapls') and all history since the newest snapshot (and "
                       "within the PFS's prune-min); destroy the rest, freeing its space.  "
                       "Other TIDs before the newest snapshot are no longer complete.  A slave "
                       "that has not received the destroyed deletions must be recreated.")
    _target_args(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("reblock", help="move live data out of sparsely used big-blocks",
                       description="Defragment the volume: every 8 MiB big-block less than "
                       "FILL percent full is emptied, least filled first, its data extents "
                       "and B-tree nodes moved into other big-blocks, one big-block (one "
                       "commit) at a time, so a mount keeps serving in between and a crash "
                       "loses nothing.  Afterwards long writes find contiguous space again. "
                       "The cleanup's reblock directive runs the same with FILL 90.")
    p.add_argument("path", nargs="?", default=".", metavar="PATH|VOLUME[:PFS]",
                   help="a path inside the mount (default: the current directory) or an "
                   "unmounted VOLUME")
    p.add_argument("fill", nargs="?", type=int, default=90, metavar="FILL",
                   help="percent fill below which a big-block is emptied (1-100, default 90)")
    p.add_argument("--time", type=int, default=0, metavar="SECONDS",
                   help="stop after this many seconds (0: run to the end); run again to go on")
    _volume_args(p)
    p.set_defaults(func=cmd_reblock)


# -- cleanup ---------------------------------------------------------------------------------------
def _cleanup_targets(paths: list[str]) -> list[str]:
    if paths:
        return paths
    from hammerfs.control.client import not_mounted_hint, registered_mounts
    mounts = sorted(m["mountpoint"] for m in registered_mounts()
                    if not m.get("readonly") and m.get("asof") is None)
    if not mounts:
        raise HammerError("no writable hammerfs mount found: name a PATH or VOLUME[:PFS] "
                          f"({not_mounted_hint()})")
    return mounts


def cmd_cleanup(args: argparse.Namespace) -> int:
    status = 0
    for path in _cleanup_targets(args.paths):
        try:
            with target(path, args, write=True) as t:
                _cleanup_one(t, path, args.force)
        except HammerError as exc:
            print(f"hammer: cleanup {path}: {exc}", file=sys.stderr)
            status = 1
    return status


def _cleanup_one(t: Target, path: str, force: bool) -> None:
    done = t.call("cleanup", relpath=t.relpath, force=force)
    print(f"cleanup {path:<20} - PFS #{done['pfs']}"
          + (" (created the default config)" if done["config_created"] else ""))
    linkdir = done["snapshots_dir"] if t.mountpoint else ""
    for directive, what in done["lines"]:
        print(f"{directive:>20} - {what}")
    if linkdir and done["snapshot"]:
        tid, ts, _note = done["snapshot"]
        print(f"{'':>20}   {make_snapshot_link(t, linkdir, tid, ts, done['pfs'])}")
    if linkdir and done["expired"]:
        _remove_links(linkdir, set(done["expired"]))
    if done["destroyed"]:
        print(f"{'':>20}   freed {_mib(done['freed_bytes'])} "
              f"({_mib(done['free_bytes'])} free)")


def _remove_links(linkdir: str, tids: set[int]) -> None:
    """Remove the softlinks in ``linkdir`` that point to expired snapshot TIDs."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(linkdir):
            link = os.path.join(linkdir, name)
            with contextlib.suppress(HammerError):
                if tid_of_link(link) in tids:
                    os.unlink(link)


# -- config ----------------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    if args.file is None:
        with target(args.path, args) as t:
            done = t.call("config", relpath=t.relpath)
        _print_config(done)
        return 0
    text = sys.stdin.read() if args.file == "-" else _read_text(args.file)
    parse_config(text)  # a bad file is refused before the volume is opened for writing
    with target(args.path, args, write=True) as t:
        t.call("config", relpath=t.relpath, text=text)
    return 0


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise HammerError(f"{path}: {exc.strerror}") from None


def _print_config(done: dict) -> None:
    sys.stdout.write(done["text"] if done["text"].endswith("\n") else done["text"] + "\n")
    if not done["stored"]:
        print("# (the default: none is stored yet; cleanup stores it on its first run)")
    for name, ns in sorted(done["last_run"].items()):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))
        print(f"# {name} last ran {when}")


def cmd_viconfig(args: argparse.Namespace) -> int:
    with target(args.path, args, write=True) as t:
        text = t.call("config", relpath=t.relpath)["text"]
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.NamedTemporaryFile("w+", suffix=".hammer-config", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            while True:
                if subprocess.run([*editor.split(), f.name]).returncode != 0:
                    raise HammerError(f"{editor} failed: config unchanged")
                new = _read_text(f.name)  # by name: editors may replace the file
                try:
                    parse_config(new)
                    break
                except ConfigError as exc:
                    if not sys.stdin.isatty():
                        raise
                    input(f"hammer: {exc}; press Enter to edit again ")
        if new != text:
            t.call("config", relpath=t.relpath, text=new)
    return 0


# -- prune -----------------------------------------------------------------------------------------
def cmd_reblock(args: argparse.Namespace) -> int:
    if not 1 <= args.fill <= 100:
        raise HammerError(f"reblock: fill {args.fill} is not a percentage from 1 to 100")
    if args.time < 0:
        raise HammerError(f"reblock: --time {args.time} is negative")
    with target(args.path, args, write=True) as t:
        done = t.call("reblock", relpath=t.relpath, fill=args.fill, seconds=args.time or None)
    print(f"reblock: {done['bigblocks']} big-blocks emptied, {done['extents']} data extents "
          f"and {done['nodes']} B-tree nodes moved ({_mib(done['bytes_moved'])}); "
          f"{done['bigblocks_free']} big-blocks empty"
          + ("" if done["complete"] else "; stopped by --time, run again to go on"))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    with target(args.path, args, write=True) as t:
        done = t.call("prune", relpath=t.relpath)
    print(prune_summary(done))
    return 0

