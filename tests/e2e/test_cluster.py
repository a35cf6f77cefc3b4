"""Three-member clusters of real processes (petcd or etcd) with faults on the peer links.

Every expectation here is what etcd 3.4 does; the same tests run against petcd.  Peer
traffic goes through the fault-injecting proxy of tests/cluster.py, so partitions are real
TCP cuts.  Failing etcdctl calls use a short --command-timeout to keep the file fast; the
error texts they print are checked against FAIL_RE (the set etcd produces, which varies with
timing: the client's deadline and the server's can expire in either order).
"""

from __future__ import annotations

import os
import re
import threading
import time

import grpc
import pytest
from cluster import FAST_ARGS, Cluster, wait_for
from harness import ETCD, ETCDCTL

from petcd.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

IMPLS = ["etcd", "petcd"]

# What etcdctl 3.4 prints when a write or a linearizable read cannot reach a quorum:
#   client deadline first:  "Error: context deadline exceeded"
#   server gave up waiting for the commit (the proposal was in a leader's log):
#       "Error: etcdserver: request timed out[, possibly due to ...]"
#   proposal blocked with no leader until the server's own deadline (long --command-timeout):
#       "Error: rpc error: code = Unknown desc = context deadline exceeded"
# etcd never fails such a put fast with "etcdserver: no leader": without the require-leader
# metadata (etcdctl does not send it) a proposal waits for a leader until its deadline.
FAIL_RE = re.compile(
    r"^Error: (context deadline exceeded"
    r"|etcdserver: request timed out.*"
    r"|rpc error: code = (Unknown|DeadlineExceeded) desc = context deadline exceeded)$",
    re.M,
)

# etcd keeps 5000 entries behind each snapshot for slow followers (petcd the same), so a
# member must miss more than that for the leader to send it a snapshot.
SNAPSHOT_KEYS = int(os.environ.get("PETCD_CLUSTER_SNAPSHOT_KEYS", "5300"))


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    for binary in ([ETCD] if request.param == "etcd" else []) + [ETCDCTL]:
        if not os.path.exists(binary):
            pytest.skip(f"{binary} not installed")
    return request.param


@pytest.fixture
def make_cluster(impl):
    made: list[Cluster] = []

    def make(n: int = 3, extra_args: list[str] | None = None) -> Cluster:
        c = Cluster(n, impl=impl, extra_args=FAST_ARGS + list(extra_args or []))
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.cleanup()


def error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    return lines[-1] if lines else r.stderr.strip()[-300:]


def get(c: Cluster, i: int, key: str, *flags: str) -> str | None:
    """Value of key read through member i (None if absent); raises if etcdctl fails."""
    out = c.ctl(i, "get", key, *flags, "--command-timeout=3s").stdout.splitlines()
    return out[1] if len(out) >= 2 and out[0] == key else None


def serial_value(c: Cluster, i: int, key: str) -> str | None:
    return get(c, i, key, "--consistency=s")


def count(endpoint: str, prefix: bytes, serializable: bool = True) -> int:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        req = rpc_pb2.RangeRequest(key=prefix, range_end=end, count_only=True, serializable=serializable)
        return kv.Range(req, timeout=5).count


def retry_unavailable(fn, *args, **kw):
    """fn's result, or None when the server answered Unavailable (etcd's retryable errors)."""
    try:
        return fn(*args, **kw)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


