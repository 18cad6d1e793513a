"""TLS words the control plane, the CLI, the SDK and the workers share.

The control plane refuses to listen beyond loopback in plain HTTP (`listen_refusal`);
every client of it (the CLI, the SDK, the gateway, a worker's supervisor, `kaon.report`,
node sync) verifies its certificate against one trust anchor: the certificate file the
client config names (``ca_file``, ``KAON_CA_FILE``), or for workers the certificate's
text in their environment (``KAON_CA_PEM``: a worker run as another user, or on another
node, cannot read a file of the control plane's home). The gateway serves the same
certificate (`server_context`), and its callers verify it the same way. Standard library
only, so the worker's supervisor could use the same rules.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl

ENV_CA_FILE = "KAON_CA_FILE"  # a client's trust anchor, a PEM file
ENV_CA_PEM = "KAON_CA_PEM"  # the same as text, in a worker's environment
SELF_SIGNED_DIR = "tls"  # under KAON_HOME: what `kaon up --tls-self-signed` made
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the API on this machine. A wildcard
    (``0.0.0.0``, ``::``, empty) listens on every interface, so it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def listen_refusal(host: str, has_certificate: bool, insecure: bool) -> str | None:
    """Why the control plane must not listen on `host` as configured, or None. Plain
    HTTP beyond loopback carries every token in clear text, so it takes a certificate or
    an explicit ``--insecure``."""
    if is_loopback(host) or has_certificate or insecure:
        return None
    return (
        f"refusing to serve the API on {host} in plain HTTP: tokens would cross the network "
        "in clear text. Give a certificate (--tls-cert FILE --tls-key FILE), or let Kaon "
        "make one (--tls-self-signed), or, on a network you trust, pass --insecure"
    )


def fingerprint(pem: str) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as ``AB:CD:...`` (what
    ``openssl x509 -fingerprint -sha256`` prints), to compare by eye or pin."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def client_context(ca_file: str | None = None, ca_pem: str | None = None) -> ssl.SSLContext:
    """A client context that trusts exactly the given certificate (a CA's, or the
    server's own, which is then pinned: a self-signed leaf is its own anchor). The host
    name is still checked against the certificate's names."""
    context = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a pinned leaf ends the chain
    return context


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the gateway's own HTTP server: this certificate and key,
    TLS 1.2 or later, HTTP/1.1 offered by ALPN. Loading fails (`ssl.SSLError`,
    `OSError`) at start rather than at the first handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def is_verify_failure(error: BaseException) -> bool:
    """Whether a connection failed because the peer's certificate was not trusted."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
