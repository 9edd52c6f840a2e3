"""Caller constraints -> guardrails (CONTRACT section 4). Callers can only tighten policy.

Both ``key: value`` and ``key:value`` parse; lists are comma-separated; bare flags are true.
Several constraints of one family combine to the tightest: limits take the minimum, allow-lists
their intersection, windows and scopes must all hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy.compiled import CompiledPolicy, CompiledRequire
from stage0.policy.constraint_values import FALSE as _FALSE
from stage0.policy.constraint_values import TRUE as _TRUE
from stage0.policy.constraint_values import VALUE_PARSERS as _VALUE_PARSERS

_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Parsed:
    """One recognised constraint: canonical key, typed value, normalised display form."""

    key: str
    value: object
    display: str


@dataclass(frozen=True, slots=True)
class Invalid:
    raw: str
    problem: str


@dataclass(slots=True)
class Guardrails:
    recognized: list[str] = field(default_factory=list)
    """Guardrails in force, normalised (``max_records: 50``)."""
    inactive: list[str] = field(default_factory=list)
    """Recognised constraints that require nothing (``require_approval: false``): they are not
    guardrails, so they neither satisfy SIDE_EFFECTS_NEED_GUARDRAILS nor loosen anything."""
    unrecognized: list[str] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    require_approval: bool = False
    roles: frozenset[str] | None = None
    environments: frozenset[str] | None = None
    windows: list[str] = field(default_factory=list)
    rollback: bool = False
    mfa: bool = False
    ticket: bool = False
    max_records: int | None = None
    scopes: list[str] = field(default_factory=list)
    mcp_servers: frozenset[str] | None = None
    max_iterations: int | None = None
    timeout_seconds: float | None = None
    same_tool_limit: int | None = None
    max_cost_usd: float | None = None
    read_only: bool = False
    clears_sensitive: bool = False
    sorted_roles: tuple[str, ...] = ()
    sorted_environments: tuple[str, ...] = ()
    canonical_environments: frozenset[str] = frozenset()
    """``environments`` with the pack's production names folded to ``production``."""
    sorted_mcp_servers: tuple[str, ...] = ()
    loop_limited: bool = False
    """Whether any loop limit is set (``max_iterations``, ``timeout_seconds``,
    ``same_tool_limit``, ``max_cost_usd``)."""
    requirements: dict[tuple[tuple[str, ...], bool], Any] = field(
        default_factory=dict, repr=False, compare=False)
    """Cache of :func:`stage0.engine.checks.requirements` for these guardrails, by bucket list
    and production flag (guardrails are themselves cached per constraint list)."""
    policy_required: dict[str, list[str]] = field(default_factory=dict)
    """Canonical constraint key -> the pack's ``require`` rules that added it (``require
    `name```); empty when no rule applies. ``recognized`` stays the caller's own."""
    policy_constraints: list[dict[str, str]] = field(default_factory=list)
    """What the ``require`` rules added: ``{"rule", "constraint"}`` each."""

    def sources(self, key: str) -> list[str]:
        """Who requires constraint ``key``: ``constraint`` (the caller) and/or the pack's
        ``require`` rules."""
        return (["constraint"] if self._by_caller(key) else []) + self.policy_required.get(
            key, [])

    def _by_caller(self, key: str) -> bool:
        return any(d.split(":", 1)[0] == key for d in self.recognized)

    @property
    def any_recognized(self) -> bool:
        return bool(self.recognized)


