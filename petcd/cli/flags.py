"""Go `flag`-package compatible parsing of etcd's server flags.

etcd 3.4 parses its command line with Go's standard `flag` package plus a few custom
value types (pkg/flags). This module reproduces that grammar and the exact error strings,
because scripts and tests compare them: `-flag`/`--flag`, `--flag=value`/`--flag value`,
booleans only as `--flag` or `--flag=value`, parsing stops at the first non-flag argument,
and a repeated flag replaces the earlier value.

The FLAGS table is the single list of every flag etcd accepts: name, value kind, help
section and text. ServerConfig attribute names are the flag names in snake_case.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# -- errors -----------------------------------------------------------------------------


class FlagValueError(ValueError):
    """A value a flag's type rejects; str() is Go's error text ("parse error", ...)."""


class FlagSyntaxError(Exception):
    """Command-line syntax error: Go's flag package prints it with the usage and exits 2."""


class HelpRequested(Exception):
    """`-h`, `-help` or `--help` was given."""


# -- Go-compatible scalar parsers ------------------------------------------------------

_BOOL_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_BOOL_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))


def go_parse_bool(s: str) -> bool:
    """strconv.ParseBool."""
    if s in _BOOL_TRUE:
        return True
    if s in _BOOL_FALSE:
        return False
    raise FlagValueError("parse error")


_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _go_parse_int_raw(s: str, signed: bool, bits: int) -> int:
    """strconv.Parse(U)Int(s, 0, bits). Raises ValueError('syntax'|'range')."""
    body = s
    neg = False
    if signed and body[:1] in ("+", "-"):
        neg = body[0] == "-"
        body = body[1:]
    if not body:
        raise ValueError("syntax")
    base, digits, prefixed = 10, body, len(body) > 1 and body[0] == "0"
    if prefixed:
        p = body[1]
        if p in "xX":
            base, digits = 16, body[2:]
        elif p in "bB":
            base, digits = 2, body[2:]
        elif p in "oO":
            base, digits = 8, body[2:]
        else:
            base, digits = 8, body[1:]
    if "_" in body:
        # Go allows '_' only between digits or right after a base prefix.
        if "__" in digits or digits.endswith("_") or (digits.startswith("_") and not prefixed):
            raise ValueError("syntax")
        digits = digits.replace("_", "")
    if not digits or any(c not in _DIGITS[base] for c in digits):
        raise ValueError("syntax")
    v = int(digits, base)
    if signed:
        lim = 1 << (bits - 1)
        if (neg and v > lim) or (not neg and v >= lim):
            raise ValueError("range")
        return -v if neg else v
    if v >= 1 << bits:
        raise ValueError("range")
    return v


def go_parse_uint(s: str, bits: int = 64) -> int:
    """flag.UintVar / Uint64Var semantics (base prefixes allowed, 'parse error')."""
    try:
        return _go_parse_int_raw(s, False, bits)
    except ValueError as e:
        raise FlagValueError("parse error" if str(e) == "syntax" else "value out of range") from None


def go_parse_int(s: str, bits: int = 64) -> int:
    """flag.IntVar / Int64Var semantics."""
    try:
        return _go_parse_int_raw(s, True, bits)
    except ValueError as e:
        raise FlagValueError("parse error" if str(e) == "syntax" else "value out of range") from None


def go_parse_uint32_strconv(s: str) -> int:
    """etcd's pkg/flags uint32Value, which surfaces strconv's own error text."""
    try:
        return _go_parse_int_raw(s, False, 32)
    except ValueError as e:
        what = "invalid syntax" if str(e) == "syntax" else "value out of range"
        raise FlagValueError(f'strconv.ParseUint: parsing "{s}": {what}') from None


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def go_parse_duration(s: str) -> float:
    """time.ParseDuration, returning seconds. Error text is Go's ('time: ...')."""
    orig = s
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise FlagValueError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise FlagValueError(f'time: invalid duration "{orig}"')
        if not unit:
            raise FlagValueError(f'time: missing unit in duration "{orig}"')
        if unit not in _DURATION_UNITS:
            raise FlagValueError(f'time: unknown unit "{unit}" in duration "{orig}"')
        total += float(f"{whole or '0'}.{frac or '0'}") * _DURATION_UNITS[unit]
        pos = m.end()
    return -total if neg else total


