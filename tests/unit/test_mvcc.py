"""MVCC store: revisions, versions, history, compaction, restore, consistent index, hashes."""

import pytest

from petcd.backend import Backend
from petcd.errors import ErrCompacted, ErrFutureRev
from petcd.mvcc import EVENT_DELETE, EVENT_PUT, KVStore
from petcd.mvcc.kvstore import bytes_to_rev, rev_to_bytes
from petcd.proto.mvccpb.kv_pb2 import KeyValue

MAP = 64 << 20


def open_store(path, **kw) -> KVStore:
    return KVStore(Backend(str(path / "db"), map_size=MAP), **kw)


def put(s: KVStore, key: bytes, value: bytes, lease: int = 0) -> int:
    w = s.write()
    w.put(key, value, lease)
    w.end()
    return s.rev


def delete(s: KVStore, key: bytes, end: bytes = b"") -> int:
    w = s.write()
    n, _ = w.delete_range(key, end)
    w.end()
    return n


def get(s: KVStore, key: bytes, end: bytes = b"", **kw) -> list[KeyValue]:
    return [KeyValue.FromString(b) for b in s.range(key, end, **kw).kvs]


def state(s: KVStore) -> dict:
    """Everything observable: every read at every revision plus the index shape."""
    out = {"rev": s.rev, "compact": s.compact_rev}
    for r in range(max(s.compact_rev, 1), s.rev + 1):
        out[r] = s.range(b"\x00", b"\x00", rev=r).kvs
    # generation metadata of a restored tombstone-only generation is not observable
    out["index"] = {k: [g.revs for g in ki.generations] for k, ki in s.index.map.items()}
    out["dead"] = list(s.index.dead)
    out["count"] = s.range(b"\x00", b"\x00", count_only=True).count
    return out


def test_revisions_versions_and_create_revision(tmp_path):
    s = open_store(tmp_path)
    assert s.rev == 1 and s.range(b"foo").kvs == []
    assert put(s, b"foo", b"bar") == 2
    assert put(s, b"foo", b"bar") == 3  # same value: new revision and version
    assert put(s, b"hello", b"world") == 4
    (kv,) = get(s, b"foo")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"bar")
    assert delete(s, b"foo") == 1 and s.rev == 5
    assert get(s, b"foo") == []
    assert delete(s, b"foo") == 0 and s.rev == 5  # nothing deleted: no new revision
    put(s, b"foo", b"again")
    (kv,) = get(s, b"foo")
    assert (kv.create_revision, kv.mod_revision, kv.version) == (6, 6, 1)


def test_history_reads_and_errors(tmp_path):
    s = open_store(tmp_path)
    put(s, b"foo", b"bar")  # 2
    put(s, b"foo1", b"bar1")  # 3
    put(s, b"foo", b"bar_new")  # 4
    put(s, b"foo1", b"bar1_new")  # 5
    vals = lambda r: [kv.value for kv in get(s, b"foo", b"fop", rev=r)]  # noqa: E731
    assert vals(4) == [b"bar_new", b"bar1"]
    assert vals(3) == [b"bar", b"bar1"]
    assert vals(2) == [b"bar"]
    assert vals(1) == []
    assert vals(0) == [b"bar_new", b"bar1_new"]
    with pytest.raises(ErrFutureRev):
        s.range(b"foo", rev=6)
    r = s.range(b"foo", b"\x00", limit=1)
    assert len(r.kvs) == 1 and r.count == 2 and r.rev == 5
    assert s.range(b"\x00", b"\x00", count_only=True).count == 2
    assert s.range(b"foo", b"\x00", rev=2, count_only=True).count == 1


