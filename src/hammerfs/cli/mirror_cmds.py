"""`hammer` PFS and mirroring commands: pfs-master, pfs-slave, pfs-status, pfs-update,
pfs-upgrade, pfs-downgrade, pfs-destroy, mirror-read, mirror-read-stream, mirror-write,
mirror-dump, mirror-copy, mirror-stream, ssh-remote.

A target is a path inside a mount (its root, or a PFS softlink: the command then acts through
the mounting process's control channel), an unmounted ``VOLUME[:PFS]`` (opened here), or for
the mirror commands ``[user@]host:PATH`` (run over ssh as HAMMER does).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hammerfs.blockdev.spec import is_remote
from hammerfs.cli.sizes import argtype
from hammerfs.cli.volume import add_volume_args, open_volume_device, same_file
from hammerfs.errors import HammerError, Interrupted
from hammerfs.mirror import pfs_ops
from hammerfs.mirror import stream as s
from hammerfs.mirror.local import serve_source, serve_target
from hammerfs.mirror.reader import SourceOptions
from hammerfs.mirror.transport import (
    Channel,
    ForkChannel,
    ProcessChannel,
    RemoteSpec,
    SocketChannel,
    ThreadChannel,
    parse_remote,
    relay,
    relay_raw,
    ssh_argv,
)
from hammerfs.quantity import parse_duration, parse_size
from hammerfs.store.pfs import parse_volume_spec

# -- targets ---------------------------------------------------------------------------------


@dataclass
class Mounted:
    spec: str
    mount: object  # hammerfs.control.MountInfo
    pfs: int | None  # None: the path does not exist yet (pfs-master/pfs-slave)

    def client(self):
        from hammerfs.control import ControlClient
        return ControlClient.for_mount(self.mount, timeout=None)

    def call(self, op: str, **args) -> dict:
        return self.client().call(op, **args)


@dataclass
class Unmounted:
    spec: str
    volume: str
    pfs: int | None  # None: VOLUME without :PFS for pfs-master/pfs-slave = allocate


Target = Mounted | Unmounted | RemoteSpec


def _find_mount(path: str):
    try:
        from hammerfs.control import find_mount
    except ImportError:  # no mount support in this build
        return None
    info = find_mount(path)
    if info is None and not os.path.lexists(path):
        parent = find_mount(os.path.dirname(os.path.abspath(path)) or "/")
        if parent is not None:
            name = os.path.basename(path.rstrip("/"))
            return type(parent)(parent.mountpoint, parent.socket_path, parent.pfs,
                                os.path.join(parent.relpath, name), parent.volume,
                                parent.pid)
        return None
    return info


def _not_mounted_hint(path: str) -> str:
    from hammerfs.control.client import not_mounted_hint
    return not_mounted_hint(path)


def pfs_of_link(path: str) -> int | None:
    """The PFS id a PFS softlink points at (``@@-1:00001``, ``@@0x...:00001``)."""
    from hammerfs.fs import parse_magic
    try:
        target = os.readlink(path)
    except OSError:
        return None
    magic = parse_magic(os.fsencode(target))
    return magic.pfs if magic is not None and not magic.name else None


def resolve(spec: str, *, creating: bool = False, remote_ok: bool = False) -> Target:
    if is_remote(spec):  # rbd:POOL/IMAGE[:PFS], s3://BUCKET/PREFIX[:PFS]: opened directly
        volume, pfs = parse_volume_spec(spec)
        return Unmounted(spec, volume, None if creating and volume == spec else pfs)
    if remote_ok:
        remote = parse_remote(spec)
        if remote is not None:
            return remote
    # A symlink is resolved by name (lexically): its own path decides the mount.
    mount = _find_mount(os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(spec))),
                                     os.path.basename(spec)) if os.path.islink(spec) else spec)
    if mount is not None:
        return _mounted(spec, mount, creating)
    volume, pfs = parse_volume_spec(spec)
    if not os.path.exists(volume):
        raise HammerError(f"{spec}: no such volume, and not inside a hammerfs mount "
                          f"({_not_mounted_hint(spec)})")
    if os.path.isdir(volume):
        raise HammerError(f"{spec}: a directory that is not inside a hammerfs mount "
                          f"({_not_mounted_hint(spec)})")
    if volume == spec and not creating:
        pfs = 0
    elif volume == spec:
        pfs = None
    return Unmounted(spec, volume, pfs)


def _mounted(spec: str, mount, creating: bool) -> Mounted:
    if not mount.relpath:
        if creating:
            raise HammerError(f"{spec} exists: give a new path for the PFS softlink")
        return Mounted(spec, mount, mount.pfs)
    if os.path.islink(spec):
        pfs = pfs_of_link(spec)
        if pfs is None:
            raise HammerError(f"{spec} is a symlink but not a PFS softlink")
        if creating:
            raise HammerError(f"{spec} already exists (PFS #{pfs})")
        return Mounted(spec, mount, pfs)
    if os.path.lexists(spec):
        raise HammerError(f"{spec} is neither a mount root nor a PFS softlink")
    if not creating:
        raise HammerError(f"{spec}: no such PFS")
    return Mounted(spec, mount, None)


@contextlib.contextmanager
def open_store(volume: str, args: argparse.Namespace, *, readonly: bool = False,
               ) -> Iterator[object]:
    from hammerfs.store import Store
    dev = open_volume_device(volume, args, readonly=readonly)
    try:
        store = Store.open(dev, readonly=readonly)
    except BaseException:
        dev.close()
        raise
    try:
        yield store
    finally:
        store.close()


# -- PFS commands ----------------------------------------------------------------------------

def _print_status(label: str, pfs: int, lines: list[str]) -> None:
    print(f"{label}\tPFS#{pfs} {{")
    for line in lines:
        print(f"    {line}")
    print("}")


def cmd_pfs_status(args: argparse.Namespace) -> int:
    for spec in args.paths:
        tgt = resolve(spec)
        if isinstance(tgt, Mounted):
            res = tgt.call("pfs-status", pfs=tgt.pfs)
            _print_status(spec, res["pfs"], res["lines"])
            continue
        with open_store(tgt.volume, args, readonly=True) as store:
            st = pfs_ops.status(store, tgt.pfs)
            _print_status(spec, tgt.pfs, pfs_ops.format_status(st))
    return 0


def _create(args: argparse.Namespace, slave: bool) -> int:
    opts = pfs_ops.parse_options(args.options)
    label = opts.pop("label", "")
    shared = opts.pop("shared-uuid", None)
    if slave and not shared:
        raise HammerError("pfs-slave needs shared-uuid=UUID (the master's, see pfs-status)")
    tgt = resolve(args.path, creating=True)
    if isinstance(tgt, Mounted):
        res = tgt.call("pfs-create", slave=slave, shared_uuid=shared, label=label)
        pfs = res["pfs"]
        if opts:
            tgt.call("pfs-update", pfs=pfs, options=opts)
        os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
        os.symlink(f"@@-1:{pfs:05d}", args.path)
        status = tgt.call("pfs-status", pfs=pfs)["lines"]
    else:
        with open_store(tgt.volume, args) as store:
            pfs = tgt.pfs if tgt.pfs is not None else pfs_ops.free_pfs_id(store)
            if slave:
                pfs_ops.create_slave(store, pfs, shared, label)
            else:
                pfs_ops.create_master(store, pfs, label)
            if opts:
                pfs_ops.update(store, pfs, opts)
            status = pfs_ops.format_status(pfs_ops.status(store, pfs))
    print(f"Creating PFS #{pfs} succeeded!")
    _print_status(args.path, pfs, status)
    return 0


def cmd_pfs_master(args: argparse.Namespace) -> int:
    return _create(args, slave=False)


def cmd_pfs_slave(args: argparse.Namespace) -> int:
    return _create(args, slave=True)


def _modify(args: argparse.Namespace, op: str) -> tuple[Target, int]:
    tgt = resolve(args.path)
    if isinstance(tgt, Mounted):
        extra = {"options": pfs_ops.parse_options(args.options)} if op == "pfs-update" else {}
        tgt.call(op, pfs=tgt.pfs, **extra)
        return tgt, tgt.pfs
    with open_store(tgt.volume, args) as store:
        if op == "pfs-upgrade":
            pfs_ops.upgrade(store, tgt.pfs)
        elif op == "pfs-downgrade":
            pfs_ops.downgrade(store, tgt.pfs)
        elif op == "pfs-destroy":
            pfs_ops.destroy(store, tgt.pfs)
        else:
            pfs_ops.update(store, tgt.pfs, pfs_ops.parse_options(args.options))
    return tgt, tgt.pfs


def cmd_pfs_upgrade(args: argparse.Namespace) -> int:
    _, pfs = _modify(args, "pfs-upgrade")
    print(f"pfs-upgrade of PFS#{pfs} succeeded (now a master)")
    return 0


def cmd_pfs_downgrade(args: argparse.Namespace) -> int:
    _, pfs = _modify(args, "pfs-downgrade")
    print(f"pfs-downgrade of PFS#{pfs} succeeded (now a slave)")
    return 0


def cmd_pfs_destroy(args: argparse.Namespace) -> int:
    tgt, pfs = _modify(args, "pfs-destroy")
    if isinstance(tgt, Mounted) and os.path.islink(args.path):
        os.unlink(args.path)
    print(f"pfs-destroy of PFS#{pfs} succeeded!")
    return 0


def cmd_pfs_update(args: argparse.Namespace) -> int:
    _, pfs = _modify(args, "pfs-update")
    print(f"pfs-update of PFS#{pfs} succeeded")
    return 0


# -- mirror endpoints ------------------------------------------------------------------------

def _side_args(args: argparse.Namespace, key_file: str | None) -> argparse.Namespace:
    side = copy.copy(args)
    if key_file is not None:
        side.key_file = key_file
    return side


def _source_options(args: argparse.Namespace, two_way: bool, stream: bool) -> SourceOptions:
    return SourceOptions(two_way=two_way, begin_tid=getattr(args, "begin_tid", 1) or 1,
                         stream=stream, chunk_bytes=args.chunk_size)


def open_source(spec: str, args: argparse.Namespace, *, two_way: bool, stream: bool,
                key_file: str | None = None, fork: bool = False) -> Channel:
    """The source endpoint.  ``fork``: run a local volume's reader in a child process (when
    the target also runs in this process, so the two do not share one interpreter lock)."""
    tgt = resolve(spec, remote_ok=True)
    opts = _source_options(args, two_way, stream)
    if isinstance(tgt, RemoteSpec):
        words = ["mirror-read-stream" if stream else "mirror-read",
                 *(["-2"] if two_way else []), *_verbosity(args), "-S", str(args.chunk_size),
                 tgt.path]
        if not two_way and opts.begin_tid > 1:
            words.append(f"0x{opts.begin_tid:x}")
        return ProcessChannel(ssh_argv(tgt, words, args.port))
    if isinstance(tgt, Mounted):
        sock = tgt.client().open_stream("mirror-read", pfs=tgt.pfs, two_way=two_way,
                                        stream=stream, begin_tid=opts.begin_tid,
                                        chunk_bytes=opts.chunk_bytes)
        return SocketChannel(sock)
    cm = open_store(tgt.volume, _side_args(args, key_file), readonly=True)
    store = cm.__enter__()

    def session(sock: socket.socket) -> int:
        return serve_source(store, tgt.pfs, sock, opts)
    try:
        chan = ForkChannel(session) if fork else ThreadChannel(session)
        return ClosingChannel(chan, cm)
    except BaseException:
        cm.__exit__(None, None, None)
        raise


class ClosingChannel(Channel):
    """A channel that closes this process's handle on a volume once the endpoint is done."""

    def __init__(self, inner: Channel, closer: contextlib.AbstractContextManager):
        self.inner, self.closer = inner, closer
        self.rfile, self.wfile = inner.rfile, inner.wfile

    def close_write(self) -> None:
        self.inner.close_write()

    def finish(self, timeout: float | None = None) -> None:
        try:
            self.inner.finish(timeout)
        finally:
            self.closer.__exit__(None, None, None)

    def abort(self) -> None:
        self.inner.abort()


