"""The control plane's certificate: the operator's, or one Kaon makes for itself.

``kaon up --tls-self-signed`` asks the server (``KAON_TLS_SELF_SIGNED``) to serve with a
certificate of its own: an EC P-256 key and a self-signed certificate for this host's
names and addresses, written under ``KAON_HOME/tls`` (folder 0700, files 0600) on the
first start and reused after, so a client that pinned it keeps trusting the server
across restarts. Clients trust that exact certificate (`kaon.core.tls.client_context`);
the CLI prints its SHA-256 fingerprint for people who connect from elsewhere.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kaon.core.tls import CERT_FILE, KEY_FILE, SELF_SIGNED_DIR, is_loopback

VALID_FOR = dt.timedelta(days=825)  # the longest lifetime clients commonly accept
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def self_signed_files(home: Path) -> TlsFiles:
    folder = home / SELF_SIGNED_DIR
    return TlsFiles(folder / CERT_FILE, folder / KEY_FILE)


def ensure_self_signed(home: Path, host: str) -> TlsFiles:
    """This home's self-signed certificate, made now if there is none (or if the one
    there no longer names `host`, or is expiring)."""
    files = self_signed_files(home)
    names, addresses = host_identities(host)
    if files.cert.exists() and files.key.exists() and _still_good(files.cert, names, addresses):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_certificate(key, names, addresses, dt.datetime.now(dt.UTC))
    files.cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(files.key, key_pem(key))
    _write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def build_certificate(
    key: ec.EllipticCurvePrivateKey,
    names: Iterable[str],
    addresses: Iterable[IPAddress],
    now: dt.datetime,
) -> x509.Certificate:
    """A self-signed certificate for `names` and `addresses`: its own CA (so it can be
    pinned as a trust anchor) and a server certificate."""
    names, addresses = list(names), list(addresses)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "kaon")])
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(a) for a in addresses]
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clocks a little behind
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def host_identities(host: str) -> tuple[list[str], list[IPAddress]]:
    """The names and addresses clients may use for this host: loopback always, the
    host's names, and the address it listens on (every interface's for a wildcard)."""
    names = ["localhost"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    addresses: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    candidates: list[str] = []
    if host in ("", "0.0.0.0", "::"):
        for entries in psutil.net_if_addrs().values():
            candidates += [e.address.split("%")[0] for e in entries]
    elif not is_loopback(host):
        candidates.append(host)
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate.strip("[]"))
        except ValueError:
            if candidate not in names:
                names.append(candidate)  # a host name given as the address
            continue
        if address not in addresses:
            addresses.append(address)
    return names, addresses


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _still_good(path: Path, names: list[str], addresses: list[IPAddress]) -> bool:
    """Whether the certificate there names everything wanted and has a month left."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=30):
        return False
    have_names = set(alt.get_values_for_type(x509.DNSName))
    have_addresses = set(alt.get_values_for_type(x509.IPAddress))
    return set(names) <= have_names and set(addresses) <= have_addresses


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by this user only, replacing the file at once."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
