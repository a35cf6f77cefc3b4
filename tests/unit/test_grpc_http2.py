"""petcd's HTTP/2 gRPC server, driven by grpcio's client (C core) and by raw HTTP/2 bytes."""

from __future__ import annotations

import asyncio
import socket
import struct

import grpc
import pytest

from petcd.transport import grpc_http2 as h2
from petcd.transport.grpc_http2 import GrpcServer

pytestmark = pytest.mark.timeout(60)

SVC = "test.Svc"


class _Handlers:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.sleeper_started = asyncio.Event()

    async def echo(self, raw: bytes, ctx) -> bytes:
        return raw

    async def slow_echo(self, raw: bytes, ctx) -> bytes:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        return raw[::-1]

    async def timed(self, raw: bytes, ctx) -> bytes:
        # asyncio.timeout() needs a current task, also in the handler's first step
        try:
            async with asyncio.timeout(float(raw)):
                await asyncio.sleep(0.05)
        except TimeoutError:
            return b"timed out"
        return b"in time"

    async def big(self, raw: bytes, ctx) -> bytes:
        return bytes(range(256)) * (int(raw) // 256)

    async def fail(self, raw: bytes, ctx) -> bytes:
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, raw.decode())

    async def crash(self, raw: bytes, ctx) -> bytes:
        raise ValueError("boom")

    async def sleep(self, raw: bytes, ctx) -> bytes:
        self.sleeper_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""

    async def count(self, raw: bytes, ctx):
        for i in range(int(raw)):
            yield str(i).encode() * 100

    async def chat(self, requests, ctx):
        try:
            async for r in requests:
                if r == b"fail":
                    await ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "no more")
                yield r.upper()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def total(self, requests, ctx) -> bytes:
        return str(sum([len(r) async for r in requests])).encode()

    def generic(self) -> grpc.GenericRpcHandler:
        u = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(SVC, {
            "Echo": u(self.echo), "SlowEcho": u(self.slow_echo), "Big": u(self.big),
            "Timed": u(self.timed),
            "Fail": u(self.fail), "Crash": u(self.crash), "Sleep": u(self.sleep),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Total": grpc.stream_unary_rpc_method_handler(self.total),
        })


async def _serve(max_receive: int = 4 << 20):
    handlers = _Handlers()
    server = GrpcServer([handlers.generic()], max_receive_message_length=max_receive)
    port = await server.add_port("127.0.0.1", 0)
    await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    return server, port, channel, handlers


def _run(coro_fn, **kw):
    async def main():
        server, port, channel, handlers = await _serve(**kw)
        try:
            await coro_fn(channel, handlers, port)
        finally:
            await channel.close()
            await server.stop(0.5)

    asyncio.run(main())


def _unary(channel, name):
    return channel.unary_unary(f"/{SVC}/{name}")


def test_unary_calls_answer_in_order_and_concurrently():
    async def body(ch, _h, _p):
        assert await _unary(ch, "Echo")(b"hello") == b"hello"
        assert await _unary(ch, "Echo")(b"") == b""
        assert await _unary(ch, "SlowEcho")(b"abc") == b"cba"
        got = await asyncio.gather(*(_unary(ch, "SlowEcho")(str(i).encode()) for i in range(200)))
        assert got == [str(i).encode()[::-1] for i in range(200)]
        assert await _unary(ch, "Timed")(b"5") == b"in time"
        assert await _unary(ch, "Timed")(b"0.001") == b"timed out"

    _run(body)


