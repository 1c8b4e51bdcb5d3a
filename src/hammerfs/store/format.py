"""Every on-disk structure of a record-store volume; the only module that packs or unpacks them.

Layout (offsets in 4 KiB blocks; docs/format.md "Record store volume" has the details):

    0        volume header slot 0  (commits with an even seq)
    1        volume header slot 1  (commits with an odd seq)
    2 ..     free-map region 0: checksum table, then bitmap pages
    ..       free-map region 1
    ..       allocatable space: B-tree nodes and data extents, in 8 MiB big-blocks

Everything is little-endian.  Checksums are xxh3_128 (16 bytes).  A node's or extent's
checksum lives in its parent (internal node entry, leaf entry, or volume header), so every
read is verified up to the header (a Merkle tree).
"""

from __future__ import annotations

import functools
import struct
import uuid as uuidlib
from dataclasses import dataclass

import xxhash

from hammerfs.errors import CorruptionError, NotAVolume, NoVolumeSignature

BLOCK = 4096
BIGBLOCK = 8 << 20
BLOCKS_PER_BIGBLOCK = BIGBLOCK // BLOCK
MAGIC = b"HAMMERFS"
FORMAT_VERSION = 2  # what this program writes; docs/format.md "Format versions"
READABLE_VERSIONS = (1, 2)  # a v1 volume is a valid v2 volume without shared extents
CSUM_SIZE = 16
ZERO_CSUM = bytes(CSUM_SIZE)
NODE_SIZE = BLOCK
INLINE_MAX = 512  # leaf data up to this size lives inside the node
BITS_PER_PAGE = BLOCK * 8  # free-map: 1 bit per 4 KiB block, 32768 blocks per page

STORE_PFS = 1 << 16  # key space of the store's own records (beyond every user PFS)
COMMITLOG_OBJ = 0  # (STORE_PFS, 0, 0, key=tid, create_tid=tid) -> commit wall-clock ns
SCRUB_OBJ = 1  # (STORE_PFS, 1, 0, 0, 0) -> the scrub's progress and last result (store/scrub.py)
# (STORE_PFS, 2, 0, key=id, 0) -> the history view a mount's inode numbers call ``id``
# (fuse/inodes.py): HISTORY_VIEW (pfs, asof; 0 = now); key 0: HISTORY_VIEW_NEXT (ids in use,
# the next one to hand out)
HISTORY_VIEW_OBJ = 2
HISTORY_VIEW = struct.Struct("<IQ")
HISTORY_VIEW_NEXT = struct.Struct("<II")

FullKey = tuple[int, int, int, int, int]

# Format 2: a data extent's blocks may be shared by several versions (a record cut from
# another one references a slice of its blocks instead of copying them).  Bit 0 of the leaf
# entry's data offset (always 4 KiB-aligned otherwise) marks such an extent; sharing is only
# allowed between versions of one (pfs, obj_id, rec_type) whose keys lie in the same
# SHARE_WINDOW-aligned window, so finding every co-owner of a block is a local scan.
EXT_SHARED = 1
SHARE_WINDOW = 64 << 10


def extent_off(off: int) -> int:
    """The byte offset of a leaf entry's data extent, without its flag bits."""
    return off & ~(BLOCK - 1)


def share_window(key: int) -> tuple[int, int]:
    """The first and last key of the window ``key`` lies in."""
    lo = key - key % SHARE_WINDOW
    return lo, lo + SHARE_WINDOW - 1


