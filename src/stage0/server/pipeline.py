"""The decision pipeline: authenticate, meter, evaluate and log, with group commit.

HTTP handlers put jobs on a queue; one writer thread per server process takes them in batches
and, in one database transaction per batch, for each job: looks up its key, replays or refuses
a repeated request id, applies quotas, evaluates (run state read and written in the same
transaction) and appends the decision to the tenant's hash chain. Only after the COMMIT are the
answers released, so no answer leaves that is not in the log, and one fsync covers the batch.

Across processes the transaction is the lock: ``BEGIN IMMEDIATE`` on SQLite, per-tenant
``pg_advisory_xact_lock`` on PostgreSQL. If the transaction fails (store unreachable, disk
full), every job of the batch gets a 503 whose body still says ``verdict: DENY``; the next
batch opens a fresh connection, so the service recovers without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from stage0.contract import CheckRequest, RequestValidationError, parse_request
from stage0.engine import Engine
from stage0.policy import CompiledPolicy, normalize_name
from stage0.policy.compiled import ApprovalRule, BreakGlassRule
from stage0.server import metrics
from stage0.server.jobs import (
    EarlyDecision,
    Job,
    Outcome,
    error_body,
    fail_closed_body,
    job_ident,
)
from stage0.store import ledger, webhooks
from stage0.store.approvals import ApprovalStore, is_open
from stage0.store.database import Store
from stage0.store.keys import ApiKey, hash_key, normalize_principal
from stage0.store.runstate import TransactionRunState
from stage0.store.signing import Keyring, TokenError
from stage0.store.usage import Counts, Windows, check_quota

log = logging.getLogger("stage0.pipeline")

SELECT_KEY = (
    "SELECT id, tenant_id, name, prefix, scopes, plan, monthly_quota, daily_quota, per_minute, "
    "principal, roles, created_at, revoked_at, totp_secret, mfa_failures, mfa_locked_until_us, "
    "totp_last_step FROM api_keys WHERE key_hash = :h"
)
SELECT_USAGE = (
    "SELECT month_key, month_count, day_key, day_count, minute_key, minute_count "
    "FROM key_usage WHERE key_id = :k"
)
UPSERT_USAGE = (
    "INSERT INTO key_usage (key_id, month_key, month_count, day_key, day_count, minute_key, "
    "minute_count) VALUES (:k, :mk, :mc, :dk, :dc, :nk, :nc) ON CONFLICT (key_id) DO UPDATE SET "
    "month_key = excluded.month_key, month_count = excluded.month_count, "
    "day_key = excluded.day_key, day_count = excluded.day_count, "
    "minute_key = excluded.minute_key, minute_count = excluded.minute_count"
)
_NEEDS_APPROVAL = frozenset(
    {"APPROVAL_REQUIRED_PENDING", "APPROVAL_EXPIRED", "APPROVAL_SCOPE_MISMATCH"})
_FALLBACK_RULE = ApprovalRule(1, frozenset(), False, 86400.0, 900.0)


def _action_summary(request: CheckRequest, body: dict[str, Any]) -> dict[str, Any]:
    """What an approver sees of the action (the inputs of the action digest)."""
    ctx = request.context
    return {
        "goal": request.goal,
        "tools": sorted({normalize_name(t) for t in request.tools or ()}),
        "side_effects": sorted({normalize_name(s) for s in request.side_effects or ()}),
        "arguments": request.arguments or {},
        "environment": body.get("environment"),
        "resource_scope": ctx.resource_scope if ctx is not None else None,
        "target_resources": ctx.target_resources if ctx is not None else None,
    }


SELECT_BY_REQUEST = (
    "SELECT input_sha256, response, http_status FROM decisions "
    "WHERE tenant_id = :t AND request_id = :r"
)
_KEY_COLUMNS = ("id", "tenant_id", "name", "prefix", "scopes", "plan", "monthly_quota",
                "daily_quota", "per_minute", "principal", "roles", "created_at", "revoked_at",
                "totp_secret", "mfa_failures", "mfa_locked_until_us", "totp_last_step")
DECISION_TIMEOUT_S = float(os.environ.get("STAGE0_DECISION_TIMEOUT_S", "15"))
PREFETCH_FROM = 4
"""Batches of at least this many jobs read their open approval requests in one query."""
TENANTS_KEPT = 10_000
"""Keys whose tenant the writer remembers, to decide their checks before the lock."""
EARLY_MAX_AGE_S = 1.0
"""An early decision older than this when its transaction runs is made again."""
MFA_MAX_FAILURES = 5
MFA_LOCKOUT_S = 900
CHECKPOINT_INTERVAL_S = 0.05
"""How often the background checkpointer looks for new commits (SQLite files)."""


@dataclass(slots=True)
class _Batch:
    """What one transaction has read and changed; written back before the commit."""

    keys: dict[str, ApiKey | None] = field(default_factory=dict)
    usage: dict[str, Counts] = field(default_factory=dict)
    windows: Windows | None = None
    chains: dict[str, ledger.ChainCursor] = field(default_factory=dict)
    answered: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    usage_rows: dict[str, Any] = field(default_factory=dict)
    """Usage rows read ahead for the batch's keys (``None``: the key has none yet)."""
    replays: dict[tuple[str, str], Any] = field(default_factory=dict)
    """Earlier answers to the batch's client request ids, read ahead (``None``: none)."""


class _NeedsState(Exception):
    """Raised by :class:`_StateProbe`: this decision needs the store's state."""


class _StateProbe:
    """The run state and the approval resolver of the engine that decides ahead of the batch's
    transaction. A decision that asks either for state (a ``run_id``, an ``approval_id``) is
    dropped and made again inside the transaction, where the state is read and written."""

    def __init__(self) -> None:
        self.touched = False

    def observe(self, *_: Any, **__: Any) -> Any:
        self.touched = True
        raise _NeedsState

    def resolve(self, *_: Any, **__: Any) -> Any:
        self.touched = True
        raise _NeedsState


def _refusal(status: int, code: str, detail: str, request_id: str, **extra: Any) -> Outcome:
    """A refused approval, break-glass or token operation: the error shape with its ``code``
    (and ``retry-after`` when the refusal says when to try again). Refusals are counted in
    ``stage0_refused_total`` where they are answered (the HTTP routes, the console), by
    status and route."""
    return Outcome(status, error_body(status, detail, request_id, code=code, **extra),
                   {"retry-after": str(extra["retry_after_seconds"])}
                   if "retry_after_seconds" in extra else {})


def _is_requester(key: ApiKey, key_id: object, principal: object, actor: object) -> bool:
    """Whether ``key`` asked for the action (same key, principal or actor): it cannot decide."""
    me = normalize_principal(key.principal or key.id)
    return key.id == key_id or me in {normalize_principal(str(principal) if principal else None),
                                      normalize_principal(str(actor) if actor else None)}


