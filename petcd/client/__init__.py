"""petcd's Python client for etcd v3 (works against petcd and real etcd).

`Client` is the asyncio client (`petcd.client.aio`); `SyncClient` is a blocking client that
runs it on a private event-loop thread (`petcd.client.sync`). Errors are in
`petcd.client.errors`.

    async with Client(["127.0.0.1:2379"]) as c:
        await c.put("k", "v")
        resp = await c.txn().if_(Compare.value("k") == "v").then(ops.put("k", "w")).commit()
        async for ev in c.watch("k", prefix=True):
            ...
"""

from petcd.client.aio import Client, Compare, Lease, Txn, Watch, ops, prefix_range_end
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
from petcd.client.sync import SyncClient

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "Compare",
    "DeadlineExceeded",
    "EtcdServerError",
    "Lease",
    "LeaseExpired",
    "RpcError",
    "SyncClient",
    "Txn",
    "Unavailable",
    "Watch",
    "WatchCanceled",
    "WatchCompacted",
    "ops",
    "prefix_range_end",
]
