"""The watchable store: delivers MVCC events to watchers (etcd's watchableStore).

Watchers live in one of three places:

- **synced**: up to date; the write path hands them each revision's events directly.
- **unsynced**: behind (created with a past start revision, or back from being a victim);
  a background pass catches many of them up with one history scan of the key bucket.
- **victims**: their stream's queue was full; they keep the one batch they could not
  take and are retried on a short timer, then go through unsynced to catch up.

So a slow stream never blocks the apply loop and never makes the server buffer without
bound, and no event is lost: a watcher that cannot be caught up because its history was
compacted is cancelled with ``compact_revision`` set, which tells the client to resume.

Matching an event's key is a dict lookup for single-key watchers plus an interval stab
for range watchers (a centered interval tree, rebuilt lazily), not a scan of watchers.

Everything runs on the event loop thread that owns the KVStore; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from petcd.backend.backend import BUCKET_KEY
from petcd.mvcc.key_index import SUB_BITS
from petcd.mvcc.kvstore import _REV, EVENT_DELETE, EVENT_PUT, Event, KVStore, encode_varint

# etcd's constants (watchable_store.go, watcher.go, v3rpc/watch.go).
CHAN_BUF_LEN = 128  # data responses queued per stream before watchers become victims
MAX_WATCHERS_PER_SYNC = 512
WATCH_BATCH_MAX_REVS = 1000
SYNC_INTERVAL = 0.1
VICTIM_INTERVAL = 0.01
# Ours: key-bucket records read per catch-up pass, so one pass never stalls the loop long.
SCAN_LIMIT = 4096

AUTO_WATCH_ID = 0
INVALID_WATCH_ID = -1

FILTER_NOPUT = 0  # WatchCreateRequest.FilterType
FILTER_NODELETE = 1

ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_COMPACTED = "mvcc: required revision has been compacted"

_UNDERSCORE = 0x5F

# A data response queued on a stream: (watch_id, events, header revision, compact revision).
# Events are the KVStore's (type, key, serialized KeyValue) tuples.
Response = tuple[int, list[Event], int, int]


class Watcher:
    __slots__ = ("key", "end", "id", "min_rev", "drop", "stream", "victim", "compacted")

    def __init__(
        self, key: bytes, end: bytes | None, wid: int, min_rev: int, drop: int, stream: WatchStream
    ) -> None:
        self.key = key
        # None: the single key; b"": every key >= key; otherwise [key, end).
        self.end = end
        self.id = wid
        self.min_rev = min_rev  # the next revision this watcher still needs
        self.drop = drop  # bit t set: drop events of type t (NOPUT / NODELETE filters)
        self.stream = stream
        self.victim = False
        self.compacted = False

    def __repr__(self) -> str:
        return f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r}, min_rev={self.min_rev})"


# -- matching ---------------------------------------------------------------------------

# Tree node: (center, begins asc, sets by begin, ends asc, sets by end, left, right).
_Node = tuple


def _build(items: list[tuple[bytes, bytes, set]]) -> _Node | None:
    """Centered interval tree over half-open [begin, end) intervals."""
    if not items:
        return None
    begins = sorted([it[0] for it in items])
    center = begins[len(begins) // 2]
    left, right, mid = [], [], []
    for it in items:
        if it[1] <= center:
            left.append(it)
        elif it[0] > center:
            right.append(it)
        else:
            mid.append(it)  # begin <= center < end; never empty (the median's own interval)
    by_begin = sorted(mid, key=itemgetter(0))
    by_end = sorted(mid, key=itemgetter(1))
    return (
        center,
        [it[0] for it in by_begin],
        [it[2] for it in by_begin],
        [it[1] for it in by_end],
        [it[2] for it in by_end],
        _build(left),
        _build(right),
    )


class IntervalIndex:
    """Sets of watchers keyed by [begin, end); ``stab(k)`` yields the sets whose range holds k.

    end == b"" means no upper bound. Bounded ranges live in a static centered interval tree
    that is rebuilt lazily: ranges added since the last build sit in a short pending list,
    and emptied ranges stay in the tree (as empty sets) until enough pile up.
    """

    REBUILD_PENDING = 64

    __slots__ = ("sets", "_open", "_tree", "_pending", "_dead", "_tree_size")

    def __init__(self) -> None:
        self.sets: dict[tuple[bytes, bytes], set[Watcher]] = {}
        self._open: list[bytes] = []  # begins of unbounded ranges, sorted
        self._tree: _Node | None = None
        self._pending: list[tuple[bytes, bytes, set]] = []
        self._dead = 0
        self._tree_size = 0

    def __bool__(self) -> bool:
        return bool(self.sets)

    def add(self, begin: bytes, end: bytes, w: Watcher) -> None:
        k = (begin, end)
        s = self.sets.get(k)
        if s is None:
            s = self.sets[k] = set()
            if end:
                self._pending.append((begin, end, s))
            else:
                insort(self._open, begin)
        s.add(w)

    def discard(self, begin: bytes, end: bytes, w: Watcher) -> None:
        k = (begin, end)
        s = self.sets.get(k)
        if s is None:
            return
        s.discard(w)
        if s:
            return
        del self.sets[k]
        if end:
            for i, p in enumerate(self._pending):
                if p[2] is s:
                    del self._pending[i]
                    break
            else:
                self._dead += 1
        else:
            del self._open[bisect_right(self._open, begin) - 1]

    def _maybe_rebuild(self) -> None:
        if len(self._pending) > self.REBUILD_PENDING or (
            self._dead > 16 and self._dead * 2 > self._tree_size
        ):
            items = [(b, e, s) for (b, e), s in self.sets.items() if e]
            self._tree = _build(items)
            self._tree_size = len(items)
            self._pending = []
            self._dead = 0

    def stab(self, k: bytes) -> list[set[Watcher]]:
        self._maybe_rebuild()
        out: list[set[Watcher]] = []
        op = self._open
        if op:
            sets = self.sets
            for b in op[: bisect_right(op, k)]:
                out.append(sets[(b, b"")])
        node = self._tree
        while node is not None:
            center = node[0]
            if k < center:
                i = bisect_right(node[1], k)
                if i:
                    out.extend(node[2][:i])
                node = node[5]
            elif k > center:
                i = bisect_right(node[3], k)
                out.extend(node[4][i:])
                node = node[6]
            else:
                out.extend(node[2])
                break
        for b, e, s in self._pending:
            if b <= k < e:
                out.append(s)
        return out

    def any_contains(self, k: bytes) -> bool:
        op = self._open
        if op and op[0] <= k:
            return True
        return any(self.stab(k))


class WatcherGroup:
    """Watchers by key: a dict for single keys, an interval index for ranges."""

    __slots__ = ("keys", "ranges", "watchers")

    def __init__(self, watchers: Iterable[Watcher] = ()) -> None:
        self.keys: dict[bytes, set[Watcher]] = {}
        self.ranges = IntervalIndex()
        self.watchers: set[Watcher] = set()
        for w in watchers:
            self.add(w)

    def __len__(self) -> int:
        return len(self.watchers)

    def __contains__(self, w: Watcher) -> bool:
        return w in self.watchers

    def add(self, w: Watcher) -> None:
        self.watchers.add(w)
        if w.end is None:
            s = self.keys.get(w.key)
            if s is None:
                s = self.keys[w.key] = set()
            s.add(w)
        else:
            self.ranges.add(w.key, w.end, w)

    def delete(self, w: Watcher) -> bool:
        if w not in self.watchers:
            return False
        self.watchers.discard(w)
        if w.end is None:
            s = self.keys[w.key]
            s.discard(w)
            if not s:
                del self.keys[w.key]
        else:
            self.ranges.discard(w.key, w.end, w)
        return True

    def match(self, key: bytes) -> list[set[Watcher]]:
        """The sets of watchers whose key or range holds ``key``."""
        out = self.ranges.stab(key) if self.ranges else []
        s = self.keys.get(key)
        if s:
            out.append(s)
        return out

    def contains(self, key: bytes) -> bool:
        return key in self.keys or (bool(self.ranges) and self.ranges.any_contains(key))


# -- streams ----------------------------------------------------------------------------


class WatchStream:
    """Many watchers sharing one bounded queue of responses (one gRPC stream).

    Queue items are data responses (``Response`` tuples) or already-encoded control
    messages (``bytes``) from the API layer; one FIFO keeps a watch's "created" reply
    ahead of its first events and its "canceled" reply behind its last ones. Data pushes
    fail once ``capacity`` items are queued (the watcher becomes a victim); control and
    progress messages always get in (the API layer bounds those by pausing its reader).
    """

    def __init__(self, store: WatchableStore, capacity: int = CHAN_BUF_LEN) -> None:
        self.store = store
        self.capacity = capacity
        self.queue: deque[Response | bytes] = deque()
        self.wake = asyncio.Event()
        self.watchers: dict[int, Watcher] = {}
        self.next_id = 0
        self.closed = False

    @property
    def rev(self) -> int:
        return self.store.kv.rev

    def try_send(self, resp: Response) -> bool:
        q = self.queue
        if len(q) >= self.capacity or self.closed:
            return False
        q.append(resp)
        self.wake.set()
        return True

    def put_ctrl(self, msg: Any) -> None:
        self.queue.append(msg)
        self.wake.set()

    def watch(
        self,
        wid: int,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        filters: Iterable[int] = (),
    ) -> tuple[int, str | None]:
        """Create a watcher: (id, None) or (-1, error message).

        end None: the single key; b"": every key >= key. start_rev <= 0: from the next
        revision on; otherwise from start_rev inclusive (history first if it is past).
        """
        if end and key >= end:
            return INVALID_WATCH_ID, ERR_EMPTY_RANGE
        if self.closed:
            return INVALID_WATCH_ID, ERR_EMPTY_RANGE
        if start_rev < 0:
            return INVALID_WATCH_ID, ERR_COMPACTED
        if wid == AUTO_WATCH_ID:
            while self.next_id in self.watchers:
                self.next_id += 1
            wid = self.next_id
            self.next_id += 1
        elif wid in self.watchers:
            return INVALID_WATCH_ID, ERR_DUPLICATE_ID
        drop = 0
        for f in filters:
            if f == FILTER_NOPUT:
                drop |= 1 << EVENT_PUT
            elif f == FILTER_NODELETE:
                drop |= 1 << EVENT_DELETE
        self.watchers[wid] = self.store.add_watcher(key, end, start_rev, wid, drop, self)
        return wid, None

    def cancel(self, wid: int) -> bool:
        w = self.watchers.pop(wid, None)
        if w is None:
            return False
        self.store.cancel(w)
        return True

    def request_progress(self, wid: int) -> None:
        """Queue a progress response for one watcher if it is synced."""
        w = self.watchers.get(wid)
        if w is not None and w in self.store.synced:
            self.put_ctrl((wid, [], self.store.kv.rev, 0))

    def request_progress_all(self) -> bool:
        """Queue one progress response (id -1) if every watcher here is synced."""
        synced = self.store.synced
        for w in self.watchers.values():
            if w not in synced:
                return False
        if self.watchers:
            self.put_ctrl((INVALID_WATCH_ID, [], self.store.kv.rev, 0))
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.watchers.values():
            self.store.cancel(w)
        self.watchers.clear()
        self.queue.clear()
        self.wake.set()


# -- the store --------------------------------------------------------------------------


class WatchableStore:
    def __init__(
        self,
        kv: KVStore,
        *,
        sync_interval: float = SYNC_INTERVAL,
        victim_interval: float = VICTIM_INTERVAL,
        batch_max_revs: int = WATCH_BATCH_MAX_REVS,
        max_watchers_per_sync: int = MAX_WATCHERS_PER_SYNC,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self.kv = kv
        self.synced = WatcherGroup()
        self.unsynced = WatcherGroup()
        self.victims: dict[Watcher, list[Event]] = {}
        self.sync_interval = sync_interval
        self.victim_interval = victim_interval
        self.batch_max_revs = batch_max_revs
        self.max_watchers_per_sync = max_watchers_per_sync
        self.scan_limit = scan_limit
        self.truncated = False  # the last pass left work that the next one can do at once
        self._worker: asyncio.Task | None = None
        self._kick: asyncio.Event | None = None
        kv.on_events.append(self._notify)

    @property
    def rev(self) -> int:
        return self.kv.rev

    def new_stream(self, capacity: int = CHAN_BUF_LEN) -> WatchStream:
        return WatchStream(self, capacity)

    def watcher_count(self) -> int:
        return len(self.synced) + len(self.unsynced) + len(self.victims)

    # -- membership ------------------------------------------------------------------

    def add_watcher(
        self, key: bytes, end: bytes | None, start_rev: int, wid: int, drop: int, stream: WatchStream
    ) -> Watcher:
        cur = self.kv.rev
        if start_rev <= 0 or start_rev > cur:
            w = Watcher(key, end, wid, max(cur + 1, start_rev), drop, stream)
            self.synced.add(w)
        else:
            w = Watcher(key, end, wid, start_rev, drop, stream)
            self.unsynced.add(w)
            self._wake_worker()
        return w

    def restore(self) -> None:
        """The store was replaced by a snapshot image: every synced watcher catches up
        from its next revision through the unsynced path (etcd's watchableStore.Restore)."""
        for w in self.synced.watchers:
            self.unsynced.add(w)
        self.synced = WatcherGroup()
        if self.unsynced.watchers:
            self._wake_worker()

    def cancel(self, w: Watcher) -> None:
        if not self.unsynced.delete(w) and not self.synced.delete(w):
            self.victims.pop(w, None)
        w.victim = False

    # -- live path (inside the write transaction's end) ------------------------------

    def _notify(self, rev: int, events: list[Event]) -> None:
        g = self.synced
        if not g.watchers:
            return
        keys = g.keys
        ranges = g.ranges
        batches: dict[Watcher, list[Event]] = {}
        for ev in events:
            typ = ev[0]
            key = ev[1]
            sets = ranges.stab(key) if ranges else []
            s = keys.get(key)
            if s:
                sets.append(s)
            for s in sets:
                for w in s:
                    if (w.drop >> typ) & 1 or w.min_rev > rev:
                        continue
                    b = batches.get(w)
                    if b is None:
                        batches[w] = [ev]
                    else:
                        b.append(ev)
        if not batches:
            return
        victims = None
        for w, evs in batches.items():
            if not w.stream.try_send((w.id, evs, rev, 0)):
                # Full queue: park the batch and leave the write path at once.
                w.victim = True
                self.victims[w] = evs
                if victims is None:
                    victims = []
                victims.append(w)
            w.min_rev = rev + 1
        if victims:
            for w in victims:
                g.delete(w)
            self._wake_worker()

    # -- catching up -------------------------------------------------------------------

    def sync_victims(self) -> int:
        """Retry each victim's parked batch; returns how many are still victims."""
        cur = self.kv.rev
        for w, evs in list(self.victims.items()):
            if not w.stream.try_send((w.id, evs, w.min_rev - 1, 0)):
                continue
            del self.victims[w]
            w.victim = False
            # Events it missed while parked come from history.
            if w.min_rev <= cur:
                self.unsynced.add(w)
            else:
                self.synced.add(w)
        return len(self.victims)

    def sync_watchers(self) -> int:
        """One catch-up pass over (up to max_watchers_per_sync) unsynced watchers.

        Returns the number of watchers still unsynced.
        """
        un = self.unsynced
        if not un.watchers:
            return 0
        kv = self.kv
        cur = kv.rev
        compact = kv.compact_rev
        if len(un) <= self.max_watchers_per_sync:
            chosen = list(un.watchers)
            group = un
        else:
            chosen = []
            for w in un.watchers:
                chosen.append(w)
                if len(chosen) >= self.max_watchers_per_sync:
                    break
            group = None
        active: list[Watcher] = []
        min_rev = cur + 1
        for w in chosen:
            if w.min_rev < compact:
                # Its history is gone: tell the client to resume (retried until it fits).
                # Header revision 0, as etcd (the response carries no events).
                if w.stream.try_send((w.id, [], 0, compact)):
                    w.compacted = True
                    un.delete(w)
                    if w.stream.watchers.get(w.id) is w:
                        del w.stream.watchers[w.id]
                continue
            if w.min_rev > cur:
                un.delete(w)
                self.synced.add(w)
                continue
            active.append(w)
            if w.min_rev < min_rev:
                min_rev = w.min_rev
        self.truncated = False
        if not active:
            return len(un)
        if group is None or len(active) != len(group):
            group = WatcherGroup(active)

        scanned_to, evs = self._scan(min_rev, cur, group)
        # scanned_to: first revision not covered by this scan (cur + 1 when complete).
        batches: dict[Watcher, list[Event]] = {}
        nrevs: dict[Watcher, int] = {}
        last_rev: dict[Watcher, int] = {}
        more: dict[Watcher, int] = {}
        max_revs = self.batch_max_revs
        for rev, ev in evs:
            typ = ev[0]
            for s in group.match(ev[1]):
                for w in s:
                    if rev < w.min_rev or (w.drop >> typ) & 1 or w in more:
                        continue
                    b = batches.get(w)
                    if b is None:
                        batches[w] = [ev]
                        nrevs[w] = 1
                        last_rev[w] = rev
                        continue
                    if last_rev[w] != rev:
                        if nrevs[w] >= max_revs:
                            more[w] = rev  # stop at a revision boundary
                            continue
                        nrevs[w] += 1
                        last_rev[w] = rev
                    b.append(ev)
        for w in active:
            m = more.get(w)
            if m is not None:
                w.min_rev = m
            elif scanned_to > w.min_rev:  # a short scan may stop below its start
                w.min_rev = scanned_to
            done = w.min_rev > cur
            if not done:
                self.truncated = True
            b = batches.get(w)
            if b is None:
                if done:
                    un.delete(w)
                    self.synced.add(w)
                continue
            if w.stream.try_send((w.id, b, w.min_rev - 1, 0)):
                if done:
                    un.delete(w)
                    self.synced.add(w)
            else:
                un.delete(w)
                w.victim = True
                self.victims[w] = b
        return len(un)

    def _scan(
        self, min_rev: int, cur: int, group: WatcherGroup
    ) -> tuple[int, list[tuple[int, Event]]]:
        """History events in [min_rev, cur] whose key some watcher in ``group`` wants.

        Reads at most ``scan_limit`` records (always whole revisions); returns the first
        revision not read and the (revision, event) pairs in revision order.
        """
        b = self.kv.backend
        pack = _REV.pack
        lo = pack(min_rev, _UNDERSCORE, 0)
        hi = pack(cur + 1, _UNDERSCORE, 0)
        limit = self.scan_limit
        items = b.range(BUCKET_KEY, lo, hi, limit + 1)
        scanned_to = cur + 1
        if len(items) > limit:
            # Cut before the last (possibly partial) revision read.
            last = _main(items[-1][0])
            while items and _main(items[-1][0]) == last:
                items.pop()
            if not items:  # one revision bigger than the limit: read it whole
                items = b.range(BUCKET_KEY, lo, pack(last + 1, _UNDERSCORE, 0))
                last += 1
            scanned_to = last
        out: list[tuple[int, Event]] = []
        contains = group.contains
        for k, v in items:
            key = _kv_key(v)
            if not contains(key):
                continue
            rev = _main(k)
            if len(k) == 18:  # tombstone: KeyValue{key} plus the deletion revision
                out.append((rev, (EVENT_DELETE, key, v + b"\x18" + encode_varint(rev))))
            else:
                out.append((rev, (EVENT_PUT, key, v)))
        return scanned_to, out

    # -- background work ---------------------------------------------------------------

    def _wake_worker(self) -> None:
        if self._kick is not None:
            self._kick.set()
        if self._worker is not None and not self._worker.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (unit tests drive the passes by hand)
        self._kick = asyncio.Event()
        self._worker = loop.create_task(self._run(), name="watch-sync")

    async def _run(self) -> None:
        """Catch up unsynced watchers and retry victims until neither has any left."""
        kick = self._kick
        assert kick is not None
        while self.unsynced.watchers or self.victims:
            kick.clear()
            progressed = False
            if self.victims:
                n = len(self.victims)
                progressed = self.sync_victims() < n
            took = 0.0
            if self.unsynced.watchers:
                t0 = time.monotonic()
                before = len(self.unsynced)
                left = self.sync_watchers()
                took = time.monotonic() - t0
                progressed = progressed or left < before or self.truncated
            if not (self.unsynced.watchers or self.victims):
                break
            if self.victims:
                delay = self.victim_interval
            elif progressed:
                delay = took  # give other work on the loop a fair share, then go on
            else:
                delay = self.sync_interval
            if delay <= 0:
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.wait_for(kick.wait(), delay)
            except TimeoutError:
                pass

    async def aclose(self) -> None:
        t = self._worker
        if t is not None and not t.done():
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass


def _main(k: bytes) -> int:
    return int.from_bytes(k[:8], "big")


def _kv_key(v: bytes) -> bytes:
    """The key of a serialized KeyValue: field 1 comes first in every writer we know."""
    if v[0] == 0x0A:
        n = v[1]
        if n < 0x80:
            return v[2 : 2 + n]
        n, shift, pos = 0, 0, 1
        while True:
            c = v[pos]
            pos += 1
            n |= (c & 0x7F) << shift
            if c < 0x80:
                return v[pos : pos + n]
            shift += 7
    from petcd.proto.mvccpb.kv_pb2 import KeyValue

    return KeyValue.FromString(v).key


__all__ = [
    "AUTO_WATCH_ID",
    "CHAN_BUF_LEN",
    "ERR_COMPACTED",
    "ERR_DUPLICATE_ID",
    "ERR_EMPTY_RANGE",
    "FILTER_NODELETE",
    "FILTER_NOPUT",
    "INVALID_WATCH_ID",
    "IntervalIndex",
    "SUB_BITS",
    "Watcher",
    "WatcherGroup",
    "WatchableStore",
    "WatchStream",
]
