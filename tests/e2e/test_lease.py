"""Leases and auto compaction through the real etcdctl (and the same session against etcd)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time

import pytest
from harness import ETCDCTL, ServerProcess, free_port

pytestmark = pytest.mark.e2e


def grant(s: ServerProcess, ttl: int) -> str:
    out = s.ctl("lease", "grant", str(ttl)).stdout.strip()
    m = re.fullmatch(r"lease ([0-9a-f]{1,16}) granted with TTL\((\d+)s\)", out)
    assert m, out
    return m.group(1)


def get_keys(s: ServerProcess, prefix: str) -> list[bytes]:
    r = json.loads(s.ctl("get", "--prefix", prefix, "-w", "json").stdout)
    return [base64.b64decode(kv["key"]) for kv in r.get("kvs", [])]


def test_grant_put_timetolive_list_revoke(petcd_server):
    s = petcd_server
    out = s.ctl("lease", "grant", "1").stdout.strip()
    assert re.fullmatch(r"lease [0-9a-f]{1,16} granted with TTL\(2s\)", out)  # minimum TTL
    lid = grant(s, 100)
    s.ctl("put", "zoo1", "a", "--lease", lid)
    s.ctl("put", "zoo2", "b", "--lease", lid)
    s.ctl("put", "free", "c")
    out = s.ctl("lease", "timetolive", lid, "--keys").stdout.strip()
    m = re.fullmatch(
        rf"lease {lid} granted with TTL\(100s\), remaining\((\d+)s\), attached keys\(\[zoo1 zoo2\]\)",
        out,
    )
    assert m and 98 <= int(m.group(1)) <= 100, out
    ttl = json.loads(s.ctl("lease", "timetolive", lid, "-w", "json").stdout)
    assert ttl["id"] == int(lid, 16) and ttl["granted-ttl"] == 100
    listed = s.ctl("lease", "list").stdout.split()
    assert listed[:3] == ["found", "2", "leases"] and lid in listed[3:]
    rev = json.loads(s.ctl("get", "free", "-w", "json").stdout)["header"]["revision"]
    assert s.ctl("lease", "revoke", lid).stdout.strip() == f"lease {lid} revoked"
    # both keys went in one revision
    hdr = json.loads(s.ctl("get", "free", "-w", "json").stdout)["header"]
    assert hdr["revision"] == rev + 1
    assert s.ctl("get", "zoo", "--prefix").stdout == ""
    assert s.ctl("get", "free", "--print-value-only").stdout.strip() == "c"
    assert s.ctl("lease", "timetolive", lid).stdout.strip() == f"lease {lid} already expired"
    r = s.ctl("lease", "revoke", lid, check=False)
    assert r.returncode != 0 and "etcdserver: requested lease not found" in r.stderr
    r = s.ctl("put", "x", "y", "--lease", "1234", check=False)
    assert r.returncode != 0 and "Error: etcdserver: requested lease not found" in r.stderr


def test_keep_alive_stream_and_renewal(petcd_server):
    s = petcd_server
    lid = grant(s, 3)
    s.ctl("put", "held", "v", "--lease", lid)
    p = subprocess.Popen(
        [ETCDCTL, f"--endpoints={s.endpoint}", "lease", "keep-alive", lid],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    try:
        lines = [p.stdout.readline().strip() for _ in range(2)]
        assert lines == [f"lease {lid} keepalived with TTL(3)"] * 2
        time.sleep(3.5)  # longer than the TTL: the keep-alives hold the key
        assert s.ctl("get", "held", "--print-value-only").stdout.strip() == "v"
    finally:
        p.terminate()
        p.wait(10)
    r = s.ctl("lease", "keep-alive", "--once", "0000000000001234", check=False)
    assert r.returncode != 0 and "requested lease not found" in r.stderr


def test_expiry_deletes_keys_near_ttl(petcd_server):
    s = petcd_server
    t0 = time.monotonic()
    lid = grant(s, 2)
    s.ctl("put", "eph/a", "1", "--lease", lid)
    s.ctl("put", "eph/b", "2", "--lease", lid)
    assert time.monotonic() - t0 < 1.5
    assert len(get_keys(s, "eph/")) == 2
    while get_keys(s, "eph/"):
        assert time.monotonic() - t0 < 2 + 2.0, "lease did not expire in time"
        time.sleep(0.1)
    assert time.monotonic() - t0 >= 1.9
    assert s.ctl("lease", "list").stdout.strip() == "found 0 leases"


def test_leases_survive_restart(tmp_path):
    s = ServerProcess(data_dir=str(tmp_path / "data")).start()
    try:
        long = grant(s, 100)
        short = grant(s, 2)
        s.ctl("put", "k1", "a", "--lease", long)
        s.ctl("put", "k2", "b", "--lease", long)
        s.ctl("put", "k3", "c", "--lease", short)
        s.restart()
        out = s.ctl("lease", "timetolive", long, "--keys").stdout.strip()
        assert out.startswith(f"lease {long} granted with TTL(100s), remaining(")
        assert out.endswith("attached keys([k1 k2])")
        remaining = int(re.search(r"remaining\((\d+)s\)", out).group(1))
        assert remaining >= 99  # a fresh TTL (plus the promotion extension)
        assert set(s.ctl("lease", "list").stdout.split()[3:]) == {long, short}
        # the short lease expires after the restart and takes its key with it
        deadline = time.monotonic() + 6
        while s.ctl("get", "k3").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert s.ctl("lease", "revoke", long).stdout.strip() == f"lease {long} revoked"
        assert s.ctl("get", "k", "--prefix").stdout == ""
        s.restart()
        assert s.ctl("lease", "list").stdout.strip() == "found 0 leases"
        assert s.ctl("get", "k", "--prefix").stdout == ""
    finally:
        s.cleanup()


def test_auto_compaction_periodic(tmp_path):
    s = ServerProcess(
        data_dir=str(tmp_path / "data"),
        extra_args=["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"],
    ).start()
    try:
        for i in range(5):
            s.ctl("put", "k", str(i))
        deadline = time.monotonic() + 10
        while True:
            r = s.ctl("get", "k", "--rev=2", check=False)
            if r.returncode != 0:
                break
            assert time.monotonic() < deadline, "no auto compaction"
            time.sleep(0.2)
        assert "Error: etcdserver: mvcc: required revision has been compacted" in r.stderr
        assert any("completed auto periodic compaction" in line for line in s.log_lines)
    finally:
        s.cleanup()


def test_auto_compaction_revision(tmp_path, monkeypatch):
    """In process (etcd checks every 5 minutes; the interval is shortened here), served over
    gRPC and checked with etcdctl."""
    import grpc

    from petcd.api.v3.services import all_handlers
    from petcd.cli.config import parse_args
    from petcd.proto.etcdserverpb import rpc_pb2
    from petcd.server import compactor
    from petcd.server.etcdserver import F_PUT, EtcdServer

    monkeypatch.setattr(compactor, "REVISION_INTERVAL", 0.2)
    port, peer = free_port(), free_port()
    cfg = parse_args(
        [
            "--data-dir", str(tmp_path / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{port}",
            "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "3",
        ],
        {},
    )

    async def ctl(*args: str) -> tuple[int, str]:
        p = await asyncio.create_subprocess_exec(
            ETCDCTL, f"--endpoints=127.0.0.1:{port}", *args,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        out, _ = await p.communicate()
        return p.returncode, out.decode()

    async def main() -> None:
        srv = EtcdServer(cfg)
        srv.open()
        await srv.start()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(all_handlers(srv))
        server.add_insecure_port(f"127.0.0.1:{port}")
        try:
            await asyncio.wait_for(srv.leader_ready.wait(), 10)
            await server.start()
            for i in range(10):
                req = rpc_pb2.PutRequest(key=b"k", value=b"%d" % i)
                await srv.propose(F_PUT, req.SerializeToString(), req)
            assert srv.kv.rev == 11
            deadline = time.monotonic() + 5
            while srv.kv.compact_rev != 8:
                assert time.monotonic() < deadline, srv.kv.compact_rev
                await asyncio.sleep(0.05)
            rc, out = await ctl("get", "k", "--rev=7")
            assert rc != 0 and "required revision has been compacted" in out
            rc, out = await ctl("get", "k", "--rev=8", "--print-value-only")
            assert rc == 0 and out.strip() == "6"
        finally:
            await server.stop(0)
            await srv.stop()

    asyncio.run(main())


# -- differential -------------------------------------------------------------------------

_HEX_ID = re.compile(r"\b[0-9a-f]{12,16}\b")  # a lease ID prints without leading zeros


def _session(s: ServerProcess) -> list[tuple[int, str, str]]:
    """Run the lease session; lease IDs (hex or decimal) become L1, L2, ... by appearance."""
    alias: dict[int, str] = {}
    out: list[tuple[int, str, str]] = []

    def name(lid: int) -> str:
        return alias.setdefault(lid, f"L{len(alias) + 1}")

    def run(*args: str) -> None:
        real = {v: f"{k:016x}" for k, v in alias.items()}
        r = s.ctl(*[real.get(a, a) for a in args], check=False)
        text = r.stdout
        text = re.sub(r'"(ID|id|lease)":(\d+)', lambda m: f'"{m.group(1)}":{name(int(m.group(2)))}', text)
        # header IDs go first: a decimal ID of 12-16 digits would look like a hex lease ID
        text = re.sub(r'"(cluster_id|member_id|raft_term)":\d+', r'"\1":X', text)
        text = _HEX_ID.sub(lambda m: name(int(m.group(0), 16)), text)
        # etcd lists a lease's keys in Go map order
        text = re.sub(
            r'"keys":\[([^\]]*)\]',
            lambda m: '"keys":[' + ",".join(sorted(m.group(1).split(","))) + "]",
            text,
        )
        # the remaining TTL depends on timing
        text = re.sub(r"remaining\((99|100)s\)", "remaining(N)", text)
        text = re.sub(r'"ttl":(99|100),', '"ttl":N,', text)
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        out.append((r.returncode, text, err))

    run("lease", "grant", "100")  # L1
    run("lease", "grant", "60", "-w", "json")  # L2
    run("put", "foo", "bar", "--lease", "L1")
    run("put", "foo2", "bar2", "--lease", "L1")
    run("put", "nolease", "x", "--lease", "00000000000004d2")
    run("lease", "timetolive", "L1")
    run("lease", "timetolive", "L1", "--keys", "-w", "json")
    run("lease", "timetolive", "00000000000004d2")
    run("lease", "timetolive", "00000000000004d2", "-w", "json")
    run("lease", "list")
    run("lease", "list", "-w", "json")
    run("get", "foo", "-w", "json")
    run("lease", "keep-alive", "--once", "L2")
    run("lease", "keep-alive", "--once", "00000000000004d2")
    run("lease", "grant", "9000000001")
    run("lease", "revoke", "L1", "-w", "json")
    run("lease", "revoke", "L1")
    run("get", "foo", "--prefix")
    run("lease", "grant", "1")  # raised to the minimum TTL
    return out


@pytest.mark.compat
def test_lease_session_matches_etcd(etcd_server, petcd_server):
    want = _session(etcd_server)
    got = _session(petcd_server)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g == w, f"step {i}"


CHECKPOINT_FLAGS = [
    "--experimental-enable-lease-checkpoint",
    "--experimental-lease-checkpoint-interval", "1s",
]


def _remaining(s: ServerProcess, lid: str) -> int:
    out = s.ctl("lease", "timetolive", lid).stdout.strip()
    m = re.fullmatch(rf"lease {lid} granted with TTL\(60s\), remaining\((\d+)s\)", out)
    assert m, out
    return int(m.group(1))


def test_lease_checkpoint_survives_restart(tmp_path):
    """With checkpointing + persist, a restarted leader resumes a lease from its last
    checkpoint; without persist (or without checkpointing) it starts over, as etcd does."""
    servers = {
        "persist": ServerProcess(
            data_dir=str(tmp_path / "p"),
            extra_args=[*CHECKPOINT_FLAGS, "--experimental-enable-lease-checkpoint-persist"],
        ),
        "no-persist": ServerProcess(data_dir=str(tmp_path / "n"), extra_args=CHECKPOINT_FLAGS),
        "off": ServerProcess(data_dir=str(tmp_path / "o")),
    }
    try:
        for s in servers.values():
            s.start()
        t0 = time.monotonic()
        lids = {k: grant(s, 60) for k, s in servers.items()}
        time.sleep(4.5)  # past several 1 s checkpoints
        for s in servers.values():
            s.restart()
        elapsed = time.monotonic() - t0
        persisted = _remaining(servers["persist"], lids["persist"])
        # last checkpoint (>= 3 s in) plus the 1 s promotion extension, minus the restart
        assert 60 - elapsed - 2 <= persisted <= 58, (persisted, elapsed)
        assert _remaining(servers["no-persist"], lids["no-persist"]) >= 59
        assert _remaining(servers["off"], lids["off"]) >= 59
        # a crash (kill -9) keeps it too: checkpoints are in the WAL and the backend
        p = servers["persist"]
        time.sleep(1.5)
        p.kill()
        p.start()
        after_crash = _remaining(p, lids["persist"])
        assert after_crash <= persisted, (after_crash, persisted)
        # a renewal clears the checkpoint: the next restart starts from the full TTL
        out = p.ctl("lease", "keep-alive", "--once", lids["persist"]).stdout
        assert "keepalived with TTL(60)" in out
        p.restart()
        assert _remaining(p, lids["persist"]) >= 59
    finally:
        for s in servers.values():
            s.cleanup()
