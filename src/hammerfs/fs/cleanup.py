"""`hammer cleanup` and `hammer config`: HAMMER's periodic maintenance of a PFS.

The config is HAMMER's text format, one directive a line, ``<directive> <period> <arg>``,
times with a d/h/m/s suffix (a bare number is seconds), ``#`` starts a comment:

    snapshots 1d 60d     take a snapshot every period, expire those older than the retention
    prune     1d 5m      destroy history no kept snapshot needs (fs.history.prune), run time
    rebalance 1d 5m      accepted; not applicable (the B-tree rebalances as it goes)
    #dedup    1d 5m      accepted; not applicable (no dedup)
    reblock   1d 5m      empty big-blocks less than 90 % full (store.reblock), run time
    recopy    30d 10m    as reblock, every big-block not completely full

A period of 0 disables a directive; a prune run time of 0 means unlimited.  ``snapshots 0 0``
turns snapshots off and makes prune destroy all history (prune-everything), ``snapshots 0
<ret>`` only expires snapshots taken by hand.  A period that is a whole number of days is
due once that many local midnights have passed since its last run (HAMMER's rule), others
once the period has elapsed; ``force`` (``-F``) ignores periods.

Both live on the PFS as records the mirror does not copy (REC_CONFIG, on ROOT_OBJ): key 0 the
config text, key 1 the last run time of each directive, so a machine that was off catches up
at its next run.  docs/format.md documents both.
"""

from __future__ import annotations

import datetime
import errno
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from hammerfs import quantity
from hammerfs.errors import HammerError
from hammerfs.fs import history
from hammerfs.fs.filesystem import FileSystem, FsError
from hammerfs.fs.layout import Snapshot
from hammerfs.steps import NO_LOCK
from hammerfs.store.api import RecordStore
from hammerfs.store.reblock import reblock
from hammerfs.store.records import MAX_U64, REC_CONFIG, REC_SNAPSHOT, ROOT_OBJ
from hammerfs.store.store import Store

CONFIG_KEY = 0
STATE_KEY = 1
CONFIG_MAX = 1024  # HAMMER's limit for the config text
STATE_MAGIC = "hammerfs-cleanup-state 1"

DEFAULT_CONFIG = """\
snapshots 1d 60d
prune     1d 5m
rebalance 1d 5m
#dedup    1d 5m
reblock   1d 5m
recopy    30d 10m
"""
DIRECTIVES = ("snapshots", "prune", "rebalance", "dedup", "reblock", "recopy")
NOT_APPLICABLE = {
    "rebalance": "the B-tree splits and merges as it changes",
    "dedup": "deduplication is not implemented",
}
REBLOCK_FILL = {"reblock": 90, "recopy": 100}  # % fill below which a big-block is emptied
_UNITS = quantity.DURATION_UNITS
MAX_PERIOD = 100 * 365 * 86400  # periods and retentions: up to a century


class ConfigError(HammerError):
    """A cleanup config that does not parse (the message names the line)."""


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    period: int  # seconds; 0 = disabled
    arg: int  # seconds: retention for snapshots, run time for the others (0 = unlimited)
    any_name: bool = False  # snapshots ... any (accepted: expiry uses the record's time)


@dataclass(frozen=True, slots=True)
class Config:
    text: str
    directives: dict[str, Directive]

    def get(self, name: str) -> Directive | None:
        return self.directives.get(name)


def parse_duration(text: str) -> int:
    """Whole seconds (the project's one duration parser, ``hammerfs.quantity``)."""
    try:
        return int(quantity.parse_duration(text, integer=True, maximum=MAX_PERIOD))
    except quantity.QuantityError as exc:
        raise ConfigError(str(exc)) from None


def format_duration(seconds: int) -> str:
    for unit in "dhm":
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_config(text: str) -> Config:
    """Parse and check a config text; errors name the line."""
    if len(text.encode("utf-8")) > CONFIG_MAX:
        raise ConfigError(f"config is longer than {CONFIG_MAX} bytes")
    found: dict[str, Directive] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        name = words[0]
        if name not in DIRECTIVES:
            raise ConfigError(f"line {lineno}: unknown directive {name!r} "
                              f"(known: {', '.join(DIRECTIVES)})")
        extra = words[3:]
        if len(words) < 3 or extra not in ([], ["any"]) or (extra and name != "snapshots"):
            raise ConfigError(f"line {lineno}: expected '{name} <period> "
                              f"{'<retention> [any]' if name == 'snapshots' else '<runtime>'}'")
        if name in found:
            raise ConfigError(f"line {lineno}: {name} is given twice")
        try:
            found[name] = Directive(name, parse_duration(words[1]), parse_duration(words[2]),
                                    bool(extra))
        except ConfigError as exc:
            raise ConfigError(f"line {lineno}: {exc}") from None
    return Config(text, found)


