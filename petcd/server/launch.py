"""Start a member: open its data, start Raft, serve gRPC, shut down on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from urllib.parse import urlsplit

import grpc

from petcd import log
from petcd.server.metrics_http import MetricsServer
from petcd.transport.grpc_http2 import GrpcServer
from petcd.transport.peer import TransportError, fetch_cluster_info
from petcd.transport.tls import (
    ClientTLS,
    client_server_context,
    client_tls,
    metrics_tls,
    peer_tls,
)
from petcd.version import ETCD_VERSION
from petcd.wal.wal import wal_exists

_log = log.get("embed")

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets a request this much over --max-request-bytes


def _grpc_options(cfg) -> list[tuple[str, int]]:
    opts = [
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, as etcd does
        ("grpc.max_receive_message_length", cfg.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
    ]
    if cfg.grpc_keepalive_min_time_ms:
        opts.append(
            ("grpc.http2.min_ping_interval_without_data_ms", cfg.grpc_keepalive_min_time_ms)
        )
        opts.append(("grpc.http2.max_ping_strikes", 0))
    if cfg.grpc_keepalive_interval_ms:
        opts.append(("grpc.keepalive_time_ms", cfg.grpc_keepalive_interval_ms))
    if cfg.grpc_keepalive_timeout_ms:
        opts.append(("grpc.keepalive_timeout_ms", cfg.grpc_keepalive_timeout_ms))
    return opts


async def _client_server(cfg, srv, ctls: ClientTLS | None, listeners: dict[str, bool], http1):
    """The gRPC server of the client URLs, bound (not yet serving). petcd's own HTTP/2 server
    unless PETCD_GRPC_SERVER=grpcio asks for grpc.aio (kept to compare the two)."""
    from petcd.api.v3.services import all_handlers

    if os.environ.get("PETCD_GRPC_SERVER", "") == "grpcio":
        server = grpc.aio.server(options=_grpc_options(cfg))
        server.add_generic_rpc_handlers(all_handlers(srv))
        creds = ctls.server_credentials() if ctls is not None else None
        for addr, secure in listeners.items():
            if secure and creds is not None:  # (creds is None only without TLS listeners)
                port = server.add_secure_port(addr, creds)
            else:
                port = server.add_insecure_port(addr)
            if port == 0:
                raise RuntimeError(f"listen tcp {addr}: bind: address already in use")
        return server
    server = GrpcServer(
        all_handlers(srv),
        max_receive_message_length=cfg.max_request_bytes + GRPC_OVERHEAD_BYTES,
        keepalive_interval_s=cfg.grpc_keepalive_interval,
        keepalive_timeout_s=cfg.grpc_keepalive_timeout,
        http1=http1,
    )
    sslctx = client_server_context(cfg, ctls) if ctls is not None else None
    for addr, secure in listeners.items():
        u = urlsplit("//" + addr)
        try:
            await server.add_port(u.hostname or "", u.port or 2379, sslctx if secure else None)
        except OSError as e:
            await server.stop()
            if e.errno == errno.EADDRINUSE:
                raise RuntimeError(f"listen tcp {addr}: bind: address already in use") from e
            raise RuntimeError(f"listen tcp {addr}: {e.strerror or e}") from e
    return server


def _bind_address(url: str) -> str:
    u = urlsplit(url)
    host = u.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{u.port or 2379}"


def _is_tls_url(url: str) -> bool:
    return urlsplit(url).scheme in ("https", "unixs")


def _client_tls(cfg) -> ClientTLS | None:
    """etcd's ClientSelfCert + configureClientListeners checks, then the server credentials'
    PEMs (None: no listener serves TLS); raises ValueError with etcd's wording."""
    tls_urls = [u for u in cfg.listen_client_urls if _is_tls_url(u)]
    if not (cfg.cert_file or cfg.key_file or cfg.auto_tls):
        if tls_urls:
            raise ValueError(
                f"TLS key/cert (--cert-file, --key-file) must be provided for client url "
                f"{tls_urls[0]} with HTTPS scheme"
            )
        return None
    for u in cfg.listen_client_urls:
        if not _is_tls_url(u):
            _warn_plain_client_url(cfg, u)
    # etcd makes the --auto-tls certificate even for plain listeners, but only reads given
    # cert files when some listener serves TLS
    if tls_urls or cfg.auto_tls:
        return client_tls(cfg, cfg.effective_data_dir())
    return None


def _warn_plain_client_url(cfg, url: str) -> None:
    if cfg.cert_file or cfg.key_file or cfg.auto_tls:
        _log.warning(
            "scheme is HTTP while key and cert files are present; ignoring key and cert files",
            **{"client-url": url},
        )
    if cfg.client_cert_auth:
        _log.warning(
            "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL",
            **{"client-url": url},
        )


