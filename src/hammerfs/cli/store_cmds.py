"""`hammer` subcommands of the store layer (filled in by the store work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the `hammer` parser."""
