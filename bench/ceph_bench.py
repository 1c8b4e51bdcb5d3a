#!/usr/bin/env python3
"""Offsite copy to Ceph: `hammer mirror-copy` of 1 GiB from a local encrypted master to an
encrypted slave on an RBD image and on an S3 bucket (radosgw), next to the raw upload tools
of the same data in the same run (`rbd import` of a 1 GiB file; boto3's upload_file, the
transfer engine of `aws s3 cp`; `aws s3 cp` and `rclone copy` themselves when installed), and
the incremental mirror-copy after changing 10 files; then the same for a tree of 10,000 small
files (`tar | rbd import -`; one PUT per file, 10 at a time, as `aws s3 cp --recursive`;
`aws s3 cp --recursive`, `rclone copy`).

`hammer` runs as installed: with its bytecode cached (PYTHONDONTWRITEBYTECODE is dropped for
it, the cache goes to the run's temporary PYTHONPYCACHEPREFIX), not recompiled at every start.

Run by hand (root, Debian's Ceph packages from scripts/bootstrap):
``.venv/bin/python bench/ceph_bench.py [--size 1G] [--rounds 3]``.  It starts a throwaway
cluster with scripts/ceph-test-cluster (or uses ``--cluster DIR``, one already started) and
prints medians of ``--rounds`` rounds.  Everything runs on this one machine, so the cluster's
OSD and radosgw compete with hammer for the CPUs: the ratios are what matters.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from hammerfs.blockdev.file import FileDevice  # noqa: E402
from hammerfs.fs import FileSystem  # noqa: E402
from hammerfs.luks import open_payload  # noqa: E402
from hammerfs.quantity import parse_size  # noqa: E402
from hammerfs.store import Store  # noqa: E402
from hammerfs.store.records import ROOT_OBJ  # noqa: E402

SCRIPT = ROOT / "scripts" / "ceph-test-cluster"
KEY = b"benchmark key\n"
FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
BIG = 64 << 20  # the 1 GiB is 16 files of 64 MiB
SMALL = 100  # small files, 10 of which change for the incremental


PYCACHE = Path(tempfile.gettempdir())  # main() points it into the run's directory


def hammer_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def hammer(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hammerfs", *map(str, args)], check=True,
                   env=hammer_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def rclone_env() -> dict[str, str]:
    """rclone's remote `ceph:` = the cluster's radosgw, from the AWS_* environment (but not
    AWS_CA_BUNDLE: rclone refuses it for a plain-http endpoint)."""
    env = dict(os.environ, RCLONE_CONFIG_CEPH_TYPE="s3", RCLONE_CONFIG_CEPH_PROVIDER="Ceph",
               RCLONE_CONFIG_CEPH_ENDPOINT=os.environ["AWS_ENDPOINT_URL"],
               RCLONE_CONFIG_CEPH_ACCESS_KEY_ID=os.environ["AWS_ACCESS_KEY_ID"],
               RCLONE_CONFIG_CEPH_SECRET_ACCESS_KEY=os.environ["AWS_SECRET_ACCESS_KEY"])
    env.pop("AWS_CA_BUNDLE", None)
    return env


def tool_uploads(src: Path, name: str, recursive: bool) -> dict[str, float]:
    """`aws s3 cp` and `rclone copy` of ``src`` (a file, or a tree) to the bucket, each when
    installed; the objects are deleted afterwards."""
    took = {}
    url = os.environ["AWS_ENDPOINT_URL"]
    if shutil.which("aws"):
        argv = ["aws", "--endpoint-url", url, "s3", "cp", "--only-show-errors", str(src),
                f"s3://hammerfs/aws-{name}" + ("/" if recursive else "")]
        took["aws s3 cp"] = timed(argv + (["--recursive"] if recursive else []))
        subprocess.run(["aws", "--endpoint-url", url, "s3", "rm", "--quiet",
                        f"s3://hammerfs/aws-{name}" + ("/" if recursive else ""),
                        *(["--recursive"] if recursive else [])], check=True,
                       capture_output=True)
    if shutil.which("rclone"):
        t0 = time.perf_counter()
        subprocess.run(["rclone", "copy", str(src), f"ceph:hammerfs/rclone-{name}"],
                       check=True, env=rclone_env(), capture_output=True)
        took["rclone copy"] = time.perf_counter() - t0
        subprocess.run(["rclone", "purge", f"ceph:hammerfs/rclone-{name}"], check=True,
                       env=rclone_env(), capture_output=True)
    return took


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def make_master(tmp: Path, size: int, key: Path) -> tuple[Path, Path]:
    """An encrypted master volume whose PFS #1 holds ``size`` bytes of random data in 64 MiB
    files plus SMALL small files; the same big data as one raw file (for the raw tools)."""
    master, raw = tmp / "master.img", tmp / "raw.bin"
    hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size",
           str(size + (size >> 2) + (256 << 20)), master)
    hammer("pfs-master", "--key-file", key, f"{master}:1")
    store = Store.open(open_payload(FileDevice(str(master)), KEY))
    fs = FileSystem(store, 1)
    rnd = random.Random(0)
    with open(raw, "wb") as out:
        for i in range(size // BIG):
            ino = fs.create(ROOT_OBJ, b"big%02d" % i, 0o644)
            for off in range(0, BIG, 4 << 20):
                chunk = rnd.randbytes(4 << 20)
                fs.write(ino.obj_id, off, chunk)
                out.write(chunk)
            store.commit()
    small = fs.mkdir(ROOT_OBJ, b"small", 0o755)
    for i in range(SMALL):
        fs.write(fs.create(small.obj_id, b"f%03d" % i, 0o644).obj_id, 0, rnd.randbytes(3000))
    store.commit()
    store.close()
    return master, raw


def change_ten(master: Path, round_no: int) -> None:
    store = Store.open(open_payload(FileDevice(str(master)), KEY))
    fs = FileSystem(store, 1)
    small = fs.lookup(ROOT_OBJ, b"small").obj_id
    rnd = random.Random(1000 + round_no)
    for i in rnd.sample(range(SMALL), 10):
        fs.write(fs.lookup(small, b"f%03d" % i).obj_id, 0, rnd.randbytes(3000))
    store.commit()
    store.close()


def new_slave(spec: str, key: Path, size: int, uuid: str) -> None:
    hammer("newfs", "-f", "--encrypt", "--key-file", key, *FAST_KDF, "--size",
           str(size + (size >> 2) + (256 << 20)), spec)
    hammer("pfs-slave", "--key-file", key, f"{spec}:1", f"shared-uuid={uuid}")


def shared_uuid(master: Path, key: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hammerfs", "pfs-status", "--key-file",
                          str(key), f"{master}:1"], check=True, capture_output=True, text=True,
                         env=hammer_env()).stdout
    return out.split("shared-uuid=")[1].split()[0]


def make_tree_master(tmp: Path, files: int, key: Path) -> tuple[Path, Path]:
    """A second master whose PFS #1 holds ``files`` files of 200 B-4 KiB in 100 directories,
    and the same tree as a plain directory (for the raw tools)."""
    master, plain = tmp / "tree-master.img", tmp / "tree"
    hammer("newfs", "--encrypt", "--key-file", key, *FAST_KDF, "--size", "512M", master)
    hammer("pfs-master", "--key-file", key, f"{master}:1")
    store = Store.open(open_payload(FileDevice(str(master)), KEY))
    fs = FileSystem(store, 1)
    rnd = random.Random(5)
    for d in range(100):
        sub = fs.mkdir(ROOT_OBJ, b"d%03d" % d, 0o755)
        (plain / f"d{d:03d}").mkdir(parents=True)
        for i in range(files // 100):
            data = rnd.randbytes(rnd.randint(200, 4096))
            fs.write(fs.create(sub.obj_id, b"f%04d" % i, 0o644).obj_id, 0, data)
            (plain / f"d{d:03d}" / f"f{i:04d}").write_bytes(data)
        store.commit()
    store.close()
    return master, plain


def upload_tree_s3(plain: Path, prefix: str) -> float:
    """What `aws s3 cp --recursive` does: one PUT per file, 10 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", config=Config(max_pool_connections=10))
    paths = [p for p in plain.rglob("*") if p.is_file()]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda p: s3.upload_file(str(p), "hammerfs",
                                               f"{prefix}/{p.relative_to(plain)}"), paths))
    return time.perf_counter() - t0


