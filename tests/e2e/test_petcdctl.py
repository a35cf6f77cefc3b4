"""petcdctl vs the real etcdctl 3.4: same arguments against the same petcd server, same stdout,
stderr and exit code (timestamps, client ids, durations and, for writes, revisions are
normalised)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import ETCDCTL, REPO

pytestmark = pytest.mark.e2e

NORM = [
    (re.compile(rb'"ts":("[^"]*"|[0-9.e+]+)'), b'"ts":TS'),
    (re.compile(rb"client-[0-9a-f-]{36}"), b"client-ID"),
    (re.compile(rb"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} "), b"TS "),
    (re.compile(rb"took = [0-9.]+(?:\xc2\xb5|[nm])?s"), b"took = D"),
    (re.compile(rb'"took":("[^"]*"|[0-9.e+-]+)'), b'"took":D'),
    (re.compile(rb"\| +[0-9.]+(?:\xc2\xb5|[nm])?s +\|"), b"| D |"),
]
REVS = [
    (
        re.compile(rb'"(revision|mod_revision|create_revision|version|raft_term)":[0-9]+'),
        rb'"\1":N',
    ),
    (re.compile(rb'"(Revision|ModRevision|CreateRevision|Version)" : [0-9]+'), rb'"\1" : N'),
]


def _env() -> dict[str, str]:
    env = dict(os.environ, ETCDCTL_API="3")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for k in list(env):
        if k.startswith("ETCDCTL_") and k != "ETCDCTL_API":
            del env[k]
    return env


PETCDCTL = [sys.executable, "-m", "petcd.ctl"]


def run(tool: list[str], ep: str, *args: str, input: bytes | None = None, env=None):
    r = subprocess.run(
        [*tool, f"--endpoints={ep}", *args],
        input=input,
        capture_output=True,
        env=env or _env(),
        timeout=30,
    )
    return r.returncode, r.stdout, r.stderr


def norm(b: bytes, revs: bool) -> bytes:
    for rx, sub in NORM + (REVS if revs else []):
        b = rx.sub(sub, b)
    return b


def same(ep: str, *args: str, input: bytes | None = None, revs: bool = False, env=None):
    """Run etcdctl then petcdctl; assert identical results; return etcdctl's."""
    a = run([ETCDCTL], ep, *args, input=input, env=env)
    b = run(PETCDCTL, ep, *args, input=input, env=env)
    if "health" in args and "table" in args:
        # Column widths follow the (differing) durations.
        a, b = ((x[0], re.sub(rb"[ -]+", b" ", x[1]), x[2]) for x in (a, b))
    assert b[0] == a[0], (args, a, b)
    assert norm(b[1], revs) == norm(a[1], revs), (args, a[1], b[1])
    assert norm(b[2], revs) == norm(a[2], revs), (args, a[2], b[2])
    return a


@pytest.fixture(scope="module")
def ep(shared_petcd):
    s = shared_petcd
    for k, v in [("a", "1"), ("b", "2"), ("c", "3"), ("foo", "bar"), ("foo1", "bar1")]:
        s.ctl("put", k, v)
    s.ctl("put", "bin", "\x01\x7f<&>é")
    return s.endpoint


