"""Who keeps a mount busy, as `fuser -vm` shows it: the processes with a file on the mount
open, their working or root directory or executable inside it, or one of its files mapped.
`hammer umount` and `hammer down` name them when the kernel refuses to unmount.

Nothing here touches the mount itself (a stat inside a FUSE mount would be served by the
very process being unmounted): open files are matched by the ``mnt_id`` of
/proc/PID/fdinfo, mappings by the device of /proc/PID/maps, directories by their path.
Processes of other users are visible to root only, and those of another mount namespace
are not matched by path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from hammerfs.blockdev.file import process_cmdline
from hammerfs.control.client import KernelMount, kernel_mount
from hammerfs.errors import HammerError, MountBusy, UnmountCommitFailed


@dataclass(frozen=True, slots=True)
class Holder:
    pid: int
    command: str
    uses: tuple[str, ...]  # "cwd", "root", "exe", "mapped", "open FILE"

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}): {', '.join(self.uses)}"


def holders(mountpoint: str) -> list[Holder]:
    """Every process (but this one) that uses the mount on ``mountpoint``, by pid."""
    km = kernel_mount(os.path.realpath(mountpoint))
    if km is None:
        return []
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        uses = _uses(int(name), km)
        if uses:
            found.append(Holder(int(name), _short(process_cmdline(name)), tuple(uses)))
    return sorted(found, key=lambda h: h.pid)


def _uses(pid: int, km: KernelMount) -> list[str]:
    base = f"/proc/{pid}"
    uses = [what for what in ("cwd", "root", "exe")
            if _inside(_readlink(f"{base}/{what}"), km.mountpoint)]
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        fds = []
    for fd in fds:
        if _fd_mount_id(f"{base}/fdinfo/{fd}") == km.mount_id:
            uses.append(f"open {_readlink(f'{base}/fd/{fd}') or '?'}")
    if _maps_device(f"{base}/maps", km.device):
        uses.append("mapped")
    return uses


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _inside(path: str | None, mountpoint: str) -> bool:
    return path is not None and (path == mountpoint or
                                 path.startswith(mountpoint.rstrip("/") + "/"))


def _fd_mount_id(fdinfo: str) -> int | None:
    try:
        with open(fdinfo) as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maps_device(maps: str, device: tuple[int, int]) -> bool:
    """True when a mapping of the process is of a file on ``device`` (major, minor)."""
    want = f"{device[0]:02x}:{device[1]:02x}"
    try:
        with open(maps) as f:
            return any(line.split(None, 5)[3:4] == [want] for line in f)
    except OSError:
        return False


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[:limit - 3] + "..."


def describe(found: list[Holder]) -> str:
    return "; ".join(map(str, found))


def unmount_naming_holders(unmount: Callable[[str], None], mountpoint: str) -> None:
    """``unmount(mountpoint)``; when the kernel refuses and processes use the mount, a
    MountBusy naming them instead of fusermount's bare "Device or resource busy"."""
    try:
        unmount(mountpoint)
    except UnmountCommitFailed:
        raise  # unmounted: nothing holds it any more
    except HammerError as exc:
        found = holders(mountpoint)
        if not found:
            raise
        raise MountBusy(f"cannot unmount {mountpoint}: it is busy, in use by "
                        f"{describe(found)}", found) from exc
