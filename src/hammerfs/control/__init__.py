"""The per-mount local control channel (layer 4): how a command given a path inside a mounted
hammerfs acts through the one process that owns the volume.

Discovery.  A mount process registers itself in the runtime directory (``runtime_dir()``,
``/run/hammerfs`` for root): ``<key>.sock`` (a Unix stream socket, mode 0600) and
``<key>.json`` (``{"mountpoint", "socket", "pfs", "volume", "pid", "asof", "readonly"}``),
where ``key`` is derived from the mountpoint.  ``find_mount(path)`` maps any path inside a
hammerfs mount to ``MountInfo(mountpoint, socket_path, pfs, relpath)``; ``relpath`` is the
path below the mount root (it may contain ``@@`` history and PFS names).

Security.  The runtime directory must be the user's own, mode 0700, not a symlink, and every
file in it is opened O_NOFOLLOW / created O_EXCL (``control.runtime``).  The socket is mode
0600 and the server checks the peer's uid with SO_PEERCRED: only the owner of the mount (or
root) is served.  The other way round, ``find_mount`` trusts a registration only if
/proc/self/mountinfo shows a ``fuse.hammerfs`` mount of our uid (or root's) on its mount
point, and ``ControlClient.for_mount`` checks the socket's peer (the registered pid, our uid
or root, the uid owning the FUSE mount) before it sends a byte (``ForgedMount`` otherwise).

Protocol.  One request per connection.  The client sends one JSON line
``{"op": NAME, "args": {...}, "stream": bool}``.  The server answers one JSON line:
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": MESSAGE, "errno": N}``.
A line that is not such an object (not UTF-8, not JSON, nested too deeply, ``op`` not a
string, ``args`` not an object, ``stream`` not a boolean) is refused with EINVAL before any
op runs (``server.parse_request``).
For a streaming request (``ControlClient.open_stream``) the server answers
``{"ok": true, "stream": true}`` and then hands the connected socket to the handler; from then
on both sides exchange raw bytes in a format the op defines, and the server closes the
connection when the handler returns.  Header lines are read byte by byte so raw bytes that
follow are never swallowed.  A handler that fails after the stream began makes the server
send its ``{"ok": false, ...}`` line on the stream; ops whose output is plain bytes
(``read_version``) therefore frame them (``control.chunks``) so the client tells data from a
failure, and every failure reaches the user as a HammerError (``hammer: <message>``, exit 1).
``await-unmount`` (``hammer umount``) registers, then answers after the mount's final commit:
a failed final commit makes ``hammer umount`` exit non-zero.

Ops.  A handler is ``handler(ctx, args: dict, conn: socket | None) -> dict`` (``conn`` is the
socket for streaming requests, None otherwise).  ``ctx`` is a ``ControlContext``: ``store``
(the open RecordStore), ``ns`` (the mount's Namespace), ``fs`` (the live FileSystem of the
mounted PFS, or the view of an as-of/slave mount), ``pfs``, ``mountpoint``, ``volume`` and
``lock`` (the coarse fs lock: hold it while touching store or fs).  Handlers raise
HammerError (an errno is passed on when it has one).  The mount registers the fs ops
(``hammerfs.control.ops.OPS``) plus ``hammerfs.mirror.control_ops.OPS`` if that module exists.
"""

from hammerfs.control.client import ControlClient, MountInfo, find_mount
from hammerfs.control.server import ControlContext, ControlServer, runtime_dir

__all__ = ["ControlClient", "ControlContext", "ControlServer", "MountInfo", "find_mount",
           "runtime_dir"]
