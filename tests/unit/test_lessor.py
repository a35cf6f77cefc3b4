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
    F_LEASE_CHECKPOINT,
    F_LEASE_REVOKE,
    FOREVER,
    LEASE_REVOKE_RATE,
    MAX_CHECKPOINT_BATCH,
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


# -- checkpoints ----------------------------------------------------------------------------


def cp_req(*pairs: tuple[int, int]) -> rpc_pb2.LeaseCheckpointRequest:
    return rpc_pb2.LeaseCheckpointRequest(
        checkpoints=[rpc_pb2.LeaseCheckpoint(ID=i, remaining_TTL=r) for i, r in pairs]
    )


def test_checkpoints_due_after_interval_with_remaining_ttl(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1, checkpointing=True,
                           checkpoint_interval=10.0)
    le.promote(0.0)
    le.grant(1, 60)
    le.grant(2, 10)  # not longer than the interval: never checkpointed (etcd's rule)
    le.grant(3, 30)
    assert le.find_due_checkpoints() == []
    clock.t += 9.5
    assert le.find_due_checkpoints() == []
    clock.t += 0.75  # 10.25 s after the grant: remaining TTL is rounded up
    assert le.find_due_checkpoints() == [(1, 50), (3, 20)]
    assert le.find_due_checkpoints() == []  # popped: the next one comes with the apply
    le.apply_checkpoint(cp_req((1, 50), (3, 20)))
    assert le.lookup(1).remaining_ttl == 50
    assert le.remaining(le.lookup(1)) == 49.75  # the expiry itself is untouched
    clock.t += 10
    assert le.find_due_checkpoints() == [(1, 40), (3, 10)]
    # an expired lease is not checkpointed; a just-renewed one is rescheduled
    le.apply_checkpoint(cp_req((1, 40), (3, 10)))
    clock.t += 9.99
    assert le.renew(1) == 60
    clock.t += 0.5
    assert le.find_due_checkpoints() == []  # 1: full TTL left; 3: expired
    clock.t += 10
    assert le.find_due_checkpoints() == [(1, 50)]


def test_checkpoints_off_and_follower_schedule_nothing(tmp_path):
    clock = Clock()
    _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1, checkpoint_interval=1.0)
    le.promote(0.0)
    le.grant(1, 60)
    clock.t += 5
    assert le.find_due_checkpoints() == []
    _b2, _kv2, f = open_all(tmp_path / "f", clock=clock, min_ttl=1, checkpointing=True,
                             checkpoint_interval=1.0)
    f.grant(1, 60)  # follower: no schedule, but it records committed checkpoints
    f.apply_checkpoint(cp_req((1, 30), (99, 5)))  # unknown IDs are ignored
    assert f.lookup(1).remaining_ttl == 30
    clock.t += 5
    assert f.find_due_checkpoints() == []
    # promoted, it starts the lease from the checkpointed remaining TTL
    f.promote(1.0)
    assert f.remaining(f.lookup(1)) == 31.0
    f.demote()
    assert f._cp_heap == [] and f.lookup(1).expiry == FOREVER


def test_checkpoint_persist_survives_reopen(tmp_path):
    for persist, want in ((False, 0), (True, 17)):
        d = tmp_path / str(persist)
        d.mkdir()
        b, _kv, le = open_all(d, min_ttl=1, checkpointing=True, checkpoint_persist=persist)
        le.grant(1, 60)
        le.apply_checkpoint(cp_req((1, 17)))
        raw = lease_pb2.Lease.FromString(b.get(BUCKET_LEASE, lease_key(1)))
        assert raw.RemainingTTL == want
        b.commit()
        b.close()
        clock = Clock(50.0)
        b2, _kv2, le2 = open_all(d, clock=clock, min_ttl=1, checkpointing=True)
        assert le2.lookup(1).remaining_ttl == want
        le2.promote(1.0)
        assert le2.remaining(le2.lookup(1)) == 1.0 + (want or 60)
        b2.close()
    # a cleared checkpoint (renewal) is persisted as zero too
    b, _kv, le = open_all(tmp_path / "True", min_ttl=1, checkpointing=True,
                          checkpoint_persist=True)
    le.apply_checkpoint(cp_req((1, 0)))
    assert lease_pb2.Lease.FromString(b.get(BUCKET_LEASE, lease_key(1))).RemainingTTL == 0
    b.close()


