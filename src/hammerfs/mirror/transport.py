"""Transports: byte channels to a mirror endpoint, the ssh command line, and the relay that
joins a source channel to a target channel (with progress, a bandwidth cap and error
reporting).

Every endpoint, whatever it is (a volume this process opened, a mount's control socket, an
ssh child), is a ``Channel``: bytes from the endpoint on ``rfile``, bytes to it on ``wfile``.
``mirror-copy`` is then one relay between two channels.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from hammerfs.errors import HammerError
from hammerfs.mirror import stream as s

_REMOTE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^/:\s]+):(?P<path>.+)$")


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    user: str | None
    host: str
    path: str


def parse_remote(spec: str) -> RemoteSpec | None:
    """``[user@]host:PATH`` -> RemoteSpec, or None for a local path.  A local file named
    like the host part (``vol.img:1`` is VOLUME:PFS) wins, as does anything with a slash
    before the colon.  Neither is a Ceph or S3 volume (rbd:POOL/IMAGE, s3://...)."""
    from hammerfs.blockdev.spec import is_remote
    m = _REMOTE.match(spec)
    if m is None or is_remote(spec) or os.path.exists(m["host"]) or (m["user"] and os.path.exists(
            f"{m['user']}@{m['host']}")):
        return None
    return RemoteSpec(m["user"], m["host"], m["path"])


def ssh_argv(remote: RemoteSpec, hammer_args: list[str], port: int | None = None,
             ) -> list[str]:
    """The command HAMMER runs: ``ssh [-p port] [-l user] host hammer ARGS``.

    ``$HAMMER_RSH`` replaces ``ssh`` (it may carry options); ``$HAMMER_REMOTE_CMD`` replaces
    the remote ``hammer`` (e.g. ``python3 -m hammerfs``)."""
    rsh = shlex.split(os.environ.get("HAMMER_RSH", "ssh"))
    remote_cmd = os.environ.get("HAMMER_REMOTE_CMD", "hammer")
    argv = [*rsh]
    if port:
        argv += ["-p", str(port)]
    if remote.user:
        argv += ["-l", remote.user]
    command = " ".join([remote_cmd, *(shlex.quote(a) for a in hammer_args)])
    return [*argv, remote.host, command]


class Channel:
    """A duplex byte channel to one mirror endpoint (either direction may be absent)."""

    rfile: BinaryIO | None
    wfile: BinaryIO | None

    def close_write(self) -> None:
        """Signal EOF to the endpoint."""

    def finish(self, timeout: float | None = None) -> None:
        """Wait for the endpoint to end; raise if it failed in a way frames did not say."""

    def abort(self) -> None:
        """Tear the endpoint down at once (our side failed)."""


class SocketChannel(Channel):
    """A connected socket (a mount's control stream, or our end of a socket pair)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=0)
        self.wfile = sock.makefile("wb", buffering=0)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def finish(self, timeout: float | None = None) -> None:
        self._close()

    def _close(self) -> None:
        for f in (self.rfile, self.wfile, self.sock):
            with contextlib.suppress(OSError):
                f.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._close()


class ThreadChannel(SocketChannel):
    """A session run in a thread of this process on the other end of a socket pair."""

    def __init__(self, session: Callable[[socket.socket], object]):
        ours, theirs = socket.socketpair()
        super().__init__(ours)
        self.error: BaseException | None = None
        self.result: object = None
        self.thread = threading.Thread(target=self._run, args=(session, theirs), daemon=True)
        self.thread.start()

    def _run(self, session: Callable[[socket.socket], object], sock: socket.socket) -> None:
        try:
            self.result = session(sock)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
        super().finish()
        if self.error is not None:
            raise self.error


def _die_with_parent() -> None:
    """Linux PR_SET_PDEATHSIG: if the command is killed, its forked reader goes too (and
    releases the volume lock at once)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class ForkChannel(SocketChannel):
    """A session run in a forked child on the other end of a socket pair: the source and
    the target of a copy between two local volumes then run in parallel (not under one
    interpreter lock).  The child reports failures as ERROR frames; its exit status only
    says whether it failed."""

    def __init__(self, session: Callable[[socket.socket], object]):
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: run the session, never return into the caller
            code = 0
            try:
                _die_with_parent()
                # Ctrl-C reaches the whole process group: the parent decides what it means
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                ours.close()
                session(theirs)
            except HammerError:
                code = 1
            except BaseException as exc:  # not a user error: say what it was, briefly
                print(f"hammer: mirror source failed: {exc!r}", file=sys.stderr)
                code = 2
            finally:
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        super().__init__(ours)
        self.pid = pid

    def finish(self, timeout: float | None = None) -> None:
        self._close()
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise s.StreamError(f"mirror source process failed (exit status {code})")

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        super().abort()


class ProcessChannel(Channel):
    """A child process (ssh, or $HAMMER_RSH) speaking the protocol on stdin/stdout; its
    stderr goes to ours so remote messages reach the user."""

    def __init__(self, argv: list[str]):
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         bufsize=0)
        except OSError as exc:
            raise HammerError(f"cannot run {argv[0]}: {exc.strerror}") from None
        self.argv = argv
        self.rfile = self.proc.stdout
        self.wfile = self.proc.stdin

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def finish(self, timeout: float | None = None) -> None:
        self.close_write()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.abort()
            code = self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        if code != 0:
            raise s.StreamError(f"remote command failed (exit status {code}): "
                                f"{shlex.join(self.argv)}")

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


