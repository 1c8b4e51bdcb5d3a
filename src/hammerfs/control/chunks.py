"""Framing of a streaming control op's byte output (``read_version``), so that the client
tells data from a failure.

The server answers a streaming request with ``{"ok": true, "stream": true}`` *before* the
handler runs, and sends ``{"ok": false, ...}`` on the same socket if the handler fails
later.  Unframed, that JSON line would arrive as file contents (``hammer undo DIR`` printed
it and exited 0).  So the handler frames its bytes: ``D`` + u32 big-endian length + bytes,
repeated, then ``E`` (end, success).  Anything else where a tag is expected (the server's
JSON error line starts with ``{``), or the end of the connection before ``E``, is a failure
and becomes a ``HammerError``.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterable, Iterator

from hammerfs.errors import ErrnoError, HammerError

DATA, END = b"D", b"E"
_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 24


class RemoteError(ErrnoError):
    """An op failed inside the mount process; carries its errno when it had one."""


def remote_error(reply: object, op: str) -> HammerError:
    """The HammerError for a failure reply (or anything unexpected in its place)."""
    if not isinstance(reply, dict):
        return HammerError(f"mount process sent a malformed reply to {op!r}")
    code = reply.get("errno")
    message = reply.get("error")
    return RemoteError(code if isinstance(code, int) else None,
                       str(message) if message else f"control op {op!r} failed")


def send_frame(conn: socket.socket, data: bytes) -> None:
    for off in range(0, len(data), MAX_FRAME):
        part = data[off:off + MAX_FRAME]
        conn.sendall(DATA + _LEN.pack(len(part)) + part)


def send_end(conn: socket.socket) -> None:
    conn.sendall(END)


def send_error(conn: socket.socket, message: str, code: int | None) -> None:
    """A failure in the server's own format (a handler that must answer before it returns)."""
    conn.sendall(json.dumps({"ok": False, "error": message, "errno": code}).encode() + b"\n")


def send_chunks(conn: socket.socket, chunks: Iterable[bytes]) -> None:
    """Send ``chunks`` framed; the end marker only after the last one (the server sends
    its error line if ``chunks`` raises)."""
    for chunk in chunks:
        send_frame(conn, chunk)
    send_end(conn)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(min(n - len(buf), 1 << 20))
        if not got:
            break
        buf += got
    return bytes(buf)


def recv_chunks(sock: socket.socket, op: str) -> Iterator[bytes]:
    """The data of a framed stream; raises HammerError for a failure the server reported,
    a torn connection or bytes that are not a frame."""
    while True:
        tag = _recv_exact(sock, 1)
        if tag == END:
            return
        if tag == DATA:
            head = _recv_exact(sock, _LEN.size)
            if len(head) == _LEN.size:
                (n,) = _LEN.unpack(head)
                data = _recv_exact(sock, n) if n <= MAX_FRAME else b""
                if len(data) == n and n <= MAX_FRAME:
                    yield data
                    continue
        elif tag == b"{":
            rest = bytearray(tag)
            while len(rest) < (1 << 20) and not rest.endswith(b"\n"):
                got = sock.recv(1 << 16)
                if not got:
                    break
                rest += got
            try:
                reply = json.loads(bytes(rest))
            except ValueError:
                reply = None
            raise remote_error(reply, op)
        raise HammerError(f"the mount process broke off {op!r} (see its log)")