def tar_to_rbd(plain: Path, image: str, conf: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"tar -C {plain} -cf - . | rbd --conf {conf} import - {image}", shell=True,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    subprocess.run(["rbd", "--conf", conf, "rm", image], check=True, capture_output=True)
    return took


def upload_s3(raw: Path, name: str) -> float:
    import boto3
    s3 = boto3.client("s3")
    t0 = time.perf_counter()
    s3.upload_file(str(raw), "hammerfs", name)
    took = time.perf_counter() - t0
    s3.delete_object(Bucket="hammerfs", Key=name)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="data to copy (multiple of 64M)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=10_000,
                    help="also copy a tree of this many small files (0: skip)")
    ap.add_argument("--cluster", help="an already started scripts/ceph-test-cluster DIR")
    opts = ap.parse_args()
    size = parse_size(opts.size) // BIG * BIG
    with tempfile.TemporaryDirectory(prefix="ceph-bench-") as tmpdir:
        tmp = Path(tmpdir)
        global PYCACHE
        PYCACHE = tmp / "pycache"
        cluster = Path(opts.cluster) if opts.cluster else tmp / "cluster"
        if not opts.cluster:
            subprocess.run([str(SCRIPT), "start", str(cluster)], check=True)
        try:
            for line in (cluster / "env").read_text().splitlines():
                name, _, value = line.removeprefix("export ").partition("=")
                os.environ[name] = value
            run(tmp, size, opts.rounds, opts.files)
        finally:
            if not opts.cluster:
                subprocess.run([str(SCRIPT), "stop", str(cluster)], check=True)


