"""Jepsen-style: a 3-member cluster of real processes under faults, its history checked.

Client threads run random put / get / delete / compare-and-set on a few keys, with
unique values, against random members, through gRPC with a short deadline. A call that
ends with a deadline or unavailable error (or any error whose effect is unclear) has an
unknown outcome; a definite refusal (invalid argument, failed precondition, ...) means
the op did not happen and it is left out. Times are real monotonic times: taken before
the request is sent and after the reply arrives.

Meanwhile a nemesis isolates the leader, partitions a follower off, SIGKILLs a member
(or the leader) and restarts it, healing between faults. At the end everything is healed,
a final linearizable read of every key joins the history, and:
- the history is linearizable (tests/lincheck.py; serializable reads are not recorded);
- every acknowledged write is either the final value or may have been overwritten by
  another write that did not finish before it started;
- all members agree on the revision and on `hashkv` at it.

The same test runs against real etcd as a control: the checker must pass there too.
Seed: PETCD_LIN_SEED=<n>; duration: PETCD_LIN_SECONDS (default 24); PETCD_LIN_STALE_GETS=1
records serializable gets as linearizable ones, to see the check fail.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from cluster import FAST_ARGS, Cluster, wait_for
from harness import ETCD, ETCDCTL
from lincheck import CAS, DELETE, GET, PUT, UNKNOWN, BudgetExceededError, Op, check

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

KEYS = [b"lin/a", b"lin/b", b"lin/c", b"lin/d"]
CLIENTS = 8
DEADLINE_S = 1.5
SECONDS = float(os.environ.get("PETCD_LIN_SECONDS", "24"))
SEED = int(os.environ.get("PETCD_LIN_SEED", str(random.randrange(1 << 30))))
# Sensitivity check, by hand only: record serializable gets as if linearizable; with a
# member cut off, its stale answers should make the check fail.
STALE_GETS = os.environ.get("PETCD_LIN_STALE_GETS") == "1"

# The request certainly did not take effect.
DEFINITE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}

# Reconnect quickly to a restarted member, instead of grpc's default backoff (1 s, growing).
CHANNEL_OPTS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@pytest.fixture(params=["etcd", "petcd"])
def impl(request) -> str:
    for binary in ([ETCD] if request.param == "etcd" else []) + [ETCDCTL]:
        if not os.path.exists(binary):
            pytest.skip(f"{binary} not installed")
    return request.param


@dataclass
class Stubs:
    channels: list[grpc.Channel]
    kv: list[rpc_pb2_grpc.KVStub] = field(default_factory=list)
    mt: list[rpc_pb2_grpc.MaintenanceStub] = field(default_factory=list)

    @classmethod
    def open(cls, endpoints: list[str]) -> Stubs:
        chans = [grpc.insecure_channel(ep, options=CHANNEL_OPTS) for ep in endpoints]
        return cls(
            chans,
            [rpc_pb2_grpc.KVStub(ch) for ch in chans],
            [rpc_pb2_grpc.MaintenanceStub(ch) for ch in chans],
        )

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


# -- the workload ------------------------------------------------------------------------


def cas_request(key: bytes, expect: str | None, new: str) -> rpc_pb2.TxnRequest:
    if expect is None:  # "absent": never created in its current generation
        cmp = rpc_pb2.Compare(
            key=key,
            target=rpc_pb2.Compare.CompareTarget.CREATE,
            result=rpc_pb2.Compare.CompareResult.EQUAL,
            create_revision=0,
        )
    else:
        cmp = rpc_pb2.Compare(
            key=key,
            target=rpc_pb2.Compare.CompareTarget.VALUE,
            result=rpc_pb2.Compare.CompareResult.EQUAL,
            value=expect.encode(),
        )
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=new.encode()))
    return rpc_pb2.TxnRequest(compare=[cmp], success=[put])


def do_op(kv: rpc_pb2_grpc.KVStub, kind: str, key: bytes, arg, timeout: float = DEADLINE_S):
    """Run one op; return its result as lincheck wants it."""
    if kind == PUT:
        kv.Put(rpc_pb2.PutRequest(key=key, value=arg.encode()), timeout=timeout)
        return None
    if kind == GET:
        r = kv.Range(rpc_pb2.RangeRequest(key=key, serializable=STALE_GETS), timeout=timeout)
        return r.kvs[0].value.decode() if r.kvs else None
    if kind == DELETE:
        r = kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=timeout)
        return r.deleted > 0
    r = kv.Txn(cas_request(key, *arg), timeout=timeout)
    return r.succeeded


class Workload:
    def __init__(self, stubs: Stubs, seed: int) -> None:
        self.stubs = stubs
        self.seed = seed
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()

    def record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def count(self, what: str, error: str | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if error:
                self.errors[error] += 1

    def client(self, cid: int) -> None:
        rng = random.Random(self.seed * 1009 + cid)
        seen: list[str | None] = [None]  # values this client saw or wrote: cas expectations
        n = 0
        while not self.stop.is_set():
            n += 1
            key = rng.choice(KEYS)
            kind = rng.choices([PUT, GET, CAS, DELETE], [4, 4, 3, 1])[0]
            val = f"{cid}.{n}"
            arg = (rng.choice(seen[-4:]), val) if kind == CAS else val if kind == PUT else None
            member = rng.randrange(len(self.stubs.kv))
            op = Op(cid, kind, key.decode(), arg, None, 0.0, UNKNOWN)
            op.call_t = time.monotonic()
            try:
                ret = do_op(self.stubs.kv[member], kind, key, arg)
            except grpc.RpcError as e:
                code = e.code()
                if code in DEFINITE:
                    self.count(f"{kind} refused", f"{kind} {code.name}: {e.details()}")
                    continue  # it did not happen: not part of the history
                self.count(f"{kind} unknown", f"{kind} {code.name}")
                if kind != GET:
                    self.record(op)  # ret_t stays UNKNOWN; unknown gets say nothing
                time.sleep(0.05)  # don't spin on a dead member
                continue
            op.ret_t = time.monotonic()
            op.ret = ret
            self.record(op)
            self.count(f"{kind} ok")
            if kind == GET:
                seen.append(ret)
            elif kind == PUT or (kind == CAS and ret):
                seen.append(val)

    def final_reads(self) -> dict[str, str | None]:
        """A linearizable read of every key through member 1 (retried until it answers)."""
        out = {}
        for key in KEYS:

            def read(key: bytes = key) -> tuple[Op]:
                op = Op(CLIENTS, GET, key.decode(), None, None, time.monotonic(), UNKNOWN)
                op.ret = do_op(self.stubs.kv[0], GET, key, None, timeout=3.0)
                op.ret_t = time.monotonic()
                return (op,)

            (op,) = wait_for(read, 30, 0.2, f"final read of {key!r}")
            self.record(op)
            out[op.key] = op.ret
        return out


# -- the nemesis ---------------------------------------------------------------------------


def find_leader(c: Cluster, stubs: Stubs) -> int | None:
    """The member that says it leads and that a majority of those answering follow."""
    ids: dict[int, int] = {}
    votes: Counter[int] = Counter()
    for i in c.live():
        try:
            st = stubs.mt[i - 1].Status(rpc_pb2.StatusRequest(), timeout=0.5)
        except grpc.RpcError:
            continue
        ids[st.header.member_id] = i
        if st.leader:
            votes[st.leader] += 1
    answered = sum(votes.values())
    for mid, i in ids.items():
        if votes[mid] * 2 > answered and answered:
            return i
    return None


def nemesis(c: Cluster, stubs: Stubs, rng: random.Random, stop: threading.Event,
            faults: Counter[str]) -> None:
    members = [1, 2, 3]
    kinds: list[str] = []
    while not stop.wait(rng.uniform(0.8, 1.6)):
        if not kinds:  # every kind once per round, in a random order
            kinds = ["isolate_leader", "partition_follower", "kill", "kill_leader"]
            rng.shuffle(kinds)
        kind = kinds.pop()
        leader = find_leader(c, stubs)
        if leader is None and kind in ("isolate_leader", "kill_leader"):
            kind = "kill"
        faults[kind] += 1
        if kind == "isolate_leader":
            c.isolate(leader)
        elif kind == "partition_follower":
            f = rng.choice([i for i in members if i != leader])
            c.partition([f], [i for i in members if i != f])
        else:
            victim = leader if kind == "kill_leader" else rng.choice(members)
            c.kill(victim)
        stop.wait(rng.uniform(1.0, 2.5))
        c.heal()
        for i in members:
            if not c.member(i).alive:
                c.member(i).start(30)
                faults["restart"] += 1


# -- checks -----------------------------------------------------------------------------------


def lost_writes(ops: list[Op], final: dict[str, str | None]) -> list[Op]:
    """Acknowledged puts (and swaps) whose value is gone with no write that could have
    replaced it: every other possibly-effective write on the key finished before it began."""
    out = []
    for p in ops:
        if p.ret_t == UNKNOWN or not (p.kind == PUT or (p.kind == CAS and p.ret is True)):
            continue
        val = p.arg if p.kind == PUT else p.arg[1]
        if final.get(p.key) == val:
            continue
        could_overwrite = any(
            w is not p
            and w.key == p.key
            and w.ret_t > p.call_t
            and (
                w.kind == PUT
                or (w.kind == DELETE and (w.ret_t == UNKNOWN or w.ret is not False))
                or (w.kind == CAS and (w.ret_t == UNKNOWN or w.ret is True))
            )
            for w in ops
        )
        if not could_overwrite:
            out.append(p)
    return out


def settled_hashes(c: Cluster, stubs: Stubs) -> dict[int, tuple[int, int]]:
    """Once every member reports the same revision: {member: (revision, hashkv at it)}."""

    def same_revision() -> int | None:
        revs = {
            i: stubs.mt[i - 1].Status(rpc_pb2.StatusRequest(), timeout=2).header.revision
            for i in (1, 2, 3)
        }
        return revs[1] if len(set(revs.values())) == 1 else None

    rev = wait_for(same_revision, 30, 0.2, "all members at one revision")
    return {
        i: (rev, stubs.mt[i - 1].HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=5).hash)
        for i in (1, 2, 3)
    }


def test_linearizable_under_faults(impl):
    rng = random.Random(SEED)
    print(f"\n{impl}: seed {SEED} (replay: PETCD_LIN_SEED={SEED})")
    faults: Counter[str] = Counter()
    with Cluster(3, impl=impl, extra_args=FAST_ARGS) as c:
        stubs = Stubs.open(c.endpoints(live_only=False))
        try:
            wait_for(lambda: find_leader(c, stubs), 20, 0.2, "a leader")
            w = Workload(stubs, SEED)
            threads = [
                threading.Thread(target=w.client, args=(i,), daemon=True, name=f"client{i}")
                for i in range(CLIENTS)
            ]
            stop_nemesis = threading.Event()
            nem_error: list[BaseException] = []

            def run_nemesis() -> None:
                try:
                    nemesis(c, stubs, rng, stop_nemesis, faults)
                except BaseException as e:  # noqa: BLE001 - reported by the test
                    nem_error.append(e)

            nem = threading.Thread(target=run_nemesis, daemon=True, name="nemesis")
            t0 = time.monotonic()
            for t in threads:
                t.start()
            nem.start()
            time.sleep(SECONDS)
            stop_nemesis.set()
            nem.join(60)
            w.stop.set()
            for t in threads:
                t.join(DEADLINE_S + 5)
            assert not nem.is_alive() and not any(t.is_alive() for t in threads)
            assert not nem_error, nem_error
            ran = time.monotonic() - t0

            # Settle: every link healed, every member running, a leader.
            c.heal()
            for i in (1, 2, 3):
                if not c.member(i).alive:
                    c.member(i).start(30)
            wait_for(lambda: find_leader(c, stubs), 20, 0.2, "a leader after healing")
            final = w.final_reads()
            hashes = settled_hashes(c, stubs)
        finally:
            stubs.close()

    ops = w.ops
    known = sum(o.ret_t != UNKNOWN for o in ops)
    print(f"{impl}: {len(ops)} ops in {ran:.1f}s ({known} known, {len(ops) - known} unknown)")
    print(f"{impl}: ops {dict(sorted(w.counts.items()))}")
    print(f"{impl}: errors {dict(sorted(w.errors.items()))}")
    print(f"{impl}: faults {dict(sorted(faults.items()))}")
    print(f"{impl}: final {final}; revision/hashkv {hashes}")

    # The run must have exercised something: enough known writes and reads, and faults.
    assert w.counts["put ok"] + w.counts["cas ok"] > 50, w.counts
    assert w.counts["get ok"] > 50, w.counts
    assert sum(faults.values()) >= 4, faults

    lost = lost_writes(ops, final)
    assert not lost, "acknowledged writes lost:\n" + "\n".join(map(str, lost[:10]))
    assert len({h for _r, h in hashes.values()}) == 1, f"members differ: {hashes}"
    t = time.monotonic()
    try:
        r = check(ops, max_steps=5_000_000)
    except BudgetExceededError as e:
        # Undecided is neither a pass nor a violation: the search over this history's
        # unknown outcomes did not finish. A larger max_steps (or fewer clients) decides it.
        pytest.skip(f"seed {SEED}: linearizability undecided within 5M steps: {e}")
    print(f"{impl}: linearizability check took {time.monotonic() - t:.1f}s")
    assert r.ok, f"seed {SEED}: not linearizable on key {r.bad_key!r}:\n{r.explanation}"
