"""Peer and client TLS (petcd.transport.tls): Transports over TLS on loopback, client cert
auth, allowed CN/hostname, SAN and CRL checks, auto-TLS, file errors, gRPC credentials."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from petcd.cli.config import ServerConfig
from petcd.raft.types import Message, MessageType
from petcd.transport import Transport
from petcd.transport.tls import PeerServerContext, client_tls, peer_tls, self_cert, verify_hostname

MT = MessageType
TLS_URL = "https://127.0.0.1:0"
NOW = datetime.datetime.now(datetime.UTC)


# ---------------------------------------------------------------------------------------
# certificate fixtures (P-256: fast to generate)


class CA:
    def __init__(self, d: Path, name: str) -> None:
        self.dir = d
        self.key = ec.generate_private_key(ec.SECP256R1())
        subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subj
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subj)
            .issuer_name(subj)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )
        self.file = str(d / f"{name}.pem")
        Path(self.file).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, cn: str | None = None, ips: tuple[str, ...] = ("127.0.0.1",),
        dns: tuple[str, ...] = ("localhost",),
    ) -> tuple[str, str, int]:
        """(cert file, key file, serial) for a peer cert (server + client auth)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        import ipaddress

        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.DNSName(n) for n in dns]
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cf, kf = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(cf), str(kf), serial

    def crl(self, serials: list[int]) -> str:
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(NOW - datetime.timedelta(hours=1))
            .next_update(NOW + datetime.timedelta(days=1))
        )
        for s in serials:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW).build()
            )
        path = self.dir / "crl.pem"
        path.write_bytes(b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA(d, "ca"), CA(d, "other-ca")
    return {
        "ca": ca,
        "other": other,
        "m1": ca.issue("m1"),
        "m2": ca.issue("m2"),
        "bad_cn": ca.issue("intruder"),
        "foreign": other.issue("m3"),
        "far": ca.issue("far", ips=("10.9.9.9",), dns=()),
    }


def peer_cfg(cert: tuple[str, str, int] | None, ca: str = "", **kw: Any) -> ServerConfig:
    c = ServerConfig()
    c.listen_peer_urls = [TLS_URL]
    c.initial_advertise_peer_urls = [TLS_URL]
    if cert is not None:
        c.peer_cert_file, c.peer_key_file = cert[0], cert[1]
    c.peer_trusted_ca_file = ca
    for k, v in kw.items():
        setattr(c, k, v)
    return c


# ---------------------------------------------------------------------------------------
# transport helpers


class Node:
    def __init__(self, nid: int, server: ssl.SSLContext | None, client: ssl.SSLContext | None):
        self.got: list[Message] = []
        self.t = Transport(
            nid, 1, self.got.append, backoff_base=0.01, backoff_max=0.05,
            server_ssl=server, client_ssl=client,
        )

    async def start(self, url: str = TLS_URL) -> Node:
        await self.t.start([url])
        return self

    @property
    def url(self) -> str:
        return self.t.urls[0]


def node(nid: int, cfg: ServerConfig, data_dir: str = "") -> Node:
    s, c = peer_tls(cfg, data_dir)
    return Node(nid, s, c)


async def until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def exchange(a: Node, b: Node) -> None:
    """a and b dial each other and deliver heartbeats both ways."""
    a.t.add_peer(b.t.local_id, [b.url])
    b.t.add_peer(a.t.local_id, [a.url])
    for i in range(5):
        a.t.send([Message(MT.HEARTBEAT, to=b.t.local_id, frm=a.t.local_id, commit=i)])
        b.t.send([Message(MT.HEARTBEAT, to=a.t.local_id, frm=b.t.local_id, commit=i)])
        await asyncio.sleep(0.01)
    await until(lambda: a.got and b.got)
    assert b.got[0].frm == a.t.local_id and a.got[0].frm == b.t.local_id


async def one_way(server: Node, client: Node) -> None:
    """client dials server and delivers a message."""
    client.t.add_peer(server.t.local_id, [server.url])
    await until(lambda: client.t.active_since(server.t.local_id) is not None)
    client.t.send([Message(MT.HEARTBEAT, to=server.t.local_id, frm=client.t.local_id)])
    await until(lambda: any(m.frm == client.t.local_id for m in server.got))


async def refused(server: Node, client: Node, caplog: Any = None, why: str = "") -> None:
    """client cannot get a message to server: it never becomes active and nothing arrives."""
    client.t.add_peer(server.t.local_id, [server.url])
    for i in range(10):
        client.t.send([Message(MT.HEARTBEAT, to=server.t.local_id, frm=client.t.local_id, commit=i)])
        await asyncio.sleep(0.02)
    assert [m for m in server.got if m.frm == client.t.local_id] == []
    assert client.t.active_since(server.t.local_id) is None
    if caplog is not None:
        await until(lambda: any(why in e for e in rejections(caplog)))


def rejections(caplog: Any) -> list[str]:
    """The error field of every "rejected connection" log line."""
    return [
        str(r.fields.get("error", ""))
        for r in caplog.records
        if r.getMessage() == "rejected connection" and hasattr(r, "fields")
    ]


async def stop(*nodes: Node) -> None:
    for n in nodes:
        await n.t.stop()


# ---------------------------------------------------------------------------------------
# peer TLS


def test_mutual_tls_exchange(pki: dict[str, Any]) -> None:
    async def body() -> None:
        a = await node(1, peer_cfg(pki["m1"], pki["ca"].file, peer_client_cert_auth=True)).start()
        b = await node(2, peer_cfg(pki["m2"], pki["ca"].file, peer_client_cert_auth=True)).start()
        assert a.url.startswith("https://127.0.0.1:")
        assert isinstance(a.t.server_ssl, PeerServerContext)
        assert a.t.server_ssl.verify_mode == ssl.CERT_REQUIRED
        await exchange(a, b)
        await stop(a, b)

    asyncio.run(body())


def test_client_cert_auth_refuses_no_cert_and_foreign_ca(pki: dict[str, Any]) -> None:
    async def body() -> None:
        srv = await node(1, peer_cfg(pki["m1"], pki["ca"].file, peer_client_cert_auth=True)).start()
        # trusts our CA, so the server is verified, but presents no certificate
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.load_verify_locations(pki["ca"].file)
        nocert = await Node(2, None, bare).start("http://127.0.0.1:0")
        await refused(srv, nocert)
        # a certificate from another CA
        _s, foreign_client = peer_tls(peer_cfg(pki["foreign"], pki["ca"].file), "")
        foreign = await Node(3, None, foreign_client).start("http://127.0.0.1:0")
        await refused(srv, foreign)
        await stop(srv, nocert, foreign)

    asyncio.run(body())


def test_client_refuses_server_from_unknown_ca(pki: dict[str, Any]) -> None:
    async def body() -> None:
        srv = await node(1, peer_cfg(pki["foreign"], pki["other"].file)).start()
        cli = await node(2, peer_cfg(pki["m2"], pki["ca"].file)).start()
        await refused(srv, cli)
        await stop(srv, cli)

    asyncio.run(body())


def test_allowed_cn(pki: dict[str, Any], caplog: Any) -> None:
    async def body() -> None:
        cfg = peer_cfg(pki["m1"], pki["ca"].file, peer_client_cert_auth=True, peer_cert_allowed_cn="m2")
        srv = await node(1, cfg).start()
        good = await node(2, peer_cfg(pki["m2"], pki["ca"].file)).start()
        await exchange(srv, good)
        bad = await node(3, peer_cfg(pki["bad_cn"], pki["ca"].file)).start()
        await refused(srv, bad, caplog, "client certificate authentication failed")
        assert good.t.active_since(1) is not None  # the good peer is unaffected
        await stop(srv, good, bad)

    with caplog.at_level(logging.WARNING, logger="petcd"):
        asyncio.run(body())


def test_allowed_hostname(pki: dict[str, Any], caplog: Any) -> None:
    async def body() -> None:
        ok_cfg = peer_cfg(pki["m1"], pki["ca"].file, peer_cert_allowed_hostname="localhost")
        srv = await node(1, ok_cfg).start()
        peer = await node(2, peer_cfg(pki["m2"], pki["ca"].file)).start()
        await exchange(srv, peer)
        no_cfg = peer_cfg(pki["m1"], pki["ca"].file, peer_cert_allowed_hostname="10.1.1.1")
        strict = await node(4, no_cfg).start()
        await refused(strict, peer, caplog, "client certificate authentication failed")
        await stop(srv, peer, strict)

    with caplog.at_level(logging.WARNING, logger="petcd"):
        asyncio.run(body())


def test_client_san_must_match_remote_address(pki: dict[str, Any], caplog: Any) -> None:
    async def body() -> None:
        srv = await node(1, peer_cfg(pki["m1"], pki["ca"].file)).start()
        far = await node(2, peer_cfg(pki["far"], pki["ca"].file)).start()
        await refused(srv, far, caplog, "x509: certificate is valid for 10.9.9.9, not 127.0.0.1")
        skip = peer_cfg(pki["m1"], pki["ca"].file, experimental_peer_skip_client_san_verification=True)
        lax = await node(3, skip).start()
        # (only far -> lax: far's own server cert does not name 127.0.0.1 either)
        await one_way(lax, far)
        await stop(srv, far, lax)

    with caplog.at_level(logging.WARNING, logger="petcd"):
        asyncio.run(body())


def test_crl_revokes_peer(pki: dict[str, Any], caplog: Any) -> None:
    crl = pki["ca"].crl([pki["bad_cn"][2]])

    async def body() -> None:
        srv = await node(1, peer_cfg(pki["m1"], pki["ca"].file, peer_crl_file=crl)).start()
        good = await node(2, peer_cfg(pki["m2"], pki["ca"].file)).start()
        await exchange(srv, good)
        bad = await node(3, peer_cfg(pki["bad_cn"], pki["ca"].file)).start()
        await refused(srv, bad, caplog, "transport: certificate serial")
        await stop(srv, good, bad)

    with caplog.at_level(logging.WARNING, logger="petcd"):
        asyncio.run(body())


def test_plain_tcp_dial_to_tls_listener_fails_cleanly(pki: dict[str, Any]) -> None:
    async def body() -> None:
        srv = await node(1, peer_cfg(pki["m1"], pki["ca"].file)).start()
        plain = await Node(2, None, None).start("http://127.0.0.1:0")
        # dial the TLS port as http://: the TLS server sees garbage, the dialer a dead stream
        plain.t.add_peer(1, [srv.url.replace("https://", "http://")])
        for _ in range(10):
            plain.t.send([Message(MT.HEARTBEAT, to=1, frm=2)])
            await asyncio.sleep(0.02)
        assert srv.got == [] and plain.t.active_since(1) is None
        assert plain.t.stats(1).dropped > 0  # type: ignore[union-attr]
        await stop(srv, plain)

    asyncio.run(body())


def test_auto_tls_between_members_and_reuse(tmp_path: Path) -> None:
    async def body() -> tuple[bytes, bytes]:
        d1, d2 = str(tmp_path / "m1"), str(tmp_path / "m2")
        cfg = peer_cfg(None, peer_auto_tls=True)
        a = await node(1, cfg, d1).start()
        b = await node(2, cfg, d2).start()
        await exchange(a, b)
        await stop(a, b)
        first = (Path(d1, "fixtures/peer/cert.pem").read_bytes(), Path(d2, "fixtures/peer/key.pem").read_bytes())
        # restart: same files reused, and the members still talk
        a, b = await node(1, cfg, d1).start(), await node(2, cfg, d2).start()
        await exchange(a, b)
        await stop(a, b)
        return first

    cert, key = asyncio.run(body())
    assert Path(tmp_path, "m1/fixtures/peer/cert.pem").read_bytes() == cert
    assert Path(tmp_path, "m2/fixtures/peer/key.pem").read_bytes() == key
    assert os.stat(tmp_path / "m2/fixtures/peer/key.pem").st_mode & 0o777 == 0o600
    c = x509.load_pem_x509_certificate(cert)
    sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
    assert c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "etcd"
    assert b"EC PRIVATE KEY" in key


def test_self_cert_validity_and_hosts(tmp_path: Path) -> None:
    cf, kf = self_cert(str(tmp_path / "x"), ["localhost:2380", "[::1]:2380", "10.0.0.1:1"], 3)
    c = x509.load_pem_x509_certificate(Path(cf).read_bytes())
    days = (c.not_valid_after_utc - c.not_valid_before_utc).days
    assert days == 3 * 365
    assert verify_hostname(c, "localhost") is None and verify_hostname(c, "::1") is None
    assert verify_hostname(c, "10.0.0.2") == "x509: certificate is valid for ::1, 10.0.0.1, not 10.0.0.2"
    with pytest.raises(ValueError, match="selfSignedCertValidity is invalid"):
        self_cert(str(tmp_path / "y"), [], 0)


def test_config_errors(pki: dict[str, Any], tmp_path: Path) -> None:
    m1 = pki["m1"]
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ValueError, match=f"open {missing}: no such file or directory"):
        peer_tls(peer_cfg((missing, m1[1], 0)), "")
    with pytest.raises(ValueError, match="KeyFile and CertFile must both be present"):
        peer_tls(peer_cfg((m1[0], "", 0)), "")
    with pytest.raises(ValueError, match="tls: private key does not match public key"):
        peer_tls(peer_cfg((m1[0], pki["m2"][1], 0)), "")
    with pytest.raises(ValueError, match="PEM inputs may have been switched"):
        peer_tls(peer_cfg((m1[1], m1[0], 0)), "")
    with pytest.raises(ValueError, match="AllowedCN and AllowedHostname are mutually exclusive"):
        peer_tls(peer_cfg(m1, peer_cert_allowed_cn="a", peer_cert_allowed_hostname="b"), "")
    with pytest.raises(ValueError, match="KeyFile and CertFile are not presented"):
        peer_tls(peer_cfg(None), "")
    with pytest.raises(ValueError, match='unexpected TLS cipher suite "TLS_NOPE"'):
        peer_tls(peer_cfg(m1, cipher_suites=["TLS_NOPE"]), "")
    with pytest.raises(ValueError, match="unexpected TLS version"):
        peer_tls(peer_cfg(m1, tls_min_version="TLS1.1"), "")
    # nothing configured, plain http: no contexts at all
    plain = ServerConfig()
    assert peer_tls(plain, "") == (None, None)
    # certs with http-only listeners: no server context (Transport would use it everywhere)
    s, c = peer_tls(peer_cfg(m1, pki["ca"].file, listen_peer_urls=["http://127.0.0.1:0"]), "")
    assert s is None and c is not None and c.verify_mode == ssl.CERT_REQUIRED