def note(results: dict[str, list[float]], name: str, took: float) -> None:
    """Keep a timing, and show it at once (a long run that fails later still says it)."""
    results.setdefault(name, []).append(took)
    print(f"  {name:22s} {took:7.2f} s", flush=True)


def run(tmp: Path, size: int, rounds: int, files: int) -> None:
    key = tmp / "key"
    key.write_bytes(KEY)
    key.chmod(0o600)
    master, raw = make_master(tmp, size, key)
    uuid = shared_uuid(master, key)
    conf = os.environ["CEPH_CONF"]
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        for kind, spec in (("rbd", f"rbd:hammerfs/bench{r}"), ("s3", f"s3://hammerfs/bench{r}")):
            new_slave(spec, key, size, uuid)
            note(results, f"{kind} mirror-copy",
                hammer("mirror-copy", "-q", "--key-file", key, f"{master}:1", f"{spec}:1"))
            change_ten(master, r * 2 + (kind == "s3"))
            note(results, f"{kind} incremental",
                hammer("mirror-copy", "-q", "--key-file", key, f"{master}:1", f"{spec}:1"))
        note(results, "rbd import",
            timed(["rbd", "--conf", conf, "import", str(raw), f"hammerfs/raw{r}"]))
        subprocess.run(["rbd", "--conf", conf, "rm", f"hammerfs/raw{r}"], check=True,
                       capture_output=True)
        note(results, "s3 upload_file", upload_s3(raw, f"raw{r}"))
        for tool, took in tool_uploads(raw, f"raw{r}", recursive=False).items():
            note(results, f"s3 {tool}", took)
    if files:
        tree_master, plain = make_tree_master(tmp, files, key)
        tree_uuid = shared_uuid(tree_master, key)
        for r in range(rounds):
            for kind, spec in (("rbd", f"rbd:hammerfs/tree{r}"),
                               ("s3", f"s3://hammerfs/tree{r}")):
                new_slave(spec, key, 256 << 20, tree_uuid)
                note(results, f"{kind} tree mirror-copy",
                    hammer("mirror-copy", "-q", "--key-file", key, f"{tree_master}:1",
                           f"{spec}:1"))
            note(results, "rbd tree tar|import",
                tar_to_rbd(plain, f"hammerfs/rawtree{r}", conf))
            note(results, "s3 tree PUT x10",
                upload_tree_s3(plain, f"rawtree{r}"))
            for tool, took in tool_uploads(plain, f"tree{r}", recursive=True).items():
                note(results, f"s3 tree {tool}", took)
    med = {name: statistics.median(times) for name, times in results.items()}
    mib = size / (1 << 20)
    print(f"\n{mib:.0f} MiB, median of {rounds} rounds")
    for name, took in med.items():
        bulk = "tree" not in name and "incremental" not in name
        rate = f"{mib / took:7.1f} MiB/s" if bulk else ""
        print(f"  {name:22s} {took:7.2f} s  {rate}")
    print(f"  rbd: mirror-copy / rbd import throughput = "
          f"{med['rbd import'] / med['rbd mirror-copy']:.2f}x")
    for tool in ("upload_file", "aws s3 cp", "rclone copy"):
        if f"s3 {tool}" in med:
            print(f"  s3:  mirror-copy / {tool} throughput = "
                  f"{med[f's3 {tool}'] / med['s3 mirror-copy']:.2f}x")
    if files:
        print(f"  {files} files: rbd mirror-copy / tar|rbd import = "
              f"{med['rbd tree tar|import'] / med['rbd tree mirror-copy']:.2f}x, "
              f"s3 mirror-copy / PUT x10 = "
              f"{med['s3 tree PUT x10'] / med['s3 tree mirror-copy']:.2f}x")
        for tool in ("aws s3 cp", "rclone copy"):
            if f"s3 tree {tool}" in med:
                print(f"  {files} files: s3 mirror-copy / {tool} = "
                      f"{med[f's3 tree {tool}'] / med['s3 tree mirror-copy']:.2f}x")


if __name__ == "__main__":
    main()
