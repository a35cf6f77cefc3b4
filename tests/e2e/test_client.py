"""petcd.client end to end, against petcd and (as the reference) real etcd: KV with every
option, the txn builder, watch resumption across a restart, compaction surfaced, managed lease
keep-alive, maintenance, and failover from a dead endpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time

import pytest
from harness import ETCD, ServerProcess

from petcd.client import (
    Client,
    Compare,
    SyncClient,
    WatchCompacted,
    errors,
    ops,
)

pytestmark = pytest.mark.e2e


def _start(kind: str) -> ServerProcess:
    if kind == "etcd":
        if not (os.path.exists(ETCD) or shutil.which(ETCD)):
            pytest.skip("etcd not installed (Debian package etcd-server)")
        return ServerProcess(cmd=[ETCD]).start()
    return ServerProcess().start()


@pytest.fixture(scope="module", params=["petcd", "etcd"])
def server(request):
    s = _start(request.param)
    yield s
    s.cleanup()


@pytest.fixture(params=["petcd", "etcd"])
def fresh_server(request):
    s = _start(request.param)
    yield s
    s.cleanup()


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run(coro):
    return asyncio.run(coro)


def _keys(resp) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def test_kv_every_option(server):
    async def main():
        async with Client([server.endpoint]) as c:
            await c.delete("", prefix=True)
            revs = {}
            for k, v in [("kv/a", "3"), ("kv/b", "1"), ("kv/c", "2"), ("kw", "0")]:
                revs[k] = (await c.put(k, v)).header.revision
            second = await c.put("kv/a", b"33", prev_kv=True)
            assert second.prev_kv.value == b"3"
            top = second.header.revision

            r = await c.get("kv/a")
            assert r.kvs[0].value == b"33" and r.kvs[0].version == 2 and r.count == 1
            assert r.kvs[0].create_revision == revs["kv/a"] and r.kvs[0].mod_revision == top
            assert (await c.get("kv/a", revision=revs["kv/a"])).kvs[0].value == b"3"
            assert _keys(await c.get("kv/", prefix=True)) == [b"kv/a", b"kv/b", b"kv/c"]
            assert _keys(await c.get("kv/b", range_end="kw")) == [b"kv/b", b"kv/c"]
            assert _keys(await c.get("kv/c", from_key=True)) == [b"kv/c", b"kw"]
            assert len((await c.get("", prefix=True)).kvs) == 4
            lim = await c.get("kv/", prefix=True, limit=2)
            assert _keys(lim) == [b"kv/a", b"kv/b"] and lim.more and lim.count == 3
            by_val = await c.get("kv/", prefix=True, sort_target="value", sort_order="descend")
            assert [kv.value for kv in by_val.kvs] == [b"33", b"2", b"1"]
            desc = await c.get("kv/", prefix=True, sort_order="descend")
            assert _keys(desc) == [b"kv/c", b"kv/b", b"kv/a"]
            by_mod = await c.get("kv/", prefix=True, sort_target="mod", sort_order="ascend")
            assert _keys(by_mod) == [b"kv/b", b"kv/c", b"kv/a"]
            ko = await c.get("kv/", prefix=True, keys_only=True)
            assert _keys(ko) == [b"kv/a", b"kv/b", b"kv/c"] and all(not kv.value for kv in ko.kvs)
            co = await c.get("kv/", prefix=True, count_only=True)
            assert co.count == 3 and not co.kvs
            assert (await c.get("kv/a", serializable=True)).kvs[0].value == b"33"
            assert _keys(await c.get("kv/", prefix=True, min_mod_revision=revs["kv/c"])) == [
                b"kv/a",
                b"kv/c",
            ]
            assert _keys(await c.get("kv/", prefix=True, max_mod_revision=revs["kv/b"])) == [
                b"kv/b"
            ]
            assert _keys(await c.get("kv/", prefix=True, min_create_revision=revs["kv/b"])) == [
                b"kv/b",
                b"kv/c",
            ]
            assert _keys(await c.get("kv/", prefix=True, max_create_revision=revs["kv/a"])) == [
                b"kv/a"
            ]
            assert await c.get_value("kv/b") == b"1" and await c.get_value("nope") is None

            # ignore_value / ignore_lease keep what is there.
            lease = (await c.grant(30)).ID
            await c.put("kv/b", "lv", lease=lease)
            await c.put("kv/b", ignore_value=True, ignore_lease=True)
            kv = (await c.get("kv/b")).kvs[0]
            assert (kv.value, kv.lease) == (b"lv", lease)
            with pytest.raises(errors.ErrKeyNotFound):
                await c.put("kv/none", ignore_value=True)
            with pytest.raises(errors.ErrEmptyKey):
                await c.put("", "x")
            await c.revoke(lease)
            assert await c.get_value("kv/b") is None

            d = await c.delete("kv/", prefix=True, prev_kv=True)
            assert d.deleted == 2 and sorted(kv.key for kv in d.prev_kvs) == [b"kv/a", b"kv/c"]
            await c.put("r1", "1")
            await c.put("r2", "2")
            await c.put("r3", "3")
            assert (await c.delete("r1", range_end="r3")).deleted == 2
            assert (await c.delete("r3", from_key=True)).deleted == 1
            assert (await c.get("kw")).count == 1

            now = (await c.get("kw")).header.revision
            with pytest.raises(errors.ErrFutureRev):
                await c.get("kw", revision=now + 100)
            await c.compact(top, physical=True)
            with pytest.raises(errors.ErrCompacted):
                await c.get("kv/a", revision=top - 1)
            with pytest.raises(errors.ErrCompacted):
                await c.compact(top - 1)

    run(main())


def test_txn_builder(server):
    async def main():
        async with Client([server.endpoint]) as c:
            await c.delete("tx/", prefix=True)
            await c.put("tx/k", "v")
            r = await (
                c.txn()
                .if_(Compare.value("tx/k") == "v", Compare.version("tx/k") > 0)
                .then(ops.put("tx/k", "w", prev_kv=True), ops.get("tx/k"))
                .else_(ops.get("tx/k"))
                .commit()
            )
            assert r.succeeded
            assert r.responses[0].response_put.prev_kv.value == b"v"
            assert r.responses[1].response_range.kvs[0].value == b"w"
            r = await (
                c.txn()
                .if_(Compare.create_revision("tx/new") != 0)
                .then(ops.delete("tx/", prefix=True))
                .else_(ops.put("tx/new", "1"), ops.get("tx/", prefix=True, count_only=True))
                .commit()
            )
            assert not r.succeeded and r.responses[1].response_range.count == 2
            mod = (await c.get("tx/new")).kvs[0].mod_revision
            r = await (
                c.txn()
                .if_(Compare.mod_revision("tx/new") == mod, Compare.lease("tx/new") == 0)
                .then(ops.txn([Compare.value("tx/k") < "x"], [ops.delete("tx/k")]))
                .commit()
            )
            assert r.succeeded and r.responses[0].response_txn.succeeded
            assert await c.get_value("tx/k") is None
            r = await c.txn().if_(Compare.value("tx/", prefix=True) == "1").commit()
            assert r.succeeded  # every key under the prefix equals "1"
            with pytest.raises(errors.ErrDuplicateKey):
                await c.txn().then(ops.put("tx/d", "1"), ops.put("tx/d", "2")).commit()

    run(main())


def test_watch_resumes_across_restart(fresh_server):
    s = fresh_server

    async def main():
        async with Client([s.endpoint], timeout=20) as c:
            await c.put("w/a", "1")
            w = c.watch("w/", prefix=True, prev_kv=True)
            await w.wait_created()
            await c.put("w/b", "2")
            await c.put("w/a", "3")
            ev = await w.__anext__()
            assert (ev.kv.key, ev.type) == (b"w/b", 0)
            await asyncio.to_thread(s.restart)
            # The read waits for the member to come back; the write goes to it once connected.
            await c.put("w/c", "4")
            await c.delete("w/b")
            got = [await asyncio.wait_for(w.__anext__(), 15) for _ in range(3)]
            assert [(e.kv.key, e.kv.value, e.type) for e in got] == [
                (b"w/a", b"3", 0),
                (b"w/c", b"4", 0),
                (b"w/b", b"", 1),
            ]
            assert got[0].prev_kv.value == b"1"
            revs = [e.kv.mod_revision for e in got]
            assert revs == sorted(set(revs))
            assert w.next_revision == revs[-1] + 1
            # A reader blocked on the stream when the member goes away carries on too.
            pending = asyncio.ensure_future(w.__anext__())
            await asyncio.sleep(0.1)
            await asyncio.to_thread(s.restart)
            await c.put("w/d", "5")
            ev = await asyncio.wait_for(pending, 15)
            assert (ev.kv.key, ev.kv.mod_revision) == (b"w/d", revs[-1] + 1)
            await w.close()
            assert [e async for e in w] == []

    run(main())


def test_watch_compaction_surfaced(server):
    async def main():
        async with Client([server.endpoint]) as c:
            first = (await c.put("wc/k", "1")).header.revision
            await c.put("wc/k", "2")
            last = (await c.put("wc/k", "3")).header.revision
            await c.compact(last)
            w = c.watch("wc/k", start_revision=first)
            with pytest.raises(WatchCompacted) as ei:
                await asyncio.wait_for(w.__anext__(), 10)
            assert ei.value.compact_revision == last
            # From the compact revision on, history is still there.
            async with c.watch("wc/k", start_revision=last) as w2:
                ev = await asyncio.wait_for(w2.__anext__(), 10)
                assert ev.kv.value == b"3" and ev.kv.mod_revision == last

    run(main())


def test_watch_filters_and_progress(server):
    async def main():
        async with Client([server.endpoint]) as c:
            start = (await c.put("wf/x", "0")).header.revision + 1
            w = c.watch("wf/", prefix=True, filters=["noput"], start_revision=start)
            await c.put("wf/x", "1")
            await c.delete("wf/x")
            ev = await asyncio.wait_for(w.__anext__(), 10)
            assert ev.type == 1 and ev.kv.key == b"wf/x"
            await w.request_progress()
            async for resp in w.responses():
                if not resp.events:
                    assert resp.header.revision >= ev.kv.mod_revision
                    break
            await w.close()

    run(main())


def test_leases_and_managed_keepalive(server):
    async def main():
        async with Client([server.endpoint]) as c:
            g = await c.grant(60)
            assert g.ID in await c.leases()
            ttl = await c.time_to_live(g.ID, keys=True)
            assert 0 < ttl.TTL <= 60 and ttl.grantedTTL == 60
            assert (await c.keep_alive_once(g.ID)).TTL == 60
            await c.revoke(g.ID)
            assert (await c.time_to_live(g.ID)).TTL == -1
            with pytest.raises(errors.ErrLeaseNotFound):
                await c.revoke(g.ID)
            with pytest.raises(errors.ErrLeaseNotFound):
                await c.keep_alive_once(g.ID)

            async with c.lease(2) as lease:
                await c.put("ls/k", "v", lease=lease.id)
                await asyncio.sleep(lease.ttl + 1.5)
                assert await c.get_value("ls/k") == b"v"  # outlived its TTL
                assert lease.keepalives >= 2 and not lease.expired
                tl = await lease.time_to_live(keys=True)
                assert list(tl.keys) == [b"ls/k"]
            assert lease.expired  # revoked on exit, and the key with it
            assert await c.get_value("ls/k") is None

            # A lease revoked behind the client's back is noticed by the keep-alive loop.
            lease = await c.lease(2).start()
            await c.revoke(lease.id)
            await asyncio.wait_for(lease.wait_expired(), 5)
            with pytest.raises(errors.LeaseExpired):
                lease.check()
            await lease.close()

    run(main())


def test_maintenance_and_cluster(server, tmp_path):
    async def main():
        async with Client([server.endpoint]) as c:
            await c.put("mt/k", "v")
            st = await c.status()
            assert st.header.revision >= 1 and st.dbSize > 0 and st.leader == st.header.member_id
            h = await c.hash_kv()
            assert h.hash != 0 and h.header.revision == st.header.revision
            assert (await c.hash()).hash != 0
            assert await c.alarms() == []
            await c.alarm_disarm()
            await c.defragment()
            seen: list[tuple[int, int]] = []
            path = tmp_path / "snap.db"
            n = await c.snapshot(path, progress=lambda done, left: seen.append((done, left)))
            assert n == path.stat().st_size > 0
            assert seen[-1] == (n, 0) and not (tmp_path / "snap.db.part").exists()
            ml = await c.member_list()
            assert len(ml.members) == 1 and ml.members[0].clientURLs == [
                f"http://{server.endpoint}"
            ]
            assert await c.sync_endpoints() == [f"http://{server.endpoint}"]
            assert (await c.get("mt/k")).kvs[0].value == b"v"

    run(main())


def test_failover_first_endpoint_down(server):
    async def main():
        async with Client([_dead_endpoint(), server.endpoint], dial_timeout=1) as c:
            rev = (await c.put("fo/k", "v")).header.revision
            assert c.current_endpoint == server.endpoint
            assert await c.get_value("fo/k") == b"v"
            async with c.watch("fo/k", start_revision=rev) as w:
                assert (await asyncio.wait_for(w.__anext__(), 10)).kv.value == b"v"

    run(main())


def test_read_waits_for_restarted_member(fresh_server):
    s = fresh_server
    with SyncClient([s.endpoint], timeout=30) as c:
        c.put("rr/k", "v")
        s.stop()
        t0 = time.monotonic()
        with pytest.raises(errors.Unavailable):
            c.get("rr/k", timeout=0.5)
        assert time.monotonic() - t0 < 5
        s.start()
        assert c.get("rr/k").kvs[0].value == b"v"  # reconnects on its own


def test_sync_client(server):
    with SyncClient(server.endpoint) as c:
        c.delete("sy/", prefix=True)
        rev = c.put("sy/a", "1").header.revision
        r = c.txn().if_(Compare.value("sy/a") == "1").then(ops.put("sy/a", "2")).commit()
        assert r.succeeded and c.get_value("sy/a") == b"2"
        with c.watch("sy/", prefix=True, start_revision=rev) as w:
            assert next(w).kv.value == b"1"
            assert next(w).kv.value == b"2"
            assert w.next(0.2) is None  # timed out, nothing lost
            c.put("sy/b", "3")
            ev = w.next(10)
            assert ev is not None and ev.kv.key == b"sy/b"
        with c.lease(5) as lease:
            c.put("sy/l", "x", lease=lease.id)
            assert c.time_to_live(lease.id).grantedTTL == 5
        assert c.get_value("sy/l") is None
        with pytest.raises(errors.ErrFutureRev):
            c.compact(rev + 100)
    # A closed client refuses work.
    with pytest.raises(errors.ClientClosed):
        c.get("x")


def test_lock_and_election(server):
    async def main():
        async with Client([server.endpoint]) as c:
            lease = (await c.grant(30)).ID
            key = await c.lock("lk", lease, timeout=10)
            assert key == b"lk/" + f"{lease:x}".encode()
            assert (await c.get(key)).kvs[0].lease == lease
            await c.unlock(key)
            assert await c.get_value(key) is None
            leader = await c.campaign("el", "one", lease, timeout=10)
            assert leader.name == b"el" and leader.lease == lease
            assert (await c.leader("el")).value == b"one"
            await c.proclaim(leader, "two")
            assert (await c.leader("el")).value == b"two"
            await c.resign(leader)
            with pytest.raises(errors.ErrElectionNoLeader):
                await c.leader("el")
            await c.revoke(lease)

    run(main())
