"""Where passphrases come from: key files (cryptsetup semantics: the whole file, '-' for
stdin, no newline processing; --keyfile-offset/--keyfile-size cut a slice out of it) or a
hidden prompt on a terminal.  Nothing here is ever written anywhere."""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable
from typing import TypeVar

from hammerfs.errors import HammerError
from hammerfs.luks.secmem import make_undumpable

T = TypeVar("T")
PROMPT_TRIES = 3  # as cryptsetup's --tries

MAX_KEY_FILE = 8 * 1024 * 1024   # cryptsetup's default --keyfile-size limit
MAX_PASSPHRASE = 512


def warn(message: str) -> None:
    print(f"hammer: warning: {message}", file=sys.stderr)


def read_key_file(path: str, offset: int = 0, size: int = 0) -> bytes:
    """The key file as the passphrase ('-' reads stdin): ``size`` bytes from ``offset``, or
    with ``size`` 0 everything from ``offset`` to the end (cryptsetup's --keyfile-offset and
    --keyfile-size; a file too short for them is an error, as there)."""
    make_undumpable()  # before the key is in memory: no core dump will ever hold it
    if offset < 0 or size < 0:
        raise HammerError("--keyfile-offset and --keyfile-size cannot be negative")
    # An explicit size may exceed the default limit, as in cryptsetup.
    limit = size or MAX_KEY_FILE + 1
    if path == "-":
        data = _read_stdin_slice(offset, limit)
    else:
        data = _read_file_slice(path, offset, limit)
    if size and len(data) < size:
        raise HammerError(f"key file {path}: cannot read {size} bytes at offset {offset} "
                          f"(only {len(data)} there)")
    if not size and len(data) > MAX_KEY_FILE:
        raise HammerError(f"key file {path} is larger than {MAX_KEY_FILE} bytes "
                          "(use --keyfile-size)")
    if not data:
        raise HammerError(f"key file {path} is empty" if not offset
                          else f"key file {path} holds nothing after offset {offset}")
    return data


def _read_stdin_slice(offset: int, limit: int) -> bytes:
    stream = sys.stdin.buffer
    skipped = len(stream.read(offset)) if offset else 0
    if skipped < offset:
        raise HammerError(f"cannot skip {offset} bytes of the key on stdin "
                          f"(--keyfile-offset): only {skipped} there")
    return stream.read(limit)


def _read_file_slice(path: str, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
                warn(f"key file {path} is accessible by group or others "
                     f"(mode {stat.S_IMODE(mode):04o}); consider chmod 600")
            if offset and stat.S_ISREG(mode) and offset > os.fstat(f.fileno()).st_size:
                raise HammerError(f"key file {path} is shorter than --keyfile-offset "
                                  f"{offset}")
            if offset:
                f.seek(offset)
            return f.read(limit)
    except OSError as exc:
        raise HammerError(f"cannot read key file {path}: {exc.strerror}") from None


def interactive() -> bool:
    return sys.stdin.isatty()


def prompt(text: str, *, confirm: bool = False) -> bytes:
    """A hidden prompt on the terminal; with ``confirm`` the passphrase is asked twice."""
    if not interactive():
        raise HammerError("no terminal to ask for a passphrase: use --key-file "
                          "(or --key-file - to read it from stdin)")
    make_undumpable()
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
                   confirm: bool = False, offset: int = 0, size: int = 0) -> bytes:
    """From ``key_file`` (a slice of it with ``offset``/``size``) or a terminal prompt."""
    if key_file:
        return read_key_file(key_file, offset, size)
    if offset or size:
        raise HammerError("--keyfile-offset and --keyfile-size apply to a key file: "
                          "give --key-file too")
    return prompt(text, confirm=confirm)


def unlock_with_tries(unlock: Callable[[bytes], T], key_file: str | None, text: str, *,
                      offset: int = 0, size: int = 0, tries: int = PROMPT_TRIES
                      ) -> tuple[T, bytes]:
    """``unlock(passphrase)`` with the passphrase from ``key_file`` (one try), or typed at
    the prompt ``text``: up to ``tries`` times while it is wrong, as cryptsetup.  Returns
    (what unlock returned, the passphrase that worked)."""
    from hammerfs.luks.container import WrongPassphrase

    if key_file or not interactive():
        passphrase = get_passphrase(key_file, text, offset=offset, size=size)
        return unlock(passphrase), passphrase
    for attempt in range(1, tries + 1):
        passphrase = get_passphrase(None, text, offset=offset, size=size)
        try:
            return unlock(passphrase), passphrase
        except WrongPassphrase:
            if attempt == tries:
                raise
            print("No key available with this passphrase.", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")
