"""The decision writer: authenticate, meter, evaluate and log, with group commit.

HTTP handlers put jobs on a queue; one writer thread per server process takes them in batches
and, in one database transaction per batch (:class:`~stage0.store.transaction.Transaction`),
hands each job to the handler of its operation (:data:`HANDLERS`, in
:mod:`stage0.server.handlers`). Only after the COMMIT are the answers released, so no answer
leaves that is not in the log, and one fsync covers the batch.

Across processes the transaction is the lock: ``BEGIN IMMEDIATE`` on SQLite, per-tenant
``pg_advisory_xact_lock`` on PostgreSQL. If the transaction fails (store unreachable, disk
full), every job of the batch gets a 503 whose body still says ``verdict: DENY``; the next
batch opens a fresh connection, so the service recovers without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stage0.engine import Engine, system_clock, uuid4_id
from stage0.engine.evidence import EvidenceCache
from stage0.policy import CompiledPolicy
from stage0.server import metrics, readahead
from stage0.server.durability import Durability
from stage0.server.handlers import Handler, break_glass, checks, early, sweep, tokens, votes
from stage0.server.jobs import Job, Outcome, fail_closed_body, job_ident
from stage0.server.reload import PolicyChanged, StorePolicy
from stage0.store.approvals import ApprovalStore
from stage0.store.database import Store
from stage0.store.runstate import TransactionRunState
from stage0.store.signing import Keyring
from stage0.store.transaction import Transaction

log = logging.getLogger("stage0.pipeline")

DECISION_TIMEOUT_S = float(os.environ.get("STAGE0_DECISION_TIMEOUT_S", "15"))
"""The default of :attr:`Writer.decision_timeout_s`."""

HANDLERS: dict[str, Handler] = {
    "check": checks.handle,
    "approve": votes.handle,
    "reject": votes.handle,
    "break_glass": break_glass.handle,
    "consume": tokens.handle,
    "sweep": sweep.handle,
}
"""The handler of each operation (:attr:`Job.op`), called inside the batch's transaction."""


@dataclass(slots=True)
class WriterStats:
    """What the writer has done, counted as it goes (cheap: an integer each)."""

    early_evaluations: int = 0
    """Checks evaluated before the lock (:mod:`~stage0.server.handlers.early`)."""
    early_used: int = 0
    """Early decisions the transaction answered with."""
    locked_evaluations: int = 0
    """Checks evaluated inside the transaction."""
    late_joins: int = 0
    """PostgreSQL: checks that joined a batch waiting for its tenants' locks."""
    committed: int = 0
    """Batches committed (the checkpointer runs only when there are new ones)."""


