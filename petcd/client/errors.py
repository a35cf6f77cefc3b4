"""Typed client errors, mapped back from etcd's gRPC status codes and messages.

Every exception the client raises derives from `ClientError`. Errors that the server reports
with one of etcd's fixed messages become a class that is at the same time a `ClientError`
(`EtcdServerError`) and the matching server class in `petcd.errors`, so both
`except petcd.client.errors.ErrCompacted` and `except petcd.errors.ErrCompacted` work. Like Go
clientv3's `rpctypes.Error`, the match is on the exact message; the status code only decides
the generic class (`Unavailable`, `DeadlineExceeded`, ...) when the message is unknown.
"""

from __future__ import annotations

import grpc

from petcd import errors as _srv

_C = grpc.StatusCode


class ClientError(Exception):
    """Base class of everything the petcd client raises."""


class ClientClosed(ClientError):
    """The client (or the watch / lease it owns) was closed."""


class RpcError(ClientError):
    """A gRPC call failed; `code` is the gRPC status code, `details` its message."""

    default_code: grpc.StatusCode = _C.UNKNOWN
    code: grpc.StatusCode
    details: str

    def __init__(self, details: str = "", code: grpc.StatusCode | None = None) -> None:
        # Mapped subclasses inherit a class-level `message` (and `code`) from petcd.errors.
        details = details or getattr(type(self), "message", "")
        super().__init__(details)
        self.details = details
        self.code = code if code is not None else getattr(type(self), "code", self.default_code)


class Unavailable(RpcError):
    """No endpoint answered, or the server was not able to serve (no leader, stopped...)."""

    default_code = _C.UNAVAILABLE


class DeadlineExceeded(RpcError, TimeoutError):
    """The request's timeout elapsed (a context error in Go terms)."""

    default_code = _C.DEADLINE_EXCEEDED


class Cancelled(RpcError):
    """The request was cancelled."""

    default_code = _C.CANCELLED


class Unimplemented(RpcError):
    """The server does not implement this RPC."""

    default_code = _C.UNIMPLEMENTED


class EtcdServerError(RpcError):
    """An error the server reported with one of etcd's fixed `etcdserver: ...` messages."""


class WatchCompacted(ClientError):
    """A watch asked for (or resumed at) a revision that has been compacted away.

    `compact_revision` is the oldest revision still available: restart the watch there (after
    re-reading state) to continue.
    """

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"required revision has been compacted (compact revision {compact_revision})"
        )
        self.compact_revision = compact_revision


class WatchCanceled(ClientError):
    """The server cancelled a watch for a reason other than compaction."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason or "watch canceled by the server")
        self.reason = reason


class LeaseExpired(ClientError):
    """A managed lease expired (or was revoked) before it was released."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} expired")
        self.lease_id = lease_id


_BY_MESSAGE: dict[str, type[EtcdServerError]] = {}


def _client_class(srv_cls: type[_srv.EtcdError]) -> type[EtcdServerError]:
    bases: tuple[type, ...] = (EtcdServerError,)
    if srv_cls.code == _C.UNAVAILABLE:
        bases += (Unavailable,)
    cls = type(srv_cls.__name__, (*bases, srv_cls), {"__module__": __name__})
    _BY_MESSAGE[srv_cls.message] = cls
    return cls


# One client class per server error in petcd.errors, under the same name.
for _name, _obj in list(vars(_srv).items()):
    if isinstance(_obj, type) and issubclass(_obj, _srv.EtcdError) and _obj is not _srv.EtcdError:
        globals()[_name] = _client_class(_obj)

_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    _C.UNAVAILABLE: Unavailable,
    _C.DEADLINE_EXCEEDED: DeadlineExceeded,
    _C.CANCELLED: Cancelled,
    _C.UNIMPLEMENTED: Unimplemented,
}


def error_class(message: str) -> type[EtcdServerError] | None:
    """The typed class for one of etcd's exact error messages, or None."""
    return _BY_MESSAGE.get(message)


def from_grpc(err: grpc.RpcError) -> RpcError:
    """Turn a gRPC error (sync or aio) into the matching typed client error."""
    code = err.code() if callable(getattr(err, "code", None)) else _C.UNKNOWN
    details = (err.details() if callable(getattr(err, "details", None)) else "") or ""
    cls = _BY_MESSAGE.get(details) or _BY_CODE.get(code, RpcError)
    return cls(details, code)
