"""Lessor (grant, revoke, attach, renew, expiry, persistence) and the auto compactors."""

from __future__ import annotations

import asyncio

import pytest

from petcd.backend import Backend
from petcd.backend.backend import BUCKET_LEASE
from petcd.errors import (
    ErrCompacted,
    ErrLeaseExist,
    ErrLeaseNotFound,
    ErrLeaseTTLTooLarge,
    ErrNoLeader,
)
from petcd.lease.lessor import (
    F_LEASE_REVOKE,
    FOREVER,
    LEASE_REVOKE_RATE,
    MAX_LEASE_TTL,
    Lessor,
    lease_key,
    min_lease_ttl,
)
from petcd.mvcc import EVENT_DELETE, KVStore
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.proto.leasepb import lease_pb2
from petcd.proto.mvccpb.kv_pb2 import KeyValue
from petcd.server.compactor import PeriodicCompactor, RevisionCompactor, new_compactor

MAP = 64 << 20


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def open_all(path, clock=None, **kw) -> tuple[Backend, KVStore, Lessor]:
    b = Backend(str(path / "db"), map_size=MAP)
    kv = KVStore(b)
    le = Lessor(b, kv, clock=clock or Clock(), **kw)
    return b, kv, le


def put(kv: KVStore, key: bytes, value: bytes = b"v", lease: int = 0) -> None:
    w = kv.write()
    w.put(key, value, lease)
    w.end()


def delete(kv: KVStore, key: bytes) -> None:
    w = kv.write()
    w.delete_range(key)
    w.end()


def test_min_lease_ttl_follows_election_timeout():
    assert min_lease_ttl(1000, 100) == 2  # ceil(1.5 s)
    assert min_lease_ttl(5000, 100) == 8  # ceil(7.5 s)
    assert min_lease_ttl(1000, 300) == 2  # 3 ticks -> 4 ticks of 300 ms = 1.2 s
    assert min_lease_ttl(10000, 1000) == 15


def test_grant_errors_and_min_ttl(tmp_path):
    _b, _kv, le = open_all(tmp_path, min_ttl=2)
    lease = le.grant(5, 1)
    assert lease.ttl == 2  # raised to the minimum
    assert le.grant(6, 30).ttl == 30
    with pytest.raises(ErrLeaseExist):
        le.grant(5, 10)
    with pytest.raises(ErrLeaseTTLTooLarge):
        le.grant(7, MAX_LEASE_TTL + 1)
    assert le.grant(8, MAX_LEASE_TTL).ttl == MAX_LEASE_TTL
    with pytest.raises(ErrLeaseNotFound):
        le.grant(0, 10)
    resp = le.apply_grant(rpc_pb2.LeaseGrantRequest(ID=9, TTL=-5))
    assert (resp.ID, resp.TTL) == (9, 2)
    assert le.exists(9) and not le.exists(10)


def test_keys_attach_move_and_detach(tmp_path):
    _b, kv, le = open_all(tmp_path)
    le.grant(1, 10)
    le.grant(2, 10)
    put(kv, b"a", lease=1)
    put(kv, b"b", lease=1)
    assert le.lookup(1).sorted_keys() == [b"a", b"b"]
    put(kv, b"b", lease=2)  # moves to lease 2
    assert le.lookup(1).keys == {b"a"} and le.lookup(2).keys == {b"b"}
    put(kv, b"a")  # a put without lease detaches
    assert le.lookup(1).keys == set()
    delete(kv, b"b")
    assert le.lookup(2).keys == set()


def test_revoke_deletes_keys_in_one_revision(tmp_path):
    b, kv, le = open_all(tmp_path)
    le.grant(1, 10)
    for k in (b"z", b"a", b"m"):
        put(kv, k, lease=1)
    put(kv, b"other")
    seen = []
    kv.on_events.append(lambda rev, evs: seen.append((rev, evs)))
    before = kv.rev
    le.apply_revoke(rpc_pb2.LeaseRevokeRequest(ID=1))
    assert kv.rev == before + 1
    assert len(seen) == 1
    rev, evs = seen[0]
    assert rev == before + 1
    assert [(t, k) for t, k, _ in evs] == [(EVENT_DELETE, b"a"), (EVENT_DELETE, b"m"),
                                          (EVENT_DELETE, b"z")]
    assert [KeyValue.FromString(v).key for v in kv.range(b"\x00", b"\x00").kvs] == [b"other"]
    assert not le.exists(1)
    assert b.get(BUCKET_LEASE, lease_key(1)) is None
    with pytest.raises(ErrLeaseNotFound):
        le.revoke(1)


