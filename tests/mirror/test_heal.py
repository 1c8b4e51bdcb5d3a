"""Online scrub and self-heal between two mounted encrypted volumes (a master and its slave
fed by mirror-stream): bytes flipped in data extents on either side are found by
`hammer scrub MOUNTPOINT`, repaired from the other side and read back identical; a read of
damaged data gets EIO without a replica and the good bytes with `--heal-from`; a replica
holding another version is refused; a scrub killed with its mount continues after remount."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_cli import FAST_KDF
from test_mounts import make_tree, start, stop, tree_signature, wait_equal

from conftest import run_hammer
from hammerfs.control.server import mount_key, runtime_dir

ELM = re.compile(r"ELM (\d+):(0x[0-9a-f]+):0x10:(0x[0-9a-f]+) create (0x[0-9a-f]+) .* "
                 r"data@(0x[0-9a-f]+)")


def luks_offset(img, key) -> int:
    dump = run_hammer("luks", "dump", "--key-file", key, img).stdout
    return int(re.search(r"offset: (\d+) \[bytes\]", dump).group(1))


def data_extents(mountpoint, pfs: int) -> list[int]:
    """Payload offsets of the data extents of PFS ``pfs`` (file data records)."""
    out = run_hammer("show", mountpoint).stdout
    return [int(m.group(5), 16) for m in ELM.finditer(out) if int(m.group(1)) == pfs]


def flip(img, offset: int, at: int = 100) -> None:
    """Flip a byte of the ciphertext: 16 bytes of the block's plaintext are garbled."""
    with open(img, "r+b") as f:
        f.seek(offset + at)
        b = f.read(1)
        f.seek(offset + at)
        f.write(bytes([b[0] ^ 0xA5]))


def damage(img, key, mountpoint, pfs: int, n: int, seed: int) -> list[int]:
    base = luks_offset(img, key)
    chosen = random.Random(seed).sample(data_extents(mountpoint, pfs), n)
    for off in chosen:
        flip(img, base + off)
    return chosen


def contents(root) -> dict:
    return {rel: sig[5] for rel, sig in tree_signature(root).items()}


def owner_pid(mp) -> int:
    with open(os.path.join(runtime_dir(), mount_key(os.path.realpath(mp)) + ".json")) as f:
        return json.load(f)["pid"]


@pytest.fixture
def pair(tmp_path):
    """Master mounted on fk, slave volume on fks with the slave PFS at fks/pfs/slave, the
    tree copied and mirrored; the source tree kept for comparison."""
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    for k in (k1, k2):
        k.write_text(f"key {k.name}")
        k.chmod(0o600)
    m, s = tmp_path / "master.img", tmp_path / "slave.img"
    fk, fks = tmp_path / "fk", tmp_path / "fks"
    fk.mkdir()
    fks.mkdir()
    for img, k in ((m, k1), (s, k2)):
        run_hammer("newfs", "--encrypt", *FAST_KDF, "--key-file", k, "--size", "256M", img)
    src = tmp_path / "src"
    make_tree(src, n=30)
    run_hammer("mount", "--key-file", k1, m, fk)
    try:
        run_hammer("mount", "--key-file", k2, s, fks)
        try:
            uuid = run_hammer("pfs-status", fk).stdout.split("shared-uuid=")[1].split()[0]
            run_hammer("pfs-slave", fks / "pfs" / "slave", f"shared-uuid={uuid}")
            stream = start("mirror-stream", fk, fks / "pfs" / "slave")
            try:
                subprocess.run(["cp", "-a", str(src), str(fk / "tree")], check=True)
                wait_equal(fk / "tree", fks / "pfs" / "slave" / "tree", timeout=15)
                yield {"m": m, "s": s, "k1": k1, "k2": k2, "fk": fk, "fks": fks,
                       "slave": fks / "pfs" / "slave", "src": src, "stream": stream}
            finally:
                stop(stream)
        finally:
            run_hammer("umount", fks, check=False)
    finally:
        run_hammer("umount", fk, check=False)


