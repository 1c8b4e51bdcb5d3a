"""The filesystem API: inodes, directories, file data, history views (layer 3).

Depends only on hammerfs.store (the RecordStore contract) and hammerfs.errors."""
