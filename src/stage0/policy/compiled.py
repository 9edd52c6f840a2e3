"""The compiled policy: an immutable, indexed object built once per pack load."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from stage0.policy.cel import CompiledRule
from stage0.policy.matching import GlobMatcher, normalize_name
from stage0.policy.schema import PackDocument, RiskWeights
from stage0.policy.windows import CompiledWindow

RollbackRule = Literal["never", "production", "always"]
Evidence = Literal["any", "verified"]

_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class CompiledBucket:
    name: str
    description: str
    risk_weight: int
    tool_matcher: GlobMatcher
    side_effects: frozenset[str]
    approval: bool
    approval_evidence: Evidence
    environment: bool
    rollback_plan: RollbackRule
    mfa: bool
    ticket: bool


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
    _tool_cache: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    _effect_buckets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _bucket_index: Mapping[str, CompiledBucket] = field(default_factory=dict)

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
        return self._effect_buckets.get(side_effect, ())

    def bucket(self, name: str) -> CompiledBucket:
        return self._bucket_index[name]

    def resolve_alias(self, key: str) -> tuple[str, str | None] | None:
        return self.aliases.get(normalize_name(key))


def index_effect_buckets(buckets: tuple[CompiledBucket, ...]) -> Mapping[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for b in buckets:
        for effect in b.side_effects:
            index.setdefault(effect, []).append(b.name)
    return MappingProxyType({k: tuple(v) for k, v in index.items()})
