"""Issue #15: operator-required constraints (`require`), and the two postures — the hosted
contract (caller-written evidence counts, and says so) and the `strict` preset (approvals only
as server-side objects, MFA only from the approvers, rollback plans and tickets only as
references the evidence source confirms)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stage0.contract.effects import is_stricter_verdict
from stage0.engine import Decision, Engine, InMemoryRunState
from stage0.engine.approvals import ApprovalEvidence
from stage0.engine.evidence import EvidenceCache, EvidenceResolver, EvidenceResult, StaticEvidence
from stage0.lifecycle.suites import load_suite, run_cases
from stage0.policy import CompiledPolicy, PolicyError, compile_text, load_policy
from stage0.policy.extends import loosenings, merge
from stage0.policy.loader import default_pack_text, policy_source, preset_path
from stage0.policy.packset import load_pack_set
from stage0.testing import FixedClock, SequentialIds, StaticApprovals
from tests.conftest import EXAMPLES, Example

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "strict-policy-tests.yaml"
TUESDAY = "2026-03-17T10:00:00Z"
SATURDAY = "2026-03-14T10:00:00Z"
TUESDAY_NIGHT = "2026-03-17T22:00:00Z"


@pytest.fixture(scope="module")
def default() -> CompiledPolicy:
    return load_policy()


@pytest.fixture(scope="module")
def strict() -> CompiledPolicy:
    return load_policy("strict")


def engine(policy: CompiledPolicy, at: str = TUESDAY, *,
           approvals: StaticApprovals | None = None,
           evidence: EvidenceResolver | None = None) -> Engine:
    return Engine(policy, run_state=InMemoryRunState(), approvals=approvals,
                  clock=FixedClock(at), ids=SequentialIds(), evidence=evidence)


def deploy(**context: Any) -> dict[str, Any]:
    """A production deploy as a hosted-contract caller sends it, with caller evidence."""
    ctx = {"environment": "production", "actor_role": "platform_admin",
           "approval_status": "approved", "rollback_plan": "RB-2026-03-14", **context}
    return {
        "goal": "Deploy the payments service to production",
        "success_criteria": ["The new version serves traffic"],
        "tools": ["deploy.production"],
        "side_effects": ["deployment"],
        "constraints": ["approval required", "required_role:platform_admin"],
        "context": {k: v for k, v in ctx.items() if v is not None},
    }


def codes(d: Decision) -> list[str]:
    return d.issue_codes


def pack(text: str) -> CompiledPolicy:
    return compile_text("extends: stage0-policy-pack\nname: acme\nversion: 2.0.0\n" + text)


# -- the strict preset: one setting ---------------------------------------------------------------


def test_strict_is_a_shipped_preset_extending_the_default(strict: CompiledPolicy) -> None:
    assert strict.policy_version == "stage0-strict@1.0.0"
    path = preset_path("strict")
    assert path is not None
    assert path.is_file()
    assert yaml.safe_load(path.read_text("utf-8"))["extends"] == "stage0-policy-pack"
    assert load_pack_set("strict").active.sha256 == strict.sha256  # `serve --policy strict`
    assert policy_source("strict") == "strict"  # handed to workers as the name, not a path
    assert (strict.approval_evidence, strict.mfa_evidence, strict.rollback_evidence,
            strict.ticket_evidence) == ("verified",) * 4
    # everything the default asks, the strict preset asks too: it only tightens
    assert loosenings(yaml.safe_load(default_pack_text()), _strict_document()) == []


def test_the_strict_suite_passes() -> None:
    report = run_cases(load_suite(SUITE), load_policy("strict"))
    assert report.ok, [(r.case.name, [m.describe() for m in r.mismatches], r.error)
                       for r in report.results if not r.passed]
    assert len(report.results) >= 6


# -- omitting a constraint no longer helps --------------------------------------------------------


def test_omitting_the_change_window_avoids_it_only_under_the_default(
        default: CompiledPolicy, strict: CompiledPolicy) -> None:
    body = deploy()
    assert "allowed_change_window" not in str(body["constraints"])
    hosted = engine(default, SATURDAY).check(body)
    assert hosted.verdict == "ALLOW", hosted.body["reason"]
    held = engine(strict, SATURDAY, evidence=StaticEvidence({})).check(body)
    assert held.verdict == "DEFER"
    assert "OUTSIDE_CHANGE_WINDOW" in codes(held)
    window = held.body["guardrail_checks"]["change_window"]
    assert window["required_by"] == ["require `production-change-controls`"]
    assert {"rule": "production-change-controls",
            "constraint": "allowed_change_window: business_hours"} in held.body[
        "guardrail_checks"]["policy_constraints"]


def test_omitting_rollback_mfa_and_ticket_still_defers_under_strict(
        strict: CompiledPolicy) -> None:
    body = deploy(rollback_plan=None, approval_status=None)
    body["constraints"] = ["max_iterations: 3"]  # none of the requirements named
    d = engine(strict, TUESDAY).check(body)
    assert d.verdict == "DEFER"
    assert {"ROLLBACK_PLAN_MISSING", "MFA_REQUIRED", "TICKET_REQUIRED",
            "APPROVAL_REQUIRED_PENDING"} <= set(codes(d))
    checks = d.body["guardrail_checks"]
    assert "require `production-change-controls`" in checks["mfa"]["required_by"]
    assert "require `production-change-controls`" in checks["ticket"]["required_by"]


def test_leaving_the_environment_out_does_not_avoid_a_production_rule(
        strict: CompiledPolicy) -> None:
    body = deploy(environment=None)
    d = engine(strict, SATURDAY).check(body)
    assert {"ENVIRONMENT_UNSPECIFIED", "OUTSIDE_CHANGE_WINDOW", "TICKET_REQUIRED"} <= set(
        codes(d))


def test_a_staging_deploy_is_not_held_by_the_production_rule(strict: CompiledPolicy) -> None:
    d = engine(strict, SATURDAY).check(deploy(environment="staging", rollback_plan=None))
    assert "OUTSIDE_CHANGE_WINDOW" not in codes(d)
    assert "TICKET_REQUIRED" not in codes(d)
    assert "APPROVAL_REQUIRED_PENDING" in codes(d)  # still a bucket: server-side approval


REQUIRE_PACK = """
change_windows:
  maintenance:
    days: [sat]
    start: "02:00"
    end: "04:00"