def test_online_scrub_repairs_master_and_slave_from_each_other(pair):
    fk, fks, slave = pair["fk"], pair["fks"], pair["slave"]
    hit_m = damage(pair["m"], pair["k1"], fk, 0, 5, seed=1)
    hit_s = damage(pair["s"], pair["k2"], fks, 1, 5, seed=2)
    # without a replica the damage is found and named by path
    found = run_hammer("scrub", fk, check=False)
    assert found.returncode == 1, found.stdout
    assert found.stdout.count("DAMAGED: ") == 5
    assert all(line.split(": ")[1].startswith(str(fk / "tree"))
               for line in found.stdout.splitlines() if line.startswith("DAMAGED"))
    # master from its slave, the slave from its master (with the stream still running)
    healed = run_hammer("scrub", "--from", slave, fk)
    assert healed.stdout.count("REPAIRED: ") == 5 and "all repaired" in healed.stdout
    assert {int(x, 16) for x in re.findall(r"at offset (0x[0-9a-f]+)", healed.stdout)} == \
        set(hit_m)
    healed = run_hammer("scrub", "--from", fk, fks)
    assert healed.stdout.count("REPAIRED: ") == 5, healed.stdout
    assert str(fks / "pfs") not in healed.stdout or "PFS #1:" in healed.stdout
    assert {int(x, 16) for x in re.findall(r"at offset (0x[0-9a-f]+)", healed.stdout)} == \
        set(hit_s)
    # byte-identical, and clean on a second scrub
    assert contents(fk / "tree") == contents(pair["src"])
    wait_equal(fk / "tree", slave / "tree", timeout=10)
    for mp in (fk, fks):
        again = run_hammer("scrub", "--rate", "0", mp)  # 0: no limit
        assert again.stdout.rstrip().endswith("no damage found")
    status = run_hammer("scrub", "--status", fk).stdout
    assert "finished" in status and "no damage found" in status


def test_read_gets_eio_without_a_replica_and_good_data_with_one(pair):
    fk, slave = pair["fk"], pair["slave"]
    stop(pair["stream"])
    victim = fk / "tree" / "sub" / "deeper" / "big"
    good = victim.read_bytes()
    ino = os.stat(victim).st_ino
    out = run_hammer("show", fk).stdout
    offs = [int(m.group(5), 16) for m in ELM.finditer(out) if int(m.group(2), 16) == ino]
    assert len(offs) >= 3
    run_hammer("umount", fk)  # nothing of the file in the kernel's cache after this
    base = luks_offset(pair["m"], pair["k1"])
    flip(pair["m"], base + offs[1])
    run_hammer("mount", "--key-file", pair["k1"], pair["m"], fk)
    with pytest.raises(OSError) as err:
        victim.read_bytes()
    assert err.value.errno == 5  # EIO
    run_hammer("umount", fk)
    run_hammer("mount", "--key-file", pair["k1"], "--heal-from", slave, pair["m"], fk)
    assert victim.read_bytes() == good
    # the read rewrote the extent: a scrub without a replica finds nothing
    assert run_hammer("scrub", fk).stdout.rstrip().endswith("no damage found")


def test_a_replica_holding_another_version_is_refused(pair):
    fk, slave = pair["fk"], pair["slave"]
    stop(pair["stream"])  # the slave keeps the old version of the file
    victim = fk / "tree" / "sub" / "f20"
    victim.write_bytes(os.urandom(20000))
    run_hammer("synctid", fk)
    ino = os.stat(victim).st_ino
    out = run_hammer("show", fk).stdout
    newest = max((int(m.group(4), 16), int(m.group(5), 16)) for m in ELM.finditer(out)
                 if int(m.group(2), 16) == ino)
    flip(pair["m"], luks_offset(pair["m"], pair["k1"]) + newest[1])
    res = run_hammer("scrub", "--from", slave, fk, check=False)
    assert res.returncode == 1
    assert f"DAMAGED: {victim}: data extent at offset {newest[1]:#x}" in res.stdout
    assert "REPAIRED" not in res.stdout


def test_scrub_killed_with_its_mount_continues_after_remount(pair):
    fk = pair["fk"]
    stop(pair["stream"])
    scrub = start("scrub", "--rate", "512K", fk)  # about 7 s
    time.sleep(3)
    pid = owner_pid(fk)
    os.kill(pid, signal.SIGKILL)
    scrub.wait(30)
    time.sleep(0.2)
    subprocess.run(["fusermount3", "-u", "-z", str(fk)], capture_output=True)
    run_hammer("mount", "--key-file", pair["k1"], pair["m"], fk)
    status = run_hammer("scrub", "--status", fk).stdout
    pct = float(re.search(r"stopped at ([\d.]+)%", status).group(1))
    assert 0 < pct < 100
    done = run_hammer("scrub", fk)
    assert "continuing the interrupted scrub" in done.stderr
    assert done.stdout.rstrip().endswith("no damage found")


def test_unmounting_during_a_scrub_keeps_its_place_and_stop_works(pair):
    fk = pair["fk"]
    stop(pair["stream"])
    scrub = start("scrub", "--rate", "512K", fk)
    time.sleep(2)
    # the scrub thread of the mount is in the idle I/O class, like btrfs's scrub
    pid = owner_pid(fk)
    classes = [subprocess.run(["ionice", "-p", tid], capture_output=True, text=True).stdout
               for tid in os.listdir(f"/proc/{pid}/task")]
    assert sum(c.startswith("idle") for c in classes) == 1, classes
    stopped = run_hammer("scrub", "--stop", fk).stdout
    assert "stopped at" in stopped and "`hammer scrub` continues it" in stopped
    scrub.wait(30)
    assert scrub.returncode == 0  # the command reports the stopped scrub and ends
    again = start("scrub", "--rate", "512K", fk)  # continues, then the volume goes away
    time.sleep(2)
    run_hammer("umount", fk)
    again.wait(30)
    run_hammer("mount", "--key-file", pair["k1"], pair["m"], fk)
    status = run_hammer("scrub", "--status", fk).stdout
    assert "stopped at" in status, status
    done = run_hammer("scrub", "--rate", "0", fk)
    assert "continuing the interrupted scrub" in done.stderr
    assert done.stdout.rstrip().endswith("no damage found")
    # the mount unmounted under the scrub logged nothing worth keeping (its log would be
    # kept, and moved to .log.1 by the next mount)
    old_log = os.path.join(runtime_dir(), mount_key(os.path.realpath(fk)) + ".log.1")
    assert not os.path.exists(old_log), Path(old_log).read_text()


