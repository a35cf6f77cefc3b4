"""The server configuration: every etcd 3.4 flag, its ETCD_* variable and config-file key.

`parse_args(argv, environ)` mirrors etcd 3.4's etcdmain: Go flag syntax, then either the
YAML config file (which makes etcd ignore all other flags and the environment) or the
ETCD_* environment for flags not given on the command line, then etcd's validation with
its wording, then petcd's own "not supported yet" refusals (NOT_SUPPORTED_YET).

Warnings and infos produced while parsing happen before logging is configured, so they
are collected in `ServerConfig.notices` and logged by the caller (cli.main).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from petcd.cli.flags import (
    FLAGS,
    FLAGS_BY_NAME,
    URL,
    FlagSpec,
    FlagValueError,
    HelpRequested,
    flag_error_text,
    format_duration,
    go_parse_duration,
    is_bind_host,
    parse_url,
    parse_url_list,
    scan_args,
)
from petcd.version import ETCD_VERSION, PETCD_VERSION

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024
MAX_QUOTA_BYTES = 8 * 1024 * 1024 * 1024
MAX_ELECTION_MS = 50000
LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")

# etcd 3.4 makes a flag set both ways fatal; 3.3 only warned. Flip to follow 3.3.
ENV_SHADOW_IS_FATAL = True


class ConfigError(Exception):
    """Invalid configuration. exit_code follows etcd: 2 for flag syntax (usage is shown),
    1 for validation errors."""

    def __init__(self, message: str, exit_code: int = 1, show_usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.show_usage = show_usage


class EarlyExit(Exception):
    """--help or --version: print stdout/stderr text and exit with exit_code."""

    def __init__(self, exit_code: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


def _urls(*u: str) -> Any:
    return field(default_factory=lambda: list(u))


@dataclass
class ServerConfig:
    """Every etcd flag as a snake_case attribute, with etcd 3.4's defaults.

    Durations are float seconds; *-interval/-timeout/-wait flags that etcd declares in
    milliseconds stay integers in milliseconds. URL lists are validated, sorted strings.
    """

    config_file: str = ""
    print_version: bool = False
    # member
    name: str = "default"
    data_dir: str = ""  # "" means "${name}.etcd"; see effective_data_dir
    wal_dir: str = ""
    snapshot_count: int = 100000
    heartbeat_interval: int = 100
    election_timeout: int = 1000
    initial_election_tick_advance: bool = True
    listen_peer_urls: list[str] = _urls("http://localhost:2380")
    listen_client_urls: list[str] = _urls("http://localhost:2379")
    max_snapshots: int = 5
    max_wals: int = 5
    quota_backend_bytes: int = 0  # 0 = 2 GiB, negative disables the quota
    backend_batch_interval: float = 0.0  # 0 = backend default
    backend_batch_limit: int = 0  # 0 = backend default
    max_txn_ops: int = 128
    max_request_bytes: int = 1572864
    max_concurrent_streams: int = 2**32 - 1
    grpc_keepalive_min_time: float = 5.0
    grpc_keepalive_interval: float = 7200.0
    grpc_keepalive_timeout: float = 20.0
    # clustering
    initial_advertise_peer_urls: list[str] = _urls("http://localhost:2380")
    initial_cluster: str = "default=http://localhost:2380"
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    advertise_client_urls: list[str] = _urls("http://localhost:2379")
    discovery: str = ""
    discovery_fallback: str = "proxy"
    discovery_proxy: str = ""
    discovery_srv: str = ""
    discovery_srv_name: str = ""
    strict_reconfig_check: bool = True
    pre_vote: bool = False
    auto_compaction_retention: str = "0"
    auto_compaction_mode: str = "periodic"
    enable_v2: bool = False
    # security
    cert_file: str = ""
    key_file: str = ""
    client_cert_auth: bool = False
    client_crl_file: str = ""
    client_cert_allowed_hostname: str = ""
    trusted_ca_file: str = ""
    auto_tls: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_client_cert_auth: bool = False
    peer_trusted_ca_file: str = ""
    peer_cert_allowed_cn: str = ""
    peer_cert_allowed_hostname: str = ""
    peer_auto_tls: bool = False
    peer_crl_file: str = ""
    cipher_suites: list[str] = _urls()
    cors: list[str] = _urls("*")
    host_whitelist: list[str] = _urls("*")
    # auth
    auth_token: str = "simple"
    bcrypt_cost: int = 10
    auth_token_ttl: int = 300
    # profiling and monitoring
    enable_pprof: bool = False
    metrics: str = "basic"
    listen_metrics_urls: list[str] = _urls()
    enable_grpc_gateway: bool = True
    # logging
    logger: str = "capnslog"
    log_outputs: list[str] = _urls("default")
    log_level: str = "info"
    log_output: list[str] = _urls("default")  # deprecated spelling of log_outputs
    debug: bool = False
    log_package_levels: str = ""
    # v2 proxy
    proxy: str = "off"
    proxy_failure_wait: int = 5000
    proxy_refresh_interval: int = 30000
    proxy_dial_timeout: int = 1000
    proxy_write_timeout: int = 5000
    proxy_read_timeout: int = 0
    # experimental
    experimental_initial_corrupt_check: bool = False
    experimental_corrupt_check_time: float = 0.0
    experimental_enable_v2v3: str = ""
    experimental_backend_bbolt_freelist_type: str = "array"
    experimental_enable_lease_checkpoint: bool = False
    experimental_enable_lease_checkpoint_persist: bool = False
    experimental_snapshot_catchup_entries: int = 5000
    experimental_lease_checkpoint_interval: float = 300.0  # petcd: etcd has no such flag
    experimental_compaction_batch_limit: int = 1000
    experimental_peer_skip_client_san_verification: bool = False
    experimental_watch_progress_notify_interval: float = 600.0
    experimental_warning_apply_duration: float = 0.1
    # unsafe
    force_new_cluster: bool = False
    unsafe_no_fsync: bool = False
    # etcd 3.5 additions (accepted; most have no effect on one member)
    listen_client_http_urls: list[str] = _urls()
    backend_bbolt_freelist_type: str = "map"
    socket_reuse_port: bool = False
    socket_reuse_address: bool = False
    raft_read_timeout: float = 5.0
    raft_write_timeout: float = 5.0
    v2_deprecation: str = "not-yet"
    client_cert_file: str = ""
    client_key_file: str = ""
    peer_client_cert_file: str = ""
    peer_client_key_file: str = ""
    self_signed_cert_validity: int = 1
    tls_min_version: str = "TLS1.2"
    tls_max_version: str = ""
    enable_log_rotation: bool = False
    log_rotation_config_json: str = (
        '{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}'
    )
    experimental_enable_distributed_tracing: bool = False
    experimental_distributed_tracing_address: str = "localhost:4317"
    experimental_distributed_tracing_service_name: str = "etcd"
    experimental_distributed_tracing_instance_id: str = ""
    experimental_compact_hash_check_enabled: bool = False
    experimental_compact_hash_check_time: float = 60.0
    experimental_downgrade_check_time: float = 5.0
    experimental_memory_mlock: bool = False
    experimental_txn_mode_write_with_shared_buffer: bool = True
    experimental_bootstrap_defrag_threshold_megabytes: int = 0

    # Flags given explicitly (command line, environment or config file).
    flags_set: set[str] = field(default_factory=set, compare=False, repr=False)
    # (level, msg, fields) produced while parsing, for logging once logging is set up.
    notices: list[tuple[str, str, dict[str, Any]]] = field(
        default_factory=list, compare=False, repr=False
    )

    # -- derived values -----------------------------------------------------------------

    def effective_data_dir(self) -> str:
        return self.data_dir or f"{self.name}.etcd"

    def member_dir(self) -> str:
        return os.path.join(self.effective_data_dir(), "member")

    def effective_wal_dir(self) -> str:
        return self.wal_dir or os.path.join(self.member_dir(), "wal")

    def snap_dir(self) -> str:
        return os.path.join(self.member_dir(), "snap")

    def effective_quota_bytes(self) -> int:
        """Backend quota in bytes; a negative --quota-backend-bytes disables the quota,
        reported as 2**63-1 so that size comparisons never trip."""
        if self.quota_backend_bytes < 0:
            return 2**63 - 1
        return self.quota_backend_bytes or DEFAULT_QUOTA_BYTES

    def election_ticks(self) -> int:
        return self.election_timeout // self.heartbeat_interval

    def effective_log_level(self) -> str:
        return "debug" if self.debug else self.log_level

    def listen_client_addrs(self) -> list[URL]:
        return [parse_url(u) for u in self.listen_client_urls]

    def listen_peer_addrs(self) -> list[URL]:
        return [parse_url(u) for u in self.listen_peer_urls]

    def advertise_client_addrs(self) -> list[URL]:
        return [parse_url(u) for u in self.advertise_client_urls]

    def advertise_peer_addrs(self) -> list[URL]:
        return [parse_url(u) for u in self.initial_advertise_peer_urls]

    def listen_metrics_addrs(self) -> list[URL]:
        return [parse_url(u) for u in self.listen_metrics_urls]

    # gRPC keepalive settings in the milliseconds grpc channel options use
    @property
    def grpc_keepalive_min_time_ms(self) -> int:
        return round(self.grpc_keepalive_min_time * 1000)

    @property
    def grpc_keepalive_interval_ms(self) -> int:
        return round(self.grpc_keepalive_interval * 1000)

    @property
    def grpc_keepalive_timeout_ms(self) -> int:
        return round(self.grpc_keepalive_timeout * 1000)

    def auto_compaction_retention_value(self) -> float | int:
        """Seconds in periodic mode, a revision count in revision mode."""
        return parse_compaction_retention(self.auto_compaction_mode, self.auto_compaction_retention)

    def initial_cluster_map(self) -> dict[str, list[str]]:
        """--initial-cluster as {name: [peer URLs]} (etcd's types.NewURLsMap)."""
        return parse_initial_cluster(self.initial_cluster)

    def check_bootstrap(self) -> dict[str, list[str]]:
        """First-boot checks of --initial-cluster against --name and the advertised peer
        URLs (etcd ignores --initial-* once the member has data). Returns the map."""
        members = self.initial_cluster_map()
        mine = members.get(self.name)
        if mine is None:
            raise ConfigError(
                f'couldn\'t find local name "{self.name}" in the initial cluster configuration'
            )
        ap = sorted(self.initial_advertise_peer_urls)
        if sorted(mine) != ap:
            extra = next((u for u in sorted(mine) if u not in ap), sorted(mine)[0])
            if len(mine) != len(ap):
                why = f"len({_goq_list(ap)}) != len({_goq_list(sorted(mine))})"
            else:
                why = f'resolved urls: "{",".join(ap)}" != "{",".join(sorted(mine))}"'
            raise ConfigError(
                f"--initial-cluster has {self.name}={extra} but missing from "
                f"--initial-advertise-peer-urls={','.join(ap)} ({why})"
            )
        return members

    def warn(self, msg: str, **fields: Any) -> None:
        self.notices.append(("warn", msg, fields))

    def info(self, msg: str, **fields: Any) -> None:
        self.notices.append(("info", msg, fields))


# -- "not supported yet" ------------------------------------------------------------------
# Features petcd does not implement yet, where silently ignoring the flag would weaken
# security or lose data. Delete a line here when the feature lands.


def _client_urls(c: ServerConfig) -> list[str]:
    return c.listen_client_urls + c.advertise_client_urls + c.listen_client_http_urls


def _client_tls_on(c: ServerConfig) -> bool:
    """Some client listener serves TLS."""
    return any(u.startswith("https://") for u in c.listen_client_urls)


def _mixed_client_address(c: ServerConfig) -> bool:
    schemes: dict[str, set[str]] = {}
    for u in c.listen_client_urls:
        p = parse_url(u)
        schemes.setdefault(p.hostport, set()).add(p.scheme)
    return any(len(s) > 1 for s in schemes.values())


NOT_SUPPORTED_YET: tuple[tuple[str, Callable[[ServerConfig], bool]], ...] = (
    # gRPC's TLS cannot check a CRL or a hostname on the client certificate
    ("client certificate revocation lists (--client-crl-file)", lambda c: bool(c.client_crl_file)),
    ("--client-cert-allowed-hostname", lambda c: bool(c.client_cert_allowed_hostname)),
    # nor be given the ciphers or TLS versions (peer TLS can)
    ("--cipher-suites with client TLS", lambda c: bool(c.cipher_suites) and _client_tls_on(c)),
    ("--tls-min-version/--tls-max-version other than TLS1.2..TLS1.3 with client TLS",
     lambda c: _client_tls_on(c) and (c.tls_min_version not in ("", "TLS1.2") or c.tls_max_version
                                      not in ("", "TLS1.3"))),
    ("unix socket client URLs (unix:// or unixs://)",
     lambda c: any(u.startswith(("unix://", "unixs://")) for u in _client_urls(c))),
    # etcd splits one port between plain and TLS connections; a gRPC port is one or the other
    ("http and https client URLs on the same address", _mixed_client_address),
    ("--listen-client-http-urls", lambda c: bool(c.listen_client_http_urls)),
    ("unix metrics URLs (--listen-metrics-urls)",
     lambda c: any(not u.startswith(("http://", "https://")) for u in c.listen_metrics_urls)),
    ("--auth-token other than 'simple'", lambda c: c.auth_token.split(",", 1)[0] != "simple"),
    ("discovery (--discovery)", lambda c: bool(c.discovery)),
    ("DNS SRV discovery (--discovery-srv)", lambda c: bool(c.discovery_srv)),
    ("v2 proxy mode (--proxy other than 'off')", lambda c: c.proxy != "off"),
)


def check_not_supported(cfg: ServerConfig) -> None:
    for what, pred in NOT_SUPPORTED_YET:
        if pred(cfg):
            raise ConfigError(f"{what} is not supported yet by petcd")


# -- helpers --------------------------------------------------------------------------------


def _goq_list(items: Sequence[str]) -> str:
    """Go's %q formatting of a []string."""
    return "[" + " ".join(f'"{s}"' for s in items) + "]"


def parse_initial_cluster(s: str) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for part in s.split(",") if s else []:
        name, _, url = part.partition("=")
        members.setdefault(name, []).append(url)
    try:
        return {name: parse_url_list(urls) for name, urls in members.items()}
    except FlagValueError as e:
        raise ConfigError(f"error setting up initial cluster: {e}") from None


_ATOI = re.compile(r"^[+-]?[0-9]+$")


def parse_compaction_retention(mode: str, retention: str) -> float | int:
    """etcd's parseCompactionRetention: a bare integer means hours (periodic) or a revision
    count (revision); anything else must be a Go duration."""
    if _ATOI.match(retention) and int(retention) >= 0:
        h = int(retention)
        return h if mode == "revision" else h * 3600.0
    try:
        seconds = go_parse_duration(retention)
    except FlagValueError as e:
        raise ConfigError(f"error parsing CompactionRetention: {e}") from None
    return round(seconds * 1e9) if mode == "revision" else seconds


def version_text() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "i386": "386"}.get(machine, machine)
    return (
        f"etcd Version: {ETCD_VERSION}\n"
        f"Git SHA: petcd-{PETCD_VERSION}\n"
        f"Go Version: python{platform.python_version()}\n"
        f"Go OS/Arch: {sys.platform}/{arch}\n"
    )


