"""The built-in checks of the default pack and the constraint table (CONTRACT sections 4-5).

Each check reads the request's facts and the combined requirements, and writes issues and its
``guardrail_checks`` family to the findings. None of them raises for a request-level problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from stage0.engine.constraints import Guardrails
from stage0.engine.evidence import EvidenceKind, EvidenceResolver, reference
from stage0.engine.facts import Facts
from stage0.engine.findings import Findings
from stage0.policy.compiled import CompiledPolicy
from stage0.policy.matching import glob_match, normalize_name

_WORDS = re.compile(r"[a-z]+")


@dataclass(frozen=True, slots=True)
class Requirements:
    """Operator baseline (matched buckets) merged with the caller's guardrails."""

    approval: bool
    approval_sources: tuple[str, ...]
    verified_only: bool
    environment_required: bool
    rollback: bool
    rollback_sources: tuple[str, ...]
    mfa: bool
    ticket: bool
    mfa_sources: tuple[str, ...] = ()
    ticket_sources: tuple[str, ...] = ()


def requirements(f: Facts, g: Guardrails, policy: CompiledPolicy) -> Requirements:
    """Cached on the (cached, read-only) guardrails per bucket list and production flag."""
    key = (f.buckets, f.is_production)
    hit = g.requirements.get(key)
    if hit is None:
        hit = _requirements(f.buckets, f.is_production, g, policy)
        if len(g.requirements) < 64:
            g.requirements[key] = hit
    return hit


def _requirements(
    buckets: tuple[str, ...], is_production: bool, g: Guardrails, policy: CompiledPolicy
) -> Requirements:
    approval_sources = g.sources("require_approval") if g.require_approval else []
    rollback_sources = g.sources("rollback_plan_required") if g.rollback else []
    mfa_sources = g.sources("mfa_required") if g.mfa else []
    ticket_sources = g.sources("require_ticket") if g.ticket else []
    # A constraint's approval needs the pack's evidence (`approval.evidence`); a bucket's, its own.
    verified = bool(approval_sources) and policy.approval_evidence == "verified"
    env_required = False
    for name in buckets:
        b = policy.bucket(name)
        if b.approval:
            approval_sources.append(f"bucket `{name}`")
            verified = verified or b.approval_evidence == "verified"
        env_required = env_required or b.environment
        if b.rollback_plan == "always" or (b.rollback_plan == "production" and is_production):
            rollback_sources.append(f"bucket `{name}`")
        if b.mfa:
            mfa_sources.append(f"bucket `{name}`")
        if b.ticket:
            ticket_sources.append(f"bucket `{name}`")
    if mfa_sources and policy.mfa_evidence == "verified":
        # MFA counts only from approvers who verified it: the action needs a server-side
        # approval (under `approvals.approver_mfa`, which the pack must set).
        approval_sources.append("MFA (`mfa.evidence: verified`)")
        verified = True
    return Requirements(
        approval=bool(approval_sources),
        approval_sources=tuple(dict.fromkeys(approval_sources)),
        verified_only=verified,
        environment_required=env_required,
        rollback=bool(rollback_sources),
        rollback_sources=tuple(rollback_sources),
        mfa=bool(mfa_sources),
        ticket=bool(ticket_sources),
        mfa_sources=tuple(mfa_sources),
        ticket_sources=tuple(ticket_sources),
    )


def check_constraints_valid(out: Findings, g: Guardrails) -> None:
    for bad in g.invalid:
        out.add("CONSTRAINT_INVALID", f"Constraint `{bad.raw}`: {bad.problem}")
    out.checks["unrecognized_constraints"] = list(g.unrecognized)
    out.checks["inactive_constraints"] = list(g.inactive)


def check_side_effects(out: Findings, f: Facts, g: Guardrails, constraints_empty: bool) -> None:
    if f.write_effects and not g.any_recognized:
        out.add("SIDE_EFFECTS_NEED_GUARDRAILS")
    if f.side_effects and constraints_empty:
        out.clarifying.append("What hard constraints must never be violated?")
    if g.read_only and f.write_effects:
        out.add(
            "CONSTRAINT_CONFLICT",
            "The request is marked read-only but declares write-class side effects: "
            + ", ".join(f"`{e}`" for e in f.write_effects),
        )


