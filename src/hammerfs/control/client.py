"""Control client: find the mount owning a path and talk to its process."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from hammerfs.control.chunks import RemoteError, recv_chunks, remote_error
from hammerfs.control.server import read_line, runtime_dir
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
    if pid <= 0:
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


def registered_mounts() -> list[dict]:
    """Every live mount registered in the runtime directory."""
    mounts = []
    for path in glob.glob(os.path.join(runtime_dir(), "*.json")):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                info = json.load(f)
            if pid_alive(int(info.get("pid", 0))):
                mounts.append(info)
    return mounts


def find_mount(path: str) -> MountInfo | None:
    """The hammerfs mount that ``path`` is inside of, or None."""
    real = os.path.realpath(os.path.abspath(path))
    best = None
    for info in registered_mounts():
        mp = info["mountpoint"]
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(best["mountpoint"])):
            best = info
    if best is None:
        return None
    mp = best["mountpoint"]
    rel = os.path.relpath(real, mp) if real != mp else ""
    return MountInfo(mp, best["socket"], int(best.get("pfs", 0)), "" if rel == "." else rel,
                     best.get("volume", ""), int(best.get("pid", 0)))


class ControlClient:
    def __init__(self, socket_path: str, timeout: float | None = 600):
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise HammerError(f"cannot reach the mount process ({self.socket_path}): "
                              f"{exc.strerror or exc}") from None
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
