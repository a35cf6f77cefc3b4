"""TLS on the client (gRPC) listener and on the peer links, driven by the real etcdctl.

The client-side scenarios run the same etcdctl command lines against petcd and real etcd
3.4 and compare exit codes and outputs.  Peer TLS can only be checked on petcd clusters:
petcd's peer protocol is its own, so petcd and etcd members never mix.

Certificates (a CA, a server cert with SANs 127.0.0.1/localhost, a client cert) are made
with `cryptography` in a temp dir.  Failing etcdctl calls use short timeouts to keep the
file fast.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cluster import FAST_ARGS, Cluster, Member, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import ETCD, ETCDCTL, REPO, ServerProcess, free_port, petcd_cmd

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FAIL = ["--dial-timeout=1s", "--command-timeout=2s"]
# etcdctl 3.4 dials in plain text unless given a TLS file or --insecure-transport=false
SKIP_VERIFY = ["--insecure-transport=false", "--insecure-skip-tls-verify"]


# -- certificates -----------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(d: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{stem}-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_pki(d: Path) -> dict[str, str]:
    """ca.pem, server.pem/server-key.pem (SAN 127.0.0.1, localhost; server and client auth,
    as members also dial each other with it), client.pem/client-key.pem (CN root)."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "petcd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    _write(d, "ca", ca, ca_key)
    sans = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    for stem, cn in (("server", "localhost"), ("client", "root")):
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(sans, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(d, stem, cert, key)
    return {
        "ca": str(d / "ca.pem"),
        "cert": str(d / "server.pem"),
        "key": str(d / "server-key.pem"),
        "client": str(d / "client.pem"),
        "client_key": str(d / "client-key.pem"),
    }


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    if not os.path.exists(ETCDCTL):
        pytest.skip(f"{ETCDCTL} not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def _need_etcd() -> None:
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} not installed")


# -- one member with client TLS ---------------------------------------------------------


class TLSServer(ServerProcess):
    """A member whose client listener is https (plus an optional plain http one)."""

    def __init__(self, cmd: list[str], data_dir: str, extra_args: list[str], plain: bool) -> None:
        super().__init__(cmd=cmd, data_dir=data_dir, extra_args=extra_args)
        self.plain_port = free_port() if plain else 0

    def args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        listen = [f"https://127.0.0.1:{self.client_port}"]
        if self.plain_port:
            listen.append(f"http://127.0.0.1:{self.plain_port}")
        return [
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", ",".join(listen),
            "--advertise-client-urls", f"https://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            *self.extra_args,
        ]  # fmt: skip


def etcdctl(endpoint: str, *args: str, timeout: float = 20.0) -> tuple[int, str, str]:
    r = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoint}", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"),
    )  # fmt: skip
    return r.returncode, r.stdout, r.stderr


def run_scenario(
    impl: str, root: Path, server_args: list[str], calls: list[tuple[str, list[str]]], plain: bool = False
) -> tuple[list[tuple[int, str]], TLSServer]:
    """Start one member of impl, run each (endpoint kind, etcdctl args) call; return their
    (exit code, stdout) and the stopped server (for its log and data dir).

    Endpoint kinds: "https" = https://127.0.0.1:<tls port>, "bare" = 127.0.0.1:<tls port>
    (etcdctl picks TLS from its flags), "http" = the TLS port in plain text, "plain" =
    the extra http listener."""
    cmd = [ETCD] if impl == "etcd" else petcd_cmd()
    s = TLSServer(cmd, str(root / impl), server_args, plain)
    s.start(30)
    out = []
    try:
        eps = {
            "https": f"https://127.0.0.1:{s.client_port}",
            "bare": f"127.0.0.1:{s.client_port}",
            "http": f"http://127.0.0.1:{s.client_port}",
            "plain": f"http://127.0.0.1:{s.plain_port}",
        }
        for kind, args in calls:
            rc, so, se = etcdctl(eps[kind], *args)
            if rc != 0:
                # a refused handshake shows as the client's deadline, in etcd as in petcd
                assert "context deadline exceeded" in se, (impl, kind, args, se)
            out.append((rc, so))
    finally:
        s.stop()
    return out, s


def differential(tmp_path: Path, server_args: list[str], calls, plain: bool = False):
    """The scenario on petcd and on etcd (concurrently); both outcomes must be equal."""
    _need_etcd()
    with ThreadPoolExecutor(2) as ex:
        fp = ex.submit(run_scenario, "petcd", tmp_path, server_args, calls, plain)
        fe = ex.submit(run_scenario, "etcd", tmp_path, server_args, calls, plain)
        (got, srv), (want, _) = fp.result(), fe.result()
    assert got == want, "\n".join(f"{c}: petcd {g} etcd {w}" for c, g, w in zip(calls, got, want, strict=False))
    return got, srv


