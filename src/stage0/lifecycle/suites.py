"""Policy test suites: cases with an expected outcome, run against a pack (``stage0 policy test``).

A suite is YAML (or JSON) with a top-level ``cases:`` list. Each case has the shape of a worked
example (``examples/*.json``)::

    cases:
      - name: deploy outside the window defers
        evaluated_at: "2026-03-21T10:00:00Z"
        request: {goal: ..., tools: [...], constraints: [...], context: {...}}
        expect:
          verdict: DEFER
          decision: DEFER
          issues_include: [OUTSIDE_CHANGE_WINDOW]
          issues_exclude: [SIDE_EFFECTS_NEED_GUARDRAILS]
          buckets_include: [production_control_plane]

A file holding one case at the top level (a worked example) is a suite of one. Every case runs on
a fresh engine (as :func:`stage0.testing.make_engine` makes one: in-memory run state, no approval
store) whose clock says ``evaluated_at``, so runs are deterministic and cases do not share loop
counters.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stage0.contract import RequestValidationError
from stage0.contract.request import parse_instant
from stage0.engine import Engine, InMemoryRunState
from stage0.policy.compiled import CompiledPolicy

VERDICTS = ("ALLOW", "DEFER", "DENY")
EXPECT_KEYS = ("verdict", "decision", "issues_include", "issues_exclude", "buckets_include")
_LIST_KEYS = EXPECT_KEYS[2:]


class SuiteError(ValueError):
    """A suite file cannot be read or does not have the suite shape."""


@dataclass(frozen=True, slots=True)
class Expect:
    verdict: str | None = None
    decision: str | None = None
    issues_include: tuple[str, ...] = ()
    issues_exclude: tuple[str, ...] = ()
    buckets_include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    request: dict[str, Any]
    evaluated_at: str
    expect: Expect
    source: str
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One unmet expectation: ``what`` (an ``expect`` key), what was expected and what came."""

    what: str
    expected: str
    actual: str

    def describe(self) -> str:
        if self.what in ("verdict", "decision"):
            return f"{self.what}: expected {self.expected}, got {self.actual}"
        label = {
            "issues_include": "missing issues",
            "issues_exclude": "unexpected issues",
            "buckets_include": "missing buckets",
        }[self.what]
        return f"{label}: {self.expected} (got: {self.actual or 'none'})"


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    mismatches: tuple[Mismatch, ...] = ()
    error: str | None = None
    verdict: str | None = None
    decision: str | None = None
    codes: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.mismatches


@dataclass(frozen=True, slots=True)
class SuiteReport:
    policy_version: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0


# -- loading --------------------------------------------------------------------------------------


