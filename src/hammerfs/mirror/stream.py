"""The mirror stream wire format (documented in docs/mirror-protocol.md).

A stream is a sequence of frames.  Every frame is a fixed 24-byte little-endian header
followed by its payload::

    u32 magic (FRAME_MAGIC)   u16 type   u16 flags   u32 seq   u32 length   u64 check

``seq`` counts frames from 0 in each direction (a lost, duplicated or reordered frame is
caught at once); ``check`` is xxh3-64 over the first 16 header bytes and the payload.  The
first frame each side sends is HELLO, which carries the protocol version.

The frame check only covers the hop: a REC also carries the end-to-end checksum of its data
(``record_checksum``), taken at the source and verified by every parser of the frame, so
data damaged anywhere on the way (a relay, a buggy peer that re-frames) is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import xxhash

from hammerfs.errors import HammerError, StorageUnavailable
from hammerfs.store.format import BLOCK
from hammerfs.store.pfs import PfsData
from hammerfs.store.records import MAX_DATA, Record

FRAME_MAGIC = 0x314D4D48  # "HMM1" read as little-endian bytes
# 2: REC frames carry the end-to-end checksum of their data.  Versions are not negotiated:
# both sides must speak the same one.
PROTOCOL_VERSION = 2
HELLO_TAG = b"HAMMERMR"

# Frame types.
HELLO = 1  # protocol tag, version, role
PFSD = 2  # the sender's PFS descriptor (identity and sync TIDs)
BATCH = 3  # a batch covering TIDs [beg, end] starts
REC = 4  # one record version with its data (create_tid inside the batch)
PASS = 5  # an older version whose delete_tid falls inside the batch (header only)
SYNC = 6  # the batch is complete: the target may now show state as of its end TID
UPDATE = 7  # target -> source acknowledgement of a SYNC (two-way mode)
IDLE = 8  # keep-alive while a stream waits for commits
TERM = 9  # clean end of stream
ERROR = 10  # the sender gives up; payload: u8 fatal flag, then the reason (utf-8)
ESTIMATE = 11  # size of the range about to be sent (progress and ETA only)

TYPE_NAMES = {HELLO: "HELLO", PFSD: "PFSD", BATCH: "BATCH", REC: "REC", PASS: "PASS",
              SYNC: "SYNC", UPDATE: "UPDATE", IDLE: "IDLE", TERM: "TERM", ERROR: "ERROR",
              ESTIMATE: "ESTIMATE"}

ROLE_SOURCE = 1
ROLE_TARGET = 2

_HEADER = struct.Struct("<IHHIIQ")
HEADER_SIZE = _HEADER.size
_CHECKED = 16  # header bytes covered by the check (all but the check itself)
MAX_PAYLOAD = MAX_DATA + 4096

_HELLO = struct.Struct("<8sHH")
_PFSD = struct.Struct("<H")
_BATCH = struct.Struct("<QQI")
_REC = struct.Struct("<QHQQQQQ16s")
_PASS = struct.Struct("<QHQQQQ")
_SYNC = struct.Struct("<QQQ")
_TID = struct.Struct("<Q")
_ESTIMATE = struct.Struct("<QQQQ")


class StreamError(HammerError):
    """The stream is corrupt, truncated, out of order or from an incompatible peer."""


class StreamClosed(StreamError):
    """The peer closed the stream (EOF) where a frame was expected."""


class ProtocolVersionError(HammerError):
    """The peer speaks another protocol version (a refusal: retrying cannot help)."""


class PeerError(HammerError):
    """The other side reported a failure in an ERROR frame.  ``fatal`` is False when it was
    a broken or damaged link (retrying may help), True for a refusal (uuid, master, ...)."""

    def __init__(self, message: str, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    payload: bytes
    flags: int = 0

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")


def encode_frame(ftype: int, payload: bytes, seq: int, flags: int = 0) -> bytes:
    head = _HEADER.pack(FRAME_MAGIC, ftype, flags, seq, len(payload), 0)[:_CHECKED]
    check = xxhash.xxh3_64_intdigest(payload, seed=xxhash.xxh3_64_intdigest(head))
    return head + _TID.pack(check) + payload


class FrameWriter:
    """Writes frames to a binary file object; counts bytes for progress reporting."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.seq = 0
        self.bytes = 0
        self.records = 0  # REC frames sent (metrics)

    def send(self, ftype: int, payload: bytes = b"", flags: int = 0, *, flush: bool = False,
             ) -> None:
        raw = encode_frame(ftype, payload, self.seq, flags)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        try:
            self.out.write(raw)
            if flush:
                self.out.flush()
        except (BrokenPipeError, ConnectionError, ValueError) as exc:
            raise StreamClosed(f"mirror peer went away while sending: {exc}") from exc
        self.bytes += len(raw)
        if ftype == REC:
            self.records += 1

    def flush(self) -> None:
        try:
            self.out.flush()
        except (BrokenPipeError, ConnectionError, ValueError) as exc:
            raise StreamClosed(f"mirror peer went away while sending: {exc}") from exc


