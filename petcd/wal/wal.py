"""Write-ahead log: segment files of framed, checksummed records.

On-disk layout (petcd's own; etcd's guarantees, not its bytes)
---------------------------------------------------------------
A WAL is a directory of segments named ``%016x-%016x.wal`` % (seq, first_index) where
``seq`` increases by one per segment and ``first_index`` is the last saved entry index + 1
at the time the segment was cut.  Every record is a frame::

    u32 crc | u32 n | body (n bytes: u8 type + type payload) | zero padding to 8 bytes

``crc = zlib.crc32(body, n)`` (seeding with ``n`` also protects the length field).  The CRC
is per record rather than chained: a record can be validated without the ones before it,
which is what lets the reader tell a torn tail (nothing valid after the bad record) from
corruption in the middle (valid records follow).  The cross-segment protection that etcd
gets from its chained CRC comes from the LINK record that opens every segment: it holds the
byte size and last record CRC of the previous segment, so a truncated or swapped earlier
segment is detected.

Each segment starts with LINK, METADATA, and (for cut segments) the current hard state.
Entries are written as ENTRIES records holding a contiguous batch (one record per ``save``),
so a batch costs one CRC and per entry only one ``struct.pack`` plus its data.

Replay rules (as etcd's ReadAll): an entry at index i replaces the entry at i and truncates
everything after it; the last hard state wins; metadata must be identical everywhere; the
snapshot marker we open at must be present; a gap in indexes is an error.

Preallocation (as etcd): a segment is extended to ``segment_size`` with posix_fallocate and
fsynced once when it is created, so the per-append fdatasync has no file size change to
journal.  A segment's *logical* end is therefore the end of its last record, not the file
size: the reader stops at the first zero record header and, when everything after it is
zero, that is simply the end of the segment (in any segment, no warning).  Appends resume at
the logical end; LINK records hold logical sizes.

Torn tail vs corruption: a bad record (or non-zero bytes after the last record) in the last
segment is a torn tail (truncated away, with a warning, then preallocated again) when no
valid record follows it, or when an all-zero 512-byte sector lies between it and the next
valid record (the signature of a write that never reached the disk: everything after it
came from the same unsynced write).  Otherwise, and for any bad record or non-zero garbage
in an earlier segment, WALCorruptError is raised naming the file and the byte offset.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from petcd.metrics import WAL_FSYNC_SECONDS
from petcd.raft.types import Entry, HardState, SnapshotMetadata

log = logging.getLogger("petcd.wal")

__all__ = [
    "WAL",
    "WALState",
    "WALError",
    "WALCorruptError",
    "wal_exists",
    "encode_entries",
    "decode_entries",
    "segment_name",
    "parse_segment_name",
    "valid_snapshot_markers",
    "DEFAULT_SEGMENT_SIZE",
]

DEFAULT_SEGMENT_SIZE = 64 << 20

# Record types.
LINK = 1  # u64 previous segment size, u32 previous segment's last record crc
METADATA = 2  # opaque bytes
ENTRIES = 3  # contiguous entries: (u64 term, u64 index, u8 type, u32 len, data) ...
STATE = 4  # u64 term, u64 vote, u64 commit
SNAPSHOT = 5  # u64 index, u64 term
_VALID_TYPES = frozenset((LINK, METADATA, ENTRIES, STATE, SNAPSHOT))

_HDR = struct.Struct("<II")
_ENT = struct.Struct("<QQBI")
_STATE = struct.Struct("<BQQQ")
_SNAP = struct.Struct("<BQQ")
_LINK = struct.Struct("<BQI")
_ENT_SIZE = _ENT.size
_PADS = tuple(b"\0" * i for i in range(8))
_ENTRIES_TAG = bytes((ENTRIES,))
_SECTOR = 512
_ZERO_CHUNK = 1 << 20

_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


class WALError(Exception):
    """The WAL cannot be used as asked (missing segments, snapshot not found, ...)."""


class WALCorruptError(WALError):
    """A record failed validation somewhere other than a repairable torn tail."""


@dataclass
class WALState:
    metadata: bytes
    hard_state: HardState  # last saved (HardState() if none)
    entries: list[Entry]  # entries after the snapshot index, in order, conflicts resolved
    snapshot: SnapshotMetadata | None  # the marker we opened at, if any
    markers: list[SnapshotMetadata] = field(default_factory=list)  # every marker seen


# ---------------------------------------------------------------------------------------
# Encoding


def encode_entries(entries: Iterable[Entry], _prefix: bytes = b"") -> bytes:
    """Encode entries back to back: (u64 term, u64 index, u8 type, u32 len) + data each."""
    pack = _ENT.pack
    parts: list[bytes] = [_prefix]
    append = parts.append
    for e in entries:
        d = e.data
        append(pack(e.term, e.index, e.type, len(d)))
        append(d)
    return b"".join(parts)


def decode_entries(buf: bytes, offset: int = 0, end: int | None = None) -> list[Entry]:
    """Decode what ``encode_entries`` produced from ``buf[offset:end]``."""
    if end is None:
        end = len(buf)
    unpack_from = _ENT.unpack_from
    out: list[Entry] = []
    append = out.append
    pos = offset
    while pos < end:
        term, index, typ, n = unpack_from(buf, pos)
        pos += _ENT_SIZE
        nxt = pos + n
        if nxt > end:
            raise ValueError("entry data runs past the end of the buffer")
        append(Entry(term, index, typ, buf[pos:nxt]))
        pos = nxt
    return out


def _frame(body: bytes) -> bytes:
    n = len(body)
    return _HDR.pack(zlib.crc32(body, n), n) + body + _PADS[-n % 8]


def _frame_parts(body: bytes) -> tuple[bytes, bytes, bytes]:
    # Avoids copying a (possibly large) body a second time: handed to os.writev as is.
    n = len(body)
    return _HDR.pack(zlib.crc32(body, n), n), body, _PADS[-n % 8]


def _encode_state(hs: HardState) -> bytes:
    return _STATE.pack(STATE, hs.term, hs.vote, hs.commit)


def segment_name(seq: int, index: int) -> str:
    return f"{seq:016x}-{index:016x}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def _list_segments(dirpath: str) -> list[tuple[int, int, str]]:
    out = []
    for name in os.listdir(dirpath):
        p = parse_segment_name(name)
        if p is not None:
            out.append((p[0], p[1], name))
    out.sort()
    return out


def wal_exists(dirpath: str) -> bool:
    try:
        return bool(_list_segments(dirpath))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_dir(dirpath: str) -> int:
    """Open the directory and take an exclusive flock on it: one writer per WAL."""
    dir_fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(dir_fd)
        raise WALError(f"WAL {dirpath} is locked by another user") from None
    return dir_fd


def _preallocate(fd: int, size: int, sync: bool = True) -> bool:
    """Extend the file to ``size`` bytes of allocated zeros (then fsync, with ``sync``).

    Returns False when the filesystem cannot: the segment then just grows as it is written.
    """
    if os.fstat(fd).st_size >= size:
        return True
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        log.debug("WAL: cannot preallocate %d bytes (%s); growing on append", size, exc)
        return False
    if sync:
        os.fsync(fd)
    return True


def _fdatasync(fd: int) -> None:
    t0 = time.monotonic()
    os.fdatasync(fd)
    WAL_FSYNC_SECONDS.observe(time.monotonic() - t0)


def _write_all(fd: int, bufs: list[bytes]) -> int:
    total = sum(map(len, bufs))
    written = os.writev(fd, bufs)
    if written != total:  # rare short write: fall back to a plain loop over the rest
        rest = memoryview(b"".join(bufs))[written:]
        while rest:
            k = os.write(fd, rest)
            rest = rest[k:]
    return total


# ---------------------------------------------------------------------------------------
# Reading


@dataclass(slots=True)
class _Segment:
    seq: int
    index: int
    name: str
    path: str
    records: list[tuple[int, bytes]]  # (offset, body)
    size: int  # logical end: past the last valid record (the file may be longer: zeros)
    last_crc: int


def _read_used(path: str) -> tuple[bytes, int]:
    """(contents up to the end of the file's last data extent, file size).

    Unwritten preallocated space is reported as a hole by SEEK_DATA/SEEK_HOLE on most
    filesystems and holes read as zeros, so a mostly empty 64 MiB segment costs a read of
    its used part only. Where holes are not reported, everything is read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        end = pos = 0
        try:
            while pos < size:
                pos = os.lseek(fd, os.lseek(fd, pos, os.SEEK_DATA), os.SEEK_HOLE)
                end = pos
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after pos
                end = size
        parts = []
        pos = 0
        while pos < end:
            chunk = os.pread(fd, end - pos, pos)
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts) if len(parts) != 1 else parts[0], size
    finally:
        os.close(fd)