def check_sensitive_tools(out: Findings, f: Facts, g: Guardrails) -> None:
    if f.sensitive_tools and not g.clears_sensitive:
        out.add("SENSITIVE_TOOLS_NEED_CONSTRAINTS")
    if f.sensitive_tools:
        out.checks["sensitive_tools"] = {
            "tools": list(f.sensitive_tools),
            "constrained": g.clears_sensitive,
        }


def check_role(out: Findings, f: Facts, g: Guardrails) -> None:
    if g.roles is None:
        return
    role = f.context.actor_role
    satisfied = False
    if not role:
        out.add("ACTOR_ROLE_MISSING")
    elif normalize_name(role) not in g.roles:
        out.add(
            "ROLE_NOT_AUTHORIZED",
            f"Role `{role}` is not one of " + ", ".join(f"`{r}`" for r in g.sorted_roles),
        )
    else:
        satisfied = True
    out.checks["role"] = {
        "required": list(g.sorted_roles),
        "actor_role": role,
        "satisfied": satisfied,
    }


def _canonical_env(name: str, policy: CompiledPolicy) -> str:
    return "production" if name in policy.production_environments else name


def check_environment(
    out: Findings, f: Facts, g: Guardrails, req: Requirements, policy: CompiledPolicy
) -> None:
    satisfied = True
    allowed = g.environments
    if allowed is not None or req.environment_required:
        if f.environment_key is None:
            satisfied = False
            out.add("ENVIRONMENT_UNSPECIFIED")
        elif (allowed is not None
              and _canonical_env(f.environment_key, policy) not in g.canonical_environments):
            satisfied = False
            out.add(
                "ENVIRONMENT_NOT_ALLOWED",
                f"Environment `{f.environment}` is not one of "
                + ", ".join(f"`{e}`" for e in g.sorted_environments),
            )
    out.checks["environment"] = {
        "required": allowed is not None or req.environment_required,
        "allowed": list(g.sorted_environments) if allowed is not None else None,
        "value": f.environment,
        "production": f.is_production,
        "satisfied": satisfied,
    }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def check_change_windows(out: Findings, f: Facts, g: Guardrails, policy: CompiledPolicy) -> None:
    if not g.windows:
        return
    results = []
    for name in g.windows:
        window = policy.windows.get(name)
        if window is None:
            out.add(
                "POLICY_EVALUATION_FAILED",
                f"Change window `{name}` is not defined in policy `{policy.policy_version}`",
            )
            results.append({"name": name, "defined": False, "open": False})
            continue
        schedule = window.describe()
        if window.contains(f.at):
            results.append({"name": name, "open": True, "schedule": schedule})
            continue
        opening = window.next_open(f.at)
        opens = _iso(opening)
        if out.lift("OUTSIDE_CHANGE_WINDOW"):
            results.append({"name": name, "open": False, "schedule": schedule,
                            "next_open": opens, "lifted_by": out.break_glass.approval_id})
            continue
        out.add(
            "OUTSIDE_CHANGE_WINDOW",
            f"{_iso(f.at)} is outside change window `{name}` ({schedule}); "
            f"it next opens at {opens}",
        )
        results.append(
            {"name": name, "open": False, "schedule": schedule, "next_open": opens,
             "next_window_opens_at": opens,
             "retry_after_seconds": max(1, int((opening - f.at).total_seconds() + 0.999))}
        )
    out.checks["change_window"] = {
        "required": True,
        "required_by": g.sources("allowed_change_window"),
        "satisfied": all(r["open"] or "lifted_by" in r for r in results),
        "windows": results,
    }


def check_freezes(out: Findings, f: Facts, policy: CompiledPolicy) -> None:
    """Deny an action covered by a change freeze in force (operator policy: no constraint
    can lift it)."""
    for freeze in policy.freezes:
        if not freeze.start <= f.at < freeze.end:
            continue
        covered = (set(freeze.buckets) & set(f.buckets)) if freeze.buckets else bool(
            f.write_effects)
        if covered and out.lift("CHANGE_FREEZE"):
            out.checks["freeze"] = {"name": freeze.name, "until": _iso(freeze.end),
                                    "reason": freeze.reason,
                                    "lifted_by": out.break_glass.approval_id}
            return
        if covered:
            out.add(
                "CHANGE_FREEZE",
                f"Change freeze `{freeze.name}` is in force until {_iso(freeze.end)}"
                + (f": {freeze.reason}" if freeze.reason else ""),
            )
            out.checks["freeze"] = {"name": freeze.name, "until": _iso(freeze.end),
                                    "reason": freeze.reason}
            return


