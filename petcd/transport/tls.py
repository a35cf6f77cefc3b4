"""TLS material for the peer listener/dialer and the client (gRPC) listener, after etcd's
``transport.TLSInfo``, ``SelfCert`` and ``embed.Config.PeerSelfCert``/``ClientSelfCert``.

* ``peer_tls(cfg, data_dir)`` gives the ``ssl.SSLContext`` pair the member ``Transport`` takes.
  The server context is a ``PeerServerContext``: besides the handshake it carries the checks
  etcd makes on an accepted peer connection (allowed CN / hostname, client SAN against the
  remote address, CRL), which Python's ssl cannot run inside the handshake, so
  ``Transport`` awaits ``check_inbound`` before reading from the connection.
* ``client_tls(cfg, data_dir)`` gives the PEM inputs of ``grpc.ssl_server_credentials``.
* ``self_cert(dir, hosts, years)`` is etcd's auto-TLS certificate (``cert.pem``/``key.pem``,
  reused when both files exist). ECDSA P-256 where etcd uses P-521: gRPC's BoringSSL
  finds no common signature algorithm for a P-521 server key.

File and key errors are ValueErrors worded like Go's (``open X: no such file or directory``,
``tls: private key does not match public key``) so operators see what etcd would print.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import ipaddress
import os
import re
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from petcd import log

__all__ = [
    "ClientTLS",
    "PeerServerContext",
    "client_tls",
    "peer_tls",
    "self_cert",
]

_log = log.get("embed")

_DNS_TIMEOUT = 5.0

# Go's crypto/tls names (as --cipher-suites takes them) -> IANA ids; TLS 1.3 suites are listed
# so they are accepted, but neither Go nor OpenSSL (via Python) lets them be configured.
_CIPHER_IDS = {
    "TLS_RSA_WITH_RC4_128_SHA": 0x0005,
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": 0x000A,
    "TLS_RSA_WITH_AES_128_CBC_SHA": 0x002F,
    "TLS_RSA_WITH_AES_256_CBC_SHA": 0x0035,
    "TLS_RSA_WITH_AES_128_CBC_SHA256": 0x003C,
    "TLS_RSA_WITH_AES_128_GCM_SHA256": 0x009C,
    "TLS_RSA_WITH_AES_256_GCM_SHA384": 0x009D,
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": 0xC007,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009,
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": 0xC011,
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": 0xC012,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013,
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": 0xC023,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": 0xC027,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B,
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": 0xCCA9,
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
}

_TLS_VERSIONS = {"": None, "TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


# ---------------------------------------------------------------------------------------
# files


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        why = (e.strerror or str(e)).lower()
        op = "read" if e.errno == errno.EISDIR else "open"
        raise ValueError(f"{op} {path}: {why}") from None


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0)) for m in _PEM_RE.finditer(data)]


def _load_key_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes, x509.Certificate]:
    """Both PEMs and the leaf, checked the way Go's tls.X509KeyPair checks them."""
    cert_pem, key_pem = _read(cert_file), _read(key_file)
    blocks = _pem_blocks(cert_pem)
    certs = [b for t, b in blocks if t == "CERTIFICATE"]
    if not certs:
        if not blocks:
            raise ValueError("tls: failed to find any PEM data in certificate input")
        if any(t.endswith("PRIVATE KEY") for t, _ in blocks):
            raise ValueError(
                "tls: failed to find certificate PEM data in certificate input, but did find a "
                "private key; PEM inputs may have been switched"
            )
        raise ValueError('tls: failed to find "CERTIFICATE" PEM block in certificate input')
    kblocks = _pem_blocks(key_pem)
    keys = [b for t, b in kblocks if t == "PRIVATE KEY" or t.endswith(" PRIVATE KEY")]
    if not keys:
        if not kblocks:
            raise ValueError("tls: failed to find any PEM data in key input")
        if any(t == "CERTIFICATE" for t, _ in kblocks):
            raise ValueError("tls: found a certificate rather than a key in the PEM for the private key")
        raise ValueError('tls: failed to find PEM block with type ending in "PRIVATE KEY" in key input')
    try:
        leaf = x509.load_pem_x509_certificate(certs[0])
    except ValueError as e:
        raise ValueError(f"x509: malformed certificate ({cert_file}): {e}") from None
    try:
        key = serialization.load_pem_private_key(keys[0], password=None)
    except (ValueError, TypeError):  # TypeError: encrypted key, which etcd cannot use either
        raise ValueError("tls: failed to parse private key") from None
    pub = leaf.public_key()
    if type(key.public_key()) is not type(pub):
        raise ValueError("tls: private key type does not match public key type")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != pub.public_bytes(der, spki):
        raise ValueError("tls: private key does not match public key")
    return b"".join(c + b"\n" for c in certs), keys[0] + b"\n", leaf


