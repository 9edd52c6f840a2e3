"""The approval sweep: pending approval requests about to expire undecided are announced once
(``approval.expiring``, so approvers are reminded while there is time), and those past their
expiry become ``expired`` (never ``rejected``); each logged, its webhooks queued, per tenant
under the tenant's lock."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

from stage0.server.handlers.common import to_us
from stage0.server.jobs import Job, Outcome
from stage0.store.statements import expiring_tenants, warning_tenants
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer


def warning_s() -> float:
    """``STAGE0_APPROVAL_EXPIRY_WARNING_S``: how long before a pending request expires its
    approvers are warned (``approval.expiring``); ``0``: never. Checked when the server
    starts (a bad value stops it there, not the sweep later)."""
    raw = os.environ.get("STAGE0_APPROVAL_EXPIRY_WARNING_S", "900")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0 <= value < 10 * 365 * 86400):  # also refuses nan and inf
        raise ValueError("STAGE0_APPROVAL_EXPIRY_WARNING_S must be a number of seconds "
                         f"(0 to turn the warning off), not {raw!r}")
    return value


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    now = writer.clock()
    now_us = to_us(now)
    warn_us = int(warning_s() * 1e6)
    tx.cursor.execute(tx.sql(expiring_tenants), {"now": now_us})
    expiring = {tenant for (tenant,) in tx.cursor.fetchall()}
    warn: set[str] = set()
    if warn_us:
        tx.cursor.execute(tx.sql(warning_tenants),
                          {"now": now_us, "horizon": now_us + warn_us, "window": warn_us})
        warn = {tenant for (tenant,) in tx.cursor.fetchall()}
    tenants = sorted(expiring | warn)
    tx.lock(tenants)
    expired = warned = 0
    for tenant in tenants:
        tx.chain(tenant)
        if tenant in warn:
            for approval in tx.approvals.to_warn(tenant, now_us, now_us + warn_us):
                left = (int(approval.row["expires_us"]) - now_us) / 1e6
                tx.approvals.mark_warned(approval, now_us)
                tx.event(None, now, "approval.expiring", approval, {
                    "seconds_left": round(left),
                    "expires_at": (now + timedelta(seconds=left)).isoformat().replace(
                        "+00:00", "Z")}, tenant=tenant)
                warned += 1
        for approval in tx.approvals.expired_pending(tenant, now_us):
            tx.approvals.set_status(approval, "expired", now_us)
            tx.event(None, now, "approval.expired", approval, {}, tenant=tenant)
            writer.tally.approval_expired()  # #16 item 3
            expired += 1
    return Outcome(200, {"expired": expired, "warned": warned})