USAGE_TEXT = """Usage:

  etcd [flags]
    Start an etcd server.

  etcd --version
    Show the version of etcd.

  etcd -h | --help
    Show the help information about etcd.

  etcd --config-file
    Path to the server configuration file. Note that if a configuration file is provided, other command line flags and environment variables will be ignored.

  etcd gateway
    Run the stateless pass-through etcd TCP connection forwarding proxy.

  etcd grpc-proxy
    Run the stateless etcd v3 gRPC L7 reverse proxy.
"""


def _shown_default(spec: FlagSpec, defaults: ServerConfig) -> str:
    if spec.shown_default is not None:
        return spec.shown_default
    v = getattr(defaults, spec.attr)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format_duration(v)
    if isinstance(v, list):
        return ",".join(v)
    return str(v)


def flags_text() -> str:
    """The flag reference printed by --help, generated from the FLAGS table."""
    defaults = ServerConfig()
    out: list[str] = []
    section = None
    for spec in FLAGS:
        if spec.hidden:
            continue
        if spec.section != section:
            section = spec.section
            out.append(f"\n{section}:")
        out.append(f"  --{spec.name} '{_shown_default(spec, defaults)}'")
        out.append(f"    {spec.help}")
    out.append("\nCAUTIOUS with unsafe flag! It may break the guarantees given by the consensus protocol!")
    return "\n".join(out) + "\n"


