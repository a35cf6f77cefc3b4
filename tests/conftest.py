import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import ETCD, ETCDCTL, ServerProcess  # noqa: E402


def _need(binary: str, pkg: str) -> None:
    if not (os.path.exists(binary) or shutil.which(binary)):
        pytest.skip(f"{binary} not installed (Debian package {pkg}; .ci/run installs it)")


@pytest.fixture
def petcd_server():
    _need(ETCDCTL, "etcd-client")
    s = ServerProcess().start()
    yield s
    s.cleanup()


@pytest.fixture(scope="module")
def shared_petcd():
    _need(ETCDCTL, "etcd-client")
    s = ServerProcess().start()
    yield s
    s.cleanup()


@pytest.fixture
def etcd_server():
    _need(ETCD, "etcd-server")
    _need(ETCDCTL, "etcd-client")
    s = ServerProcess(cmd=[ETCD]).start()
    yield s
    s.cleanup()
