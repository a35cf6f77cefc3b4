"""The server command line: Go flag syntax, ETCD_* variables, config file, validation, logging."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import pytest

from petcd import log
from petcd.cli import main as cli_main
from petcd.cli.config import (
    NOT_SUPPORTED_YET,
    ConfigError,
    EarlyExit,
    ServerConfig,
    flags_text,
    parse_args,
    version_text,
)
from petcd.cli.flags import FLAGS, FLAGS_BY_NAME, go_parse_duration, go_parse_uint, parse_url

ETCD_BIN = "/usr/bin/etcd"
HELP_COPY = "/tmp/etcd-help.txt"


def parse(*argv: str, env: dict[str, str] | None = None) -> ServerConfig:
    return parse_args(list(argv), env or {})


def err(*argv: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse(*argv, env=env)
    return ei.value


def etcd_help_text() -> str:
    if os.path.exists(ETCD_BIN):
        r = subprocess.run([ETCD_BIN, "--help"], capture_output=True, text=True, timeout=10)
        return r.stdout
    if os.path.exists(HELP_COPY):
        with open(HELP_COPY) as f:
            return f.read()
    pytest.skip("neither /usr/bin/etcd nor /tmp/etcd-help.txt is available to read etcd's help")


def help_defaults() -> dict[str, str]:
    """flag -> default as printed by `etcd --help` (quoted or bare)."""
    out = {}
    for m in re.finditer(r"^  --([a-z0-9.-]+) (?:'([^']*)'|(\S+))\s*$", etcd_help_text(), re.M):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    assert len(out) > 70, "could not parse etcd's help text"
    return out


# -- defaults ---------------------------------------------------------------------------


def test_no_flags_gives_etcd_defaults():
    cfg = parse()
    assert cfg.name == "default"
    assert cfg.data_dir == "default.etcd"
    assert cfg.listen_client_urls == ["http://localhost:2379"]
    assert cfg.advertise_client_urls == ["http://localhost:2379"]
    assert cfg.listen_peer_urls == ["http://localhost:2380"]
    assert cfg.initial_cluster == "default=http://localhost:2380"
    assert (cfg.snapshot_count, cfg.heartbeat_interval, cfg.election_timeout) == (100000, 100, 1000)
    assert (cfg.max_request_bytes, cfg.max_txn_ops, cfg.quota_backend_bytes) == (1572864, 128, 0)
    assert cfg.effective_quota_bytes() == 2 * 1024**3
    assert (cfg.auto_compaction_mode, cfg.auto_compaction_retention) == ("periodic", "0")
    assert cfg.strict_reconfig_check is True and cfg.enable_v2 is False
    assert cfg.auth_token == "simple" and cfg.initial_cluster_token == "etcd-cluster"
    assert cfg.grpc_keepalive_min_time == 5.0 and cfg.grpc_keepalive_interval == 7200.0
    assert cfg.grpc_keepalive_timeout_ms == 20000
    assert (cfg.logger, cfg.log_outputs, cfg.log_level) == ("capnslog", ["default"], "info")
    assert ("warn", "'data-dir' was empty; using default", {"data-dir": "default.etcd"}) in cfg.notices


def test_defaults_match_etcd_help():
    """Feeding etcd's documented default back through our parser gives our default."""
    defaults = ServerConfig()
    special = {"data-dir": "", "max-concurrent-streams": 2**32 - 1, "backend-batch-interval": 0.0}
    for name, shown in help_defaults().items():
        spec = FLAGS_BY_NAME[name]
        ours = getattr(defaults, spec.attr)
        if name in special:
            expected = special[name]
        elif shown == "" and isinstance(ours, list):
            expected = []
        else:
            expected = spec.convert(shown, ours)
        assert ours == expected, f"--{name}: etcd says {shown!r}, petcd has {ours!r}"