def open_target(spec: str, args: argparse.Namespace, *, key_file: str | None = None,
                ) -> Channel:
    tgt = resolve(spec, remote_ok=True)
    if isinstance(tgt, RemoteSpec):
        words = ["mirror-write", "-2", *_verbosity(args), tgt.path]
        return ProcessChannel(ssh_argv(tgt, words, args.port))
    if isinstance(tgt, Mounted):
        return SocketChannel(tgt.client().open_stream("mirror-write", pfs=tgt.pfs,
                                                      two_way=True))
    cm = open_store(tgt.volume, _side_args(args, key_file))
    store = cm.__enter__()

    def session(sock: socket.socket):
        try:
            return serve_target(store, tgt.pfs, sock)
        finally:
            cm.__exit__(None, None, None)
    return ThreadChannel(session)


def _verbosity(args: argparse.Namespace) -> list[str]:
    """The far end's verbosity over ssh: only -q passes.  The relay here sees every frame
    and reports each batch itself; a far end with -v would report it a second time."""
    return ["-q"] if args.verbosity < 0 else []


class StdioChannel(Channel):
    """This process's stdin/stdout as a mirror endpoint (mirror-read/-write)."""

    def __init__(self, read: bool):
        self.rfile = sys.stdin.buffer if read else None
        self.wfile = sys.stdout.buffer

    def close_write(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.wfile.flush()


def cmd_mirror_read(args: argparse.Namespace, stream: bool = False) -> int:
    stream = stream or args.stream
    two_way = args.two_way or stream
    if sys.stdout.isatty():
        raise HammerError("mirror-read writes a binary stream: redirect stdout "
                          "(e.g. | hammer mirror-write SLAVE)")
    source = open_source(args.path, args, two_way=two_way, stream=stream)
    relay(source, StdioChannel(read=two_way), verbosity=args.verbosity,
          bwlimit=args.bwlimit, two_way=two_way)
    return 0


def cmd_mirror_read_stream(args: argparse.Namespace) -> int:
    return cmd_mirror_read(args, stream=True)


def cmd_mirror_write(args: argparse.Namespace) -> int:
    target = open_target(args.path, args)
    stdout = StdioChannel(read=True)
    if not args.two_way:
        stdout.wfile = None
    res = relay(stdout, target, verbosity=args.verbosity, two_way=args.two_way)
    if args.verbosity > 0 or (not args.two_way and args.verbosity >= 0):
        tid = res.back.synced_tid
        if tid:
            print(f"Mirror-write: synced to 0x{tid:016x}", file=sys.stderr)
    return 0


def cmd_mirror_dump(args: argparse.Namespace) -> int:
    reader = s.FrameReader(sys.stdin.buffer)
    while True:
        try:
            frame = reader.recv()
        except s.StreamClosed:
            print("(end of stream without TERM: truncated)")
            return 1
        print(describe(frame))
        if frame.type == s.TERM:
            return 0


def describe(frame: s.Frame) -> str:
    """One line per frame for mirror-dump."""
    t = frame.type
    if t == s.HELLO:
        return f"HELLO role={'source' if s.decode_hello(frame) == s.ROLE_SOURCE else 'target'}"
    if t == s.PFSD:
        pfs, d = s.decode_pfsd(frame)
        return (f"PFSD pfs={pfs} shared-uuid={d.shared_uuid} unique-uuid={d.unique_uuid} "
                f"sync-end-tid=0x{d.sync_end_tid:016x} {'slave' if d.is_slave else 'master'}")
    if t == s.BATCH:
        beg, end, _ = s.decode_batch(frame)
        return f"BATCH 0x{beg:016x} 0x{end:016x}"
    if t == s.REC:
        r = s.decode_rec(frame, 0)
        return (f"  REC obj=0x{r.obj_id:x} rt=0x{r.rec_type:02x} key=0x{r.key:x} "
                f"create=0x{r.create_tid:016x} delete=0x{r.delete_tid:016x} "
                f"len={len(r.data or b'')}")
    if t == s.PASS:
        obj, rt, key, ctid, dtid, _ = s.decode_pass(frame)
        return (f"  PASS obj=0x{obj:x} rt=0x{rt:02x} key=0x{key:x} create=0x{ctid:016x} "
                f"delete=0x{dtid:016x}")
    if t == s.SYNC:
        end, _ts, count = s.decode_sync(frame)
        return f"SYNC 0x{end:016x} records={count}"
    if t == s.ESTIMATE:
        total, recs, beg, end = s.decode_estimate(frame)
        return f"ESTIMATE {total} bytes {recs} records 0x{beg:016x}..0x{end:016x}"
    if t == s.ERROR:
        return f"ERROR {s.decode_error(frame, 'peer')}"
    return frame.name


def cmd_mirror_copy(args: argparse.Namespace, stream: bool = False,
                    on_flowing: Callable[[], None] | None = None) -> int:
    target_local = isinstance(resolve(args.target, remote_ok=True), Unmounted)
    source = open_source(args.source, args, two_way=True, stream=stream,
                         key_file=args.source_key_file, fork=target_local)
    try:
        target = open_target(args.target, args, key_file=args.target_key_file)
    except BaseException:
        source.abort()
        raise
    try:
        res = relay(source, target, verbosity=args.verbosity, bwlimit=args.bwlimit,
                    on_flowing=on_flowing)
    except KeyboardInterrupt:
        raise Interrupted("interrupted (resumable: run the same command again)") from None
    if args.verbosity > 0:
        print(f"Mirror-copy: synced to 0x{res.back.synced_tid:016x}", file=sys.stderr)
    return 0


def cmd_mirror_stream(args: argparse.Namespace) -> int:
    """mirror-copy that follows every commit, and reconnects when the link drops.  It ends
    when both ends are gone for good: local paths that are neither mounted nor a volume for
    ``--give-up`` seconds (both mounts unmounted: nothing is left to mirror)."""
    delay = args.reconnect_delay
    started = False  # once a session ran, a vanished mount or volume is waited for too
    both_gone_since: float | None = None
    failures = 0

    def flowing() -> None:
        # Says that a failure reported before is over (`hammer service status` shows a
        # stream's latest line: it must not keep showing an error that has passed).
        nonlocal failures
        if failures:
            _note(args, f"mirror-stream: connected again after {failures} failed "
                        f"attempt{'s' if failures > 1 else ''}; streaming")
        failures = 0

    while True:
        t0 = time.monotonic()
        try:
            cmd_mirror_copy(args, stream=True, on_flowing=flowing)
            return 0
        except s.PeerError as exc:
            if exc.fatal:
                raise
            _note(args, f"mirror-stream: {exc}; reconnecting in {delay:g}s")
        except s.StreamError as exc:
            _note(args, f"mirror-stream: {exc}; reconnecting in {delay:g}s")
        except Interrupted:
            raise
        except HammerError as exc:
            # a session that ran (not one refused at once) and then failed, e.g. its target
            # lost its storage mid-commit: retried, the target reopened at its last commit
            started = started or time.monotonic() - t0 > delay
            if not started:
                raise
            both_gone_since = _both_gone(args, both_gone_since)
            if both_gone_since is not None and args.give_up and \
                    time.monotonic() - both_gone_since >= args.give_up:
                raise HammerError(
                    f"mirror-stream: source {args.source} and target {args.target} are both "
                    f"gone (neither mounted nor a volume) for {args.give_up:g}s: stopping. "
                    "Run the same command again when they are back: it resumes where it "
                    "stopped") from None
            _note(args, f"mirror-stream: {exc}; retrying in {delay:g}s")
        failures += 1
        started = started or time.monotonic() - t0 > delay
        try:
            time.sleep(delay)
        except KeyboardInterrupt:
            raise Interrupted("interrupted (resumable: run the same command again)") \
                from None


def _both_gone(args: argparse.Namespace, since: float | None) -> float | None:
    """When both ends were first seen gone (None while either is there or remote: a remote
    end cannot be looked at from here)."""
    if not (_gone(args.source) and _gone(args.target)):
        return None
    return since if since is not None else time.monotonic()


def _gone(spec: str) -> bool:
    if parse_remote(spec) is not None:
        return False
    try:
        resolve(spec)
    except HammerError:
        return True
    return False


def _note(args: argparse.Namespace, text: str) -> None:
    if args.verbosity >= 0:
        print(f"hammer: {text}", file=sys.stderr, flush=True)


# -- replicas to heal from (hammer scrub --from, hammer mount --heal-from) --------------------

def open_replica(spec: str, port: int | None = None, own_volume: str | None = None,
                 ) -> Channel:
    """A channel to a mirror-fetch server (mirror/heal.py) for the replica ``spec``: a path
    in a mount, an unmounted plain VOLUME[:PFS], or [user@]host:PATH over ssh."""
    from hammerfs.mirror.heal import FetchError, local_volume

    tgt = resolve(spec, remote_ok=True)
    if isinstance(tgt, RemoteSpec):
        return ProcessChannel(ssh_argv(tgt, ["mirror-fetch", tgt.path], port))
    if isinstance(tgt, Mounted):
        if own_volume and same_file(getattr(tgt.mount, "volume", ""), own_volume):
            raise FetchError(f"{spec} is this volume itself, not a replica of it")
        return SocketChannel(tgt.client().open_stream("mirror-fetch", pfs=tgt.pfs))
    if own_volume and same_file(tgt.volume, own_volume):
        raise FetchError(f"{spec} is this volume itself, not a replica of it")
    return local_volume(tgt.volume, tgt.pfs)


def healer_factory(own_volume: str | None):
    """``factory(store, spec, port) -> Healer`` (checked: the replica answered), for the
    processes that own a volume (the mount sets it as ``store.healer_factory``)."""
    from hammerfs.mirror.heal import Healer

    def make(store, spec: str, port: int | None = None) -> Healer:
        return Healer.open(store, spec, lambda: open_replica(spec, port, own_volume))
    return make


def lazy_healer(store, spec: str, port: int | None, own_volume: str | None):
    """The healer of a mount's reads: connects at each repair (the replica may come and
    go: it is not checked at mount time)."""
    from hammerfs.mirror.heal import Healer
    return Healer(store, spec, lambda: open_replica(spec, port, own_volume))


def cmd_mirror_fetch(args: argparse.Namespace) -> int:
    """Serve mirror-fetch requests on stdin/stdout for PATH (what ssh runs for a remote
    `--from`/`--heal-from`)."""
    from hammerfs.mirror.heal import serve_fetch

    tgt = resolve(args.path)
    if isinstance(tgt, Mounted):
        sock = tgt.client().open_stream("mirror-fetch", pfs=tgt.pfs)
        relay_raw(SocketChannel(sock), StdioChannel(read=True))  # until the mount closes
        return 0
    with open_store(tgt.volume, args, readonly=True) as store:
        serve_fetch(store, tgt.pfs, sys.stdin.buffer, sys.stdout.buffer)
    return 0


# -- ssh-remote -----------------------------------------------------------------------------

REMOTE_ALLOWED = {"mirror-read": ("mirror-read", "mirror-read-stream", "mirror-fetch"),
                  "mirror-write": ("mirror-write",)}
_REMOTE_FLAGS = {"-2", "-q", "-v", "-vv", "--stream"}


def cmd_ssh_remote(args: argparse.Namespace) -> int:
    """authorized_keys forced command: allow only ``COMMAND`` on the PFS ``DIR`` designates
    (or on a PFS softlink directly inside ``DIR`` when ``DIR`` is a plain directory)."""
    from hammerfs.cli.main import main

    if args.command_name not in REMOTE_ALLOWED:
        raise HammerError("ssh-remote: COMMAND must be mirror-read or mirror-write")
    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    argv = _check_remote(original, args.command_name, args.dir)
    return main(argv)


def _check_remote(original: str, allowed: str, directory: str) -> list[str]:
    """The command line to run for ``$SSH_ORIGINAL_COMMAND``: only the allowed verb and
    options, and the path replaced by the endpoint confinement decided on (``_confine``)."""
    try:
        words = shlex.split(original)
    except ValueError:
        words = []
    verbs = [i for i, w in enumerate(words) if w in sum(REMOTE_ALLOWED.values(), ())]
    if not verbs:
        raise HammerError(f"ssh-remote: command not allowed: {original!r}")
    argv = words[verbs[0]:]
    if argv[0] not in REMOTE_ALLOWED[allowed]:
        raise HammerError(f"ssh-remote: only {allowed} is allowed, not {argv[0]}")
    paths, i = [], 1
    while i < len(argv):
        w = argv[i]
        if w in _REMOTE_FLAGS:
            i += 1
        elif w in ("-S", "-b") and i + 1 < len(argv):
            i += 2
        elif w.startswith("-"):
            raise HammerError(f"ssh-remote: option {w} not allowed")
        else:
            paths.append(i)
            i += 1
    if not paths or len(paths) > (2 if argv[0] == "mirror-read" else 1):
        raise HammerError(f"ssh-remote: path not allowed: "
                          f"{' '.join(argv[j] for j in paths) or '(none)'} (only {directory})")
    argv[paths[0]] = _confine(argv[paths[0]], directory)
    return argv


def _confine(path: str, directory: str) -> str:
    """The endpoint the remote may open for ``path``.

    Decided on the PFS ``path`` resolves to (every symlink followed, PFS softlinks included),
    never on its spelling: a softlink below ``DIR`` may point anywhere (``@@-1:00000``, another
    tenant's PFS), and a slave's softlinks are whatever its writer mirrored into it.
    ``DIR`` (the administrator's word) either designates one PFS (a mount root, a PFS
    softlink, ``VOLUME[:PFS]``): then only that PFS, and ``DIR`` itself is what is opened,
    so nothing the remote named is resolved again; or it is a plain directory inside a
    mount: then only the PFS softlinks that are entries of ``DIR`` itself (never one
    reached through another PFS's contents), other than PFS #0."""
    refused = f"ssh-remote: path not allowed: {path} (only {directory})"
    if not _within(path, directory):
        raise HammerError(refused)
    want = _designated(directory)
    try:
        got = resolve(path)
    except HammerError as exc:
        raise HammerError(f"{refused}: {exc}") from None
    if want is not None:
        if _pfs_identity(got) != _pfs_identity(want):
            raise HammerError(f"{refused}: it resolves to PFS #{got.pfs}{_where(got)}, not "
                              f"the PFS #{want.pfs}{_where(want)} that {directory} designates")
        return directory
    # DIR is a plain directory in a mount: one of its own entries, a PFS softlink.
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(directory))
    entry = os.path.join(directory, rel)
    pfs = pfs_of_link(entry) if "/" not in rel and rel != "." else None
    if pfs is None or pfs == 0 or not isinstance(got, Mounted) or got.pfs != pfs:
        raise HammerError(f"{refused}: {directory} is a directory, and only the PFS "
                          f"softlinks directly inside it (not PFS #0) may be mirrored")
    return entry


