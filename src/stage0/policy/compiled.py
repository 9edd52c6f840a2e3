"""The compiled policy: an immutable, indexed object built once per pack load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from stage0.policy.cel import CompiledRule
from stage0.policy.matching import GlobMatcher, normalize_name, squash
from stage0.policy.schema import PackDocument, RiskWeights
from stage0.policy.windows import CompiledWindow

RollbackRule = Literal["never", "production", "always"]
Evidence = Literal["any", "verified"]

_CACHE_LIMIT = 4096


BoundTo = Literal["key", "principal", "tenant"]
_BINDING_ORDER: dict[str, int] = {"key": 0, "principal": 1, "tenant": 2}

DEFAULT_BINDS: tuple[str, ...] = (
    "context.amount", "context.amount_cents", "context.amount_usd", "context.currency",
    "context.record_count", "context.target_tenants", "context.tenant_id", "goal",
)
"""What an approval is bound to besides the action digest, unless the pack says otherwise:
the goal, how many records, how much money, and which tenants (the environment, resource
scope and target resources are in the action digest already). See docs/approvals.md."""


def narrower_binding(a: BoundTo, b: BoundTo) -> BoundTo:
    """The narrower of two requester bindings (``key`` < ``principal`` < ``tenant``)."""
    return a if _BINDING_ORDER[a] <= _BINDING_ORDER[b] else b


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    quorum: int
    approver_roles: frozenset[str]
    approver_mfa: bool
    expires_in: float
    execute_within: float
    bound_to: BoundTo = "key"
    """Who may use a granted approval: the requesting key (the default), any key of the
    requesting principal, or any key of the tenant."""
    binds: tuple[str, ...] = DEFAULT_BINDS
    """The request fields, besides the action digest, that an approval is bound to."""

    def tighten(self, other: ApprovalRule) -> ApprovalRule:
        """The stricter of two rules (an action in two buckets needs both satisfied)."""
        roles = (self.approver_roles & other.approver_roles
                 if self.approver_roles and other.approver_roles
                 else self.approver_roles or other.approver_roles)
        return ApprovalRule(
            quorum=max(self.quorum, other.quorum),
            approver_roles=roles,
            approver_mfa=self.approver_mfa or other.approver_mfa,
            expires_in=min(self.expires_in, other.expires_in),
            execute_within=min(self.execute_within, other.execute_within),
            bound_to=narrower_binding(self.bound_to, other.bound_to),
            binds=tuple(sorted(set(self.binds) | set(other.binds))),
        )


@dataclass(frozen=True, slots=True)
class BreakGlassRule:
    """Who may declare a break-glass approval, and for how long it holds (once)."""

    roles: frozenset[str]
    mfa: bool
    min_reason_length: int
    expires_in: float

    LIFTS = ("OUTSIDE_CHANGE_WINDOW", "CHANGE_FREEZE")
    """The only issues a break-glass approval lifts; never a DENY rule."""


@dataclass(frozen=True, slots=True)
class CompiledBucket:
    name: str
    description: str
    risk_weight: int
    tool_matcher: GlobMatcher
    side_effects: frozenset[str]
    approval: bool
    approval_evidence: Evidence
    approvals: ApprovalRule
    environment: bool
    rollback_plan: RollbackRule
    mfa: bool
    ticket: bool
    effect_matcher: GlobMatcher | None = None
    """``side_effects`` as globs (a literal matches by :func:`squash`); ``None``: exact names."""


@dataclass(frozen=True, slots=True)
class CompiledRequire:
    """A ``require`` rule: the constraints (as constraint strings, ``key: value``) that the
    operator adds to every action the rule selects. A selector left empty selects every action;
    a rule with ``environments`` also applies when the request names no environment (leaving
    the environment out must not avoid a requirement)."""

    index: int
    name: str
    buckets: frozenset[str]
    tool_matcher: GlobMatcher | None
    environments: frozenset[str]
    production: bool
    """``environments`` names ``production``: every production environment matches."""
    constraints: tuple[str, ...]

    def applies(self, tools: tuple[str, ...], buckets: tuple[str, ...],
                environment: str | None, is_production: bool) -> bool:
        if self.buckets and not self.buckets.intersection(buckets):
            return False
        matcher = self.tool_matcher
        if matcher is not None and not any(matcher(t) for t in tools):
            return False
        if self.environments and environment is not None:
            return environment in self.environments or (self.production and is_production)
        return True


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Everything evaluation needs, resolved and indexed; nothing is interpreted per request."""

    name: str
    version: str
    sha256: str
    document: PackDocument
    production_environments: frozenset[str]
    approval_max_age: float
    approval_future_skew: float
    mfa_max_age: float
    windows: Mapping[str, CompiledWindow]
    write_class: frozenset[str]
    sensitive_tool: GlobMatcher
    sensitive_cleared_by: frozenset[str]
    min_goal_words: int
    action_verbs: frozenset[str]
    aliases: Mapping[str, tuple[str, str | None]]
    buckets: tuple[CompiledBucket, ...]
    risk: RiskWeights
    rules: tuple[CompiledRule, ...]
    timeout_seconds: float
    freezes: tuple[Any, ...]
    """The pack's change freezes (``stage0.policy.schema.Freeze``)."""
    default_approvals: ApprovalRule
    token_ttl: float
    token_issuer: str
    break_glass: BreakGlassRule | None = None
    """``None`` when the pack turns break-glass off."""
    approval_evidence: Evidence = "any"
    """``approval.evidence``: also what a constraint-required approval needs."""
    mfa_evidence: Evidence = "any"
    rollback_evidence: Evidence = "any"
    ticket_evidence: Evidence = "any"
    requires: tuple[CompiledRequire, ...] = ()
    """The pack's ``require`` rules, in pack order."""
    _require_cache: dict[tuple[Any, ...], tuple[CompiledRequire, ...]] = field(
        default_factory=dict)
    _tool_cache: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    _effect_buckets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _effect_cache: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _write_keys: frozenset[str] | None = None
    """``write_class`` by :func:`squash` (``None``: computed from it on first use)."""
    _bucket_index: Mapping[str, CompiledBucket] = field(default_factory=dict)
    _rule_index: RuleIndex = field(default_factory=lambda: RuleIndex(()))
    _rule_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[CompiledRule, ...]] = field(
        default_factory=dict)

    @property
    def policy_version(self) -> str:
        return f"{self.name}@{self.version}"

    def classify_tool(self, tool: str) -> tuple[tuple[str, ...], bool]:
        """(buckets the normalised tool name falls in, whether it is a sensitive tool)."""
        hit = self._tool_cache.get(tool)
        if hit is None:
            buckets = tuple(b.name for b in self.buckets if b.tool_matcher(tool))
            hit = (buckets, self.sensitive_tool(tool))
            if len(self._tool_cache) < _CACHE_LIMIT:
                self._tool_cache[tool] = hit
        return hit

    def is_production(self, environment: str) -> bool:
        """Whether a normalised environment name is production: one of the pack's
        ``production_environments`` or such a name with a suffix (``production_eu``)."""
        return environment in self.production_environments or any(
            environment.startswith(p + "_") for p in self.production_environments
        )

    def effect_buckets(self, side_effect: str) -> tuple[str, ...]:
        """The buckets a normalised side effect falls in, separator-insensitively:
        ``data.deletion`` and ``datadeletion`` are ``data_deletion``."""
        hit = self._effect_cache.get(side_effect)
        if hit is None:
            key = squash(side_effect)
            hit = tuple(
                b.name for b in self.buckets
                if (b.effect_matcher(side_effect) if b.effect_matcher is not None
                    else key in self._squashed_effects(b))
            )
            if len(self._effect_cache) < _CACHE_LIMIT:
                self._effect_cache[side_effect] = hit
        return hit

    @staticmethod
    def _squashed_effects(bucket: CompiledBucket) -> frozenset[str]:
        return frozenset(squash(e) for e in bucket.side_effects)

    def is_write_class(self, side_effect: str) -> bool:
        """Whether a normalised side effect is write-class, separator-insensitively."""
        keys = self._write_keys
        if keys is None:
            keys = frozenset(squash(e) for e in self.write_class)
            object.__setattr__(self, "_write_keys", keys)
        return squash(side_effect) in keys

    def bucket(self, name: str) -> CompiledBucket:
        return self._bucket_index[name]

    def rules_for(
        self, tools: tuple[str, ...], buckets: tuple[str, ...]
    ) -> tuple[CompiledRule, ...]:
        """The custom rules that apply to an action's tools and buckets, in pack order.

        Rules are indexed when the pack loads: unscoped ones, by bucket, and by tool glob (the
        globs are matched once per distinct tool name, then cached), so a decision costs about
        the same with ten thousand tool- or bucket-scoped rules as with ten.
        """
        key = (tools, buckets)
        hit = self._rule_cache.get(key)
        if hit is None:
            index = self._rule_index
            chosen: dict[int, CompiledRule] = {r.index: r for r in index.unscoped}
            for b in buckets:
                for r in index.by_bucket.get(b, ()):
                    if not r.tool_globs or any(index.tool_match(r, t) for t in tools):
                        chosen[r.index] = r
            for t in tools:
                for r in index.rules_for_tool(t):
                    if not r.buckets or r.buckets & set(buckets):
                        chosen[r.index] = r
            hit = tuple(chosen[i] for i in sorted(chosen))
            if len(self._rule_cache) < _CACHE_LIMIT:
                self._rule_cache[key] = hit
        return hit

    def bound_field_names(self) -> frozenset[str]:
        """Every field any approval rule of this pack binds (the pack's and its buckets')."""
        names = set(self.default_approvals.binds)
        for b in self.buckets:
            names.update(b.approvals.binds)
        return frozenset(names)

    def approval_rule(self, buckets: tuple[str, ...] | list[str]) -> ApprovalRule:
        """The approval rule for an action: its buckets' rules combined, else the default."""
        rule: ApprovalRule | None = None
        for name in buckets:
            b = self.bucket(name)
            if b.approval:
                rule = b.approvals if rule is None else rule.tighten(b.approvals)
        return rule or self.default_approvals

    def requires_for(self, tools: tuple[str, ...], buckets: tuple[str, ...],
                     environment: str | None, is_production: bool,
                     ) -> tuple[CompiledRequire, ...]:
        """The ``require`` rules that select an action (cached per distinct action shape)."""
        key = (tools, buckets, environment, is_production)
        hit = self._require_cache.get(key)
        if hit is None:
            hit = tuple(r for r in self.requires
                        if r.applies(tools, buckets, environment, is_production))
            if len(self._require_cache) < _CACHE_LIMIT:
                self._require_cache[key] = hit
        return hit

    @property
    def verifies_references(self) -> bool:
        """Whether a rollback plan or a ticket must be confirmed by the evidence source."""
        return self.rollback_evidence == "verified" or self.ticket_evidence == "verified"

    def resolve_alias(self, key: str) -> tuple[str, str | None] | None:
        return self.aliases.get(normalize_name(key))


