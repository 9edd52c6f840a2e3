"""The lint codes of policy packs, and the located issue a lint finding is.

A finding is the project's one :class:`~stage0.contract.issues.Issue` (stable ``code``,
``severity``, ``effect``, ``message``, ``remediation``) wrapped with where it is
(:class:`Located`). The wire ``Issue`` stays as the ``/check`` contract fixes it: the location is
beside it, not in it.

Every code is a :class:`~stage0.contract.codes.CodeSpec` of its own catalogue,
:data:`LINT_CODES` (documented in docs/policy.md). An error is ``HIGH``/``DENY``: the pack cannot
be loaded. A warning is ``MEDIUM``/``NONE``, an advisory: printed, not failing, except under
``--strict``, which is to lint what ``pro`` is to a decision (a warning's ``pro_effect`` is
``DENY``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stage0.contract.codes import CodeSpec, Kind
from stage0.contract.issues import Issue

YamlPath = tuple[str | int, ...]
"""Keys and list indexes from the top of the document, such as ``("rules", 0, "condition")``."""


def _error(code: str, meaning: str, remediation: str) -> CodeSpec:
    return CodeSpec(code, Kind.ERROR, "HIGH", "DENY", "DENY", meaning, remediation)


def _warning(code: str, meaning: str, remediation: str) -> CodeSpec:
    return CodeSpec(code, Kind.ADVISORY, "MEDIUM", "NONE", "DENY", meaning, remediation)


_ALL = [
    _error("PACK_UNREADABLE", "the file cannot be read",
           "Check the path and its permissions; a pack is UTF-8 text"),
    _error("PACK_BAD_YAML", "not YAML, several documents, or not a mapping at the top",
           "A pack is one YAML mapping that starts with `apiVersion: stage0/v1`"),
    _error("PACK_DUPLICATE_KEY", "a key appears twice in one mapping; YAML keeps the last",
           "Merge the two entries into one"),
    _error("PACK_UNKNOWN_KEY", "a key the format does not have (a typo, usually)",
           "Remove the key or correct its name (docs/policy.md lists every setting)"),
    _error("PACK_MISSING_KEY", "a required key is absent", "Add the key"),
    _error("PACK_BAD_VALUE", "a value of the wrong type or outside its range",
           "Use a value of the type and range docs/policy.md gives for the setting"),
    _error("PACK_BAD_TIMEZONE", "not an IANA time zone", "Use a zone such as `Europe/Berlin`"),
    _error("PACK_BAD_CEL", "a rule condition does not compile or does not return a bool",
           "Fix the condition: it must compile and return a bool over the rule variables"),
    _error("PACK_BUILTIN_CODE", "a rule reuses a built-in issue code",
           "Choose a code of your own, such as `ACME_...`"),
    _error("PACK_UNKNOWN_CONSTRAINT", "a `constraint_aliases` key is not a constraint key",
           "Use a constraint key (docs/constraints.md)"),
    _error("PACK_UNKNOWN_WINDOW", "an alias implies a change window the pack does not define",
           "Define the window under `change_windows`, or correct the alias"),
    _error("PACK_EMPTY_WINDOW", "a change window with no days, or with `start` equal to `end`",
           "List its days; a window past midnight ends before it starts (`22:00`-`02:00`)"),
    _error("PACK_DUPLICATE_WINDOW", "two window names that fold to the same name",
           "Rename or merge them: names fold case, spaces and hyphens"),
    _warning("PACK_OVERLAPPING_WINDOWS", "two windows are open at the same time",
             "Fine if meant; a request naming both must fall in both"),
    _error("PACK_LOOSENING_RULE", "a rule that reads as loosening: ALLOW, weaker pro_effect",
           "Remove the rule, or give it an effect `pro` does not weaken"),
    _warning("PACK_RULE_NOT_ENFORCED", "a HIGH or blocking-named rule whose effect is NONE",
             "Set `effect: DENY` or `DEFER` to enforce it, or lower `severity`"),
    _error("PACK_BAD_EXTENDS", "`extends:` names a pack other than the built-in one",
           "Use `extends: stage0-policy-pack`, or write a whole pack"),
    _error("PACK_LOOSENS_BASE", "an extending pack would loosen its base",
           "An extending pack may only tighten its base"),
    _error("PACK_INVALID", "any other problem the loader reports",
           "Fix the setting the message names"),
]

LINT_CODES: dict[str, CodeSpec] = {spec.code: spec for spec in _ALL}
"""Every lint code, by code: its severity, effect, meaning (``message``) and remediation."""

_SCHEMA_CODES = {"extra_forbidden": "PACK_UNKNOWN_KEY", "missing": "PACK_MISSING_KEY"}


def schema_code(error_type: str) -> str:
    """The lint code of a pydantic error of ``error_type`` (the error's own, stable ``type``)."""
    return _SCHEMA_CODES.get(error_type, "PACK_BAD_VALUE")


def lint_issue(code: str, message: str, remediation: str | None = None, *,
               strict: bool = False) -> Issue:
    """An issue of lint ``code``; ``remediation`` defaults to the catalogue's, and ``strict``
    gives a warning its ``pro_effect`` (``DENY``)."""
    spec = LINT_CODES[code]
    return Issue(code, spec.severity, message, spec.pro_effect if strict else spec.effect,
                 remediation or spec.remediation)


def dotted(path: Iterable[str | int]) -> str:
    """``rules.0.condition``: a path as the loader's messages write it."""
    return ".".join(str(p) for p in path)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: the file, 1-based ``line`` and ``column`` (``None`` where unknown, as
    in the loader's issues, which know the YAML ``path`` only) and the YAML path."""

    file: str
    line: int | None = None
    column: int | None = None
    path: YamlPath = ()

    def __str__(self) -> str:
        """``file:line:column`` (``file`` alone when the position is unknown)."""
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column,
                "path": list(self.path)}


@dataclass(frozen=True, slots=True)
class Located:
    """An :class:`Issue` and where it is: one lint finding."""

    issue: Issue
    location: Location

    @property
    def code(self) -> str:
        return self.issue.code

    @property
    def is_warning(self) -> bool:
        """A warning (an advisory ``MEDIUM`` code), not an error, whatever ``--strict`` says."""
        return self.issue.severity != "HIGH"

    def format(self) -> str:
        """``file:line:column: CODE message (remediation)``; warnings say ``warning:`` first."""
        label = "warning: " if self.is_warning else ""
        return (f"{self.location}: {self.issue.code} {label}{self.issue.message} "
                f"({self.issue.remediation})")

    def to_dict(self) -> dict[str, Any]:
        """The issue as ``/check`` serialises one, with its ``location``."""
        return {**self.issue.to_dict(), "location": self.location.to_dict()}


__all__ = ["LINT_CODES", "Located", "Location", "YamlPath", "dotted", "lint_issue",
           "schema_code"]
