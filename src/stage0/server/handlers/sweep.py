"""The approval sweep: pending approval requests past their expiry become ``expired`` (each
logged, its webhooks queued), per tenant under the tenant's lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stage0.server.handlers.common import to_us
from stage0.server.jobs import Job, Outcome
from stage0.store.statements import expiring_tenants
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    now = writer.clock()
    now_us = to_us(now)
    tx.cursor.execute(tx.sql(expiring_tenants), {"now": now_us})
    tenants = sorted(tenant for (tenant,) in tx.cursor.fetchall())
    tx.lock(tenants)
    expired = 0
    for tenant in tenants:
        tx.chain(tenant)
        for approval in tx.approvals.expired_pending(tenant, now_us):
            tx.approvals.set_status(approval, "expired", now_us)
            tx.event(None, now, "approval.expired", approval, {}, tenant=tenant)
            expired += 1
    return Outcome(200, {"expired": expired})
