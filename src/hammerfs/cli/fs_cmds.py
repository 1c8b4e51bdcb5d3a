"""`hammer` subcommands of the fs layer: mount, umount, synctid, history, undo, snapshot,
snapls, snaprm, prune-everything.

A PATH inside a mounted hammerfs is served by the mounting process through its control
channel; a VOLUME[:PFS] (an unmounted volume) is opened directly, with ``--path`` naming a
path inside it.  TIDs are printed as 0x + 16 hex digits, ready to paste into @@ paths.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
import time
from collections.abc import Iterator

from hammerfs.blockdev.spec import canonical, is_remote
from hammerfs.cli.volume import add_volume_args, forget_passphrase, open_volume_device
from hammerfs.errors import HammerError, NoVolumeSignature
from hammerfs.fs.layout import HISTORY_INTERVAL_MAX
from hammerfs.fs.namespace import format_tid, parse_tid
from hammerfs.quantity import parse_duration
from hammerfs.store.pfs import parse_volume_spec

RUNTIME_DIR_HELP = (
    "Runtime files: the mount process registers its control socket (<key>.sock, "
    "<key>.json) in the runtime directory, and a mount without -f logs to <key>.log there.  "
    "The runtime directory is $HAMMERFS_RUNTIME_DIR if set, else /run/hammerfs for root, "
    "else $XDG_RUNTIME_DIR/hammerfs or /tmp/hammerfs-<uid>.  It must be a directory of "
    "yours with mode 0700: one made by another user, opened to others or a symlink is "
    "refused.  Commands given a path inside the mount find it there, so they must run as "
    "the same user with the same HAMMERFS_RUNTIME_DIR (also the remote end of ssh).  "
    "Unmounting removes the socket and registration, and the log unless a warning or "
    "error was logged; a mount that fails or dies keeps its log (the next mount on that "
    "mount point keeps it as <key>.log.1), and 'hammer umount' of a dead mount removes "
    "the rest.")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
    p = sub.add_parser("mount", help="mount a volume (or one PFS) through FUSE",
                       description="Mount VOLUME[:PFS] on MOUNTPOINT.  Returns once the mount "
                       "is ready unless -f is given.  The mount process keeps at most "
                       "$HAMMERFS_CACHE_MB MiB of decoded metadata cached (default 64).",
                       epilog=RUNTIME_DIR_HELP)
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                   help="comma-separated: ro, asof=0x<tid> (read-only view as of a TID), "
                   "nfs (exportable by an NFS server: file handles stay valid while mounted), "
                   "history_perms=current|asof (default current: @@ history views grant only "
                   "what the object's current permissions grant too; asof: HAMMER's rule, "
                   "the permissions as of the TID alone), nonempty (mount over a directory "
                   "that has entries: refused without it, as they would be hidden)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--heal-from", metavar="REPLICA",
                   help="repair damaged data met by reads (and scrubs) from this replica of "
                   "the PFS: a path in a mount, VOLUME[:PFS] or [user@]host:PATH (see "
                   "`hammer scrub --from`); a read that hits damage gets the replica's "
                   "verified bytes instead of EIO")
    p.add_argument("--heal-port", dest="heal_port", type=int, metavar="PORT",
                   help="ssh port of a remote --heal-from")
    p.add_argument("volume", metavar="VOLUME[:PFS]",
                   help="image file or block device; :PFS mounts that PFS (default 0)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    add_volume_args(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount (commits and releases the volume)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the volume is mounted")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("synctid", help="commit and print the TID of the current state")
    _target_args(p)
    p.set_defaults(func=cmd_synctid)

    p = sub.add_parser("history", help="list the versions (TID and time) of files")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files or directories inside a mount (with --path: VOLUME[:PFS])")
    _volume_args(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("undo", help="print, diff against or restore an older version",
                       description="Like DragonFly's undo(1).  Without -t the version before "
                       "the current one is used.")
    p.add_argument("-t", dest="tids", action="append", default=[], metavar="TID",
                   help="the version as of this TID (twice with -D)")
    p.add_argument("-d", dest="diff", action="store_true",
                   help="unified diff of that version against the current file")
    p.add_argument("-D", dest="diff2", action="store_true",
                   help="unified diff between the two -t versions")
    p.add_argument("-i", dest="info", action="store_true", help="list the versions")
    p.add_argument("-o", dest="output", metavar="FILE", help="write the version to FILE")
    p.add_argument("-u", dest="undo_name", action="store_true",
                   help="write the version to PATH.undo.<tid>")
    p.add_argument("-r", "--restore", action="store_true",
                   help="restore PATH in place as of the TID: a file's bytes, mode, owner, "
                   "atime/mtime and xattrs (a deleted file is recreated); a directory as a "
                   "whole tree: entries it had are restored the same way (recreated if "
                   "deleted), entries created since are removed with everything below them; "
                   "ctime becomes now.  Refused if PATH now is another kind of object")
    p.add_argument("path", metavar="PATH", help="the file or directory (inside a mount, or "
                   "VOLUME[:PFS] with --path)")
    _volume_args(p)
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("snapshot", help="take a snapshot: a snap-YYYYMMDD-HHMM softlink "
                       "to the @@0x<tid> path plus a snapshot record")
    p.add_argument("path", metavar="PATH", help="a path in the PFS to snapshot (or an "
                   "unmounted VOLUME[:PFS])")
    p.add_argument("dir", nargs="?", metavar="DIR", help="where the softlink goes")
    p.add_argument("note", nargs="?", default="", help="a note kept with the snapshot")
    _volume_args(p)
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("snapls", help="list the snapshots of a PFS")
    _target_args(p)
    p.set_defaults(func=cmd_snapls)

    p = sub.add_parser("snaprm", help="remove snapshots: by softlink, by TID, or PATH TID...")
    p.add_argument("items", nargs="+", metavar="LINK|TID|PATH",
                   help="snapshot softlinks, TIDs (0x...), or a PATH followed by its TIDs")
    _volume_args(p)
    p.set_defaults(func=cmd_snaprm)

    p = sub.add_parser("nohistory", help="show or set the nohistory flag of files and "
                       "directories",
                       description="Show or set the nohistory flag of a file or directory: "
                       "changes to an object with the flag keep no history (overwritten and "
                       "deleted versions are destroyed at once, unless a snapshot or a mirror "
                       "read already covers them); files and directories created inside a "
                       "nohistory directory inherit it.  The flag is bit 0x1 of the inode's "
                       "flags field (docs/history.md); `hammer history` shows it.")
    p.add_argument("path", metavar="PATH", help="a file or directory inside a mount (with "
                   "--path: VOLUME[:PFS])")
    p.add_argument("state", nargs="?", choices=("on", "off"), help="set the flag (omit to "
                   "show it)")
    _volume_args(p)
    p.set_defaults(func=cmd_nohistory)

    p = sub.add_parser("history-interval", help="show or set how much history a PFS keeps",
                       description="Show or set the history interval of a PFS: with an "
                       "interval, only the last version of each file in every aligned "
                       "wall-clock interval of that length is kept as history (HAMMER keeps "
                       "one per flush); 0, the default, keeps every commit.  fsync stays "
                       "durable at once; snapshots, mirroring and undo keep their meaning.")
    p.add_argument("path", metavar="PATH", help="a path inside the PFS (or an unmounted "
                   "VOLUME[:PFS])")
    p.add_argument("interval", nargs="?", metavar="DURATION", help="e.g. 30s, 5m, 1h, 0 "
                   "(omit to show it)")
    _volume_args(p)
    p.set_defaults(func=cmd_history_interval)

    p = sub.add_parser("prune-everything", help="destroy ALL history of a PFS (frees its space)",
                       description="Destroy every past version of every file in the PFS, and "
                       "its snapshot records, keeping only the current state.  Space held by "
                       "deleted and overwritten data comes back (the way out of a full volume). "
                       "This cannot be undone: afterwards @@ paths, undo and as-of mounts "
                       "at earlier TIDs no longer show the old data.  Mirror to every slave first: a slave "
                       "that has not received a deletion yet does not learn of it afterwards.")
    _target_args(p)
    p.set_defaults(func=cmd_prune_everything)


def _volume_args(p: argparse.ArgumentParser) -> None:
    add_volume_args(p)
    p.add_argument("--path", dest="inner", default="", metavar="REL",
                   help="with an unmounted VOLUME[:PFS]: the path inside it")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".", metavar="PATH|VOLUME[:PFS]",
                   help="a path inside a mount (default: the current directory) or an "
                   "unmounted VOLUME[:PFS]")
    _volume_args(p)


# -- targets: a mounted path (control channel) or an unmounted volume (opened here) ------------
class Target:
    relpath: str
    mountpoint: str | None

    def call(self, op: str, **args) -> dict:
        raise NotImplementedError

    def read_version(self, relpath: str, tid: int | None) -> Iterator[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class MountTarget(Target):
    def __init__(self, info):
        from hammerfs.control import ControlClient
        self.info = info
        self.relpath = info.relpath
        self.mountpoint = info.mountpoint
        self.client = ControlClient.for_mount(info)

    def call(self, op: str, **args) -> dict:
        return self.client.call(op, **args)

    def read_version(self, relpath: str, tid: int | None) -> Iterator[bytes]:
        return self.client.read_stream("read_version", relpath=relpath, tid=tid)


class VolumeTarget(Target):
    def __init__(self, spec: str, args: argparse.Namespace, *, write: bool):
        from hammerfs.control.ops import OPS, local_context
        from hammerfs.store import Store
        volume, pfs = parse_volume_spec(spec)
        from hammerfs.control.client import not_mounted_hint
        if not is_remote(volume) and not os.path.exists(volume):
            raise HammerError(f"{spec}: no such file, directory or volume")
        if not is_remote(volume) and os.path.isdir(volume):
            raise HammerError(f"{spec}: not inside a mounted hammerfs (and not a volume); "
                              f"{not_mounted_hint(spec)}")
        self.mountpoint = None
        self.relpath = getattr(args, "inner", "") or ""
        dev = open_volume_device(volume, args, readonly=not write)
        try:
            self.store = Store.open(dev, readonly=not write)
        except NoVolumeSignature:
            dev.close()
            if spec != volume:  # VOLUME:PFS: plainly meant as a volume
                raise
            # a file elsewhere (`hammer history /etc/hostname`); a damaged volume's own
            # error (any other NotAVolume) is the one to see
            raise NoVolumeSignature(f"{spec}: not a file inside a mounted hammerfs, and not "
                                    f"a hammerfs volume either; {not_mounted_hint(spec)}") \
                from None
        except BaseException:
            dev.close()
            raise
        self.ctx = local_context(self.store, pfs, volume, readonly=not write)
        self.ops = OPS

    def call(self, op: str, **args) -> dict:
        return self.ops[op](self.ctx, args, None)

    def read_version(self, relpath: str, tid: int | None) -> Iterator[bytes]:
        from hammerfs.control.ops import read_version
        return read_version(self.ctx, relpath, tid)

    def close(self) -> None:
        self.store.close()


def open_target(path: str, args: argparse.Namespace, *, write: bool = False) -> Target:
    from hammerfs.control import find_mount
    info = find_mount(path)
    if info is not None:
        return MountTarget(info)
    return VolumeTarget(path, args, write=write)


@contextlib.contextmanager
def target(path: str, args: argparse.Namespace, *, write: bool = False):
    t = open_target(path, args, write=write)
    try:
        yield t
    finally:
        t.close()


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


# -- mount / umount -----------------------------------------------------------------------------
def cmd_mount(args: argparse.Namespace) -> int:
    from hammerfs.fuse.mount import parse_mount_options
    volume, pfs = parse_volume_spec(args.volume)
    opts = parse_mount_options(",".join(args.options))
    mountpoint = os.path.realpath(args.mountpoint)
    if not os.path.isdir(mountpoint):
        raise HammerError(f"{args.mountpoint}: mount point is not a directory")
    if os.path.ismount(mountpoint):
        raise HammerError(f"{args.mountpoint}: something is already mounted there")
    if not opts.nonempty:
        _refuse_nonempty(args.mountpoint, mountpoint)
    if not is_remote(volume) and not os.path.exists(volume):
        raise HammerError(f"{volume}: no such volume")
    dev = open_volume_device(volume, args, readonly=opts.readonly)
    forget_passphrase(args)
    kw = dict(volume=canonical(volume), pfs=pfs, mountpoint=mountpoint, asof=opts.asof,
              readonly=opts.readonly, debug=opts.debug, nfs=opts.nfs,
              history_perms=opts.history_perms, writeback=opts.writeback,
              heal_from=replica_spec(getattr(args, "heal_from", None)),
              heal_port=getattr(args, "heal_port", None))
    if args.foreground:
        logging.basicConfig(level=logging.INFO, format="hammer mount: %(message)s")
        _serve(dev, **kw)
        return 0
    return _daemonize(dev, kw)


def _refuse_nonempty(given: str, mountpoint: str) -> None:
    """What is in a mount point disappears under the mount (and reappears after it):
    easily taken for lost data, or written to the wrong volume.  ZFS refuses it too unless
    asked (overlay)."""
    try:
        entries = sorted(os.listdir(mountpoint))
    except OSError as exc:
        raise HammerError(f"{given}: {exc.strerror}") from None
    if entries:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise HammerError(f"{given}: mount point is not empty ({len(entries)} entr"
                          f"{'y' if len(entries) == 1 else 'ies'}: {shown}); they would be "
                          "hidden while mounted.  Use an empty directory, or -o nonempty to "
                          "mount over them anyway")


def replica_spec(spec: str | None) -> str | None:
    """A local replica path made absolute (the mount process changes its cwd)."""
    from hammerfs.mirror.transport import parse_remote
    if spec is None or parse_remote(spec) is not None:
        return spec
    return os.path.abspath(spec)


def _serve(dev, *, on_ready=None, on_warning=None, heal_from=None, heal_port=None,
           **kw) -> None:
    from hammerfs.cli.mirror_cmds import healer_factory, lazy_healer
    from hammerfs.fuse.mount import serve
    from hammerfs.store import Store
    try:
        store = Store.open(dev, readonly=kw["readonly"])
    except BaseException:
        dev.close()
        raise
    store.healer_factory = healer_factory(kw["volume"])
    if heal_from:
        store.healer = lazy_healer(store, heal_from, heal_port, kw["volume"])
    if store.header_damage is not None:  # a rollback must never pass silently
        logging.getLogger("hammerfs.mount").warning("WARNING: %s", store.header_damage.message)
        if on_warning:
            on_warning(store.header_damage.message)
    serve(store, on_ready=on_ready, **kw)


_WARN = b"\x01warning "  # a line the mount process sends before "ok" or its error


def _daemonize(dev, kw: dict) -> int:
    """Fork the owner process; return once it reports the mount ready (or its error; the
    error names the log and shows what this attempt wrote to it).

    Its output goes to ``<runtime dir>/<key>.log``.  A clean unmount deletes that log
    unless something worth reading (a warning or an error) was logged; a mount that fails or
    dies leaves it, and the next mount on the same mount point keeps it as ``<key>.log.1``."""
    from hammerfs.control.runtime import ensure_runtime_dir, remove_files
    from hammerfs.control.server import runtime_files
    files = runtime_files(kw["mountpoint"], ensure_runtime_dir())  # refused here, not in the child
    logfile = files["log"]  # a new file: what this attempt writes starts at 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            os.setsid()
            _detach_stdio(files["log"], files["oldlog"])
            logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                                format="%(asctime)s %(name)s %(levelname)s %(message)s")
            worth_keeping = _Noticed()
            logging.getLogger().addHandler(worth_keeping)

            def ready() -> None:
                os.write(w, b"ok")

            def warning(message: str) -> None:  # the parent prints it on its stderr
                os.write(w, _WARN + message.encode() + b"\n")

            _serve(dev, on_ready=ready, on_warning=warning, **kw)
            code = 0
            if not worth_keeping.seen:
                remove_files(files["log"], files["oldlog"])
        except BaseException as exc:  # the user sees a message, never a traceback
            mlog = logging.getLogger("hammerfs.mount")
            if isinstance(exc, HammerError):
                mlog.error("mount failed: %s", exc)
            else:
                mlog.exception("mount failed")
            with contextlib.suppress(OSError):
                os.write(w, str(exc).encode() or type(exc).__name__.encode())
        finally:
            os._exit(code)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
        while msg.startswith(_WARN) and b"\n" in msg:
            line, msg = msg[len(_WARN):].split(b"\n", 1)
            print(f"hammer: WARNING: {line.decode(errors='replace')}", file=sys.stderr)
        if msg == b"ok":
            break
    os.close(r)
    if msg == b"ok":
        return 0
    os.waitpid(pid, 0)
    reason = msg.decode(errors="replace") or "the mount process died"
    tail = _log_tail(logfile, 0)
    shown = "\n".join(f"  {line}" for line in tail)
    raise HammerError(f"mount failed: {reason}\nlog: {logfile}"
                      + (f"; its last lines:\n{shown}" if tail else ""))


def _log_tail(path: str, start: int, lines: int = 15) -> list[str]:
    """The last ``lines`` lines written to the log from offset ``start`` on."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(1 << 20).decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