def test_statuses_and_messages():
    async def body(ch, _h, _p):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _unary(ch, "Fail")("etcdserver: 100% broken, ünïcode".encode())
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "etcdserver: 100% broken, ünïcode"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _unary(ch, "Crash")(b"")
        assert e.value.code() == grpc.StatusCode.UNKNOWN and "boom" in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/test.Svc/Nope")(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert e.value.details() == "unknown method Nope for service test.Svc"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/etcdserverpb.Auth/AuthEnable")(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert e.value.details() == "unknown service etcdserverpb.Auth"
        # the connection is still good
        assert await _unary(ch, "Echo")(b"x") == b"x"

    _run(body)


def test_large_messages_both_ways_under_flow_control():
    async def body(ch, _h, _p):
        n = 5 * 1024 * 1024  # far over the 64 KiB windows HTTP/2 starts with
        resp = await _unary(ch, "Big")(str(n).encode())
        assert len(resp) == n and resp[:256] == bytes(range(256)) and resp[-1] == 255
        req = b"q" * (3 * 1024 * 1024)
        assert await _unary(ch, "Echo")(req) == req
        results = await asyncio.gather(*(_unary(ch, "Big")(b"300000") for _ in range(8)))
        assert all(len(r) == 300000 - 300000 % 256 for r in results)

    _run(body)


def test_request_over_the_limit_is_resource_exhausted():
    async def body(ch, _h, _p):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _unary(ch, "Echo")(b"z" * 2000)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details() == "grpc: received message larger than max (2000 vs. 1000)"
        assert await _unary(ch, "Echo")(b"z" * 1000) == b"z" * 1000

    _run(body, max_receive=1000)


def test_gzip_request_messages_are_decompressed():
    async def body(ch, _h, _p):
        req = b"compress me " * 1000
        got = await _unary(ch, "Echo")(req, compression=grpc.Compression.Gzip)
        assert got == req

    _run(body)


def test_streams_server_client_and_bidi():
    async def body(ch, h, _p):
        out = [m async for m in ch.unary_stream(f"/{SVC}/Count")(b"2000")]
        assert out == [str(i).encode() * 100 for i in range(2000)]

        async def gen():
            for i in range(50):
                yield b"x" * i

        assert await ch.stream_unary(f"/{SVC}/Total")(gen()) == str(sum(range(50))).encode()

        call = ch.stream_stream(f"/{SVC}/Chat")()
        for w in (b"a", b"bc", b"def"):
            await call.write(w)
            assert await call.read() == w.upper()
        await call.write(b"fail")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call.read()
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE and e.value.details() == "no more"

        call = ch.stream_stream(f"/{SVC}/Chat")()
        await call.write(b"z")
        assert await call.read() == b"Z"
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

    _run(body)


def test_client_cancel_and_deadline_cancel_the_handler():
    async def body(ch, h, _p):
        call = ch.stream_stream(f"/{SVC}/Chat")()
        await call.write(b"q")
        assert await call.read() == b"Q"
        call.cancel()
        await asyncio.wait_for(h.cancelled.wait(), 5)

        h.cancelled.clear()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await _unary(ch, "Sleep")(b"", timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(h.cancelled.wait(), 5)
        assert await _unary(ch, "Echo")(b"still") == b"still"

    _run(body)


def test_stop_cancels_running_calls():
    async def main():
        server, _port, ch, h = await _serve()
        call = _unary(ch, "Sleep")(b"")
        await asyncio.wait_for(h.sleeper_started.wait(), 5)
        await server.stop(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert h.cancelled.is_set()
        await ch.close()

    asyncio.run(main())


def _read_frames(sock: socket.socket, want_type: int) -> list[tuple[int, int, int, bytes]]:
    frames, buf = [], b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return frames
        buf += chunk
        while len(buf) >= 9:
            l1, l2, t, fl, sid = struct.unpack(">BHBBI", buf[:9])
            n = (l1 << 16) | l2
            if len(buf) < 9 + n:
                break
            frames.append((t, fl, sid, buf[9:9 + n]))
            buf = buf[9 + n:]
            if t == want_type:
                return frames


def test_raw_protocol_ping_settings_and_bad_preface():
    async def body(_ch, _h, port):
        def raw():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0) + h2.frame(h2.PING, 0, 0, b"12345678"))
                frames = _read_frames(s, h2.PING)
                assert frames[0][0] == h2.SETTINGS  # the server speaks first
                assert (h2.SETTINGS, h2.ACK, 0, b"") in frames
                assert frames[-1] == (h2.PING, h2.ACK, 0, b"12345678")
                # an oversized frame is a connection error: GOAWAY FRAME_SIZE_ERROR, then close
                s.sendall(h2.frame(h2.DATA, 0, 1, b"\0" * 20000))
                frames = _read_frames(s, h2.GOAWAY)
                assert frames[-1][0] == h2.GOAWAY
                assert struct.unpack(">II", frames[-1][3][:8])[1] == h2.FRAME_SIZE_ERROR
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(1000) == b""  # not HTTP/2, and no HTTP/1 handler: closed

        await asyncio.to_thread(raw)

    _run(body)


def test_raw_continuation_and_a_tiny_client_window():
    """A request header block split over HEADERS + CONTINUATION is served; a response larger
    than the client's 10-byte stream window waits for WINDOW_UPDATE, then DATA, then trailers."""
    import hpack

    async def body(_ch, _h, port):
        def raw():
            block = hpack.Encoder().encode([
                (":method", "POST"), (":scheme", "http"), (":path", f"/{SVC}/Big"),
                (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers"),
            ])
            msg = b"512"
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                settings = struct.pack(">HI", 0x4, 10)  # SETTINGS_INITIAL_WINDOW_SIZE = 10
                s.sendall(
                    h2.PREFACE + h2.frame(h2.SETTINGS, 0, 0, settings)
                    + h2.frame(h2.HEADERS, 0, 1, block[:5])
                    + h2.frame(h2.CONTINUATION, 0, 1, block[5:12])
                    + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[12:])
                    + h2.frame(h2.DATA, h2.END_STREAM, 1, struct.pack(">BI", 0, len(msg)) + msg)
                )
                frames = _read_frames(s, h2.DATA)
                assert frames[-1][2] == 1 and len(frames[-1][3]) == 10  # the window's worth
                s.sendall(h2.frame(h2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 1000)))
                frames = [f for f in _read_frames(s, h2.HEADERS) if f[2] == 1]
                data = b"".join(f[3] for f in frames if f[0] == h2.DATA)
                assert len(data) == 5 + 512 - 10
                trailers = frames[-1]
                assert trailers[0] == h2.HEADERS and trailers[1] & h2.END_STREAM
                assert dict(hpack.Decoder().decode(trailers[3]))["grpc-status"] == "0"

        await asyncio.to_thread(raw)

    _run(body)


