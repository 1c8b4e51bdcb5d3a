"""RbdDevice: a volume on a Ceph RBD image (``rbd:POOL/IMAGE``), through librbd.

librbd (Debian's python3-rbd/python3-rados) rather than raw librados objects: Ceph then does
striping, its client cache, replication and, above all, fencing (below) exactly as for every
other RBD client, and the image is an ordinary one (`rbd export`, snapshots, mirroring work).

Fencing.  Images are created with the exclusive-lock feature and opened with an explicit
``lock_acquire(EXCLUSIVE)``: while one client holds it, every other client's acquire (and write)
fails, so two hammerfs hosts never write one volume; the opener gets VolumeLocked.  A holder
that dies loses the lock once its watch expires (``osd_client_watch_timeout``, 30 s by default);
``break_lock`` takes it over at once: librbd blocklists the old holder's client in the OSD map
first, so a holder that was only partitioned away cannot write after it comes back.  As with
FileDevice, read-only opens take the lock too (a reader must not see a volume mid-commit).

OSD outages.  By default librados waits for an OSD that is down: I/O blocks and resumes when
it returns, nothing is lost (like an NFS "hard" mount).  With ``rados_osd_op_timeout = N`` (in
the client's ceph.conf, or ``CEPH_ARGS="--rados_osd_op_timeout N"``) an operation fails after N
seconds instead, and the caller gets an error (EIO through a mount).  A failed write or flush is
sticky: every later write and flush fails too, until the device is reopened, because the
store's memory then holds extents the image may lack; only a reopen (from the last header,
written only after a successful flush) is consistent.  Reads keep working once the OSD is back.

Forks.  librados's threads do not survive ``fork()``, and a mount forks its daemon after the
volume was unlocked.  Every open device is therefore closed (lock released) just before a fork
and reopened by whichever process uses it next.  Between the two, another host could take the
lock: the reopen then fails with VolumeLocked, it never shares the volume.

The Debian bindings are built for Debian's python3; a virtualenv does not see them, so they are
loaded from Debian's dist-packages directory when the import fails (same CPython ABI required).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import socket
import sys
import threading
import weakref
from types import ModuleType

from hammerfs.blockdev.base import BLOCK
from hammerfs.errors import HammerError, StorageUnavailable, VolumeLocked

DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
OWNER_KEY = "hammerfs.owner"  # image metadata: who holds the lock, for the refusal message
MAX_IN_FLIGHT = 64  # queued writes: one at a time is bound by the OSD's round trip
COALESCE = 4 << 20  # contiguous writes joined up to one RBD object (4 MiB by default)
_CONNECT_TIMEOUT = "10"  # seconds: a cluster that cannot be reached is an error, not a hang


def load_binding(name: str) -> ModuleType:
    """Import Debian's ``rados`` or ``rbd`` extension module, also from a virtualenv."""
    if name in sys.modules:
        return sys.modules[name]
    if name == "rbd":
        load_binding("rados")  # rbd's module imports rados: that one first, the same way
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(DEBIAN_DIST_PACKAGES, name + suffix)
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
    raise HammerError(f"Ceph RBD volumes need Debian's python3-rbd and python3-rados for this "
                      f"Python ({sys.version.split()[0]}): install them (scripts/bootstrap)")


def _ignore(_completion) -> None:
    """aio callback: completions are waited for, not acted on in librbd's thread."""


def parse_rbd_spec(spec: str) -> tuple[str, str]:
    """``rbd:POOL/IMAGE`` -> (pool, image)."""
    body = spec[len("rbd:"):]
    pool, sep, image = body.partition("/")
    if not sep or not pool or not image or "/" in image or "@" in image:
        raise HammerError(f"{spec}: an RBD volume is rbd:POOL/IMAGE")
    return pool, image


_open_devices: weakref.WeakSet[RbdDevice] = weakref.WeakSet()


def _suspend_all() -> None:
    for dev in list(_open_devices):
        dev._suspend()


os.register_at_fork(before=_suspend_all)


