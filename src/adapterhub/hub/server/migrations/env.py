"""Alembic environment: runs on the connection that :func:`adapterhub.hub.server.database.migrate` hands over."""

from __future__ import annotations

from alembic import context

from adapterhub.hub.server.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - the project always passes a connection
    raise RuntimeError("run migrations through adapterhub.hub.server.database.migrate()")

context.configure(
    connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
