"""FUSE adapter: maps kernel requests onto hammerfs.fs (layer 4)."""
