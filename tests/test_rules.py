"""Table tests, one row per rule arm, with the contract's boundaries (CONTRACT sections 2-5)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import codes, decide, request

SAFE = {"success_criteria": ["done"]}

# (note, request fields, at, expected verdict, codes that must appear, codes that must not)
Row = tuple[str, dict[str, Any], str, str, list[str], list[str]]

TUESDAY = "2026-03-17T10:00:00Z"

ROWS: list[Row] = [
    # --- side effects and guardrails --------------------------------------------------------
    ("write effect without guardrails denies",
     {"side_effects": ["write"]}, TUESDAY, "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("money movement spelled with a space is write-class",
     {"side_effects": ["Money Movement"]}, TUESDAY, "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("hyphenated side effect folds to underscore",
     {"side_effects": ["data-deletion"]}, TUESDAY, "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("an unrecognised constraint is not a guardrail",
     {"side_effects": ["write"], "constraints": ["be careful"]}, TUESDAY, "DENY",
     ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("a recognised constraint is a guardrail",
     {"side_effects": ["write"], "constraints": ["max_records: 10"]}, TUESDAY, "ALLOW", [],
     ["SIDE_EFFECTS_NEED_GUARDRAILS"]),
    ("execute, shell, loop, retry and read are not write-class",
     {"side_effects": ["execute", "loop", "retry", "read"]}, TUESDAY, "ALLOW", [],
     ["SIDE_EFFECTS_NEED_GUARDRAILS"]),
    ("a bucket tool implies its side effect",
     {"tools": ["payments.create_payout"]}, TUESDAY, "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("read-only with a write effect conflicts",
     {"side_effects": ["write"], "constraints": ["read-only"]}, TUESDAY, "DENY",
     ["CONSTRAINT_CONFLICT"], []),
    ("read-only with only reads is fine",
     {"side_effects": ["read"], "constraints": ["no side effects"]}, TUESDAY, "ALLOW", [],
     ["CONSTRAINT_CONFLICT"]),
    # --- sensitive tools and pro ------------------------------------------------------------
    ("sensitive tool is advisory without pro",
     {"tools": ["kubectl"]}, TUESDAY, "ALLOW", ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"], []),
    ("sensitive tool denies with pro",
     {"tools": ["execute_shell"], "pro": True}, TUESDAY, "DENY",
     ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"], []),
    ("sandbox clears the sensitive-tool advisory",
     {"tools": ["bash"], "constraints": ["sandbox"], "pro": True}, TUESDAY, "ALLOW", [],
     ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"]),
    ("dry-run clears it",
     {"tools": ["terraform"], "constraints": ["dry-run"], "pro": True}, TUESDAY, "ALLOW", [],
     ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"]),
    ("an allowlist clears it",
     {"tools": ["ssh"], "constraints": ["allowlist: uptime,df"], "pro": True}, TUESDAY, "ALLOW",
     [], ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"]),
    ("ordinary API tools are not sensitive",
     {"tools": ["crm_lookup", "slack"], "pro": True}, TUESDAY, "ALLOW", [],
     ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"]),
    # --- task clarity ---------------------------------------------------------------------
    ("missing success criteria is LOW and advisory",
     {"success_criteria": []}, TUESDAY, "ALLOW", ["MISSING_SUCCESS_CRITERIA"], []),
    ("vague goal is advisory without pro",
     {"goal": "do stuff"}, TUESDAY, "ALLOW", ["UNCLEAR_VALUE_SIGNAL"], []),
    ("vague goal defers with pro",
     {"goal": "do stuff", "pro": True}, TUESDAY, "DEFER", ["UNCLEAR_VALUE_SIGNAL"], []),
    ("a goal with no action verb is vague",
     {"goal": "The quarterly numbers for the board", "pro": True}, TUESDAY, "DEFER",
     ["UNCLEAR_VALUE_SIGNAL"], []),
    # --- approval --------------------------------------------------------------------------
    ("approval required and absent defers",
     {"constraints": ["require_approval: true"]}, TUESDAY, "DEFER",
     ["APPROVAL_REQUIRED_PENDING"], []),
    ("approval pending defers",
     {"constraints": ["approval required"], "context": {"approval_status": "pending"}},
     TUESDAY, "DEFER", ["APPROVAL_REQUIRED_PENDING"], []),
    ("approval missing defers",
     {"constraints": ["approval_required"], "context": {"approval_status": "missing"}},
     TUESDAY, "DEFER", ["APPROVAL_REQUIRED_PENDING"], []),
    ("approval none defers",
     {"constraints": ["human review required"], "context": {"approval_status": "none"}},
     TUESDAY, "DEFER", ["APPROVAL_REQUIRED_PENDING"], []),
    ("approval rejected denies",
     {"constraints": ["approval"], "context": {"approval_status": "rejected"}},
     TUESDAY, "DENY", ["APPROVAL_REJECTED"], []),
    ("approved and fresh allows",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-16T10:00:01Z"}},
     TUESDAY, "ALLOW", [], ["APPROVAL_EXPIRED"]),
    ("approved exactly 24 h ago is still fresh",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-16T10:00:00Z"}},
     TUESDAY, "ALLOW", [], ["APPROVAL_EXPIRED"]),
    ("approved 24 h and 1 s ago is stale",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-16T09:59:59Z"}},
     TUESDAY, "DEFER", ["APPROVAL_EXPIRED"], []),
    ("approved in the future is stale",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-17T11:00:00Z"}},
     TUESDAY, "DEFER", ["APPROVAL_EXPIRED"], []),
    ("approved within the clock-skew allowance is fresh",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-17T10:00:30Z"}},
     TUESDAY, "ALLOW", [], ["APPROVAL_EXPIRED"]),
    ("approved with a zone offset is compared in UTC",
     {"constraints": ["approval required"],
      "context": {"approval_status": "approved", "approved_at": "2026-03-17T05:30:00-04:00"}},
     TUESDAY, "ALLOW", [], ["APPROVAL_EXPIRED"]),
    ("a rejection denies even when approval is not required",
     {"context": {"approval_status": "rejected"}}, TUESDAY, "DENY", ["APPROVAL_REJECTED"], []),
    ("an unknown approval_id defers",
     {"constraints": ["approval required"], "context": {"approval_id": "apr_123"}},
     TUESDAY, "DEFER", ["APPROVAL_REQUIRED_PENDING"], []),
    # --- role --------------------------------------------------------------------------------
    ("role absent defers",
     {"constraints": ["required_role:risk_ops"]}, TUESDAY, "DEFER", ["ACTOR_ROLE_MISSING"], []),
    ("wrong role denies",
     {"constraints": ["required_role:risk_ops"], "context": {"actor_role": "support"}},
     TUESDAY, "DENY", ["ROLE_NOT_AUTHORIZED"], []),
    ("one of several roles allows",
     {"constraints": ["required_role: risk_ops, finance_admin"],
      "context": {"actor_role": "Finance-Admin"}}, TUESDAY, "ALLOW", [], ["ROLE_NOT_AUTHORIZED"]),
    ("two role constraints intersect (callers only tighten)",
     {"constraints": ["required_role:a,b", "required_role:b,c"], "context": {"actor_role": "a"}},
     TUESDAY, "DENY", ["ROLE_NOT_AUTHORIZED"], []),
    # --- environment --------------------------------------------------------------------------
    ("environment absent defers",
     {"constraints": ["allowed_environment:staging"]}, TUESDAY, "DEFER",
     ["ENVIRONMENT_UNSPECIFIED"], []),
    ("environment outside the list denies",
     {"constraints": ["allowed_environment:staging"], "context": {"environment": "production"}},
     TUESDAY, "DENY", ["ENVIRONMENT_NOT_ALLOWED"], []),
    ("top-level environment is the alias of context.environment",
     {"constraints": ["allowed_environment:staging"], "environment": "staging"},
     TUESDAY, "ALLOW", [], ["ENVIRONMENT_UNSPECIFIED"]),
    ("prod counts as production",
     {"constraints": ["allowed_environment:production"], "context": {"environment": "prod"}},
     TUESDAY, "ALLOW", [], ["ENVIRONMENT_NOT_ALLOWED"]),
    ("production control plane without environment defers",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved"}}, TUESDAY, "DEFER",
     ["ENVIRONMENT_UNSPECIFIED"], []),
    ("production control plane in staging needs no rollback",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved", "environment": "staging"}}, TUESDAY, "ALLOW",
     [], ["ROLLBACK_PLAN_MISSING"]),
    ("production control plane in production needs rollback",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved", "environment": "production"}}, TUESDAY,
     "DEFER", ["ROLLBACK_PLAN_MISSING"], []),
    ("a rollback reference satisfies it",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved", "environment": "production",
                  "rollback_plan": "RB-12"}}, TUESDAY, "ALLOW", [], ["ROLLBACK_PLAN_MISSING"]),
    ("rollback_plan false does not",
     {"constraints": ["rollback_plan_required: true"], "context": {"rollback_plan": False}},
     TUESDAY, "DEFER", ["ROLLBACK_PLAN_MISSING"], []),
    # --- other evidence ----------------------------------------------------------------------
    ("mfa required and absent defers",
     {"constraints": ["mfa_required: true"]}, TUESDAY, "DEFER", ["MFA_REQUIRED"], []),
    ("mfa verified allows",
     {"constraints": ["require_mfa"], "context": {"mfa_verified": True}}, TUESDAY, "ALLOW", [],
     ["MFA_REQUIRED"]),
    ("stale mfa defers",
     {"constraints": ["require_mfa"],
      "context": {"mfa_verified": True, "mfa_verified_at": "2026-03-16T10:00:00Z"}},
     TUESDAY, "DEFER", ["MFA_REQUIRED"], []),
    ("ticket required and empty defers",
     {"constraints": ["require_ticket: true"], "context": {"ticket_id": " "}}, TUESDAY, "DEFER",
     ["TICKET_REQUIRED"], []),
    ("ticket present allows",
     {"constraints": ["require_ticket: true"], "context": {"ticket_id": "OPS-1"}}, TUESDAY,
     "ALLOW", [], ["TICKET_REQUIRED"]),
    ("records at the limit allow",
     {"constraints": ["max_records: 50"], "context": {"record_count": 50}}, TUESDAY, "ALLOW",
     [], ["RECORD_LIMIT_EXCEEDED"]),
    ("records over the limit deny",
     {"constraints": ["max_records: 50"], "context": {"record_count": 51}}, TUESDAY, "DENY",
     ["RECORD_LIMIT_EXCEEDED"], []),
    ("records not given pass",
     {"constraints": ["max_records: 50"]}, TUESDAY, "ALLOW", [], ["RECORD_LIMIT_EXCEEDED"]),
    ("resource scope absent defers",
     {"constraints": ["resource_scope: accounts:staging*"]}, TUESDAY, "DEFER",
     ["RESOURCE_SCOPE_MISSING"], []),
    ("resource scope matching the glob allows",
     {"constraints": ["allowed_resource_scope: accounts:staging*"],
      "context": {"resource_scope": "accounts:staging-eu"}}, TUESDAY, "ALLOW", [],
     ["RESOURCE_SCOPE_VIOLATION"]),
    ("resource scope outside the glob denies",
     {"constraints": ["resource_scope: accounts:staging*"],
      "context": {"resource_scope": "accounts:production"}}, TUESDAY, "DENY",
     ["RESOURCE_SCOPE_VIOLATION"], []),
    ("a target resource outside the scope denies",
     {"constraints": ["resource_scope: accounts:staging*"],
      "context": {"resource_scope": "accounts:staging", "target_resources": ["accounts:prod/1"]}},
     TUESDAY, "DENY", ["RESOURCE_SCOPE_VIOLATION"], []),
    ("MCP servers inside the allowlist allow",
     {"constraints": ["allowed_mcp_servers: github,jira"],
      "context": {"active_mcp_servers": ["github"]}}, TUESDAY, "ALLOW", [],
     ["MCP_SERVER_NOT_ALLOWED"]),
    ("an MCP server outside the allowlist denies",
     {"constraints": ["allowed_mcp_servers: github,jira"],
      "context": {"active_mcp_servers": ["github", "filesystem"]}}, TUESDAY, "DENY",
     ["MCP_SERVER_NOT_ALLOWED"], []),
    # --- malformed constraints and pins -------------------------------------------------------
    ("a recognised constraint with a bad value denies",
     {"constraints": ["max_records: lots"]}, TUESDAY, "DENY", ["CONSTRAINT_INVALID"], []),
    ("an unknown policy pin denies",
     {"policy_pack_version": "stage0-policy-pack@9.9.9"}, TUESDAY, "DENY",
     ["POLICY_VERSION_UNKNOWN"], []),
    ("the active policy pin is accepted",
     {"policy_pack_version": "stage0-policy-pack@1.0.0"}, TUESDAY, "ALLOW", [],
     ["POLICY_VERSION_UNKNOWN"]),
    ("an unknown change window fails closed",
     {"constraints": ["allowed_change_window: maintenance"]}, TUESDAY, "DENY",
     ["POLICY_EVALUATION_FAILED"], []),
    ("the default pack's CEL rule denies cross-tenant actions",
     {"context": {"tenant_id": "acme", "target_tenants": ["acme", "globex"]}}, TUESDAY, "DENY",
     ["CROSS_TENANT_ACTION"], []),
    # --- found in review: nothing may loosen, disguise or hide -------------------------------
    ("a false flag is not a guardrail",
     {"side_effects": ["send_email"], "constraints": ["require_approval: false"]}, TUESDAY,
     "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("sandbox: false does not clear sensitive tools",
     {"tools": ["bash"], "constraints": ["sandbox: false"], "pro": True}, TUESDAY, "DENY",
     ["SENSITIVE_TOOLS_NEED_CONSTRAINTS"], []),
    ("a bare allowlist is not a constraint that can be applied",
     {"tools": ["bash"], "constraints": ["allowlist"], "pro": True}, TUESDAY, "DENY",
     ["CONSTRAINT_INVALID"], []),
    ("a blank environment is no environment",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved", "environment": "  "}}, TUESDAY, "DEFER",
     ["ENVIRONMENT_UNSPECIFIED"], []),
    ("production-eu is production",
     {"tools": ["deploy.service"], "constraints": ["approval required"],
      "context": {"approval_status": "approved", "environment": "production-eu"}}, TUESDAY,
     "DEFER", ["ROLLBACK_PLAN_MISSING"], []),
    ("business_hours: true names its window (Saturday)",
     {"constraints": ["business_hours: true"]}, "2026-03-21T10:00:00Z", "DEFER",
     ["OUTSIDE_CHANGE_WINDOW"], ["POLICY_EVALUATION_FAILED"]),
    ("business-hours only: true inside the window",
     {"constraints": ["business-hours only: true"]}, TUESDAY, "ALLOW", [],
     ["OUTSIDE_CHANGE_WINDOW", "POLICY_EVALUATION_FAILED"]),
    ("a rollback_plan of `false` text does not count",
     {"constraints": ["rollback_plan_required: true"], "context": {"rollback_plan": "false"}},
     TUESDAY, "DEFER", ["ROLLBACK_PLAN_MISSING"], []),
    ("the smallest of two max_records wins",
     {"constraints": ["max_records: 100", "max_records: 10"], "context": {"record_count": 50}},
     TUESDAY, "DENY", ["RECORD_LIMIT_EXCEEDED"], []),
    ("MCP server names are normalised",
     {"constraints": ["allowed_mcp_servers: GitHub"],
      "context": {"active_mcp_servers": ["github"]}},
     TUESDAY, "ALLOW", [], ["MCP_SERVER_NOT_ALLOWED"]),
    ("reordering tools does not hide a repeated call",
     {"tools": ["crm.lookup", "agent.retry"], "constraints": ["same_tool_limit: 1"],
      "context": {"recent_tools": ["agent.retry"]}}, TUESDAY, "DEFER",
     ["LOOP_SAME_TOOL_LIMIT"], []),
    ("a zero-width space cannot hide a deploy",
     {"tools": ["de\u200bploy.production"]}, TUESDAY, "DENY",
     ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("full-width letters are folded",
     {"tools": ["\uff44\uff45\uff50\uff4c\uff4f\uff59"], "constraints": ["max_records: 1"]},
     TUESDAY, "DEFER", ["APPROVAL_REQUIRED_PENDING"], []),
    ("doubled separators fold",
     {"side_effects": ["money_ movement"]}, TUESDAY, "DENY", ["SIDE_EFFECTS_NEED_GUARDRAILS"], []),
    ("a same-tenant action passes the CEL rule",
     {"context": {"tenant_id": "acme", "target_tenants": ["acme"]}}, TUESDAY, "ALLOW", [],
     ["CROSS_TENANT_ACTION"]),
]


@pytest.mark.parametrize(
    ("note", "fields", "at", "verdict", "include", "exclude"), ROWS, ids=[r[0] for r in ROWS]
)
def test_rule(
    note: str, fields: dict[str, Any], at: str, verdict: str, include: list[str],
    exclude: list[str],
) -> None:
    decision = decide(request(**fields), at=at)
    found = codes(decision)
    assert decision.verdict == verdict, (note, decision.body["reason"])
    for code in include:
        assert code in found, (note, code, found)
    for code in exclude:
        assert code not in found, (note, code, found)


def test_buckets_from_disguised_names() -> None:
    d = decide(request(tools=["\uff44\uff45\uff50\uff4c\uff4f\uff59"],
                       constraints=["max_records: 1"])).body
    assert d["buckets"] == ["production_control_plane"]
    d = decide(request(side_effects=["money_ movement"], constraints=["max_records: 1"])).body
    assert d["buckets"] == ["money_movement"]


def test_the_response_does_not_share_state_with_later_decisions() -> None:
    from stage0.testing import make_engine  # noqa: PLC0415 - one engine for both calls

    engine = make_engine("2026-03-17T10:00:00Z")
    body = request(side_effects=["send_email"])
    first = engine.check(body)
    assert first.verdict == "DENY"
    first.body["guardrails"].append("tampered")
    first.body["guardrail_checks"]["unrecognized_constraints"].append("tampered")
    assert engine.check(body).verdict == "DENY"


def test_cross_tenant_rule_uses_the_callers_tenant() -> None:
    from stage0.testing import make_engine  # noqa: PLC0415

    engine = make_engine("2026-03-17T10:00:00Z")
    other = engine.check(request(context={"target_tenants": ["globex"]}), tenant="acme")
    assert "CROSS_TENANT_ACTION" in other.issue_codes
    claim = engine.check(request(context={"tenant_id": "globex"}), tenant="acme")
    assert "CROSS_TENANT_ACTION" in claim.issue_codes
    own = engine.check(request(context={"tenant_id": "acme", "target_tenants": ["acme"]}),
                       tenant="acme")
    assert own.verdict == "ALLOW"


def test_high_risk_from_the_score_alone() -> None:
    from stage0.policy import compile_text  # noqa: PLC0415
    from stage0.policy.loader import default_pack_text  # noqa: PLC0415

    policy = compile_text(default_pack_text().replace("high_risk_threshold: 70",
                                                      "high_risk_threshold: 30"))
    d = decide(request(tools=["bash"], side_effects=["write"], constraints=["sandbox"]),
               policy=policy).body
    assert d["buckets"] == []
    assert d["risk_score"] == 30
    assert d["high_risk"] is True
    assert decide(request(tools=["bash"], side_effects=["write"],
                          constraints=["sandbox"])).body["high_risk"] is False


def test_the_stronger_effect_wins_for_a_repeated_code() -> None:
    from stage0.contract import CODES  # noqa: PLC0415
    from stage0.engine.findings import Findings  # noqa: PLC0415

    base = CODES["CONSTRAINT_CONFLICT"]
    weak = type(base)(base.code, base.kind, "MEDIUM", "DEFER", "DEFER", "m", "r")
    out = Findings(pro=False)
    out.add_spec(weak)
    out.add_spec(base)
    out.add_spec(weak)
    assert [(i.code, i.effect) for i in out.issues] == [("CONSTRAINT_CONFLICT", "DENY")]


def test_unknown_change_window_is_decision_error() -> None:
    decision = decide(request(constraints=["allowed_change_window: maintenance"]))
    assert decision.decision == "ERROR"


def test_issue_codes_are_unique_in_a_decision() -> None:
    body = request(
        tools=["deploy.production"],
        constraints=["rollback_plan_required: true", "approval required"],
        context={"environment": "production", "approval_status": "approved"},
    )
    found = codes(decide(body))
    assert found.count("ROLLBACK_PLAN_MISSING") == 1


def test_questions_follow_the_issues() -> None:
    body = request(side_effects=["write"], success_criteria=[], constraints=[])
    d = decide(body).body
    assert "How will success be measured?" in d["clarifying_questions"]
    assert "What hard constraints must never be violated?" in d["clarifying_questions"]
    deferred = decide(request(constraints=["approval required"])).body
    assert deferred["defer_questions"]
    assert deferred["reason"].startswith("APPROVAL_REQUIRED_PENDING: ")


def test_reason_when_there_are_no_issues() -> None:
    d = decide(request()).body
    assert d["issues"] == []
    assert d["reason"] == "All checks passed under stage0-policy-pack@1.0.0"


def test_guardrails_are_normalised_and_checks_reported() -> None:
    d = decide(request(constraints=["Max_Iterations:3", "timeout: 5m", "whatever"])).body
    assert d["guardrails"] == ["max_iterations: 3", "timeout_seconds: 300"]
    assert d["guardrail_checks"]["unrecognized_constraints"] == ["whatever"]
    assert d["guardrail_checks"]["loop"]["max_iterations"] == 3
    assert set(d["guardrail_checks"]["approval"]) >= {"required", "satisfied", "verified"}


def test_caller_asserted_approval_is_not_verified() -> None:
    d = decide(request(constraints=["approval required"],
                       context={"approval_status": "approved"})).body
    assert d["guardrail_checks"]["approval"] == d["guardrail_checks"]["approval"] | {
        "required": True, "satisfied": True, "verified": False}


def test_risk_and_high_risk() -> None:
    calm = decide(request()).body
    assert calm["risk_score"] == 0
    assert calm["high_risk"] is False
    payout = decide(request(tools=["payments.create_payout"], side_effects=["money_movement"],
                            constraints=["approval required"],
                            context={"approval_status": "approved",
                                     "environment": "production"})).body
    assert payout["high_risk"] is True
    assert payout["buckets"] == ["money_movement"]
    assert 70 <= payout["risk_score"] <= 100


@pytest.mark.parametrize(
    ("tool", "bucket"),
    [
        ("payments.refund", "money_movement"),
        ("vendor_transfer", "money_movement"),
        ("admin.accounts.bulk_delete", "destructive_data"),
        ("db.truncate_table", "destructive_data"),
        ("iam.role_reset", "destructive_data"),
        ("deploy.production", "production_control_plane"),
        ("db.schema_apply", "production_control_plane"),
        ("vault.rotate_secret", "production_control_plane"),
    ],
)
def test_buckets_are_classified_from_tool_names(tool: str, bucket: str) -> None:
    d = decide(request(tools=[tool], constraints=["approval required"])).body
    assert bucket in d["buckets"]
    assert d["high_risk"] is True


@pytest.mark.parametrize("effect", ["payments", "refunds", "deploys", "emails", "deletion",
                                    "Payouts", "migrations"])
def test_plural_and_noun_forms_are_write_class(effect: str) -> None:
    d = decide(request(side_effects=[effect]))
    assert d.verdict == "DENY"
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in d.issue_codes


@pytest.mark.parametrize("tool", ["run_bash", "execute_bash", "bash_exec", "sudo", "python",
                                  "exec_command", "psql_query", "code_interpreter"])
def test_shells_and_interpreters_are_sensitive(tool: str) -> None:
    d = decide(request(tools=[tool], pro=True))
    assert d.verdict == "DENY"
    assert "SENSITIVE_TOOLS_NEED_CONSTRAINTS" in d.issue_codes
