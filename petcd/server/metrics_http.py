"""The --listen-metrics-urls listeners: /metrics and /health, as etcd's
etcdhttp.HandleMetricsHealth serves them (Kubernetes probes /health on this port).

The exposition is written here rather than with prometheus-client: etcd's metric names
are facts (several counters have no ``_total`` suffix, which that library always adds),
and every value is read from the server when scraped, so the write path counts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from petcd import log
from petcd.metrics import BACKEND_COMMIT_SECONDS, WAL_FSYNC_SECONDS, Histogram
from petcd.proto.etcdserverpb import rpc_pb2
from petcd.version import ETCD_VERSION

if TYPE_CHECKING:
    from petcd.server.etcdserver import EtcdServer

_log = log.get("embed")

HEALTH_TIMEOUT_S = 1.0  # etcd gives the health check's quorum read one second
_TEXT = "text/plain; charset=utf-8"
_EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"
_CORS = {  # etcd's client listener answers every HTTP request with these
    "Access-Control-Allow-Headers": "accept, content-type, authorization",
    "Access-Control-Allow-Methods": "POST, GET, OPTIONS, PUT, DELETE",
    "Access-Control-Allow-Origin": "*",
}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


def go_float(v: float) -> str:
    """A value as Go's strconv.FormatFloat(v, 'g', -1, 64) writes it (Prometheus' Go client)."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exp = d.as_tuple()
    exp10 = len(digits) - 1 + exp
    if exp10 < -4 or exp10 >= 6:  # Go's %e rule for the shortest representation
        ds = "".join(map(str, digits))
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{'-' if sign else ''}{mant}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    return format(d, "f")


class _Family:
    __slots__ = ("name", "help", "type", "samples")

    def __init__(self, name: str, help_: str, type_: str) -> None:
        self.name, self.help, self.type = name, help_, type_
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> _Family:
        self.samples.append((self.name, labels, value))
        return self

    def render(self) -> str:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.type}"]
        for name, labels, value in self.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{lab}}} {go_float(value)}" if lab else f"{name} {go_float(value)}")
        return "\n".join(out) + "\n"


