"""``python -m kaon.gateway --port 8471 --control-plane URL --token TOKEN``.

``--routes FILE`` serves a fixed route table instead (one machine, benchmarks).

The token (the gateway's own, to read routes and post reports) may also come from
``KAON_GATEWAY_TOKEN``, which keeps it out of the process list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kaon.core.gateway import RouteTable
from kaon.core.ratelimit import FailureLimiter
from kaon.gateway.app import Gateway
from kaon.gateway.server import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, GatewayServer
from kaon.gateway.sources import HttpReportSink, HttpRouteSource, StaticRouteSource


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


def run(
    gateway: Gateway,
    host: str,
    port: int,
    header_s: float = HEADER_TIMEOUT_S,
    body_s: float = BODY_TIMEOUT_S,
) -> None:
    """Serve with the gateway's own HTTP server (`kaon.gateway.server`) until SIGTERM."""
    GatewayServer(gateway, host, port, header_timeout_s=header_s, body_timeout_s=body_s).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaon.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8471)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--control-plane", help="e.g. http://127.0.0.1:8470")
    where.add_argument("--routes", help="a RouteTable JSON file, instead of a control plane")
    parser.add_argument("--token", default=os.environ.get("KAON_GATEWAY_TOKEN"))
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between route polls")
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=float(os.environ.get("KAON_GATEWAY_HEADER_TIMEOUT_S", HEADER_TIMEOUT_S)),
        help="seconds a client has for a request's line and headers",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=float(os.environ.get("KAON_GATEWAY_BODY_TIMEOUT_S", BODY_TIMEOUT_S)),
        help="seconds a client then has for the request's body",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per route poll
    if args.routes:
        timeouts = (args.header_timeout, args.body_timeout)
        run(static_gateway(args.routes), args.host, args.port, *timeouts)
        return 0
    if not args.token:
        parser.error("--token or KAON_GATEWAY_TOKEN is required")
    gateway = build_gateway(args.control_plane, args.token, args.poll)
    run(gateway, args.host, args.port, args.header_timeout, args.body_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