def test_every_flag_in_etcd_help_is_accepted():
    samples = {"string": "x", "urls": "http://127.0.0.1:2390", "cors": "http://a.example:1"}
    for name, shown in help_defaults().items():
        spec = FLAGS_BY_NAME.get(name)
        assert spec is not None, f"--{name} from etcd --help is unknown to petcd"
        value = shown or samples.get(spec.kind, "x")
        if name in ("data-dir", "max-concurrent-streams", "backend-batch-interval"):
            value = {"data-dir": "d", "max-concurrent-streams": "7", "backend-batch-interval": "1s"}[name]
        for argv in ([f"--{name}={value}"], [f"-{name}", value] if not spec.is_bool else [f"-{name}"]):
            try:
                cfg = parse("--advertise-client-urls=http://localhost:2379", *argv)
            except ConfigError as e:
                # a few flags are refused by petcd on purpose; never as unknown or malformed
                assert "not supported yet" in e.message, (argv, e.message)
                continue
            assert spec.attr in vars(cfg)


def test_flag_table_matches_config_fields():
    fields = set(vars(ServerConfig()))
    for spec in FLAGS:
        if spec.kind != "ignored":
            assert spec.attr in fields, spec.name
    assert "--name 'default'" in flags_text() and "--data-dir '${name}.etcd'" in flags_text()


# -- syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--name", "n1"],
        ["--name=n1"],
        ["-name", "n1"],
        ["-name=n1"],
    ],
)
def test_flag_forms(argv):
    assert parse(*argv).name == "n1"


def test_bool_forms():
    assert parse("--enable-pprof").enable_pprof is True
    assert parse("-enable-pprof=true").enable_pprof is True
    assert parse("--strict-reconfig-check=false").strict_reconfig_check is False
    assert parse("--strict-reconfig-check=0").strict_reconfig_check is False
    assert parse("--strict-reconfig-check=F").strict_reconfig_check is False
    # `--flag false` is a flag followed by a stray argument, as in Go
    e = err("--strict-reconfig-check", "false")
    assert (e.message, e.exit_code) == ("'false' is not a valid flag", 1)
    e = err("--enable-v2=yes")
    assert e.message == 'invalid boolean value "yes" for -enable-v2: parse error'
    assert (e.exit_code, e.show_usage) == (2, True)


def test_value_may_start_with_dash_and_last_repeat_wins():
    assert parse("--name", "-x").name == "-x"
    assert parse("--name", "a", "--name", "b").name == "b"
    cfg = parse(
        "--listen-client-urls", "http://127.0.0.1:1",
        "--listen-client-urls", "http://127.0.0.1:3, http://127.0.0.1:2",
        "--advertise-client-urls", "http://127.0.0.1:3,http://127.0.0.1:3",
    )  # fmt: skip
    assert cfg.listen_client_urls == ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    assert cfg.advertise_client_urls == ["http://127.0.0.1:3"]
    assert [tuple(u) for u in cfg.listen_client_addrs()] == [
        ("http", "127.0.0.1", 2),
        ("http", "127.0.0.1", 3),
    ]


@pytest.mark.parametrize(
    "argv,message,code",
    [
        (["--bogus"], "flag provided but not defined: -bogus", 2),
        (["--name"], "flag needs an argument: -name", 2),
        (["---name", "x"], "bad flag syntax: ---name", 2),
        (["--snapshot-count=abc"], 'invalid value "abc" for flag -snapshot-count: parse error', 2),
        (["--snapshot-count", "-1"], 'invalid value "-1" for flag -snapshot-count: parse error', 2),
        (
            ["--snapshot-count=99999999999999999999999"],
            'invalid value "99999999999999999999999" for flag -snapshot-count: value out of range',
            2,
        ),
        (["--grpc-keepalive-interval=5"], 'invalid value "5" for flag -grpc-keepalive-interval: parse error', 2),
        (
            ["--max-concurrent-streams=-1"],
            'invalid value "-1" for flag -max-concurrent-streams: strconv.ParseUint: parsing "-1": invalid syntax',
            2,
        ),
        (["--initial-cluster-state", "foo"], 'invalid value "foo" for flag -initial-cluster-state: invalid value', 2),
        (["--proxy=bar"], 'invalid value "bar" for flag -proxy: invalid value', 2),
        (
            ["--listen-client-urls", "foo"],
            'invalid value "foo" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: foo',
            2,
        ),
        (
            ["--listen-client-urls", "http://127.0.0.1"],
            'invalid value "http://127.0.0.1" for flag -listen-client-urls: URL address does not have the form "host:port": http://127.0.0.1',
            2,
        ),
        (
            ["--listen-peer-urls", "http://127.0.0.1:1/p"],
            'invalid value "http://127.0.0.1:1/p" for flag -listen-peer-urls: URL must not contain a path: http://127.0.0.1:1/p',
            2,
        ),
        (["extra"], "'extra' is not a valid flag", 1),
        (["-"], "'-' is not a valid flag", 1),
        (["--", "--version"], "'--version' is not a valid flag", 1),
        (["--cluster-active-size", "5"], "'5' is not a valid flag", 1),
    ],
)
def test_syntax_errors(argv, message, code):
    e = err(*argv)
    assert (e.message, e.exit_code, e.show_usage) == (message, code, code == 2)


