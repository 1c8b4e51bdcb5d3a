"""hammerfs.steps: the mount's lock is handed to the requests waiting for it between the
steps of long work, including the ones that follow (a stat, then a readdir), and taken back
at the same reentrant level."""

from __future__ import annotations

import threading
import time

from hammerfs import steps as steps_mod
from hammerfs.steps import SteppedLock, Steps


def wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.0005)


def test_a_sequence_of_requests_goes_through_in_one_handover(monkeypatch):
    monkeypatch.setattr(steps_mod, "HANDOVER_GRACE", 0.05)  # generous on a loaded machine
    lock = SteppedLock()
    served = []

    def requests() -> None:  # one after the other, as the kernel sends them
        for i in range(3):
            with lock:
                served.append(i)

    with lock, lock:  # held twice (reentrant), as a nested caller would
        client = threading.Thread(target=requests)
        client.start()
        wait_until(lambda: lock.contended)
        assert served == []
        assert lock.yield_()
        assert served == [0, 1, 2]  # all of them while the work waited
        assert not lock.yield_()  # nobody waits: nothing to do
    client.join(5)
    assert lock.acquire(blocking=False)  # fully released at the end
    lock.release()


def test_steps_offer_the_lock_only_after_their_time():
    lock = SteppedLock()
    with Steps(lock, seconds=3600) as steps:
        for _ in range(100):
            steps.tick()
        assert steps.pauses == 0
        steps.seconds = 0
        steps.tick()
        assert steps.pauses == 1
