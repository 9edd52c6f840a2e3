"""What a batch reads before its jobs run, into its :class:`~stage0.store.transaction.Transaction`:
the keys, then (under the tenants' locks on PostgreSQL) the chain heads, the keys' usage,
earlier answers to repeated request ids, and (for batches of :data:`PREFETCH_FROM` or more)
the open approval requests of the actions and the state of the runs.

On PostgreSQL the statements go in a pipeline: when every key of the batch is one the writer
has seen (:class:`KnownKeys`), keys, locks and reads take one round trip, else two. A job whose
reads were not made ahead (its key was not the one expected) reads as it goes; the locks are
always taken before any job runs, and always in the order of the tenants' names (a tenant that
was not expected and sorts before one locked already means a rollback and the reads again,
without reading ahead: no two writers can then wait on each other).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stage0.server.jobs import Job, job_ident
from stage0.store.keys import ApiKey, hash_key
from stage0.store.sql import compiled, one_of_params
from stage0.store.statements import (
    KEY_COLUMNS,
    Answer,
    UsageRow,
    answers_many,
    key_by_hash,
    key_by_id,
    usage_many,
)
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer

log = logging.getLogger("stage0.pipeline")

PREFETCH_FROM = 4
"""Batches of at least this many jobs read their open approval requests in one query."""
TENANTS_KEPT = 10_000
"""Keys whose tenant the writer remembers, to decide their checks before the lock."""

Finish = Callable[[], None]


class KnownKeys(dict[str, tuple[str, str]]):
    """Key hash to (tenant, key id), as the transactions found them: whom to decide for early,
    and what to read ahead for. Forgotten when a transaction finds the key unknown or
    revoked; cleared when it holds :data:`TENANTS_KEPT` keys."""

    def remember(self, secret_hash: str, tenant: str, key_id: str) -> None:
        if len(self) >= TENANTS_KEPT:
            self.clear()
        self[secret_hash] = (tenant, key_id)


def _cursor(conn: Any, cursors: list[Any]) -> Any:
    cursor = conn.cursor()
    cursors.append(cursor)
    return cursor


def read(writer: Writer, conn: Any, batch: list[Job], tx: Transaction, *,
         ahead: bool = True) -> None:
    """Read what ``batch`` needs into ``tx`` (see the module's description)."""
    idents: dict[str, Job] = {}
    for job in batch:
        idents.setdefault(job_ident(job), job)
    expected: dict[str, tuple[str, str]] = {}
    for ident, job in idents.items():
        known = writer.known.get(job.secret_hash or "") if job.key_id is None else None
        if known is not None:
            expected[ident] = known
    ahead = ahead and len(expected) == len(idents)
    cursors: list[Any] = []
    finish: list[Finish] = []
    locked: set[str] = set()
    try:
        with writer.pipeline(conn):
            lookups = {ident: send_key(_cursor(conn, cursors), job, tx.store.dialect)
                       for ident, job in idents.items()}
            if ahead:
                by_tenant = {ident: tenant for ident, (tenant, _) in expected.items()}
                key_ids = {ident: key_id for ident, (_, key_id) in expected.items()}
                locked = set(by_tenant.values())
                finish += _send_reads(writer, conn, cursors, batch, by_tenant, key_ids,
                                      locked, tx)
        for ident, job in idents.items():
            tx.keys[ident] = key_from(writer, lookups[ident], job)
        for job in batch:
            job.key = tx.keys[job_ident(job)]
        missing = {j.key.tenant_id for j in batch if j.key is not None} - locked
        if missing and locked and tx.store.dialect == "postgresql" and (
                min(missing) < max(locked)):
            conn.rollback()  # releases the locks; nothing was read into the batch yet
            for job in batch:
                job.key = None
            tx.keys.clear()
            read(writer, conn, batch, tx, ahead=False)
            return
        if missing:
            by_tenant = {ident: key.tenant_id for ident, key in tx.keys.items()
                         if key is not None}
            key_ids = {ident: key.id for ident, key in tx.keys.items() if key is not None}
            with writer.pipeline(conn):
                finish += _send_reads(writer, conn, cursors, batch, by_tenant, key_ids, missing,
                                      tx)
        for done in finish:
            done()
    finally:
        for cursor in cursors:
            cursor.close()


def _send_reads(writer: Writer, conn: Any, cursors: list[Any], batch: list[Job],
                tenant_of: dict[str, str], key_id_of: dict[str, str], tenants: set[str],
                tx: Transaction) -> list[Finish]:
    """Send the batch's reads for ``tenants`` (their locks first, in a fixed order, on
    PostgreSQL); return the functions that read the answers."""
    if tx.store.dialect == "postgresql":
        tx.lock(sorted(tenants), _cursor(conn, cursors))
    heads = tx.read_heads(_cursor(conn, cursors), tenants)
    finish: list[Finish] = [heads]
    checks = [j for j in batch if j.op == "check" and tenant_of.get(job_ident(j)) in tenants]
    key_ids = sorted({key_id_of[job_ident(j)] for j in checks if job_ident(j) in key_id_of})
    if key_ids:
        finish.append(_send_usage(_cursor(conn, cursors), key_ids, tx))
    repeated: dict[str, list[str]] = {}
    for job in checks:
        if job.client_request_id:
            repeated.setdefault(tenant_of[job_ident(job)], []).append(job.request_id)
    for tenant, request_ids in repeated.items():
        finish.append(_send_replays(_cursor(conn, cursors), tenant, request_ids, tx))
    if len(batch) >= PREFETCH_FROM:
        finish += _send_prefetch(writer, conn, cursors, checks, tenant_of, tx)
    return finish


def _send_usage(cursor: Any, key_ids: list[str], tx: Transaction) -> Finish:
    dialect = tx.store.dialect
    cursor.execute(tx.sql(usage_many, len(key_ids)), one_of_params(dialect, "k", key_ids, {}))

    def finish() -> None:
        found = {row.key_id: row for row in map(UsageRow._make, cursor.fetchall())}
        for key_id in key_ids:
            tx.usage_rows.setdefault(key_id, found.get(key_id))

    return finish


def _send_replays(cursor: Any, tenant: str, request_ids: list[str], tx: Transaction) -> Finish:
    cursor.execute(tx.sql(answers_many, len(request_ids)),
                   one_of_params(tx.store.dialect, "r", request_ids, {"t": tenant}))

    def finish() -> None:
        found = {row.request_id: row for row in map(Answer._make, cursor.fetchall())}
        for request_id in request_ids:
            tx.replays.setdefault((tenant, request_id), found.get(request_id))

    return finish


def _send_prefetch(writer: Writer, conn: Any, cursors: list[Any], checks: list[Job],
                   tenant_of: dict[str, str], tx: Transaction) -> list[Finish]:
    """The open approval requests of the batch's actions, and its runs, one query each per
    tenant, instead of one per DEFER and per run (see ``ApprovalStore.prefetch_open``)."""
    wanted: dict[str, set[str]] = {}
    runs: dict[str, set[str]] = {}
    for job in checks:
        if job.request is None:
            continue
        tenant = tenant_of[job_ident(job)]
        ctx = job.request.context
        if ctx is not None and ctx.run_id is not None:
            runs.setdefault(tenant, set()).add(ctx.run_id)
        digest = job.digest
        if digest is None:
            try:
                digest = writer.engine.action_digest(job.request)
            except Exception:  # noqa: BLE001 - a prefetch is an optimisation
                continue
        if digest:
            wanted.setdefault(tenant, set()).add(digest)
    now_us = int(writer.clock().timestamp() * 1e6)
    finish = [tx.approvals.prefetch_open(tenant, digests, now_us, _cursor(conn, cursors))
              for tenant, digests in wanted.items()]
    finish += [tx.run_state.prefetch(tenant, run_ids, _cursor(conn, cursors))
               for tenant, run_ids in runs.items()]
    return finish


def send_key(cur: Any, job: Job, dialect: str) -> Any:
    """Send the lookup of ``job``'s key on ``cur`` (``None``: no key to look up)."""
    if job.key_id is not None:
        cur.execute(compiled(dialect, key_by_id), {"i": job.key_id})
    elif not job.secret:
        return None
    else:
        job.secret_hash = job.secret_hash or hash_key(job.secret)
        cur.execute(compiled(dialect, key_by_hash), {"h": job.secret_hash})
    return cur


def key_from(writer: Writer, cur: Any, job: Job) -> ApiKey | None:
    """The key :func:`send_key` looked up, if it exists and is not revoked."""
    row = cur.fetchone() if cur is not None else None
    record = dict(zip(KEY_COLUMNS, row, strict=True)) if row is not None else None
    if record is None or record["revoked_at"] is not None:
        if job.secret_hash is not None:
            writer.known.pop(job.secret_hash, None)  # unknown or revoked: expect nothing
        return None
    key = ApiKey.from_row(record)
    if job.key_id is None and job.secret_hash is not None:
        writer.known.remember(job.secret_hash, key.tenant_id, key.id)
    return key


def join_late(writer: Writer, conn: Any, batch: list[Job], tx: Transaction) -> None:
    """PostgreSQL: the checks that queued while this transaction waited for its tenants'
    locks join it (:meth:`Writer.take_late`) instead of waiting for the next batch, a whole
    turn of the lock later. Their keys are read again first, under the locks: a key revoked
    (or changed) while the batch waited answers as it is now, not as the batch read it. (They
    are decided inside; whatever else they need, they read as they go.) On SQLite the writer
    gathers the queue once it holds the write lock, before its transaction begins."""
    late = writer.take_late(batch, tx)
    if not late:
        return
    idents = {job_ident(job): job for job in late}
    cursors: list[Any] = []
    try:
        with writer.pipeline(conn):
            sent = {ident: send_key(_cursor(conn, cursors), job, tx.store.dialect)
                    for ident, job in idents.items()}
        fresh = {ident: key_from(writer, sent[ident], job) for ident, job in idents.items()}
    finally:
        for cursor in cursors:
            cursor.close()
    writer.stats.late_joins += len(late)
    for job in late:
        key = fresh[job_ident(job)]
        # a key's tenant never changes; were it not locked, the job gets no key (401)
        job.key = key if key is not None and key.tenant_id in tx.chains else None
        batch.append(job)
