"""In-memory index from user key to its revision history (etcd's keyIndex / treeIndex).

A revision ``(main, sub)`` is packed into one int, ``main << 32 | sub``: packed ints order
exactly like revisions and cost far less than tuples on the hot path. ``sub`` counts the
changes inside one transaction, so 2**32 is never reached.

Range ends follow the API convention: ``end == b""`` means the single key ``key``;
``end == b"\\x00"`` means every key ``>= key``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from sortedcontainers import SortedList

SUB_BITS = 32
SUB_MASK = (1 << SUB_BITS) - 1


def pack_rev(main: int, sub: int = 0) -> int:
    return (main << SUB_BITS) | sub


def rev_main(rev: int) -> int:
    return rev >> SUB_BITS


def rev_sub(rev: int) -> int:
    return rev & SUB_MASK


class RevisionNotFound(Exception):
    """The key has no live generation to tombstone."""


class Generation:
    """One lifecycle of a key: from its creation to its tombstone (if any)."""

    __slots__ = ("ver", "created", "revs")

    def __init__(self, ver: int = 0, created: int = 0, revs: list[int] | None = None) -> None:
        self.ver = ver
        self.created = created  # packed revision of the creating put
        self.revs: list[int] = revs if revs is not None else []

    def __repr__(self) -> str:
        revs = [(r >> SUB_BITS, r & SUB_MASK) for r in self.revs]
        return f"Generation(ver={self.ver}, created={self.created >> SUB_BITS}, revs={revs})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Generation)
            and self.ver == other.ver
            and self.created == other.created
            and self.revs == other.revs
        )


class KeyIndex:
    """Revision history of one key as a list of generations (the last is the current one)."""

    __slots__ = ("key", "modified", "generations", "lease")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = 0
        self.generations: list[Generation] = []
        # Lease of the live revision; only meaningful at the latest revision.
        self.lease = 0

    def __repr__(self) -> str:
        return f"KeyIndex({self.key!r}, modified={self.modified >> SUB_BITS}, {self.generations})"

    def put(self, rev: int) -> None:
        if rev <= self.modified:
            raise ValueError(f"put with revision {rev >> SUB_BITS} not after modified")
        gens = self.generations
        if not gens:
            g = Generation()
            gens.append(g)
        else:
            g = gens[-1]
        if not g.revs:
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: int, modified: int, ver: int) -> None:
        """First record seen for this key at startup: older history may be compacted away."""
        if self.generations:
            raise ValueError("restore on a non-empty key index")
        self.modified = modified
        self.generations.append(Generation(ver, created, [modified]))

    def restore_tombstone(self, rev: int) -> None:
        self.restore(0, rev, 1)
        self.generations.append(Generation())

    def tombstone(self, rev: int) -> None:
        gens = self.generations
        if not gens or not gens[-1].revs:
            raise RevisionNotFound(self.key)
        self.put(rev)
        gens.append(Generation())
        self.lease = 0

    def is_live(self) -> bool:
        """Whether the key exists at the latest revision."""
        return bool(self.generations[-1].revs)

    def find_generation(self, at_rev: int) -> Generation | None:
        gens = self.generations
        last = len(gens) - 1
        i = last
        while i >= 0:
            g = gens[i]
            revs = g.revs
            if not revs:
                i -= 1
                continue
            if i != last and (revs[-1] >> SUB_BITS) <= at_rev:
                return None
            if (revs[0] >> SUB_BITS) <= at_rev:
                return g
            i -= 1
        return None

    def get_rev(self, at_rev: int) -> int | None:
        """Packed revision of the key's value at main revision ``at_rev``, or None."""
        g = self.generations[-1]
        revs = g.revs
        if revs and (revs[-1] >> SUB_BITS) <= at_rev:
            return revs[-1]  # live and unchanged since at_rev: the common case
        g = self.find_generation(at_rev)
        if g is None:
            return None
        revs = g.revs
        n = bisect_left(revs, (at_rev + 1) << SUB_BITS) - 1
        return revs[n] if n >= 0 else None

    def get(self, at_rev: int) -> tuple[int, int, int] | None:
        """(mod, created, version) at main revision ``at_rev`` (packed revisions), or None."""
        g = self.find_generation(at_rev)
        if g is None:
            return None
        revs = g.revs
        n = bisect_left(revs, (at_rev + 1) << SUB_BITS) - 1
        if n < 0:
            return None
        return revs[n], g.created, g.ver - (len(revs) - n - 1)

    def since(self, rev: int) -> list[int]:
        """Revisions with main >= rev, keeping only the last sub of each main."""
        since = rev << SUB_BITS
        gens = self.generations
        gi = len(gens) - 1
        while gi > 0:
            g = gens[gi]
            if g.revs and since > g.created:
                break
            gi -= 1
        out: list[int] = []
        last = -1
        for g in gens[gi:]:
            for r in g.revs:
                if r < since:
                    continue
                m = r >> SUB_BITS
                if m == last:
                    out[-1] = r
                    continue
                out.append(r)
                last = m
        return out

    def _do_compact(self, at_rev: int, available: set[int]) -> tuple[int, int]:
        gens = self.generations
        gen_idx = 0
        g = gens[0]
        # Skip generations whose tombstone is before at_rev (a tombstone AT at_rev stays).
        while gen_idx < len(gens) - 1:
            if (g.revs[-1] >> SUB_BITS) >= at_rev:
                break
            gen_idx += 1
            g = gens[gen_idx]
        rev_idx = -1
        revs = g.revs
        for i in range(len(revs) - 1, -1, -1):
            if (revs[i] >> SUB_BITS) <= at_rev:
                available.add(revs[i])
                rev_idx = i
                break
        return gen_idx, rev_idx

    def compact(self, at_rev: int, available: set[int]) -> None:
        """Drop revisions with main <= at_rev except the one still visible at at_rev."""
        if self.is_empty():
            raise ValueError("compact on an empty key index")
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx != -1:
            del g.revs[:rev_idx]
        if gen_idx:
            del self.generations[:gen_idx]

    def keep(self, at_rev: int, available: set[int]) -> None:
        """Add the revisions compact(at_rev) would keep, minus a tombstone AT at_rev.

        The exclusion keeps hashes equal to etcd versions that dropped such tombstones.
        """
        if self.is_empty():
            return
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx == len(g.revs) - 1 and gen_idx != len(self.generations) - 1:
            available.discard(g.revs[rev_idx])

    def is_empty(self) -> bool:
        gens = self.generations
        return not gens or (len(gens) == 1 and not gens[0].revs)


