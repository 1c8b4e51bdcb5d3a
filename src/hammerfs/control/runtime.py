"""The runtime directory: where mounts register (``<key>.sock``, ``<key>.json``), where a
daemonized mount logs (``<key>.log``) and where ``hammer up`` keeps its state (``service/``).

It is the one place the trust in a mount's socket comes from, so it must be the user's own:
a directory (not a symlink) owned by the effective uid, mode 0700.  A squatted directory
(made by another user in /tmp before us, or opened to others) is refused, never repaired:
whatever an attacker planted in it while it was open stays there.  Inside it every file is
opened with O_NOFOLLOW and created with O_EXCL, so a symlink or another user's file can
never make us write through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat

from hammerfs.errors import HammerError

MAX_JSON = 64 << 10  # a registration is ~200 bytes; anything bigger is not ours


class RuntimeDirError(HammerError):
    """The runtime directory (or a file in it) is not safe to use."""


def runtime_dir() -> str:
    """Where mounts register: ``$HAMMERFS_RUNTIME_DIR``, else /run/hammerfs for root, else
    ``$XDG_RUNTIME_DIR/hammerfs`` or ``/tmp/hammerfs-<uid>``.  Only the path: see
    ``ensure_runtime_dir`` / ``existing_runtime_dir`` for a checked one."""
    override = os.environ.get("HAMMERFS_RUNTIME_DIR")
    if override:
        return os.path.abspath(override)
    if os.geteuid() == 0:
        return "/run/hammerfs"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "hammerfs")
    return f"/tmp/hammerfs-{os.geteuid()}"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_private_dir(path: str) -> None:
    """Refuse ``path`` unless it is a real directory of ours that nobody else may enter."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {path}: {exc.strerror}") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "it is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"it is owned by {_user(st.st_uid)}, not by you ({_user(os.geteuid())})"
    elif stat.S_IMODE(st.st_mode) != 0o700:
        problem = f"its mode is {stat.S_IMODE(st.st_mode):04o}, not 0700"
    if problem:
        raise RuntimeDirError(
            f"unsafe runtime directory {path}: {problem}; another user may have created it "
            "to intercept mounts.  Remove it (after checking what is in it), or set "
            "HAMMERFS_RUNTIME_DIR to a directory of your own with mode 0700")


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) if missing, then check it as ``check_private_dir``."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    old = os.umask(0o077)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the runtime directory {path}: "
                              f"{exc.strerror}") from None
    finally:
        os.umask(old)
    check_private_dir(path)
    return path


def ensure_runtime_dir() -> str:
    """The runtime directory, created if missing; RuntimeDirError if it is not safe."""
    return ensure_private_dir(runtime_dir())


def existing_runtime_dir() -> str | None:
    """The runtime directory when it exists (checked), None when it does not."""
    path = runtime_dir()
    if not os.path.lexists(path):
        return None
    check_private_dir(path)
    return path


def _check_fd(fd: int, path: str) -> None:
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file"
    elif st.st_uid not in (os.geteuid(), 0):
        problem = f"owned by {_user(st.st_uid)}"
    elif st.st_nlink != 1:
        problem = "it has other hard links"
    if problem:
        os.close(fd)
        raise RuntimeDirError(f"refusing runtime file {path}: {problem}")


def create_private(path: str) -> int:
    """A new file of ours at ``path`` (an old one is unlinked first), opened for writing.
    O_EXCL|O_NOFOLLOW: never through a symlink, never into someone else's file."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RuntimeDirError(f"cannot create {path}: {exc.strerror}") from None


def open_private(path: str) -> int:
    """An existing file of ours, read-only, never through a symlink (ELOOP) or a fifo."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    _check_fd(fd, path)
    return fd


def nofollow_opener(path: str, flags: int) -> int:
    """``open(..., opener=nofollow_opener)``: never through a symlink; new files 0600."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def write_json(path: str, obj: dict) -> None:
    """Replace ``path`` atomically with ``obj`` (through a fresh ``path.tmp``)."""
    tmp = path + ".tmp"
    fd = create_private(tmp)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    """A JSON object written by ``write_json``; OSError/ValueError/RuntimeDirError else."""
    fd = open_private(path)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ValueError(f"{path}: too large")
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a JSON object")
    return obj


def remove_files(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