def format_duration(seconds: float) -> str:
    """Compact Go-like duration text for help output and logs ('5s', '2h', '100ms')."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= size and abs(seconds / size - round(seconds / size)) < 1e-9:
            return f"{round(seconds / size)}{unit}"
    return f"{seconds}s"


# -- URLs -------------------------------------------------------------------------------

_URL_SCHEMES = ("http", "https", "unix", "unixs")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed etcd URL; host has IPv6 brackets removed, port is 0 when empty."""

    scheme: str
    host: str
    port: int
    text: str

    def __str__(self) -> str:
        return self.text

    def __iter__(self):  # lets callers unpack: scheme, host, port = url
        return iter((self.scheme, self.host, self.port))

    @property
    def hostport(self) -> str:
        return self.text.split("://", 1)[1] if "://" in self.text else ""


def _split_host_port(hostport: str) -> tuple[str, str]:
    """net.SplitHostPort; raises ValueError on a missing port or stray colons."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            raise ValueError("missing port in address")
        return hostport[1:end], hostport[end + 2 :]
    if hostport.count(":") != 1:
        raise ValueError("missing port in address" if ":" not in hostport else "too many colons")
    host, port = hostport.split(":")
    return host, port


def parse_url(raw: str) -> URL:
    """One entry of types.NewURLs: Go's url.Parse plus etcd's scheme/host:port/path rules."""
    s = raw.strip()
    m = _SCHEME_RE.match(s)
    if m is None:
        first_seg = s.split("/", 1)[0]
        if ":" in first_seg:
            raise FlagValueError(f'parse "{s}": first path segment in URL cannot contain colon')
        scheme, rest = "", s
    else:
        scheme, rest = m.group(1).lower(), s[m.end() :]
    if scheme not in _URL_SCHEMES:
        raise FlagValueError(f"URL scheme must be http, https, unix, or unixs: {s}")
    authority, path = "", rest
    if rest.startswith("//"):
        rest = rest[2:]
        cut = len(rest)
        for ch in "/?#":
            i = rest.find(ch)
            if 0 <= i < cut:
                cut = i
        authority, path = rest[:cut], rest[cut:]
    hostport = authority.rsplit("@", 1)[-1]
    colon = hostport.rfind(":")
    if colon > hostport.rfind("]"):
        port_text = hostport[colon + 1 :]
        if port_text and not port_text.isdigit():
            raise FlagValueError(f'parse "{s}": invalid port ":{port_text}" after host')
    try:
        host, port = _split_host_port(hostport)
    except ValueError:
        raise FlagValueError(f'URL address does not have the form "host:port": {s}') from None
    path = path.split("?", 1)[0].split("#", 1)[0]
    if path:
        raise FlagValueError(f"URL must not contain a path: {s}")
    return URL(scheme, host, int(port) if port else 0, f"{scheme}://{hostport}")


def parse_url_list(value: str | Iterable[str]) -> list[str]:
    """types.NewURLs over a comma-separated string: validated, sorted, de-duplicated."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    return sorted({parse_url(p).text for p in parts})


