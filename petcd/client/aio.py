"""The asyncio etcd v3 client (grpc.aio), the core that `petcd.client.sync` wraps.

Behaviour follows Go clientv3 (v3.5):

* Endpoints: one channel per endpoint, created lazily; calls go to the current endpoint while its
  channel is READY. If it is not, each endpoint is dialled in turn (bounded by `dial_timeout`),
  the first that connects becomes current. A request that never left the client (no connected
  endpoint) is always safe to retry, so every RPC fails over in that case.
* Retries: on UNAVAILABLE after the request may have reached a server, only "repeatable" RPCs
  (reads, lease grant/revoke/ttl, member list, status/hash/alarm list) are retried, on the next
  endpoint, with a short linear backoff, until the request's timeout — as clientv3's retry
  interceptor does. Writes (put, delete, txn, compact, defragment...) are not retried then.
* Errors become the typed exceptions of `petcd.client.errors`.
* Watches resume from the last seen revision + 1 after a disconnect or a server restart; a
  compacted start revision raises `WatchCompacted`.
* Responses are the protobuf messages of etcd's API (`RangeResponse.kvs`, `.header.revision`...),
  returned as they are, with no per-key conversion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from petcd.client import errors
from petcd.client.auth import _DEFAULT, AuthMixin, TokenAuth
from petcd.client.errors import (
    ClientClosed,
    DeadlineExceeded,
    LeaseExpired,
    Unavailable,
    WatchCanceled,
    WatchCompacted,
)
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.etcdserverpb import rpc_pb2_grpc as pbg
from petcd.proto.mvccpb import kv_pb2 as mvccpb
from petcd.proto.v3electionpb import v3election_pb2 as elpb
from petcd.proto.v3electionpb import v3election_pb2_grpc as elpbg
from petcd.proto.v3lockpb import v3lock_pb2 as lockpb
from petcd.proto.v3lockpb import v3lock_pb2_grpc as lockpbg

__all__ = [
    "Client",
    "Compare",
    "Event",
    "KeyValue",
    "Lease",
    "Txn",
    "Watch",
    "ops",
    "prefix_range_end",
]

KeyLike = str | bytes
Event = mvccpb.Event
KeyValue = mvccpb.KeyValue
EVENT_PUT = mvccpb.Event.PUT
EVENT_DELETE = mvccpb.Event.DELETE

_READY = grpc.ChannelConnectivity.READY
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_INTERNAL = grpc.StatusCode.INTERNAL
# gRPC core's wording when no connection could be made: the request was never sent.
_NOT_SENT_HINTS = ("failed to connect", "connections to all backends failing", "connection refused")

_SORT_ORDER = {"none": 0, "ascend": 1, "descend": 2}
_SORT_TARGET = {"key": 0, "version": 1, "create": 2, "mod": 3, "value": 4}
_FILTERS = {"noput": 0, "nodelete": 1}

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # gRPC's default reconnect backoff grows to 2 minutes; a restarted member must be found fast.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
]


# ---------------------------------------------------------------------------------------------
# Request builders (shared by the client methods and the txn `ops`)


def _b(x: KeyLike) -> bytes:
    return x.encode() if isinstance(x, str) else x


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end covering every key with this prefix (Go's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # all 0xff (or empty): every key from `prefix` on


def _span(
    key: KeyLike, prefix: bool, range_end: KeyLike | None, from_key: bool
) -> tuple[bytes, bytes]:
    k = _b(key)
    if prefix:
        if not k:
            return b"\x00", b"\x00"
        return k, prefix_range_end(k)
    if from_key:
        return (k or b"\x00"), b"\x00"
    if range_end is not None:
        return k, _b(range_end)
    return k, b""


def _enum(value: int | str | None, table: dict[str, int], what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    try:
        return table[value.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r} (one of {', '.join(table)})") from None


def range_request(
    key: KeyLike,
    *,
    prefix: bool = False,
    range_end: KeyLike | None = None,
    from_key: bool = False,
    revision: int = 0,
    limit: int = 0,
    sort_order: int | str | None = None,
    sort_target: int | str | None = None,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    min_mod_revision: int = 0,
    max_mod_revision: int = 0,
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> pb.RangeRequest:
    k, end = _span(key, prefix, range_end, from_key)
    req = pb.RangeRequest(key=k, range_end=end)
    if revision:
        req.revision = revision
    if limit:
        req.limit = limit
    order = _enum(sort_order, _SORT_ORDER, "sort order")
    target = _enum(sort_target, _SORT_TARGET, "sort target")
    # Keys come back ascending anyway; asking for it would make the server sort the whole range.
    if order == pb.RangeRequest.ASCEND and target == pb.RangeRequest.KEY:
        order = pb.RangeRequest.NONE
    if order:
        req.sort_order = order
    if target:
        req.sort_target = target
    if serializable:
        req.serializable = True
    if keys_only:
        req.keys_only = True
    if count_only:
        req.count_only = True
    if min_mod_revision:
        req.min_mod_revision = min_mod_revision
    if max_mod_revision:
        req.max_mod_revision = max_mod_revision
    if min_create_revision:
        req.min_create_revision = min_create_revision
    if max_create_revision:
        req.max_create_revision = max_create_revision
    return req


def put_request(
    key: KeyLike,
    value: KeyLike = b"",
    *,
    lease: int = 0,
    prev_kv: bool = False,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> pb.PutRequest:
    return pb.PutRequest(
        key=_b(key),
        value=_b(value),
        lease=lease,
        prev_kv=prev_kv,
        ignore_value=ignore_value,
        ignore_lease=ignore_lease,
    )


def delete_request(
    key: KeyLike,
    *,
    prefix: bool = False,
    range_end: KeyLike | None = None,
    from_key: bool = False,
    prev_kv: bool = False,
) -> pb.DeleteRangeRequest:
    k, end = _span(key, prefix, range_end, from_key)
    return pb.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


# ---------------------------------------------------------------------------------------------
# Transactions


class Compare:
    """One side of a txn comparison: `Compare.value("k") == b"v"`, `Compare.version("k") > 0`.

    `Compare.create_revision("k") == 0` is the usual "key does not exist" test.
    The operators build an `etcdserverpb.Compare`.
    """

    __slots__ = ("_target", "_field", "_key", "_end")

    def __init__(self, target: int, field: str, key: KeyLike, range_end: KeyLike | None) -> None:
        self._target = target
        self._field = field
        self._key = _b(key)
        self._end = b"" if range_end is None else _b(range_end)

    @classmethod
    def _mk(cls, target: int, field: str, key: KeyLike, range_end: KeyLike | None, prefix: bool):
        if prefix:
            k = _b(key)
            return cls(target, field, k, prefix_range_end(k))
        return cls(target, field, key, range_end)

    @classmethod
    def value(
        cls, key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False
    ) -> Compare:
        return cls._mk(pb.Compare.VALUE, "value", key, range_end, prefix)

    @classmethod
    def version(
        cls, key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False
    ) -> Compare:
        return cls._mk(pb.Compare.VERSION, "version", key, range_end, prefix)

    @classmethod
    def create_revision(
        cls, key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False
    ) -> Compare:
        return cls._mk(pb.Compare.CREATE, "create_revision", key, range_end, prefix)

    @classmethod
    def mod_revision(
        cls, key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False
    ) -> Compare:
        return cls._mk(pb.Compare.MOD, "mod_revision", key, range_end, prefix)

    @classmethod
    def lease(
        cls, key: KeyLike, *, range_end: KeyLike | None = None, prefix: bool = False
    ) -> Compare:
        return cls._mk(pb.Compare.LEASE, "lease", key, range_end, prefix)

    def _cmp(self, result: int, other: Any) -> pb.Compare:
        if self._field == "value":
            other = _b(other)
        c = pb.Compare(result=result, target=self._target, key=self._key, range_end=self._end)
        setattr(c, self._field, other)
        return c

    def __eq__(self, other: Any) -> pb.Compare:  # type: ignore[override]
        return self._cmp(pb.Compare.EQUAL, other)

    def __ne__(self, other: Any) -> pb.Compare:  # type: ignore[override]
        return self._cmp(pb.Compare.NOT_EQUAL, other)

    def __lt__(self, other: Any) -> pb.Compare:
        return self._cmp(pb.Compare.LESS, other)

    def __gt__(self, other: Any) -> pb.Compare:
        return self._cmp(pb.Compare.GREATER, other)

    __hash__ = None  # type: ignore[assignment]


class ops:  # noqa: N801 - used as a namespace: ops.put(...), ops.get(...)
    """Builders for the operations of a txn (`etcdserverpb.RequestOp`)."""

    @staticmethod
    def get(key: KeyLike, **options: Any) -> pb.RequestOp:
        """A range; takes the options of `Client.get`."""
        return pb.RequestOp(request_range=range_request(key, **options))

    @staticmethod
    def put(key: KeyLike, value: KeyLike = b"", **options: Any) -> pb.RequestOp:
        """A put; takes the options of `Client.put`."""
        return pb.RequestOp(request_put=put_request(key, value, **options))

    @staticmethod
    def delete(key: KeyLike, **options: Any) -> pb.RequestOp:
        """A delete; takes the options of `Client.delete`."""
        return pb.RequestOp(request_delete_range=delete_request(key, **options))

    @staticmethod
    def txn(
        compare: Iterable[pb.Compare] = (),
        success: Iterable[pb.RequestOp] = (),
        failure: Iterable[pb.RequestOp] = (),
    ) -> pb.RequestOp:
        """A nested txn (etcd 3.3+)."""
        return pb.RequestOp(
            request_txn=pb.TxnRequest(compare=compare, success=success, failure=failure)
        )


R = TypeVar("R")


class Txn(Generic[R]):
    """`client.txn().if_(...).then(...).else_(...).commit()`; each clause may be given once."""

    __slots__ = ("_commit", "_cmp", "_ok", "_fail", "_stage")

    def __init__(self, commit: Callable[[pb.TxnRequest], R]) -> None:
        self._commit = commit
        self._cmp: list[pb.Compare] = []
        self._ok: list[pb.RequestOp] = []
        self._fail: list[pb.RequestOp] = []
        self._stage = 0

    def _advance(self, stage: int, name: str) -> None:
        if self._stage >= stage:
            raise ValueError(f"txn: {name} called twice or out of order (if_, then, else_)")
        self._stage = stage

    def if_(self, *compares: pb.Compare) -> Txn[R]:
        self._advance(1, "if_")
        self._cmp.extend(compares)
        return self

    def then(self, *operations: pb.RequestOp) -> Txn[R]:
        self._advance(2, "then")
        self._ok.extend(operations)
        return self

    def else_(self, *operations: pb.RequestOp) -> Txn[R]:
        self._advance(3, "else_")
        self._fail.extend(operations)
        return self

    def request(self) -> pb.TxnRequest:
        return pb.TxnRequest(compare=self._cmp, success=self._ok, failure=self._fail)

    def commit(self) -> R:
        """Send the txn; returns the `TxnResponse` (`.succeeded`, `.responses`)."""
        return self._commit(self.request())


# ---------------------------------------------------------------------------------------------
# Endpoints and the client


def _target(endpoint: str) -> tuple[str, bool]:
    for scheme, secure in (("https://", True), ("http://", False), ("unixs://", True)):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :].rstrip("/"), secure
    if endpoint.startswith("unix://"):
        return "unix:" + endpoint[len("unix://") :], False
    return endpoint, False


class _Endpoint:
    __slots__ = (
        "address",
        "target",
        "secure",
        "channel",
        "kv",
        "watch",
        "lease",
        "maintenance",
        "cluster",
        "lock",
        "election",
        "auth",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.target, self.secure = _target(address)
        self.channel: grpc.aio.Channel | None = None

    def open(self, options: list[tuple[str, Any]], creds: grpc.ChannelCredentials | None) -> None:
        if self.secure or creds is not None:
            ch = grpc.aio.secure_channel(
                self.target, creds or grpc.ssl_channel_credentials(), options=options
            )
        else:
            ch = grpc.aio.insecure_channel(self.target, options=options)
        self.channel = ch
        self.kv = pbg.KVStub(ch)
        self.watch = pbg.WatchStub(ch)
        self.lease = pbg.LeaseStub(ch)
        self.maintenance = pbg.MaintenanceStub(ch)
        self.cluster = pbg.ClusterStub(ch)
        self.lock = lockpbg.LockStub(ch)
        self.election = elpbg.ElectionStub(ch)
        self.auth = pbg.AuthStub(ch)


def _backoff(attempt: int) -> float:
    # clientv3: linear backoff with 10% jitter; capped so a returning member is found quickly.
    base = min(0.025 * attempt, 0.5)
    return base * (1 + random.uniform(-0.1, 0.1))


def _not_sent(err: grpc.aio.AioRpcError) -> bool:
    details = (err.details() or "").lower()
    return any(h in details for h in _NOT_SENT_HINTS)


def _resumable(err: grpc.aio.AioRpcError) -> bool:
    # Go's isHaltErr: only Unavailable and Internal mean "come back later".
    return err.code() in (_UNAVAILABLE, _INTERNAL)


class Client(AuthMixin):
    """An asyncio etcd v3 client over one or more endpoints.

    `timeout` is the default per-request deadline in seconds (None: no deadline; retries then
    stop after `max_retries`); every method also takes `timeout=`. `dial_timeout` bounds the
    connection setup to one endpoint. Use it as `async with Client([...]) as c:` or call
    `await c.close()`; it owns its watches and managed leases and closes them too.

    With `user=` (or `username=`) and `password=` every call carries that user's token, fetched
    on first use and again when the server rejects it (`petcd.client.auth`); a wrong password
    raises `ErrAuthFailed` from the first call. The Auth service calls are `AuthMixin`'s.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:2379",),
        *,
        timeout: float | None = 5.0,
        dial_timeout: float = 2.0,
        max_retries: int = 100,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        user: str | None = None,
        password: str | None = None,
        username: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self._eps = [_Endpoint(e) for e in endpoints]
        self._cur = 0
        self.timeout = timeout
        self.dial_timeout = dial_timeout
        self.max_retries = max_retries
        self._creds = credentials
        self._options = _CHANNEL_OPTIONS + list(options)
        self._closed = False
        self._watches: set[Watch] = set()
        self._leases: set[Lease] = set()
        user = user or username
        # As clientv3: credentials are used only when both are given.
        self._token_auth = TokenAuth(user, password) if user and password else None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [e.address for e in self._eps]

    @property
    def current_endpoint(self) -> str:
        return self._eps[self._cur].address

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop managed leases (without revoking) and watches, then close every channel."""
        if self._closed:
            return
        self._closed = True
        for lease in list(self._leases):
            await lease.close(revoke=False)
        for w in list(self._watches):
            await w.close()
        for ep in self._eps:
            if ep.channel is not None:
                await ep.channel.close()
                ep.channel = None

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        """Replace the endpoint list; channels to endpoints that stay are kept."""
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        old = {e.address: e for e in self._eps}
        cur = self._eps[self._cur].address
        self._eps = [old.pop(a, None) or _Endpoint(a) for a in endpoints]
        self._cur = next((i for i, e in enumerate(self._eps) if e.address == cur), 0)
        for ep in old.values():
            if ep.channel is not None:
                # Closing is a coroutine; let it run without making this method async.
                asyncio.ensure_future(ep.channel.close())
                ep.channel = None

    async def sync_endpoints(self, *, timeout: float | None = _DEFAULT) -> list[str]:
        """Refresh the endpoints from the cluster's members' client URLs (clientv3 Sync)."""
        resp = await self.member_list(timeout=timeout)
        urls = [u for m in resp.members for u in m.clientURLs]
        if urls:
            self.set_endpoints(urls)
        return self.endpoints

    # -- connection handling -------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        t = self.timeout if timeout is _DEFAULT else timeout
        return None if t is None else asyncio.get_running_loop().time() + t

    async def _dial(self, ep: _Endpoint, deadline: float | None) -> bool:
        if ep.channel is None:
            ep.open(self._options, self._creds)
        ch = ep.channel
        assert ch is not None
        loop = asyncio.get_running_loop()
        until = loop.time() + self.dial_timeout
        if deadline is not None:
            until = min(until, deadline)
        state = ch.get_state(try_to_connect=True)
        while state is not _READY:
            if state in _FAILED:
                return False
            remaining = until - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(ch.wait_for_state_change(state), remaining)
            except TimeoutError:
                return False
            state = ch.get_state(try_to_connect=True)
        return True

    async def _endpoint(self, deadline: float | None) -> _Endpoint:
        """A connected endpoint: the current one if READY, else the first of the rest to dial."""
        if self._closed:
            raise ClientClosed("client is closed")
        ep = self._eps[self._cur]
        ch = ep.channel
        if ch is not None and ch.get_state() is _READY:
            return ep
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            n = len(self._eps)
            for i in range(n):
                idx = (self._cur + i) % n
                if await self._dial(self._eps[idx], deadline):
                    self._cur = idx
                    return self._eps[idx]
            attempt += 1
            pause = _backoff(attempt)
            if attempt > self.max_retries or (
                deadline is not None and loop.time() + pause >= deadline
            ):
                raise Unavailable(
                    "etcdclient: no available endpoint (tried " + ", ".join(self.endpoints) + ")"
                )
            await asyncio.sleep(pause)
            if self._closed:
                raise ClientClosed("client is closed")

    def _rotate(self, ep: _Endpoint) -> None:
        if len(self._eps) > 1 and self._eps[self._cur] is ep:
            self._cur = (self._cur + 1) % len(self._eps)

    async def _metadata(self, deadline: float | None) -> tuple[Any, int]:
        """The `token` metadata for a call (authenticating first if never done), and the token
        generation to hand back to `_reauth` if the server rejects it."""
        ta = self._token_auth
        if ta is None:
            return None, 0
        gen = await ta.ensure(self, deadline)
        return ta.metadata(), gen

    async def _reauth(self, details: str, gen: int, deadline: float | None) -> bool:
        """Fetch a new token if the server rejected ours; True if the call should be retried."""
        ta = self._token_auth
        if ta is None or not ta.should_refresh(details):
            return False
        await ta.refresh(self, deadline, gen)
        return True

    async def _unary(
        self,
        service: str,
        method: str,
        req: Any,
        repeatable: bool,
        timeout: float | None,
        *,
        token: bool = True,
    ) -> Any:
        deadline = self._deadline(timeout)
        loop = asyncio.get_running_loop()
        attempt = 0
        md, gen = (None, 0)
        if token:
            md, gen = await self._metadata(deadline)
        reauthed = not token
        while True:
            ep = self._eps[self._cur]
            ch = ep.channel
            if ch is None or ch.get_state() is not _READY:
                ep = await self._endpoint(deadline)
            remaining = None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeadlineExceeded("context deadline exceeded")
            try:
                return await getattr(getattr(ep, service), method)(
                    req, timeout=remaining, metadata=md
                )
            except grpc.aio.AioRpcError as e:
                err = e
            if not reauthed and await self._reauth(err.details() or "", gen, deadline):
                reauthed = True  # clientv3 retries once with the new token
                md, gen = await self._metadata(deadline)
                continue
            if err.code() is not _UNAVAILABLE or not (repeatable or _not_sent(err)):
                raise errors.from_grpc(err) from None
            self._rotate(ep)
            attempt += 1
            if attempt > self.max_retries:
                raise errors.from_grpc(err) from None
            if attempt % len(self._eps) == 0:  # a full round failed: back off before the next
                pause = _backoff(attempt // len(self._eps))
                if deadline is not None and loop.time() + pause >= deadline:
                    raise errors.from_grpc(err) from None
                await asyncio.sleep(pause)

    # -- KV ------------------------------------------------------------------------------------

    async def get(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        from_key: bool = False,
        revision: int = 0,
        limit: int = 0,
        sort_order: int | str | None = None,
        sort_target: int | str | None = None,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        timeout: float | None = _DEFAULT,
    ) -> pb.RangeResponse:
        """Range over `key` (or `[key, range_end)`, a prefix, or everything from `key`).

        sort_order: "none" | "ascend" | "descend"; sort_target: "key" | "version" | "create" |
        "mod" | "value" (or the protobuf enum values). Returns the `RangeResponse`.
        """
        req = range_request(
            key,
            prefix=prefix,
            range_end=range_end,
            from_key=from_key,
            revision=revision,
            limit=limit,
            sort_order=sort_order,
            sort_target=sort_target,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            min_mod_revision=min_mod_revision,
            max_mod_revision=max_mod_revision,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        return await self._unary("kv", "Range", req, True, timeout)

    async def get_value(
        self, key: KeyLike, *, serializable: bool = False, timeout: float | None = _DEFAULT
    ) -> bytes | None:
        """The value of one key, or None if it does not exist."""
        resp = await self._unary(
            "kv", "Range", range_request(key, serializable=serializable), True, timeout
        )
        return resp.kvs[0].value if resp.kvs else None

    async def put(
        self,
        key: KeyLike,
        value: KeyLike = b"",
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> pb.PutResponse:
        req = put_request(
            key,
            value,
            lease=lease,
            prev_kv=prev_kv,
            ignore_value=ignore_value,
            ignore_lease=ignore_lease,
        )
        return await self._unary("kv", "Put", req, False, timeout)

    async def delete(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        from_key: bool = False,
        prev_kv: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> pb.DeleteRangeResponse:
        req = delete_request(
            key, prefix=prefix, range_end=range_end, from_key=from_key, prev_kv=prev_kv
        )
        return await self._unary("kv", "DeleteRange", req, False, timeout)

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = _DEFAULT
    ) -> pb.CompactionResponse:
        req = pb.CompactionRequest(revision=revision, physical=physical)
        return await self._unary("kv", "Compact", req, False, timeout)

    def txn(self, *, timeout: float | None = _DEFAULT) -> Txn[Any]:
        """A txn builder; `await client.txn().if_(...).then(...).else_(...).commit()`."""
        return Txn(lambda req: self.txn_request(req, timeout=timeout))

    async def txn_request(
        self, req: pb.TxnRequest, *, timeout: float | None = _DEFAULT
    ) -> pb.TxnResponse:
        # A txn with only ranges is a read and may be retried, as clientv3 does for Range.
        repeatable = all(op.WhichOneof("request") == "request_range" for op in req.success) and all(
            op.WhichOneof("request") == "request_range" for op in req.failure
        )
        return await self._unary("kv", "Txn", req, repeatable, timeout)

    # -- Watch ---------------------------------------------------------------------------------

    def watch(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: KeyLike | None = None,
        from_key: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filters: Iterable[int | str] = (),
        fragment: bool = False,
    ) -> Watch:
        """`async for event in client.watch(...)`; see `Watch`. filters: "noput", "nodelete"."""
        k, end = _span(key, prefix, range_end, from_key)
        w = Watch(
            self,
            key=k,
            range_end=end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            filters=[_enum(f, _FILTERS, "filter") for f in filters],
            fragment=fragment,
        )
        self._watches.add(w)
        return w

    # -- Lease ---------------------------------------------------------------------------------

    async def grant(
        self, ttl: int, *, lease_id: int = 0, timeout: float | None = _DEFAULT
    ) -> pb.LeaseGrantResponse:
        """Grant a lease (`.ID`, `.TTL`); the server may raise a TTL below its minimum."""
        return await self._unary(
            "lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), True, timeout
        )

    async def revoke(
        self, lease_id: int, *, timeout: float | None = _DEFAULT
    ) -> pb.LeaseRevokeResponse:
        return await self._unary(
            "lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id), True, timeout
        )

    async def time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = _DEFAULT
    ) -> pb.LeaseTimeToLiveResponse:
        """`.TTL` is -1 once the lease is gone; `.grantedTTL`; `.keys` if asked."""
        req = pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        return await self._unary("lease", "LeaseTimeToLive", req, True, timeout)

    async def leases(self, *, timeout: float | None = _DEFAULT) -> list[int]:
        """The ids of every lease the server knows."""
        resp = await self._unary("lease", "LeaseLeases", pb.LeaseLeasesRequest(), True, timeout)
        return [s.ID for s in resp.leases]

    async def keep_alive_once(
        self, lease_id: int, *, timeout: float | None = _DEFAULT
    ) -> pb.LeaseKeepAliveResponse:
        """Renew once; raises `ErrLeaseNotFound` if the lease has expired, as clientv3 does."""
        deadline = self._deadline(timeout)
        md, _ = await self._metadata(deadline)
        ep = await self._endpoint(deadline)
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        call = ep.lease.LeaseKeepAlive(timeout=remaining, metadata=md)
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except grpc.aio.AioRpcError as e:
            raise errors.from_grpc(e) from None
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise Unavailable("etcdclient: keep-alive stream closed")
        if resp.TTL <= 0:
            raise errors.ErrLeaseNotFound()  # type: ignore[attr-defined]
        return resp

    def lease(self, ttl: int, *, lease_id: int = 0, revoke_on_exit: bool = True) -> Lease:
        """A managed lease: `async with client.lease(10) as lease:` grants it, keeps it alive in
        the background every TTL/3, and revokes it on exit (unless `revoke_on_exit=False`)."""
        return Lease(self, ttl, lease_id, revoke_on_exit)

    # -- Maintenance and cluster ---------------------------------------------------------------

    async def status(self, *, timeout: float | None = _DEFAULT) -> pb.StatusResponse:
        return await self._unary("maintenance", "Status", pb.StatusRequest(), True, timeout)

    async def defragment(self, *, timeout: float | None = None) -> pb.DefragmentResponse:
        """Defragment the current endpoint's backend (no default deadline: it can be long)."""
        return await self._unary(
            "maintenance", "Defragment", pb.DefragmentRequest(), False, timeout
        )

    async def alarms(self, *, timeout: float | None = _DEFAULT) -> list[pb.AlarmMember]:
        req = pb.AlarmRequest(action=pb.AlarmRequest.GET)
        resp = await self._unary("maintenance", "Alarm", req, True, timeout)
        return list(resp.alarms)

    async def alarm_disarm(
        self,
        member_id: int = 0,
        alarm: int = pb.NONE,
        *,
        timeout: float | None = _DEFAULT,
    ) -> pb.AlarmResponse:
        """Deactivate alarms; with the defaults (0, NONE) every active alarm, like etcdctl."""
        if member_id == 0 and alarm == pb.NONE:
            resp = pb.AlarmResponse()
            for a in await self.alarms(timeout=timeout):
                req = pb.AlarmRequest(
                    action=pb.AlarmRequest.DEACTIVATE, memberID=a.memberID, alarm=a.alarm
                )
                r = await self._unary("maintenance", "Alarm", req, False, timeout)
                resp.header.CopyFrom(r.header)
                resp.alarms.extend(r.alarms)
            return resp
        req = pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=member_id, alarm=alarm)
        return await self._unary("maintenance", "Alarm", req, False, timeout)

    async def hash_kv(
        self, revision: int = 0, *, timeout: float | None = _DEFAULT
    ) -> pb.HashKVResponse:
        req = pb.HashKVRequest(revision=revision)
        return await self._unary("maintenance", "HashKV", req, True, timeout)

    async def hash(self, *, timeout: float | None = _DEFAULT) -> pb.HashResponse:
        return await self._unary("maintenance", "Hash", pb.HashRequest(), True, timeout)

    async def move_leader(
        self, target_id: int, *, timeout: float | None = _DEFAULT
    ) -> pb.MoveLeaderResponse:
        req = pb.MoveLeaderRequest(targetID=target_id)
        return await self._unary("maintenance", "MoveLeader", req, False, timeout)

    async def snapshot(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Stream a snapshot of the backend into `path` (written to `path.part`, fsynced, then
        renamed). `progress(bytes_so_far, remaining_bytes)` is called per chunk. Returns the
        number of bytes written."""
        deadline = self._deadline(timeout)
        md, _ = await self._metadata(deadline)
        ep = await self._endpoint(deadline)
        remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
        call = ep.maintenance.Snapshot(pb.SnapshotRequest(), timeout=remaining, metadata=md)
        path = os.fspath(path)
        part = path + ".part"
        total = 0
        try:
            with open(part, "wb") as f:
                try:
                    async for resp in call:
                        f.write(resp.blob)
                        total += len(resp.blob)
                        if progress is not None:
                            progress(total, resp.remaining_bytes)
                except grpc.aio.AioRpcError as e:
                    raise errors.from_grpc(e) from None
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            os.replace(part, path)
        except BaseException:
            call.cancel()
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
        return total

    async def member_list(
        self, *, linearizable: bool = False, timeout: float | None = _DEFAULT
    ) -> pb.MemberListResponse:
        req = pb.MemberListRequest(linearizable=linearizable)
        return await self._unary("cluster", "MemberList", req, True, timeout)

    # Membership changes are not repeatable: a retried MemberAdd could add the member twice.
    async def member_add(
        self, peer_urls: Sequence[str], *, learner: bool = False, timeout: float | None = _DEFAULT
    ) -> pb.MemberAddResponse:
        req = pb.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
        return await self._unary("cluster", "MemberAdd", req, False, timeout)

    async def member_remove(
        self, member_id: int, *, timeout: float | None = _DEFAULT
    ) -> pb.MemberRemoveResponse:
        req = pb.MemberRemoveRequest(ID=member_id)
        return await self._unary("cluster", "MemberRemove", req, False, timeout)

    async def member_update(
        self, member_id: int, peer_urls: Sequence[str], *, timeout: float | None = _DEFAULT
    ) -> pb.MemberUpdateResponse:
        req = pb.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls))
        return await self._unary("cluster", "MemberUpdate", req, False, timeout)

    async def member_promote(
        self, member_id: int, *, timeout: float | None = _DEFAULT
    ) -> pb.MemberPromoteResponse:
        req = pb.MemberPromoteRequest(ID=member_id)
        return await self._unary("cluster", "MemberPromote", req, False, timeout)

    # -- Lock and election services (v3lock / v3election) --------------------------------------

    async def lock(self, name: KeyLike, lease_id: int, *, timeout: float | None = None) -> bytes:
        """Acquire the named lock for a lease (blocks until held); returns the owned key."""
        req = lockpb.LockRequest(name=_b(name), lease=lease_id)
        resp = await self._unary("lock", "Lock", req, False, timeout)
        return resp.key

    async def unlock(self, key: KeyLike, *, timeout: float | None = _DEFAULT) -> None:
        await self._unary("lock", "Unlock", lockpb.UnlockRequest(key=_b(key)), False, timeout)

    async def campaign(
        self, name: KeyLike, value: KeyLike, lease_id: int, *, timeout: float | None = None
    ) -> elpb.LeaderKey:
        """Block until elected; returns the `LeaderKey` to proclaim/resign with."""
        req = elpb.CampaignRequest(name=_b(name), value=_b(value), lease=lease_id)
        resp = await self._unary("election", "Campaign", req, False, timeout)
        return resp.leader

    async def proclaim(
        self, leader: elpb.LeaderKey, value: KeyLike, *, timeout: float | None = _DEFAULT
    ) -> None:
        req = elpb.ProclaimRequest(leader=leader, value=_b(value))
        await self._unary("election", "Proclaim", req, False, timeout)

    async def leader(self, name: KeyLike, *, timeout: float | None = _DEFAULT) -> KeyValue:
        resp = await self._unary(
            "election", "Leader", elpb.LeaderRequest(name=_b(name)), True, timeout
        )
        return resp.kv

    async def resign(self, leader: elpb.LeaderKey, *, timeout: float | None = _DEFAULT) -> None:
        await self._unary("election", "Resign", elpb.ResignRequest(leader=leader), False, timeout)

    async def observe(self, name: KeyLike) -> AsyncIterator[KeyValue]:
        """The current leader's kv, then each change of leader or proclaimed value."""
        md, _ = await self._metadata(None)
        ep = await self._endpoint(None)
        call = ep.election.Observe(elpb.LeaderRequest(name=_b(name)), metadata=md)
        try:
            async for resp in call:
                yield resp.kv
        except grpc.aio.AioRpcError as e:
            raise errors.from_grpc(e) from None
        finally:
            call.cancel()


# ---------------------------------------------------------------------------------------------
# Watch


class Watch:
    """One watcher on its own stream; an async iterator of `mvccpb.Event`.

    After a disconnect (UNAVAILABLE / INTERNAL, or the stream ending) it reconnects, to another
    endpoint if need be, and re-creates the watcher at the last delivered revision + 1, so no
    event is lost or repeated. If that revision has been compacted, iteration raises
    `WatchCompacted`. `responses()` iterates whole `WatchResponse`s instead (progress
    notifications included). Close it with `await watch.close()` or `async with`.
    """

    def __init__(self, client: Client, **create: Any) -> None:
        self._client = client
        self._create = create
        self.next_revision: int = create.pop("start_revision")
        self.watch_id: int | None = None
        self._call: Any = None
        self._buf: deque[mvccpb.Event] = deque()
        self._closed = False
        self._attempt = 0
        self._auth_retries = 0

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> mvccpb.Event:
        buf = self._buf
        while not buf:
            resp = await self._next()
            if resp is None:
                raise StopAsyncIteration
            buf.extend(resp.events)
        return buf.popleft()

    async def responses(self) -> AsyncIterator[pb.WatchResponse]:
        """Whole responses: events of one revision batch, or progress notifications."""
        while (resp := await self._next()) is not None:
            yield resp

    async def wait_created(self) -> int:
        """Open the stream now (watching starts when this returns); returns the watch id."""
        if self._call is None and not self._closed:
            await self._open()
        return self.watch_id if self.watch_id is not None else -1

    async def request_progress(self) -> None:
        """Ask for a progress notification (a response with the current revision, no events)."""
        if self._call is None:
            await self._open()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def close(self) -> None:
        """Cancel the watcher; iteration ends."""
        self._closed = True
        self._client._watches.discard(self)
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    cancel = close

    async def _open(self) -> None:
        client = self._client
        while True:
            if self._closed:
                return
            try:
                ep = await client._endpoint(None)
            except Unavailable:
                await self._pause()
                continue
            req = pb.WatchCreateRequest(start_revision=self.next_revision, **self._create)
            md, gen = await client._metadata(None)
            call = ep.watch.Watch(metadata=md)
            try:
                await call.write(pb.WatchRequest(create_request=req))
                resp = await call.read()
            except grpc.aio.AioRpcError as e:
                call.cancel()
                if not _resumable(e):
                    raise errors.from_grpc(e) from None
                client._rotate(ep)
                await self._pause()
                continue
            if resp is grpc.aio.EOF:
                call.cancel()
                await self._pause()
                continue
            if resp.canceled or resp.compact_revision:
                call.cancel()
                # A rejected token cancels the create: re-authenticate and create again, as
                # clientv3's shouldRetryWatch does.
                if (
                    resp.canceled
                    and not resp.compact_revision
                    and self._auth_retries < 3
                    and await client._reauth(resp.cancel_reason, gen, None)
                ):
                    self._auth_retries += 1
                    continue
                await self.close()
                self._raise_canceled(resp)
            self._auth_retries = 0
            self.watch_id = resp.watch_id
            if self.next_revision == 0:
                # Resume from just after the revision the watch started at.
                self.next_revision = resp.header.revision + 1
            self._call = call
            self._attempt = 0
            if self._closed:
                call.cancel()
                self._call = None
            return

    async def _pause(self) -> None:
        self._attempt += 1
        await asyncio.sleep(_backoff(self._attempt))

    @staticmethod
    def _raise_canceled(resp: pb.WatchResponse) -> None:
        if resp.compact_revision:
            raise WatchCompacted(resp.compact_revision)
        raise WatchCanceled(resp.cancel_reason)

    async def _next(self) -> pb.WatchResponse | None:
        frag: pb.WatchResponse | None = None
        while True:
            if self._closed:
                return None
            if self._call is None:
                await self._open()
                continue
            try:
                resp = await self._call.read()
            except grpc.aio.AioRpcError as e:
                if self._closed:
                    return None
                if not _resumable(e) and e.code() is not grpc.StatusCode.CANCELLED:
                    await self.close()
                    raise errors.from_grpc(e) from None
                self._call = None
                frag = None
                await self._pause()
                continue
            if resp is grpc.aio.EOF:
                self._call = None
                frag = None
                await self._pause()
                continue
            if resp.compact_revision or resp.canceled:
                await self.close()
                self._raise_canceled(resp)
            if resp.created:
                continue
            if resp.fragment:
                if frag is None:
                    frag = resp
                else:
                    frag.events.extend(resp.events)
                continue
            if frag is not None:
                frag.events.extend(resp.events)
                frag.fragment = False
                resp, frag = frag, None
            if resp.events:
                self.next_revision = resp.events[-1].kv.mod_revision + 1
            elif resp.header.revision >= self.next_revision:
                # A progress notification: everything up to this revision has been delivered.
                self.next_revision = resp.header.revision + 1
            return resp


# ---------------------------------------------------------------------------------------------
# Managed lease


class Lease:
    """A lease granted on entry and kept alive in the background every TTL/3.

    `id` and `ttl` (the granted TTL) are set once entered. If the lease is lost (revoked
    elsewhere, or no keep-alive got through before it ran out) `expired` becomes True and
    `wait_expired()` returns. `check()` raises `LeaseExpired` in that case.
    """

    def __init__(self, client: Client, ttl: int, lease_id: int, revoke_on_exit: bool) -> None:
        self._client = client
        self.requested_ttl = ttl
        self.id = lease_id
        self.ttl = 0
        self.revoke_on_exit = revoke_on_exit
        self.keepalives = 0
        self._expired = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deadline = 0.0

    @property
    def expired(self) -> bool:
        return self._expired.is_set()

    async def wait_expired(self) -> None:
        await self._expired.wait()

    def check(self) -> None:
        if self.expired:
            raise LeaseExpired(self.id)

    async def __aenter__(self) -> Lease:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close(revoke=self.revoke_on_exit)

    async def start(self, *, grant: bool = True) -> Lease:
        """Grant the lease (or, with `grant=False`, adopt the existing lease `id`, raising
        `ErrLeaseNotFound` if it is gone) and start the keep-alives."""
        if grant:
            resp = await self._client.grant(self.requested_ttl, lease_id=self.id)
            self.id, self.ttl = resp.ID, resp.TTL
        else:
            ttl = await self._client.time_to_live(self.id)
            if ttl.TTL <= 0:
                raise errors.ErrLeaseNotFound()  # type: ignore[attr-defined]
            self.ttl = ttl.TTL
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.ttl
        self._client._leases.add(self)
        self._task = loop.create_task(self._keepalive())
        return self

    async def time_to_live(self, *, keys: bool = False) -> pb.LeaseTimeToLiveResponse:
        return await self._client.time_to_live(self.id, keys=keys)

    async def close(self, *, revoke: bool = True) -> None:
        """Stop the keep-alives and (by default) revoke the lease."""
        self._client._leases.discard(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke and not self.expired and not self._client._closed:
            with contextlib.suppress(errors.ErrLeaseNotFound):  # type: ignore[attr-defined]
                await self._client.revoke(self.id)
            self._expired.set()

    revoke = close

    async def _keepalive(self) -> None:
        client = self._client
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            if loop.time() >= self._deadline:
                break  # no renewal got through in time: the server has let it go
            call = None
            gen = 0
            try:
                md, gen = await client._metadata(self._deadline)
                ep = await client._endpoint(self._deadline)
                call = ep.lease.LeaseKeepAlive(metadata=md)
                while True:
                    await call.write(pb.LeaseKeepAliveRequest(ID=self.id))
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.TTL <= 0:
                        self._expired.set()
                        return
                    attempt = 0
                    self.keepalives += 1
                    self.ttl = resp.TTL
                    self._deadline = loop.time() + resp.TTL
                    await asyncio.sleep(max(resp.TTL / 3.0, 0.05))
            except (grpc.aio.AioRpcError, errors.RpcError, ClientClosed) as e:
                details = e.details() if isinstance(e, grpc.aio.AioRpcError) else ""
                if client._token_auth is not None and client._token_auth.should_refresh(
                    details or ""
                ):
                    # The token was dropped: fetch another and keep renewing (a failure is
                    # retried like any other until the lease's deadline).
                    with contextlib.suppress(errors.ClientError):
                        await client._reauth(details or "", gen, self._deadline)
                elif isinstance(e, ClientClosed) or (
                    isinstance(e, grpc.aio.AioRpcError) and not _resumable(e)
                ):
                    break
            finally:
                if call is not None:
                    call.cancel()
            attempt += 1
            await asyncio.sleep(min(_backoff(attempt), max(0.0, self._deadline - loop.time())))
        self._expired.set()
