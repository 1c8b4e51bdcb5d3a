"""PFS (pseudo-filesystem) descriptors, HAMMER's ``hammer_pseudofs_data``.

Stored as a REC_PFS record on (pfs 0, ROOT_OBJ, key = pfs id).  PFS #0 is the root PFS and
always a master.  The encoding is explicit, little-endian and versioned (it also crosses the
mirror wire), documented field by field in docs/format.md.
"""

from __future__ import annotations

import os
import struct
import uuid as uuidlib
from dataclasses import dataclass, field, replace

from hammerfs.errors import HammerError
from hammerfs.store.records import MAX_PFS, REC_PFS, ROOT_OBJ

PFS_SLAVE = 0x1
PFS_DELETED = 0x2

_FMT = struct.Struct("<B3xQQQQ16s16sII64s64s")
ENCODING_VERSION = 1


def _new_uuid() -> str:
    return str(uuidlib.uuid4())


@dataclass(frozen=True, slots=True)
class PfsData:
    label: str = ""
    shared_uuid: str = field(default_factory=_new_uuid)
    unique_uuid: str = field(default_factory=_new_uuid)
    sync_beg_tid: int = 1
    sync_end_tid: int = 1
    sync_beg_ts: int = 0
    sync_end_ts: int = 0
    mirror_flags: int = 0
    prune_min: int = 0  # seconds of fine-grained history kept by prune
    snapshots: str = ""  # snapshot softlink directory ("" = default)

    @property
    def is_slave(self) -> bool:
        return bool(self.mirror_flags & PFS_SLAVE)

    @property
    def is_deleted(self) -> bool:
        return bool(self.mirror_flags & PFS_DELETED)

    def evolve(self, **changes) -> PfsData:
        return replace(self, **changes)

    def encode(self) -> bytes:
        return _FMT.pack(
            ENCODING_VERSION,
            self.sync_beg_tid,
            self.sync_end_tid,
            self.sync_beg_ts,
            self.sync_end_ts,
            uuidlib.UUID(self.shared_uuid).bytes,
            uuidlib.UUID(self.unique_uuid).bytes,
            self.mirror_flags,
            self.prune_min,
            _fixed_text(self.label, "label"),
            _fixed_text(self.snapshots, "snapshots"),
        )

    @classmethod
    def decode(cls, raw: bytes) -> PfsData:
        if len(raw) != _FMT.size:
            raise HammerError(f"PFS descriptor has {len(raw)} bytes, expected {_FMT.size}")
        (version, beg, end, beg_ts, end_ts, shared, unique, flags, prune_min, label,
         snaps) = _FMT.unpack(raw)
        if version != ENCODING_VERSION:
            raise HammerError(f"PFS descriptor version {version} is not supported")
        return cls(
            label=label.rstrip(b"\0").decode("utf-8", "replace"),
            shared_uuid=str(uuidlib.UUID(bytes=shared)),
            unique_uuid=str(uuidlib.UUID(bytes=unique)),
            sync_beg_tid=beg,
            sync_end_tid=end,
            sync_beg_ts=beg_ts,
            sync_end_ts=end_ts,
            mirror_flags=flags,
            prune_min=prune_min,
            snapshots=snaps.rstrip(b"\0").decode("utf-8", "replace"),
        )


def _fixed_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 63:
        raise HammerError(f"PFS {what} is longer than 63 bytes: {text!r}")
    return raw


class PfsTable:
    """The PFS-table part of the RecordStore contract, the same for every store: descriptors
    are REC_PFS records on (pfs 0, ROOT_OBJ, key = pfs id), read and written with the
    store's own get/put/scan."""

    def get_pfs(self, pfs_id: int, asof: int | None = None) -> PfsData | None:
        rec = self.get((0, ROOT_OBJ, REC_PFS, pfs_id), asof)
        return PfsData.decode(rec.data) if rec else None

    def put_pfs(self, pfs_id: int, data: PfsData) -> None:
        self.put((0, ROOT_OBJ, REC_PFS, pfs_id), data.encode())

    def list_pfs(self) -> list[tuple[int, PfsData]]:
        lo, hi = (0, ROOT_OBJ, REC_PFS, 0), (0, ROOT_OBJ, REC_PFS, MAX_PFS)
        return [(r.key, PfsData.decode(r.data)) for r in self.scan(lo, hi)]


def parse_volume_spec(spec: str) -> tuple[str, int]:
    """Split ``VOLUME[:PFS]`` into (volume path, pfs id); the PFS defaults to 0 (the root).

    The suffix counts as a PFS id only if it is a decimal number and what precedes it exists
    (or is a remote volume, rbd:POOL/IMAGE or s3://BUCKET/PREFIX), so volume paths that
    contain colons still work.
    """
    from hammerfs.blockdev.spec import is_remote
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and (is_remote(head) or os.path.exists(head)):
        pfs = int(tail)
        if pfs > MAX_PFS:
            raise HammerError(f"PFS id {pfs} is out of range (0-{MAX_PFS})")
        return head, pfs
    return spec, 0
