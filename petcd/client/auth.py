"""The Auth service (users, roles, permissions, enable/disable) and the client's token.

`AuthMixin` gives `Client` the calls of clientv3's `Auth` interface, returning etcd's protobuf
responses. `TokenAuth` is what a client built with `user=`/`password=` carries: as clientv3
does, it authenticates on first use (at dial in Go), sends the token as the `token` gRPC
metadata on every call and stream, and when the server answers `invalid auth token`,
`revision of auth store is old` (or `user name is empty`, i.e. the token was lost) it fetches a
new token and retries the call once. If auth is not enabled, calls go without a token.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from petcd.client import errors
from petcd.proto.authpb import auth_pb2 as authpb
from petcd.proto.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from petcd.client.aio import KeyLike

__all__ = [
    "AUTH_METHODS",
    "AuthMixin",
    "PERM_READ",
    "PERM_READWRITE",
    "PERM_WRITE",
    "TokenAuth",
    "permission_range",
    "permission_type",
]

# The "use the client's default timeout" marker, shared with petcd.client.aio.
_DEFAULT: Any = object()

PERM_READ = authpb.Permission.READ
PERM_WRITE = authpb.Permission.WRITE
PERM_READWRITE = authpb.Permission.READWRITE

# Server answers after which clientv3 fetches a new token and retries (shouldRefreshToken).
_REFRESH = frozenset(
    {
        "etcdserver: invalid auth token",
        "etcdserver: revision of auth store is old",
        "etcdserver: user name is empty",
    }
)
_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"


def permission_type(value: int | str) -> int:
    """READ / WRITE / READWRITE (any case) as the enum value; clientv3's StrToPermissionType."""
    if isinstance(value, int):
        return value
    try:
        return authpb.Permission.Type.Value(value.upper())
    except ValueError:
        raise ValueError(f"invalid permission type: {value}") from None


def _b(x: KeyLike) -> bytes:
    return x.encode() if isinstance(x, str) else x


def permission_range(
    key: KeyLike,
    range_end: KeyLike | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
) -> tuple[bytes, bytes]:
    """The [key, range_end) a permission covers, as etcdctl's permRange computes it.

    An empty key means the whole key space with `prefix`/`from_key` (`["\\x00", "\\x00")`) and
    the single key "\\x00" without. Raises ValueError with etcdctl's messages on bad mixes.
    """
    from petcd.client.aio import prefix_range_end

    k = _b(key)
    if not k:
        if prefix and from_key:
            raise ValueError("--from-key and --prefix flags are mutually exclusive")
        return b"\x00", (b"\x00" if prefix or from_key else b"")
    if range_end is None:
        if prefix:
            if from_key:
                raise ValueError("--from-key and --prefix flags are mutually exclusive")
            return k, prefix_range_end(k)
        return k, (b"\x00" if from_key else b"")
    if prefix:
        raise ValueError("unexpected endkey argument with --prefix flag")
    if from_key:
        raise ValueError("unexpected endkey argument with --from-key flag")
    return k, _b(range_end)


