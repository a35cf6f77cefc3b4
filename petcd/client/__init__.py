"""petcd's Python client for etcd v3 (works against petcd and real etcd).

`Client` is the asyncio client (`petcd.client.aio`); `SyncClient` is a blocking client that
runs it on a private event-loop thread (`petcd.client.sync`). Errors are in
`petcd.client.errors`. The concurrency recipes (Session, Mutex, Election) and STM, with
etcd's algorithms and key layouts, are in `petcd.client.concurrency` and `petcd.client.stm`.

    async with Client(["127.0.0.1:2379"]) as c:
        await c.put("k", "v")
        resp = await c.txn().if_(Compare.value("k") == "v").then(ops.put("k", "w")).commit()
        async for ev in c.watch("k", prefix=True):
            ...
"""

from petcd.client.aio import Client, Compare, Lease, Txn, Watch, ops, prefix_range_end
from petcd.client.concurrency import Election, Mutex, Session
from petcd.client.errors import (
    ClientClosed,
    ClientError,
    DeadlineExceeded,
    EtcdServerError,
    LeaseExpired,
    RpcError,
    Unavailable,
    WatchCanceled,
    WatchCompacted,
)
from petcd.client.stm import Isolation
from petcd.client.stm import run as stm_run
from petcd.client.sync import SyncClient

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "Compare",
    "DeadlineExceeded",
    "Election",
    "EtcdServerError",
    "Isolation",
    "Lease",
    "LeaseExpired",
    "Mutex",
    "RpcError",
    "Session",
    "SyncClient",
    "Txn",
    "Unavailable",
    "Watch",
    "WatchCanceled",
    "WatchCompacted",
    "ops",
    "prefix_range_end",
    "stm_run",
]
