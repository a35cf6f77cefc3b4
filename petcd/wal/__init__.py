"""Write-ahead log segments and Raft snapshot files."""

from petcd.wal.snap import SnapshotError, Snapshotter
from petcd.wal.wal import (
    WAL,
    WALCorruptError,
    WALError,
    WALState,
    decode_entries,
    encode_entries,
    valid_snapshot_markers,
    wal_exists,
)

__all__ = [
    "WAL",
    "WALCorruptError",
    "WALError",
    "WALState",
    "SnapshotError",
    "Snapshotter",
    "decode_entries",
    "encode_entries",
    "valid_snapshot_markers",
    "wal_exists",
]