class FrameReader:
    """Reads and verifies frames from a binary file object.  Reads in large slices and cuts
    frames out of its own buffer: a frame costs no system call of its own."""

    def __init__(self, inp: BinaryIO):
        self.inp = inp
        self.seq = 0
        self.bytes = 0
        self._buf = b""
        self._pos = 0
        self._read_some = getattr(inp, "read1", inp.read)

    def _fill(self) -> bytes:
        try:
            return self._read_some(1 << 20)
        except (ConnectionError, OSError) as exc:
            raise StreamClosed(f"mirror stream broke: {exc}") from exc

    def _read_exactly(self, n: int, what: str) -> bytes:
        avail = len(self._buf) - self._pos
        if avail < n:
            parts = [self._buf[self._pos:]]
            while avail < n:
                got = self._fill()
                if not got:
                    if avail == 0 and what == "a frame header":
                        raise StreamClosed("mirror stream ended (EOF)")
                    raise StreamError(f"mirror stream is truncated: EOF inside {what}")
                parts.append(got)
                avail += len(got)
            self._buf, self._pos = b"".join(parts), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def recv(self) -> Frame:
        raw = self._read_exactly(HEADER_SIZE, "a frame header")
        magic, ftype, flags, seq, length, check = _HEADER.unpack(raw)
        if magic != FRAME_MAGIC:
            raise StreamError(f"not a hammerfs mirror stream (bad frame magic {magic:#x} "
                              f"at byte {self.bytes})")
        if length > MAX_PAYLOAD:
            raise StreamError(f"mirror stream is corrupt: frame of {length} bytes at byte "
                              f"{self.bytes}")
        payload = self._read_exactly(length, "a frame payload") if length else b""
        want = xxhash.xxh3_64_intdigest(payload, seed=xxhash.xxh3_64_intdigest(raw[:_CHECKED]))
        if want != check:
            raise StreamError(f"mirror stream is corrupt: checksum mismatch in frame {seq} "
                              f"at byte {self.bytes}")
        if flags != 0:
            raise StreamError(f"mirror stream is corrupt: unknown flags {flags:#x} in frame "
                              f"{seq}")
        if seq != self.seq:
            raise StreamError(f"mirror stream is out of order: frame {seq} where frame "
                              f"{self.seq} was expected")
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.bytes += HEADER_SIZE + length
        return Frame(ftype, payload, flags)


# -- payload codecs ------------------------------------------------------------------------

def _unpack(st: struct.Struct, frame: Frame, exact: bool = True) -> tuple:
    size = len(frame.payload)
    if size < st.size or (exact and size != st.size):
        raise StreamError(f"mirror stream is corrupt: {frame.name} payload of {size} bytes")
    return st.unpack_from(frame.payload)


def hello_payload(role: int) -> bytes:
    return _HELLO.pack(HELLO_TAG, PROTOCOL_VERSION, role)


def decode_hello(frame: Frame) -> int:
    """Check the HELLO frame; return the peer's role."""
    if frame.type != HELLO:
        raise StreamError(f"mirror stream does not start with HELLO (got {frame.name})")
    tag, version, role = _unpack(_HELLO, frame)
    if tag != HELLO_TAG:
        raise StreamError("not a hammerfs mirror stream (bad HELLO tag)")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"mirror protocol version {version} is not supported: this hammer speaks "
            f"protocol version {PROTOCOL_VERSION} (since version 2 records carry end-to-end "
            f"checksums); run the same hammer version on both sides")
    return role