class _Noticed(logging.Handler):
    """Remembers whether anything at WARNING or above was logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


def _detach_stdio(logfile: str, oldlog: str) -> None:
    """stdin from /dev/null, stdout and stderr to a new ``logfile`` (the previous one, a
    failed mount's, becomes ``oldlog``); never through a symlink or into another's file."""
    from hammerfs.control.runtime import create_private
    with contextlib.suppress(FileNotFoundError):
        os.replace(logfile, oldlog)
    log = create_private(logfile)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def cmd_umount(args: argparse.Namespace) -> int:
    from hammerfs.control.holders import unmount_naming_holders
    from hammerfs.fuse.mount import unmount
    unmount_naming_holders(unmount, args.mountpoint)
    return 0


# -- synctid / history --------------------------------------------------------------------------
def cmd_synctid(args: argparse.Namespace) -> int:
    with target(args.path, args, write=True) as t:
        print(format_tid(t.call("synctid")["tid"]))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    status = 0
    for path in args.paths:
        try:
            with target(path, args) as t:
                info = t.call("history", relpath=t.relpath)
        except HammerError as exc:
            msg = str(exc)
            print(f"hammer: {msg if msg.startswith(path) else f'{path}: {msg}'}",
                  file=sys.stderr)
            status = 1
            continue
        flag = "\tnohistory" if info.get("nohistory") else ""
        print(f"{path}\tobjid 0x{info['obj_id']:016x}{flag}")
        for tid, ts, size, deleted in info["versions"]:
            mark = "" if deleted else "  (current)"
            print(f"    {format_tid(tid)} {_when(ts)}  size {size}{mark}")
    return status


def cmd_nohistory(args: argparse.Namespace) -> int:
    on = None if args.state is None else args.state == "on"
    with target(args.path, args, write=on is not None) as t:
        info = t.call("nohistory", relpath=t.relpath, on=on)
    print(f"{args.path}\tnohistory {'on' if info['nohistory'] else 'off'}")
    return 0


def cmd_history_interval(args: argparse.Namespace) -> int:
    seconds = None
    if args.interval is not None:
        seconds = parse_duration(args.interval, what="history interval", integer=True,
                                 maximum=HISTORY_INTERVAL_MAX)
    with target(args.path, args, write=seconds is not None) as t:
        info = t.call("history-interval", relpath=t.relpath, seconds=seconds)
    every = f"one version per {info['seconds']} s" if info["seconds"] else "every commit"
    print(f"PFS {info['pfs']}: history interval {info['seconds']} s ({every})")
    return 0


# -- undo -----------------------------------------------------------------------------------------
def _default_tid(versions: list) -> int:
    """The version before the current one (undo's default)."""
    if len(versions) < 2:
        raise HammerError("no older version to undo to (see 'hammer history')")
    return versions[-2][0]


def cmd_undo(args: argparse.Namespace) -> int:
    tids = [parse_tid(t) for t in args.tids]
    with target(args.path, args, write=args.restore) as t:
        # with -t, the file is found as of that TID, so deleted files can be undone too
        info = t.call("history", relpath=t.relpath, tid=tids[0] if tids else None)
        versions = info["versions"]
        if args.info:
            for tid, ts, size, deleted in versions:
                print(f"{format_tid(tid)} {_when(ts)}  size {size}"
                      + ("" if deleted else "  (current)"))
            return 0
        if args.diff2:
            if len(tids) != 2:
                raise HammerError("-D needs two -t TIDs")
            return _diff(t, tids[0], tids[1], args.path)
        tid = tids[0] if tids else _default_tid(versions)
        if args.diff:
            return _diff(t, tid, None, args.path)
        if args.restore:
            done = t.call("restore", relpath=t.relpath, tid=tid)
            print(f"{args.path}: restored the version as of {format_tid(tid)} "
                  f"(new version {format_tid(done['tid'])}; {done['created']} created, "
                  f"{done['updated']} updated, {done['removed']} removed)")
            return 0
        out = args.output or (f"{args.path}.undo.{format_tid(tid)}" if args.undo_name else None)
        chunks = t.read_version(t.relpath, tid)
        if out is None:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        else:
            _write_file(out, chunks)
    return 0


def _write_file(path: str, chunks: Iterator[bytes]) -> None:
    """Write ``chunks`` to ``path`` via a temporary file: a failed read leaves no file
    (and an existing one as it was)."""
    tmp = f"{path}.hammer-tmp"
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, HammerError):
            raise
        raise HammerError(f"{path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _diff(t: Target, old_tid: int, new_tid: int | None, label: str) -> int:
    old = b"".join(t.read_version(t.relpath, old_tid)).decode(errors="replace")
    new = b"".join(t.read_version(t.relpath, new_tid)).decode(errors="replace")
    new_label = f"{label}@@{format_tid(new_tid)}" if new_tid else label
    sys.stdout.writelines(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        f"{label}@@{format_tid(old_tid)}", new_label))
    return 0


# -- snapshots ------------------------------------------------------------------------------------
def _snap_link_target(t: Target, tid: int, pfs: int) -> str:
    mount_pfs = t.info.pfs if isinstance(t, MountTarget) else pfs
    suffix = "" if pfs == mount_pfs else f":{pfs:05d}"
    return f"{t.mountpoint}/@@{format_tid(tid)}{suffix}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    with target(args.path, args, write=True) as t:
        snap = t.call("snapshot", relpath=t.relpath, note=args.note)
        if t.mountpoint is None:
            print(format_tid(snap["tid"]))  # no tree to link into: the record is the snapshot
            return 0
        linkdir = args.dir or snap["snapshots_dir"] or t.mountpoint
        link = make_snapshot_link(t, linkdir, snap["tid"], snap["ts"], snap["pfs"])
        print(f"{link} -> {os.readlink(link)}")
    return 0


def make_snapshot_link(t: Target, linkdir: str, tid: int, ts: int, pfs: int) -> str:
    """Create ``linkdir/snap-YYYYMMDD-HHMM`` (``.N`` if taken) -> the @@ path; returns its
    absolute path (what snapshot and cleanup print, whatever form DIR was given in)."""
    linkdir = os.path.abspath(linkdir)
    if not os.path.isdir(linkdir):
        raise HammerError(f"{linkdir}: not a directory")
    name = time.strftime("snap-%Y%m%d-%H%M", time.localtime(ts / 1e9))
    link = os.path.join(linkdir, name)
    n = 1
    while os.path.lexists(link):
        link = os.path.join(linkdir, f"{name}.{n}")
        n += 1
    os.symlink(_snap_link_target(t, tid, pfs), link)
    return link


def cmd_snapls(args: argparse.Namespace) -> int:
    with target(args.path, args) as t:
        info = t.call("snapls", relpath=t.relpath)
    print(f"Snapshots on {args.path}\tPFS #{info['pfs']}")
    print("Transaction ID\t\tTimestamp\t\tNote")
    for tid, ts, note in info["snapshots"]:
        print(f"{format_tid(tid)}\t{_when(ts)}\t{note}")
    return 0


def tid_of_link(path: str) -> int | None:
    if not os.path.islink(path):
        return None
    target_text = os.readlink(path)
    _, sep, tail = target_text.rpartition("@@")
    if not sep:
        return None
    return parse_tid(tail.split(":")[0])


def cmd_snaprm(args: argparse.Namespace) -> int:
    items = list(args.items)
    while items:
        item = items.pop(0)
        link_tid = tid_of_link(item)
        if link_tid is not None:  # a snapshot softlink: drop its record and the link
            with target(os.path.dirname(os.path.abspath(item)), args, write=True) as t:
                t.call("snaprm", relpath=t.relpath, tid=link_tid)
            os.unlink(item)
            continue
        if item.lower().startswith("0x"):  # a TID of the PFS of the current directory
            with target(".", args, write=True) as t:
                _snaprm_tid(t, parse_tid(item))
            continue
        if not items:
            raise HammerError(f"{item}: not a snapshot link or TID (use: snaprm PATH TID...)")
        with target(item, args, write=True) as t:  # PATH TID [TID...]
            while items and items[0].lower().startswith("0x"):
                _snaprm_tid(t, parse_tid(items.pop(0)))
    return 0


def _snaprm_tid(t: Target, tid: int) -> None:
    if not t.call("snaprm", relpath=t.relpath, tid=tid)["removed"]:
        raise HammerError(f"no snapshot {format_tid(tid)}")


# -- prune-everything -----------------------------------------------------------------------------
def cmd_prune_everything(args: argparse.Namespace) -> int:
    with target(args.path, args, write=True) as t:
        done = t.call("prune-everything", relpath=t.relpath)
    print(prune_summary(done))
    return 0


def prune_summary(done: dict) -> str:
    """The line prune, prune-everything and cleanup print for one pruned PFS."""
    n = done["destroyed"]
    return (f"PFS {done['pfs']}: destroyed {n} history version{'' if n == 1 else 's'}, "
            f"freed {_mib(done['freed_bytes'])} ({_mib(done['free_bytes'])} free)")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