def is_bind_host(host: str) -> bool:
    """etcd only binds to IP literals or 'localhost' (checkBindURLs)."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- flag kinds -------------------------------------------------------------------------


def _conv_urls(s: str, current: Any) -> Any:
    # UniqueURLs with "" as an allowed exception: an empty value keeps the current list.
    if s == "":
        return current
    return parse_url_list(s)


def _conv_cors(s: str, current: Any) -> Any:
    if s == "*" and "*" in current:
        return current
    return parse_url_list(s)


def _conv_ustrings(s: str, current: Any) -> Any:
    return sorted(set(s.split(",")))


def _choice(valid: Sequence[str]) -> Callable[[str, Any], Any]:
    def conv(s: str, current: Any) -> Any:
        if s not in valid:
            raise FlagValueError("invalid value")
        return s

    return conv


_CONVERTERS: dict[str, Callable[[str, Any], Any]] = {
    "string": lambda s, cur: s,
    "bool": lambda s, cur: go_parse_bool(s),
    "uint": lambda s, cur: go_parse_uint(s, 64),
    "uint64": lambda s, cur: go_parse_uint(s, 64),
    "int": lambda s, cur: go_parse_int(s, 64),
    "int64": lambda s, cur: go_parse_int(s, 64),
    "uint32": lambda s, cur: go_parse_uint32_strconv(s),
    "duration": lambda s, cur: _duration_flag(s),
    "urls": _conv_urls,
    "cors": _conv_cors,
    "ustrings": _conv_ustrings,
    "strings": lambda s, cur: s.split(","),
    "ignored": lambda s, cur: None,
}


def _duration_flag(s: str) -> float:
    try:
        return go_parse_duration(s)
    except FlagValueError:
        raise FlagValueError("parse error") from None


@dataclass(frozen=True, slots=True)
class FlagSpec:
    name: str
    kind: str
    section: str
    help: str
    choices: tuple[str, ...] = ()
    # Shown in --help instead of the formatted default (e.g. "${name}.etcd").
    shown_default: str | None = None
    hidden: bool = False

    @property
    def attr(self) -> str:
        return ATTR_OVERRIDES.get(self.name, self.name.replace("-", "_"))

    @property
    def env(self) -> str:
        return "ETCD_" + self.name.upper().replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return self.kind in ("bool", "ignored")

    def convert(self, raw: str, current: Any = None) -> Any:
        if self.kind == "choice":
            return _choice(self.choices)(raw, current)
        return _CONVERTERS[self.kind](raw, current)


ATTR_OVERRIDES = {"version": "print_version"}

# Flags etcd 3.4 still accepts but ignores (pre-v2 leftovers); they behave like booleans.
IGNORED_FLAGS = (
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
    "test.coverprofile",
    "test.outputdir",
)

_M, _C, _S, _A = "Member", "Clustering", "Security", "Auth"
_P, _L, _X, _U = "Profiling and Monitoring", "Logging", "Experimental feature", "Unsafe feature"
_V2P, _DEP, _E35 = "v2 Proxy (to be deprecated in v4)", "TO BE DEPRECATED", "etcd 3.5 flags"


def _f(name: str, kind: str, section: str, help: str, **kw: Any) -> FlagSpec:
    return FlagSpec(name, kind, section, help, **kw)


FLAGS: tuple[FlagSpec, ...] = (
    _f("config-file", "string", "", "Path to the server configuration file.", hidden=True),
    _f("version", "bool", "", "Print the version and exit.", hidden=True),
    # member
    _f("name", "string", _M, "Human-readable name for this member."),
    _f("data-dir", "string", _M, "Path to the data directory.", shown_default="${name}.etcd"),
    _f("wal-dir", "string", _M, "Path to the dedicated wal directory."),
    _f("snapshot-count", "uint64", _M, "Number of committed transactions to trigger a snapshot to disk."),
    _f("heartbeat-interval", "uint", _M, "Time (in milliseconds) of a heartbeat interval."),
    _f("election-timeout", "uint", _M, "Time (in milliseconds) for an election to timeout."),
    _f("initial-election-tick-advance", "bool", _M, "Whether to fast-forward initial election ticks on boot for faster election."),
    _f("listen-peer-urls", "urls", _M, "List of URLs to listen on for peer traffic."),
    _f("listen-client-urls", "urls", _M, "List of URLs to listen on for client traffic."),
    _f("max-snapshots", "uint", _M, "Maximum number of snapshot files to retain (0 is unlimited)."),
    _f("max-wals", "uint", _M, "Maximum number of wal files to retain (0 is unlimited)."),
    _f("quota-backend-bytes", "int64", _M, "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota)."),
    _f("backend-batch-interval", "duration", _M, "BackendBatchInterval is the maximum time before commit the backend transaction.", shown_default=""),
    _f("backend-batch-limit", "int", _M, "BackendBatchLimit is the maximum operations before commit the backend transaction."),
    _f("max-txn-ops", "uint", _M, "Maximum number of operations permitted in a transaction."),
    _f("max-request-bytes", "uint", _M, "Maximum client request size in bytes the server will accept."),
    _f("max-concurrent-streams", "uint32", _M, "Maximum concurrent streams that each client can open at a time.", shown_default="math.MaxUint32"),
    _f("grpc-keepalive-min-time", "duration", _M, "Minimum duration interval that a client should wait before pinging server."),
    _f("grpc-keepalive-interval", "duration", _M, "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable)."),
    _f("grpc-keepalive-timeout", "duration", _M, "Additional duration of wait before closing a non-responsive connection (0 to disable)."),
    # clustering
    _f("initial-advertise-peer-urls", "urls", _C, "List of this member's peer URLs to advertise to the rest of the cluster."),
    _f("initial-cluster", "string", _C, "Initial cluster configuration for bootstrapping."),
    _f("initial-cluster-state", "choice", _C, "Initial cluster state ('new' or 'existing').", choices=("new", "existing")),
    _f("initial-cluster-token", "string", _C, "Initial cluster token for the etcd cluster during bootstrap."),
    _f("advertise-client-urls", "urls", _C, "List of this member's client URLs to advertise to the public."),
    _f("discovery", "string", _C, "Discovery URL used to bootstrap the cluster."),
    _f("discovery-fallback", "choice", _C, "Expected behavior ('exit' or 'proxy') when discovery services fails.", choices=("proxy", "exit")),
    _f("discovery-proxy", "string", _C, "HTTP proxy to use for traffic to discovery service."),
    _f("discovery-srv", "string", _C, "DNS srv domain used to bootstrap the cluster."),
    _f("discovery-srv-name", "string", _C, "Suffix to the dns srv name queried when bootstrapping."),
    _f("strict-reconfig-check", "bool", _C, "Reject reconfiguration requests that would cause quorum loss."),
    _f("pre-vote", "bool", _C, "Enable to run an additional Raft election phase."),
    _f("auto-compaction-retention", "string", _C, "Auto compaction retention length. 0 means disable auto compaction."),
    _f("auto-compaction-mode", "string", _C, "Interpret 'auto-compaction-retention' one of: periodic|revision."),
    _f("enable-v2", "bool", _C, "Accept etcd V2 client requests."),
    # security
    _f("cert-file", "string", _S, "Path to the client server TLS cert file."),
    _f("key-file", "string", _S, "Path to the client server TLS key file."),
    _f("client-cert-auth", "bool", _S, "Enable client cert authentication."),
    _f("client-crl-file", "string", _S, "Path to the client certificate revocation list file."),
    _f("client-cert-allowed-hostname", "string", _S, "Allowed TLS hostname for client cert authentication."),
    _f("trusted-ca-file", "string", _S, "Path to the client server TLS trusted CA cert file."),
    _f("auto-tls", "bool", _S, "Client TLS using generated certificates."),
    _f("peer-cert-file", "string", _S, "Path to the peer server TLS cert file."),
    _f("peer-key-file", "string", _S, "Path to the peer server TLS key file."),
    _f("peer-client-cert-auth", "bool", _S, "Enable peer client cert authentication."),
    _f("peer-trusted-ca-file", "string", _S, "Path to the peer server TLS trusted CA file."),
    _f("peer-cert-allowed-cn", "string", _S, "Required CN for client certs connecting to the peer endpoint."),
    _f("peer-cert-allowed-hostname", "string", _S, "Allowed TLS hostname for inter peer authentication."),
    _f("peer-auto-tls", "bool", _S, "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided."),
    _f("peer-crl-file", "string", _S, "Path to the peer certificate revocation list file."),
    _f("cipher-suites", "strings", _S, "Comma-separated list of supported TLS cipher suites between client/server and peers."),
    _f("cors", "cors", _S, "Comma-separated whitelist of origins for CORS (empty or * means allow all)."),
    _f("host-whitelist", "ustrings", _S, "Acceptable hostnames from HTTP client requests, if server is not secure (empty or * means allow all)."),
    # auth
    _f("auth-token", "string", _A, "Specify a v3 authentication token type and its options ('simple' or 'jwt')."),
    _f("bcrypt-cost", "uint", _A, "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords. Valid values are between 4 and 31."),
    _f("auth-token-ttl", "uint", _A, "Time (in seconds) of the auth-token-ttl."),
    # profiling / monitoring
    _f("enable-pprof", "bool", _P, 'Enable runtime profiling data via HTTP server. Address is at client URL + "/debug/pprof/"'),
    _f("metrics", "string", _P, "Set level of detail for exported metrics, specify 'extensive' to include histogram metrics."),
    _f("listen-metrics-urls", "urls", _P, "List of URLs to listen on for the metrics and health endpoints."),
    _f("enable-grpc-gateway", "bool", _P, "Enable GRPC gateway.", hidden=True),
    # logging
    _f("logger", "string", _L, "Specify 'zap' for structured logging or 'capnslog'."),
    _f("log-outputs", "ustrings", _L, "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets."),
    _f("log-level", "string", _L, "Configures log level. Only supports debug, info, warn, error, panic, or fatal."),
    _f("log-output", "ustrings", _L, "[TO BE DEPRECATED IN v3.5] use '--log-outputs'.", hidden=True),
    # v2 proxy
    _f("proxy", "choice", _V2P, "Proxy mode setting ('off', 'readonly' or 'on').", choices=("off", "readonly", "on")),
    _f("proxy-failure-wait", "uint", _V2P, "Time (in milliseconds) an endpoint will be held in a failed state."),
    _f("proxy-refresh-interval", "uint", _V2P, "Time (in milliseconds) of the endpoints refresh interval."),
    _f("proxy-dial-timeout", "uint", _V2P, "Time (in milliseconds) for a dial to timeout."),
    _f("proxy-write-timeout", "uint", _V2P, "Time (in milliseconds) for a write to timeout."),
    _f("proxy-read-timeout", "uint", _V2P, "Time (in milliseconds) for a read to timeout."),
    # experimental
    _f("experimental-initial-corrupt-check", "bool", _X, "Enable to check data corruption before serving any client/peer traffic."),
    _f("experimental-corrupt-check-time", "duration", _X, "Duration of time between cluster corruption check passes."),
    _f("experimental-enable-v2v3", "string", _X, "Serve v2 requests through the v3 backend under a given prefix."),
    _f("experimental-backend-bbolt-freelist-type", "string", _X, "The type of freelist that boltdb backend uses (array and map are supported types)."),
    _f("experimental-enable-lease-checkpoint", "bool", _X, "Enable leader to send regular checkpoints to other members to prevent reset of remaining TTL on leader change."),
    _f("experimental-enable-lease-checkpoint-persist", "bool", _X, "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases.", hidden=True),
    # etcd 3.5.10+; hidden here because `etcd --help` of 3.4 does not list it.
    _f("experimental-snapshot-catchup-entries", "uint", _X, "Number of entries for a slow follower to catch-up after compacting the raft storage entries.", hidden=True),
    # Not an etcd flag (etcd only sets it in its integration tests): hidden, default 5m.
    _f("experimental-lease-checkpoint-interval", "duration", _X, "Wait duration between lease checkpoints.", hidden=True),
    _f("experimental-compaction-batch-limit", "int", _X, "Sets the maximum revisions deleted in each compaction batch."),
    _f("experimental-peer-skip-client-san-verification", "bool", _X, "Skip verification of SAN field in client certificate for peer connections."),
    _f("experimental-watch-progress-notify-interval", "duration", _X, "Duration of periodical watch progress notification."),
    _f("experimental-warning-apply-duration", "duration", _X, "Warning is generated if requests take more than this duration."),
    # unsafe
    _f("force-new-cluster", "bool", _U, "Force to create a new one-member cluster."),
    _f("unsafe-no-fsync", "bool", _U, "Disables fsync, unsafe, will cause data loss.", hidden=True),
    # deprecated logging
    _f("debug", "bool", _DEP, "Enable debug-level logging for etcd. Use '--log-level=debug' instead."),
    _f("log-package-levels", "string", _DEP, "Specify a particular log level for each etcd package (eg: 'etcdmain=CRITICAL,etcdserver=DEBUG')."),
    # accepted so that command lines written for etcd 3.5 also work
    _f("listen-client-http-urls", "urls", _E35, "List of URLs to listen on for http only client traffic."),
    _f("backend-bbolt-freelist-type", "string", _E35, "The type of freelist that the backend uses (array and map)."),
    _f("socket-reuse-port", "bool", _E35, "Enable to set socket option SO_REUSEPORT on listeners."),
    _f("socket-reuse-address", "bool", _E35, "Enable to set socket option SO_REUSEADDR on listeners."),
    _f("raft-read-timeout", "duration", _E35, "Read timeout set on each rafthttp connection."),
    _f("raft-write-timeout", "duration", _E35, "Write timeout set on each rafthttp connection."),
    _f("v2-deprecation", "choice", _E35, "v2store deprecation stage.", choices=("not-yet", "write-only", "write-only-drop-data", "gone")),
    _f("client-cert-file", "string", _E35, "Path to an explicit peer client TLS cert file."),
    _f("client-key-file", "string", _E35, "Path to an explicit peer client TLS key file."),
    _f("peer-client-cert-file", "string", _E35, "Path to an explicit peer client TLS cert file."),
    _f("peer-client-key-file", "string", _E35, "Path to an explicit peer client TLS key file."),
    _f("self-signed-cert-validity", "uint", _E35, "The validity period of the client and peer certificates, unit is year."),
    _f("tls-min-version", "string", _E35, "Minimum TLS version supported by etcd (TLS1.2, TLS1.3)."),
    _f("tls-max-version", "string", _E35, "Maximum TLS version supported by etcd (empty defers to the runtime)."),
    _f("enable-log-rotation", "bool", _E35, "Enable log rotation of a single log-outputs file target."),
    _f("log-rotation-config-json", "string", _E35, "Configures log rotation if enabled with a JSON logger config."),
    _f("experimental-enable-distributed-tracing", "bool", _E35, "Enable experimental distributed tracing using OpenTelemetry Tracing."),
    _f("experimental-distributed-tracing-address", "string", _E35, "Address for distributed tracing used for OpenTelemetry Tracing."),
    _f("experimental-distributed-tracing-service-name", "string", _E35, "Service name for distributed tracing."),
    _f("experimental-distributed-tracing-instance-id", "string", _E35, "Service instance ID for distributed tracing."),
    _f("experimental-compact-hash-check-enabled", "bool", _E35, "Enable leader to periodically check followers compaction hashes."),
    _f("experimental-compact-hash-check-time", "duration", _E35, "Duration of time between leader checks followers compaction hashes."),
    _f("experimental-downgrade-check-time", "duration", _E35, "Duration of time between two downgrade status checks."),
    _f("experimental-memory-mlock", "bool", _E35, "Enable to enforce etcd pages to stay in RAM."),
    _f("experimental-txn-mode-write-with-shared-buffer", "bool", _E35, "Enable the write transaction to use a shared buffer in its readonly check operations."),
    _f("experimental-bootstrap-defrag-threshold-megabytes", "uint", _E35, "Enable the defrag during etcd server bootstrap on condition that it will free at least the provided threshold of disk space."),
) + tuple(FlagSpec(n, "ignored", "", "", hidden=True) for n in IGNORED_FLAGS)

FLAGS_BY_NAME: dict[str, FlagSpec] = {f.name: f for f in FLAGS}


# -- command-line parsing ---------------------------------------------------------------


@dataclass(slots=True)
class ParsedArgs:
    """Result of scanning argv: values in the order given, and leftover positionals."""

    values: list[tuple[FlagSpec, str]]
    set_names: set[str]
    args: list[str]
    # FlagSyntaxError or HelpRequested that stopped the scan; values before it still count.
    error: Exception | None = None


def scan_args(argv: Sequence[str]) -> ParsedArgs:
    """Tokenize argv exactly like Go's flag.FlagSet.Parse (values are not converted here).

    A syntax error or -h stops the scan and is returned in `error`, because Go converts
    the values seen before it first (and an invalid one wins)."""
    values: list[tuple[FlagSpec, str]] = []
    set_names: set[str] = set()
    i, n = 0, len(argv)
    while i < n:
        s = argv[i]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 2 if s[1] == "-" else 1
        if minuses == 2 and len(s) == 2:  # "--" ends the flags
            i += 1
            break
        name = s[minuses:]
        if not name or name[0] in "-=":
            return ParsedArgs(values, set_names, [], FlagSyntaxError(f"bad flag syntax: {s}"))
        i += 1
        has_value = "=" in name
        value = ""
        if has_value:
            name, value = name.split("=", 1)
        spec = FLAGS_BY_NAME.get(name)
        if spec is None:
            if name in ("help", "h"):
                return ParsedArgs(values, set_names, [], HelpRequested())
            err = FlagSyntaxError(f"flag provided but not defined: -{name}")
            return ParsedArgs(values, set_names, [], err)
        if spec.is_bool:
            if not has_value:
                value = "true"
        elif not has_value:
            if i >= n:
                err = FlagSyntaxError(f"flag needs an argument: -{name}")
                return ParsedArgs(values, set_names, [], err)
            value = argv[i]
            i += 1
        values.append((spec, value))
        set_names.add(name)
    return ParsedArgs(values, set_names, list(argv[i:]))


def flag_error_text(spec: FlagSpec, value: str, err: FlagValueError) -> str:
    """Go's wording for a value rejected on the command line."""
    if spec.kind == "bool":
        return f'invalid boolean value "{value}" for -{spec.name}: {err}'
    return f'invalid value "{value}" for flag -{spec.name}: {err}'
