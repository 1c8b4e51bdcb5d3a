"""Running a source and a target in one process, connected by a socket pair (tests, and
mirror-copy between two volumes this process opened itself)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO

from hammerfs.mirror.reader import Source, SourceOptions
from hammerfs.mirror.writer import Target, WriteResult
from hammerfs.store.api import RecordStore


@contextlib.contextmanager
def channel(sock: socket.socket) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Buffered reader and writer on ``sock``; closing never raises (the peer may be gone,
    which the session has already reported)."""
    inp, out = sock.makefile("rb"), sock.makefile("wb")
    try:
        yield inp, out
    finally:
        for f in (out, inp, sock):
            with contextlib.suppress(OSError, ValueError):
                f.close()


def serve_source(store: RecordStore, pfs: int, sock: socket.socket, opts: SourceOptions,
                 ) -> int:
    """Run a source session on ``sock`` (two-way when ``opts.two_way``); closes it."""
    with channel(sock) as (inp, out):
        return Source(store, pfs, inp if opts.two_way else None, out, opts).run()


def serve_target(store: RecordStore, pfs: int, sock: socket.socket, two_way: bool = True,
                 ) -> WriteResult:
    with channel(sock) as (inp, out):
        return Target(store, pfs, inp, out if two_way else None).run()


class Thread(threading.Thread):
    """A thread that keeps its target's result or exception for the caller."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # handed to the joiner
            self.error = exc

    def outcome(self, timeout: float | None = None):
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def copy_local(src: RecordStore, src_pfs: int, dst: RecordStore, dst_pfs: int,
               opts: SourceOptions | None = None) -> WriteResult:
    """Two-way mirror-copy between two stores of this process."""
    opts = opts or SourceOptions()
    opts.two_way = True
    a, b = socket.socketpair()
    source = Thread(serve_source, src, src_pfs, a, opts)
    source.start()
    try:
        result = serve_target(dst, dst_pfs, b)
    finally:
        source.join(30)
    if source.error is not None:
        raise source.error
    return result


def write_stream(store: RecordStore, pfs: int, inp: BinaryIO) -> WriteResult:
    """One-way mirror-write from a byte stream."""
    return Target(store, pfs, inp, None).run()


def read_stream(store: RecordStore, pfs: int, out: BinaryIO, begin_tid: int = 1,
                chunk_bytes: int = 64 << 20) -> int:
    """One-way mirror-read into a byte stream."""
    opts = SourceOptions(begin_tid=begin_tid, chunk_bytes=chunk_bytes)
    return Source(store, pfs, None, out, opts).run()
