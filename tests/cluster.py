"""A real-process cluster (petcd or etcd) with a fault-injecting proxy on the peer links.

Every member listens for peers on its real port but advertises a proxy port, so all
member-to-member traffic passes through `PeerProxy`.  The proxy identifies which member
opened each connection (the dialer's socket inode from /proc/net/tcp, owned by one of our
processes' fds) and can cut any pair of members in both directions: rafthttp dials both
ways (stream readers dial the remote, pipeline POSTs dial the receiver), so a cut must be by
the unordered pair of identities, not by direction.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness import ETCD, ETCDCTL, ServerProcess, petcd_cmd

FAST_ARGS = ["--heartbeat-interval", "50", "--election-timeout", "500"]


def wait_for(fn: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll fn until it returns a truthy value without raising; return that value."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or fn}: last error {last!r}")
        time.sleep(interval)


# -- identifying the process that owns a TCP connection ---------------------------------


def _hex_addr(port: int) -> str:
    # /proc/net/tcp prints 127.0.0.1 as little-endian hex.
    return f"0100007F:{port:04X}"


def _socket_inode(src_port: int, dst_port: int) -> int | None:
    """Inode of the dialing socket 127.0.0.1:src_port -> 127.0.0.1:dst_port."""
    local, remote = _hex_addr(src_port), _hex_addr(dst_port)
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == local and parts[2] == remote:
                    return int(parts[9])
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _owns_inode(pid: int, inode: int) -> bool:
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


# -- the proxy -------------------------------------------------------------------------


class PeerProxy:
    """TCP forwarders (one or more per member) on one asyncio loop in a daemon thread."""

    def __init__(self, identify: Callable[[int, int], str | None]) -> None:
        self._identify = identify  # (src_port, proxy_port) -> member name or None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="peer-proxy")
        self._thread.start()
        self._servers: dict[int, asyncio.base_events.Server] = {}
        self._conns: set[_Conn] = set()
        self._pairs: set[frozenset[str]] = set()
        self._isolated: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="proxy-ident")
        self.refused = 0  # connections closed at accept because of a cut
        self.unidentified = 0  # connections whose dialing member was not found

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, dst_name: str, target_port: int) -> int:
        """Start a forwarder to 127.0.0.1:target_port for member dst_name; return its port."""

        async def start() -> int:
            server = await asyncio.start_server(
                lambda r, w: self._accept(r, w, dst_name, target_port), "127.0.0.1", 0
            )
            port = server.sockets[0].getsockname()[1]
            self._servers[port] = server
            return port

        return self._run(start())

    def remove(self, port: int) -> None:
        """Stop one forwarder and drop the connections it carries."""

        async def stop() -> None:
            server = self._servers.pop(port, None)
            if server is not None:
                server.close()
            for c in list(self._conns):
                if c.front_port == port:
                    c.close()

        self._run(stop())

    def connections(self) -> list[tuple[str | None, str]]:
        """(dialing member, receiving member) of every connection being forwarded."""
        return [(c.src, c.dst) for c in list(self._conns)]

    def blocked(self, a: str | None, b: str) -> bool:
        with self._lock:
            if a == b:
                return False
            if b in self._isolated or (a is not None and a in self._isolated):
                return True
            return a is not None and frozenset((a, b)) in self._pairs

    def cut(self, pairs: Iterable[tuple[str, str]] = (), isolate: Iterable[str] = ()) -> None:
        with self._lock:
            self._pairs.update(frozenset(p) for p in pairs)
            self._isolated.update(isolate)
        # Existing connections must go too, or an established stream would keep flowing.
        self._run(self._drop_blocked())

    def heal(self) -> None:
        with self._lock:
            self._pairs.clear()
            self._isolated.clear()

    async def _drop_blocked(self) -> None:
        for c in list(self._conns):
            if self.blocked(c.src, c.dst):
                c.close()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dst: str, target: int
    ) -> None:
        try:
            await self._serve(reader, writer, dst, target)
        except asyncio.CancelledError:
            # Only close() cancels; finishing quietly keeps asyncio from logging it.
            writer.transport.abort()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dst: str, target: int
    ) -> None:
        src_port = writer.get_extra_info("peername")[1]
        front_port = writer.get_extra_info("sockname")[1]
        src = await self._loop.run_in_executor(self._pool, self._identify, src_port, front_port)
        if src is None:
            self.unidentified += 1
        if self.blocked(src, dst):
            self.refused += 1
            writer.transport.abort()
            return
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target), 2.0)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        conn = _Conn(src, dst, front_port, writer, uw)
        self._conns.add(conn)
        try:
            # A cut may have started while we were identifying or dialing.
            if self.blocked(src, dst):
                return
            await asyncio.gather(_pump(reader, uw), _pump(ur, writer))
        finally:
            conn.close()
            self._conns.discard(conn)

    def close(self) -> None:
        async def shutdown() -> None:
            for s in self._servers.values():
                s.close()
            for c in list(self._conns):
                c.close()
            self._servers.clear()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # Connections cancelled mid-accept would otherwise be logged by asyncio.
        self._loop.call_soon_threadsafe(self._loop.set_exception_handler, lambda _l, _c: None)
        try:
            self._run(shutdown(), timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._pool.shutdown(wait=False)
            if not self._thread.is_alive():
                self._loop.close()


class _Conn:
    def __init__(
        self,
        src: str | None,
        dst: str,
        front_port: int,
        down: asyncio.StreamWriter,
        up: asyncio.StreamWriter,
    ) -> None:
        self.src, self.dst, self.front_port = src, dst, front_port
        self._writers = (down, up)

    def close(self) -> None:
        for w in self._writers:
            try:
                # abort (RST) rather than a graceful close, like a broken link
                w.transport.abort()
            except Exception:  # noqa: BLE001
                pass


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.transport.abort()
        except Exception:  # noqa: BLE001
            pass


# -- members and the cluster -----------------------------------------------------------


class Member(ServerProcess):
    """A ServerProcess whose peer URL is advertised through the proxy and that joins a cluster."""

    def __init__(self, name: str, cmd: list[str], data_dir: str, extra_args: list[str]) -> None:
        super().__init__(cmd=cmd, data_dir=data_dir, extra_args=extra_args, name=name)
        self.advertise_port = self.peer_port  # replaced by the proxy's port when proxied
        self.initial_cluster = ""
        self.cluster_state = "new"
        self.token = "petcd-test"
        self.removed = False

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.advertise_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        return [
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", self.token,
            *self.extra_args,
        ]  # fmt: skip


class Cluster:
    """N members m1..mN of petcd or etcd on loopback; members are addressed 1-based."""

    def __init__(
        self,
        n: int = 3,
        impl: str = "petcd",
        extra_args: list[str] | None = None,
        proxy: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        if impl not in ("petcd", "etcd"):
            raise ValueError(impl)
        self.impl = impl
        self.cmd = [ETCD] if impl == "etcd" else petcd_cmd()
        self.extra_args = list(FAST_ARGS if extra_args is None else extra_args)
        self.start_timeout = start_timeout
        self.root = tempfile.mkdtemp(prefix=f"petcd-cluster-{impl}-")
        self.proxy = PeerProxy(self._identify) if proxy else None
        self.members: list[Member] = []
        self._ids: dict[str, int] = {}
        for i in range(1, n + 1):
            self._new_member(f"m{i}")
        initial = self.initial_cluster()
        for m in self.members:
            m.initial_cluster = initial

    # -- construction ---------------------------------------------------------------

    def _new_member(self, name: str) -> Member:
        m = Member(name, self.cmd, os.path.join(self.root, name), self.extra_args)
        if self.proxy is not None:
            m.advertise_port = self.proxy.add(name, m.peer_port)
        self.members.append(m)
        return m

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members if not m.removed)

    def _identify(self, src_port: int, dst_port: int) -> str | None:
        inode = _socket_inode(src_port, dst_port)
        if inode is None:
            return None
        for m in self.members:
            if m.alive:
                for pid in _descendants(m.proc.pid):
                    if _owns_inode(pid, inode):
                        return m.name
        return None

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> Cluster:
        """Start every member at once (none is ready before there is a leader) and wait."""
        self._start_many([m for m in self.members if not m.removed])
        return self

    def _start_many(self, members: list[Member]) -> None:
        errors: list[BaseException] = []

        def run(m: Member) -> None:
            try:
                m.start(self.start_timeout)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(m,), daemon=True) for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def member(self, i: int) -> Member:
        return self.members[i - 1]

    def index(self, name: str) -> int:
        return next(i for i, m in enumerate(self.members, 1) if m.name == name)

    def live(self) -> list[int]:
        return [i for i, m in enumerate(self.members, 1) if m.alive]

    def kill(self, i: int) -> None:
        """SIGKILL member i."""
        self.member(i).kill()

    def kill_all(self) -> None:
        for m in self.members:
            m.kill()

    def stop_member(self, i: int) -> None:
        self.member(i).stop()

    def restart(self, i: int) -> Member:
        """Stop member i if it runs (SIGTERM) and start it again on its data dir."""
        m = self.member(i)
        m.stop()
        m.start(self.start_timeout)
        return m

    def restart_all(self, indices: Iterable[int] | None = None) -> None:
        """Start the given (default: every non-removed) stopped members concurrently."""
        idx = list(indices) if indices is not None else [
            i for i, m in enumerate(self.members, 1) if not m.removed
        ]
        for i in idx:
            self.member(i).stop()
        self._start_many([self.member(i) for i in idx])

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        with ThreadPoolExecutor(max(1, len(self.members))) as ex:
            list(ex.map(lambda m: m.stop(10), self.members))

    def cleanup(self) -> None:
        """Every process stopped, the proxy closed and the data dirs removed."""
        try:
            for m in self.members:
                m.kill()
        finally:
            if self.proxy is not None:
                self.proxy.close()
            shutil.rmtree(self.root, ignore_errors=True)

    # -- etcdctl --------------------------------------------------------------------

    def endpoints(self, live_only: bool = True) -> list[str]:
        return [m.endpoint for m in self.members if (m.alive or not live_only) and not m.removed]

    def ctl(self, i: int, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run etcdctl against member i only."""
        return self.member(i).ctl(*args, check=check, timeout=timeout)

    def ctl_all(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run etcdctl with every live member as an endpoint."""
        env = dict(os.environ, ETCDCTL_API="3")
        r = subprocess.run(
            [ETCDCTL, f"--endpoints={','.join(self.endpoints())}", *args],
            capture_output=True, text=True, env=env, timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def status(self, i: int, timeout: str = "2s") -> dict[str, Any] | None:
        """`endpoint status -w json` of member i (its Status object), None if unreachable."""
        if not self.member(i).alive:
            return None
        try:
            r = self.ctl(i, "endpoint", "status", "-w", "json", f"--command-timeout={timeout}",
                         check=False, timeout=10)  # fmt: skip
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        try:
            st = json.loads(r.stdout)[0]["Status"]
        except (ValueError, LookupError, TypeError):
            return None
        self._ids[self.member(i).name] = int(st["header"]["member_id"])
        return st

    def member_id(self, i: int) -> int:
        name = self.member(i).name
        if name not in self._ids:
            self.refresh_ids()
        return self._ids[name]

    def refresh_ids(self) -> None:
        for m in self.member_list():
            if m.get("name"):
                self._ids[m["name"]] = int(m["ID"])

    def member_list(self, i: int | None = None) -> list[dict[str, Any]]:
        """`member list -w json` members (IDs as ints) from member i or any live member."""
        cands = [i] if i is not None else self.live()
        last: Exception | None = None
        for j in cands:
            r = self.ctl(j, "member", "list", "-w", "json", "--command-timeout=3s", check=False)
            if r.returncode == 0:
                return json.loads(r.stdout).get("members", [])
            last = AssertionError(r.stderr)
        raise last or AssertionError("no live member")

    def leader(self, among: Iterable[int] | None = None, timeout: float = 15.0) -> int:
        """Index of the leader: a member that reports itself leader, agreed on by a majority
        of those answering (so an isolated ex-leader that has not yet stepped down loses)."""
        idx = list(among) if among is not None else None

        def find() -> int | None:
            cands = idx if idx is not None else self.live()
            sts = {i: self.status(i) for i in cands}
            answered = {i: s for i, s in sts.items() if s is not None}
            votes: dict[int, int] = {}
            for s in answered.values():
                if s.get("leader"):
                    votes[int(s["leader"])] = votes.get(int(s["leader"]), 0) + 1
            for i, s in answered.items():
                mid = int(s["header"]["member_id"])
                if int(s.get("leader") or 0) == mid and votes.get(mid, 0) * 2 > len(answered):
                    return i
            return None

        return wait_for(find, timeout, 0.2, "a leader")

    # -- membership -----------------------------------------------------------------

    def add_member(self, name: str, learner: bool = False, via: int | None = None,
                   start: bool = True) -> int:
        """`member add` through a live member, then start the new process with the printed
        ETCD_INITIAL_CLUSTER and --initial-cluster-state existing; returns its index."""
        m = self._new_member(name)
        args = ["member", "add", name, f"--peer-urls={m.peer_url}"]
        if learner:
            args.append("--learner")
        # etcd's strict reconfig check refuses ("etcdserver: unhealthy cluster") until the
        # member it asks has been connected to every voter for 5s (HealthInterval).
        r = self._reconfig(via or self.live()[0], *args)
        env = dict(re.findall(r'^(ETCD_\w+)="(.*)"$', r.stdout, re.M))
        m.initial_cluster = env["ETCD_INITIAL_CLUSTER"]
        m.cluster_state = env.get("ETCD_INITIAL_CLUSTER_STATE", "existing")
        mid = re.search(r"Member\s+([0-9a-f]+) added", r.stdout)
        if mid:
            self._ids[name] = int(mid.group(1), 16)
        if start:
            m.start(self.start_timeout)
        return len(self.members)

    def _reconfig(self, via: int, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + timeout
        while True:
            r = self.ctl(via, *args, check=False)
            if r.returncode == 0:
                return r
            if "unhealthy cluster" not in r.stderr or time.monotonic() > deadline:
                raise AssertionError(f"etcdctl {' '.join(args)} failed: {r.stdout}{r.stderr}")
            time.sleep(0.5)

    def remove_member(self, i: int, via: int | None = None) -> subprocess.CompletedProcess:
        mid = self.member_id(i)
        via = via or next(j for j in self.live() if j != i)
        r = self._reconfig(via, "member", "remove", f"{mid:x}")
        self.member(i).removed = True
        return r

    def new_peer_frontend(self, i: int) -> int:
        """Another proxy port in front of member i's peer listener (for `member update`)."""
        assert self.proxy is not None
        m = self.member(i)
        return self.proxy.add(m.name, m.peer_port)

    # -- faults ---------------------------------------------------------------------

    def _names(self, idx: Iterable[int]) -> list[str]:
        return [self.member(i).name for i in idx]

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between members of different groups, both directions."""
        assert self.proxy is not None, "cluster started without the proxy"
        named = [self._names(g) for g in groups]
        pairs = [
            (a, b)
            for gi, ga in enumerate(named)
            for gb in named[gi + 1 :]
            for a in ga
            for b in gb
        ]
        self.proxy.cut(pairs=pairs)

    def isolate(self, i: int) -> None:
        """Cut member i off from every other member (including ones added later)."""
        assert self.proxy is not None, "cluster started without the proxy"
        self.proxy.cut(isolate=[self.member(i).name])

    def heal(self) -> None:
        assert self.proxy is not None
        self.proxy.heal()