def _load_ca(path: str) -> bytes:
    """The CA file's certificates as PEM; like Go's NewCertPool every block must parse."""
    out = []
    for _t, block in _pem_blocks(_read(path)):
        try:
            x509.load_pem_x509_certificate(block)
        except ValueError as e:
            raise ValueError(f"x509: malformed certificate in {path}: {e}") from None
        out.append(block + b"\n")
    return b"".join(out)


def _no_password() -> bytes:
    # Never let OpenSSL prompt on the terminal for an encrypted key.
    raise ValueError("tls: failed to parse private key")


# ---------------------------------------------------------------------------------------
# self-signed certificates


def _split_host(hostport: str) -> str:
    """Go's net.SplitHostPort host part ("" when malformed)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        return hostport[1:end] if end > 0 and hostport[end + 1 : end + 2] == ":" else ""
    host, sep, _port = hostport.rpartition(":")
    return host if sep and ":" not in host else ""


def self_cert(dirpath: str, hosts: list[str], validity_years: int = 1) -> tuple[str, str]:
    """etcd's SelfCert: (cert path, key path) under dirpath, created unless both exist.

    hosts are "host:port" strings; IPs become IP SANs, names DNS SANs.
    """
    if validity_years <= 0:
        raise ValueError("selfSignedCertValidity is invalid,it should be greater than 0")
    os.makedirs(dirpath, mode=0o700, exist_ok=True)
    cert_path = os.path.abspath(os.path.join(dirpath, "cert.pem"))
    key_path = os.path.abspath(os.path.join(dirpath, "key.pem"))
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path

    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=365 * validity_years)
    _log.warning(
        "automatically generate certificates",
        **{"certificate-validity-bound-not-after": not_after.isoformat()},
    )
    sans: list[x509.GeneralName] = []
    for hp in hosts:
        h = _split_host(hp)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if h:
                sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=True, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(key, hashes.SHA256())
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    _log.info("created cert file", path=cert_path)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,  # "EC PRIVATE KEY", as etcd writes
                serialization.NoEncryption(),
            )
        )
    _log.info("created key file", path=key_path)
    return cert_path, key_path


# ---------------------------------------------------------------------------------------
# certificate checks after the handshake


def _san(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(IP SANs, DNS SANs)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return [str(i) for i in ext.get_values_for_type(x509.IPAddress)], ext.get_values_for_type(
        x509.DNSName
    )


def _match_dns(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(s.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def verify_hostname(cert: x509.Certificate, host: str) -> str | None:
    """Go's Certificate.VerifyHostname (SANs only, as Go 1.15+): None or its error text."""
    ips, names = _san(cert)
    want = _ip(host)
    if want is not None:
        if any(_ip(i) == want for i in ips):
            return None
        if not ips:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        return f"x509: certificate is valid for {', '.join(ips)}, not {host}"
    if any(_match_dns(n, host) for n in names):
        return None
    if not names:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {', '.join(names)}, not {host}"


