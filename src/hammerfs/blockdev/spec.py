"""The one opener of block devices: a VOLUME names a file/block device, ``rbd:POOL/IMAGE`` (a
Ceph RBD image) or ``s3://BUCKET/PREFIX`` (an S3-compatible bucket).  Every command, the mount
and the service open volumes through ``open_device``; how each kind is reached (Ceph
configuration, client id, S3 cache size) travels in ``RemoteOptions``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hammerfs.blockdev.base import BlockDevice

RBD_PREFIX = "rbd:"
S3_PREFIX = "s3://"


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    ceph_conf: str | None = None  # default: $CEPH_CONF, then Ceph's own search
    ceph_id: str | None = None  # default: admin
    break_lock: bool = False  # take the writer lock over from a holder that is gone
    s3_cache_bytes: int | None = None


def is_remote(spec: str) -> bool:
    """Whether ``spec`` names a volume that is not a local path (rbd: or s3://)."""
    return spec.startswith((RBD_PREFIX, S3_PREFIX))


def canonical(spec: str) -> str:
    """The name that identifies the volume: a remote spec as given, a path resolved."""
    return spec if is_remote(spec) else os.path.realpath(spec)


def device_exists(spec: str, options: RemoteOptions = RemoteOptions()) -> bool:
    if spec.startswith(RBD_PREFIX):
        from hammerfs.blockdev.rbd import parse_rbd_spec, rbd_image_exists
        pool, image = parse_rbd_spec(spec)
        return rbd_image_exists(pool, image, options.ceph_conf, options.ceph_id)
    if spec.startswith(S3_PREFIX):
        from hammerfs.blockdev.s3 import parse_s3_spec, s3_volume_exists
        return s3_volume_exists(*parse_s3_spec(spec))
    return os.path.exists(spec)


def open_device(spec: str, *, readonly: bool = False, create_size: int | None = None,
                options: RemoteOptions = RemoteOptions()) -> BlockDevice:
    """Open the volume ``spec`` with its exclusive lock; ``create_size`` creates (or resizes)
    the file, the RBD image or the S3 volume first."""
    if spec.startswith(RBD_PREFIX):
        from hammerfs.blockdev.rbd import RbdDevice, parse_rbd_spec
        pool, image = parse_rbd_spec(spec)
        return RbdDevice(pool, image, readonly=readonly, create_size=create_size,
                         conf=options.ceph_conf, client_id=options.ceph_id,
                         break_lock=options.break_lock)
    if spec.startswith(S3_PREFIX):
        from hammerfs.blockdev.s3 import DEFAULT_CACHE_BYTES, S3Device, parse_s3_spec
        bucket, prefix = parse_s3_spec(spec)
        return S3Device(bucket, prefix, readonly=readonly, create_size=create_size,
                        cache_bytes=options.s3_cache_bytes or DEFAULT_CACHE_BYTES,
                        break_lock=options.break_lock)
    from hammerfs.blockdev.file import FileDevice
    return FileDevice(spec, readonly=readonly, create_size=create_size)