def test_txn_shares_main_revision_and_reads_own_writes(tmp_path):
    s = open_store(tmp_path)
    seen = []
    s.on_events.append(lambda rev, evs: seen.append((rev, list(evs))))
    put(s, b"a", b"0")
    w = s.write()
    assert w.range(b"a").kvs and w.range(b"key1").kvs == []
    w.put(b"key1", b"v1")
    w.put(b"key2", b"v2")
    assert [KeyValue.FromString(b).value for b in w.range(b"key", b"kez").kvs] == [b"v1", b"v2"]
    n, rev = w.delete_range(b"a")
    assert (n, rev) == (1, 3)
    assert s.rev == 2  # not published until end()
    evs = w.end()
    assert s.rev == 3
    assert [(t, k) for t, k, _ in evs] == [
        (EVENT_PUT, b"key1"),
        (EVENT_PUT, b"key2"),
        (EVENT_DELETE, b"a"),
    ]
    dkv = KeyValue.FromString(evs[2][2])
    assert (dkv.key, dkv.mod_revision, dkv.version) == (b"a", 3, 0)
    assert seen[-1][0] == 3 and len(seen) == 2
    # backend keys: {3,0} {3,1} {3,2}t
    keys = [k for k, _ in s.backend.for_each("key")]
    assert keys[1:] == [
        rev_to_bytes(3 << 32),
        rev_to_bytes(3 << 32 | 1),
        rev_to_bytes(3 << 32 | 2) + b"t",
    ]
    assert bytes_to_rev(keys[3]) == (3 << 32) | 2
    # an empty write txn changes nothing and publishes nothing
    assert s.write().end() == [] and s.rev == 3 and len(seen) == 2


def test_compaction_errors_and_tombstone_at_compact_rev(tmp_path):
    s = open_store(tmp_path)
    put(s, b"foo", b"1")  # 2
    put(s, b"foo", b"2")  # 3
    put(s, b"bar", b"x")  # 4
    delete(s, b"foo")  # 5: tombstone
    put(s, b"baz", b"y")  # 6
    with pytest.raises(ErrFutureRev):
        s.compact(7)
    s.compact(5)
    s.run_compaction()
    assert s.compact_rev == 5
    with pytest.raises(ErrCompacted):
        s.range(b"foo", rev=4)
    with pytest.raises(ErrCompacted):
        s.compact(5)
    with pytest.raises(ErrCompacted):
        s.compact(3)
    assert s.range(b"foo", rev=5).kvs == []  # reading AT the compact revision works
    assert [kv.key for kv in get(s, b"\x00", b"\x00", rev=5)] == [b"bar"]
    keys = [k for k, _ in s.backend.for_each("key")]
    # kept: bar@4 (live at 5), the tombstone AT 5, and everything after 5
    assert keys == [rev_to_bytes(4 << 32), rev_to_bytes(5 << 32) + b"t", rev_to_bytes(6 << 32)]
    s.compact(6)
    s.run_compaction()
    keys = [k for k, _ in s.backend.for_each("key")]
    assert keys == [rev_to_bytes(4 << 32), rev_to_bytes(6 << 32)]
    assert b"foo" not in s.index.map


def test_compaction_in_steps_and_resume_on_reopen(tmp_path):
    s = open_store(tmp_path)
    for i in range(50):
        put(s, b"k%d" % (i % 5), b"v%d" % i)
    s.compact(40)
    assert s.compaction_pending
    assert s.compact_step(batch=10)  # more to do
    s.backend.close()  # "crash" mid-compaction: scheduled > finished on disk
    s2 = open_store(tmp_path)
    assert not s2.compaction_pending and s2.compact_rev == 40
    assert s2.backend.get("meta", b"finishedCompactRev") == rev_to_bytes(40 << 32)
    # per key: the newest revision <= 40 plus later ones
    assert s2.backend.count("key") == 5 + 11
    assert [kv.value for kv in get(s2, b"k", b"l", rev=40)] == [
        b"v35",
        b"v36",
        b"v37",
        b"v38",
        b"v34",
    ]


def test_restore_from_disk(tmp_path):
    s = open_store(tmp_path)
    put(s, b"a", b"1", lease=7)
    put(s, b"b", b"1")
    delete(s, b"a")
    put(s, b"a", b"2")
    w = s.write()
    w.put(b"c", b"1", 9)
    w.put(b"d", b"1")
    w.delete_range(b"b")
    w.end()
    put(s, b"e", b"1")
    delete(s, b"e")
    s.compact(4)
    s.run_compaction()
    before = state(s)
    s.backend.close()
    attached = []
    s2 = open_store(tmp_path, lease_hook=lambda k, old, new: attached.append((k, old, new)))
    assert state(s2) == before
    assert attached == [(b"c", 0, 9)]
    assert put(s2, b"f", b"1") == before["rev"] + 1