class TreeIndex:
    """All keys' KeyIndex, with a sorted key list for ordered range scans."""

    __slots__ = ("map", "keys", "dead")

    def __init__(self) -> None:
        self.map: dict[bytes, KeyIndex] = {}
        self.keys: SortedList = SortedList()
        # Keys deleted at the latest revision (still indexed until compaction): with them,
        # counting live keys in a range at the latest revision is two bisections.
        self.dead: SortedList = SortedList()

    def __len__(self) -> int:
        return len(self.map)

    def rebuild_order(self) -> None:
        """Re-sort the key lists from the map (after bulk inserts with ``insert_unordered``)."""
        self.keys = SortedList(self.map)
        self.dead = SortedList(k for k, ki in self.map.items() if not ki.is_live())

    def insert_unordered(self, ki: KeyIndex) -> None:
        """Add a KeyIndex without updating the sorted key list (bulk restore)."""
        self.map[ki.key] = ki

    def key_index(self, key: bytes) -> KeyIndex | None:
        return self.map.get(key)

    def put(self, key: bytes, rev: int) -> KeyIndex:
        ki = self.map.get(key)
        if ki is None:
            ki = KeyIndex(key)
            ki.put(rev)
            self.map[key] = ki
            self.keys.add(key)
        else:
            if not ki.generations[-1].revs:
                self.dead.remove(key)
            ki.put(rev)
        return ki

    def tombstone(self, key: bytes, rev: int) -> None:
        ki = self.map.get(key)
        if ki is None:
            raise RevisionNotFound(key)
        ki.tombstone(rev)
        self.dead.add(key)

    def count_latest(self, key: bytes, end: bytes) -> int:
        """Live keys in [key, end) at the latest revision, without visiting them."""
        if not end:
            ki = self.map.get(key)
            return 1 if ki is not None and ki.generations[-1].revs else 0
        keys, dead = self.keys, self.dead
        if end == b"\x00":
            n = len(keys) - keys.bisect_left(key)
            return n - (len(dead) - dead.bisect_left(key)) if dead else n
        if key >= end:
            return 0
        n = keys.bisect_left(end) - keys.bisect_left(key)
        return n - (dead.bisect_left(end) - dead.bisect_left(key)) if dead else n

    def get(self, key: bytes, at_rev: int) -> tuple[int, int, int] | None:
        ki = self.map.get(key)
        if ki is None:
            return None
        return ki.get(at_rev)

    def iter_range(self, key: bytes, end: bytes) -> Iterator[KeyIndex]:
        """KeyIndex objects in [key, end) in key order (end b"": just key; b"\\x00": no bound)."""
        m = self.map
        if not end:
            ki = m.get(key)
            if ki is not None:
                yield ki
            return
        for k in self._irange(key, end):
            yield m[k]

    def _irange(self, key: bytes, end: bytes) -> Iterator[bytes]:
        # end is non-empty here
        if end == b"\x00":
            return self.keys.irange(minimum=key)
        if key >= end:
            return iter(())
        return self.keys.irange(key, end, inclusive=(True, False))

    def revisions(
        self, key: bytes, end: bytes, at_rev: int, limit: int = 0, latest: bool = False
    ) -> tuple[list[int], int]:
        """Revisions of keys live at at_rev (at most ``limit`` if > 0) and their total count.

        ``latest``: at_rev is the newest revision in the index, so a limited scan can stop
        early and take the total from ``count_latest``.
        """
        if not end:
            ki = self.map.get(key)
            if ki is None:
                return [], 0
            r = ki.get_rev(at_rev)
            return ([r], 1) if r is not None else ([], 0)
        revs: list[int] = []
        if latest and limit > 0:
            for ki in self.iter_range(key, end):
                g = ki.generations[-1]
                if g.revs:
                    revs.append(g.revs[-1])
                    if len(revs) >= limit:
                        break
            return revs, self.count_latest(key, end)
        total = 0
        m = self.map
        for k in self._irange(key, end):
            ki = m[k]
            last = ki.generations[-1].revs
            if last and (last[-1] >> SUB_BITS) <= at_rev:
                r = last[-1]  # live and unchanged since at_rev: the common case
            else:
                r = ki.get_rev(at_rev)
                if r is None:
                    continue
            if limit <= 0 or total < limit:
                revs.append(r)
            total += 1
        return revs, total

    def count_revisions(self, key: bytes, end: bytes, at_rev: int, latest: bool = False) -> int:
        if latest:
            return self.count_latest(key, end)
        total = 0
        for ki in self.iter_range(key, end):
            if ki.get_rev(at_rev) is not None:
                total += 1
        return total

    def range(self, key: bytes, end: bytes, at_rev: int) -> tuple[list[bytes], list[int]]:
        """Keys live at at_rev in [key, end) and their revisions."""
        keys: list[bytes] = []
        revs: list[int] = []
        for ki in self.iter_range(key, end):
            r = ki.get_rev(at_rev)
            if r is not None:
                keys.append(ki.key)
                revs.append(r)
        return keys, revs

    def compact(self, rev: int) -> set[int]:
        """Compact every key at main revision rev; returns the packed revisions to keep."""
        available: set[int] = set()
        removed: list[bytes] = []
        for ki in self.map.values():
            ki.compact(rev, available)
            if ki.is_empty():
                removed.append(ki.key)
        if removed:
            m = self.map
            for k in removed:
                del m[k]
            if len(removed) * 8 > len(m):
                self.rebuild_order()
            else:
                for k in removed:
                    self.keys.remove(k)
                    self.dead.discard(k)
        return available

    def keep(self, rev: int) -> set[int]:
        available: set[int] = set()
        for ki in self.map.values():
            ki.keep(rev, available)
        return available