class Writer:
    """One writer thread; :meth:`submit` returns a future resolved after the batch commits.

    ``clock`` is the decisions' clock (frozen with ``--frozen-time``), ``wall_clock`` the real
    one (TOTP codes, MFA lockouts), ``ids`` makes the ids of sweeps and logged events. Latency
    metrics and timings use ``time.perf_counter`` (durations, not instants)."""

    def __init__(
        self,
        store: Store,
        policy: CompiledPolicy | None,
        *,
        clock: Callable[[], datetime],
        frozen_time: str | None = None,
        batch_max: int = 256,
        held: tuple[CompiledPolicy, ...] = (),
        ids: Callable[[], str] = uuid4_id,
        wall_clock: Callable[[], datetime] = system_clock,
    ) -> None:
        self.store = store
        self.policy = policy
        self.held = held
        self.clock = clock
        self.wall_clock = wall_clock
        self.ids = ids
        self.frozen_time = frozen_time
        self.batch_max = batch_max
        self.run_state = TransactionRunState(store)
        self.approvals = ApprovalStore(store)
        self.keyring = Keyring(store)
        self.stats = WriterStats()
        self.decision_timeout_s = DECISION_TIMEOUT_S
        """A caller waits this long for its answer, then gets a fail-closed 503."""
        self.lock: Callable[[], AbstractContextManager[None]] = store.writer_lock
        """Serialises the writers of every process on the store (a seam for fault tests)."""
        self.connect: Callable[[], Any] = store.engine.raw_connection
        """Opens the writer's raw DB-API connection (a seam for fault tests)."""
        self.known = readahead.KnownKeys()
        """Key hash to (tenant, key id), as the transactions found them."""
        self.evidence = EvidenceCache()
        """The evidence source's answers, looked up before a check is queued (#15)."""
        self.early = early.EarlyDecider(self)
        self.tally = metrics.Tally()  # #16 item 3: the batch's counts, flushed after its commit
        self.fleet: StorePolicy | None = None
        """#16: the store's active policy, confirmed before each batch's commit (set by
        ``server/state.py``; ``None``: packs from files only)."""
        self.engine = self._engine()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.carried: list[Job | None] = []
        """Jobs taken from the queue that could not join the last batch: the next turns' first,
        in order."""
        self._pending_policy: tuple[CompiledPolicy, tuple[CompiledPolicy, ...]] | None = None
        self._conn: Any = None
        self.durability = Durability(store, self.stats)
        """SQLite file: the log's flush after the lock, the background checkpoints."""
        self._deferred_sync = self.durability.deferred
        self._thread = threading.Thread(target=self._run, name="stage0-writer", daemon=True)
        self._thread.start()

    def _engine(self) -> Engine:
        return Engine(self.policy, run_state=self.run_state, approvals=self.approvals,
                      clock=self.clock, ids=self.ids, held=self.held, evidence=self.evidence)

    @property
    def broken(self) -> str | None:
        """Why this writer answers every job with a fail-closed 503 until the process restarts
        (a failed flush of the log: what is on disk is no longer known)."""
        return self.durability.broken

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
            self.engine = self._engine()
            self.early.rebuild()

    def by_version(self, version: object) -> CompiledPolicy | None:
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
        :attr:`decision_timeout_s` (a writer stuck on a lock, a store that hangs), a
        fail-closed 503: no caller is left waiting. The job may still be logged later."""
        waiting = asyncio.wrap_future(self.submit(job))
        timeout = self.decision_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except TimeoutError:
            metrics.FAIL_CLOSED.labels(reason="timeout").inc()
            return Outcome(503, fail_closed_body(
                job.request_id, f"No decision within {timeout:g} s (the decision "
                "log is not keeping up); failing closed", self.policy_version),
                {"x-request-id": job.request_id, "retry-after": "1"})

    def sweep(self) -> Future[Outcome]:
        """Expire pending approvals past their expiry (logged, webhooks queued)."""
        return self.submit(Job(secret="", raw=b"", request=None, invalid=None,
                               request_id=self.ids(), client_request_id=False,
                               started=time.perf_counter(), op="sweep"))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.durability.close()
        self._drop_connection()

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self.carried.pop(0) if self.carried else self._queue.get()
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
            self.gather(batch)
            for done, outcome in zip(batch, self._fail_all(batch), strict=True):
                if not done.future.done():
                    done.future.set_result(outcome)
            return
        if job.op == "sweep":
            metrics.QUEUE_DEPTH.set(self._queue.qsize())
            with self.lock():
                outcome = self._process_sweep(job)
            if self._deferred_sync:
                self.durability.sync()
            if not job.future.done():
                job.future.set_result(outcome)
            return
        # What is queued now is decided before the lock, where it can be (while another
        # process holds the lock, this one's writer would only wait).
        self.gather(batch)
        self.early.decide(batch)
        with self.lock():
            # gathered again once the lock is ours: what queued while another process held it
            # joins this batch (one commit, one fsync for all of it) instead of waiting a turn
            self.gather(batch)
            metrics.QUEUE_DEPTH.set(self._queue.qsize())  # sampled once a batch: cheap
            committed = self.stats.committed
            outcomes = self.process(batch)
        if (self.stats.committed != committed and self._deferred_sync
                and not self.durability.sync()):
            outcomes = self._fail_all(batch)  # on disk or not: unknown (see Durability.sync)
        # committed (or failed closed): the answers go out once the lock is free for the other
        # processes (each one wakes its caller's event loop, a system call)
        for done, outcome in zip(batch, outcomes, strict=True):
            outcome.headers.setdefault("x-request-id", done.request_id)
            if not done.future.done():  # a caller that gave up may have cancelled it
                done.future.set_result(outcome)

    def _fail_all(self, batch: list[Job]) -> list[Outcome]:
        """Fail-closed 503s for ``batch`` (this writer is :attr:`broken`)."""
        metrics.FAIL_CLOSED.labels(reason="store").inc(len(batch))
        return [Outcome(503, fail_closed_body(
            job.request_id, "The decision log could not be made durable; failing closed",
            self.policy_version), {"x-request-id": job.request_id}) for job in batch]

    def gather(self, batch: list[Job]) -> None:
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

    def take_late(self, batch: list[Job], tx: Transaction) -> list[Job]:
        """PostgreSQL: the queued checks that can join ``batch`` once its tenants' locks are
        held — a key the batch has read, a tenant it has locked (see
        :func:`~stage0.server.readahead.join_late`). The first job that cannot join starts the
        next batch (:attr:`carried`); a sweep waits for the next turn."""
        late: list[Job] = []
        while len(batch) + len(late) < self.batch_max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is not None and more.op == "sweep":
                self.carried.append(more)  # the next turn's, after this batch
                continue
            key = tx.keys.get(job_ident(more)) if more is not None else None
            if (more is None or more.op != "check" or key is None
                    or key.tenant_id not in tx.chains):
                self.carried.append(more)
                break
            late.append(more)
        return late

    # -- transactions -------------------------------------------------------------------------

    def connection(self) -> Any:
        """The writer's raw DB-API connection (opened on first use, again after a failure)."""
        if self._conn is None:
            conn = self.connect()
            if self._deferred_sync:  # durability comes from Durability.sync instead
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

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            log.debug("rollback failed", exc_info=True)
        self._drop_connection()

    def pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        """PostgreSQL's pipeline mode on ``conn`` (statements sent without waiting, one round
        trip at the end); on SQLite, nothing (a statement there costs no round trip)."""
        if self.store.dialect == "postgresql":
            return conn.driver_connection.pipeline()  # type: ignore[no-any-return]
        return nullcontext()

    def _transaction(self, cur: Any) -> Transaction:
        if self.store.dialect == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        return Transaction(self.store, cur, self.approvals, self.run_state, self.ids,
                           self.by_version, self.policy_version, self.wall_clock,
                           self.frozen_time).begin()

    def _process_sweep(self, job: Job) -> Outcome:
        outcome = Outcome(200, {"expired": 0})
        try:
            conn = self.connection()
            cur = conn.cursor()
            tx = self._transaction(cur)
            try:
                self.tally.clear()  # #16 item 3
                outcome = HANDLERS["sweep"](self, tx, job)
                tx.save()
                conn.commit()
                self.tally.flush()  # #16 item 3
            finally:
                tx.end()
                cur.close()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.error("approval expiry sweep failed: %s", exc)
            self._rollback()
        return outcome

    def process(self, batch: list[Job]) -> list[Outcome]:
        """Decide and log ``batch`` in one transaction; its answers, one per job (all 503s
        failing closed when the transaction does). The writer thread calls it under the
        lock; a test may call it directly (no other batch running)."""
        outcomes: list[Outcome] = []
        self.tally.clear()  # #16 item 3: nothing of a failed or redone attempt is counted
        try:
            conn = self.connection()
            cur = conn.cursor()
            tx = self._transaction(cur)
            try:
                readahead.read(self, conn, batch, tx)
                if self.store.dialect == "postgresql":
                    readahead.join_late(self, conn, batch, tx)
                outcomes = [self._handle_safely(tx, job) for job in batch]
                if self.fleet is not None:  # #16: decided under the store's active policy?
                    self.fleet.confirm(self, conn)
                started = time.perf_counter()
                with self.pipeline(conn):  # PostgreSQL: writes and COMMIT in one round trip
                    tx.save()
                    conn.commit()
                self.stats.committed += 1
                self.tally.flush()  # #16 item 3
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
                metrics.BATCH_SIZE.observe(len(batch))
            finally:
                tx.end()
                cur.close()
        except PolicyChanged as changed:  # #16: another pack is active: decide again under it
            self._rollback()
            assert self.fleet is not None
            return self.fleet.redo(self, batch, changed)
        except Exception as exc:  # noqa: BLE001 - any store failure fails the batch closed
            log.error("decision log unavailable, failing %d request(s) closed: %s",
                      len(batch), exc)
            self._rollback()
            metrics.FAIL_CLOSED.labels(reason="store").inc(len(batch))
            outcomes = [
                Outcome(503, fail_closed_body(
                    job.request_id, "The decision log is unavailable; failing closed",
                    self.policy_version))
                for job in batch
            ]
        return outcomes

    def _handle_safely(self, tx: Transaction, job: Job) -> Outcome:
        """One job's failure fails that job closed, not its batch (its writes are deferred to the
        end of the batch, so nothing of it reaches the store)."""
        try:
            return HANDLERS[job.op](self, tx, job)
        except Exception as exc:  # fail this request closed, keep the batch
            log.exception("request %s failed closed", job.request_id,
                          extra={"request_id": job.request_id})  # #16 item 3: JSON logs
            metrics.FAIL_CLOSED.labels(reason="internal").inc()
            return Outcome(503, fail_closed_body(
                job.request_id, f"The request could not be decided: {str(exc)[:200]}",
                self.policy_version))
