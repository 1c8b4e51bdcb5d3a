"""The reference model itself must obey the visibility rule it is used to check."""

from hammerfs.store.memory import MemoryStore

K = (1, 100, 0x10, 0)


def test_each_committed_state_stays_readable():
    s = MemoryStore()
    s.put(K, b"one")
    t1 = s.commit()
    s.put(K, b"two")
    t2 = s.commit()
    assert s.delete(K)
    t3 = s.commit()
    assert t1 < t2 < t3
    assert s.get(K, t1).data == b"one"
    assert s.get(K, t2).data == b"two"
    assert s.get(K, t3) is None and s.get(K) is None
    versions = list(s.scan(K, K, history=True))
    assert [(v.create_tid, v.delete_tid) for v in versions] == [(t1, t2), (t2, t3)]


def test_changes_inside_one_transaction_leave_no_history():
    s = MemoryStore()
    s.put(K, b"a")
    s.put(K, b"b")
    assert [v.data for v in s.scan(K, K, history=True)] == [b"b"]
    s.delete(K)
    assert list(s.scan(K, K, history=True)) == []


def test_raw_insert_only_adds_a_delete_tid():
    src = MemoryStore()
    src.put(K, b"x")
    t1 = src.commit()
    src.delete(K)
    src.commit()
    dst = MemoryStore()
    (ended,) = src.scan(K, K, history=True)
    live_copy = ended.__class__(*ended.fullkey, 0, ended.create_ts, 0, ended.data)
    assert dst.insert_raw(live_copy)
    assert not dst.insert_raw(live_copy)
    assert dst.insert_raw(ended)
    assert dst.get(K, t1).data == b"x" and dst.get(K, ended.delete_tid) is None
    dst.commit()
    assert dst.current_tid > ended.delete_tid  # later local changes sort after mirrored ones