def _nonzero_end(data: bytes, start: int) -> int:
    """Offset just past the last non-zero byte of ``data[start:]`` (``start`` if none)."""
    end = len(data)
    while end > start:
        s = max(start, end - _ZERO_CHUNK)
        if data.count(0, s, end) != end - s:
            return s + len(data[s:end].rstrip(b"\0"))
        end = s
    return start


def _next_valid_frame(data: bytes, start: int, stop: int) -> int | None:
    """First 8-aligned offset in [start, stop) where a valid frame begins, if any."""
    size = len(data)
    # A frame needs a header plus at least the type byte, and a non-zero length field.
    count = (min(stop, size - 8) - start + 7) // 8
    if count <= 0:
        return None
    valid = _VALID_TYPES
    off = start
    for crc, n in _HDR.iter_unpack(memoryview(data)[start : start + count * 8]):
        if (
            n != 0
            and off + 8 + n <= size
            and data[off + 8] in valid
            and zlib.crc32(data[off + 8 : off + 8 + n], n) == crc
        ):
            return off
        off += 8
    return None


def _has_zero_sector(data: bytes, start: int, end: int) -> bool:
    first = -(-start // _SECTOR) * _SECTOR
    zero = b"\0" * _SECTOR
    for s in range(first, end - _SECTOR + 1, _SECTOR):
        if data[s : s + _SECTOR] == zero:
            return True
    return False


def _scan(path: str, data: bytes, is_last: bool) -> tuple[list[tuple[int, bytes]], int, str]:
    """Parse frames. Returns (records, end of last good frame, reason for stopping or '')."""
    records: list[tuple[int, bytes]] = []
    append = records.append
    unpack_from = _HDR.unpack_from
    size = len(data)
    off = 0
    reason = ""
    while off < size:
        if size - off < 8:
            reason = "truncated record header"
            break
        crc, n = unpack_from(data, off)
        if n == 0:
            reason = "zero record header"
            break
        end = off + 8 + n
        if end > size:
            reason = f"record length {n} runs past end of file"
            break
        body = data[off + 8 : end]
        if zlib.crc32(body, n) != crc:
            reason = "crc mismatch"
            break
        if body[0] not in _VALID_TYPES:
            reason = f"unknown record type {body[0]}"
            break
        nxt = end + (-n % 8)
        if nxt > size:
            reason = "truncated record padding"
            break
        append((off, body))
        off = nxt
    if not reason:
        return records, off, ""
    stop = _nonzero_end(data, off)
    if stop == off:  # only zeros follow: preallocated space (or a hole), a clean end
        return records, off, ""
    if not is_last:
        raise WALCorruptError(f"WAL segment {path} is corrupt at byte offset {off}: {reason}")
    nxt_valid = _next_valid_frame(data, off + 8, stop)
    if nxt_valid is not None and not _has_zero_sector(data, off, nxt_valid):
        raise WALCorruptError(
            f"WAL segment {path} is corrupt at byte offset {off}: {reason} "
            f"(valid records follow at offset {nxt_valid})"
        )
    return records, off, reason


def _read_segments(dirpath: str, base: int | None, *, repair: bool) -> list[_Segment]:
    """Read (and with ``repair`` fix the torn tail of) the segments needed from ``base`` on;
    ``base=None`` reads every segment present."""
    names = _list_segments(dirpath)
    if not names:
        raise WALError(f"no WAL segments in {dirpath}")
    start = 0 if base is None else -1
    for i, (_seq, idx, _name) in enumerate(names):
        if base is not None and idx <= base:
            start = i
    if start < 0:
        raise WALError(
            f"no WAL segment in {dirpath} covers snapshot index {base} "
            f"(oldest segment is {names[0][2]})"
        )
    chosen = names[start:]
    for (s1, _, n1), (s2, _, n2) in zip(chosen, chosen[1:], strict=False):
        if s2 != s1 + 1:
            raise WALError(f"WAL segments missing in {dirpath}: {n1} is followed by {n2}")
    segs: list[_Segment] = []
    for i, (seq, idx, name) in enumerate(chosen):
        path = os.path.join(dirpath, name)
        is_last = i == len(chosen) - 1
        data, fsize = _read_used(path)
        try:
            records, good, reason = _scan(path, data, is_last)
        except WALCorruptError:
            if len(data) == fsize:
                raise
            reason = "partial read"
        if reason and len(data) < fsize:
            # Only a filesystem misreporting holes gets here: judge on the whole file.
            with open(path, "rb") as f:
                data = f.read()
            records, good, reason = _scan(path, data, is_last)
        if reason:
            if not repair:
                log.warning("WAL %s: torn tail at offset %d (%s), ignored", path, good, reason)
            else:
                log.warning(
                    "WAL %s: torn tail at byte offset %d (%s); discarding the rest of the file",
                    path,
                    good,
                    reason,
                )
                # Truncating (not just rewriting our next records over it) also clears stale
                # bytes past them; the tail is preallocated again when it is opened.
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, good)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if len(records) < 2 or records[0][1][0] != LINK or records[1][1][0] != METADATA:
            if is_last and (reason or len(records) < 2) and i > 0 and repair:
                # A cut segment is fsynced before its rename, so this means a torn header
                # write we never appended to: drop the file, the previous one is the tail.
                log.warning("WAL %s: no complete segment header, removing it", path)
                os.unlink(path)
                _fsync_dir(dirpath)
                break
            raise WALCorruptError(
                f"WAL segment {path} is corrupt at byte offset 0: missing segment header"
            )
        last_crc = _HDR.unpack_from(data, records[-1][0])[0]
        segs.append(_Segment(seq, idx, name, path, records, good, last_crc))
    return segs


