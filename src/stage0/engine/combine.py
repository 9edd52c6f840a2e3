"""The combining rule, as one truth table: DENY over DEFER over ALLOW, failing closed.

| any issue of kind error | any effect DENY | any effect DEFER | verdict | decision |
|-------------------------|-----------------|------------------|---------|----------|
| yes                     | -               | -                | DENY    | ERROR    |
| no                      | yes             | -                | DENY    | NO_GO    |
| no                      | no              | yes              | DEFER   | DEFER    |
| no                      | no              | no               | ALLOW   | GO       |
"""

from __future__ import annotations

from collections.abc import Iterable

from stage0.contract.codes import ERROR_CODES
from stage0.contract.issues import Issue
from stage0.contract.response import Decision, Verdict


def combine(issues: Iterable[Issue]) -> tuple[Verdict, Decision]:
    deny = defer = error = False
    for issue in issues:
        if issue.code in ERROR_CODES:
            error = True
        if issue.effect == "DENY":
            deny = True
        elif issue.effect == "DEFER":
            defer = True
    return combine_flags(error, deny, defer)


def combine_flags(error: bool, deny: bool, defer: bool) -> tuple[Verdict, Decision]:
    """The table's rows, for a caller that has already looked at the issues."""
    if error:
        return "DENY", "ERROR"
    if deny:
        return "DENY", "NO_GO"
    if defer:
        return "DEFER", "DEFER"
    return "ALLOW", "GO"