READS = [
    ["get", "a"],
    ["get", "a", "c"],
    ["get", "--prefix", "foo"],
    ["get", "--prefix", ""],
    ["get", "--from-key", "b", "--limit=1"],
    ["get", "--prefix", "", "--keys-only"],
    ["get", "--prefix", "", "--sort-by=VALUE", "--order=DESCEND"],
    ["get", "foo", "--print-value-only"],
    ["get", "--hex", "bin"],
    ["get", "missing"],
    ["get", "--rev=2", "a"],
    ["--write-out=json", "get", "--prefix", ""],
    ["-w", "json", "get", "bin"],
    ["-w", "fields", "get", "--prefix", "foo"],
    ["-w", "protobuf", "get", "a"],
    ["get", "a", "-w", "fields", "--consistency=s"],
    ["-w", "table", "get", "a"],
    ["-w", "yaml", "get", "a"],
    ["get"],
    ["get", "a", "--consistency=x"],
    ["get", "a", "--sort-by=nope"],
    ["get", "a", "--order=up"],
    ["get", "--prefix", "--from-key", "a"],
    ["get", "a", "b", "--prefix"],
    ["get", "--print-value-only", "a", "-w", "json"],
    ["get", "--rev=100000", "a"],
    ["get", "a", "--bogus"],
    ["get", "a", "-x"],
    ["get", "a", "--rev"],
    ["get", "a", "--rev", "abc"],
    ["nosuchcommand"],
    ["ge", "a"],
    ["version"],
    ["lease"],
    ["member", "list"],
    ["member", "list", "-w", "json"],
    ["member", "list", "-w", "fields"],
    ["member", "list", "-w", "table"],
    ["member", "list", "-w", "protobuf"],
    ["endpoint", "status"],
    ["endpoint", "status", "-w", "json"],
    ["endpoint", "status", "-w", "table"],
    ["endpoint", "status", "-w", "fields"],
    ["endpoint", "status", "--cluster"],
    ["endpoint", "hashkv"],
    ["endpoint", "hashkv", "-w", "table"],
    ["endpoint", "hashkv", "-w", "json"],
    ["endpoint", "health"],
    ["endpoint", "health", "-w", "table"],
    ["endpoint", "health", "-w", "json"],
    ["alarm", "list"],
    ["alarm", "list", "-w", "json"],
    ["alarm", "list", "extra"],
    ["lease", "list"],
    ["lease", "timetolive", "1234"],
    ["lease", "timetolive", "zz"],
    ["lease", "revoke", "1234"],
    ["lease", "keep-alive", "--once", "1234"],
    ["lease", "grant"],
    ["lease", "grant", "x"],
    ["compaction"],
    ["compaction", "abc"],
    ["put"],
    ["put", "k", "v", "--lease=zz"],
    ["del"],
    ["watch"],
    ["watch", "a", "--prefix", "b"],
    ["txn", "arg"],
    ["lock"],
    ["elect", "x"],
    ["elect", "x", "y", "-l"],
    ["move-leader"],
    ["move-leader", "zz"],
    ["snapshot", "save"],
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) or "-" for a in READS])
def test_read_commands_match(ep, args):
    same(ep, *args)


def test_env_vars_match(ep):
    env = _env()
    env.update(ETCDCTL_WRITE_OUT="json", ETCDCTL_BOGUS="1")
    a = same(ep, "get", "a", env=env)
    assert a[1].startswith(b'{"header"')
    # A flag given both ways is fatal in etcdctl's pkg/flags.
    env = _env()
    env["ETCDCTL_ENDPOINTS"] = ep
    a = run([ETCDCTL], ep, "get", "a", env=env)
    b = run(PETCDCTL, ep, "get", "a", env=env)
    assert a[0] == b[0] == 1
    assert norm(a[2], False) == norm(b[2], False)


WRITES = [
    ["put", "w1", "v1"],
    ["put", "w1", "v2", "--prev-kv"],
    ["put", "w1", "v3", "--prev-kv", "-w", "json"],
    ["put", "w1", "--ignore-value", "-w", "fields"],
    ["put", "w1", "--ignore-value", "x"],
    ["del", "w1", "--prev-kv"],
    ["del", "w", "--prefix", "-w", "json"],
    ["del", "nothing"],
]


def test_write_commands_match(ep):
    for args in WRITES:
        res = []
        for tool in ([ETCDCTL], PETCDCTL):
            # Both tools must see the same state: reset it before each run.
            run([ETCDCTL], ep, "del", "w", "--prefix")
            run([ETCDCTL], ep, "put", "w1", "v0")
            res.append(run(tool, ep, *args))
        a, b = res
        assert b[0] == a[0], (args, a, b)
        assert norm(b[1], True) == norm(a[1], True), (args, a, b)
        assert norm(b[2], True) == norm(a[2], True), (args, a, b)
    # put from stdin
    a = run([ETCDCTL], ep, "put", "stdin-a", input=b"from\nstdin")
    b = run(PETCDCTL, ep, "put", "stdin-b", input=b"from\nstdin")
    assert a == b
    assert run(PETCDCTL, ep, "get", "stdin-b", "--print-value-only")[1] == b"from\nstdin\n"


TXNS = [
    b'value("a") = "1"\n\nput t1 v1\nget a\ndel none\n\nget b\n\n',
    b'mod("a") > "0"\nver("zz") = "0"\n\nget a --prefix\n\n\n',
    b'create("a") < "1"\n\n\nput t2 "quoted value"\n\n',
    b"bad\n\n\n\n",
    b'value("a") = "1"\n\nput\n\n\n',
    b'value("a") = "1"\n\n',
    b'mod("a") > "x"\n\n\n\n',
    b'nosuch("a") = "1"\n\n\n\n',
    b"\n\nput t1 v\nput t1 w\n\n\n",
]


@pytest.mark.parametrize("fmt", ["simple", "json", "fields"])
def test_txn_matches(ep, fmt):
    for body in TXNS:
        for extra in ([], ["-i"]):
            same(ep, "txn", "-w", fmt, *extra, input=body, revs=True)


