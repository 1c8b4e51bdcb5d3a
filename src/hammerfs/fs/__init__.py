"""The filesystem API: inodes, directories, file data, history views (layer 3).

Depends only on hammerfs.store (the RecordStore contract) and hammerfs.errors.

- ``layout``: the record formats (docs/format.md, "Filesystem records").
- ``filesystem``: ``FileSystem``, one view (PFS, live or as of a TID) addressed by obj_id.
- ``namespace``: ``Namespace``, path resolution with ``@@`` history names and PFS links.
- ``history``: versions of an object, snapshots, undo (restore of older versions).
"""

from hammerfs.fs.filesystem import FileSystem, FsError, init_pfs_root
from hammerfs.fs.namespace import Namespace, format_tid, parse_magic, parse_tid

__all__ = ["FileSystem", "FsError", "Namespace", "format_tid", "init_pfs_root", "parse_magic",
           "parse_tid"]
