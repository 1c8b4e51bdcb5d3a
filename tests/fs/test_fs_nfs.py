"""A `hammer mount -o nfs` exported by a real NFS server (nfs-ganesha, FSAL VFS, NFSv4 on
127.0.0.1) and used through a real userspace client (libnfs-utils).  Kernel nfsd does not
exist on these machines; ganesha's VFS backend opens files by kernel file handle
(open_by_handle_at), which is what kernel nfsd does too."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time

from conftest import run_hammer

GANESHA = "ganesha.nfsd"
PSEUDO = "/hammer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ganesha_config(tmp_path, export: str, port: int) -> str:
    # Graceless: no 90 s grace period after start.  Attr_Expiration_Time 0: ganesha re-reads
    # attributes on every request, so changes made through the mount show at once.
    conf = tmp_path / "ganesha.conf"
    (tmp_path / "recovery").mkdir()
    conf.write_text(f"""
NFS_CORE_PARAM {{
    Protocols = 4; NFS_Port = {port}; Bind_addr = 127.0.0.1;
    Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true; Only_Numeric_Owners = true;
    RecoveryBackend = fs; RecoveryRoot = {tmp_path / "recovery"};
}}
EXPORT {{
    Export_Id = 1; Path = {export}; Pseudo = {PSEUDO};
    Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
    Protocols = 4; Transports = TCP; Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
}}
""")
    return str(conf)


@contextlib.contextmanager
def ganesha(tmp_path, export: str):
    port = free_port()
    log = tmp_path / "ganesha.log"
    proc = subprocess.Popen([GANESHA, "-F", "-f", ganesha_config(tmp_path, export, port),
                             "-L", str(log), "-p", str(tmp_path / "ganesha.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"ganesha exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "ganesha did not listen within 20 s"
            time.sleep(0.1)
        yield f"nfs://127.0.0.1{PSEUDO}", f"?version=4&nfsport={port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nfs(*args: str) -> bytes:
    proc = subprocess.run(args, capture_output=True, timeout=30)
    assert proc.returncode == 0, f"{args} failed: {proc.stdout!r} {proc.stderr!r}"
    return proc.stdout


def nfs_read(tmp_path, url: str) -> bytes:
    """A whole file over NFS (nfs-cp: nfs-cat is meant for text)."""
    out = tmp_path / "nfs-read.out"
    out.unlink(missing_ok=True)  # nfs-cp does not overwrite
    nfs("nfs-cp", url, str(out))
    return out.read_bytes()


def drop_kernel_caches() -> None:
    """Make the kernel forget the mount's inodes, so that the NFS server's handles must be
    opened by handle again (the case export support is for)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def test_mount_exported_over_nfs_both_ways(tmp_path):
    vol, mp = tmp_path / "v.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "-L", "nfs", "--size", "128M", vol)
    run_hammer("mount", "-o", "nfs", vol, mp)
    try:
        big = os.urandom(3 << 20)
        (mp / "sub" / "deep").mkdir(parents=True)
        (mp / "sub" / "deep" / "big.bin").write_bytes(big)
        (mp / "hello.txt").write_text("hello\n")
        with ganesha(tmp_path, str(mp)) as (url, q):
            # written through the mount, read over NFS
            assert nfs("nfs-cat", f"{url}/hello.txt{q}") == b"hello\n"
            names = nfs("nfs-ls", f"{url}{q}").decode()
            assert "hello.txt" in names and "sub" in names
            assert nfs_read(tmp_path, f"{url}/sub/deep/big.bin{q}") == big
            # written over NFS, read through the mount (libnfs 4.0's NFSv4 client cannot
            # encode a WRITE of more than about 3.8 KB, so the files written are small)
            for i in range(3):
                src = tmp_path / f"in{i}"
                src.write_bytes(os.urandom(1000 + 500 * i))
                nfs("nfs-cp", str(src), f"{url}/sub/deep/from-nfs{i}{q}")
                assert (mp / "sub" / "deep" / f"from-nfs{i}").read_bytes() == src.read_bytes()
            for round_ in range(3):
                # the kernel forgets its inodes: the server reopens its handles by node id
                drop_kernel_caches()
                assert nfs("nfs-cat", f"{url}/sub/deep/from-nfs0{q}") == \
                    (tmp_path / "in0").read_bytes()
                assert nfs_read(tmp_path, f"{url}/sub/deep/big.bin{q}") == big
                # a change through the mount is what NFS reads next (also a shorter file)
                (mp / "hello.txt").write_text(f"round {round_}\n")
                assert nfs("nfs-cat", f"{url}/hello.txt{q}") == f"round {round_}\n".encode()
        # with the server stopped the mount unmounts and mounts again as usual
        run_hammer("umount", mp)
        run_hammer("mount", "-o", "nfs", vol, mp)
        assert (mp / "sub" / "deep" / "from-nfs2").stat().st_size == 2000
        assert (mp / "hello.txt").read_text() == "round 2\n"
    finally:
        run_hammer("umount", mp, check=False)


def test_mount_option_nfs_is_validated(tmp_path):
    vol, mp = tmp_path / "v.img", tmp_path / "mnt"
    mp.mkdir()
    run_hammer("newfs", "-L", "nfs", "--size", "64M", vol)
    out = run_hammer("mount", "-o", "nfs,bogus", vol, mp, check=False)
    assert out.returncode != 0 and "unknown mount option 'bogus'" in out.stderr
    assert "nfs" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.ismount(mp)
