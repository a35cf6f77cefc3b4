"""petcd's gRPC server: HTTP/2 and gRPC framing on the event loop thread.

grpc.aio delivers every completion of a call (new call, request message, response sent,
call closed) from its poller thread to the loop through a socket: four thread hand-offs
per unary call. On a 2-vCPU VM that costs more than petcd's whole request, so a put
waiting for fdatasync ran at 0.65-0.7 of etcd. Here the loop reads the socket, runs the
handler and writes the answer itself: a put that completes without suspending (a
single member's fsync is inline) is read, served and answered within one data_received.

It serves the same grpc.GenericRpcHandler objects that grpc.aio takes (raw bytes in and
out: no deserializers), with the subset of ServicerContext that petcd's handlers use.
Implemented: HTTP/2 framing (RFC 9113) with flow control both ways, HPACK decoding (the
`hpack` library; our own responses use only literal fields, so the encoder keeps no
state), CONTINUATION, RST_STREAM, PING, GOAWAY, gRPC length-prefixed messages, gzip
request messages, grpc-timeout deadlines, trailers-only errors, TLS with ALPN h2 and
server keepalive pings.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from hpack import Decoder
from hpack.exceptions import HPACKError

from petcd import log

# asyncio's own hooks for "the current task", which asyncio.timeout() and current_task()
# read: the first step of a handler runs inside the Task that will continue it.
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task

_log = log.get("grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, _SETTINGS_TIMEOUT, \
    STREAM_CLOSED, FRAME_SIZE_ERROR, _REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = range(10)
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
RECV_WINDOW = 1 << 24  # what we let a peer send on each stream (and on the connection)
MAX_RECV_FRAME = 16384  # our SETTINGS_MAX_FRAME_SIZE: the default, what Go clients send
MAX_HEADER_BLOCK = 1 << 20

_FRAME_HEAD = struct.Struct(">BHBBI")
_U32 = struct.Struct(">I")
_MSG_PREFIX = struct.Struct(">BI")
_DATA_MSG_HEAD = struct.Struct(">BHBBIBI")  # a DATA frame's header, then a message's prefix

_STATUS_200_GRPC = b"\x88\x0f\x10\x10application/grpc"  # :status 200, content-type


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


_SERVER_PREFACE = frame(
    SETTINGS, 0, 0, struct.pack(">HIHI", 0x3, MAX_WINDOW, 0x4, RECV_WINDOW)
) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(RECV_WINDOW - DEFAULT_WINDOW))


def _hpack_int(n: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = bytearray([first | limit])
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


def _percent_encode(msg: str) -> bytes:
    out = bytearray()
    for b in msg.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def _status_block(code: grpc.StatusCode, message: str) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message)[:8192])
    return block


_TRAILERS_OK = _literal(b"grpc-status", b"0")
_HEADERS_FRAME_FLAGS = END_HEADERS


def _all_indexed(block: bytes) -> bool:
    """Whether a header block holds only indexed fields: decoding it changes no HPACK
    state, so its decoded form can be reused while the dynamic table is unchanged."""
    i, n = 0, len(block)
    while i < n:
        b = block[i]
        if not b & 0x80:
            return False
        i += 1
        if b & 0x7F == 0x7F:
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True


_HTTP1_REQUEST = re.compile(rb"[A-Z]{3,7} ")  # GET, HEAD, POST, OPTIONS, ...

_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _parse_timeout(v: str) -> float | None:
    try:
        return int(v[:-1]) * _TIMEOUT_UNITS[v[-1]]
    except (KeyError, ValueError, IndexError):
        return None


class AbortError(Exception):
    """Raised by ServicerContext.abort: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ServicerContext:
    """The part of grpc.aio.ServicerContext petcd's handlers use."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise AbortError(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._stream.metadata)

    def peer(self) -> str:
        return self._stream.conn.peer_name

    def time_remaining(self) -> float | None:
        d = self._stream.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def cancelled(self) -> bool:
        return self._stream.cancelled

    def done(self) -> bool:
        return self._stream.closed


class _RequestIterator:
    """The request messages of a client-streaming call, as an async iterator."""

    __slots__ = ("_items", "_waiter", "_ended", "_error")

    def __init__(self) -> None:
        self._items: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._ended = False
        self._error: BaseException | None = None

    def push(self, msg: bytes) -> None:
        self._items.append(msg)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        self._ended = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._items:
                return self._items.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


_UNSTARTED = object()


class _Yield:
    """Awaiting this yields `fut` to the running Task, exactly as the coroutine that
    produced it would have: lets a coroutine started by hand continue as a Task."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any) -> None:
        self.fut = fut

    def __await__(self):
        yield self.fut


