#!/usr/bin/env bash
# Install what the tests need and run them: the README's test command, and what CI runs.
#   Debian: etcd-client (the real etcdctl the end-to-end tests drive) and etcd-server
#   (real etcd, for differential tests); PyPI: petcd with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if ! command -v etcdctl >/dev/null || ! command -v etcd >/dev/null; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
python3 -m pip install -q -e '.[test]'
ruff check .
python3 -m pytest -q "$@"