def pfsd_payload(pfs_id: int, desc: PfsData) -> bytes:
    return _PFSD.pack(pfs_id) + desc.encode()


def decode_pfsd(frame: Frame) -> tuple[int, PfsData]:
    if frame.type != PFSD:
        raise StreamError(f"expected the peer's PFS descriptor, got {frame.name}")
    (pfs_id,) = _unpack(_PFSD, frame, exact=False)
    return pfs_id, PfsData.decode(frame.payload[_PFSD.size:])


def batch_payload(beg: int, end: int, flags: int = 0) -> bytes:
    return _BATCH.pack(beg, end, flags)


def decode_batch(frame: Frame) -> tuple[int, int, int]:
    return _unpack(_BATCH, frame)


def record_checksum(data: bytes) -> bytes:
    """The end-to-end checksum of a record's data: xxh3-128 of the data zero-padded to whole
    4 KiB blocks.  For data the master keeps in an extent this is exactly the checksum its
    B-tree leaf holds for that extent (``store.format.checksum`` over the extent's blocks),
    against which the master's store has just verified the data it read."""
    h = xxhash.xxh3_128()
    h.update(data)
    pad = -len(data) % BLOCK
    if pad:
        h.update(bytes(pad))
    return h.digest()


def rec_payload(rec: Record, delete_tid: int, delete_ts: int, csum: bytes | None = None,
                ) -> bytes:
    data = rec.data or b""
    head = _REC.pack(rec.obj_id, rec.rec_type, rec.key, rec.create_tid, delete_tid,
                     rec.create_ts, delete_ts, record_checksum(data) if csum is None else csum)
    return head + data


def decode_rec(frame: Frame, pfs: int) -> Record:
    """The record of a REC frame, its data verified against the end-to-end checksum."""
    obj_id, rec_type, key, ctid, dtid, cts, dts, csum = _unpack(_REC, frame, exact=False)
    data = frame.payload[_REC.size:]
    if record_checksum(data) != csum:
        raise StreamError(f"mirror stream is corrupt: the data of record obj=0x{obj_id:x} "
                          f"type=0x{rec_type:02x} key=0x{key:x} create=0x{ctid:016x} "
                          f"({len(data)} bytes) does not match its end-to-end checksum")
    return Record(pfs, obj_id, rec_type, key, ctid, dtid, cts, dts, data)


def pass_payload(rec: Record) -> bytes:
    return _PASS.pack(rec.obj_id, rec.rec_type, rec.key, rec.create_tid, rec.delete_tid,
                      rec.delete_ts)


def decode_pass(frame: Frame) -> tuple[int, int, int, int, int, int]:
    """(obj_id, rec_type, key, create_tid, delete_tid, delete_ts)"""
    return _unpack(_PASS, frame)


def sync_payload(end: int, end_ts: int, count: int) -> bytes:
    return _SYNC.pack(end, end_ts, count)


def decode_sync(frame: Frame) -> tuple[int, int, int]:
    return _unpack(_SYNC, frame)


def tid_payload(tid: int) -> bytes:
    return _TID.pack(tid)


def decode_tid(frame: Frame) -> int:
    return _unpack(_TID, frame)[0]


def error_payload(exc: BaseException) -> bytes:
    # A broken link or the target's storage out of reach: the stream tries again.
    fatal = not isinstance(exc, (StreamError, StorageUnavailable))
    return bytes([fatal]) + str(exc).encode()


def decode_error(frame: Frame, side: str) -> PeerError:
    fatal = bool(frame.payload[:1] != b"\0")
    return PeerError(f"{side}: {frame.payload[1:].decode('utf-8', 'replace')}", fatal)


def estimate_payload(total_bytes: int, records: int, beg: int, end: int) -> bytes:
    return _ESTIMATE.pack(total_bytes, records, beg, end)


def decode_estimate(frame: Frame) -> tuple[int, int, int, int]:
    """(total_bytes, records, beg, end)"""
    return _unpack(_ESTIMATE, frame)
