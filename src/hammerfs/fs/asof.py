"""HAMMER's attribute rule for history views: as of a TID, atime and mtime read as ctime.

HAMMER updates atime/mtime in place (they roll no history), so in a snapshot they could show
a later value than the snapshot's; it locks both to ctime instead, which also makes
``tar | md5sum`` of a snapshot reproducible, on the master and on every mirror of it.
hammerfs keeps exact times in every inode version, but follows HAMMER so that snapshots
behave the same way.  Exception: the view of a *slave* PFS (its replicated state, always
read as of its sync point) keeps the real times, because a slave is a copy of its master's
live tree: comparing or restoring from it (``rsync -a``, ``cp -a``) must see the master's
times.  ``hammer undo -r`` restores the stored times, not the locked ones.

Permissions (``history_perms``).  HAMMER (and ZFS snapshots) check access to a history view
against the object's attributes *as of* that TID only: after ``chmod 600 secret`` every other
user still reads the old contents through ``secret@@0x<tid>``.  hammerfs by default presents
each history object's permission bits restricted by those of the same object in the live
tree (``restrict_to_live``), so the kernel (``default_permissions``) grants only what both
the old and the current attributes grant; a directory made private now also closes every
path through its past versions.  An object that no longer exists keeps its old bits.  The
mount option ``history_perms=asof`` gives HAMMER's behaviour.  ``hammer undo`` and
``undo -r`` (the mount owner, through the control channel) read the stored attributes.
"""

from __future__ import annotations

import stat

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


HISTORY_PERMS = ("current", "asof")  # the mount option's values; "current" is the default
_OWNER, _GROUP, _OTHER = 6, 3, 0  # shifts of the permission classes


def restrict_to_live(old: Inode, live: Inode) -> Inode:
    """``old`` (a history view's inode) with permission bits no user gets more from than
    from both ``old`` and ``live`` (the same object now).  With the same owner and group the
    result is exactly the intersection per class.  When either changed, a user of one class
    of ``old`` may be in another class of ``live`` (we cannot know group memberships), so a
    class keeps only the bits every live class it may map to grants."""
    lp = live.mode

    def live_bits(*shifts: int) -> int:
        bits = 0o7
        for shift in shifts:
            bits &= (lp >> shift) & 0o7
        return bits

    same_uid, same_gid = old.uid == live.uid, old.gid == live.gid
    owner = live_bits(_OWNER) if same_uid else live_bits(_GROUP, _OTHER)
    rest = () if same_uid else (_OWNER,)  # a non-owner then may be the live owner
    group = live_bits(*rest, *((_GROUP,) if same_gid else (_GROUP, _OTHER)))
    other = live_bits(*rest, *((_OTHER,) if same_gid else (_GROUP, _OTHER)))
    allowed = owner << _OWNER | group << _GROUP | other << _OTHER | (lp & 0o7000)
    mode = stat.S_IFMT(old.mode) | (old.mode & 0o7777 & allowed)
    return old if mode == old.mode else old.evolve(mode=mode)
