"""A real single-node Ceph cluster (scripts/ceph-test-cluster), started once per test process
and only if a test needs it: RADOS pool and S3 bucket `hammerfs`, its environment exported to
this process (and so to every `hammer` the tests run); stopped at the end of the session (or
when the process exits, also on SIGTERM).
Skipped only when Debian's Ceph packages are missing (scripts/bootstrap installs them).

(Not a conftest.py: a second module named conftest would shadow tests/conftest.py for
`from conftest import ...`; test modules import these fixtures instead.)"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ceph-test-cluster"
NEEDED = ("ceph-mon", "ceph-osd", "ceph-mgr", "radosgw", "rados")
FAST_KDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
KEY = b"correct horse battery staple\n"


def _missing() -> list[str]:
    return [tool for tool in NEEDED if shutil.which(tool) is None]


_cluster: dict[str, str] | None = None


def _start(where: Path, session: pytest.Session) -> dict[str, str]:
    def stop() -> None:
        subprocess.run([str(SCRIPT), "stop", str(where)], capture_output=True, timeout=120)

    started = subprocess.run([str(SCRIPT), "start", str(where)], capture_output=True,
                             text=True, timeout=300)
    session.addfinalizer(stop)  # at the end of the session
    atexit.register(stop)  # if the session is cut short (harmless when already stopped)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a killed run stops it too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    assert started.returncode == 0, started.stdout + started.stderr
    env = {}
    for line in (where / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    os.environ.update(env)  # for the `hammer` processes, boto3 and librados in this one
    return {**env, "DIR": str(where)}


@pytest.fixture
def ceph(tmp_path_factory, request) -> dict[str, str]:
    """The cluster's environment (CEPH_CONF, AWS_*, and DIR, its directory)."""
    global _cluster
    if _missing():
        pytest.skip(f"Debian's Ceph packages are missing ({', '.join(_missing())}): "
                    "run scripts/bootstrap")
    if _cluster is None:
        _cluster = _start(tmp_path_factory.mktemp("ceph"), request.session)
    return _cluster


@pytest.fixture
def unique() -> str:
    """A fresh image name / bucket prefix, so tests never share a volume."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def key(tmp_path) -> Path:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


def volume_spec(kind: str, name: str) -> str:
    return f"rbd:hammerfs/{name}" if kind == "rbd" else f"s3://hammerfs/{name}"


def stored_bytes(kind: str, name: str) -> bytes:
    """Everything the cluster stores for the volume: the RADOS objects of the RBD image, or
    the S3 objects under the prefix (read back through the cluster's own APIs)."""
    if kind == "s3":
        import boto3
        s3 = boto3.client("s3")
        out = bytearray()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="hammerfs",
                                                                   Prefix=name + "/"):
            for item in page.get("Contents", ()):
                out += s3.get_object(Bucket="hammerfs", Key=item["Key"])["Body"].read()
        return bytes(out)
    from hammerfs.blockdev.rbd import load_binding
    rados, rbd = load_binding("rados"), load_binding("rbd")
    cluster = rados.Rados(conffile=os.environ["CEPH_CONF"])
    cluster.connect()
    try:
        ioctx = cluster.open_ioctx("hammerfs")
        with rbd.Image(ioctx, name, read_only=True) as image:
            prefix = image.stat()["block_name_prefix"]
        out = bytearray()
        for obj in ioctx.list_objects():
            if obj.key.startswith(prefix):
                out += ioctx.read(obj.key, 1 << 23)
        ioctx.close()
        return bytes(out)
    finally:
        cluster.shutdown()
