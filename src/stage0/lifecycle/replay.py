"""Replay recorded decisions under a candidate pack, and summarise shadow-rule hits.

Each recorded decision is evaluated again as it was: at its original evaluation time, with the
loop counters it was decided with (the run state then, not now), and with its server-side
approval as it stood (granted or not). The request is the logged one, secrets redacted — a
policy that reads a secret's value cannot be replayed faithfully, which is one more reason not
to write one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stage0.contract import RequestValidationError
from stage0.contract.effects import VERDICT_RANK, is_stricter_verdict
from stage0.contract.issues import Issue
from stage0.engine import ApprovalEvidence, Engine
from stage0.engine.combine import combine
from stage0.policy import CompiledPolicy
from stage0.store import ledger
from stage0.store.database import Store

LOOSER = frozenset(
    (a, b) for a in VERDICT_RANK for b in VERDICT_RANK if is_stricter_verdict(a, b))
"""The flips that loosen: DENY or DEFER to ALLOW, DENY to DEFER."""


class _AsRecorded:
    """Approval evidence as the original decision saw it."""

    def __init__(self) -> None:
        self.evidence: ApprovalEvidence | None = None

    def resolve(self, tenant: str, approval_id: str) -> ApprovalEvidence | None:
        return self.evidence


def _as_recorded(engine: Engine, approval: dict[str, Any], record: dict[str, Any],
                 request: dict[str, Any], at: datetime) -> ApprovalEvidence:
    """The recorded approval as evidence for the candidate: granted if it allowed the original
    decision, else pending, and bound to what the candidate binds this request to (the
    recorded decision's approval was for this very request)."""
    verified = bool(approval.get("verified") and approval.get("satisfied"))
    probe = engine.check(request, at=at, tenant=record["tenant"])
    bound = probe.body["guardrail_checks"].get("approval") or {}
    return ApprovalEvidence(
        str(approval["approval_id"]), "approved" if verified else "pending",
        record["action_digest"], binding_digest=bound.get("binding_digest"))


@dataclass
class ReplayReport:
    total: int = 0
    skipped: int = 0
    flips: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    new_codes: Counter[str] = field(default_factory=Counter)
    gone_codes: Counter[str] = field(default_factory=Counter)

    @property
    def loosened(self) -> int:
        return sum(n for (a, b), n in self.flips.items() if (a, b) in LOOSER)

    @property
    def changed(self) -> int:
        return sum(n for (a, b), n in self.flips.items() if a != b)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "skipped": self.skipped,
            "changed": self.changed,
            "loosened": self.loosened,
            "flips": [{"from": a, "to": b, "count": n, "examples": self.examples.get((a, b), [])}
                      for (a, b), n in sorted(self.flips.items())],
            "new_codes": dict(self.new_codes.most_common(10)),
            "gone_codes": dict(self.gone_codes.most_common(10)),
        }


class _Clock:
    """The original evaluation time of the record being replayed."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def _with_recorded_counters(request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The request with the loop counters it was decided with filled in."""
    loop = response.get("guardrail_checks", {}).get("loop") or {}
    context = dict(request.get("context") or {})
    for key, counter in (("current_iteration", "iteration"),
                         ("elapsed_seconds", "elapsed_seconds"),
                         ("cumulative_cost_usd", "cumulative_cost_usd")):
        if context.get(key) is None and loop.get(counter) is not None:
            context[key] = loop[counter]
    return {**request, "context": context} if context else request


def replay(store: Store, candidate: CompiledPolicy, *, tenant: str | None = None,
           since: datetime | None = None, until: datetime | None = None,
           progress: Any = None) -> ReplayReport:
    """Re-evaluate every recorded decision under ``candidate``; count what would change."""
    report = ReplayReport()
    approvals = _AsRecorded()
    clock = _Clock()
    engine = Engine(candidate, approvals=approvals, clock=clock)
    for record in _decisions(store, tenant, since, until):
        if progress is not None:
            progress.update(1)
        original = record["response"]
        approval = original.get("guardrail_checks", {}).get("approval") or {}
        approvals.evidence = None
        at = datetime.fromtimestamp(float(original.get("evaluated_at") or
                                          record["created_at"]), UTC)
        clock.at = at
        request = _with_recorded_counters(record["request"], original)
        try:
            if approval.get("approval_id"):
                approvals.evidence = _as_recorded(engine, approval, record, request, at)
            decision = engine.check(request, at=at, request_id=record["request_id"],
                                    tenant=record["tenant"])
        except RequestValidationError:
            report.skipped += 1
            continue
        report.total += 1
        before, after = str(original.get("verdict")), decision.verdict
        report.flips[(before, after)] += 1
        if before != after:
            examples = report.examples.setdefault((before, after), [])
            if len(examples) < 5:
                examples.append(record["request_id"])
        old = {i["code"] for i in original.get("issues", [])}
        new = set(decision.issue_codes)
        report.new_codes.update(new - old)
        report.gone_codes.update(old - new)
    return report


def _decisions(store: Store, tenant: str | None, since: datetime | None,
               until: datetime | None) -> Iterator[dict[str, Any]]:
    for record in ledger.export(store, tenant=tenant, since=since, until=until):
        if record["kind"] == "decision":
            yield record


def count_decisions(store: Store, tenant: str | None) -> int:
    return ledger.count(store, tenant)


@dataclass
class ShadowReport:
    decisions: int = 0
    with_hits: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    would_change: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "with_hits": self.with_hits,
            "hits": dict(self.hits.most_common()),
            "errors": dict(self.errors.most_common()),
            "would_change": [{"from": a, "to": b, "count": n}
                             for (a, b), n in sorted(self.would_change.items())],
            "examples": self.examples,
        }


def shadow_report(store: Store, *, tenant: str | None = None, since: datetime | None = None,
                  until: datetime | None = None) -> ShadowReport:
    """What the shadow rules hit, and which verdicts they would have changed if enforced."""
    report = ShadowReport()
    for record in _decisions(store, tenant, since, until):
        response = record["response"]
        report.decisions += 1
        shadow = response.get("shadow_issues") or []
        if not shadow:
            continue
        report.with_hits += 1
        enforced = [Issue(i["code"], i["severity"], i["message"], i["effect"], i["remediation"])
                    for i in response.get("issues", [])]
        for hit in shadow:
            if "error" in hit:
                report.errors[hit["code"]] += 1
                continue
            report.hits[hit["code"]] += 1
            report.examples.setdefault(hit["code"], [])
            if len(report.examples[hit["code"]]) < 5:
                report.examples[hit["code"]].append(record["request_id"])
            enforced.append(Issue(hit["code"], hit["severity"], hit["message"], hit["effect"],
                                  hit["remediation"]))
        after, _ = combine(enforced)
        if after != response.get("verdict"):
            report.would_change[(str(response.get("verdict")), after)] += 1
    return report
