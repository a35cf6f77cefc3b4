"""Maintenance surface through the real etcdctl: status, hashkv, defrag, snapshot, alarms, quota."""

from __future__ import annotations

import json
import os

import pytest
from harness import ServerProcess

pytestmark = pytest.mark.e2e


def test_endpoint_status_json(petcd_server):
    petcd_server.ctl("put", "a", "1")
    st = json.loads(petcd_server.ctl("endpoint", "status", "-w", "json").stdout)[0]
    assert st["Endpoint"] == petcd_server.endpoint
    s = st["Status"]
    assert s["version"] == "3.4.23"
    assert s["header"]["revision"] == 2
    assert s["leader"] == s["header"]["member_id"]
    assert s["raftIndex"] >= 4 and s["raftAppliedIndex"] == s["raftIndex"]
    assert s["raftTerm"] >= 1
    assert s["dbSize"] > 0 and 0 < s["dbSizeInUse"] <= s["dbSize"]
    simple = petcd_server.ctl("endpoint", "status").stdout.strip().split(", ")
    assert simple[0] == petcd_server.endpoint
    assert simple[1] == f"{s['header']['member_id']:x}"
    assert simple[2] == "3.4.23" and simple[4] == "true" and simple[5] == "false"


def test_endpoint_health(petcd_server):
    r = petcd_server.ctl("endpoint", "health")
    assert f"{petcd_server.endpoint} is healthy: successfully committed proposal" in r.stderr


def test_hashkv_changes_with_writes_and_is_stable(petcd_server):
    def hashkv():
        return json.loads(petcd_server.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]

    h1 = hashkv()["HashKV"]
    assert hashkv()["HashKV"]["hash"] == h1["hash"]
    petcd_server.ctl("put", "k", "v")
    h2 = hashkv()["HashKV"]
    assert h2["hash"] != h1["hash"]
    assert h2["header"]["revision"] == 2
    # the hash at an old revision does not change with later writes
    petcd_server.ctl("put", "k", "v2")
    old = json.loads(petcd_server.ctl("endpoint", "hashkv", "--rev=2", "-w", "json").stdout)[0]
    assert old["HashKV"]["hash"] == h2["hash"]


def test_defrag_keeps_data(petcd_server):
    for i in range(50):
        petcd_server.ctl("put", f"key{i}", "x" * 1000)
    petcd_server.ctl("del", "--prefix", "key")
    rev = json.loads(petcd_server.ctl("get", "x", "-w", "json").stdout)["header"]["revision"]
    petcd_server.ctl("compaction", str(rev))
    petcd_server.ctl("put", "keep", "me")
    r = petcd_server.ctl("defrag")
    assert r.stdout.strip() == f"Finished defragmenting etcd member[{petcd_server.endpoint}]"
    assert petcd_server.ctl("get", "keep", "--print-value-only").stdout == "me\n"
    petcd_server.ctl("put", "after", "defrag")
    assert petcd_server.ctl("get", "after", "--print-value-only").stdout == "defrag\n"


def test_snapshot_save(petcd_server, tmp_path):
    petcd_server.ctl("put", "snap", "shot")
    path = tmp_path / "backup.db"
    r = petcd_server.ctl("snapshot", "save", str(path))
    assert f"Snapshot saved at {path}" in r.stdout + r.stderr
    assert path.stat().st_size > 0


