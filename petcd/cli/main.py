"""`petcd` / `python -m petcd`: parse etcd's flags, set up logging, run the server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

# gRPC's C core prints its own plain-text lines (refused TLS handshakes, ...) unless told
# otherwise before it loads; our logs are etcd's JSON lines.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from petcd import log  # noqa: E402
from petcd.cli.config import USAGE_TEXT, ConfigError, EarlyExit, ServerConfig, parse_args

SUBCOMMANDS_NOT_SUPPORTED = ("gateway", "grpc-proxy")


def _print_config_error(e: ConfigError) -> None:
    if e.show_usage:
        # Go's flag package: the error, then the usage text, exit status 2
        sys.stderr.write(f"{e.message}\n{USAGE_TEXT}\n")
        return
    # etcd 3.5 (zap) logs "failed to verify flags" and exits 1
    log.setup("info", ["stderr"])
    log.get("etcdmain").warning("failed to verify flags", error=e.message)
    if e.message.startswith("--advertise-client-urls is required"):
        log.get("etcdmain").warning(
            "When listening on specific address(es), this etcd process must advertise "
            "accessible url(s) to each connected client."
        )


def _setup_logging(cfg: ServerConfig) -> None:
    log.setup(cfg.effective_log_level(), cfg.log_outputs)
    lg = log.get("etcdmain")
    for level, msg, fields in cfg.notices:
        lg.log(level, msg, **fields)


def _run(cfg: ServerConfig) -> int:
    from petcd.server.launch import serve  # heavy imports only when actually serving

    # PETCD_EVENT_LOOP=asyncio picks the standard loop (for comparisons and debugging).
    try:
        if os.environ.get("PETCD_EVENT_LOOP", "uvloop") != "uvloop":
            raise ImportError
        import uvloop
    except ImportError:
        return asyncio.run(serve(cfg))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(cfg))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `petcd` console script; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if args and args[0] in SUBCOMMANDS_NOT_SUPPORTED:
        sys.stderr.write(f"Error: 'etcd {args[0]}' is not supported yet by petcd\n")
        return 1
    try:
        cfg = parse_args(args, env)
    except EarlyExit as e:
        if e.stderr:
            sys.stderr.write(e.stderr + "\n")
        if e.stdout:
            sys.stdout.write(e.stdout)
            sys.stdout.flush()
        return e.exit_code
    except ConfigError as e:
        _print_config_error(e)
        return e.exit_code
    try:
        _setup_logging(cfg)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"failed to set up logging: {e}\n")
        return 1
    try:
        return _run(cfg)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
