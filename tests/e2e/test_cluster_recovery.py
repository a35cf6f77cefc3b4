"""Disaster recovery: a majority is lost for good and one survivor is restarted with
--force-new-cluster. Run against etcd and petcd alike; every expectation is etcd's."""

from __future__ import annotations

import json
import os

import pytest
from cluster import FAST_ARGS, Cluster, wait_for
from harness import ETCD, ETCDCTL
from test_cluster import get, serial_value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(params=["etcd", "petcd"])
def impl(request) -> str:
    for binary in ([ETCD] if request.param == "etcd" else []) + [ETCDCTL]:
        if not os.path.exists(binary):
            pytest.skip(f"{binary} not installed (Debian etcd-server/etcd-client)")
    return request.param


def hashkv(c: Cluster, i: int, rev: int) -> int:
    out = c.ctl(i, "endpoint", "hashkv", f"--rev={rev}", "-w", "json").stdout
    return json.loads(out)[0]["HashKV"]["hash"]


def kvs_at(c: Cluster, i: int, rev: int) -> list:
    out = c.ctl(i, "get", "", "--from-key", f"--rev={rev}", "--consistency=s", "-w", "json")
    return [(kv["key"], kv["value"], kv["mod_revision"]) for kv in json.loads(out.stdout)["kvs"]]


def test_force_new_cluster_keeps_data_and_grows_again(impl):
    c = Cluster(3, impl=impl, extra_args=list(FAST_ARGS))
    try:
        c.start()
        for k in range(20):
            c.ctl(1 + k % 3, "put", f"k{k:02d}", f"v{k}")
        # --force-new-cluster keeps what the survivor has durably recorded as committed.
        # etcd fsyncs a commit index only with later entries, so write one more and wait
        # for the survivor to apply it: then k19's commit is on its disk (the fence may not be).
        c.ctl(2, "put", "fence", "1")
        wait_for(lambda: serial_value(c, 1, "fence") == "1", 10, what="m1 applies the fence")
        c.kill_all()

        survivor = c.member(1)
        survivor.extra_args.append("--force-new-cluster")
        survivor.start(c.start_timeout)
        members = c.member_list(1)
        assert [m["name"] for m in members] == ["m1"]
        assert get(c, 1, "k19") == "v19" and get(c, 1, "k00") == "v0"
        c.ctl(1, "put", "after", "1")

        # An ordinary restart keeps the new one-member configuration.
        survivor.extra_args.remove("--force-new-cluster")
        c.restart(1)
        assert [m["name"] for m in c.member_list(1)] == ["m1"]
        assert get(c, 1, "after") == "1"

        # The cluster grows again from the survivor; the newcomer gets every key.
        for i in (2, 3):
            c.member(i).removed = True  # their old data dirs are not part of this cluster
        j = c.add_member("m4")
        wait_for(lambda: serial_value(c, j, "after") == "1", 20, what="m4 catches up")
        assert get(c, j, "k07") == "v7"
        assert sorted(m["name"] for m in c.member_list(j)) == ["m1", "m4"]
        c.ctl(j, "put", "from-m4", "x")
        assert get(c, 1, "from-m4") == "x"
        # At one revision both have applied: each member's latest revision may differ for a
        # moment (etcd's own lease/cluster bookkeeping), the history up to rev may not.
        rev = json.loads(c.ctl(j, "get", "from-m4", "-w", "json").stdout)["header"]["revision"]
        if impl == "petcd":
            # Only petcd is held to this: under CI load real etcd 3.4's newcomer differed from
            # the force-new-cluster survivor at one revision, first in HashKV (about one run
            # in three), then in the keys themselves (once in five full CI runs); idle, it
            # agreed in every run. The keys checked above hold for both.
            wait_for(lambda: kvs_at(c, 1, rev) == kvs_at(c, j, rev), 10, what="equal keys")
            wait_for(lambda: hashkv(c, 1, rev) == hashkv(c, j, rev), 10, what="equal HashKV")
    finally:
        c.cleanup()
