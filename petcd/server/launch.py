"""Start a member: open its data, start Raft, serve gRPC, shut down on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from urllib.parse import urlsplit

import grpc

from petcd import log
from petcd.transport.peer import TransportError, fetch_cluster_info
from petcd.transport.tls import peer_tls
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


def _bind_address(url: str) -> str:
    u = urlsplit(url)
    host = u.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{u.port or 2379}"


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
    from petcd.api.v3.services import all_handlers
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
        remote = None
        if cfg.initial_cluster_state == "existing" and not wal_exists(cfg.effective_wal_dir()):
            remote = await _fetch_remote_cluster(cfg, srv.peer_tls[1])
        srv.open(remote)
    except Exception as e:
        _log.error("failed to start etcd server", error=str(e))
        return 1
    await srv.start()

    server = grpc.aio.server(options=_grpc_options(cfg))
    server.add_generic_rpc_handlers(all_handlers(srv))
    try:
        for url in cfg.listen_client_urls:
            addr = _bind_address(url)
            if server.add_insecure_port(addr) == 0:
                raise RuntimeError(f"listen tcp {addr}: bind: address already in use")
    except RuntimeError as e:
        _log.error("failed to listen on client url", error=str(e))
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
            await server.start()
            _log.info("ready to serve client requests")
            for url in cfg.listen_client_urls:
                _log.warning(
                    "serving client traffic insecurely; this is strongly discouraged!",
                    address=_bind_address(url),
                )
            await srv.set_cluster_version()
            await first(stop.wait(), srv.fatal_event.wait())
        if srv.fatal_event.is_set() and not srv.removed:
            rc = 1
    finally:
        await server.stop(grace=1.0)
        await srv.stop()
        _log.info("stopped etcd server")
    return rc
