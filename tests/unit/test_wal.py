import hashlib
import logging
import os
import struct
import threading
import zlib

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
from petcd.wal import wal as walmod

MD = b"cluster=1,member=2"
SEG = 64 << 10  # segment size used unless a test picks one: small, so preallocation is cheap


class Mode:
    """Creates/opens WALs with or without preallocation; file-size helpers for both."""

    def __init__(self, prealloc: bool) -> None:
        self.prealloc = prealloc

    def create(self, d, md=MD, segment_size=SEG):
        return WAL.create(d, md, segment_size=segment_size, preallocate=self.prealloc)

    def open(self, d, snap=None, segment_size=SEG):
        return WAL.open(d, snap, segment_size=segment_size, preallocate=self.prealloc)

    def cut(self, path, length):
        """The file as if nothing past ``length`` had reached the disk."""
        size = os.path.getsize(path)
        os.truncate(path, length)
        if self.prealloc:  # the preallocated space is still there, as zeros
            fd = os.open(path, os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)

    def rewrite(self, path, content, size):
        with open(path, "wb") as f:
            f.write(content)
        if self.prealloc:
            os.truncate(path, size)

    def check_size(self, path, logical, segment_size=SEG):
        """Records end at ``logical``; the file is exactly that (or preallocated)."""
        assert logical_end(path) == logical
        expect = max(logical, segment_size) if self.prealloc else logical
        assert os.path.getsize(path) == expect


@pytest.fixture(params=[True, False], ids=["prealloc", "grow"])
def mode(request):
    return Mode(request.param)


def logical_end(path):
    """End of the last valid record: parsed here independently of the WAL's reader."""
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off + 8 <= len(data):
        crc, n = struct.unpack_from("<II", data, off)
        if n == 0 or off + 8 + n > len(data) or zlib.crc32(data[off + 8 : off + 8 + n], n) != crc:
            break
        off += 8 + n + (-n % 8)
    return off