def test_first_error_in_argument_order_wins():
    assert err("--snapshot-count=x", "--bogus").message.startswith('invalid value "x"')
    assert err("--bogus", "--snapshot-count=x").message == "flag provided but not defined: -bogus"


def test_ignored_legacy_flags_warn():
    cfg = parse("--v", "-vv=3")
    warnings = [m for lvl, m, _ in cfg.notices if lvl == "warn"]
    assert 'flag "-v" is no longer supported - ignoring.' in warnings
    assert 'flag "-vv" is no longer supported - ignoring.' in warnings


def test_go_number_and_duration_syntax():
    assert [go_parse_uint(s) for s in ("10", "0x10", "010", "0b11", "1_000")] == [10, 16, 8, 3, 1000]
    assert parse("--quota-backend-bytes=-1").effective_quota_bytes() == 2**63 - 1
    assert [go_parse_duration(s) for s in ("5s", "1h30m", "1.5ms", "0", "-2m")] == [5, 5400, 0.0015, 0, -120]
    assert parse("--grpc-keepalive-min-time", "250ms").grpc_keepalive_min_time_ms == 250
    with pytest.raises(ValueError, match=r'time: missing unit in duration "1"'):
        go_parse_duration("1")


def test_url_parsing():
    assert tuple(parse_url("http://[::1]:2379")) == ("http", "::1", 2379)
    assert tuple(parse_url(" HTTP://example.com:80 ")) == ("http", "example.com", 80)
    assert str(parse_url("unix://localhost:1")) == "unix://localhost:1"


def test_help_and_version():
    with pytest.raises(EarlyExit) as ei:
        parse("-h")
    assert ei.value.exit_code == 0 and "--listen-client-urls" in ei.value.stdout
    assert ei.value.stderr.startswith("Usage:")
    with pytest.raises(EarlyExit) as ei:
        parse("--help=false")  # Go treats any -help as a request for help
    with pytest.raises(EarlyExit) as ei:
        parse("-version")
    lines = ei.value.stdout.splitlines()
    assert lines[0] == "etcd Version: 3.4.23"
    assert re.fullmatch(r"Git SHA: petcd-\d+\.\d+\.\d+", lines[1])
    assert lines[2] == f"Go Version: python{sys.version.split()[0]}"
    assert re.fullmatch(r"Go OS/Arch: \w+/\w+", lines[3])
    assert ei.value.stdout == version_text()
    # --version still needs a syntactically valid command line, as in etcd
    assert err("--version", "--bogus").exit_code == 2


# -- environment ------------------------------------------------------------------------


def test_env_mapping():
    cfg = parse(env={"ETCD_HEARTBEAT_INTERVAL": "50", "ETCD_ELECTION_TIMEOUT": "500",
                     "ETCD_SNAPSHOT_COUNT": "5000", "ETCD_ENABLE_PPROF": "true",
                     "ETCD_INITIAL_CLUSTER_TOKEN": "tkn", "ETCD_NAME": ""})  # fmt: skip
    assert (cfg.heartbeat_interval, cfg.election_timeout, cfg.snapshot_count) == (50, 500, 5000)
    assert cfg.enable_pprof is True and cfg.initial_cluster_token == "tkn"
    assert cfg.name == "default"  # empty variables are ignored
    assert ("info", "recognized and used environment variable",
            {"variable-name": "ETCD_SNAPSHOT_COUNT", "variable-value": "5000"}) in cfg.notices  # fmt: skip
    assert all(spec.env == "ETCD_" + spec.name.upper().replace("-", "_") for spec in FLAGS)


