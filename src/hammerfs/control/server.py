"""Control server: runs inside the mount process (see the package docstring for the protocol)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hammerfs.control.runtime import ensure_runtime_dir, remove_files, runtime_dir, write_json
from hammerfs.errors import HammerError

__all__ = ["ControlContext", "ControlServer", "mount_key", "runtime_dir"]

log = logging.getLogger("hammerfs.control")

Handler = Callable[["ControlContext", dict, "socket.socket | None"], dict]
MAX_HEADER = 1 << 20
# The FUSE subtype of every hammerfs mount: /proc/self/mountinfo shows it as fuse.hammerfs,
# which is how a client tells a real mount from a forged registration.
SUBTYPE = "hammerfs"
FSTYPE = f"fuse.{SUBTYPE}"


def mount_key(mountpoint: str) -> str:
    """The name of a mount's files in the runtime directory (``<key>.sock`` ...)."""
    return hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:20]


def runtime_files(mountpoint: str, directory: str | None = None) -> dict[str, str]:
    """The runtime files of the mount on ``mountpoint`` (a realpath)."""
    base = os.path.join(directory or runtime_dir(), mount_key(mountpoint))
    return {"socket": base + ".sock", "info": base + ".json", "log": base + ".log",
            "oldlog": base + ".log.1"}


@dataclass
class ControlContext:
    store: Any
    ns: Any
    fs: Any
    pfs: int
    mountpoint: str
    volume: str
    lock: threading.RLock = field(default_factory=threading.RLock)
    extra: dict = field(default_factory=dict)
    # the FUSE adapter (``begin_change() -> mark``, ``end_change(mark)``): after an op it
    # invalidates the kernel's caches of whatever the op changed behind the kernel
    changes: Any = None
    # FUSE requests served and failed, by type: () -> {"requests": {op: n}, "errors": [[op, errno, n], ...]}
    fuse_requests: Callable[[], dict] | None = None


def read_line(conn: socket.socket) -> bytes:
    """One header line, read byte by byte so that raw stream bytes after it stay unread."""
    buf = bytearray()
    while True:
        b = conn.recv(1)
        if not b:
            break
        if b == b"\n":
            return bytes(buf)
        buf += b
        if len(buf) > MAX_HEADER:
            raise HammerError("control header too long")
    if buf:
        raise HammerError("control connection closed in the middle of a header")
    return b""


class BadRequest(HammerError):
    """A control request that is not ``{"op": str, "args": {...}, "stream": bool}``."""

    errno = 22


def parse_request(line: bytes) -> tuple[str, dict, bool]:
    """(op, args, stream) of one request line; BadRequest for anything else."""
    try:
        request = json.loads(line or b"{}")
    except (ValueError, RecursionError):
        raise BadRequest("control request is not JSON") from None
    if not isinstance(request, dict):
        raise BadRequest("control request is not a JSON object")
    op, args, stream = request.get("op"), request.get("args"), request.get("stream", False)
    if not isinstance(op, str):
        raise BadRequest("control request names no op")
    if args is None:
        args = {}
    if not isinstance(args, dict) or not isinstance(stream, bool):
        raise BadRequest("control request: args must be an object, stream a boolean")
    return op, args, stream


_KINDS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "str?": lambda v: v is None or isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "bool?": lambda v: v is None or isinstance(v, bool),
    "seconds?": lambda v: v is None or (type(v) is int and 0 <= v < 1 << 32),
    "percent?": lambda v: v is None or (type(v) is int and 1 <= v <= 100),
    "tid": lambda v: type(v) is int and 0 <= v < 1 << 64,
    "tid?": lambda v: v is None or (type(v) is int and 0 <= v < 1 << 64),
    "int?": lambda v: v is None or (type(v) is int and 0 <= v < 1 << 63),
    "key?": lambda v: v is None or (isinstance(v, list) and len(v) <= 4 and all(
        type(x) is int and 0 <= x < 1 << 64 for x in v)),
}
_KIND_NAMES = {"str": "a string", "str?": "a string or null", "bool": "a boolean",
               "bool?": "a boolean or null",
               "seconds?": "whole seconds (0 to 2^32-1) or null",
               "percent?": "a percentage (1 to 100) or null",
               "tid": "a TID (0 to 2^64-1)", "tid?": "a TID (0 to 2^64-1) or null",
               "int?": "a number (0 to 2^63-1) or null",
               "key?": "a list of up to 4 integers (0 to 2^64-1) or null"}


