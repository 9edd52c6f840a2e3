"""Caller constraints -> guardrails (CONTRACT section 4). Callers can only tighten policy.

Both ``key: value`` and ``key:value`` parse; lists are comma-separated; bare flags are true.
Several constraints of one family combine to the tightest: limits take the minimum, allow-lists
their intersection, windows and scopes must all hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy.compiled import CompiledPolicy
from stage0.policy.matching import normalize_name
from stage0.policy.schema import parse_duration

_TRUE = frozenset({"", "true", "yes", "1", "on", "required", "enabled", "only"})
_FALSE = frozenset({"false", "no", "0", "off", "disabled", "none"})
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
    requirements: dict[tuple[tuple[str, ...], bool], Any] = field(
        default_factory=dict, repr=False, compare=False)
    """Cache of :func:`stage0.engine.checks.requirements` for these guardrails, by bucket list
    and production flag (guardrails are themselves cached per constraint list)."""

    @property
    def any_recognized(self) -> bool:
        return bool(self.recognized)


def _names(value: str) -> frozenset[str]:
    return frozenset(normalize_name(v) for v in value.split(",") if v.strip())


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


class ConstraintParser:
    """Parses constraint strings with one pack's aliases; results are cached by string."""

    def __init__(self, policy: CompiledPolicy) -> None:
        self._policy = policy
        self._cache: dict[str, Parsed | Invalid | None] = {}
        self._lists: dict[tuple[str, ...], Guardrails] = {}

    def parse_one(self, raw: str) -> Parsed | Invalid | None:
        hit = self._cache.get(raw, False)
        if hit is not False:
            return hit  # type: ignore[return-value]  # False is only the cache-miss marker
        result = self._parse(raw)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[raw] = result
        return result

    def _parse(self, raw: str) -> Parsed | Invalid | None:
        text = raw.strip()
        key, sep, value_text = text.partition(":")
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
            if kind == "flag":
                low = value.lower()
                if low in _TRUE:
                    return Parsed(canon, True, f"{canon}: true")
                if low in _FALSE:
                    return Parsed(canon, False, f"{canon}: false")
                raise ValueError(f"`{canon}` takes true or false, got `{value}`")
            if not value:
                raise ValueError(f"`{canon}` needs a value")
            if kind in ("roles", "names"):
                names = _names(value)
                if not names:
                    raise ValueError(f"`{canon}` needs at least one name")
                return Parsed(canon, names, f"{canon}: {','.join(sorted(names))}")
            if kind == "window":
                name = normalize_name(value)
                return Parsed(canon, name, f"{canon}: {name}")
            if kind == "int":
                number = int(value)
                if not 0 <= number <= 2**53 - 1:
                    raise ValueError(f"`{canon}` must be between 0 and 2**53 - 1, got `{value}`")
                return Parsed(canon, number, f"{canon}: {number}")
            if kind == "seconds":
                seconds = parse_duration(value)
                if not 0 <= seconds < float("inf"):
                    raise ValueError(f"`{canon}` must be a finite duration, got `{value}`")
                return Parsed(canon, seconds, f"{canon}: {seconds:g}")
            if kind == "usd":
                usd = float(value.lstrip("$").strip())
                if not usd >= 0 or usd == float("inf"):
                    raise ValueError(f"`{canon}` must be a non-negative amount, got `{value}`")
                return Parsed(canon, usd, f"{canon}: {usd:g}")
            if kind == "glob":
                return Parsed(canon, value, f"{canon}: {value}")
            return Parsed(canon, value, f"{canon}: {value}")
        except ValueError as exc:
            message = str(exc)
            if not message.startswith("`"):
                message = f"`{canon}` has an invalid value `{value}`"
            return Invalid(raw, message)

    def parse(self, constraints: list[str]) -> Guardrails:
        """Guardrails for a constraint list; cached per list, so treat the result as read-only."""
        key = tuple(constraints)
        hit = self._lists.get(key)
        if hit is None:
            hit = self._parse_list(key)
            if len(self._lists) < _CACHE_LIMIT:
                self._lists[key] = hit
        return hit

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
        return g


def _apply(g: Guardrails, p: Parsed) -> None:
    key, value = p.key, p.value
    if key == "require_approval":
        g.require_approval = g.require_approval or bool(value)
    elif key == "required_role":
        assert isinstance(value, frozenset)
        g.roles = value if g.roles is None else g.roles & value
    elif key == "allowed_environment":
        assert isinstance(value, frozenset)
        g.environments = value if g.environments is None else g.environments & value
    elif key == "allowed_mcp_servers":
        assert isinstance(value, frozenset)
        g.mcp_servers = value if g.mcp_servers is None else g.mcp_servers & value
    elif key == "allowed_change_window":
        assert isinstance(value, str)
        if value not in g.windows:
            g.windows.append(value)
    elif key == "rollback_plan_required":
        g.rollback = g.rollback or bool(value)
    elif key == "mfa_required":
        g.mfa = g.mfa or bool(value)
    elif key == "require_ticket":
        g.ticket = g.ticket or bool(value)
    elif key == "max_records":
        assert isinstance(value, int)
        g.max_records = value if g.max_records is None else min(g.max_records, value)
    elif key == "resource_scope":
        assert isinstance(value, str)
        g.scopes.append(value)
    elif key == "max_iterations":
        assert isinstance(value, int)
        g.max_iterations = value if g.max_iterations is None else min(g.max_iterations, value)
    elif key == "timeout_seconds":
        assert isinstance(value, float)
        g.timeout_seconds = _min(g.timeout_seconds, value)
    elif key == "same_tool_limit":
        assert isinstance(value, int)
        g.same_tool_limit = value if g.same_tool_limit is None else min(g.same_tool_limit, value)
    elif key == "max_cost_usd":
        assert isinstance(value, float)
        g.max_cost_usd = _min(g.max_cost_usd, value)
    elif key == "read_only":
        g.read_only = g.read_only or bool(value)
