"""Raft snapshot files: ``%016x-%016x.snap`` % (term, index) in the snap directory.

File format (petcd's own)::

    b"PSNAP001" | u64 body length | u32 crc32(body) | body
    body = u64 index | u64 term | u32 n_voters | u32 n_learners | voters (u64 each)
           | learners (u64 each) | data (opaque, the rest)

Writes are atomic (tmp file, fsync, rename, directory fsync), so a crash leaves either the
old set of files or the new one plus possibly a ``.tmp`` that is removed on the next start.
A file that fails to decode is renamed to ``*.broken`` and the next older one is tried,
like etcd. Received backend images (``%016x.snap.db``) live in the same directory; helpers
for their names and cleanup are here too.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable

from petcd.raft.types import ConfState, Snapshot, SnapshotMetadata
from petcd.wal.wal import _fsync_dir

log = logging.getLogger("petcd.wal")

__all__ = ["Snapshotter", "SnapshotError", "snap_name"]

_MAGIC = b"PSNAP001"
_FILE_HDR = struct.Struct("<8sQI")
_META = struct.Struct("<QQII")
_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_DB_RE = re.compile(r"^([0-9a-f]{16})\.snap\.db$")


class SnapshotError(Exception):
    """A snapshot file is missing, truncated or fails its checksum."""


def snap_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


def encode_snapshot(snapshot: Snapshot) -> bytes:
    m = snapshot.metadata
    voters = list(m.conf_state.voters)
    learners = list(m.conf_state.learners)
    body = b"".join(
        (
            _META.pack(m.index, m.term, len(voters), len(learners)),
            struct.pack(f"<{len(voters)}Q", *voters),
            struct.pack(f"<{len(learners)}Q", *learners),
            snapshot.data,
        )
    )
    return _FILE_HDR.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def decode_snapshot(buf: bytes) -> Snapshot:
    if len(buf) < _FILE_HDR.size:
        raise SnapshotError("file too short")
    magic, n, crc = _FILE_HDR.unpack_from(buf)
    if magic != _MAGIC:
        raise SnapshotError("bad magic")
    body = buf[_FILE_HDR.size :]
    if len(body) != n:
        raise SnapshotError(f"length {len(body)} != recorded {n}")
    if zlib.crc32(body) != crc:
        raise SnapshotError("crc mismatch")
    if n < _META.size:
        raise SnapshotError("body too short")
    index, term, nv, nl = _META.unpack_from(body)
    off = _META.size
    if off + 8 * (nv + nl) > n:
        raise SnapshotError("conf state runs past the end")
    voters = list(struct.unpack_from(f"<{nv}Q", body, off))
    off += 8 * nv
    learners = list(struct.unpack_from(f"<{nl}Q", body, off))
    off += 8 * nl
    meta = SnapshotMetadata(index, term, ConfState(voters, learners))
    return Snapshot(meta, body[off:])


class Snapshotter:
    """Saves and loads snapshot files in one directory (created if missing)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = os.path.abspath(dirpath)
        os.makedirs(self.dirpath, exist_ok=True)
        for name in os.listdir(self.dirpath):
            if name.endswith(".snap.tmp"):  # a save interrupted before its rename
                os.unlink(os.path.join(self.dirpath, name))

    def save(self, snapshot: Snapshot) -> str:
        """Write the snapshot atomically; returns its path. An index-0 snapshot is refused."""
        m = snapshot.metadata
        if m.index == 0:
            raise ValueError("refusing to save an empty snapshot (index 0)")
        path = os.path.join(self.dirpath, snap_name(m.term, m.index))
        tmp = path + ".tmp"
        buf = encode_snapshot(snapshot)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(self.dirpath)
        return path

    def snap_names(self) -> list[str]:
        """``.snap`` file names, newest first (fixed-width hex sorts by (term, index))."""
        names = [n for n in os.listdir(self.dirpath) if _NAME_RE.match(n)]
        names.sort(reverse=True)
        return names

    def load_file(self, name: str) -> Snapshot:
        """Decode one file; raises SnapshotError if it is damaged or misnamed."""
        path = os.path.join(self.dirpath, name)
        with open(path, "rb") as f:
            buf = f.read()
        snap = decode_snapshot(buf)
        m = snap.metadata
        if name != snap_name(m.term, m.index):
            raise SnapshotError(f"holds term {m.term} index {m.index}, not what its name says")
        return snap

    def _load_matching(self, match: set[tuple[int, int]] | None) -> Snapshot | None:
        for name in self.snap_names():
            if match is not None:
                m = _NAME_RE.match(name)
                assert m is not None
                if (int(m.group(2), 16), int(m.group(1), 16)) not in match:
                    continue
            try:
                return self.load_file(name)
            except (SnapshotError, OSError) as exc:
                path = os.path.join(self.dirpath, name)
                log.warning("snapshot %s is unreadable (%s); renaming to .broken", path, exc)
                try:
                    os.rename(path, path + ".broken")
                except OSError as rexc:
                    log.warning("cannot rename %s: %s", path, rexc)
        return None

    def load(self) -> Snapshot | None:
        """The newest valid snapshot, or None. Damaged files are renamed ``*.broken``."""
        return self._load_matching(None)

    def load_newest_available(self, wal_snaps: Iterable[SnapshotMetadata]) -> Snapshot | None:
        """The newest valid snapshot whose (index, term) is among the WAL's markers."""
        return self._load_matching({(s.index, s.term) for s in wal_snaps})

    def purge(self, max_snapshots: int) -> list[str]:
        """Keep the newest ``max_snapshots`` ``.snap`` files (0 = keep all); returns removed."""
        if max_snapshots <= 0:
            return []
        victims = self.snap_names()[max_snapshots:]
        for name in victims:
            os.unlink(os.path.join(self.dirpath, name))
        if victims:
            _fsync_dir(self.dirpath)
        return victims

    # -- received backend images -------------------------------------------------------

    def db_path(self, index: int) -> str:
        """Where the backend image for a snapshot at ``index`` is kept (etcd's name)."""
        return os.path.join(self.dirpath, f"{index:016x}.snap.db")

    def purge_db_before(self, index: int) -> list[str]:
        """Delete ``*.snap.db`` files for snapshots older than ``index``."""
        removed = []
        for name in os.listdir(self.dirpath):
            m = _DB_RE.match(name)
            if m is not None and int(m.group(1), 16) < index:
                os.unlink(os.path.join(self.dirpath, name))
                removed.append(name)
        return removed