def test_env_unknown_variable_warns():
    cfg = parse(env={"ETCD_FOO": "1", "ETCDCTL_API": "3", "HOME": "/root"})
    warns = [(m, f) for lvl, m, f in cfg.notices if lvl == "warn"]
    assert ("unrecognized environment variable", {"environment-variable": "ETCD_FOO=1"}) in warns
    assert not any("ETCDCTL_API" in str(f) for _, f in warns)


def test_env_shadowed_by_flag_is_fatal_like_etcd_34():
    e = err("--name", "bar", env={"ETCD_NAME": "foo"})
    assert e.exit_code == 1
    assert e.message == (
        'conflicting environment variable "ETCD_NAME" is shadowed by corresponding command-line '
        "flag (either unset environment variable or disable flag)"
    )


def test_env_invalid_value():
    e = err(env={"ETCD_SNAPSHOT_COUNT": "abc"})
    assert (e.message, e.exit_code) == ('invalid value "abc" for ETCD_SNAPSHOT_COUNT: parse error', 1)


def test_env_listen_client_urls_needs_advertise():
    e = err(env={"ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:2399"})
    assert e.message == "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    cfg = parse(env={"ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:2399",
                     "ETCD_ADVERTISE_CLIENT_URLS": "http://127.0.0.1:2399"})  # fmt: skip
    assert cfg.advertise_client_urls == ["http://127.0.0.1:2399"]


# -- config file ------------------------------------------------------------------------

SAMPLE = """\
name: 'infra9'
data-dir: {data}
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: http://127.0.0.1:2380
listen-client-urls: http://127.0.0.1:2379,http://127.0.0.1:22379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: http://127.0.0.1:2380
advertise-client-urls: http://127.0.0.1:2379
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster:
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
proxy-failure-wait: 5000
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file:
  auto-tls: false
debug: false
logger: zap
log-outputs: [stderr]
force-new-cluster: false
grpc-keepalive-interval: 3600000000000
auto-compaction-mode: periodic
auto-compaction-retention: "1"
"""


def test_config_file_sample(tmp_path):
    path = tmp_path / "etcd.conf.yml"
    path.write_text(SAMPLE.format(data=tmp_path / "data"))
    env = {"ETCD_CONFIG_FILE": str(path), "ETCD_NAME": "ignored", "ETCD_BOGUS": "x"}
    cfg = parse("--name", "also-ignored", env=env)
    assert cfg.name == "infra9" and cfg.data_dir == str(tmp_path / "data")
    assert cfg.snapshot_count == 10000 and cfg.strict_reconfig_check is False
    assert cfg.listen_client_urls == ["http://127.0.0.1:22379", "http://127.0.0.1:2379"]
    assert cfg.initial_cluster == "infra9=http://127.0.0.1:2380"  # derived from the name
    assert cfg.logger == "zap" and cfg.log_outputs == ["stderr"]
    assert cfg.grpc_keepalive_interval == 3600.0
    assert cfg.auto_compaction_retention_value() == 3600.0
    assert cfg.cors == ["*"] and cfg.enable_v2 is True
    assert cfg.member_dir() == str(tmp_path / "data" / "member")
    assert cfg.effective_wal_dir() == str(tmp_path / "data" / "member" / "wal")
    assert cfg.snap_dir() == str(tmp_path / "data" / "member" / "snap")
    assert not any("ETCD_BOGUS" in str(f) for _, _, f in cfg.notices)  # env fully ignored
    assert any(m.startswith("loaded server configuration") for _, m, _ in cfg.notices)
    # the flag form wins over ETCD_CONFIG_FILE; other flags still must be well-formed
    assert parse("--config-file", str(path)).name == "infra9"
    assert err("--config-file", str(path), "--snapshot-count=zz").exit_code == 2


