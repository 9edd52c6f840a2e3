"""Schema errors as findings: each pydantic error, by its stable ``type``, at its ``loc``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from stage0.policy.lint.codes import YamlPath, dotted, schema_code
from stage0.policy.lint.document import Findings
from stage0.policy.lint.hints import allowed_keys, did_you_mean, one_of
from stage0.policy.schema import PackDocument

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def check_schema(out: Findings, raw: dict[str, Any]) -> PackDocument | None:
    """The validated document, or ``None`` after recording every schema error."""
    try:
        return PackDocument.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            _schema_error(out, raw, tuple(err["loc"]), dict(err))
        return None


def _schema_error(out: Findings, raw: dict[str, Any], path: YamlPath, err: dict[str, Any]) -> None:
    kind = err["type"]
    where = dotted(path[:-1]) or "the pack"
    code = schema_code(kind)
    if code == "PACK_UNKNOWN_KEY":
        name = str(path[-1])
        allowed = allowed_keys(path[:-1])
        out.add(code, f"unknown key `{name}` in {where}", path, key=True,
                remediation=did_you_mean(name, allowed) or one_of(allowed))
    elif code == "PACK_MISSING_KEY":
        out.add(code, f"{where} needs `{path[-1]}`", path, remediation=f"add `{path[-1]}:`")
    elif kind == "literal_error":
        _literal_error(out, raw, path, err)
    elif kind == "too_short" and path[:1] == ("change_windows",) and path[-1:] == ("days",):
        out.add("PACK_EMPTY_WINDOW", f"change window `{path[1]}` opens on no day", path,
                remediation="list days such as `[mon, tue, wed, thu, fri]`")
    else:
        text = str(err["msg"]).removeprefix("Value error, ")
        out.add(code, f"{dotted(path) or 'the pack'}: {text}", path)


def _literal_error(out: Findings, raw: dict[str, Any], path: YamlPath,
                   err: dict[str, Any]) -> None:
    value = err.get("input")
    expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
    if path[:1] == ("rules",) and path[-1] in ("effect", "pro_effect") and (
        str(value).upper() == "ALLOW"
    ):
        allow_rule(out, raw, path)
        return
    if path[:1] == ("change_windows",) and len(path) == 4 and path[2] == "days":
        hint = did_you_mean(str(value).lower(), DAYS) or one_of(expected)
    else:
        hint = did_you_mean(str(value), expected) or one_of(expected)
    out.add("PACK_BAD_VALUE", f"{dotted(path)}: `{value}` is not allowed", path, remediation=hint)


def allow_rule(out: Findings, raw: dict[str, Any], path: YamlPath) -> None:
    """``PACK_LOOSENING_RULE`` for ``effect: ALLOW`` or ``pro_effect: ALLOW`` at ``path``."""
    rules = raw.get("rules")
    rule = rules[path[1]] if isinstance(rules, list) and isinstance(path[1], int) else None
    code = rule_code(rule, dotted(path[:2]))
    out.add(
        "PACK_LOOSENING_RULE",
        f"rule `{code}`: `{path[-1]}: ALLOW` would loosen the baseline; a rule can only add "
        "a DENY, DEFER or advisory (NONE) issue",
        path,
        remediation="remove the rule: nothing in a pack turns a DENY or DEFER into an ALLOW",
    )


def rule_code(rule: Any, default: str) -> str:
    """The code a raw rule names (``code``, or its alias ``id``)."""
    if isinstance(rule, dict):
        return str(rule.get("code", rule.get("id", default)))
    return default


__all__ = ["DAYS", "allow_rule", "check_schema", "rule_code"]