def test_https_with_certs(tmp_path, pki):
    ca = ["--cacert", pki["ca"]]
    calls = [
        ("https", [*ca, "put", "k", "v"]),
        ("bare", [*ca, "get", "k"]),
        ("https", [*SKIP_VERIFY, "get", "k", "--print-value-only"]),
        ("https", ["--insecure-skip-tls-verify", *FAIL, "get", "k"]),  # still plain text
        ("http", [*FAIL, "get", "k"]),  # plain text to the TLS port
        ("https", [*FAIL, "get", "k"]),  # the server's CA is not a system root
        # no --trusted-ca-file/--client-cert-auth: a client certificate is not needed but may be sent
        ("https", [*ca, "--cert", pki["client"], "--key", pki["client_key"], "put", "k", "v2"]),
        ("plain", ["get", "k", "--print-value-only"]),
    ]
    got, srv = differential(
        tmp_path, ["--cert-file", pki["cert"], "--key-file", pki["key"]], calls, plain=True
    )
    assert [rc for rc, _ in got] == [0, 0, 0, 1, 1, 1, 0, 0]
    assert got[0][1] == "OK\n" and got[1][1] == "k\nv\n" and got[7][1] == "v2\n"
    log = "".join(srv.log_lines)
    assert f'"serving client traffic securely","address":"127.0.0.1:{srv.client_port}"' in log
    assert "serving client traffic insecurely; this is strongly discouraged!" in log
    assert "scheme is HTTP while key and cert files are present" in log
    assert '"msg":"starting with client TLS"' in log


def test_client_cert_auth(tmp_path, pki):
    ca = ["--cacert", pki["ca"]]
    mine = ["--cert", pki["client"], "--key", pki["client_key"]]
    calls = [
        ("https", [*ca, *FAIL, "put", "k", "v"]),  # no client certificate
        ("https", [*ca, *mine, "put", "k", "v"]),
        ("bare", [*ca, *mine, "get", "k", "--print-value-only"]),
        ("https", [*SKIP_VERIFY, *mine, "get", "k", "--print-value-only"]),
        ("http", [*FAIL, "get", "k"]),
        ("plain", ["get", "k", "--print-value-only"]),  # client cert auth is for https only
    ]
    server_args = [
        "--cert-file", pki["cert"], "--key-file", pki["key"],
        "--trusted-ca-file", pki["ca"], "--client-cert-auth",
    ]  # fmt: skip
    got, srv = differential(tmp_path, server_args, calls, plain=True)
    assert got == [(1, ""), (0, "OK\n"), (0, "v\n"), (0, "v\n"), (1, ""), (0, "v\n")]
    log = "".join(srv.log_lines)
    assert "scheme is HTTP while --client-cert-auth is enabled" in log
    assert f"trusted-ca = {pki['ca']}, client-cert-auth = true" in log


