"""Watchable store: matching, history catch-up, compaction cancel, filters, victims, ordering."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petcd.backend import Backend
from petcd.mvcc import EVENT_DELETE, EVENT_PUT, KVStore
from petcd.mvcc.watchable import (
    ERR_DUPLICATE_ID,
    ERR_EMPTY_RANGE,
    FILTER_NODELETE,
    FILTER_NOPUT,
    IntervalIndex,
    WatchableStore,
    WatcherGroup,
    WatchStream,
)
from petcd.proto.mvccpb.kv_pb2 import KeyValue

MAP = 64 << 20


@pytest.fixture
def kv(tmp_path):
    s = KVStore(Backend(str(tmp_path / "db"), map_size=MAP))
    yield s
    s.backend.close()


def put(s: KVStore, key: bytes, value: bytes) -> int:
    w = s.write()
    w.put(key, value)
    w.end()
    return s.rev


def delete(s: KVStore, key: bytes, end: bytes = b"") -> int:
    w = s.write()
    w.delete_range(key, end)
    w.end()
    return s.rev


def drain(ws: WatchStream) -> list[tuple]:
    out = list(ws.queue)
    ws.queue.clear()
    return out


def evs(resp) -> list[tuple[str, bytes, bytes, int]]:
    """(type, key, value, mod_revision) of a response's events."""
    out = []
    for typ, key, raw in resp[1]:
        kv = KeyValue.FromString(raw)
        assert kv.key == key
        out.append(("PUT" if typ == EVENT_PUT else "DELETE", key, kv.value, kv.mod_revision))
    return out


# -- matching structures ----------------------------------------------------------------


def test_interval_index_stab_matches_brute_force():
    rnd = random.Random(7)
    idx = IntervalIndex()
    live: dict[tuple[bytes, bytes], set] = {}
    keys = [bytes([a, b]) for a in range(97, 103) for b in range(97, 103)]

    class W:  # hashable stand-in
        pass

    def check():
        for k in keys + [b"", b"a", b"z", b"\xff"]:
            got = {id(w) for s in idx.stab(k) for w in s}
            want = {
                id(w) for (b, e), ws in live.items() if b <= k and (not e or k < e) for w in ws
            }
            assert got == want, k

    for step in range(600):
        if live and rnd.random() < 0.4:
            (b, e), ws = rnd.choice(list(live.items()))
            w = rnd.choice(list(ws))
            idx.discard(b, e, w)
            ws.discard(w)
            if not ws:
                del live[(b, e)]
        else:
            b, e = sorted(rnd.sample(keys, 2))
            if rnd.random() < 0.15:
                e = b""
            w = W()
            idx.add(b, e, w)
            live.setdefault((b, e), set()).add(w)
        if step % 25 == 0:
            check()
    check()


