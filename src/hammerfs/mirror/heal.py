"""Self-heal from a replica: the ``mirror-fetch`` protocol, its server and the ``Healer``.

A damaged data record (a read or a scrub met an extent that fails its checksum) is asked for
by its key and create TID from a replica of its PFS (a slave of it, or its master: any PFS
with the same shared uuid), over the same transports as mirroring: a mount's control socket,
a volume this process opens, or ``ssh [user@]host hammer mirror-fetch PATH`` (which
``hammer ssh-remote mirror-read DIR`` allows, confined like mirror-read).  The bytes are
used only if they match the checksum the damaged side's leaf expects
(``Store.rewrite_data``): a replica holding another version, or other bytes, is refused.

A damaged B-tree leaf is rebuilt from the replica's versions of the leaf's key range
(``Healer.versions``; store/noderepair.py uses them only for a block whose checksum is the
one its parent expects).

Protocol (after the server's hello line, one request at a time):
  server: ``{"hammerfs-fetch": 1, "pfs": N, "shared_uuid": U, "unique_uuid": V}`` LF
  client: ``{"get": [obj_id, rec_type, key, create_tid]}`` LF
  server: ``{"found": true, "length": N}`` LF + N bytes | ``{"found": false}`` LF
          | ``{"error": TEXT}`` LF
  client: ``{"range": [obj_id, rec_type, key, create_tid], "to": [...] | null, "limit": N}``
          LF: every version with range <= key < to (null: to the end of the PFS)
  server: ``{"versions": n, "more": bool}`` LF, then n times
          ``{"v": [obj_id, rec_type, key, create_tid, delete_tid, create_ts, delete_ts,
          length], "csum": HEX32 | null}`` LF + the data if length <= 512 (inline data; a
          larger record's data is not sent: its checksum, of the zero-padded data, is)
          | ``{"error": TEXT}`` LF
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from hammerfs.errors import HammerError
from hammerfs.mirror.transport import Channel, ThreadChannel
from hammerfs.store.format import CSUM_SIZE, INLINE_MAX, ZERO_CSUM, FullKey, LeafVal
from hammerfs.store.noderepair import Version
from hammerfs.store.records import MAX_DATA, MAX_U64, check_raw_version

log = logging.getLogger("hammerfs.heal")

MAX_LINE = 4096
MAX_VERSIONS = 4096  # versions of one range in one reply (a leaf holds at most 49 entries)
TIMEOUT = 20.0  # a repair is given up (the read gets EIO) if the replica takes longer
VERSION = 1


class FetchError(HammerError):
    """The replica could not be used (unreachable, refused, or broke the protocol)."""


# -- the replica's side ------------------------------------------------------------------------

def serve_fetch(store, pfs: int, rfile: BinaryIO, wfile: BinaryIO) -> int:
    """Answer fetch requests for records of ``pfs`` until EOF; returns how many were served."""
    pd = store.get_pfs(pfs)
    if pd is None or pd.is_deleted:
        _send(wfile, {"error": f"PFS #{pfs} does not exist here"})
        return 0
    if not hasattr(store, "get_version"):
        _send(wfile, {"error": "this volume cannot serve repairs (not an on-disk volume)"})
        return 0
    _send(wfile, {"hammerfs-fetch": VERSION, "pfs": pfs, "shared_uuid": pd.shared_uuid,
                  "unique_uuid": pd.unique_uuid})
    served = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            return served
        try:
            req = _parse_request(line)
            if "range" in req:
                _send_versions(store, pfs, req, wfile)
                served += 1
                continue
            key = req["get"]
            rec = store.get_version((pfs, *key[:3]), key[3])
        except HammerError as exc:  # a bad request, or the replica is damaged there too
            _send(wfile, {"error": str(exc)})
            continue
        if rec is None:
            _send(wfile, {"found": False})
        else:
            _send(wfile, {"found": True, "length": len(rec.data)}, rec.data)
        served += 1


def _parse_request(line: bytes) -> dict:
    """``{"get": key}`` or ``{"range": key, "to": key | None, "limit": n}``, checked."""
    if len(line) > MAX_LINE:
        raise FetchError("mirror-fetch: request line too long")
    try:
        req = json.loads(line)
    except (ValueError, RecursionError):
        raise FetchError("mirror-fetch: request is not JSON") from None
    if isinstance(req, dict) and "range" in req:
        lo, hi, limit = req.get("range"), req.get("to"), req.get("limit")
        if _is_key(lo) and (hi is None or _is_key(hi)) and type(limit) is int \
                and 0 < limit <= MAX_VERSIONS:
            return {"range": lo, "to": hi, "limit": limit}
        raise FetchError("mirror-fetch: a range request is {\"range\": [obj_id, rec_type, "
                         "key, create_tid], \"to\": [...] or null, \"limit\": "
                         f"1..{MAX_VERSIONS}}}")
    key = req.get("get") if isinstance(req, dict) else None
    if not _is_key(key):
        raise FetchError("mirror-fetch: a request is {\"get\": [obj_id, rec_type, key, "
                         "create_tid]}")
    return {"get": key}


def _is_key(key) -> bool:
    return isinstance(key, list) and len(key) == 4 \
        and all(type(x) is int and 0 <= x <= MAX_U64 for x in key) and key[1] <= 0xFFFF


def _send_versions(store, pfs: int, req: dict, wfile: BinaryIO) -> None:
    hi = (pfs, *req["to"]) if req["to"] is not None else (pfs + 1, 0, 0, 0, 0)
    found, more = store.versions_between((pfs, *req["range"]), hi, req["limit"])
    parts = [json.dumps({"versions": len(found), "more": more}).encode() + b"\n"]
    for k, v in found:
        inline = v[3] <= INLINE_MAX
        parts.append(json.dumps({"v": [*k[1:], *v[:4]],
                                 "csum": None if inline else v[5].hex()}).encode() + b"\n")
        if inline:
            parts.append(bytes(v[6] or b""))
    wfile.write(b"".join(parts))
    wfile.flush()


def _send(wfile: BinaryIO, head: dict, body: bytes = b"") -> None:
    wfile.write(json.dumps(head).encode() + b"\n" + body)
    wfile.flush()


# -- the damaged side ---------------------------------------------------------------------------

class Healer:
    """``healer(k, v)``: the replica's bytes of record (k) that match leaf value ``v``'s
    checksum, or None.  Connects on first use; ``keep_open`` keeps the connection between
    repairs (a scrub), else each repair connects anew (a mount's reads: an idle mount must
    not hold a replica volume's lock or an ssh session)."""

    def __init__(self, store, spec: str, connect: Callable[[], Channel], *,
                 keep_open: bool = False):
        self.store = store
        self.spec = spec
        self.connect = connect  # cli.mirror_cmds.open_replica: the one resolver of paths
        self.keep_open = keep_open
        self._lock = threading.Lock()
        self._chan: Channel | None = None
        self._hello: dict | None = None
        self.served = 0
        self.refused = 0
        self._pfs: list = []  # this volume's PFS table, read at each request

    @classmethod
    def open(cls, store, spec: str, connect: Callable[[], Channel]) -> Healer:
        """A healer checked now: the replica answers and mirrors a PFS of this volume."""
        healer = cls(store, spec, connect, keep_open=True)
        healer._pfs = healer._pfs_list()
        with healer._lock:
            try:
                healer._connect()
            except BaseException:
                healer._close()
                raise
        return healer

    def __call__(self, k: FullKey, v: LeafVal) -> bytes | None:
        pfs_list = self._pfs_list()  # before our lock: the store's lock is always taken first
        with self._lock:
            try:
                self._pfs = pfs_list
                return self._fetch(k, v)
            except (OSError, ValueError, HammerError) as exc:
                self._close()
                log.warning("self-heal from %s failed: %s", self.spec, exc)
                return None
            finally:
                if not self.keep_open:
                    self._close()

    def versions(self, lo: FullKey, hi: FullKey | None) -> list[Version]:
        """The replica's versions of every record with lo <= key < hi (None: the end) in
        the PFSes of this volume it mirrors, keys in this volume's numbering, each checked
        (in the range, in order, valid TIDs, lengths, data): what a damaged leaf of that
        range held, if the replica is in the same state."""
        pfs_list = self._pfs_list()
        with self._lock:
            try:
                self._pfs = pfs_list
                self._connect()
                out: list[Version] = []
                for pfs in sorted(self._local_pfs()):
                    if lo[0] <= pfs and (hi is None or pfs <= hi[0]):
                        sub_lo = list(lo[1:5]) if pfs == lo[0] else [0, 0, 0, 0]
                        sub_hi = list(hi[1:5]) if hi is not None and pfs == hi[0] else None
                        out += self._range(pfs, sub_lo, sub_hi)
                return out
            except (OSError, ValueError, HammerError) as exc:
                self._close()
                log.warning("self-heal from %s failed: %s", self.spec, exc)
                return []
            finally:
                if not self.keep_open:
                    self._close()

    def _range(self, pfs: int, lo: list[int], hi: list[int] | None) -> list[Version]:
        chan = self._chan
        chan.wfile.write(json.dumps({"range": lo, "to": hi, "limit": MAX_VERSIONS}).encode()
                         + b"\n")
        chan.wfile.flush()
        reply = _read_reply(chan.rfile)
        if "error" in reply:
            raise FetchError(f"the replica {self.spec}: {reply['error']}")
        n = reply.get("versions")
        if type(n) is not int or not 0 <= n <= MAX_VERSIONS:
            raise FetchError(f"the replica {self.spec} sent a bad version count")
        out: list[Version] = []
        prev = None
        for _ in range(n):
            line = _read_reply(chan.rfile)
            out.append(_version(pfs, line, chan.rfile))
            key = list(out[-1].key[1:])
            if key < lo or (hi is not None and key >= hi) or (prev is not None and key <= prev):
                raise FetchError(f"the replica {self.spec} sent a version outside the range "
                                 "asked for, or out of order")
            prev = key
        return out

    def close(self) -> None:
        with self._lock:
            self._close()

    def _fetch(self, k: FullKey, v: LeafVal) -> bytes | None:
        chan = self._connect()
        if k[0] not in self._local_pfs():
            return None  # a PFS this replica does not mirror
        head = {"get": [k[1], k[2], k[3], k[4]]}
        chan.wfile.write(json.dumps(head).encode() + b"\n")
        chan.wfile.flush()
        reply = _read_reply(chan.rfile)
        if "error" in reply:
            raise FetchError(f"the replica {self.spec}: {reply['error']}")
        if not reply.get("found"):
            self.refused += 1
            log.warning("self-heal: the replica %s has no version 0x%016x of record "
                        "%d:%#x:%#x:%#x (another version, or not mirrored yet): refused",
                        self.spec, k[4], *k[:4])
            return None
        length = reply.get("length")
        if type(length) is not int or not 0 <= length <= MAX_DATA:
            raise FetchError(f"the replica {self.spec} sent a bad length")
        data = _read_exact(chan.rfile, length)
        if length != v[3]:
            self.refused += 1
            log.warning("self-heal: the replica's version of %s is %d bytes, not %d: refused",
                        k, length, v[3])
            return None
        self.served += 1
        return data  # Store checks it against the leaf's checksum before using it

    def _pfs_list(self) -> list:
        """This volume's PFS table (read before the healer's lock is taken: a read holding
        the store's lock may be waiting for that one)."""
        try:
            return self.store.list_pfs()
        except HammerError as exc:  # the table's own leaf is damaged
            log.warning("self-heal: the PFS table cannot be read: %s", exc)
            return []

    def _local_pfs(self) -> set[int]:
        """This volume's PFSes that the replica mirrors (the same shared uuid)."""
        shared = self._hello["shared_uuid"]
        return {pfs for pfs, pd in self._pfs
                if pd.shared_uuid == shared and not pd.is_deleted
                and pd.unique_uuid != self._hello.get("unique_uuid")}

    def _connect(self) -> Channel:
        if self._chan is not None:
            return self._chan
        chan = self.connect()
        self._chan = chan
        hello = _read_reply(chan.rfile)
        if "error" in hello:
            raise FetchError(f"the replica {self.spec}: {hello['error']}")
        if hello.get("hammerfs-fetch") != VERSION or not isinstance(
                hello.get("shared_uuid"), str):
            raise FetchError(f"{self.spec} does not speak mirror-fetch version {VERSION}")
        self._hello = hello
        if not self._local_pfs():
            raise FetchError(f"{self.spec} is not a replica of any PFS of this volume (its "
                             f"shared uuid {hello['shared_uuid']} is not one of ours)")
        return chan

    def _close(self) -> None:
        chan, self._chan = self._chan, None
        if chan is None:
            return
        chan.close_write()
        with contextlib.suppress(Exception):
            chan.finish(timeout=5)


def _version(pfs: int, head: dict, rfile: BinaryIO) -> Version:
    """One version line of a range reply (and its inline data), checked."""
    fields, csum = head.get("v"), head.get("csum")
    if not (isinstance(fields, list) and len(fields) == 8
            and all(type(x) is int and 0 <= x <= MAX_U64 for x in fields)
            and fields[1] <= 0xFFFF and fields[7] <= MAX_DATA):
        raise FetchError("the replica sent a malformed version")
    obj, rec_type, key, ctid, dtid, cts, dts, length = fields
    check_raw_version(obj, ctid, dtid, dts)  # HammerError: refused like the stream would
    if length <= INLINE_MAX:
        if csum is not None:
            raise FetchError("the replica sent a checksum for inline data")
        return Version((pfs, obj, rec_type, key, ctid), dtid, cts, dts, length, ZERO_CSUM,
                       _read_exact(rfile, length))
    try:
        raw = bytes.fromhex(csum) if isinstance(csum, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != CSUM_SIZE:
        raise FetchError("the replica sent a malformed data checksum")
    return Version((pfs, obj, rec_type, key, ctid), dtid, cts, dts, length, raw, None)


def _read_reply(rfile: BinaryIO) -> dict:
    line = _read_line(rfile)
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        raise FetchError("the replica sent something that is not a mirror-fetch reply") \
            from None
    if not isinstance(reply, dict):
        raise FetchError("the replica sent something that is not a mirror-fetch reply")
    if "error" in reply and not isinstance(reply["error"], str):
        reply["error"] = repr(reply["error"])
    return reply


def _wait_readable(rfile: BinaryIO, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([rfile], [], [], left)[0]:
        raise FetchError(f"the replica did not answer within {TIMEOUT:.0f} s")


def _read_line(rfile: BinaryIO) -> bytes:
    deadline = time.monotonic() + TIMEOUT
    buf = bytearray()
    while not buf.endswith(b"\n"):
        if len(buf) > MAX_LINE:
            raise FetchError("the replica sent an overlong line")
        _wait_readable(rfile, deadline)
        b = os.read(rfile.fileno(), 1)
        if not b:
            raise FetchError("the replica closed the connection")
        buf += b
    return bytes(buf)


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    deadline = time.monotonic() + TIMEOUT
    buf = bytearray()
    while len(buf) < n:
        _wait_readable(rfile, deadline)
        chunk = os.read(rfile.fileno(), min(1 << 20, n - len(buf)))
        if not chunk:
            raise FetchError("the replica closed the connection in the middle of a record")
        buf += chunk
    return bytes(buf)


def local_volume(volume: str, pfs: int) -> Channel:
    """An unmounted plain volume opened read-only by this process (an encrypted one needs
    its key: mount it, and give the mount)."""
    from hammerfs.blockdev.file import FileDevice
    from hammerfs.luks.container import is_luks
    from hammerfs.store import Store

    dev = FileDevice(volume, readonly=True)
    try:
        if is_luks(dev):
            raise FetchError(f"{volume} is encrypted: mount it and give its mount point (or "
                             "a PFS softlink in it) as the replica")
        store = Store.open(dev, readonly=True)
    except BaseException:
        dev.close()
        raise

    def session(sock: socket.socket) -> None:
        try:
            with sock.makefile("rb") as r, sock.makefile("wb") as w:
                serve_fetch(store, pfs, r, w)
        finally:
            sock.close()
            store.close()
    return ThreadChannel(session)
