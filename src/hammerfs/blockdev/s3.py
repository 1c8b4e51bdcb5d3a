"""S3Device: a volume in an S3-compatible object store (``s3://BUCKET/PREFIX``), via boto3.

Layout.  ``PREFIX/volume.json`` says the volume's size and object size; block ``b`` lives in
the object ``PREFIX/obj/<b // blocks-per-object as 10 hex digits>``.  Objects never written do
not exist and read as zeros (a new volume costs nothing but what newfs writes).  Endpoint,
region and credentials come from boto3's (botocore's) standard sources (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/config and credentials, ...).

Object size: 1 MiB (docs/architecture.md has the reasoning: a request costs as much as a
few hundred kB of transfer, so objects must be large for bulk copies, but each small commit
rewrites whole objects, so they must not be much larger).

Write-back cache.  Writes go to a local cache of whole objects, bounded by ``cache_bytes``;
when it is full the least recently used objects are evicted, dirty ones handed to a pool of
uploaders first (a PUT replaces an object atomically; at most MAX_PENDING copies in flight,
reads of an object in flight see its copy).  ``flush()`` uploads every dirty object, in
parallel, and returns only when all are stored.  The store writes a new header only after a ``flush()``, and
its new blocks never overwrite blocks the last committed header references (copy-on-write):
whatever was uploaded before a crash, the newest durable header references only durable
objects.  A block the cache does not know is fetched with its object when first read, or
merged in just before the object is uploaded.

Writer lock: a writable open stores ``PREFIX/lock`` (host, pid, a token) and a second writer
is refused (VolumeLocked) while the holder lives; a holder on the same host that is gone is
taken over, one on another host only with ``break_lock``.  S3 has no atomic create-if-absent
here, so two writers opening in the same instant could both pass: the lock is advisory, not a
fence like RBD's.  Read-only opens neither take nor check it: a replica is browsed from any
machine while its mirror stream writes (a read that meets a half-updated state fails with a
checksum error and can be retried).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from hammerfs.blockdev.base import BLOCK
from hammerfs.errors import HammerError, StorageUnavailable, VolumeLocked

OBJECT_SIZE = 1 << 20
BLOCKS_PER_OBJECT = OBJECT_SIZE // BLOCK
DEFAULT_CACHE_BYTES = 64 << 20
UPLOADERS = 8  # parallel PUTs/GETs: a single stream is latency-bound
MAX_PENDING = 2 * UPLOADERS  # uploads in flight (copies held) beyond the cache bound
META = "volume.json"
LOCK = "lock"  # the writer's lock object, PREFIX/lock
_held_tokens: set[str] = set()  # lock tokens this process holds (open writable devices)


def parse_s3_spec(spec: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix ending in '/', or '' for the bucket root)."""
    body = spec[len("s3://"):]
    bucket, _, prefix = body.partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise HammerError(f"{spec}: an S3 volume is s3://BUCKET/PREFIX")
    return bucket, prefix + "/" if prefix else ""


def _client():
    # botocore's own session, not boto3's: the same configuration sources and client, without
    # importing boto3's resource layer and s3transfer (~0.3 s of every command's start)
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise HammerError("S3 volumes need boto3 (pip install 'boto3>=1.36,<2')") from None
    # No CRC32 of every body (botocore's default since 1.36; it cost ~1 s of CPU per GiB
    # here): the volume's blocks carry their own checksums under the encryption, and the
    # transfer is covered by TLS or, over plain http, by SigV4's SHA-256 of the payload.
    return botocore.session.get_session().create_client("s3", config=Config(
        max_pool_connections=UPLOADERS * 2, retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10, read_timeout=60, request_checksum_calculation="when_required",
        response_checksum_validation="when_required"))


def _errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError
    return BotoCoreError, ClientError


def _is_missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "404", "NoSuchKey", "NotFound")


def parse_meta(body: bytes, where: str) -> int:
    """The volume size from ``volume.json`` as read from the bucket (untrusted bytes)."""
    try:
        meta = json.loads(body)
        size, object_size = int(meta["size"]), int(meta["object_size"])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise HammerError(f"{where}: {META} is not a hammerfs volume description") from None
    if object_size != OBJECT_SIZE or size <= 0 or size % BLOCK:
        raise HammerError(f"{where}: unsupported volume description (size {size}, object "
                          f"size {object_size})")
    return size


