"""A blocking etcd v3 client: the asyncio client run on a private event-loop thread.

Design choice: rather than a second implementation over grpc's sync API, `SyncClient` owns a
daemon thread running an event loop with one `petcd.client.aio.Client` in it, and each method
submits the coroutine there and waits for it (`run_coroutine_threadsafe`). Failover, retries,
watch resumption and lease keep-alives therefore behave exactly as in the async client, and
keep-alives keep running while the caller's thread blocks. The cost is one thread hop per call
(tens of microseconds; the loop is uvloop's when installed). It is safe to call from several
threads at once.

Callbacks (the snapshot `progress`) run on the client's loop thread.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from petcd.client import aio
from petcd.client.auth import AUTH_METHODS
from petcd.client.errors import ClientClosed
from petcd.proto.etcdserverpb import rpc_pb2 as pb
from petcd.proto.mvccpb import kv_pb2 as mvccpb

__all__ = ["SyncClient", "SyncLease", "SyncWatch"]

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop (a petcd dependency off Windows) trims the per-call thread hop.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SyncClient:
    """The blocking twin of `petcd.client.aio.Client`: same constructor, same methods and
    options, results returned instead of awaited. `with SyncClient([...]) as c:` closes it."""

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
        self._loop = _new_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="petcd-client", daemon=True
        )
        self._thread.start()

        async def make() -> aio.Client:
            return aio.Client(
                endpoints,
                timeout=timeout,
                dial_timeout=dial_timeout,
                max_retries=max_retries,
                credentials=credentials,
                options=options,
                user=user,
                password=password,
                username=username,
            )

        self._closed = False
        self.aio: aio.Client = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClientClosed("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the async client, stop the loop thread."""
        if self._closed:
            return
        try:
            self._run(self.aio.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def endpoints(self) -> list[str]:
        return self.aio.endpoints

    @property
    def current_endpoint(self) -> str:
        return self.aio.current_endpoint

    def txn(self, *, timeout: Any = aio._DEFAULT) -> aio.Txn[pb.TxnResponse]:
        """`client.txn().if_(...).then(...).else_(...).commit()` (commit blocks)."""
        return aio.Txn(lambda req: self._run(self.aio.txn_request(req, timeout=timeout)))

    def watch(self, key: aio.KeyLike, **options: Any) -> SyncWatch:
        """`for event in client.watch(...)`; options as `aio.Client.watch`."""

        async def make() -> aio.Watch:
            w = self.aio.watch(key, **options)
            await w.wait_created()
            return w

        return SyncWatch(self, self._run(make()))

    def lease(self, ttl: int, *, lease_id: int = 0, revoke_on_exit: bool = True) -> SyncLease:
        """`with client.lease(ttl) as lease:` — kept alive on the loop thread every TTL/3."""
        return SyncLease(
            self, self.aio.lease(ttl, lease_id=lease_id, revoke_on_exit=revoke_on_exit)
        )

    def observe(self, name: aio.KeyLike) -> Iterator[mvccpb.KeyValue]:
        gen = self.aio.observe(name)
        try:
            while True:
                try:
                    yield self._run(gen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(gen.aclose())


def _blocking(name: str) -> Any:
    target = getattr(aio.Client, name)

    @functools.wraps(target)
    def method(self: SyncClient, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self.aio, name)(*args, **kwargs))

    return method


for _name in (
    "get",
    "get_value",
    "put",
    "delete",
    "compact",
    "txn_request",
    "grant",
    "revoke",
    "time_to_live",
    "leases",
    "keep_alive_once",
    "status",
    "defragment",
    "alarms",
    "alarm_disarm",
    "hash_kv",
    "hash",
    "move_leader",
    "snapshot",
    "member_list",
    "sync_endpoints",
    "lock",
    "unlock",
    "campaign",
    "proclaim",
    "leader",
    "resign",
    *AUTH_METHODS,
):
    setattr(SyncClient, _name, _blocking(_name))


class SyncWatch:
    """Blocking iterator over a `aio.Watch` (events; `responses()` for whole responses)."""

    def __init__(self, client: SyncClient, watch: aio.Watch) -> None:
        self._client = client
        self.aio = watch
        # A read still outstanding after a timed-out next(timeout); taken by the next call
        # so that no event is dropped.
        self._fut: asyncio.Future[mvccpb.Event] | None = None

    def __iter__(self) -> SyncWatch:
        return self

    def __next__(self) -> mvccpb.Event:
        ev = self.next(None)
        assert ev is not None
        return ev

    def next(self, timeout: float | None) -> mvccpb.Event | None:
        """The next event, or None if none arrives within `timeout` seconds."""

        async def take() -> mvccpb.Event | None:
            if self._fut is None:
                self._fut = asyncio.ensure_future(self.aio.__anext__())
            try:
                return await asyncio.wait_for(asyncio.shield(self._fut), timeout)
            except TimeoutError:
                if self._fut.done():
                    raise
                return None
            finally:
                if self._fut.done():
                    self._fut = None

        try:
            return self._client._run(take())
        except StopAsyncIteration:
            raise StopIteration from None

    def responses(self) -> Iterator[pb.WatchResponse]:
        gen = self.aio.responses()
        while True:
            try:
                yield self._client._run(gen.__anext__())
            except StopAsyncIteration:
                return

    @property
    def next_revision(self) -> int:
        return self.aio.next_revision

    def request_progress(self) -> None:
        self._client._run(self.aio.request_progress())

    def close(self) -> None:
        if not self._client._closed:
            self._client._run(self.aio.close())

    cancel = close

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncLease:
    """Blocking face of `aio.Lease`: `with client.lease(ttl) as lease: ... lease.id`."""

    def __init__(self, client: SyncClient, lease: aio.Lease) -> None:
        self._client = client
        self.aio = lease

    @property
    def id(self) -> int:
        return self.aio.id

    @property
    def ttl(self) -> int:
        return self.aio.ttl

    @property
    def expired(self) -> bool:
        return self.aio.expired

    @property
    def keepalives(self) -> int:
        return self.aio.keepalives

    def check(self) -> None:
        self.aio.check()

    def start(self) -> SyncLease:
        self._client._run(self.aio.start())
        return self

    def time_to_live(self, *, keys: bool = False) -> pb.LeaseTimeToLiveResponse:
        return self._client._run(self.aio.time_to_live(keys=keys))

    def close(self, *, revoke: bool = True) -> None:
        if not self._client._closed:
            self._client._run(self.aio.close(revoke=revoke))

    def __enter__(self) -> SyncLease:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(revoke=self.aio.revoke_on_exit)
