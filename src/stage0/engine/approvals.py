"""Approval evidence (CONTRACT section 6): caller-asserted status or a server-side approval."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from stage0.engine.findings import Findings
from stage0.policy.compiled import ApprovalRule, CompiledPolicy

ApprovalState = Literal["pending", "approved", "rejected", "expired", "used"]


@dataclass(frozen=True, slots=True)
class ApprovalEvidence:
    """A server-side approval as the approvals store reports it."""

    approval_id: str
    status: ApprovalState
    action_digest: str
    expires_at: datetime | None = None
    execute_by: datetime | None = None
    approvers: tuple[str, ...] = ()
    kind: Literal["standard", "break_glass"] = "standard"
    reason: str | None = None
    """For a break-glass approval, the declarer's reason."""
    lifts: tuple[str, ...] = ()
    """For a break-glass approval, the issue codes it was declared to lift."""
    required_approvals: int = 1
    requires_mfa: bool = False
    eligible_roles: frozenset[str] = frozenset()
    """The rule the approval was granted under (checked against the deciding pack's)."""
    used_by: str | None = None
    """For a used approval, the request that used it."""


class ApprovalResolver(Protocol):
    """Looks up ``context.approval_id`` for a tenant; ``None`` when there is no such approval."""

    def resolve(self, tenant: str, approval_id: str) -> ApprovalEvidence | None: ...


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def check_approval(
    out: Findings,
    policy: CompiledPolicy,
    required: bool,
    verified_only: bool,
    sources: tuple[str, ...],
    status: str | None,
    approval_id: str | None,
    approved_at: datetime | None,
    at: datetime,
    tenant: str,
    digest: str,
    resolver: ApprovalResolver | None,
    buckets: tuple[str, ...] = (),
) -> None:
    """The first of these that applies decides: the caller reports a rejection; no approval is
    needed (a server-side approval is then looked at only as a break-glass declaration); a
    server-side approval (``approval_id``); the caller's ``approved``; else it is pending."""
    check: dict[str, object] = {
        "required": required,
        "satisfied": not required,
        "verified": False,
        "evidence": "verified" if verified_only else "any",
        "required_by": list(sources),
        "status": status,
        "approval_id": approval_id,
    }
    out.checks["approval"] = check
    if status == "rejected":
        out.add(
            "APPROVAL_REJECTED", "The caller reports `approval_status: rejected` for this action"
        )
    elif not required:
        if approval_id is not None and resolver is not None:
            # No approval needed, but a break-glass declaration may be lifting a window or a
            # freeze: it must hold for this exact action, like any approval.
            evidence = resolver.resolve(tenant, approval_id)
            if evidence is not None and evidence.kind == "break_glass":
                _check_server_approval(out, check, policy, None, approval_id, at, digest,
                                       evidence)
    elif approval_id is not None:
        _check_server_approval(
            out, check, policy, policy.approval_rule(buckets), approval_id, at, digest,
            resolver.resolve(tenant, approval_id) if resolver is not None else None)
    elif status == "approved":
        _check_caller_approval(out, check, policy, verified_only, approved_at, at)
    else:
        shown = status if status is not None else "absent"
        out.add(
            "APPROVAL_REQUIRED_PENDING",
            f"Approval is required by {', '.join(sources)} and `approval_status` is {shown}",
        )


def _check_caller_approval(
    out: Findings,
    check: dict[str, object],
    policy: CompiledPolicy,
    verified_only: bool,
    approved_at: datetime | None,
    at: datetime,
) -> None:
    """``approval_status: approved`` as the caller asserts it, with its ``approved_at``."""
    if verified_only:
        out.add(
            "APPROVAL_REQUIRED_PENDING",
            "This action needs a server-side approval (`context.approval_id`); "
            "a caller-written `approval_status` does not count",
        )
        return
    if approved_at is not None:
        age = (at - approved_at).total_seconds()
        if age > policy.approval_max_age:
            out.add(
                "APPROVAL_EXPIRED",
                f"The approval of {_iso(approved_at)} is older than the policy's maximum "
                f"age of {policy.approval_max_age / 3600:g} h",
            )
            return
        if -age > policy.approval_future_skew:
            out.add("APPROVAL_EXPIRED", f"`approved_at` ({_iso(approved_at)}) is in the future")
            return
    check["satisfied"] = True


def _weaker(evidence: ApprovalEvidence, rule: ApprovalRule) -> list[str]:
    """How the rule an approval was granted under falls short of ``rule``."""
    short = []
    if evidence.required_approvals < rule.quorum:
        short.append(f"{evidence.required_approvals} approval(s) where {rule.quorum} are needed")
    if rule.approver_mfa and not evidence.requires_mfa:
        short.append("no approver MFA")
    if rule.approver_roles and not (evidence.eligible_roles
                                    and evidence.eligible_roles <= rule.approver_roles):
        short.append("approvers outside the roles " + ", ".join(sorted(rule.approver_roles)))
    return short


