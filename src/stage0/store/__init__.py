"""Persistence: one schema for SQLite (the embedded default) and PostgreSQL, migrated by Alembic."""

from stage0.store.database import Store, resolve_url

__all__ = ["Store", "resolve_url"]