def test_tick_proposes_checkpoints_in_batches(tmp_path):
    async def main():
        clock = Clock()
        proposed: list[rpc_pb2.LeaseCheckpointRequest] = []
        box = {}

        async def propose(field_no, payload, req):
            assert field_no == F_LEASE_CHECKPOINT
            assert rpc_pb2.LeaseCheckpointRequest.FromString(payload) == req
            proposed.append(req)
            await asyncio.sleep(0)
            box["le"].apply_checkpoint(req)

        _b, _kv, le = open_all(tmp_path, clock=clock, min_ttl=1, propose=propose,
                               checkpointing=True, checkpoint_interval=5.0)
        box["le"] = le
        le.set_primary(True)
        n = MAX_CHECKPOINT_BATCH + 500
        for i in range(1, n + 1):
            le.grant(i, 100)
        le.tick()
        assert proposed == []
        clock.t += 5.0
        le.tick()
        le.tick()  # in flight: not proposed twice
        for _ in range(10):
            await asyncio.sleep(0)
        assert [len(r.checkpoints) for r in proposed] == [MAX_CHECKPOINT_BATCH, 500]
        assert sorted(c.ID for r in proposed for c in r.checkpoints) == list(range(1, n + 1))
        assert {c.remaining_TTL for r in proposed for c in r.checkpoints} == {95}
        assert le.lookup(7).remaining_ttl == 95
        # applying rescheduled every lease: one more round an interval later
        proposed.clear()
        clock.t += 5.0
        le.tick()
        for _ in range(10):
            await asyncio.sleep(0)
        assert sum(len(r.checkpoints) for r in proposed) == n
        # a newly promoted lessor starts from the checkpoint, not the full TTL
        le.set_primary(False)
        le.set_primary(True)
        assert le.remaining(le.lookup(7)) == 90 + le.extend

    asyncio.run(main())


def test_renew_clears_checkpoint_through_raft(tmp_path):
    from petcd.api.v3.lease import LeaseService

    async def main(checkpointing: bool):
        clock = Clock()
        proposed = []
        box = {}

        async def propose(field_no, payload, req):
            proposed.append((field_no, [(c.ID, c.remaining_TTL) for c in req.checkpoints]))
            box["le"].apply_checkpoint(req)

        d = tmp_path / str(checkpointing)
        d.mkdir()
        _b, _kv, le = open_all(d, clock=clock, min_ttl=1, propose=propose,
                               checkpointing=checkpointing, checkpoint_interval=5.0,
                               checkpoint_persist=True)
        box["le"] = le

        class Srv:
            lead = 1
            learner = False
            lessor = le
            request_timeout_s = 1.0

            def is_leader(self):
                return True

        svc = LeaseService(Srv())
        le.set_primary(True)
        le.grant(1, 60)
        le.checkpoint(1, 40)
        clock.t += 3
        assert await svc.renew(1) == 60
        assert le.lookup(1).remaining_ttl == 0
        assert le.remaining(le.lookup(1)) == 60
        if checkpointing:
            assert proposed == [(F_LEASE_CHECKPOINT, [(1, 0)])]
        else:
            assert proposed == []
        proposed.clear()
        assert await svc.renew(1) == 60  # nothing to clear: no Raft entry
        assert proposed == []
        assert await svc.renew(99) == 0

    asyncio.run(main(True))
    asyncio.run(main(False))


def test_checkpoint_entry_roundtrip_through_server_codec():
    from petcd.proto.etcdserverpb import raft_internal_pb2
    from petcd.server.etcdserver import F_LEASE_CHECKPOINT as SRV_F
    from petcd.server.etcdserver import decode_internal, encode_internal

    assert SRV_F == F_LEASE_CHECKPOINT == 11
    req = cp_req((5, 30), (6, 0))
    data = encode_internal(77, SRV_F, req.SerializeToString())
    assert decode_internal(data) == (77, 11, req)
    # etcd's own encoding of the same request parses the same way
    go = raft_internal_pb2.InternalRaftRequest(ID=78, lease_checkpoint=req).SerializeToString()
    assert decode_internal(go) == (78, 11, req)


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
        learner = False

        def is_leader(self):
            return False

    _b, _kv, le = open_all(tmp_path)
    srv = Srv()
    srv.lessor = le
    with pytest.raises(ErrNoLeader):
        asyncio.run(LeaseService(srv).renew(1))
