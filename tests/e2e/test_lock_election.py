"""v3lock.Lock and v3election.Election: raw gRPC against petcd and real etcd, and the
real etcdctl's lock/elect commands (client-side recipes) with normalised output."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time

import grpc
import pytest
from harness import ETCD, ETCDCTL, ServerProcess

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from petcd.proto.v3electionpb import v3election_pb2 as epb
from petcd.proto.v3electionpb import v3election_pb2_grpc as egrpc
from petcd.proto.v3lockpb import v3lock_pb2 as lpb
from petcd.proto.v3lockpb import v3lock_pb2_grpc as lgrpc

pytestmark = pytest.mark.e2e

_seq = iter(range(1_000_000))


def uniq(base: str) -> bytes:
    return f"{base}-{next(_seq)}".encode()


@pytest.fixture(scope="module", params=["petcd", "etcd"])
def server(request):
    cmd = None
    if request.param == "etcd":
        if not os.path.exists(ETCD):
            pytest.skip("etcd not installed")
        cmd = [ETCD]
    if not os.path.exists(ETCDCTL):
        pytest.skip("etcdctl not installed")
    s = ServerProcess(cmd=cmd).start()
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def petcd(server):
    if server.cmd[0] == ETCD:
        pytest.skip("petcd only")
    return server


class Client:
    def __init__(self, endpoint: str) -> None:
        self.ch = grpc.aio.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.ch)
        self.lease = rpc_pb2_grpc.LeaseStub(self.ch)
        self.lock = lgrpc.LockStub(self.ch)
        self.elect = egrpc.ElectionStub(self.ch)

    async def grant(self, ttl: int = 30) -> int:
        return (await self.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl))).ID

    async def get(self, key: bytes, prefix: bool = False) -> list:
        end = key[:-1] + bytes([key[-1] + 1]) if prefix else b""
        return list((await self.kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end))).kvs)

    async def close(self) -> None:
        await self.ch.close()


def run(server: ServerProcess, fn) -> None:
    async def main():
        c = Client(server.endpoint)
        try:
            await asyncio.wait_for(fn(c), 30)
        finally:
            await c.close()

    asyncio.run(main())


def err_of(e: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return e.code(), e.details()


# -- Lock ---------------------------------------------------------------------------------


def test_lock_unlock_and_waiter(server):
    name = uniq("lk")

    async def body(c: Client):
        l1, l2 = await c.grant(), await c.grant()
        r1 = await c.lock.Lock(lpb.LockRequest(name=name, lease=l1))
        assert r1.key == name + b"/%x" % l1
        kvs = await c.get(r1.key)
        assert kvs[0].lease == l1 and kvs[0].value == b""
        assert r1.header.revision == kvs[0].create_revision
        # re-entrant for the same lease: the same key, at once
        again = await c.lock.Lock(lpb.LockRequest(name=name, lease=l1))
        assert again.key == r1.key
        second = asyncio.ensure_future(c.lock.Lock(lpb.LockRequest(name=name, lease=l2)))
        await asyncio.sleep(0.3)
        assert not second.done()
        # the waiter's key is queued behind the owner
        keys = [kv.key for kv in await c.get(name + b"/", prefix=True)]
        assert sorted(keys) == sorted([r1.key, name + b"/%x" % l2])
        u = await c.lock.Unlock(lpb.UnlockRequest(key=r1.key))
        r2 = await second
        assert r2.key == name + b"/%x" % l2
        assert r2.header.revision >= u.header.revision
        assert await c.get(r1.key) == []
        await c.lock.Unlock(lpb.UnlockRequest(key=r2.key))
        assert await c.get(name + b"/", prefix=True) == []

    run(server, body)


def test_lock_errors_and_lease_zero(server):
    name = uniq("lkerr")

    async def body(c: Client):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.lock.Lock(lpb.LockRequest(name=name, lease=0x1234))
        # etcd serves these through its Go client: every error comes back as code Unknown
        assert err_of(ei.value) == (
            grpc.StatusCode.UNKNOWN, "etcdserver: requested lease not found")
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.lock.Unlock(lpb.UnlockRequest(key=b""))
        assert err_of(ei.value) == (grpc.StatusCode.UNKNOWN, "etcdserver: key is not provided")
        # Unlocking a key nobody holds is a plain delete of nothing.
        await c.lock.Unlock(lpb.UnlockRequest(key=name + b"/nope"))
        # lease 0: the server grants an unrenewed session lease of 60 s
        r = await c.lock.Lock(lpb.LockRequest(name=name, lease=0))
        lease = int(r.key.rsplit(b"/", 1)[1], 16)
        ttl = await c.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease))
        assert ttl.grantedTTL == 60 and 55 <= ttl.TTL <= 60
        assert (await c.get(r.key))[0].lease == lease
        await c.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease))

    run(server, body)


def test_lock_lost_on_lease_expiry(server):
    name = uniq("lkexp")

    async def body(c: Client):
        short, long_ = await c.grant(2), await c.grant(30)  # 2 s: petcd's and etcd's minimum
        r1 = await c.lock.Lock(lpb.LockRequest(name=name, lease=short))
        t0 = time.monotonic()
        r2 = await c.lock.Lock(lpb.LockRequest(name=name, lease=long_))  # nobody renews `short`
        took = time.monotonic() - t0
        assert r2.key == name + b"/%x" % long_
        assert 0.5 < took < 10
        assert await c.get(r1.key) == []

    run(server, body)


def test_cancelled_waiter_removes_its_key(server):
    name = uniq("lkcancel")

    async def body(c: Client):
        l1, l2, l3 = await c.grant(), await c.grant(), await c.grant()
        r1 = await c.lock.Lock(lpb.LockRequest(name=name, lease=l1))
        call = c.lock.Lock(lpb.LockRequest(name=name, lease=l2))
        third = asyncio.ensure_future(c.lock.Lock(lpb.LockRequest(name=name, lease=l3)))
        fut = asyncio.ensure_future(call)
        await asyncio.sleep(0.3)
        assert len(await c.get(name + b"/", prefix=True)) == 3
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        for _ in range(100):
            keys = [kv.key for kv in await c.get(name + b"/", prefix=True)]
            if len(keys) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(keys) == sorted([r1.key, name + b"/%x" % l3])
        assert not third.done()  # still behind the owner, not woken by the cancellation
        await c.lock.Unlock(lpb.UnlockRequest(key=r1.key))
        assert (await third).key == name + b"/%x" % l3

    run(server, body)


def test_lock_contention_no_overlap(server):
    name = uniq("lkmany")
    n = 12

    async def body(c: Client):
        leases = [await c.grant() for _ in range(n)]
        intervals: list[tuple[float, float]] = []
        holding = 0
        max_holding = 0

        async def worker(lease: int) -> None:
            nonlocal holding, max_holding
            for _ in range(2):
                r = await c.lock.Lock(lpb.LockRequest(name=name, lease=lease))
                start = time.monotonic()
                holding += 1
                max_holding = max(max_holding, holding)
                await asyncio.sleep(0.005)
                holding -= 1
                end = time.monotonic()
                intervals.append((start, end))
                await c.lock.Unlock(lpb.UnlockRequest(key=r.key))

        await asyncio.gather(*(worker(lease) for lease in leases))
        assert len(intervals) == 2 * n and max_holding == 1
        intervals.sort()
        for (_s1, e1), (s2, _e2) in zip(intervals, intervals[1:], strict=False):
            assert e1 <= s2
        assert await c.get(name + b"/", prefix=True) == []

    run(server, body)


def test_lock_fifo_order(petcd):
    """Waiters acquire in the order of their keys' create revisions."""
    name = uniq("lkfifo")

    async def body(c: Client):
        leases = [await c.grant() for _ in range(5)]
        first = await c.lock.Lock(lpb.LockRequest(name=name, lease=leases[0]))
        order: list[int] = []

        async def wait(lease: int) -> None:
            r = await c.lock.Lock(lpb.LockRequest(name=name, lease=lease))
            order.append(lease)
            await c.lock.Unlock(lpb.UnlockRequest(key=r.key))

        tasks = []
        for lease in leases[1:]:
            tasks.append(asyncio.ensure_future(wait(lease)))
            # queued (its key exists) before the next one starts
            while len(await c.get(name + b"/", prefix=True)) < len(tasks) + 1:
                await asyncio.sleep(0.01)
        await c.lock.Unlock(lpb.UnlockRequest(key=first.key))
        await asyncio.gather(*tasks)
        assert order == leases[1:]

    run(petcd, body)


