"""Prometheus metrics of `hammer up` (the ``[metrics]`` table of the config).

Collected when scraped (and every ``interval`` for the node_exporter textfile): each mount
answers the control ops ``metrics`` (space, commits, node reads, damage met by reads and
scrubs, the last scrub) and ``mirror-metrics`` (the slaves it feeds: seconds behind, bytes
and records sent); the supervisor adds what it knows of each stream process (running,
restarts, its last message).  A mount that does not answer is reported ``up 0``; nothing
here can stop a mount or a stream.

The HTTP endpoint listens on 127.0.0.1 only: the names of mount points and streams are
nobody else's business; let a local Prometheus or node_exporter pick them up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hammerfs.errors import HammerError
from hammerfs.service.config import MetricsSpec, MountSpec, StreamSpec

log = logging.getLogger("hammerfs.metrics")

ADDRESS = "127.0.0.1"
CALL_TIMEOUT = 5.0


class StreamView:
    """What the supervisor tells the exporter about one stream."""

    def __init__(self, spec: StreamSpec, running: bool, restarts: int, last_line: str,
                 last_exit: float):
        self.spec, self.running, self.restarts = spec, running, restarts
        self.last_line, self.last_exit = last_line, last_exit


class HammerCollector:
    """A prometheus_client collector asking the mounts when collected."""

    def __init__(self, mounts: Callable[[], Iterable[MountSpec]],
                 streams: Callable[[], Iterable[StreamView]]):
        self.mounts = mounts
        self.streams = streams

    def collect(self):
        g = _Families()
        slaves_by_mount: dict[str, list[dict]] = {}
        received_by_mount: dict[str, tuple[int, list[dict]]] = {}
        for m in self.mounts():
            info, mirror = _ask(m.mountpoint)
            slaves = mirror.get("slaves", [])
            labels = [m.name, m.mountpoint]
            g.gauge("mount_up", "1 if the mount answers its control channel", labels,
                    1 if info is not None else 0)
            if info is None:
                continue
            slaves_by_mount[m.mountpoint] = slaves
            received_by_mount[m.mountpoint] = (info.get("pfs", 0), mirror.get("received", []))
            for key, help_text in (("total_bytes", "size of the volume"),
                                   ("used_bytes", "bytes in use on the volume"),
                                   ("free_bytes", "bytes free on the volume")):
                g.gauge(f"volume_{key}", help_text, labels, info[key])
            if "commits" in info:
                g.counter("mount_commits", "commits that wrote something", labels,
                          info["commits"])
                g.counter("mount_commit_seconds", "time spent in those commits", labels,
                          info["commit_seconds"])
                g.gauge("mount_last_commit_seconds", "duration of the latest commit", labels,
                        info["last_commit_seconds"])
                g.counter("mount_node_reads", "B-tree nodes read from disk (cache misses)",
                          labels, info["node_reads"])
                g.gauge("mount_node_cache_nodes", "B-tree nodes in the cache", labels,
                        info["node_cache"])
            self._caches(g, labels, info)
            if "damage_found" in info:
                for key, help_text in (
                        ("found", "damaged data extents met by reads and scrubs"),
                        ("repaired", "damaged data extents repaired from a replica"),
                        ("unrepairable", "damaged data extents that could not be repaired")):
                    g.counter(f"volume_damage_{key}", help_text + " since mounted", labels,
                              info[f"damage_{key}"])
            for op, n in sorted(info.get("fuse", {}).get("requests", {}).items()):
                g.counter("fuse_requests", "FUSE requests served, by type", [*labels, op], n,
                          names=("mount", "mountpoint", "op"))
            for op, name, n in sorted(info.get("fuse", {}).get("errors", [])):
                g.counter("fuse_errors", "FUSE requests answered with an error, by type and "
                          "errno", [*labels, op, name], n,
                          names=("mount", "mountpoint", "op", "errno"))
            scrub = info.get("scrub")
            if scrub:
                g.gauge("scrub_last_finished_timestamp_seconds",
                        "when the last complete scrub finished (0: never)", labels,
                        scrub["last_finished_ns"] / 1e9)
                for key in ("found", "repaired", "unrepairable"):
                    g.gauge(f"scrub_last_{key}", f"damaged blocks the last scrub {key}"
                            if key != "found" else "damaged blocks the last scrub found",
                            labels, scrub[key])
                g.gauge("scrub_running", "1 while a scrub runs", labels,
                        1 if scrub["running"] else 0)
        for sv in self.streams():
            self._stream(g, sv, slaves_by_mount, received_by_mount)
        yield from g.families.values()

    @staticmethod
    def _caches(g: _Families, labels: list[str], info: dict) -> None:
        """Lookups and misses of the B-tree node cache and the inode caches, and the hit
        ratio since mounted (the rate of hits: 1 - rate(misses) / rate(lookups))."""
        names = ("mount", "mountpoint", "cache")
        for cache in ("node", "inode"):
            lookups, misses = info.get(f"{cache}_lookups"), info.get(f"{cache}_misses")
            if lookups is None or misses is None:
                continue
            g.counter("cache_lookups", "cache lookups (node: B-tree nodes visited; inode: "
                      "decoded inodes asked for)", [*labels, cache], lookups, names=names)
            g.counter("cache_misses", "cache lookups that had to read and decode records",
                      [*labels, cache], misses, names=names)
            g.gauge("cache_hit_ratio", "share of the lookups served from memory since "
                    "mounted", [*labels, cache],
                    1 - misses / lookups if lookups else 1.0, names=names)

    def _stream(self, g: _Families, sv: StreamView, slaves_by_mount: dict,
                received_by_mount: dict) -> None:
        labels = [sv.spec.name, sv.spec.source, sv.spec.target]
        g.gauge("stream_up", "1 while the mirror-stream process runs", labels,
                1 if sv.running else 0, names=("stream", "source", "target"))
        g.counter("stream_restarts", "times the stream was restarted (reconnects)", labels,
                  sv.restarts, names=("stream", "source", "target"))
        g.gauge("stream_last_exit_timestamp_seconds", "when the stream process last ended "
                "(0: never)", labels, sv.last_exit, names=("stream", "source", "target"))
        if sv.last_line:
            g.gauge("stream_last_message_info", "the stream's latest message (its last "
                    "error after an exit)", [*labels, sv.last_line[:200]], 1,
                    names=("stream", "source", "target", "message"))
        # the slaves the source's mount feeds (one per stream in the usual setup), else what
        # the target's mount received (a source over ssh)
        slaves = _inside(sv.spec.source, slaves_by_mount) or _received(sv.spec.target,
                                                                      received_by_mount)
        if not slaves:
            return  # nothing acknowledged yet, or neither end mounted here
        g.gauge("stream_seconds_behind", "how far the slave is behind the master", labels,
                max(s["behind"] for s in slaves), names=("stream", "source", "target"))
        g.counter("stream_sent_bytes", "mirror stream bytes sent", labels,
                  sum(s["bytes"] for s in slaves), names=("stream", "source", "target"))
        g.counter("stream_sent_records", "record versions sent", labels,
                  sum(s["records"] for s in slaves), names=("stream", "source", "target"))


def _inside(path: str, by_mount: dict):
    """The value of the mount that ``path`` lies in (None: no mount here has it)."""
    real = os.path.realpath(path)
    return next((v for mp, v in by_mount.items()
                 if real == mp or real.startswith(mp.rstrip("/") + "/")), None)


def _received(target: str, received_by_mount: dict) -> list[dict]:
    """What the target PFS ``target`` (its mount point, or a PFS softlink in a mount) has
    received, as a one-entry list; [] when it is not local."""
    from hammerfs.fs import parse_magic

    where = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(target))),
                         os.path.basename(target))  # a softlink is not followed
    mount = _inside(where, received_by_mount)
    if mount is None:
        return []
    pfs, received = mount
    if os.path.islink(where):
        with contextlib.suppress(OSError):
            magic = parse_magic(os.fsencode(os.readlink(where)))
            pfs = magic.pfs if magic is not None else None
    return [r for r in received if r["pfs"] == pfs]


class _Families:
    """Metric families by name, each with its label names, filled sample by sample."""

    def __init__(self):
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def _family(self, cls, name: str, help_text: str, names) -> object:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = cls(f"hammerfs_{name}", help_text, labels=list(names))
        return fam

    def gauge(self, name, help_text, labels, value, names=("mount", "mountpoint")) -> None:
        self._family(GaugeMetricFamily, name, help_text, names).add_metric(labels, value)

    def counter(self, name, help_text, labels, value, names=("mount", "mountpoint")) -> None:
        self._family(CounterMetricFamily, name, help_text, names).add_metric(labels, value)


def _ask(mountpoint: str) -> tuple[dict | None, dict]:
    """(metrics, mirror-metrics) of the mount on ``mountpoint``; (None, {}) when it does
    not answer."""
    from hammerfs.control import ControlClient, find_mount
    try:
        mount = find_mount(mountpoint)
        if mount is None or os.path.realpath(mount.mountpoint) != os.path.realpath(mountpoint):
            return None, {}
        client = ControlClient.for_mount(mount, timeout=CALL_TIMEOUT)
        info = client.call("metrics")
        mirror: dict = {}
        with contextlib.suppress(HammerError):
            mirror = client.call("mirror-metrics")
        return info, mirror
    except (HammerError, OSError) as exc:
        log.debug("metrics of %s: %s", mountpoint, exc)
        return None, {}


class Exporter:
    """The HTTP endpoint and/or the textfile writer, for the life of `hammer up`."""

    def __init__(self, spec: MetricsSpec, collector: HammerCollector):
        self.spec = spec
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.stopping = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.spec.port:
            try:
                server = start_http_server(self.spec.port, addr=ADDRESS,
                                           registry=self.registry)
            except OSError as exc:
                raise HammerError(f"[metrics]: cannot listen on {ADDRESS}:{self.spec.port}: "
                                  f"{exc.strerror}") from None
            self._server = server[0] if isinstance(server, tuple) else server
        if self.spec.textfile:
            self._thread = threading.Thread(target=self._write_loop, daemon=True,
                                            name="hammerfs-metrics")
            self._thread.start()

    def _write_loop(self) -> None:
        while True:
            try:
                write_to_textfile(self.spec.textfile, self.registry)
            except OSError as exc:
                log.warning("metrics textfile %s: %s", self.spec.textfile, exc)
            if self.stopping.wait(self.spec.interval):
                return

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def stream_views(children) -> list[StreamView]:
    """The supervisor's stream children as the exporter sees them."""
    return [StreamView(c.spec, c.proc is not None and c.proc.poll() is None, c.restarts,
                       c.last_line, c.last_exit_at) for c in children]
