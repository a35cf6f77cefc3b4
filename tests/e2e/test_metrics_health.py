"""--listen-metrics-urls: /health and /metrics, petcd beside real etcd 3.4."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest
from cluster import Cluster, wait_for
from harness import ETCD, ServerProcess, ctl_env, free_port
from test_tls import TLSServer, make_pki

from petcd.server.metrics_http import go_float

IMPLS = ["etcd", "petcd"]

# Families petcd exports with etcd's names, types and label names.
FAMILIES = {
    "etcd_cluster_version": "gauge",
    "etcd_server_has_leader": "gauge",
    "etcd_server_is_leader": "gauge",
    "etcd_server_is_learner": "gauge",
    "etcd_server_leader_changes_seen_total": "counter",
    "etcd_server_proposals_committed_total": "gauge",
    "etcd_server_proposals_applied_total": "gauge",
    "etcd_server_proposals_pending": "gauge",
    "etcd_server_id": "gauge",
    "etcd_server_version": "gauge",
    "etcd_server_quota_backend_bytes": "gauge",
    "etcd_server_health_success": "counter",
    "etcd_server_health_failures": "counter",
    "etcd_mvcc_db_total_size_in_bytes": "gauge",
    "etcd_mvcc_db_total_size_in_use_in_bytes": "gauge",
    "etcd_debugging_mvcc_current_revision": "gauge",
    "etcd_debugging_mvcc_compact_revision": "gauge",
    "etcd_debugging_mvcc_watcher_total": "gauge",
    "etcd_disk_wal_fsync_duration_seconds": "histogram",
    "etcd_disk_backend_commit_duration_seconds": "histogram",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}


def start(impl: str, *extra: str) -> tuple[ServerProcess, str]:
    port = free_port()
    cmd = [ETCD] if impl == "etcd" else None
    s = ServerProcess(cmd=cmd, extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{port}",
                                           *extra]).start()
    return s, f"http://127.0.0.1:{port}"


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def parse(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """(family -> type, 'name{labels}' -> value) of a text exposition."""
    types, values = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            types[name] = typ
        elif line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return types, values


@pytest.mark.parametrize("impl", IMPLS)
def test_health_endpoint(impl):
    s, base = start(impl)
    try:
        for q in ("", "?exclude=NOSPACE", "?serializable=true"):
            status, headers, body = fetch(base + "/health" + q)
            assert (status, body) == (200, b'{"health":"true"}')
            assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, headers, body = fetch(base + "/health", "POST")
        assert (status, headers["Allow"], body) == (405, "GET", b"Method Not Allowed\n")
        status, _, body = fetch(base + "/version")
        assert (status, body) == (404, b"404 page not found\n")
    finally:
        s.cleanup()


@pytest.mark.parametrize("impl", IMPLS)
def test_health_reports_nospace_unless_excluded(impl):
    s, base = start(impl, "--quota-backend-bytes", str(4 * 1024 * 1024))
    try:
        value = os.urandom(300 * 1024).hex()[: 300 * 1024]
        for i in range(40):
            if s.ctl("put", f"big{i}", input=value, check=False).returncode != 0:
                break
        assert "NOSPACE" in s.ctl("alarm", "list").stdout
        assert fetch(base + "/health")[0::2] == (503, b'{"health":"false"}\n')
        assert fetch(base + "/health?exclude=NOSPACE")[0::2] == (200, b'{"health":"true"}')
        _, values = parse(fetch(base + "/metrics")[2].decode())
        # etcd 3.4 fails an alarmed check before counting it; the excluded one counts
        assert values["etcd_server_health_failures"] == 0
        assert values["etcd_server_health_success"] == 1
    finally:
        s.cleanup()


@pytest.mark.parametrize("impl", IMPLS)
def test_metrics_families_and_values(impl):
    s, base = start(impl)
    try:
        for i in range(5):
            s.ctl("put", f"k{i}", "v")
        status, headers, body = fetch(base + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        types, values = parse(body.decode())
        for name, typ in FAMILIES.items():
            assert types.get(name) == typ, name
        member = s.ctl("endpoint", "status", "-w", "fields").stdout
        member_id = int(re.search(r'"MemberID" : (\d+)', member).group(1))
        revision = int(re.search(r'"Revision" : (\d+)', member).group(1))
        assert values[f'etcd_server_id{{server_id="{member_id:x}"}}'] == 1
        assert values['etcd_server_version{server_version="3.4.23"}'] == 1
        assert values['etcd_cluster_version{cluster_version="3.4"}'] == 1
        assert values["etcd_server_has_leader"] == values["etcd_server_is_leader"] == 1
        assert values["etcd_server_is_learner"] == 0
        assert values["etcd_server_leader_changes_seen_total"] == 1
        assert values["etcd_server_quota_backend_bytes"] == 2 * 1024**3
        assert values["etcd_debugging_mvcc_current_revision"] == revision == 6
        assert values["etcd_debugging_mvcc_compact_revision"] == -1
        assert values["etcd_server_proposals_applied_total"] >= 5
        assert values["etcd_mvcc_db_total_size_in_bytes"] > 0
        assert values["process_resident_memory_bytes"] > 1e6
        for h in ("etcd_disk_wal_fsync_duration_seconds",
                  "etcd_disk_backend_commit_duration_seconds"):
            buckets = [(k, v) for k, v in values.items() if k.startswith(h + "_bucket{")]
            # etcd's ExponentialBuckets(0.001, 2, 14) and +Inf, cumulative
            assert [k.split('"')[1] for k, _ in buckets] == [
                "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
                "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"]
            counts = [v for _, v in buckets]
            assert counts == sorted(counts) and counts[-1] == values[h + "_count"]
        assert values["etcd_disk_wal_fsync_duration_seconds_count"] >= 5  # one per put at least
        assert values["etcd_disk_wal_fsync_duration_seconds_sum"] > 0
    finally:
        s.cleanup()


@pytest.mark.parametrize("impl", IMPLS)
def test_health_fails_without_quorum(impl):
    c = Cluster(3, impl=impl)
    base = f"http://127.0.0.1:{free_port()}"
    c.member(1).extra_args += ["--listen-metrics-urls", base]
    try:
        c.start()
        assert fetch(base + "/health")[0::2] == (200, b'{"health":"true"}')
        c.kill(2)
        c.kill(3)
        # no leader (check-quorum) or a quorum read that times out: 503 either way
        wait_for(lambda: fetch(base + "/health")[0] == 503, 20, what="/health 503")
        assert fetch(base + "/health")[2] == b'{"health":"false"}\n'
        _, values = parse(fetch(base + "/metrics")[2].decode())
        assert values["etcd_server_health_failures"] >= 1
        wait_for(lambda: parse(fetch(base + "/metrics")[2].decode())[1]["etcd_server_has_leader"]
                 == 0, 20, what="has_leader 0")
    finally:
        c.cleanup()


def test_busy_metrics_port_fails_startup_and_unix_is_refused():
    s, base = start("petcd")
    try:
        port = base.rsplit(":", 1)[1]
        other = ServerProcess(extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{port}"])
        with pytest.raises(RuntimeError, match="failed to listen on metrics url"):
            other.start(timeout=20)
        other.cleanup()
    finally:
        s.cleanup()
    r = subprocess.run(
        [*ServerProcess().cmd, "--listen-metrics-urls", "unix://localhost:12345"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode != 0 and "metrics URLs (--listen-metrics-urls) is not supported yet" in (
        r.stderr
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_https_metrics_url_uses_the_client_tls_files(impl, tmp_path):
    pki = make_pki(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    s = ServerProcess(cmd=[ETCD] if impl == "etcd" else None, extra_args=[
        "--listen-metrics-urls", url, "--cert-file", pki["cert"], "--key-file", pki["key"],
        "--trusted-ca-file", pki["ca"], "--client-cert-auth"]).start()
    try:
        mine = ssl.create_default_context(cafile=pki["ca"])
        mine.load_cert_chain(pki["client"], pki["client_key"])
        with urllib.request.urlopen(url + "/health", timeout=10, context=mine) as r:
            assert (r.status, r.read()) == (200, b'{"health":"true"}')
        with urllib.request.urlopen(url + "/metrics", timeout=10, context=mine) as r:
            assert parse(r.read().decode())[1]["etcd_server_has_leader"] == 1
        # --client-cert-auth holds on the metrics listener too
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=10,
                                   context=ssl.create_default_context(cafile=pki["ca"])).read()
    finally:
        s.cleanup()


@pytest.mark.parametrize("impl", IMPLS)
def test_https_metrics_url_without_cert_files_fails(impl, tmp_path):
    cport, pport, mport = free_port(), free_port(), free_port()
    cmd = [ETCD] if impl == "etcd" else ServerProcess().cmd
    r = subprocess.run(
        [*cmd, "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{cport}",
         "--advertise-client-urls", f"http://127.0.0.1:{cport}",
         "--listen-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
         "--initial-cluster", f"default=http://127.0.0.1:{pport}",
         "--listen-metrics-urls", f"https://127.0.0.1:{mport}"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert (f"cannot listen on TLS for 127.0.0.1:{mport}: KeyFile and CertFile are not presented"
            in r.stderr)


_CORS = {
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
}


def _client_port_http(base: str, context: ssl.SSLContext | None = None) -> None:
    def get(path: str, method: str = "GET"):
        req = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    # Both answer "not_decided" until the member has published the cluster version.
    deadline = time.monotonic() + 15
    while True:
        status, headers, body = get("/version")
        assert status == 200 and headers["Content-Type"] == "application/json"
        version = json.loads(body)
        if version["etcdcluster"] != "not_decided" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert version == {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}
    status, headers, body = get("/health")
    assert (status, body) == (200, b'{"health":"true"}')
    assert {k: headers[k] for k in _CORS} == _CORS
    status, _, body = get("/metrics")
    assert status == 200 and parse(body.decode())[1]["etcd_server_has_leader"] == 1
    status, headers, body = get("/nope")
    assert (status, body) == (404, b"404 page not found\n")
    assert headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("impl", IMPLS)
def test_client_port_serves_http_and_grpc(impl):
    """etcd answers HTTP/1.1 on its client port too (probes use /health there), next to gRPC."""
    s = ServerProcess(cmd=[ETCD] if impl == "etcd" else None).start()
    try:
        _client_port_http(f"http://{s.endpoint}")
        r = subprocess.run(["etcdctl", f"--endpoints={s.endpoint}", "put", "k", "v"],
                           capture_output=True, text=True, timeout=20, env=ctl_env())
        assert r.stdout == "OK\n", r.stderr
        _client_port_http(f"http://{s.endpoint}")  # still both, after gRPC
        _grpc_health(s.endpoint)
    finally:
        s.cleanup()


def _grpc_health(endpoint: str) -> None:
    """grpc.health.v1.Health, as grpc-health-probe and Kubernetes gRPC probes call it."""
    with grpc.insecure_channel(endpoint) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01"  # SERVING
        assert check(b"\x0a\x00", timeout=10) == b"\x08\x01"  # service "" spelled out
        with pytest.raises(grpc.RpcError) as e:
            check(b"\x0a\x0fetcdserverpb.KV", timeout=10)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "unknown service")
        for req, first in ((b"", b"\x08\x01"), (b"\x0a\x04nope", b"\x08\x03")):
            watch = ch.unary_stream("/grpc.health.v1.Health/Watch")(req, timeout=10)
            assert next(watch) == first  # SERVING / SERVICE_UNKNOWN, then the stream stays open
            watch.cancel()


@pytest.mark.parametrize("impl", IMPLS)
def test_https_client_port_serves_http_and_grpc(impl, tmp_path):
    pki = make_pki(tmp_path)
    s = TLSServer([ETCD] if impl == "etcd" else ServerProcess().cmd, str(tmp_path / "d"),
                  ["--cert-file", pki["cert"], "--key-file", pki["key"],
                   "--trusted-ca-file", pki["ca"], "--client-cert-auth"], plain=False).start()
    try:
        mine = ssl.create_default_context(cafile=pki["ca"])
        mine.load_cert_chain(pki["client"], pki["client_key"])
        _client_port_http(f"https://127.0.0.1:{s.client_port}", mine)
        r = subprocess.run(
            ["etcdctl", f"--endpoints=https://127.0.0.1:{s.client_port}", "--cacert", pki["ca"],
             "--cert", pki["client"], "--key", pki["client_key"], "get", "nothing"],
            capture_output=True, text=True, timeout=20, env=ctl_env())
        assert r.returncode == 0 and r.stdout == "", r.stderr
    finally:
        s.cleanup()


def test_go_float_matches_gos_shortest_g_format():
    # strconv.FormatFloat(v, 'g', -1, 64), as etcd's /metrics prints values
    cases = {0: "0", 1: "1", -1: "-1", 24576: "24576", 999999: "999999", 1e6: "1e+06",
             2147483648: "2.147483648e+09", 0.32: "0.32", 0.0001: "0.0001", 0.00001: "1e-05",
             1795343543.89: "1.79534354389e+09", 123.5: "123.5"}
    for v, want in cases.items():
        assert go_float(v) == want, v
