"""Approval evidence (CONTRACT section 6): caller-asserted status or a server-side approval."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from stage0.engine.findings import Findings
from stage0.policy.compiled import ApprovalRule, BoundTo, CompiledPolicy, narrower_binding

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
    binding_digest: str | None = None
    """What it is bound to besides the action digest (:class:`Binding`); ``None`` for an
    approval made before approvals were bound to their fields, which then binds nothing."""
    bound_fields: Mapping[str, Any] = field(default_factory=dict)
    """The bound field values it was requested with (to say what changed)."""
    requested_by_key: str | None = None
    requested_by_principal: str | None = None
    bound_to: BoundTo = "key"


@dataclass(frozen=True, slots=True)
class Binding:
    """What a server-side approval for this request is bound to besides the action digest:
    the pack's bound fields (goal, record count, amounts, …) and who may use it."""

    digest: str
    fields: Mapping[str, Any]
    bound_to: BoundTo


@dataclass(frozen=True, slots=True)
class Requester:
    """The authenticated caller of a check: its key and the key's (canonical) principal."""

    key_id: str
    principal: str | None = None


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
    binding: Binding | None = None,
    requester: Requester | None = None,
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
    if binding is not None:
        check["binding_digest"] = binding.digest
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
                                       evidence, binding, requester)
    elif approval_id is not None:
        _check_server_approval(
            out, check, policy, policy.approval_rule(buckets), approval_id, at, digest,
            resolver.resolve(tenant, approval_id) if resolver is not None else None,
            binding, requester)
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
    """Past its time: a request past ``expires_at`` undecided, or a granted one past its
    execute-by window (which alone counts once granted, even if it ends after
    ``expires_at``; a granted one without a window, in process, ends at ``expires_at``)."""
    if evidence.status == "expired":
        return True
    if evidence.status == "approved" and evidence.execute_by is not None:
        return at > evidence.execute_by
    return evidence.expires_at is not None and at >= evidence.expires_at


def foreign_requester(bound_to: BoundTo, current: BoundTo | None, key_id: str | None,
                      principal: str | None, requester: Requester) -> tuple[BoundTo, str] | None:
    """Whether ``requester`` is someone other than the one a standard approval (requested by
    ``key_id``/``principal``, under ``bound_to``) is bound to, under the narrower of that and
    the deciding pack's binding (``current``): the binding and who it belongs to, or ``None``."""
    scope = narrower_binding(bound_to, current) if current is not None else bound_to
    if scope == "tenant":
        return None
    if scope == "principal" and principal is not None:
        return None if principal == requester.principal else (scope, "another principal")
    return None if key_id == requester.key_id else (scope, f"key `{key_id}`")


def _other_requester(evidence: ApprovalEvidence, approval_id: str, requester: Requester,
                     binding: Binding | None) -> tuple[str, str] | None:
    foreign = foreign_requester(evidence.bound_to, binding.bound_to if binding else None,
                                evidence.requested_by_key, evidence.requested_by_principal,
                                requester)
    if foreign is None:
        return None
    scope, who = foreign
    return ("APPROVAL_REQUESTER_MISMATCH",
            f"Approval `{approval_id}` was requested by {who} and is bound to its requester "
            f"(`approvals.bound_to: {scope}`); this check gets an approval request of its own")


def _changed_fields(evidence: ApprovalEvidence, approval_id: str,
                    binding: Binding) -> tuple[str, str] | None:
    """A standard approval whose bound fields (goal, record count, amounts, …) differ."""
    if evidence.binding_digest == binding.digest:
        return None
    if evidence.binding_digest is None:
        return ("APPROVAL_SCOPE_MISMATCH",
                f"Approval `{approval_id}` was granted before approvals were bound to the "
                "request's goal, counts and amounts; request a new approval")
    was, now = evidence.bound_fields, binding.fields
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    shown = "; ".join(
        f"`{k}` was {_shown(was.get(k))}, is {_shown(now.get(k))}" for k in changed[:4])
    return ("APPROVAL_SCOPE_MISMATCH",
            f"Approval `{approval_id}` was granted for different values of its bound fields"
            f" ({shown or 'the bound fields differ'})")


def _shown(value: object) -> str:
    if value is None:
        return "absent"
    text = repr(value) if not isinstance(value, str) else f"`{value}`"
    return text if len(text) <= 60 else text[:57] + "…"


def _unusable(evidence: ApprovalEvidence, approval_id: str, at: datetime, digest: str,
              binding: Binding | None = None,
              requester: Requester | None = None) -> tuple[str, str] | None:
    """Why a server-side approval does not approve this action now (code and message), in the
    order the checks apply; ``None`` when it does."""
    standard = evidence.kind == "standard"
    if standard and requester is not None:
        other = _other_requester(evidence, approval_id, requester, binding)
        if other is not None:
            return other
    if evidence.status == "rejected":
        return "APPROVAL_REJECTED", f"Approval `{approval_id}` was rejected"
    if evidence.action_digest != digest:
        return ("APPROVAL_SCOPE_MISMATCH",
                f"Approval `{approval_id}` was granted for a different action "
                "(its action digest differs from this request's)")
    if standard and binding is not None:
        changed = _changed_fields(evidence, approval_id, binding)
        if changed is not None:
            return changed
    if evidence.status == "used":
        # A retry racing for an execution that already happened, not a new request: one DENY
        # for every loser, and no new approval request in the approvers' inbox.
        by = f" by request `{evidence.used_by}`" if evidence.used_by else ""
        return ("APPROVAL_ALREADY_USED",
                f"Approval `{approval_id}` was already used{by}; an approval allows its action "
                "once")
    if _expired(evidence, at):
        return _lapsed(evidence, approval_id)
    if evidence.status != "approved":
        return "APPROVAL_REQUIRED_PENDING", f"Approval `{approval_id}` is still pending"
    return None


def _lapsed(evidence: ApprovalEvidence, approval_id: str) -> tuple[str, str]:
    """An expired approval: a request nobody decided in time (recorded as ``expired``, not
    as a rejection), or a granted one not used within its execute-by window."""
    if evidence.status in ("expired", "pending"):
        when = f" at {_iso(evidence.expires_at)}" if evidence.expires_at else ""
        return ("APPROVAL_TIMED_OUT",
                f"Approval `{approval_id}` expired{when} before it was decided "
                f"({len(evidence.approvers)} of {evidence.required_approvals} approvals)")
    return "APPROVAL_EXPIRED", f"Approval `{approval_id}` has expired"


def _check_server_approval(
    out: Findings,
    check: dict[str, object],
    policy: CompiledPolicy,
    rule: ApprovalRule | None,
    approval_id: str,
    at: datetime,
    digest: str,
    evidence: ApprovalEvidence | None,
    binding: Binding | None = None,
    requester: Requester | None = None,
) -> None:
    """``rule``: what the deciding pack needs of the approval; ``None`` when the action needs
    none (the approval is there only as a break-glass declaration)."""
    if evidence is None:
        out.add(
            "APPROVAL_REQUIRED_PENDING", f"Approval `{approval_id}` is not known to this server"
        )
        return
    problem = _unusable(evidence, approval_id, at, digest, binding, requester)
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
