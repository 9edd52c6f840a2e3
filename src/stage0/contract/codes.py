"""The catalogue of issue codes the engine can emit.

Every code has a fixed kind, severity and effect. The effect follows CONTRACT section 2:

* ``violation`` (HIGH): a policy violation; denies on every plan.
* ``evidence`` (MEDIUM): evidence the policy needs is missing or stale; defers on every plan.
* ``advisory`` (MEDIUM): advisory; denies or defers only when the request sets ``pro``.
* ``info`` (LOW): advisory only; never changes the verdict.
* ``error`` (HIGH): the decision could not be completed; denies with ``decision: ERROR``.

Messages follow one style: one sentence, no trailing period, user input in backticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from stage0.contract.issues import EffectName, Issue, SeverityName


class Severity(StrEnum):
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class Effect(StrEnum):
    DENY = "DENY"
    DEFER = "DEFER"
    NONE = "NONE"


class Kind(StrEnum):
    VIOLATION = "violation"
    EVIDENCE = "evidence"
    ADVISORY = "advisory"
    INFO = "info"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CodeSpec:
    code: str
    kind: Kind
    severity: SeverityName
    effect: EffectName
    pro_effect: EffectName
    message: str
    remediation: str
    question: str | None = None
    _default: tuple[Issue, Issue] = field(init=False, repr=False, compare=False)
    """The issues with the catalogue message, on the standard plan and on pro (immutable, so
    made once per code rather than once per decision)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_default", (
            Issue(self.code, self.severity, self.message, self.effect, self.remediation),
            Issue(self.code, self.severity, self.message, self.pro_effect, self.remediation),
        ))

    def default_issue(self, pro: bool) -> Issue:
        """The issue with the catalogue message (``issue(None, pro=pro)``)."""
        return self._default[pro]

    def issue(self, message: str | None = None, *, pro: bool = False) -> Issue:
        """Make an issue of this code, with the effect the plan gives it."""
        if not message:
            return self._default[pro]
        return Issue(
            self.code,
            self.severity,
            message,
            self.pro_effect if pro else self.effect,
            self.remediation,
        )


def _spec(
    code: str,
    kind: Kind,
    message: str,
    remediation: str,
    question: str | None = None,
    *,
    pro_effect: EffectName | None = None,
) -> CodeSpec:
    severity: SeverityName
    effect: EffectName
    if kind is Kind.VIOLATION or kind is Kind.ERROR:
        severity, effect = "HIGH", "DENY"
    elif kind is Kind.EVIDENCE:
        severity, effect = "MEDIUM", "DEFER"
    elif kind is Kind.ADVISORY:
        severity, effect = "MEDIUM", "NONE"
    else:
        severity, effect = "LOW", "NONE"
    return CodeSpec(
        code, kind, severity, effect, pro_effect or effect, message, remediation, question
    )


V, E, A, INFO, X = Kind.VIOLATION, Kind.EVIDENCE, Kind.ADVISORY, Kind.INFO, Kind.ERROR

