"""Change windows: edges, weekends, time zones, overnight windows and the next opening."""

from __future__ import annotations

import pytest

from stage0.contract.request import parse_instant
from stage0.engine.approvals import ApprovalEvidence
from stage0.policy import compile_text
from stage0.policy.loader import default_pack_text
from stage0.testing import StaticApprovals, make_engine
from tests.helpers import decide, request

BH = ["allowed_change_window: business_hours"]


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        ("2026-03-17T08:59:00Z", False),
        ("2026-03-17T09:00:00Z", True),
        ("2026-03-17T16:59:00Z", True),
        ("2026-03-17T16:59:59Z", True),
        ("2026-03-17T17:00:00Z", False),
        ("2026-03-21T10:00:00Z", False),  # Saturday
        ("2026-03-22T10:00:00Z", False),  # Sunday
        ("2026-03-17T11:00:00+02:00", True),  # 09:00 UTC
        ("2026-03-17T10:59:00+02:00", False),  # 08:59 UTC
    ],
)
def test_business_hours_edges(at: str, inside: bool) -> None:
    decision = decide(request(constraints=BH), at=at)
    assert ("OUTSIDE_CHANGE_WINDOW" not in decision.issue_codes) is inside
    assert decision.verdict == ("ALLOW" if inside else "DEFER")


@pytest.mark.parametrize("alias", ["business-hours only", "business_hours", "Business Hours Only"])
def test_window_aliases(alias: str) -> None:
    decision = decide(request(constraints=[alias]), at="2026-03-21T10:00:00Z")
    assert "OUTSIDE_CHANGE_WINDOW" in decision.issue_codes


@pytest.mark.parametrize(
    ("at", "next_open"),
    [
        ("2026-03-21T10:00:00Z", "2026-03-23T09:00:00Z"),  # Saturday -> Monday
        ("2026-03-17T17:00:00Z", "2026-03-18T09:00:00Z"),  # Tuesday close -> Wednesday
        ("2026-03-17T08:59:00Z", "2026-03-17T09:00:00Z"),  # just before opening
        ("2026-03-20T18:00:00Z", "2026-03-23T09:00:00Z"),  # Friday evening -> Monday
    ],
)
def test_next_opening(at: str, next_open: str) -> None:
    body = decide(request(constraints=BH), at=at).body
    window = body["guardrail_checks"]["change_window"]["windows"][0]
    assert window["next_open"] == next_open
    assert next_open in body["reason"]


def _pack_with_zone(zone: str) -> str:
    return default_pack_text().replace(
        'end: "17:00"        # the end is exclusive: 17:00 is outside',
        f'end: "17:00"\n    timezone: {zone}',
    )


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        ("2026-03-17T12:59:00Z", False),  # 08:59 in New York (EDT, UTC-4)
        ("2026-03-17T13:00:00Z", True),  # 09:00 in New York
        ("2026-03-17T20:59:00Z", True),  # 16:59 in New York
        ("2026-03-17T21:00:00Z", False),  # 17:00 in New York
        ("2026-01-13T13:59:00Z", False),  # 08:59 in New York in winter (EST, UTC-5)
        ("2026-01-13T14:00:00Z", True),
    ],
)
def test_window_in_another_time_zone(at: str, inside: bool) -> None:
    policy = compile_text(_pack_with_zone("America/New_York"))
    decision = decide(request(constraints=BH), at=at, policy=policy)
    assert ("OUTSIDE_CHANGE_WINDOW" not in decision.issue_codes) is inside


def test_next_opening_across_a_zone_is_reported_in_utc() -> None:
    policy = compile_text(_pack_with_zone("Asia/Tokyo"))
    # Friday 2026-03-20 09:00 UTC is 18:00 in Tokyo: next opening is Monday 09:00 JST.
    body = decide(request(constraints=BH), at="2026-03-20T09:00:00Z", policy=policy).body
    window = body["guardrail_checks"]["change_window"]["windows"][0]
    assert window["next_open"] == "2026-03-23T00:00:00Z"


def test_overnight_window() -> None:
    text = default_pack_text().replace(
        "change_windows:\n",
        'change_windows:\n  night:\n    days: [fri]\n    start: "22:00"\n    end: "02:00"\n',
    )
    policy = compile_text(text)
    constraints = ["allowed_change_window: night"]
    for at, inside in [
        ("2026-03-20T21:59:00Z", False),
        ("2026-03-20T22:00:00Z", True),
        ("2026-03-21T01:59:00Z", True),  # Saturday morning, still Friday's window
        ("2026-03-21T02:00:00Z", False),
        ("2026-03-21T22:30:00Z", False),  # Saturday night is not a window day
    ]:
        decision = decide(request(constraints=constraints), at=at, policy=policy)
        assert ("OUTSIDE_CHANGE_WINDOW" not in decision.issue_codes) is inside, at


