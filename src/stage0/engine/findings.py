"""The accumulator every check writes to: issues (one per code), checks by family, questions."""

from __future__ import annotations

from typing import Any

from stage0.contract.codes import CODES, CodeSpec
from stage0.contract.effects import is_stricter
from stage0.contract.issues import Issue


class Findings:
    __slots__ = ("_at", "break_glass", "checks", "clarifying", "issues", "lifted", "pro",
                 "shadow", "specs", "value_findings")

    def __init__(self, pro: bool) -> None:
        self.pro = pro
        self.issues: list[Issue] = []
        self._at: dict[str, int] = {}
        """Position of each code in ``issues``."""
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
        if self.break_glass is None or code not in self.break_glass.lifts:
            return False
        if code not in self.lifted:
            self.lifted.append(code)
        return True

    def add(self, code: str, message: str | None = None) -> None:
        spec = CODES[code]
        if message:  # spec.issue(message, pro=self.pro), without the extra call
            self._put(spec, Issue(spec.code, spec.severity, message,
                                  spec.pro_effect if self.pro else spec.effect, spec.remediation))
        else:
            self._put(spec, spec.default_issue(self.pro))

    def add_spec(self, spec: CodeSpec, message: str | None = None) -> None:
        self._put(spec, spec.issue(message, pro=self.pro) if message
                  else spec.default_issue(self.pro))

    def _put(self, spec: CodeSpec, issue: Issue) -> None:
        code = issue.code
        i = self._at.get(code)
        if i is not None:
            if is_stricter(issue.effect, self.issues[i].effect):  # one per code: the strictest
                self.issues[i] = issue
            return
        self._at[code] = len(self.issues)
        self.issues.append(issue)
        self.specs.append(spec)

    def has(self, code: str) -> bool:
        return code in self._at
