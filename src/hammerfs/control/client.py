"""Control client: find the mount owning a path and talk to its process."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hammerfs.control.chunks import RemoteError, recv_chunks, remote_error
from hammerfs.control.runtime import existing_runtime_dir, read_json, runtime_dir
from hammerfs.control.server import FSTYPE, read_line
from hammerfs.errors import HammerError

__all__ = ["ControlClient", "MountInfo", "RemoteError", "find_mount", "registered_mounts"]


@dataclass(frozen=True, slots=True)
class MountInfo:
    mountpoint: str
    socket_path: str
    pfs: int
    relpath: str  # below the mount root, "" for the root itself
    volume: str = ""
    pid: int = 0


def pid_alive(pid: int) -> bool:
    """A running process; an exited one its parent has not reaped yet counts as gone."""
    if not 0 < pid < 1 << 22:  # the kernel's PID_MAX_LIMIT
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class ForgedMount(HammerError):
    """A mount registration or control socket that is not what it claims to be."""


def _unescape(field: bytes) -> str:
    """/proc/self/mountinfo writes space, tab, newline and backslash as a backslash and three
    octal digits."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


@dataclass(frozen=True, slots=True)
class KernelMount:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    options: dict[str, str]
    mount_id: int = -1  # as /proc/PID/fdinfo/FD's mnt_id
    device: tuple[int, int] = (0, 0)  # major, minor: as /proc/PID/maps's dev


def kernel_mounts() -> list[KernelMount]:
    """Every mount of this process's mount namespace, in mount order."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        opts = dict(o.partition("=")[::2] for o in _unescape(rest[2]).split(","))
        major, _, minor = fields[2].partition(b":")
        try:
            ident, device = int(fields[0]), (int(major), int(minor))
        except ValueError:
            continue
        mounts.append(KernelMount(_unescape(fields[4]), _unescape(rest[0]),
                                  _unescape(rest[1]), opts, ident, device))
    return mounts


def kernel_mount(mountpoint: str) -> KernelMount | None:
    """The topmost mount on ``mountpoint`` in this process's mount namespace, if any."""
    found = None
    for km in kernel_mounts():
        if km.mountpoint == mountpoint:
            found = km
    return found


def registration_problem(info: dict) -> str | None:
    """Why ``info`` is not a live hammerfs FUSE mount at its mountpoint (None: it is)."""
    mp = info.get("mountpoint")
    if not isinstance(mp, str) or not os.path.isabs(mp):
        return "it names no absolute mount point"
    km = kernel_mount(mp)
    if km is None:
        return f"nothing is mounted on {mp}"
    if km.fstype != FSTYPE:
        return f"{mp} is a {km.fstype} mount, not {FSTYPE}"
    if km.options.get("user_id") not in (str(os.geteuid()), "0"):
        return f"the FUSE mount on {mp} belongs to uid {km.options.get('user_id')}"
    return None


def registered_mounts() -> list[dict]:
    """Every live mount registered in the runtime directory whose mount point really is a
    hammerfs FUSE mount (stale and forged registrations are left out)."""
    return [info for info in _live_registrations() if registration_problem(info) is None]


def _live_registrations() -> list[dict]:
    directory = existing_runtime_dir()
    if directory is None:
        return []
    mounts = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*.json")):
        with contextlib.suppress(OSError, ValueError, HammerError):
            info = read_json(path)
            if _well_formed(info) and pid_alive(info["pid"]):
                info["registration"] = path
                mounts.append(info)
    return mounts


def _well_formed(info: dict) -> bool:
    """The fields a registration must have, with their types (anything else is ignored)."""
    return (type(info.get("pid")) is int and type(info.get("pfs", 0)) is int
            and isinstance(info.get("mountpoint"), str)
            and os.path.isabs(info["mountpoint"]) and isinstance(info.get("socket"), str)
            and isinstance(info.get("volume", ""), str))


def not_mounted_hint(path: str | None = None) -> str:
    """What a "not inside a hammerfs mount" error adds: where mounts were looked for, and
    whether ``path`` is in fact inside a hammerfs mount that is registered elsewhere."""
    where = f"mounts were looked up in the runtime directory {runtime_dir()}"
    if path is not None:
        real = os.path.realpath(os.path.abspath(path))
        inside = [km for km in kernel_mounts() if km.fstype == FSTYPE and (
            real == km.mountpoint or real.startswith(km.mountpoint.rstrip("/") + "/"))]
        if inside:
            km = max(inside, key=lambda m: len(m.mountpoint))
            return (f"{km.mountpoint} is a hammerfs mount (of uid {km.options.get('user_id')}), "
                    f"but {where} and it is not registered there: it was mounted by "
                    "another user or with another HAMMERFS_RUNTIME_DIR")
    return f"{where}; a mount made by another user or with a different " \
        "HAMMERFS_RUNTIME_DIR is not seen"


