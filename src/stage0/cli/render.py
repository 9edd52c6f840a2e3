"""The readable, coloured ``--format text`` rendering of a decision."""

from __future__ import annotations

import click

from stage0.contract.response import Decision

_VERDICT_COLOUR = {"ALLOW": "green", "DEFER": "yellow", "DENY": "red"}
_EFFECT_COLOUR = {"DENY": "red", "DEFER": "yellow", "NONE": "bright_black"}


def render_text(decision: Decision) -> str:
    body = decision.body
    verdict = decision.verdict
    lines = [
        click.style(f"{verdict}", fg=_VERDICT_COLOUR.get(verdict, "red"), bold=True)
        + f"  ({decision.decision})  risk {decision.risk_score}"
        + ("  high-risk" if body["high_risk"] else ""),
        f"policy    {decision.policy_version}",
        f"request   {decision.request_id}",
    ]
    if decision.buckets:
        lines.append(f"buckets   {', '.join(decision.buckets)}")
    if decision.environment:
        lines.append(f"env       {decision.environment}")
    if decision.issues:
        lines.append("")
        lines.append(click.style("issues", bold=True))
        for issue in decision.issues:
            effect = issue["effect"]
            tag = click.style(f"{effect:5}", fg=_EFFECT_COLOUR.get(effect, "red"))
            lines.append(f"  {tag} {issue['code']} [{issue['severity']}]: {issue['message']}")
            lines.append(f"        fix: {issue['remediation']}")
    for title, questions in (("to move this forward", body["defer_questions"]),
                             ("to clarify", body["clarifying_questions"])):
        if questions:
            lines.append("")
            lines.append(click.style(title, bold=True))
            lines.extend(f"  - {q}" for q in questions)
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