def checksum(data: bytes | bytearray | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


# -- volume header ---------------------------------------------------------------------------

_HEADER = struct.Struct(
    "<8sII"  # magic, format version, header length
    "Q16s64s"  # seq, uuid, label
    "QII"  # volume bytes, block size, big-block size
    "Q16sQ"  # root node offset, root checksum, root level
    "IIQQ16s"  # free-map pages, table blocks, region 0/1 block, table checksum
    "QQQQ"  # max tid ever stored, next obj id, last commit tid, last commit ts
)
HEADER_SIZE = _HEADER.size + CSUM_SIZE


@dataclass(slots=True)
class Header:
    seq: int
    uuid: str
    label: str
    volume_bytes: int
    root_off: int
    root_csum: bytes
    root_level: int
    fm_pages: int
    fm_table_blocks: int
    fm_region0: int
    fm_region1: int
    fm_table_csum: bytes
    max_tid: int
    next_obj: int
    last_tid: int
    last_ts: int
    version: int = FORMAT_VERSION  # as read; every commit writes FORMAT_VERSION

    @property
    def slot(self) -> int:
        return self.seq % 2

    def encode(self) -> bytes:
        body = _HEADER.pack(
            MAGIC, FORMAT_VERSION, HEADER_SIZE, self.seq, uuidlib.UUID(self.uuid).bytes,
            self.label.encode()[:63], self.volume_bytes, BLOCK, BIGBLOCK, self.root_off,
            self.root_csum, self.root_level, self.fm_pages, self.fm_table_blocks,
            self.fm_region0, self.fm_region1, self.fm_table_csum, self.max_tid,
            min(self.next_obj, (1 << 64) - 1), self.last_tid, self.last_ts)
        raw = body + checksum(body)
        return raw + bytes(BLOCK - len(raw))


def decode_header(raw: bytes, where: str) -> Header:
    """Decode one header slot; NotAVolume if it is not one, CorruptionError if damaged."""
    if raw[:8] != MAGIC:
        raise NoVolumeSignature(f"{where}: no hammerfs volume header")
    version = int.from_bytes(raw[8:12], "little")
    if version not in READABLE_VERSIONS:
        raise NotAVolume(f"{where}: hammerfs format version {version} is not supported "
                         f"(this program reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    body = raw[:_HEADER.size]
    if checksum(body) != raw[_HEADER.size:HEADER_SIZE]:
        raise CorruptionError(f"{where}: volume header checksum mismatch", 0)
    (_, _, _, seq, uid, label, vbytes, bsize, bbsize, root_off, root_csum, root_level,
     fm_pages, fm_tblocks, fm0, fm1, fm_csum, max_tid, next_obj, last_tid,
     last_ts) = _HEADER.unpack(body)
    if bsize != BLOCK or bbsize != BIGBLOCK:
        raise NotAVolume(f"{where}: unsupported block size {bsize}/{bbsize}")
    return Header(seq, str(uuidlib.UUID(bytes=uid)), label.rstrip(b"\0").decode("utf-8", "replace"),
                  vbytes, root_off, root_csum, root_level, fm_pages, fm_tblocks, fm0, fm1,
                  fm_csum, max_tid, next_obj, last_tid, last_ts, version)


def header_claims(raw: bytes) -> Header | None:
    """What a header slot that FAILED verification claims, field by field, or None when the
    slot was never written (all zeros).  Nothing here may be trusted alone: it only helps
    judge whether a damaged copy was newer than the valid one (store.read_headers)."""
    if len(raw) < HEADER_SIZE or not any(raw):
        return None
    (_, _, _, seq, uid, label, vbytes, _, _, root_off, root_csum, root_level, fm_pages,
     fm_tblocks, fm0, fm1, fm_csum, max_tid, next_obj, last_tid,
     last_ts) = _HEADER.unpack(raw[:_HEADER.size])
    return Header(seq, str(uuidlib.UUID(bytes=uid)), label.rstrip(b"\0").decode("utf-8", "replace"),
                  vbytes, root_off, root_csum, root_level, fm_pages, fm_tblocks, fm0, fm1,
                  fm_csum, max_tid, next_obj, last_tid, last_ts)


# -- B-tree nodes ----------------------------------------------------------------------------

_NODE_HDR = struct.Struct("<4sBBHIQ12x")  # magic, level, flags, count, heap bytes, max tid
NODE_MAGIC = b"HNOD"
NODE_HDR_SIZE = _NODE_HDR.size
# leaf entry: pfs, obj, rec_type, key, create_tid, delete_tid, create_ts, delete_ts,
# data length, data offset (0 = inline, in the node's heap), data checksum (external only)
_LEAF = struct.Struct("<IQHQQQQQIQ16s")
LEAF_ENTRY_SIZE = _LEAF.size
# internal entry: first key of the child (5 fields), child offset, child max tid, checksum
_INNER = struct.Struct("<IQHQQQQ16s")
INNER_ENTRY_SIZE = _INNER.size

# A leaf value: (delete_tid, create_ts, delete_ts, data_len, data_off, data_csum, inline)
# inline is the data bytes when data_off == 0, else None -- except in memory, for an extent
# allocated in the open transaction whose data is not written yet (data_off > 0 and the bytes
# in ``inline``): the store writes those at commit (store.Store._write_unwritten).
LeafVal = tuple[int, int, int, int, int, bytes, "bytes | None"]


def encode_leaf(keys: list[FullKey], vals: list[LeafVal]) -> tuple[bytes, int]:
    """Pack a leaf into one block; returns (block, max tid of its entries).  All entries are
    packed by one C call (a struct per entry count), since commits re-encode many leaves."""
    flat: list = []
    for k, v in zip(keys, vals, strict=True):
        flat += k
        flat += v[:6]
    heap_bytes = b"".join([v[6] for v in vals if v[6] is not None])
    max_tid = max(max([k[4] for k in keys], default=0), max([v[0] for v in vals], default=0))
    body = _NODE_HDR.pack(NODE_MAGIC, 0, 0, len(keys), len(heap_bytes), max_tid) \
        + _leaf_entries(len(keys)).pack(*flat)
    return _pad_node(body + heap_bytes), max_tid


@functools.cache
def _leaf_entries(count: int) -> struct.Struct:
    """The struct of ``count`` consecutive leaf entries."""
    return struct.Struct("<" + _LEAF.format[1:] * count)


def encode_inner(level: int, keys: list[FullKey], refs: list) -> tuple[bytes, int]:
    """Pack an internal node; ``refs`` are child refs [offset, checksum, max_tid, node]."""
    max_tid = max(r[2] for r in refs)
    ents = b"".join(_INNER.pack(*k, r[0], r[2], r[1]) for k, r in zip(keys, refs, strict=True))
    body = _NODE_HDR.pack(NODE_MAGIC, level, 0, len(keys), 0, max_tid) + ents
    return _pad_node(body), max_tid


def _pad_node(body: bytes) -> bytes:
    if len(body) > NODE_SIZE:
        raise AssertionError(f"node overflow: {len(body)} bytes")
    return body + bytes(NODE_SIZE - len(body))


def decode_node(raw: bytes, off: int) -> tuple[int, list[FullKey], list]:
    """Unpack a verified node block: (level, keys, leaf values or child refs)."""
    try:
        magic, level, _, count, heap_len, _ = _NODE_HDR.unpack_from(raw)
        if magic != NODE_MAGIC:
            raise ValueError("bad node magic")
        if level == 0:
            end = NODE_HDR_SIZE + count * LEAF_ENTRY_SIZE
            rows = list(_LEAF.iter_unpack(raw[NODE_HDR_SIZE:end]))
            keys = [r[:5] for r in rows]
            vals = []
            pos = end
            for r in rows:
                if r[9] == 0:
                    vals.append((r[5], r[6], r[7], r[8], 0, r[10], raw[pos:pos + r[8]]))
                    pos += r[8]
                else:
                    vals.append((r[5], r[6], r[7], r[8], r[9], r[10], None))
            if pos != end + heap_len or pos > NODE_SIZE:
                raise ValueError("bad heap length")
            return 0, keys, vals
        end = NODE_HDR_SIZE + count * INNER_ENTRY_SIZE
        rows = list(_INNER.iter_unpack(raw[NODE_HDR_SIZE:end]))
        return level, [r[:5] for r in rows], [[r[5], r[7], r[6], None] for r in rows]
    except (struct.error, ValueError) as exc:
        raise CorruptionError(f"B-tree node at offset {off:#x} is malformed: {exc}", off) from None


def leaf_entry_bytes(val: LeafVal) -> int:
    return LEAF_ENTRY_SIZE + (val[3] if val[4] == 0 else 0)


# -- free-map ---------------------------------------------------------------------------------

def freemap_geometry(nblocks: int) -> tuple[int, int]:
    """(bitmap pages, checksum-table blocks) for a volume of ``nblocks`` blocks."""
    pages = -(-nblocks // BITS_PER_PAGE)
    table_blocks = -(-(pages * CSUM_SIZE) // BLOCK)
    return pages, table_blocks


# -- what a damaged node block claims (store/noderepair.py) --------------------------------------

def node_claims(raw: bytes) -> tuple[int, int, int, int]:
    """(level, entry count, heap bytes, max TID) as a node block that FAILED verification
    claims them; nothing here may be trusted alone."""
    _, level, _, count, heap_len, max_tid = _NODE_HDR.unpack_from(raw)
    return level, count, heap_len, max_tid


def max_entries(level: int) -> int:
    """How many entries a node of ``level`` can hold at most."""
    return (NODE_SIZE - NODE_HDR_SIZE) // (INNER_ENTRY_SIZE if level else LEAF_ENTRY_SIZE)


def leaf_rows(raw: bytes, count: int) -> list[tuple]:
    """The first ``count`` leaf entries of a (damaged) block as they read: (pfs, obj,
    rec_type, key, create_tid, delete_tid, create_ts, delete_ts, length, offset, checksum)."""
    return list(_LEAF.iter_unpack(raw[NODE_HDR_SIZE:NODE_HDR_SIZE + count * LEAF_ENTRY_SIZE]))


def inner_rows(raw: bytes, count: int) -> list[tuple]:
    """The first ``count`` internal entries of a (damaged) block as they read: (5 key
    fields, child offset, child max TID, child checksum)."""
    return list(_INNER.iter_unpack(raw[NODE_HDR_SIZE:NODE_HDR_SIZE + count * INNER_ENTRY_SIZE]))