# -- Election -----------------------------------------------------------------------------


def test_election_campaign_proclaim_resign(server):
    name = uniq("el")

    async def body(c: Client):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.elect.Leader(epb.LeaderRequest(name=name))
        assert err_of(ei.value) == (grpc.StatusCode.UNKNOWN, "election: no leader")
        l1, l2 = await c.grant(), await c.grant()
        r1 = await c.elect.Campaign(epb.CampaignRequest(name=name, lease=l1, value=b"a"))
        lk = r1.leader
        assert (lk.name, lk.key, lk.lease) == (name, name + b"/%x" % l1, l1)
        assert lk.rev == r1.header.revision
        ld = await c.elect.Leader(epb.LeaderRequest(name=name))
        assert (ld.kv.key, ld.kv.value, ld.kv.create_revision) == (lk.key, b"a", lk.rev)

        second = asyncio.ensure_future(
            c.elect.Campaign(epb.CampaignRequest(name=name, lease=l2, value=b"b")))
        await asyncio.sleep(0.3)
        assert not second.done()
        p = await c.elect.Proclaim(epb.ProclaimRequest(leader=lk, value=b"a2"))
        ld = await c.elect.Leader(epb.LeaderRequest(name=name))
        assert ld.kv.value == b"a2" and ld.kv.mod_revision == p.header.revision

        bad = epb.LeaderKey(name=name, key=lk.key, rev=lk.rev + 1000, lease=l1)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.elect.Proclaim(epb.ProclaimRequest(leader=bad, value=b"x"))
        assert err_of(ei.value) == (grpc.StatusCode.UNKNOWN, "election: not leader")
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await c.elect.Proclaim(epb.ProclaimRequest(value=b"x"))
        assert err_of(ei.value) == (grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
        # resigning with a stale rev deletes nothing
        await c.elect.Resign(epb.ResignRequest(leader=bad))
        assert not second.done()

        await c.elect.Resign(epb.ResignRequest(leader=lk))
        r2 = await second
        assert r2.leader.key == name + b"/%x" % l2
        ld = await c.elect.Leader(epb.LeaderRequest(name=name))
        assert ld.kv.value == b"b"
        # campaigning again with the leading lease and a new value proclaims it
        r3 = await c.elect.Campaign(epb.CampaignRequest(name=name, lease=l2, value=b"c"))
        assert r3.leader.rev == r2.leader.rev
        assert (await c.elect.Leader(epb.LeaderRequest(name=name))).kv.value == b"c"
        await c.elect.Resign(epb.ResignRequest(leader=r3.leader))

    run(server, body)


def test_election_observe(server):
    name = uniq("obs")

    async def body(c: Client):
        l1, l2 = await c.grant(), await c.grant()
        stream = c.elect.Observe(epb.LeaderRequest(name=name))
        seen: list[bytes] = []

        async def read(count: int) -> None:
            while len(seen) < count:
                resp = await stream.read()
                assert resp.kv.mod_revision <= resp.header.revision
                seen.append(resp.kv.value)

        await asyncio.sleep(0.2)  # no leader yet: the stream waits
        r1 = await c.elect.Campaign(epb.CampaignRequest(name=name, lease=l1, value=b"v1"))
        await asyncio.wait_for(read(1), 5)
        await c.elect.Proclaim(epb.ProclaimRequest(leader=r1.leader, value=b"v2"))
        await asyncio.wait_for(read(2), 5)
        second = asyncio.ensure_future(
            c.elect.Campaign(epb.CampaignRequest(name=name, lease=l2, value=b"w1")))
        await asyncio.sleep(0.2)
        await c.elect.Resign(epb.ResignRequest(leader=r1.leader))
        await asyncio.wait_for(read(3), 5)
        assert seen == [b"v1", b"v2", b"w1"]
        # a late observer starts with the current leader
        late = c.elect.Observe(epb.LeaderRequest(name=name))
        first = await asyncio.wait_for(late.read(), 5)
        assert first.kv.value == b"w1" and first.kv.key == (await second).leader.key
        late.cancel()
        stream.cancel()

    run(server, body)


def test_campaign_cancel_resigns(server):
    name = uniq("elcancel")

    async def body(c: Client):
        l1, l2 = await c.grant(), await c.grant()
        r1 = await c.elect.Campaign(epb.CampaignRequest(name=name, lease=l1, value=b"a"))
        call = c.elect.Campaign(epb.CampaignRequest(name=name, lease=l2, value=b"b"))
        fut = asyncio.ensure_future(call)
        await asyncio.sleep(0.3)
        assert len(await c.get(name + b"/", prefix=True)) == 2
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        for _ in range(100):
            if len(await c.get(name + b"/", prefix=True)) == 1:
                break
            await asyncio.sleep(0.05)
        assert [kv.key for kv in await c.get(name + b"/", prefix=True)] == [r1.leader.key]

    run(server, body)


# -- etcdctl (client-side recipes against the server) -------------------------------------


def _ctl(server: ServerProcess, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [ETCDCTL, f"--endpoints={server.endpoint}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )


def _lines(p: subprocess.Popen, n: int) -> list[str]:
    return [p.stdout.readline().rstrip("\n") for _ in range(n)]


def _norm(lines: list[str]) -> list[str]:
    return [re.sub(r"/[0-9a-f]{1,16}$", "/<lease>", line) for line in lines]


def etcdctl_session(server: ServerProcess) -> list[str]:
    """One scripted lock/elect session; returns its output lines."""
    out: list[str] = []
    tag = uniq("ctl").decode()
    lock = f"lock-{tag}"
    p1 = _ctl(server, "lock", lock)
    out += _lines(p1, 1)
    p2 = _ctl(server, "lock", lock)
    time.sleep(0.5)
    assert p2.poll() is None
    # the waiter has not printed: its key is queued behind p1's
    keys = server.ctl("get", "--prefix", lock + "/", "--keys-only").stdout.split()
    assert len(keys) == 2
    p1.send_signal(signal.SIGINT)  # etcdctl unlocks on SIGINT
    p1.wait(10)
    out.append(f"exit {p1.returncode}")
    out += _lines(p2, 1)
    p2.send_signal(signal.SIGINT)
    p2.wait(10)
    out.append(server.ctl("get", "--prefix", lock + "/").stdout)

    r = server.ctl("lock", lock, "--", "sh", "-c", 'echo "held $ETCD_LOCK_KEY"')
    out += r.stdout.splitlines()

    el = f"el-{tag}"
    obs = _ctl(server, "elect", "-l", el)
    c1 = _ctl(server, "elect", el, "p1")
    out += _lines(c1, 2)
    out += _lines(obs, 2)
    c2 = _ctl(server, "elect", el, "p2")
    time.sleep(0.5)
    assert c2.poll() is None
    c1.send_signal(signal.SIGINT)  # resigns
    c1.wait(10)
    out += _lines(c2, 2)
    out += _lines(obs, 2)
    out += server.ctl("elect", el, "-l", "extra", check=False).stderr.splitlines()
    for p in (c2, obs):
        p.send_signal(signal.SIGINT)
        p.wait(10)
    return out


_compared: dict[str, list[str]] = {}


def test_etcdctl_lock_and_elect(server):
    raw = etcdctl_session(server)
    assert raw[0] != raw[2]  # the waiter got its own key (a different session lease)
    got = [re.sub(r"ctl-\d+", "ctl-N", line) for line in _norm(raw)]
    _compared["etcd" if server.cmd[0] == ETCD else "petcd"] = got
    assert got == [
        "lock-ctl-N/<lease>", "exit 0", "lock-ctl-N/<lease>", "",
        "held lock-ctl-N/<lease>",
        "el-ctl-N/<lease>", "p1", "el-ctl-N/<lease>", "p1",
        "el-ctl-N/<lease>", "p2", "el-ctl-N/<lease>", "p2",
        "Error: proposal given but -l is set",
    ]


def test_etcdctl_session_matches_etcd(server):
    """The normalised output of the same session against petcd and real etcd."""
    if len(_compared) < 2:
        pytest.skip("compared once both servers ran the session")
    assert _compared["petcd"] == _compared["etcd"]


# -- in process: the recipes on the server's own MVCC and watch machinery -----------------


def test_recipes_in_process_no_herd(tmp_path):
    from harness import free_port

    from petcd.cli.config import parse_args
    from petcd.proto.mvccpb.kv_pb2 import KeyValue
    from petcd.server.concurrency import ErrElectionNoLeader, ErrElectionNotLeader, Recipes
    from petcd.server.etcdserver import F_COMPACTION, F_LEASE_GRANT, EtcdServer

    peer = free_port()
    cfg = parse_args(
        [
            "--data-dir", str(tmp_path / "data"),
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
        ],
        {},
    )

    async def main() -> None:
        srv = EtcdServer(cfg)
        srv.open()
        await srv.start()
        try:
            await asyncio.wait_for(srv.leader_ready.wait(), 10)
            rc = Recipes(srv)
            leases = []
            for i in range(6):
                req = rpc_pb2.LeaseGrantRequest(ID=100 + i, TTL=30)
                await srv.propose(F_LEASE_GRANT, req.SerializeToString(), req)
                leases.append(100 + i)
            key0, _ = await rc.lock(b"m", leases[0])
            assert key0 == b"m/64"
            tasks = []
            for lease in leases[1:]:
                tasks.append(asyncio.ensure_future(rc.lock(b"m", lease)))
                await asyncio.sleep(0.02)
            # each waiter watches exactly its predecessor's key, for deletes only
            watched = sorted(w.key for w in srv.watchable.synced.watchers)
            assert watched == [b"m/%x" % lease for lease in leases[:-1]]
            await rc.unlock(key0)
            key1, _ = await tasks[0]
            assert key1 == b"m/65"
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in tasks[1:])
            watched = sorted(w.key for w in srv.watchable.synced.watchers)
            assert watched == [b"m/%x" % lease for lease in leases[1:-1]]
            # a waiter in the middle leaves: its key goes, its successor re-checks and
            # now waits on the key before it
            tasks[2].cancel()
            await asyncio.sleep(0.05)
            assert srv.kv.get_raw(b"m/67") is None
            watched = sorted(w.key for w in srv.watchable.synced.watchers)
            assert watched == [b"m/65", b"m/66", b"m/68"]
            assert not any(t.done() for t in (tasks[1], tasks[3], tasks[4]))
            await rc.unlock(key1)
            k2, _ = await tasks[1]
            assert k2 == b"m/66"
            await rc.unlock(k2)
            k4, _ = await tasks[3]
            assert k4 == b"m/68"
            await rc.unlock(k4)
            assert (await tasks[4])[0] == b"m/69"
            assert srv.watchable.watcher_count() == 0

            # observe: the current leader, then its proclaims
            key, rev, _lease, _ = await rc.campaign(b"e", leases[0], b"v")
            gen = rc.observe(b"e")
            assert (await gen.__anext__())[1] >= rev
            await rc.proclaim(key, rev, leases[0], b"v2")
            raw, _ = await gen.__anext__()
            assert KeyValue.FromString(raw).value == b"v2"
            with pytest.raises(ErrElectionNotLeader):
                await rc.proclaim(key, rev + 100, leases[0], b"x")
            await rc.resign(key, rev)
            with pytest.raises(ErrElectionNoLeader):
                await rc.leader(b"e")
            await gen.aclose()

            # observe ends (etcd's channel closes) when the history it needs was compacted
            key, rev, _lease, _ = await rc.campaign(b"e", leases[1], b"w")
            gen = rc.observe(b"e")
            assert KeyValue.FromString((await gen.__anext__())[0]).value == b"w"
            await rc.proclaim(key, rev, leases[1], b"w2")
            await rc.proclaim(key, rev, leases[1], b"w3")
            req = rpc_pb2.CompactionRequest(revision=srv.kv.rev)
            await srv.propose(F_COMPACTION, req.SerializeToString(), req)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(gen.__anext__(), 5)
        finally:
            await srv.stop()

    asyncio.run(main())
