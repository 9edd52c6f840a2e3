"""``extends:``: a pack built on the default pack that may only tighten it.

The child is merged over its base: mappings merge key by key, lists of names (side effects,
patterns, verbs, aliases, roles, days…) are united, custom rules are appended, and scalars the
child sets replace the base's. Then the result is compared with the base, and anything that
would loosen it is refused — a bucket that no longer needs approval, a smaller quorum, approver
MFA switched off, caller-written approval, MFA, rollback or ticket evidence accepted again, a
weaker rollback or environment requirement, a longer approval age, a removed bucket, window or
require rule, a wider or longer break-glass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from stage0.policy.schema import PackDocument, parse_duration

BUILTIN = "stage0-policy-pack"


def merge(base: Any, child: Any, path: str = "") -> Any:
    if isinstance(base, dict) and isinstance(child, dict):
        out = dict(base)
        for key, value in child.items():
            out[key] = merge(base[key], value, f"{path}.{key}") if key in base else value
        return out
    if isinstance(base, list) and isinstance(child, list):
        if path.endswith(".rules") or path == ".require":
            return [*base, *child]  # rules and require rules: the base's, then the child's
        return list(dict.fromkeys([*base, *child]))  # names: the union, base order first
    return child


_RANK = {"never": 0, "production": 1, "always": 2, "any": 0, "verified": 1}


@dataclass(frozen=True, slots=True)
class Loosening:
    """One way the merged pack would loosen its base: the YAML ``path`` of the setting, and
    what it may not do."""

    path: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        """``approval.max_age: cannot grow``."""
        return f"{'.'.join(str(p) for p in self.path)}: {self.message}"


def loosenings(base: dict[str, Any], merged: dict[str, Any]) -> list[Loosening]:
    """What ``merged`` allows that ``base`` did not (empty when it only tightens)."""
    b, m = PackDocument.model_validate(base), PackDocument.model_validate(merged)
    found = [*_approvals(b, m), *_break_glass(b, m), *_buckets(b, m)]
    found.extend(Loosening(("change_windows", name), "cannot be removed")
                 for name in b.change_windows if name not in m.change_windows)
    if len(m.rules) < len(b.rules):
        found.append(Loosening(("rules",), "the base pack's rules cannot be removed"))
    if len(m.require) < len(b.require):
        found.append(Loosening(("require",), "the base pack's rules cannot be removed"))
    return found


def _approvals(b: PackDocument, m: PackDocument) -> Iterator[Loosening]:
    if _RANK[m.approval.evidence] < _RANK[b.approval.evidence]:
        yield Loosening(("approval", "evidence"), "`verified` cannot become `any`")
    for path, mine, theirs in (
            (("mfa", "evidence"), m.mfa.evidence, b.mfa.evidence),
            (("evidence", "rollback_plan"), m.evidence.rollback_plan, b.evidence.rollback_plan),
            (("evidence", "ticket"), m.evidence.ticket, b.evidence.ticket)):
        if _RANK[mine] < _RANK[theirs]:
            yield Loosening(path, "`verified` cannot become `any`")
    if parse_duration(m.approval.max_age) > parse_duration(b.approval.max_age):
        yield Loosening(("approval", "max_age"), "cannot grow")
    if m.approvals.quorum < b.approvals.quorum:
        yield Loosening(("approvals", "quorum"), "cannot shrink")
    if b.approvals.approver_mfa and not m.approvals.approver_mfa:
        yield Loosening(("approvals", "approver_mfa"), "cannot be switched off")


def _break_glass(b: PackDocument, m: PackDocument) -> Iterator[Loosening]:
    bg, mg = b.break_glass, m.break_glass
    if mg.enabled and not bg.enabled:
        yield Loosening(("break_glass", "enabled"), "cannot be switched on")
        return
    if not mg.enabled:
        return
    if {r.lower() for r in mg.roles} - {r.lower() for r in bg.roles}:
        yield Loosening(("break_glass", "roles"), "cannot grow (name the base's roles or fewer)")
    if bg.mfa and not mg.mfa:
        yield Loosening(("break_glass", "mfa"), "cannot be switched off")
    if mg.min_reason_length < bg.min_reason_length:
        yield Loosening(("break_glass", "min_reason_length"), "cannot shrink")
    if parse_duration(mg.expires_in) > parse_duration(bg.expires_in):
        yield Loosening(("break_glass", "expires_in"), "cannot grow")


def _buckets(b: PackDocument, m: PackDocument) -> Iterator[Loosening]:
    for name, bucket in b.buckets.items():
        if name not in m.buckets:
            yield Loosening(("buckets", name), "cannot be removed")
            continue
        mine, theirs = m.buckets[name].require, bucket.require
        where = ("buckets", name, "require")
        if theirs.approval and not mine.approval:
            yield Loosening((*where, "approval"), "cannot be switched off")
        for flag in ("environment", "mfa", "ticket"):
            if getattr(theirs, flag) and not getattr(mine, flag):
                yield Loosening((*where, flag), "cannot be switched off")
        if _RANK[mine.rollback_plan] < _RANK[theirs.rollback_plan]:
            yield Loosening((*where, "rollback_plan"), "cannot weaken")


def resolve(raw: dict[str, Any], base_text: str) -> tuple[dict[str, Any], list[Loosening]]:
    """The merged document for a pack with ``extends:`` and the loosenings it would make."""
    child = {k: v for k, v in raw.items() if k != "extends"}
    base = yaml.safe_load(base_text)
    merged = merge(base, child)
    try:
        return merged, loosenings(base, merged)
    except ValidationError:  # the schema will report the merged pack's own problems
        return merged, []
