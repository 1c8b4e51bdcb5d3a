"""hammerfs: encrypted, versioned, self-checking storage with HAMMER-style replication.

Layers (each package depends only on the ones listed before it):
blockdev -> luks -> store -> fs -> (fuse, mirror, cli).  See docs/architecture.md.
"""

__version__ = "0.1.0"