# -- parsing ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> ServerConfig:
    """Build and validate the server configuration like `etcd` 3.4 does.

    Raises ConfigError for invalid input and EarlyExit for --help/--version.
    """
    cfg = ServerConfig()
    scanned = scan_args(argv)
    for spec, raw in scanned.values:
        _set_from_string(cfg, spec, raw, lambda err, s=spec, r=raw: flag_error_text(s, r, err), 2)
    if isinstance(scanned.error, HelpRequested):
        raise EarlyExit(0, stdout=flags_text(), stderr=USAGE_TEXT)
    if scanned.error is not None:
        raise ConfigError(str(scanned.error), exit_code=2, show_usage=True)
    if scanned.args:
        raise ConfigError(f"'{scanned.args[0]}' is not a valid flag")
    if cfg.print_version:
        raise EarlyExit(0, stdout=version_text())

    config_file = cfg.config_file or environ.get("ETCD_CONFIG_FILE", "")
    if config_file:
        cfg = load_config_file(config_file)
        cfg.info(
            "loaded server configuration, other configuration command line flags and "
            "environment variables will be ignored if provided",
            path=config_file,
        )
    else:
        cfg.flags_set.update(scanned.set_names)
        _apply_env(cfg, scanned.set_names, environ)
        # Listening on explicit addresses requires advertising explicit ones.
        if "listen-client-urls" in cfg.flags_set and "advertise-client-urls" not in cfg.flags_set:
            if not _may_be_proxy(cfg):
                cfg.advertise_client_urls = []
        if (cfg.discovery or cfg.discovery_srv or cfg.discovery_srv_name) and (
            "initial-cluster" not in cfg.flags_set
        ):
            cfg.initial_cluster = ""
    validate(cfg)
    finish(cfg)
    return cfg


