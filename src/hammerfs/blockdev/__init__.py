"""Block devices: the bottom layer.  Knows nothing about LUKS, records or files."""

from hammerfs.blockdev.base import BlockDevice

__all__ = ["BlockDevice"]
