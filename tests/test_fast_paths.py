"""The engine's fast paths give what the plain code gives, and share nothing mutable."""

from __future__ import annotations

import uuid

from stage0.contract import CODES
from stage0.contract.issues import Issue
from stage0.engine import uuid4_id
from stage0.testing import make_engine
from tests.helpers import WEEKDAY_10, request


def test_uuid4_id_is_a_canonical_version_4_uuid() -> None:
    seen_variants = set()
    ids = {uuid4_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        seen_variants.add(text[19])
    assert seen_variants == set("89ab")


def test_uuid4_id_keeps_every_random_bit_but_version_and_variant() -> None:
    raw = bytes(range(0xF0, 0x100))
    text = uuid4_id(lambda n: raw[:n])
    expected = uuid.UUID(bytes=raw, version=4)
    assert text == str(expected)


def test_catalogue_issues_equal_freshly_made_ones() -> None:
    for spec in CODES.values():
        for pro in (False, True):
            made = Issue(spec.code, spec.severity, spec.message,
                         spec.pro_effect if pro else spec.effect, spec.remediation)
            assert spec.issue(pro=pro) == made
            assert spec.issue(None, pro=pro) == made
            assert spec.issue("", pro=pro) == made
            assert spec.issue("other", pro=pro) == Issue(
                spec.code, spec.severity, "other", made.effect, spec.remediation)


def test_a_mutated_response_does_not_change_the_next_decision() -> None:
    engine = make_engine(WEEKDAY_10)
    body = request(
        tools=["deploy.production"], side_effects=["deployment"],
        constraints=["approval required", "rollback_plan_required: true", "max_records: 5"],
        context={"environment": "production", "run_id": "r", "recent_tools": ["x"]},
    )
    first = engine.check(body)
    expected = make_engine(WEEKDAY_10).check(body).to_json()
    checks = first.body["guardrail_checks"]
    checks["approval"]["required_by"].append("tampered")
    checks["rollback"]["required_by"].append("tampered")
    checks["environment"]["allowed"] = "tampered"
    checks["loop"]["sources"]["iteration"] = "tampered"
    first.body["issues"][0]["message"] = "tampered"
    first.body["buckets"].append("tampered")
    first.body["ignored_fields"].append("tampered")
    first.body["clarifying_questions"].append("tampered")
    again = make_engine(WEEKDAY_10)
    again.check(body)
    second = engine.check(body)
    assert second.body["request_id"] != first.body["request_id"]
    # The run state moved on one check; everything else is as a fresh engine says.
    fresh = again.check(body).body
    fresh["request_id"] = second.body["request_id"]
    assert second.body == fresh
    assert b"tampered" not in expected
    assert b"tampered" not in second.to_json()