def _set_from_string(
    cfg: ServerConfig, spec: FlagSpec, raw: str, describe: Callable[[FlagValueError], str], code: int
) -> None:
    if spec.kind == "ignored":
        cfg.warn(f'flag "-{spec.name}" is no longer supported - ignoring.')
        return
    try:
        value = spec.convert(raw, getattr(cfg, spec.attr))
    except FlagValueError as err:
        raise ConfigError(describe(err), exit_code=code, show_usage=code == 2) from None
    setattr(cfg, spec.attr, value)


def _apply_env(cfg: ServerConfig, cmdline: set[str], environ: Mapping[str, str]) -> None:
    """etcd's flags.SetFlagsFromEnv: ETCD_<FLAG> for flags not on the command line."""
    used: set[str] = set()
    shadowed = {FLAGS_BY_NAME[n].env for n in cmdline}
    error: str | None = None
    for spec in sorted(FLAGS, key=lambda f: f.name):
        if spec.name in cmdline:
            continue
        key = spec.env
        val = environ.get(key, "")
        if not val:
            continue
        used.add(key)
        cfg.flags_set.add(spec.name)
        try:
            _set_from_string(cfg, spec, val, lambda e, k=key, v=val: f'invalid value "{v}" for {k}: {e}', 1)
        except ConfigError as e:
            error = e.message  # etcd keeps going and reports the last failure
            continue
        cfg.info("recognized and used environment variable", **{"variable-name": key, "variable-value": val})
    for key, val in environ.items():
        if key in used:
            continue
        if key in shadowed:
            if ENV_SHADOW_IS_FATAL:
                raise ConfigError(
                    f'conflicting environment variable "{key}" is shadowed by corresponding '
                    "command-line flag (either unset environment variable or disable flag)"
                )
            cfg.warn("recognized environment variable, but unused: shadowed by corresponding flag",
                     **{"environment-variable": key})
            continue
        if key.startswith("ETCD_"):
            cfg.warn("unrecognized environment variable", **{"environment-variable": f"{key}={val}"})
    if error is not None:
        raise ConfigError(error)


