"""petcd.client without a real server: request builders, txn builder, error mapping, and the
failover / retry policy against an in-process fake KV service."""

from __future__ import annotations

import asyncio
import socket

import grpc
import grpc.aio
import pytest

import petcd.errors as srv_errors
from petcd.client import Client, Compare, SyncClient, errors, ops, prefix_range_end
from petcd.client.aio import delete_request, put_request, range_request
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.etcdserverpb import rpc_pb2_grpc as pbg


def test_prefix_range_end():
    assert prefix_range_end(b"abc") == b"abd"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff\xff") == b"\x00"
    assert prefix_range_end(b"") == b"\x00"


def test_range_request_options():
    r = range_request("foo", prefix=True)
    assert (r.key, r.range_end) == (b"foo", b"fop")
    r = range_request("", prefix=True)
    assert (r.key, r.range_end) == (b"\x00", b"\x00")
    r = range_request(b"a", from_key=True)
    assert (r.key, r.range_end) == (b"a", b"\x00")
    r = range_request("a", range_end="c", revision=4, limit=2, serializable=True, keys_only=True)
    assert (r.range_end, r.revision, r.limit, r.serializable, r.keys_only) == (
        b"c",
        4,
        2,
        True,
        True,
    )
    r = range_request("a", sort_order="descend", sort_target="mod", count_only=True)
    assert r.sort_order == pb.RangeRequest.DESCEND and r.sort_target == pb.RangeRequest.MOD
    assert r.count_only
    # Ascending by key is the server's natural order: clientv3 drops it so no sort happens.
    r = range_request("a", sort_order="ascend", sort_target="key")
    assert r.sort_order == pb.RangeRequest.NONE
    r = range_request(
        "a", min_mod_revision=1, max_mod_revision=2, min_create_revision=3, max_create_revision=4
    )
    assert (r.min_mod_revision, r.max_mod_revision) == (1, 2)
    assert (r.min_create_revision, r.max_create_revision) == (3, 4)
    with pytest.raises(ValueError, match="sort order"):
        range_request("a", sort_order="sideways")


def test_put_delete_requests():
    p = put_request("k", "v", lease=7, prev_kv=True)
    assert (p.key, p.value, p.lease, p.prev_kv) == (b"k", b"v", 7, True)
    p = put_request(b"k", ignore_value=True, ignore_lease=True)
    assert p.value == b"" and p.ignore_value and p.ignore_lease
    d = delete_request("p/", prefix=True, prev_kv=True)
    assert (d.key, d.range_end, d.prev_kv) == (b"p/", b"p0", True)


def test_compare_builders():
    c = Compare.value("k") == "v"
    assert (c.target, c.result, c.key, c.value) == (pb.Compare.VALUE, pb.Compare.EQUAL, b"k", b"v")
    c = Compare.version("k") > 2
    assert (c.target, c.result, c.version) == (pb.Compare.VERSION, pb.Compare.GREATER, 2)
    c = Compare.create_revision("k") < 5
    assert (c.target, c.result, c.create_revision) == (pb.Compare.CREATE, pb.Compare.LESS, 5)
    c = Compare.mod_revision("k", prefix=True) != 3
    assert (c.result, c.mod_revision, c.range_end) == (pb.Compare.NOT_EQUAL, 3, b"l")
    c = Compare.lease("k") == 9
    assert (c.target, c.lease) == (pb.Compare.LEASE, 9)


def test_txn_builder():
    seen = []
    t = (
        Client(["127.0.0.1:1"])
        .txn()
        .if_(Compare.value("k") == "v")
        .then(ops.put("k", "w"), ops.delete("d", prefix=True))
        .else_(ops.get("k", keys_only=True), ops.txn([], [ops.get("x")]))
    )
    t._commit = seen.append  # capture the request instead of sending it
    t.commit()
    (req,) = seen
    assert len(req.compare) == 1
    assert [op.WhichOneof("request") for op in req.success] == [
        "request_put",
        "request_delete_range",
    ]
    assert req.failure[0].request_range.keys_only
    assert req.failure[1].request_txn.success[0].request_range.key == b"x"
    with pytest.raises(ValueError):
        Client(["127.0.0.1:1"]).txn().then(ops.put("a")).if_(Compare.version("a") == 0)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._c, self._d = code, details

    def code(self):
        return self._c

    def details(self):
        return self._d


