"""Properties: nothing makes evaluation raise, and an ALLOW never carries a blocking issue."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stage0.contract import CheckResponse, RequestValidationError
from stage0.engine import Decision
from stage0.testing import make_engine

ENGINE = make_engine("2026-03-17T10:00:00Z")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=25,
)

safe_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=25,
)

VOCAB = [
    "require_approval: true", "approval required", "required_role:risk_ops",
    "allowed_environment:staging,production", "business-hours only",
    "allowed_change_window: business_hours", "rollback_plan_required: true", "mfa_required: true",
    "require_ticket: true", "max_records: 50", "resource_scope: acct:*", "allowed_mcp_servers: a,b",
    "max_iterations: 3", "timeout: 60s", "same_tool_limit: 2", "no_repeat_calls",
    "max_cost_usd: 1.5", "read-only", "sandbox", "dry-run", "allowlist: ls", "max_records: x",
    "allowed_change_window: nope", "random words",
]
TOOLS = ["payments_api", "deploy.production", "bash", "kubectl", "slack", "db.truncate_table",
         "admin.accounts.bulk_archive", "crm_lookup", "vault.rotate_secret"]
EFFECTS = ["money movement", "write", "read", "deploy", "delete", "retry", "customer_impact",
           "external notification", "schema_change"]

contexts = st.fixed_dictionaries(
    {},
    optional={
        "actor_role": st.sampled_from(["risk_ops", "support", "platform_admin"]),
        "environment": st.sampled_from(["production", "staging", "dev", "prod"]),
        "approval_status": st.sampled_from(["approved", "pending", "missing", "none", "rejected"]),
        "approved_at": st.sampled_from(
            ["2026-03-17T09:00:00Z", "2026-03-10T09:00:00Z", "2026-03-18T09:00:00Z"]
        ),
        "approval_id": st.text(min_size=1, max_size=8),
        "ticket_id": st.text(max_size=6),
        "rollback_plan": st.booleans() | st.text(max_size=6),
        "mfa_verified": st.booleans(),
        "resource_scope": st.text(max_size=8),
        "target_resources": st.lists(st.text(max_size=6), max_size=3),
        "record_count": st.integers(0, 10_000),
        "run_id": st.sampled_from(["r1", "r2"]),
        "current_iteration": st.integers(0, 10),
        "elapsed_seconds": st.floats(0, 1000),
        "recent_tools": st.lists(st.sampled_from(TOOLS), max_size=4),
        "cumulative_cost_usd": st.floats(0, 10),
        "active_mcp_servers": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
        "tenant_id": st.sampled_from(["t1", "t2"]),
        "target_tenants": st.lists(st.sampled_from(["t1", "t2"]), max_size=2),
        "extra_key": safe_json,
    },
)

requests = st.fixed_dictionaries(
    {"goal": st.text(min_size=1, max_size=80).filter(str.strip)},
    optional={
        "success_criteria": st.lists(st.text(max_size=20), max_size=2),
        "constraints": st.lists(st.sampled_from(VOCAB), max_size=6),
        "tools": st.lists(st.sampled_from(TOOLS), max_size=3),
        "side_effects": st.lists(st.sampled_from(EFFECTS), max_size=3),
        "context": contexts,
        "pro": st.booleans(),
        "arguments": st.dictionaries(st.text(max_size=8), safe_json, max_size=3),
        "environment": st.sampled_from(["production", "staging"]),
        "unknown_top_level": safe_json,
    },
)


def _assert_sound(decision: Decision) -> None:
    body = decision.body
    CheckResponse.model_validate_json(decision.to_json())
    effects = {i["effect"] for i in body["issues"]}
    pairs = {"ALLOW": "GO", "DEFER": "DEFER", "DENY": "NO_GO"}
    assert body["decision"] == pairs[body["verdict"]] or (
        body["decision"] == "ERROR" and body["verdict"] == "DENY"
    )
    if body["verdict"] == "ALLOW":
        assert not effects & {"DENY", "DEFER"}, body["issues"]
    if "DENY" in effects:
        assert body["verdict"] == "DENY"
    elif "DEFER" in effects:
        assert body["verdict"] == "DEFER"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_raises_past_validation(value: Any) -> None:
    try:
        decision = ENGINE.check(json.dumps(value).encode())
    except RequestValidationError:
        return
    _assert_sound(decision)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6),
       contexts_any := st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_arbitrary_fields_around_a_goal_never_raise(
    extra: dict[str, Any], context: dict[str, Any]
) -> None:
    """Arbitrary JSON in every field but `goal`: most of it reaches the engine."""
    body = {**extra, "goal": "Refund the duplicate charge on order 1042", "context": context}
    try:
        decision = ENGINE.check(json.dumps(body).encode())
    except RequestValidationError:
        return
    _assert_sound(decision)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_past_validation(raw: bytes) -> None:
    try:
        decision = ENGINE.check(raw)
    except RequestValidationError:
        return
    _assert_sound(decision)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_well_typed_requests_always_decide_soundly(body: dict[str, Any]) -> None:
    try:
        decision = ENGINE.check(body)
    except RequestValidationError as exc:
        # Only the documented contradiction may be rejected among well-typed requests.
        rejected = {e.field for e in exc.errors}
    else:
        _assert_sound(decision)
        return
    assert rejected <= {"environment"}