def _expired(evidence: ApprovalEvidence, at: datetime) -> bool:
    if evidence.status == "expired":
        return True
    if evidence.expires_at is not None and at >= evidence.expires_at:
        return True
    return (evidence.status == "approved" and evidence.execute_by is not None
            and at > evidence.execute_by)


def _unusable(evidence: ApprovalEvidence, approval_id: str, at: datetime,
              digest: str) -> tuple[str, str] | None:
    """Why a server-side approval does not approve this action now (code and message), in the
    order the checks apply; ``None`` when it does."""
    if evidence.status == "rejected":
        return "APPROVAL_REJECTED", f"Approval `{approval_id}` was rejected"
    if evidence.action_digest != digest:
        return ("APPROVAL_SCOPE_MISMATCH",
                f"Approval `{approval_id}` was granted for a different action "
                "(its action digest differs from this request's)")
    if evidence.status == "used":
        # A retry racing for an execution that already happened, not a new request: one DENY
        # for every loser, and no new approval request in the approvers' inbox.
        by = f" by request `{evidence.used_by}`" if evidence.used_by else ""
        return ("APPROVAL_ALREADY_USED",
                f"Approval `{approval_id}` was already used{by}; an approval allows its action "
                "once")
    if _expired(evidence, at):
        return "APPROVAL_EXPIRED", f"Approval `{approval_id}` has expired"
    if evidence.status != "approved":
        return "APPROVAL_REQUIRED_PENDING", f"Approval `{approval_id}` is still pending"
    return None


def _check_server_approval(
    out: Findings,
    check: dict[str, object],
    policy: CompiledPolicy,
    rule: ApprovalRule | None,
    approval_id: str,
    at: datetime,
    digest: str,
    evidence: ApprovalEvidence | None,
) -> None:
    """``rule``: what the deciding pack needs of the approval; ``None`` when the action needs
    none (the approval is there only as a break-glass declaration)."""
    if evidence is None:
        out.add(
            "APPROVAL_REQUIRED_PENDING", f"Approval `{approval_id}` is not known to this server"
        )
        return
    problem = _unusable(evidence, approval_id, at, digest)
    short = _weaker(evidence, rule) if problem is None and rule is not None else []
    if short:
        problem = ("APPROVAL_REQUIRED_PENDING",
                   f"Approval `{approval_id}` was granted under a weaker rule than policy "
                   f"`{policy.policy_version}` needs for this action ({'; '.join(short)}); "
                   "request a new approval")
    if problem is not None:
        out.add(*problem)
        return
    if evidence.kind == "break_glass" and not _honour_break_glass(
            out, check, policy, rule, approval_id, evidence):
        return
    check["satisfied"] = True
    check["verified"] = True
    check["approvers"] = list(evidence.approvers)


def _honour_break_glass(
    out: Findings,
    check: dict[str, object],
    policy: CompiledPolicy,
    rule: ApprovalRule | None,
    approval_id: str,
    evidence: ApprovalEvidence,
) -> bool:
    """Whether the pack honours a (valid) break-glass approval; records the outcome."""
    glass = policy.break_glass
    refused = (f"break-glass is turned off in policy `{policy.policy_version}`"
               if glass is None else
               f"policy `{policy.policy_version}` requires break-glass MFA and it was "
               "declared without" if glass.mfa and not evidence.requires_mfa else None)
    if refused is not None:
        check["break_glass"] = {"approval_id": approval_id, "honoured": False, "why": refused}
        if rule is not None:
            out.add("APPROVAL_REQUIRED_PENDING",
                    f"Break-glass approval `{approval_id}` is not honoured: {refused}")
        return False
    check["kind"] = "break_glass"
    out.break_glass = evidence
    return True


def report_break_glass(out: Findings) -> None:
    """After every check: say loudly that a break-glass approval was used, and what it lifted."""
    evidence = out.break_glass
    if evidence is None:
        return
    lifted = ", ".join(out.lifted) or "nothing (no window or freeze applied)"
    who = ", ".join(evidence.approvers) or "an approver"
    out.add("BREAK_GLASS_USED",
            f"Break-glass approval `{evidence.approval_id}` ({who}) lifted {lifted}; the "
            "declaration and its reason are in the log for review")
    out.checks["break_glass"] = {"approval_id": evidence.approval_id,
                                 "approvers": list(evidence.approvers),
                                 "may_lift": list(evidence.lifts), "lifted": list(out.lifted)}
