"""Long work under a shared lock, in bounded steps (usable from every layer).

The mount serves every request under one lock (``Namespace.lock``).  Maintenance that runs
for seconds or minutes (``undo -r`` of a tree, cleanup, reblock, commit-log thinning, prune)
must not stop the mount that long: it works in steps of about ``STEP_SECONDS`` of work, each
of which leaves a consistent state, and gives the lock to whoever waits for it between
steps.  S3QL uses 50 ms; the mount's goal is a request never waits more than 50 ms, and a
request that arrives just after a step began waits for all of it (plus the scheduler on a
loaded machine), so steps are shorter.

``SteppedLock`` is the mount's lock: a reentrant lock that knows whether another thread
waits for it, so a step can hand it over (``yield_``) instead of releasing and taking it back
at once (a plain lock is not fair: the releasing thread would usually win it again).
``Steps`` is how the work is written: ``with Steps(lock) as steps:`` around it and
``steps.tick()`` between units of work that each leave a consistent state.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from time import monotonic

STEP_SECONDS = 0.02  # work per hold of the lock
HANDOVER_WAIT = 0.05  # at most this long handing the lock over, per step
# After a handover, requests that follow within this long go too: the kernel sends a stat's
# and a readdir's requests one after the other, each only when the previous one is answered.
HANDOVER_GRACE = 0.002
NO_LOCK: AbstractContextManager = nullcontext()  # work on a volume no other thread uses


class SteppedLock:
    """A reentrant lock whose holder can hand it to waiting threads (``yield_``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._guard = threading.Lock()  # for _waiting (acquired without the lock)
        self._waiting = 0  # threads blocked in acquire
        self._yielders = 0  # holders waiting in yield_ (under the lock)
        self.acquisitions = 0  # blocking or not, reentrant ones included

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            self.acquisitions += 1
            return True
        if not blocking:
            return False
        with self._guard:
            self._waiting += 1
        try:
            got = self._lock.acquire(True, timeout)
        finally:
            with self._guard:
                self._waiting -= 1
        if got:
            self.acquisitions += 1
        return got

    def release(self) -> None:
        if self._yielders:
            self._cond.notify_all()  # a holder in yield_ may take the lock back
        self._lock.release()

    def __enter__(self) -> SteppedLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def contended(self) -> bool:
        """Does another thread wait for the lock now?"""
        return self._waiting > 0

    def yield_(self) -> bool:
        """Called by the holder between steps: if other threads wait, release the lock
        entirely (every reentrant level) until they have had it and no other request came
        for HANDOVER_GRACE (at most HANDOVER_WAIT), then take it back at the same level.
        True if it was handed over."""
        if not self._waiting:
            return False
        deadline = monotonic() + HANDOVER_WAIT
        wait = HANDOVER_WAIT
        handed = False
        self._yielders += 1
        try:
            while wait > 0:
                seen = self.acquisitions
                if not self._cond.wait_for(lambda seen=seen: self.acquisitions != seen, wait):
                    break
                handed = True
                wait = min(HANDOVER_GRACE, deadline - monotonic())
            return handed
        finally:
            self._yielders -= 1


class Steps:
    """Work under ``lock`` (held on entry), given back to waiting threads every
    ``seconds`` of work at the ``tick()`` calls (each between two consistent states)."""

    def __init__(self, lock: AbstractContextManager | None = None,
                 seconds: float | None = None) -> None:
        self.lock = NO_LOCK if lock is None else lock
        self.seconds = STEP_SECONDS if seconds is None else seconds
        self.pauses = 0  # how often the lock was offered
        self._since = 0.0

    def __enter__(self) -> Steps:
        self.lock.__enter__()
        self._since = monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.__exit__(*exc)

    def tick(self) -> None:
        """A consistent state: give the lock back if this step has taken long enough."""
        if monotonic() - self._since >= self.seconds:
            self.pause()

    def pause(self) -> None:
        """Offer the lock to waiting threads now."""
        yield_ = getattr(self.lock, "yield_", None)
        if yield_ is not None:
            yield_()
        elif self.lock is not NO_LOCK:  # a plain lock: release it, then take it back
            self.lock.__exit__(None, None, None)
            self.lock.__enter__()
        self.pauses += 1
        self._since = monotonic()
