"""The pack's custom CEL rules (``rules:``), run after the built-in checks.

A rule runs only when every ``when_context`` key is present; a shadow rule is reported in
``shadow_issues`` and never decides, even when it fails.
"""

from __future__ import annotations

from typing import Any

from stage0.engine.facts import Facts
from stage0.engine.findings import Findings
from stage0.policy.compiled import CompiledPolicy


def _rule_input(f: Facts, constraints: list[str]) -> dict[str, Any]:
    """What a CEL condition sees."""
    return {
        "goal": f.request.goal,
        "tools": list(f.tools),
        "side_effects": list(f.side_effects),
        "constraints": constraints,
        "buckets": list(f.buckets),
        "environment": f.environment,
        "pro": f.pro,
        "context": f.context.model_dump(mode="json", exclude_none=True),
        "arguments": f.request.arguments or {},
        "now": f.at,
        "tenant": f.tenant,
    }


def check_custom_rules(
    out: Findings, f: Facts, policy: CompiledPolicy, constraints: list[str]
) -> None:
    data: dict[str, Any] | None = None  # made once, for the first rule that runs
    ctx = f.context
    for rule in policy.rules_for(f.tools, f.buckets):  # indexed by tool and bucket
        missing = False
        for key in rule.when_context:  # a loop, not all(<generator>): this runs per rule
            if getattr(ctx, key, None) is None:
                missing = True
                break
        if missing:
            continue
        if data is None:
            data = _rule_input(f, constraints)
        if rule.shadow:
            try:
                fired = rule.evaluate(data)
            except Exception as exc:  # noqa: BLE001 - a shadow rule never decides, even failing
                out.shadow.append({"code": rule.spec.code, "error": str(exc)[:300]})
                continue
            if fired:
                out.shadow.append(rule.spec.issue(pro=f.pro).to_dict())
            continue
        if rule.evaluate(data):
            out.add_spec(rule.spec)
