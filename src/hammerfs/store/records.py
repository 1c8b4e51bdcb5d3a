"""Records: the unit of everything the store keeps (HAMMER's B-tree leaf element).

A record is keyed ``(pfs, obj_id, rec_type, key, create_tid)`` and carries a ``delete_tid``.
It is visible as of TID ``T`` iff ``create_tid <= T`` and (``delete_tid == 0`` or
``T < delete_tid``).  Updating a record ends the live version (sets its ``delete_tid`` to the
current TID) and adds a new version, so every committed state stays readable.

Field ranges: pfs u16, obj_id u64, rec_type u16, key u64, tids u64, timestamps u64 ns.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_U64 = (1 << 64) - 1
MAX_PFS = (1 << 16) - 1
MAX_DATA = 1 << 20  # largest payload of one record (file data is cut into smaller extents)

# Record types the store itself owns.  Layers above define their own (see hammerfs.fs.layout);
# values 0x01-0x14 and 0x18-0x7f are reserved for them.
REC_PFS = 0x15  # on (pfs 0, ROOT_OBJ, key = pfs id): a PfsData
REC_SNAPSHOT = 0x16  # on (pfs, ROOT_OBJ, key = tid): snapshot metadata (mirrored)
REC_CONFIG = 0x17  # on (pfs, ROOT_OBJ, key 0): cleanup config text (not mirrored)

ROOT_OBJ = 1  # obj_id of every PFS's root directory; object ids from alloc_obj_id() are larger

RecKey = tuple[int, int, int, int]
"""(pfs, obj_id, rec_type, key): identifies a record across its versions."""


@dataclass(frozen=True, slots=True)
class Record:
    pfs: int
    obj_id: int
    rec_type: int
    key: int
    create_tid: int
    delete_tid: int  # 0 while live
    create_ts: int  # wall-clock ns when created (display only)
    delete_ts: int  # wall-clock ns when deleted, 0 while live
    data: bytes | None  # None only when a scan was asked for keys only

    @property
    def reckey(self) -> RecKey:
        return (self.pfs, self.obj_id, self.rec_type, self.key)

    @property
    def fullkey(self) -> tuple[int, int, int, int, int]:
        return (self.pfs, self.obj_id, self.rec_type, self.key, self.create_tid)

    def visible_at(self, tid: int) -> bool:
        return self.create_tid <= tid and (self.delete_tid == 0 or tid < self.delete_tid)
