"""Decision-log export: every row of the log delivered at least once to each configured sink,
in ``seq`` order per tenant, from a position kept in the store.

The log is its own outbox. Each tenant's chain is numbered 1, 2, 3… and a row is visible to
another connection only once its batch has committed (a tenant's rows commit in ``seq`` order:
they are appended under the tenant's lock), so a sink's position in a tenant's chain is one
number: ``export_cursors.seq``, the last ``seq`` the sink acknowledged. The exporter
(:class:`Exporter`, a thread in every server process) reads the rows after it, hands them to
the sink as one batch, and only once the sink has acknowledged the whole batch moves the cursor
to the batch's last ``seq``. A process that dies between the acknowledgement and the move
leaves the cursor where it was: the batch is delivered again (at least once). Every record
carries a stable ``export_id`` (``<tenant>/<seq>``) by which a sink drops what it already
has (JetStream: the ``Nats-Msg-Id`` header).

A ``(sink, tenant)`` cursor is leased (``lease_owner``, ``lease_until_us``) by the process
delivering its next batch, so two replicas never deliver the same tenant to the same sink at
once, and a batch is never overtaken by the next. A failed batch blocks that tenant's cursor
(nothing is skipped) and is retried, with backoff, until the sink takes it; other tenants and
other sinks go on. :func:`replay` moves a cursor back (or forward), and the rows from there are
delivered again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stage0.store import ledger
from stage0.store.database import Store
from stage0.store.schema import chain_heads, decisions, export_cursors

log = logging.getLogger("stage0.export")

CONFIG_ENV = "STAGE0_EXPORT_CONFIG"


class ExportError(RuntimeError):
    """A sink did not acknowledge a batch (the message says why); the batch is retried."""


class ConfigError(ValueError):
    """An export configuration that cannot be used."""


# -- configuration --------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SinkConfig(_Strict):
    """One sink of the export configuration file."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["nats", "webhook", "otlp"]
    batch: int = Field(default=100, ge=1, le=10_000)
    start: Literal["earliest", "latest"] = "earliest"
    """Where a tenant's cursor starts when the sink first sees it: its first row, or its newest
    row at that moment (only later rows are exported)."""
    tenants: list[str] | None = None
    """Only these tenants (default: every tenant)."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # nats
    url: str | None = None
    stream: str = Field(default="stage0-decisions", pattern=r"^[A-Za-z0-9_-]+$")
    subject_prefix: str = Field(default="stage0.decisions",
                                pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # webhook
    secret: str | None = None
    secret_env: str | None = None
    # otlp
    endpoint: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    service_name: str = "stage0"


class ExportConfig(_Strict):
    """The export configuration file (``STAGE0_EXPORT_CONFIG``, YAML or JSON)."""

    sinks: list[SinkConfig] = Field(default_factory=list)
    interval_s: float = Field(default=0.5, gt=0, le=60)
    """How often the exporter looks for new rows when it is idle."""
    lease_s: float = Field(default=60.0, ge=5, le=3600)
    backoff_s: float = Field(default=1.0, gt=0, le=3600)
    """The first retry's delay after a failed batch; doubled after each failure…"""
    max_backoff_s: float = Field(default=300.0, gt=0, le=86_400)
    """…up to this."""


