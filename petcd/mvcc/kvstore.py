"""The MVCC key-value store: revisions, read/write transactions, compaction, hashes.

Layout (etcd-compatible): the ``key`` bucket maps ``BE64(main) '_' BE64(sub)`` (plus ``'t'``
for a tombstone) to a serialized ``mvccpb.KeyValue``; the in-memory TreeIndex maps each user
key to its revisions. Reads return **raw serialized KeyValue bytes**; callers parse only when
they need fields.

Everything runs on the thread that owns the Backend (the server's event loop), one
transaction at a time: ``write()`` ... ``end()`` must not interleave with another write.

Compaction: ``compact(rev)`` validates, persists ``scheduledCompactRev``, compacts the index
and queues the physical deletion. The caller drives deletion with ``compact_step()``
(bounded batches, each committed; call it between applied entries, never in the middle of
one) or ``run_compaction()`` to finish at once. ``finishedCompactRev`` is written by the
batch that completes it; an unfinished compaction is resumed when the store is reopened.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from petcd.backend.backend import BUCKET_KEY, BUCKET_META, Backend
from petcd.errors import ErrCompacted, ErrFutureRev
from petcd.mvcc.key_index import SUB_BITS, SUB_MASK, KeyIndex, TreeIndex
from petcd.proto.mvccpb.kv_pb2 import KeyValue
from petcd.wire import varint as encode_varint

EVENT_PUT = 0  # mvccpb.Event.PUT
EVENT_DELETE = 1  # mvccpb.Event.DELETE

# An event: (type, key, serialized KeyValue). For a DELETE the KeyValue holds the key and
# mod_revision (what a watch response carries).
Event = tuple[int, bytes, bytes]
EventsCallback = Callable[[int, list[Event]], None]
LeaseHook = Callable[[bytes, int, int], None]

_REV = struct.Struct(">QBQ")
_BE64 = struct.Struct(">Q")
_UNDERSCORE = 0x5F

META_CONSISTENT_INDEX = b"consistent_index"
META_TERM = b"term"
META_SCHEDULED_COMPACT = b"scheduledCompactRev"
META_FINISHED_COMPACT = b"finishedCompactRev"

COMPACTION_BATCH_LIMIT = 1000


def rev_to_bytes(rev: int) -> bytes:
    """17-byte key-bucket key of a packed revision."""
    return _REV.pack(rev >> SUB_BITS, _UNDERSCORE, rev & SUB_MASK)


def bytes_to_rev(b: bytes) -> int:
    main, _, sub = _REV.unpack_from(b)
    return (main << SUB_BITS) | sub


def _key_field(key: bytes) -> bytes:
    # KeyValue{key}: field 1, length-delimited (alone, it is a tombstone's value).
    return b"\x0a" + encode_varint(len(key)) + key


@dataclass(slots=True)
class RangeResult:
    kvs: list[bytes]  # serialized KeyValue, in key order
    count: int  # keys live in the range at the read revision (not capped by limit)
    rev: int  # store revision of the read view (the response header revision)


class KVStore:
    """MVCC store over a Backend. Revision 1 is the empty store; the first write is 2."""

    def __init__(self, backend: Backend, *, lease_hook: LeaseHook | None = None) -> None:
        self.backend = backend
        self.index = TreeIndex()
        self.rev = 1
        # -1 until the first compaction, like etcd (HashKV reports it as is).
        self.compact_rev = -1
        self.consistent_index = 0
        self.consistent_term = 0
        self.on_events: list[EventsCallback] = []
        self.lease_hook = lease_hook
        self._ci_written = (0, 0)
        self._compaction: _CompactionJob | None = None
        self._restore()
        backend.pre_commit_hook.append(self._pre_commit)

    # -- startup -------------------------------------------------------------------------

    def restore(self) -> None:
        """Rebuild from the backend after it was replaced by a snapshot image."""
        self.index = TreeIndex()
        self.rev = 1
        self.compact_rev = -1
        self.consistent_index = 0
        self.consistent_term = 0
        self._compaction = None
        self._restore()

    def _restore(self) -> None:
        b = self.backend
        ci = b.get(BUCKET_META, META_CONSISTENT_INDEX)
        if ci:
            self.consistent_index = _BE64.unpack(ci)[0]
        term = b.get(BUCKET_META, META_TERM)
        if term:
            self.consistent_term = _BE64.unpack(term)[0]
        self._ci_written = (self.consistent_index, self.consistent_term)
        finished = b.get(BUCKET_META, META_FINISHED_COMPACT)
        scheduled = b.get(BUCKET_META, META_SCHEDULED_COMPACT)
        finished_rev = bytes_to_rev(finished) >> SUB_BITS if finished else -1
        scheduled_rev = bytes_to_rev(scheduled) >> SUB_BITS if scheduled else 0
        if scheduled_rev <= finished_rev:
            scheduled_rev = 0
        self.compact_rev = finished_rev

        idx = self.index
        m = idx.map
        parse = KeyValue.FromString
        current = 1
        for k, v in b.for_each(BUCKET_KEY):
            rev = bytes_to_rev(k)
            kv = parse(v)
            key = kv.key
            ki = m.get(key)
            tomb = len(k) == 18
            if ki is not None:
                if tomb:
                    if ki.is_live():
                        ki.tombstone(rev)
                else:
                    ki.put(rev)
                    ki.lease = kv.lease
            else:
                ki = KeyIndex(key)
                if tomb:
                    ki.restore_tombstone(rev)
                else:
                    ki.restore(kv.create_revision << SUB_BITS, rev, kv.version)
                    ki.lease = kv.lease
                idx.insert_unordered(ki)
            current = rev >> SUB_BITS
        idx.rebuild_order()
        # Compaction may have removed the newest revisions' records (tombstones), and the
        # revision must never go backwards.
        self.rev = max(current, self.compact_rev, scheduled_rev)
        if scheduled_rev:
            self._schedule_compaction(scheduled_rev)
            self.run_compaction()
        if self.lease_hook is not None:
            for key, lease in self.leased_keys():
                self.lease_hook(key, 0, lease)

    def leased_keys(self) -> Iterator[tuple[bytes, int]]:
        """(key, lease) for every live key attached to a lease (for lessor recovery)."""
        for ki in self.index.map.values():
            if ki.lease and ki.is_live():
                yield ki.key, ki.lease

    def _pre_commit(self) -> None:
        cur = (self.consistent_index, self.consistent_term)
        if cur != self._ci_written:
            b = self.backend
            b.put(BUCKET_META, META_CONSISTENT_INDEX, _BE64.pack(cur[0]))
            if cur[1]:
                b.put(BUCKET_META, META_TERM, _BE64.pack(cur[1]))
            self._ci_written = cur

    # -- transactions --------------------------------------------------------------------

    @property
    def first_rev(self) -> int:
        return self.compact_rev

    def read(self) -> TxnRead:
        return TxnRead(self)

    def write(self) -> TxnWrite:
        return TxnWrite(self)

    def range(
        self,
        key: bytes,
        end: bytes = b"",
        *,
        rev: int = 0,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """Read at ``rev`` (<= 0: latest). end b"": one key; end b"\\x00": no upper bound."""
        return self._range(key, end, self.rev, rev, limit, count_only)

    def get_raw(self, key: bytes, rev: int = 0) -> bytes | None:
        """Serialized KeyValue of one key at ``rev`` (<= 0: latest), or None: the fast path."""
        cur = self.rev
        if rev <= 0:
            rev = cur
        elif rev > cur:
            raise ErrFutureRev()
        if rev < self.compact_rev:
            raise ErrCompacted()
        ki = self.index.map.get(key)
        if ki is None:
            return None
        last = ki.generations[-1].revs
        if last and (last[-1] >> SUB_BITS) <= rev:
            r = last[-1]
        else:
            r = ki.get_rev(rev)
            if r is None:
                return None
        v = self.backend.get(BUCKET_KEY, _REV.pack(r >> SUB_BITS, _UNDERSCORE, r & SUB_MASK))
        if v is None:
            raise RuntimeError(f"mvcc: revision {r >> SUB_BITS} of {key!r} missing")
        return v

    def _range(
        self, key: bytes, end: bytes, cur_rev: int, rev: int, limit: int, count_only: bool
    ) -> RangeResult:
        if rev > cur_rev:
            raise ErrFutureRev()
        if rev <= 0:
            rev = cur_rev
        if rev < self.compact_rev:
            raise ErrCompacted()
        idx = self.index
        # cur_rev is the newest revision in the index (a write txn's own included)
        latest = rev == cur_rev
        if count_only:
            return RangeResult([], idx.count_revisions(key, end, rev, latest), cur_rev)
        b = self.backend
        if not end:
            ki = idx.map.get(key)
            if ki is None:
                return RangeResult([], 0, cur_rev)
            r = ki.get_rev(rev)
            if r is None:
                return RangeResult([], 0, cur_rev)
            v = b.get(BUCKET_KEY, _REV.pack(r >> SUB_BITS, _UNDERSCORE, r & SUB_MASK))
            if v is None:
                raise RuntimeError(f"mvcc: revision {r >> SUB_BITS} of {key!r} missing")
            return RangeResult([v], 1, cur_rev)
        revs, total = idx.revisions(key, end, rev, limit, latest)
        pack = _REV.pack
        kvs = b.get_many(BUCKET_KEY, [pack(r >> SUB_BITS, _UNDERSCORE, r & SUB_MASK) for r in revs])
        if None in kvs:
            raise RuntimeError("mvcc: range failed to find a revision in the backend")
        return RangeResult(kvs, total, cur_rev)

    def latest_meta(self, key: bytes, end: bytes = b"") -> list[tuple[int, int, int, int]]:
        """(mod_revision, create_revision, version, lease) of live keys, from the index only.

        Valid at the latest revision only (compares evaluate there without reading values).
        """
        out = []
        for ki in self.index.iter_range(key, end):
            g = ki.generations[-1]
            if g.revs:
                out.append((g.revs[-1] >> SUB_BITS, g.created >> SUB_BITS, g.ver, ki.lease))
        return out

    # -- compaction ----------------------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Compact history at ``rev``; reads below it fail from now on.

        Raises ErrCompacted if rev <= compact_rev and ErrFutureRev if rev > current rev.
        """
        if self._compaction is not None:
            self.run_compaction()
        if rev <= self.compact_rev:
            raise ErrCompacted()
        if rev > self.rev:
            raise ErrFutureRev()
        self.compact_rev = rev
        b = self.backend
        b.put(BUCKET_META, META_SCHEDULED_COMPACT, rev_to_bytes(rev << SUB_BITS))
        b.commit()
        self._schedule_compaction(rev)

    def _schedule_compaction(self, rev: int) -> None:
        self.compact_rev = rev
        keep = self.index.compact(rev)
        self._compaction = _CompactionJob(rev, keep)

    @property
    def compaction_pending(self) -> bool:
        return self._compaction is not None

    def compact_step(self, batch: int = COMPACTION_BATCH_LIMIT) -> bool:
        """Physically delete one batch of compacted revisions and commit.

        Returns True while more work remains.
        """
        job = self._compaction
        if job is None:
            return False
        b = self.backend
        cur = b.cursor(BUCKET_KEY)
        end = job.end
        keep = job.keep
        done = not cur.set_range(job.next)
        visited = 0
        deleted = 0
        while not done and visited < batch:
            k = cur.key()
            if not k or k >= end:
                done = True
                break
            visited += 1
            if bytes_to_rev(k) in keep:
                if not cur.next():
                    done = True
            else:
                cur.delete()
                deleted += 1
                if not cur.key():
                    done = True
        if not done:
            job.next = cur.key()
        b.pending += deleted
        if done:
            b.put(BUCKET_META, META_FINISHED_COMPACT, rev_to_bytes(job.rev << SUB_BITS))
            self._compaction = None
        b.commit()
        return not done

    def run_compaction(self) -> None:
        while self.compact_step(10 * COMPACTION_BATCH_LIMIT):
            pass

    # -- hashes --------------------------------------------------------------------------

    def hash(self) -> int:
        return self.backend.hash()

    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """(hash, compact_rev, hash_rev) of the MVCC history up to ``rev`` (0: current).

        Like etcd's HashByRev: covers key-bucket records with main <= rev, skipping those
        below the compaction that compaction will remove, and a tombstone AT the compact
        revision (so stores that did or did not drop it agree).
        """
        compact_rev, current = self.compact_rev, self.rev
        if rev > 0 and rev < compact_rev:
            raise ErrCompacted()
        if rev > 0 and rev > current:
            raise ErrFutureRev()
        if rev <= 0:
            rev = current
        keep = self.index.keep(rev)
        upper = _REV.pack(rev + 1, _UNDERSCORE, 0)
        lower = (compact_rev + 1) << SUB_BITS
        crc = zlib.crc32
        h = crc(b"key")
        for k, v in self.backend.for_each(BUCKET_KEY):
            if k >= upper:
                break
            r = bytes_to_rev(k)
            if r < lower and keep and r not in keep:
                continue
            if len(k) == 18 and (r >> SUB_BITS) == compact_rev:
                continue
            h = crc(v, crc(k, h))
        return h, compact_rev, rev


