"""The boot-time service's config file (TOML): what to unlock and mount, which mirror streams
to keep running, which PFSs the daily cleanup covers.

    [[mount]]                          # one per volume (a process owns a whole volume)
    volume = "/dev/sdb"                # or an image file; "VOLUME:PFS" also works
    pfs = 0                            # optional, default 0 (or the :PFS suffix)
    mountpoint = "/fort_knox"
    key_file = "/etc/hammerfs/master.key"   # optional: encrypted volumes
    options = ["ro"]                   # optional: `hammer mount -o` options
    optional = true                    # optional: if it fails, retry in the background

    [[stream]]                         # `hammer mirror-stream SOURCE TARGET`, supervised
    source = "/fort_knox"
    target = "/fort_knox_slave/pfs/slave"   # a path, VOLUME[:PFS] or [user@]host:PATH
    bwlimit = "10m"                    # optional (-b), also chunk_size, reconnect_delay, port

    [cleanup]                          # optional: what `hammer service cleanup` covers
    paths = ["/fort_knox"]             # default: every writable [[mount]]
    schedule = "daily"                 # systemd OnCalendar= of the cleanup timer

    [scrub]                            # optional: what `hammer service scrub` covers
    paths = ["/fort_knox"]             # default: every [[mount]]
    schedule = "monthly"               # OnCalendar= of the scrub timer (Persistent=true)
    rate = "200m"                      # bytes/s read (hammer scrub --rate)

    [metrics]                          # optional: Prometheus metrics of `hammer up`
    port = 9123                        # HTTP endpoint on 127.0.0.1:PORT/metrics
    textfile = "/var/lib/node_exporter/hammerfs.prom"   # node_exporter textfile collector
    interval = "15s"                   # how often the textfile is rewritten

A mount whose PFS is one end of a [[stream]] heals damaged data from the other end
(`hammer mount --heal-from`).

``load_config`` checks everything that can be checked before anything is mounted and reports
every problem at once, each naming its table and key.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass, field

from hammerfs import quantity
from hammerfs.blockdev.spec import is_remote
from hammerfs.errors import HammerError
from hammerfs.store.records import MAX_PFS

DEFAULT_CONFIG = "/etc/hammerfs/hammerfs.toml"

MOUNT_KEYS = {"name", "volume", "pfs", "mountpoint", "key_file", "keyfile_offset",
              "keyfile_size", "header", "options", "optional"}
STREAM_KEYS = {"name", "source", "target", "bwlimit", "chunk_size", "reconnect_delay", "port",
               "source_key_file", "target_key_file", "verbose"}
CLEANUP_KEYS = {"paths", "schedule"}
SCRUB_KEYS = {"paths", "schedule", "rate"}
METRICS_KEYS = {"port", "textfile", "interval"}
TOP_KEYS = {"mount", "stream", "cleanup", "scrub", "metrics"}
MAX_CONFIG_BYTES = 1 << 20
MAX_KEYFILE_OFFSET = 1 << 40
# Control characters (C0, DEL, C1): a newline in a value written into a unit file adds a
# directive (schedule = "daily\nUnit=reboot.target"); NUL breaks every path call.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# What an OnCalendar= expression is made of (weekdays, dates, times, ranges, lists,
# repetitions, "~" last days, time zone names); systemd-analyze then checks its grammar.
_CALENDAR = re.compile(r"[A-Za-z0-9_ *:,./~+-]{1,200}")


class ConfigError(HammerError):
    """The config file cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class MountSpec:
    name: str
    volume: str
    pfs: int
    mountpoint: str
    key_file: str | None = None
    keyfile_offset: int = 0
    keyfile_size: int = 0
    header: str | None = None
    options: tuple[str, ...] = ()
    optional: bool = False  # a failure to mount is retried in the background, not fatal
    # the other end of a [[stream]] of this mount's PFS; not compared: a reload that only
    # adds or drops a stream does not remount (the next mount heals from the new end)
    heal_from: str | None = field(default=None, compare=False)
    heal_port: int | None = field(default=None, compare=False)

    @property
    def readonly(self) -> bool:
        return any(o == "ro" or o.startswith("asof=") for o in self.options)

    def mount_argv(self) -> list[str]:
        """The `hammer mount` arguments for this entry (the key file is read by the mount)."""
        argv = ["mount"]
        if self.key_file:
            argv += ["--key-file", self.key_file]
        if self.keyfile_offset:
            argv += ["--keyfile-offset", str(self.keyfile_offset)]
        if self.keyfile_size:
            argv += ["--keyfile-size", str(self.keyfile_size)]
        if self.header:
            argv += ["--header", self.header]
        if self.options:
            argv += ["-o", ",".join(self.options)]
        if self.heal_from:
            argv += ["--heal-from", self.heal_from]
        if self.heal_port:
            argv += ["--heal-port", str(self.heal_port)]
        return [*argv, f"{self.volume}:{self.pfs}", self.mountpoint]


