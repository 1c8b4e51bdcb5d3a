"""Thinning policy of the commit log (one ``(tid, wall-clock ns)`` entry per commit).

A mount commits up to once a second, so the log would grow by up to 86,400 entries a day
forever.  ``tid_time(tid)`` answers with the floor entry (the newest entry with a TID <= tid),
so dropping entries only makes old answers coarser.  The policy, by the age of an entry's
commit time at the moment of thinning:

    younger than 1 day        every entry is kept (exact)
    1 to 30 days              one entry per wall-clock minute is kept
    older than 30 days        one entry per wall-clock hour is kept

An entry is dropped only when its predecessor in TID order is in the same age class, in the
same aligned bucket (``ts // granularity``) and not later than it.  By induction the floor
entry that answers for a dropped entry after thinning lies in the same bucket and is not
later, so for every TID ``tid_time`` after thinning is

    never later than before,   earlier by less than the granularity (1 min / 1 h),

and never 0 where it was not (the first entry is never dropped).  Minute buckets nest in hour
buckets, so thinning again later (when entries age into the hour class) keeps the bound of
the coarser class without adding the errors up.  If the wall clock steps back, an entry
earlier than its predecessor is always kept: the "never later" guarantee holds regardless.
"""

from __future__ import annotations

from collections.abc import Iterable

NS_PER_S = 1_000_000_000
KEEP_ALL_FOR_NS = 86_400 * NS_PER_S  # the last day stays exact
MINUTES_FOR_NS = 30 * 86_400 * NS_PER_S  # then one entry a minute for 30 days
MINUTE_NS = 60 * NS_PER_S
HOUR_NS = 3600 * NS_PER_S


def granularity(ts: int, now_ns: int) -> int:
    """Bucket width (ns) for an entry committed at ``ts`` thinned at ``now_ns``; 0 = keep."""
    age = now_ns - ts
    if age < KEEP_ALL_FOR_NS:
        return 0
    return MINUTE_NS if age < MINUTES_FOR_NS else HOUR_NS


def doomed_entries(entries: Iterable[tuple[int, int]], now_ns: int) -> list[int]:
    """TIDs of the entries to drop from ``entries`` (``(tid, ts)`` in increasing TID order).
    The first entry is never dropped: to continue over a log in batches, pass the last entry
    of the previous batch first."""
    doomed: list[int] = []
    prev_ts, prev_bucket = 0, None
    for tid, ts in entries:
        g = granularity(ts, now_ns)
        bucket = (g, ts // g) if g else None
        if bucket is not None and bucket == prev_bucket and prev_ts <= ts:
            doomed.append(tid)
        prev_ts, prev_bucket = ts, bucket
    return doomed
