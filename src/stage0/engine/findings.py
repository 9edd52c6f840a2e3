"""The accumulator every check writes to: issues (one per code), checks by family, questions."""

from __future__ import annotations

from typing import Any

from stage0.contract.codes import CODES, CodeSpec
from stage0.contract.issues import Issue

_RANK = {"NONE": 0, "DEFER": 1, "DENY": 2}


class Findings:
    __slots__ = ("break_glass", "checks", "clarifying", "issues", "lifted", "pro", "shadow",
                 "specs", "value_findings")

    def __init__(self, pro: bool) -> None:
        self.pro = pro
        self.issues: list[Issue] = []
        self.specs: list[CodeSpec] = []
        self.checks: dict[str, Any] = {}
        self.clarifying: list[str] = []
        self.value_findings: list[str] = []
        self.shadow: list[dict[str, str]] = []
        """Issues of shadow rules: reported, never part of the verdict."""
        self.break_glass: Any = None
        """The break-glass approval (``ApprovalEvidence``) this request uses, if any."""
        self.lifted: list[str] = []
        """Codes a break-glass approval kept out of the issues (window, freeze)."""

    def lift(self, code: str) -> bool:
        """Whether a break-glass approval lifts ``code`` here (and note that it did)."""
        if self.break_glass is None:
            return False
        if code not in self.lifted:
            self.lifted.append(code)
        return True

    def add(self, code: str, message: str | None = None) -> None:
        self.add_spec(CODES[code], message)

    def add_spec(self, spec: CodeSpec, message: str | None = None) -> None:
        issue = spec.issue(message, pro=self.pro)
        for i, existing in enumerate(self.issues):
            if existing.code == issue.code:
                if _RANK[issue.effect] > _RANK[existing.effect]:
                    self.issues[i] = issue
                return
        self.issues.append(issue)
        self.specs.append(spec)

    def has(self, code: str) -> bool:
        return any(i.code == code for i in self.issues)