def test_nospace_alarm_and_recovery():
    s = ServerProcess(extra_args=["--quota-backend-bytes", str(4 * 1024 * 1024)]).start()
    try:
        value = os.urandom(300 * 1024).hex()[: 300 * 1024]
        err = None
        for i in range(40):
            r = s.ctl("put", f"big{i}", input=value, check=False)  # too long for argv
            if r.returncode != 0:
                err = r.stderr
                break
        assert err is not None, "quota never exceeded"
        assert "etcdserver: mvcc: database space exceeded" in err
        alarms = s.ctl("alarm", "list").stdout.strip()
        member = json.loads(s.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"][
            "header"
        ]["member_id"]
        assert alarms == f"memberID:{member} alarm:NOSPACE"
        # writes refused, reads and deletes served
        r = s.ctl("put", "small", "v", check=False)
        assert r.returncode != 0 and "database space exceeded" in r.stderr
        assert s.ctl("get", "big0", "--keys-only").stdout.strip() == "big0"
        st = json.loads(s.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
        assert st["errors"] == [f"memberID:{member} alarm:NOSPACE "]
        s.ctl("del", "--prefix", "big")
        rev = json.loads(s.ctl("get", "x", "-w", "json").stdout)["header"]["revision"]
        s.ctl("compaction", "--physical", str(rev))
        s.ctl("defrag")
        assert s.ctl("alarm", "disarm").stdout.strip() == f"memberID:{member} alarm:NOSPACE"
        assert s.ctl("alarm", "list").stdout.strip() == ""
        s.ctl("put", "small", "v")
        assert s.ctl("get", "small", "--print-value-only").stdout == "v\n"
    finally:
        s.cleanup()


def test_restart_keeps_data_and_revision(petcd_server):
    for i in range(20):
        petcd_server.ctl("put", f"k{i}", f"v{i}")
    petcd_server.ctl("del", "k3")
    petcd_server.restart()
    out = json.loads(petcd_server.ctl("get", "k", "--prefix", "-w", "json").stdout)
    assert out["header"]["revision"] == 22
    assert out["count"] == 19
    petcd_server.ctl("put", "k3", "again")
    got = json.loads(petcd_server.ctl("get", "k3", "-w", "json").stdout)["kvs"][0]
    assert got["mod_revision"] == 23 and got["create_revision"] == 23 and got["version"] == 1
    # history survives the restart too: k5 was written at revision 7
    assert petcd_server.ctl("get", "k5", "--rev=7", "--print-value-only").stdout == "v5\n"
    assert petcd_server.ctl("get", "k5", "--rev=6").stdout == ""


def test_raft_snapshots_taken_and_restart_replays_from_them():
    s = ServerProcess(extra_args=["--snapshot-count", "50"]).start()
    try:
        for i in range(130):
            s.ctl("put", f"s{i:03d}", f"v{i}")
        snap_dir = os.path.join(s.data_dir, "member", "snap")
        snaps = sorted(n for n in os.listdir(snap_dir) if n.endswith(".snap"))
        assert len(snaps) >= 2, snaps
        s.kill()  # no clean shutdown: replay from the newest snapshot marker plus the WAL tail
        s.start()
        out = json.loads(s.ctl("get", "s", "--prefix", "--keys-only", "-w", "json").stdout)
        assert out["count"] == 130
        assert out["header"]["revision"] == 131
        assert s.ctl("get", "s129", "--print-value-only").stdout == "v129\n"
        s.ctl("put", "after", "restart")
        assert json.loads(s.ctl("get", "after", "-w", "json").stdout)["kvs"][0]["mod_revision"] == 132
    finally:
        s.cleanup()


def test_snapshot_file_without_wal_marker_is_not_used():
    """A crash after a .snap file is written but before its WAL marker: restart must use the
    newest snapshot the WAL knows, and nothing is lost."""
    from petcd.raft.types import ConfState, Snapshot, SnapshotMetadata
    from petcd.wal.snap import Snapshotter

    s = ServerProcess(extra_args=["--snapshot-count", "40"]).start()
    try:
        for i in range(60):
            s.ctl("put", f"m{i:03d}", f"v{i}")
        s.kill()
        snap_dir = os.path.join(s.data_dir, "member", "snap")
        newest = Snapshotter(snap_dir).load()
        assert newest is not None
        orphan = SnapshotMetadata(
            index=newest.metadata.index + 1000,
            term=newest.metadata.term,
            conf_state=ConfState(voters=list(newest.metadata.conf_state.voters)),
        )
        Snapshotter(snap_dir).save(Snapshot(orphan, newest.data))
        s.start()
        out = json.loads(s.ctl("get", "m", "--prefix", "--keys-only", "-w", "json").stdout)
        assert out["count"] == 60 and out["header"]["revision"] == 61
    finally:
        s.cleanup()
