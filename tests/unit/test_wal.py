import logging
import os
import threading

import pytest

from petcd.raft.types import Entry, HardState, SnapshotMetadata
from petcd.wal import (
    WAL,
    WALCorruptError,
    WALError,
    decode_entries,
    encode_entries,
    valid_snapshot_markers,
    wal_exists,
)

MD = b"cluster=1,member=2"


def ents(lo, hi, term=1, size=40):
    return [Entry(term, i, 0, (b"v%d-" % i) * (size // 4)) for i in range(lo, hi + 1)]


def files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".wal"))


def last_file(d):
    return os.path.join(d, files(d)[-1])


def test_encode_decode_entries():
    es = [Entry(3, 7, 0, b""), Entry(3, 8, 1, b"x" * 1000), Entry(4, 9, 0, b"\0\1")]
    assert decode_entries(encode_entries(es)) == es


def test_create_refuses_non_empty_dir(tmp_path):
    d = tmp_path / "wal"
    assert not wal_exists(str(d))
    WAL.create(str(d), MD).close()
    assert wal_exists(str(d))
    assert files(d) == ["0000000000000000-0000000000000000.wal"]
    assert not os.path.exists(str(d) + ".tmp")
    with pytest.raises(WALError):
        WAL.create(str(d), MD)
    # An existing empty dir is fine.
    (tmp_path / "empty").mkdir()
    WAL.create(str(tmp_path / "empty"), MD).close()


def test_round_trip_across_segments_and_reappend(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    for lo in range(1, 200, 10):
        w.save(HardState(2, 1, lo), ents(lo, lo + 9, term=2))
    w.close()
    assert len(files(d)) > 5
    # Segment names carry the first index of the segment.
    starts = [int(n[17:33], 16) for n in files(d)]
    assert starts == sorted(starts) and starts[0] == 0

    w, st = WAL.open(d, segment_size=1024)
    assert st.metadata == MD
    assert st.hard_state == HardState(2, 1, 191)
    assert [e.index for e in st.entries] == list(range(1, 201))
    assert st.entries == ents(1, 200, term=2)
    assert w.last_index == 200
    w.save(HardState(3, 2, 200), ents(201, 230, term=3))
    w.close()

    w, st = WAL.open(d, segment_size=1024)
    assert st.hard_state == HardState(3, 2, 200)
    assert st.entries == ents(1, 200, term=2) + ents(201, 230, term=3)
    w.close()


def test_state_only_and_empty_saves(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    size = os.path.getsize(last_file(d))
    w.save(None, [])
    w.save(HardState(), [])
    assert os.path.getsize(last_file(d)) == size
    w.save(HardState(1, 1, 0), [])
    w.save(HardState(1, 1, 0), [])  # unchanged: nothing written
    grown = os.path.getsize(last_file(d))
    assert grown > size
    w.save(HardState(1, 1, 0), [])
    assert os.path.getsize(last_file(d)) == grown
    w.close()
    _, st = WAL.open(d)
    assert st.hard_state == HardState(1, 1, 0) and st.entries == []


def test_conflict_overwrite_on_replay(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=2048)
    w.save(HardState(1, 1, 3), ents(1, 60, term=1))
    # A new leader overwrites 40.. (crossing the segment cut done above).
    w.save(HardState(2, 2, 3), ents(40, 45, term=2))
    # And again, further back.
    w.save(HardState(3, 3, 3), ents(42, 43, term=3))
    w.close()
    w, st = WAL.open(d)
    assert st.entries == ents(1, 39, 1) + ents(40, 41, 2) + ents(42, 43, 3)
    assert w.last_index == 43
    w.save(None, ents(44, 44, 3))
    w.close()
    _, st = WAL.open(d)
    assert [e.index for e in st.entries] == list(range(1, 45))


def test_save_rejects_gap_and_non_contiguous(tmp_path):
    w = WAL.create(str(tmp_path / "wal"), MD)
    w.save(None, ents(1, 3))
    with pytest.raises(ValueError):
        w.save(None, ents(5, 6))
    with pytest.raises(ValueError):
        w.save(None, [Entry(1, 4), Entry(1, 6)])
    w.close()


def _torn_setup(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    w.save(HardState(1, 1, 5), ents(1, 10))
    before = os.path.getsize(last_file(d))
    w.save(None, ents(11, 13, size=200))  # the record we will tear
    after = os.path.getsize(last_file(d))
    w.close()
    return d, before, after


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 100, -9, -1])
def test_torn_tail_is_repaired(tmp_path, cut, caplog):
    d, before, after = _torn_setup(tmp_path)
    length = before + cut if cut > 0 else after + cut
    os.truncate(last_file(d), length)
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = WAL.open(d)
    assert "torn tail" in caplog.text
    assert st.entries == ents(1, 10)
    assert st.hard_state == HardState(1, 1, 5)
    assert os.path.getsize(last_file(d)) == before
    w.save(HardState(1, 1, 11), ents(11, 12, term=1))
    w.close()
    _, st = WAL.open(d)
    assert st.entries == ents(1, 10) + ents(11, 12)
    assert st.hard_state.commit == 11


def test_every_truncation_offset_is_repaired(tmp_path):
    d, before, after = _torn_setup(tmp_path)
    data = open(last_file(d), "rb").read()
    for length in range(before + 1, after):
        with open(last_file(d), "wb") as f:
            f.write(data[:length])
        w, st = WAL.open(d)
        w.close()
        assert [e.index for e in st.entries] == list(range(1, 11)), length


@pytest.mark.parametrize("junk", [b"\0" * 4096, b"\0" * 3, bytes(range(256)) * 9])
def test_zero_or_garbage_tail_is_repaired(tmp_path, junk):
    d, before, after = _torn_setup(tmp_path)
    with open(last_file(d), "ab") as f:
        f.write(junk)
    w, st = WAL.open(d)
    assert st.entries == ents(1, 10) + ents(11, 13, size=200)
    assert os.path.getsize(last_file(d)) == after
    w.save(None, ents(14, 14))
    w.close()
    _, st = WAL.open(d)
    assert st.entries[-1].index == 14


def test_zero_sector_hole_before_valid_records_is_a_torn_write(tmp_path):
    # Pages of one unsynced write reaching disk out of order: a hole of zeros, then data.
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    w.save(HardState(1, 1, 1), ents(1, 2))
    before = os.path.getsize(last_file(d))
    w.save(None, ents(3, 3, size=3000))
    w.save(HardState(1, 1, 3), ents(4, 4))
    w.close()
    with open(last_file(d), "r+b") as f:
        start = -(-(before + 16) // 512) * 512
        f.seek(start)
        f.write(b"\0" * 1024)
    w, st = WAL.open(d)
    assert [e.index for e in st.entries] == [1, 2]
    assert os.path.getsize(last_file(d)) == before
    w.close()


def test_flipped_byte_in_middle_raises(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    w.save(HardState(1, 1, 1), ents(1, 5))
    before = os.path.getsize(last_file(d))
    w.save(None, ents(6, 10))
    w.save(HardState(1, 1, 2), ents(11, 15))
    w.close()
    path = last_file(d)
    with open(path, "r+b") as f:
        f.seek(before + 40)
        b = f.read(1)
        f.seek(before + 40)
        f.write(bytes([b[0] ^ 0x10]))
    size = os.path.getsize(path)
    with pytest.raises(WALCorruptError) as ei:
        WAL.open(d)
    msg = str(ei.value)
    assert os.path.basename(path) in msg and f"offset {before}" in msg
    assert os.path.getsize(path) == size  # nothing was truncated


def test_flipped_length_field_in_middle_raises(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    w.save(HardState(1, 1, 1), ents(1, 5))
    before = os.path.getsize(last_file(d))
    w.save(None, ents(6, 10))
    w.save(None, ents(11, 15))
    w.close()
    with open(last_file(d), "r+b") as f:
        f.seek(before + 6)
        f.write(b"\x7f")  # huge length: runs past the end of the file
    with pytest.raises(WALCorruptError, match=f"offset {before}"):
        WAL.open(d)


def test_corruption_in_earlier_segment_raises(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    first = os.path.join(d, files(d)[0])
    size = os.path.getsize(first)
    # Even the very last byte of a non-last segment is not a "torn tail".
    with open(first, "r+b") as f:
        f.seek(size - 20)
        b = f.read(1)
        f.seek(size - 20)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(WALCorruptError, match=files(d)[0]):
        WAL.open(d)


def test_truncated_earlier_segment_detected_by_link(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    sizes = []
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
        sizes.append(os.path.getsize(os.path.join(d, files(d)[0])))
    w.close()
    # Cut the first segment back to an earlier record boundary: every record still valid.
    first = os.path.join(d, files(d)[0])
    assert sizes[0] < os.path.getsize(first)
    os.truncate(first, sizes[0])
    with pytest.raises(WALCorruptError, match="previous segment"):
        WAL.open(d)


def test_missing_segment_raises(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    names = files(d)
    assert len(names) >= 4
    os.unlink(os.path.join(d, names[2]))
    with pytest.raises(WALError, match="missing"):
        WAL.open(d)


def test_open_at_snapshot_marker(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    w.save(HardState(1, 1, 30), ents(1, 30))
    w.save_snapshot(SnapshotMetadata(20, 1))
    w.save(HardState(2, 1, 45), ents(31, 50, term=2))
    w.close()

    w, st = WAL.open(d, SnapshotMetadata(20, 1))
    assert st.snapshot == SnapshotMetadata(20, 1)
    assert st.entries == ents(21, 30) + ents(31, 50, term=2)
    assert st.hard_state == HardState(2, 1, 45)
    w.close()
    # From the beginning (creation marker at 0).
    w, st = WAL.open(d)
    assert len(st.entries) == 50 and st.snapshot is None
    w.close()

    with pytest.raises(WALError, match="not found"):
        WAL.open(d, SnapshotMetadata(25, 1))
    with pytest.raises(WALError, match="term"):
        WAL.open(d, SnapshotMetadata(20, 7))
    assert valid_snapshot_markers(d) == [SnapshotMetadata(0, 0), SnapshotMetadata(20, 1)]


def test_received_snapshot_then_entries(tmp_path):
    # A follower installs a snapshot far ahead of its log, then appends after it.
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.save_snapshot(SnapshotMetadata(1000, 3))
    w.save(HardState(3, 0, 1000), ents(1001, 1003, term=3))
    w.close()
    w, st = WAL.open(d, SnapshotMetadata(1000, 3))
    assert [e.index for e in st.entries] == [1001, 1002, 1003]
    w.close()
    with pytest.raises(WALError, match="gap"):
        WAL.open(d)


def test_purge(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    for lo in range(1, 200, 10):
        w.save(HardState(1, 1, lo + 9), ents(lo, lo + 9))
        if lo == 121:
            w.save_snapshot(SnapshotMetadata(130, 1))
    n = len(files(d))
    assert w.purge(130, max_wals=n) == []  # retention limit not exceeded
    removed = w.purge(130, max_wals=n - 1)
    assert len(removed) == 1 and removed[0] == "0000000000000000-0000000000000000.wal"
    removed = w.purge(130)
    kept = files(d)
    assert kept and all(name not in kept for name in removed)
    starts = [int(x[17:33], 16) for x in kept]
    assert starts[0] <= 130 and (len(starts) == 1 or starts[1] > 130)
    w.save(None, ents(201, 205))
    w.close()
    w, st = WAL.open(d, SnapshotMetadata(130, 1))
    assert [e.index for e in st.entries] == list(range(131, 206))
    w.close()
    with pytest.raises(WALError):
        WAL.open(d)  # the creation marker was purged


def test_second_writer_is_locked_out(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)
    with pytest.raises(WALError, match="locked"):
        WAL.open(d)
    w.close()
    WAL.open(d)[0].close()


def test_save_from_worker_thread(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=4096)
    t = threading.Thread(target=lambda: [w.save(None, ents(i, i)) for i in range(1, 101)])
    t.start()
    t.join()
    w.close()
    _, st = WAL.open(d)
    assert [e.index for e in st.entries] == list(range(1, 101))