# -- records --------------------------------------------------------------------------------------
def _key(pfs: int, which: int) -> tuple[int, int, int, int]:
    return (pfs, ROOT_OBJ, REC_CONFIG, which)


def load_config(store: RecordStore, pfs: int) -> Config | None:
    """The stored config of ``pfs``, or None if it has none yet."""
    rec = store.get(_key(pfs, CONFIG_KEY))
    return parse_config(rec.data.decode("utf-8", "replace")) if rec else None


def save_config(store: RecordStore, pfs: int, text: str) -> Config:
    """Check and store a config (the caller commits)."""
    _require_pfs(store, pfs)
    config = parse_config(text)
    store.put(_key(pfs, CONFIG_KEY), text.encode("utf-8"))
    return config


def load_state(store: RecordStore, pfs: int) -> dict[str, int]:
    """Last run of each directive, wall-clock ns."""
    rec = store.get(_key(pfs, STATE_KEY))
    if rec is None:
        return {}
    lines = rec.data.decode("utf-8", "replace").splitlines()
    if not lines or lines[0] != STATE_MAGIC:
        raise FsError(errno.EIO, f"PFS {pfs}: cleanup state record has an unknown format")
    state = {}
    for line in lines[1:]:
        name, _, ns = line.partition(" ")
        state[name] = int(ns)
    return state


def save_state(store: RecordStore, pfs: int, state: dict[str, int]) -> None:
    body = "".join(f"{name} {ns}\n" for name, ns in sorted(state.items()))
    store.put(_key(pfs, STATE_KEY), f"{STATE_MAGIC}\n{body}".encode())


def _require_pfs(store: RecordStore, pfs: int):
    pd = store.get_pfs(pfs)
    if pd is None or pd.is_deleted:
        raise FsError(errno.ENOENT, f"PFS {pfs} does not exist")
    return pd


# -- periods --------------------------------------------------------------------------------------
def is_due(period: int, last_ns: int | None, now_ns: int, force: bool = False) -> bool:
    """Whether a directive with ``period`` (seconds, > 0) last run at ``last_ns`` is due."""
    if force or last_ns is None:
        return True
    if period % 86400 == 0:  # whole days: count local midnights, as HAMMER does
        last_day = datetime.date.fromtimestamp(last_ns / 1e9)
        today = datetime.date.fromtimestamp(now_ns / 1e9)
        return (today - last_day).days >= period // 86400
    return now_ns - last_ns >= period * 1_000_000_000


# -- the run --------------------------------------------------------------------------------------
@dataclass
class CleanupReport:
    pfs: int
    config_created: bool = False
    lines: list[tuple[str, str]] = field(default_factory=list)  # (directive, what happened)
    snapshot: Snapshot | None = None  # taken by this run
    expired: list[int] = field(default_factory=list)  # snapshot TIDs removed
    destroyed: int = 0
    freed_bytes: int = 0

    def say(self, directive: str, text: str) -> None:
        self.lines.append((directive, text))


def cleanup(fs: FileSystem, *, force: bool = False, now_ns: int | None = None,
            note: str = "cleanup", lock: AbstractContextManager = NO_LOCK) -> CleanupReport:
    """Run the due directives of ``fs``'s PFS (a live, writable view of a master).
    ``lock`` (a mount's) is never held for the run: taken for the quick directives and the
    config and state records, and in bounded steps by prune, reblock and the commit-log
    thinning (hammerfs.steps), so the mount serves its users meanwhile.  Every step leaves a
    consistent volume; an interrupted cleanup is simply run again (the state record says
    which directives completed)."""
    store = fs.store
    now = time.time_ns() if now_ns is None else now_ns
    with lock:
        report, state, config, before = _cleanup_start(fs, force, now, note)
    if state is None:  # a slave: nothing to do but age the commit log
        _thin_commit_log(store, now, lock)
        return report
    _run_snapshots(fs, config.get("snapshots"), state, now, force, note, report, lock)
    _run_prune(store, fs.pfs, config, state, now, force, report, lock)
    for name in ("rebalance", "dedup"):
        d = config.get(name)
        if d is None or d.period == 0:
            report.say(name, "disabled")
        else:
            report.say(name, f"not applicable ({NOT_APPLICABLE[name]})")
    for name in ("reblock", "recopy"):  # online, in steps
        _run_reblock(store, name, config.get(name), state, now, force, report, lock)
    with lock:
        save_state(store, fs.pfs, state)
    store.commit_outside(lock)
    _thin_commit_log(store, now, lock)
    with lock:
        report.freed_bytes = max(0, store.space().free_bytes - before)
    return report


