"""Policy packs: loading, validation that names each problem, compilation, CEL rules, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stage0.policy import PolicyError, compile_document, compile_text, load_policy
from stage0.policy.loader import default_pack_text
from tests.helpers import decide, request


def _doc() -> dict[str, object]:
    doc = yaml.safe_load(default_pack_text())
    assert isinstance(doc, dict)
    return doc


def test_default_pack_identity(policy: object) -> None:
    p = load_policy()
    assert p.policy_version == "stage0-policy-pack@1.0.0"
    assert len(p.sha256) == 64
    assert [b.name for b in p.buckets] == [
        "money_movement", "destructive_data", "production_control_plane"]
    assert p.approval_max_age == 24 * 3600
    window = p.windows["business_hours"]
    assert window.describe() == "mon,tue,wed,thu,fri 09:00-17:00 UTC"


def test_sha_ignores_formatting_and_comments() -> None:
    text = default_pack_text()
    reformatted = yaml.safe_dump(yaml.safe_load(text), sort_keys=True)
    assert compile_text(reformatted).sha256 == compile_text(text).sha256
    changed = text.replace("max_age: 24h", "max_age: 12h")
    assert compile_text(changed).sha256 != compile_text(text).sha256


def test_compiled_policy_is_immutable() -> None:
    p = load_policy()
    with pytest.raises(AttributeError):
        p.version = "2.0.0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.windows["x"] = p.windows["business_hours"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.update(version="one"), "version"),
        (lambda d: d.update(name="Bad Name"), "name"),
        (lambda d: d.update(timezone="Mars/Olympus"), "timezone"),
        (lambda d: d["change_windows"]["business_hours"].update(start="9am"),
         "change_windows.business_hours.start"),
        (lambda d: d["change_windows"]["business_hours"].update(days=["funday"]),
         "change_windows.business_hours.days.0"),
        (lambda d: d["buckets"]["money_movement"].update(risk_weight=500),
         "buckets.money_movement.risk_weight"),
        (lambda d: d.update(unexpected=True), "unexpected"),
        (lambda d: d["constraint_aliases"].update(not_a_key=["x"]), "constraint_aliases.not_a_key"),
        (lambda d: d["rules"][0].update(condition="context.target_tenants.exists(t,"),
         "rules.0.condition"),
        (lambda d: d["rules"][0].update(condition="'a string'"), "rules.0.condition"),
        (lambda d: d["rules"][0].update(code="ROLE_NOT_AUTHORIZED"), "rules.0.code"),
        (lambda d: d["rules"][0].update(code="lowercase"), "rules.0.code"),
        (lambda d: d["approval"].update(max_age="soon"), "approval.max_age"),
    ],
)
def test_invalid_packs_name_the_problem(mutate: object, problem: str) -> None:
    doc = _doc()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PolicyError) as info:
        compile_document(doc)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid YAML"):
        compile_text("a: [unclosed")
    with pytest.raises(PolicyError, match="mapping"):
        compile_text("- a list")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_custom_cel_rule_with_operator_codes(tmp_path: Path) -> None:
    doc = _doc()
    doc["rules"] = [
        {
            "code": "LARGE_REFUND",
            "condition": "has(arguments.amount) && double(arguments.amount) > 1000.0",
            "severity": "MEDIUM",
            "effect": "DEFER",
            "message": "Refunds over 1000 need finance review",
            "remediation": "Ask finance to review the refund",
            "question": "Has finance reviewed this refund?",
        },
        {
            "code": "NO_FRIDAY_PROD",
            "condition": "environment == 'production' && now.getDayOfWeek() == 5",
            "message": "No production changes on Fridays",
            "remediation": "Wait until Monday",
        },
    ]
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(doc))
    policy = load_policy(path)
    big = decide(request(arguments={"amount": 5000}), policy=policy)
    assert big.verdict == "DEFER"
    assert "LARGE_REFUND" in big.issue_codes
    assert "Has finance reviewed this refund?" in big.body["defer_questions"]
    small = decide(request(arguments={"amount": 10}), policy=policy)
    assert "LARGE_REFUND" not in small.issue_codes
    friday = decide(request(environment="production"), at="2026-03-20T10:00:00Z", policy=policy)
    assert friday.verdict == "DENY"
    assert "NO_FRIDAY_PROD" in friday.issue_codes


def test_a_rule_that_errors_at_runtime_fails_closed() -> None:
    doc = _doc()
    doc["rules"] = [{
        "code": "BROKEN_RULE",
        "condition": "context.missing_key == 'x'",
        "message": "m",
        "remediation": "r",
    }]
    policy = compile_document(doc)
    decision = decide(request(), policy=policy)
    assert decision.verdict == "DENY"
    assert decision.decision == "ERROR"
    assert decision.issue_codes == ["POLICY_EVALUATION_FAILED"]


def test_bucket_can_require_verified_approval() -> None:
    doc = _doc()
    doc["buckets"]["money_movement"]["require"]["approval_evidence"] = "verified"  # type: ignore[index]
    policy = compile_document(doc)
    body = request(tools=["payments.create_payout"], constraints=["approval required"],
                   context={"approval_status": "approved"})
    decision = decide(body, policy=policy)
    assert decision.verdict == "DEFER"
    assert "APPROVAL_REQUIRED_PENDING" in decision.issue_codes
    assert decision.body["guardrail_checks"]["approval"]["evidence"] == "verified"


def test_bucket_requirements_mfa_and_ticket() -> None:
    doc = _doc()
    doc["buckets"]["destructive_data"]["require"].update(mfa=True, ticket=True)  # type: ignore[index]
    policy = compile_document(doc)
    body = request(tools=["db.purge_old_rows"], constraints=["approval required"],
                   context={"approval_status": "approved"})
    found = decide(body, policy=policy).issue_codes
    assert "MFA_REQUIRED" in found
    assert "TICKET_REQUIRED" in found


def test_rules_scoped_by_tool_and_bucket() -> None:
    doc = _doc()
    doc["rules"] = [
        {"code": "PAYOUTS_ONLY", "tools": ["payments.*"], "condition": "true",
         "effect": "DEFER", "severity": "MEDIUM", "message": "m", "remediation": "r"},
        {"code": "DEPLOY_BUCKET", "buckets": ["production_control_plane"], "condition": "true",
         "effect": "DEFER", "severity": "MEDIUM", "message": "m", "remediation": "r"},
        {"code": "BOTH", "tools": ["payments.refund"], "buckets": ["money_movement"],
         "condition": "true", "effect": "DEFER", "severity": "MEDIUM", "message": "m",
         "remediation": "r"},
        {"code": "EVERYWHERE", "condition": "false", "message": "m", "remediation": "r"},
    ]
    policy = compile_document(doc)
    base = {"constraints": ["approval required"], "context": {"approval_status": "approved"}}
    refund = decide(request(tools=["payments.refund"], **base), policy=policy).issue_codes
    assert "PAYOUTS_ONLY" in refund
    assert "BOTH" in refund
    assert "DEPLOY_BUCKET" not in refund
    deploy = decide(request(tools=["deploy.api"], environment="staging", **base),
                    policy=policy).issue_codes
    assert "DEPLOY_BUCKET" in deploy
    assert "PAYOUTS_ONLY" not in deploy
    plain = decide(request(), policy=policy).issue_codes
    assert not {"PAYOUTS_ONLY", "DEPLOY_BUCKET", "BOTH"} & set(plain)
    assert [r.spec.code for r in policy.rules_for(("payments.refund",), ("money_movement",))] \
        == ["PAYOUTS_ONLY", "BOTH", "EVERYWHERE"]


def test_a_pack_can_extend_the_default_and_tighten_it() -> None:
    from stage0.policy import compile_text  # noqa: PLC0415

    child = compile_text(
        "extends: stage0-policy-pack\nname: acme\nversion: 2.0.0\n"
        "approvals:\n  quorum: 2\n"
        "side_effects:\n  write_class: [ledger_post]\n"
        "buckets:\n  money_movement:\n    require:\n      mfa: true\n"
        "rules:\n  - code: ACME_RULE\n    condition: 'false'\n    message: m\n"
        "    remediation: r\n"
    )
    assert child.policy_version == "acme@2.0.0"
    assert child.default_approvals.quorum == 2
    assert child.bucket("money_movement").mfa is True
    assert child.bucket("money_movement").approval is True  # kept from the base
    assert "ledger_post" in child.write_class
    assert "money_movement" in child.write_class  # lists are united
    assert [r.spec.code for r in child.rules][-1] == "ACME_RULE"
    assert "CROSS_TENANT_ACTION" in [r.spec.code for r in child.rules]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("buckets:\n  money_movement:\n    require:\n      approval: false\n",
         "buckets.money_movement.require.approval"),
        ("buckets:\n  production_control_plane:\n    require:\n      rollback_plan: never\n",
         "rollback_plan"),
        ("approval:\n  max_age: 48h\n", "approval.max_age"),
        ("approvals:\n  quorum: 1\n", None),
    ],
)
def test_extending_cannot_loosen(extra: str, problem: str | None) -> None:
    from stage0.policy import compile_text  # noqa: PLC0415

    text = "extends: stage0-policy-pack\nname: acme\nversion: 1.0.0\n" + extra
    if problem is None:
        assert compile_text(text).default_approvals.quorum == 1
        return
    with pytest.raises(PolicyError) as info:
        compile_text(text)
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_only_the_builtin_pack_can_be_extended() -> None:
    from stage0.policy import compile_text  # noqa: PLC0415

    with pytest.raises(PolicyError, match="only `stage0-policy-pack`"):
        compile_text("extends: other\nname: a\nversion: 1.0.0\n")


def test_rules_accept_id_and_when() -> None:
    doc = _doc()
    doc["rules"] = [{"id": "NO_FRIDAY_DEPLOYS", "when": "'production_control_plane' in buckets",
                     "effect": "DEFER", "severity": "MEDIUM", "message": "m", "remediation": "r"}]
    policy = compile_document(doc)
    assert [r.spec.code for r in policy.rules] == ["NO_FRIDAY_DEPLOYS"]
    assert policy.rules[0].source == "'production_control_plane' in buckets"
