"""LMDB backend: buckets, batch tx visibility, commit hooks, defrag, snapshot, hash."""

import io
import threading

import lmdb

from petcd.backend import BUCKETS, Backend

MAP = 64 << 20


def open_backend(tmp_path, **kw) -> Backend:
    return Backend(str(tmp_path / "member" / "snap" / "db"), map_size=MAP, **kw)


def committed(b: Backend, bucket: str, key: bytes) -> bytes | None:
    # What another thread (a separate read transaction) sees.
    out = []
    t = threading.Thread(
        target=lambda: out.append(b.env.begin(db=b._dbs[bucket]).get(key))  # noqa: SLF001
    )
    t.start()
    t.join()
    return out[0]


def test_read_your_writes_and_commit(tmp_path):
    b = open_backend(tmp_path)
    b.put("key", b"k1", b"v1")
    b.put("meta", b"m", b"x")
    assert b.get("key", b"k1") == b"v1"
    assert b.get("meta", b"k1") is None  # buckets are separate
    assert committed(b, "key", b"k1") is None
    b.commit()
    assert committed(b, "key", b"k1") == b"v1"
    assert b.delete("key", b"k1")
    assert b.get("key", b"k1") is None  # deletes visible at once on the owner thread
    assert not b.delete("key", b"nope")
    b.close()


def test_range_and_for_each(tmp_path):
    b = open_backend(tmp_path)
    for k in (b"c", b"a", b"b", b"d"):
        b.put("lease", k, k.upper())
    assert b.range("lease", b"b", b"d") == [(b"b", b"B"), (b"c", b"C")]
    assert b.range("lease", b"b") == [(b"b", b"B"), (b"c", b"C"), (b"d", b"D")]
    assert b.range("lease", b"a", None, limit=2) == [(b"a", b"A"), (b"b", b"B")]
    assert b.range("lease", b"e") == []
    assert [k for k, _ in b.for_each("lease")] == [b"a", b"b", b"c", b"d"]
    assert list(b.for_each("auth")) == []
    assert b.count("lease") == 4
    b.seq_put("key", b"\x01", b"1")
    b.seq_put("key", b"\x02", b"2")
    b.seq_put("key", b"\x01", b"again")  # not in order: falls back to a normal put
    assert b.range("key", b"") == [(b"\x01", b"again"), (b"\x02", b"2")]
    b.close()


def test_pre_commit_hook_and_persistence(tmp_path):
    b = open_backend(tmp_path)
    calls = []
    b.pre_commit_hook.append(lambda: (calls.append(1), b.put("meta", b"ci", b"7")))
    b.put("key", b"k", b"v")
    b.commit()
    assert calls == [1]
    b.close()
    b2 = open_backend(tmp_path)
    assert b2.get("meta", b"ci") == b"7" and b2.get("key", b"k") == b"v"
    b2.close()


def test_maybe_commit_batch_limit_and_interval(tmp_path):
    b = open_backend(tmp_path, batch_interval=3600, batch_limit=3)
    assert not b.maybe_commit()  # nothing pending
    b.put("key", b"1", b"")
    b.put("key", b"2", b"")
    assert not b.maybe_commit()
    b.put("key", b"3", b"")
    assert b.maybe_commit() and b.pending == 0
    b.batch_interval = 0
    b.put("key", b"4", b"")
    assert b.maybe_commit()
    assert committed(b, "key", b"4") == b""
    b.close()


def test_uncommitted_writes_lost_on_crash(tmp_path):
    b = open_backend(tmp_path)
    b.put("key", b"a", b"1")
    b.commit()
    b.put("key", b"b", b"2")
    b.txn.abort()  # simulate a crash before the next commit
    b.txn = None
    b.env.close()
    b2 = open_backend(tmp_path)
    assert b2.get("key", b"a") == b"1" and b2.get("key", b"b") is None
    b2.close()


def test_defrag_shrinks_and_keeps_data(tmp_path):
    b = open_backend(tmp_path)
    val = b"x" * 2000
    for i in range(2000):
        b.put("key", b"%06d" % i, val)
    b.commit()
    for i in range(0, 2000, 1):
        if i % 50:
            b.delete("key", b"%06d" % i)
    b.commit()
    before = b.size()
    h = b.hash()
    b.defrag()
    assert b.size() < before / 4
    assert b.size_in_use() <= b.size() + 8192
    assert b.hash() == h
    assert b.get("key", b"000050") == val
    b.put("key", b"new", b"v")  # handles work after the swap
    b.commit()
    b.close()
    b2 = open_backend(tmp_path)
    assert b2.get("key", b"new") == b"v" and b2.count("key") == 41
    b2.close()


def test_snapshot_to_path_and_fileobj(tmp_path):
    b = open_backend(tmp_path)
    b.put("members", b"m1", b"{}")
    b.put("key", b"k", b"v")
    b.commit()
    b.put("key", b"uncommitted", b"v")
    path = tmp_path / "snap.db"
    n = b.snapshot(str(path))
    assert n == path.stat().st_size > 0
    buf = io.BytesIO()
    assert b.snapshot(buf) == len(buf.getvalue()) == n
    with open(tmp_path / "snap2.db", "wb") as f:
        f.write(b"")
        assert b.snapshot(f) == n
    for p in (path, tmp_path / "snap2.db"):
        env = lmdb.Environment(str(p), subdir=False, readonly=True, lock=False, max_dbs=16)
        db = env.open_db(b"key", create=False)
        with env.begin(db=db) as t:
            assert t.get(b"k") == b"v" and t.get(b"uncommitted") is None
        env.close()
    b.close()


def test_hash_depends_on_content_and_ignores_consistent_index(tmp_path):
    b1 = Backend(str(tmp_path / "a" / "db"), map_size=MAP)
    b2 = Backend(str(tmp_path / "b" / "db"), map_size=MAP)
    for b in (b1, b2):
        b.put("key", b"k", b"v")
        b.put("auth", b"authEnabled", b"\x00")
    b1.put("meta", b"consistent_index", b"1")
    b2.put("meta", b"consistent_index", b"2")
    assert b1.hash() == b2.hash()
    b2.put("key", b"k", b"w")
    assert b1.hash() != b2.hash()
    assert len(BUCKETS) == 10
    b1.close()
    b2.close()


def test_sync_from_worker_thread(tmp_path):
    b = open_backend(tmp_path)
    b.put("key", b"k", b"v")
    b.commit()
    t = threading.Thread(target=b.sync)
    t.start()
    t.join()
    b.close()


def test_leftover_defrag_temp_file_is_removed_on_open(tmp_path):
    """A defragmentation that crashed mid-copy leaves a temp file; the next open drops it."""
    path = str(tmp_path / "db")
    b = Backend(path, map_size=1 << 30)
    b.put("key", b"a", b"1")
    b.commit()
    b.close()
    (tmp_path / ".defrag-abc").write_bytes(b"partial copy")
    b = Backend(path, map_size=1 << 30)
    try:
        assert not (tmp_path / ".defrag-abc").exists()
        assert bytes(b.get("key", b"a")) == b"1"
    finally:
        b.close()