def _may_be_proxy(cfg: ServerConfig) -> bool:
    return cfg.proxy != "off" or (bool(cfg.discovery) and cfg.discovery_fallback == "proxy")


# -- config file ----------------------------------------------------------------------------

_GO_TYPES = {
    "string": "string", "choice": "string", "bool": "bool", "uint": "uint", "uint64": "uint64",
    "int": "int", "int64": "int64", "uint32": "uint32", "duration": "time.Duration",
    "urls": "string", "cors": "string", "ustrings": "[]string", "strings": "[]string",
}
_INT_BOUNDS = {
    "uint": (0, 2**64), "uint64": (0, 2**64), "uint32": (0, 2**32),
    "int": (-(2**63), 2**63), "int64": (-(2**63), 2**63), "duration": (-(2**63), 2**63),
}
_TLS_KEYS = {
    "cert-file": "cert_file", "key-file": "key_file", "client-cert-auth": "client_cert_auth",
    "trusted-ca-file": "trusted_ca_file", "auto-tls": "auto_tls", "crl-file": "client_crl_file",
    "allowed-hostname": "client_cert_allowed_hostname",
}
_PEER_TLS_KEYS = {
    "cert-file": "peer_cert_file", "key-file": "peer_key_file",
    "client-cert-auth": "peer_client_cert_auth", "trusted-ca-file": "peer_trusted_ca_file",
    "auto-tls": "peer_auto_tls", "crl-file": "peer_crl_file",
    "allowed-cn": "peer_cert_allowed_cn", "allowed-hostname": "peer_cert_allowed_hostname",
}
_SELECTIVE_FILE_ERRORS = {"discovery-fallback": "discovery-fallback flag", "proxy": "proxyFlag"}


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _yaml_value(spec: FlagSpec, v: Any, current: Any) -> Any:
    kind = spec.kind

    def bad(what: str | None = None) -> ConfigError:
        what = what or _json_kind(v)
        gotype = "string" if spec.name == "host-whitelist" else _GO_TYPES[kind]
        return ConfigError(
            "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
            f"{what} into Go struct field configYAML.{spec.name} of type {gotype}"
        )

    if kind in ("string", "choice"):
        if not isinstance(v, str):
            raise bad()
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise bad()
        return v
    if kind in _INT_BOUNDS:
        if kind == "duration" and isinstance(v, str):  # petcd extension: "5s" as well as ns
            try:
                return go_parse_duration(v)
            except FlagValueError:
                raise bad() from None
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(f"number {v}" if isinstance(v, float) else None)
        lo, hi = _INT_BOUNDS[kind]
        if not lo <= v < hi:
            raise bad(f"number {v}")
        return v / 1e9 if kind == "duration" else v
    if kind in ("urls", "cors"):
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        if not isinstance(v, str):
            raise bad()
        if v == "":
            return current
        try:
            return parse_url_list(v) if not (kind == "cors" and v == "*") else ["*"]
        except FlagValueError as e:
            raise ConfigError(f"unexpected error setting up {spec.name}: {e}") from None
    if kind in ("ustrings", "strings"):
        if isinstance(v, str):
            items = v.split(",")
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            items = v
        else:
            raise bad()
        return sorted(set(items)) if kind == "ustrings" else list(items)
    raise bad()


