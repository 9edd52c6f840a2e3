"""The combining rule's truth table, one test per arm."""

from __future__ import annotations

import pytest

from stage0.contract import CODES
from stage0.contract.issues import Issue
from stage0.engine.combine import combine

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
