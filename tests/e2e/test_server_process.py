"""The server as a process: data-dir layout, lifecycle log lines, signals, port and dir conflicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from harness import REPO, ServerProcess, free_port

pytestmark = pytest.mark.e2e


def _lines(server: ServerProcess) -> list[dict]:
    out = []
    for line in server.log_lines:
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_data_dir_layout_and_lifecycle_lines(tmp_path):
    s = ServerProcess(data_dir=str(tmp_path / "d.etcd")).start()
    try:
        s.ctl("put", "a", "b")
        assert (tmp_path / "d.etcd" / "member" / "wal").is_dir()
        assert (tmp_path / "d.etcd" / "member" / "snap" / "db").is_file()
        assert any(n.endswith(".wal") for n in os.listdir(tmp_path / "d.etcd" / "member" / "wal"))
        assert s.stop() == 0
        msgs = [r["msg"] for r in _lines(s)]
        for want in (
            "published local member to cluster through raft",
            "ready to serve client requests",
            "enabled capabilities for version 3.4",
        ):
            assert want in msgs, want
        assert msgs.index("ready to serve client requests") < msgs.index(
            "enabled capabilities for version 3.4"
        )
        assert all(r["level"] in ("debug", "info", "warn", "error") for r in _lines(s))
    finally:
        s.cleanup()


def test_default_data_dir_is_name_dot_etcd(tmp_path):
    port, peer = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [sys.executable, "-m", "petcd", "--name", "infra9",
         "--listen-client-urls", f"http://127.0.0.1:{port}",
         "--advertise-client-urls", f"http://127.0.0.1:{port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"infra9=http://127.0.0.1:{peer}"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in p.stderr:
            if "ready to serve client requests" in line:
                break
        assert (tmp_path / "infra9.etcd" / "member" / "wal").is_dir()
    finally:
        p.terminate()
        assert p.wait(15) == 0


def test_sigint_shuts_down_cleanly(petcd_server):
    import signal

    petcd_server.ctl("put", "k", "v")
    petcd_server.proc.send_signal(signal.SIGINT)
    assert petcd_server.proc.wait(15) == 0
    petcd_server.start()
    assert petcd_server.ctl("get", "k", "--print-value-only").stdout == "v\n"


def test_second_server_on_same_port_fails(petcd_server, tmp_path):
    other = ServerProcess(data_dir=str(tmp_path / "other"))
    other.client_port = petcd_server.client_port
    with pytest.raises(RuntimeError, match="exited with 1"):
        other.start(timeout=20)
    other.cleanup()


def test_second_server_on_same_data_dir_fails(petcd_server):
    other = ServerProcess(data_dir=petcd_server.data_dir)
    with pytest.raises(RuntimeError, match="exited with 1"):
        other.start(timeout=20)
    other.cleanup()
    # the first server is unharmed
    petcd_server.ctl("put", "still", "fine")


def test_invalid_flag_exits_nonzero():
    r = subprocess.run(
        [sys.executable, "-m", "petcd", "--no-such-flag"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=30,
    )
    assert r.returncode == 2
    assert "flag provided but not defined: -no-such-flag" in r.stderr