def load_config_file(path: str) -> ServerConfig:
    """Read etcd's YAML config file (keys are the flag names, as in etcd.conf.yml.sample)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        reason = (e.strerror or str(e)).lower()
        raise ConfigError(f"open {path}: {reason}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"error converting YAML to JSON: yaml: {e}".replace("\n", " ")) from None
    cfg = ServerConfig(config_file=path)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(
            "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
            f"{_json_kind(doc)} into Go value of type embed.configYAML"
        )
    default_cluster = cfg.initial_cluster
    for key, v in doc.items():
        key = str(key)
        if key in ("client-transport-security", "peer-transport-security"):
            table = _TLS_KEYS if key.startswith("client") else _PEER_TLS_KEYS
            for sub, sv in (v or {}).items() if isinstance(v, dict) else ():
                attr = table.get(str(sub))
                if attr is not None and sv is not None:
                    want = bool if isinstance(getattr(cfg, attr), bool) else str
                    if not isinstance(sv, want):
                        raise ConfigError(
                            "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
                            f"{_json_kind(sv)} into Go struct field securityConfig.{key}.{sub} "
                            f"of type {want.__name__}"
                        )
                    setattr(cfg, attr, sv)
            continue
        spec = FLAGS_BY_NAME.get(key)
        if spec is None or spec.kind == "ignored" or key in ("config-file", "version"):
            cfg.warn("unknown key in configuration file ignored", key=key, path=path)
            continue
        if v is None:  # YAML null leaves the default, as Go's JSON decoding does
            continue
        value = _yaml_value(spec, v, getattr(cfg, spec.attr))
        if spec.kind == "choice" and key in _SELECTIVE_FILE_ERRORS and value not in spec.choices:
            raise ConfigError(f"unexpected error setting up {_SELECTIVE_FILE_ERRORS[key]}: invalid value")
        setattr(cfg, spec.attr, value)
        cfg.flags_set.add(key)
    if (cfg.discovery or cfg.discovery_srv) and cfg.initial_cluster == default_cluster:
        cfg.initial_cluster = ""
    if cfg.initial_cluster_state == "":
        cfg.initial_cluster_state = "new"
    return cfg


# -- validation -------------------------------------------------------------------------------


def _validate_logging(cfg: ServerConfig) -> None:
    """etcd 3.4's setupLogging checks, including the deprecated --log-output handling."""
    n1, n2 = len(cfg.log_output), len(cfg.log_outputs)
    if n1 != n2:
        if n1 > n2:
            cfg.warn("'--log-output' flag has been deprecated! Please use '--log-outputs'!")
            cfg.log_outputs = list(cfg.log_output)
        else:
            cfg.log_output = []
    else:
        if n1 > 1:
            raise ConfigError("both '--log-output' and '--log-outputs' are set; only set '--log-outputs'")
        if n1 < 1:
            raise ConfigError("either '--log-output' or '--log-outputs' flag must be set")
        if cfg.log_output == cfg.log_outputs and cfg.log_output[0] != "default":
            raise ConfigError(
                f"'--log-output={_goq_list(cfg.log_output)}' and "
                f"'--log-outputs={_goq_list(cfg.log_outputs)}' are incompatible; only set --log-outputs"
            )
        if cfg.log_output != ["default"]:
            cfg.warn(f"Deprecated '--log-output' flag is set to {_goq_list(cfg.log_output)}; "
                     "please use '--log-outputs' flag")
    if cfg.debug:
        cfg.warn("Deprecated '--debug' flag is set to true (use '--log-level=debug' instead)")
    if cfg.log_package_levels:
        cfg.warn(f"Deprecated '--log-package-levels={cfg.log_package_levels}' flag is set; "
                 "use '--logger=zap' flag instead")
    if cfg.logger not in ("capnslog", "zap"):
        raise ConfigError(f'unknown logger option "{cfg.logger}"')
    if cfg.log_level not in LOG_LEVELS:
        # etcd panics here, which exits with status 2
        raise ConfigError(f'unknown level "{cfg.log_level}"', exit_code=2)
    if cfg.logger == "capnslog":
        if len(cfg.log_outputs) != 1:
            raise ConfigError(
                f"--logger=capnslog supports only 1 value in '--log-outputs', got {_goq_list(cfg.log_outputs)}"
            )
        out = cfg.log_outputs[0]
        if out not in ("default", "stderr", "stdout"):
            raise ConfigError(f'unknown log-output "{out}" (only supports "default", "stderr", "stdout")')
    elif len(cfg.log_outputs) > 1 and "default" in cfg.log_outputs:
        raise ConfigError('multi logoutput for "default" is not supported yet')


