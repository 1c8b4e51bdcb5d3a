"""Records: the unit of everything the store keeps (HAMMER's B-tree leaf element).

A record is keyed ``(pfs, obj_id, rec_type, key, create_tid)`` and carries a ``delete_tid``.
It is visible as of TID ``T`` iff ``create_tid <= T`` and (``delete_tid == 0`` or
``T < delete_tid``).  Updating a record ends the live version (sets its ``delete_tid`` to the
current TID) and adds a new version, so every committed state stays readable.

Field ranges: pfs u16, obj_id u64, rec_type u16, key u64, tids u64, timestamps u64 ns.
"""

from __future__ import annotations

from dataclasses import dataclass

from hammerfs.errors import HammerError

MAX_U64 = (1 << 64) - 1
MAX_PFS = (1 << 16) - 1
MAX_DATA = 1 << 20  # largest payload of one record (file data is cut into smaller extents)
# Highest TID and object id a version inserted with given TIDs (insert_raw, mirroring) may
# carry.  A volume hands out TIDs and object ids above the highest it has stored, so a
# version at 2^64-1 would leave it unable to commit or create anything ever after; at most
# 2^63-1 leaves 2^63 of each for its own commits.
MAX_TID = (1 << 63) - 1
MAX_OBJ_ID = (1 << 63) - 1

# Record types the store itself owns.  Layers above define their own (see hammerfs.fs.layout);
# values 0x01-0x14 and 0x18-0x7f (MAX_REC_TYPE) are reserved for them.
MAX_REC_TYPE = 0x7F
REC_PFS = 0x15  # on (pfs 0, ROOT_OBJ, key = pfs id): a PfsData
REC_SNAPSHOT = 0x16  # on (pfs, ROOT_OBJ, key = tid): snapshot metadata (mirrored)
REC_CONFIG = 0x17  # on (pfs, ROOT_OBJ, key 0): cleanup config text (not mirrored)

# How much history a change keeps of the version it ends (the ``history_ns`` argument of put,
# put_slice, delete, delete_range): every committed version (HISTORY_ALL); only the last of
# each wall-clock interval of N ns (N > 0); none (HISTORY_NONE, nohistory objects).  A version
# at or below the store's history floor is always kept (see store/api.py).
HISTORY_ALL = 0
HISTORY_NONE = -1

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


def check_raw_version(obj_id: int, create_tid: int, delete_tid: int, delete_ts: int) -> None:
    """Refuse a version given from outside (insert_raw, set_delete_tid, a mirror stream)
    that a volume could not commit after, or that is inconsistent in itself."""
    if not 0 <= obj_id <= MAX_OBJ_ID:
        raise HammerError(f"object id {obj_id:#x} is out of range (at most {MAX_OBJ_ID:#x})")
    if not 0 < create_tid <= MAX_TID:
        raise HammerError(f"create TID {create_tid:#x} is out of range (1..{MAX_TID:#x})")
    if delete_tid and not create_tid < delete_tid <= MAX_TID:
        raise HammerError(f"delete TID {delete_tid:#x} is out of range "
                          f"({create_tid + 1:#x}..{MAX_TID:#x})")
    if not 0 <= delete_ts <= MAX_U64 or (delete_ts and not delete_tid):
        raise HammerError(f"delete timestamp {delete_ts:#x} of a live version")


def check_delete_tid(create_tid: int, delete_tid: int) -> None:
    """Refuse ending a version at a TID a volume could not commit after (set_delete_tid).
    Clearing (0) is always allowed: it is how a rollback repairs a volume."""
    if delete_tid and not create_tid < delete_tid <= MAX_TID:
        raise HammerError(f"delete TID {delete_tid:#x} is out of range "
                          f"({create_tid + 1:#x}..{MAX_TID:#x})")


def check_slice(start: int, length: int, src_len: int) -> None:
    """put_slice's rule: a 4 KiB-aligned start, and an end on a 4 KiB boundary or at the
    source's end (so an extent's bytes past its length are zeros in its last block)."""
    end = start + length
    if start < 0 or start % 4096 or length <= 0 or end > src_len or \
            (end % 4096 and end != src_len):
        raise HammerError(f"put_slice: [{start}, {end}) is not a 4 KiB-aligned slice of a "
                          f"{src_len}-byte record")