class Pipeline:
    """One writer thread; :meth:`submit` returns a future resolved after the batch commits."""

    def __init__(
        self,
        store: Store,
        policy: CompiledPolicy | None,
        *,
        clock: Callable[[], datetime],
        frozen_time: str | None = None,
        batch_max: int = 256,
        held: tuple[CompiledPolicy, ...] = (),
    ) -> None:
        self.store = store
        self.policy = policy
        self.held = held
        self.clock = clock
        self.frozen_time = frozen_time
        self.batch_max = batch_max
        self.run_state = TransactionRunState(store)
        self.approvals = ApprovalStore(store)
        self.keyring = Keyring(store)
        self.engine = Engine(policy, run_state=self.run_state, approvals=self.approvals,
                             clock=clock, held=held)
        self._probe = _StateProbe()
        self._early_engine = Engine(policy, run_state=self._probe, approvals=self._probe,
                                    clock=clock, held=held)
        self._known: dict[str, tuple[str, str]] = {}
        """Key hash to (tenant, key id), as the transactions found them: whom to decide for
        early, and what to read ahead for."""
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._carried: list[Job | None] = []
        """Jobs taken from the queue that could not join the last batch: the next turns' first,
        in order."""
        self._pending_policy: tuple[CompiledPolicy, tuple[CompiledPolicy, ...]] | None = None
        self._conn: Any = None
        self._sql = {name: store.sql(text) for name, text in {
            "key": SELECT_KEY, "key_by_id": SELECT_KEY.replace("key_hash = :h", "id = :i"),
            "usage": SELECT_USAGE, "upsert_usage": UPSERT_USAGE,
            "by_request": SELECT_BY_REQUEST,
            "token_used": "SELECT 1 FROM token_uses WHERE tenant_id = :t AND jti = :j",
            "mfa": "UPDATE api_keys SET mfa_failures = :f, mfa_locked_until_us = :l, "
                   "totp_last_step = :s WHERE id = :k",
            "mfa_read": "SELECT mfa_failures, mfa_locked_until_us, totp_last_step FROM api_keys "
                        "WHERE id = :k",
            "decision": "SELECT action_digest, key_id, request, response, environment, buckets, "
                        "tools, policy_version FROM decisions WHERE tenant_id = :t "
                        "AND request_id = :r AND kind = 'decision'",
            "glass_for": "SELECT id, status, expires_us, execute_by_us FROM approvals "
                         "WHERE tenant_id = :t AND request_id = :r AND kind = 'break_glass'",
            "principal": "SELECT principal FROM api_keys WHERE id = :k",
            "token_use": "INSERT INTO token_uses (tenant_id, jti, key_id, consumed_us) "
                         "VALUES (:t, :j, :k, :c)"}.items()}
        self._committed = 0
        """Batches committed (the checkpointer runs only when there are new ones)."""
        self._deferred_sync = store.file_backed
        """SQLite file: commit without syncing, sync after the lock (:meth:`_make_durable`)."""
        self.broken: str | None = None
        """Why this writer answers every job with a fail-closed 503 until the process restarts
        (a failed flush of the log: what is on disk is no longer known)."""
        self._thread = threading.Thread(target=self._run, name="stage0-writer", daemon=True)
        self._thread.start()
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if store.file_backed:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                                  name="stage0-checkpointer", daemon=True)
            self._checkpointer.start()

    @property
    def policy_version(self) -> str:
        return self.policy.policy_version if self.policy is not None else "none"

    def swap_policy(self, policy: CompiledPolicy, held: tuple[CompiledPolicy, ...] = ()) -> None:
        """Serve ``policy`` (and ``held`` for pinned requests) from the next batch on (never in
        the middle of one)."""
        self._pending_policy = (policy, held)

    def _apply_pending_policy(self) -> None:
        pending, self._pending_policy = self._pending_policy, None
        if pending is not None:
            self.policy, self.held = pending
            self.engine = Engine(self.policy, run_state=self.run_state,
                                 approvals=self.approvals, clock=self.clock, held=self.held)
            self._early_engine = Engine(self.policy, run_state=self._probe,
                                        approvals=self._probe, clock=self.clock,
                                        held=self.held)

    def _by_version(self, version: object) -> CompiledPolicy | None:
        """The pack of ``version`` if this server holds it, else the active one."""
        for policy in (self.policy, *self.held):
            if policy is not None and policy.policy_version == version:
                return policy
        return self.policy

    def submit(self, job: Job) -> Future[Outcome]:
        self._queue.put(job)
        return job.future

    async def answer(self, job: Job) -> Outcome:
        """Submit ``job`` and wait for the writer's answer — or, when none comes within
        ``STAGE0_DECISION_TIMEOUT_S`` (a writer stuck on a lock, a store that hangs), a
        fail-closed 503: no caller is left waiting. The job may still be logged later."""
        waiting = asyncio.wrap_future(self.submit(job))
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), DECISION_TIMEOUT_S)
        except TimeoutError:
            metrics.FAIL_CLOSED.labels(reason="timeout").inc()
            return Outcome(503, fail_closed_body(
                job.request_id, f"No decision within {DECISION_TIMEOUT_S:g} s (the decision "
                "log is not keeping up); failing closed", self.policy_version),
                {"x-request-id": job.request_id, "retry-after": "1"})

    def sweep(self) -> Future[Outcome]:
        """Expire pending approvals past their expiry (logged, webhooks queued)."""
        return self.submit(Job(secret="", raw=b"", request=None, invalid=None,
                               request_id=str(uuid.uuid4()), client_request_id=False,
                               started=time.perf_counter(), op="sweep"))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        self._drop_connection()

    def _checkpoint_loop(self) -> None:
        """Copy the write-ahead log into the SQLite database file in the background.

        SQLite checkpoints when a commit leaves more than 1,000 pages in the WAL, inside that
        commit: the writer then copies some 4 MB and syncs the database file while every
        writer waits on its lock (5-10 ms, the worst batches). A passive checkpoint here,
        every 50 ms after new commits, copies the frames while the writers go on; what is left
        for the commit's own checkpoint is small, and that one still runs, so the WAL is
        rewound as before (a background checkpoint alone never catches up under a steady load,
        and the WAL would grow without bound)."""
        seen = 0
        while not self._closing.wait(CHECKPOINT_INTERVAL_S):
            if self._committed == seen:
                continue
            seen = self._committed
            try:
                self.store.checkpoint()
            except Exception:  # an optimisation: the commit's own checkpoint remains
                log.debug("background checkpoint failed", exc_info=True)

    # -- the writer -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._carried.pop(0) if self._carried else self._queue.get()
            if job is None:
                return
            batch = [job]
            try:
                self._run_one(job, batch)
            except Exception:  # never let the writer die: fail what it held closed, go on
                log.exception("the decision writer failed; failing %d request(s) closed",
                              len(batch))
                metrics.FAIL_CLOSED.labels(reason="internal").inc(len(batch))
                for held in batch:
                    if not held.future.done():
                        held.future.set_result(Outcome(503, fail_closed_body(
                            held.request_id, "The decision writer failed; failing closed",
                            self.policy_version), {"x-request-id": held.request_id}))

    def _run_one(self, job: Job, batch: list[Job]) -> None:
        """One turn of the writer: a sweep, or a batch of the jobs queued (``batch`` is filled
        in place, so that :meth:`_run` can fail them closed if anything here raises)."""
        self._apply_pending_policy()
        if self.broken is not None:
            self._gather(batch)
            for done, outcome in zip(batch, self._fail_all(batch), strict=True):
                if not done.future.done():
                    done.future.set_result(outcome)
            return
        if job.op == "sweep":
            metrics.QUEUE_DEPTH.set(self._queue.qsize())
            with self.store.writer_lock():
                self._process_sweep(job)
            if self._deferred_sync:
                self._sync()
            return
        # What is queued now is decided before the lock, where it can be (while another
        # process holds the lock, this one's writer would only wait).
        self._gather(batch)
        self._decide_early(batch)
        with self.store.writer_lock():
            # gathered again once the lock is ours: what queued while another process held it
            # joins this batch (one commit, one fsync for all of it) instead of waiting a turn
            self._gather(batch)
            metrics.QUEUE_DEPTH.set(self._queue.qsize())  # sampled once a batch: cheap
            committed = self._committed
            outcomes = self._process(batch)
        if self._committed != committed and self._deferred_sync:
            outcomes = self._make_durable(batch, outcomes)
        # committed (or failed closed): the answers go out once the lock is free for the other
        # processes (each one wakes its caller's event loop, a system call)
        for done, outcome in zip(batch, outcomes, strict=True):
            outcome.headers.setdefault("x-request-id", done.request_id)
            if not done.future.done():  # a caller that gave up may have cancelled it
                done.future.set_result(outcome)

    def _make_durable(self, batch: list[Job], outcomes: list[Outcome]) -> list[Outcome]:
        """SQLite: sync the write-ahead log after the write lock is released, before any
        answer of the batch leaves.

        The writer's connection commits with ``synchronous=NORMAL``: the commit writes the
        batch's frames to the WAL without waiting for the disk, and releases the lock. This
        sync then makes them durable (it covers every frame written before them, other
        processes' included) while the next process already writes its batch: the disk's
        flush is no longer part of the turn every writer waits for.

        A failed sync is final for this process, as a failed fsync is for PostgreSQL: the
        batch's rows are committed (other connections see them, a repeated request id would
        replay them) but what reached the disk is unknown, and a retried sync can report
        success over pages the kernel dropped. So the batch and every later job get a
        fail-closed 503, ``/readyz`` says why, and the process must be restarted (on restart
        SQLite recovers the log from what is on disk)."""
        if self._sync():
            return outcomes
        return self._fail_all(batch)

    def _sync(self) -> bool:
        """Flush the log (:meth:`_make_durable`); on failure mark this writer broken."""
        try:
            self.store.sync_wal()
        except OSError as exc:
            self.broken = (f"the decision log could not be flushed to disk ({exc}); this "
                           "server process fails every check closed until it is restarted")
            log.critical("%s", self.broken)
            return False
        return True

    def _fail_all(self, batch: list[Job]) -> list[Outcome]:
        """Fail-closed 503s for ``batch`` (this writer is :attr:`broken`)."""
        metrics.FAIL_CLOSED.labels(reason="store").inc(len(batch))
        return [Outcome(503, fail_closed_body(
            job.request_id, "The decision log could not be made durable; failing closed",
            self.policy_version), {"x-request-id": job.request_id}) for job in batch]

    def _gather(self, batch: list[Job]) -> None:
        """Add the queued jobs to ``batch`` (up to ``batch_max``; a sweep waits its turn)."""
        while len(batch) < self.batch_max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return
            if more is None or more.op == "sweep":
                self._queue.put(more)  # handled on its own, after this batch
                return
            batch.append(more)

    def _decide_early(self, batch: list[Job]) -> None:
        """Decide, before the transaction, the checks that need no stored state: a known key
        (its tenant), no ``run_id``, no ``approval_id``. The transaction still authenticates,
        meters and logs them, and uses the early decision only for the tenant it expected;
        anything the engine asks of the store drops the early decision (it is made again
        inside). What the transaction then does per job is the key, the quota, the approval
        request of a DEFER and the log row. The action digest of every job is worked out here
        too, for the batch's approval prefetch."""
        for job in batch:
            if job.op == "check" and job.request is not None and job.early is None:
                try:
                    self._decide_one_early(job, job.request)
                except Exception:  # an optimisation: the transaction decides it instead
                    log.debug("no early decision for %s", job.request_id, exc_info=True)

    def _decide_one_early(self, job: Job, request: CheckRequest) -> None:
        engine, probe = self._early_engine, self._probe
        if job.secret and job.key_id is None and job.secret_hash is None:
            job.secret_hash = hash_key(job.secret)
        known = self._known.get(job.secret_hash or "")
        tenant = known[0] if known is not None else None
        ctx = request.context
        if tenant is None or (ctx is not None and (ctx.run_id or ctx.approval_id)):
            try:
                job.digest = engine.action_digest(request)
            except Exception:  # a prefetch hint; evaluation decides
                log.debug("no early digest for %s", job.request_id, exc_info=True)
            return
        probe.touched = False
        now = self.clock()
        started = time.perf_counter()
        decision = engine.evaluate(request, at=now, request_id=job.request_id,
                                   tenant=tenant, input_sha256=job.input_sha256)
        eval_us = (time.perf_counter() - started) * 1e6
        if probe.touched:
            return
        body = decision.body
        job.digest = body.get("action_digest") or None
        early = EarlyDecision(tenant, now, decision, eval_us)
        if body["verdict"] == "ALLOW" and body["buckets"] and body["decision"] != "ERROR":
            try:
                early.token = self._token_for(tenant, body, now)
            except Exception:  # signed again inside, failing closed there
                log.debug("no early token for %s", job.request_id, exc_info=True)
        job.early = early

    def _process_sweep(self, job: Job) -> None:
        now = self.clock()
        now_us = int(now.timestamp() * 1e6)
        expired = 0
        try:
            conn = self._connection()
            cur = conn.cursor()
            try:
                if self.store.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                cur.execute(self.store.sql(
                    "SELECT DISTINCT tenant_id FROM approvals WHERE status = 'pending' "
                    "AND expires_us <= :now"), {"now": now_us})
                tenants = sorted(r[0] for r in cur.fetchall())
                if self.store.dialect == "postgresql":
                    for tenant in tenants:
                        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%(t)s))", {"t": tenant})
                self.approvals.cursor = cur
                state = _Batch()
                for tenant in tenants:
                    chain = state.chains[tenant] = ledger.read_head(self.store, cur, tenant)
                    for approval in self.approvals.expired_pending(tenant, now_us):
                        self.approvals.set_status(approval, "expired", now_us)
                        self._log_event(state, chain, None, now, "approval.expired", approval,
                                        {}, tenant=tenant)
                        expired += 1
                for tenant, chain in state.chains.items():
                    ledger.save(self.store, cur, tenant, chain)
                conn.commit()
            finally:
                self.approvals.cursor = None
                cur.close()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.error("approval expiry sweep failed: %s", exc)
            try:
                if self._conn is not None:
                    self._conn.rollback()
            except Exception:
                log.debug("rollback failed", exc_info=True)
            self._drop_connection()
        if not job.future.done():
            job.future.set_result(Outcome(200, {"expired": expired}))

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self.store.engine.raw_connection()
            if self._deferred_sync:  # durability comes from _make_durable's sync instead
                cursor = conn.cursor()
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:
                log.debug("invalidating a broken connection failed", exc_info=True)

    def _process(self, batch: list[Job]) -> list[Outcome]:
        """Decide and log ``batch`` in one transaction; its answers, one per job (all 503s
        failing closed when the transaction does)."""
        outcomes: list[Outcome] = []
        try:
            conn = self._connection()
            cur = conn.cursor()
            try:
                if self.store.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE")
                state = _Batch()
                self.run_state.begin(cur)
                self.approvals.cursor = cur
                self._read(conn, batch, state)
                if self.store.dialect == "postgresql":
                    self._join_late(conn, batch, state)
                outcomes = [self._handle_safely(cur, job, state) for job in batch]
                started = time.perf_counter()
                with self._pipeline(conn):  # PostgreSQL: writes and COMMIT in one round trip
                    self.run_state.flush()
                    self._save_usage(cur, state)
                    for tenant, chain in state.chains.items():
                        ledger.save(self.store, cur, tenant, chain)
                    conn.commit()
                self._committed += 1
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                metrics.BATCH_SIZE.observe(len(batch))
            finally:
                self.run_state.end()
                self.approvals.cursor = None
                cur.close()
        except Exception as exc:  # noqa: BLE001 - any store failure fails the batch closed
            log.error("decision log unavailable, failing %d request(s) closed: %s",
                      len(batch), exc)
            try:
                if self._conn is not None:
                    self._conn.rollback()
            except Exception:
                log.debug("rollback failed", exc_info=True)
            self._drop_connection()
            metrics.FAIL_CLOSED.labels(reason="store").inc(len(batch))
            outcomes = [
                Outcome(503, fail_closed_body(
                    job.request_id, "The decision log is unavailable; failing closed",
                    self.policy_version))
                for job in batch
            ]
        return outcomes

    def _join_late(self, conn: Any, batch: list[Job], state: _Batch) -> None:
        """PostgreSQL: the checks that queued while this transaction waited for its tenants'
        locks join it — a key the batch has read, a tenant it holds the lock of — instead of
        waiting for the next batch, a whole turn of the lock later. Their keys are read again
        first, under the locks: a key revoked (or changed) while the batch waited answers as it
        is now, not as the batch read it. (They are decided inside; whatever else they need,
        they read as they go.) The first job that cannot join starts the next batch. On SQLite
        the writer gathers the queue once it holds the write lock, before its transaction
        begins."""
        late: list[Job] = []
        while len(batch) + len(late) < self.batch_max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is not None and more.op == "sweep":
                self._carried.append(more)  # the next turn's, after this batch
                continue
            key = state.keys.get(job_ident(more)) if more is not None else None
            if (more is None or more.op != "check" or key is None
                    or key.tenant_id not in state.chains):
                self._carried.append(more)
                break
            late.append(more)
        if not late:
            return
        idents = {job_ident(job): job for job in late}
        cursors: list[Any] = []
        try:
            with self._pipeline(conn):
                sent = {ident: self._send_key(self._cursor(conn, cursors), job)
                        for ident, job in idents.items()}
            fresh = {ident: self._key_from(sent[ident], job) for ident, job in idents.items()}
        finally:
            for cursor in cursors:
                cursor.close()
        for job in late:
            key = fresh[job_ident(job)]
            # a key's tenant never changes; were it not locked, the job gets no key (401)
            job.key = key if key is not None and key.tenant_id in state.chains else None
            batch.append(job)

    def _pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        """PostgreSQL's pipeline mode on ``conn`` (statements sent without waiting, one round
        trip at the end); on SQLite, nothing (a statement there costs no round trip)."""
        if self.store.dialect == "postgresql":
            return conn.driver_connection.pipeline()  # type: ignore[no-any-return]
        return nullcontext()

    def _read(self, conn: Any, batch: list[Job], state: _Batch, *, ahead: bool = True) -> None:
        """Read what the batch needs before its jobs run: the keys, then (under the tenants'
        locks on PostgreSQL) the chain heads, the keys' usage, earlier answers to repeated
        request ids, and (for batches of :data:`PREFETCH_FROM` or more) the open approval
        requests of the actions and the state of the runs.

        On PostgreSQL the statements go in a pipeline: when every key of the batch is one this
        writer has seen, keys, locks and reads take one round trip, else two. A job whose
        reads were not made ahead (its key was not the one expected) reads as it goes; the
        locks are always taken before any job runs, and always in the order of the tenants'
        names (a tenant that was not expected and sorts before one locked already means a
        rollback and the reads again, without reading ahead: no two writers can then wait on
        each other)."""
        idents: dict[str, Job] = {}
        for job in batch:
            idents.setdefault(job_ident(job), job)
        expected: dict[str, tuple[str, str]] = {}
        for ident, job in idents.items():
            known = self._known.get(job.secret_hash or "") if job.key_id is None else None
            if known is not None:
                expected[ident] = known
        ahead = ahead and len(expected) == len(idents)
        cursors: list[Any] = []
        finish: list[Callable[[], None]] = []
        locked: set[str] = set()
        try:
            with self._pipeline(conn):
                lookups = {ident: self._send_key(self._cursor(conn, cursors), job)
                           for ident, job in idents.items()}
                if ahead:
                    by_tenant = {ident: tenant for ident, (tenant, _) in expected.items()}
                    key_ids = {ident: key_id for ident, (_, key_id) in expected.items()}
                    locked = set(by_tenant.values())
                    finish += self._send_reads(conn, cursors, batch, by_tenant, key_ids,
                                               locked, state)
            for ident, job in idents.items():
                state.keys[ident] = self._key_from(lookups[ident], job)
            for job in batch:
                job.key = state.keys[job_ident(job)]
            missing = {j.key.tenant_id for j in batch if j.key is not None} - locked
            if missing and locked and self.store.dialect == "postgresql" and (
                    min(missing) < max(locked)):
                conn.rollback()  # releases the locks; nothing was read into the batch yet
                for job in batch:
                    job.key = None
                state.keys.clear()
                self._read(conn, batch, state, ahead=False)
                return
            if missing:
                by_tenant = {ident: key.tenant_id for ident, key in state.keys.items()
                             if key is not None}
                key_ids = {ident: key.id for ident, key in state.keys.items()
                           if key is not None}
                with self._pipeline(conn):
                    finish += self._send_reads(conn, cursors, batch, by_tenant, key_ids,
                                               missing, state)
            for read in finish:
                read()
        finally:
            for cursor in cursors:
                cursor.close()

    @staticmethod
    def _cursor(conn: Any, cursors: list[Any]) -> Any:
        cursor = conn.cursor()
        cursors.append(cursor)
        return cursor

    def _send_reads(self, conn: Any, cursors: list[Any], batch: list[Job],
                    tenant_of: dict[str, str], key_id_of: dict[str, str], tenants: set[str],
                    state: _Batch) -> list[Callable[[], None]]:
        """Send the batch's reads for ``tenants`` (their locks first, in a fixed order, on
        PostgreSQL); return the functions that read the answers."""
        finish: list[Callable[[], None]] = []
        if self.store.dialect == "postgresql":
            lock = self._cursor(conn, cursors)
            for tenant in sorted(tenants):
                lock.execute("SELECT pg_advisory_xact_lock(hashtext(%(t)s))", {"t": tenant})
        heads = ledger.read_heads(self.store, self._cursor(conn, cursors), tenants)

        def read_heads() -> None:
            for tenant, chain in heads().items():
                state.chains.setdefault(tenant, chain)

        finish.append(read_heads)
        checks = [j for j in batch if j.op == "check" and tenant_of.get(job_ident(j)) in tenants]
        key_ids = sorted({key_id_of[job_ident(j)] for j in checks if job_ident(j) in key_id_of})
        if key_ids:
            usage = self._cursor(conn, cursors)
            params: dict[str, Any] = {}
            usage.execute("SELECT key_id, month_key, month_count, day_key, day_count, "
                          "minute_key, minute_count FROM key_usage WHERE "
                          + self.store.any_of("key_id", "k", key_ids, params), params)

            def read_usage() -> None:
                found = {row[0]: row[1:] for row in usage.fetchall()}
                for key_id in key_ids:
                    state.usage_rows.setdefault(key_id, found.get(key_id))

            finish.append(read_usage)
        repeated: dict[str, list[str]] = {}
        for job in checks:
            if job.client_request_id:
                repeated.setdefault(tenant_of[job_ident(job)], []).append(job.request_id)
        for tenant, request_ids in repeated.items():
            replays = self._cursor(conn, cursors)
            params = {}
            replays.execute(
                "SELECT request_id, input_sha256, response, http_status FROM decisions WHERE "
                + self.store.any_of("tenant_id", "t", [tenant], params) + " AND "
                + self.store.any_of("request_id", "r", request_ids, params), params)

            def read_replays(cursor: Any = replays, tenant: str = tenant,
                             request_ids: list[str] = request_ids) -> None:
                found = {row[0]: row[1:] for row in cursor.fetchall()}
                for request_id in request_ids:
                    state.replays.setdefault((tenant, request_id), found.get(request_id))

            finish.append(read_replays)
        if len(batch) >= PREFETCH_FROM:
            finish += self._send_prefetch(conn, cursors, checks, tenant_of)
        return finish

    def _send_prefetch(self, conn: Any, cursors: list[Any], checks: list[Job],
                       tenant_of: dict[str, str]) -> list[Callable[[], None]]:
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
                    digest = self.engine.action_digest(job.request)
                except Exception:  # noqa: BLE001 - a prefetch is an optimisation
                    continue
            if digest:
                wanted.setdefault(tenant, set()).add(digest)
        now_us = int(self.clock().timestamp() * 1e6)
        finish = [self.approvals.prefetch_open(tenant, digests, now_us,
                                               self._cursor(conn, cursors))
                  for tenant, digests in wanted.items()]
        finish += [self.run_state.prefetch(tenant, run_ids, self._cursor(conn, cursors))
                   for tenant, run_ids in runs.items()]
        return finish

    def _send_key(self, cur: Any, job: Job) -> Any:
        """Send the lookup of ``job``'s key on ``cur`` (``None``: no key to look up)."""
        if job.key_id is not None:
            cur.execute(self._sql["key_by_id"], {"i": job.key_id})
        elif not job.secret:
            return None
        else:
            job.secret_hash = job.secret_hash or hash_key(job.secret)
            cur.execute(self._sql["key"], {"h": job.secret_hash})
        return cur

    def _key_from(self, cur: Any, job: Job) -> ApiKey | None:
        """The key :meth:`_send_key` looked up, if it exists and is not revoked."""
        row = cur.fetchone() if cur is not None else None
        if row is None or row[12] is not None:
            if job.secret_hash is not None:
                self._known.pop(job.secret_hash, None)  # unknown or revoked: expect nothing
            return None
        key = ApiKey.from_row(dict(zip(_KEY_COLUMNS, row, strict=True)))
        if job.key_id is None and job.secret_hash is not None:
            if len(self._known) >= TENANTS_KEPT:
                self._known.clear()
            self._known[job.secret_hash] = (key.tenant_id, key.id)
        return key

    # -- approvals and tokens ------------------------------------------------------------------

    def _approval_for(
        self, state: _Batch, chain: ledger.ChainCursor, job: Job, key: ApiKey,
        request: CheckRequest, body: dict[str, Any], now: datetime,
    ) -> dict[str, Any]:
        """The open approval request for this exact action (pending, or granted and within its
        execute-by window: the caller retries with its id), or a new one (logged)."""
        now_us = int(now.timestamp() * 1e6)
        tenant, digest = key.tenant_id, body["action_digest"]
        approval = self.approvals.open_for(tenant, digest, now_us)
        if approval is None:
            ctx = request.context
            deciding = self._by_version(body.get("policy_version"))
            approval = self.approvals.create(
                tenant=tenant, digest=digest, action=_action_summary(request, body),
                buckets=list(body["buckets"]), environment=body.get("environment"),
                request_id=job.request_id, key_id=key.id, principal=key.principal,
                actor_id=ctx.actor_id if ctx is not None else None,
                policy_version=body["policy_version"],
                rule=(deciding.approval_rule(body["buckets"]) if deciding is not None
                      else _FALLBACK_RULE),
                now_us=now_us,
            )
            self._log_event(state, chain, key, now, "approval.created", approval,
                            {"approval_id": approval.id, "request_id": job.request_id})
        return approval.view(now_us)

    def _use_approval(self, state: _Batch, chain: ledger.ChainCursor, key: ApiKey,
                      body: dict[str, Any], now: datetime) -> None:
        """A server-side approval allows its action once: mark it used (and log it)."""
        check = body["guardrail_checks"].get("approval", {})
        approval_id = check.get("approval_id")
        if not (check.get("verified") and approval_id):
            return
        approval = self.approvals.get(key.tenant_id, str(approval_id))
        if approval is None:
            return
        self.approvals.set_status(approval, "used", int(now.timestamp() * 1e6),
                                  used_by=body["request_id"])
        self._log_event(state, chain, key, now, "approval.used", approval,
                        {"request_id": body["request_id"]})

    def _token_for(self, tenant: str, body: dict[str, Any], now: datetime) -> str:
        ttl = self.policy.token_ttl if self.policy is not None else 60.0
        issuer = self.policy.token_issuer if self.policy is not None else "stage0"
        approval = body["guardrail_checks"].get("approval", {})
        iat = int(now.timestamp())
        return self.keyring.sign({
            "iss": issuer,
            "sub": tenant,
            "jti": body["request_id"],
            "action_digest": body["action_digest"],
            "policy_version": body["policy_version"],
            "buckets": list(body["buckets"]),
            "approval_id": approval.get("approval_id") if approval.get("verified") else None,
            "approval_verified": bool(approval.get("verified")),
            "break_glass": approval.get("kind") == "break_glass",
            "environment": body.get("environment"),
            "iat": iat,
            "exp": iat + int(ttl),
        })

    def _handle_other(self, job: Job, state: _Batch) -> Outcome:
        key, rid = job.key, job.request_id
        if key is None:
            return Outcome(401, error_body(401, "Invalid or missing API key", rid))
        now = self.clock()
        chain = state.chains.get(key.tenant_id)
        if chain is None:
            chain = state.chains[key.tenant_id] = ledger.read_head(
                self.store, self.approvals.cursor, key.tenant_id)
        if job.op == "consume":
            return self._consume(job, key, state, chain, now)
        if job.op == "break_glass":
            return self._break_glass(job, key, state, chain, now)
        return self._decide(job, key, state, chain, now)

    def _decide(self, job: Job, key: ApiKey, state: _Batch, chain: ledger.ChainCursor,
                now: datetime) -> Outcome:
        rid, p = job.request_id, job.payload
        now_us = int(now.timestamp() * 1e6)

        def refuse(status: int, code: str, detail: str, **extra: Any) -> Outcome:
            self._log_event(state, chain, key, now, "approval.refused", None,
                            {"approval_id": p.get("approval_id"), "code": code,
                             "decision": job.op})
            return _refusal(status, code, detail, rid, **extra)

        if "approve" not in key.scopes and "admin" not in key.scopes:
            return refuse(403, "APPROVER_SCOPE_MISSING",
                          "This key lacks the `approve` scope; agent keys cannot approve")
        approval = self.approvals.get(key.tenant_id, str(p["approval_id"]))
        if approval is None:
            return refuse(404, "APPROVAL_NOT_FOUND",
                          f"No approval request `{p['approval_id']}` in this tenant")
        status = approval.status_at(now_us)
        if status == "expired":
            if approval.row["status"] != "expired":
                self.approvals.set_status(approval, "expired", now_us)
                self._log_event(state, chain, key, now, "approval.expired", approval, {})
            return refuse(409, "APPROVAL_EXPIRED", f"Approval `{approval.id}` has expired")
        if status != "pending":
            return refuse(409, "APPROVAL_ALREADY_DECIDED",
                          f"Approval `{approval.id}` is already {status}")
        principal = key.principal or key.id
        me = normalize_principal(principal)
        row = approval.row
        if _is_requester(key, row["requested_by_key"], row["requested_by_principal"],
                         row["actor_id"]):
            return refuse(403, "SELF_APPROVAL",
                          "The requester cannot decide its own approval request")
        eligible = set(orjson.loads(row["eligible_roles"]))
        if eligible and not eligible & {normalize_name(r) for r in key.roles}:
            return refuse(403, "APPROVER_ROLE_NOT_ELIGIBLE",
                          "The approver holds none of the roles " + ", ".join(sorted(eligible)))
        if any(normalize_principal(v["principal"]) == me for v in approval.votes):
            return refuse(409, "APPROVAL_ALREADY_VOTED",
                          f"`{principal}` has already decided on this request")
        mfa = False
        if row["requires_mfa"]:
            refused = self._approver_mfa(key, p, refuse)
            if refused is not None:
                return refused
            mfa = True
        decision = "approve" if job.op == "approve" else "reject"
        self.approvals.record_vote(approval, key_id=key.id, principal=principal,
                                   decision=decision, reason=str(p.get("reason") or ""),
                                   mfa=mfa, now_us=now_us)
        self._log_event(state, chain, key, now, "approval.vote", approval,
                        {"decision": decision, "principal": principal,
                         "reason": p.get("reason") or "", "mfa": mfa})
        if decision == "reject":
            self.approvals.set_status(approval, "rejected", now_us)
            self._log_event(state, chain, key, now, "approval.rejected", approval, {})
        elif sum(1 for v in approval.votes if v["decision"] == "approve") >= int(
                row["required_approvals"]):
            self.approvals.set_status(approval, "approved", now_us)
            self._log_event(state, chain, key, now, "approval.approved", approval, {})
        return Outcome(200, approval.view(now_us))

    def _approver_mfa(self, key: ApiKey, p: dict[str, Any],
                      refuse: Callable[..., Outcome]) -> Outcome | None:
        """Check the TOTP code in ``p`` for ``key`` (replay-protected, locked out after repeated
        failures); ``None`` when it passes, else the refusal."""
        if key.totp_secret is None:
            return refuse(403, "APPROVER_MFA_NOT_ENROLLED",
                          "This request needs approver MFA and the key has no TOTP enrolled")
        real_us = int(time.time() * 1e6)  # TOTP runs on real time, even with --frozen-time
        key = self._mfa_state(key)
        if key.mfa_locked_until_us is not None and key.mfa_locked_until_us > real_us:
            wait = max(1, (key.mfa_locked_until_us - real_us) // 1_000_000)
            return refuse(429, "APPROVER_MFA_LOCKED",
                          "Too many wrong TOTP codes; approving is locked for this key",
                          retry_after_seconds=int(wait))
        if not p.get("totp"):
            return refuse(401, "APPROVER_MFA_REQUIRED", "This request needs a TOTP code")
        step = key.totp_step(str(p["totp"]), real_us / 1e6)
        if step is None or (key.totp_last_step is not None and step <= key.totp_last_step):
            self._mfa_failed(key, real_us)
            return refuse(403, "APPROVER_MFA_INVALID",
                          "The TOTP code is not valid (or was already used)")
        self._mfa_passed(key, step)
        return None

    def _break_glass(self, job: Job, key: ApiKey, state: _Batch, chain: ledger.ChainCursor,
                     now: datetime) -> Outcome:
        """Declare a break-glass approval for the action of a logged decision that a closed
        change window or a freeze held back. It may lift only what held that decision back,
        under the break-glass rule of the pack that made it; when the action also needs
        approval, the declaration is an approval request under that pack's approval rule (the
        declarer's vote counts when the declarer is an eligible approver)."""
        rid, p = job.request_id, job.payload
        now_us = int(now.timestamp() * 1e6)
        target = str(p.get("request_id") or "")

        def refuse(status: int, code: str, detail: str, **extra: Any) -> Outcome:
            self._log_event(state, chain, key, now, "break_glass.refused", None,
                            {"request_id": target, "code": code})
            return _refusal(status, code, detail, rid, **extra)

        if "approve" not in key.scopes and "admin" not in key.scopes:
            return refuse(403, "APPROVER_SCOPE_MISSING",
                          "This key lacks the `approve` scope; agent keys cannot break glass")
        cur = self.approvals.cursor
        cur.execute(self._sql["decision"], {"t": key.tenant_id, "r": target})
        found = cur.fetchone()
        if found is None:
            return refuse(404, "DECISION_NOT_FOUND",
                          f"No `/check` decision `{target}` in this tenant")
        (digest, requester_key, logged_request, logged_response, environment, buckets_json,
         tools_json, version) = found
        deciding = self._by_version(version)
        rule = deciding.break_glass if deciding is not None else None
        if rule is None:
            return refuse(403, "BREAK_GLASS_DISABLED",
                          f"Break-glass is turned off in policy `{version}`, which made "
                          f"decision `{target}`")
        reason = str(p.get("reason") or "").strip()
        if len(reason) < rule.min_reason_length:
            return refuse(422, "BREAK_GLASS_REASON_REQUIRED",
                          f"A break-glass declaration needs a reason of at least "
                          f"{rule.min_reason_length} characters (the incident, why it cannot "
                          f"wait); got {len(reason)}")
        my_roles = {normalize_name(r) for r in key.roles}
        if not rule.roles & my_roles:
            return refuse(403, "BREAK_GLASS_ROLE_NOT_ELIGIBLE",
                          "Breaking glass needs one of the roles " + ", ".join(sorted(rule.roles)))
        response = orjson.loads(logged_response)
        issues = response.get("issues", [])
        codes = [str(i.get("code")) for i in issues]
        lifts = [c for c in codes if c in BreakGlassRule.LIFTS]
        if not lifts:
            return refuse(409, "BREAK_GLASS_NOT_APPLICABLE",
                          f"Decision `{target}` was not held back by a change window or a freeze "
                          f"(its issues: {', '.join(codes) or 'none'}); break-glass lifts only "
                          "OUTSIDE_CHANGE_WINDOW and CHANGE_FREEZE")
        denied = [str(i.get("code")) for i in issues
                  if i.get("effect") == "DENY" and i.get("code") not in BreakGlassRule.LIFTS]
        if denied:
            return refuse(409, "BREAK_GLASS_NOT_APPLICABLE",
                          f"Decision `{target}` is also denied by {', '.join(denied)}; "
                          "break-glass never lifts a DENY rule")
        cur.execute(self._sql["glass_for"], {"t": key.tenant_id, "r": target})
        for other_id, other_status, other_expires, other_by in cur.fetchall():
            if other_status == "used" or is_open(other_status, other_expires, other_by, now_us):
                return refuse(409, "BREAK_GLASS_ALREADY_DECLARED",
                              f"Decision `{target}` already has break-glass `{other_id}` "
                              f"({other_status}); one declaration lets its action through once")
        try:
            request_obj = orjson.loads(logged_request)
            summary = _action_summary(parse_request(request_obj), {"environment": environment})
        except (RequestValidationError, orjson.JSONDecodeError, TypeError):
            request_obj = {}
            summary = {"goal": "", "tools": orjson.loads(tools_json), "side_effects": [],
                       "arguments": {}, "environment": environment, "resource_scope": None,
                       "target_resources": None}
        ctx = request_obj.get("context") if isinstance(request_obj, dict) else None
        actor = ctx.get("actor_id") if isinstance(ctx, dict) else None
        cur.execute(self._sql["principal"], {"k": requester_key})
        requester = cur.fetchone()
        requester_principal = requester[0] if requester is not None else None
        if _is_requester(key, requester_key, requester_principal, actor):
            return refuse(403, "SELF_APPROVAL",
                          "The requester cannot break glass for its own action")
        buckets = list(orjson.loads(buckets_json))
        needs_approval = bool(response.get("guardrail_checks", {}).get("approval", {})
                              .get("required"))
        if needs_approval and deciding is not None:
            approval_rule = deciding.approval_rule(buckets)
            glass = ApprovalRule(approval_rule.quorum, approval_rule.approver_roles,
                                 approval_rule.approver_mfa or rule.mfa, rule.expires_in,
                                 rule.expires_in)
        else:
            glass = ApprovalRule(1, frozenset(), rule.mfa, rule.expires_in, rule.expires_in)
        mfa = False
        if glass.approver_mfa:
            refused = self._approver_mfa(key, p, refuse)
            if refused is not None:
                return refused
            mfa = True
        approval = self.approvals.create(
            tenant=key.tenant_id, digest=digest, action=summary, buckets=buckets,
            environment=environment, request_id=target, key_id=str(requester_key),
            principal=requester_principal, actor_id=actor if isinstance(actor, str) else None,
            policy_version=str(version), rule=glass, now_us=now_us, kind="break_glass",
            reason=reason, lifts=lifts)
        principal = key.principal or key.id
        self._log_event(state, chain, key, now, "approval.break_glass", approval,
                        {"request_id": target, "reason": reason, "principal": principal,
                         "mfa": mfa, "lifts": lifts})
        if not glass.approver_roles or glass.approver_roles & my_roles:
            self.approvals.record_vote(approval, key_id=key.id, principal=principal,
                                       decision="approve", reason=reason, mfa=mfa,
                                       now_us=now_us)
            self._log_event(state, chain, key, now, "approval.vote", approval,
                            {"decision": "approve", "principal": principal, "reason": reason,
                             "mfa": mfa})
        if len(approval.votes) >= glass.quorum:
            self.approvals.set_status(approval, "approved", now_us)
            self._log_event(state, chain, key, now, "approval.approved", approval, {})
        return Outcome(200, approval.view(now_us))

    def _mfa_state(self, key: ApiKey) -> ApiKey:
        """The key with its MFA counters as they are now in this transaction."""
        cur = self.approvals.cursor
        cur.execute(self._sql["mfa_read"], {"k": key.id})
        row = cur.fetchone()
        if row is None:
            return key
        return replace(key, mfa_failures=int(row[0] or 0), mfa_locked_until_us=row[1],
                       totp_last_step=row[2])

    def _mfa_failed(self, key: ApiKey, real_us: int) -> None:
        failures = key.mfa_failures + 1
        locked = real_us + MFA_LOCKOUT_S * 1_000_000 if failures >= MFA_MAX_FAILURES else None
        self.approvals.cursor.execute(self._sql["mfa"], {
            "f": 0 if locked else failures, "l": locked, "s": key.totp_last_step, "k": key.id})

    def _mfa_passed(self, key: ApiKey, step: int) -> None:
        self.approvals.cursor.execute(self._sql["mfa"], {"f": 0, "l": None, "s": step,
                                                         "k": key.id})

    def _consume(self, job: Job, key: ApiKey, state: _Batch, chain: ledger.ChainCursor,
                 now: datetime) -> Outcome:
        rid, p = job.request_id, job.payload
        cur = self.approvals.cursor

        def refuse(status: int, code: str, detail: str) -> Outcome:
            self._log_event(state, chain, key, now, "token.refused", None, {"code": code},
                            digest=str(p.get("action_digest") or "")[:64])
            return _refusal(status, code, detail, rid)

        if "check" not in key.scopes and "admin" not in key.scopes:
            return refuse(403, "TOKEN_SCOPE_MISSING",
                          "Consuming execution tokens needs the `check` scope")
        try:
            claims = self.keyring.verify(str(p.get("token") or ""), now.timestamp())
        except TokenError as exc:
            return refuse(401, "TOKEN_INVALID", f"The execution token is not valid: {exc}")
        if claims.get("sub") != key.tenant_id:
            return refuse(401, "TOKEN_WRONG_TENANT", "The token was issued to another tenant")
        if claims.get("action_digest") != p.get("action_digest"):
            return refuse(401, "TOKEN_DIGEST_MISMATCH",
                          "The token was issued for a different action")
        jti = str(claims.get("jti"))
        cur.execute(self._sql["token_used"], {"j": jti, "t": key.tenant_id})
        if cur.fetchone() is not None:
            return refuse(409, "TOKEN_ALREADY_CONSUMED", "The token has already been used")
        now_us = int(now.timestamp() * 1e6)
        cur.execute(self._sql["token_use"], {"j": jti, "t": key.tenant_id, "k": key.id,
                                             "c": now_us})
        body = {"consumed": True, "jti": jti, "request_id": jti,
                "action_digest": claims.get("action_digest"),
                "approval_id": claims.get("approval_id"), "buckets": claims.get("buckets"),
                "policy_version": claims.get("policy_version"),
                "consumed_at": now.timestamp(), "consumed_by": key.principal or key.id}
        self._log_event(state, chain, key, now, "token.consumed", None, body,
                        digest=str(claims.get("action_digest")),
                        environment=claims.get("environment"),
                        buckets=list(claims.get("buckets") or []))
        return Outcome(200, body)

    def _log_event(
        self, state: _Batch, chain: ledger.ChainCursor, key: ApiKey | None, now: datetime,
        kind: str, approval: Any, detail: dict[str, Any], *, digest: str | None = None,
        environment: str | None = None, buckets: list[str] | None = None,
        tenant: str | None = None,
    ) -> None:
        """An approval or token event in the tenant's hash chain (and its webhooks)."""
        event_id = str(uuid.uuid4())
        now_us = int(now.timestamp() * 1e6)
        view = approval.view(now_us) if approval is not None else None
        tenant_id = key.tenant_id if key is not None else str(tenant)
        actor = (key.principal or key.id) if key is not None else "stage0"
        body = {"event": kind, "event_id": event_id, "actor": actor,
                "key_id": key.id if key is not None else None, **detail, "approval": view}
        payload = orjson.dumps(body)
        if approval is not None:
            webhooks.enqueue(self.store, self.approvals.cursor, tenant_id, kind, event_id,
                             approval.id, {"actor": actor, **detail, "approval": view})
        version = view["policy_version"] if view else self.policy_version
        named = self._by_version(version)
        record = {
            "tenant_id": tenant_id,
            "request_id": event_id,
            "key_id": key.id if key is not None else None,
            "kind": kind,
            "http_status": 200,
            "verdict": "",
            "decision": "",
            "policy_version": version,
            "policy_sha256": (named.sha256 if named is not None
                              and named.policy_version == version else ""),
            "input_sha256": hashlib.sha256(payload).hexdigest(),
            "action_digest": view["action_digest"] if view else (digest or ""),
            "environment": view["environment"] if view else environment,
            "tools": orjson.dumps(view["action"]["tools"] if view else []).decode(),
            "buckets": orjson.dumps(view["buckets"] if view else (buckets or [])).decode(),
            "request": orjson.dumps({k: v for k, v in detail.items()
                                     if k != "approval"}).decode(),
            "redacted_paths": "[]",
            "response": payload.decode(),
            "frozen_time": self.frozen_time,
            "timings": "{}",
            "created_us": now_us,
        }
        ledger.append(chain, record)

    def _save_usage(self, cur: Any, state: _Batch) -> None:
        if state.usage:
            cur.executemany(self._sql["upsert_usage"], [
                {"k": key_id, "mk": c.month_key, "mc": c.month, "dk": c.day_key, "dc": c.day,
                 "nk": c.minute_key, "nc": c.minute}
                for key_id, c in state.usage.items()
            ])

    def _handle_safely(self, cur: Any, job: Job, state: _Batch) -> Outcome:
        """One job's failure fails that job closed, not its batch (its writes are deferred to the
        end of the batch, so nothing of it reaches the store)."""
        try:
            if job.op == "check":
                return self._handle(cur, job, state)
            return self._handle_other(job, state)
        except Exception as exc:  # fail this request closed, keep the batch
            log.exception("request %s failed closed", job.request_id)
            metrics.FAIL_CLOSED.labels(reason="internal").inc()
            return Outcome(503, fail_closed_body(
                job.request_id, f"The request could not be decided: {str(exc)[:200]}",
                self.policy_version))

    def _handle(self, cur: Any, job: Job, state: _Batch) -> Outcome:
        key, rid = job.key, job.request_id
        if key is None:
            return Outcome(401, error_body(401, "Invalid or missing API key", rid))
        if "check" not in key.scopes and "admin" not in key.scopes:
            return Outcome(403, error_body(403, "This key lacks the `check` scope", rid))
        tenant = key.tenant_id
        now = self.clock()
        early = job.early
        if early is not None and (early.tenant != tenant
                                  or (now - early.now).total_seconds() > EARLY_MAX_AGE_S):
            early = None
        if early is not None:
            now = early.now  # the decision's instant, for everything logged with it
        if job.client_request_id:
            previous = state.answered.get((tenant, rid))
            if previous is None:
                if (tenant, rid) in state.replays:
                    previous = state.replays[(tenant, rid)]
                else:
                    cur.execute(self._sql["by_request"], {"t": tenant, "r": rid})
                    previous = cur.fetchone()
            if previous is not None:
                if previous[0] != job.input_sha256:
                    return Outcome(409, error_body(
                        409, f"Request id `{rid}` was already used with a different body", rid))
                body = orjson.loads(previous[1])
                if isinstance(body, dict) and "verdict" in body and previous[2] == 200:
                    body["cached"] = True
                return Outcome(int(previous[2]), body, {"idempotent-replay": "true"})
        chain = state.chains.get(tenant)
        if chain is None:
            chain = state.chains[tenant] = ledger.read_head(self.store, cur, tenant)

        if job.invalid is not None or job.request is None:
            assert job.invalid is not None
            body = {**job.invalid.to_dict(), "request_id": rid, "verdict": "DENY",
                    "decision": "NO_GO"}
            self._log(state, chain, job, key, now, 422, "rejected", body, None)
            metrics.count_answer("DENY", [])
            return Outcome(422, body)

        request = job.request
        if request.pro and key.plan != "pro":
            return Outcome(402, error_body(402, "Pro checks require a paid plan", rid))
        windows = state.windows = state.windows or Windows.at(now)
        counts = state.usage.get(key.id)
        if counts is None:
            if key.id in state.usage_rows:
                row = state.usage_rows[key.id]
            else:
                cur.execute(self._sql["usage"], {"k": key.id})
                row = cur.fetchone()
            counts = Counts.current(row, windows)
        refusal = check_quota(counts, windows, monthly=key.monthly_quota,
                              daily=key.daily_quota, per_minute=key.per_minute)
        if refusal is not None:  # counted in /metrics by the HTTP layer, as every refusal
            if refusal.retry_after is not None:
                return Outcome(
                    429,
                    error_body(429, refusal.detail, rid, retry_after_seconds=refusal.retry_after),
                    {"retry-after": str(refusal.retry_after)},
                )
            return Outcome(refusal.status, error_body(refusal.status, refusal.detail, rid))
        state.usage[key.id] = counts.plus_one()

        self.approvals.now_us = int(now.timestamp() * 1e6)
        if early is not None:
            decision, eval_us = early.decision, early.eval_us
        else:
            started = time.perf_counter()
            decision = self.engine.evaluate(
                request, at=now, request_id=rid, tenant=tenant,
                input_sha256=job.input_sha256,
            )
            eval_us = (time.perf_counter() - started) * 1e6
        body = decision.body
        if body["verdict"] == "DEFER" and _NEEDS_APPROVAL & set(decision.issue_codes):
            body["approval"] = self._approval_for(state, chain, job, key, request, body, now)
        elif body["verdict"] == "ALLOW":
            self._use_approval(state, chain, key, body, now)
            if body["buckets"]:
                body["execution_token"] = (early.token if early is not None and early.token
                                           else self._token_for(tenant, body, now))
        encoded = decision.to_json()
        self._log(state, chain, job, key, now, 200, "decision", body, eval_us, encoded)
        metrics.count_answer(body["verdict"], body["buckets"],
                             fail_closed=body["decision"] == "ERROR")
        return Outcome(200, encoded)

    def _log(
        self, state: _Batch, chain: ledger.ChainCursor, job: Job, key: ApiKey, now: datetime,
        status: int, kind: str, body: dict[str, Any], eval_us: float | None,
        encoded: bytes | None = None,
    ) -> None:
        logged, masked = job.logged_request()
        record = {
            "tenant_id": key.tenant_id,
            "request_id": job.request_id,
            "key_id": key.id,
            "kind": kind,
            "http_status": status,
            "verdict": body.get("verdict", "DENY"),
            "decision": body.get("decision", "NO_GO"),
            "policy_version": body.get("policy_version") or self.policy_version,
            "policy_sha256": body.get("policy_sha256") or (
                self.policy.sha256 if self.policy is not None else ""),
            "input_sha256": job.input_sha256,
            "action_digest": body.get("action_digest", ""),
            "environment": body.get("environment"),
            "tools": orjson.dumps(
                sorted({normalize_name(t) for t in job.request.tools or []}) if job.request else []
            ).decode(),
            "buckets": orjson.dumps(body.get("buckets", [])).decode(),
            "request": logged,
            "redacted_paths": masked,
            "response": (encoded or orjson.dumps(body)).decode(),
            "frozen_time": self.frozen_time,
            "timings": orjson.dumps({
                "parse_us": round(job.parse_us, 1),
                "eval_us": None if eval_us is None else round(eval_us, 1),
                "queued_us": round((time.perf_counter() - job.started) * 1e6, 1),
            }).decode(),
            "created_us": int(now.timestamp() * 1_000_000),
        }
        ledger.append(chain, record)
        state.answered[(key.tenant_id, job.request_id)] = (
            record["input_sha256"], record["response"], status)
