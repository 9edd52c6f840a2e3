"""The combining rule's truth table, one test per arm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from stage0.contract import CODES
from stage0.contract.codes import ERROR_CODES
from stage0.contract.effects import VERDICT_OF
from stage0.contract.issues import EffectName, Issue
from stage0.contract.request import parse_instant
from stage0.engine.combine import TABLE, combine
from stage0.testing import make_engine

DENY = CODES["ROLE_NOT_AUTHORIZED"].issue()
DEFER = CODES["TICKET_REQUIRED"].issue()
ADVISORY = CODES["SENSITIVE_TOOLS_NEED_CONSTRAINTS"].issue()
LOW = CODES["MISSING_SUCCESS_CRITERIA"].issue()
ERROR = CODES["POLICY_EVALUATION_FAILED"].issue()


@pytest.mark.parametrize(
    ("issues", "expected"),
    [
        ([], ("ALLOW", "GO")),
        ([LOW, ADVISORY], ("ALLOW", "GO")),
        ([DEFER], ("DEFER", "DEFER")),
        ([DEFER, LOW], ("DEFER", "DEFER")),
        ([DENY], ("DENY", "NO_GO")),
        ([DEFER, DENY], ("DENY", "NO_GO")),
        ([ERROR], ("DENY", "ERROR")),
        ([DEFER, ERROR, DENY], ("DENY", "ERROR")),
    ],
    ids=["none", "advisory only", "defer", "defer+low", "deny", "deny over defer", "error",
         "error over all"],
)
def test_truth_table(issues: list[Issue], expected: tuple[str, str]) -> None:
    assert combine(issues) == expected


ROWS = [
    # (any issue of kind error, strictest effect, verdict, decision): the rule, spelled out
    (True, "DENY", "DENY", "ERROR"),
    (True, "DEFER", "DENY", "ERROR"),
    (True, "NONE", "DENY", "ERROR"),
    (False, "DENY", "DENY", "NO_GO"),
    (False, "DEFER", "DEFER", "DEFER"),
    (False, "NONE", "ALLOW", "GO"),
]
_OF_EFFECT: dict[EffectName, Issue] = {"DENY": DENY, "DEFER": DEFER, "NONE": ADVISORY}


def _error_with(effect: EffectName) -> Issue:
    """An error-kind issue carrying ``effect`` (the catalogue gives every error code DENY; the
    table still answers for the others, failing closed)."""
    return Issue(ERROR.code, ERROR.severity, ERROR.message, effect, ERROR.remediation)


@pytest.mark.parametrize(("error", "effect", "verdict", "decision"), ROWS,
                         ids=[f"error={e} {eff}" for e, eff, _, _ in ROWS])
def test_each_row(error: bool, effect: EffectName, verdict: str, decision: str) -> None:
    assert TABLE[error, effect] == (verdict, decision)
    issues = [_error_with(effect)] if error else [_OF_EFFECT[effect], LOW]
    assert combine(issues) == (verdict, decision)


def test_the_table_has_every_row_and_no_other() -> None:
    assert set(TABLE) == {(e, eff) for e in (True, False) for eff in get_args(EffectName)}
    assert len(ROWS) == len(TABLE)


def test_without_an_error_the_verdict_is_the_strictest_effects() -> None:
    for effect in get_args(EffectName):
        assert TABLE[False, effect][0] == VERDICT_OF[effect]


def test_engine_decisions_follow_the_table() -> None:
    """The engine's one pass over the issues gives what :func:`combine` gives."""
    engine = make_engine("2026-03-17T10:00:00Z")
    for path in sorted((Path(__file__).parent.parent / "examples").glob("*.json")):
        doc = json.loads(path.read_text("utf-8"))
        body = json.loads(engine.check(doc["request"], at=parse_instant(doc["evaluated_at"]))
                          .to_json())
        issues = [Issue(**i) for i in body["issues"]]
        assert combine(issues) == (body["verdict"], body["decision"]), path.name
        assert any(i.code in ERROR_CODES for i in issues) is (body["decision"] == "ERROR")


def test_pro_changes_only_advisory_effects() -> None:
    sensitive = CODES["SENSITIVE_TOOLS_NEED_CONSTRAINTS"]
    assert sensitive.issue(pro=False).effect == "NONE"
    assert sensitive.issue(pro=True).effect == "DENY"
    assert CODES["UNCLEAR_VALUE_SIGNAL"].issue(pro=True).effect == "DEFER"
    for spec in CODES.values():
        if spec.severity == "HIGH":
            assert spec.issue(pro=False).effect == "DENY", spec.code
        if spec.kind == "evidence":
            assert spec.issue(pro=False).effect == "DEFER", spec.code
        if spec.severity == "LOW":
            assert spec.issue(pro=True).effect == "NONE", spec.code