def _designated(directory: str) -> Target | None:
    """The PFS ``DIR`` designates, or None when it is a plain directory inside a mount."""
    try:
        return resolve(directory)
    except HammerError as exc:
        if os.path.isdir(directory) and not os.path.islink(directory) \
                and _find_mount(directory) is not None:
            return None
        raise HammerError(f"ssh-remote: {directory} (DIR) designates no PFS: {exc}") from None


def _pfs_identity(tgt: Target) -> tuple:
    """(volume, PFS number) of an endpoint, the volume by its file identity (the same
    volume reached as a mount or as VOLUME[:PFS] compares equal)."""
    volume = tgt.volume if isinstance(tgt, Unmounted) else getattr(tgt.mount, "volume", "")
    try:
        st = os.stat(volume)
        vol: tuple = ("volume", st.st_dev, st.st_ino)
    except (OSError, ValueError):
        vol = ("mount", getattr(getattr(tgt, "mount", None), "mountpoint", volume))
    return vol, tgt.pfs


def _where(tgt: Target) -> str:
    volume = tgt.volume if isinstance(tgt, Unmounted) else getattr(tgt.mount, "volume", "")
    return f" of {volume}" if volume else ""


def _within(path: str, directory: str) -> bool:
    if ".." in path.split("/"):
        return False
    norm, base = os.path.normpath(path), os.path.normpath(directory)
    return norm == base or norm.startswith(base.rstrip("/") + "/")


