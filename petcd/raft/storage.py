"""The stable (persisted) Raft log, after etcd's raft/storage.go MemoryStorage.

The server appends every Ready's entries here after they reach the WAL, so this
holds exactly what is durable. Index ``offset`` (``_ents[0]``) is a dummy entry
carrying the index and term of the last compaction point / snapshot.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import attrgetter

from .types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata

# Rough per-entry framing cost (protobuf tags and varints) used for size limits.
ENTRY_OVERHEAD = 16

_data = attrgetter("data")


class RaftError(Exception):
    """Base class of the Raft package's errors."""


class CompactedError(RaftError):
    """The requested index is older than the storage's compaction point."""


class UnavailableError(RaftError):
    """The requested index is not (yet) in the storage."""


class SnapOutOfDateError(RaftError):
    """The snapshot is older than the one the storage already has."""


class SnapshotTemporarilyUnavailableError(RaftError):
    """The snapshot cannot be produced right now; the leader retries later."""


def entry_size(e: Entry) -> int:
    return len(e.data) + ENTRY_OVERHEAD


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """The longest prefix of ``ents`` within ``max_size`` bytes, but at least one entry."""
    n = len(ents)
    if max_size is None or n <= 1:
        return ents
    # Cumulative sizes in C; only the binary search probes run Python code.
    cum = list(accumulate(map(len, map(_data, ents))))
    if cum[-1] + ENTRY_OVERHEAD * n <= max_size:
        return ents
    k = bisect_right(range(n), max_size, key=lambda i: cum[i] + ENTRY_OVERHEAD * (i + 1))
    return ents[: max(k, 1)]


class MemoryStorage:
    """In-memory stable log plus hard state and latest snapshot."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- state ---------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        cs = self._snapshot.metadata.conf_state
        hs = self._hard_state
        return HardState(hs.term, hs.vote, hs.commit), ConfState(list(cs.voters), list(cs.learners))

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = HardState(hs.term, hs.vote, hs.commit)

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    # -- log -----------------------------------------------------------------

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int:
        off = self._ents[0].index
        if index < off:
            raise CompactedError(index)
        i = index - off
        if i >= len(self._ents):
            raise UnavailableError(index)
        return self._ents[i].term

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), limited to ``max_size`` bytes (at least one is returned)."""
        off = self._ents[0].index
        if lo <= off:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise ValueError(f"entries hi({hi}) is out of bound lastindex({self.last_index()})")
        if len(self._ents) == 1:
            raise UnavailableError(lo)
        return limit_size(self._ents[lo - off : hi - off], max_size)

    def append(self, entries: list[Entry]) -> None:
        """Append entries, replacing any conflicting suffix of the stored log."""
        if not entries:
            return
        first = self._ents[0].index + 1
        start = entries[0].index
        if start + len(entries) - 1 < first:
            return  # everything is already compacted
        if first > start:
            entries = entries[first - start :]
            start = first
        ents = self._ents
        off = start - ents[0].index
        if off < len(ents):
            del ents[off:]
            ents.extend(entries)
        elif off == len(ents):
            ents.extend(entries)
        else:
            raise ValueError(f"missing log entry [last: {self.last_index()}, append at: {start}]")

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with ``snap`` (used when a follower installs one)."""
        if snap.metadata.index <= self._snapshot.metadata.index:
            raise SnapOutOfDateError(snap.metadata.index)
        self._snapshot = snap
        self._ents = [Entry(snap.metadata.term, snap.metadata.index)]

    def create_snapshot(self, index: int, cs: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the applied state at ``index``; call compact() afterwards."""
        if index <= self._snapshot.metadata.index:
            raise SnapOutOfDateError(index)
        if index > self.last_index():
            raise ValueError(f"snapshot {index} is out of bound lastindex({self.last_index()})")
        if cs is None:
            cs = self._snapshot.metadata.conf_state
        cs = ConfState(list(cs.voters), list(cs.learners))
        self._snapshot = Snapshot(SnapshotMetadata(index, self.term(index), cs), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Discard entries up to and including ``index`` (kept as the dummy's index/term)."""
        off = self._ents[0].index
        if index <= off:
            raise CompactedError(index)
        if index > self.last_index():
            raise ValueError(f"compact {index} is out of bound lastindex({self.last_index()})")
        i = index - off
        ents = self._ents
        self._ents = [Entry(ents[i].term, index)] + ents[i + 1 :]