def write_at_end(path, junk):
    """Write where the next record would go (appends to a non-preallocated file)."""
    with open(path, "r+b") as f:
        f.seek(logical_end(path))
        f.write(junk)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ents(lo, hi, term=1, size=40):
    return [Entry(term, i, 0, (b"v%d-" % i) * (size // 4)) for i in range(lo, hi + 1)]


def files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".wal"))


def last_file(d):
    return os.path.join(d, files(d)[-1])


def test_encode_decode_entries():
    es = [Entry(3, 7, 0, b""), Entry(3, 8, 1, b"x" * 1000), Entry(4, 9, 0, b"\0\1")]
    assert decode_entries(encode_entries(es)) == es


def test_create_refuses_non_empty_dir(tmp_path, mode):
    d = tmp_path / "wal"
    assert not wal_exists(str(d))
    mode.create(str(d)).close()
    assert wal_exists(str(d))
    assert files(d) == ["0000000000000000-0000000000000000.wal"]
    assert not os.path.exists(str(d) + ".tmp")
    with pytest.raises(WALError):
        mode.create(str(d))
    # An existing empty dir is fine.
    (tmp_path / "empty").mkdir()
    mode.create(str(tmp_path / "empty")).close()


def test_round_trip_across_segments_and_reappend(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    for lo in range(1, 200, 10):
        w.save(HardState(2, 1, lo), ents(lo, lo + 9, term=2))
    w.close()
    assert len(files(d)) > 5
    # Segment names carry the first index of the segment.
    starts = [int(n[17:33], 16) for n in files(d)]
    assert starts == sorted(starts) and starts[0] == 0

    w, st = mode.open(d, segment_size=1024)
    assert st.metadata == MD
    assert st.hard_state == HardState(2, 1, 191)
    assert [e.index for e in st.entries] == list(range(1, 201))
    assert st.entries == ents(1, 200, term=2)
    assert w.last_index == 200
    w.save(HardState(3, 2, 200), ents(201, 230, term=3))
    w.close()

    w, st = mode.open(d, segment_size=1024)
    assert st.hard_state == HardState(3, 2, 200)
    assert st.entries == ents(1, 200, term=2) + ents(201, 230, term=3)
    w.close()


def test_state_only_and_empty_saves(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d)
    size = logical_end(last_file(d))
    w.save(None, [])
    w.save(HardState(), [])
    mode.check_size(last_file(d), size)
    w.save(HardState(1, 1, 0), [])
    w.save(HardState(1, 1, 0), [])  # unchanged: nothing written
    grown = logical_end(last_file(d))
    assert grown > size
    w.save(HardState(1, 1, 0), [])
    mode.check_size(last_file(d), grown)
    w.close()
    _, st = mode.open(d)
    assert st.hard_state == HardState(1, 1, 0) and st.entries == []


def test_conflict_overwrite_on_replay(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=2048)
    w.save(HardState(1, 1, 3), ents(1, 60, term=1))
    # A new leader overwrites 40.. (crossing the segment cut done above).
    w.save(HardState(2, 2, 3), ents(40, 45, term=2))
    # And again, further back.
    w.save(HardState(3, 3, 3), ents(42, 43, term=3))
    w.close()
    w, st = mode.open(d)
    assert st.entries == ents(1, 39, 1) + ents(40, 41, 2) + ents(42, 43, 3)
    assert w.last_index == 43
    w.save(None, ents(44, 44, 3))
    w.close()
    _, st = mode.open(d)
    assert [e.index for e in st.entries] == list(range(1, 45))


def test_save_rejects_gap_and_non_contiguous(tmp_path, mode):
    w = mode.create(str(tmp_path / "wal"))
    w.save(None, ents(1, 3))
    with pytest.raises(ValueError):
        w.save(None, ents(5, 6))
    with pytest.raises(ValueError):
        w.save(None, [Entry(1, 4), Entry(1, 6)])
    w.close()


def _torn_setup(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d)
    w.save(HardState(1, 1, 5), ents(1, 10))
    before = logical_end(last_file(d))
    w.save(None, ents(11, 13, size=200))  # the record we will tear
    after = logical_end(last_file(d))
    w.close()
    return d, before, after


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 100, -9, -1])
def test_torn_tail_is_repaired(tmp_path, mode, cut, caplog):
    d, before, after = _torn_setup(tmp_path, mode)
    length = before + cut if cut > 0 else after + cut
    mode.cut(last_file(d), length)
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = mode.open(d)
    assert "torn tail" in caplog.text
    assert st.entries == ents(1, 10)
    assert st.hard_state == HardState(1, 1, 5)
    mode.check_size(last_file(d), before)
    w.save(HardState(1, 1, 11), ents(11, 12, term=1))
    w.close()
    _, st = mode.open(d)
    assert st.entries == ents(1, 10) + ents(11, 12)
    assert st.hard_state.commit == 11


def test_every_truncation_offset_is_repaired(tmp_path, mode):
    d, before, after = _torn_setup(tmp_path, mode)
    data = open(last_file(d), "rb").read()[:after]
    for length in range(before + 1, after):
        mode.rewrite(last_file(d), data[:length], SEG)
        w, st = mode.open(d)
        w.close()
        assert [e.index for e in st.entries] == list(range(1, 11)), length


@pytest.mark.parametrize(
    "junk", [b"\0" * 4096, b"\0" * 3, bytes(range(256)) * 9], ids=["zero4k", "zero3", "garbage"]
)
def test_zero_or_garbage_tail_is_repaired(tmp_path, mode, junk, caplog):
    d, before, after = _torn_setup(tmp_path, mode)
    write_at_end(last_file(d), junk)
    size = os.path.getsize(last_file(d))
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = mode.open(d)
    assert st.entries == ents(1, 10) + ents(11, 13, size=200)
    if any(junk):  # garbage is a torn tail: cut away
        assert "torn tail" in caplog.text
        mode.check_size(last_file(d), after)
    else:  # zeros are the (preallocated) end of the segment: left alone, no warning
        assert "torn tail" not in caplog.text
        assert logical_end(last_file(d)) == after
        assert os.path.getsize(last_file(d)) == size
    w.save(None, ents(14, 14))
    w.close()
    _, st = mode.open(d)
    assert st.entries[-1].index == 14