def test_holidays_close_a_window_and_move_the_next_opening() -> None:
    text = default_pack_text().replace(
        'end: "17:00"        # the end is exclusive: 17:00 is outside',
        'end: "17:00"\n    holidays: [2026-03-17, 2026-03-18]',
    )
    policy = compile_text(text)
    body = decide(request(constraints=BH), at="2026-03-17T10:00:00Z", policy=policy).body
    assert body["verdict"] == "DEFER"
    window = body["guardrail_checks"]["change_window"]["windows"][0]
    assert window["next_window_opens_at"] == "2026-03-19T09:00:00Z"
    assert window["retry_after_seconds"] == 2 * 86400 - 3600
    assert decide(request(constraints=BH), at="2026-03-19T10:00:00Z",
                  policy=policy).verdict == "ALLOW"


def test_a_freeze_denies_covered_actions_and_nothing_else() -> None:
    text = default_pack_text().replace(
        "change_windows:\n",
        "freezes:\n  - name: year-end\n    start: 2026-12-20T00:00:00Z\n"
        "    end: 2027-01-04T00:00:00Z\n    reason: year-end close\n"
        "    buckets: [money_movement, production_control_plane]\nchange_windows:\n",
    )
    policy = compile_text(text)
    payout = request(tools=["payments.create_payout"], constraints=["approval required"],
                     context={"approval_status": "approved"})
    during = decide(payout, at="2026-12-22T10:00:00Z", policy=policy)
    assert during.verdict == "DENY"
    assert "CHANGE_FREEZE" in during.issue_codes
    assert during.body["guardrail_checks"]["freeze"]["until"] == "2027-01-04T00:00:00Z"
    assert decide(payout, at="2027-01-04T00:00:00Z", policy=policy).verdict == "ALLOW"
    assert decide(request(), at="2026-12-22T10:00:00Z", policy=policy).verdict == "ALLOW"


def _glass(body: dict[str, object], at: str, kind: str = "break_glass") -> StaticApprovals:
    """A resolver holding one approved approval of ``kind`` for the action of ``body``."""
    digest = decide(body, at=at).body["action_digest"]
    approvals = StaticApprovals()
    approvals.add(ApprovalEvidence(
        "brk_1", "approved", digest, expires_at=parse_instant("2030-01-01T00:00:00Z"),
        approvers=("irene",), kind=kind,  # type: ignore[arg-type]
        lifts=("OUTSIDE_CHANGE_WINDOW", "CHANGE_FREEZE"),
        reason="SEV1: checkout is down"))
    return approvals


def test_break_glass_lifts_the_window_and_says_so() -> None:
    saturday = "2026-03-21T10:00:00Z"
    body = request(constraints=BH, context={"approval_id": "brk_1"})
    lifted = decide(body, at=saturday, approvals=_glass(body, saturday))
    assert lifted.verdict == "ALLOW", lifted.issue_codes
    assert "BREAK_GLASS_USED" in lifted.issue_codes
    assert lifted.body["guardrail_checks"]["change_window"]["satisfied"] is True
    assert lifted.body["guardrail_checks"]["break_glass"]["approvers"] == ["irene"]
    standard = decide(body, at=saturday, approvals=_glass(body, saturday, kind="standard"))
    assert "OUTSIDE_CHANGE_WINDOW" in standard.issue_codes  # only break-glass lifts a window


def test_break_glass_never_lifts_a_deny_rule() -> None:
    text = default_pack_text().replace(
        "change_windows:\n",
        "freezes:\n  - name: q-close\n    start: 2026-03-01T00:00:00Z\n"
        "    end: 2026-04-01T00:00:00Z\nchange_windows:\n",
    ) + (
        "rules:\n  - id: NO_INTERN_DEPLOYS\n    when: \"context.actor_role == 'intern'\"\n"
        "    message: interns may not deploy\n    remediation: ask the on-call engineer\n"
    )
    policy = compile_text(text)
    at = "2026-03-17T10:00:00Z"
    body = request(tools=["deploy.production"], side_effects=["write"],
                   constraints=["rollback_plan_required: true"],
                   context={"approval_id": "brk_1", "environment": "production",
                            "rollback_plan": True, "actor_role": "sre"})
    glass = _glass(body, at)
    ok = make_engine(at, policy=policy, approvals=glass).check(body)
    assert "CHANGE_FREEZE" not in ok.issue_codes
    assert ok.body["guardrail_checks"]["break_glass"]["lifted"] == ["CHANGE_FREEZE"]
    intern = {**body, "context": {**body["context"], "actor_role": "intern"}}  # same digest
    denied = make_engine(at, policy=policy, approvals=glass).check(intern)
    assert denied.verdict == "DENY"
    assert "NO_INTERN_DEPLOYS" in denied.issue_codes
