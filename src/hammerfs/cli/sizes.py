"""The one parser of sizes on the command line (newfs --size, mirror -b/-S, ...)."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``1.5G``, ``64MiB``, ``100k``, ``4096``: powers of 1024, case
    does not matter, a fraction is allowed with a unit.  For argparse ``type=``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m or ("." in m.group(1) and not m.group(2)):
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 64M, 1.5G, 2T)")
    whole, _, frac = m.group(1).partition(".")
    unit = _UNITS[m.group(2).upper()]
    size = int(whole) * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return size


def human(n: float) -> str:
    """``1.5 GiB``, ``512 B``: what the commands print."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