def validate(cfg: ServerConfig) -> None:
    """etcd's embed.Config.Validate (plus etcdmain's proxy exception), same wording."""
    _validate_logging(cfg)
    for urls in (cfg.listen_peer_urls, cfg.listen_client_urls, cfg.listen_metrics_urls):
        for u in urls:
            p = parse_url(u)
            if p.scheme in ("unix", "unixs"):
                continue
            if not is_bind_host(p.host):
                raise ConfigError(f"expected IP in URL for binding ({u})")
    for flag, urls in (
        ("--initial-advertise-peer-urls", cfg.initial_advertise_peer_urls),
        ("--advertise-client-urls", cfg.advertise_client_urls),
    ):
        for u in urls:
            if parse_url(u).host == "":
                raise ConfigError(
                    f'{flag} "{",".join(urls)}" must be "host:port" (unexpected empty host ({u}))'
                )
    if cfg.initial_cluster_state not in ("new", "existing"):
        raise ConfigError(f'unexpected clusterState "{cfg.initial_cluster_state}"')
    if sum(bool(x) for x in (cfg.discovery, cfg.initial_cluster, cfg.discovery_srv)) > 1:
        raise ConfigError(
            'multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", '
            '"discovery" or "discovery-srv"'
        )
    tick, election = cfg.heartbeat_interval, cfg.election_timeout
    if tick <= 0:
        raise ConfigError(f"--heartbeat-interval must be >0 (set to {tick}ms)")
    if election <= 0:
        raise ConfigError(f"--election-timeout must be >0 (set to {election}ms)")
    if 5 * tick > election:
        raise ConfigError(
            f"--election-timeout[{election}ms] should be at least as 5 times as "
            f"--heartbeat-interval[{tick}ms]"
        )
    if election > MAX_ELECTION_MS:
        raise ConfigError(
            f"--election-timeout[{election}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
        )
    if cfg.listen_client_urls and not cfg.advertise_client_urls and not _may_be_proxy(cfg):
        raise ConfigError("--advertise-client-urls is required when --listen-client-urls is set explicitly")
    if cfg.auto_compaction_mode not in ("", "periodic", "revision"):
        raise ConfigError(f'unknown auto-compaction-mode "{cfg.auto_compaction_mode}"')
    if cfg.experimental_enable_lease_checkpoint_persist and not cfg.experimental_enable_lease_checkpoint:
        raise ConfigError(
            "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"
        )
    if cfg.experimental_enable_lease_checkpoint and not cfg.experimental_enable_lease_checkpoint_persist:
        cfg.warn("Detected that checkpointing is enabled without persistence. "
                 "Consider enabling experimental-enable-lease-checkpoint-persist")


def finish(cfg: ServerConfig) -> None:
    """What etcdmain does after validation, then petcd's own refusals and warnings."""
    if cfg.name != "default" and cfg.initial_cluster == ServerConfig.initial_cluster:
        # `etcd --name foo` alone still bootstraps a one-member cluster named foo
        cfg.initial_cluster = ",".join(f"{cfg.name}={u}" for u in cfg.initial_advertise_peer_urls)
    if not cfg.data_dir:
        cfg.data_dir = f"{cfg.name}.etcd"
        cfg.warn("'data-dir' was empty; using default", **{"data-dir": cfg.data_dir})
    cfg.auto_compaction_retention_value()  # raises ConfigError when malformed
    check_not_supported(cfg)
    if cfg.quota_backend_bytes > MAX_QUOTA_BYTES:
        cfg.warn("quota exceeds the maximum value", **{
            "quota-size-bytes": cfg.quota_backend_bytes, "quota-maximum-size-bytes": MAX_QUOTA_BYTES})
    if cfg.enable_v2 or cfg.experimental_enable_v2v3:
        cfg.warn("the v2 API is not served yet by petcd; --enable-v2 has no effect")