def test_zero_sector_hole_before_valid_records_is_a_torn_write(tmp_path, mode):
    # Pages of one unsynced write reaching disk out of order: a hole of zeros, then data.
    d = str(tmp_path / "wal")
    w = mode.create(d)
    w.save(HardState(1, 1, 1), ents(1, 2))
    before = logical_end(last_file(d))
    w.save(None, ents(3, 3, size=3000))
    w.save(HardState(1, 1, 3), ents(4, 4))
    w.close()
    with open(last_file(d), "r+b") as f:
        start = -(-(before + 16) // 512) * 512
        f.seek(start)
        f.write(b"\0" * 1024)
    w, st = mode.open(d)
    assert [e.index for e in st.entries] == [1, 2]
    mode.check_size(last_file(d), before)
    # The stale records behind the hole are gone: a short append then reads back cleanly.
    w.save(None, ents(3, 3))
    w.close()
    _, st = mode.open(d)
    assert [e.index for e in st.entries] == [1, 2, 3]


def test_flipped_byte_in_middle_raises(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d)
    w.save(HardState(1, 1, 1), ents(1, 5))
    before = logical_end(last_file(d))
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
    content = digest(path)
    with pytest.raises(WALCorruptError) as ei:
        mode.open(d)
    msg = str(ei.value)
    assert os.path.basename(path) in msg and f"offset {before}" in msg
    assert os.path.getsize(path) == size and digest(path) == content  # nothing was repaired


def test_flipped_length_field_in_middle_raises(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d)
    w.save(HardState(1, 1, 1), ents(1, 5))
    before = logical_end(last_file(d))
    w.save(None, ents(6, 10))
    w.save(None, ents(11, 15))
    w.close()
    with open(last_file(d), "r+b") as f:
        f.seek(before + 6)
        f.write(b"\x7f")  # huge length: runs past the end of the file
    with pytest.raises(WALCorruptError, match=f"offset {before}"):
        mode.open(d)


def test_corruption_in_earlier_segment_raises(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    first = os.path.join(d, files(d)[0])
    size = logical_end(first)
    # Even the very last byte of a non-last segment is not a "torn tail".
    with open(first, "r+b") as f:
        f.seek(size - 20)
        b = f.read(1)
        f.seek(size - 20)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(WALCorruptError, match=files(d)[0]):
        mode.open(d)


def test_truncated_earlier_segment_detected_by_link(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    sizes = []
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
        sizes.append(logical_end(os.path.join(d, files(d)[0])))
    w.close()
    # Cut the first segment back to an earlier record boundary: every record still valid.
    first = os.path.join(d, files(d)[0])
    assert sizes[0] < logical_end(first)
    mode.cut(first, sizes[0])
    with pytest.raises(WALCorruptError, match="previous segment"):
        mode.open(d)


def test_missing_segment_raises(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    names = files(d)
    assert len(names) >= 4
    os.unlink(os.path.join(d, names[2]))
    with pytest.raises(WALError, match="missing"):
        mode.open(d)


def test_open_at_snapshot_marker(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    w.save(HardState(1, 1, 30), ents(1, 30))
    w.save_snapshot(SnapshotMetadata(20, 1))
    w.save(HardState(2, 1, 45), ents(31, 50, term=2))
    w.close()

    w, st = mode.open(d, SnapshotMetadata(20, 1))
    assert st.snapshot == SnapshotMetadata(20, 1)
    assert st.entries == ents(21, 30) + ents(31, 50, term=2)
    assert st.hard_state == HardState(2, 1, 45)
    w.close()
    # From the beginning (creation marker at 0).
    w, st = mode.open(d)
    assert len(st.entries) == 50 and st.snapshot is None
    w.close()

    with pytest.raises(WALError, match="not found"):
        mode.open(d, SnapshotMetadata(25, 1))
    with pytest.raises(WALError, match="term"):
        mode.open(d, SnapshotMetadata(20, 7))
    assert valid_snapshot_markers(d) == [SnapshotMetadata(0, 0), SnapshotMetadata(20, 1)]


def test_received_snapshot_then_entries(tmp_path, mode):
    # A follower installs a snapshot far ahead of its log, then appends after it.
    d = str(tmp_path / "wal")
    w = mode.create(d)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.save_snapshot(SnapshotMetadata(1000, 3))
    w.save(HardState(3, 0, 1000), ents(1001, 1003, term=3))
    w.close()
    w, st = mode.open(d, SnapshotMetadata(1000, 3))
    assert [e.index for e in st.entries] == [1001, 1002, 1003]
    w.close()
    with pytest.raises(WALError, match="gap"):
        mode.open(d)


def test_purge(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
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
    w, st = mode.open(d, SnapshotMetadata(130, 1))
    assert [e.index for e in st.entries] == list(range(131, 206))
    w.close()
    with pytest.raises(WALError):
        mode.open(d)  # the creation marker was purged


def test_second_writer_is_locked_out(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d)
    with pytest.raises(WALError, match="locked"):
        mode.open(d)
    w.close()
    mode.open(d)[0].close()


def test_save_from_worker_thread(tmp_path, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=4096)
    t = threading.Thread(target=lambda: [w.save(None, ents(i, i)) for i in range(1, 101)])
    t.start()
    t.join()
    w.close()
    _, st = mode.open(d)
    assert [e.index for e in st.entries] == list(range(1, 101))


# ---------------------------------------------------------------------------------------
# Preallocation


def test_reopen_preallocated_wal_is_clean_and_loses_nothing(tmp_path, caplog):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=SEG)
    w.save(HardState(1, 1, 5), ents(1, 10))
    w.close()
    path = last_file(d)
    assert os.path.getsize(path) == SEG and logical_end(path) < SEG
    for round_ in range(3):
        with caplog.at_level(logging.WARNING, logger="petcd.wal"):
            w, st = WAL.open(d, segment_size=SEG)
        assert caplog.text == ""
        hi = 10 + 5 * round_
        assert st.entries == ents(1, hi) and st.hard_state == HardState(1, 1, 5 + round_)
        assert w.last_index == hi
        # Appends go to the logical end, inside the preallocated space.
        w.save(HardState(1, 1, 6 + round_), ents(hi + 1, hi + 5))
        w.close()
        assert os.path.getsize(path) == SEG
    assert valid_snapshot_markers(d) == [SnapshotMetadata(0, 0)]


def test_torn_garbage_in_preallocated_file_is_repaired(tmp_path, caplog):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=SEG)
    w.save(HardState(1, 1, 5), ents(1, 10))
    w.close()
    path = last_file(d)
    good = logical_end(path)
    # A torn last write: a header promising more than arrived, some bytes, then zeros.
    write_at_end(path, struct.pack("<II", 12345, 900) + b"\xab" * 300)
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = WAL.open(d, segment_size=SEG)
    assert "torn tail" in caplog.text
    assert st.entries == ents(1, 10)
    # Bad bytes are gone and the segment is preallocated again.
    assert logical_end(path) == good and os.path.getsize(path) == SEG
    with open(path, "rb") as f:
        assert f.read()[good:].count(0) == SEG - good
    w.save(HardState(1, 1, 11), ents(11, 11, size=8))  # shorter than the garbage was
    w.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = WAL.open(d, segment_size=SEG)
    assert caplog.text == ""
    assert st.entries == ents(1, 10) + ents(11, 11, size=8)
    assert st.hard_state == HardState(1, 1, 11)
    w.close()


def test_cut_preallocates_the_new_segment(tmp_path, caplog):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=4096)
    for lo in range(1, 301, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    names = files(d)
    assert len(names) >= 3
    for name in names:
        st = os.stat(os.path.join(d, name))
        assert st.st_size >= 4096 and st.st_blocks * 512 >= 4096
    tail = last_file(d)
    assert logical_end(tail) < os.path.getsize(tail) == 4096
    w.close()
    # Every earlier segment ends in zeros after its last record, and each LINK holds the
    # previous segment's logical size: none of that is corruption.
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = WAL.open(d, segment_size=4096)
    assert caplog.text == ""
    assert st.entries == ents(1, 300)
    w.close()


def test_zero_end_of_earlier_segment_is_not_corruption(tmp_path, mode, caplog):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    for lo in range(1, 100, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    first = os.path.join(d, files(d)[0])
    end = logical_end(first)
    with open(first, "ab") as f:  # more zeros (beyond any preallocation, too)
        f.write(b"\0" * 5000)
    with caplog.at_level(logging.WARNING, logger="petcd.wal"):
        w, st = mode.open(d, segment_size=1024)
    assert caplog.text == ""
    assert [e.index for e in st.entries] == list(range(1, 101))
    assert logical_end(first) == end
    w.close()
    # Non-zero bytes there are still corruption.
    with open(first, "ab") as f:
        f.write(b"\1")
    with pytest.raises(WALCorruptError, match=f"{files(d)[0]} is corrupt at byte offset {end}"):
        mode.open(d, segment_size=1024)


def test_fresh_wal_disk_usage_is_segment_size(tmp_path):
    d = str(tmp_path / "wal")
    WAL.create(d, MD).close()
    st = os.stat(last_file(d))
    assert st.st_size == walmod.DEFAULT_SEGMENT_SIZE
    assert st.st_blocks * 512 >= walmod.DEFAULT_SEGMENT_SIZE
    d2 = str(tmp_path / "wal2")
    WAL.create(d2, MD, preallocate=False).close()
    st = os.stat(last_file(d2))
    assert st.st_size == logical_end(last_file(d2)) < 4096


def test_grown_wal_reopened_with_preallocation(tmp_path):
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=2048, preallocate=False)
    for lo in range(1, 60, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    assert os.path.getsize(last_file(d)) == logical_end(last_file(d))
    w, st = WAL.open(d, segment_size=2048)
    assert os.path.getsize(last_file(d)) == 2048  # the tail was preallocated on open
    w.save(None, ents(61, 61))
    w.close()
    _, st = WAL.open(d, segment_size=2048, preallocate=False)
    assert [e.index for e in st.entries] == list(range(1, 62))


def test_fallocate_failure_falls_back_to_growing(tmp_path, monkeypatch):
    def fail(fd, offset, length):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", fail)
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD, segment_size=1024)
    for lo in range(1, 60, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    assert len(files(d)) > 1
    assert os.path.getsize(last_file(d)) == logical_end(last_file(d))
    w, st = WAL.open(d, segment_size=1024)
    assert [e.index for e in st.entries] == list(range(1, 61))
    w.close()


def test_open_reads_only_the_used_part_of_a_preallocated_segment(tmp_path, monkeypatch):
    probe = str(tmp_path / "probe")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        reports_holes = os.lseek(fd, 0, os.SEEK_HOLE) == 0
    finally:
        os.close(fd)
    if not reports_holes:
        pytest.skip("filesystem does not report preallocated space as a hole")
    d = str(tmp_path / "wal")
    w = WAL.create(d, MD)  # 64 MiB
    w.save(HardState(1, 1, 5), ents(1, 10))
    w.close()
    real_pread = os.pread
    read = []

    def pread(fd, n, off):
        read.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    w, st = WAL.open(d)
    w.close()
    assert st.entries == ents(1, 10)
    assert 0 < sum(read) <= 1 << 16


def test_open_without_seek_data_support(tmp_path, monkeypatch, mode):
    d = str(tmp_path / "wal")
    w = mode.create(d, segment_size=1024)
    for lo in range(1, 60, 10):
        w.save(HardState(1, 1, lo), ents(lo, lo + 9))
    w.close()
    write_at_end(last_file(d), b"\xee" * 20)  # and a torn tail to repair
    real_lseek = os.lseek

    def lseek(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(22, "Invalid argument")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    w, st = mode.open(d, segment_size=1024)
    w.save(None, ents(61, 61))
    w.close()
    _, st = mode.open(d, segment_size=1024)
    assert [e.index for e in st.entries] == list(range(1, 62))
