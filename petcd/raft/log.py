"""The Raft log: stable storage plus the unstable (not yet persisted) tail.

Follows etcd's raft/log.go and log_unstable.go.
"""

from __future__ import annotations

from .storage import CompactedError, MemoryStorage, UnavailableError, limit_size
from .types import Entry, Snapshot


class Unstable:
    """Entries and/or a snapshot that the application has not persisted yet.

    ``entries[i]`` has index ``offset + i``. When ``entries`` is empty, ``offset``
    is always last_index + 1 of the whole log, so an append at the end is O(1).
    """

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            s = self.snapshot
            if s is not None and s.metadata.index == i:
                return s.metadata.term
            return None
        k = i - self.offset
        if k < len(self.entries):
            return self.entries[k].term
        return None

    def stable_to(self, i: int, t: int) -> None:
        # Only if the entry is still the one that was persisted (it may have been
        # replaced by a new leader's entry at the same index since).
        if i >= self.offset and self.maybe_term(i) == t:
            del self.entries[: i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = s.metadata.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        n = self.offset + len(self.entries)
        if after == n:
            self.entries.extend(ents)
        elif after <= self.offset:
            # Replaces everything unstable; storage truncates its own suffix on append.
            self.offset = after
            self.entries = list(ents)
        else:
            self.entries = self.entries[: after - self.offset] + ents


class RaftLog:
    __slots__ = ("storage", "unstable", "committed", "applied", "max_next_ents_size")

    def __init__(self, storage: MemoryStorage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        self.unstable = Unstable(storage.last_index() + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    # -- indexes and terms -------------------------------------------------------

    def first_index(self) -> int:
        s = self.unstable.snapshot
        if s is not None:
            return s.metadata.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable
        if u.entries:
            return u.offset + len(u.entries) - 1
        if u.snapshot is not None:
            return u.snapshot.metadata.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term of entry ``i``; 0 outside [first-1, last]. Raises CompactedError/UnavailableError."""
        u = self.unstable
        k = i - u.offset
        if 0 <= k < len(u.entries):
            return u.entries[k].term
        if i < self.first_index() - 1 or i > self.last_index():
            return 0
        t = u.maybe_term(i)
        if t is not None:
            return t
        return self.storage.term(i)

    def zero_term_on_compacted(self, i: int) -> int:
        try:
            return self.term(i)
        except CompactedError:
            return 0

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending -------------------------------------------------------------------

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise AssertionError(f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def append_one(self, e: Entry) -> None:
        """Hot path for a leader's proposal: ``e.index`` must be last_index + 1."""
        self.unstable.entries.append(e)

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry of ``ents`` that is not in the log (0 if all are)."""
        if not ents:
            return 0
        first = ents[0]
        if first.index > self.last_index():
            return first.index  # pure append, the common case
        last = ents[-1]
        if self.match_term(last.index, last.term):
            return 0  # log matching: every earlier entry matches too
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term (the reject hint)."""
        if index > self.last_index():
            return index, 0
        while True:
            try:
                t = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if t <= term:
                return index, t
            index -= 1

    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: list[Entry]
    ) -> int | None:
        """Follower-side AppendEntries; returns the last new index, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        lastnew = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise AssertionError(
                    f"entry {ci} conflicts with committed entry [committed({self.committed})]"
                )
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, lastnew))
        return lastnew

    # -- commit / apply / stable -------------------------------------------------------

    def commit_to(self, tocommit: int) -> None:
        if self.committed < tocommit:
            if self.last_index() < tocommit:
                raise AssertionError(
                    f"tocommit({tocommit}) is out of range [lastIndex({self.last_index()})]"
                )
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        if max_index > self.committed and self.zero_term_on_compacted(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise AssertionError(
                f"applied({i}) is out of range [prevApplied({self.applied}), committed({self.committed})]"
            )
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    # -- reading ---------------------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return self.unstable.entries[:]

    def has_next_ents(self) -> bool:
        return self.committed + 1 > max(self.applied + 1, self.first_index())

    def next_ents(self) -> list[Entry]:
        """Committed entries not yet applied."""
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    def entries(self, i: int, max_size: int | None = None) -> list[Entry]:
        last = self.last_index()
        if i > last:
            return []
        return self.slice(i, last + 1, max_size)

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi). Raises CompactedError if lo is compacted."""
        if lo > hi:
            raise AssertionError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise AssertionError(f"slice[{lo},{hi}) out of bound [{fi},{self.last_index()}]")
        if lo == hi:
            return []
        u = self.unstable
        uoff = u.offset
        if lo >= uoff:
            return limit_size(u.entries[lo - uoff : hi - uoff], max_size)
        shi = min(hi, uoff)
        ents = self.storage.entries(lo, shi, max_size)
        if len(ents) < shi - lo or hi <= uoff:
            return ents  # limited by size, or nothing unstable wanted
        return limit_size(ents + u.entries[: hi - uoff], max_size)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, s: Snapshot) -> None:
        self.committed = s.metadata.index
        self.unstable.restore(s)