def _cleanup_start(fs: FileSystem, force: bool, now: int, note: str
                   ) -> tuple[CleanupReport, dict[str, int] | None, Config, int]:
    """The quick part, under the lock: (report, state to save or None for a slave, the
    config, free bytes at the start)."""
    store, pfs = fs.store, fs.pfs
    report = CleanupReport(pfs)
    if _require_pfs(store, pfs).is_slave:  # nothing to do, and nothing may be written
        for name in DIRECTIVES:
            report.say(name, "skip (a slave: its snapshots and history come from its master)")
        return report, None, parse_config(DEFAULT_CONFIG), 0
    fs.check_writable()
    config = load_config(store, pfs)
    if config is None:
        config = save_config(store, pfs, DEFAULT_CONFIG)
        report.config_created = True
    state = load_state(store, pfs)
    before = store.space().free_bytes
    return report, state, config, before


def _run_reblock(store: RecordStore, name: str, d: Directive | None, state: dict[str, int],
                 now: int, force: bool, report: CleanupReport, lock) -> None:
    if d is None or d.period == 0:
        report.say(name, "disabled")
        return
    if not is_due(d.period, state.get(name), now, force):
        report.say(name, "skip (period not elapsed)")
        return
    if not isinstance(store, Store):  # the in-memory store has no blocks to move
        report.say(name, "not applicable (no on-disk volume)")
        return
    deadline = time.monotonic() + d.arg if d.arg else None
    result = reblock(store, REBLOCK_FILL[name], deadline=deadline, lock=lock)
    what = (f"{result.bigblocks} big-blocks emptied, {result.extents} extents and "
            f"{result.nodes} nodes moved ({result.bytes_moved >> 20} MiB)")
    if result.complete:
        state[name] = now
        report.say(name, f"run ({what})")
    else:
        report.say(name, f"run ({what}, stopped after {format_duration(d.arg)}; continues "
                   f"at the next run)")


def _thin_commit_log(store: RecordStore, now: int, lock: AbstractContextManager) -> None:
    """The store's commit log is no PFS's history: it ages on every run, whatever the
    directives, and on a volume of slaves too (a backup disk commits as often as its master)."""
    if not store.readonly:
        store.thin_commit_log(now, lock=lock)


def _run_snapshots(fs: FileSystem, d: Directive | None, state: dict[str, int], now: int,
                   force: bool, note: str, report: CleanupReport,
                   lock: AbstractContextManager) -> None:
    if d is None or (d.period == 0 and d.arg == 0):
        report.say("snapshots", "disabled")
        return
    if d.period == 0:
        what = "disabled"
    elif is_due(d.period, state.get("snapshots"), now, force):
        report.snapshot = history.take_snapshot(fs, note, lock=lock)  # flushes unlocked
        state["snapshots"] = now
        what = f"run (snapshot 0x{report.snapshot.tid:016x})"
    else:
        what = "skip (period not elapsed)"
    if d.arg:
        with lock:
            report.expired = expire_snapshots(fs.store, fs.pfs, now - d.arg * 1_000_000_000)
        if report.expired:
            what += f", expired {len(report.expired)} older than {format_duration(d.arg)}"
    report.say("snapshots", what)


def expire_snapshots(store: RecordStore, pfs: int, before_ns: int) -> list[int]:
    """Delete the snapshot records taken before ``before_ns``; returns their TIDs."""
    lo, hi = (pfs, ROOT_OBJ, REC_SNAPSHOT, 0), (pfs, ROOT_OBJ, REC_SNAPSHOT, MAX_U64)
    snaps = [Snapshot.decode(rec.data) for rec in store.scan(lo, hi)]
    old = [snap.tid for snap in snaps if snap.ts < before_ns]
    for tid in old:
        store.delete((pfs, ROOT_OBJ, REC_SNAPSHOT, tid))
    return old


def _run_prune(store: RecordStore, pfs: int, config: Config, state: dict[str, int],
               now: int, force: bool, report: CleanupReport,
               lock: AbstractContextManager) -> None:
    d = config.get("prune")
    if d is None or d.period == 0:
        report.say("prune", "disabled")
        return
    if not is_due(d.period, state.get("prune"), now, force):
        report.say("prune", "skip (period not elapsed)")
        return
    snaps = config.get("snapshots")
    if snaps is None or (snaps.period == 0 and snaps.arg == 0):
        report.destroyed = history.prune_everything(store, pfs, lock=lock)
        report.say("prune", f"run (snapshots off: all history, {report.destroyed} versions)")
        state["prune"] = now
        return
    deadline = time.monotonic() + d.arg if d.arg else None
    result = history.prune(store, pfs, now_ns=now, deadline=deadline, lock=lock)
    report.destroyed = result.destroyed
    if result.complete:
        state["prune"] = now
        report.say("prune", f"run ({result.destroyed} versions destroyed)")
    else:  # the rest next time: the period has not been served
        report.say("prune", f"run ({result.destroyed} versions destroyed, stopped after "
                   f"{format_duration(d.arg)}; continues at the next run)")