def test_lease_commands_match(ep):
    lid = run(PETCDCTL, ep, "lease", "grant", "100")[1].split()[1].decode()
    run(PETCDCTL, ep, "put", "lk", "v", f"--lease={lid}")
    for args in (
        ["lease", "list"],
        ["lease", "list", "-w", "json"],
        ["lease", "list", "-w", "fields"],
        ["lease", "timetolive", lid, "--keys", "-w", "json"],
        ["lease", "keep-alive", "--once", lid],
        ["lease", "keep-alive", "--once", lid, "-w", "json"],
        ["lease", "grant", "10", "-w", "protobuf"],
    ):
        a = run([ETCDCTL], ep, *args)
        b = run(PETCDCTL, ep, *args)
        # The remaining TTL may tick between the two runs.
        fix = [(re.compile(rb'"ttl":\d+|"TTL" : \d+|remaining\(\d+s\)'), b"TTL")]
        ao, bo = a[1], b[1]
        for rx, sub in fix:
            ao, bo = rx.sub(sub, ao), rx.sub(sub, bo)
        if "list" not in args and "grant" not in args:
            assert ao == bo, (args, a, b)
        assert a[0] == b[0] and a[2] == b[2]
    lid2 = run(PETCDCTL, ep, "lease", "grant", "100")[1].split()[1].decode()
    assert run(PETCDCTL, ep, "lease", "revoke", lid2)[1] == f"lease {lid2} revoked\n".encode()
    assert run(PETCDCTL, ep, "lease", "timetolive", lid2)[1] == (
        f"lease {lid2} already expired\n".encode()
    )
    # lease grant prints the same ID in every format (decimal in json, as etcdctl; --hex: hex)
    out = run(PETCDCTL, ep, "-w", "json", "--hex", "lease", "grant", "5")[1]
    assert re.search(rb'"ID":"[0-9a-f]+"', out)


def test_keep_alive_stream(ep):
    lid = run(PETCDCTL, ep, "lease", "grant", "3")[1].split()[1].decode()
    p = subprocess.Popen(
        [*PETCDCTL, f"--endpoints={ep}", "lease", "keep-alive", lid],
        stdout=subprocess.PIPE,
        env=_env(),
    )
    first = p.stdout.readline()
    assert first == f"lease {lid} keepalived with TTL(3)\n".encode()
    run(PETCDCTL, ep, "lease", "revoke", lid)
    rest = p.communicate(timeout=10)[0]
    assert p.returncode == 0
    assert rest.endswith(f"lease {lid} expired or revoked.\n".encode())


