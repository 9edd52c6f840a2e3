"""Provenance hashes: canonical JSON equals RFC 8785, and the action digest binds the action."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from stage0.engine.digest import action_digest, canonical_json
from tests.helpers import decide, request

json_leaf = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
json_values = st.recursive(
    json_leaf | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(
    st.dictionaries(
        st.text(alphabet=st.characters(max_codepoint=127)),
        st.recursive(json_leaf, lambda i: st.lists(i, max_size=3), max_leaves=8),
        max_size=6,
    )
)
def test_fast_path_domain_matches_rfc8785(value: dict[str, Any]) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def test_known_vectors() -> None:
    assert canonical_json({"b": 1, "a": [2.0, 1e21, "é"]}) == '{"a":[2,1e+21,"é"],"b":1}'.encode()
    assert canonical_json({"\u20ac": 1, "\U0001f600": 2, "a": 3}) == rfc8785.dumps(
        {"\u20ac": 1, "\U0001f600": 2, "a": 3}
    )


def _digest(**kw: Any) -> str:
    base: dict[str, Any] = {
        "tools": ["payments_api"],
        "side_effects": ["money_movement"],
        "arguments": {"amount": 100, "currency": "USD"},
        "environment": "production",
        "resource_scope": None,
        "target_resources": None,
    }
    base.update(kw)
    return action_digest(**base)


def test_action_digest_ignores_order_and_duplicates_of_sets() -> None:
    assert _digest(tools=["a", "b"]) == _digest(tools=["b", "a", "a"])
    assert _digest(target_resources=["x", "y"]) == _digest(target_resources=["y", "x"])


def test_action_digest_changes_with_what_executes() -> None:
    base = _digest()
    assert _digest(arguments={"amount": 101, "currency": "USD"}) != base
    assert _digest(environment="staging") != base
    assert _digest(tools=["payments_api", "email"]) != base
    assert _digest(resource_scope="acct:1") != base
    assert _digest(arguments={"amount": 100.5, "currency": "USD"}) != base


def test_volatile_counters_do_not_change_the_digest() -> None:
    one = decide(request(context={"current_iteration": 1, "elapsed_seconds": 3, "run_id": "a"}))
    two = decide(request(context={"current_iteration": 7, "cumulative_cost_usd": 3.5}))
    assert one.body["action_digest"] == two.body["action_digest"]
    assert one.body["input_sha256"] != two.body["input_sha256"]


def test_tool_spelling_does_not_change_the_digest() -> None:
    one = decide(request(tools=["Payments API"]))
    two = decide(request(tools=["payments_api"]))
    assert one.body["action_digest"] == two.body["action_digest"]
