"""The combining rule, as one truth table: DENY over DEFER over ALLOW, failing closed.

The verdict follows the strictest effect among the issues (the ranking is
:data:`stage0.contract.effects.EFFECT_RANK`; no issues at all is ``NONE``). An issue of kind
``error`` means the evaluation itself failed, and the decision is ``ERROR`` whatever the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from stage0.contract.codes import ERROR_CODES
from stage0.contract.effects import stricter
from stage0.contract.issues import EffectName, Issue
from stage0.contract.response import DecisionCode, Verdict

TABLE: Final[Mapping[tuple[bool, EffectName], tuple[Verdict, DecisionCode]]] = MappingProxyType({
    # (any issue of kind error, strictest effect): (verdict, decision)
    (True, "DENY"): ("DENY", "ERROR"),
    (True, "DEFER"): ("DENY", "ERROR"),
    (True, "NONE"): ("DENY", "ERROR"),
    (False, "DENY"): ("DENY", "NO_GO"),
    (False, "DEFER"): ("DEFER", "DEFER"),
    (False, "NONE"): ("ALLOW", "GO"),
})
"""Every row: each of the two flags' values with each effect."""


def combine(issues: Iterable[Issue]) -> tuple[Verdict, DecisionCode]:
    """The verdict and decision for ``issues`` (the engine does the same in its one pass over
    the issues, :func:`stage0.engine.respond.respond`)."""
    error = False
    strictest: EffectName = "NONE"
    for issue in issues:
        error = error or issue.code in ERROR_CODES
        strictest = stricter(strictest, issue.effect)
    return TABLE[error, strictest]