class ConstraintParser:
    """Parses constraint strings with one pack's aliases; results are cached by string."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self._policy = policy
        self._cache: dict[str, Parsed | Invalid | None] = {}
        self._lists: dict[tuple[str, ...], Guardrails] = {}
        self._merged: dict[tuple[tuple[str, ...], tuple[int, ...]], Guardrails] = {}

    def parse_one(self, raw: str) -> Parsed | Invalid | None:
        hit = self._cache.get(raw, False)
        if hit is not False:
            return hit  # type: ignore[return-value]  # False is only the cache-miss marker
        result = self._parse(raw)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[raw] = result
        return result

    def _parse(self, raw: str) -> Parsed | Invalid | None:
        key, sep, value_text = raw.strip().partition(":")
        resolved = self._policy.resolve_alias(key)
        if resolved is None:
            return None
        canon, implied = resolved
        value = value_text.strip() if sep else (implied if implied is not None else "")
        kind = CONSTRAINT_KEYS[canon]
        if implied is not None and sep and kind != "flag":
            # `business_hours: true` names its window through the alias; `: false` is a no-op.
            low = value.lower()
            if low in _TRUE:
                value = implied
            elif low in _FALSE:
                return Parsed(canon, False, f"{canon}: false")
        try:
            if kind != "flag" and not value:
                raise ValueError(f"`{canon}` needs a value")
            typed, shown = _VALUE_PARSERS[kind](canon, value)
        except ValueError as exc:
            message = str(exc)
            if not message.startswith("`"):
                message = f"`{canon}` has an invalid value `{value}`"
            return Invalid(raw, message)
        return Parsed(canon, typed, f"{canon}: {shown}")

    def parse(self, constraints: list[str]) -> Guardrails:
        """Guardrails for a constraint list; cached per list, so treat the result as read-only."""
        key = tuple(constraints)
        hit = self._lists.get(key)
        if hit is None:
            hit = self._parse_list(key)
            if len(self._lists) < _CACHE_LIMIT:
                self._lists[key] = hit
        return hit

    def with_requirements(self, caller: Guardrails, constraints: list[str],
                          rules: tuple[CompiledRequire, ...]) -> Guardrails:
        """The caller's guardrails with the constraints of the pack's ``require`` rules merged
        in, each family combining to the tightest (so the caller can only add to them). The
        caller's own lists (``recognized``, ``inactive``, ``unrecognized``, ``invalid``) and
        what clears the sensitive-tool advisory stay the caller's. Cached per constraint list
        and rule set; treat the result as read-only."""
        if not rules:
            return caller
        key = (tuple(constraints), tuple(r.index for r in rules))
        hit = self._merged.get(key)
        if hit is not None:
            return hit
        added = [(r.name, text) for r in rules for text in r.constraints]
        merged = self._parse_list([*constraints, *(text for _, text in added)])
        merged.recognized = list(caller.recognized)
        merged.inactive = list(caller.inactive)
        merged.unrecognized = list(caller.unrecognized)
        merged.invalid = list(caller.invalid)
        merged.clears_sensitive = caller.clears_sensitive
        for name, text in added:
            parsed = self.parse_one(text)
            if isinstance(parsed, Parsed):
                merged.policy_required.setdefault(parsed.key, []).append(f"require `{name}`")
                merged.policy_constraints.append({"rule": name, "constraint": parsed.display})
        if len(self._merged) < _CACHE_LIMIT:
            self._merged[key] = merged
        return merged

    def _parse_list(self, constraints: Iterable[str]) -> Guardrails:
        g = Guardrails()
        for raw in constraints:
            parsed = self.parse_one(raw)
            if parsed is None:
                g.unrecognized.append(raw)
                continue
            if isinstance(parsed, Invalid):
                g.invalid.append(parsed)
                continue
            if parsed.value is False:
                g.inactive.append(raw)
                continue
            g.recognized.append(parsed.display)
            _apply(g, parsed)
            if parsed.key in self._policy.sensitive_cleared_by:
                g.clears_sensitive = True
        # Derived once per constraint list rather than on every decision.
        production = self._policy.production_environments
        if g.roles is not None:
            g.sorted_roles = tuple(sorted(g.roles))
        if g.environments is not None:
            g.sorted_environments = tuple(sorted(g.environments))
            g.canonical_environments = frozenset(
                "production" if e in production else e for e in g.environments)
        if g.mcp_servers is not None:
            g.sorted_mcp_servers = tuple(sorted(g.mcp_servers))
        g.loop_limited = (g.max_iterations is not None or g.timeout_seconds is not None
                          or g.same_tool_limit is not None or g.max_cost_usd is not None)
        return g


# -- combining: several constraints of one family give the tightest guardrail

def _either(held: bool, new: object) -> bool:
    return held or bool(new)


def _intersection(held: frozenset[str] | None, new: frozenset[str]) -> frozenset[str]:
    return new if held is None else held & new


def _least(held: float | None, new: float) -> float:
    return new if held is None else min(held, new)


def _all_of(held: list[str], new: str) -> list[str]:
    held.append(new)
    return held


def _all_distinct(held: list[str], new: str) -> list[str]:
    if new not in held:
        held.append(new)
    return held


_COMBINE: dict[str, tuple[str, Callable[[Any, Any], object]]] = {
    # canonical key: (Guardrails field, how a further constraint combines with it)
    "require_approval": ("require_approval", _either),
    "required_role": ("roles", _intersection),
    "allowed_environment": ("environments", _intersection),
    "allowed_mcp_servers": ("mcp_servers", _intersection),
    "allowed_change_window": ("windows", _all_distinct),
    "rollback_plan_required": ("rollback", _either),
    "mfa_required": ("mfa", _either),
    "require_ticket": ("ticket", _either),
    "max_records": ("max_records", _least),
    "resource_scope": ("scopes", _all_of),
    "max_iterations": ("max_iterations", _least),
    "timeout_seconds": ("timeout_seconds", _least),
    "same_tool_limit": ("same_tool_limit", _least),
    "max_cost_usd": ("max_cost_usd", _least),
    "read_only": ("read_only", _either),
    # `sandbox`, `dry_run` and `allowlist` set no field: they are guardrails all the same
    # (SIDE_EFFECTS_NEED_GUARDRAILS) and may clear sensitive tools (`sensitive_cleared_by`).
}


def _apply(g: Guardrails, p: Parsed) -> None:
    rule = _COMBINE.get(p.key)
    if rule is not None:
        name, combine = rule
        setattr(g, name, combine(getattr(g, name), p.value))
