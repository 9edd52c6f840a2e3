"""Operator rules written in CEL (Common Expression Language), compiled at load time.

The binding is ``cel-expr-python`` (Google's C++ CEL runtime). It measured about 12 µs per
evaluation of a typical rule, against about 39 µs for ``common-expression-language``, and it
type-checks expressions at compile time, so a typo fails when the pack loads, not mid-request.

Variables visible to a condition:

``goal`` (string), ``tools`` and ``side_effects`` (normalised names), ``constraints`` (list of
strings), ``buckets`` (matched high-risk buckets), ``environment`` (string or null), ``pro``
(bool), ``context`` (the request's context as a map, unknown keys included), ``arguments``
(map), ``now`` (timestamp of evaluation), ``tenant`` (the tenant of the authenticated key; in
process, ``context.tenant_id`` or ``default``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel

from stage0.contract.codes import CodeSpec, Kind

_T = cel.Type
VARIABLES = {
    "goal": _T.STRING,
    "tools": _T.List(_T.STRING),
    "side_effects": _T.List(_T.STRING),
    "constraints": _T.List(_T.STRING),
    "buckets": _T.List(_T.STRING),
    "environment": _T.DYN,
    "pro": _T.BOOL,
    "context": _T.Map(_T.STRING, _T.DYN),
    "arguments": _T.Map(_T.STRING, _T.DYN),
    "now": _T.TIMESTAMP,
    "tenant": _T.STRING,
}
_ENV = cel.NewEnv(variables=VARIABLES)
# The binding reports compile errors as text only: ``<input>:LINE:COLUMN: what``, one per error.
_POSITION = re.compile(r"<input>:(\d+):(\d+): ([^\n]*)")
_UNDECLARED = re.compile(r"undeclared reference to '([^']+)'")


class CelRuleError(ValueError):
    """A custom rule's condition does not compile or does not return a bool.

    ``str()`` is ``rule `CODE`: <the binding's full message>``. The binding gives no structured
    error, so its text is read here, once: ``line`` and ``column`` (1-based, within the
    condition) and ``summary`` (one line) describe the first error, and ``undeclared`` names the
    first undeclared variable, if any.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"rule `{code}`: {detail}")
        self.code = code
        self.detail = detail
        match = _POSITION.search(detail)
        self.line = int(match.group(1)) if match else None
        self.column = int(match.group(2)) if match else None
        self.summary = (
            match.group(3).replace(" (in container '')", "") if match else " ".join(detail.split())
        )
        undeclared = _UNDECLARED.search(detail)
        self.undeclared = undeclared.group(1) if undeclared else None


class CelEvaluationError(RuntimeError):
    """A custom rule failed while evaluating; the engine turns it into a fail-closed DENY."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    spec: CodeSpec
    source: str
    when_context: tuple[str, ...]
    _expr: Any
    shadow: bool = False
    index: int = 0
    tool_globs: tuple[str, ...] = ()
    buckets: frozenset[str] = frozenset()

    def applies(self, context: Mapping[str, Any]) -> bool:
        return all(context.get(k) is not None for k in self.when_context)

    def evaluate(self, data: Mapping[str, Any]) -> bool:
        value = self._expr.eval(data=data)
        if value.type() == _T.BOOL:
            return bool(value.value())
        raise CelEvaluationError(
            f"rule `{self.spec.code}` did not yield a bool: {value.plain_value()}"
        )


def compile_rule(
    code: str,
    condition: str,
    *,
    when_context: tuple[str, ...],
    severity: str,
    effect: str,
    pro_effect: str | None,
    message: str,
    remediation: str,
    question: str | None,
    shadow: bool = False,
    index: int = 0,
    tool_globs: tuple[str, ...] = (),
    buckets: frozenset[str] = frozenset(),
) -> CompiledRule:
    try:
        expr = _ENV.compile(condition)
    except RuntimeError as exc:
        raise CelRuleError(code, str(exc)) from None
    rtype = expr.return_type()
    if rtype not in (_T.BOOL, _T.DYN):
        raise CelRuleError(code, f"the condition returns {rtype.name()}, not bool")
    kind = {"DENY": Kind.VIOLATION, "DEFER": Kind.EVIDENCE}.get(effect, Kind.ADVISORY)
    spec = CodeSpec(
        code=code,
        kind=kind,
        severity=severity,  # type: ignore[arg-type]  # validated by the pack schema
        effect=effect,  # type: ignore[arg-type]  # validated by the pack schema
        pro_effect=(pro_effect or effect),  # type: ignore[arg-type]  # validated by the schema
        message=message,
        remediation=remediation,
        question=question,
    )
    return CompiledRule(spec, condition, when_context, expr, shadow, index, tool_globs, buckets)