class TokenAuth:
    """A user's credentials and current token (see the module docstring)."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password
        self.token: str | None = None
        self.fetched = False  # authenticated at least once (the token may be None: auth off)
        self.generation = 0  # bumped on every fetch, so concurrent refreshes collapse to one
        # The "authentication is not enabled" answer of the last fetch (petcdctl logs it).
        self.not_enabled: errors.ClientError | None = None
        self._lock = asyncio.Lock()

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self.token),) if self.token else None

    @staticmethod
    def should_refresh(details: str) -> bool:
        # A watch's cancel reason is the whole gRPC status text: "rpc error: code = ... desc = ".
        return details.rpartition(" desc = ")[2] in _REFRESH

    async def refresh(self, client: Any, deadline: float | None, seen: int | None) -> None:
        """Fetch a token unless another caller did since generation `seen` (None: always)."""
        async with self._lock:
            if seen is not None and self.generation != seen and self.fetched:
                return
            timeout = None
            if deadline is not None:
                timeout = max(deadline - asyncio.get_running_loop().time(), 0.001)
            req = pb.AuthenticateRequest(name=self.user, password=self.password)
            try:
                resp = await client._unary("auth", "Authenticate", req, True, timeout, token=False)
                token: str | None = resp.token
                self.not_enabled = None
            except errors.EtcdServerError as e:
                if e.details != _AUTH_NOT_ENABLED:
                    raise
                token = None
                self.not_enabled = e
            self.token = token
            self.fetched = True
            self.generation += 1

    async def ensure(self, client: Any, deadline: float | None) -> int:
        """Authenticate if never done; returns the generation of the token now in use."""
        if not self.fetched:
            await self.refresh(client, deadline, self.generation)
        return self.generation


class AuthMixin:
    """clientv3's Auth calls; mixed into `petcd.client.aio.Client` (which provides `_unary`)."""

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
        raise NotImplementedError

    async def _auth(self, method: str, req: Any, repeatable: bool, timeout: Any) -> Any:
        return await self._unary("auth", method, req, repeatable, timeout)

    async def login(self, *, timeout: float | None = _DEFAULT) -> str | None:
        """Authenticate now with the client's user (clientv3 does it at dial); returns the
        token, or None when auth is not enabled or the client has no credentials."""
        ta: TokenAuth | None = getattr(self, "_token_auth", None)
        if ta is None:
            return None
        deadline = self._deadline(timeout)  # type: ignore[attr-defined]
        await ta.refresh(self, deadline, None)
        return ta.token

    async def authenticate(
        self, name: str, password: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthenticateResponse:
        """The Authenticate RPC itself (`.token`); the client's own token is not changed."""
        req = pb.AuthenticateRequest(name=name, password=password)
        return await self._unary("auth", "Authenticate", req, True, timeout, token=False)

    async def auth_enable(self, *, timeout: float | None = _DEFAULT) -> pb.AuthEnableResponse:
        return await self._auth("AuthEnable", pb.AuthEnableRequest(), False, timeout)

    async def auth_disable(self, *, timeout: float | None = _DEFAULT) -> pb.AuthDisableResponse:
        return await self._auth("AuthDisable", pb.AuthDisableRequest(), False, timeout)

    async def auth_status(self, *, timeout: float | None = _DEFAULT) -> pb.AuthStatusResponse:
        """`.enabled`, `.authRevision` (etcd 3.5+; etcd 3.4 raises `Unimplemented`)."""
        return await self._auth("AuthStatus", pb.AuthStatusRequest(), True, timeout)

    async def user_add(
        self,
        name: str,
        password: str = "",
        *,
        no_password: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> pb.AuthUserAddResponse:
        """Add a user; `no_password=True` makes a user that can only use TLS CN auth."""
        req = pb.AuthUserAddRequest(name=name, password=password)
        if no_password:
            req.options.no_password = True
        return await self._auth("UserAdd", req, False, timeout)

    async def user_delete(
        self, name: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthUserDeleteResponse:
        return await self._auth("UserDelete", pb.AuthUserDeleteRequest(name=name), False, timeout)

    async def user_get(
        self, name: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthUserGetResponse:
        """`.roles` of the user."""
        return await self._auth("UserGet", pb.AuthUserGetRequest(name=name), True, timeout)

    async def user_list(self, *, timeout: float | None = _DEFAULT) -> pb.AuthUserListResponse:
        """`.users`, sorted."""
        return await self._auth("UserList", pb.AuthUserListRequest(), True, timeout)

    async def user_change_password(
        self, name: str, password: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthUserChangePasswordResponse:
        """Change a password; the server drops the user's tokens (other clients of that user
        re-authenticate, and fail unless they know the new password)."""
        req = pb.AuthUserChangePasswordRequest(name=name, password=password)
        return await self._auth("UserChangePassword", req, False, timeout)

    async def user_grant_role(
        self, user: str, role: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthUserGrantRoleResponse:
        req = pb.AuthUserGrantRoleRequest(user=user, role=role)
        return await self._auth("UserGrantRole", req, False, timeout)

    async def user_revoke_role(
        self, user: str, role: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthUserRevokeRoleResponse:
        req = pb.AuthUserRevokeRoleRequest(name=user, role=role)
        return await self._auth("UserRevokeRole", req, False, timeout)

    async def role_add(
        self, name: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthRoleAddResponse:
        return await self._auth("RoleAdd", pb.AuthRoleAddRequest(name=name), False, timeout)

    async def role_delete(
        self, name: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthRoleDeleteResponse:
        return await self._auth("RoleDelete", pb.AuthRoleDeleteRequest(role=name), False, timeout)

    async def role_get(
        self, name: str, *, timeout: float | None = _DEFAULT
    ) -> pb.AuthRoleGetResponse:
        """`.perm`: the role's `authpb.Permission`s (permType, key, range_end)."""
        return await self._auth("RoleGet", pb.AuthRoleGetRequest(role=name), True, timeout)

    async def role_list(self, *, timeout: float | None = _DEFAULT) -> pb.AuthRoleListResponse:
        """`.roles`, sorted."""
        return await self._auth("RoleList", pb.AuthRoleListRequest(), True, timeout)

    async def role_grant_permission(
        self,
        name: str,
        perm_type: int | str,
        key: KeyLike,
        range_end: KeyLike | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> pb.AuthRoleGrantPermissionResponse:
        """Grant READ / WRITE / READWRITE on a key, `[key, range_end)`, a prefix or everything
        from `key` (see `permission_range`)."""
        k, end = permission_range(key, range_end, prefix=prefix, from_key=from_key)
        perm = authpb.Permission(permType=permission_type(perm_type), key=k, range_end=end)
        req = pb.AuthRoleGrantPermissionRequest(name=name, perm=perm)
        return await self._auth("RoleGrantPermission", req, False, timeout)

    async def role_revoke_permission(
        self,
        name: str,
        key: KeyLike,
        range_end: KeyLike | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        timeout: float | None = _DEFAULT,
    ) -> pb.AuthRoleRevokePermissionResponse:
        """Revoke the permission granted on exactly this range."""
        k, end = permission_range(key, range_end, prefix=prefix, from_key=from_key)
        req = pb.AuthRoleRevokePermissionRequest(role=name, key=k, range_end=end)
        return await self._auth("RoleRevokePermission", req, False, timeout)


# The methods `petcd.client.sync.SyncClient` exposes as blocking calls.
AUTH_METHODS = tuple(n for n, v in vars(AuthMixin).items() if not n.startswith("_") and callable(v))
