"""``python -m kaon.gateway --port 8471 --control-plane URL --token-file FILE``.

``--routes FILE`` serves a fixed route table instead (one machine, benchmarks).

The token (the gateway's own, to read routes and post reports) is best handed over in a
file (``--token-file``): the gateway reads it and deletes it, so the token is in neither
its command line nor its environment, which ``/proc/<pid>/environ`` shows to every
process of the same user for as long as the gateway runs. That is how `kaon up` starts
it. ``--token`` and ``KAON_GATEWAY_TOKEN`` still work, for a gateway started by hand,
with the token visible there.

``--tls-cert FILE --tls-key FILE`` (or ``KAON_GATEWAY_TLS_CERT``/``KAON_GATEWAY_TLS_KEY``)
serve HTTPS instead of HTTP.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import stat
import sys

from kaon.core.gateway import RouteTable
from kaon.core.ratelimit import FailureLimiter
from kaon.core.tls import server_context
from kaon.gateway.app import Gateway
from kaon.gateway.server import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS_PER_ADDRESS,
    GatewayServer,
)
from kaon.gateway.sources import HttpReportSink, HttpRouteSource, StaticRouteSource

logger = logging.getLogger("kaon.gateway")


def build_gateway(control_plane: str, token: str, poll_s: float = 0.5) -> Gateway:
    return Gateway(
        HttpRouteSource(control_plane, token, interval_s=poll_s),
        HttpReportSink(control_plane, token),
        failures=FailureLimiter.from_env(),
    )


def static_gateway(routes_file: str) -> Gateway:
    """A gateway with a fixed `RouteTable` read from a JSON file (no control plane)."""
    with open(routes_file, "rb") as f:
        table = RouteTable.model_validate_json(f.read())
    return Gateway(StaticRouteSource(table), failures=FailureLimiter.from_env())


class TokenFileError(Exception):
    """The token file cannot be used: missing, empty, or readable by others."""


def take_token_file(path: str) -> str:
    """The token in `path`, which is then deleted: a hand-over, read once. A file that
    other users may read is refused (the token would already be theirs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TokenFileError(f"--token-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
            raise TokenFileError(f"--token-file {path}: readable by others; make it 0600")
        token = f.read().decode().strip()
    try:
        os.unlink(path)
    except OSError as exc:
        logger.warning("could not delete the token file %s: %s", path, exc.strerror)
    if not token:
        raise TokenFileError(f"--token-file {path}: empty")
    return token


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server context for `cert` and `key`, or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("--tls-cert and --tls-key go together: give both")
    return server_context(cert, key)


def run(
    gateway: Gateway,
    host: str,
    port: int,
    header_s: float = HEADER_TIMEOUT_S,
    body_s: float = BODY_TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
    max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
) -> None:
    """Serve with the gateway's own HTTP server (`kaon.gateway.server`) until SIGTERM."""
    GatewayServer(
        gateway,
        host,
        port,
        header_timeout_s=header_s,
        body_timeout_s=body_s,
        tls=tls,
        max_per_address=max_per_address,
    ).run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kaon.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8471)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--control-plane", help="e.g. http://127.0.0.1:8470")
    where.add_argument("--routes", help="a RouteTable JSON file, instead of a control plane")
    parser.add_argument(
        "--token-file", help="read the token from this file (0600), then delete the file"
    )
    parser.add_argument("--token", default=os.environ.get("KAON_GATEWAY_TOKEN"))
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between route polls")
    parser.add_argument(
        "--tls-cert",
        default=os.environ.get("KAON_GATEWAY_TLS_CERT"),
        help="serve HTTPS with this certificate (PEM)",
    )
    parser.add_argument(
        "--tls-key", default=os.environ.get("KAON_GATEWAY_TLS_KEY"), help="its key (PEM)"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=float(os.environ.get("KAON_GATEWAY_HEADER_TIMEOUT_S", HEADER_TIMEOUT_S)),
        help="seconds a client has for a request's line and headers (and a TLS handshake)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=float(os.environ.get("KAON_GATEWAY_BODY_TIMEOUT_S", BODY_TIMEOUT_S)),
        help="seconds a client then has for the request's body",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=int(
            os.environ.get("KAON_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", MAX_CONNECTIONS_PER_ADDRESS)
        ),
        help="open connections one client address may hold (behind a proxy: raise it)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per route poll
    try:
        tls = tls_context(args.tls_cert, args.tls_key)
    except (ValueError, OSError, ssl.SSLError) as exc:
        parser.error(f"TLS: {exc}")
    timeouts = (args.header_timeout, args.body_timeout)
    cap = args.max_connections_per_address
    if args.routes:
        run(static_gateway(args.routes), args.host, args.port, *timeouts, tls, cap)
        return 0
    token = args.token
    if args.token_file:
        try:
            token = take_token_file(args.token_file)
        except TokenFileError as exc:
            parser.error(str(exc))
    if not token:
        parser.error("--token-file, --token or KAON_GATEWAY_TOKEN is required")
    gateway = build_gateway(args.control_plane, token, args.poll)
    run(gateway, args.host, args.port, *timeouts, tls, cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