@dataclass(frozen=True)
class StreamSpec:
    name: str
    source: str
    target: str
    flags: tuple[str, ...] = ()

    def stream_argv(self) -> list[str]:
        return ["mirror-stream", *self.flags, self.source, self.target]

    @property
    def port(self) -> int | None:
        return int(self.flags[self.flags.index("-p") + 1]) if "-p" in self.flags else None


@dataclass(frozen=True)
class MetricsSpec:
    port: int | None = None  # HTTP on 127.0.0.1
    textfile: str | None = None
    interval: float = 15.0


@dataclass(frozen=True)
class ServiceConfig:
    path: str
    mounts: tuple[MountSpec, ...]
    streams: tuple[StreamSpec, ...]
    cleanup_paths: tuple[str, ...]
    schedule: str = "daily"
    scrub_paths: tuple[str, ...] = ()
    scrub_schedule: str = "monthly"
    scrub_rate: str | None = None  # as written (hammer scrub --rate parses it the same way)
    metrics: MetricsSpec | None = None


def load_config(path: str) -> ServiceConfig:
    """Read and validate ``path``; raises ConfigError listing every problem.  Whatever the
    file holds (binary, not UTF-8, nesting deeper than the TOML parser goes), the result is
    a ConfigError naming the file, never a traceback."""
    return parse_config_bytes(_read_config(path), os.path.abspath(path))


def parse_config_bytes(raw: bytes, path: str = "<config>") -> ServiceConfig:
    """Decode, parse and validate the bytes of a config file (ConfigError, never another
    exception, whatever they are)."""
    return parse_config(_parse_toml(path, raw), path)


def _read_config(path: str) -> bytes:
    try:  # O_NONBLOCK: a FIFO must not hang `hammer up`; only regular files are read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file (see 'hammer up --help' for the "
                          "format)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config {path!r}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"config {path}: not a regular file")
        raw = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes")
    return raw