# -- the relay -------------------------------------------------------------------------------

@dataclass
class Meter:
    """What the relay saw go from the source to the target."""

    bytes: int = 0
    records: int = 0
    batches: int = 0
    synced_tid: int = 0
    estimate_bytes: int = 0
    estimate_records: int = 0
    estimate_at: float = 0.0  # when the first ESTIMATE came, and the bytes seen by then:
    estimate_base: int = 0  # the ETA's rate is measured from there, not from the start
    start: float = field(default_factory=time.monotonic)
    peer_error: s.PeerError | None = None
    terminated: bool = False  # a TERM went through: the session ended cleanly


class Progress:
    """Progress on a tty (bytes, records, rate, ETA); -v adds a line per batch."""

    def __init__(self, meter: Meter, verbosity: int, out=None,
                 on_flowing: Callable[[], None] | None = None):
        self.meter = meter
        self.verbosity = verbosity
        self.on_flowing = on_flowing  # called once, when the source is past the handshake
        self.out = out or sys.stderr
        self.tty = verbosity >= 0 and self.out.isatty()
        self._last = 0.0

    def frame(self, ftype: int) -> None:
        if self.on_flowing is not None and ftype in (s.ESTIMATE, s.BATCH, s.IDLE):
            # the source accepted the target's handshake (its PFS, shared uuid) and works
            flowing, self.on_flowing = self.on_flowing, None
            flowing()
        if self.verbosity > 0 and ftype == s.SYNC:
            self._line(f"synced to 0x{self.meter.synced_tid:016x} "
                       f"({self.meter.records} records, {_size(self.meter.bytes)})")
        if self.tty and time.monotonic() - self._last >= 0.5:
            self._last = time.monotonic()
            self.out.write("\r" + self.status() + "\033[K")
            self.out.flush()

    def status(self, eta: bool = True) -> str:
        m = self.meter
        now = time.monotonic()
        rate = m.bytes / max(1e-6, now - m.start)
        text = f"mirror: {_size(m.bytes)}, {m.records} records, {_size(rate)}/s"
        if eta and m.estimate_bytes:
            text += f", ETA {_eta(m, now)}"
        return text

    def _line(self, text: str) -> None:
        self.out.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        if self.verbosity > 0 or self.tty:
            self._line(self.status(eta=False).replace("mirror:", "mirror done:", 1))


ETA_WARMUP = 1.0  # seconds of data after the ESTIMATE before an ETA is shown


