"""Break-glass: an approval for the action of a logged decision that a closed change window or
a freeze held back. It may lift only what held that decision back, under the break-glass rule
of the pack that made it; when the action also needs approval, the declaration is an approval
request under that pack's approval rule (the declarer's vote counts when the declarer is an
eligible approver)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from stage0.contract import RequestValidationError, parse_request
from stage0.policy import CompiledPolicy, normalize_name
from stage0.policy.compiled import ApprovalRule, BreakGlassRule
from stage0.server.handlers import mfa
from stage0.server.handlers.common import (
    Refuse,
    action_summary,
    authenticated,
    is_requester,
    refusal,
    to_us,
)
from stage0.server.jobs import Job, Outcome
from stage0.store.approvals import is_open
from stage0.store.keys import ApiKey
from stage0.store.statements import (
    GlassRow,
    LoggedDecision,
    glass_for,
    key_principal,
    logged_decision,
)
from stage0.store.transaction import Transaction

if TYPE_CHECKING:
    from stage0.server.writer import Writer


def handle(writer: Writer, tx: Transaction, job: Job) -> Outcome:
    found = authenticated(writer, job)
    if isinstance(found, Outcome):
        return found
    key, now = found
    rid, p = job.request_id, job.payload
    target = str(p.get("request_id") or "")

    def refuse(status: int, code: str, detail: str, **extra: Any) -> Outcome:
        tx.event(key, now, "break_glass.refused", None, {"request_id": target, "code": code})
        return refusal(status, code, detail, rid, **extra)

    if not key.can("approve"):
        return refuse(403, "APPROVER_SCOPE_MISSING",
                      "This key lacks the `approve` scope; agent keys cannot break glass")
    row = tx.fetch_one(logged_decision, {"t": key.tenant_id, "r": target})
    if row is None:
        return refuse(404, "DECISION_NOT_FOUND",
                      f"No `/check` decision `{target}` in this tenant")
    logged = LoggedDecision._make(row)
    deciding = writer.by_version(logged.policy_version)
    response = orjson.loads(logged.response)
    reason = str(p.get("reason") or "").strip()
    allowed = _declarable(deciding, logged, target, key, reason, response, refuse)
    if isinstance(allowed, Outcome):
        return allowed
    rule, lifts = allowed
    refused = _already_declared(tx, key, target, to_us(now), refuse)
    if refused is not None:
        return refused
    summary, actor, requester = _requested(tx, logged)
    if is_requester(key, logged.key_id, requester, actor):
        return refuse(403, "SELF_APPROVAL",
                      "The requester cannot break glass for its own action")
    glass = _glass_rule(deciding, rule, list(orjson.loads(logged.buckets)), response)
    mfa_passed = False
    if glass.approver_mfa:
        refused = mfa.check(writer, tx, key, p, refuse)
        if refused is not None:
            return refused
        mfa_passed = True
    outcome = _declare(tx, key, now, logged, target, summary, actor, requester, glass, reason,
                       lifts, mfa_passed)
    writer.tally.approval_created("break_glass")  # #16 item 3
    if isinstance(outcome.body, dict) and outcome.body.get("status") == "approved":
        writer.tally.approval_decided("approved", to_us(now), to_us(now))
    return outcome


def _declarable(deciding: CompiledPolicy | None, logged: LoggedDecision, target: str,
                key: ApiKey, reason: str, response: dict[str, Any],
                refuse: Refuse) -> tuple[BreakGlassRule, list[str]] | Outcome:
    """The break-glass rule and what it lifts; or the refusal (turned off in the deciding
    pack, no reason, not an eligible role, nothing to lift, a DENY)."""
    rule = deciding.break_glass if deciding is not None else None
    if rule is None:
        return refuse(403, "BREAK_GLASS_DISABLED",
                      f"Break-glass is turned off in policy `{logged.policy_version}`, which "
                      f"made decision `{target}`")
    if len(reason) < rule.min_reason_length:
        return refuse(422, "BREAK_GLASS_REASON_REQUIRED",
                      f"A break-glass declaration needs a reason of at least "
                      f"{rule.min_reason_length} characters (the incident, why it cannot "
                      f"wait); got {len(reason)}")
    if not rule.roles & {normalize_name(r) for r in key.roles}:
        return refuse(403, "BREAK_GLASS_ROLE_NOT_ELIGIBLE",
                      "Breaking glass needs one of the roles " + ", ".join(sorted(rule.roles)))
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
    return rule, lifts


def _already_declared(tx: Transaction, key: ApiKey, target: str, now_us: int,
                      refuse: Refuse) -> Outcome | None:
    """A 409 when the decision has a break-glass that is used or still open."""
    tx.cursor.execute(tx.sql(glass_for), {"t": key.tenant_id, "r": target})
    for other in map(GlassRow._make, tx.cursor.fetchall()):
        if other.status == "used" or is_open(other.status, other.expires_us,
                                             other.execute_by_us, now_us):
            return refuse(409, "BREAK_GLASS_ALREADY_DECLARED",
                          f"Decision `{target}` already has break-glass `{other.id}` "
                          f"({other.status}); one declaration lets its action through once")
    return None


def _requested(tx: Transaction,
               logged: LoggedDecision) -> tuple[dict[str, Any], Any, str | None]:
    """What the approver sees of the logged action, its actor and its requester's principal."""
    try:
        request_obj = orjson.loads(logged.request)
        summary = action_summary(parse_request(request_obj),
                                 {"environment": logged.environment})
    except (RequestValidationError, orjson.JSONDecodeError, TypeError):
        request_obj = {}
        summary = {"goal": "", "tools": orjson.loads(logged.tools), "side_effects": [],
                   "arguments": {}, "environment": logged.environment, "resource_scope": None,
                   "target_resources": None}
    ctx = request_obj.get("context") if isinstance(request_obj, dict) else None
    actor = ctx.get("actor_id") if isinstance(ctx, dict) else None
    requester = tx.fetch_one(key_principal, {"k": logged.key_id})
    return summary, actor, requester[0] if requester is not None else None


