"""One decision-writer transaction: its cursor, what the batch has read ahead and changed, and
the log rows it appends (decisions, approval and token events) to the tenants' chains.

Everything a batch writes is kept here and written by :meth:`Transaction.save` just before the
commit (one statement per kind of row): a job that fails leaves nothing in the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from stage0.policy import CompiledPolicy
from stage0.store import ledger, webhooks
from stage0.store.approvals import Approval, ApprovalStore
from stage0.store.database import Store
from stage0.store.keys import ApiKey
from stage0.store.runstate import TransactionRunState
from stage0.store.sql import Build, compiled
from stage0.store.statements import Answer, UsageRow, tenant_lock, usage_upsert
from stage0.store.usage import Counts, Windows

IdFactory = Callable[[], str]


@dataclass(slots=True)
class Transaction:
    """What one transaction has read and changed; written back by :meth:`save`."""

    store: Store
    cursor: Any
    approvals: ApprovalStore
    run_state: TransactionRunState
    ids: IdFactory
    """Ids of the events logged (approval and token events)."""
    packs: Callable[[object], CompiledPolicy | None]
    """The pack of a policy version this server holds (else the active one)."""
    policy_version: str
    """The active pack's version (``none`` without one)."""
    wall_clock: Callable[[], datetime] | None = None
    """The real clock, for what runs on real time (webhook deliveries) when the decisions'
    clock is frozen; ``None``: the system's."""
    frozen_time: str | None = None
    keys: dict[str, ApiKey | None] = field(default_factory=dict)
    """The batch's keys, by :func:`~stage0.server.jobs.job_ident` (``None``: no such key)."""
    usage: dict[str, Counts] = field(default_factory=dict)
    """The keys' counts as this batch leaves them (written by :meth:`save`)."""
    windows: Windows | None = None
    chains: dict[str, ledger.ChainCursor] = field(default_factory=dict)
    answered: dict[tuple[str, str], Answer] = field(default_factory=dict)
    """The batch's answers by (tenant, request id): a request id repeated within the batch."""
    usage_rows: dict[str, UsageRow | None] = field(default_factory=dict)
    """Usage rows read ahead for the batch's keys (``None``: the key has none yet)."""
    replays: dict[tuple[str, str], Answer | None] = field(default_factory=dict)
    """Earlier answers to the batch's client request ids, read ahead (``None``: none)."""

    def begin(self) -> Transaction:
        """Point the run state and the approval store at this transaction's cursor."""
        self.run_state.begin(self.cursor)
        self.approvals.cursor = self.cursor
        return self

    def end(self) -> None:
        self.run_state.end()
        self.approvals.cursor = None

    # -- statements -------------------------------------------------------------------------

    def sql(self, build: Build, *args: Hashable) -> str:
        """``build``'s statement in this store's dialect (compiled once)."""
        return compiled(self.store.dialect, build, *args)

    def fetch_one(self, build: Build, params: dict[str, Any]) -> Any:
        self.cursor.execute(compiled(self.store.dialect, build), params)
        return self.cursor.fetchone()

    def lock(self, tenants: list[str], cursor: Any = None) -> None:
        """PostgreSQL: take the tenants' advisory locks (in the order given: sort them)."""
        if self.store.dialect == "postgresql":
            cur = cursor if cursor is not None else self.cursor
            for tenant in tenants:
                cur.execute(self.sql(tenant_lock), {"t": tenant})

    # -- the log ------------------------------------------------------------------------------

    def chain(self, tenant: str) -> ledger.ChainCursor:
        """The tenant's chain (its head read on first use, unless read ahead)."""
        chain = self.chains.get(tenant)
        if chain is None:
            chain = self.chains[tenant] = ledger.read_head(self.store, self.cursor, tenant)
        return chain

    def read_heads(self, cursor: Any, tenants: set[str]) -> Callable[[], None]:
        """Send the read of the tenants' chain heads on ``cursor`` (a read ahead); the
        function returned reads the answer into :attr:`chains`."""
        heads = ledger.read_heads(self.store, cursor, tenants)

        def finish() -> None:
            for tenant, chain in heads().items():
                self.chains.setdefault(tenant, chain)

        return finish

    def log(self, chain: ledger.ChainCursor, record: ledger.LogRecord) -> None:
        """Append an answered request (a decision, a rejected body) to ``chain``; a repeat of
        its request id in this batch is answered from it."""
        ledger.append(chain, record)
        self.answered[(record["tenant_id"], record["request_id"])] = Answer(
            record["input_sha256"], record["response"], record["http_status"],
            record["request_id"])

    def event(
        self, key: ApiKey | None, now: datetime, kind: str, approval: Approval | None,
        detail: dict[str, Any], *, digest: str | None = None, environment: str | None = None,
        buckets: list[str] | None = None, tenant: str | None = None,
    ) -> None:
        """An approval or token event in the tenant's hash chain (and its webhooks)."""
        event_id = self.ids()
        now_us = int(now.timestamp() * 1e6)
        view = (approval.view(now_us, self.approvals.public_url) if approval is not None
                else None)
        tenant_id = key.tenant_id if key is not None else str(tenant)
        actor = (key.principal or key.id) if key is not None else "stage0"
        body = {"event": kind, "event_id": event_id, "actor": actor,
                "key_id": key.id if key is not None else None, **detail, "approval": view}
        payload = orjson.dumps(body)
        if approval is not None:
            real_us = (int(self.wall_clock().timestamp() * 1e6)
                       if self.wall_clock is not None else None)
            webhooks.enqueue(self.store, self.cursor, tenant_id, kind, event_id,
                             approval.id, {"actor": actor, **detail, "approval": view},
                             now_us=real_us)
        version = view["policy_version"] if view else self.policy_version
        named = self.packs(version)
        record: ledger.LogRecord = {
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
        ledger.append(self.chain(tenant_id), record)

    # -- writing back -------------------------------------------------------------------------

    def save(self) -> None:
        """Write what the batch changed: run state, usage, the chains' rows and heads."""
        self.run_state.flush()
        if self.usage:
            self.cursor.executemany(self.sql(usage_upsert), [
                {"key_id": key_id, "month_key": c.month_key, "month_count": c.month,
                 "day_key": c.day_key, "day_count": c.day, "minute_key": c.minute_key,
                 "minute_count": c.minute}
                for key_id, c in self.usage.items()
            ])
        for tenant, chain in self.chains.items():
            ledger.save(self.store, self.cursor, tenant, chain)
