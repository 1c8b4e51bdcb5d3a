"""PFS operations at the record-store level (HAMMER's pfs-* semantics).

Everything here takes a RecordStore and a PFS id and works the same on the on-disk Store, the
MemoryStore, or the store inside a mounting process (through the control channel).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass

from hammerfs.errors import HammerError
from hammerfs.fs import init_pfs_root
from hammerfs.store.api import RecordStore
from hammerfs.store.pfs import PFS_DELETED, PFS_SLAVE, PfsData
from hammerfs.store.records import MAX_PFS, MAX_U64, REC_CONFIG, REC_PFS, RecKey, Record

# A master that pfs-downgrade turned into a slave: its history after the last TID it shares
# with its new master may have diverged, so the first mirror-write rolls it back to the
# common TID (see docs/mirror-protocol.md, "Failover").  Stored in mirror_flags, which the
# store keeps opaque.
PFS_DOWNGRADED = 0x100

MAX_OBJ = MAX_U64
MAX_RTYPE = 0xFFFF


def pfs_range(pfs: int) -> tuple[RecKey, RecKey]:
    """Every record key of one PFS."""
    return (pfs, 0, 0, 0), (pfs, MAX_OBJ, MAX_RTYPE, MAX_U64)


def is_mirrored(rec: Record) -> bool:
    """CONFIG records stay with their PFS; PFS descriptors (on pfs 0) never travel."""
    return rec.rec_type != REC_CONFIG and not (rec.pfs == 0 and rec.rec_type == REC_PFS)


def require_pfs(store: RecordStore, pfs: int) -> PfsData:
    desc = store.get_pfs(pfs)
    if desc is None or desc.is_deleted:
        raise HammerError(f"PFS #{pfs} does not exist")
    return desc


def sync_end_of(store: RecordStore, pfs: int, desc: PfsData) -> int:
    """The TID up to which this PFS's state is complete: a slave's sync_end_tid, a master's
    last committed TID (HAMMER's flush_tid1)."""
    return desc.sync_end_tid if desc.is_slave else store.last_committed_tid


def free_pfs_id(store: RecordStore) -> int:
    used = {pfs for pfs, desc in store.list_pfs() if not desc.is_deleted}
    for pfs in range(1, MAX_PFS + 1):
        if pfs not in used:
            return pfs
    raise HammerError("no free PFS id left on this volume")


def _check_new(store: RecordStore, pfs: int) -> None:
    if not 0 < pfs <= MAX_PFS:
        raise HammerError(f"PFS id {pfs} is out of range (1-{MAX_PFS})")
    old = store.get_pfs(pfs)
    if old is not None and not old.is_deleted:
        raise HammerError(f"PFS #{pfs} already exists")
    if next(iter(store.scan(*pfs_range(pfs), history=True, with_data=False)), None):
        raise HammerError(f"PFS #{pfs} still holds records; destroy it first")


def create_master(store: RecordStore, pfs: int, label: str = "") -> PfsData:
    """A master starts with an empty root directory (a slave gets its root by mirroring)."""
    _check_new(store, pfs)
    desc = PfsData(label=label)
    store.put_pfs(pfs, desc)
    init_pfs_root(store, pfs)
    store.commit()
    return desc


def create_slave(store: RecordStore, pfs: int, shared_uuid: str, label: str = "") -> PfsData:
    """A slave has no root and no records until its first mirror-write."""
    _check_new(store, pfs)
    desc = PfsData(label=label, shared_uuid=_canonical_uuid(shared_uuid),
                   mirror_flags=PFS_SLAVE)
    store.put_pfs(pfs, desc)
    store.commit()
    return desc


def rollback(store: RecordStore, pfs: int, to_tid: int) -> int:
    """Undo every change of ``pfs`` after ``to_tid``: versions created later are destroyed,
    later deletions are cleared.  Returns how many versions changed (not committed)."""
    changed = 0
    for rec in list(store.changed_since(*pfs_range(pfs), to_tid + 1)):
        if not is_mirrored(rec):
            continue
        if rec.create_tid > to_tid:
            changed += store.destroy(rec.reckey, rec.create_tid)
        elif rec.delete_tid > to_tid:
            changed += store.set_delete_tid(rec.reckey, rec.create_tid, 0, 0)
    return changed


def upgrade(store: RecordStore, pfs: int) -> PfsData:
    """Slave -> master: roll back to sync_end_tid (dropping any half-applied batch), then
    clear SLAVE.  sync_end_tid keeps the last TID shared with the old master."""
    desc = require_pfs(store, pfs)
    if not desc.is_slave:
        raise HammerError(f"PFS #{pfs} is already a master")
    rollback(store, pfs, desc.sync_end_tid)
    new = desc.evolve(mirror_flags=desc.mirror_flags & ~(PFS_SLAVE | PFS_DOWNGRADED))
    store.put_pfs(pfs, new)
    store.commit()
    return new


def downgrade(store: RecordStore, pfs: int) -> PfsData:
    """Master -> slave at its last committed TID."""
    if pfs == 0:
        raise HammerError("PFS #0 is always a master")
    desc = require_pfs(store, pfs)
    if desc.is_slave:
        raise HammerError(f"PFS #{pfs} is already a slave")
    end = store.commit()
    new = desc.evolve(mirror_flags=desc.mirror_flags | PFS_SLAVE | PFS_DOWNGRADED,
                      sync_end_tid=end, sync_end_ts=time.time_ns())
    store.put_pfs(pfs, new)
    store.commit()
    return new


def destroy(store: RecordStore, pfs: int) -> int:
    """Remove every record of the PFS and mark it deleted.  Returns records removed."""
    if pfs == 0:
        raise HammerError("PFS #0 cannot be destroyed")
    desc = require_pfs(store, pfs)
    removed = 0
    for rec in list(store.scan(*pfs_range(pfs), history=True, with_data=False)):
        removed += store.destroy(rec.reckey, rec.create_tid)
    store.put_pfs(pfs, desc.evolve(mirror_flags=desc.mirror_flags | PFS_DELETED))
    store.commit()
    return removed


UPDATABLE = ("label", "snapshots", "snapshots-clear", "prune-min", "shared-uuid",
             "unique-uuid", "sync-beg-tid", "sync-end-tid")


def parse_options(words: list[str]) -> dict[str, str]:
    """``name=value`` words (and bare ``snapshots-clear``) into a dict."""
    opts: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if name not in UPDATABLE:
            raise HammerError(f"unknown PFS option {name!r} (known: {', '.join(UPDATABLE)})")
        if not sep and name != "snapshots-clear":
            raise HammerError(f"PFS option {name} needs a value: {name}=VALUE")
        opts[name] = value
    return opts


def update(store: RecordStore, pfs: int, opts: dict[str, str]) -> PfsData:
    desc = require_pfs(store, pfs)
    changes: dict[str, object] = {}
    for name, value in opts.items():
        if name == "label":
            changes["label"] = value
        elif name == "snapshots":
            changes["snapshots"] = value
        elif name == "snapshots-clear":
            changes["snapshots"] = ""
        elif name == "prune-min":
            changes["prune_min"] = parse_duration(value)
        elif name in ("shared-uuid", "unique-uuid"):
            changes[name.replace("-", "_")] = _canonical_uuid(value)
        else:
            changes[name.replace("-", "_")] = parse_tid(value)
    new = desc.evolve(**changes)
    new.encode()  # validates lengths before anything is written
    store.put_pfs(pfs, new)
    store.commit()
    return new


def parse_tid(text: str) -> int:
    try:
        tid = int(text, 0)
    except ValueError:
        raise HammerError(f"bad TID {text!r} (use 0x<hex> or a decimal number)") from None
    if not 0 <= tid <= MAX_U64:
        raise HammerError(f"TID {text} is out of range")
    return tid


def parse_duration(text: str) -> int:
    """Seconds from ``N``, ``Nd``, ``Nh``, ``Nm``, ``Ns`` or HAMMER's ``[D/]HH:MM:SS``."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if ":" in text:
            days, _, hms = text.rpartition("/")
            h, m, s = (int(x) for x in hms.split(":"))
            return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s
        if text and text[-1] in units:
            return int(text[:-1]) * units[text[-1]]
        return int(text)
    except ValueError:
        raise HammerError(f"bad duration {text!r} (e.g. 1d, 12h, 1/00:00:00)") from None


def _canonical_uuid(text: str) -> str:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise HammerError(f"bad uuid {text!r}") from None


@dataclass(frozen=True, slots=True)
class PfsStatus:
    pfs: int
    desc: PfsData
    sync_end: int  # effective: slave's sync_end_tid, master's last committed TID


def status(store: RecordStore, pfs: int) -> PfsStatus:
    desc = require_pfs(store, pfs)
    return PfsStatus(pfs, desc, sync_end_of(store, pfs, desc))


def format_status(st: PfsStatus, now_ns: int | None = None) -> list[str]:
    """HAMMER's pfs-status fields, one ``name=value`` per line."""
    d = st.desc
    lines = [
        f"sync-beg-tid=0x{d.sync_beg_tid:016x}",
        f"sync-end-tid=0x{st.sync_end:016x}",
        f"shared-uuid={d.shared_uuid}",
        f"unique-uuid={d.unique_uuid}",
        f'label="{d.label}"',
        f"prune-min={_format_duration(d.prune_min)}",
    ]
    if d.snapshots:
        lines.append(f'snapshots="{d.snapshots}"')
    else:
        lines.append("snapshots-clear")
    if d.is_slave:
        lines.append("operating as a SLAVE")
        lines.extend(_lag_lines(d, now_ns))
        if d.mirror_flags & PFS_DOWNGRADED:
            lines.append("downgraded from master: next mirror-write rolls back to the "
                         "last common TID")
    else:
        lines.append("operating as a MASTER")
    return lines


def _lag_lines(d: PfsData, now_ns: int | None) -> list[str]:
    if not d.sync_end_ts:
        return ["sync-end-time=never (no mirror-write yet)"]
    # Not "behind=": the slave cannot tell an idle master from a lost link, and the age of
    # what it shows keeps growing for an idle master that it is fully in sync with.  The
    # master's pfs-status says how far behind each slave it feeds is.
    now = time.time_ns() if now_ns is None else now_ns
    age = max(0, now - d.sync_end_ts) / 1e9
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.sync_end_ts / 1e9))
    return [f"sync-end-time={stamp}",
            f"newest-commit-age={age:.1f}s (of the newest master commit this slave shows; "
            "it grows while the master is idle: the master's pfs-status shows behind= per "
            "slave)"]


def _format_duration(secs: int) -> str:
    days, rest = divmod(secs, 86400)
    return f"{days}/{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