def _client_listeners(cfg) -> dict[str, bool]:
    """Bind address -> serve TLS, in --listen-client-urls order; repeated addresses merge
    as in etcd (config.py refuses one address with both http and https)."""
    out: dict[str, bool] = {}
    for url in cfg.listen_client_urls:
        addr = _bind_address(url)
        out[addr] = out.get(addr, False) or _is_tls_url(url)
    return out


def _describe_client_tls(cfg, ctls: ClientTLS | None) -> str:
    """etcd 3.4's TLSInfo.String()."""
    cert, key = (ctls.cert_file, ctls.key_file) if ctls is not None else (cfg.cert_file, cfg.key_file)
    return (
        f"cert = {cert}, key = {key}, trusted-ca = {cfg.trusted_ca_file}, "
        f"client-cert-auth = {str(cfg.client_cert_auth).lower()}, crl-file = {cfg.client_crl_file}"
    )


async def _fetch_remote_cluster(cfg, client_ssl) -> bytes:
    """A member joining an existing cluster learns the members from any other member."""
    mine = set(cfg.initial_advertise_peer_urls)
    urls = [
        u for name, us in cfg.initial_cluster_map().items() if name != cfg.name for u in us
        if u not in mine
    ]
    try:
        return await fetch_cluster_info(urls, timeout=2.0, client_ssl=client_ssl)
    except TransportError as e:
        raise RuntimeError(f"cannot fetch cluster info from peer urls: {e}") from None


async def serve(cfg) -> int:
    """Run a member until a signal or a fatal error; return the process exit code."""
    from petcd.server.etcdserver import EtcdServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signame: str) -> None:
        _log.info("received signal; shutting down", signal=signame)
        stop.set()

    for sig, name in ((signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupt")):
        loop.add_signal_handler(sig, on_signal, name)

    _log.info(
        "starting an etcd server",
        **{"etcd-version": ETCD_VERSION, "name": cfg.name,
           "data-dir": cfg.effective_data_dir(),
           "advertise-client-urls": list(cfg.advertise_client_urls),
           "listen-client-urls": list(cfg.listen_client_urls)},
    )
    srv = EtcdServer(cfg)
    try:
        srv.peer_tls = peer_tls(cfg, cfg.effective_data_dir())
        ctls = _client_tls(cfg)
        srv.client_tls = ctls  # for dialing other members' TLS client listeners
        remote = None
        if cfg.initial_cluster_state == "existing" and not wal_exists(cfg.effective_wal_dir()):
            remote = await _fetch_remote_cluster(cfg, srv.peer_tls[1])
        srv.open(remote)
    except Exception as e:
        _log.error("failed to start etcd server", error=str(e))
        return 1
    await srv.start()

    listeners = _client_listeners(cfg)
    metrics = MetricsServer(srv)
    try:
        server = await _client_server(cfg, srv, ctls, listeners, metrics.serve_client)
    except RuntimeError as e:
        _log.error("failed to listen on client url", error=str(e))
        await srv.stop()
        return 1
    try:
        https = [u for u in cfg.listen_metrics_urls if u.startswith("https://")]
        mtls = metrics_tls(cfg, cfg.effective_data_dir(), https[0]) if https else None
        await metrics.start(cfg.listen_metrics_urls, mtls)
    except (OSError, ValueError) as e:
        _log.error("failed to listen on metrics url", error=str(e))
        await metrics.stop()
        await srv.stop()
        return 1

    async def first(*aws) -> None:
        tasks = [asyncio.ensure_future(a) for a in aws]
        _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()

    rc = 0
    try:
        await first(srv.leader_ready.wait(), stop.wait(), srv.fatal_event.wait())
        if not stop.is_set() and not srv.fatal_event.is_set():
            await first(srv.publish(), stop.wait(), srv.fatal_event.wait())
        if not stop.is_set() and not srv.fatal_event.is_set():
            if ctls is not None or cfg.cert_file or cfg.key_file:
                _log.info(
                    "starting with client TLS",
                    **{"tls-info": _describe_client_tls(cfg, ctls),
                       "cipher-suites": list(cfg.cipher_suites)},
                )
            await server.start()
            _log.info("ready to serve client requests")
            for addr, secure in listeners.items():
                if secure:
                    _log.info("serving client traffic securely", address=addr)
                else:
                    # etcd logs this at info level too
                    _log.info(
                        "serving client traffic insecurely; this is strongly discouraged!",
                        address=addr,
                    )
            await srv.set_cluster_version()
            await first(stop.wait(), srv.fatal_event.wait())
        if srv.fatal_event.is_set() and not srv.removed:
            rc = 1
    finally:
        await metrics.stop()
        await server.stop(grace=1.0)
        await srv.stop()
        _log.info("stopped etcd server")
    return rc
