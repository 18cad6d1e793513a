"""Alembic environment: migrations run on the connection the server hands over."""

from __future__ import annotations

from alembic import context

from kaon.server.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - offline mode is not used
    raise RuntimeError("Kaon migrations run through Database.migrate()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