def _histogram_family(h: Histogram) -> _Family:
    f = _Family(h.name, h.help, "histogram")
    total = 0
    for bound, n in zip(h.bounds, h.counts, strict=False):
        total += n
        f.samples.append((h.name + "_bucket", {"le": go_float(bound)}, total))
    f.samples.append((h.name + "_bucket", {"le": "+Inf"}, total + h.counts[-1]))
    f.samples.append((h.name + "_sum", {}, h.sum))
    f.samples.append((h.name + "_count", {}, h.count))
    return f


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _process_families() -> list[_Family]:
    """The process_* metrics of Prometheus' process collector, from /proc (Linux)."""
    fams = []
    t = os.times()
    fams.append(_Family("process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.", "counter")
                .add(t.user + t.system))
    try:
        fams.append(_Family("process_open_fds", "Number of open file descriptors.", "gauge")
                    .add(len(os.listdir("/proc/self/fd"))))
    except OSError:
        pass
    fams.append(_Family("process_max_fds", "Maximum number of open file descriptors.", "gauge")
                .add(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    try:
        with open("/proc/self/statm") as f:
            vm_pages, rss_pages = (int(x) for x in f.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        fams.append(_Family("process_resident_memory_bytes", "Resident memory size in bytes.",
                            "gauge").add(rss_pages * page))
        fams.append(_Family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            "gauge").add(vm_pages * page))
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime "))
        fams.append(_Family("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.", "gauge")
                    .add(btime + start_ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, StopIteration):
        pass
    return fams


class MetricsServer:
    """HTTP/1.1 listeners serving GET /metrics and GET /health (nothing else: 404)."""

    def __init__(self, srv: EtcdServer) -> None:
        self.srv = srv
        self.health_success = 0
        self.health_failures = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self, urls: list[str], tls: ssl.SSLContext | None = None) -> None:
        """Bind every URL (https ones with ``tls``); raises OSError when one cannot be bound."""
        for url in urls:
            u = urlsplit(url)
            server = await asyncio.start_server(
                self._serve, u.hostname, u.port, ssl=tls if u.scheme == "https" else None
            )
            self._servers.append(server)
            _log.info("serving metrics", address=url)

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for w in list(self._conns):
            w.close()
        for s in self._servers:
            await s.wait_closed()
        self._servers.clear()

    # -- HTTP ---------------------------------------------------------------------------

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        """An HTTP/1.x connection on a client URL: etcd serves /health, /version and /metrics
        there too, with CORS headers (the gRPC server hands such connections over)."""
        await self._serve(reader, writer, client=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     client: bool = False) -> None:
        self._conns.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                parts = line.decode("latin-1").split()
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                if len(parts) != 3:
                    await self._respond(writer, 400, _TEXT, b"400 Bad Request", False)
                    return
                method, target, version = parts
                length = int(headers.get("content-length") or 0)
                if length:
                    await reader.readexactly(length)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                status, ctype, body, extra = await self._route(method, target, client)
                if client:
                    extra = {**_CORS, **extra}
                await self._respond(writer, status, ctype, body, keep, extra)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.LimitOverrunError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes,
                       keep: bool, extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
                f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"]
        for k, v in (extra or {}).items():
            head.append(f"{k}: {v}")
        if not keep:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _route(self, method: str, target: str,
                     client: bool = False) -> tuple[int, str, bytes, dict[str, str]]:
        u = urlsplit(target)
        if client and u.path == "/version":
            if method not in ("GET", "HEAD", "OPTIONS"):
                return 405, _TEXT, b"Method Not Allowed", {"Allow": "GET, HEAD"}
            body = json.dumps({"etcdserver": ETCD_VERSION,
                               "etcdcluster": _semver(self.srv.cluster.version)},
                              separators=(",", ":"))
            return 200, "application/json", body.encode(), {}
        if u.path not in ("/metrics", "/health"):
            return 404, _TEXT, b"404 page not found\n", {"X-Content-Type-Options": "nosniff"}
        if u.path == "/metrics":
            return 200, _EXPOSITION, self.exposition().encode(), {}
        if method != "GET":
            return (405, _TEXT, b"Method Not Allowed\n",
                    {"Allow": "GET", "X-Content-Type-Options": "nosniff"})
        q = parse_qs(u.query)
        ok = await self.check_health(set(q.get("exclude", [])),
                                     q.get("serializable", [""])[0] == "true")
        if ok:
            return 200, _TEXT, b'{"health":"true"}', {}
        return 503, _TEXT, b'{"health":"false"}\n', {"X-Content-Type-Options": "nosniff"}

    # -- health -------------------------------------------------------------------------

    async def check_health(self, excluded: set[str], serializable: bool) -> bool:
        """etcd's checkHealth: no alarm (but the excluded ones), a leader, a quorum read.

        As in etcd 3.4, an alarm fails the check before the success/failure counters.
        """
        for a in self.srv.alarms.list():
            name = rpc_pb2.AlarmType.Name(a.alarm)
            if name in excluded:
                continue
            _log.warning("/health error", alarm=name)
            return False
        ok = await self._leader_and_quorum(serializable)
        if ok:
            self.health_success += 1
        else:
            self.health_failures += 1
        return ok

    async def _leader_and_quorum(self, serializable: bool) -> bool:
        srv = self.srv
        if serializable:  # etcd 3.5's ?serializable=true: this member alone
            return True
        if not srv.lead:
            _log.warning("/health error; no leader", **{"status-code": 503})
            return False
        try:
            await asyncio.wait_for(srv.linearizable_barrier(), HEALTH_TIMEOUT_S)
        except Exception as e:  # any failure of the quorum read is ill health
            _log.warning("/health error; QGET failed", error=str(e) or type(e).__name__)
            return False
        return True

    # -- metrics ------------------------------------------------------------------------

    def exposition(self) -> str:
        srv = self.srv
        fams = []
        cv = srv.cluster.version
        if cv:
            fams.append(_Family("etcd_cluster_version", "Which version is running. 1 for "
                                "'cluster_version' label with current cluster version", "gauge")
                        .add(1, cluster_version=cv))
        for name, typ, help_, value in _SERVER_METRICS:
            fams.append(_Family(name, help_, typ).add(value(srv)))
        fams.append(_Family("etcd_server_id", "Server or member ID in hexadecimal format. 1 for "
                            "'server_id' label with current ID.", "gauge")
                    .add(1, server_id=f"{srv.id:x}"))
        fams.append(_Family("etcd_server_version", "Which version is running. 1 for "
                            "'server_version' label with current version.", "gauge")
                    .add(1, server_version=srv.version()))
        fams.append(_Family("etcd_server_health_success",
                            "The total number of successful health checks", "counter")
                    .add(self.health_success))
        fams.append(_Family("etcd_server_health_failures",
                            "The total number of failed health checks", "counter")
                    .add(self.health_failures))
        fams.append(_histogram_family(WAL_FSYNC_SECONDS))
        fams.append(_histogram_family(BACKEND_COMMIT_SECONDS))
        fams.extend(_process_families())
        return "".join(f.render() for f in fams)


# etcd's unlabeled server metrics: (name, type, help, value read from the server).
_SERVER_METRICS: tuple[tuple[str, str, str, Callable[[EtcdServer], float]], ...] = (
    ("etcd_server_has_leader", "gauge",
     "Whether or not a leader exists. 1 is existence, 0 is not.",
     lambda s: 1 if s.lead else 0),
    ("etcd_server_is_leader", "gauge",
     "Whether or not this member is a leader. 1 if is, 0 otherwise.",
     lambda s: 1 if s.lead and s.lead == s.id else 0),
    ("etcd_server_is_learner", "gauge",
     "Whether or not this member is a learner. 1 if is, 0 otherwise.",
     lambda s: 1 if s.learner else 0),
    ("etcd_server_leader_changes_seen_total", "counter", "The number of leader changes seen.",
     lambda s: s.leader_changes),
    ("etcd_server_proposals_committed_total", "gauge",
     "The total number of consensus proposals committed.", lambda s: s.committed_index),
    ("etcd_server_proposals_applied_total", "gauge",
     "The total number of consensus proposals applied.", lambda s: s.applied_index),
    ("etcd_server_proposals_pending", "gauge",
     "The current number of pending proposals to commit.", lambda s: s.pending_proposals()),
    ("etcd_server_quota_backend_bytes", "gauge", "Current backend storage quota size in bytes.",
     lambda s: s.quota_bytes),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge",
     "Total size of the underlying database physically allocated in bytes.",
     lambda s: s.db_size),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "gauge",
     "Total size of the underlying database logically in use in bytes.",
     lambda s: s.backend.size_in_use()),
    ("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store.",
     lambda s: s.kv.rev),
    ("etcd_debugging_mvcc_compact_revision", "gauge",
     "The revision of the last compaction in store.", lambda s: s.kv.compact_rev),
    ("etcd_debugging_mvcc_watcher_total", "gauge", "Total number of watchers.",
     lambda s: s.watchable.watcher_count()),
)


__all__ = ["MetricsServer", "go_float"]


def _semver(cluster_version: str | None) -> str:
    """/version's etcdcluster: the full version ("3.4.0") once decided."""
    if not cluster_version:
        return "not_decided"
    return cluster_version if cluster_version.count(".") >= 2 else cluster_version + ".0"