def _truthy_plan(value: bool | str | None) -> bool:
    if isinstance(value, str):
        return bool(value.strip()) and value.strip().lower() not in ("false", "no", "none")
    return value is True


def _confirm(out: Findings, f: Facts, kind: EvidenceKind, ref: str | None, what: str,
             unverified: str, resolver: EvidenceResolver | None) -> bool:
    """Whether the evidence source confirmed reference ``ref``; otherwise the issue saying why
    (``unverified`` for an assertion or a reference it does not confirm, ``EVIDENCE_UNAVAILABLE``
    when there is no answer)."""
    if ref is None:
        out.add(unverified, f"{what} must be a reference the evidence source confirms; a "
                            "caller-written `true` does not count")
        return False
    found = resolver.lookup(f.tenant, kind, ref) if resolver is not None else None
    if found is None:
        out.add("EVIDENCE_UNAVAILABLE",
                f"{what} `{ref}` could not be checked: "
                + ("no evidence source is configured" if resolver is None
                   else "the evidence source gave no answer"))
        return False
    if found.state == "unavailable":
        out.add("EVIDENCE_UNAVAILABLE",
                f"{what} `{ref}` could not be checked: the evidence source is unavailable "
                f"({found.detail})")
        return False
    if not found.valid:
        out.add(unverified, f"{what} `{ref}` is not confirmed by the evidence source "
                            f"({found.detail or found.state})")
        return False
    return True


def check_rollback(out: Findings, f: Facts, req: Requirements,
                   policy: CompiledPolicy | None = None,
                   resolver: EvidenceResolver | None = None) -> None:
    if not req.rollback:
        return
    plan = f.context.rollback_plan
    verified = False
    if not _truthy_plan(plan):
        satisfied = False
        out.add(
            "ROLLBACK_PLAN_MISSING",
            "A rollback plan is required by "
            + ", ".join(req.rollback_sources)
            + " but `context.rollback_plan` is "
            + ("absent" if plan is None else f"`{plan}`"),
        )
    elif policy is not None and policy.rollback_evidence == "verified":
        satisfied = verified = _confirm(out, f, "rollback_plan", reference(plan),
                                        "The rollback plan", "ROLLBACK_PLAN_UNVERIFIED",
                                        resolver)
    else:
        satisfied = True
    out.checks["rollback"] = {
        "required": True,
        "required_by": list(req.rollback_sources),
        "satisfied": satisfied,
        "verified": verified,
    }


def check_mfa(out: Findings, f: Facts, req: Requirements, policy: CompiledPolicy) -> None:
    if not req.mfa:
        return
    ctx = f.context
    verified = False
    if policy.mfa_evidence == "verified":
        # Only approvers' MFA counts: a server-side approval under a rule that needs approver
        # MFA (the loader makes every rule of such a pack need it) satisfies the requirement.
        approval = out.checks.get("approval", {})
        satisfied = verified = bool(approval.get("verified") and approval.get("satisfied"))
        if not satisfied:
            out.add("MFA_REQUIRED",
                    "MFA is required by " + ", ".join(req.mfa_sources) + " and counts only from "
                    "the approvers of a server-side approval (`context.approval_id`); "
                    "a caller-written `mfa_verified` does not count")
    else:
        satisfied = ctx.mfa_verified is True
        if not satisfied:
            out.add("MFA_REQUIRED")
        elif ctx.mfa_verified_at is not None:
            age = (f.at - ctx.mfa_verified_at).total_seconds()
            if age > policy.mfa_max_age or -age > policy.approval_future_skew:
                satisfied = False
                out.add(
                    "MFA_REQUIRED",
                    f"The MFA verification of {_iso(ctx.mfa_verified_at)} is stale or in the "
                    "future",
                )
    out.checks["mfa"] = {"required": True, "required_by": list(req.mfa_sources),
                         "satisfied": satisfied, "verified": verified}


def check_ticket(out: Findings, f: Facts, req: Requirements,
                 policy: CompiledPolicy | None = None,
                 resolver: EvidenceResolver | None = None) -> None:
    if not req.ticket:
        return
    ticket = f.context.ticket_id
    present = bool(ticket and ticket.strip())
    verified = False
    if not present:
        satisfied = False
        out.add("TICKET_REQUIRED")
    elif policy is not None and policy.ticket_evidence == "verified":
        satisfied = verified = _confirm(out, f, "ticket", reference(ticket), "The ticket",
                                        "TICKET_UNVERIFIED", resolver)
    else:
        satisfied = True
    out.checks["ticket"] = {
        "required": True,
        "required_by": list(req.ticket_sources),
        "ticket_id": ticket,
        "satisfied": satisfied,
        "verified": verified,
    }


