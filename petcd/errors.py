"""etcd's server errors, with the gRPC status codes and messages clients match on.

The messages are wire identities: clients (Go clientv3, etcdctl, Python clients) map
them back to typed errors by exact string, so they must match etcd byte for byte.
"""

from __future__ import annotations

import grpc

_C = grpc.StatusCode


class EtcdError(Exception):
    """An error with a fixed gRPC status code and etcd's exact message."""

    code: grpc.StatusCode = _C.UNKNOWN
    message: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


def _err(name: str, code: grpc.StatusCode, message: str) -> type[EtcdError]:
    return type(name, (EtcdError,), {"code": code, "message": message})


# KV / MVCC
ErrEmptyKey = _err("ErrEmptyKey", _C.INVALID_ARGUMENT, "etcdserver: key is not provided")
ErrKeyNotFound = _err("ErrKeyNotFound", _C.INVALID_ARGUMENT, "etcdserver: key not found")
ErrValueProvided = _err("ErrValueProvided", _C.INVALID_ARGUMENT, "etcdserver: value is provided")
ErrLeaseProvided = _err("ErrLeaseProvided", _C.INVALID_ARGUMENT, "etcdserver: lease is provided")
ErrTooManyOps = _err(
    "ErrTooManyOps", _C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"
)
ErrDuplicateKey = _err(
    "ErrDuplicateKey", _C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
)
ErrCompacted = _err(
    "ErrCompacted", _C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"
)
ErrFutureRev = _err(
    "ErrFutureRev", _C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"
)
ErrNoSpace = _err("ErrNoSpace", _C.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
ErrRequestTooLarge = _err(
    "ErrRequestTooLarge", _C.INVALID_ARGUMENT, "etcdserver: request is too large"
)
ErrTooManyRequests = _err(
    "ErrTooManyRequests", _C.RESOURCE_EXHAUSTED, "etcdserver: too many requests"
)

# Lease
ErrLeaseNotFound = _err("ErrLeaseNotFound", _C.NOT_FOUND, "etcdserver: requested lease not found")
ErrLeaseExist = _err("ErrLeaseExist", _C.FAILED_PRECONDITION, "etcdserver: lease already exists")
ErrLeaseTTLTooLarge = _err("ErrLeaseTTLTooLarge", _C.OUT_OF_RANGE, "etcdserver: too large lease TTL")

# Cluster / membership
ErrMemberExist = _err("ErrMemberExist", _C.FAILED_PRECONDITION, "etcdserver: member ID already exist")
ErrPeerURLExist = _err(
    "ErrPeerURLExist", _C.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists"
)
ErrMemberNotEnoughStarted = _err(
    "ErrMemberNotEnoughStarted",
    _C.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members",
)
ErrMemberBadURLs = _err(
    "ErrMemberBadURLs", _C.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid"
)
ErrMemberNotFound = _err("ErrMemberNotFound", _C.NOT_FOUND, "etcdserver: member not found")
ErrMemberNotLearner = _err(
    "ErrMemberNotLearner", _C.FAILED_PRECONDITION, "etcdserver: can only promote a learner member"
)
ErrLearnerNotReady = _err(
    "ErrLearnerNotReady",
    _C.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader",
)
ErrTooManyLearners = _err(
    "ErrTooManyLearners", _C.FAILED_PRECONDITION, "etcdserver: too many learner members in cluster"
)

# Server state
ErrNoLeader = _err("ErrNoLeader", _C.UNAVAILABLE, "etcdserver: no leader")
ErrNotLeader = _err("ErrNotLeader", _C.FAILED_PRECONDITION, "etcdserver: not leader")
ErrLeaderChanged = _err("ErrLeaderChanged", _C.UNAVAILABLE, "etcdserver: leader changed")
ErrNotCapable = _err("ErrNotCapable", _C.UNAVAILABLE, "etcdserver: not capable")
ErrStopped = _err("ErrStopped", _C.UNAVAILABLE, "etcdserver: server stopped")
ErrTimeout = _err("ErrTimeout", _C.UNAVAILABLE, "etcdserver: request timed out")
ErrTimeoutDueToLeaderFail = _err(
    "ErrTimeoutDueToLeaderFail",
    _C.UNAVAILABLE,
    "etcdserver: request timed out, possibly due to previous leader failure",
)
ErrTimeoutDueToConnectionLost = _err(
    "ErrTimeoutDueToConnectionLost",
    _C.UNAVAILABLE,
    "etcdserver: request timed out, possibly due to connection lost",
)
ErrUnhealthy = _err("ErrUnhealthy", _C.UNAVAILABLE, "etcdserver: unhealthy cluster")
ErrCorrupt = _err("ErrCorrupt", _C.DATA_LOSS, "etcdserver: corrupt cluster")
# Go's context.DeadlineExceeded, which etcd returns raw (code Unknown) when a proposal
# waited for a leader until the server's request timeout without entering the log.
ErrProposeDeadline = _err("ErrProposeDeadline", _C.UNKNOWN, "context deadline exceeded")
# Not in etcd's gRPC error table, so it reaches clients with code Unknown.
ErrTimeoutLeaderTransfer = _err(
    "ErrTimeoutLeaderTransfer",
    _C.UNKNOWN,
    "etcdserver: request timed out, leader transfer took too long",
)
ErrBadLeaderTransferee = _err(
    "ErrBadLeaderTransferee", _C.FAILED_PRECONDITION, "etcdserver: bad leader transferee"
)
ErrLearnerNotSupported = _err(
    "ErrLearnerNotSupported", _C.UNAVAILABLE, "etcdserver: rpc not supported for learner"
)
ErrClusterIDMismatch = _err(
    "ErrClusterIDMismatch", _C.FAILED_PRECONDITION, "etcdserver: cluster ID mismatch"
)
ErrCanceled = _err("ErrCanceled", _C.CANCELLED, "etcdserver: request canceled")
ErrTimeoutWaitAppliedIndex = _err(
    "ErrTimeoutWaitAppliedIndex",
    _C.UNAVAILABLE,
    "etcdserver: request timed out, waiting for the applied index took too long",
)

# Auth (etcd's rpctypes/error.go); the server's auth store comes with the auth issue.
ErrRootUserNotExist = _err(
    "ErrRootUserNotExist", _C.FAILED_PRECONDITION, "etcdserver: root user does not exist"
)
ErrRootRoleNotExist = _err(
    "ErrRootRoleNotExist", _C.FAILED_PRECONDITION, "etcdserver: root user does not have root role"
)
ErrUserAlreadyExist = _err(
    "ErrUserAlreadyExist", _C.FAILED_PRECONDITION, "etcdserver: user name already exists"
)
ErrUserEmpty = _err("ErrUserEmpty", _C.INVALID_ARGUMENT, "etcdserver: user name is empty")
ErrUserNotFound = _err("ErrUserNotFound", _C.FAILED_PRECONDITION, "etcdserver: user name not found")
ErrRoleAlreadyExist = _err(
    "ErrRoleAlreadyExist", _C.FAILED_PRECONDITION, "etcdserver: role name already exists"
)
ErrRoleNotFound = _err("ErrRoleNotFound", _C.FAILED_PRECONDITION, "etcdserver: role name not found")
ErrRoleEmpty = _err("ErrRoleEmpty", _C.INVALID_ARGUMENT, "etcdserver: role name is empty")
ErrAuthFailed = _err(
    "ErrAuthFailed",
    _C.INVALID_ARGUMENT,
    "etcdserver: authentication failed, invalid user ID or password",
)
ErrPermissionDenied = _err(
    "ErrPermissionDenied", _C.PERMISSION_DENIED, "etcdserver: permission denied"
)
ErrRoleNotGranted = _err(
    "ErrRoleNotGranted", _C.FAILED_PRECONDITION, "etcdserver: role is not granted to the user"
)
ErrPermissionNotGranted = _err(
    "ErrPermissionNotGranted",
    _C.FAILED_PRECONDITION,
    "etcdserver: permission is not granted to the role",
)
ErrAuthNotEnabled = _err(
    "ErrAuthNotEnabled", _C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"
)
ErrInvalidAuthToken = _err(
    "ErrInvalidAuthToken", _C.UNAUTHENTICATED, "etcdserver: invalid auth token"
)
ErrInvalidAuthMgmt = _err(
    "ErrInvalidAuthMgmt", _C.INVALID_ARGUMENT, "etcdserver: invalid auth management"
)
ErrPermissionNotGiven = _err(
    "ErrPermissionNotGiven", _C.INVALID_ARGUMENT, "etcdserver: permission not given"
)
ErrAuthOldRevision = _err(
    "ErrAuthOldRevision", _C.INVALID_ARGUMENT, "etcdserver: revision of auth store is old"
)

# The lock and election services: Go returns these as plain errors, which gRPC sends as code
# Unknown with the text.
ErrElectionNotLeader = _err("ErrElectionNotLeader", _C.UNKNOWN, "election: not leader")
ErrElectionNoLeader = _err("ErrElectionNoLeader", _C.UNKNOWN, "election: no leader")
ErrSessionExpired = _err("ErrSessionExpired", _C.UNKNOWN, "mutex: session is expired")
ErrMissingLeaderKey = _err("ErrMissingLeaderKey", _C.UNKNOWN, '"leader" field must be provided')
ErrLostWatcher = _err("ErrLostWatcher", _C.UNKNOWN, "lost watcher waiting for delete")


def from_status(code: grpc.StatusCode, message: str) -> EtcdError:
    """The error a remote member answered with, as our own error type where one matches."""
    for cls in EtcdError.__subclasses__():
        if cls.message == message and cls.code == code:
            return cls()
    e = EtcdError(message)
    e.code = code
    return e