NODE = re.compile(r"^( *)NODE (0x[0-9a-f]+) (INTERNAL|LEAF)", re.M)


def pick_nodes(show: str) -> tuple[int, list[int]]:
    """Damage targets: a level-1 internal node from the middle of the tree, and two leaves
    under neither it, the first one (what a mount reads as it starts: the PFS table, the
    root directory) nor the last one (the rightmost path, which the scrub's own progress
    record dirties, so the next commit rewrites it from memory)."""
    nodes = [(len(ind) // 2, int(off, 16), kind) for ind, off, kind in NODE.findall(show)]
    top = [off for depth, off, kind in nodes if depth == 1 and kind == "INTERNAL"]
    assert len(top) >= 4, show[:2000]
    internal = top[len(top) // 2]
    owner, leaves = None, []
    for depth, off, kind in nodes:
        if depth == 1:
            owner = off
        if kind == "LEAF" and owner not in (top[0], internal, top[-1]):
            leaves.append(off)
    assert len(leaves) >= 2, show[:2000]
    return internal, [leaves[0], leaves[len(leaves) // 2]]


def test_damaged_b_tree_nodes_are_rebuilt_from_the_other_side(pair):
    """A leaf and an internal node flipped on the master, then on the slave: a scrub finds
    each (the scrub reads every node from disk) and rebuilds it bit for bit (leaves from
    the other side's records of their key range, internal nodes from their children); the
    files read back identical and a second scrub is clean."""
    fk, fks, slave = pair["fk"], pair["fks"], pair["slave"]
    many = fk / "many"
    many.mkdir()
    for i in range(1500):  # a three-level tree; 700 bytes: each file's data is an extent
        (many / f"n{i:04d}").write_bytes(os.urandom(700))
    wait_equal(many, slave / "many", timeout=60)
    stop(pair["stream"])
    written = contents(many)
    for img, key, mp, other in ((pair["m"], pair["k1"], fk, slave), (pair["s"], pair["k2"], fks, fk)):
        run_hammer("synctid", mp)
        internal, leaves = pick_nodes(run_hammer("show", mp).stdout)
        # remounted: nothing of the damaged nodes in the mount's node cache, so the scrub
        # must rebuild them from the replica, not re-encode a copy held in memory
        run_hammer("umount", mp)
        base = luks_offset(img, key)
        for off in [internal, *leaves]:
            flip(img, base + off)
        run_hammer("mount", "--key-file", key, img, mp)
        res = run_hammer("scrub", "--rate", "0", "--from", other, mp)
        assert "all repaired" in res.stdout, res.stdout
        repaired = {int(x, 16): line for line in res.stdout.splitlines()
                    if line.startswith("REPAIRED")
                    for x in re.findall(r"B-tree node at offset (0x[0-9a-f]+)", line)}
        assert set(repaired) == {internal, *leaves}, res.stdout
        assert "rebuilt from its children" in repaired[internal]
        assert all("rebuilt from the replica's records" in repaired[o] for o in leaves)
        again = run_hammer("scrub", "--rate", "0", mp)
        assert again.stdout.rstrip().endswith("no damage found")
        root = many if mp == fk else slave / "many"
        assert contents(root) == written
    # a read meeting a damaged leaf: EIO without a replica, the rebuilt leaf with one
    run_hammer("synctid", fk)
    _, leaves = pick_nodes(run_hammer("show", fk).stdout)
    run_hammer("umount", fk)
    flip(pair["m"], luks_offset(pair["m"], pair["k1"]) + leaves[1], at=40)  # a key
    run_hammer("mount", "--key-file", pair["k1"], pair["m"], fk)
    failed = set()
    for rel in written:
        try:
            (many / rel).read_bytes()
        except OSError as err:
            assert err.errno == 5  # EIO
            failed.add(rel)
    if not failed:  # the leaf holds directory entries: the listing fails
        with pytest.raises(OSError) as err:
            os.listdir(many)
        assert err.value.errno == 5
    run_hammer("umount", fk)
    run_hammer("mount", "--key-file", pair["k1"], "--heal-from", slave, pair["m"], fk)
    assert contents(many) == written
    assert run_hammer("scrub", "--rate", "0", fk).stdout.rstrip().endswith("no damage found")