def test_header_block_helpers():
    assert h2._hpack_int(10, 7, 0) == b"\x0a"
    assert h2._hpack_int(127, 7, 0) == b"\x7f\x00"
    assert h2._hpack_int(1337, 5, 0) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert h2._percent_encode("a%b\né") == b"a%25b%0A%C3%A9"
    assert h2._all_indexed(b"\x82\x86\xbe")
    assert h2._all_indexed(b"\xff\x81\x01\x82")  # multi-byte index
    assert not h2._all_indexed(b"\x82\x40\x01a\x01b")
    assert h2._parse_timeout("100m") == pytest.approx(0.1)
    assert h2._parse_timeout("5S") == 5.0
    assert h2._parse_timeout("x") is None


def test_http1_requests_are_handed_to_the_http1_handler():
    async def http1(reader, writer):
        line = await reader.readline()
        while await reader.readline() not in (b"\r\n", b""):
            pass
        body = b"you asked " + line.split()[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async def main():
        handlers = _Handlers()
        server = GrpcServer([handlers.generic()], http1=http1)
        port = await server.add_port("127.0.0.1", 0)
        await server.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            # nothing of HTTP/2 (no SETTINGS) before the HTTP/1.1 answer
            assert await asyncio.wait_for(r.read(), 5) == (
                b"HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\nyou asked /version")
            w.close()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:  # same port
                assert await _unary(ch, "Echo")(b"h2") == b"h2"
        finally:
            await server.stop(0.5)

    asyncio.run(main())
