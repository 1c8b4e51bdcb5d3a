"""The command line's side of ``hammerfs.quantity`` (the one parser of sizes and durations):
argparse types, and how sizes are printed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hammerfs import quantity

MAX_VOLUME_SIZE = 1 << 60  # newfs --size: far beyond any device, far below overflow


def argtype(parse: Callable[..., Any], **limits: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` from a ``hammerfs.quantity`` parser: its QuantityError becomes
    argparse's usage error."""
    def convert(text: str) -> Any:
        try:
            return parse(text, **limits)
        except quantity.QuantityError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


parse_size = argtype(quantity.parse_size, maximum=MAX_VOLUME_SIZE)


def human(n: float) -> str:
    """``1.5 GiB``, ``512 B``: what the commands print."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
