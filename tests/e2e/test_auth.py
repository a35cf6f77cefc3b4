"""Authentication against real etcd: petcdctl `auth` / `user` / `role` and the global `--user`,
differentially against etcdctl (same command, same server, same stdout/stderr/exit code; a
change one tool makes is undone before the other repeats it), and the Python client with
user/password (KV, watch, leases under auth, re-authentication after its token is dropped,
etcd's error for a wrong password).

petcd's server has no Auth service yet, so everything runs against etcd 3.4.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest
from harness import ETCD, ETCDCTL, REPO, ServerProcess

from petcd.client import Client, SyncClient, errors
from petcd.proto.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.e2e

PETCDCTL = [sys.executable, "-m", "petcd.ctl"]
ROOT = "--user=root:rootpw"
NORM = [
    (re.compile(rb'"ts":"[^"]*"'), b'"ts":TS'),
    (re.compile(rb"client-[0-9a-f-]{36}"), b"client-ID"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(
    tool: list[str], ep: str, *args: str, stdin: bytes = b"", timeout: float = 30
) -> tuple[int, bytes, bytes]:
    r = subprocess.run(
        [*tool, f"--endpoints={ep}", *args],
        input=stdin,
        capture_output=True,
        env=_env(),
        timeout=timeout,
    )
    return r.returncode, r.stdout, r.stderr


def norm(b: bytes) -> bytes:
    for rx, sub in NORM:
        b = rx.sub(sub, b)
    return b


def same(ep: str, *args: str, stdin: bytes = b"", undo: tuple | list = ()) -> tuple:
    """Run with etcdctl, undo (etcdctl commands: one tuple or a list), run with petcdctl;
    compare."""
    a = run([ETCDCTL], ep, *args, stdin=stdin)
    for cmd in undo if isinstance(undo, list) else [undo] if undo else []:
        u = run([ETCDCTL], ep, *cmd)
        assert u[0] == 0, u
    b = run(PETCDCTL, ep, *args, stdin=stdin)
    assert (b[0], norm(b[1]), norm(b[2])) == (a[0], norm(a[1]), norm(a[2])), (args, a, b)
    return a


def ctl(ep: str, *args: str) -> bytes:
    r = run([ETCDCTL], ep, *args)
    assert r[0] == 0, (args, r)
    return r[1]


@pytest.fixture
def etcd():
    for binary in (ETCD, ETCDCTL):
        if not os.path.exists(binary):
            pytest.skip(f"{binary} not installed")
    s = ServerProcess(cmd=[ETCD]).start()
    yield s
    s.cleanup()


def _enable_auth(ep: str) -> None:
    ctl(ep, "user", "add", "root:rootpw")
    ctl(ep, "auth", "enable")


# -- petcdctl vs etcdctl -------------------------------------------------------------------------


def test_auth_enable_disable_and_unauthenticated(etcd):
    ep = etcd.endpoint
    same(ep, "auth", "enable")  # no root user
    same(ep, "auth", "enable", "x")
    ctl(ep, "user", "add", "root:rootpw")
    # The root role does not exist: both create it (a warning for the first try) and enable.
    same(ep, "auth", "enable", undo=[(ROOT, "auth", "disable"), ("role", "delete", "root")])
    ctl(ep, ROOT, "auth", "disable")
    same(ep, "auth", "enable", undo=(ROOT, "auth", "disable"))  # root role exists now
    # Without credentials etcd refuses; with a wrong password the client cannot be made (exit 2).
    for args in (["user", "list"], ["get", "k"], ["put", "k", "v"], ["role", "list"]):
        assert same(ep, *args)[0] == 1
    assert same(ep, "--user=root:nope", "user", "list")[0] == 2
    assert same(ep, "--user=nobody:x", "get", "k")[0] == 2
    assert b"authentication failed" in same(ep, "--user=root:nope", "get", "k")[2]
    # The three ways to give credentials.
    same(ep, ROOT, "put", "k", "v")
    same(ep, "--user=root", "--password=rootpw", "get", "k")
    same(ep, "--user=root", "user", "list", stdin=b"rootpw\n")  # prompted
    same(ep, "--user=root:x", "--password=rootpw", "get", "k")  # user "root:x"
    same(ep, "auth", "disable")
    same(ep, ROOT, "auth", "disable", undo=(ROOT, "auth", "enable"))
    # Auth is off: credentials are accepted and ignored, even wrong ones.
    same(ep, "--user=root:nope", "get", "k")
    same(ep, "user", "list")


def test_users(etcd):
    ep = etcd.endpoint
    _enable_auth(ep)
    add_undo = (ROOT, "user", "delete", "u1")
    for args, stdin in (
        (["user", "add", "u1:p1"], b""),
        (["user", "add", "u1", "--new-user-password=p1"], b""),
        (["user", "add", "u1"], b"p1\np1\n"),  # prompted twice
        (["user", "add", "u1", "--interactive=false"], b"  p1 x\n"),  # Scanf("%s")
        (["user", "add", "u1", "--no-password"], b""),
        (["-w", "json", "user", "add", "u1:p1"], b""),
        (["-w", "fields", "user", "add", "u1:p1"], b""),
        (["-w", "protobuf", "user", "add", "u1:p1"], b""),
        (["-w", "table", "user", "add", "u1:p1"], b""),  # exit 4 after the user is made
    ):
        same(ep, ROOT, *args, stdin=stdin, undo=add_undo)
        ctl(ep, *add_undo)
    same(ep, ROOT, "user", "add", "u1", stdin=b"p1\np2\n")  # different: 128
    same(ep, ROOT, "user", "add", "u1", stdin=b"\n")  # empty
    ctl(ep, ROOT, "user", "add", "u1:p1")
    same(ep, ROOT, "user", "add", "u1:p1")  # exists
    same(ep, ROOT, "user", "delete", "u1", undo=(ROOT, "user", "add", "u1:p1"))
    same(ep, ROOT, "user", "delete", "nope")
    ctl(ep, ROOT, "user", "add", "u1:p1")
    ctl(ep, ROOT, "role", "add", "r1")
    ctl(ep, ROOT, "role", "grant-permission", "r1", "readwrite", "/a/", "--prefix")
    same(ep, ROOT, "user", "grant-role", "u1", "r1", undo=(ROOT, "user", "revoke-role", "u1", "r1"))
    same(ep, ROOT, "user", "grant-role", "u1", "nope")
    same(ep, ROOT, "user", "grant-role", "u1", "root")
    for fmt in ("simple", "json", "fields", "protobuf", "table"):
        same(ep, ROOT, "-w", fmt, "user", "get", "u1")
        same(ep, ROOT, "-w", fmt, "user", "get", "u1", "--detail")
        same(ep, ROOT, "-w", fmt, "user", "list")
    regrant = (ROOT, "user", "grant-role", "u1", "root")
    for fmt in ("simple", "fields", "json"):
        same(ep, ROOT, "-w", fmt, "user", "revoke-role", "u1", "root", undo=regrant)
        ctl(ep, *regrant)
    ctl(ep, ROOT, "user", "revoke-role", "u1", "root")
    same(ep, ROOT, "user", "revoke-role", "u1", "root")  # not granted
    same(ep, ROOT, "user", "get", "nope")
    same(ep, ROOT, "user", "passwd", "u1", stdin=b"p2\np2\n")
    same(ep, ROOT, "user", "passwd", "u1", stdin=b"p2\np3\n")
    same(ep, ROOT, "-w", "json", "user", "passwd", "u1", "--interactive=false", stdin=b"p1\n")
    same(ep, "--user=u1:p1", "put", "/a/1", "x")
    same(ep, "--user=u1:p2", "put", "/a/1", "x")  # old password: 2
    for args in (
        ["user"],
        ["user", "add"],
        ["user", "add", ":pw"],
        ["user", "add", "a", "b"],
        ["user", "delete"],
        ["user", "get"],
        ["user", "list", "x"],
        ["user", "passwd"],
        ["user", "grant-role", "u1"],
        ["user", "revoke-role", "u1"],
        ["user", "add", "--help"],
        ["user", "get", "--bogus"],
    ):
        same(ep, ROOT, *args)


def test_roles_and_permissions(etcd):
    ep = etcd.endpoint
    _enable_auth(ep)
    same(ep, ROOT, "role", "add", "r1", undo=(ROOT, "role", "delete", "r1"))
    same(ep, ROOT, "role", "add", "r1")  # exists
    grants = [
        ["read", "/a/", "--prefix"],
        ["readwrite", "/b/", "/c/"],
        ["write", "k1"],
        ["WRITE", "", "--from-key"],
        ["readWrite", "z", "--from-key"],
        ["read", "", "--prefix"],
        ["read", ""],
        ["read", "\xff", "--prefix"],
    ]
    for g in grants:
        same(ep, ROOT, "role", "grant-permission", "r1", *g)  # idempotent
    for fmt in ("simple", "json", "fields", "protobuf", "table"):
        same(ep, ROOT, "-w", fmt, "role", "get", "r1")
        same(ep, ROOT, "-w", fmt, "role", "list")
    revokes = [
        (["/a/", "--prefix"], ["read", "/a/", "--prefix"]),
        (["/b/", "/c/"], ["readwrite", "/b/", "/c/"]),
        (["k1"], ["write", "k1"]),
        (["", "--from-key"], ["write", "", "--from-key"]),
        (["z", "--from-key"], ["readwrite", "z", "--from-key"]),
    ]
    for rv, g in revokes:
        regrant = (ROOT, "role", "grant-permission", "r1", *g)
        for fmt in ("simple", "json"):
            same(ep, ROOT, "-w", fmt, "role", "revoke-permission", "r1", *rv, undo=regrant)
            ctl(ep, *regrant)
    same(ep, ROOT, "role", "revoke-permission", "r1", "nope")  # not granted
    same(ep, ROOT, "role", "get", "nope")
    same(ep, ROOT, "role", "delete", "r1", undo=(ROOT, "role", "add", "r1"))
    same(ep, ROOT, "role", "delete", "nope")
    for args in (
        ["role", "grant-permission", "r1", "read"],
        ["role", "grant-permission", "r1", "bogus", "k"],
        ["role", "grant-permission", "r1", "read", "a", "b", "--prefix"],
        ["role", "grant-permission", "r1", "read", "a", "b", "--from-key"],
        ["role", "grant-permission", "r1", "read", "a", "--prefix", "--from-key"],
        ["role", "grant-permission", "r1", "read", "", "--prefix", "--from-key"],
        ["role", "revoke-permission", "r1"],
        ["role", "add"],
        ["role", "get", "a", "b"],
        ["role", "list", "x"],
        ["role"],
        ["role", "grant-permission", "--help"],
    ):
        same(ep, ROOT, *args)


def test_permission_enforced(etcd):
    ep = etcd.endpoint
    _enable_auth(ep)
    ctl(ep, ROOT, "user", "add", "alice:apw")
    ctl(ep, ROOT, "role", "add", "app")
    ctl(ep, ROOT, "role", "grant-permission", "app", "readwrite", "/app/", "--prefix")
    ctl(ep, ROOT, "role", "grant-permission", "app", "read", "/shared/", "/shared0")
    ctl(ep, ROOT, "user", "grant-role", "alice", "app")
    ctl(ep, ROOT, "put", "/shared/x", "s")
    alice = "--user=alice:apw"
    same(ep, alice, "put", "/app/a", "1")
    same(ep, alice, "get", "/app/", "--prefix")
    out = same(ep, alice, "put", "/other", "1")
    assert out[0] == 1 and b"Error: etcdserver: permission denied" in out[2]
    same(ep, alice, "get", "/other")
    same(ep, alice, "get", "/shared/x")
    same(ep, alice, "put", "/shared/x", "no")
    same(ep, alice, "del", "/app/a", undo=(ROOT, "put", "/app/a", "1"))
    same(ep, alice, "user", "list")  # not root
    ctl(ep, ROOT, "role", "revoke-permission", "app", "/app/", "--prefix")
    same(ep, alice, "get", "/app/a")  # the revoke is effective at once
    same(ep, alice, "role", "get", "app")  # a user may read its own role


def test_auth_status(etcd):
    """etcdctl 3.4 has no `auth status` (3.5 does); petcdctl infers it from etcd 3.4."""
    ep = etcd.endpoint
    r = run(PETCDCTL, ep, "auth", "status")
    assert r[:2] == (0, b"Authentication Status: false\nAuthRevision: 0\n"), r
    _enable_auth(ep)
    r = run(PETCDCTL, ep, "auth", "status")
    assert r[:2] == (0, b"Authentication Status: true\nAuthRevision: 0\n"), r
    r = run(PETCDCTL, ep, ROOT, "-w", "json", "auth", "status")
    assert r[:2] == (0, b'{"enabled":true}\n'), r
    r = run(PETCDCTL, ep, "-w", "protobuf", "auth", "status")
    assert pb.AuthStatusResponse.FromString(r[1]).enabled
    assert run(PETCDCTL, ep, "-w", "table", "auth", "status")[0] == 4
    assert run(PETCDCTL, ep, "auth", "status", "x")[0] == 128


# -- the Python client ---------------------------------------------------------------------------


def test_client_under_auth(etcd):
    ep = etcd.endpoint

    async def main() -> None:
        async with Client(ep) as admin:
            await admin.user_add("root", "rootpw")
            await admin.role_add("root")
            await admin.user_grant_role("root", "root")
            await admin.role_add("app")
            await admin.role_grant_permission("app", "readwrite", "/app/", prefix=True)
            await admin.role_grant_permission("app", "read", "/ro/", "/ro0")
            await admin.user_add("alice", "apw")
            await admin.user_grant_role("alice", "app")
            assert (await admin.user_get("alice")).roles == ["app"]
            perms = (await admin.role_get("app")).perm
            assert [(p.permType, p.key, p.range_end) for p in perms] == [
                (2, b"/app/", b"/app0"),
                (0, b"/ro/", b"/ro0"),
            ]
            await admin.auth_enable()
            with pytest.raises(errors.ErrUserEmpty):
                await admin.get("x")

        async with Client(ep, user="root", password="nope") as bad:
            with pytest.raises(errors.ErrAuthFailed) as ei:
                await bad.get("x")
            assert (
                ei.value.details == "etcdserver: authentication failed, invalid user ID or password"
            )

        async with (
            Client(ep, user="root", password="rootpw") as root,
            Client(ep, username="alice", password="apw") as alice,
        ):
            assert (await root.user_list()).users == ["alice", "root"]
            await root.put("/ro/k", "r")
            # KV within and outside alice's permissions.
            await alice.put("/app/a", "1")
            assert await alice.get_value("/app/a") == b"1"
            assert await alice.get_value("/ro/k") == b"r"
            for call in (alice.put("/ro/k", "x"), alice.get("/other"), alice.delete("/ro/k")):
                with pytest.raises(errors.ErrPermissionDenied) as ei:
                    await call
                assert ei.value.details == "etcdserver: permission denied"
            with pytest.raises(errors.ErrPermissionDenied):
                await alice.user_list()
            # Watch and lease under auth.
            w = alice.watch("/app/", prefix=True)
            await w.wait_created()
            async with alice.lease(10) as lease:
                await alice.put("/app/l", "2", lease=lease.id)
                assert (await alice.time_to_live(lease.id, keys=True)).keys == [b"/app/l"]
            ev = await asyncio.wait_for(w.__anext__(), 10)
            assert (ev.kv.key, ev.kv.value) == (b"/app/l", b"2")
            ev = await asyncio.wait_for(w.__anext__(), 10)  # the revoke deleted it
            assert ev.type == ev.DELETE
            with pytest.raises(errors.WatchCanceled) as wi:
                denied = alice.watch("/other")
                await denied.wait_created()
            # etcd 3.4 sends the whole gRPC status text as the cancel reason.
            assert wi.value.reason.endswith("desc = etcdserver: permission denied")

            # A password change drops alice's tokens: her client re-authenticates by itself.
            old = alice._token_auth.token
            await root.user_change_password("alice", "apw")
            assert await alice.get_value("/app/a") == b"1"
            assert alice._token_auth.token not in (None, old)
            # So does disabling and re-enabling auth (etcd forgets every token).
            old = alice._token_auth.token
            await root.auth_disable()
            await root.auth_enable()
            await alice.put("/app/b", "3")
            assert alice._token_auth.token not in (None, old)
            # A watch whose stream must be re-created after the tokens are gone.
            old = alice._token_auth.token
            await root.user_change_password("alice", "apw")
            w2 = alice.watch("/app/b")
            await w2.wait_created()
            assert alice._token_auth.token not in (None, old)
            await root.put("/app/b", "4")
            ev = await asyncio.wait_for(w2.__anext__(), 10)
            assert ev.kv.value == b"4"
            await w.close()
            await w2.close()
            # A new password that alice's client does not know: etcd's error, from the next call.
            await root.user_change_password("alice", "changed")
            with pytest.raises(errors.ErrAuthFailed):
                await alice.get("/app/a")
            # Roles and permissions from the client.
            await root.role_revoke_permission("app", "/app/", prefix=True)
            await root.user_revoke_role("alice", "app")
            await root.role_delete("app")
            await root.user_delete("alice")
            assert (await root.role_list()).roles == ["root"]
            with pytest.raises(errors.ErrUserNotFound):
                await root.user_get("alice")
            await root.auth_disable()

    asyncio.run(main())


def test_sync_client_survives_auth_toggle(etcd):
    ep = etcd.endpoint
    with SyncClient(ep, user="root", password="rootpw") as c:
        c.user_add("root", "rootpw")
        c.role_add("root")
        c.user_grant_role("root", "root")
        c.put("k", "v1")
        assert c.login() is None  # auth not enabled: calls go without a token
        c.auth_enable()
        assert c.get_value("k") == b"v1"  # `user name is empty` -> authenticated -> retried
        assert c.aio._token_auth.token
        with c.lease(5) as lease:
            c.put("k", "v2", lease=lease.id)
            assert c.time_to_live(lease.id).TTL > 0
        c.auth_disable()
        assert c.get_value("k") is None
        with SyncClient(ep) as anon:
            assert anon.get_value("k") is None
