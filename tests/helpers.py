"""Small builders shared by the table tests."""

from __future__ import annotations

from typing import Any

from stage0.engine import Decision
from stage0.policy import CompiledPolicy
from stage0.testing import StaticApprovals, make_engine

WEEKDAY_10 = "2026-03-17T10:00:00Z"  # a Tuesday


def request(**fields: Any) -> dict[str, Any]:
    """A minimal, clean request (ALLOW under the default pack) with ``fields`` merged in."""
    body: dict[str, Any] = {
        "goal": "Summarize yesterday's support tickets for the team",
        "success_criteria": ["A summary is posted"],
        "tools": ["ticket_search"],
        "side_effects": [],
        "constraints": [],
        "context": {},
    }
    context = fields.pop("context", None)
    body.update(fields)
    if context is not None:
        body["context"] = context
    return body


def decide(
    body: dict[str, Any],
    at: str = WEEKDAY_10,
    policy: CompiledPolicy | None = None,
    approvals: StaticApprovals | None = None,
) -> Decision:
    return make_engine(at, policy=policy, approvals=approvals).check(body)


def codes(decision: Decision) -> list[str]:
    return decision.issue_codes
