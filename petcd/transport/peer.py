"""Member-to-member transport: Raft messages over long-lived TCP connections, snapshots apart.

Wire protocol (petcd peers talk only to petcd peers; the spec calls peer transport informative):

* Every connection starts with a hello from the dialer::

      b"PETCDRP1" | u8 version | u8 channel | u64 cluster_id | u64 from | u64 to

  answered by ``u8 status | u16 len(reason) | reason``. A mismatch is refused with etcd's log
  wording (``request cluster ID mismatch (got X want Y)``) and the connection is closed.
* Channel 0, the *stream*: one long-lived connection per peer, dialled by the sender and written
  only by it (the receiver dials its own connection back). The writer task wakes when messages
  are queued and writes everything queued as frames in one write::

      frame = u32 len(body) | u32 crc32(body) | body        body = codec.encode_batch(msgs)

* Channel 1, the *snapshot* path: a connection per snapshot, so a large transfer never sits in
  front of heartbeats and appends::

      frame(MsgSnap) | u64 size | db file bytes | u32 crc32(db file)

  The receiver writes the file to ``<snapshot_dir>/<index:016x>.snap.db`` (tmp file, fsync,
  rename: the name ``Snapshotter.db_path`` uses), delivers the MsgSnap with
  ``context = <that path, utf-8>`` and then acknowledges with a status reply, upon which the
  sender reports ``on_snapshot_status(peer, failed=False)``.

Failure handling: a lost connection is redialled at once, then with capped, jittered
exponential backoff. While a peer is backing off, ``send`` drops its messages and reports the
peer unreachable (Raft retries; this mirrors etcd, whose pipeline fallback fails the same way);
messages queued while dialling are sent once connected or dropped (and reported) if the dial
fails. A full per-peer queue also drops and reports.

All methods and callbacks run on the event loop thread; callbacks are scheduled with
``call_soon``, never run from inside ``send``, so the caller may step Raft from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from petcd import log
from petcd.raft.types import Message, MessageType
from petcd.transport.codec import (
    CodecError,
    decode_batch,
    decode_message,
    encode_into,
    encode_message,
)

__all__ = ["Transport", "PeerStats", "TransportError", "fetch_cluster_info"]

_log = log.get("rafthttp")

_MAGIC = b"PETCDRP1"
_VERSION = 1
_HELLO = struct.Struct("<8sBBQQQ")
_REPLY = struct.Struct("<BH")
_FRAME = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

CH_STREAM = 0
CH_SNAPSHOT = 1
# A joining member asks any peer for the cluster's members (etcd: GET /members on a peer URL).
CH_MEMBERS = 2

ST_OK = 0
ST_CLUSTER_MISMATCH = 1
ST_WRONG_MEMBER = 2
ST_REMOVED = 3
ST_BAD_REQUEST = 4
ST_SNAPSHOT_FAILED = 5

MAX_FRAME = 512 << 20  # sanity bound on a single frame; batches are split near _FRAME_TARGET
_FRAME_TARGET = 1 << 20
_SNAP_CHUNK = 1 << 20
_SNAP_REPLY_TIMEOUT = 60.0

# Peer states
_CONNECTING = 0
_ACTIVE = 1
_BACKOFF = 2


class TransportError(Exception):
    """A peer refused us or a connection broke mid-protocol."""

    def __init__(self, msg: str, status: int = ST_BAD_REQUEST) -> None:
        super().__init__(msg)
        self.status = status


@dataclass(slots=True)
class PeerStats:
    msgs_sent: int = 0
    writes: int = 0  # transport writes: one per writer wakeup
    frames_sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    deactivations: int = 0  # times the stream to the peer failed after being active


def _hex(n: int) -> str:
    return f"{n:x}"


def _parse_url(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    if u.hostname is None or u.port is None:
        raise ValueError(f"peer URL {url!r} needs host:port")
    return u.hostname, u.port


def _frame(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body))


def _reply(status: int, reason: str = "") -> bytes:
    r = reason.encode()
    return _REPLY.pack(status, len(r)) + r


# ---------------------------------------------------------------------------------------
# Outbound stream connection


class _OutConn(asyncio.Protocol):
    """The dialer's side of a stream connection: handshake, then write-only."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.error: BaseException | None = None
        self.paused = False
        self._buf = bytearray()
        self.handshake: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.handshake.done():
            # The receiver never writes after the reply: treat anything else as a broken peer.
            self.error = TransportError("unexpected data on stream")
            if self.transport is not None:
                self.transport.close()
            return
        self._buf += data
        if len(self._buf) >= _REPLY.size:
            status, n = _REPLY.unpack_from(self._buf)
            if len(self._buf) >= _REPLY.size + n:
                reason = bytes(self._buf[_REPLY.size : _REPLY.size + n]).decode("utf-8", "replace")
                self.handshake.set_result((status, reason))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc
        if not self.handshake.done():
            self.handshake.set_exception(
                ConnectionError(str(exc) if exc else "connection closed during handshake")
            )
            self.handshake.exception()  # mark retrieved
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)
        self._on_lost()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    async def drain(self, timeout: float) -> None:
        while self.paused and not self.lost:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._drain, timeout)
            finally:
                self._drain = None

    def close(self) -> None:
        # Lost from now on: the writer must not write into a transport that is closing.
        self.lost = True
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------------------
# Inbound connections (both channels)