def test_revision_never_goes_back_after_compacting_a_trailing_tombstone(tmp_path):
    s = open_store(tmp_path)
    put(s, b"a", b"1")
    put(s, b"b", b"1")
    delete(s, b"a")  # 4
    delete(s, b"b")  # 5
    s.compact(5)
    s.run_compaction()
    s.backend.close()
    s2 = open_store(tmp_path)
    assert s2.rev == 5 and s2.compact_rev == 5


def test_consistent_index_persisted_with_commit(tmp_path):
    s = open_store(tmp_path)
    s.consistent_index = 10
    s.consistent_term = 2
    put(s, b"a", b"1")
    s.backend.commit()
    s.consistent_index = 11
    put(s, b"b", b"1")  # applied but never committed: lost with index 11 in a crash
    s.backend.txn.abort()
    s.backend.txn = None
    s.backend.env.close()
    s2 = open_store(tmp_path)
    assert (s2.consistent_index, s2.consistent_term) == (10, 2)
    assert s2.rev == 2 and s2.range(b"b").kvs == []


def test_lease_hook(tmp_path):
    calls = []
    s = open_store(tmp_path, lease_hook=lambda k, old, new: calls.append((k, old, new)))
    put(s, b"a", b"1", lease=5)
    put(s, b"a", b"2", lease=5)  # unchanged lease: no call
    put(s, b"a", b"3", lease=6)
    put(s, b"a", b"4")
    put(s, b"a", b"5", lease=6)
    delete(s, b"a")
    assert calls == [(b"a", 0, 5), (b"a", 5, 6), (b"a", 6, 0), (b"a", 0, 6), (b"a", 6, 0)]
    assert s.latest_meta(b"a") == []
    put(s, b"a", b"6", lease=8)
    assert s.latest_meta(b"a") == [(s.rev, s.rev, 1, 8)]
    assert list(s.leased_keys()) == [(b"a", 8)]


def history(s: KVStore) -> None:
    for i in range(30):
        put(s, b"k%d" % (i % 7), b"v%d" % i)
        if i % 5 == 4:
            delete(s, b"k%d" % (i % 3))


def test_hash_kv(tmp_path):
    a = open_store(tmp_path / "a")
    b = open_store(tmp_path / "b")
    history(a)
    history(b)
    assert a.hash_kv() == b.hash_kv()
    assert a.hash_kv(10) == b.hash_kv(10)
    assert a.hash_kv(10)[0] != a.hash_kv(11)[0]
    h, crev, hrev = a.hash_kv()
    assert (crev, hrev) == (-1, a.rev)
    # physically compacted vs only scheduled: the same hash
    a.compact(20)
    a.run_compaction()
    b.compact(20)
    assert b.compaction_pending
    assert a.hash_kv() == b.hash_kv()
    assert a.hash_kv(25) == b.hash_kv(25)
    with pytest.raises(ErrCompacted):
        a.hash_kv(19)
    with pytest.raises(ErrFutureRev):
        a.hash_kv(a.rev + 1)
    put(b, b"extra", b"1")
    put(a, b"extra", b"2")
    assert a.hash_kv()[0] != b.hash_kv()[0]
    assert isinstance(a.hash(), int)


@pytest.mark.parametrize(
    "key,value,lease",
    [(b"k", b"", 0), (b"k" * 200, b"v" * 70000, 7), (b"\x00\xff", b"x", -1), (b"a", b"b", 2**62)],
)
def test_stored_key_value_bytes_are_protobufs_encoding(tmp_path, key, value, lease):
    # MVCC builds a put's KeyValue bytes by hand; they must be what protobuf writes.
    s = open_store(tmp_path)
    put(s, key, b"first")
    rev = put(s, key, value, lease)
    want = KeyValue(key=key, create_revision=rev - 1, mod_revision=rev, version=2, value=value,
                    lease=lease).SerializeToString()
    assert s.range(key, b"").kvs == [want]