class RbdDevice:
    def __init__(self, pool: str, image: str, *, readonly: bool = False,
                 create_size: int | None = None, conf: str | None = None,
                 client_id: str | None = None, break_lock: bool = False):
        self.pool, self.image_name = pool, image
        self.path = f"rbd:{pool}/{image}"
        self.readonly = readonly
        self._conf, self._client_id = conf, client_id
        self._mutex = threading.RLock()
        self._in_flight: list = []  # (offset, end, completion) of queued writes
        self._failed: HammerError | None = None  # a write or flush failed: see OSD outages
        self._run: list[bytes] = []  # contiguous writes not yet sent, from _run_off
        self._run_off = self._run_end = 0
        self._rbd = load_binding("rbd")
        self._cluster = self._ioctx = self._img = None
        try:
            self._connect()
            if create_size is not None:
                self._create(create_size)
            self._open(break_lock=break_lock)
        except BaseException:
            self._disconnect()
            raise
        self.size = self._img.size() // BLOCK * BLOCK
        _open_devices.add(self)

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> None:
        self._cluster, self._ioctx = _connect(self.path, self.pool, self._conf,
                                              self._client_id)

    def _create(self, size: int) -> None:
        rbd = self._rbd
        if size <= 0 or size % BLOCK:
            raise HammerError(f"volume size must be a positive multiple of {BLOCK} bytes")
        features = rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        try:
            rbd.RBD().create(self._ioctx, self.image_name, size, old_format=False,
                             features=features)
            return
        except rbd.ImageExists:
            pass
        except rbd.Error as exc:
            raise HammerError(f"{self.path}: cannot create the image: {exc}") from None
        self._open(break_lock=False)  # an existing image (newfs -f): resized like a file
        try:
            self._img.resize(size)
        except self._rbd.Error as exc:
            raise HammerError(f"{self.path}: cannot resize the image: {exc}") from None
        finally:
            self._close_image()

    def _open(self, *, break_lock: bool) -> None:
        rbd = self._rbd
        try:
            self._img = rbd.Image(self._ioctx, self.image_name)
        except rbd.ImageNotFound:
            raise HammerError(f"{self.path}: no such RBD image (newfs --size N creates "
                              "it)") from None
        except rbd.Error as exc:
            raise HammerError(f"{self.path}: cannot open the image: {exc}") from None
        if not self._img.features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK:
            self._close_image()
            raise HammerError(f"{self.path}: the image lacks the exclusive-lock feature, so "
                              "two hosts could write it at once: `rbd feature enable "
                              f"{self.pool}/{self.image_name} exclusive-lock`")
        try:
            self._lock(break_lock)
        except BaseException:
            self._close_image()
            raise

    def _lock(self, break_lock: bool) -> None:
        rbd = self._rbd
        try:
            self._img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        except rbd.ReadOnlyImage:
            if not break_lock:
                raise VolumeLocked(f"volume {self.path} is in use by {self._holder()}; if "
                                   "that host is down its lock expires within 30 s, or "
                                   "--break-lock takes it over (and fences the holder "
                                   "out)") from None
            for owner in self._img.lock_get_owners():
                self._img.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, owner["owner"])
            self._img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        if not self.readonly:
            self._img.metadata_set(OWNER_KEY, f"{socket.gethostname()} pid {os.getpid()} "
                                   f"({' '.join(sys.argv)[:200]})")

    def _holder(self) -> str:
        try:
            who = self._img.metadata_get(OWNER_KEY)
        except self._rbd.Error:
            who = None
        addrs = ", ".join(o["owner"] for o in self._img.lock_get_owners())
        return f"{who or 'another client'} (Ceph client {addrs or '?'})"

    def _close_image(self) -> None:
        if self._img is not None:
            img, self._img = self._img, None
            img.close()  # also releases the exclusive lock

    def _disconnect(self) -> None:
        self._close_image()
        if self._ioctx is not None:
            self._ioctx.close()
            self._ioctx = None
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    def _suspend(self) -> None:
        """Before a fork: flush and let go of everything (see the module comment)."""
        with self._mutex:
            if self._img is not None or self._run:  # a gathered run: sent by this process
                self._drain()
                self._img.flush()
            self._disconnect()

    def _image(self):
        if self._img is None:  # after a fork, in whichever process goes on using it
            self._connect()
            self._open(break_lock=False)
        return self._img

    # -- BlockDevice ------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        with self._mutex:
            if self._in_flight or self._run:  # a read sees every write made before it
                self._drain()
            try:
                data = self._image().read(offset, length)
            except self._rbd.Error as exc:
                raise StorageUnavailable(f"{self.path}: read error at offset {offset:#x}: "
                                         f"{exc}") from None
        if len(data) != length:
            raise HammerError(f"{self.path}: short read at offset {offset:#x} "
                              f"({len(data)} of {length} bytes)")
        return data

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Queued: a write that continues the previous one joins it, up to COALESCE bytes (a
        mirror or a big file arrives as one 64 KiB extent after the other: one librbd/OSD
        operation per 4 MiB instead of per extent); runs travel as librbd aio, up to
        MAX_IN_FLIGHT at once; a run that overlaps one still in flight waits for it first,
        so the last write wins."""
        if self.readonly:
            raise HammerError(f"{self.path} is open read-only")
        data = bytes(data)
        self._check_range(offset, len(data))
        with self._mutex:
            if self._failed is not None:
                raise self._failed
            if self._run and offset == self._run_end and \
                    self._run_end - self._run_off + len(data) <= COALESCE:
                self._run.append(data)
                self._run_end += len(data)
                return
            self._submit()
            self._run, self._run_off, self._run_end = [data], offset, offset + len(data)

    def _submit(self) -> None:
        """Send the gathered run as one aio write."""
        if not self._run:
            return
        data = self._run[0] if len(self._run) == 1 else b"".join(self._run)
        offset, end = self._run_off, self._run_end
        self._run = []
        if len(self._in_flight) >= MAX_IN_FLIGHT or any(
                o < end and offset < e for o, e, _ in self._in_flight):
            self._drain()
        try:
            done = self._image().aio_write(data, offset, _ignore)
        except self._rbd.Error as exc:
            raise self._fail(f"write error at offset {offset:#x}: {exc}") from None
        self._in_flight.append((offset, end, done))

    def _drain(self) -> None:
        """Send the gathered run and wait for every queued write; the first failure is
        raised."""
        self._submit()
        failed = None
        for offset, _end, done in self._in_flight:
            done.wait_for_complete_and_cb()
            code = done.get_return_value()
            if code < 0 and failed is None:
                failed = (offset, os.strerror(-code))
        self._in_flight.clear()
        if failed is not None:
            raise self._fail(f"write error at offset {failed[0]:#x}: {failed[1]}")

    def _fail(self, what: str) -> StorageUnavailable:
        """Remember the first write/flush failure: every later write and flush raises it."""
        if self._failed is None:
            self._failed = StorageUnavailable(f"{self.path}: {what}; the volume takes no "
                                              "more writes until it is reopened")
        return self._failed

    def flush(self) -> None:
        if self.readonly:
            return
        with self._mutex:
            if self._failed is not None:
                raise self._failed
            self._drain()
            try:
                self._image().flush()
            except self._rbd.Error as exc:
                raise self._fail(f"flush failed: {exc}") from None

    def close(self) -> None:
        """Release the image.  Queued writes are waited for (not flushed: like close(2))."""
        with self._mutex:
            _open_devices.discard(self)
            try:
                self._drain()
            finally:
                self._disconnect()

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise HammerError(f"{self.path}: I/O at offset {offset:#x} (+{length}) is beyond "
                              f"the end of the device ({self.size} bytes)")


def _connect(path: str, pool: str, conf: str | None, client_id: str | None):
    """(cluster, ioctx) of ``pool``; $CEPH_CONF or Ceph's default search when no ``conf``."""
    rados = load_binding("rados")
    conf = conf or os.environ.get("CEPH_CONF") or ""
    try:
        cluster = rados.Rados(conffile=conf, rados_id=client_id or "admin")
        cluster.conf_set("client_mount_timeout", _CONNECT_TIMEOUT)
        cluster.conf_set("rados_mon_op_timeout", _CONNECT_TIMEOUT)
        cluster.connect(timeout=int(_CONNECT_TIMEOUT))
    except rados.Error as exc:
        where = conf or "the default Ceph configuration"
        raise StorageUnavailable(f"{path}: cannot connect to the Ceph cluster of {where}: "
                                 f"{exc}") from None
    try:
        return cluster, cluster.open_ioctx(pool)
    except rados.ObjectNotFound:
        cluster.shutdown()
        raise HammerError(f"{path}: the cluster has no pool {pool!r}") from None
    except rados.Error as exc:
        cluster.shutdown()
        raise HammerError(f"{path}: cannot open pool {pool!r}: {exc}") from None


def rbd_image_exists(pool: str, image: str, conf: str | None = None,
                     client_id: str | None = None) -> bool:
    """Whether the image exists (newfs: refuse to overwrite it, or create it)."""
    cluster, ioctx = _connect(f"rbd:{pool}/{image}", pool, conf, client_id)
    try:
        return image in load_binding("rbd").RBD().list(ioctx)
    finally:
        ioctx.close()
        cluster.shutdown()