require:
  - name: deploys-in-window
    tools: ["deploy*"]
    environments: [production]
    constraints:
      business_hours: true
      max_records: 100
  - name: exports-need-a-ticket
    tools: ["*export*"]
    constraints:
      ticket: true
      required_role: [analyst, admin]
"""


def test_require_rules_select_by_tool_and_environment_and_merge_tightest() -> None:
    p = pack(REQUIRE_PACK)
    night = engine(p, TUESDAY_NIGHT)
    d = night.check(deploy())
    assert "OUTSIDE_CHANGE_WINDOW" in codes(d)
    assert d.body["guardrail_checks"]["records"]["max_records"] == 100
    assert d.body["guardrails"] == ["require_approval: true", "required_role: platform_admin"]
    # the caller can add a limit (the tighter one holds) and another window (both must hold)
    tighter = deploy(record_count=60)
    tighter["constraints"] = [*tighter["constraints"], "max_records: 50",
                              "allowed_change_window: maintenance"]
    d = engine(p, TUESDAY).check(tighter)
    assert d.body["guardrail_checks"]["records"]["max_records"] == 50
    assert "RECORD_LIMIT_EXCEEDED" in codes(d)
    assert [w["name"] for w in d.body["guardrail_checks"]["change_window"]["windows"]] == [
        "maintenance", "business_hours"]
    looser = deploy(record_count=150)
    looser["constraints"] = [*looser["constraints"], "max_records: 500"]
    assert "RECORD_LIMIT_EXCEEDED" in codes(engine(p, TUESDAY).check(looser))
    # another tool, another environment: the rule does not apply
    assert "OUTSIDE_CHANGE_WINDOW" not in codes(night.check(deploy(environment="dev")))
    export = {"goal": "Export the monthly report for finance", "success_criteria": ["sent"],
              "tools": ["report_export"], "context": {"actor_role": "intern"}}
    d = engine(p).check(export)
    assert {"TICKET_REQUIRED", "ROLE_NOT_AUTHORIZED"} <= set(codes(d))


def test_a_caller_cannot_switch_an_operator_requirement_off() -> None:
    p = pack(REQUIRE_PACK)
    body = deploy()
    body["constraints"] = [*body["constraints"], "business_hours: false", "ticket: off"]
    d = engine(p, TUESDAY_NIGHT).check(body)
    assert "OUTSIDE_CHANGE_WINDOW" in codes(d)
    assert d.body["guardrail_checks"]["inactive_constraints"] == [
        "business_hours: false", "ticket: off"]


def test_operator_constraints_are_not_the_callers_guardrails() -> None:
    """A write-class side effect with no guardrail of the caller's still denies: a `require`
    rule adds requirements, it does not speak for the caller."""
    p = pack(REQUIRE_PACK)
    body = deploy()
    body["constraints"] = []
    assert "SIDE_EFFECTS_NEED_GUARDRAILS" in codes(engine(p).check(body))


@pytest.mark.parametrize(("text", "problem"), [
    ("require:\n  - name: x\n    buckets: [nope]\n    constraints: {mfa: true}\n",
     "`nope` is not a bucket"),
    ("require:\n  - name: x\n    constraints: {change_window: weekend}\n",
     "change window `weekend` is not defined"),
    ("require:\n  - name: x\n    constraints: {sandbox: true}\n", "cannot be required"),
    ("require:\n  - name: x\n    constraints: {max_records: lots}\n", "invalid value"),
    ("require:\n  - name: x\n    constraints: {frobnicate: 1}\n", "not a constraint key"),
    ("require:\n  - name: x\n    constraints: {require_ticket: false}\n", "requires nothing"),
    ("require:\n  - name: x\n    constraints: {}\n", "at least 1 item"),
    ("mfa:\n  evidence: verified\n", "`approvals.approver_mfa` must be true"),
])
def test_bad_require_rules_and_settings_fail_the_load(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        pack(text)
    assert problem in str(err.value)


@pytest.mark.parametrize("setting", [("mfa", "evidence"), ("evidence", "rollback_plan"),
                                     ("evidence", "ticket"), ("approval", "evidence")])
def test_verified_evidence_cannot_become_any_again(setting: tuple[str, str]) -> None:
    base = _strict_document()
    looser = copy.deepcopy(base)
    looser[setting[0]][setting[1]] = "any"
    assert [str(x) for x in loosenings(base, looser)] == [
        f"{'.'.join(setting)}: `verified` cannot become `any`"]
    fewer = copy.deepcopy(base)
    fewer["require"] = fewer["require"][1:]
    assert "require: the base pack's rules cannot be removed" in [
        str(x) for x in loosenings(base, fewer)]


def _strict_document() -> dict[str, Any]:
    """The strict preset merged over the default pack, as the loader merges it."""
    path = preset_path("strict")
    assert path is not None
    child = yaml.safe_load(path.read_text("utf-8"))
    del child["extends"]
    merged: dict[str, Any] = merge(yaml.safe_load(default_pack_text()), child)
    return merged


# -- asserting evidence no longer helps -----------------------------------------------------------


def test_a_caller_written_approval_counts_under_the_default_and_says_so(
        default: CompiledPolicy) -> None:
    d = engine(default).check(deploy())
    assert d.verdict == "ALLOW"
    assert d.body["guardrail_checks"]["approval"]["verified"] is False
    assert d.body["guardrail_checks"]["evidence"] == {
        "caller_asserted": ["approval", "rollback"], "verified": []}
    issue = next(i for i in d.issues if i["code"] == "CALLER_ASSERTED_EVIDENCE")
    assert issue["effect"] == "NONE"
    assert issue["severity"] == "LOW"
    assert "`approval_status`" in issue["message"]
    assert "`rollback_plan`" in issue["message"]


def test_a_caller_written_approval_does_not_count_under_strict(strict: CompiledPolicy) -> None:
    d = engine(strict, evidence=StaticEvidence({("rollback_plan", "RB-2026-03-14"): True,
                                                ("ticket", "CHG-1"): True})).check(
        deploy(ticket_id="CHG-1"))
    assert d.verdict == "DEFER"
    assert "APPROVAL_REQUIRED_PENDING" in codes(d)
    assert "server-side approval" in d.body["reason"]
    assert "CALLER_ASSERTED_EVIDENCE" not in codes(d)


def test_caller_written_mfa_does_not_count_under_strict(default: CompiledPolicy,
                                                         strict: CompiledPolicy) -> None:
    refund = {"goal": "Refund order 1042 to the customer", "success_criteria": ["refunded"],
              "tools": ["payments.refund"], "side_effects": ["money movement"],
              "constraints": ["approval required", "mfa_required: true"],
              "context": {"approval_status": "approved", "mfa_verified": True}}
    hosted = engine(default).check(refund)
    assert hosted.verdict == "ALLOW"
    assert hosted.body["guardrail_checks"]["evidence"]["caller_asserted"] == ["approval", "mfa"]
    d = engine(strict).check(refund)
    assert d.verdict == "DEFER"
    assert {"MFA_REQUIRED", "APPROVAL_REQUIRED_PENDING"} <= set(codes(d))
    assert "caller-written `mfa_verified` does not count" in d.body["reason"]


def test_mfa_required_off_bucket_needs_a_server_side_approval_under_strict(
        strict: CompiledPolicy) -> None:
    body = {"goal": "Read the audit report for the team", "success_criteria": ["read"],
            "tools": ["report_reader"], "constraints": ["mfa_required: true"],
            "context": {"mfa_verified": True}}
    d = engine(strict).check(body)
    assert {"MFA_REQUIRED", "APPROVAL_REQUIRED_PENDING"} <= set(codes(d))
    assert "MFA (`mfa.evidence: verified`)" in d.body["guardrail_checks"]["approval"][
        "required_by"]


@pytest.mark.parametrize(("plan", "answers", "code"), [
    (True, {}, "ROLLBACK_PLAN_UNVERIFIED"),  # `true` is an assertion, not a reference
    ("RB-404", {}, "ROLLBACK_PLAN_UNVERIFIED"),  # the source does not know it
    ("RB-9", {("rollback_plan", "RB-9"): False}, "ROLLBACK_PLAN_UNVERIFIED"),  # not valid
])
def test_caller_written_rollback_evidence_does_not_count_under_strict(
        strict: CompiledPolicy, plan: object, answers: dict[tuple[str, str], bool],
        code: str) -> None:
    d = engine(strict, evidence=StaticEvidence(answers)).check(deploy(rollback_plan=plan))
    assert code in codes(d)
    assert d.body["guardrail_checks"]["rollback"] == {
        "required": True, "satisfied": False, "verified": False,
        "required_by": ["require `production-change-controls`",
                        "bucket `production_control_plane`"]}


def test_no_evidence_source_or_no_answer_fails_closed(strict: CompiledPolicy) -> None:
    d = engine(strict).check(deploy())
    assert "EVIDENCE_UNAVAILABLE" in codes(d)
    assert "no evidence source is configured" in d.body["reason"]
    d = engine(strict, evidence=EvidenceCache()).check(deploy())  # nothing looked up
    assert "the evidence source gave no answer" in d.body["reason"]
    cache = EvidenceCache()
    cache.put("default", "rollback_plan", "RB-2026-03-14",
              EvidenceResult("unavailable", "no answer within 2 s", 1e12))
    d = engine(strict, evidence=cache).check(deploy())
    assert "EVIDENCE_UNAVAILABLE" in codes(d)
    assert "no answer within 2 s" in d.body["reason"]
    stale = EvidenceCache(ttl_s=60, clock=lambda: 1000.0)
    stale.put("default", "rollback_plan", "RB-2026-03-14", EvidenceResult("valid", "", 900.0))
    assert "EVIDENCE_UNAVAILABLE" in codes(engine(strict, evidence=stale).check(deploy()))


def test_the_caller_evidence_counts_under_the_default_whatever_the_source_says(
        default: CompiledPolicy) -> None:
    """The hosted contract: `rollback_plan: true` and an unknown reference both count."""
    for plan in (True, "RB-404"):
        d = engine(default, evidence=StaticEvidence({})).check(deploy(rollback_plan=plan))
        assert d.verdict == "ALLOW"
        assert d.body["guardrail_checks"]["rollback"]["verified"] is False


def _approved(d: Decision, *, mfa: bool = True) -> StaticApprovals:
    check = d.body["guardrail_checks"]["approval"]
    approvals = StaticApprovals()
    approvals.add(ApprovalEvidence(
        "apr_1", "approved", str(d.body["action_digest"]), approvers=("alice",),
        requires_mfa=mfa, binding_digest=check.get("binding_digest")))
    return approvals


def test_strict_allows_on_server_side_evidence_only(strict: CompiledPolicy) -> None:
    evidence = StaticEvidence({("rollback_plan", "RB-2026-03-14"): True, ("ticket", "CHG-7"): True})
    body = deploy(ticket_id="CHG-7", approval_status=None)
    first = engine(strict, evidence=evidence).check(body)
    assert first.verdict == "DEFER"
    assert "APPROVAL_REQUIRED_PENDING" in codes(first)
    retry = copy.deepcopy(body)
    retry["context"]["approval_id"] = "apr_1"
    d = engine(strict, approvals=_approved(first), evidence=evidence).check(retry)
    assert d.verdict == "ALLOW", d.body["reason"]
    checks = d.body["guardrail_checks"]
    assert checks["evidence"] == {"caller_asserted": [],
                                  "verified": ["approval", "mfa", "rollback", "ticket"]}
    assert "CALLER_ASSERTED_EVIDENCE" not in codes(d)
    # an approval granted without approver MFA is not enough under strict
    weak = engine(strict, approvals=_approved(first, mfa=False), evidence=evidence).check(retry)
    assert weak.verdict == "DEFER"
    assert {"APPROVAL_REQUIRED_PENDING", "MFA_REQUIRED"} <= set(codes(weak))


# -- the hosted contract's examples ---------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_strict_is_never_looser_than_the_default_on_the_examples(
        example: Example, default: CompiledPolicy, strict: CompiledPolicy) -> None:
    hosted = engine(default, example.evaluated_at).check(copy.deepcopy(example.request))
    example.check(hosted.body)  # the hosted contract holds under the default
    held = engine(strict, example.evaluated_at, evidence=StaticEvidence({})).check(
        copy.deepcopy(example.request))
    assert not is_stricter_verdict(hosted.verdict, held.verdict), (
        example.name, hosted.verdict, held.verdict)
    asserted = hosted.body["guardrail_checks"].get("evidence", {}).get("caller_asserted")
    if hosted.verdict == "ALLOW" and asserted:
        assert "CALLER_ASSERTED_EVIDENCE" in hosted.issue_codes
        assert held.verdict != "ALLOW", example.name  # caller evidence no longer suffices