@dataclass(slots=True)
class _CompactionJob:
    rev: int
    keep: set[int]
    next: bytes = b"\x00"

    @property
    def end(self) -> bytes:
        return _REV.pack(self.rev + 1, _UNDERSCORE, 0)


class TxnRead:
    """A read view at the store's current revision."""

    __slots__ = ("_s", "rev")

    def __init__(self, store: KVStore) -> None:
        self._s = store
        self.rev = store.rev

    @property
    def first_rev(self) -> int:
        return self._s.compact_rev

    def range(
        self,
        key: bytes,
        end: bytes = b"",
        *,
        rev: int = 0,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        return self._s._range(key, end, self.rev, rev, limit, count_only)

    def end(self) -> list[Event]:
        return []


class TxnWrite:
    """One atomic change: every put/delete shares main revision rev+1, subs 0, 1, 2, ..."""

    __slots__ = ("_s", "rev", "events")

    def __init__(self, store: KVStore) -> None:
        self._s = store
        self.rev = store.rev  # the revision the transaction started from
        self.events: list[Event] = []

    @property
    def first_rev(self) -> int:
        return self._s.compact_rev

    @property
    def changed(self) -> bool:
        return bool(self.events)

    def range(
        self,
        key: bytes,
        end: bytes = b"",
        *,
        rev: int = 0,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """Reads see this transaction's own earlier writes."""
        cur = self.rev + 1 if self.events else self.rev
        return self._s._range(key, end, cur, rev, limit, count_only)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write key=value; returns the new main revision."""
        s = self._s
        rev = self.rev + 1
        sub = len(self.events)
        idx = s.index
        ki = idx.map.get(key)
        if ki is not None and ki.generations[-1].revs:
            g = ki.generations[-1]
            create = g.created >> SUB_BITS
            ver = g.ver + 1
            old_lease = ki.lease
        else:
            create = rev
            ver = 1
            old_lease = 0
        # KeyValue's wire form built directly (fields 1-6 in order, zero values omitted, as
        # SerializeToString writes them): cheaper than a message object on every put.
        kv = b"".join((
            _key_field(key),
            b"\x10", encode_varint(create), b"\x18", encode_varint(rev),
            b"\x20", encode_varint(ver),
            (b"\x2a" + encode_varint(len(value)) + value) if value else b"",
            (b"\x30" + encode_varint(lease)) if lease else b"",
        ))
        s.backend.seq_put(BUCKET_KEY, _REV.pack(rev, _UNDERSCORE, sub), kv)
        packed = (rev << SUB_BITS) | sub
        if ki is None or not ki.generations[-1].revs:
            ki = idx.put(key, packed)
        else:
            ki.put(packed)
        ki.lease = lease
        self.events.append((EVENT_PUT, key, kv))
        if old_lease != lease and s.lease_hook is not None:
            s.lease_hook(key, old_lease, lease)
        return rev

    def delete_range(self, key: bytes, end: bytes = b"") -> tuple[int, int]:
        """Delete live keys in [key, end); returns (deleted, revision after this op)."""
        s = self._s
        at = self.rev + 1 if self.events else self.rev
        kis = [ki for ki in s.index.iter_range(key, end) if ki.get_rev(at) is not None]
        if not kis:
            return 0, at
        rev = self.rev + 1
        seq_put = s.backend.seq_put
        dead_add = s.index.dead.add
        events = self.events
        hook = s.lease_hook
        rev_suffix = b"\x18" + encode_varint(rev)
        for ki in kis:
            sub = len(events)
            tomb = _key_field(ki.key)
            seq_put(BUCKET_KEY, _REV.pack(rev, _UNDERSCORE, sub) + b"t", tomb)
            old_lease = ki.lease
            ki.tombstone((rev << SUB_BITS) | sub)
            dead_add(ki.key)
            events.append((EVENT_DELETE, ki.key, tomb + rev_suffix))
            if old_lease and hook is not None:
                hook(ki.key, old_lease, 0)
        return len(kis), rev

    def end(self) -> list[Event]:
        """Publish the transaction: the store revision moves iff something changed."""
        events = self.events
        if events:
            s = self._s
            rev = self.rev + 1
            s.rev = rev
            for cb in s.on_events:
                cb(rev, events)
        return events
