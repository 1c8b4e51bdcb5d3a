"""Copy-on-write B+tree of records, keyed by full key (pfs, obj_id, rec_type, key, create_tid).

Nodes are one block each.  A leaf holds entries (key, LeafVal); an internal node holds for each
child its first key (kept exact) and a ref ``[offset, checksum, max_tid, node]``.  ``node`` is
set only while the child is dirty (modified since the last commit and not yet on disk); a clean
child is found through a cache of decoded nodes by offset, or read and verified against the
checksum in the ref.

Modifying a node makes it and every ancestor dirty; their old blocks are freed (reusable once
the commit is durable).  ``flush`` writes dirty nodes bottom-up into fresh blocks, putting each
child's offset, checksum and aggregated max TID (HAMMER's mirror_tid) into its parent.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

from hammerfs.errors import CorruptionError
from hammerfs.store.alloc import META, Allocator
from hammerfs.store.format import (
    BLOCK,
    INNER_ENTRY_SIZE,
    NODE_HDR_SIZE,
    NODE_SIZE,
    ZERO_CSUM,
    FullKey,
    LeafVal,
    checksum,
    decode_node,
    encode_inner,
    encode_leaf,
    leaf_entry_bytes,
)

# How many decoded clean nodes the cache keeps.  A mount sizes it from its cache budget
# (fuse/mount.py: $HAMMERFS_CACHE_MB, in bytes of decoded nodes); this default is what the
# default budget gives.  Read at every eviction, so a budget applied after open counts.
CACHE_NODES = 2730


class Node:
    __slots__ = ("level", "keys", "vals", "nbytes", "dirty", "off", "csum")

    def __init__(self, level: int, keys: list, vals: list, off: int = 0, csum: bytes = ZERO_CSUM):
        self.level = level
        self.keys = keys
        self.vals = vals
        self.off = off
        self.csum = csum
        self.dirty = off == 0
        if level:
            self.nbytes = NODE_HDR_SIZE + INNER_ENTRY_SIZE * len(keys)
        else:
            self.nbytes = NODE_HDR_SIZE + sum(leaf_entry_bytes(v) for v in vals)


class BTree:
    def __init__(self, dev, alloc: Allocator | None, root: Node):
        self.dev = dev
        self.alloc = alloc
        self.root = root
        self.cache: dict[int, Node] = {}
        self.dirty_count = 1 if root.dirty else 0
        self.node_reads = 0
        # node cache metrics: nodes looked up in a descent or walk, and those of them read
        # from disk because the cache did not hold them (dirty nodes count as hits)
        self.node_lookups = 0
        self.node_misses = 0
        # (offset, checksum, level, first key, end key or None, error) -> the node rebuilt
        # and verified, or raises: a child read that failed its checksum (store/noderepair.py)
        self.node_healer: Callable[..., Node] | None = None
        # off -> bytes of nodes a commit in flight flushed but has not written yet
        # (Store.commit_end writes them without the store's lock)
        self.unwritten_nodes: dict[int, bytes] = {}

    @classmethod
    def empty(cls, dev, alloc: Allocator) -> BTree:
        return cls(dev, alloc, Node(0, [], []))

    @classmethod
    def load(cls, dev, alloc: Allocator | None, off: int, csum: bytes) -> BTree:
        tree = cls(dev, alloc, Node(0, [], []))
        tree.root = tree.read_node(off, csum)
        tree.dirty_count = 0
        return tree

    # -- reading -----------------------------------------------------------------------------------
    def read_node(self, off: int, csum: bytes) -> Node:
        self.node_reads += 1  # the cache's misses (and scrub's reads), for metrics
        raw = self.unwritten_nodes.get(off) or self.dev.read(off, NODE_SIZE)
        if checksum(raw) != csum:
            raise CorruptionError(f"B-tree node at offset {off:#x} failed checksum verification",
                                  off)
        level, keys, vals = decode_node(raw, off)
        return Node(level, keys, vals, off, csum)

    def child(self, node: Node, i: int) -> Node:
        self.node_lookups += 1
        return self._child(node, i)

    def _child(self, node: Node, i: int) -> Node:
        """``child`` without counting the lookup (descents count theirs at once)."""
        ref = node.vals[i]
        if ref[3] is not None:
            return ref[3]
        found = self.cache.get(ref[0])
        if found is None:
            self.node_misses += 1
            try:
                found = self.read_node(ref[0], ref[1])
            except CorruptionError as exc:
                if self.node_healer is None:
                    raise
                found = self.node_healer(ref[0], ref[1], node.level - 1, node.keys[i],
                                         self.upper_bound(node, i), exc)
            if found.level != node.level - 1:
                raise CorruptionError(f"B-tree node at offset {ref[0]:#x} has level "
                                      f"{found.level}, expected {node.level - 1}", ref[0])
            self._cache_put(found)
        return found

    def upper_bound(self, node: Node, i: int) -> FullKey | None:
        """The first key after the range of child ``i`` of ``node`` (None: the end, or not
        known without reading from disk)."""
        if i + 1 < len(node.keys):
            return node.keys[i + 1]
        hi, cur, k = None, self.root, node.keys[0]
        while cur is not node and cur.level > node.level:
            j = max(0, bisect_right(cur.keys, k) - 1)
            if j + 1 < len(cur.keys):
                hi = cur.keys[j + 1]
            ref = cur.vals[j]
            cur = ref[3] or self.cache.get(ref[0])
            if cur is None:
                return None
        return hi if cur is node else None

    def _cache_put(self, node: Node) -> None:
        cache = self.cache
        if len(cache) >= CACHE_NODES:  # the oldest quarter goes
            for old in list(cache)[: CACHE_NODES // 4]:
                del cache[old]
        cache[node.off] = node

    def _descend(self, k: FullKey) -> tuple[list[tuple[Node, int]], Node]:
        path = []
        node = self.root
        cache = self.cache
        self.node_lookups += node.level + 1  # the root (always in memory) and each child
        while node.level:
            i = bisect_right(node.keys, k) - 1
            if i < 0:
                i = 0
            path.append((node, i))
            ref = node.vals[i]
            child = ref[3] or cache.get(ref[0])
            node = child if child is not None else self._child(node, i)
        return path, node

    def floor(self, k: FullKey) -> tuple[FullKey, LeafVal] | None:
        """The entry with the largest key <= k (separators are exact, so it is in this leaf)."""
        node = self.root
        cache = self.cache
        self.node_lookups += node.level + 1  # the root (always in memory) and each child
        while node.level:  # the read-only descent of _descend, without recording the path
            i = bisect_right(node.keys, k) - 1
            ref = node.vals[i if i > 0 else 0]
            child = ref[3] or cache.get(ref[0])
            node = child if child is not None else self._child(node, i if i > 0 else 0)
        i = bisect_right(node.keys, k) - 1
        return (node.keys[i], node.vals[i]) if i >= 0 else None

    def exact(self, k: FullKey) -> LeafVal | None:
        hit = self.floor(k)
        return hit[1] if hit is not None and hit[0] == k else None

    def collect(self, lo: FullKey, hi: FullKey, limit: int,
                since: int | None = None) -> list[tuple[FullKey, LeafVal]]:
        """Up to ``limit`` entries with lo <= key <= hi in key order; with ``since``, only
        entries whose create or delete TID is >= since, skipping clean subtrees whose max TID
        is older."""
        out: list[tuple[FullKey, LeafVal]] = []
        self._collect(self.root, lo, hi, limit, since, out)
        return out

    def _collect(self, node: Node, lo, hi, limit, since, out) -> bool:
        keys = node.keys
        if not node.level:
            vals = node.vals
            for i in range(bisect_left(keys, lo), len(keys)):
                k = keys[i]
                if k > hi:
                    return True
                v = vals[i]
                if since is None or k[4] >= since or v[0] >= since:
                    out.append((k, v))
                    if len(out) >= limit:
                        return True
            return False
        start = max(0, bisect_right(keys, lo) - 1)
        for j in range(start, len(keys)):
            if keys[j] > hi:
                return True
            ref = node.vals[j]
            if since is not None and ref[3] is None and ref[2] < since:
                continue
            if self._collect(self.child(node, j), lo, hi, limit, since, out):
                return True
        return False

    def walk_nodes(self, node: Node | None = None, depth: int = 0,
                   lo: FullKey | None = None, hi: FullKey | None = None):
        """Every node reachable from the root (pre-order), as (depth, node); verifies each.
        With ``lo``/``hi`` only the nodes whose key range meets [lo, hi]."""
        node = node or self.root
        yield depth, node
        if node.level:
            keys = node.keys
            for j in range(len(keys)):
                if hi is not None and keys[j] > hi:
                    break
                if lo is not None and j + 1 < len(keys) and keys[j + 1] <= lo:
                    continue
                yield from self.walk_nodes(self.child(node, j), depth + 1, lo, hi)

    def relocate_scan(self, first: int, end: int, start: FullKey | None = None,
                      leaves: int = 1 << 62) -> tuple[list[tuple[FullKey, LeafVal]],
                                                       FullKey | None]:
        """For reblock: make every node stored in blocks [first, end) dirty (the commit
        writes it elsewhere) and return the leaf entries whose data extent is there; leaf by
        leaf in key order from ``start``, at most ``leaves`` of them.  Also returns the key
        to go on from (None at the end), so a caller can release its lock in between."""
        found: list[tuple[FullKey, LeafVal]] = []
        k = start
        while leaves > 0:
            leaves -= 1
            path, leaf = self._descend(k) if k is not None else self._first_leaf()
            for depth, (node, _i) in enumerate(path):
                if node.off and first <= node.off // BLOCK < end:
                    self._dirty_path(path[:depth], node)
            if leaf.off and first <= leaf.off // BLOCK < end:
                self._dirty_path(path, leaf)
            found.extend((lk, v) for lk, v in zip(leaf.keys, leaf.vals, strict=True)
                         if v[4] and first <= v[4] // BLOCK < end)
            k = next((node.keys[i + 1] for node, i in reversed(path)
                      if i + 1 < len(node.keys)), None)
            if k is None:
                break
        return found, k

    def _first_leaf(self) -> tuple[list[tuple[Node, int]], Node]:
        path = []
        node = self.root
        while node.level:
            path.append((node, 0))
            node = self.child(node, 0)
        return path, node

    # -- modification ----------------------------------------------------------------------------
    def _cow(self, node: Node) -> None:
        if node.off:
            self.alloc.free(node.off // BLOCK, 1, data=False)
            self.cache.pop(node.off, None)
            node.off = 0
        node.dirty = True
        self.dirty_count += 1

    def _dirty_path(self, path: list[tuple[Node, int]], leaf: Node) -> None:
        if leaf.dirty:
            return  # a dirty node's ancestors are always dirty and already point at it
        nodes = [n for n, _ in path] + [leaf]
        for depth, node in enumerate(nodes):
            if not node.dirty:
                self._cow(node)
            if depth:
                parent, i = path[depth - 1]
                parent.vals[i][3] = node
                parent.vals[i][0] = 0

    def _fix_separators(self, path: list[tuple[Node, int]], node: Node) -> None:
        """Keep each parent's key equal to its child's first key after index 0 changed."""
        for parent, i in reversed(path):
            if not node.keys:
                return
            parent.keys[i] = node.keys[0]
            if i:
                return
            node = parent

    def upsert(self, k: FullKey, val: LeafVal) -> LeafVal | None:
        """Insert or replace the entry at ``k``; returns the value replaced, if any."""
        path, leaf = self._descend(k)
        return self.upsert_at(path, leaf, k, val)

    def locate(self, k: FullKey) -> tuple[list[tuple[Node, int]], Node, int]:
        """(path, leaf, index of the floor entry or -1) for a read-then-modify of ``k``."""
        path, leaf = self._descend(k)
        return path, leaf, bisect_right(leaf.keys, k) - 1

    def set_val_at(self, path: list[tuple[Node, int]], leaf: Node, i: int, val: LeafVal) -> None:
        """Replace the value of entry ``i`` of a located leaf (the data size is unchanged)."""
        self._dirty_path(path, leaf)
        leaf.vals[i] = val

    def upsert_at(self, path: list[tuple[Node, int]], leaf: Node, k: FullKey,
                  val: LeafVal) -> LeafVal | None:
        """``upsert`` on the path ``locate`` (or a descent) returned for a key <= ``k``'s leaf."""
        self._dirty_path(path, leaf)
        i = bisect_left(leaf.keys, k)
        if i < len(leaf.keys) and leaf.keys[i] == k:
            old = leaf.vals[i]
            leaf.vals[i] = val
            leaf.nbytes += leaf_entry_bytes(val) - leaf_entry_bytes(old)
        else:
            old = None
            leaf.keys.insert(i, k)
            leaf.vals.insert(i, val)
            leaf.nbytes += leaf_entry_bytes(val)
            if i == 0:
                self._fix_separators(path, leaf)
        if leaf.nbytes > NODE_SIZE:
            self._split_up(path, leaf, i)
        return old

    def remove(self, k: FullKey) -> LeafVal | None:
        """Remove the entry at ``k``; returns its value (None if absent)."""
        path, leaf = self._descend(k)
        i = bisect_left(leaf.keys, k)
        if i >= len(leaf.keys) or leaf.keys[i] != k:
            return None
        self._dirty_path(path, leaf)
        old = leaf.vals.pop(i)
        del leaf.keys[i]
        leaf.nbytes -= leaf_entry_bytes(old)
        self._rebalance(path, leaf)
        self._collapse_root()
        return old

    def _rebalance(self, path: list[tuple[Node, int]], node: Node) -> None:
        """After a removal: drop empty nodes, merge small ones into a sibling, and keep every
        separator exact, from the leaf up to the root."""
        for parent, pi in reversed(path):
            if not node.keys:
                del parent.keys[pi]
                del parent.vals[pi]
                parent.nbytes -= INNER_ENTRY_SIZE
                self.dirty_count -= 1
            else:
                if node.nbytes < NODE_SIZE // 4 and len(parent.keys) > 1:
                    pi = self._merge(parent, pi)
                parent.keys[pi] = parent.vals[pi][3].keys[0]
            node = parent

    def _merge(self, parent: Node, pi: int) -> int:
        """Merge child ``pi`` (dirty, small) with a neighbour if both fit in 3/4 of a node;
        returns the index of the surviving child."""
        li = pi - 1 if pi else 0
        left, right = self.child(parent, li), self.child(parent, li + 1)
        if left.nbytes + right.nbytes - NODE_HDR_SIZE > NODE_SIZE * 3 // 4:
            return pi
        for idx, node in ((li, left), (li + 1, right)):
            if not node.dirty:
                self._cow(node)
                parent.vals[idx][3] = node
                parent.vals[idx][0] = 0
        left.keys += right.keys
        left.vals += right.vals
        left.nbytes += right.nbytes - NODE_HDR_SIZE
        del parent.keys[li + 1]
        del parent.vals[li + 1]
        parent.nbytes -= INNER_ENTRY_SIZE
        self.dirty_count -= 1  # the right node is gone
        return li

    def _collapse_root(self) -> None:
        root = self.root
        if root.level and not root.keys:
            self.dirty_count -= 1
            self.root = Node(0, [], [])
            self.dirty_count += 1
            return
        while root.level and len(root.keys) == 1:
            child = self.child(root, 0)
            self.dirty_count -= 1  # the old root (dirty: on the modified path) is dropped
            if not child.dirty:
                self._cow(child)
            self.root = root = child

    def _split_up(self, path: list[tuple[Node, int]], node: Node, pos: int) -> None:
        while node.nbytes > NODE_SIZE:
            right = self._split(node, pos)
            if not path:
                self.root = Node(node.level + 1, [node.keys[0], right.keys[0]],
                                 [[0, ZERO_CSUM, 0, node], [0, ZERO_CSUM, 0, right]])
                self.dirty_count += 1
                return
            parent, pi = path.pop()
            parent.keys.insert(pi + 1, right.keys[0])
            parent.vals.insert(pi + 1, [0, ZERO_CSUM, 0, right])
            parent.nbytes += INNER_ENTRY_SIZE
            pos = pi + 1
            node = parent

    def _split(self, node: Node, pos: int) -> Node:
        """Move the upper part of an overfull node (just grown at index ``pos``) into a new
        right sibling.  An insert near the end (sequential inserts) cuts right after it,
        leaving the left node full instead of half full."""
        n = len(node.keys)
        sequential = pos >= n * 3 // 4
        if node.level:
            cut = min(pos + 1, n - 1) if sequential else n // 2
        else:
            sizes = [leaf_entry_bytes(v) for v in node.vals]
            if sequential:
                cut = pos + 1
                used = NODE_HDR_SIZE + sum(sizes[:cut])
                while used > NODE_SIZE:
                    cut -= 1
                    used -= sizes[cut]
            else:
                half, used, cut = (node.nbytes - NODE_HDR_SIZE) // 2, 0, 0
                while cut < n - 1 and used + sizes[cut] <= half:
                    used += sizes[cut]
                    cut += 1
        cut = min(max(cut, 1), n - 1)
        right = Node(node.level, node.keys[cut:], node.vals[cut:])
        del node.keys[cut:]
        del node.vals[cut:]
        node.nbytes -= right.nbytes - NODE_HDR_SIZE
        self.dirty_count += 1
        return right

    # -- commit ---------------------------------------------------------------------------------
    def flush(self) -> list[tuple[int, bytes]]:
        """Write every dirty node into fresh blocks (children first); returns the writes.
        Blocks are taken for all dirty nodes at once, so they land in contiguous runs."""
        writes: list[tuple[int, bytes]] = []
        if self.root.dirty:
            blocks = self.alloc.alloc_many(self.dirty_count, META)
            self._write(self.root, writes, blocks)
            if blocks:
                raise AssertionError(f"dirty node count off by {len(blocks)}")
        self.dirty_count = 0
        return writes

    def _write(self, node: Node, writes: list, blocks: list[int]) -> tuple[int, bytes, int]:
        if node.level:
            for ref in node.vals:
                child = ref[3]
                if child is not None:
                    ref[0], ref[1], ref[2] = self._write(child, writes, blocks)
                    ref[3] = None
                    self._cache_put(child)
            raw, max_tid = encode_inner(node.level, node.keys, node.vals)
        else:
            raw, max_tid = encode_leaf(node.keys, node.vals)
        node.off = blocks.pop() * BLOCK
        node.csum = checksum(raw)
        node.dirty = False
        writes.append((node.off, raw))
        return node.off, node.csum, max_tid

    def count_dirty(self, node: Node | None = None) -> int:
        """Dirty nodes, counted by walking them (a check of ``dirty_count``)."""
        node = node or self.root
        if not node.dirty:
            return 0
        below = sum(self.count_dirty(r[3]) for r in node.vals if r[3] is not None) \
            if node.level else 0
        return 1 + below

    def height(self) -> int:
        return self.root.level + 1
