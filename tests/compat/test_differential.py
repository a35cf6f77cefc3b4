"""The same scripted etcdctl session against real etcd 3.4 and petcd; outputs must match.

IDs (cluster_id, member_id) and raft_term are normalised away: they legitimately differ
between two freshly bootstrapped servers. Everything else — values, revisions, versions,
counts, `more`, error messages and exit codes — must be identical.
"""

from __future__ import annotations

import re

import pytest

TXN_SUCCESS = """mod("foo") > "0"

put foo txn_value
get foo1

put foo should_not_happen

"""

TXN_FAILURE = """value("foo") = "nope"
version("foo1") = "3"

put foo never

put zoo1 from_failure
get zoo1 --prev-kv

"""

TXN_NESTED_RANGE = """create("foo") != "0"

get foo --prefix --limit=1

del zoo1

"""

# (args, stdin) pairs; every command runs against both servers in the same order.
SESSION: list[tuple[tuple[str, ...], str | None]] = [
    (("get", "foo", "-w", "json"), None),
    (("put", "foo", "bar"), None),
    (("put", "foo1", "bar1"), None),
    (("put", "foo", "bar_new"), None),
    (("put", "foo1", "bar1_new", "--prev-kv"), None),
    (("put", "foo2", "bar2", "-w", "json"), None),
    (("put", "foo3", "bar3", "--prev-kv", "-w", "json"), None),
    (("get", "foo"), None),
    (("get", "foo", "--print-value-only"), None),
    (("get", "foo", "foo3"), None),
    (("get", "--prefix", "foo"), None),
    (("get", "--prefix", "foo", "-w", "json"), None),
    (("get", "--prefix", "foo", "--limit=2"), None),
    (("get", "--prefix", "foo", "--limit=2", "-w", "json"), None),
    (("get", "--prefix", "foo", "--rev=4"), None),
    (("get", "--prefix", "foo", "--rev=3"), None),
    (("get", "--prefix", "foo", "--rev=2"), None),
    (("get", "--prefix", "foo", "--rev=1"), None),
    (("get", "--prefix", "foo", "--rev=1000"), None),
    (("get", "--from-key", "foo1"), None),
    (("get", "--from-key", ""), None),
    (("get", "--prefix", "foo", "--keys-only"), None),
    (("get", "--prefix", "foo", "--keys-only", "-w", "json"), None),
    (("put", "toolarge"), "x" * (1536 * 1024 + 100)),  # over --max-request-bytes
    (("get", "toolarge"), None),
    (("get", "--prefix", "foo", "--sort-by=MODIFY", "--order=DESCEND"), None),
    (("get", "--prefix", "foo", "--sort-by=VALUE", "--order=ASCEND"), None),
    (("get", "--prefix", "foo", "--sort-by=CREATE", "--order=DESCEND", "--limit=2"), None),
    (("get", "--prefix", "foo", "--sort-by=VERSION", "-w", "json"), None),
    (("get", "--prefix", "foo", "--order=DESCEND", "-w", "json"), None),
    (("get", "--prefix", "foo", "--consistency=s"), None),
    (("get", "missing"), None),
    (("get", "missing", "-w", "json"), None),
    (("get", "--prefix", "foo", "-w", "fields"), None),
    (("put", "foo", "--ignore-value"), None),
    (("put", "foo", "x", "--ignore-value"), None),
    (("put", "nokey", "--ignore-value"), None),
    (("put", "foo", "v", "--ignore-lease"), None),
    (("put", "foo", "v", "--lease=1234"), None),
    (("get", "foo", "-w", "json"), None),
    (("put", "zoo", "val"), None),
    (("put", "zoo1", "val1"), None),
    (("put", "zoo2", "val2"), None),
    (("del", "--prev-kv", "zoo"), None),
    (("del", "zoo1", "zoo3", "-w", "json"), None),
    (("del", "missing"), None),
    (("del", "--prefix", "nothing-here"), None),
    (("txn",), TXN_SUCCESS),
    (("txn", "-i"), TXN_SUCCESS),
    (("txn", "-w", "json"), TXN_FAILURE),
    (("txn",), TXN_FAILURE),
    (("txn",), TXN_NESTED_RANGE),
    (("get", "", "--prefix", "-w", "json"), None),
    (("compaction", "5"), None),
    (("get", "foo", "--rev=4"), None),
    (("get", "foo", "--rev=5", "-w", "json"), None),
    (("compaction", "3"), None),
    (("compaction", "100000"), None),
    (("compaction", "--physical", "8"), None),
    (("get", "--prefix", "foo", "--rev=8", "-w", "json"), None),
    (("del", "--from-key", "foo2"), None),
    (("get", "", "--from-key", "-w", "json"), None),
]

_NOISE = [
    (re.compile(r'"(cluster_id|member_id|raft_term)":\d+'), r'"\1":X'),
    (re.compile(r'"(ClusterID|MemberID|RaftTerm)" : \d+'), r'"\1" : X'),
    # etcdctl's own client log lines carry a timestamp and a random client target
    (re.compile(r'"ts":"[^"]*"'), '"ts":X'),
    (re.compile(r'"target":"endpoint://client-[^"]*"'), '"target":X'),
]


def normalise(text: str) -> str:
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    return text


def run_session(server) -> list[tuple[str, int, str, str]]:
    out = []
    for args, stdin in SESSION:
        r = server.ctl(*args, input=stdin, check=False)
        out.append((" ".join(args), r.returncode, normalise(r.stdout), normalise(r.stderr)))
    return out


@pytest.mark.compat
def test_kv_session_matches_etcd(etcd_server, petcd_server):
    want = run_session(etcd_server)
    got = run_session(petcd_server)
    mismatches = [
        f"$ etcdctl {w[0]}\n  etcd : rc={w[1]} out={w[2]!r} err={w[3]!r}\n"
        f"  petcd: rc={g[1]} out={g[2]!r} err={g[3]!r}"
        for w, g in zip(want, got, strict=True)
        if w != g
    ]
    assert not mismatches, "\n".join(mismatches)
