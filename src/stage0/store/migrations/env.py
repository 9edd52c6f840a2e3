"""Alembic environment: runs against the connection Stage0 hands it (see Store.migrate)."""

from __future__ import annotations

from alembic import context

from stage0.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - Stage0 always passes its connection
    raise RuntimeError("run migrations through `stage0.store.Store.migrate`")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
