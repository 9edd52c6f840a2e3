"""Hot-path SQL: statements written against the tables of :mod:`stage0.store.schema`, compiled
once per dialect to the driver's SQL string and then executed on a raw DB-API cursor.

SQLAlchemy's per-statement execution costs more than the statements of a decision do, so the
decision writer runs strings; this module is where those strings come from. Each statement is
compiled the first time it is asked for in a dialect and kept (``:name`` parameters on SQLite,
``%(name)s`` on PostgreSQL, as the raw cursors take them). A condition on a list of values
("one of") is ``= ANY(%(name)s)`` on PostgreSQL and ``IN (:name0, :name1, ...)`` on SQLite,
compiled once per list length.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from sqlalchemy import ColumnElement, Insert, Table, any_, bindparam
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine.interfaces import BindTyping, Dialect
from sqlalchemy.sql.expression import ClauseElement


def _postgresql() -> Dialect:
    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
    dialect.bind_typing = BindTyping.NONE  # plain %(name)s, no ::TYPE casts on the binds
    return dialect


_DIALECTS: dict[str, Dialect] = {"sqlite": sqlite.dialect(paramstyle="named"),
                                 "postgresql": _postgresql()}
_COMPILED: dict[tuple[str, Build, tuple[Hashable, ...]], str] = {}

Build = Callable[..., ClauseElement]
"""A statement for a dialect (``sqlite`` or ``postgresql``) and any further arguments."""


def compiled(dialect: str, build: Build, *args: Hashable) -> str:
    """``build(dialect, *args)`` as this dialect's SQL string, compiled once per ``args``
    (a list condition's length, say)."""
    key = (dialect, build, args)
    sql = _COMPILED.get(key)
    if sql is None:
        statement = build(dialect, *args).compile(dialect=_DIALECTS[dialect])
        fixed = [name for name, value in statement.params.items() if value is not None]
        if fixed:  # a value compiled in as a parameter would be lost with the statement
            raise ValueError(f"{build.__name__}: parameters with values {fixed}; write "
                             "constants as literal_column()")
        sql = _COMPILED[key] = str(statement)
    return sql


def one_of(dialect: str, column: ColumnElement[Any], name: str,
           count: int) -> ColumnElement[bool]:
    """``column`` is one of ``count`` values bound as ``name`` (see :func:`one_of_params`)."""
    if dialect == "postgresql":
        return column == any_(bindparam(name))
    return column.in_([bindparam(f"{name}{i}") for i in range(count)])


def one_of_params(dialect: str, name: str, values: list[Any],
                  params: dict[str, Any]) -> dict[str, Any]:
    """Add the parameters of :func:`one_of` for ``values`` to ``params`` (and return it)."""
    if dialect == "postgresql":
        params[name] = values
    else:
        for i, value in enumerate(values):
            params[f"{name}{i}"] = value
    return params


def insert(table: Table) -> Insert:
    """``INSERT`` into ``table`` without fetching the new row's id (no ``RETURNING``, no
    pre-fetched sequence value: the writer never reads it)."""
    return table.insert().inline()


def upsert(dialect: str, table: Table, binds: dict[str, str], key: Iterable[str],
           update: Iterable[str]) -> ClauseElement:
    """``INSERT`` of ``binds`` (column to parameter name) into ``table``; on a conflict on
    ``key``, the ``update`` columns take the new row's values."""
    insert = (pg_insert if dialect == "postgresql" else sqlite_insert)(table)
    stmt = insert.values({column: bindparam(name) for column, name in binds.items()})
    return stmt.on_conflict_do_update(
        index_elements=[table.c[c] for c in key],
        set_={c: stmt.excluded[c] for c in update})


def names(build: Build) -> tuple[str, ...]:
    """The names of the columns ``build``'s ``SELECT`` returns, in order (rows are read by
    them, never by position)."""
    stmt: Any = build("sqlite")
    return tuple(c.name for c in stmt.selected_columns)
