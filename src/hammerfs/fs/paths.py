"""Object ids back to path names (for reports: the files a scrub found damaged).

Files carry no parent pointer, so this walks the PFS's directories from its root,
breadth-first, reading only directory entries, and stops once every id asked for is named.
A hard-linked file gets the first name found; an object no live directory names (only
history holds it) is left out."""

from __future__ import annotations

import stat
from collections import deque

from hammerfs.fs.layout import REC_DIRENT, decode_dirent
from hammerfs.store.api import RecordStore
from hammerfs.store.records import MAX_U64, ROOT_OBJ


def paths_of(store: RecordStore, pfs: int, obj_ids: set[int]) -> dict[int, str]:
    """``{obj_id: "/dir/name"}`` (relative to the PFS root) for the ids that have a name."""
    wanted = set(obj_ids)
    found: dict[int, str] = {}
    if ROOT_OBJ in wanted:
        found[ROOT_OBJ] = "/"
        wanted.discard(ROOT_OBJ)
    queue = deque([(ROOT_OBJ, "")])
    seen = {ROOT_OBJ}
    while queue and wanted:
        dir_obj, prefix = queue.popleft()
        for rec in store.scan((pfs, dir_obj, REC_DIRENT, 0), (pfs, dir_obj, REC_DIRENT, MAX_U64)):
            entry = decode_dirent(rec.key, rec.data)
            path = f"{prefix}/{entry.name.decode('utf-8', 'surrogateescape')}"
            if entry.obj_id in wanted:
                found[entry.obj_id] = path
                wanted.discard(entry.obj_id)
            if stat.S_ISDIR(entry.mode_type) and entry.obj_id not in seen:
                seen.add(entry.obj_id)
                queue.append((entry.obj_id, path))
    return found