_ALL = [
    # --- policy violations (deny) -------------------------------------------------------------
    _spec(
        "SIDE_EFFECTS_NEED_GUARDRAILS", V,
        "External/irreversible side effects declared without machine-readable guardrails "
        "in constraints.",
        "Add machine-readable guardrails to `constraints` (for example `require_approval: true`, "
        "`max_records: N`, `allowed_environment: staging`)",
        "What hard constraints must never be violated?",
    ),
    _spec(
        "APPROVAL_REJECTED", V,
        "The approval for this action was rejected",
        "Do not execute; open a new request if the action is still needed",
    ),
    _spec(
        "APPROVAL_ALREADY_USED", V,
        "The approval was already used for one execution of this action",
        "Do not execute again; check without `context.approval_id` to request a new approval "
        "if the action must run once more",
    ),
    _spec(
        "ROLE_NOT_AUTHORIZED", V,
        "The actor's role is not allowed to perform this action",
        "Run the action as a principal holding one of the required roles",
    ),
    _spec(
        "ENVIRONMENT_NOT_ALLOWED", V,
        "The target environment is not in the allowed list",
        "Target one of the allowed environments, or change the constraint through policy review",
    ),
    _spec(
        "RECORD_LIMIT_EXCEEDED", V,
        "The number of records exceeds `max_records`",
        "Split the operation into batches within the record limit",
    ),
    _spec(
        "RESOURCE_SCOPE_VIOLATION", V,
        "The resource scope is outside the allowed scope",
        "Restrict `context.resource_scope` and `context.target_resources` to the allowed scope",
    ),
    _spec(
        "MCP_SERVER_NOT_ALLOWED", V,
        "An active MCP server is not in the allowlist",
        "Disconnect the MCP servers that are not allowlisted before running the action",
    ),
    _spec(
        "CONSTRAINT_CONFLICT", V,
        "The request is marked read-only but declares a write-class side effect",
        "Drop the write-class side effects, or remove the read-only constraint and add guardrails",
    ),
    _spec(
        "CHANGE_FREEZE", V,
        "A change freeze is in force for this kind of action",
        "Wait until the freeze ends; in an emergency, a break-glass approval lets one action "
        "through",
    ),
    _spec(
        "CONSTRAINT_INVALID", V,
        "A recognised constraint has a value that cannot be applied",
        "Fix the constraint named in the message (for example `max_records: 50`)",
    ),
    # --- missing or stale evidence (defer) -----------------------------------------------------
    _spec(
        "APPROVAL_REQUIRED_PENDING", E,
        "Human approval is required and has not been granted",
        "Obtain approval and retry with `context.approval_id` (or `approval_status: approved`)",
        "Who must approve this action, and has that approval been granted?",
    ),
    _spec(
        "APPROVAL_EXPIRED", E,
        "The approval is stale or dated in the future",
        "Obtain a fresh approval within the policy's maximum approval age",
        "Can a current approval be obtained for this action?",
    ),
    _spec(
        "APPROVAL_SCOPE_MISMATCH", E,
        "The approval was granted for a different action",
        "Request approval for the exact action that will execute",
        "Should the changed action be submitted for a new approval?",
    ),
    _spec(
        "APPROVAL_TIMED_OUT", E,
        "The approval request expired before enough approvers decided",
        "Ask again: a new approval request is open for this action; remind the approvers, or "
        "raise the pack's `approvals.expires_in`",
        "Should the approvers be reminded of the new request?",
    ),
    _spec(
        "APPROVAL_REQUESTER_MISMATCH", E,
        "The approval was requested by another key or principal than the one using it",
        "Use the approval from the key that requested it, or ask for one with this key (the "
        "pack's `approvals.bound_to` can widen the binding to the principal or the tenant)",
        "Should this caller get an approval of its own?",
    ),
    _spec(
        "ACTOR_ROLE_MISSING", E,
        "A role is required but `context.actor_role` is absent",
        "Send `context.actor_role` for the principal that will execute the action",
        "Which role is the actor acting under?",
    ),
    _spec(
        "ENVIRONMENT_UNSPECIFIED", E,
        "The target environment is required but was not given",
        "Send `context.environment` (or top-level `environment`)",
        "Which environment will this action run against?",
    ),
    _spec(
        "OUTSIDE_CHANGE_WINDOW", E,
        "The evaluation time is outside the allowed change window",
        "Retry inside the change window; in an emergency, a break-glass approval lets one "
        "action through",
        "Can this action wait until the change window opens?",
    ),
    _spec(
        "ROLLBACK_PLAN_MISSING", E,
        "A rollback plan is required but `context.rollback_plan` is missing or false",
        "Send `context.rollback_plan` as `true` or a reference to the rollback runbook",
        "What is the rollback plan if this change fails?",
    ),
    _spec(
        "MFA_REQUIRED", E,
        "Multi-factor verification is required but `context.mfa_verified` is not true",
        "Verify the actor with MFA and send `context.mfa_verified: true`",
        "Has the actor completed multi-factor verification?",
    ),
    _spec(
        "TICKET_REQUIRED", E,
        "A change ticket is required but `context.ticket_id` is empty",
        "Send `context.ticket_id` referencing the change or support ticket",
        "Which ticket authorizes this action?",
    ),
    _spec(
        "ROLLBACK_PLAN_UNVERIFIED", E,
        "The rollback plan is not a reference that the evidence source confirms",
        "Send `context.rollback_plan` as the reference of a rollback plan the evidence source "
        "knows (the pack sets `evidence.rollback_plan: verified`)",
        "Which registered rollback plan covers this change?",
    ),
    _spec(
        "TICKET_UNVERIFIED", E,
        "The ticket is not one that the evidence source confirms",
        "Send `context.ticket_id` of a ticket the evidence source confirms (the pack sets "
        "`evidence.ticket: verified`)",
        "Which approved ticket authorizes this action?",
    ),
    _spec(
        "EVIDENCE_UNAVAILABLE", E,
        "An evidence reference could not be checked: no evidence source, or no answer from it",
        "Retry later; operators: configure and check the evidence source (`STAGE0_EVIDENCE_URL`)",
    ),
    _spec(
        "RESOURCE_SCOPE_MISSING", E,
        "A resource scope is required but `context.resource_scope` is absent",
        "Send `context.resource_scope` naming the resources the action touches",
        "Which resources will this action touch?",
    ),
    _spec(
        "LOOP_ITERATION_LIMIT", E,
        "The run has exceeded `max_iterations`",
        "Stop the loop and have a human review the run before continuing",
        "Should this run continue past its iteration limit?",
    ),
    _spec(
        "LOOP_TIMEOUT", E,
        "The run has exceeded its time limit",
        "Stop the loop and have a human review the run before continuing",
        "Should this run continue past its time limit?",
    ),
    _spec(
        "LOOP_SAME_TOOL_LIMIT", E,
        "The same tool has been called too many times in a row",
        "Break the retry loop; investigate why the tool keeps being called",
        "Why is the same tool being called repeatedly?",
    ),
    _spec(
        "COST_LIMIT_EXCEEDED", E,
        "The run's cumulative cost exceeds `max_cost_usd`",
        "Stop the run or raise the budget through a human decision",
        "Should the run's budget be raised?",
    ),
    # --- advisories -----------------------------------------------------------------------------
    _spec(
        "SENSITIVE_TOOLS_NEED_CONSTRAINTS", A,
        "Sensitive tools present without sandbox/allowlist constraints.",
        "Add `sandbox`, `dry-run`, `allowlist: ...` or `read-only` to `constraints`",
        "Can the sensitive tools run in a sandbox or behind an allowlist?",
        pro_effect="DENY",
    ),
    _spec(
        "UNCLEAR_VALUE_SIGNAL", A,
        "The goal is too vague to judge the action's value",
        "State the concrete action and its intended outcome in `goal`",
        "What concrete action will be taken, and on what?",
        pro_effect="DEFER",
    ),
    _spec(
        "MISSING_SUCCESS_CRITERIA", INFO,
        "No success criteria were given",
        "Add `success_criteria` describing how success will be measured",
        "How will success be measured?",
    ),
    # --- errors (deny, decision ERROR) ----------------------------------------------------------
    _spec(
        "POLICY_EVALUATION_FAILED", X,
        "The policy could not be evaluated",
        "Fix the policy pack or the constraint it names; the action must not run until then",
    ),
    _spec(
        "POLICY_NOT_LOADED", X,
        "No policy pack is loaded",
        "Load a valid policy pack; the action must not run until then",
    ),
    _spec(
        "SERVICE_UNAVAILABLE", X,
        "Stage0 could not be reached or did not answer with a decision",
        "Do not execute; retry when the service answers (the SDK fails closed)",
    ),
    _spec(
        "SERVICE_REFUSED", X,
        "Stage0 refused the request (key, plan, quota or request error)",
        "Do not execute; fix the key, plan or request named in the message",
    ),
    _spec(
        "POLICY_VERSION_UNKNOWN", V,
        "The pinned `policy_pack_version` is not available",
        "Pin a policy version this server has, or drop `policy_pack_version`",
    ),
    _spec(
        "POLICY_PIN_TIGHTENED", INFO,
        "The pinned policy version would be looser; the active version decides",
        "Move the pin to the active version, or drop `policy_pack_version`",
    ),
    _spec(
        "CALLER_ASSERTED_EVIDENCE", INFO,
        "A requirement was satisfied by evidence the caller wrote, not checked by the server",
        "Accepted under the hosted contract; to require server-checked evidence, serve the "
        "`strict` preset (or set the pack's `*.evidence: verified`)",
    ),
    _spec(
        "BREAK_GLASS_USED", INFO,
        "A break-glass approval let this action through a closed change window or a freeze",
        "Review the declaration after the incident (`stage0 audit break-glass`)",
    ),
    _spec(
        "REQUEST_INVALID", V,
        "The request does not match the /check contract",
        "Fix the fields named in the message and send the request again",
    ),
]

CODES: dict[str, CodeSpec] = {spec.code: spec for spec in _ALL}
"""Every built-in issue code, by code."""

ERROR_CODES = frozenset(c.code for c in _ALL if c.kind is Kind.ERROR)