def test_revoke_without_keys_keeps_revision(tmp_path):
    _b, kv, le = open_all(tmp_path)
    le.grant(1, 10)
    rev = kv.rev
    le.revoke(1)
    assert kv.rev == rev


def test_persistence_across_reopen(tmp_path):
    b, kv, le = open_all(tmp_path, min_ttl=2)
    le.grant(1, 30)
    le.grant(2, 60)
    le.grant(3, 5)
    put(kv, b"k1", lease=1)
    put(kv, b"k2", lease=1)
    put(kv, b"k3", lease=2)
    le.revoke(3)
    raw = b.get(BUCKET_LEASE, lease_key(2))
    assert lease_pb2.Lease.FromString(raw) == lease_pb2.Lease(ID=2, TTL=60)
    b.close()

    clock = Clock(5000.0)
    b2, kv2, le2 = open_all(tmp_path, clock=clock, min_ttl=40)
    assert sorted(le2.ids()) == [1, 2]
    assert le2.lookup(1).ttl == 40  # raised to the (new) minimum
    assert le2.lookup(1).sorted_keys() == [b"k1", b"k2"]
    assert le2.lookup(2).keys == {b"k3"}
    # not primary yet: nothing expires
    assert le2.lookup(1).expiry == FOREVER
    le2.promote(1.0)
    assert le2.lookup(2).expiry == 5000.0 + 1.0 + 60
    # revoking after the restart still deletes the re-attached keys
    le2.revoke(1)
    assert kv2.range(b"k1").kvs == [] and kv2.range(b"k3").kvs != []
    b2.close()


def test_expiry_only_when_primary_and_in_order(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1, retry_interval=3.0)
    le.grant(1, 10)
    le.grant(2, 5)
    le.grant(3, 20)
    clock.t += 30
    assert le.find_expired() == []  # followers never expire leases
    le.promote(0.0)
    assert le.lookup(2).expiry == clock.t + 5
    clock.t += 4.9
    assert le.find_expired() == []
    clock.t += 0.2
    assert le.find_expired() == [2]
    assert le.find_expired() == []  # offered again only after the retry interval
    clock.t += 5
    assert le.find_expired() == [2, 1]  # soonest first
    clock.t += 3
    assert sorted(le.find_expired()) == [1, 2]  # still not revoked: retried
    le.revoke(2)
    le.revoke(1)
    clock.t += 100
    assert le.find_expired() == [3]


def test_renew_resets_ttl(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1)
    le.promote(0.0)
    le.grant(1, 10)
    clock.t += 8
    assert le.renew(1) == 10
    assert le.remaining(le.lookup(1)) == 10
    clock.t += 8
    assert le.find_expired() == []  # the stale heap entry from the grant is ignored
    clock.t += 2.5
    assert le.find_expired() == [1]
    assert le.renew(1) is None  # expired: the caller waits for the revoke
    with pytest.raises(ErrLeaseNotFound):
        le.renew(99)


def test_demote_stops_expiry_and_promote_extends(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1, extend=1.0)
    le.set_primary(True)
    le.grant(1, 5)
    le.set_primary(False)
    assert le.lookup(1).expiry == FOREVER
    clock.t += 100
    assert le.find_expired() == []
    le.set_primary(True)
    assert le.remaining(le.lookup(1)) == 6.0  # ttl + extend
    assert [x.id for x in le.sorted_leases()] == [1]


def test_promote_spreads_mass_expiry(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1)
    n = LEASE_REVOKE_RATE * 2
    for i in range(1, n + 1):
        le.grant(i, 10)
    le.promote(1.0)
    expiries = sorted(x.expiry - clock.t for x in le.leases.values())
    assert expiries[0] == 11.0
    # no one-second window holds more than 3/4 of the revoke rate
    window = [e for e in expiries if e < expiries[0] + 1.0]
    assert len(window) <= 3 * LEASE_REVOKE_RATE // 4 + 1
    assert expiries[-1] > 12.0


