"""The record store: on-disk format, B-tree, allocator, transactions (layer 2).

Depends only on hammerfs.blockdev and hammerfs.errors.  Layers above use the RecordStore
contract in ``api.py``.
"""

from hammerfs.store.api import RecordStore, SpaceInfo
from hammerfs.store.pfs import PFS_DELETED, PFS_SLAVE, PfsData
from hammerfs.store.records import (
    MAX_U64,
    REC_CONFIG,
    REC_PFS,
    REC_SNAPSHOT,
    ROOT_OBJ,
    RecKey,
    Record,
)
from hammerfs.store.store import Store

__all__ = [
    "MAX_U64", "PFS_DELETED", "PFS_SLAVE", "REC_CONFIG", "REC_PFS", "REC_SNAPSHOT", "ROOT_OBJ",
    "PfsData", "Record", "RecKey", "RecordStore", "SpaceInfo", "Store",
]
