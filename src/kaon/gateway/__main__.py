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
from kaon.gateway.app import Gateway
from kaon.gateway.server import GatewayServer
from kaon.gateway.sources import HttpReportSink, HttpRouteSource, StaticRouteSource


def build_gateway(control_plane: str, token: str, poll_s: float = 0.5) -> Gateway:
    return Gateway(
        HttpRouteSource(control_plane, token, interval_s=poll_s),
        HttpReportSink(control_plane, token),
    )


def static_gateway(routes_file: str) -> Gateway:
    """A gateway with a fixed `RouteTable` read from a JSON file (no control plane)."""
    with open(routes_file, "rb") as f:
        table = RouteTable.model_validate_json(f.read())
    return Gateway(StaticRouteSource(table))


def run(gateway: Gateway, host: str, port: int) -> None:
    """Serve with the gateway's own HTTP server (`kaon.gateway.server`) until SIGTERM."""
    GatewayServer(gateway, host, port).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaon.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8471)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--control-plane", help="e.g. http://127.0.0.1:8470")
    where.add_argument("--routes", help="a RouteTable JSON file, instead of a control plane")
    parser.add_argument("--token", default=os.environ.get("KAON_GATEWAY_TOKEN"))
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between route polls")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per route poll
    if args.routes:
        run(static_gateway(args.routes), args.host, args.port)
        return 0
    if not args.token:
        parser.error("--token or KAON_GATEWAY_TOKEN is required")
    run(build_gateway(args.control_plane, args.token, args.poll), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
