"""Disaster recovery from a snapshot file: `snapshot save`, `snapshot status`, then
`snapshot restore` into a brand-new 3-member cluster (etcd's §10.7 procedure).

The end-to-end flow runs against etcd + etcdctl and petcd + petcdctl alike, with the same
expectations (so they are etcd's); error handling is compared with etcdctl's output where no
file has to be read, and checked against etcd's wording where it has to.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import pytest
from cluster import FAST_ARGS, Member, wait_for
from harness import ETCD, ETCDCTL, REPO, ServerProcess, petcd_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PETCDCTL = [sys.executable, "-m", "petcd.ctl"]
TOKEN = "restore-token"


def _env() -> dict[str, str]:
    env = dict(os.environ, ETCDCTL_API="3")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for k in list(env):
        if k.startswith("ETCDCTL_") and k != "ETCDCTL_API":
            del env[k]
    return env


def run(tool: list[str], *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tool, *args], capture_output=True, text=True, env=_env(), cwd=cwd, timeout=60
    )


def ok(tool: list[str], *args: str, cwd: str | None = None) -> str:
    r = run(tool, *args, cwd=cwd)
    assert r.returncode == 0, f"{args} failed ({r.returncode}): {r.stdout}{r.stderr}"
    return r.stdout


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def errors(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]


def _need(*binaries: str) -> None:
    for b in binaries:
        if not os.path.exists(b):
            pytest.skip(f"{b} not installed (Debian etcd-server/etcd-client)")


# -- the source cluster and its snapshot ---------------------------------------------------


class Source:
    """A one-member cluster with history, saved to a snapshot file, then stopped."""

    def __init__(self, impl: str, root: Path) -> None:
        self.impl = impl
        self.tool = [ETCDCTL] if impl == "etcd" else PETCDCTL
        self.root = root
        srv = ServerProcess(
            cmd=[ETCD] if impl == "etcd" else None, data_dir=str(root / "src"), name="src"
        )
        srv.start()
        try:
            ep = f"--endpoints={srv.endpoint}"
            for v in ("v1", "v2", "v3"):  # several revisions of one key
                ok(self.tool, ep, "put", "a", v)
            ok(self.tool, ep, "put", "b", "gone")
            ok(self.tool, ep, "del", "b")
            self.lease = int(ok(self.tool, ep, "lease", "grant", "600").split()[1], 16)
            ok(self.tool, ep, "put", "lk", "lv", f"--lease={self.lease:x}")
            ok(self.tool, ep, "put", "z", "last")
            self.kvs = {
                base64.b64decode(kv["key"]).decode(): kv
                for kv in json.loads(ok(self.tool, ep, "get", "", "--prefix", "-w", "json"))["kvs"]
            }
            st = json.loads(ok(self.tool, ep, "endpoint", "status", "-w", "json"))[0]
            self.revision = st["Status"]["header"]["revision"]
            self.cluster_id = st["Status"]["header"]["cluster_id"]
            self.snap = str(root / "snap.db")
            ok(self.tool, ep, "snapshot", "save", self.snap)
        finally:
            srv.stop()
        self.data_db = str(root / "src" / "member" / "snap" / "db")
        srv.cleanup()


@pytest.fixture(scope="module")
def petcd_source(tmp_path_factory) -> Source:
    _need(ETCDCTL)
    return Source("petcd", tmp_path_factory.mktemp("petcd-src"))


# -- a restored cluster ----------------------------------------------------------------------


class Restored(Member):
    """A member started on a restored data dir; `bare` starts it without --initial-* flags
    (the membership is in the data dir, as in etcd's restore guide)."""

    bare = False

    def args(self) -> list[str]:
        a = super().args()
        if not self.bare:
            return a
        out, skip = [], False
        for x in a:
            if skip:
                skip = False
            elif x.startswith("--initial-"):
                skip = True
            else:
                out.append(x)
        return out


def start_all(members: list[Member]) -> None:
    """Start every member at once: none is ready before there is a leader."""
    errs: list[BaseException] = []

    def go(m: Member) -> None:
        try:
            m.start(60)
        except BaseException as e:  # noqa: BLE001 - reported below
            errs.append(e)

    ts = [threading.Thread(target=go, args=(m,), daemon=True) for m in members]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]


