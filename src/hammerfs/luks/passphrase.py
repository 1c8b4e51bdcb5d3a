"""Where passphrases come from: key files (cryptsetup semantics: the whole file, '-' for
stdin, no newline processing) or a hidden prompt on a terminal.  Nothing here is ever
written anywhere."""

from __future__ import annotations

import getpass
import os
import stat
import sys

from hammerfs.errors import HammerError

MAX_KEY_FILE = 8 * 1024 * 1024   # cryptsetup's default --keyfile-size limit
MAX_PASSPHRASE = 512


def warn(message: str) -> None:
    print(f"hammer: warning: {message}", file=sys.stderr)


def read_key_file(path: str) -> bytes:
    """The whole key file as the passphrase ('-' reads stdin to its end)."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_KEY_FILE + 1)
    else:
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
                    warn(f"key file {path} is accessible by group or others "
                         f"(mode {stat.S_IMODE(mode):04o}); consider chmod 600")
                data = f.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise HammerError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise HammerError(f"key file {path} is larger than {MAX_KEY_FILE} bytes")
    if not data:
        raise HammerError(f"key file {path} is empty")
    return data


def interactive() -> bool:
    return sys.stdin.isatty()


def prompt(text: str, *, confirm: bool = False) -> bytes:
    """A hidden prompt on the terminal; with ``confirm`` the passphrase is asked twice."""
    if not interactive():
        raise HammerError("no terminal to ask for a passphrase: use --key-file "
                          "(or --key-file - to read it from stdin)")
    try:
        first = getpass.getpass(text)
        if confirm and getpass.getpass("Verify passphrase: ") != first:
            raise HammerError("passphrases do not match")
    except EOFError:
        raise HammerError("no passphrase given") from None
    if not first:
        raise HammerError("empty passphrase")
    raw = first.encode()
    if len(raw) > MAX_PASSPHRASE:
        raise HammerError(f"passphrase is longer than {MAX_PASSPHRASE} bytes")
    return raw


def get_passphrase(key_file: str | None, text: str = "Enter passphrase: ", *,
                   confirm: bool = False) -> bytes:
    if key_file:
        return read_key_file(key_file)
    return prompt(text, confirm=confirm)