def test_watcher_group_match_and_contains(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    g = WatcherGroup()
    single = store.add_watcher(b"foo", None, 0, 1, 0, ws)
    prefix = store.add_watcher(b"foo", b"fop", 0, 2, 0, ws)
    fromkey = store.add_watcher(b"m", b"", 0, 3, 0, ws)
    for w in (single, prefix, fromkey):
        g.add(w)

    def m(k):
        return {w.id for s in g.match(k) for w in s}

    assert m(b"foo") == {1, 2}
    assert m(b"foo1") == {2}
    assert m(b"fop") == set()
    assert m(b"m") == {3} and m(b"n") == {3}
    assert m(b"a") == set()
    assert g.contains(b"zzz") and g.contains(b"foo") and not g.contains(b"bar")
    assert g.delete(prefix) and not g.delete(prefix)
    assert m(b"foo1") == set() and m(b"foo") == {1}
    assert len(g) == 2


# -- live path ---------------------------------------------------------------------------


def test_key_range_prefix_fromkey_live(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    assert ws.watch(0, b"foo", None, 0) == (0, None)
    assert ws.watch(0, b"foo", b"foo9", 0) == (1, None)
    assert ws.watch(0, b"\x00", b"", 0) == (2, None)
    put(kv, b"foo", b"1")
    put(kv, b"foo1", b"2")
    put(kv, b"zoo", b"3")
    # watchers of one revision may come in any order; revisions may not
    got = sorted(((r[2], r[0]), evs(r)) for r in drain(ws))
    got = [(k[1], e) for k, e in got]
    assert got == [
        (0, [("PUT", b"foo", b"1", 2)]),
        (1, [("PUT", b"foo", b"1", 2)]),
        (2, [("PUT", b"foo", b"1", 2)]),
        (1, [("PUT", b"foo1", b"2", 3)]),
        (2, [("PUT", b"foo1", b"2", 3)]),
        (2, [("PUT", b"zoo", b"3", 4)]),
    ]


def test_one_response_per_revision_with_all_its_events(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    ws.watch(0, b"a", b"z", 0)
    w = kv.write()
    for k in (b"b", b"c", b"d"):
        w.put(k, b"v")
    w.end()
    delete(kv, b"b", b"d")
    rs = drain(ws)
    assert len(rs) == 2
    assert [e[:2] for e in evs(rs[0])] == [("PUT", b"b"), ("PUT", b"c"), ("PUT", b"d")]
    assert rs[0][2] == 2
    assert [(e[0], e[1], e[3]) for e in evs(rs[1])] == [("DELETE", b"b", 3), ("DELETE", b"c", 3)]


def test_filters(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    ws.watch(1, b"k", None, 0, [FILTER_NOPUT])
    ws.watch(2, b"k", None, 0, [FILTER_NODELETE])
    put(kv, b"k", b"v")
    delete(kv, b"k")
    got = [(r[0], [e[0] for e in evs(r)]) for r in drain(ws)]
    assert got == [(2, ["PUT"]), (1, ["DELETE"])]


def test_create_errors_and_ids(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    assert ws.watch(0, b"b", b"a", 0) == (-1, ERR_EMPTY_RANGE)
    assert ws.watch(0, b"b", b"b", 0) == (-1, ERR_EMPTY_RANGE)
    assert ws.watch(5, b"a", None, 0) == (5, None)
    assert ws.watch(5, b"a", None, 0) == (-1, ERR_DUPLICATE_ID)
    assert [ws.watch(0, b"a", None, 0)[0] for _ in range(3)] == [0, 1, 2]
    assert ws.watch(0, b"a", None, 0)[0] == 3
    assert ws.watch(0, b"a", None, 0)[0] == 4
    assert ws.watch(0, b"a", None, 0)[0] == 6  # 5 is taken
    assert ws.cancel(5) and not ws.cancel(5)
    put(kv, b"a", b"1")
    assert sorted(r[0] for r in drain(ws)) == [0, 1, 2, 3, 4, 6]
    ws.close()
    assert store.watcher_count() == 0


def test_future_start_revision_waits(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    ws.watch(0, b"k", None, 4)
    put(kv, b"k", b"2")
    put(kv, b"k", b"3")
    assert drain(ws) == []
    put(kv, b"k", b"4")
    assert [evs(r) for r in drain(ws)] == [[("PUT", b"k", b"4", 4)]]


def test_cancel_stops_events(kv):
    store = WatchableStore(kv)
    ws = store.new_stream()
    ws.watch(0, b"k", None, 0)
    put(kv, b"k", b"1")
    assert ws.cancel(0)
    put(kv, b"k", b"2")
    assert len(drain(ws)) == 1


# -- history ----------------------------------------------------------------------------


def test_history_catch_up_then_live_without_gap(kv):
    store = WatchableStore(kv)
    for i in range(5):
        put(kv, b"foo", b"v%d" % i)  # revs 2..6
    put(kv, b"other", b"x")  # 7
    delete(kv, b"foo")  # 8
    ws = store.new_stream()
    ws.watch(0, b"foo", None, 3)
    assert drain(ws) == []  # nothing before the catch-up pass
    put(kv, b"foo", b"live-before-sync")  # 9: still unsynced, comes from history
    assert store.sync_watchers() == 0
    put(kv, b"foo", b"live")  # 10
    rs = drain(ws)
    assert rs[0][2] == 9  # catch-up header: the store revision it read to
    got = [e for r in rs for e in evs(r)]
    assert [(e[0], e[2], e[3]) for e in got] == [
        ("PUT", b"v1", 3),
        ("PUT", b"v2", 4),
        ("PUT", b"v3", 5),
        ("PUT", b"v4", 6),
        ("DELETE", b"", 8),
        ("PUT", b"live-before-sync", 9),
        ("PUT", b"live", 10),
    ]


def test_history_batches_cut_at_revision_boundary(kv):
    store = WatchableStore(kv, batch_max_revs=3)
    for i in range(10):
        w = kv.write()
        w.put(b"a", b"%d" % i)
        w.put(b"b", b"%d" % i)
        w.end()  # revs 2..11, two events each
    ws = store.new_stream()
    ws.watch(0, b"a", b"c", 2)
    passes = 0
    while store.sync_watchers():
        passes += 1
    rs = drain(ws)
    assert [len(r[1]) for r in rs] == [6, 6, 6, 2]
    assert [r[2] for r in rs] == [4, 7, 10, 11]  # header = last revision covered
    revs = [e[3] for r in rs for e in evs(r)]
    assert revs == sorted(revs) and len(revs) == 20
    assert passes == 3


def test_scan_limit_splits_passes_without_splitting_a_revision(kv):
    store = WatchableStore(kv, scan_limit=5)
    for i in range(4):
        w = kv.write()
        for k in (b"a", b"b", b"c"):
            w.put(k, b"%d" % i)
        w.end()  # revs 2..5, three records each
    w = kv.write()
    w.delete_range(b"a", b"z")
    w.end()  # rev 6: three tombstones
    ws = store.new_stream()
    ws.watch(0, b"b", None, 1)
    while store.sync_watchers():
        pass
    got = [e for r in drain(ws) for e in evs(r)]
    assert [(e[0], e[3]) for e in got] == [("PUT", 2), ("PUT", 3), ("PUT", 4), ("PUT", 5), ("DELETE", 6)]
    assert store.unsynced.watchers == set() and len(store.synced) == 1


def test_one_revision_bigger_than_scan_limit(kv):
    store = WatchableStore(kv, scan_limit=2)
    w = kv.write()
    for k in (b"a", b"b", b"c", b"d"):
        w.put(k, b"v")
    w.end()
    ws = store.new_stream()
    ws.watch(0, b"a", b"", 2)
    while store.sync_watchers():
        pass
    rs = drain(ws)
    assert len(rs) == 1 and len(rs[0][1]) == 4


def test_compacted_start_revision_cancels_with_compact_revision(kv):
    store = WatchableStore(kv)
    for i in range(6):
        put(kv, b"k", b"%d" % i)  # 2..7
    kv.compact(5)
    ws = store.new_stream()
    wid, _ = ws.watch(0, b"k", None, 3)
    ok, _ = ws.watch(0, b"k", None, 5)  # exactly the compact revision is allowed
    store.sync_watchers()
    rs = drain(ws)
    assert (wid, [], 0, 5) in rs
    assert wid not in ws.watchers and ok in ws.watchers
    assert [e[3] for r in rs if r[0] == ok for e in evs(r)] == [5, 6, 7]


def test_prev_kv_readable_at_event_revision_minus_one(kv):
    # The API layer reads prev_kv at mod_revision - 1; make sure the store keeps it.
    store = WatchableStore(kv)
    ws = store.new_stream()
    ws.watch(0, b"k", None, 0)
    put(kv, b"k", b"old")
    put(kv, b"k", b"new")
    delete(kv, b"k")
    rs = drain(ws)
    prevs = []
    for r in rs:
        for _typ, key, raw in r[1]:
            m = KeyValue.FromString(raw)
            if m.create_revision and m.create_revision == m.mod_revision:
                prevs.append(None)
                continue
            p = kv.get_raw(key, m.mod_revision - 1)
            prevs.append(KeyValue.FromString(p).value if p else None)
    assert prevs == [None, b"old", b"new"]


# -- slow streams --------------------------------------------------------------------------


def test_full_stream_makes_victims_then_catches_up_in_order(kv):
    store = WatchableStore(kv)
    ws = store.new_stream(capacity=2)
    ws.watch(0, b"k", None, 0)
    ws.watch(0, b"k", b"l", 0)
    for i in range(10):
        put(kv, b"k", b"%d" % i)  # revs 2..11; the queue fills after one revision
    assert len(store.victims) == 2 and not store.synced.watchers
    seen: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(50):
        for r in drain(ws):
            seen[r[0]] += [e[3] for e in evs(r)]
        store.sync_victims()
        store.sync_watchers()
        put(kv, b"k", b"more")  # writes keep coming while it lags
        if not store.victims and not store.unsynced.watchers and len(seen[0]) > 20:
            break
    for _ in range(20):  # writes stop: everyone catches up
        for r in drain(ws):
            seen[r[0]] += [e[3] for e in evs(r)]
        store.sync_victims()
        store.sync_watchers()
    assert not store.victims and not store.unsynced.watchers
    for revs in seen.values():
        assert revs == list(range(2, kv.rev + 1))


def test_progress_only_when_synced(kv):
    store = WatchableStore(kv)
    put(kv, b"k", b"1")
    ws = store.new_stream()
    ws.watch(0, b"k", None, 0)
    ws.watch(0, b"k", None, 1)  # unsynced
    assert not ws.request_progress_all()
    ws.request_progress(1)
    assert drain(ws) == []
    store.sync_watchers()
    drain(ws)
    assert ws.request_progress_all()
    ws.request_progress(0)
    assert drain(ws) == [(-1, [], 2, 0), (0, [], 2, 0)]


# -- property: what a watcher sees is exactly the history of its range ------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "del", "delrange", "watch", "compact", "sync", "drain"]),
        st.sampled_from([b"a", b"b", b"c", b"d"]),
        st.integers(0, 6),
    ),
    min_size=5,
    max_size=60,
)


def history(log: list, key: bytes, end: bytes | None, start: int) -> list:
    """Events for [key, end) from revision ``start`` on, from the store's own event log."""
    out = []
    for rev, events in log:
        if rev < start:
            continue
        for typ, k, _raw in events:
            if end is None and k != key:
                continue
            if end is not None and not (key <= k and (not end or k < end)):
                continue
            out.append(("DELETE" if typ == EVENT_DELETE else "PUT", k, rev))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, cap=st.integers(1, 4))
def test_property_events_equal_history(tmp_path_factory, ops, cap):
    path = tmp_path_factory.mktemp("p")
    kv = KVStore(Backend(str(path / "db"), map_size=MAP))
    try:
        log: list = []
        kv.on_events.append(lambda rev, events: log.append((rev, list(events))))
        store = WatchableStore(kv, batch_max_revs=2, scan_limit=3)
        ws = store.new_stream(capacity=cap)
        specs: dict[int, tuple[bytes, bytes | None, int]] = {}
        got: dict[int, list] = {}
        canceled: set[int] = set()
        last: dict[int, int] = {}
        ranges = [(b"a", None), (b"a", b"c"), (b"b", b""), (b"\x00", b"")]

        def take():
            for r in drain(ws):
                if r[3]:
                    canceled.add(r[0])
                    continue
                # ordered, and one revision never split across two responses
                revs = [e[3] for e in evs(r)]
                assert revs == sorted(revs)
                if revs:
                    assert revs[0] > last.get(r[0], 0)
                    last[r[0]] = revs[-1]
                got.setdefault(r[0], []).extend((e[0], e[1], e[3]) for e in evs(r))

        for op, key, n in ops:
            if op == "put":
                put(kv, key, b"%d" % n)
            elif op == "del":
                delete(kv, key)
            elif op == "delrange":
                delete(kv, b"a", b"e")
            elif op == "watch":
                k, e = ranges[n % len(ranges)]
                start = max(0, kv.rev - n)
                wid, err = ws.watch(0, k, e, start)
                assert err is None
                specs[wid] = (k, e, start if start else kv.rev + 1)
            elif op == "compact":
                if kv.rev - n > kv.compact_rev and kv.rev - n >= 1:
                    kv.compact(kv.rev - n)
                    kv.run_compaction()
            elif op == "sync":
                store.sync_victims()
                store.sync_watchers()
            else:
                take()
        for _ in range(200):
            take()
            if not store.unsynced.watchers and not store.victims:
                break
            store.sync_victims()
            store.sync_watchers()
        take()
        assert not store.unsynced.watchers and not store.victims
        for wid, (k, e, start) in specs.items():
            want = history(log, k, e, start)
            if wid in canceled:  # told to resume: what it got is a gap-free prefix
                assert want[: len(got.get(wid, []))] == got.get(wid, [])
                continue
            assert got.get(wid, []) == want, (wid, k, e, start)
    finally:
        kv.backend.close()


# -- background worker -------------------------------------------------------------------


def test_background_worker_catches_up_and_retries_victims(kv):
    async def main():
        store = WatchableStore(kv, sync_interval=0.01, victim_interval=0.001)
        for i in range(20):
            put(kv, b"k", b"%d" % i)
        ws = store.new_stream(capacity=1)
        ws.watch(0, b"k", None, 2)
        seen = []
        for _ in range(500):
            while ws.queue:
                seen.extend(e[3] for e in evs(ws.queue.popleft()))
            if len(seen) >= 25:
                break
            if len(seen) == 20:
                for i in range(5):
                    put(kv, b"k", b"live%d" % i)
            await asyncio.sleep(0.002)
        assert seen == list(range(2, 27))
        await store.aclose()

    asyncio.run(main())


def test_event_types_constants():
    assert (EVENT_PUT, EVENT_DELETE) == (0, 1)


# -- the gRPC stream handler in-process --------------------------------------------------


class _FakeServer:
    def __init__(self, kv: KVStore, store: WatchableStore) -> None:
        from petcd.api.v3.codec import HeaderEncoder

        self.kv = kv
        self.watchable = store
        self.header = HeaderEncoder(11, 22)
        self.term = 3
        self.max_request_bytes = 1 << 20
        self.cfg = type("Cfg", (), {"experimental_watch_progress_notify_interval": 600.0})()


def _create(key: bytes, **kw) -> bytes:
    from petcd.proto.etcdserverpb import rpc_pb2

    return rpc_pb2.WatchRequest(
        create_request=rpc_pb2.WatchCreateRequest(key=key, **kw)
    ).SerializeToString()


def test_encoding_matches_protobuf(kv):
    from petcd.api.v3.watch import encode_event
    from petcd.proto.mvccpb.kv_pb2 import Event

    put(kv, b"k", b"v1")
    put(kv, b"k", b"v2")
    delete(kv, b"k")
    log = []
    kv.on_events.append(lambda rev, events: log.extend(events))
    put(kv, b"k", b"v3")
    delete(kv, b"k")
    prev = kv.get_raw(b"k", 3)
    assert prev is not None
    for ev in log:
        want = Event(type=ev[0], kv=KeyValue.FromString(ev[2]))
        assert encode_event(ev) == want.SerializeToString()
        want.prev_kv.CopyFrom(KeyValue.FromString(prev))
        assert encode_event(ev, prev) == want.SerializeToString()


def test_stream_handler_slow_consumer_and_close(kv):
    from petcd.api.v3.watch import WatchService
    from petcd.proto.etcdserverpb import rpc_pb2

    async def main():
        store = WatchableStore(kv, sync_interval=0.005, victim_interval=0.001)
        svc = WatchService(_FakeServer(kv, store))
        reqs: asyncio.Queue = asyncio.Queue()

        async def requests():
            while True:
                r = await reqs.get()
                if r is None:
                    return
                yield r

        gen = svc.watch(requests(), None)
        await reqs.put(_create(b"k", prev_kv=True))
        first = rpc_pb2.WatchResponse.FromString(await gen.__anext__())
        assert first.created and first.watch_id == 0
        assert (first.header.cluster_id, first.header.member_id, first.header.raft_term) == (
            11, 22, 3)
        # Nobody reads while 500 revisions are written: the apply side must not block.
        for i in range(500):
            put(kv, b"k", b"%d" % i)
        assert len(store.victims) == 1
        revs, prevs = [], []
        while len(revs) < 500:
            r = rpc_pb2.WatchResponse.FromString(await asyncio.wait_for(gen.__anext__(), 5))
            revs += [e.kv.mod_revision for e in r.events]
            prevs += [e.prev_kv.value for e in r.events]
        assert revs == list(range(2, 502))
        assert prevs == [b""] + [b"%d" % i for i in range(499)]
        await reqs.put(rpc_pb2.WatchRequest(
            cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0)).SerializeToString())
        c = rpc_pb2.WatchResponse.FromString(await asyncio.wait_for(gen.__anext__(), 5))
        assert c.canceled and c.watch_id == 0
        await reqs.put(_create(b"a", range_end=b"z"))
        await asyncio.wait_for(gen.__anext__(), 5)
        assert store.watcher_count() == 1
        await gen.aclose()  # the client went away
        assert store.watcher_count() == 0
        await store.aclose()

    asyncio.run(main())