def load_suite(path: str | Path) -> list[Case]:
    """The cases of the suite at ``path``; raises :class:`SuiteError` naming what is wrong."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SuiteError(f"{p}: cannot read the file: {reason}") from None
    return parse_suite(text, source=str(p), is_json=p.suffix.lower() == ".json")


def parse_suite(text: str, *, source: str = "<suite>", is_json: bool = False) -> list[Case]:
    lines: list[int | None]
    if is_json:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{source}:{exc.lineno}:{exc.colno}"
            raise SuiteError(f"{where}: not valid JSON: {exc.msg}") from None
        items = _case_items(doc, source)
        lines = [None] * len(items)
    else:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            doc = loader.construct_document(root) if root is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            problem = getattr(exc, "problem", None) or exc
            raise SuiteError(f"{where}: not valid YAML: {problem}") from None
        finally:
            loader.dispose()
        items = _case_items(doc, source)
        lines = _case_lines(root, len(items))
    if not items:
        raise SuiteError(f"{source}: the suite has no cases")
    return [_case(item, i, source, lines[i]) for i, item in enumerate(items)]


def _case_items(doc: Any, source: str) -> list[Any]:
    if isinstance(doc, dict) and "cases" in doc:
        cases = doc["cases"]
        if not isinstance(cases, list):
            raise SuiteError(f"{source}: `cases` must be a list of cases")
        return cases
    if isinstance(doc, dict) and "request" in doc:
        return [doc]
    raise SuiteError(
        f"{source}: a suite is a mapping with a `cases:` list, or a single case with `request`"
    )


def _case_lines(root: yaml.Node | None, count: int) -> list[int | None]:
    """The 1-based line of each case in a YAML suite (of the document for a single case)."""
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "cases":
                if isinstance(value, yaml.SequenceNode):
                    return [n.start_mark.line + 1 for n in value.value]
                break
        else:
            return [root.start_mark.line + 1] * count
    return [None] * count


def _case(item: Any, index: int, source: str, line: int | None) -> Case:
    where = f"{source}:{line}" if line is not None else f"{source}: case {index + 1}"
    if not isinstance(item, dict):
        raise SuiteError(f"{where}: a case must be a mapping")
    name = item.get("name", f"case {index + 1}")
    request = item.get("request")
    at = item.get("evaluated_at")
    expect = item.get("expect")
    if not isinstance(request, dict):
        raise SuiteError(f"{where}: case `{name}` needs `request:`, a mapping")
    if not isinstance(at, str):
        raise SuiteError(
            f"{where}: case `{name}` needs `evaluated_at:`, an ISO-8601 time such as "
            "\"2026-03-17T10:00:00Z\" (quoted)"
        )
    try:
        parse_instant(at)
    except ValueError as exc:
        raise SuiteError(f"{where}: case `{name}`: `evaluated_at`: {exc}") from None
    if not isinstance(expect, dict) or not expect:
        raise SuiteError(f"{where}: case `{name}` needs `expect:` with at least one of "
                         + ", ".join(f"`{k}`" for k in EXPECT_KEYS))
    return Case(str(name), request, at, _expect(expect, f"{where}: case `{name}`"), source, line)


def _expect(raw: dict[str, Any], where: str) -> Expect:
    for key in raw:
        if key not in EXPECT_KEYS:
            close = difflib.get_close_matches(str(key), EXPECT_KEYS, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise SuiteError(f"{where}: unknown key `expect.{key}`{hint}")
    verdict = raw.get("verdict")
    if verdict is not None and verdict not in VERDICTS:
        raise SuiteError(f"{where}: `expect.verdict` must be one of {', '.join(VERDICTS)}")
    decision = raw.get("decision")
    lists: dict[str, tuple[str, ...]] = {}
    for key in _LIST_KEYS:
        value = raw.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SuiteError(f"{where}: `expect.{key}` must be a list of names")
        lists[key] = tuple(value)
    return Expect(
        verdict=verdict,
        decision=str(decision) if decision is not None else None,
        issues_include=lists["issues_include"],
        issues_exclude=lists["issues_exclude"],
        buckets_include=lists["buckets_include"],
    )


# -- running --------------------------------------------------------------------------------------


def run_case(case: Case, policy: CompiledPolicy) -> CaseResult:
    """Decide ``case.request`` at ``case.evaluated_at`` on a fresh engine and compare."""
    at = parse_instant(case.evaluated_at)
    ids = (f"00000000-0000-4000-8000-{n:012d}" for n in itertools.count(1))
    engine = Engine(policy, run_state=InMemoryRunState(), clock=lambda: at, ids=ids.__next__)
    try:
        decision = engine.check(copy.deepcopy(case.request))
    except RequestValidationError as exc:
        return CaseResult(case, error=exc.summary())
    body = decision.body
    codes = tuple(str(i["code"]) for i in body.get("issues", []))
    buckets = tuple(str(b) for b in body.get("buckets", []))
    exp = case.expect
    found: list[Mismatch] = []
    if exp.verdict is not None and body.get("verdict") != exp.verdict:
        found.append(Mismatch("verdict", exp.verdict, str(body.get("verdict"))))
    if exp.decision is not None and body.get("decision") != exp.decision:
        found.append(Mismatch("decision", exp.decision, str(body.get("decision"))))
    missing = [c for c in exp.issues_include if c not in codes]
    if missing:
        found.append(Mismatch("issues_include", _names(missing), _names(codes)))
    unexpected = [c for c in exp.issues_exclude if c in codes]
    if unexpected:
        found.append(Mismatch("issues_exclude", _names(unexpected), _names(codes)))
    absent = [b for b in exp.buckets_include if b not in buckets]
    if absent:
        found.append(Mismatch("buckets_include", _names(absent), _names(buckets)))
    return CaseResult(
        case,
        tuple(found),
        verdict=str(body.get("verdict")),
        decision=str(body.get("decision")),
        codes=codes,
        buckets=buckets,
        reason=str(body["reason"]) if body.get("reason") is not None else None,
    )


def run_cases(cases: Iterable[Case], policy: CompiledPolicy) -> SuiteReport:
    return SuiteReport(policy.policy_version, tuple(run_case(c, policy) for c in cases))


def run_suites(paths: Sequence[str | Path], policy: CompiledPolicy) -> SuiteReport:
    """Load every suite first (a malformed one raises :class:`SuiteError`), then run them all."""
    cases = [case for path in paths for case in load_suite(path)]
    return run_cases(cases, policy)


def _names(names: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(names))


__all__ = [
    "Case",
    "CaseResult",
    "Expect",
    "Mismatch",
    "SuiteError",
    "SuiteReport",
    "load_suite",
    "parse_suite",
    "run_case",
    "run_cases",
    "run_suites",
]