def _alive(pid) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, e.g. a killed daemon nobody
    reaps, does not)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, ValueError, TypeError, IndexError):
        return False


class _Obj:
    """One cached object: its bytes, which blocks are known (None: all), dirty or not."""

    __slots__ = ("data", "known", "dirty")

    def __init__(self, data: bytearray, known: bytearray | None):
        self.data = data
        self.known = known
        self.dirty = False


class S3Device:
    def __init__(self, bucket: str, prefix: str, *, readonly: bool = False,
                 create_size: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 break_lock: bool = False):
        self.bucket, self.prefix = bucket, prefix
        self.path = f"s3://{bucket}/{prefix}"
        self.readonly = readonly
        self._max_objects = max(2, cache_bytes // OBJECT_SIZE)
        self._mutex = threading.RLock()
        self._cache: OrderedDict[int, _Obj] = OrderedDict()
        # uploads under way: index -> (future, the bytes being stored), oldest first
        self._pending: dict[int, tuple[Future, bytes]] = {}
        self._failed: HammerError | None = None
        self._pid = -1
        self._s3 = self._pool = None
        self._token: str | None = None  # our writer lock's token while we hold it
        if not readonly:
            self._lock(break_lock)
        try:
            if create_size is not None:
                self._create(create_size)
            self.size = self._read_meta()
            # What is known of which objects exist, learnt as they are used rather than by
            # listing the bucket at every open (a LIST page per 1000 objects, slow to parse):
            # stored = uploaded or read; absent = a GET said so (a fresh volume: all absent).
            self._stored: set[int] = set()
            self._absent: set[int] = set()
            self._all_absent = create_size is not None
        except BaseException:
            self._unlock()
            raise

    # -- the writer lock ----------------------------------------------------------------------------
    def _lock(self, break_lock: bool) -> None:
        """Take ``PREFIX/lock`` (host, pid, token).  Held by a live process, or by another
        host: VolumeLocked unless ``break_lock``.  A holder on this host that is gone (or a
        lock left by this very process, e.g. after a failed session) is taken over."""
        held = self._read_lock()
        if held is not None and not break_lock and not self._stale(held):
            raise VolumeLocked(f"volume {self.path} is in use by {held.get('host', '?')} pid "
                               f"{held.get('pid', '?')} ({held.get('cmd', '?')}); if that "
                               "host is down or the writer must stop, --break-lock takes "
                               "the volume over")
        self._token = uuid.uuid4().hex
        self._write_lock()
        _held_tokens.add(self._token)

    def _stale(self, held: dict) -> bool:
        if held.get("host") != socket.gethostname():
            return False
        pid = held.get("pid")
        if pid == os.getpid():
            return held.get("token") not in _held_tokens
        return not _alive(pid)

    def _read_lock(self) -> dict | None:
        try:
            body = self._call("reading the volume's lock", self._client().get_object,
                              Bucket=self.bucket, Key=self.prefix + LOCK)["Body"].read()
        except _errors() as exc:
            if _is_missing(exc):
                return None
            raise
        try:
            held = json.loads(body)
        except (ValueError, RecursionError):
            return {}  # unreadable: someone's lock all the same
        return held if isinstance(held, dict) else {}

    def _write_lock(self) -> None:
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "token": self._token, "cmd": " ".join(sys.argv)[:200]})
        self._call("taking the volume's lock", self._client().put_object, Bucket=self.bucket,
                   Key=self.prefix + LOCK, Body=body.encode())

    def _unlock(self) -> None:
        """Remove the lock if it is still ours (not broken by another host meanwhile)."""
        if self._token is None:
            return
        token, self._token = self._token, None
        _held_tokens.discard(token)
        with contextlib.suppress(HammerError, *_errors()):
            held = self._read_lock()
            if held is not None and held.get("token") == token:
                self._client().delete_object(Bucket=self.bucket, Key=self.prefix + LOCK)

    # -- the bucket -------------------------------------------------------------------------------
    def _client(self):
        """The client and thread pool of this process (neither survives a fork)."""
        if self._pid != os.getpid():
            forked = self._pid != -1
            self._s3, self._pool = _client(), ThreadPoolExecutor(UPLOADERS)
            self._pid = os.getpid()
            if forked and self._token is not None:  # the lock names the process that writes
                _held_tokens.add(self._token)
                self._write_lock()
        return self._s3

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except _errors() as exc:
            if _is_missing(exc):
                raise
            raise StorageUnavailable(f"{self.path}: {what} failed: {exc}") from None

    def _key(self, index: int) -> str:
        return f"{self.prefix}obj/{index:010x}"

    def _create(self, size: int) -> None:
        if size <= 0 or size % BLOCK:
            raise HammerError(f"volume size must be a positive multiple of {BLOCK} bytes")
        s3 = self._client()
        stale = [{"Key": self._key(i)} for i in self._list_objects()]
        for start in range(0, len(stale), 1000):  # newfs -f: drop the old volume's objects
            self._call("deleting old objects", s3.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": stale[start:start + 1000], "Quiet": True})
        meta = json.dumps({"format": "hammerfs-s3", "size": size, "object_size": OBJECT_SIZE})
        self._call("writing the volume description", s3.put_object, Bucket=self.bucket,
                   Key=self.prefix + META, Body=meta.encode())

    def _read_meta(self) -> int:
        try:
            body = self._call("reading the volume description", self._client().get_object,
                              Bucket=self.bucket, Key=self.prefix + META)["Body"].read()
        except _errors() as exc:
            if _is_missing(exc):
                raise HammerError(f"{self.path}: no volume there (newfs --size N creates "
                                  "one)") from None
            raise
        return parse_meta(body, self.path)

    def _list_objects(self) -> set[int]:
        found = set()
        pages = self._client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "obj/")
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    tail = item["Key"][len(self.prefix) + 4:]
                    if len(tail) == 10 and all(c in "0123456789abcdef" for c in tail):
                        found.add(int(tail, 16))  # anything else is not ours: ignored
        except _errors() as exc:
            raise StorageUnavailable(f"{self.path}: listing the bucket failed: {exc}") from None
        return found

    def _known_absent(self, index: int) -> bool:
        return index not in self._stored and (self._all_absent or index in self._absent)

    def _fetch(self, index: int) -> bytes:
        if index in self._pending:  # newer than what the store has, or may have
            return self._pending[index][1]
        if self._known_absent(index):
            return bytes(OBJECT_SIZE)
        try:
            body = self._call("reading an object", self._client().get_object,
                              Bucket=self.bucket, Key=self._key(index))["Body"].read()
        except _errors() as exc:
            if not _is_missing(exc) or index in self._stored:
                raise HammerError(f"{self.path}: object {self._key(index)} is "
                                  f"missing") from None
            self._absent.add(index)  # never written: zeros
            return bytes(OBJECT_SIZE)
        self._stored.add(index)
        if len(body) != OBJECT_SIZE:
            raise HammerError(f"{self.path}: object {self._key(index)} has {len(body)} bytes, "
                              f"not {OBJECT_SIZE}")
        return body

    def _upload(self, index: int, data: bytes) -> None:
        self._call("storing an object", self._client().put_object, Bucket=self.bucket,
                   Key=self._key(index), Body=data)

    # -- the cache --------------------------------------------------------------------------------
    def _entry(self, index: int, *, for_read: bool) -> _Obj:
        obj = self._cache.get(index)
        if obj is None:
            if for_read or self._known_absent(index):
                obj = _Obj(bytearray(self._fetch(index)), None)
            else:  # written before it is ever read: fetched only if it must be merged
                obj = _Obj(bytearray(OBJECT_SIZE), bytearray(BLOCKS_PER_OBJECT))
            self._cache[index] = obj
            self._make_room()
        else:
            self._cache.move_to_end(index)
            if for_read and obj.known is not None:
                self._complete(index, obj, self._fetch(index))
        return obj

    @staticmethod
    def _complete(index: int, obj: _Obj, stored: bytes) -> None:
        """Fill the blocks of ``obj`` this process never wrote from the stored object."""
        for b in range(BLOCKS_PER_OBJECT):
            if not obj.known[b]:
                obj.data[b * BLOCK:(b + 1) * BLOCK] = stored[b * BLOCK:(b + 1) * BLOCK]
        obj.known = None

    def _make_room(self) -> None:
        """Evict the least recently used objects over the bound; dirty ones are handed to
        the uploaders first (the writer goes on meanwhile)."""
        while len(self._cache) > self._max_objects:
            index, obj = next(iter(self._cache.items()))
            if obj.dirty:
                self._submit(index, obj)
            del self._cache[index]

    def _submit(self, index: int, obj: _Obj) -> None:
        """Start uploading ``obj``'s current bytes; it is clean from now on.  At most
        MAX_PENDING uploads (and their copies) are in flight; an older upload of the same
        object finishes first (two PUTs of one key race)."""
        self._client()
        if index in self._pending:
            self._finish(index)
        if obj.known is not None:
            self._complete(index, obj, self._fetch(index))
        while len(self._pending) >= MAX_PENDING:
            self._finish(next(iter(self._pending)))
        data = bytes(obj.data)
        self._pending[index] = (self._pool.submit(self._upload, index, data), data)
        obj.dirty = False

    def _finish(self, index: int) -> None:
        """Wait for the upload of object ``index``.  A failed upload keeps its bytes (reads
        still see them) and fails every later flush: the writes it carried are lost."""
        future, data = self._pending[index]
        try:
            future.result()
        except BaseException as exc:
            if self._failed is None:
                self._failed = exc if isinstance(exc, HammerError) else StorageUnavailable(
                    f"{self.path}: storing an object failed: {exc!r}")
            raise self._failed from None
        del self._pending[index]
        self._stored.add(index)

    def _finish_all(self) -> None:
        for index in list(self._pending):
            self._finish(index)

    # -- BlockDevice ------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        out = bytearray()
        with self._mutex:
            for index, start, end in self._pieces(offset, length):
                out += self._entry(index, for_read=True).data[start:end]
        return bytes(out)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.readonly:
            raise HammerError(f"{self.path} is open read-only")
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        if offset % BLOCK or len(view) % BLOCK:
            raise HammerError(f"{self.path}: unaligned write at {offset:#x} (+{len(view)})")
        done = 0
        with self._mutex:
            for index, start, end in self._pieces(offset, len(view)):
                obj = self._entry(index, for_read=False)
                obj.data[start:end] = view[done:done + end - start]
                if obj.known is not None:
                    obj.known[start // BLOCK:end // BLOCK] = b"\1" * ((end - start) // BLOCK)
                    if all(obj.known):
                        obj.known = None
                obj.dirty = True
                done += end - start

    def flush(self) -> None:
        if self.readonly:
            return
        with self._mutex:
            if self._failed is not None:
                raise self._failed
            for index, obj in self._cache.items():
                if obj.dirty:
                    self._submit(index, obj)
            self._finish_all()

    def close(self) -> None:
        """Release the cache.  Uploads under way are waited for (not flushed: like
        close(2))."""
        with self._mutex:
            with contextlib.suppress(HammerError):
                self._finish_all()
            self._cache.clear()
            self._pending.clear()
            if self._pid == os.getpid():
                self._unlock()
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
            self._pool = self._s3 = None
            self._pid = -1

    def _pieces(self, offset: int, length: int):
        """(object index, start, end) within each object the byte range touches."""
        end = offset + length
        while offset < end:
            index, start = divmod(offset, OBJECT_SIZE)
            stop = min(OBJECT_SIZE, start + end - offset)
            yield index, start, stop
            offset += stop - start

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise HammerError(f"{self.path}: I/O at offset {offset:#x} (+{length}) is beyond "
                              f"the end of the device ({self.size} bytes)")


def s3_volume_exists(bucket: str, prefix: str) -> bool:
    try:
        _client().head_object(Bucket=bucket, Key=prefix + META)
    except _errors() as exc:
        if _is_missing(exc):
            return False
        raise StorageUnavailable(f"s3://{bucket}/{prefix}: cannot reach the bucket: {exc}") from None
    return True
