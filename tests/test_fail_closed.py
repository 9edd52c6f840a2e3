"""Fail closed: nothing but a completed, successful evaluation yields ALLOW (CONTRACT section 3)."""

from __future__ import annotations

import pytest

from stage0.engine import ApprovalEvidence, Engine, InMemoryRunState
from stage0.policy import compile_text, load_policy
from stage0.policy.loader import default_pack_text
from stage0.testing import FixedClock, SequentialIds, StaticApprovals
from tests.helpers import decide, request


def test_no_policy_loaded_denies() -> None:
    engine = Engine(None, clock=FixedClock(), ids=SequentialIds())
    decision = engine.check(request())
    assert (decision.verdict, decision.decision) == ("DENY", "ERROR")
    assert decision.issue_codes == ["POLICY_NOT_LOADED"]


class ExplodingRunState:
    def observe(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("run state unavailable")


def test_an_exception_inside_evaluation_denies() -> None:
    engine = Engine(load_policy(), run_state=ExplodingRunState(),  # type: ignore[arg-type]
                    clock=FixedClock(), ids=SequentialIds())
    decision = engine.check(request(context={"run_id": "r"}))
    assert (decision.verdict, decision.decision) == ("DENY", "ERROR")
    assert decision.issue_codes == ["POLICY_EVALUATION_FAILED"]
    assert "run state unavailable" in decision.body["issues"][0]["message"]
    assert decision.body["request_id"]


def test_an_evaluation_over_the_time_limit_denies() -> None:
    assert "timeout_ms: 1000" in default_pack_text()
    text = default_pack_text().replace("timeout_ms: 1000", "timeout_ms: 0.000001")
    engine = Engine(compile_text(text), clock=FixedClock(), ids=SequentialIds())
    decision = engine.check(request())
    assert decision.decision == "ERROR"
    assert "over the pack's limit" in decision.body["issues"][0]["message"]


def _bound(body: dict[str, object]) -> tuple[str, str]:
    """The action digest and binding digest an approval for ``body`` carries."""
    decided = decide(body).body
    return decided["action_digest"], decided["guardrail_checks"]["approval"]["binding_digest"]


@pytest.mark.parametrize(
    ("evidence", "code"),
    [
        (ApprovalEvidence("apr_1", "approved", "WRONG"), "APPROVAL_SCOPE_MISMATCH"),
        (ApprovalEvidence("apr_1", "pending", "DIGEST"), "APPROVAL_REQUIRED_PENDING"),
        (ApprovalEvidence("apr_1", "rejected", "DIGEST"), "APPROVAL_REJECTED"),
        (ApprovalEvidence("apr_1", "expired", "DIGEST"), "APPROVAL_TIMED_OUT"),
    ],
)
def test_server_side_approvals(evidence: ApprovalEvidence, code: str) -> None:
    body = request(constraints=["approval required"], context={"approval_id": "apr_1"})
    digest, binding = _bound(body)
    approvals = StaticApprovals()
    approvals.add(
        ApprovalEvidence(
            evidence.approval_id, evidence.status,
            digest if evidence.action_digest == "DIGEST" else evidence.action_digest,
            binding_digest=binding,
        )
    )
    decision = decide(body, approvals=approvals)
    assert code in decision.issue_codes
    assert decision.verdict != "ALLOW"


def test_a_granted_server_side_approval_is_verified() -> None:
    body = request(constraints=["approval required"], context={"approval_id": "apr_2"})
    digest, binding = _bound(body)
    approvals = StaticApprovals()
    approvals.add(ApprovalEvidence("apr_2", "approved", digest, approvers=("alice",),
                                   binding_digest=binding))
    decision = decide(body, approvals=approvals)
    assert decision.verdict == "ALLOW"
    check = decision.body["guardrail_checks"]["approval"]
    assert check["verified"] is True
    assert check["approvers"] == ["alice"]
    other_tenant = make_other_tenant_engine(approvals).check(body, tenant="other")
    assert other_tenant.verdict == "DEFER"


@pytest.mark.parametrize(
    ("expires_at", "execute_by"),
    [("2026-03-17T09:59:59Z", None), (None, "2026-03-17T09:59:00Z")],
    ids=["request expired", "execute-by window passed"],
)
def test_a_granted_approval_past_its_windows_is_expired(
    expires_at: str | None, execute_by: str | None
) -> None:
    from stage0.contract.request import parse_instant  # noqa: PLC0415

    body = request(constraints=["approval required"], context={"approval_id": "apr_3"})
    digest, binding = _bound(body)
    approvals = StaticApprovals()
    approvals.add(ApprovalEvidence(
        "apr_3", "approved", digest, binding_digest=binding,
        expires_at=parse_instant(expires_at) if expires_at else None,
        execute_by=parse_instant(execute_by) if execute_by else None,
    ))
    decision = decide(body, approvals=approvals)
    assert decision.verdict == "DEFER"
    assert "APPROVAL_EXPIRED" in decision.issue_codes


def make_other_tenant_engine(approvals: StaticApprovals) -> Engine:
    return Engine(load_policy(), run_state=InMemoryRunState(), approvals=approvals,
                  clock=FixedClock("2026-03-17T10:00:00Z"), ids=SequentialIds())
