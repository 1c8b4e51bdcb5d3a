"""Userspace LUKS1/LUKS2 containers, byte-compatible with cryptsetup (layer 1b).

Depends only on hammerfs.blockdev and hammerfs.errors."""
