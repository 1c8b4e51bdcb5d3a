"""Issue 11.1: a second, unprivileged local user attacks a victim's runtime directory
(``/tmp/hammerfs-<uid>`` when XDG_RUNTIME_DIR is unset).  Both are real users (created with
useradd); their commands run in forked children of this process after setuid, so they need
no interpreter of their own.  The victim mounts through the setuid fusermount3 like any
user (it is given access to /dev/fuse by an ACL entry while these tests run, when the
machine's /dev/fuse is not world-accessible)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import pytest

import hammerfs
from hammerfs.blockdev.file import FileDevice
from hammerfs.cli.main import main
from hammerfs.control.server import mount_key
from hammerfs.fs import FileSystem
from hammerfs.store import Store
from hammerfs.store.records import ROOT_OBJ

# The setuid children cannot read this interpreter's files below /root: import everything
# the commands may import lazily now.
for _m in pkgutil.walk_packages(hammerfs.__path__, "hammerfs."):
    if not _m.name.endswith("__main__"):
        importlib.import_module(_m.name)
for _name in ("ctypes", "ctypes.util", "json", "shutil", "stat", "traceback",
              "concurrent.futures", "encodings.idna"):
    importlib.import_module(_name)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates users and runs as them")

VICTIM, ATTACKER = "hfs-victim", "hfs-attacker"
PLAINTEXT = b"TOP SECRET PLAINTEXT of the victim " * 64


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    @property
    def runtime_dir(self) -> str:
        return f"/tmp/hammerfs-{self.uid}"


def ensure_user(name: str) -> User:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], capture_output=True)
        pw = pwd.getpwnam(name)  # made by us or, concurrently, by another run
    return User(name, pw.pw_uid, pw.pw_gid)


ACL_XATTR = "system.posix_acl_access"


def _acl(entries: list[tuple[int, int, int]]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.fixture(scope="module")
def users():
    victim, attacker = ensure_user(VICTIM), ensure_user(ATTACKER)
    st = os.stat("/dev/fuse")
    old_acl = None
    with contextlib.suppress(OSError):
        old_acl = os.getxattr("/dev/fuse", ACL_XATTR)
    granted = st.st_mode & 0o006 != 0o006
    if granted:  # USER_OBJ rw, USER victim rw, GROUP_OBJ as before, MASK rw, OTHER as before
        os.setxattr("/dev/fuse", ACL_XATTR, _acl([
            (0x01, (st.st_mode >> 6) & 7, 0xFFFFFFFF), (0x02, 6, victim.uid),
            (0x04, (st.st_mode >> 3) & 7, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
            (0x20, st.st_mode & 7, 0xFFFFFFFF)]))
    try:
        yield victim, attacker
    finally:
        if granted:
            if old_acl is not None:
                os.setxattr("/dev/fuse", ACL_XATTR, old_acl)
            else:
                os.removexattr("/dev/fuse", ACL_XATTR)
            os.chmod("/dev/fuse", stat.S_IMODE(st.st_mode))


@dataclass
class Result:
    rc: int
    out: str
    err: str


def as_user(user: User, fn, *, timeout: float = 120) -> Result:
    """Run ``fn()`` as ``user`` (no XDG_RUNTIME_DIR, no HAMMERFS_RUNTIME_DIR) in a child."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        status = _run_child(user, fn, out_f.fileno(), err_f.fileno(), timeout)
        out_f.seek(0)
        err_f.seek(0)
        return Result(os.waitstatus_to_exitcode(status),
                      out_f.read().decode(errors="replace"),
                      err_f.read().decode(errors="replace"))


def _run_child(user: User, fn, out_fd: int, err_fd: int, timeout: float) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 99
        try:
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            for var in ("XDG_RUNTIME_DIR", "HAMMERFS_RUNTIME_DIR"):
                os.environ.pop(var, None)
            os.environ["HOME"] = "/"
            os.chdir("/")
            rc = fn() or 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(rc)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"{fn} as {user.name} did not finish in {timeout}s")
        time.sleep(0.02)


def hammer_as(user: User, *argv) -> Result:
    return as_user(user, lambda: main([str(a) for a in argv]))


def mounts_below(base: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(base + "/")]


