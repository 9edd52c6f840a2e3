"""Lint a policy pack: every finding as a coded :class:`~stage0.contract.issues.Issue`, located.

``stage0 policy validate`` runs this. It goes further than loading (:func:`compile_document`),
whose checks it reuses:

- the YAML is composed (not just loaded), so each finding is located at its key or value in the
  file (:class:`~stage0.policy.lint.codes.Location`: file, 1-based line and column, YAML path);
- it keeps going after a schema error, so one run reports every problem it can find;
- it adds lint checks the loader does not make (:mod:`stage0.policy.lint.windows`,
  :mod:`stage0.policy.lint.rules`): empty, duplicate and overlapping change windows, aliases
  implying an undefined window, rules that would loosen the baseline or never enforce.

Each finding's code is set where the problem is found, never read back from a message: the
loader's own problems come as coded issues (:attr:`PolicyError.issues`). The codes are
:data:`~stage0.policy.lint.codes.LINT_CODES`. Errors make a pack unusable (exit 1); warnings are
printed and do not fail the run unless ``strict`` (``--strict``) gives them effect ``DENY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stage0.policy.extends import BUILTIN, resolve
from stage0.policy.lint.codes import Located
from stage0.policy.lint.document import Findings, duplicate_keys
from stage0.policy.lint.rules import check_rules
from stage0.policy.lint.schema import check_schema
from stage0.policy.lint.windows import check_aliases, check_timezones, check_windows
from stage0.policy.loader import DEFAULT_PACK, PolicyError, compile_document, default_pack_text


@dataclass(slots=True)
class Report:
    """The findings of one pack, in file order."""

    source: str
    issues: list[Located] = field(default_factory=list)

    @property
    def errors(self) -> list[Located]:
        return [f for f in self.issues if not f.is_warning]

    @property
    def warnings(self) -> list[Located]:
        return [f for f in self.issues if f.is_warning]

    @property
    def ok(self) -> bool:
        """No finding fails the pack (none has effect ``DENY``)."""
        return all(f.issue.effect != "DENY" for f in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "valid": self.ok, "errors": len(self.errors),
                "warnings": len(self.warnings), "issues": [f.to_dict() for f in self.issues]}


def validate_path(path: str | Path, *, strict: bool = False) -> Report:
    """Validate the pack at ``path``."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        out = Findings(str(p), strict=strict)
        out.add("PACK_UNREADABLE", f"cannot read the file: {reason}")
        return Report(str(p), out.sorted())
    return validate_text(text, source=str(p), strict=strict)


def validate_default(*, strict: bool = False) -> Report:
    """Validate the built-in pack."""
    return validate_text(default_pack_text(), source=f"<builtin {DEFAULT_PACK}>", strict=strict)


def validate_text(text: str, *, source: str = "<text>", strict: bool = False) -> Report:
    """Validate pack ``text``; ``source`` names it in each finding's location."""
    out = Findings(source, strict=strict)
    _run(out, text)
    return Report(source, out.sorted())


def _run(out: Findings, text: str) -> None:
    raw = out.parse(text)
    if out.issues:
        return
    if not isinstance(raw, dict):
        out.add("PACK_BAD_YAML", "the pack must be a YAML mapping",
                remediation="a pack is a mapping that starts with `apiVersion: stage0/v1`")
        return
    duplicate_keys(out, out.root)
    if "extends" in raw:
        extended = _extends(out, raw)
        if extended is None:
            return
        raw = extended
    doc = check_schema(out, raw)
    check_timezones(out, raw)
    check_aliases(out, raw)
    check_windows(out, raw)
    check_rules(out, raw)
    if doc is not None:
        try:
            compile_document(raw, source=out.source)
        except PolicyError as exc:  # what only the loader checks (findings already made skip)
            for found in exc.issues:
                out.add_located(found)


def _extends(out: Findings, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The pack merged over the built-in one (each loosening a finding), or ``None``."""
    if raw["extends"] != BUILTIN:
        out.add("PACK_BAD_EXTENDS",
                f"`extends: {raw['extends']}`: only the built-in pack can be extended",
                ("extends",), remediation=f"use `extends: {BUILTIN}`, or write a whole pack")
        return None
    merged, loosenings = resolve(raw, default_pack_text())
    for loosening in loosenings:
        out.add("PACK_LOOSENS_BASE", f"{loosening} (the base pack is `{BUILTIN}`)",
                loosening.path, remediation="an extending pack may only tighten its base")
    merged.pop("extends", None)
    return dict(merged)


__all__ = ["Report", "validate_default", "validate_path", "validate_text"]