def _eta(m: Meter, now: float) -> str:
    """Time left at the rate data has flowed since the ESTIMATE; ``--:--`` until that rate
    means something (the first second, before which a handful of header bytes over the
    session's set-up time would promise months)."""
    since, moved = now - m.estimate_at, m.bytes - m.estimate_base
    if not m.estimate_at or since < ETA_WARMUP or moved <= 0:
        return "--:--"
    left = int(max(0, m.estimate_bytes - m.bytes) * since / moved)
    hours, rest = divmod(left, 3600)
    return (f"{hours}:" if hours else "") + \
        (f"{rest // 60:02d}" if hours else f"{rest // 60}") + f":{rest % 60:02d}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class Throttle:
    """-b: at most ``rate`` bytes per second, counted over one-second windows."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self.window = time.monotonic()
        self.used = 0

    def take(self, n: int) -> None:
        if not self.rate:
            return
        self.used += n
        while self.used >= self.rate:
            wait = self.window + 1.0 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.window = time.monotonic()
            self.used -= self.rate


def pump_frames(src: BinaryIO, dst: BinaryIO | None, meter: Meter | None = None,
                progress: Progress | None = None, throttle: Throttle | None = None,
                side: str = "mirror source") -> None:
    """Copy frames from ``src`` to ``dst`` until EOF, looking at their headers on the way
    (progress, ERROR frames).  Data is not re-verified here: the target checks every frame.
    ``dst`` None discards (the target's acknowledgements in one-way relays)."""
    while True:
        head = _read(src, s.HEADER_SIZE)
        if not head:
            return
        if len(head) < s.HEADER_SIZE or int.from_bytes(head[:4], "little") != s.FRAME_MAGIC:
            _write(dst, head)
            _copy_raw(src, dst)  # not frames: let the target reject it
            return
        ftype = int.from_bytes(head[4:6], "little")
        length = int.from_bytes(head[12:16], "little")
        payload = _read(src, min(length, s.MAX_PAYLOAD + 1))
        if throttle:
            throttle.take(len(head) + len(payload))
        if meter is not None:  # before passing it on: the relay reads `terminated` early
            _account(meter, ftype, payload, len(head) + len(payload), side)
        _write(dst, head + payload)
        if progress is not None:
            progress.frame(ftype)
        if len(payload) < length:
            return


def _account(meter: Meter, ftype: int, payload: bytes, size: int, side: str) -> None:
    meter.bytes += size
    frame = s.Frame(ftype, payload)
    try:
        if ftype in (s.REC, s.PASS):
            meter.records += 1
        elif ftype == s.SYNC:
            meter.batches += 1
            meter.synced_tid = s.decode_sync(frame)[0]
        elif ftype == s.UPDATE:
            meter.synced_tid = s.decode_tid(frame)
        elif ftype == s.ESTIMATE:
            total, records, _beg, _end = s.decode_estimate(frame)
            if not meter.estimate_at:
                meter.estimate_at, meter.estimate_base = time.monotonic(), meter.bytes
            meter.estimate_bytes = meter.bytes + total
            meter.estimate_records = meter.records + records
        elif ftype == s.TERM:
            meter.terminated = True
        elif ftype == s.ERROR and meter.peer_error is None:
            meter.peer_error = s.decode_error(frame, side)
    except s.StreamError:
        pass  # a damaged frame: the target will say so


def _read(f: BinaryIO, n: int) -> bytes:
    chunks, need = [], n
    while need:
        try:
            got = f.read(need)
        except (OSError, ValueError):
            got = b""
        if not got:
            break
        chunks.append(got)
        need -= len(got)
    return b"".join(chunks)


def _write(f: BinaryIO | None, data: bytes) -> None:
    if f is None:
        return
    try:
        f.write(data)
        f.flush()
    except (OSError, ValueError) as exc:
        raise s.StreamClosed(f"mirror peer went away: {exc}") from None


def _copy_raw(src: BinaryIO, dst: BinaryIO | None) -> None:
    while True:
        data = _read(src, 1 << 16)
        if not data:
            return
        _write(dst, data)


def relay_raw(a: Channel, b: Channel) -> None:
    """Join two channels byte for byte, both ways, until ``a`` ends (mirror-fetch through
    a mount for ssh: the protocol is the endpoints' business)."""
    def pump(src: BinaryIO, dst: BinaryIO) -> None:
        """Whatever arrives, passed on at once (a request waits for its answer)."""
        with contextlib.suppress(OSError, ValueError):
            while data := os.read(src.fileno(), 1 << 16):
                dst.write(data)
                dst.flush()

    def back() -> None:
        pump(b.rfile, a.wfile)
        a.close_write()
    thread = threading.Thread(target=back, daemon=True)
    thread.start()
    pump(a.rfile, b.wfile)
    b.close_write()
    a.finish(timeout=5)


@dataclass
class RelayResult:
    forward: Meter
    back: Meter


def relay(source: Channel, target: Channel, *, verbosity: int = 0,
          bwlimit: int | None = None, two_way: bool = True,
          on_flowing: Callable[[], None] | None = None) -> RelayResult:
    """Join a source and a target; returns when both ends are done.  The target's frames
    (acknowledgements, ERROR) go back to the source in two-way mode and are only looked at
    otherwise.  ``on_flowing`` is called once the source sends data (or its idle beat)
    after the handshake: the session is established.  Raises the most telling error: an ERROR frame from either side, else a
    failed endpoint, else a broken link."""
    forward, back = Meter(), Meter()
    progress = Progress(forward, verbosity, on_flowing=on_flowing)
    throttle = Throttle(bwlimit)
    errors: list[BaseException] = []
    back_to = source.wfile if two_way else None
    forward_done = threading.Event()

    def upstream() -> None:
        try:
            pump_frames(target.rfile, back_to, back, side="mirror target")
        except BaseException as exc:
            errors.append(exc)
        finally:
            if back_to is not None:
                source.close_write()
            if not forward_done.is_set() and not forward.terminated:
                # The target went away first (a dropped link): do not wait for the source's
                # next frame to find out.
                source.abort()

    back_thread = None
    if target.rfile is not None:
        back_thread = threading.Thread(target=upstream, daemon=True)
        back_thread.start()
    try:
        pump_frames(source.rfile, target.wfile, forward, progress, throttle)
    except BaseException as exc:
        errors.append(exc)
    finally:
        forward_done.set()
        target.close_write()
    if back_thread is not None:
        back_thread.join()
    interrupted = next((e for e in errors if isinstance(e, KeyboardInterrupt)), None)
    if interrupted is None:
        progress.done()
    failures: list[BaseException] = []
    for chan in (source, target):
        try:
            chan.finish(timeout=60)
        except BaseException as exc:
            failures.append(exc)
    if interrupted is not None:  # Ctrl-C: the ends failing because of it say nothing new
        raise interrupted
    peer = back.peer_error or forward.peer_error
    if peer is not None:
        raise peer
    for exc in failures + errors:
        raise exc
    if not forward.terminated:
        raise s.StreamClosed("mirror link dropped before the end of the stream")
    return RelayResult(forward, back)