# -- parser ---------------------------------------------------------------------------------

_size_arg = argtype(parse_size)  # -b/-S, and the service config's bwlimit/chunk_size
_seconds_arg = argtype(parse_duration, what="delay")


def _tid_arg(text: str) -> int:
    try:
        return pfs_ops.parse_tid(text)
    except HammerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mirror_opts(p: argparse.ArgumentParser, *, remote: bool = True) -> None:
    p.add_argument("-v", dest="verbosity", action="count", default=0,
                   help="more output (a line per batch)")
    p.add_argument("-q", dest="verbosity", action="store_const", const=-1,
                   help="no progress output")
    p.add_argument("-b", dest="bwlimit", type=_size_arg, metavar="BW",
                   help="bandwidth cap in bytes per second (K, M, G suffixes: 10m, 1.5M)")
    p.add_argument("-S", dest="chunk_size", type=_size_arg, default=64 << 20, metavar="SIZE",
                   help="cut the initial bulk copy into batches of about SIZE (default 64m)")
    if remote:
        p.add_argument("-p", dest="port", type=int, metavar="PORT",
                       help="ssh port of a remote [user@]host:PATH side (ssh -p)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
    p = sub.add_parser("pfs-status", help="show the PFS descriptor of mounts/PFS softlinks")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="mount roots, PFS softlinks or unmounted VOLUME[:PFS]s")
    add_volume_args(p)
    p.set_defaults(func=cmd_pfs_status)

    for name, fn, helptext in (
            ("pfs-master", cmd_pfs_master, "create a master PFS (and its softlink)"),
            ("pfs-slave", cmd_pfs_slave,
             "create a slave PFS: pfs-slave PATH shared-uuid=UUID [label=...]")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("path", metavar="PATH",
                       help="the new PFS softlink inside a mount (e.g. MNT/pfs/NAME), or "
                       "VOLUME[:PFS] of an unmounted volume")
        p.add_argument("options", nargs="*", metavar="NAME=VALUE",
                       help="label=TEXT, shared-uuid=UUID (slaves), prune-min=, snapshots=")
        add_volume_args(p)
        p.set_defaults(func=fn)

    p = sub.add_parser("pfs-update", help="change PFS fields (label=, prune-min=, ...)")
    p.add_argument("path", metavar="PATH",
                   help="a mount root, PFS softlink or unmounted VOLUME[:PFS]")
    p.add_argument("options", nargs="+", metavar="NAME=VALUE",
                   help="label=TEXT, prune-min=DURATION, snapshots=DIR")
    add_volume_args(p)
    p.set_defaults(func=cmd_pfs_update)

    for name, fn, helptext in (
            ("pfs-upgrade", cmd_pfs_upgrade,
             "make a slave a master (rolls back to its sync-end-tid first)"),
            ("pfs-downgrade", cmd_pfs_downgrade, "make a master a slave"),
            ("pfs-destroy", cmd_pfs_destroy, "remove a PFS and all its records")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("path", metavar="PATH",
                       help="a mount root, PFS softlink or unmounted VOLUME[:PFS]")
        add_volume_args(p)
        p.set_defaults(func=fn, options=[])

    for name, fn in (("mirror-read", cmd_mirror_read),
                     ("mirror-read-stream", cmd_mirror_read_stream)):
        p = sub.add_parser(name, help="write a mirror stream of PATH to stdout")
        p.add_argument("path", metavar="PATH",
                       help="the master: a mount root, PFS softlink or VOLUME[:PFS]")
        p.add_argument("begin_tid", nargs="?", type=_tid_arg, default=1, metavar="BEGIN-TID",
                       help="send only changes after this TID (default: everything)")
        p.add_argument("-2", dest="two_way", action="store_true",
                       help="two-way protocol: start after the target's sync point")
        p.add_argument("--stream", action="store_true", help="keep following commits")
        _mirror_opts(p)
        add_volume_args(p)
        p.set_defaults(func=fn)

    p = sub.add_parser(
        "mirror-fetch", help="serve record versions of PATH to a replica repairing itself",
        description="Answer requests for record versions of the PFS at PATH on stdin/stdout "
        "(run over ssh by `hammer scrub --from` and `hammer mount --heal-from` on a damaged "
        "replica of it; `hammer ssh-remote mirror-read DIR` allows it).")
    p.add_argument("path", metavar="PATH", help="a mount root, PFS softlink or VOLUME[:PFS]")
    add_volume_args(p)
    p.set_defaults(func=cmd_mirror_fetch)

    p = sub.add_parser("mirror-write", help="apply a mirror stream from stdin to a slave")
    p.add_argument("path", metavar="PATH",
                   help="the slave: a PFS softlink inside a mount or VOLUME:PFS")
    p.add_argument("-2", dest="two_way", action="store_true", help="two-way protocol")
    _mirror_opts(p)
    add_volume_args(p)
    p.set_defaults(func=cmd_mirror_write)

    p = sub.add_parser("mirror-dump", help="print a mirror stream read from stdin")
    p.set_defaults(func=cmd_mirror_dump)

    for name, fn, helptext in (
            ("mirror-copy", cmd_mirror_copy, "bring a slave up to date with its master"),
            ("mirror-stream", cmd_mirror_stream,
             "keep a slave following its master continuously")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("source", metavar="SRC",
                       help="the master: mount root, PFS softlink, VOLUME[:PFS] or "
                       "[user@]host:PATH")
        p.add_argument("target", metavar="DST",
                       help="the slave: PFS softlink, VOLUME:PFS or [user@]host:PATH")
        _mirror_opts(p)
        p.add_argument("--source-key-file", metavar="FILE",
                       help="passphrase file of SRC when it is an unmounted encrypted volume "
                       "(overrides --key-file for SRC)")
        p.add_argument("--target-key-file", metavar="FILE",
                       help="passphrase file of DST when it is an unmounted encrypted volume "
                       "(overrides --key-file for DST)")
        if name == "mirror-stream":
            p.add_argument("--reconnect-delay", type=_seconds_arg, default=5.0, metavar="SECS",
                           help="pause before reconnecting after the link or an end dropped "
                           "(default 5)")
            p.add_argument("--give-up", type=_seconds_arg, default=60.0, metavar="SECS",
                           help="stop when both ends are local and gone (neither mounted nor "
                           "a volume) for SECS (default 60; 0: never)")
        add_volume_args(p, key_file_help="passphrase file of every unmounted encrypted "
                        "volume the command opens (SRC and DST alike; '-' reads stdin); "
                        "mounted or remote sides need none")
        p.set_defaults(func=fn)

    p = sub.add_parser("ssh-remote", help="authorized_keys forced command restricting a key "
                                          "to mirroring one path")
    p.add_argument("command_name", metavar="COMMAND", choices=sorted(REMOTE_ALLOWED),
                   help="the one command the key may run: mirror-read or mirror-write")
    p.add_argument("dir", metavar="DIR", help="the paths it may name: DIR and below")
    p.set_defaults(func=cmd_ssh_remote)
