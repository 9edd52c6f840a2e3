"""What the store-backed commands share: ``--db`` (or ``STAGE0_DATABASE_URL``; the default
store is the SQLite file ``./stage0.db``), ``--key``, and opening the store: only ``serve`` and
``migrate`` create one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import click
from sqlalchemy import make_url

from stage0.contract.request import parse_instant
from stage0.store import Store
from stage0.store.database import URL_ENV, redact_url
from stage0.store.keys import lookup_key

DB_OPTION = click.option(
    "--db", "db", envvar=URL_ENV, default=None,
    help="Database URL: sqlite:///path.db or postgresql://user@host/db "
         "(default sqlite:///./stage0.db). Env: STAGE0_DATABASE_URL.",
)


def option_instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@contextmanager
def open_store(db: str | None, *, create: bool = False) -> Iterator[Store]:
    """The store, migrated; its connections are closed when the command is done.

    Only ``create`` (``stage0 serve``, ``stage0 migrate``) makes a new store: every other command
    refuses a URL that holds none (a mistyped path, the wrong working directory), rather than
    answering from an empty store it has just created.
    """
    store = Store(db)
    try:
        try:
            if not create and not store.exists():
                raise click.ClickException(
                    f"no Stage0 store at {describe_store(store)}: pass the server's store with "
                    "--db or STAGE0_DATABASE_URL, or create one with `stage0 migrate`")
            store.migrate()
        except click.ClickException:
            raise
        except Exception as exc:  # noqa: BLE001 - report any connection or migration failure
            raise click.ClickException(
                f"cannot open the store {redact_url(store.url)}: {str(exc).splitlines()[0]}"
            ) from None
        yield store
    finally:
        store.dispose()


def describe_store(store: Store) -> str:
    """The store's URL without its password; a relative SQLite path also as an absolute one."""
    url = redact_url(store.url)
    database = make_url(store.url).database if store.dialect == "sqlite" else None
    if database and database != ":memory:" and not os.path.isabs(database):
        return f"{url} ({os.path.abspath(database)})"
    return url


def schema_revision(store: Store) -> str:
    """The store's Alembic revision."""
    with store.connect() as conn:
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return ",".join(sorted(str(r[0]) for r in rows)) or "none"


KEY_OPTION = click.option(
    "--key", "api_key", envvar="STAGE0_API_KEY", default=None,
    help="The API key to act as (its principal and roles). Env: STAGE0_API_KEY.",
)


def tenant_of(store: Store, api_key: str | None, tenant: str | None) -> str:
    if api_key:
        found = lookup_key(store, api_key)
        if found is None:
            raise click.UsageError("the key is unknown or revoked")
        return found.tenant_id
    return tenant or "default"
