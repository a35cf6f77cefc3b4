"""Requests only the leader can answer, sent on from a follower.

etcd forwards lease renewals, lease TTL lookups and learner promotion to the leader over
its peer HTTP API. petcd's peers speak only Raft, so a follower sends these as ordinary
gRPC calls to the leader's client URLs, over one cached channel per leader.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from petcd.errors import ErrNoLeader, ErrTimeout, from_status
from petcd.proto.etcdserverpb import rpc_pb2


class LeaderForwarder:
    def __init__(self, srv) -> None:
        self.srv = srv
        self._target = ""
        self._channel: grpc.aio.Channel | None = None

    async def _channel_to_leader(self) -> grpc.aio.Channel:
        """A channel to the leader's first client URL (gRPC reconnects by itself), replaced
        when the leader or its URL changes."""
        srv = self.srv
        lead = srv.cluster.members.get(srv.lead) if srv.lead else None
        if lead is None or not lead.client_urls or srv.lead == srv.id:
            raise ErrNoLeader()
        u = urlsplit(lead.client_urls[0])
        target = f"{u.hostname}:{u.port or 2379}"
        if target != self._target or self._channel is None:
            if self._channel is not None:
                self._close_later(self._channel)
            self._target = target
            if u.scheme == "https":
                creds = await asyncio.to_thread(self._credentials, u)  # may dial (auto-TLS)
                self._channel = grpc.aio.secure_channel(target, creds)
            else:
                self._channel = grpc.aio.insecure_channel(target)
        return self._channel

    def _credentials(self, u) -> grpc.ChannelCredentials:
        """TLS to the leader's client listener: --trusted-ca-file (else the system roots)
        verifies it; we present --client-cert-file, else --cert-file (else the auto-TLS
        certificate). A self-signed (--auto-tls) leader cannot be verified; etcd skips
        verification there, so its certificate is pinned as fetched."""
        cfg, ctls = self.srv.cfg, getattr(self.srv, "client_tls", None)
        cert = cfg.client_cert_file or (ctls.cert_file if ctls else cfg.cert_file)
        key = cfg.client_key_file or (ctls.key_file if ctls else cfg.key_file)

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        roots = read(cfg.trusted_ca_file)
        if roots is None and ctls is not None and ctls.self_cert:
            roots = ssl.get_server_certificate((u.hostname, u.port or 2379), timeout=2).encode()
        return grpc.ssl_channel_credentials(roots, read(key), read(cert))

    @staticmethod
    def _close_later(ch: grpc.aio.Channel) -> None:
        asyncio.get_running_loop().create_task(ch.close())

    async def unary(self, method: str, raw: bytes) -> bytes:
        """Call ``method`` on the leader with the request bytes; its error becomes ours."""
        ch = await self._channel_to_leader()
        try:
            return await ch.unary_unary(method)(raw, timeout=self.srv.request_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _error(e) from None

    async def lease_renew(self, lease_id: int) -> int:
        """Renew on the leader; returns the TTL (0: the lease does not exist)."""
        ch = await self._channel_to_leader()
        call = ch.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")(
            timeout=self.srv.request_timeout_s
        )
        try:
            await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id).SerializeToString())
            raw = await call.read()
            await call.done_writing()
        except grpc.aio.AioRpcError as e:
            raise _error(e) from None
        finally:
            call.cancel()
        if raw is grpc.aio.EOF:
            raise ErrNoLeader()
        return rpc_pb2.LeaseKeepAliveResponse.FromString(raw).TTL

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _error(e: grpc.aio.AioRpcError) -> Exception:
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ErrTimeout()
    return from_status(e.code(), e.details() or "")