def takes(*, required: tuple[str, ...] = (), **kinds: str) -> Callable[[Handler], Handler]:
    """Declare an op's arguments (name=kind, kinds: str, str?, bool, bool?, seconds?,
    percent?, tid, tid?, int?, key?): the
    server refuses a request whose arguments do not fit before the op runs."""
    def mark(handler: Handler) -> Handler:
        handler.arg_kinds = kinds  # type: ignore[attr-defined]
        handler.required_args = required  # type: ignore[attr-defined]
        return handler
    return mark


def streamed(conn: socket.socket | None, op: str) -> socket.socket:
    """The connection of a streaming op; a request for it without "stream" is refused."""
    if conn is None:
        raise BadRequest(f"control op {op} is a streaming op (send it with stream: true)")
    return conn


def check_args(op: str, handler: Handler, args: dict) -> None:
    """BadRequest unless ``args`` fit what ``handler`` declared with ``takes`` (arguments
    it does not declare are ignored, as the ops always did)."""
    kinds = getattr(handler, "arg_kinds", None)
    if kinds is None:
        return
    for name in getattr(handler, "required_args", ()):
        if name not in args:
            raise BadRequest(f"control op {op}: argument {name!r} is missing")
    for name, value in args.items():
        kind = kinds.get(name)
        if kind is not None and not _KINDS[kind](value):
            raise BadRequest(f"control op {op}: argument {name!r} must be {_KIND_NAMES[kind]}")


def send_json(conn: socket.socket, obj: dict) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


class ControlServer:
    """Serves ``ops`` on a Unix socket registered for ``ctx.mountpoint``."""

    def __init__(self, ctx: ControlContext, ops: dict[str, Handler], *,
                 info: dict | None = None):
        self.ctx = ctx
        self.ops = dict(ops)
        self.directory = runtime_dir()
        files = runtime_files(ctx.mountpoint, self.directory)  # mountpoint: a realpath
        self.socket_path = files["socket"]
        self.info_path = files["info"]
        self._info = dict(info or {})
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self.directory = ensure_runtime_dir()
        remove_files(self.socket_path)  # a dead mount's, in our own 0700 directory
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no chmod by path afterwards (it would follow links)
        try:
            sock.bind(self.socket_path)  # never follows a symlink: EADDRINUSE instead
        finally:
            os.umask(old)
        sock.listen(16)
        self._sock = sock
        # no realpath() here: the mount may be waiting for us in FUSE init (deadlock)
        info = {"mountpoint": self.ctx.mountpoint, "socket": self.socket_path,
                "pfs": self.ctx.pfs, "volume": self.ctx.volume, "pid": os.getpid(),
                **self._info}
        write_json(self.info_path, info)
        self._thread = threading.Thread(target=self._serve, name="hammerfs-control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._sock is None:
            return  # never started: the files are not ours (maybe an earlier mount's)
        remove_files(self.info_path, self.socket_path)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True,
                             name="hammerfs-control-conn").start()

    def _after_op(self) -> None:
        """Ops may change records behind the filesystem's caches (mirror-write, PFS
        upgrade/downgrade): drop them after every op, they refill on demand."""
        forget = getattr(self.ctx.ns, "forget", None)
        if forget is not None:
            with self.ctx.lock:
                forget()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (os.geteuid(), 0)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                line = read_line(conn)  # read first: the refusal must not race the request
                if not self._peer_allowed(conn):
                    send_json(conn, {"ok": False, "error": "permission denied", "errno": 1})
                    return
                op, args, stream = parse_request(line)
                handler = self.ops.get(op)
                if handler is None:
                    send_json(conn, {"ok": False, "error": f"unknown control op {op!r}",
                                     "errno": 22})
                    return
                check_args(op, handler, args)
                mark = self.ctx.changes.begin_change() if self.ctx.changes else None
                try:
                    if stream:
                        send_json(conn, {"ok": True, "stream": True})
                        handler(self.ctx, args, conn)
                        return
                    result = handler(self.ctx, args, None)
                finally:
                    self._after_op()
                    if mark is not None:
                        self.ctx.changes.end_change(mark)
                send_json(conn, {"ok": True, "result": result or {}})
            except (HammerError, OSError, ValueError) as exc:
                if not isinstance(exc, HammerError):
                    log.warning("control request failed: %s", exc)
                with contextlib.suppress(OSError):
                    send_json(conn, {"ok": False, "error": str(exc),
                                     "errno": getattr(exc, "errno", None)})
            except Exception as exc:  # a bug in a handler must not kill the mount
                log.exception("control op crashed")
                with contextlib.suppress(OSError):
                    send_json(conn, {"ok": False, "error": f"internal error: {exc}",
                                     "errno": 5})
