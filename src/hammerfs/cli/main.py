"""`hammer` entry point: builds the argument parser from the command modules and turns every
HammerError into a one-line message and a non-zero exit status (never a traceback)."""

from __future__ import annotations

import argparse
import sys

from hammerfs import __version__
from hammerfs.cli import (
    cleanup_cmds,
    demo,
    fs_cmds,
    helptext,
    luks_cmds,
    mirror_cmds,
    scrub_cmds,
    service_cmds,
    store_cmds,
)
from hammerfs.errors import HammerError

# Each module adds its subcommands with register(subparsers); a subcommand sets
# `func(args) -> int | None` as its default.
COMMAND_MODULES = (store_cmds, scrub_cmds, luks_cmds, fs_cmds, cleanup_cmds, mirror_cmds,
                   service_cmds, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = helptext.Parser(
        prog="hammer", formatter_class=helptext.Formatter,
        description="hammerfs: encrypted, versioned, self-checking storage with "
        "HAMMER-style master/slave replication.",
        epilog="Run 'hammer COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"hammerfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    helptext.apply(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except HammerError as exc:
        print(f"hammer: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # anywhere, also in a prompt: a message, never a traceback
        print("\nhammer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