_ASSERTED = (("approval", "approval_status"), ("mfa", "mfa_verified"),
             ("rollback", "rollback_plan"), ("ticket", "ticket_id"))


def report_caller_evidence(out: Findings, g: Guardrails) -> None:
    """After every check: name each requirement that only caller-written evidence satisfied
    (the hosted contract accepts it; the strict posture does not), in an advisory and in
    ``guardrail_checks.evidence`` (the execution token carries the list too). Also lists the
    constraints the pack's ``require`` rules added."""
    if g.policy_constraints:
        out.checks["policy_constraints"] = list(g.policy_constraints)
    checks = out.checks
    asserted: list[str] = []
    verified: list[str] = []
    fields: list[str] = []
    for family, field in _ASSERTED:
        check = checks.get(family)
        if check is None or not check.get("required") or not check.get("satisfied"):
            continue
        if check.get("verified"):
            verified.append(family)
        else:
            asserted.append(family)
            fields.append(field)
    if not asserted and not verified:
        return
    checks["evidence"] = {"caller_asserted": asserted, "verified": verified}
    if asserted:
        out.add("CALLER_ASSERTED_EVIDENCE",
                "Satisfied only by what the caller wrote, not checked by the server: "
                + ", ".join(f"`{f}`" for f in fields))


def check_records(out: Findings, f: Facts, g: Guardrails) -> None:
    if g.max_records is None:
        return
    count = f.context.record_count
    satisfied = count is None or count <= g.max_records
    if not satisfied:
        out.add(
            "RECORD_LIMIT_EXCEEDED",
            f"`record_count` {count} exceeds `max_records: {g.max_records}`",
        )
    out.checks["records"] = {
        "max_records": g.max_records,
        "record_count": count,
        "satisfied": satisfied,
    }


def check_resource_scope(out: Findings, f: Facts, g: Guardrails) -> None:
    if not g.scopes:
        return
    ctx = f.context
    scope = ctx.resource_scope
    targets = [ctx.target_resources] if isinstance(ctx.target_resources, str) else list(
        ctx.target_resources or ()
    )
    satisfied = False
    if not scope:
        out.add("RESOURCE_SCOPE_MISSING")
    else:
        outside = [
            value
            for value in [scope, *targets]
            if not all(glob_match(pattern, value) for pattern in g.scopes)
        ]
        if outside:
            out.add(
                "RESOURCE_SCOPE_VIOLATION",
                ", ".join(f"`{v}`" for v in outside)
                + " outside the allowed scope "
                + ", ".join(f"`{s}`" for s in g.scopes),
            )
        else:
            satisfied = True
    out.checks["resource_scope"] = {
        "allowed": list(g.scopes),
        "value": scope,
        "satisfied": satisfied,
    }


def check_mcp_servers(out: Findings, f: Facts, g: Guardrails) -> None:
    if g.mcp_servers is None:
        return
    active = [normalize_name(s) for s in f.context.active_mcp_servers or ()]
    extra = [s for s in active if s not in g.mcp_servers]
    if extra:
        out.add(
            "MCP_SERVER_NOT_ALLOWED",
            "Active MCP servers not in the allowlist: " + ", ".join(f"`{s}`" for s in extra),
        )
    out.checks["mcp"] = {
        "allowed": list(g.sorted_mcp_servers),
        "active": active,
        "satisfied": not extra,
    }


def goal_problems(goal: str, policy: CompiledPolicy) -> tuple[str, ...]:
    """Why a goal is too vague to judge (empty when it is not)."""
    words = _WORDS.findall(goal.lower())
    problems = []
    if len(words) < policy.min_goal_words:
        problems.append(
            f"the goal has {len(words)} word(s); at least {policy.min_goal_words} expected"
        )
    if not any(w in policy.action_verbs for w in words):
        problems.append("the goal names no concrete action")
    return tuple(problems)


def check_task_clarity(
    out: Findings, f: Facts, problems: tuple[str, ...]
) -> None:
    if not f.request.success_criteria:
        out.add("MISSING_SUCCESS_CRITERIA")
    if problems:
        out.value_findings.extend(problems)
        out.add("UNCLEAR_VALUE_SIGNAL", "The goal is too vague: " + "; ".join(problems))
        out.clarifying.append("What outcome makes this action worth taking?")
