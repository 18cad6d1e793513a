"""Run the control plane in the foreground under Uvicorn (``kaon server``,
``python -m kaon.server``)."""

from __future__ import annotations

import logging

import uvicorn

from kaon.server.app import create_app
from kaon.server.config import Settings


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(settings.with_(shutdown_deadline_s=settings.shutdown_deadline_s or 30.0))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)


def main() -> None:
    serve(Settings.from_env())
