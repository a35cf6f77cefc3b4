"""gRPC's standard health service (grpc.health.v1.Health), served on the client port as etcd
serves it: the server as a whole ("") is SERVING; a named service is unknown to it (Check:
NOT_FOUND "unknown service"; Watch: SERVICE_UNKNOWN, then the stream stays open).

Load balancers, Kubernetes gRPC probes and grpc-health-probe use it. The two messages have a
single field each, so they are read and written by hand: registering grpc.health.v1 in the
protobuf descriptor pool would collide with grpcio-health-checking in the same process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

SERVICE = "grpc.health.v1.Health"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
SERVICE_UNKNOWN = b"\x08\x03"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def requested_service(raw: bytes) -> str:
    """HealthCheckRequest.service (field 1); other fields are skipped as protobuf does."""
    service, pos = "", 0
    while pos < len(raw):
        key, pos = _varint(raw, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(raw, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(raw, pos)
            if field == 1:
                service = raw[pos : pos + n].decode("utf-8")
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(raw):
            raise ValueError("truncated field")
    return service


class HealthService:
    async def check(self, raw: bytes, ctx) -> bytes:
        service = self._service(raw)
        if service is None:
            await ctx.abort(grpc.StatusCode.INTERNAL, "grpc: error unmarshalling request")
        if service:
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return SERVING

    async def watch(self, raw: bytes, ctx) -> AsyncIterator[bytes]:
        service = self._service(raw)
        if service is None:
            await ctx.abort(grpc.StatusCode.INTERNAL, "grpc: error unmarshalling request")
        yield SERVICE_UNKNOWN if service else SERVING
        await asyncio.Event().wait()  # no status ever changes; ends when the client leaves

    @staticmethod
    def _service(raw: bytes) -> str | None:
        try:
            return requested_service(raw)
        except (ValueError, UnicodeDecodeError):
            return None

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(self.check),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
        })
