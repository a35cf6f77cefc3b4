"""Start petcd (or real etcd) as a process on loopback ports and drive it with etcdctl."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
READY_LINE = "ready to serve client requests"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ctl_env(**extra: str) -> dict[str, str]:
    """The environment for an etcdctl/petcdctl run: v3 API, no inherited ETCDCTL_*, this
    checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def petcd_cmd() -> list[str]:
    return [sys.executable, "-m", "petcd"]


class ServerProcess:
    """One member (petcd or etcd) on free loopback ports with its own data dir."""

    def __init__(
        self,
        cmd: list[str] | None = None,
        data_dir: str | None = None,
        extra_args: list[str] | None = None,
        name: str = "m1",
    ) -> None:
        self.cmd = cmd or petcd_cmd()
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="petcd-test-")
            data_dir = os.path.join(self._tmp, "data")
        self.data_dir = data_dir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        return [
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_lines = []
        self.proc = subprocess.Popen(
            self.cmd + self.args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        ready = threading.Event()

        def read(stream, lines):
            for line in stream:
                lines.append(line)
                if READY_LINE in line:
                    ready.set()

        self._reader = threading.Thread(
            target=read, args=(self.proc.stderr, self.log_lines), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n" + "".join(self.log_lines[-40:])
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("server not ready in time:\n" + "".join(self.log_lines[-40:]))
        return self

    def ctl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        r = subprocess.run(
            [ETCDCTL, f"--endpoints={self.endpoint}", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}"
            )
        return r

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.kill()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