async def _continue(coro, fut):
    """Drive a coroutine that suspended (yielding `fut`) on its first step."""
    while True:
        try:
            await _Yield(fut)
        except BaseException as e:  # cancellation: deliver it where the coroutine waits
            try:
                fut = coro.throw(e)
            except StopIteration as s:
                return s.value
            continue
        try:
            fut = coro.send(None)
        except StopIteration as s:
            return s.value


class _Spare:
    """A Task waiting for a unary call that suspends in its first step."""

    __slots__ = ("assigned", "task")

    def __init__(self, conn: Connection) -> None:
        self.assigned: asyncio.Future = conn.loop.create_future()
        self.task = conn.loop.create_task(conn._run_spare(self.assigned))


class Stream:
    __slots__ = (
        "conn", "sid", "handler", "path", "metadata", "deadline", "timer", "gzip",
        "rbuf", "request", "requests", "send_window", "recv_unacked", "pending",
        "trailers", "headers_sent", "remote_closed", "closed", "cancelled", "task",
        "writable", "coro", "step",
    )

    def __init__(self, conn: Connection, sid: int, send_window: int) -> None:
        self.conn = conn
        self.sid = sid
        self.handler: grpc.RpcMethodHandler | None = None
        self.path = ""
        self.metadata: list[tuple[str, str]] = []
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.gzip = False
        self.rbuf = b""
        self.request: bytes | None = None
        self.requests: _RequestIterator | None = None
        self.send_window = send_window
        self.recv_unacked = 0
        self.pending: collections.deque[bytes] = collections.deque()  # DATA awaiting window
        self.trailers: bytes | None = None  # sent once pending drains
        self.headers_sent = False
        self.remote_closed = False
        self.closed = False
        self.cancelled = False
        self.task: asyncio.Task | None = None
        self.coro: Any = None  # a unary handler suspended after its first step
        self.step: Any = _UNSTARTED  # what that step yielded (the future it waits for)
        self.writable: asyncio.Future | None = None


class Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer_name = ""
        self.buf = b""
        self.preface_seen = False
        self.decoder = Decoder()
        self.decoded: dict[bytes, tuple] = {}  # all-indexed header block -> decoded fields
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self.send_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.max_frame = 16384
        self.recv_unacked = 0
        self.headers_sid = 0  # a header block continues on this stream (CONTINUATION)
        self.headers_flags = 0
        self.headers_parts: list[bytes] = []
        self.blocked: dict[int, Stream] = {}  # streams waiting for connection window
        # Writes are gathered and go out in one transport.write: at the end of a read, or
        # one loop turn later (a watch stream's messages, answers of resumed calls).
        self.wbuf: list[bytes] = []
        self.in_read = False
        self.flush_soon = False
        self.paused = False
        self.resumed: asyncio.Future | None = None
        self.going_away = False
        self.closed = False
        self.ping_timer: asyncio.TimerHandle | None = None
        self.ping_deadline: asyncio.TimerHandle | None = None
        self.spare: _Spare | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = peer[0]
            self.peer_name = f"ipv6:[{host}]:{peer[1]}" if ":" in host else f"ipv4:{host}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        self._schedule_ping()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for t in (self.ping_timer, self.ping_deadline):
            if t is not None:
                t.cancel()
        for st in list(self.streams.values()):
            self._cancel_stream(st)
        self.streams.clear()
        if self.spare is not None:
            self.spare.task.cancel()
            self.spare = None
        self.blocked.clear()
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.preface_seen:
            if len(buf) < 24:
                if not PREFACE.startswith(buf):
                    if self.server.http1 is not None and _HTTP1_REQUEST.match(buf):
                        self._to_http1(buf)
                    else:
                        self._abort_connection()
                    return
                self.buf = buf
                return
            if buf[:24] != PREFACE:
                if self.server.http1 is not None and _HTTP1_REQUEST.match(buf):
                    self._to_http1(buf)
                else:
                    self._abort_connection()
                return
            self.preface_seen = True
            buf = buf[24:]
            # Our SETTINGS go out once the client spoke HTTP/2 (an HTTP/1.x request gets
            # handed over instead, and must not see them).
            self._write(_SERVER_PREFACE)
        self.in_read = True
        pos, n = 0, len(buf)
        try:
            while n - pos >= 9:
                l1, l2, ftype, flags, sid = _FRAME_HEAD.unpack_from(buf, pos)
                length = (l1 << 16) | l2
                if length > MAX_RECV_FRAME:
                    self._goaway(FRAME_SIZE_ERROR, "frame too large")
                    return
                end = pos + 9 + length
                if end > n:
                    break
                payload = buf[pos + 9:end]
                pos = end
                sid &= 0x7FFFFFFF
                if self.headers_sid and ftype != CONTINUATION:
                    self._goaway(PROTOCOL_ERROR, "expected CONTINUATION")
                    return
                if ftype == DATA:
                    self._on_data(sid, flags, payload, length)
                elif ftype == HEADERS:
                    self._on_headers(sid, flags, payload)
                elif ftype == CONTINUATION:
                    self._on_continuation(sid, flags, payload)
                elif ftype == SETTINGS:
                    self._on_settings(sid, flags, payload)
                elif ftype == WINDOW_UPDATE:
                    self._on_window_update(sid, payload)
                elif ftype == PING:
                    if len(payload) != 8:
                        self._goaway(FRAME_SIZE_ERROR, "bad PING")
                        return
                    if flags & ACK:
                        if self.ping_deadline is not None:
                            self.ping_deadline.cancel()
                            self.ping_deadline = None
                    else:
                        self._write(frame(PING, ACK, 0, payload))
                elif ftype == RST_STREAM:
                    st = self.streams.pop(sid, None)
                    if st is not None:
                        self._cancel_stream(st)
                elif ftype == GOAWAY:
                    self.going_away = True
                    if not self.streams:
                        self._close()
                elif ftype == PUSH_PROMISE:
                    self._goaway(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                    return
                # PRIORITY and unknown frame types are ignored (RFC 9113 5.5)
                if self.closed:
                    return
            self.buf = buf[pos:] if pos < n else b""
            if self.recv_unacked >= RECV_WINDOW // 2:
                self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_unacked)))
                self.recv_unacked = 0
        finally:
            self.in_read = False
            self._flush_writes()

    def _to_http1(self, data: bytes) -> None:
        """Not HTTP/2 but an HTTP/1.x request: hand the connection to the HTTP handler."""
        self.closed = True  # as far as gRPC is concerned
        self.server.connections.discard(self)
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        reader = asyncio.StreamReader(limit=64 * 1024, loop=self.loop)
        proto = asyncio.StreamReaderProtocol(reader, self.server.http1, loop=self.loop)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(data)

    def eof_received(self) -> bool | None:
        return None  # close

    # -- receiving ---------------------------------------------------------------------------

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0 or sid & 1 == 0:
            self._goaway(PROTOCOL_ERROR, "bad stream id")
            return
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._on_header_block(sid, flags, payload)
        else:
            self.headers_sid, self.headers_flags, self.headers_parts = sid, flags, [payload]

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != self.headers_sid:
            self._goaway(PROTOCOL_ERROR, "unexpected CONTINUATION")
            return
        self.headers_parts.append(payload)
        if sum(map(len, self.headers_parts)) > MAX_HEADER_BLOCK:
            self._goaway(ENHANCE_YOUR_CALM, "header block too large")
            return
        if flags & END_HEADERS:
            block = b"".join(self.headers_parts)
            sid, hflags = self.headers_sid, self.headers_flags
            self.headers_sid, self.headers_parts = 0, []
            self._on_header_block(sid, hflags, block)

    def _decode(self, block: bytes) -> tuple | None:
        hit = self.decoded.get(block)
        if hit is not None:
            return hit
        try:
            fields = self.decoder.decode(block)
        except HPACKError:
            self._goaway(COMPRESSION_ERROR, "header decode")
            return None
        path, timeout, encoding, meta = "", None, "", []
        for name, value in fields:
            if name[0] == ":":
                if name == ":path":
                    path = value
            elif name == "grpc-timeout":
                timeout = _parse_timeout(value)
            elif name == "grpc-encoding":
                encoding = value
            elif name not in ("content-type", "te", "grpc-accept-encoding", "user-agent"):
                meta.append((name, value))
        res = (path, timeout, encoding, tuple(meta))
        if _all_indexed(block):
            if len(self.decoded) > 256:
                self.decoded.clear()
            self.decoded[block] = res
        else:
            self.decoded.clear()  # the dynamic table may have changed
        return res

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        decoded = self._decode(block)
        if decoded is None:
            return
        st = self.streams.get(sid)
        if st is not None:  # trailers from the client: only END_STREAM matters
            if flags & END_STREAM:
                self._remote_end(st)
            return
        if sid <= self.last_sid:
            return  # a stream we already closed
        self.last_sid = sid
        if self.going_away:
            self._write(frame(RST_STREAM, 0, sid, _U32.pack(_REFUSED_STREAM)))
            return
        path, timeout, encoding, meta = decoded
        st = Stream(self, sid, self.initial_window)
        st.path = path
        st.metadata = meta
        self.streams[sid] = st
        handler = self.server.lookup(path)
        if handler is None:
            self._finish(st, grpc.StatusCode.UNIMPLEMENTED, self.server.unknown(path))
            return
        if encoding and encoding != "identity":
            if encoding != "gzip":
                self._finish(st, grpc.StatusCode.UNIMPLEMENTED, f"grpc: Decompressor is not installed for grpc-encoding \"{encoding}\"")
                return
            st.gzip = True
        st.handler = handler
        if timeout is not None:
            st.deadline = time.monotonic() + timeout
            st.timer = self.loop.call_later(timeout, self._deadline_exceeded, st)
        if handler.request_streaming:
            st.requests = _RequestIterator()
            self._start(st)
        if flags & END_STREAM:
            self._remote_end(st)

    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        self.recv_unacked += length
        st = self.streams.get(sid)
        if st is None or st.remote_closed:
            if sid > self.last_sid:
                self._goaway(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # closed meanwhile: the bytes still count against the connection window
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        st.recv_unacked += length
        if st.recv_unacked >= RECV_WINDOW // 2 and not flags & END_STREAM:
            self._write(frame(WINDOW_UPDATE, 0, sid, _U32.pack(st.recv_unacked)))
            st.recv_unacked = 0
        if st.handler is not None:
            buf = st.rbuf + payload if st.rbuf else payload
            pos, n = 0, len(buf)
            limit = self.server.max_receive
            while n - pos >= 5:
                compressed, size = _MSG_PREFIX.unpack_from(buf, pos)
                if size > limit:
                    self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({size} vs. {limit})")
                    self._write(frame(RST_STREAM, 0, sid, _U32.pack(NO_ERROR)))
                    return
                if n - pos - 5 < size:
                    break
                msg = buf[pos + 5:pos + 5 + size]
                pos += 5 + size
                if compressed:
                    if not st.gzip:
                        self._finish(st, grpc.StatusCode.INTERNAL, "grpc: compressed flag set with identity or empty encoding")
                        return
                    try:
                        msg = zlib.decompress(msg, 31)
                    except zlib.error as e:
                        self._finish(st, grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the received message: {e}")
                        return
                    if len(msg) > limit:
                        self._finish(st, grpc.StatusCode.RESOURCE_EXHAUSTED, f"grpc: received message after decompression larger than max ({len(msg)} vs. {limit})")
                        return
                if st.requests is not None:
                    st.requests.push(msg)
                elif st.request is None:
                    st.request = msg
                else:
                    self._finish(st, grpc.StatusCode.UNIMPLEMENTED, "grpc: more than one request message for a unary call")
                    return
            st.rbuf = buf[pos:] if pos < n else b""
        if flags & END_STREAM:
            self._remote_end(st)

    def _remote_end(self, st: Stream) -> None:
        st.remote_closed = True
        if st.closed:
            return
        if st.rbuf:
            self._finish(st, grpc.StatusCode.INTERNAL, "grpc: truncated request message")
            return
        if st.requests is not None:
            st.requests.end()
        elif st.request is None:
            self._finish(st, grpc.StatusCode.INTERNAL, "grpc: no request message for a unary call")
        else:
            self._start(st)

    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        if sid != 0 or len(payload) % 6:
            self._goaway(PROTOCOL_ERROR, "bad SETTINGS")
            return
        for i in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, i)
            if ident == 0x4:
                if value > MAX_WINDOW:
                    self._goaway(FLOW_CONTROL_ERROR, "window too large")
                    return
                delta = value - self.initial_window
                self.initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if delta > 0 and st.pending:
                        self._flush(st)
            elif ident == 0x5:
                if not 16384 <= value <= 16777215:
                    self._goaway(PROTOCOL_ERROR, "bad max frame size")
                    return
                self.max_frame = value
        self._write(frame(SETTINGS, ACK, 0))

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._goaway(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
            return
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                self._goaway(FLOW_CONTROL_ERROR, "window overflow")
                return
            blocked, self.blocked = self.blocked, {}
            for st in blocked.values():
                if not st.closed or st.pending:
                    self._flush(st)
        else:
            st = self.streams.get(sid)
            if st is not None:
                st.send_window += inc
                if st.pending:
                    self._flush(st)

    # -- calls -----------------------------------------------------------------------------

    def _start(self, st: Stream) -> None:
        h = st.handler
        ctx = ServicerContext(st)
        if not h.response_streaming and not h.request_streaming:
            coro = h.unary_unary(st.request, ctx)
            if not hasattr(coro, "send"):  # a plain function's answer
                self._answer(st, coro)
                return
            # Take the handler's first step now: a call that finishes without suspending (a
            # single member's put, a serializable range) is answered within this read,
            # before the loop turns, and needs no Task. The step runs as the connection's
            # spare Task, which takes the call over if it suspends (so asyncio.timeout()
            # and current_task() see the Task that will resume it).
            spare = self.spare
            if spare is None:
                spare = self.spare = _Spare(self)
            try:
                _enter_task(self.loop, spare.task)
            except RuntimeError:  # inside another task: a Task of its own runs it from the start
                st.coro = coro
                st.task = self.loop.create_task(self._unary_rest(st))
                return
            try:
                step = coro.send(None)
            except StopIteration as s:
                self._answer(st, s.value)
                return
            except BaseException as e:  # noqa: BLE001 - becomes the call's status
                self._fail(st, e)
                return
            finally:
                _leave_task(self.loop, spare.task)
            self.spare = None
            st.coro, st.step, st.task = coro, step, spare.task
            spare.assigned.set_result(st)
        elif h.response_streaming:
            fn = h.unary_stream if not h.request_streaming else h.stream_stream
            arg = st.requests if h.request_streaming else st.request
            st.task = self.loop.create_task(self._serve_stream(st, fn(arg, ctx)))
        else:
            st.coro = h.stream_unary(st.requests, ctx)
            st.task = self.loop.create_task(self._unary_rest(st))  # (st.step stays _UNSTARTED)

    async def _run_spare(self, assigned: asyncio.Future) -> None:
        try:
            st = await assigned
        except asyncio.CancelledError:
            return  # the connection ended before this Task had a call
        await self._unary_rest(st)

    async def _unary_rest(self, st: Stream) -> None:
        coro = st.coro
        if coro is None:
            return  # answered in its first step
        st.coro = None
        try:
            res = await (coro if st.step is _UNSTARTED else _continue(coro, st.step))
        except asyncio.CancelledError:
            return  # the client went away, the deadline passed or the server stops
        except BaseException as e:  # noqa: BLE001 - becomes the call's status
            self._fail(st, e)
            return
        self._answer(st, res)

    async def _serve_stream(self, st: Stream, agen) -> None:
        try:
            async for msg in agen:
                if st.closed:
                    break
                self._send_message(st, msg)
                if st.pending or self.paused:
                    await self._writable(st)
        except asyncio.CancelledError:
            return
        except BaseException as e:  # noqa: BLE001
            self._fail(st, e)
            return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException:  # noqa: BLE001
                    pass
        if not st.closed:
            self._finish(st, grpc.StatusCode.OK, "")

    def _answer(self, st: Stream, res: bytes | None) -> None:
        if st.closed:
            return
        if res is None:
            self._finish(st, grpc.StatusCode.INTERNAL, "grpc: the handler returned no response")
            return
        self._send_message(st, res)
        self._finish(st, grpc.StatusCode.OK, "")

    def _fail(self, st: Stream, e: BaseException) -> None:
        if isinstance(e, AbortError):
            self._finish(st, e.code, e.details)
        elif isinstance(e, asyncio.CancelledError):
            if not st.closed:
                self._finish(st, grpc.StatusCode.CANCELLED, "")
        else:
            _log.warning("grpc handler failed", method=st.path, error=repr(e))
            self._finish(st, grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}")

    def _deadline_exceeded(self, st: Stream) -> None:
        st.timer = None
        if st.closed:
            return
        self._finish(st, grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
        self._write(frame(RST_STREAM, 0, st.sid, _U32.pack(CANCEL)))
        if st.task is not None:
            st.task.cancel()

    # -- sending -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self.wbuf.append(data)
        if not self.in_read and not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self._flush_writes)

    def _flush_writes(self) -> None:
        self.flush_soon = False
        wbuf = self.wbuf
        if wbuf and not self.closed:
            self.transport.write(wbuf[0] if len(wbuf) == 1 else b"".join(wbuf))
        wbuf.clear()

    def _send_message(self, st: Stream, msg: bytes) -> None:
        if not st.headers_sent:
            st.headers_sent = True
            self._write(frame(HEADERS, END_HEADERS, st.sid, _STATUS_200_GRPC))
        k = len(msg)
        n = k + 5
        if not st.pending and n <= st.send_window and n <= self.send_window and n <= self.max_frame:
            st.send_window -= n
            self.send_window -= n
            self._write(_DATA_MSG_HEAD.pack(n >> 16, n & 0xFFFF, DATA, 0, st.sid, 0, k) + msg)
            return
        st.pending.append(_MSG_PREFIX.pack(0, k) + msg)
        self._flush(st)

    def _flush(self, st: Stream) -> None:
        """Send what flow control allows of a stream's pending DATA, then its trailers."""
        out = []
        pending = st.pending
        while pending:
            room = min(st.send_window, self.send_window, self.max_frame)
            if room <= 0:
                if self.send_window <= 0:
                    self.blocked[st.sid] = st
                break
            chunk = pending[0]
            if len(chunk) <= room:
                pending.popleft()
            else:
                pending[0] = chunk[room:]
                chunk = chunk[:room]
            k = len(chunk)
            st.send_window -= k
            self.send_window -= k
            out.append(_FRAME_HEAD.pack(k >> 16, k & 0xFFFF, DATA, 0, st.sid) + chunk)
        done = not pending and st.trailers is not None
        if done:
            out.append(st.trailers)
            st.trailers = None
        if out:
            self._write(b"".join(out))
        if done:
            self._release(st)
        if not pending:
            w = st.writable
            if w is not None and not w.done():
                w.set_result(None)

    async def _writable(self, st: Stream) -> None:
        while (st.pending or self.paused) and not st.closed and not self.closed:
            if st.pending:
                st.writable = self.loop.create_future()
                await st.writable
                st.writable = None
            else:
                if self.resumed is None:
                    self.resumed = self.loop.create_future()
                await self.resumed

    def _finish(self, st: Stream, code: grpc.StatusCode, message: str) -> None:
        """End a call with its status: trailers after any pending DATA, or trailers-only."""
        if st.closed:
            return
        st.closed = True
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if code is grpc.StatusCode.OK and st.headers_sent:
            block = _TRAILERS_OK
        else:
            block = _status_block(code, message)
        if not st.headers_sent:
            st.headers_sent = True
            block = _STATUS_200_GRPC + block
        trailers = frame(HEADERS, END_HEADERS | END_STREAM, st.sid, block)
        if st.pending:
            st.trailers = trailers
            return
        self._write(trailers)
        self._release(st)

    def _release(self, st: Stream) -> None:
        """After the trailers went out."""
        if not st.remote_closed:
            # The client may still be sending: tell it to stop (RFC 9113 8.1).
            self._write(frame(RST_STREAM, 0, st.sid, _U32.pack(NO_ERROR)))
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
        self.blocked.pop(st.sid, None)
        if st.requests is not None and not st.requests._ended:
            st.requests.end()
        if self.going_away and not self.streams:
            self._close()

    def _cancel_stream(self, st: Stream) -> None:
        st.cancelled = True
        st.closed = True
        st.pending.clear()
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        if st.task is not None and not st.task.done():
            st.task.cancel()
        if st.coro is not None and st.step is not _UNSTARTED:
            # suspended after its first step, and its Task has not run yet: a Task cancelled
            # before it starts never resumes the handler, so end the handler here
            st.coro.close()
            st.coro = None
        if st.requests is not None:
            st.requests.end(asyncio.CancelledError())
        w = st.writable
        if w is not None and not w.done():
            w.set_result(None)
        self.blocked.pop(st.sid, None)

    # -- connection ------------------------------------------------------------------------------

    def _goaway(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, code) + reason.encode()))
        self._close()

    def _abort_connection(self) -> None:
        self.closed = True
        self.transport.close()

    def _close(self) -> None:
        if not self.closed:
            self._flush_writes()
            self.closed = True
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful: no new streams; the connection closes when its calls are done."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_sid, NO_ERROR)))
        self._flush_writes()
        if not self.streams:
            self._close()

    def _schedule_ping(self) -> None:
        interval = self.server.keepalive_interval
        if interval and not self.closed:
            self.ping_timer = self.loop.call_later(interval, self._ping)

    def _ping(self) -> None:
        if self.closed:
            return
        self._write(frame(PING, 0, 0, b"petcd\0\0\0"))
        timeout = self.server.keepalive_timeout
        if timeout and self.ping_deadline is None:
            self.ping_deadline = self.loop.call_later(timeout, self._abort_connection)
        self._schedule_ping()


