"""The readable, coloured ``--format text`` rendering of a decision."""

from __future__ import annotations

from typing import Any

import click

_VERDICT_COLOUR = {"ALLOW": "green", "DEFER": "yellow", "DENY": "red"}
_EFFECT_COLOUR = {"DENY": "red", "DEFER": "yellow", "NONE": "bright_black"}


def render_text(body: dict[str, Any]) -> str:
    verdict = body["verdict"]
    lines = [
        click.style(f"{verdict}", fg=_VERDICT_COLOUR.get(verdict, "red"), bold=True)
        + f"  ({body['decision']})  risk {body['risk_score']}"
        + ("  high-risk" if body["high_risk"] else ""),
        f"policy    {body['policy_version']}",
        f"request   {body['request_id']}",
    ]
    if body["buckets"]:
        lines.append(f"buckets   {', '.join(body['buckets'])}")
    if body.get("environment"):
        lines.append(f"env       {body['environment']}")
    if body["issues"]:
        lines.append("")
        lines.append(click.style("issues", bold=True))
        for issue in body["issues"]:
            effect = issue["effect"]
            tag = click.style(f"{effect:5}", fg=_EFFECT_COLOUR.get(effect, "red"))
            lines.append(f"  {tag} {issue['code']} [{issue['severity']}]: {issue['message']}")
            lines.append(f"        fix: {issue['remediation']}")
    for title, key in (("to move this forward", "defer_questions"),
                       ("to clarify", "clarifying_questions")):
        if body[key]:
            lines.append("")
            lines.append(click.style(title, bold=True))
            lines.extend(f"  - {q}" for q in body[key])
    if body["guardrails"]:
        lines.append("")
        lines.append(click.style("guardrails", bold=True))
        lines.extend(f"  - {g}" for g in body["guardrails"])
    unrecognized = body["guardrail_checks"].get("unrecognized_constraints") or []
    if unrecognized:
        lines.append("  unrecognised (no effect): " + ", ".join(unrecognized))
    lines.append("")
    lines.append(body["decision_trace_summary"])
    return "\n".join(lines)
