"""Run the control plane in the foreground under Uvicorn (``kaon server``,
``python -m kaon.server``).

Credentials given in the environment (the bootstrap admin token, a database URL that may
hold a password) are taken out of it before anything else runs: the process re-executes
itself without them and reads them from a pipe instead. Removing a variable from
``os.environ`` is not enough, because ``/proc/<pid>/environ`` shows the environment the
process was started with, and any process of the same user can read it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys

import uvicorn

from kaon.core.tls import is_loopback, listen_refusal
from kaon.server.app import create_app
from kaon.server.config import Settings
from kaon.server.security.home import HomeNotWritableError
from kaon.server.security.tls import ensure_self_signed

CREDENTIALS = ("KAON_BOOTSTRAP_TOKEN", "KAON_DATABASE_URL")
HANDED_FD = "KAON_CREDENTIALS_FD"  # the pipe the re-executed server reads them from
PRIVATE_UMASK = 0o077  # whatever the server writes under KAON_HOME is its user's only


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = with_tls(settings)
    app = create_app(settings.with_(shutdown_deadline_s=settings.shutdown_deadline_s or 30.0))
    # What start-up made (modules, models, schemas, the app) lives as long as the process:
    # moved out of the collector's reach, it is not walked again by every collection. With
    # 10,000 queued jobs that walk was a third of a scheduling tick
    # (benchmarks/scheduler_tick.py --gc-freeze).
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )


class ListenRefused(Exception):
    """The settings would serve the API where it must not go in plain HTTP."""


def with_tls(settings: Settings) -> Settings:
    """`settings` with the certificate it serves: the operator's, or this home's own
    (made on the first start with ``KAON_TLS_SELF_SIGNED``). Refused, before anything
    binds, beyond loopback with neither a certificate nor ``KAON_INSECURE``."""
    if settings.tls_self_signed and settings.tls_cert is None:
        files = ensure_self_signed(settings.home, settings.host)
        settings = settings.with_(tls_cert=files.cert, tls_key=files.key)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ListenRefused("KAON_TLS_CERT and KAON_TLS_KEY go together: give both")
    refusal = listen_refusal(settings.host, settings.tls_cert is not None, settings.insecure)
    if refusal is not None:
        raise ListenRefused(refusal)
    if settings.insecure and settings.tls_cert is None and not is_loopback(settings.host):
        logging.getLogger("kaon.security").warning(
            "INSECURE: serving the API on %s in plain HTTP; every token crosses the network "
            "in clear text",
            settings.host,
        )
    return settings


def main() -> None:
    os.umask(PRIVATE_UMASK)
    if any(name in os.environ for name in CREDENTIALS):
        _exec_without_credentials()  # does not return
    handed = _read_handed_credentials()
    overrides: dict[str, object] = {}
    if "KAON_BOOTSTRAP_TOKEN" in handed:
        overrides["bootstrap_token"] = handed["KAON_BOOTSTRAP_TOKEN"] or None
    if handed.get("KAON_DATABASE_URL"):
        overrides["database_url"] = handed["KAON_DATABASE_URL"]
    try:
        serve(Settings.from_env(**overrides))
    except (HomeNotWritableError, ListenRefused) as exc:  # the operator's to fix: no traceback
        sys.exit(f"kaon server: {exc}")


def _exec_without_credentials() -> None:
    """Start this same command again (same pid) with the credentials moved from the
    environment into a pipe that only the new image reads, once."""
    handed = {name: os.environ[name] for name in CREDENTIALS if name in os.environ}
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps(handed).encode())  # far below a pipe's buffer
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    env[HANDED_FD] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def _read_handed_credentials() -> dict[str, str]:
    fd = os.environ.pop(HANDED_FD, None)
    if fd is None:
        return {}
    with os.fdopen(int(fd), "rb") as pipe:
        handed: dict[str, str] = json.loads(pipe.read() or b"{}")
    return handed