def put_many(endpoints: list[str], prefix: str, n: int, writers: int = 8) -> int:
    """Put n keys prefix/00000.. concurrently; return how many were acknowledged."""
    acked = [0] * writers

    def run(w: int) -> None:
        with grpc.insecure_channel(endpoints[w % len(endpoints)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for k in range(w, n, writers):
                kv.Put(rpc_pb2.PutRequest(key=f"{prefix}/{k:05d}".encode(), value=b"v"), timeout=15)
                acked[w] += 1

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(acked)


def assert_write_fails(c: Cluster, i: int, key: str) -> str:
    t0 = time.monotonic()
    r = c.ctl(i, "put", key, "x", "--command-timeout=2s", check=False)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0, f"write through member {i} succeeded: {r.stdout}"
    # etcd holds the proposal until the deadline rather than failing it early
    assert elapsed >= 1.8, f"failed after {elapsed:.2f}s: {error_line(r)}"
    assert "OK" not in r.stdout
    assert FAIL_RE.search(r.stderr), r.stderr
    return error_line(r)


def followers(c: Cluster, leader: int) -> list[int]:
    return [i for i in c.live() if i != leader]


# -- tests ---------------------------------------------------------------------------


def test_three_members_agree(make_cluster):
    c = make_cluster()
    leader = c.leader()
    ids = {i: c.member_id(i) for i in (1, 2, 3)}
    for i in (1, 2, 3):
        st = c.status(i)
        assert st is not None and int(st["leader"]) == ids[leader]
    assert len(set(ids.values())) == 3

    members = c.member_list(2)
    assert sorted(m["name"] for m in members) == ["m1", "m2", "m3"]
    for m in members:
        me = c.member(c.index(m["name"]))
        assert int(m["ID"]) == ids[c.index(m["name"])]
        assert m["peerURLs"] == [me.peer_url]  # the proxy's URL, as advertised
        assert m["clientURLs"] == [f"http://{me.endpoint}"]  # started: it has published
        assert not m.get("isLearner", False)
    # the table form says "started" for each
    table = c.ctl(3, "member", "list").stdout.splitlines()
    assert len(table) == 3 and all(", started, " in ln for ln in table)

    f = followers(c, leader)[0]
    c.ctl(f, "put", "greeting", "hello")
    for i in (1, 2, 3):
        assert get(c, i, "greeting") == "hello"
    for i in (1, 2, 3):
        wait_for(lambda i=i: serial_value(c, i, "greeting") == "hello", 5, what=f"m{i} serial")


def test_kill_leader_then_restart_catches_up(make_cluster):
    c = make_cluster()
    c.ctl(1, "put", "before", "1")
    old = c.leader()
    c.kill(old)
    survivors = [i for i in (1, 2, 3) if i != old]
    new = c.leader(among=survivors)
    assert new != old
    for n, i in enumerate(survivors):
        wait_for(lambda i=i, n=n: c.ctl(i, "put", f"during{n}", str(n), "--command-timeout=3s"), 10)
    for i in survivors:
        assert get(c, i, "during0") == "0" and get(c, i, "during1") == "1"

    c.restart(old)
    for key, val in (("before", "1"), ("during0", "0"), ("during1", "1")):
        wait_for(lambda k=key, v=val: serial_value(c, old, k) == v, 10, what=f"old leader has {key}")
    assert get(c, old, "during1") == "1"  # linearizable through the restarted member
    assert c.leader() in (1, 2, 3)


def test_isolated_follower_catches_up_after_heal(make_cluster):
    c = make_cluster()
    leader = c.leader()
    f = followers(c, leader)[0]
    c.ctl(leader, "put", "k0", "v0")
    wait_for(lambda: serial_value(c, f, "k0") == "v0", 5)

    c.isolate(f)
    for k in range(1, 6):
        c.ctl(leader, "put", f"k{k}", f"v{k}")
    # the majority carries on, the isolated member sees none of it
    other = next(i for i in (1, 2, 3) if i not in (leader, f))
    assert get(c, other, "k5") == "v5"
    assert serial_value(c, f, "k5") is None
    assert serial_value(c, f, "k0") == "v0"

    c.heal()
    wait_for(lambda: serial_value(c, f, "k5") == "v5", 15, what="isolated follower catches up")
    for k in range(6):
        assert get(c, f, f"k{k}") == f"v{k}"
    c.ctl(f, "put", "k6", "v6")
    assert get(c, leader, "k6") == "v6"


def test_partition_cuts_only_links_between_groups(make_cluster):
    c = make_cluster()
    leader = c.leader()
    f, other = followers(c, leader)
    c.partition([f], [leader, other])
    c.ctl(leader, "put", "p", "1")
    assert get(c, other, "p") == "1"
    assert serial_value(c, f, "p") is None
    # every forwarded connection has a known dialer and none crosses the cut; the majority's
    # own links are still there
    names = {i: c.member(i).name for i in (1, 2, 3)}
    conns = c.proxy.connections()
    assert c.proxy.unidentified == 0
    assert all(src is not None for src, _ in conns)
    assert not [x for x in conns if names[f] in x]
    assert {names[leader], names[other]} <= {n for x in conns for n in x}
    c.heal()
    wait_for(lambda: serial_value(c, f, "p") == "1", 15, what="partitioned member catches up")


def test_isolated_leader_loses_writes_majority_goes_on(make_cluster):
    c = make_cluster()
    c.ctl(1, "put", "base", "0")
    old = c.leader()
    c.isolate(old)

    # Sent at once, while the old leader may still believe it leads: it cannot commit.
    err = assert_write_fails(c, old, "lost")
    print(f"write to isolated leader: {err}")

    majority = [i for i in (1, 2, 3) if i != old]
    new = c.leader(among=majority)
    assert new != old
    wait_for(lambda: c.ctl(new, "put", "after", "1", "--command-timeout=3s"), 10)
    assert get(c, majority[0], "after") == "1" and get(c, majority[1], "after") == "1"

    # linearizable reads on the cut-off member fail; serializable ones answer stale data
    r = c.ctl(old, "get", "after", "--command-timeout=2s", check=False)
    assert r.returncode != 0 and FAIL_RE.search(r.stderr), r.stderr
    print(f"linearizable read on isolated member: {error_line(r)}")
    assert serial_value(c, old, "after") is None
    assert serial_value(c, old, "base") == "0"
    err2 = assert_write_fails(c, old, "lost2")
    print(f"write to isolated ex-leader later: {err2}")

    c.heal()
    wait_for(lambda: serial_value(c, old, "after") == "1", 20, what="old leader catches up")
    wait_for(lambda: get(c, old, "after") == "1", 10)
    for i in (1, 2, 3):
        assert get(c, i, "lost") is None
        assert get(c, i, "lost2") is None
        assert serial_value(c, i, "lost") is None


def test_member_down_past_snapshot_catches_up(make_cluster, impl):
    c = make_cluster(extra_args=["--snapshot-count", "100"])
    leader = c.leader()
    down = followers(c, leader)[0]
    c.ctl(leader, "put", "k/first", "1")
    wait_for(lambda: serial_value(c, down, "k/first") == "1", 5)
    c.kill(down)

    eps = [c.member(i).endpoint for i in c.live()]
    assert put_many(eps, "k/n", SNAPSHOT_KEYS) == SNAPSHOT_KEYS

    c.restart(down)
    ep = c.member(down).endpoint
    wait_for(lambda: count(ep, b"k/") == SNAPSHOT_KEYS + 1, 60, 0.3, what="snapshot catch-up")
    # etcd may answer a linearizable read "leader changed" (Unavailable, which clients
    # retry) while the restarted member disturbs the cluster: retry as a client would.
    wait_for(lambda: retry_unavailable(count, ep, b"k/", serializable=False) == SNAPSHOT_KEYS + 1,
             10, 0.3, what="linearizable count")
    assert get(c, down, f"k/n/{SNAPSHOT_KEYS - 1:05d}") == "v"
    if impl == "etcd":
        # it was brought up to date by a snapshot, not by log entries
        assert any("received and saved database snapshot" in ln for ln in c.member(down).log_lines)
    c.ctl(down, "put", "k/last", "1")
    assert get(c, leader, "k/last") == "1"


def test_membership_changes(make_cluster):
    c = make_cluster()

    # a learner joins, replicates, refuses linearizable reads, then is promoted
    c.ctl(1, "put", "pre", "1")
    j = c.add_member("m4", learner=True)
    new = c.member(j)
    info = {m["name"]: m for m in c.member_list()}
    assert info["m4"].get("isLearner") is True
    assert info["m4"]["peerURLs"] == [new.peer_url]
    wait_for(lambda: serial_value(c, j, "pre") == "1", 10, what="learner replicates")
    r = c.ctl(j, "get", "pre", "--command-timeout=2s", check=False)
    assert r.returncode != 0 and "etcdserver: rpc not supported for learner" in r.stderr
    mid4 = f"{c.member_id(j):x}"

    def promote() -> bool:
        r = c.ctl(1, "member", "promote", mid4, check=False)
        if r.returncode != 0:
            assert "can only promote a learner member which is in sync with leader" in r.stderr
            return False
        assert f"Member {c.member_id(j):16x} promoted in cluster" in r.stdout  # etcdctl pads to 16
        return True

    wait_for(promote, 20, 0.5, what="promote")
    info = {m["name"]: m for m in c.member_list()}
    assert not info["m4"].get("isLearner", False)
    c.ctl(j, "put", "via-m4", "1")
    assert get(c, j, "via-m4") == "1"

    # update m2's peer URL to a new proxy port and drop the old one: traffic moves over
    old_port = c.member(2).advertise_port
    port = c.new_peer_frontend(2)
    r = c.ctl(1, "member", "update", f"{c.member_id(2):x}", f"--peer-urls=http://127.0.0.1:{port}")
    assert f"Member {c.member_id(2):16x} updated in cluster" in r.stdout
    c.proxy.remove(old_port)
    c.member(2).advertise_port = port
    info = {m["name"]: m for m in c.member_list()}
    assert info["m2"]["peerURLs"] == [f"http://127.0.0.1:{port}"]
    c.ctl(1, "put", "after-update", "1")
    wait_for(lambda: serial_value(c, 2, "after-update") == "1", 10, what="m2 over its new URL")

    # remove a follower: its process exits by itself
    leader = c.leader()
    victim = next(i for i in (3, 1, 2, 4) if i != leader)
    r = c.remove_member(victim)
    assert f"Member {c.member_id(victim):16x} removed from cluster" in r.stdout
    c.member(victim).proc.wait(20)
    names = sorted(m["name"] for m in c.member_list())
    assert c.member(victim).name not in names and len(names) == 3

    # move the leadership to a chosen follower
    leader = c.leader()
    target = next(i for i in c.live() if i != leader)
    tid = f"{c.member_id(target):x}"
    r = c.ctl_all("move-leader", tid)
    assert f"Leadership transferred from {c.member_id(leader):x} to {tid}" in r.stdout
    assert c.leader() == target
    c.ctl(target, "put", "after-move", "1")
    for i in c.live():
        assert get(c, i, "after-move") == "1"


def test_whole_cluster_restart_keeps_acknowledged_writes(make_cluster):
    c = make_cluster()
    c.leader()
    acked: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with grpc.insecure_channel(c.member(1 + w % 3).endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            k = 0
            while not stop.is_set():
                key = f"acked/{w}/{k:06d}".encode()
                try:
                    kv.Put(rpc_pb2.PutRequest(key=key, value=key), timeout=5)
                except grpc.RpcError:
                    return  # killed mid-request: outcome unknown, not counted
                with lock:
                    acked.append(key)
                k += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 200, 20, 0.05)
    c.kill_all()  # SIGKILL every member while writes are in flight
    stop.set()
    for t in threads:
        t.join(10)
    n = len(acked)
    assert n >= 200

    c.restart_all()
    c.leader()
    for i in (1, 2, 3):
        ep = c.member(i).endpoint
        wait_for(lambda ep=ep: count(ep, b"acked/") >= n, 20, what=f"m{i} has the acked writes")
    with grpc.insecure_channel(c.member(2).endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        resp = kv.Range(rpc_pb2.RangeRequest(key=b"acked/", range_end=b"acked0"), timeout=10)
        have = {kvp.key: kvp.value for kvp in resp.kvs}
    missing = [k for k in acked if have.get(k) != k]
    assert not missing, f"{len(missing)} of {n} acknowledged writes lost, e.g. {missing[:3]}"


def test_minority_loss_stops_writes_until_a_member_returns(make_cluster):
    c = make_cluster()
    c.ctl(1, "put", "base", "0")
    leader = c.leader()
    down = followers(c, leader)
    for i in down:
        c.kill(i)

    errors = []
    for n in range(3):
        errors.append(assert_write_fails(c, leader, f"nq{n}"))
    print("writes without quorum:", errors)
    with grpc.insecure_channel(c.member(leader).endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError):
            kv.Put(rpc_pb2.PutRequest(key=b"nq-grpc", value=b"x"), timeout=2)
    r = c.ctl(leader, "get", "base", "--command-timeout=2s", check=False)
    assert r.returncode != 0 and FAIL_RE.search(r.stderr), r.stderr

    # Once the lone member has stepped down (check-quorum), a proposal waits for a leader
    # until the server's own request timeout (5s + 2 x election timeout = 6s here) and the
    # raw context error comes back as gRPC Unknown, before the client's 10s deadline.
    wait_for(lambda: int((c.status(leader) or {"leader": 1}).get("leader", 0)) == 0, 5)
    t0 = time.monotonic()
    r = c.ctl(leader, "put", "nq-long", "x", "--command-timeout=10s", check=False)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and 5.5 < elapsed < 9, (elapsed, r.stderr)
    assert error_line(r) == "Error: rpc error: code = Unknown desc = context deadline exceeded"
    assert serial_value(c, leader, "base") == "0"

    c.restart(down[0])
    c.leader(among=[leader, down[0]])
    wait_for(lambda: c.ctl(leader, "put", "back", "1", "--command-timeout=3s"), 15)
    assert get(c, down[0], "back") == "1"
    assert get(c, leader, "base") == "0"