def test_tick_proposes_revokes_for_expired_leases(tmp_path):
    async def main():
        clock = Clock()
        proposed = []
        le_box = {}

        async def propose(field_no, payload, req):
            proposed.append((field_no, req.ID))
            assert rpc_pb2.LeaseRevokeRequest.FromString(payload).ID == req.ID
            await asyncio.sleep(0)
            le_box["le"].revoke(req.ID)

        _b, kv, le = open_all(tmp_path, clock=clock, min_ttl=1, propose=propose)
        le_box["le"] = le
        le.set_primary(True)
        for i in range(1, 41):
            le.grant(i, 5)
        put(kv, b"k", lease=7)
        le.grant(100, 50)
        le.tick()
        assert proposed == []
        clock.t += 5.01
        le.tick()
        le.tick()  # in flight: not proposed twice
        for _ in range(20):
            await asyncio.sleep(0)
        assert sorted(i for _f, i in proposed) == list(range(1, 41))
        assert {f for f, _i in proposed} == {F_LEASE_REVOKE}
        assert sorted(le.ids()) == [100]
        assert kv.range(b"k").kvs == []

    asyncio.run(main())


# -- auto compaction ----------------------------------------------------------------------


class FakeTime:
    """A clock and a sleep that advances it (the compactor loops run instantly)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.t += d
        await asyncio.sleep(0)


def run_compactor(c, ft: FakeTime, until: float) -> None:
    async def main():
        task = asyncio.create_task(c.run())
        while ft.t < until:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())


def test_revision_compactor():
    ft = FakeTime()
    compacted = []

    async def compact(r):
        compacted.append((ft.t, r))
        if r == 6:
            raise ErrCompacted()  # already compacted counts as success

    # the store advances 5 revisions every 5 minutes
    c = RevisionCompactor(
        10, lambda: 5 * int(ft.t // 300) + 1, compact, interval=300.0, clock=ft, sleep=ft.sleep
    )
    run_compactor(c, ft, 1600)
    # rev - retention every 5 minutes; nothing while it is <= 0
    assert compacted[:4] == [(600.0, 1), (900.0, 6), (1200.0, 11), (1500.0, 16)]


def test_revision_compactor_values_and_leadership():
    ft = FakeTime()
    compacted = []
    leader = [False]

    async def compact(r):
        compacted.append(r)

    c = RevisionCompactor(
        100, lambda: 150, compact, interval=300.0, clock=ft, sleep=ft.sleep,
        is_leader=lambda: leader[0],
    )
    run_compactor(c, ft, 900)
    assert compacted == []  # followers do not compact
    leader[0] = True
    run_compactor(c, ft, 2000)
    assert compacted == [50]  # the same revision is not compacted twice


def test_periodic_compactor_sliding_window():
    ft = FakeTime()
    compacted = []

    async def compact(r):
        compacted.append((round(ft.t, 6), r))

    # period 10 s: sample every 1 s (revision = 1 + seconds); compact after 10 s at the
    # oldest of the last 11 samples (etcd's window), then every 10 s.
    c = PeriodicCompactor(10.0, lambda: int(ft.t) + 1, compact, clock=ft, sleep=ft.sleep)
    run_compactor(c, ft, 35)
    assert compacted[:3] == [(10.0, 1), (20.0, 10), (30.0, 20)]


def test_periodic_compactor_long_period_caps_interval():
    c = PeriodicCompactor(5 * 3600.0, lambda: 1, lambda r: asyncio.sleep(0))
    assert c.compact_interval == 3600.0
    assert c.retry_interval == 360.0
    assert c.retentions == 51


def test_new_compactor_modes():
    class Srv:
        class kv:
            rev = 7

        @staticmethod
        def is_leader():
            return True

    assert new_compactor("periodic", 0, Srv) is None
    assert isinstance(new_compactor("periodic", 3600.0, Srv), PeriodicCompactor)
    rc = new_compactor("revision", 1000, Srv)
    assert isinstance(rc, RevisionCompactor) and rc.retention == 1000


def test_lease_service_requires_leader(tmp_path):
    from petcd.api.v3.lease import LeaseService

    class Srv:
        lead = 0

        def is_leader(self):
            return False

    _b, _kv, le = open_all(tmp_path)
    srv = Srv()
    srv.lessor = le
    with pytest.raises(ErrNoLeader):
        asyncio.run(LeaseService(srv).renew(1))