def _parse_toml(path: str, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config {path}: line {line}: not UTF-8 text (byte "
                          f"0x{raw[exc.start]:02x})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config {path}: not usable TOML: arrays or tables nested too "
                          "deeply") from None
    except ValueError as exc:  # e.g. a number tomllib cannot convert
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from None


def parse_config(data: dict, path: str = "<config>") -> ServiceConfig:
    """Validate an already parsed TOML document (see the module docstring)."""
    v = _Validator(path)
    v.unknown_keys(data, TOP_KEYS, "the top level")
    mounts = [m for i, t in enumerate(v.table_list(data, "mount"), 1)
              if (m := v.mount(t, i)) is not None]
    v.mount_conflicts(mounts)
    streams = [s for i, t in enumerate(v.table_list(data, "stream"), 1)
               if (s := v.stream(t, i, mounts)) is not None]
    v.stream_conflicts(streams)
    paths, schedule = v.cleanup(data.get("cleanup", {}), mounts)
    scrub_paths, scrub_schedule, scrub_rate = v.scrub(data.get("scrub", {}), mounts)
    metrics = v.metrics(data["metrics"]) if "metrics" in data else None
    if not data.get("mount") and not data.get("stream"):
        v.error("nothing to do: no [[mount]] and no [[stream]]")
    if v.errors:
        raise ConfigError(f"config {path}:\n  " + "\n  ".join(v.errors))
    return ServiceConfig(path, tuple(_healing(mounts, streams)), tuple(streams), tuple(paths),
                         schedule, tuple(scrub_paths), scrub_schedule, scrub_rate, metrics)


def _inside(path: str, m: MountSpec) -> bool:
    real = os.path.realpath(path)
    return real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")


def _healing(mounts: list[MountSpec], streams: list[StreamSpec]) -> list[MountSpec]:
    """Each mount that holds one end of a stream heals from the other end (the first such
    stream): a damaged master from its slave, a damaged slave from its master."""
    from dataclasses import replace

    from hammerfs.mirror.transport import parse_remote
    out = []
    for m in mounts:
        for s in streams:
            ends = [(s.source, s.target), (s.target, s.source)]
            other = next((o for mine, o in ends if parse_remote(mine) is None
                          and _inside(mine, m)), None)
            if other is not None:
                m = replace(m, heal_from=other,
                            heal_port=s.port if parse_remote(other) is not None else None)
                break
        out.append(m)
    return out


class _Validator:
    """Collects every problem so the user fixes the file in one go."""

    def __init__(self, path: str):
        self.path = path
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        self.errors.append(text)

    def unknown_keys(self, table: dict, known: set[str], where: str) -> None:
        for key in sorted(set(table) - known):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"known: {', '.join(sorted(known))}"
            self.error(f"{where}: unknown key {key!r} ({hint})")

    def table_list(self, data: dict, name: str) -> list[dict]:
        value = data.get(name, [])
        if isinstance(value, dict):  # [mount] written instead of [[mount]]
            self.error(f"[{name}] must be written [[{name}]] (one table per {name})")
            return []
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.error(f"{name}: expected [[{name}]] tables")
            return []
        return value

    def typed(self, table: dict, key: str, kind: type | tuple, where: str, *,
              required: bool = False):
        if key not in table:
            if required:
                self.error(f"{where}: missing {key!r}")
            return None
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else \
                " or ".join(k.__name__ for k in kind)
            self.error(f"{where}: {key!r} must be a {_toml_type(names)}, not "
                       f"{_short(value)}")
            return None
        if isinstance(value, str) and not self.clean_text(value, where, key):
            return None
        return value

    def clean_text(self, value: str, where: str, key: str) -> bool:
        """Strings end up in paths, argv and unit files: no control characters."""
        if _CONTROL.search(value):
            self.error(f"{where}: {key!r} contains a control character: {_short(value)}")
            return False
        if not value.strip():
            self.error(f"{where}: {key!r} is empty")
            return False
        return True

    def number(self, table: dict, key: str, where: str, lo: int, hi: int) -> int | None:
        value = self.typed(table, key, int, where)
        if value is not None and not lo <= value <= hi:
            self.error(f"{where}: {key} {value} is out of range ({lo}-{hi})")
            return None
        return value

    # -- [[mount]] -------------------------------------------------------------------------
    def mount(self, t: dict, index: int) -> MountSpec | None:
        where = f"[[mount]] #{index}"
        self.unknown_keys(t, MOUNT_KEYS, where)
        volume = self.typed(t, "volume", str, where, required=True)
        mountpoint = self.typed(t, "mountpoint", str, where, required=True)
        if volume is None or mountpoint is None:
            return None
        name = self.typed(t, "name", str, where) or os.path.basename(mountpoint.rstrip("/"))
        where = f"[[mount]] #{index} ({name})"
        volume, pfs = self._volume_and_pfs(t, volume, where)
        mountpoint = self._mountpoint(mountpoint, where)
        offset = self._size(t, "keyfile_offset", where)
        size = self._size(t, "keyfile_size", where)
        key_file = self.typed(t, "key_file", str, where)
        if key_file is not None:
            key_file = self.key_file(key_file, where, "key_file", offset, size)
        header = self.typed(t, "header", str, where)
        if header is not None and not os.path.isfile(header):
            self.error(f"{where}: header {header}: no such file")
        if (offset or size) and not key_file:
            self.error(f"{where}: keyfile_offset/keyfile_size need a key_file")
        options = self._mount_options(t, where)
        optional = bool(self.typed(t, "optional", bool, where))
        if volume is None or mountpoint is None:
            return None
        return MountSpec(name, volume, pfs, mountpoint, key_file, offset, size, header,
                         options, optional)

    def _volume_and_pfs(self, t: dict, volume: str, where: str) -> tuple[str | None, int]:
        from hammerfs.store.pfs import parse_volume_spec
        try:
            vol, pfs = parse_volume_spec(volume)
        except HammerError as exc:
            self.error(f"{where}: volume: {exc}")
            return None, 0
        if "pfs" in t:
            given = self.typed(t, "pfs", int, where)
            if given is not None and vol != volume:
                self.error(f"{where}: the PFS is given twice (volume {volume!r} and pfs)")
            elif given is not None and not 0 <= given <= MAX_PFS:
                self.error(f"{where}: pfs {given} is out of range (0-{MAX_PFS})")
            elif given is not None:
                pfs = given
        if is_remote(vol):  # an RBD image or S3 volume: checked when it is mounted
            return vol, pfs
        if not os.path.exists(vol):
            self.error(f"{where}: volume {vol}: no such file or device")
            return None, pfs
        if os.path.isdir(vol):
            self.error(f"{where}: volume {vol} is a directory")
            return None, pfs
        return os.path.realpath(vol), pfs

    def _mountpoint(self, mountpoint: str, where: str) -> str | None:
        if not os.path.isabs(mountpoint):
            self.error(f"{where}: mountpoint {mountpoint!r} must be an absolute path")
            return None
        try:
            if not os.path.isdir(mountpoint):
                self.error(f"{where}: mountpoint {mountpoint} is not a directory "
                           f"(create it: mkdir -p {mountpoint})")
                return None
        except OSError:  # a dead FUSE mount (ENOTCONN) is cleaned up by `hammer up`
            pass
        return os.path.realpath(mountpoint)

    def key_file(self, path: str, where: str, key: str, offset: int = 0,
                 size: int = 0) -> str | None:
        """A key file is read here exactly as the mount will read it, so a missing, empty
        or short file is refused up front and loose permissions get `hammer luks`'s
        warning (printed by the luks layer).  The passphrase is dropped at once."""
        from hammerfs.luks.passphrase import read_key_file
        if not os.path.isabs(path):
            self.error(f"{where}: {key} {path!r} must be an absolute path")
            return None
        if not os.path.isfile(path):
            self.error(f"{where}: {key} {path}: " + ("not a regular file" if
                       os.path.exists(path) else "no such file"))
            return None
        try:
            read_key_file(path, offset, size)
        except HammerError as exc:
            self.error(f"{where}: {exc}")
            return None
        return path

    def _size(self, t: dict, key: str, where: str) -> int:
        return self.number(t, key, where, 0, MAX_KEYFILE_OFFSET) or 0

    def _mount_options(self, t: dict, where: str) -> tuple[str, ...]:
        raw = t.get("options", [])
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
            self.error(f"{where}: 'options' must be a list of strings like [\"ro\"]")
            return ()
        from hammerfs.fuse.mount import parse_mount_options
        if not all(self.clean_text(o, where, "options") for o in raw if o.strip()):
            return ()
        options = tuple(o.strip() for o in raw if o.strip())
        for opt in options:
            try:
                parse_mount_options(opt)  # `hammer mount -o`'s own parser
            except HammerError as exc:
                self.error(f"{where}: {exc}")
        return options

    def mount_conflicts(self, mounts: list[MountSpec]) -> None:
        seen_mp: dict[str, str] = {}
        seen_vol: dict[str, str] = {}
        names: set[str] = set()
        for m in mounts:
            if m.mountpoint in seen_mp:
                self.error(f"mountpoint {m.mountpoint} is used by both {seen_mp[m.mountpoint]}"
                           f" and {m.name}")
            if m.volume in seen_vol:
                self.error(f"volume {m.volume} is in both {seen_vol[m.volume]} and {m.name}: "
                           "one process owns a whole volume; mount one PFS and reach the "
                           "others through their PFS softlinks")
            if m.name in names:
                self.error(f"two [[mount]] entries are named {m.name!r}")
            seen_mp.setdefault(m.mountpoint, m.name)
            seen_vol.setdefault(m.volume, m.name)
            names.add(m.name)
        for m in mounts:
            for other in mounts:
                if other is not m and m.mountpoint.startswith(other.mountpoint.rstrip("/")
                                                              + "/"):
                    self.error(f"mountpoint {m.mountpoint} ({m.name}) is inside "
                               f"{other.mountpoint} ({other.name})")

    # -- [[stream]] ------------------------------------------------------------------------
    def stream(self, t: dict, index: int, mounts: list[MountSpec]) -> StreamSpec | None:
        where = f"[[stream]] #{index}"
        self.unknown_keys(t, STREAM_KEYS, where)
        source = self.typed(t, "source", str, where, required=True)
        target = self.typed(t, "target", str, where, required=True)
        name = self.typed(t, "name", str, where)
        if source is None or target is None:
            return None
        name = name or f"{os.path.basename(source.rstrip('/'))}->" \
                        f"{os.path.basename(target.rstrip('/'))}"
        where = f"[[stream]] #{index} ({name})"
        ok = self._endpoint(source, "source", where, mounts)
        ok = self._endpoint(target, "target", where, mounts) and ok
        if source == target:
            self.error(f"{where}: source and target are the same")
        flags = self._stream_flags(t, where)
        return StreamSpec(name, source, target, tuple(flags)) if ok else None

    def _endpoint(self, spec: str, key: str, where: str, mounts: list[MountSpec]) -> bool:
        from hammerfs.mirror.transport import parse_remote
        from hammerfs.store.pfs import parse_volume_spec
        if parse_remote(spec) is not None or is_remote(spec):
            return True
        if not os.path.isabs(spec):
            self.error(f"{where}: {key} {spec!r} must be an absolute path or "
                       "[user@]host:PATH")
            return False
        real = os.path.realpath(spec)
        if any(real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")
               for m in mounts):
            return True  # exists once `hammer up` has mounted it
        try:
            volume, _pfs = parse_volume_spec(spec)
        except HammerError as exc:
            self.error(f"{where}: {key}: {exc}")
            return False
        if not os.path.exists(volume):
            self.error(f"{where}: {key} {spec}: neither inside a configured [[mount]] nor an "
                       "existing volume")
            return False
        owner = next((m for m in mounts if m.volume == os.path.realpath(volume)), None)
        if owner is not None:
            self.error(f"{where}: {key} {spec} is the volume of [[mount]] {owner.name}: "
                       f"stream from/to its mount ({owner.mountpoint}) instead")
            return False
        return True

    def _stream_flags(self, t: dict, where: str) -> list[str]:
        flags: list[str] = []
        for key, flag in (("bwlimit", "-b"), ("chunk_size", "-S")):
            value = self.typed(t, key, (str, int), where)
            if value is not None and self.quantity(quantity.parse_size, value, where, key):
                flags += [flag, str(value).strip()]  # mirror-stream parses it the same way
        delay = self.typed(t, "reconnect_delay", (int, float, str), where)
        if delay is not None:
            seconds = self.quantity(quantity.parse_duration, delay, where, "reconnect_delay")
            if seconds is not None:
                flags += ["--reconnect-delay", f"{seconds:g}"]
        port = self.number(t, "port", where, 1, 65535)
        if port is not None:
            flags += ["-p", str(port)]
        for key in ("source_key_file", "target_key_file"):
            value = self.typed(t, key, str, where)
            if value is not None and self.key_file(value, where, key):
                flags += ["--" + key.replace("_", "-"), value]
        if self.typed(t, "verbose", bool, where):
            flags.append("-v")
        return flags

    def quantity(self, parse, value, where: str, key: str):
        """``value`` through the project's one parser of its kind (hammerfs.quantity)."""
        try:
            return parse(value, what=key)
        except quantity.QuantityError as exc:
            self.error(f"{where}: {exc}")
            return None

    def stream_conflicts(self, streams: list[StreamSpec]) -> None:
        names: set[str] = set()
        targets: dict[str, str] = {}
        for s in streams:
            if s.name in names:
                self.error(f"two [[stream]] entries are named {s.name!r}")
            names.add(s.name)
            if s.target in targets:
                self.error(f"target {s.target} is fed by both {targets[s.target]} and "
                           f"{s.name}")
            targets.setdefault(s.target, s.name)

    # -- [cleanup] -------------------------------------------------------------------------
    def cleanup(self, t, mounts: list[MountSpec]) -> tuple[list[str], str]:
        if not isinstance(t, dict):
            self.error("cleanup: expected a [cleanup] table")
            return [], "daily"
        self.unknown_keys(t, CLEANUP_KEYS, "[cleanup]")
        schedule = self.typed(t, "schedule", str, "[cleanup]")
        schedule = "daily" if schedule is None else self.schedule(schedule.strip())
        paths = t.get("paths")
        if paths is None:
            return [m.mountpoint for m in mounts if not m.readonly], schedule
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            self.error("[cleanup]: 'paths' must be a list of strings")
            return [], schedule
        paths = [p for p in paths if self.clean_text(p, "[cleanup]", "paths")]
        for p in paths:
            if not os.path.isabs(p):
                self.error(f"[cleanup]: path {p!r} must be absolute")
        return list(paths), schedule

    # -- [scrub], [metrics] -----------------------------------------------------------------
    def scrub(self, t, mounts: list[MountSpec]) -> tuple[list[str], str, str | None]:
        if not isinstance(t, dict):
            self.error("scrub: expected a [scrub] table")
            return [], "monthly", None
        self.unknown_keys(t, SCRUB_KEYS, "[scrub]")
        schedule = self.typed(t, "schedule", str, "[scrub]")
        schedule = "monthly" if schedule is None else self.schedule(schedule.strip(),
                                                                    "[scrub]", "monthly")
        rate = self.typed(t, "rate", (str, int), "[scrub]")
        if rate is not None:
            rate = str(rate).strip() if self.quantity(quantity.parse_size, rate, "[scrub]",
                                                      "rate") is not None else None
        paths = t.get("paths")
        if paths is None:
            return [m.mountpoint for m in mounts], schedule, rate
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            self.error("[scrub]: 'paths' must be a list of strings")
            return [], schedule, rate
        paths = [p for p in paths if self.clean_text(p, "[scrub]", "paths")]
        for p in paths:
            if not any(_inside(p, m) for m in mounts):
                self.error(f"[scrub]: path {p!r} is not inside a configured [[mount]]")
        return list(paths), schedule, rate

    def metrics(self, t) -> MetricsSpec | None:
        if not isinstance(t, dict):
            self.error("metrics: expected a [metrics] table")
            return None
        self.unknown_keys(t, METRICS_KEYS, "[metrics]")
        port = self.number(t, "port", "[metrics]", 1, 65535)
        textfile = self.typed(t, "textfile", str, "[metrics]")
        if textfile is not None:
            if not os.path.isabs(textfile):
                self.error(f"[metrics]: textfile {textfile!r} must be an absolute path")
                textfile = None
            elif not os.path.isdir(os.path.dirname(textfile)):
                self.error(f"[metrics]: textfile {textfile}: its directory does not exist")
                textfile = None
        interval = 15.0
        raw = self.typed(t, "interval", (int, float, str), "[metrics]")
        if raw is not None:
            interval = self.quantity(quantity.parse_duration, raw, "[metrics]", "interval")
            if interval is not None and interval < 1:
                self.error(f"[metrics]: interval {raw!r} is shorter than 1 second")
            interval = interval if interval and interval >= 1 else 15.0
        if port is None and textfile is None:
            self.error("[metrics]: give a port (HTTP on 127.0.0.1) or a textfile, or both")
            return None
        return MetricsSpec(port, textfile, interval)

    def schedule(self, text: str, where: str = "[cleanup]", default: str = "daily") -> str:
        """An OnCalendar= expression: its characters from a whitelist (nothing can add a
        line or a %specifier to the timer unit), its grammar checked by `systemd-analyze
        calendar` where systemd is installed (not needed to run hammerfs without it)."""
        if not _CALENDAR.fullmatch(text):
            self.error(f"{where}: schedule {_short(text)} is not a systemd calendar "
                       "expression (e.g. daily, weekly, Sun 03:00, *-*-* 04:00:00)")
            return default
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            return text
        try:
            res = subprocess.run([analyze, "calendar", "--", text], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return text  # the whitelist above still holds
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["invalid"])[-1]
            self.error(f"{where}: schedule {text!r}: systemd-analyze calendar: {why}")
            return default
        return text


def _short(value: object) -> str:
    """A value quoted for an error message, cut short (a config may hold megabytes)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 80 else text[:77] + "..."


# -- `hammer up --check`: do the key files open their volumes? -------------------------------
class _HeaderReader:
    """Read-only access to the start of a volume (or a detached header file) to check a key
    against its LUKS header, without the volume lock: the volume may be mounted right now,
    and nothing here writes or reads the payload."""

    readonly = True

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END) // 4096 * 4096
        except OSError:
            os.close(self._fd)
            raise

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise HammerError(f"{self.path}: read beyond the end ({offset}+{length})")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise HammerError(f"{self.path}: short read at {offset}")
        return data

    def write(self, offset: int, data) -> None:
        raise HammerError("read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        os.close(self._fd)


def check_key(volume: str, key_file: str, *, offset: int = 0, size: int = 0,
              header: str | None = None) -> str | None:
    """Why ``key_file`` does not open ``volume`` (None if it does): its LUKS header (or the
    detached ``header``) is read and one key slot unlocked with the key; the volume key is
    dropped at once and the payload is never touched."""
    from hammerfs.luks.container import WrongPassphrase, is_luks, open_container
    from hammerfs.luks.passphrase import read_key_file
    where = header or volume
    try:
        dev = _HeaderReader(where)
    except OSError as exc:
        return f"cannot read {where}: {exc.strerror}"
    try:
        if not is_luks(dev):
            return (f"{header} is not a LUKS header" if header else
                    f"key_file {key_file} is given but volume {volume} is not encrypted "
                    "(no LUKS header)")
        container = open_container(dev, validate_device=header is None)
        passphrase = read_key_file(key_file, offset, size)
        try:
            container.unlock(passphrase)
        except WrongPassphrase:
            return f"key_file {key_file} does not open {volume} (no key slot accepts it)"
        finally:
            del passphrase
        return None
    except (HammerError, OSError, ValueError) as exc:
        return f"{volume}: cannot check key_file {key_file}: {exc}"
    finally:
        dev.close()


def check_keys(config: ServiceConfig) -> None:
    """``hammer up --check``: every [[mount]]'s key file must open its volume, and every
    stream's source/target key file the unmounted volume it names.  ConfigError lists
    every one that does not."""
    from hammerfs.store.pfs import parse_volume_spec
    problems = []
    for m in config.mounts:
        if m.key_file and not is_remote(m.volume):  # a remote one is checked as it mounts
            why = check_key(m.volume, m.key_file, offset=m.keyfile_offset,
                            size=m.keyfile_size, header=m.header)
            if why:
                problems.append(f"[[mount]] ({m.name}): {why}")
    mounted = [m.mountpoint for m in config.mounts]
    for s in config.streams:
        for spec, flag in ((s.source, "--source-key-file"), (s.target, "--target-key-file")):
            if flag not in s.flags or any(spec == mp or spec.startswith(mp.rstrip("/") + "/")
                                          for mp in mounted):
                continue
            key_file = s.flags[s.flags.index(flag) + 1]
            try:
                volume, _pfs = parse_volume_spec(spec)
            except HammerError:
                continue  # a remote or mounted endpoint: the key is not for it
            if os.path.isfile(volume) or (os.path.exists(volume)
                                          and stat.S_ISBLK(os.stat(volume).st_mode)):
                why = check_key(volume, key_file)
                if why:
                    problems.append(f"[[stream]] ({s.name}): {why}")
    if problems:
        raise ConfigError(f"config {config.path}:\n  " + "\n  ".join(problems))


def _toml_type(names: str) -> str:
    return names.replace("str", "string").replace("int", "integer").replace("bool", "boolean")