def test_auto_tls(tmp_path, pki):
    calls = [
        ("https", [*SKIP_VERIFY, "put", "k", "v"]),
        ("bare", [*SKIP_VERIFY, "get", "k", "--print-value-only"]),
        ("https", ["--cacert", pki["ca"], *FAIL, "get", "k"]),  # self-signed: not our CA
        ("http", [*FAIL, "get", "k"]),
    ]
    got, srv = differential(tmp_path, ["--auto-tls"], calls)
    assert got == [(0, "OK\n"), (0, "v\n"), (1, ""), (1, "")]
    fixtures = Path(srv.data_dir) / "fixtures" / "client"
    assert (fixtures / "cert.pem").is_file() and (fixtures / "key.pem").is_file()
    cert = x509.load_pem_x509_certificate((fixtures / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def _start_fails(cmd: list[str], data_dir: Path, *args: str) -> tuple[int, str, bool]:
    """Exit code, stderr and whether the data dir was made."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    peer = f"http://127.0.0.1:{free_port()}"
    client = f"https://127.0.0.1:{free_port()}"
    r = subprocess.run(
        [*cmd, "--logger", "zap", "--data-dir", str(data_dir), "--listen-client-urls", client,
         "--advertise-client-urls", client, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}", *args],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    return r.returncode, r.stderr, data_dir.exists()


def test_startup_errors(tmp_path, pki):
    _need_etcd()
    for cmd, name in (([ETCD], "etcd"), (petcd_cmd(), "petcd")):
        rc, err, made = _start_fails(cmd, tmp_path / f"{name}-1")
        assert rc == 1 and not made, (name, err)
        assert "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:" in err
        assert "with HTTPS scheme" in err
        # etcd only finds these once its server runs ("listener failed", data dir made);
        # petcd checks the files before touching the data dir
        rc, err, made = _start_fails(cmd, tmp_path / f"{name}-2", "--cert-file", pki["cert"])
        assert rc == 1 and made == (name == "etcd"), (name, err)
        assert f"KeyFile and CertFile must both be present[key: , cert: {pki['cert']}]" in err
        rc, err, made = _start_fails(cmd, tmp_path / f"{name}-3", "--cert-file", pki["cert"],
                                     "--key-file", pki["client_key"])  # fmt: skip
        assert rc == 1 and made == (name == "etcd"), (name, err)
        assert "tls: private key does not match public key" in err


# -- clusters with peer TLS -------------------------------------------------------------


class TLSMember(Member):
    """A cluster member with https peer URLs (and optionally https client URLs)."""

    peer_args: list[str] = []
    client_args: list[str] = []  # server flags for https client URLs; [] = plain http
    ctl_args: list[str] = []

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.advertise_port}"

    def args(self) -> list[str]:
        scheme = "https" if self.client_args else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        return [
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", self.token,
            *self.peer_args, *self.client_args, *self.extra_args,
        ]  # fmt: skip

    def ctl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return super().ctl(*self.ctl_args, *args, **kw)


class TLSCluster(Cluster):
    """A petcd cluster of TLSMembers, peers dialling each other directly (no proxy)."""

    def __init__(self, peer_args: list[str], client_args: list[str], ctl_args: list[str]) -> None:
        self._member_cls = type(
            "M", (TLSMember,), {"peer_args": peer_args, "client_args": client_args, "ctl_args": ctl_args}
        )
        super().__init__(3, "petcd", list(FAST_ARGS), proxy=False)

    def _new_member(self, name: str) -> Member:
        m = self._member_cls(name, self.cmd, os.path.join(self.root, name), self.extra_args)
        self.members.append(m)
        return m


def _check_replication(c: TLSCluster) -> None:
    for i in (1, 2, 3):
        c.ctl(i, "put", f"k{i}", f"v{i}")
    for i in (1, 2, 3):
        # serializable reads: each member answers from its own applied state
        wait_for(
            lambda i=i: c.ctl(i, "get", "k", "--prefix", "--consistency=s", "--print-value-only").stdout
            == "v1\nv2\nv3\n",
            10, what=f"replication to m{i}",
        )  # fmt: skip


def _check_forwarding(c: TLSCluster) -> None:
    """A lease keep-alive sent to a follower, which petcd forwards to the leader's client URL."""
    lead = c.leader()
    follower = next(i for i in (1, 2, 3) if i != lead)
    lease = c.ctl(follower, "lease", "grant", "60").stdout.split()[1]
    try:
        # the keep-alive stream has no deadline: etcdctl retries until killed
        r = c.ctl(follower, *FAIL, "lease", "keep-alive", "--once", lease, check=False, timeout=5)
    except subprocess.TimeoutExpired:
        raise AssertionError("lease keep-alive through a follower hung") from None
    assert r.returncode == 0 and "keepalived with TTL" in r.stdout, r.stdout + r.stderr


def test_cluster_peer_certs_and_client_tls(pki):
    peer = [
        "--peer-cert-file", pki["cert"], "--peer-key-file", pki["key"],
        "--peer-trusted-ca-file", pki["ca"], "--peer-client-cert-auth",
    ]  # fmt: skip
    client = [
        "--cert-file", pki["cert"], "--key-file", pki["key"],
        "--trusted-ca-file", pki["ca"], "--client-cert-auth",
    ]  # fmt: skip
    ctl = ["--cacert", pki["ca"], "--cert", pki["client"], "--key", pki["client_key"]]
    with TLSCluster(peer, client, ctl) as c:
        _check_replication(c)
        members = c.member_list()
        assert sorted(u for m in members for u in m["peerURLs"]) == sorted(
            m.peer_url for m in c.members
        )
        assert all(u.startswith("https://") for m in members for u in m["clientURLs"])
        log = "".join(c.member(1).log_lines)
        assert '"msg":"starting with peer TLS"' in log


def test_cluster_peer_auto_tls(pki):
    with TLSCluster(["--peer-auto-tls"], [], []) as c:
        _check_replication(c)
        for m in c.members:
            assert (Path(m.data_dir) / "fixtures" / "peer" / "cert.pem").is_file()


@pytest.mark.parametrize("client_auth", ["certs", "auto-tls"])
def test_forwarding_to_tls_leader(pki, client_auth):
    peer = ["--peer-cert-file", pki["cert"], "--peer-key-file", pki["key"],
            "--peer-trusted-ca-file", pki["ca"]]  # fmt: skip
    if client_auth == "certs":
        client = ["--cert-file", pki["cert"], "--key-file", pki["key"],
                  "--trusted-ca-file", pki["ca"], "--client-cert-auth"]  # fmt: skip
        ctl = ["--cacert", pki["ca"], "--cert", pki["client"], "--key", pki["client_key"]]
    else:
        client, ctl = ["--auto-tls"], SKIP_VERIFY
    with TLSCluster(peer, client, ctl) as c:
        _check_forwarding(c)