def _glass_rule(deciding: CompiledPolicy | None, rule: BreakGlassRule, buckets: list[str],
                response: dict[str, Any]) -> ApprovalRule:
    """The declaration's approval rule: the deciding pack's approval rule when the action
    needs approval too (MFA when either asks for it), else the break-glass rule alone."""
    needs_approval = bool(response.get("guardrail_checks", {}).get("approval", {})
                          .get("required"))
    if needs_approval and deciding is not None:
        approval_rule = deciding.approval_rule(buckets)
        return ApprovalRule(approval_rule.quorum, approval_rule.approver_roles,
                            approval_rule.approver_mfa or rule.mfa, rule.expires_in,
                            rule.expires_in)
    return ApprovalRule(1, frozenset(), rule.mfa, rule.expires_in, rule.expires_in)


def _declare(tx: Transaction, key: ApiKey, now: datetime, logged: LoggedDecision, target: str,
             summary: dict[str, Any], actor: Any, requester: str | None, glass: ApprovalRule,
             reason: str, lifts: list[str], mfa_passed: bool) -> Outcome:
    """The break-glass approval request (logged), with the declarer's vote when eligible."""
    now_us = to_us(now)
    approval = tx.approvals.create(
        tenant=key.tenant_id, digest=logged.action_digest, action=summary,
        buckets=list(orjson.loads(logged.buckets)), environment=logged.environment,
        request_id=target, key_id=str(logged.key_id), principal=requester,
        actor_id=actor if isinstance(actor, str) else None,
        policy_version=str(logged.policy_version), rule=glass, now_us=now_us,
        kind="break_glass", reason=reason, lifts=lifts)
    principal = key.principal or key.id
    tx.event(key, now, "approval.break_glass", approval,
             {"request_id": target, "reason": reason, "principal": principal,
              "mfa": mfa_passed, "lifts": lifts})
    if not glass.approver_roles or glass.approver_roles & {normalize_name(r) for r in key.roles}:
        tx.approvals.record_vote(approval, key_id=key.id, principal=principal,
                                 decision="approve", reason=reason, mfa=mfa_passed,
                                 now_us=now_us)
        tx.event(key, now, "approval.vote", approval,
                 {"decision": "approve", "principal": principal, "reason": reason,
                  "mfa": mfa_passed})
    if len(approval.votes) >= glass.quorum:
        tx.approvals.set_status(approval, "approved", now_us)
        tx.event(key, now, "approval.approved", approval, {})
    return Outcome(200, approval.view(now_us, tx.approvals.public_url))