@pytest.fixture
def world(users):
    """A base dir both users can traverse: the victim's private dir (volume, mount point,
    a precious file) and the attacker's dir.  The victim's runtime dir starts absent."""
    victim, attacker = users
    base = tempfile.mkdtemp(prefix="hfs-sec-")
    os.chmod(base, 0o755)
    vdir, adir = os.path.join(base, "victim"), os.path.join(base, "attacker")
    for d, u, mode in ((vdir, victim, 0o711), (adir, attacker, 0o755)):
        os.mkdir(d)
        os.chown(d, u.uid, u.gid)
        os.chmod(d, mode)
    precious = os.path.join(vdir, "precious")
    with open(precious, "wb") as f:
        f.write(b"the victim's own file\n")
    os.chown(precious, victim.uid, victim.gid)
    for name in ("mnt", "backup"):
        os.mkdir(os.path.join(vdir, name))
        os.chown(os.path.join(vdir, name), victim.uid, victim.gid)
    shutil.rmtree(victim.runtime_dir, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(victim.runtime_dir)
    w = World(victim, attacker, base, vdir, adir, precious)
    try:
        yield w
    finally:
        for mp in mounts_below(base):
            hammer_as(victim, "umount", mp)
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        w.stop_listener()
        shutil.rmtree(victim.runtime_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(victim.runtime_dir)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class World:
    victim: User
    attacker: User
    base: str
    vdir: str
    adir: str
    precious: str
    listener: int = 0

    def path(self, name: str) -> str:
        return os.path.join(self.vdir, name)

    def volume(self, name: str = "vol.img") -> str:
        """A plain volume of the victim's; PFS #1 is a master holding PLAINTEXT."""
        path = self.path(name)
        subprocess.run([sys.executable, "-m", "hammerfs", "newfs", "--size", "64M", path],
                       check=True, capture_output=True, env=_env())
        subprocess.run([sys.executable, "-m", "hammerfs", "pfs-master", f"{path}:1"],
                       check=True, capture_output=True, env=_env())
        store = Store.open(FileDevice(path))
        fs = FileSystem(store, 1)
        fs.write(fs.create(ROOT_OBJ, b"secret", 0o600).obj_id, 0, PLAINTEXT)
        store.commit()
        store.close()
        os.chown(path, self.victim.uid, self.victim.gid)
        return path

    def precious_intact(self) -> bool:
        with open(self.precious, "rb") as f:
            return f.read() == b"the victim's own file\n"

    def squat(self, *, symlinks: dict[str, str] | None = None) -> None:
        """The attacker creates the victim's runtime dir first, mode 0777."""
        rdir = self.victim.runtime_dir

        def attack() -> None:
            os.mkdir(rdir)
            os.chmod(rdir, 0o777)
            for name, target in (symlinks or {}).items():
                os.symlink(target, os.path.join(rdir, name))

        assert as_user(self.attacker, attack).rc == 0

    def listen(self) -> str:
        """The attacker's socket (world-connectable); every byte received goes to a file
        the test reads with ``received()``."""
        sock_path = os.path.join(self.adir, "evil.sock")
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the attacker's server
            try:
                os.setgroups([])
                os.setgid(self.attacker.gid)
                os.setuid(self.attacker.uid)
                srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                srv.bind(sock_path)
                os.chmod(sock_path, 0o777)
                srv.listen(8)
                os.write(ready_w, b"x")
                with open(os.path.join(self.adir, "loot"), "ab", buffering=0) as loot:
                    while True:
                        conn, _ = srv.accept()
                        conn.settimeout(5)
                        with conn, contextlib.suppress(OSError):
                            first = True
                            while data := conn.recv(65536):
                                loot.write(data)
                                if first:  # play along: "ok, stream"
                                    conn.sendall(b'{"ok": true, "stream": true, '
                                                 b'"result": {}}\n')
                                    first = False
            finally:
                os._exit(0)
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        self.listener = pid
        return sock_path

    def received(self) -> bytes:
        try:
            with open(os.path.join(self.adir, "loot"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def stop_listener(self) -> None:
        if self.listener:
            os.kill(self.listener, signal.SIGKILL)
            os.waitpid(self.listener, 0)
            self.listener = 0


def _env() -> dict:
    from conftest import hammer_env
    return hammer_env()


# -- squatting -----------------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["log", "json.tmp", "dir-symlink"])
def test_squatted_runtime_dir_is_refused(world, plant):
    w = world
    vol, mp = w.volume(), w.path("mnt")
    key = mount_key(mp)
    target = os.path.join(w.adir, "run")
    if plant == "dir-symlink":  # the runtime dir is a symlink to the attacker's directory

        def attack() -> None:
            os.mkdir(target, 0o777)
            os.chmod(target, 0o777)
            os.symlink(target, w.victim.runtime_dir)

        assert as_user(w.attacker, attack).rc == 0
    else:  # the victim's log, or its registration's temporary file, points at its own file
        w.squat(symlinks={f"{key}.{plant}": w.precious})
    res = hammer_as(w.victim, "mount", f"{vol}:1", mp)
    assert res.rc != 0, res
    assert f"unsafe runtime directory {w.victim.runtime_dir}" in res.err
    why = "is a symlink" if plant == "dir-symlink" else f"owned by {ATTACKER}"
    assert why in res.err and "HAMMERFS_RUNTIME_DIR" in res.err
    assert "Traceback" not in res.err
    assert not os.path.ismount(mp)
    assert w.precious_intact()
    if plant == "dir-symlink":
        assert os.listdir(target) == []


def test_runtime_dir_opened_to_others_is_refused_for_readers_too(world):
    w = world
    vol, mp = w.volume(), w.path("mnt")
    assert hammer_as(w.victim, "mount", f"{vol}:1", mp).rc == 0
    os.chmod(w.victim.runtime_dir, 0o777)  # however it happened: nothing in it is trusted
    res = hammer_as(w.victim, "synctid", mp)
    assert res.rc != 0 and "its mode is 0777, not 0700" in res.err, res
    os.chmod(w.victim.runtime_dir, 0o700)
    assert hammer_as(w.victim, "synctid", mp).rc == 0
    assert hammer_as(w.victim, "umount", mp).rc == 0


def test_symlinks_in_own_runtime_dir_are_never_followed(world):
    """Even in a good directory, a leftover symlink (or one planted by a process of the
    victim's) is replaced, never written through."""
    w = world
    vol, mp = w.volume(), w.path("mnt")
    key = mount_key(mp)
    rdir = w.victim.runtime_dir

    def plant() -> None:
        os.mkdir(rdir, 0o700)
        for ext in ("log", "json.tmp", "json"):
            os.symlink(w.precious, os.path.join(rdir, f"{key}.{ext}"))

    assert as_user(w.victim, plant).rc == 0
    res = hammer_as(w.victim, "mount", f"{vol}:1", mp)
    assert res.rc == 0, res
    assert hammer_as(w.victim, "synctid", mp).rc == 0
    assert hammer_as(w.victim, "umount", mp).rc == 0
    assert w.precious_intact()


# -- forged registrations ----------------------------------------------------------------


def _register(w: World, mountpoint: str, sock: str, pid: int, *, own_dir: bool) -> None:
    info = {"mountpoint": mountpoint, "socket": sock, "pfs": 1, "volume": "/x",
            "pid": pid, "asof": None, "readonly": False}
    path = os.path.join(w.victim.runtime_dir, mount_key(mountpoint) + ".json")
    who = w.victim if own_dir else w.attacker

    def write() -> None:
        if own_dir:
            os.makedirs(w.victim.runtime_dir, mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            json.dump(info, f)

    assert as_user(who, write).rc == 0


def test_fake_mount_in_squatted_dir_gets_no_plaintext(world):
    """The attacker registers its own socket (pid 1) for the victim's backup directory:
    the victim's mirror-copy must not send it a byte, and must fail."""
    w = world
    vol, backup = w.volume(), w.path("backup")
    sock = w.listen()
    w.squat()
    _register(w, backup, sock, 1, own_dir=False)
    res = hammer_as(w.victim, "mirror-copy", f"{vol}:1", backup)
    assert w.received() == b""
    assert res.rc != 0, res
    assert "unsafe runtime directory" in res.err and "Traceback" not in res.err


def test_registration_of_a_directory_that_is_not_mounted_is_refused(world):
    w = world
    vol, backup = w.volume(), w.path("backup")
    sock = w.listen()
    _register(w, backup, sock, os.getpid(), own_dir=True)
    res = hammer_as(w.victim, "mirror-copy", f"{vol}:1", backup)
    assert w.received() == b""
    assert res.rc != 0, res
    assert "refusing the mount registration" in res.err
    assert f"nothing is mounted on {backup}" in res.err


def test_socket_served_by_another_user_is_refused(world):
    """A real hammerfs mount, but its registration names the attacker's socket: the peer
    credentials give it away before anything is sent."""
    w = world
    vol, mp = w.volume(), w.path("mnt")
    other = w.volume("other.img")
    assert hammer_as(w.victim, "mount", f"{other}:1", mp).rc == 0
    reg = os.path.join(w.victim.runtime_dir, mount_key(mp) + ".json")
    with open(reg) as f:
        info = json.load(f)
    sock = w.listen()
    _register(w, mp, sock, info["pid"], own_dir=True)
    res = hammer_as(w.victim, "mirror-copy", f"{vol}:1", mp)
    assert w.received() == b""
    assert res.rc != 0, res
    assert f"refusing the control socket {sock}" in res.err
    assert f"served by uid {w.attacker.uid}" in res.err
    _register(w, mp, info["socket"], info["pid"], own_dir=True)
    assert hammer_as(w.victim, "umount", mp).rc == 0
