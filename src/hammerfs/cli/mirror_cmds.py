"""`hammer` subcommands of the mirror layer (filled in by the mirror work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
