"""Constraint strings -> guardrails: each value kind's parser and each family's combining rule."""

from __future__ import annotations

from typing import get_args

import pytest

from stage0.contract.constraints import CONSTRAINT_KEYS, ValueKind
from stage0.engine.constraints import (
    _COMBINE,
    _VALUE_PARSERS,
    ConstraintParser,
    Guardrails,
    Invalid,
    Parsed,
)
from stage0.policy import load_policy

PARSER = ConstraintParser(load_policy())


def test_every_kind_has_a_parser_and_every_key_a_rule() -> None:
    assert set(_VALUE_PARSERS) == set(get_args(ValueKind))
    assert set(CONSTRAINT_KEYS) - set(_COMBINE) == {"sandbox", "dry_run", "allowlist"}
    assert set(_COMBINE) <= set(CONSTRAINT_KEYS)
    fields = set(Guardrails.__dataclass_fields__)
    assert {name for name, _ in _COMBINE.values()} <= fields


@pytest.mark.parametrize(
    ("raw", "key", "value", "display"),
    [
        ("require_approval", "require_approval", True, "require_approval: true"),
        ("Require-Approval: YES", "require_approval", True, "require_approval: true"),
        ("mfa: off", "mfa_required", False, "mfa_required: false"),
        ("role: SRE, admin", "required_role", frozenset({"sre", "admin"}),
         "required_role: admin,sre"),
        ("env: prod", "allowed_environment", frozenset({"prod"}), "allowed_environment: prod"),
        ("change_window: Business Hours", "allowed_change_window", "business_hours",
         "allowed_change_window: business_hours"),
        ("business_hours: true", "allowed_change_window", "business_hours",
         "allowed_change_window: business_hours"),
        ("business_hours: false", "allowed_change_window", False,
         "allowed_change_window: false"),
        ("business_hours_only", "allowed_change_window", "business_hours",
         "allowed_change_window: business_hours"),
        ("max_records:50", "max_records", 50, "max_records: 50"),
        ("timeout: 2m", "timeout_seconds", 120.0, "timeout_seconds: 120"),
        ("max_cost: $2.50", "max_cost_usd", 2.5, "max_cost_usd: 2.5"),
        ("scope: prod/*", "resource_scope", "prod/*", "resource_scope: prod/*"),
        ("allowlist: ls, cat", "allowlist", "ls, cat", "allowlist: ls, cat"),
        ("no_repeat_calls", "same_tool_limit", 1, "same_tool_limit: 1"),
    ],
)
def test_parses(raw: str, key: str, value: object, display: str) -> None:
    assert PARSER.parse_one(raw) == Parsed(key, value, display)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("mfa: maybe", "`mfa_required` takes true or false, got `maybe`"),
        ("required_role:", "`required_role` needs a value"),
        ("env: ,", "`allowed_environment` needs at least one name"),
        ("max_records: -1", "`max_records` must be between 0 and 2**53 - 1, got `-1`"),
        ("max_records: lots", "`max_records` has an invalid value `lots`"),
        ("timeout: soon", "`soon` is not a duration such as `90s`, `15m` or `24h`"),
        ("max_cost_usd: -3", "`max_cost_usd` must be a non-negative amount, got `-3`"),
        ("max_cost_usd: inf", "`max_cost_usd` must be a non-negative amount, got `inf`"),
        ("allowlist", "`allowlist` needs a value"),
    ],
)
def test_invalid(raw: str, problem: str) -> None:
    assert PARSER.parse_one(raw) == Invalid(raw, problem)


def test_unknown_keys_are_not_constraints() -> None:
    assert PARSER.parse_one("colour: blue") is None
    assert PARSER.parse(["colour: blue"]).unrecognized == ["colour: blue"]


@pytest.mark.parametrize(
    ("constraints", "field", "expected"),
    [
        (["max_records: 50", "max_records: 10", "max_records: 30"], "max_records", 10),
        (["max_iterations: 3", "iterations: 9"], "max_iterations", 3),
        (["timeout: 1h", "timeout_seconds: 90"], "timeout_seconds", 90.0),
        (["same_tool_limit: 4", "no_repeat_calls"], "same_tool_limit", 1),
        (["max_cost: 5", "budget_usd: 7"], "max_cost_usd", 5.0),
        (["role: a,b,c", "role: b,c,d"], "roles", frozenset({"b", "c"})),
        (["env: dev,prod", "env: prod"], "environments", frozenset({"prod"})),
        (["mcp_servers: github,slack", "allowed_mcp: slack"], "mcp_servers",
         frozenset({"slack"})),
        (["change_window: business_hours", "business_hours", "change_window: nights"],
         "windows", ["business_hours", "nights"]),
        (["scope: prod/*", "scope: prod/*", "scope: */db"], "scopes",
         ["prod/*", "prod/*", "*/db"]),
        (["require_approval", "require_approval: false"], "require_approval", True),
        (["read_only: false", "readonly"], "read_only", True),
    ],
)
def test_several_of_a_family_give_the_tightest(
    constraints: list[str], field: str, expected: object
) -> None:
    assert getattr(PARSER.parse(constraints), field) == expected


def test_inactive_constraints_loosen_nothing() -> None:
    g = PARSER.parse(["require_approval: false", "sandbox"])
    assert g.require_approval is False
    assert g.inactive == ["require_approval: false"]
    assert g.recognized == ["sandbox: true"]


def test_loop_limited() -> None:
    assert PARSER.parse(["require_approval", "max_records: 5"]).loop_limited is False
    for limit in ("max_iterations: 3", "timeout: 30s", "same_tool_limit: 2", "max_cost: 1"):
        assert PARSER.parse([limit]).loop_limited is True, limit
