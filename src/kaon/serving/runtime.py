"""The replica process: ``python -m kaon.serving.runtime --service module:Class --port N``.

The control plane's executor starts one of these per replica, with the uploaded code folder
as its working directory and ``KAON_REPLICA_ID`` / ``KAON_DEPLOYMENT`` in its environment.
``kaon serve DIR --service module:Class`` runs the same `serve` in the foreground.

Exit codes: 0 after SIGTERM/SIGINT (in-flight requests are drained first); 1 when the
service cannot be imported or built (at once), or when ``setup()`` raised (after
``--exit-after-setup-failure`` seconds, default 3, during which ``/ready`` explains why).
A non-zero exit is what tells the control plane to restart the replica with backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

import uvicorn

from kaon.core.replicas import (
    ENV_DEPLOYMENT,
    ENV_NODE_ADDRESS,
    ENV_PORT,
    ENV_REPLICA_ID,
    ENV_REPLICA_KEY,
    ReplicaStatus,
)
from kaon.serving.app import ReplicaApp
from kaon.serving.service import Service

__all__ = ["build_app", "load_service", "main", "serve"]

logger = logging.getLogger("kaon.serving")

SETUP_FAILURE_EXIT_DELAY_S = 3.0


def load_service(ref: str, path: str | os.PathLike[str] | None = None) -> Service:
    """Import ``module:Class`` (from `path` first, when given) and instantiate it."""
    module_name, _, class_name = ref.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"service must look like 'module:Class', got {ref!r}")
    folder = str(Path(path).resolve()) if path is not None else os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    klass = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(klass, type) and issubclass(klass, Service)):
        raise TypeError(f"{ref} is not a subclass of kaon.Service")
    return klass()


def build_app(
    service: str | Service,
    path: str | os.PathLike[str] | None = None,
    exit_after_setup_failure_s: float | None = None,
) -> ReplicaApp:
    """The replica app for `service`; with `exit_after_setup_failure_s`, a failed setup()
    stops the process (exit code 1) after that many seconds.

    The replica's credential, when the control plane gave one, is taken out of the
    environment here, so no process the service starts inherits it."""
    instance = load_service(service, path) if isinstance(service, str) else service
    title = os.environ.get(ENV_DEPLOYMENT) or type(instance).__name__
    on_failed = None
    if exit_after_setup_failure_s is not None:
        delay = exit_after_setup_failure_s
        on_failed = lambda _reason: _exit_later(delay)  # noqa: E731
    key = os.environ.pop(ENV_REPLICA_KEY, None)
    return ReplicaApp(instance, title=title, on_setup_failed=on_failed, key=key)


def _exit_later(delay: float) -> None:
    """Exit with 1 after `delay`: long enough for a probe to read /ready's reason."""
    asyncio.get_running_loop().call_later(delay, _exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # a replica whose setup() failed has nothing to drain


def serve(
    path: str | os.PathLike[str] | None,
    service: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    exit_after_setup_failure_s: float = SETUP_FAILURE_EXIT_DELAY_S,
    log_level: str = "info",
) -> int:
    """Serve ``module:Class`` from folder `path` on host:port until SIGTERM; the exit code."""
    _configure_logging(log_level)
    app = build_app(service, path, exit_after_setup_failure_s)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # no header rewriting per request; the gateway sets X-Forwarded-For
        server_header=False,
        date_header=False,
        log_level="warning",
        timeout_keep_alive=75,  # longer than the gateway keeps idle connections
        timeout_graceful_shutdown=30,
        backlog=4096,
    )
    replica = os.environ.get(ENV_REPLICA_ID, "-")
    logger.info("replica %s serving %s on http://%s:%d", replica, service, host, port)
    uvicorn.Server(config).run()
    return 1 if app.state is ReplicaStatus.FAILED else 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaon.serving.runtime", description=__doc__)
    parser.add_argument("--service", required=True, help="module:Class of a kaon.Service")
    parser.add_argument("--path", default=None, help="folder to import from (default: cwd)")
    parser.add_argument("--host", default=os.environ.get(ENV_NODE_ADDRESS, "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get(ENV_PORT, "8080")))
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--exit-after-setup-failure", type=float, default=SETUP_FAILURE_EXIT_DELAY_S,
        metavar="SECONDS", help="how long /ready reports a failed setup() before exiting",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return serve(
        args.path,
        args.service,
        args.host,
        args.port,
        exit_after_setup_failure_s=args.exit_after_setup_failure,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    sys.exit(main())
