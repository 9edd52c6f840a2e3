"""The policy pack document: what operators write in YAML, validated before compiling."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Literal

import semver
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from stage0.contract.issues import EffectName, SeverityName

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{2,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_duration(text: str | float) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``15m``, ``24h``, ``7d`` or ``250ms``."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"`{text}` is not a duration such as `90s`, `15m` or `24h`")
    return float(match.group(1)) * _UNITS[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Duration = str | float


class ApprovalSettings(_Strict):
    max_age: Duration = "24h"
    future_skew: Duration = "60s"
    evidence: Literal["any", "verified"] = "any"

    @field_validator("max_age", "future_skew")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        parse_duration(v)
        return v


Evidence = Literal["any", "verified"]
"""``any``: what the caller writes counts (the hosted contract); ``verified``: only what the
server holds or can check does."""


class MfaSettings(_Strict):
    max_age: Duration = "12h"
    evidence: Evidence = Field(
        default="any",
        description="verified: `mfa_verified` from the caller does not count; only a server-side "
                    "approval whose approvers verified MFA does")

    @field_validator("max_age")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        parse_duration(v)
        return v


class EvidenceSettings(_Strict):
    """Which caller-written evidence counts (``any``) and which must be a reference that the
    configured evidence source confirms (``verified``)."""

    rollback_plan: Evidence = "any"
    ticket: Evidence = "any"


ConstraintValue = bool | int | float | str | list[str]


class RequireRule(_Strict):
    """Constraints the operator requires for the actions a rule selects: merged with the
    caller's, so that the caller can add to them and never leave one out."""

    name: str
    description: str = ""
    buckets: list[str] = Field(
        default=[], description="The rule applies to actions in one of these buckets")
    tools: list[str] = Field(
        default=[], description="The rule applies to a call whose tools match one of these globs")
    environments: list[str] = Field(
        default=[],
        description="The rule applies in these environments (`production`: every production "
                    "environment); also when the request names no environment")
    constraints: dict[str, ConstraintValue] = Field(
        min_length=1, description="Constraint key (or alias) -> value, as a caller writes them")


class ChangeWindow(_Strict):
    days: list[Day] = Field(min_length=1)
    start: str
    end: str
    timezone: str | None = None
    description: str = ""
    holidays: list[date] = Field(
        default=[], description="Local dates on which the window stays closed")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"`{v}` is not a time of day as HH:MM")
        return v


class Freeze(_Strict):
    """A change freeze: matching actions are denied from ``start`` until ``end``."""

    name: str
    start: datetime
    end: datetime
    reason: str = ""
    buckets: list[str] = Field(
        default=[], description="Buckets frozen; empty: every action with write-class effects")

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v


class SideEffectSettings(_Strict):
    write_class: list[str] = Field(min_length=1)


class SensitiveTools(_Strict):
    patterns: list[str]
    cleared_by: list[str] = ["sandbox", "dry_run", "allowlist", "read_only"]


class ValueSignal(_Strict):
    min_goal_words: int = Field(default=3, ge=1)
    action_verbs: list[str] = Field(min_length=1)


UNBINDABLE = frozenset({
    "approval_id", "approval_status", "approved_by", "approved_at", "mfa_verified",
    "mfa_verified_at", "run_id", "current_iteration", "elapsed_seconds", "current_tool",
    "recent_tools", "cumulative_cost_usd", "cost_usd",
})
"""Context keys an approval cannot be bound to: the retry that uses the approval sends other
values by design (its evidence, the run's counters)."""


