"""Lint checks on custom rules: built-in codes, CEL conditions, and rules that read as loosening.

Loosening: a custom rule can only *add* an issue whose effect is ``DENY``, ``DEFER`` or ``NONE``
(an advisory); nothing in a pack can turn a baseline DENY or DEFER into an ALLOW, so loosening is
impossible by construction. What a pack *can* write that reads as loosening is caught:
``effect: ALLOW`` (``PACK_LOOSENING_RULE``, an error), a ``pro_effect`` weaker than ``effect``
(strict mode would be laxer: ``PACK_LOOSENING_RULE``), and a rule that never blocks although it is
``HIGH`` or named like a block (``PACK_RULE_NOT_ENFORCED``, a warning; shadow rules are exempt,
since never blocking is what ``mode: shadow`` means).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stage0.contract.codes import CODES
from stage0.contract.effects import EFFECT_RANK, is_stricter
from stage0.policy.cel import CelRuleError, compile_rule
from stage0.policy.lint.codes import YamlPath
from stage0.policy.lint.document import Findings
from stage0.policy.lint.hints import cel_hint
from stage0.policy.lint.schema import allow_rule, rule_code
from stage0.policy.schema import CustomRule

_BLOCKING_WORDS = frozenset(
    {"DENY", "DENIED", "BLOCK", "BLOCKED", "FORBID", "FORBIDDEN", "PROHIBIT", "PROHIBITED",
     "DISALLOW", "DISALLOWED", "REJECT", "REJECTED", "NEVER"}
)
_BLOCKING_MESSAGE = re.compile(r"\b(is|are|be) (denied|blocked|forbidden|prohibited|rejected)\b"
                               r"|\bnot (allowed|permitted)\b", re.IGNORECASE)


def check_rules(out: Findings, raw: dict[str, Any]) -> None:
    """Each rule of the raw document: its code, its condition and its effects."""
    rules = raw.get("rules")
    if not isinstance(rules, list):
        return
    for i, rule in enumerate(rules):
        if isinstance(rule, dict):
            _rule(out, raw, ("rules", i), rule)


def _rule(out: Findings, raw: dict[str, Any], path: YamlPath, rule: dict[str, Any]) -> None:
    code = rule_code(rule, f"rules[{path[1]}]")
    code_key = "code" if "code" in rule or "id" not in rule else "id"
    if code in CODES:
        out.add("PACK_BUILTIN_CODE", f"`{code}` is a built-in issue code", (*path, code_key),
                remediation=f"choose a code of your own, such as `ACME_{code}`")
    condition_key = "condition" if "condition" in rule or "when" not in rule else "when"
    condition = rule.get(condition_key)
    if isinstance(condition, str):
        try:
            compile_rule(code, condition, when_context=(), severity="HIGH", effect="DENY",
                         pro_effect=None, message="", remediation="", question=None)
        except CelRuleError as exc:
            bad_cel(out, exc, (*path, condition_key))
    defaults = CustomRule.model_fields
    effect = str(rule.get("effect", defaults["effect"].default))
    pro_effect = str(rule.get("pro_effect") or effect)
    for key, value in (("effect", effect), ("pro_effect", pro_effect)):
        if value.upper() == "ALLOW" and key in rule:
            allow_rule(out, raw, (*path, key))
    if effect in EFFECT_RANK and pro_effect in EFFECT_RANK:
        _effects(out, path, rule, code, effect, pro_effect)


def _effects(out: Findings, path: YamlPath, rule: dict[str, Any], code: str, effect: str,
             pro_effect: str) -> None:
    if is_stricter(effect, pro_effect):
        out.add(
            "PACK_LOOSENING_RULE",
            f"rule `{code}`: `pro_effect: {pro_effect}` is weaker than `effect: {effect}`, "
            "so a strict (`pro`) request would be let off",
            (*path, "pro_effect"),
            remediation=f"`pro` can only tighten: use `pro_effect: {effect}` or drop it",
        )
        return
    severity = str(rule.get("severity", CustomRule.model_fields["severity"].default))
    if pro_effect != "NONE" or rule.get("mode") == "shadow":
        return
    if severity == "HIGH" or _named_like_a_block(code, rule.get("message")):
        why = "is HIGH" if severity == "HIGH" else "reads like a block"
        out.add(
            "PACK_RULE_NOT_ENFORCED",
            f"rule `{code}` {why} but its effect is NONE: it is reported and never blocks",
            (*path, "effect") if "effect" in rule else path,
            remediation="set `effect: DENY` or `DEFER` to enforce it, or lower `severity`",
        )


def bad_cel(out: Findings, error: CelRuleError, path: YamlPath) -> None:
    """``PACK_BAD_CEL``, one line, at the offending character when the YAML allows it (a
    one-line plain or quoted scalar)."""
    node = out.node(path)
    mark: tuple[int, int] | None = None
    if (
        error.line == 1 and error.column is not None and isinstance(node, yaml.ScalarNode)
        and path and path[-1] in ("condition", "when") and node.style in (None, '"', "'")
        and node.start_mark.line == node.end_mark.line
    ):
        quote = 1 if node.style else 0
        mark = (node.start_mark.line, node.start_mark.column + quote + error.column - 1)
    out.add("PACK_BAD_CEL", f"rule `{error.code}`: {error.summary}", path,
            remediation=cel_hint(error), mark=mark)


def _named_like_a_block(code: str, message: Any) -> bool:
    if _BLOCKING_WORDS & set(code.upper().split("_")):
        return True
    return isinstance(message, str) and bool(_BLOCKING_MESSAGE.search(message))


__all__ = ["bad_cel", "check_rules"]
