"""Approving and rejecting an approval request: the approver's scope, roles and MFA, no
self-approval, one vote per principal; the quorum grants it, one rejection ends it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from stage0.policy import normalize_name
from stage0.server.handlers import mfa
from stage0.server.handlers.common import Refuse, authenticated, is_requester, refusal, to_us
from stage0.server.jobs import Job, Outcome
from stage0.store.approvals import Approval
from stage0.store.keys import ApiKey, normalize_principal
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    found = authenticated(writer, job)
    if isinstance(found, Outcome):
        return found
    key, now = found
    rid, p = job.request_id, job.payload
    now_us = to_us(now)

    def refuse(status: int, code: str, detail: str, **extra: Any) -> Outcome:
        tx.event(key, now, "approval.refused", None,
                 {"approval_id": p.get("approval_id"), "code": code, "decision": job.op})
        return refusal(status, code, detail, rid, **extra)

    if not key.can("approve"):
        return refuse(403, "APPROVER_SCOPE_MISSING",
                      "This key lacks the `approve` scope; agent keys cannot approve")
    approval = tx.approvals.get(key.tenant_id, str(p["approval_id"]))
    if approval is None:
        return refuse(404, "APPROVAL_NOT_FOUND",
                      f"No approval request `{p['approval_id']}` in this tenant")
    status = approval.status_at(now_us)
    if status == "expired":
        if approval.row["status"] != "expired":
            tx.approvals.set_status(approval, "expired", now_us)
            tx.event(key, now, "approval.expired", approval, {})
            writer.tally.approval_expired()  # #16 item 3
        return refuse(409, "APPROVAL_EXPIRED", f"Approval `{approval.id}` has expired")
    if status != "pending":
        return refuse(409, "APPROVAL_ALREADY_DECIDED",
                      f"Approval `{approval.id}` is already {status}")
    refused = _ineligible(key, approval, refuse)
    if refused is not None:
        return refused
    mfa_passed = False
    if approval.row["requires_mfa"]:
        refused = mfa.check(writer, tx, key, p, refuse)
        if refused is not None:
            return refused
        mfa_passed = True
    _vote(tx, key, approval, "approve" if job.op == "approve" else "reject",
          p.get("reason") or "", mfa_passed, now)
    if approval.row["status"] in ("approved", "rejected"):  # #16 item 3: decided by this vote
        writer.tally.approval_decided(approval.row["status"], approval.row["created_us"], now_us)
    return Outcome(200, approval.view(now_us, tx.approvals.public_url))


def _ineligible(key: ApiKey, approval: Approval, refuse: Refuse) -> Outcome | None:
    """The refusal when ``key`` may not vote on ``approval`` (else ``None``)."""
    principal = key.principal or key.id
    me = normalize_principal(principal)
    row = approval.row
    if is_requester(key, row["requested_by_key"], row["requested_by_principal"],
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
    return None


def _vote(tx: Transaction, key: ApiKey, approval: Approval, decision: str, reason: Any,
          mfa_passed: bool, now: datetime) -> None:
    """Record the vote (logged); a rejection ends the request, the quorum grants it."""
    now_us = to_us(now)
    principal = key.principal or key.id
    tx.approvals.record_vote(approval, key_id=key.id, principal=principal, decision=decision,
                             reason=str(reason), mfa=mfa_passed, now_us=now_us)
    tx.event(key, now, "approval.vote", approval,
             {"decision": decision, "principal": principal, "reason": reason,
              "mfa": mfa_passed})
    if decision == "reject":
        tx.approvals.set_status(approval, "rejected", now_us)
        tx.event(key, now, "approval.rejected", approval, {})
    elif sum(1 for v in approval.votes if v["decision"] == "approve") >= int(
            approval.row["required_approvals"]):
        tx.approvals.set_status(approval, "approved", now_us)
        tx.event(key, now, "approval.approved", approval, {})