def _goq(items: list[str]) -> str:
    return "[" + " ".join(f'"{s}"' for s in items) + "]"


async def _host_in_dns(host: str, names: list[str]) -> tuple[bool, str]:
    """etcd's isHostInDNS: reverse then forward lookups; (matched, last lookup error)."""
    loop = asyncio.get_running_loop()
    wildcards = [n[1:] for n in names if n.startswith("*.")]
    plain = [n for n in names if not n.startswith("*.")]
    err = ""
    try:
        async with asyncio.timeout(_DNS_TIMEOUT):
            rname, aliases, _ = await loop.run_in_executor(None, socket.gethostbyaddr, host)
        for n in [rname, *aliases]:
            n = n.rstrip(".")
            if any(n.endswith(w) for w in wildcards) or n in plain:
                return True, ""
    except (OSError, TimeoutError) as e:
        err = str(e) or type(e).__name__
    for n in plain:
        try:
            async with asyncio.timeout(_DNS_TIMEOUT):
                infos = await loop.getaddrinfo(n, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as e:
            err = str(e) or type(e).__name__
            continue
        if any(_ip(str(ai[4][0])) == _ip(host) for ai in infos):
            return True, ""
    return False, err


async def check_cert_san(cert: x509.Certificate, remote_host: str) -> str | None:
    """etcd's checkCertSAN: the client certificate must name the address it connects from."""
    ips, names = _san(cert)
    if not ips and not names:
        return None
    if ips:
        err = verify_hostname(cert, remote_host)
        if err is None:
            return None
        if not names:
            return err
    ok, lerr = await _host_in_dns(remote_host, names)
    if ok:
        return None
    tail = f" ({lerr})" if lerr else ""
    return f'tls: "{remote_host}" does not match any of DNSNames {_goq(names)}{tail}'


def _crl_serials(path: str) -> set[int]:
    data = _read(path)
    try:
        crl = (
            x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        )
    except ValueError as e:
        raise ValueError(f"x509: malformed crl in {path}: {e}") from None
    return {r.serial_number for r in crl}


class PeerServerContext(ssl.SSLContext):
    """The peer listener's SSLContext plus etcd's checks on an accepted connection."""

    allowed_cn: str = ""
    allowed_hostname: str = ""
    crl_file: str = ""
    check_san: bool = True

    async def check_inbound(self, transport: asyncio.BaseTransport) -> bool:
        """Run after the handshake; logs "rejected connection" and returns False to refuse."""
        try:
            return await self._check(transport)
        except Exception as e:  # an unparsable certificate must not kill the listener
            _log.warning("rejected connection", error=str(e) or type(e).__name__)
            return False

    async def _check(self, transport: asyncio.BaseTransport) -> bool:
        sslobj = transport.get_extra_info("ssl_object")
        peername = transport.get_extra_info("peername") or ("", 0)
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return True  # no client certificate was asked for (or given): nothing to check
        cert = x509.load_der_x509_certificate(der)
        host = str(peername[0])
        err: str | None = None
        if self.verify_mode != ssl.CERT_NONE and (self.allowed_cn or self.allowed_hostname):
            if self.allowed_cn:
                cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                ok = bool(cns) and cns[0].value == self.allowed_cn
            else:
                ok = verify_hostname(cert, self.allowed_hostname) is None
            if not ok:
                err = "client certificate authentication failed"
        if err is None and self.check_san:
            err = await check_cert_san(cert, host)
        if err is None and self.crl_file:
            try:
                n = cert.serial_number
                if n in await asyncio.to_thread(_crl_serials, self.crl_file):
                    serial = n.to_bytes((n.bit_length() + 7) // 8 or 1, "big").hex()
                    err = f"transport: certificate serial {serial} revoked"
            except ValueError as e:
                err = str(e)
        if err is None:
            return True
        ips, names = _san(cert)
        addr = f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
        _log.warning(
            "rejected connection",
            **{"remote-addr": addr, "server-name": "", "ip-addresses": ips, "dns-names": names},
            error=err,
        )
        return False


# ---------------------------------------------------------------------------------------
# contexts


@dataclass(slots=True)
class _Info:
    """The subset of etcd's TLSInfo petcd uses."""

    cert_file: str = ""
    key_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    crl_file: str = ""
    allowed_cn: str = ""
    allowed_hostname: str = ""
    self_cert: bool = False
    skip_client_san_verify: bool = False

    def empty(self) -> bool:
        return self.cert_file == "" and self.key_file == ""

    def describe(self) -> str:
        return (
            f"cert = {self.cert_file}, key = {self.key_file}, client-cert={self.client_cert_file}, "
            f"client-key={self.client_key_file}, trusted-ca = {self.trusted_ca_file}, "
            f"client-cert-auth = {str(self.client_cert_auth).lower()}, crl-file = {self.crl_file}"
        )


def _check_base(info: _Info) -> None:
    """etcd's TLSInfo.baseConfig prevalidation, same wording."""
    if not info.key_file or not info.cert_file:
        raise ValueError(
            f"KeyFile and CertFile must both be present[key: {info.key_file}, cert: {info.cert_file}]"
        )
    _load_key_pair(info.cert_file, info.key_file)
    if bool(info.client_key_file) != bool(info.client_cert_file):
        raise ValueError(
            "ClientKeyFile and ClientCertFile must both be present or both absent: "
            f"key: {info.client_key_file}, cert: {info.client_cert_file}]"
        )
    if info.client_cert_file:
        _load_key_pair(info.client_cert_file, info.client_key_file)
    if info.allowed_cn and info.allowed_hostname:
        raise ValueError(
            f'AllowedCN and AllowedHostname are mutually exclusive (cn="{info.allowed_cn}", '
            f'hostname="{info.allowed_hostname}")'
        )


def _versions(cfg: Any) -> tuple[ssl.TLSVersion, ssl.TLSVersion | None]:
    got = []
    for v in (getattr(cfg, "tls_min_version", ""), getattr(cfg, "tls_max_version", "")):
        if v not in _TLS_VERSIONS:
            raise ValueError(f'unexpected TLS version "{v}" (must be one of: TLS1.2, TLS1.3)')
        got.append(_TLS_VERSIONS[v])
    lo, hi = got
    lo = lo or ssl.TLSVersion.TLSv1_2  # etcd's default minimum
    if hi is not None and lo > hi:
        raise ValueError(
            f"min version ({cfg.tls_min_version}) is greater than max version ({cfg.tls_max_version})"
        )
    return lo, hi


def _openssl_ciphers(names: list[str]) -> str:
    """--cipher-suites (Go names) as an OpenSSL cipher string; "" = library default."""
    if not names:
        return ""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.set_ciphers("ALL:@SECLEVEL=0")
    by_id = {c["id"] & 0xFFFF: c["name"] for c in probe.get_ciphers()}
    out = []
    for n in names:
        cid = _CIPHER_IDS.get(n)
        if cid is None:
            raise ValueError(f'unexpected TLS cipher suite "{n}"')
        if cid >> 8 == 0x13:
            continue  # TLS 1.3 suites are fixed
        if cid not in by_id:
            raise ValueError(f'TLS cipher suite "{n}" is not available in {ssl.OPENSSL_VERSION}')
        out.append(by_id[cid])
    return ":".join(out)


def _apply_common(ctx: ssl.SSLContext, cfg: Any) -> None:
    lo, hi = _versions(cfg)
    ctx.minimum_version = lo
    if hi is not None:
        ctx.maximum_version = hi
    ciphers = _openssl_ciphers(list(getattr(cfg, "cipher_suites", []) or []))
    if ciphers:
        ctx.set_ciphers(ciphers)


def _server_context(info: _Info, cfg: Any) -> PeerServerContext:
    _check_base(info)
    ctx = PeerServerContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, cfg)
    ctx.load_cert_chain(info.cert_file, info.key_file, password=_no_password)
    # etcd: a trusted CA alone already means RequireAndVerifyClientCert
    if info.trusted_ca_file or info.client_cert_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if info.trusted_ca_file:
            ca = _load_ca(info.trusted_ca_file)
            if ca:
                ctx.load_verify_locations(cadata=ca.decode())
        else:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    ctx.allowed_cn = info.allowed_cn
    ctx.allowed_hostname = info.allowed_hostname
    ctx.check_san = not info.skip_client_san_verify
    if info.crl_file:
        _crl_serials(info.crl_file)  # fail at startup on a bad file, as etcd's first check would
        ctx.crl_file = info.crl_file
    return ctx


def _client_context(info: _Info, cfg: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not info.empty():
        _check_base(info)
        _apply_common(ctx, cfg)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if info.trusted_ca_file:
        ca = _load_ca(info.trusted_ca_file)
        if ca:
            ctx.load_verify_locations(cadata=ca.decode())
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if info.self_cert:
        # etcd sets InsecureSkipVerify for self-signed peers: encrypted, not authenticated
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if not info.empty():
        cert, key = info.cert_file, info.key_file
        if info.client_cert_file:
            cert, key = info.client_cert_file, info.client_key_file
        ctx.load_cert_chain(cert, key, password=_no_password)
    return ctx


def _hosts(*url_lists: list[str]) -> list[str]:
    out: list[str] = []
    for urls in url_lists:
        for u in urls:
            netloc = urlsplit(u).netloc
            if netloc and netloc not in out:
                out.append(netloc)
    return out


def _scheme(u: str) -> str:
    return urlsplit(u).scheme or "http"


def peer_tls(cfg: Any, data_dir: str) -> tuple[PeerServerContext | None, ssl.SSLContext | None]:
    """(server, client) contexts for the member Transport from the --peer-* flags.

    Either is None when there is nothing to configure it with. A server context is only
    returned when some --listen-peer-urls is https: Transport uses it on every listener.
    """
    info = _Info(
        cert_file=cfg.peer_cert_file,
        key_file=cfg.peer_key_file,
        client_cert_file=getattr(cfg, "peer_client_cert_file", ""),
        client_key_file=getattr(cfg, "peer_client_key_file", ""),
        trusted_ca_file=cfg.peer_trusted_ca_file,
        client_cert_auth=cfg.peer_client_cert_auth,
        crl_file=cfg.peer_crl_file,
        allowed_cn=cfg.peer_cert_allowed_cn,
        allowed_hostname=cfg.peer_cert_allowed_hostname,
        skip_client_san_verify=getattr(cfg, "experimental_peer_skip_client_san_verification", False),
    )
    if cfg.peer_auto_tls:
        if not info.empty():
            _log.warning("ignoring peer auto TLS since certs given")
        else:
            hosts = _hosts(cfg.listen_peer_urls, cfg.initial_advertise_peer_urls)
            d = os.path.join(data_dir, "fixtures", "peer")
            info.cert_file, info.key_file = self_cert(d, hosts, cfg.self_signed_cert_validity)
            info.client_cert_file, info.client_key_file = info.cert_file, info.key_file
            info.self_cert = True
    https = [u for u in cfg.listen_peer_urls if _scheme(u) in ("https", "unixs")]
    if not info.empty():
        _log.info(
            "starting with peer TLS",
            **{"tls-info": info.describe(), "cipher-suites": list(getattr(cfg, "cipher_suites", []))},
        )
    for u in cfg.listen_peer_urls:
        if _scheme(u) == "http":
            if not info.empty():
                _log.warning(
                    "scheme is HTTP while key and cert files are present; ignoring key and cert files",
                    **{"peer-url": u},
                )
            if info.client_cert_auth:
                _log.warning(
                    "scheme is HTTP while --peer-client-cert-auth is enabled; ignoring client cert "
                    "auth for this URL",
                    **{"peer-url": u},
                )
    if info.empty() and https:
        raise ValueError(
            f"cannot listen on TLS for {urlsplit(https[0]).netloc}: KeyFile and CertFile are not presented"
        )
    server = _server_context(info, cfg) if https else None
    if info.empty() and not info.trusted_ca_file:
        return server, None
    return server, _client_context(info, cfg)


# ---------------------------------------------------------------------------------------
# client (gRPC) side


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """PEM inputs of grpc.ssl_server_credentials for the client listener."""

    cert_chain: bytes
    private_key: bytes
    root_certificates: bytes | None
    require_client_auth: bool
    cert_file: str = ""
    key_file: str = ""
    self_cert: bool = False

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.require_client_auth,
        )


def client_server_context(cfg: Any, ctls: ClientTLS) -> ssl.SSLContext:
    """The server side of a client TLS listener (gRPC and https metrics alike)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, cfg)
    ctx.load_cert_chain(ctls.cert_file, ctls.key_file, password=_no_password)
    if ctls.require_client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ctls.root_certificates:
            ctx.load_verify_locations(cadata=ctls.root_certificates.decode())
    return ctx


def metrics_tls(cfg: Any, data_dir: str, url: str) -> ssl.SSLContext:
    """The TLS of an https --listen-metrics-urls listener: etcd serves it with the client
    listener's files (cert, key, trusted CA, client cert auth, auto TLS)."""
    ctls = client_tls(cfg, data_dir)
    if ctls is None:
        raise ValueError(
            f"cannot listen on TLS for {urlsplit(url).netloc}: KeyFile and CertFile are not presented"
        )
    return client_server_context(cfg, ctls)


def _system_ca_pem() -> bytes | None:
    paths = ssl.get_default_verify_paths()
    for p in (paths.cafile, paths.openssl_cafile):
        if p and os.path.isfile(p):
            with open(p, "rb") as f:
                return f.read()
    return None


def client_tls(cfg: Any, data_dir: str) -> ClientTLS | None:
    """Client listener TLS from --cert-file/--key-file/--trusted-ca-file/--client-cert-auth
    /--auto-tls; None when client TLS is off."""
    info = _Info(
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        client_cert_file=getattr(cfg, "client_cert_file", ""),
        client_key_file=getattr(cfg, "client_key_file", ""),
        trusted_ca_file=cfg.trusted_ca_file,
        client_cert_auth=cfg.client_cert_auth,
    )
    if cfg.auto_tls:
        if not info.empty():
            _log.warning("ignoring client auto TLS since certs given")
        else:
            hosts = _hosts(cfg.listen_client_urls, getattr(cfg, "listen_client_http_urls", []),
                           cfg.advertise_client_urls)
            d = os.path.join(data_dir, "fixtures", "client")
            info.cert_file, info.key_file = self_cert(d, hosts, cfg.self_signed_cert_validity)
            info.self_cert = True
    if info.empty():
        if any(_scheme(u) in ("https", "unixs") for u in cfg.listen_client_urls):
            u = next(u for u in cfg.listen_client_urls if _scheme(u) in ("https", "unixs"))
            raise ValueError(
                f"cannot listen on TLS for {urlsplit(u).netloc}: KeyFile and CertFile are not presented"
            )
        return None
    _check_base(info)
    chain, key, _leaf = _load_key_pair(info.cert_file, info.key_file)
    require = bool(info.trusted_ca_file or info.client_cert_auth)
    roots: bytes | None = None
    if info.trusted_ca_file:
        roots = _load_ca(info.trusted_ca_file)
    elif require:
        roots = _system_ca_pem()
        if roots is None:
            raise ValueError("--client-cert-auth needs --trusted-ca-file (no system CA bundle found)")
    return ClientTLS(chain, key, roots, require, info.cert_file, info.key_file, info.self_cert)
