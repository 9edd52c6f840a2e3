"""The ``/check`` response (CONTRACT section 2): its one type, :class:`Decision`.

The engine builds every response as a :class:`ResponseBody` (a ``TypedDict``: a plain mapping
at run time, so the hot path pays nothing for the type) and hands it out as a
:class:`Decision`. The server serialises ``Decision.body``; the CLI prints it; the SDK's
``CheckResult`` *is* a ``Decision`` (with the HTTP status beside it), so every surface reads a
decision through the same accessors. :class:`CheckResponse` is the same shape as a pydantic
model, for the OpenAPI document and JSON Schema export; a test holds its fields equal to
``ResponseBody``'s keys, and validates every response the engine produces against it.
"""


from typing import Any, Literal, NotRequired, TypedDict

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stage0.contract.issues import EffectName, Issue, SeverityName

Verdict = Literal["ALLOW", "DEFER", "DENY"]
DecisionCode = Literal["GO", "DEFER", "NO_GO", "ERROR"]


class IssueBody(TypedDict):
    """An issue on the wire: :meth:`stage0.contract.Issue.to_dict`."""

    code: str
    severity: SeverityName
    message: str
    effect: EffectName
    remediation: str


class ResponseBody(TypedDict):
    """The response body, key by key (CONTRACT section 2)."""

    verdict: Verdict
    decision: DecisionCode
    request_id: str
    policy_version: str
    policy_pack_version: str
    issues: list[IssueBody]
    reason: str
    risk_score: int
    high_risk: bool
    clarifying_questions: list[str]
    defer_questions: list[str]
    guardrails: list[str]
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
    ignored_fields: list[str]
    shadow_issues: list[dict[str, Any]]
    approval: NotRequired[dict[str, Any] | None]
    execution_token: NotRequired[str | None]


def failed_body(issue: Issue, *, request_id: str, now: float, at: float | None = None,
                policy_version: str = "none", policy_sha256: str = "",
                environment: str | None = None, input_sha256: str = "",
                ignored_fields: list[str] | None = None) -> ResponseBody:
    """The fail-closed body: ``DENY``/``ERROR`` with the one issue that says why.

    The engine answers it when it cannot decide; the SDK, when it cannot reach a decision
    (transport failure, refusal, malformed answer): the same complete shape on every surface.
    """
    return {
        "verdict": "DENY",
        "decision": "ERROR",
        "request_id": request_id,
        "policy_version": policy_version,
        "policy_pack_version": policy_version,
        "issues": [IssueBody(code=issue.code, severity=issue.severity, message=issue.message,
                             effect=issue.effect, remediation=issue.remediation)],
        "reason": f"{issue.code}: {issue.message}",
        "risk_score": 100,
        "high_risk": True,
        "clarifying_questions": [],
        "defer_questions": [],
        "guardrails": [],
        "guardrail_checks": {"unrecognized_constraints": []},
        "value_findings": [],
        "cost_estimate": None,
        "decision_trace_summary": f"DENY/ERROR: failed closed ({issue.code})",
        "timestamp": now,
        "evaluated_at": now if at is None else at,
        "cached": False,
        "environment": environment,
        "action_digest": "",
        "input_sha256": input_sha256,
        "policy_sha256": policy_sha256,
        "buckets": [],
        "ignored_fields": ignored_fields if ignored_fields is not None else [],
        "shadow_issues": [],
    }


class Decision:
    """One decision: its :class:`ResponseBody` and the typed reading of it.

    Built by the engine; what the server serialises, the CLI prints and the SDK returns. The
    accessors read defensively (a body that came over the wire from another server version
    may lack a field), so none of them raises on a partial body.
    """

    __slots__ = ("body",)

    def __init__(self, body: ResponseBody) -> None:
        self.body = body

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(verdict={self.verdict!r}, decision={self.decision!r}, "
                f"request_id={self.request_id!r}, issues={self.issue_codes!r})")

    @property
    def verdict(self) -> str:
        """``ALLOW``, ``DEFER`` or ``DENY``; a body without one reads as ``DENY``."""
        return str(self.body.get("verdict", "DENY"))

    @property
    def decision(self) -> str:
        return str(self.body.get("decision", "ERROR"))

    @property
    def allowed(self) -> bool:
        """True only for a well-formed ALLOW/GO: the one reading a runtime acts on."""
        return self.verdict == "ALLOW" and self.decision == "GO"

    @property
    def request_id(self) -> str | None:
        return _str(self.body.get("request_id"))

    @property
    def policy_version(self) -> str | None:
        return _str(self.body.get("policy_version"))

    @property
    def reason(self) -> str | None:
        return _str(self.body.get("reason"))

    @property
    def issues(self) -> list[IssueBody]:
        issues = self.body.get("issues")
        return [i for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []

    @property
    def issue_codes(self) -> list[str]:
        return [str(i.get("code")) for i in self.issues]

    @property
    def risk_score(self) -> int | None:
        value = self.body.get("risk_score")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def buckets(self) -> list[str]:
        value = self.body.get("buckets")
        return [str(b) for b in value] if isinstance(value, list) else []

    @property
    def environment(self) -> str | None:
        return _str(self.body.get("environment"))

    @property
    def approval(self) -> dict[str, Any] | None:
        value = self.body.get("approval")
        return value if isinstance(value, dict) else None

    @property
    def approval_url(self) -> str | None:
        """Where the approvers decide this DEFER's approval request (the console's page)."""
        approval = self.approval
        return _str(approval.get("approval_url")) if approval is not None else None

    @property
    def execution_token(self) -> str | None:
        return _str(self.body.get("execution_token"))

    @property
    def action_digest(self) -> str | None:
        return _str(self.body.get("action_digest"))

    def to_json(self, *, indent: bool = False) -> bytes:
        return orjson.dumps(self.body, option=orjson.OPT_INDENT_2 if indent else 0)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class CheckResponse(BaseModel):
    """The decision for one proposed action (the schema of :class:`ResponseBody`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    verdict: Verdict = Field(description="The gate the runtime enforces")
    decision: DecisionCode = Field(description="ALLOW↔GO, DEFER↔DEFER, DENY↔NO_GO or ERROR")
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
