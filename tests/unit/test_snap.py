import logging
import os

import pytest

from petcd.raft.types import ConfState, Snapshot, SnapshotMetadata
from petcd.wal import Snapshotter
from petcd.wal.snap import SnapshotError, decode_snapshot, encode_snapshot


def snap(index, term=1, data=b"state"):
    return Snapshot(SnapshotMetadata(index, term, ConfState([1, 2, 3], [9])), data)


def test_encode_decode():
    s = snap(5, 2, b"x" * 1000)
    assert decode_snapshot(encode_snapshot(s)) == s
    empty_cs = Snapshot(SnapshotMetadata(1, 1, ConfState()), b"")
    assert decode_snapshot(encode_snapshot(empty_cs)) == empty_cs
    buf = bytearray(encode_snapshot(s))
    buf[-1] ^= 1
    with pytest.raises(SnapshotError, match="crc"):
        decode_snapshot(bytes(buf))
    with pytest.raises(SnapshotError):
        decode_snapshot(bytes(buf[:-3]))


def test_save_and_load_newest(tmp_path):
    ss = Snapshotter(str(tmp_path / "snap"))
    assert ss.load() is None
    ss.save(snap(10, 1, b"a"))
    ss.save(snap(20, 2, b"b"))
    ss.save(snap(15, 1, b"c"))
    names = sorted(os.listdir(tmp_path / "snap"))
    assert names == [
        "0000000000000001-000000000000000a.snap",
        "0000000000000001-000000000000000f.snap",
        "0000000000000002-0000000000000014.snap",
    ]
    got = Snapshotter(str(tmp_path / "snap")).load()
    assert got == snap(20, 2, b"b")
    with pytest.raises(ValueError):
        ss.save(Snapshot())


def test_corrupt_newest_falls_back(tmp_path, caplog):
    d = tmp_path / "snap"
    ss = Snapshotter(str(d))
    ss.save(snap(10, 1, b"old"))
    p = ss.save(snap(20, 1, b"new" * 100))
    with open(p, "r+b") as f:
        f.seek(60)
        f.write(b"\xff")
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        got = ss.load()
    assert got == snap(10, 1, b"old")
    assert os.path.exists(p + ".broken") and not os.path.exists(p)
    assert "broken" in caplog.text
    # A truncated (empty) newest file also falls back.
    p2 = ss.save(snap(30, 1))
    os.truncate(p2, 0)
    assert ss.load().metadata.index == 10


def test_misnamed_file_is_broken(tmp_path):
    ss = Snapshotter(str(tmp_path))
    p = ss.save(snap(10, 1))
    os.rename(p, os.path.join(str(tmp_path), "0000000000000001-0000000000000063.snap"))
    assert ss.load() is None


def test_load_newest_available(tmp_path):
    ss = Snapshotter(str(tmp_path))
    for i in (10, 20, 30):
        ss.save(snap(i, 1))
    got = ss.load_newest_available([SnapshotMetadata(0, 0), SnapshotMetadata(20, 1)])
    assert got.metadata.index == 20
    # 30 is not in the WAL, so it is skipped (not broken).
    assert os.path.exists(os.path.join(str(tmp_path), "0000000000000001-000000000000001e.snap"))
    assert ss.load_newest_available([SnapshotMetadata(20, 2)]) is None


def test_purge_keeps_n(tmp_path):
    ss = Snapshotter(str(tmp_path))
    for i in range(1, 8):
        ss.save(snap(i * 10, 1))
    assert ss.purge(0) == []
    removed = ss.purge(3)
    assert len(removed) == 4
    assert [s[17:33] for s in ss.snap_names()] == [f"{i * 10:016x}" for i in (7, 6, 5)]
    assert ss.load().metadata.index == 70


def test_stale_tmp_removed_and_db_helpers(tmp_path):
    (tmp_path / "0000000000000001-0000000000000005.snap.tmp").write_bytes(b"partial")
    ss = Snapshotter(str(tmp_path))
    assert not (tmp_path / "0000000000000001-0000000000000005.snap.tmp").exists()
    assert ss.load() is None
    for i in (5, 9, 12):
        open(ss.db_path(i), "wb").close()
    assert os.path.basename(ss.db_path(9)) == "0000000000000009.snap.db"
    assert sorted(ss.purge_db_before(12)) == [
        "0000000000000005.snap.db",
        "0000000000000009.snap.db",
    ]
    assert os.path.exists(ss.db_path(12))