def find_mount(path: str) -> MountInfo | None:
    """The hammerfs mount that ``path`` is inside of, or None.  ForgedMount when the
    registration that claims ``path`` is not a hammerfs FUSE mount of ours."""
    real = os.path.realpath(os.path.abspath(path))
    best = None
    for info in _live_registrations():
        mp = info["mountpoint"]
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(best["mountpoint"])):
            best = info
    if best is None:
        return None
    problem = registration_problem(best)
    if problem is not None:
        raise ForgedMount(f"refusing the mount registration {best['registration']} for "
                          f"{best['mountpoint']}: {problem} (a mount being unmounted, or a "
                          f"stale or forged registration: remove the file if process "
                          f"{best['pid']} is not a hammerfs mount)")
    mp = best["mountpoint"]
    rel = os.path.relpath(real, mp) if real != mp else ""
    return mount_info(best, "" if rel == "." else rel)


def mount_info(registration: dict, relpath: str = "") -> MountInfo:
    """The MountInfo of a registration (one from ``registered_mounts``)."""
    return MountInfo(registration["mountpoint"], registration["socket"],
                     int(registration.get("pfs", 0)), relpath,
                     registration.get("volume", ""), int(registration.get("pid", 0)))


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def verify_peer(sock: socket.socket, mount: MountInfo) -> None:
    """Before a byte is sent: the socket is served by the registered mount process, which
    runs as us (or root) and owns the hammerfs FUSE mount on the registered mount point."""
    pid, uid, _gid = peer_credentials(sock)
    problem = None
    if uid not in (os.geteuid(), 0):
        problem = f"it is served by uid {uid}"
    elif pid != mount.pid:
        problem = f"it is served by pid {pid}, not by the registered mount process {mount.pid}"
    else:
        km = kernel_mount(mount.mountpoint)
        if km is None or km.fstype != FSTYPE:
            problem = f"{mount.mountpoint} is not a hammerfs FUSE mount"
        elif km.options.get("user_id") != str(uid):
            problem = (f"the FUSE mount on {mount.mountpoint} belongs to uid "
                       f"{km.options.get('user_id')}, the socket's server is uid {uid}")
    if problem:
        raise ForgedMount(f"refusing the control socket {mount.socket_path} of "
                          f"{mount.mountpoint}: {problem}")


class ControlClient:
    """Requests to one mount process.  Made with ``for_mount`` (what commands use), every
    connection is checked with ``verify_peer`` before anything is sent."""

    def __init__(self, socket_path: str, timeout: float | None = 600, *,
                 mount: MountInfo | None = None):
        self.socket_path = socket_path
        self.timeout = timeout
        self.mount = mount

    @classmethod
    def for_mount(cls, mount: MountInfo, timeout: float | None = 600) -> ControlClient:
        return cls(mount.socket_path, timeout, mount=mount)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise HammerError(f"cannot reach the mount process ({self.socket_path}): "
                              f"{exc.strerror or exc}") from None
        if self.mount is not None:
            try:
                verify_peer(sock, self.mount)
            except BaseException:
                sock.close()
                raise
        return sock

    def _request(self, op: str, args: dict, stream: bool) -> tuple[socket.socket, dict]:
        sock = self._connect()
        try:
            sock.sendall(json.dumps({"op": op, "args": args, "stream": stream}).encode()
                         + b"\n")
            line = read_line(sock)
            if not line:
                raise HammerError(f"mount process closed the connection during {op!r}")
            reply = json.loads(line)
            if not isinstance(reply, dict) or not reply.get("ok"):
                raise remote_error(reply, op)
        except ValueError:
            sock.close()
            raise HammerError(f"mount process sent a malformed reply to {op!r}") from None
        except OSError as exc:
            sock.close()
            if isinstance(exc, HammerError):
                raise
            raise HammerError(f"control op {op!r} failed: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise
        return sock, reply

    def call(self, op: str, **args) -> dict:
        """Run ``op`` in the mount process and return its result dict."""
        sock, reply = self._request(op, args, False)
        sock.close()
        result = reply.get("result") or {}
        if not isinstance(result, dict):
            raise HammerError(f"mount process sent a malformed reply to {op!r}")
        return result

    def open_stream(self, op: str, **args) -> socket.socket:
        """Start a streaming op; the returned socket then carries the op's raw bytes."""
        sock, _ = self._request(op, args, True)
        return sock

    def read_stream(self, op: str, **args) -> Iterator[bytes]:
        """The bytes of a streaming op that frames its output (``control.chunks``); a
        failure in the mount process, even after some bytes, raises its HammerError."""
        sock, _ = self._request(op, args, True)
        with sock:
            try:
                yield from recv_chunks(sock, op)
            except OSError as exc:
                if isinstance(exc, HammerError):
                    raise
                raise HammerError(f"control op {op!r} failed: {exc.strerror or exc}") from None