@pytest.mark.parametrize(
    "text,message",
    [
        ("snapshot-count: abc\n", "json: cannot unmarshal string into Go struct field configYAML.snapshot-count of type uint64"),
        ("grpc-keepalive-interval: [1]\n", "cannot unmarshal array into Go struct field configYAML.grpc-keepalive-interval of type time.Duration"),
        ("max-wals: -1\n", "cannot unmarshal number -1 into Go struct field configYAML.max-wals of type uint"),
        ("name: [\n", "error converting YAML to JSON: yaml:"),
        ("- a\n", "cannot unmarshal array into Go value of type embed.configYAML"),
        ("heartbeat-interval: 100\nelection-timeout: 200\n",
         "--election-timeout[200ms] should be at least as 5 times as --heartbeat-interval[100ms]"),
        ("listen-peer-urls: foo\n", "unexpected error setting up listen-peer-urls: URL scheme must be http, https, unix, or unixs: foo"),
        ("proxy: bad\n", "unexpected error setting up proxyFlag: invalid value"),
        ("initial-cluster-state: bad\n", 'unexpected clusterState "bad"'),
        ("client-transport-security:\n  crl-file: /x.pem\n",
         "client certificate revocation lists (--client-crl-file) is not supported yet"),
    ],
)  # fmt: skip
def test_config_file_errors(tmp_path, text, message):
    path = tmp_path / "c.yml"
    path.write_text(text)
    e = err("--config-file", str(path))
    assert message in e.message and e.exit_code == 1


def test_config_file_missing_and_empty(tmp_path):
    e = err("--config-file", str(tmp_path / "nope.yml"))
    assert e.message == f"open {tmp_path / 'nope.yml'}: no such file or directory"
    (tmp_path / "empty.yml").write_text("")
    assert parse("--config-file", str(tmp_path / "empty.yml")).name == "default"


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message,code",
    [
        (["--election-timeout", "400"], "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]", 1),
        (["--election-timeout", "60000"], "--election-timeout[60000ms] is too long, and should be set less than 50000ms", 1),
        (["--heartbeat-interval", "0"], "--heartbeat-interval must be >0 (set to 0ms)", 1),
        (["--auto-compaction-mode", "foo"], 'unknown auto-compaction-mode "foo"', 1),
        (["--auto-compaction-retention", "foo"], 'error parsing CompactionRetention: time: invalid duration "foo"', 1),
        (["--auto-compaction-retention", "-1"], 'error parsing CompactionRetention: time: missing unit in duration "-1"', 1),
        (["--log-level", "foo"], 'unknown level "foo"', 2),
        (["--logger", "foo"], 'unknown logger option "foo"', 1),
        (["--log-outputs", "stderr,stdout"], "--logger=capnslog supports only 1 value in '--log-outputs', got [\"stderr\" \"stdout\"]", 1),
        (["--logger", "zap", "--log-outputs", "default,stdout"], 'multi logoutput for "default" is not supported yet', 1),
        (["--listen-client-urls", "http://foo.com:2379", "--advertise-client-urls", "http://a:1"], "expected IP in URL for binding (http://foo.com:2379)", 1),
        (["--advertise-client-urls", "http://:2379"], '--advertise-client-urls "http://:2379" must be "host:port" (unexpected empty host (http://:2379))', 1),
        (["--listen-client-urls", "http://127.0.0.1:2379"], "--advertise-client-urls is required when --listen-client-urls is set explicitly", 1),
        (["--discovery", "http://x:1", "--initial-cluster", "a=http://127.0.0.1:1"],
         'multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", "discovery" or "discovery-srv"', 1),
        (["--experimental-enable-lease-checkpoint-persist"],
         "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint", 1),
    ],
)  # fmt: skip
def test_validation_errors(argv, message, code):
    e = err(*argv)
    assert (e.message, e.exit_code) == (message, code)