# ---------------------------------------------------------------------------------------
# The WAL


class WAL:
    """An open WAL positioned to append. Thread-safe; calls block on disk I/O."""

    def __init__(
        self,
        dirpath: str,
        metadata: bytes,
        fd: int,
        dir_fd: int,
        seq: int,
        size: int,
        last_crc: int,
        last_index: int,
        hard_state: HardState,
        segment_size: int,
        preallocate: bool = True,
    ) -> None:
        self.dirpath = dirpath
        self.metadata = metadata
        self.segment_size = segment_size
        self.preallocate = preallocate
        self._fd = fd
        self._dir_fd = dir_fd
        self._seq = seq
        self._size = size
        self._last_crc = last_crc
        self._last_index = last_index
        self._hs = hard_state
        self._lock = threading.Lock()
        self._closed = False
        self._failed: BaseException | None = None

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        dirpath: str,
        metadata: bytes,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
    ) -> WAL:
        """Create a new WAL in ``dirpath`` (absent or empty), atomically via ``<dir>.tmp``.

        With ``preallocate`` every segment is allocated at its full ``segment_size`` up
        front (see the module docstring)."""
        dirpath = os.path.abspath(dirpath)
        if os.path.exists(dirpath) and os.listdir(dirpath):
            raise WALError(f"cannot create WAL: {dirpath} exists and is not empty")
        parent = os.path.dirname(dirpath)
        os.makedirs(parent, exist_ok=True)
        tmp = dirpath + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        frames = [
            _frame(_LINK.pack(LINK, 0, 0)),
            _frame(bytes((METADATA,)) + bytes(metadata)),
            _frame(_SNAP.pack(SNAPSHOT, 0, 0)),
        ]
        name = segment_name(0, 0)
        fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if preallocate:
                _preallocate(fd, segment_size, sync=False)  # the fsync below covers it
            size = _write_all(fd, frames)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(tmp)
        if os.path.exists(dirpath):
            os.rmdir(dirpath)  # empty (checked above); rename cannot replace a non-empty dir
        os.rename(tmp, dirpath)
        _fsync_dir(parent)
        last_crc = _HDR.unpack_from(frames[-1])[0]
        return cls._open_tail(
            dirpath, metadata, 0, name, size, last_crc, 0, HardState(), segment_size, preallocate
        )

    @classmethod
    def _open_tail(
        cls,
        dirpath: str,
        metadata: bytes,
        seq: int,
        name: str,
        size: int,
        last_crc: int,
        last_index: int,
        hs: HardState,
        segment_size: int,
        preallocate: bool,
        dir_fd: int | None = None,
    ) -> WAL:
        if dir_fd is None:
            dir_fd = _lock_dir(dirpath)
        fd = -1
        try:
            fd = os.open(os.path.join(dirpath, name), os.O_WRONLY)
            if preallocate:  # a no-op unless created without it or cut back by a repair
                _preallocate(fd, segment_size)
            os.lseek(fd, size, os.SEEK_SET)  # the logical end, not the file's
        except BaseException:
            if fd >= 0:
                os.close(fd)
            os.close(dir_fd)
            raise
        return cls(
            dirpath,
            metadata,
            fd,
            dir_fd,
            seq,
            size,
            last_crc,
            last_index,
            hs,
            segment_size,
            preallocate,
        )

    @classmethod
    def open(
        cls,
        dirpath: str,
        snap: SnapshotMetadata | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
    ) -> tuple[WAL, WALState]:
        """Replay the WAL from ``snap`` (or from the creation marker at index 0).

        A torn tail in the last segment is truncated away (warning logged, fsynced).
        ``preallocate`` applies to the tail segment and to segments cut later."""
        dirpath = os.path.abspath(dirpath)
        if not os.path.isdir(dirpath):
            raise WALError(f"WAL directory {dirpath} does not exist")
        dir_fd = _lock_dir(dirpath)  # before any repair: never truncate under a live writer
        try:
            # Leftovers of a cut that crashed before its rename were never part of the log.
            for name in os.listdir(dirpath):
                if name.endswith(".wal.tmp"):
                    os.unlink(os.path.join(dirpath, name))
            state, segs, last_index = _replay(dirpath, snap, repair=True)
        except BaseException:
            os.close(dir_fd)
            raise
        tail = segs[-1]
        wal = cls._open_tail(
            dirpath,
            state.metadata,
            tail.seq,
            tail.name,
            tail.size,
            tail.last_crc,
            last_index,
            state.hard_state,
            segment_size,
            preallocate,
            dir_fd,
        )
        return wal, state

    # -- appending ---------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """Index of the last entry saved (or snapshot marker, if later)."""
        return self._last_index

    @property
    def hard_state(self) -> HardState:
        return self._hs

    def _check(self) -> None:
        if self._closed:
            raise WALError("WAL is closed")
        if self._failed is not None:
            raise WALError(f"WAL unusable after an earlier I/O failure: {self._failed}")

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Append entries then the hard state; one fdatasync for the batch.

        Like etcd, the sync is skipped when nothing but the commit index changed (a lost
        commit index is recovered from the leader). Cuts a new segment when this one is full.
        """
        with self._lock:
            self._check()
            bufs: list[bytes] = []
            prev = self._hs
            must_sync = False
            if entries:
                first = entries[0].index
                last = entries[-1].index
                if last - first != len(entries) - 1:
                    raise ValueError("entries passed to WAL.save must be contiguous")
                if first > self._last_index + 1:
                    raise ValueError(
                        f"entry index {first} would leave a gap after {self._last_index}"
                    )
                bufs.extend(_frame_parts(encode_entries(entries, _ENTRIES_TAG)))
                must_sync = True
            new_hs = None
            if hard_state is not None:
                term, vote, commit = hard_state.term, hard_state.vote, hard_state.commit
                # plain field compares: this runs for every Ready on the write path
                if (term != prev.term or vote != prev.vote or commit != prev.commit) and (
                    term or vote or commit
                ):
                    new_hs = HardState(term, vote, commit)
                    bufs.append(_frame(_STATE.pack(STATE, term, vote, commit)))
                    if term != prev.term or vote != prev.vote:
                        must_sync = True
            if not bufs:
                return
            try:
                self._size += _write_all(self._fd, bufs)
                if sync and must_sync:
                    _fdatasync(self._fd)
            except OSError as exc:
                self._failed = exc
                raise
            self._last_crc = _HDR.unpack_from(bufs[-1] if new_hs else bufs[-3])[0]
            if entries:
                self._last_index = entries[-1].index
            if new_hs is not None:
                self._hs = new_hs
            if self._size >= self.segment_size:
                self._cut()

    def save_snapshot(self, meta: SnapshotMetadata) -> None:
        """Append a snapshot marker (index, term) and fsync."""
        with self._lock:
            self._check()
            buf = _frame(_SNAP.pack(SNAPSHOT, meta.index, meta.term))
            try:
                self._size += _write_all(self._fd, [buf])
                _fdatasync(self._fd)
            except OSError as exc:
                self._failed = exc
                raise
            self._last_crc = _HDR.unpack_from(buf)[0]
            if meta.index > self._last_index:
                self._last_index = meta.index

    def sync(self) -> None:
        with self._lock:
            self._check()
            try:
                _fdatasync(self._fd)
            except OSError as exc:
                self._failed = exc
                raise

    def _cut(self) -> None:
        try:
            os.fdatasync(self._fd)  # the old segment may hold unsynced (sync=False) records
            seq = self._seq + 1
            name = segment_name(seq, self._last_index + 1)
            path = os.path.join(self.dirpath, name)
            tmp = path + ".tmp"
            frames = [
                _frame(_LINK.pack(LINK, self._size, self._last_crc)),  # logical size
                _frame(bytes((METADATA,)) + self.metadata),
                _frame(_encode_state(self._hs)),
            ]
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if self.preallocate:
                    _preallocate(fd, self.segment_size, sync=False)
                size = _write_all(fd, frames)
                os.fsync(fd)
                # Header durable before the name appears: a visible segment is never headless.
                os.rename(tmp, path)
                os.fsync(self._dir_fd)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            self._failed = exc
            raise
        os.close(self._fd)
        self._fd = fd
        self._seq = seq
        self._size = size
        self._last_crc = _HDR.unpack_from(frames[-1])[0]

    # -- purging -----------------------------------------------------------------------

    def segments(self) -> list[str]:
        """Segment file names, oldest first."""
        return [n for _, _, n in _list_segments(self.dirpath)]

    def purge(self, snapshot_index: int, max_wals: int = 0) -> list[str]:
        """Delete segments not needed to reopen at ``snapshot_index``; returns the names.

        Kept: the last segment whose first index is <= snapshot_index (``open`` starts
        there, and it holds the marker or precedes it) and every later one. With
        ``max_wals`` > 0 only enough of the deletable ones go to bring the count down to
        ``max_wals`` (etcd's purger); 0 deletes all of them. The tail is never deleted.
        """
        with self._lock:
            self._check()
            segs = _list_segments(self.dirpath)
            keep_from = 0
            for i, (seq, idx, _name) in enumerate(segs):
                if idx <= snapshot_index and seq <= self._seq:
                    keep_from = i
            victims = segs[:keep_from]
            if max_wals > 0:
                victims = victims[: max(0, len(segs) - max_wals)]
            removed = []
            for _, _, name in victims:
                os.unlink(os.path.join(self.dirpath, name))
                removed.append(name)
            if removed:
                os.fsync(self._dir_fd)
                log.info("WAL purged %d segment(s) up to %s", len(removed), removed[-1])
            return removed

    def release_lock_to(self, index: int) -> list[str]:
        """etcd-flavoured alias for ``purge(index)``."""
        return self.purge(index)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failed is None:
                    os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                os.close(self._dir_fd)  # also drops the flock

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replay(
    dirpath: str, snap: SnapshotMetadata | None, *, repair: bool
) -> tuple[WALState, list[_Segment], int]:
    base = snap.index if snap is not None else 0
    base_term = snap.term if snap is not None else 0
    segs = _read_segments(dirpath, base, repair=repair)
    metadata: bytes | None = None
    hs = HardState()
    ents: list[Entry] = []
    matched = False
    markers: list[SnapshotMetadata] = []
    max_marker = 0
    prev: _Segment | None = None
    for seg in segs:
        for off, body in seg.records:
            t = body[0]
            if t == ENTRIES:
                try:
                    batch = decode_entries(body, 1)
                except (ValueError, struct.error) as exc:
                    raise WALCorruptError(
                        f"WAL segment {seg.path} is corrupt at byte offset {off}: {exc}"
                    ) from None
                if not batch:
                    continue
                first = batch[0].index
                last = batch[-1].index
                if last - first != len(batch) - 1:
                    raise WALCorruptError(
                        f"WAL segment {seg.path} is corrupt at byte offset {off}: "
                        "non-contiguous entry batch"
                    )
                if last <= base:
                    continue
                if first <= base:
                    batch = batch[base + 1 - first :]
                    first = base + 1
                pos = first - base - 1
                if pos > len(ents):
                    raise WALError(
                        f"WAL {seg.path} offset {off}: entry {first} leaves a gap after "
                        f"{base + len(ents)}"
                    )
                del ents[pos:]
                ents.extend(batch)
            elif t == STATE:
                _, term, vote, commit = _STATE.unpack(body)
                hs = HardState(term, vote, commit)
            elif t == SNAPSHOT:
                _, index, term = _SNAP.unpack(body)
                markers.append(SnapshotMetadata(index, term))
                max_marker = max(max_marker, index)
                if index == base:
                    if term != base_term:
                        raise WALError(
                            f"WAL snapshot marker at index {index} has term {term}, "
                            f"expected {base_term}"
                        )
                    matched = True
            elif t == METADATA:
                md = body[1:]
                if metadata is None:
                    metadata = md
                elif md != metadata:
                    raise WALCorruptError(
                        f"WAL segment {seg.path} at byte offset {off}: metadata conflicts "
                        "with earlier segments"
                    )
            elif t == LINK:
                if off != 0:
                    raise WALCorruptError(
                        f"WAL segment {seg.path} is corrupt at byte offset {off}: "
                        "segment link record in the middle of a segment"
                    )
                _, psize, pcrc = _LINK.unpack(body)
                if prev is not None and (psize != prev.size or pcrc != prev.last_crc):
                    raise WALCorruptError(
                        f"WAL segment {seg.path} at byte offset 0: previous segment "
                        f"{prev.name} ends at {prev.size} (expected {psize}) or has "
                        "different records than when this segment was cut"
                    )
        prev = seg
    if not matched:
        raise WALError(
            f"snapshot marker (index={base}, term={base_term}) not found in WAL {dirpath}"
        )
    assert metadata is not None  # every segment header carries it
    last_index = max(ents[-1].index if ents else base, max_marker)
    return WALState(metadata, hs, ents, snap, markers), segs, last_index


def valid_snapshot_markers(dirpath: str) -> list[SnapshotMetadata]:
    """Snapshot markers in the WAL whose index <= the last saved commit (read only).

    Use it to pick the newest ``.snap`` file the WAL can be opened at (etcd's
    ValidSnapshotEntries). A torn tail is tolerated and not repaired.
    """
    markers: list[SnapshotMetadata] = []
    commit = 0
    for seg in _read_segments(os.path.abspath(dirpath), None, repair=False):
        for _off, body in seg.records:
            t = body[0]
            if t == SNAPSHOT:
                _, index, term = _SNAP.unpack(body)
                markers.append(SnapshotMetadata(index, term))
            elif t == STATE:
                commit = _STATE.unpack(body)[3]
    return [m for m in markers if m.index <= commit]