@pytest.mark.parametrize("impl", ["etcd", "petcd"])
def test_restore_three_member_cluster_keeps_everything(impl, tmp_path):
    _need(ETCDCTL, *([ETCD] if impl == "etcd" else []))
    src = Source(impl, tmp_path)
    tool = src.tool

    # snapshot status: the image's latest revision and its entries
    st = json.loads(ok(tool, "snapshot", "status", src.snap, "-w", "json"))
    assert st["revision"] == src.revision
    # one record per revision in `key`, plus meta/lease/members/cluster entries
    assert st["totalKey"] > src.revision - 1
    assert st["totalSize"] > 0 and st["totalSize"] <= os.path.getsize(src.snap)
    if impl == "petcd":
        assert st["totalKey"] == lmdb_entries(src.snap)
    simple = ok(tool, "snapshot", "status", src.snap).strip().split(", ")
    assert simple[:3] == [f"{st['hash']:x}", str(src.revision), str(st["totalKey"])]

    cmd = [ETCD] if impl == "etcd" else petcd_cmd()
    members = [Restored(f"m{i}", cmd, str(tmp_path / f"m{i}.etcd"), FAST_ARGS) for i in (1, 2, 3)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster, m.token = initial, TOKEN
        r = run(
            tool, "snapshot", "restore", src.snap, "--name", m.name,
            "--initial-cluster", initial, "--initial-cluster-token", TOKEN,
            "--initial-advertise-peer-urls", m.peer_url, cwd=str(tmp_path),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout == ""
        msgs = [json.loads(ln)["msg"] for ln in r.stderr.splitlines()]
        assert msgs[0] == "restoring snapshot" and msgs[-1] == "restored snapshot"
        assert msgs.count("added member") == 3
        assert os.path.isdir(tmp_path / f"{m.name}.etcd" / "member" / "wal")  # <name>.etcd
    members[2].bare = True
    try:
        start_all(members)
        ep = f"--endpoints={members[0].endpoint}"

        got = json.loads(ok(tool, ep, "get", "", "--prefix", "-w", "json"))
        header = got["header"]
        assert header["revision"] == src.revision
        assert header["cluster_id"] != src.cluster_id  # a new cluster identity
        kvs = {base64.b64decode(kv["key"]).decode(): kv for kv in got["kvs"]}
        assert kvs == src.kvs  # values, create/mod revisions, versions, lease
        assert "b" not in kvs
        assert kvs["a"]["version"] == 3 and kvs["a"]["value"] == b64("v3")
        assert kvs["lk"]["lease"] == src.lease
        # the history too, not only the latest values
        old = json.loads(ok(tool, ep, "get", "a", "--rev", str(kvs["a"]["create_revision"]),
                            "-w", "json"))  # fmt: skip
        assert old["kvs"][0]["value"] == b64("v1")

        ttl = ok(tool, ep, "lease", "timetolive", f"{src.lease:x}", "--keys")
        assert "granted with TTL(600s)" in ttl and "attached keys([lk])" in ttl

        ml = json.loads(ok(tool, ep, "member", "list", "-w", "json"))["members"]
        assert sorted((m["name"], m["peerURLs"]) for m in ml) == [
            (m.name, [m.peer_url]) for m in members
        ]
        wait_for(
            lambda: all(
                m["clientURLs"]
                for m in json.loads(ok(tool, ep, "member", "list", "-w", "json"))["members"]
            ),
            what="every restored member published its client URLs",
        )

        # writes work and continue the revision sequence, on every member
        ok(tool, f"--endpoints={members[1].endpoint}", "put", "new", "after-restore")
        for m in members:
            got = json.loads(
                ok(tool, f"--endpoints={m.endpoint}", "get", "new", "-w", "json")
            )  # linearizable: through the leader
            assert got["kvs"][0]["mod_revision"] == src.revision + 1
            assert got["kvs"][0]["value"] == b64("after-restore")
    finally:
        for m in members:
            m.cleanup()


def lmdb_entries(snapshot: str) -> int:
    """Entries in every named database of a petcd snapshot image (read independently)."""
    env = lmdb.Environment(snapshot, subdir=False, readonly=True, lock=False, max_dbs=64)
    try:
        n = 0
        with env.begin() as txn:
            for name in [bytes(k) for k in txn.cursor().iternext(values=False)]:
                n += txn.stat(env.open_db(name, txn=txn, create=False))["entries"]
        return n
    finally:
        env.close()


# -- petcd: hash checks, refusals, status formats -----------------------------------------


def _restore(src: Source, data_dir: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return run(PETCDCTL, "snapshot", "restore", src.snap, "--data-dir", str(data_dir), *extra)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupted_image_is_refused(petcd_source, tmp_path):
    bad = str(tmp_path / "bad.db")
    shutil.copy(petcd_source.snap, bad)
    _flip(bad, 5000)  # inside the image
    r = run(PETCDCTL, "snapshot", "restore", bad, "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1
    (err,) = errors(r)
    assert err.startswith("Error: expected sha256 [") and "], got [" in err
    assert not (tmp_path / "d").exists()  # nothing half-built left behind


def test_corrupted_hash_refused_then_accepted_with_skip_hash_check(petcd_source, tmp_path):
    bad = str(tmp_path / "bad.db")
    shutil.copy(petcd_source.snap, bad)
    _flip(bad, -1)  # in the sha256 trailer only: the image is intact
    data, wal = tmp_path / "d", tmp_path / "elsewhere-wal"
    r = run(PETCDCTL, "snapshot", "restore", bad, "--data-dir", str(data))
    assert r.returncode == 1 and errors(r)[0].startswith("Error: expected sha256")

    r = run(
        PETCDCTL, "snapshot", "restore", bad, "--data-dir", str(data), "--wal-dir", str(wal),
        "--skip-hash-check",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert any(n.endswith(".wal") for n in os.listdir(wal))
    assert not (data / "member" / "wal").exists()
    srv = ServerProcess(data_dir=str(data), name="default", extra_args=["--wal-dir", str(wal)])
    try:
        srv.start()
        got = json.loads(ok(PETCDCTL, f"--endpoints={srv.endpoint}", "get", "a", "-w", "json"))
        assert got["kvs"][0]["value"] == b64("v3")
        assert got["header"]["revision"] == petcd_source.revision
    finally:
        srv.cleanup()


def test_db_file_from_data_dir_needs_skip_hash_check(petcd_source, tmp_path):
    raw = str(tmp_path / "raw.db")
    shutil.copy(petcd_source.data_db, raw)
    r = run(PETCDCTL, "snapshot", "restore", raw, "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1
    assert errors(r) == ["Error: snapshot missing hash but --skip-hash-check=false"]
    ok(PETCDCTL, "snapshot", "restore", raw, "--data-dir", str(tmp_path / "d"), "--skip-hash-check")
    st = json.loads(ok(PETCDCTL, "snapshot", "status", raw, "-w", "json"))
    assert st["revision"] == petcd_source.revision


def test_existing_data_dir_is_refused(petcd_source, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep").write_text("mine")
    r = _restore(petcd_source, d)
    assert (r.returncode, errors(r)) == (1, [f'Error: data-dir "{d}" exists'])
    assert os.listdir(d) == ["keep"]
    ok(PETCDCTL, "snapshot", "restore", petcd_source.snap, "--data-dir", str(d / "sub"))
    r = _restore(petcd_source, d / "sub")  # a restored dir is not overwritten either
    assert errors(r) == [f'Error: data-dir "{d / "sub"}" exists']
    wal = tmp_path / "w"
    wal.mkdir()
    r = _restore(petcd_source, tmp_path / "d2", "--wal-dir", str(wal))
    assert (r.returncode, errors(r)) == (1, [f'Error: wal-dir "{wal}" exists'])


def test_missing_file(tmp_path):
    r = run(PETCDCTL, "snapshot", "restore", "nope.db", "--data-dir", "x", cwd=str(tmp_path))
    assert (r.returncode, errors(r)) == (1, ["Error: open nope.db: no such file or directory"])
    assert json.loads(r.stderr.splitlines()[0])["msg"] == "restoring snapshot"
    assert not (tmp_path / "x").exists()
    r = run(PETCDCTL, "snapshot", "status", "nope.db", cwd=str(tmp_path))
    assert (r.returncode, errors(r)) == (1, ["Error: stat nope.db: no such file or directory"])


def test_status_formats(petcd_source):
    snap = petcd_source.snap
    st = json.loads(ok(PETCDCTL, "snapshot", "status", snap, "-w", "json"))
    assert set(st) == {"hash", "revision", "totalKey", "totalSize"}
    h, rev, keys = f"{st['hash']:x}", str(st["revision"]), str(st["totalKey"])
    simple = ok(PETCDCTL, "snapshot", "status", snap)
    assert simple.startswith(f"{h}, {rev}, {keys}, ") and simple.endswith(" kB\n")
    fields = ok(PETCDCTL, "snapshot", "status", snap, "-w", "fields")
    assert fields == (
        f'"Hash" : {st["hash"]}\n"Revision" : {rev}\n"Keys" : {keys}\n"Size" : {st["totalSize"]}\n'
    )
    table = ok(PETCDCTL, "snapshot", "status", snap, "-w", "table").splitlines()
    assert [c.strip() for c in table[1].strip("|").split("|")] == [
        "HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE",
    ]  # fmt: skip
    assert [c.strip() for c in table[3].strip("|").split("|")][:3] == [h, rev, keys]
    r = run(PETCDCTL, "snapshot", "status", snap, "-w", "protobuf")
    assert (r.returncode, errors(r)) == (4, ["Error: protobuf not supported as output format"])
    # the status only reads: the file is unchanged, so the hash is too
    assert ok(PETCDCTL, "snapshot", "status", snap) == simple


def test_status_of_something_else(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 1000)
    r = run(PETCDCTL, "snapshot", "status", str(junk))
    assert (r.returncode, errors(r)) == (1, ["Error: invalid database"])


def test_restore_api_without_cli(petcd_source, tmp_path):
    from petcd.server.restore import RestoreError, restore

    d = tmp_path / "api"
    seen: list[tuple[int, int]] = []
    restore(
        petcd_source.snap, name="x", data_dir=str(d), initial_cluster="x=http://127.0.0.1:1",
        initial_cluster_token="t", initial_advertise_peer_urls=["http://127.0.0.1:1"],
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert sorted(os.listdir(d / "member")) == ["snap", "wal"]
    image = os.path.getsize(petcd_source.snap) - 32  # the sha256 trailer is not copied
    assert seen and seen[-1] == (image, image)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))
    with pytest.raises(RestoreError, match="exists"):
        restore(petcd_source.snap, name="x", data_dir=str(d), initial_cluster="x=http://127.0.0.1:1",
                initial_advertise_peer_urls="http://127.0.0.1:1")  # fmt: skip


# -- argument handling compared with etcdctl (no file has to be read) -------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["snapshot", "restore"],
        ["snapshot", "restore", "a.db", "b.db"],
        ["snapshot", "status"],
        ["snapshot", "status", "a.db", "b.db"],
        ["snapshot", "restore", "a.db", "--name", "foo"],
        ["snapshot", "restore", "a.db", "--initial-advertise-peer-urls", "http://127.0.0.1:1"],
        ["snapshot", "restore", "a.db", "--initial-cluster", "default=foo"],
        ["snapshot", "restore", "a.db", "--data-dir", "exists"],
        ["snapshot", "restore", "a.db", "--wal-dir", "exists"],
        ["snapshot", "restore", "a.db", "--bogus"],
        ["snapshot", "restore", "--help"],
    ],
)
def test_same_as_etcdctl(args, tmp_path):
    _need(ETCDCTL)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "f").write_text("x")
    a = run([ETCDCTL], *args, cwd=str(tmp_path))
    b = run(PETCDCTL, *args, cwd=str(tmp_path))
    assert (b.returncode, b.stdout, errors(b)) == (a.returncode, a.stdout, errors(a))


def test_defaults_name_default_in_cwd(petcd_source, tmp_path):
    r = run(PETCDCTL, "snapshot", "restore", petcd_source.snap, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stderr.splitlines()[0])
    assert first["data-dir"] == "default.etcd" and first["wal-dir"] == "default.etcd/member/wal"
    added = [json.loads(ln) for ln in r.stderr.splitlines()[1:-1]]
    assert [a["added-peer-peer-urls"] for a in added] == [["http://localhost:2380"]]
    assert sorted(os.listdir(tmp_path / "default.etcd" / "member")) == ["snap", "wal"]