def test_valid_settings_and_derived_values(tmp_path):
    cfg = parse("--name", "s1", "--data-dir", str(tmp_path), "--wal-dir", str(tmp_path / "w"),
                "--auto-compaction-mode=revision", "--auto-compaction-retention=1000",
                "--quota-backend-bytes=1024", "--log-outputs=stderr,/tmp/x.log", "--logger=zap",
                "--heartbeat-interval=10", "--election-timeout=50")  # fmt: skip
    assert cfg.initial_cluster == "s1=http://localhost:2380"
    assert cfg.auto_compaction_retention_value() == 1000
    assert cfg.effective_quota_bytes() == 1024 and cfg.election_ticks() == 5
    assert cfg.effective_wal_dir() == str(tmp_path / "w")
    assert cfg.log_outputs == ["/tmp/x.log", "stderr"]
    assert parse("--auto-compaction-retention=5m").auto_compaction_retention_value() == 300.0
    assert parse("--debug").effective_log_level() == "debug"


def test_bootstrap_checks():
    cfg = parse("--initial-cluster", "x=http://localhost:2380")
    with pytest.raises(ConfigError, match=r'couldn\'t find local name "default" in the initial'):
        cfg.check_bootstrap()
    cfg = parse("--initial-cluster", "default=http://127.0.0.1:2381")
    with pytest.raises(ConfigError, match=r"--initial-cluster has default=http://127.0.0.1:2381 but"):
        cfg.check_bootstrap()
    assert parse().check_bootstrap() == {"default": ["http://localhost:2380"]}
    with pytest.raises(ConfigError, match="error setting up initial cluster: URL scheme"):
        parse("--initial-cluster", "foo").check_bootstrap()


# -- not supported yet ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--client-crl-file", "x"],
        ["--listen-client-urls", "https://127.0.0.1:2379,http://127.0.0.1:2379",
         "--advertise-client-urls", "https://127.0.0.1:2379"],
        ["--listen-client-urls", "https://127.0.0.1:2379", "--advertise-client-urls", "https://127.0.0.1:2379",
         "--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
        ["--listen-client-urls", "unixs://localhost:2379", "--advertise-client-urls", "https://127.0.0.1:2379"],
        ["--auth-token", "jwt,pub-key=a,priv-key=b,sign-method=RS256"],
        ["--discovery", "http://d.example:1/x"],
        ["--discovery-srv", "example.com"],
        ["--proxy", "on"],
    ],
)  # fmt: skip
def test_not_supported_yet(argv):
    e = err(*argv)
    assert e.message.endswith("is not supported yet by petcd") and e.exit_code == 1


def test_client_tls_flags_are_accepted():
    cfg = parse("--listen-client-urls", "https://127.0.0.1:2379,http://127.0.0.1:2378",
                "--advertise-client-urls", "https://127.0.0.1:2379", "--cert-file", "c.pem",
                "--key-file", "k.pem", "--trusted-ca-file", "ca.pem", "--client-cert-auth",
                "--auto-tls")  # fmt: skip
    assert cfg.client_cert_auth and cfg.auto_tls and cfg.cert_file == "c.pem"
    # ciphers only matter to peers while no client listener serves TLS
    assert parse("--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").cipher_suites


def test_single_member_only_flags_are_accepted(tmp_path):
    cfg = parse("--peer-cert-file", "p.pem", "--peer-auto-tls", "--enable-v2",
                "--experimental-initial-corrupt-check", "--metrics", "extensive",
                "--enable-pprof", "--wal-dir", str(tmp_path), "--auth-token", "simple")  # fmt: skip
    assert cfg.enable_v2 and cfg.peer_auto_tls and cfg.wal_dir == str(tmp_path)
    assert any("v2 API is not served yet" in m for _, m, _ in cfg.notices)
    assert len(NOT_SUPPORTED_YET) >= 10


# -- logging ----------------------------------------------------------------------------


def test_log_json_shape_and_levels(tmp_path, capsys):
    target = tmp_path / "etcd.log"
    log.setup("info", [str(target), "stdout"])
    try:
        lg = log.get("server")
        lg.debug("hidden", a=1)
        lg.info("ready to serve client requests", k="v", n=3, b=b"\xffx")
        lg.warning("slow", took="1.5s")
    finally:
        log.setup("info", ["stderr"])
    lines = target.read_text().splitlines()
    assert lines == capsys.readouterr().out.splitlines() and len(lines) == 2
    first = json.loads(lines[0])
    assert list(first)[:4] == ["level", "ts", "caller", "msg"]
    assert first["level"] == "info" and first["msg"] == "ready to serve client requests"
    assert (first["k"], first["n"], first["b"]) == ("v", 3, "\ufffdx")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["caller"].startswith("unit/test_cli.py:")
    assert json.loads(lines[1])["level"] == "warn"


