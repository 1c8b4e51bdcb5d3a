"""Parsing of command targets shared by the commands: ``VOLUME[:PFS]``."""

from __future__ import annotations

import os

from hammerfs.errors import HammerError
from hammerfs.store.records import MAX_PFS


def parse_volume_spec(spec: str) -> tuple[str, int]:
    """Split ``VOLUME[:PFS]`` into (volume path, pfs id); the PFS defaults to 0 (the root).

    The suffix counts as a PFS id only if it is a decimal number and what precedes it exists,
    so volume paths that contain colons still work.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and os.path.exists(head):
        pfs = int(tail)
        if pfs > MAX_PFS:
            raise HammerError(f"PFS id {pfs} is out of range (0-{MAX_PFS})")
        return head, pfs
    return spec, 0