class GrpcServer:
    """Serves grpc.GenericRpcHandlers on TCP listeners, plain or TLS (ALPN h2)."""

    def __init__(
        self,
        handlers: Iterable[grpc.GenericRpcHandler],
        max_receive_message_length: int = 4 * 1024 * 1024,
        keepalive_interval_s: float = 0.0,
        keepalive_timeout_s: float = 0.0,
        http1: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
        | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.handlers = list(handlers)
        self.max_receive = max_receive_message_length
        self.keepalive_interval = keepalive_interval_s
        self.keepalive_timeout = keepalive_timeout_s
        self.http1 = http1  # serves connections that open with an HTTP/1.x request
        self.connections: set[Connection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._methods: dict[str, grpc.RpcMethodHandler | None] = {}

    def lookup(self, path: str) -> grpc.RpcMethodHandler | None:
        try:
            return self._methods[path]
        except KeyError:
            pass
        details = _CallDetails(path)
        found = None
        for h in self.handlers:
            found = h.service(details)
            if found is not None:
                break
        if len(self._methods) < 1024:
            self._methods[path] = found
        return found

    def unknown(self, path: str) -> str:
        """grpc-go's message for a method nobody serves."""
        service, _, method = path.lstrip("/").rpartition("/")
        if not path.startswith("/") or not service:
            return f"malformed method name: {path!r}"
        for h in self.handlers:
            name = getattr(h, "service_name", None)
            if name is not None and name() == service:
                return f"unknown method {method} for service {service}"
        return f"unknown service {service}"

    async def add_port(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Bind (not yet accepting); returns the bound port. Raises OSError when taken."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        srv = await self.loop.create_server(
            lambda: Connection(self), host or None, port, ssl=ssl_context,
            start_serving=False, reuse_address=True, backlog=4096,
        )
        self._servers.append(srv)
        return srv.sockets[0].getsockname()[1]

    async def start(self) -> None:
        for s in self._servers:
            await s.start_serving()

    async def stop(self, grace: float | None = None) -> None:
        for s in self._servers:
            s.close()
        for c in list(self.connections):
            c.shutdown()
        if grace:
            deadline = time.monotonic() + grace
            while self.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        for c in list(self.connections):
            for st in list(c.streams.values()):
                c._cancel_stream(st)
            c._close()
        for s in self._servers:
            await s.wait_closed()


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()
