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


def test_the_digest_of_presorted_names_is_the_action_digest() -> None:
    from stage0.engine.digest import action_digest, sorted_action_digest  # noqa: PLC0415

    for arguments in (None, {}, {"n": 1, "k": ["a", None, True]}, {"x": 1.5},
                      {"é": 2, "z": [1.25]}):
        for targets in (None, "one", ["b", "a", "b"], []):
            tools, effects = ["slack", "argo_cd", "slack"], ["write"]
            expected = action_digest(tools=tools, side_effects=effects, arguments=arguments,
                                     environment="prod", resource_scope=None,
                                     target_resources=targets)
            assert sorted_action_digest(("argo_cd", "slack"), ("write",), arguments, "prod",
                                        None, targets) == expected


def test_in_memory_run_state_keeps_the_last_tools() -> None:
    from stage0.engine.runstate import RECENT_TOOLS_KEPT, InMemoryRunState  # noqa: PLC0415
    from stage0.testing import parse_instant  # noqa: PLC0415

    state = InMemoryRunState()
    at = parse_instant(WEEKDAY_10)
    snaps = [state.observe("t", "r", at=at, tool=f"tool{i}" if i % 7 else None, cost_usd=0.5)
             for i in range(RECENT_TOOLS_KEPT * 2)]
    called = [f"tool{i}" for i in range(RECENT_TOOLS_KEPT * 2) if i % 7]
    last = snaps[-1]
    assert last.iterations == RECENT_TOOLS_KEPT * 2
    assert last.cost_usd == 0.5 * RECENT_TOOLS_KEPT * 2
    assert last.recent_tools == tuple(called[:-1][-RECENT_TOOLS_KEPT:])
    assert snaps[1].recent_tools == ()
    assert snaps[2].recent_tools == ("tool1",)


def test_trailing_same_counts_the_run_of_the_last_tool() -> None:
    from stage0.engine.loops import _trailing_same  # noqa: PLC0415

    def slow(recent: tuple[str, ...], tool: str | None) -> int:
        if tool is None:
            return 0
        count = 1
        for earlier in reversed(recent):
            if earlier != tool:
                break
            count += 1
        return count

    cases = [(), ("a",), ("b",), ("a", "a"), ("b", "a"), ("a", "b"), ("a",) * 50,
             ("b",) + ("a",) * 49, ("a", "b", "a", "a"), ("a", "a", "b")]
    for recent in cases:
        for tool in (None, "a", "b", "c"):
            assert _trailing_same(recent, tool) == slow(recent, tool), (recent, tool)
            assert _trailing_same(list(recent), tool) == slow(recent, tool), (recent, tool)


def test_digests_by_names_are_the_digests() -> None:
    from stage0.engine import digest  # noqa: PLC0415

    cases = [
        (("a",), (), None, None, None), (("a",), (), "", None, None),
        (("a", "b"), ("w",), "prod", "s:*", "t1"), (("a", "b"), ("w",), "prod", "s:*", ["t1"]),
        ((), (), None, None, ["b", "a", "b"]), ((), (), None, None, ()),
    ]
    for tools, effects, env, scope, targets in cases:
        for arguments in (None, {}):
            fresh = digest._sorted_action_digest(tools, effects, None, env, scope, targets)
            assert digest.sorted_action_digest(tools, effects, arguments, env, scope,
                                               targets) == fresh
            assert digest.sorted_action_digest(tools, effects, arguments, env, scope,
                                               targets) == fresh
    with_args = digest.sorted_action_digest(("a",), (), {"k": 1}, None, None, None)
    assert with_args != digest.sorted_action_digest(("a",), (), None, None, None, None)
