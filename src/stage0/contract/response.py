"""The ``/check`` response (CONTRACT section 2).

The engine builds responses as plain mappings on its hot path; this model is their schema.
A test validates every response the engine produces against it, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stage0.contract.issues import Issue

Verdict = Literal["ALLOW", "DEFER", "DENY"]
Decision = Literal["GO", "DEFER", "NO_GO", "ERROR"]


class CheckResponse(BaseModel):
    """The decision for one proposed action."""

    model_config = ConfigDict(extra="forbid", strict=True)

    verdict: Verdict = Field(description="The gate the runtime enforces")
    decision: Decision = Field(description="ALLOW↔GO, DEFER↔DEFER, DENY↔NO_GO or ERROR")
    request_id: str
    policy_version: str = Field(description="`name@semver` of the pack that decided")
    policy_pack_version: str
    issues: list[Issue]
    reason: str
    risk_score: int = Field(ge=0, le=100)
    high_risk: bool
    clarifying_questions: list[str]
    defer_questions: list[str]
    guardrails: list[str] = Field(description="Recognised constraints applied, normalised")
    guardrail_checks: dict[str, Any]
    value_findings: list[str]
    cost_estimate: dict[str, Any] | None
    decision_trace_summary: str
    timestamp: float
    evaluated_at: float
    cached: bool
    environment: str | None
    action_digest: str
    input_sha256: str
    policy_sha256: str
    buckets: list[str]
    ignored_fields: list[str] = Field(description="Unknown top-level request fields, recorded")
    shadow_issues: list[dict[str, Any]] = Field(
        default=[], description="Issues of shadow rules: reported and logged, never decisive")
    approval: dict[str, Any] | None = None
    execution_token: str | None = None
