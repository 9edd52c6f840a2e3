"""The store: one SQLAlchemy engine for SQLite or PostgreSQL, migrated with Alembic.

The hot path (the decision pipeline) runs on raw DB-API connections from the same pool with
hand-prepared statements: SQLAlchemy's per-statement overhead would cost more than the SQL.
Everything else uses SQLAlchemy Core.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

try:  # POSIX; elsewhere the writers rely on SQLite's own locking alone
    import fcntl
except ImportError:  # pragma: no cover - not on the supported platforms
    fcntl = None  # type: ignore[assignment]

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.engine import Connection

log = logging.getLogger("stage0.store")
DEFAULT_URL = "sqlite:///./stage0.db"
URL_ENV = "STAGE0_DATABASE_URL"

_NAMED = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")


def resolve_url(url: str | None = None) -> str:
    """``--db``, else ``$STAGE0_DATABASE_URL``, else ``sqlite:///./stage0.db``.

    ``postgresql://`` and ``postgres://`` URLs use the psycopg (v3) driver.
    """
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):([^@]+)@", r"://\1:***@", url)


class Store:
    """A database Stage0 keeps its keys, usage, run state and decision log in."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self._lock_fd: int | None = None
        self._lock_path: str | None = None
        self._checkpoint_conn: Any = None
        self._checkpoint_lock = threading.Lock()
        self._disposed = False
        self.file_backed = False
        self._database = ""
        self._wal_fd: int | None = None
        self._wal_inode = 0
        """An SQLite database in a file (one with a write-ahead log to checkpoint)."""
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            self.engine: Engine = create_engine(
                self.url,
                connect_args={"timeout": 5, "isolation_level": None,
                              "check_same_thread": False},
                pool_pre_ping=True,
            )
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
            database = make_url(self.url).database
            if (fcntl is not None and database and database != ":memory:"
                    and not database.startswith("file:")):
                self._lock_path = f"{database}-writer.lock"
                self.file_backed = True
                self._database = database
        else:
            self.engine = create_engine(
                self.url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                connect_args={"connect_timeout": 5},
            )

    # -- schema -------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether this URL already holds a Stage0 store (a migrated schema). Never creates
        anything: for an SQLite file that is not there, the file is not touched."""
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if not database or database == ":memory:":
                return False
            if not database.startswith("file:") and not os.path.exists(database):
                return False
        with self.engine.connect() as conn:
            return inspect(conn).has_table("alembic_version")

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent)."""
        config = Config()
        config.set_main_option(
            "script_location", str(resources.files("stage0.store").joinpath("migrations"))
        )
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Several server processes may start at once: migrate one at a time.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(515151)")
            config.attributes["connection"] = conn
            command.upgrade(config, "heads")

    # -- connections ----------------------------------------------------------------------------

    def connect(self) -> Connection:
        return self.engine.connect()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (on SQLite ``BEGIN IMMEDIATE``: the write lock is taken at once,
        so two writers queue instead of deadlocking on a lock upgrade)."""
        with self.engine.connect() as conn:
            conn.info["immediate"] = True
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("immediate", None)

    @contextmanager
    def raw(self) -> Iterator[Any]:
        """A raw DB-API connection from the pool (returned to it afterwards)."""
        conn = self.engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()

    def sql(self, statement: str) -> str:
        """Adapt a statement written with ``:name`` parameters to the driver's style."""
        if self.dialect == "sqlite":
            return statement
        return _NAMED.sub(r"%(\1)s", statement)

    def any_of(self, column: str, name: str, values: list[str], params: dict[str, Any]) -> str:
        """``column`` is one of ``values``, as a condition in this dialect's parameter style
        (the parameters are added to ``params``)."""
        if self.dialect == "postgresql":
            params[name] = values
            return f"{column} = ANY(%({name})s)"
        marks = []
        for i, value in enumerate(values):
            params[f"{name}{i}"] = value
            marks.append(f":{name}{i}")
        return f"{column} IN ({', '.join(marks)})"

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Serialise the decision writers of every process on this store.

        On SQLite the writers of several server processes contend for one write lock, and
        SQLite's busy handler waits for it by sleeping in steps of up to 100 ms: under load a
        writer could wait a second while the other took the lock again and again. A blocking
        ``flock`` on a file beside the database makes them wait in the kernel instead and take
        turns as soon as the lock is released. PostgreSQL (per-tenant advisory locks) and
        in-memory SQLite need nothing.
        """
        fd = self._writer_lock_fd()
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _writer_lock_fd(self) -> int | None:
        """The lock file, opened on first use. The lock only spares SQLite's busy handler
        (SQLite's own lock is what keeps writes correct), so a lock file that cannot be opened
        (a read-only directory, a file system without ``flock``) means no lock, with a warning
        once."""
        if self._lock_fd is None and self._lock_path is not None:
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o660)
            except OSError as exc:
                log.warning("no writer lock file (%s); SQLite's own locking alone serialises "
                            "the writers", exc)
                self._lock_path = None
        return self._lock_fd

    def sync_wal(self) -> None:
        """Flush this SQLite database's write-ahead log to the disk (``fdatasync``): what a
        commit with ``synchronous=FULL`` does, done by the decision writer after it releases
        the write lock.

        The log is synced through a descriptor kept open (reopened when SQLite starts a new
        WAL file, and the directory synced once then), so that a write-back error the kernel
        records for the file is reported to this process even when another process's sync
        ran into it first. A missing WAL (while the writer's connection is open SQLite keeps
        one) is an error, like a failed sync: the caller fails closed."""
        path = f"{self._database}-wal"
        inode = os.stat(path).st_ino  # FileNotFoundError (an OSError) when it is gone
        if self._wal_fd is None or self._wal_inode != inode:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            fd = os.open(path, os.O_RDONLY)
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)  # the new WAL file's entry in its directory
            finally:
                os.close(directory)
            self._wal_fd, self._wal_inode = fd, os.fstat(fd).st_ino
        os.fdatasync(self._wal_fd)

    def checkpoint(self) -> None:
        """A passive WAL checkpoint on a connection of its own: copies what it can of the log
        into the database file without waiting for (or blocking) readers and writers."""
        with self._checkpoint_lock:  # not while dispose() closes the connection
            if self._disposed:
                return
            if self._checkpoint_conn is None:
                self._checkpoint_conn = self.engine.raw_connection()
            try:
                cursor = self._checkpoint_conn.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
                cursor.close()
            except Exception:
                conn, self._checkpoint_conn = self._checkpoint_conn, None
                conn.invalidate()
                raise

    def dispose(self) -> None:
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        with self._checkpoint_lock:
            self._disposed = True
            conn, self._checkpoint_conn = self._checkpoint_conn, None
            if conn is not None:
                conn.close()
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed decision survives power loss
    busy_ms = int(os.environ.get("STAGE0_SQLITE_BUSY_TIMEOUT_MS", "5000"))
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Reads take no lock in WAL mode (plain BEGIN); writes announce themselves (Store.begin).
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")