class ApprovalRules(_Strict):
    """Who may grant an approval request, and for how long it holds."""

    quorum: int = Field(default=1, ge=1, le=10)
    approver_roles: list[str] = Field(
        default=[], description="Roles an approver must hold one of; empty: any approver"
    )
    approver_mfa: bool = False
    expires_in: Duration = "24h"
    execute_within: Duration = "15m"
    bound_to: Literal["key", "principal", "tenant"] | None = Field(
        default=None,
        description="Who may use a granted approval: the key that requested it (the default), "
        "any key of the requesting principal, or any key of the tenant; in a bucket's rule, "
        "unset means the pack's",
    )
    binds: list[str] | None = Field(
        default=None,
        description="More request fields (`goal`, `context.<key>`) to bind an approval to, "
        "added to the built-in list (goal, record count, amounts, currency, tenants) and the "
        "action digest; a pack can add fields, never remove one",
    )

    @field_validator("binds")
    @classmethod
    def _binds(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for path in v:
            head, _, key = path.partition(".")
            if not (path == "goal" or (head == "context" and key and "." not in key)):
                raise ValueError(f"`{path}` is not `goal` or `context.<key>`")
            if key in UNBINDABLE:
                raise ValueError(f"`{path}` changes from one check to the next (approval "
                                 "evidence, loop counters): a retry could never match it")
        return v

    @field_validator("expires_in", "execute_within")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if parse_duration(v) <= 0:
            raise ValueError("must be a positive duration")
        return v


class BucketRequirements(_Strict):
    approval: bool = True
    approval_evidence: Literal["any", "verified"] | None = None
    approvals: ApprovalRules | None = None
    environment: bool = False
    rollback_plan: Literal["never", "production", "always"] = "never"
    mfa: bool = False
    ticket: bool = False


class Bucket(_Strict):
    description: str
    risk_weight: int = Field(ge=0, le=100)
    tools: list[str] = []
    side_effects: list[str] = []
    require: BucketRequirements = BucketRequirements()


class RiskWeights(_Strict):
    write_side_effect: int = 15
    sensitive_tool: int = 15
    production_environment: int = 15
    missing_guardrails: int = 20
    extra_bucket: int = 10
    high_risk_threshold: int = Field(default=70, ge=0, le=100)


class CustomRule(_Strict):
    """An operator rule: a CEL condition that, when true, raises an issue."""

    code: str = Field(validation_alias=AliasChoices("code", "id"))
    description: str = ""
    condition: str = Field(validation_alias=AliasChoices("condition", "when"))
    when_context: list[str] = Field(
        default=[], description="Evaluate only when every one of these context keys is present"
    )
    tools: list[str] = Field(
        default=[], description="Evaluate only for a call whose tools match one of these globs"
    )
    buckets: list[str] = Field(
        default=[], description="Evaluate only when the action falls in one of these buckets"
    )
    severity: SeverityName = "HIGH"
    effect: EffectName = "DENY"
    pro_effect: EffectName | None = None
    message: str
    remediation: str
    question: str | None = None
    mode: Literal["enforce", "shadow"] = Field(
        default="enforce",
        description="shadow: evaluated and reported in `shadow_issues`, never changes the verdict",
    )

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not _CODE.match(v):
            raise ValueError(f"`{v}` is not an issue code such as `CROSS_TENANT_ACTION`")
        return v


class BreakGlass(_Strict):
    """Emergency approvals that let one action through a closed change window or a freeze."""

    enabled: bool = True
    roles: list[str] = Field(
        default=["incident-commander"],
        description="Roles one of which a declarer must hold; never empty while enabled")
    mfa: bool = Field(default=False, description="The declarer must send a valid TOTP code")
    min_reason_length: int = Field(default=20, ge=1, le=2000)
    expires_in: Duration = Field(
        default="1h", description="The declaration must be used (once) within this time")

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        seconds = parse_duration(v)
        if not 0 < seconds <= 86400:
            raise ValueError("must be a positive duration of at most 24h")
        return v

    @model_validator(mode="after")
    def _restricted(self) -> BreakGlass:
        if self.enabled and not [r for r in self.roles if r.strip()]:
            raise ValueError("`roles` must name at least one role while break-glass is enabled "
                             "(break-glass is role-restricted); set `enabled: false` to turn it "
                             "off")
        return self


class ExecutionTokens(_Strict):
    ttl: Duration = "5m"
    issuer: str = "stage0"

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: Duration) -> Duration:
        if not 0 < parse_duration(v) <= 300:
            raise ValueError("must be between 1 s and 5 minutes")
        return v


class Evaluation(_Strict):
    timeout_ms: float = Field(default=1000.0, gt=0)


class PackDocument(_Strict):
    """A whole policy pack."""

    apiVersion: Literal["stage0/v1"]
    name: str
    version: str
    description: str = ""
    timezone: str = "UTC"
    production_environments: list[str] = ["production", "prod", "prd", "live"]
    approval: ApprovalSettings = ApprovalSettings()
    approvals: ApprovalRules = ApprovalRules()
    execution_tokens: ExecutionTokens = ExecutionTokens()
    break_glass: BreakGlass = BreakGlass()
    mfa: MfaSettings = MfaSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    require: list[RequireRule] = []
    change_windows: dict[str, ChangeWindow] = {}
    freezes: list[Freeze] = []
    side_effects: SideEffectSettings
    sensitive_tools: SensitiveTools
    value_signal: ValueSignal
    constraint_aliases: dict[str, list[str]] = {}
    buckets: dict[str, Bucket]
    risk: RiskWeights = RiskWeights()
    rules: list[CustomRule] = []
    evaluation: Evaluation = Evaluation()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"`{v}` is not a pack name (lowercase letters, digits, `.-_`)")
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not semver.Version.is_valid(v):
            raise ValueError(f"`{v}` is not a semantic version such as `1.0.0`")
        return v
