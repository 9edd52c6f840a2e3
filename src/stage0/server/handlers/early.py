"""Checks decided before the writer takes the lock: the key is one the writer has seen (it
remembers each key's tenant, :class:`~stage0.server.readahead.KnownKeys`), and the request has
no ``run_id`` and no ``approval_id``. The engine used here has a :class:`StateProbe` for its
run state and approvals: a decision that asks either is dropped and made inside the
transaction. Inside, the early decision is used only for the tenant it was made for and while
it is younger than :attr:`EarlyDecider.max_age_s`; the job is still authenticated, metered and
logged there."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stage0.contract import CheckRequest
from stage0.engine import Engine
from stage0.server.handlers import tokens
from stage0.server.jobs import EarlyDecision, Job
from stage0.store.keys import hash_key

if TYPE_CHECKING:
    from stage0.server.writer import Writer

log = logging.getLogger("stage0.pipeline")

EARLY_MAX_AGE_S = 1.0
"""An early decision older than this when its transaction runs is made again."""


class NeedsState(Exception):
    """Raised by :class:`StateProbe`: this decision needs the store's state."""


class StateProbe:
    """The run state and the approval resolver of the engine that decides ahead of the batch's
    transaction. A decision that asks either for state (a ``run_id``, an ``approval_id``) is
    dropped and made again inside the transaction, where the state is read and written."""

    def __init__(self) -> None:
        self.touched = False

    def observe(self, *_: Any, **__: Any) -> Any:
        self.touched = True
        raise NeedsState

    def resolve(self, *_: Any, **__: Any) -> Any:
        self.touched = True
        raise NeedsState


class EarlyDecider:
    """The writer's decisions before the lock (``enabled``: whether it makes any)."""

    def __init__(self, writer: Writer, *, enabled: bool = True) -> None:
        self.writer = writer
        self.enabled = enabled
        self.max_age_s = EARLY_MAX_AGE_S
        self.probe = StateProbe()
        self.engine = self._engine()

    def _engine(self) -> Engine:
        w = self.writer
        return Engine(w.policy, run_state=self.probe, approvals=self.probe, clock=w.clock,
                      ids=w.ids, held=w.held, evidence=w.evidence)

    def rebuild(self) -> None:
        """After a policy swap: decide with the writer's new packs."""
        self.engine = self._engine()

    def decide(self, batch: list[Job]) -> None:
        """Decide, before the transaction, the checks that need no stored state. The action
        digest of every other check is worked out here too, for the batch's approval
        prefetch."""
        for job in batch:
            if job.op == "check" and job.request is not None and job.early is None:
                try:
                    self._decide_one(job, job.request)
                except Exception:  # an optimisation: the transaction decides it instead
                    log.debug("no early decision for %s", job.request_id, exc_info=True)

    def _decide_one(self, job: Job, request: CheckRequest) -> None:
        writer, engine, probe = self.writer, self.engine, self.probe
        if job.secret and job.key_id is None and job.secret_hash is None:
            job.secret_hash = hash_key(job.secret)
        known = writer.known.get(job.secret_hash or "")
        tenant = known[0] if known is not None else None
        ctx = request.context
        if (not self.enabled or tenant is None
                or (ctx is not None and (ctx.run_id or ctx.approval_id))):
            try:
                job.digest = engine.action_digest(request)
            except Exception:  # a prefetch hint; evaluation decides
                log.debug("no early digest for %s", job.request_id, exc_info=True)
            return
        probe.touched = False
        now = writer.clock()
        writer.stats.early_evaluations += 1
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
                early.token = tokens.sign(writer, tenant, body, now)
            except Exception:  # signed again inside, failing closed there
                log.debug("no early token for %s", job.request_id, exc_info=True)
        job.early = early

    def usable(self, job: Job, tenant: str, now: datetime) -> EarlyDecision | None:
        """``job``'s early decision, if it was made for ``tenant`` and is recent enough."""
        early = job.early
        if early is None:
            return None
        if early.tenant != tenant or (now - early.now).total_seconds() > self.max_age_s:
            return None
        self.writer.stats.early_used += 1
        return early