def test_log_level_and_devnull(capsys):
    log.setup("error", ["default"])
    try:
        log.get("x").warning("nope")
        log.get("x").error("yes")
    finally:
        log.setup("info", ["stderr"])
    err_lines = capsys.readouterr().err.splitlines()
    assert [json.loads(x)["msg"] for x in err_lines] == ["yes"]
    log.setup("debug", ["/dev/null"])
    log.get("x").error("discarded")
    log.setup("info", ["stderr"])
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError):
        log.setup("loud")


# -- main -------------------------------------------------------------------------------


def test_main_version_help_and_errors(capsys):
    assert cli_main.main(["--version"], {}) == 0
    assert capsys.readouterr().out.startswith("etcd Version: 3.4.23\n")
    assert cli_main.main(["--help"], {}) == 0
    out = capsys.readouterr()
    assert "--initial-cluster-token 'etcd-cluster'" in out.out and out.err.startswith("Usage:")
    assert cli_main.main(["--bogus"], {}) == 2
    assert capsys.readouterr().err.startswith("flag provided but not defined: -bogus\nUsage:")
    assert cli_main.main(["--election-timeout=1"], {}) == 1
    line = json.loads(capsys.readouterr().err.splitlines()[0])
    assert line["msg"] == "failed to verify flags" and "election-timeout[1ms]" in line["error"]
    for sub in ("gateway", "grpc-proxy"):
        assert cli_main.main([sub, "start"], {}) == 1
        assert "not supported yet" in capsys.readouterr().err


def test_main_runs_server(monkeypatch, capsys, tmp_path):
    seen = {}

    async def serve(cfg):
        seen["cfg"] = cfg
        return 7

    fake = types.ModuleType("petcd.server.launch")
    fake.serve = serve
    monkeypatch.setitem(sys.modules, "petcd.server.launch", fake)
    try:
        code = cli_main.main(["--name", "m", "--data-dir", str(tmp_path)], {"ETCD_FOO": "1"})
    finally:
        log.setup("info", ["stderr"])
    assert code == 7 and seen["cfg"].name == "m"
    msgs = [json.loads(x)["msg"] for x in capsys.readouterr().err.splitlines()]
    assert "unrecognized environment variable" in msgs


def test_python_dash_m_version():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "petcd", "--version"], capture_output=True,
                       text=True, timeout=30, cwd=root)  # fmt: skip
    assert r.returncode == 0 and r.stdout == version_text()


# -- differential: the same bad command lines against real etcd ---------------------------

DIFF_CASES = [
    ["--bogus"],
    ["--snapshot-count=abc"],
    ["--enable-v2=yes"],
    ["--listen-client-urls", "http://127.0.0.1"],
    ["--max-concurrent-streams=5000000000"],
    ["extra"],
    ["--election-timeout", "400"],
    ["--heartbeat-interval", "0"],
    ["--auto-compaction-mode", "foo"],
    ["--logger", "foo"],
    ["--advertise-client-urls", "http://:2379"],
    ["--listen-client-urls", "http://127.0.0.1:2379"],
]


@pytest.mark.skipif(not os.path.exists(ETCD_BIN), reason="real etcd 3.4 not installed at /usr/bin/etcd")
@pytest.mark.parametrize("argv", DIFF_CASES)
def test_errors_match_real_etcd(argv, tmp_path):
    full = ["--data-dir", str(tmp_path / "d"), *argv]
    r = subprocess.run([ETCD_BIN, *full], capture_output=True, text=True, timeout=10,
                       env={"PATH": os.environ.get("PATH", "")})  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        parse_args(full, {})
    assert ei.value.exit_code == r.returncode
    if r.returncode == 2:
        assert r.stderr.splitlines()[0] == ei.value.message
    else:
        m = re.search(r"error verifying flags, (.*)\. See 'etcd --help'\.", r.stderr)
        assert m is not None, r.stderr
        assert m.group(1) == ei.value.message
