"""The caller-side constraint vocabulary (CONTRACT section 4): canonical keys and value kinds.

Aliases for these keys come from the policy pack; the keys and what their values mean are
fixed here, because callers write them.
"""

from __future__ import annotations

from typing import Literal

ValueKind = Literal["flag", "roles", "names", "window", "int", "seconds", "usd", "glob", "text"]

CONSTRAINT_KEYS: dict[str, ValueKind] = {
    "require_approval": "flag",
    "required_role": "roles",
    "allowed_environment": "names",
    "allowed_change_window": "window",
    "rollback_plan_required": "flag",
    "mfa_required": "flag",
    "require_ticket": "flag",
    "max_records": "int",
    "resource_scope": "glob",
    "allowed_mcp_servers": "names",
    "max_iterations": "int",
    "timeout_seconds": "seconds",
    "same_tool_limit": "int",
    "max_cost_usd": "usd",
    "read_only": "flag",
    "sandbox": "flag",
    "dry_run": "flag",
    "allowlist": "text",
}
"""Canonical constraint keys and the kind of value each takes."""