def test_cipher_suites_and_versions(pki: dict[str, Any]) -> None:
    cfg = peer_cfg(
        pki["m1"], pki["ca"].file, tls_max_version="TLS1.2",
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
    )
    s, c = peer_tls(cfg, "")
    assert s is not None and c is not None
    assert s.maximum_version == ssl.TLSVersion.TLSv1_2
    assert s.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [x["name"] for x in s.get_ciphers() if x["protocol"] == "TLSv1.2"] == [
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    ]

    async def body() -> None:
        a, b = await Node(1, s, c).start(), await Node(2, s, c).start()
        await exchange(a, b)
        await stop(a, b)

    asyncio.run(body())


# ---------------------------------------------------------------------------------------
# client (gRPC) TLS


def client_cfg(**kw: Any) -> ServerConfig:
    c = ServerConfig()
    c.listen_client_urls = ["https://127.0.0.1:2379"]
    c.advertise_client_urls = ["https://127.0.0.1:2379"]
    for k, v in kw.items():
        setattr(c, k, v)
    return c


async def _grpc_roundtrip(creds: grpc.ServerCredentials, channel_creds: grpc.ChannelCredentials) -> bytes:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "t.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_creds) as ch:
            return await ch.unary_unary("/t.Echo/Ping")(b"ping", timeout=3)  # type: ignore[no-any-return]
    finally:
        await server.stop(None)