def load_config(path: str | Path) -> ExportConfig:
    try:
        document = yaml.safe_load(Path(path).read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the export configuration {path}: {exc}") from None
    try:
        config = ExportConfig.model_validate(document or {})
    except ValidationError as exc:
        raise ConfigError(f"the export configuration {path} is not valid: {exc}") from None
    names = [s.name for s in config.sinks]
    if len(set(names)) != len(names):
        raise ConfigError(f"the export configuration {path} names a sink twice")
    for sink in config.sinks:
        # a batch (at most twice the timeout) must end well within the lease that covers it
        if sink.timeout_s * 3 > config.lease_s:
            raise ConfigError(f"the export configuration {path}: sink {sink.name}'s timeout_s "
                              f"({sink.timeout_s:g}) must be at most a third of lease_s "
                              f"({config.lease_s:g})")
    return config


def config_from_env() -> ExportConfig | None:
    path = os.environ.get(CONFIG_ENV, "").strip()
    return load_config(path) if path else None


# -- records --------------------------------------------------------------------------------------


def export_id(tenant: str, seq: int) -> str:
    """A record's stable id: the same on every delivery of it."""
    return f"{tenant}/{seq}"


def to_export(row: Any) -> dict[str, Any]:
    """A log row as the sinks receive it: the API's record (docs/audit.md) and its
    ``export_id``."""
    record = ledger.to_record(row)
    record["export_id"] = export_id(record["tenant"], record["seq"])
    return record


class Sink(Protocol):
    """Delivers one tenant's batch, in order; returns only once the whole batch is
    acknowledged, raises :class:`ExportError` otherwise."""

    config: SinkConfig

    def deliver(self, tenant: str, records: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


# -- cursors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorState:
    sink: str
    tenant: str
    seq: int
    head: int
    attempts: int
    next_attempt_us: int
    last_error: str | None
    delivered_us: int | None
    lease_owner: str | None
    lease_until_us: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.seq)


def cursors(store: Store, sink: str | None = None) -> list[CursorState]:
    """Every cursor (or one sink's), with its tenant's chain head."""
    query = select(export_cursors, chain_heads.c.seq.label("head")).join(
        chain_heads, chain_heads.c.tenant_id == export_cursors.c.tenant_id, isouter=True)
    if sink is not None:
        query = query.where(export_cursors.c.sink == sink)
    with store.connect() as conn:
        rows = list(conn.execute(query.order_by(export_cursors.c.sink,
                                                export_cursors.c.tenant_id)))
    return [CursorState(r.sink, r.tenant_id, int(r.seq), int(r.head or 0), int(r.attempts),
                        int(r.next_attempt_us), r.last_error, r.delivered_us, r.lease_owner,
                        int(r.lease_until_us)) for r in rows]


def _insert_cursor(store: Store, conn: Any, sink: str, tenant: str, seq: int,
                   now_us: int) -> None:
    insert = (pg_insert if store.dialect == "postgresql" else sqlite_insert)(export_cursors)
    conn.execute(insert.values(
        sink=sink, tenant_id=tenant, seq=seq, lease_owner=None, lease_until_us=0, attempts=0,
        next_attempt_us=0, last_error=None, delivered_us=None, updated_us=now_us,
    ).on_conflict_do_nothing(index_elements=[export_cursors.c.sink, export_cursors.c.tenant_id]))


def replay(store: Store, sink: str, tenant: str, from_seq: int) -> int:
    """Deliver ``tenant``'s rows to ``sink`` again from ``from_seq`` on (the cursor is set to
    ``from_seq - 1``; a retry wait is cleared). A batch in flight when this runs does not move
    the cursor afterwards. Returns the previous position (0: none)."""
    if from_seq < 1:
        raise ValueError("--from-seq starts at 1")
    now_us = int(time.time() * 1e6)
    with store.begin() as conn:
        old = conn.execute(select(export_cursors.c.seq).where(and_(
            export_cursors.c.sink == sink, export_cursors.c.tenant_id == tenant))).scalar()
        if old is None:
            _insert_cursor(store, conn, sink, tenant, from_seq - 1, now_us)
        else:
            conn.execute(update(export_cursors).where(and_(
                export_cursors.c.sink == sink, export_cursors.c.tenant_id == tenant)).values(
                seq=from_seq - 1, attempts=0, next_attempt_us=0, last_error=None,
                lease_owner=None, lease_until_us=0, updated_us=now_us))
    return int(old or 0)


# -- the exporter ---------------------------------------------------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(slots=True)
class Exporter:
    """Delivers the log to ``sinks``; :meth:`run_once` is one pass (tests call it), or
    :meth:`start` runs passes on a thread of its own until :meth:`close`. One thread at a time
    per instance: the leases tell owners apart, not the threads of one."""

    store: Store
    sinks: list[Sink]
    config: ExportConfig = field(default_factory=lambda: ExportConfig.model_validate({}))
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=_owner)
    max_batches: int = 20
    """Batches per ``(sink, tenant)`` in one pass before the next one gets its turn."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    delivered: int = 0
    """Records acknowledged by a sink since start (this process)."""

    @classmethod
    def from_config(cls, store: Store, config: ExportConfig,
                    build: Callable[[SinkConfig], Sink], **kw: Any) -> Exporter:
        """The exporter of ``config``'s sinks, each made by ``build`` (``stage0.export``'s
        ``build_sink``: the store layer does not import the sinks' clients)."""
        return cls(store, [build(s) for s in config.sinks], config, **kw)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stage0-export", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=max(s.config.timeout_s for s in self.sinks) + 5
                              if self.sinks else 5)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # closing is best effort
                log.debug("closing sink %s failed", sink.config.name, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # keep exporting after a store failure
                log.exception("decision-log export pass failed")
                busy = 0
            if not busy:
                self._stop.wait(self.config.interval_s)

    def _now_us(self) -> int:
        return int(self.clock() * 1e6)

    def run_once(self) -> int:
        """One pass over every sink and tenant; returns how many records were delivered."""
        with self.store.connect() as conn:
            heads = {r.tenant_id: int(r.seq) for r in conn.execute(select(chain_heads))}
            known = {(r.sink, r.tenant_id): int(r.seq) for r in conn.execute(
                select(export_cursors.c.sink, export_cursors.c.tenant_id, export_cursors.c.seq))}
        sent = 0
        for sink in self.sinks:
            wanted = sink.config.tenants
            for tenant, head in sorted(heads.items()):
                if self._stop.is_set():
                    return sent
                if wanted is not None and tenant not in wanted:
                    continue
                at = known.get((sink.config.name, tenant))
                if at is None:
                    self._new_cursor(sink.config, tenant, head)
                elif at >= head:
                    continue
                sent += self._drain(sink, tenant)
        return sent

    def _new_cursor(self, config: SinkConfig, tenant: str, head: int) -> None:
        with self.store.begin() as conn:
            _insert_cursor(self.store, conn, config.name, tenant,
                           head if config.start == "latest" else 0, self._now_us())

    def _claim(self, sink: str, tenant: str) -> int | None:
        """Lease the cursor; its position, or ``None`` when another process holds it or a retry
        is not due yet."""
        now = self._now_us()
        c = export_cursors.c
        with self.store.begin() as conn:
            won = conn.execute(update(export_cursors).where(and_(
                c.sink == sink, c.tenant_id == tenant, c.next_attempt_us <= now,
                or_(c.lease_owner.is_(None), c.lease_owner == self.owner,
                    c.lease_until_us < now),
            )).values(lease_owner=self.owner,
                      lease_until_us=now + int(self.config.lease_s * 1e6))).rowcount
            if not won:
                return None
            return int(conn.execute(select(c.seq).where(and_(
                c.sink == sink, c.tenant_id == tenant))).scalar_one())

    def _rows(self, tenant: str, after: int, limit: int) -> list[dict[str, Any]]:
        with self.store.connect() as conn:
            if self.store.dialect == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            return [to_export(r) for r in conn.execute(
                select(decisions).where(and_(decisions.c.tenant_id == tenant,
                                             decisions.c.seq > after))
                .order_by(decisions.c.seq).limit(limit))]

    def _drain(self, sink: Sink, tenant: str) -> int:
        name, sent = sink.config.name, 0
        at = self._claim(name, tenant)
        if at is None:
            return 0
        try:
            for _ in range(self.max_batches):
                records = self._rows(tenant, at, sink.config.batch)
                if not records or self._stop.is_set():
                    break
                if records[0]["seq"] != at + 1:
                    log.warning("export %s, tenant %r: seq %d..%d are not in the log (pruned "
                                "before they were exported)", name, tenant, at + 1,
                                records[0]["seq"] - 1)
                try:
                    sink.deliver(tenant, records)
                except Exception as exc:  # noqa: BLE001 - any failure: retry the batch
                    self._failed(name, tenant, at, exc)
                    return sent
                last = int(records[-1]["seq"])
                if not self._advance(name, tenant, at, last):
                    log.warning("export %s, tenant %r: the cursor moved while seq %d..%d were "
                                "delivered (a replay, or the lease expired); not moving it",
                                name, tenant, at + 1, last)
                    return sent
                at, sent = last, sent + len(records)
                self.delivered += len(records)
                if len(records) < sink.config.batch:
                    break
        finally:
            self._release(name, tenant)
        return sent

    def _advance(self, sink: str, tenant: str, old: int, new: int) -> bool:
        now = self._now_us()
        c = export_cursors.c
        with self.store.begin() as conn:
            return bool(conn.execute(update(export_cursors).where(and_(
                c.sink == sink, c.tenant_id == tenant, c.lease_owner == self.owner,
                c.seq == old)).values(
                seq=new, attempts=0, last_error=None, delivered_us=now, updated_us=now,
                lease_until_us=now + int(self.config.lease_s * 1e6))).rowcount)

    def _failed(self, sink: str, tenant: str, at: int, exc: Exception) -> None:
        now = self._now_us()
        c = export_cursors.c
        with self.store.begin() as conn:
            attempts = int(conn.execute(select(c.attempts).where(and_(
                c.sink == sink, c.tenant_id == tenant))).scalar_one()) + 1
            delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempts - 1))
            error = (str(exc) if isinstance(exc, ExportError)
                     else f"{type(exc).__name__}: {exc}")[:500]
            conn.execute(update(export_cursors).where(and_(
                c.sink == sink, c.tenant_id == tenant, c.lease_owner == self.owner)).values(
                attempts=attempts, next_attempt_us=now + int(delay * 1e6), last_error=error,
                updated_us=now))
        log.warning("export %s, tenant %r: seq %d… not delivered (attempt %d, retry in %.0f s): "
                    "%s", sink, tenant, at + 1, attempts, delay, error)

    def _release(self, sink: str, tenant: str) -> None:
        c = export_cursors.c
        with self.store.begin() as conn:
            conn.execute(update(export_cursors).where(and_(
                c.sink == sink, c.tenant_id == tenant, c.lease_owner == self.owner)).values(
                lease_owner=None, lease_until_us=0))