def _stream(tool: list[str], ep: str, args: list[str], writes, stdin=None, lines=1):
    for w in writes:
        run([ETCDCTL], ep, "del", w[1])
    p = subprocess.Popen(
        [*tool, f"--endpoints={ep}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin is not None else None,
        env=_env(),
    )
    if stdin is not None:
        p.stdin.write(stdin)
        p.stdin.flush()
    time.sleep(0.8)
    for w in writes:
        run([ETCDCTL], ep, *w)
    got = b""
    deadline = time.monotonic() + 10
    while got.count(b"\n") < lines and time.monotonic() < deadline:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        got += chunk
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    return got + out, err, p.returncode


@pytest.mark.parametrize(
    "args,writes,lines",
    [
        (["watch", "wk"], [["put", "wk", "v1"], ["del", "wk"]], 5),
        (["watch", "--prefix", "wp", "--prev-kv"], [["put", "wp1", "a"], ["put", "wp1", "b"]], 8),
        (["watch", "-w", "json", "wj"], [["put", "wj", "x"]], 1),
    ],
)
def test_watch_matches(ep, args, writes, lines):
    a = _stream([ETCDCTL], ep, args, writes, lines=lines)
    b = _stream(PETCDCTL, ep, args, writes, lines=lines)
    assert b[2] == a[2] == -signal.SIGINT
    assert norm(b[0], True) == norm(a[0], True)


def test_watch_interactive_and_history(ep):
    a = _stream([ETCDCTL], ep, ["watch", "-i"], [["put", "wi", "1"]], stdin=b"watch wi\n", lines=3)
    b = _stream(PETCDCTL, ep, ["watch", "-i"], [["put", "wi", "1"]], stdin=b"watch wi\n", lines=3)
    assert norm(b[0], True) == norm(a[0], True) == b"PUT\nwi\n1\n"
    # historical events, then cancel by compaction
    rev = int(
        run(PETCDCTL, ep, "-w", "fields", "get", "a")[1].split(b'"Revision" : ')[1].split()[0]
    )
    a = _stream([ETCDCTL], ep, ["watch", f"--rev={rev - 2}", "--prefix", ""], [], lines=3)
    b = _stream(PETCDCTL, ep, ["watch", f"--rev={rev - 2}", "--prefix", ""], [], lines=3)
    assert b[0] == a[0] and b[0]


def test_lock_and_elect(ep):
    for args in (["lock", "lk1"], ["elect", "el1", "prop"]):
        a = _stream([ETCDCTL], ep, args, [], lines=1)
        b = _stream(PETCDCTL, ep, args, [], lines=1)
        pat = re.compile(rb"/[0-9a-f]+\n")
        assert pat.sub(b"/L\n", a[0]) == pat.sub(b"/L\n", b[0])
        assert b[2] == 0 and a[2] == 0
    rc, out, err = run(PETCDCTL, ep, "lock", "lk2", "--", "sh", "-c", "echo $ETCD_LOCK_KEY; exit 3")
    assert rc == 1 and out.startswith(b"lk2/") and err == b"Error: exit status 3\n"


def test_compaction_defrag_snapshot(ep, tmp_path):
    rev = int(
        run(PETCDCTL, ep, "-w", "fields", "get", "a")[1].split(b'"Revision" : ')[1].split()[0]
    )
    assert run(PETCDCTL, ep, "compaction", str(rev - 1)) == (
        0,
        f"compacted revision {rev - 1}\n".encode(),
        b"",
    )
    same(ep, "compaction", "1")
    same(ep, "get", "a", "--rev=1")
    same(ep, "defrag")
    a = run([ETCDCTL], ep, "snapshot", "save", str(tmp_path / "a.db"))
    b = run(PETCDCTL, ep, "snapshot", "save", str(tmp_path / "b.db"))
    assert a[0] == b[0] == 0
    assert b[1] == f"Snapshot saved at {tmp_path / 'b.db'}\n".encode()
    assert (tmp_path / "b.db").stat().st_size > 0
    msgs = [re.findall(rb'"msg":"([^"]*)"', x[2]) for x in (a, b)]
    assert set(msgs[1]) <= set(msgs[0])


def test_flag_parsing_unit():
    from petcd.ctl.flags import Flag, FlagError, FlagSet, parse_duration

    fs = FlagSet(
        [Flag("rev", "int", 0), Flag("prefix", "bool", False), Flag("w", "string", "", short="w")]
    )
    pos, dash = fs.parse(["a", "--rev", "0x10", "-wjson", "--prefix", "b", "--", "-c"])
    assert pos == ["a", "b", "-c"] and dash == 2
    assert fs["rev"] == 16 and fs["w"] == "json" and fs["prefix"] is True
    assert parse_duration("1m30s") == 90 and parse_duration("500ms") == 0.5
    with pytest.raises(FlagError, match="unknown flag: --nope"):
        FlagSet([]).parse(["--nope"])


def test_go_formatting_unit():
    from petcd.ctl.gofmt import duration, humanize_bytes, jstr, quote

    assert quote(b'a"\x00\xff\n\xc3\xa9') == '"a\\"\\x00\\xff\\né"'
    assert jstr("<&>\x08") == '"\\u003c\\u0026\\u003e\\u0008"'
    assert humanize_bytes(32768) == "33 kB" and humanize_bytes(5) == "5 B"
    assert humanize_bytes(2_100_000) == "2.1 MB"
    assert duration(0.003261699) == "3.261699ms" and duration(90.5) == "1m30.5s"


def test_alarm_list_and_disarm_match(ep):
    import grpc

    from petcd.proto.etcdserverpb import rpc_pb2 as pb
    from petcd.proto.etcdserverpb import rpc_pb2_grpc as pbg

    with grpc.insecure_channel(ep) as ch:
        m = pbg.MaintenanceStub(ch)
        mid = m.Status(pb.StatusRequest()).header.member_id

        def arm() -> None:
            m.Alarm(
                pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=mid, alarm=pb.NOSPACE)
            )

        arm()
        for fmt in ("simple", "json", "fields"):
            a = same(ep, "alarm", "list", "-w", fmt)
        assert a[1].endswith(b'"AlarmType" : NOSPACE\n\n')
        a = run([ETCDCTL], ep, "alarm", "disarm")
        arm()
        b = run(PETCDCTL, ep, "alarm", "disarm")
        assert a == b and a[1] == f"memberID:{mid} alarm:NOSPACE \n".encode()
        same(ep, "alarm", "list")