def test_error_mapping():
    e = errors.from_grpc(
        _FakeRpcError(
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
        )
    )
    assert isinstance(e, errors.ErrCompacted)
    assert isinstance(e, srv_errors.ErrCompacted)  # the server class too
    assert isinstance(e, errors.EtcdServerError) and isinstance(e, errors.ClientError)
    assert e.code == grpc.StatusCode.OUT_OF_RANGE
    e = errors.from_grpc(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"))
    assert isinstance(e, errors.ErrNoLeader) and isinstance(e, errors.Unavailable)
    e = errors.from_grpc(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert type(e) is errors.Unavailable and e.details == "Socket closed"
    e = errors.from_grpc(_FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert isinstance(e, errors.DeadlineExceeded) and isinstance(e, TimeoutError)
    e = errors.from_grpc(_FakeRpcError(grpc.StatusCode.UNKNOWN, "election: not leader"))
    assert isinstance(e, errors.ErrElectionNotLeader)
    e = errors.from_grpc(_FakeRpcError(grpc.StatusCode.DATA_LOSS, "something else"))
    assert type(e) is errors.RpcError and e.code == grpc.StatusCode.DATA_LOSS
    # Every server error has a client twin with the same name and message.
    for name, obj in vars(srv_errors).items():
        if isinstance(obj, type) and issubclass(obj, srv_errors.EtcdError) and obj.message:
            if obj is not srv_errors.EtcdError:
                twin = getattr(errors, name)
                assert issubclass(twin, obj) and errors.error_class(obj.message) is twin


# --- failover and retries against a fake KV service ------------------------------------------


class FakeKV(pbg.KVServicer):
    """Answers Range/Put; the first `fail` calls abort with UNAVAILABLE `detail`."""

    def __init__(self, name: str, fail: int = 0, detail: str = "etcdserver: no leader") -> None:
        self.name, self.fail, self.detail = name, fail, detail
        self.calls: list[str] = []

    async def _maybe_fail(self, what: str, context) -> None:
        self.calls.append(what)
        if self.fail > 0:
            self.fail -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.detail)

    async def Range(self, request, context):
        await self._maybe_fail("range", context)
        if request.key == b"slow":
            await asyncio.sleep(5)
        return pb.RangeResponse(header=pb.ResponseHeader(revision=7), count=len(self.name))

    async def Put(self, request, context):
        await self._maybe_fail("put", context)
        if request.key == b"":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")
        return pb.PutResponse(header=pb.ResponseHeader(revision=8))


async def _serve(kv: FakeKV) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pbg.add_KVServicer_to_server(kv, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_failover_when_first_endpoint_is_down():
    async def main():
        kv = FakeKV("second")
        server, ep = await _serve(kv)
        try:
            async with Client([_dead_endpoint(), ep], dial_timeout=1) as c:
                # A write is retried too: it was never sent to the dead endpoint.
                assert (await c.put("k", "v")).header.revision == 8
                assert c.current_endpoint == ep
                assert (await c.get("k")).count == len("second")
                assert kv.calls == ["put", "range"]
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_reads_retried_writes_not():
    async def main():
        a, b = FakeKV("a", fail=1), FakeKV("b")
        sa, ea = await _serve(a)
        sb, eb = await _serve(b)
        try:
            async with Client([ea, eb]) as c:
                # Range is repeatable: the UNAVAILABLE from a sends it on to b.
                assert (await c.get("k")).count == 1
                assert a.calls == ["range"] and b.calls == ["range"]
                # Put reached a server and failed with UNAVAILABLE: it may have been applied,
                # so it is not retried (clientv3's nonRepeatable policy).
                b.fail = 1
                with pytest.raises(errors.ErrNoLeader):
                    await c.put("k", "v")
                assert b.calls == ["range", "put"] and a.calls == ["range"]
                with pytest.raises(errors.ErrEmptyKey):
                    await c.put("", "v")
        finally:
            await sa.stop(None)
            await sb.stop(None)

    asyncio.run(main())


def test_single_endpoint_read_retry_and_deadline():
    async def main():
        kv = FakeKV("x", fail=3)
        server, ep = await _serve(kv)
        try:
            async with Client([ep], timeout=2) as c:
                assert (await c.get("k")).count == 1
                assert kv.calls == ["range"] * 4
                with pytest.raises(errors.DeadlineExceeded):
                    await c.get("slow", timeout=0.2)
        finally:
            await server.stop(None)
        # Nothing listening at all: Unavailable once the request's timeout is spent.
        async with Client([_dead_endpoint()], timeout=0.5, dial_timeout=0.2) as c:
            with pytest.raises(errors.Unavailable):
                await c.get("k")

    asyncio.run(main())


def test_sync_client_against_fake():
    async def start():
        return await _serve(FakeKV("sync"))

    loop = asyncio.new_event_loop()
    try:
        server, ep = loop.run_until_complete(start())
        import threading

        t = threading.Thread(target=loop.run_forever, daemon=True)
        t.start()
        with SyncClient([_dead_endpoint(), ep], dial_timeout=1) as c:
            assert c.get("k").count == 4
            assert c.put("k", "v").header.revision == 8
            with pytest.raises(errors.ErrEmptyKey):
                c.put("", "v")
            assert c.txn  # builder exists
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
    finally:
        loop.close()
