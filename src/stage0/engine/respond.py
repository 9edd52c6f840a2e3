"""The response body (CONTRACT section 2), assembled once from the findings of the checks.

:func:`respond` makes a decided body, :func:`failed` the fail-closed one. Both are plain
mappings on the hot path, typed as ``stage0.contract.response.ResponseBody``; the engine hands
them out as the one response type, ``stage0.contract.response.Decision``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stage0.contract.codes import ERROR_CODES
from stage0.contract.effects import EFFECT_RANK
from stage0.contract.issues import EffectName, Issue
from stage0.contract.request import CheckRequest
from stage0.contract.response import IssueBody, ResponseBody, failed_body
from stage0.engine.combine import TABLE
from stage0.engine.facts import Facts
from stage0.engine.findings import Findings
from stage0.policy.compiled import CompiledPolicy


def risk_score(f: Facts, policy: CompiledPolicy, guardrails: list[str]) -> int:
    """Deterministic 0..100: the names' base risk (buckets, write-class effects, sensitive
    tools, see :func:`~stage0.engine.facts.classify`) plus missing guardrails and production."""
    risk = f.base_risk
    if f.write_effects and not guardrails:
        risk += policy.risk.missing_guardrails
    if f.is_production:
        risk += policy.risk.production_environment
    return 0 if risk < 0 else 100 if risk > 100 else risk


def respond(
    out: Findings,
    f: Facts,
    policy: CompiledPolicy,
    rid: str,
    now: datetime,
    at: datetime,
    input_sha256: str,
    digest: str,
    guardrails: list[str],
    cost_estimate: dict[str, Any] | None,
    version: str,
) -> ResponseBody:
    """The response body. ``cost_estimate`` is the loop check's own fresh mapping."""
    # One pass over the issues: their JSON form, the reason, the trace's codes by effect, the
    # questions (a spec's question goes with its issue's effect: DEFER, or NONE for clarifying)
    # and the two inputs of the combining table.
    issues: list[IssueBody] = []
    reasons: list[str] = []
    deny: list[str] = []
    defer: list[str] = []
    advisory: list[str] = []
    defer_questions: list[str] = []
    clarifying: list[str] = []
    error = False
    strictest: EffectName = "NONE"
    rank = EFFECT_RANK
    specs = out.specs
    for n, i in enumerate(out.issues):
        code, message, effect = i.code, i.message, i.effect
        issues.append({"code": code, "severity": i.severity, "message": message,
                       "effect": effect, "remediation": i.remediation})
        reasons.append(f"{code}: {message}")
        if code in ERROR_CODES:
            error = True
        if rank[effect] > rank[strictest]:  # a KeyError for a name that is not an effect
            strictest = effect
        if effect == "DENY":
            deny.append(code)
        elif effect == "DEFER":
            defer.append(code)
            question = specs[n].question
            if question is not None:
                defer_questions.append(question)
        else:
            advisory.append(code)
            question = specs[n].question
            if question is not None:
                clarifying.append(question)
    if out.clarifying:
        clarifying.extend(out.clarifying)
    verdict, decision = TABLE[error, strictest]
    risk = risk_score(f, policy, guardrails)
    buckets = f.buckets
    trace = [f"{verdict}/{decision} under {version}"]
    if deny:
        trace.append("deny: " + ", ".join(deny))
    if defer:
        trace.append("defer: " + ", ".join(defer))
    if advisory:
        trace.append("advisory: " + ", ".join(advisory))
    if buckets:
        trace.append("buckets: " + ", ".join(buckets))
    trace.append(f"risk {risk}")
    checks = out.checks
    if "approval" not in checks:
        checks["approval"] = {"required": False, "satisfied": True, "verified": False}
    extra = f.request.__pydantic_extra__
    return {
        "verdict": verdict,
        "decision": decision,
        "request_id": rid,
        "policy_version": version,
        "policy_pack_version": version,
        "issues": issues,
        "reason": "; ".join(reasons) if issues else f"All checks passed under {version}",
        "risk_score": risk,
        "high_risk": bool(buckets) or risk >= policy.risk.high_risk_threshold,
        "clarifying_questions": list(dict.fromkeys(clarifying)) if clarifying else clarifying,
        "defer_questions": (list(dict.fromkeys(defer_questions)) if defer_questions
                            else defer_questions),
        "guardrails": list(guardrails),
        "guardrail_checks": checks,
        "value_findings": out.value_findings,
        "cost_estimate": cost_estimate,
        "decision_trace_summary": "; ".join(trace),
        "timestamp": now.timestamp(),
        "evaluated_at": at.timestamp(),
        "cached": False,
        "environment": f.environment,
        "action_digest": digest,
        "input_sha256": input_sha256,
        "policy_sha256": policy.sha256,
        "buckets": list(buckets),
        "ignored_fields": sorted(extra) if extra else [],
        "shadow_issues": out.shadow,
    }


def failed(
    request: CheckRequest,
    policy: CompiledPolicy | None,
    rid: str,
    now: datetime,
    at: datetime,
    input_sha256: str,
    issue: Issue,
) -> ResponseBody:
    """The fail-closed body: ``DENY``/``ERROR`` with the one issue that says why."""
    ctx_env = request.context.environment if request.context is not None else None
    return failed_body(
        issue, request_id=rid, now=now.timestamp(), at=at.timestamp(),
        policy_version=policy.policy_version if policy is not None else "none",
        policy_sha256=policy.sha256 if policy is not None else "",
        environment=ctx_env if ctx_env is not None else request.environment,
        input_sha256=input_sha256, ignored_fields=request.unknown_fields,
    )