class RuleIndex:
    """Custom rules by scope: unscoped, by bucket, and by tool glob."""

    def __init__(self, rules: tuple[CompiledRule, ...]) -> None:
        self.unscoped = tuple(r for r in rules if not r.tool_globs and not r.buckets)
        by_bucket: dict[str, list[CompiledRule]] = {}
        for r in rules:
            for b in r.buckets:
                by_bucket.setdefault(b, []).append(r)
        self.by_bucket = {b: tuple(v) for b, v in by_bucket.items()}
        self._tool_scoped = tuple(r for r in rules if r.tool_globs)
        self._matchers = {r.index: GlobMatcher(r.tool_globs) for r in self._tool_scoped}
        self._exact: dict[str, list[CompiledRule]] = {}
        self._wild: list[CompiledRule] = []
        for r in self._tool_scoped:
            literal = [g for g in r.tool_globs if not any(c in g for c in "*?[")]
            if len(literal) == len(r.tool_globs):
                for g in literal:  # separator-insensitive, as the globs are
                    self._exact.setdefault(squash(normalize_name(g)), []).append(r)
            else:
                self._wild.append(r)
        self._by_tool: dict[str, tuple[CompiledRule, ...]] = {}

    def tool_match(self, rule: CompiledRule, tool: str) -> bool:
        matcher = self._matchers.get(rule.index)
        return matcher is not None and matcher(tool)

    def rules_for_tool(self, tool: str) -> tuple[CompiledRule, ...]:
        hit = self._by_tool.get(tool)
        if hit is None:
            found = list(self._exact.get(squash(tool), ()))
            found.extend(r for r in self._wild if self._matchers[r.index](tool))
            hit = tuple(found)
            if len(self._by_tool) < _CACHE_LIMIT:
                self._by_tool[tool] = hit
        return hit


def index_effect_buckets(buckets: tuple[CompiledBucket, ...]) -> Mapping[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for b in buckets:
        for effect in b.side_effects:
            index.setdefault(effect, []).append(b.name)
    return MappingProxyType({k: tuple(v) for k, v in index.items()})
