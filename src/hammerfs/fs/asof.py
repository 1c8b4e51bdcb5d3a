"""HAMMER's attribute rule for history views: as of a TID, atime and mtime read as ctime.

HAMMER updates atime/mtime in place (they roll no history), so in a snapshot they could show
a later value than the snapshot's; it locks both to ctime instead, which also makes
``tar | md5sum`` of a snapshot reproducible, on the master and on every mirror of it.
hammerfs keeps exact times in every inode version, but follows HAMMER so that snapshots
behave the same way.  Exception: the view of a *slave* PFS (its replicated state, always
read as of its sync point) keeps the real times, because a slave is a copy of its master's
live tree: comparing or restoring from it (``rsync -a``, ``cp -a``) must see the master's
times.  ``hammer undo -r`` restores the stored times, not the locked ones.
"""

from __future__ import annotations

from hammerfs.fs.layout import Inode
from hammerfs.store.api import RecordStore


def is_history_view(store: RecordStore, pfs: int, asof: int | None) -> bool:
    """True if a view of ``pfs`` as of ``asof`` shows a past state of a master (``@@0x<tid>``
    names, snapshot links, ``-o asof``), not a live tree or a slave's replicated state.
    Such a view presents atime/mtime locked to ctime, and nothing may change the PFS through
    a path into it (control/ops.py refuses snapshot, prune, cleanup there)."""
    if asof is None:
        return False
    pd = store.get_pfs(pfs)
    return pd is None or not pd.is_slave


def as_of_attributes(ino: Inode) -> Inode:
    """The attributes a history view presents for ``ino``."""
    return ino.evolve(atime=ino.ctime, mtime=ino.ctime)