_IN_HELLO = 0
_IN_STREAM = 1
_IN_SNAP_MSG = 2
_IN_SNAP_SIZE = 3
_IN_SNAP_BODY = 4
_IN_SNAP_CRC = 5
_IN_DONE = 6


class _Inbound(asyncio.Protocol):
    def __init__(self, t: Transport) -> None:
        self.t = t
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _IN_HELLO
        self.peer = 0
        self.channel = CH_STREAM
        # snapshot receive state
        self.snap_msg: Message | None = None
        self.snap_left = 0
        self.snap_crc = 0
        self.snap_fd = -1
        self.snap_tmp = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.t._inbound.add(self)
        # etcd refuses some TLS peers after the handshake (allowed CN/hostname, client SAN,
        # CRL; see tls.PeerServerContext): read nothing until the check has passed.
        check = getattr(self.t.server_ssl, "check_inbound", None)
        if check is not None and transport.get_extra_info("ssl_object") is not None:
            transport.pause_reading()  # type: ignore[attr-defined]
            self.t._spawn(self._check_peer(check))

    async def _check_peer(self, check: Callable[[asyncio.BaseTransport], Awaitable[bool]]) -> None:
        tr = self.transport
        assert tr is not None
        if not await check(tr):
            self.state = _IN_DONE
            tr.close()
        elif not tr.is_closing():
            tr.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.t._inbound.discard(self)
        self._abort_snapshot()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, status: int, reason: str) -> None:
        assert self.transport is not None
        self.transport.write(_reply(status, reason))
        self.transport.close()
        self.state = _IN_DONE

    def data_received(self, data: bytes) -> None:
        try:
            if self.state == _IN_STREAM:
                self._stream_data(data)
            else:
                self.buf += data
                self._process()
        except (TransportError, CodecError, OSError, ValueError) as e:
            _log.warning(
                "failed to read raft message", remote_peer_id=_hex(self.peer), error=str(e)
            )
            self._abort_snapshot()
            self.close()
            self.state = _IN_DONE

    def _stream_data(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            # Part of a frame is buffered: copy out only once the frame is whole, so a large
            # frame arriving in many reads is not copied again on every read.
            buf += data
            if len(buf) < 8:
                return
            n, _ = _FRAME.unpack_from(buf)
            if n > MAX_FRAME:
                raise TransportError(f"frame of {n} bytes exceeds limit")
            if len(buf) < 8 + n:
                return
            data = bytes(buf)
            buf.clear()
        self._frames(data)  # common case: straight from the socket read, no copy

    def _frames(self, data: bytes) -> None:
        """Deliver every whole frame in data; keep the rest in self.buf."""
        pos = 0
        end = len(data)
        unpack = _FRAME.unpack_from
        deliver = self.t._deliver_msg
        while end - pos >= 8:
            n, crc = unpack(data, pos)
            if n > MAX_FRAME:
                raise TransportError(f"frame of {n} bytes exceeds limit")
            start = pos + 8
            stop = start + n
            if stop > end:
                break
            if zlib.crc32(memoryview(data)[start:stop]) != crc:
                raise TransportError("frame checksum mismatch")
            for m in decode_batch(data, start, stop):
                deliver(m)
            pos = stop
        if pos < end:
            self.buf += memoryview(data)[pos:]

    def _process(self) -> None:
        while True:
            st = self.state
            buf = self.buf
            if st == _IN_STREAM:
                if buf:
                    data = bytes(buf)
                    buf.clear()
                    self._stream_data(data)
                return
            if st == _IN_HELLO:
                if len(buf) < _HELLO.size:
                    return
                self._hello(*_HELLO.unpack_from(buf))
                del buf[: _HELLO.size]
                continue
            if st == _IN_SNAP_MSG:
                if len(buf) < 8:
                    return
                n, crc = _FRAME.unpack_from(buf)
                if n > MAX_FRAME:
                    raise TransportError("snapshot message too large")
                if len(buf) < 8 + n:
                    return
                body = bytes(buf[8 : 8 + n])
                del buf[: 8 + n]
                if zlib.crc32(body) != crc:
                    raise TransportError("frame checksum mismatch")
                m = decode_message(body)
                if m.type != MessageType.SNAP or m.snapshot is None:
                    raise TransportError(f"expected MsgSnap, got {MessageType(m.type).name}")
                self.snap_msg = m
                self.state = _IN_SNAP_SIZE
                continue
            if st == _IN_SNAP_SIZE:
                if len(buf) < 8:
                    return
                (self.snap_left,) = _U64.unpack_from(buf)
                del buf[:8]
                self._open_snapshot()
                self.state = _IN_SNAP_BODY
                continue
            if st == _IN_SNAP_BODY:
                take = min(len(buf), self.snap_left)
                if take:
                    chunk = memoryview(buf)[:take]
                    self.snap_crc = zlib.crc32(chunk, self.snap_crc)
                    while chunk:
                        w = os.write(self.snap_fd, chunk)
                        chunk = chunk[w:]
                    chunk.release()
                    del buf[:take]
                    self.snap_left -= take
                if self.snap_left:
                    return
                self.state = _IN_SNAP_CRC
                continue
            if st == _IN_SNAP_CRC:
                if len(buf) < 4:
                    return
                (crc,) = _U32.unpack_from(buf)
                del buf[:4]
                if crc != self.snap_crc:
                    raise TransportError("snapshot checksum mismatch")
                self.state = _IN_DONE
                assert self.transport is not None
                self.transport.pause_reading()
                fd, self.snap_fd = self.snap_fd, -1  # the commit owns the fd from here
                self.t._spawn(self._finish_snapshot(fd))
                return
            return  # _IN_DONE: ignore anything further

    def _hello(self, magic: bytes, version: int, channel: int, cid: int, frm: int, to: int) -> None:
        t = self.t
        if magic != _MAGIC or version != _VERSION or channel not in _CHANNELS:
            self._refuse(ST_BAD_REQUEST, "unsupported protocol")
            raise TransportError("bad handshake")
        self.peer = frm
        if channel == CH_MEMBERS:
            info = t.cluster_info() if t.cluster_info is not None else b""
            status = ST_OK if info else ST_BAD_REQUEST
            assert self.transport is not None
            self.transport.write(_REPLY.pack(status, len(info)) + info)
            self.transport.close()
            self.state = _IN_DONE
            return
        if cid != t.cluster_id:
            _log.warning(
                f"request cluster ID mismatch (got {_hex(cid)} want {_hex(t.cluster_id)})",
                local_member_id=_hex(t.local_id),
                local_member_cluster_id=_hex(t.cluster_id),
                remote_peer_id=_hex(frm),
                remote_peer_cluster_id=_hex(cid),
            )
            self._refuse(ST_CLUSTER_MISMATCH, "cluster ID mismatch")
            return
        if to != t.local_id:
            _log.warning(
                "ignored streaming request; ID mismatch",
                local_member_id=_hex(t.local_id),
                remote_peer_id_stream_handler=_hex(to),
                remote_peer_id_from=_hex(frm),
            )
            self._refuse(ST_WRONG_MEMBER, "to field mismatch")
            return
        if frm in t._removed:
            _log.warning(
                "rejected stream from remote peer because it was removed",
                local_member_id=_hex(t.local_id),
                remote_peer_id_stream_handler=_hex(frm),
            )
            self._refuse(ST_REMOVED, "the member has been permanently removed from the cluster")
            return
        if channel == CH_SNAPSHOT and t.snapshot_dir is None:
            self._refuse(ST_SNAPSHOT_FAILED, "this member does not accept snapshots")
            return
        assert self.transport is not None
        self.transport.write(_reply(ST_OK))
        self.channel = channel
        self.state = _IN_STREAM if channel == CH_STREAM else _IN_SNAP_MSG

    # -- snapshot receive ---------------------------------------------------------------

    def _final_path(self) -> str:
        assert self.snap_msg is not None and self.snap_msg.snapshot is not None
        idx = self.snap_msg.snapshot.metadata.index
        return os.path.join(self.t.snapshot_dir or "", f"{idx:016x}.snap.db")

    def _open_snapshot(self) -> None:
        final = self._final_path()
        self.snap_tmp = f"{final}.{os.getpid()}.{id(self):x}.tmp"
        self.snap_fd = os.open(self.snap_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.snap_crc = 0
        snap = self.snap_msg.snapshot if self.snap_msg is not None else None
        _log.info(
            "receiving database snapshot",
            local_member_id=_hex(self.t.local_id),
            remote_snapshot_sender_id=_hex(self.peer),
            incoming_snapshot_index=snap.metadata.index if snap is not None else 0,
            incoming_snapshot_message_size_bytes=self.snap_left,
        )

    def _abort_snapshot(self) -> None:
        if self.snap_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.snap_fd)
            self.snap_fd = -1
            with contextlib.suppress(OSError):
                os.unlink(self.snap_tmp)

    def _commit_file(self, fd: int) -> str:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self._final_path()
        os.replace(self.snap_tmp, final)
        dfd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return final

    async def _finish_snapshot(self, fd: int) -> None:
        tr = self.transport
        assert tr is not None and self.snap_msg is not None
        try:
            path = await asyncio.to_thread(self._commit_file, fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(self.snap_tmp)
            _log.warning("failed to save incoming database snapshot", error=str(e))
            tr.write(_reply(ST_SNAPSHOT_FAILED, str(e)))
            tr.close()
            return
        m = self.snap_msg
        m.context = path.encode()
        _log.info(
            "received and saved database snapshot",
            local_member_id=_hex(self.t.local_id),
            remote_snapshot_sender_id=_hex(self.peer),
            incoming_snapshot_index=m.snapshot.metadata.index if m.snapshot else 0,
            path=path,
        )
        self.t._deliver_msg(m)
        tr.write(_reply(ST_OK))
        tr.close()


# ---------------------------------------------------------------------------------------
# Peers


class _Peer:
    __slots__ = (
        "id",
        "urls",
        "url_idx",
        "queue",
        "state",
        "active_since",
        "waiter",
        "conn",
        "task",
        "stats",
        "last_drop_log",
        "removed_reported",
    )

    def __init__(self, peer_id: int, urls: list[str]) -> None:
        self.id = peer_id
        self.urls = list(urls)
        self.url_idx = 0
        self.queue: deque[Message] = deque()
        self.state = _CONNECTING
        self.active_since: float | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.conn: _OutConn | None = None
        self.task: asyncio.Task[None] | None = None
        self.stats = PeerStats()
        self.last_drop_log = 0.0
        self.removed_reported = False

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Transport:
    """Raft message transport between members (see the module docstring for the protocol)."""

    def __init__(
        self,
        local_id: int,
        cluster_id: int,
        deliver: Callable[[Message], None],
        *,
        on_unreachable: Callable[[int], None] | None = None,
        on_snapshot_status: Callable[[int, bool], None] | None = None,
        snapshot_dir: str | None = None,
        queue_limit: int = 4096,
        dial_timeout: float = 1.0,
        write_timeout: float = 5.0,
        backoff_base: float = 0.05,
        backoff_max: float = 0.5,
        on_removed: Callable[[], None] | None = None,
        cluster_info: Callable[[], bytes] | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.local_id = local_id
        self.cluster_id = cluster_id
        self.deliver = deliver
        self.on_unreachable = on_unreachable
        self.on_snapshot_status = on_snapshot_status
        self.on_removed = on_removed
        self.cluster_info = cluster_info  # the members, served on CH_MEMBERS
        self.snapshot_dir = snapshot_dir
        self.queue_limit = queue_limit
        self.dial_timeout = dial_timeout
        self.write_timeout = write_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self._peers: dict[int, _Peer] = {}
        self._removed: set[int] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._inbound: set[_Inbound] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.urls: list[str] = []  # the bound listen URLs (port 0 resolved)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, listen_urls: list[str]) -> None:
        """Listen on every peer URL (``http://host:port``; port 0 picks a free port)."""
        self._loop = asyncio.get_running_loop()
        if self.snapshot_dir is not None:
            os.makedirs(self.snapshot_dir, exist_ok=True)
        for url in listen_urls:
            host, port = _parse_url(url)
            scheme = urlsplit(url).scheme or "http"
            srv = await self._loop.create_server(
                lambda: _Inbound(self),
                host,
                port,
                ssl=self.server_ssl if scheme == "https" else None,
                reuse_address=True,
            )
            self._servers.append(srv)
            for sock in srv.sockets:
                h, p = sock.getsockname()[:2]
                self.urls.append(f"{scheme}://[{h}]:{p}" if ":" in h else f"{scheme}://{h}:{p}")
        for p in self._peers.values():
            self._start_peer(p)

    async def stop(self) -> None:
        """Close listeners and every connection; wait for all of the transport's tasks."""
        self._stopped = True
        for srv in self._servers:
            srv.close()
        for p in self._peers.values():
            self._close_peer(p)
        for ib in list(self._inbound):
            ib.close()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        self._peers.clear()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _client_tls(self, url: str) -> ssl.SSLContext | None:
        if not url.startswith("https"):
            return None
        if self.client_ssl is None:  # an https peer without peer TLS flags: verify as usual
            self.client_ssl = ssl.create_default_context()
        return self.client_ssl

    def _callback(self, fn: Callable[..., None] | None, *args: object) -> None:
        if fn is not None and self._loop is not None and not self._stopped:
            self._loop.call_soon(fn, *args)

    # -- membership ---------------------------------------------------------------------

    def add_peer(self, peer_id: int, urls: list[str]) -> None:
        if peer_id in self._peers or peer_id == self.local_id:
            return
        self._removed.discard(peer_id)
        p = self._peers[peer_id] = _Peer(peer_id, urls)
        if self._loop is not None and not self._stopped:
            self._start_peer(p)
        _log.info(
            "added remote peer",
            local_member_id=_hex(self.local_id),
            remote_peer_id=_hex(peer_id),
            remote_peer_urls=urls,
        )

    def remove_peer(self, peer_id: int) -> None:
        p = self._peers.pop(peer_id, None)
        self._removed.add(peer_id)
        for ib in list(self._inbound):
            if ib.peer == peer_id:
                ib.close()
        if p is not None:
            self._close_peer(p)
            _log.info(
                "removed remote peer",
                local_member_id=_hex(self.local_id),
                removed_remote_peer_id=_hex(peer_id),
            )

    def update_peer(self, peer_id: int, urls: list[str]) -> None:
        p = self._peers.get(peer_id)
        if p is None:
            return
        cur = p.urls[p.url_idx % len(p.urls)] if p.urls else None
        p.urls = list(urls)
        p.url_idx = urls.index(cur) if cur in urls else 0
        if cur not in urls and p.conn is not None:
            p.conn.close()  # the writer redials on the new URLs
        _log.info(
            "updated remote peer",
            local_member_id=_hex(self.local_id),
            updated_remote_peer_id=_hex(peer_id),
            updated_remote_peer_urls=urls,
        )

    def peer_ids(self) -> list[int]:
        return list(self._peers)

    def active_since(self, peer_id: int) -> float | None:
        """Wall-clock time (time.time()) the stream to peer_id became active, or None."""
        p = self._peers.get(peer_id)
        return None if p is None else p.active_since

    def stats(self, peer_id: int) -> PeerStats | None:
        p = self._peers.get(peer_id)
        return None if p is None else p.stats

    # -- sending ------------------------------------------------------------------------

    def send(self, msgs: list[Message]) -> None:
        """Queue messages for their peers; never blocks. Unknown targets are dropped."""
        peers = self._peers
        limit = self.queue_limit
        for m in msgs:
            p = peers.get(m.to)
            if p is None:
                if m.to != self.local_id:
                    _log.debug(
                        "ignored message send request; unknown remote peer target",
                        unknown_target_peer_id=_hex(m.to),
                        type=MessageType(m.type).name,
                    )
                continue
            if p.state == _BACKOFF or len(p.queue) >= limit:
                self._drop(p, m)
                continue
            p.queue.append(m)
            w = p.waiter
            if w is not None and not w.done():
                w.set_result(None)

    def _drop(self, p: _Peer, m: Message) -> None:
        p.stats.dropped += 1
        if p.state != _BACKOFF:
            now = time.monotonic()
            if now - p.last_drop_log >= 1.0:  # overload can drop thousands a second
                p.last_drop_log = now
                _log.warning(
                    "dropped internal Raft message since sending buffer is full (overloaded network)",
                    message_type=_MSG_NAMES.get(m.type, str(m.type)),
                    local_member_id=_hex(self.local_id),
                    remote_peer_id=_hex(p.id),
                    remote_peer_active=p.state == _ACTIVE,
                )
        if m.type == MessageType.SNAP:
            self._callback(self.on_snapshot_status, p.id, True)
        self._callback(self.on_unreachable, p.id)

    def _start_peer(self, p: _Peer) -> None:
        if p.task is None:
            p.task = self._spawn(self._run_peer(p))

    def _close_peer(self, p: _Peer) -> None:
        if p.task is not None:
            p.task.cancel()
        if p.conn is not None:
            p.conn.close()
        p.queue.clear()
        p.active_since = None

    def _next_url(self, p: _Peer) -> str:
        url = p.urls[p.url_idx % len(p.urls)]
        return url

    async def _run_peer(self, p: _Peer) -> None:
        backoff = self.backoff_base
        while not self._stopped:
            if not p.urls:
                p.state = _BACKOFF
                await asyncio.sleep(self.backoff_max)
                continue
            url = self._next_url(p)
            p.state = _CONNECTING
            try:
                conn = await self._dial(p, url)
            except (OSError, TimeoutError, TransportError, ValueError) as e:
                p.url_idx += 1
                self._fail(p, f"dial {url}: {e or type(e).__name__}")
                delay = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, self.backoff_max)
                await asyncio.sleep(delay)
                continue
            backoff = self.backoff_base
            p.conn = conn
            p.state = _ACTIVE
            if p.active_since is None:
                p.active_since = time.time()
                _log.info("peer became active", peer_id=_hex(p.id))
            try:
                await self._pump(p, conn)
            except (OSError, TimeoutError, ConnectionError) as e:
                reason = str(e) or type(e).__name__
            else:
                reason = str(conn.error) if conn.error else "connection closed by peer"
            finally:
                conn.close()
                p.conn = None
            # Lost: keep what is queued and redial at once; a failed dial drops it.
            self._deactivate(p, f"failed to write {_hex(p.id)} on stream ({reason})")

    def _deactivate(self, p: _Peer, reason: str) -> None:
        if p.active_since is not None:
            p.active_since = None
            p.stats.deactivations += 1
            _log.warning(
                "peer became inactive (message send to peer failed)",
                peer_id=_hex(p.id),
                error=reason,
            )
        else:
            _log.debug("peer deactivated again", peer_id=_hex(p.id), error=reason)

    def _fail(self, p: _Peer, reason: str) -> None:
        self._deactivate(p, reason)
        p.state = _BACKOFF
        if p.queue:
            dropped = list(p.queue)
            p.queue.clear()
            p.stats.dropped += len(dropped)
            if any(m.type == MessageType.SNAP for m in dropped):
                self._callback(self.on_snapshot_status, p.id, True)
            self._callback(self.on_unreachable, p.id)

    async def _handshake(self, p: _Peer, reply: tuple[int, str], url: str) -> None:
        status, reason = reply
        if status == ST_OK:
            return
        if status == ST_CLUSTER_MISMATCH:
            _log.warning(
                "request sent was ignored by remote peer due to cluster ID mismatch",
                remote_peer_id=_hex(p.id),
                local_member_cluster_id=_hex(self.cluster_id),
            )
        elif status == ST_REMOVED:
            if not p.removed_reported:
                p.removed_reported = True
                _log.warning(
                    "the member has been permanently removed from the cluster",
                    local_member_id=_hex(self.local_id),
                    remote_peer_id=_hex(p.id),
                )
                self._callback(self.on_removed)
        raise TransportError(f"{url} refused the connection: {reason}", status)

    async def _dial(self, p: _Peer, url: str) -> _OutConn:
        assert self._loop is not None
        host, port = _parse_url(url)
        hello = _HELLO.pack(_MAGIC, _VERSION, CH_STREAM, self.cluster_id, self.local_id, p.id)
        conn: _OutConn | None = None

        def factory() -> _OutConn:
            nonlocal conn
            conn = _OutConn(p.wake)
            return conn

        tls = self._client_tls(url)
        try:
            async with asyncio.timeout(self.dial_timeout):
                await self._loop.create_connection(factory, host, port, ssl=tls)
                assert conn is not None and conn.transport is not None
                conn.transport.write(hello)
                reply = await conn.handshake
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        try:
            await self._handshake(p, reply, url)
        except TransportError:
            conn.close()
            raise
        return conn

    async def _pump(self, p: _Peer, conn: _OutConn) -> None:
        q = p.queue
        st = p.stats
        loop = self._loop
        assert loop is not None and conn.transport is not None
        tr = conn.transport
        while True:
            if not q:
                p.waiter = loop.create_future()
                try:
                    await p.waiter
                finally:
                    p.waiter = None
            if conn.lost:
                return
            if not q:
                continue
            self._write_queued(p, tr, st)
            if conn.paused:
                await conn.drain(self.write_timeout)
            if conn.lost:
                return

    @staticmethod
    def _write_queued(p: _Peer, tr: asyncio.Transport, st: PeerStats) -> None:
        q = p.queue
        out: list[bytes] = []
        parts: list[bytes] = []
        size = 0
        n = len(q)
        popleft = q.popleft
        for _ in range(n):
            m = popleft()
            encode_into(parts, m)
            if m.entries or m.snapshot is not None:
                size = sum(map(len, parts))
                if size >= _FRAME_TARGET:
                    body = b"".join(parts)
                    out.append(_frame(body))
                    out.append(body)
                    parts = []
                    size = 0
        if parts:
            body = b"".join(parts)
            out.append(_frame(body))
            out.append(body)
        tr.writelines(out)
        st.msgs_sent += n
        st.writes += 1
        st.frames_sent += len(out) // 2
        st.bytes_sent += sum(map(len, out))

    def flush(self) -> None:
        """Write queued messages now, from the caller, to peers whose writer is idle: a
        leader about to block in fsync gets its appends onto the wire first."""
        for p in self._peers.values():
            if not p.queue or p.state != _ACTIVE:
                continue
            conn = p.conn
            w = p.waiter
            if conn is None or conn.lost or conn.paused or conn.transport is None:
                continue
            if w is None:
                continue  # the writer task is draining: leave it the queue
            self._write_queued(p, conn.transport, p.stats)

    # -- snapshots ----------------------------------------------------------------------

    def send_snapshot(self, msg: Message, db_path: str) -> None:
        """Send MsgSnap plus the backend file at db_path on a connection of its own.

        Reports on_snapshot_status(msg.to, failed) when done. The caller owns db_path and
        must keep it until then.
        """
        p = self._peers.get(msg.to)
        if p is None or self._loop is None or self._stopped:
            self._callback(self.on_snapshot_status, msg.to, True)
            return
        self._spawn(self._send_snapshot(p, msg, db_path))

    async def _send_snapshot(self, p: _Peer, msg: Message, db_path: str) -> None:
        assert self._loop is not None
        url = self._next_url(p) if p.urls else ""
        writer: asyncio.StreamWriter | None = None
        failed = True
        try:
            host, port = _parse_url(url)
            tls = self._client_tls(url)
            async with asyncio.timeout(self.dial_timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
                writer.write(
                    _HELLO.pack(_MAGIC, _VERSION, CH_SNAPSHOT, self.cluster_id, self.local_id, p.id)
                )
                reply = await self._read_reply(reader)
            await self._handshake(p, reply, url)
            body = encode_message(msg)
            size = os.path.getsize(db_path)
            _log.info(
                "sending database snapshot",
                snapshot_index=msg.snapshot.metadata.index if msg.snapshot else 0,
                remote_peer_id=_hex(p.id),
                size_bytes=size,
            )
            writer.write(_frame(body) + body + _U64.pack(size))
            crc = 0
            left = size
            with open(db_path, "rb") as f:
                while left:
                    chunk = await asyncio.to_thread(f.read, min(_SNAP_CHUNK, left))
                    if not chunk:
                        raise TransportError(f"{db_path} shrank during send")
                    crc = zlib.crc32(chunk, crc)
                    left -= len(chunk)
                    writer.write(chunk)
                    async with asyncio.timeout(self.write_timeout):
                        await writer.drain()
            writer.write(_U32.pack(crc))
            async with asyncio.timeout(_SNAP_REPLY_TIMEOUT):
                status, reason = await self._read_reply(reader)
            if status != ST_OK:
                raise TransportError(f"snapshot rejected: {reason}", status)
            failed = False
            p.stats.snapshots_sent += 1
            _log.info("sent database snapshot", remote_peer_id=_hex(p.id), size_bytes=size)
        except asyncio.CancelledError:
            raise
        except (
            OSError,
            TimeoutError,
            TransportError,
            ValueError,
            asyncio.IncompleteReadError,
        ) as e:
            p.stats.snapshots_failed += 1
            p.url_idx += 1
            _log.warning(
                "failed to send database snapshot",
                remote_peer_id=_hex(p.id),
                error=str(e) or type(e).__name__,
            )
            self._callback(self.on_unreachable, p.id)
        finally:
            if writer is not None:
                writer.close()
            self._callback(self.on_snapshot_status, p.id, failed)

    @staticmethod
    async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
        status, n = _REPLY.unpack(await reader.readexactly(_REPLY.size))
        reason = (await reader.readexactly(n)).decode("utf-8", "replace") if n else ""
        return status, reason

    # -- receiving ----------------------------------------------------------------------

    def _deliver_msg(self, m: Message) -> None:
        try:
            self.deliver(m)
        except Exception as e:  # a bug upstream must not tear down the connection
            _log.error(
                "failed to process raft message",
                error=str(e),
                type=_MSG_NAMES.get(m.type, str(m.type)),
            )


async def fetch_cluster_info(
    urls: list[str], timeout: float = 1.0, client_ssl: ssl.SSLContext | None = None
) -> bytes:
    """Ask the members at ``urls`` for the cluster's members (the first that answers)."""
    errors = []
    for url in urls:
        writer = None
        try:
            host, port = _parse_url(url)
            tls = client_ssl if url.startswith("https") else None
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
                writer.write(_HELLO.pack(_MAGIC, _VERSION, CH_MEMBERS, 0, 0, 0))
                status, n = _REPLY.unpack(await reader.readexactly(_REPLY.size))
                body = await reader.readexactly(n) if n else b""
            if status == ST_OK and body:
                return body
            errors.append(f"{url}: refused")
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            errors.append(f"{url}: {e or type(e).__name__}")
        finally:
            if writer is not None:
                writer.close()
    raise TransportError("could not retrieve cluster information from the given URLs: "
                         + "; ".join(errors))


_CHANNELS = (CH_STREAM, CH_SNAPSHOT, CH_MEMBERS)

_MSG_NAMES = {
    t.value: "Msg" + "".join(w.capitalize() for w in t.name.split("_")) for t in MessageType
}