async def _echo(req: bytes, ctx: Any) -> bytes:
    return b"pong:" + req


def test_client_tls_grpc(pki: dict[str, Any]) -> None:
    ca, m1, m2 = pki["ca"], pki["m1"], pki["m2"]
    assert client_tls(ServerConfig(), "") is None
    tls = client_tls(client_cfg(cert_file=m1[0], key_file=m1[1]), "")
    assert tls is not None and not tls.require_client_auth and tls.root_certificates is None
    ca_pem = Path(ca.file).read_bytes()
    got = asyncio.run(_grpc_roundtrip(tls.server_credentials(), grpc.ssl_channel_credentials(ca_pem)))
    assert got == b"pong:ping"

    # --client-cert-auth with the CA: a client cert is required
    mtls = client_tls(
        client_cfg(cert_file=m1[0], key_file=m1[1], trusted_ca_file=ca.file, client_cert_auth=True), ""
    )
    assert mtls is not None and mtls.require_client_auth and mtls.root_certificates
    with_cert = grpc.ssl_channel_credentials(
        ca_pem, Path(m2[1]).read_bytes(), Path(m2[0]).read_bytes()
    )
    assert asyncio.run(_grpc_roundtrip(mtls.server_credentials(), with_cert)) == b"pong:ping"
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        asyncio.run(_grpc_roundtrip(mtls.server_credentials(), grpc.ssl_channel_credentials(ca_pem)))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE

    # --trusted-ca-file alone already requires client certificates, as in etcd
    implied = client_tls(client_cfg(cert_file=m1[0], key_file=m1[1], trusted_ca_file=ca.file), "")
    assert implied is not None and implied.require_client_auth


def test_client_auto_tls(tmp_path: Path) -> None:
    cfg = client_cfg(auto_tls=True)
    tls = client_tls(cfg, str(tmp_path))
    assert tls is not None and tls.self_cert
    assert tls.cert_file == str(tmp_path / "fixtures/client/cert.pem")
    again = client_tls(cfg, str(tmp_path))
    assert again is not None and again.cert_chain == tls.cert_chain
    # the self-signed cert names 127.0.0.1, so trusting it directly verifies
    creds = grpc.ssl_channel_credentials(tls.cert_chain)
    assert asyncio.run(_grpc_roundtrip(tls.server_credentials(), creds)) == b"pong:ping"
    with pytest.raises(ValueError, match="KeyFile and CertFile are not presented"):
        client_tls(client_cfg(), "")
