"""Facts about one request, derived once: normalised names, environment and buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stage0.contract.request import CheckRequest, Context
from stage0.policy.compiled import CompiledPolicy
from stage0.policy.matching import normalize_name

_EMPTY_CONTEXT = Context()


@dataclass(slots=True)
class Facts:
    """Read-only by convention: not ``frozen``, because a frozen dataclass pays one
    ``object.__setattr__`` per field on every decision."""

    request: CheckRequest
    context: Context
    at: datetime
    pro: bool
    tenant: str
    tools: tuple[str, ...]
    side_effects: tuple[str, ...]
    environment: str | None
    """The environment as sent (``context.environment`` or top-level ``environment``)."""
    environment_key: str | None
    """The environment normalised for comparisons."""
    is_production: bool
    buckets: tuple[str, ...]
    write_effects: tuple[str, ...]
    """Write-class side effects: declared ones and those a matched bucket implies."""
    sensitive_tools: tuple[str, ...]
    base_risk: int
    call_tool: str | None
    """The tool this call runs: ``context.current_tool``, else the first of ``tools``."""
    classification: Classification


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class Classification:
    """What the tool names and side effects alone say; cached per distinct pair of lists."""

    tools: tuple[str, ...]
    side_effects: tuple[str, ...]
    buckets: tuple[str, ...]
    write_effects: tuple[str, ...]
    sensitive_tools: tuple[str, ...]
    base_risk: int
    """Risk from the names alone: buckets, write-class effects, sensitive tools."""
    sorted_tools: tuple[str, ...] = ()
    sorted_side_effects: tuple[str, ...] = ()
    """Both sorted, as the action digest takes them."""


def classify(
    policy: CompiledPolicy, raw_tools: tuple[str, ...], raw_effects: tuple[str, ...]
) -> Classification:
    tools = _unique([normalize_name(t) for t in raw_tools])
    effects = _unique([normalize_name(s) for s in raw_effects])
    buckets: list[str] = []
    sensitive: list[str] = []
    for tool in tools:
        tool_buckets, is_sensitive = policy.classify_tool(tool)
        buckets.extend(tool_buckets)
        if is_sensitive:
            sensitive.append(tool)
    for effect in effects:
        buckets.extend(policy.effect_buckets(effect))
    bucket_names = tuple(b.name for b in policy.buckets if b.name in buckets)
    write = [e for e in effects if policy.is_write_class(e)]
    write.extend(b for b in bucket_names if b not in write)
    weights = sorted((policy.bucket(b).risk_weight for b in bucket_names), reverse=True)
    risk = weights[0] + policy.risk.extra_bucket * (len(weights) - 1) if weights else 0
    if write:
        risk += policy.risk.write_side_effect
    if sensitive:
        risk += policy.risk.sensitive_tool
    return Classification(tools, effects, bucket_names, tuple(write), tuple(sensitive), risk,
                          tuple(sorted(tools)), tuple(sorted(effects)))


class Classifier:
    """Caches :func:`classify` for one policy (requests repeat the same tool lists)."""

    def __init__(self, policy: CompiledPolicy, limit: int = 4096) -> None:
        self._policy = policy
        self._cache: dict[tuple[tuple[str, ...], tuple[str, ...]], Classification] = {}
        self._environments: dict[str, tuple[str | None, bool]] = {}
        self._limit = limit

    def __call__(self, request: CheckRequest) -> Classification:
        key = (tuple(request.tools or ()), tuple(request.side_effects or ()))
        hit = self._cache.get(key)
        if hit is None:
            hit = classify(self._policy, *key)
            if len(self._cache) < self._limit:
                self._cache[key] = hit
        return hit

    def environment(self, environment: str) -> tuple[str | None, bool]:
        """(normalised key or ``None`` when blank, whether it is production) for a non-empty
        environment name, cached per distinct name."""
        hit = self._environments.get(environment)
        if hit is None:
            hit = _environment(environment, self._policy)
            if len(self._environments) < self._limit:
                self._environments[environment] = hit
        return hit


def _environment(environment: str, policy: CompiledPolicy) -> tuple[str | None, bool]:
    key = normalize_name(environment) or None
    return key, key is not None and policy.is_production(key)


def derive_facts(
    request: CheckRequest,
    policy: CompiledPolicy,
    at: datetime,
    tenant: str,
    classification: Classification | None = None,
    classifier: Classifier | None = None,
) -> Facts:
    """``classification`` and ``classifier`` are the cached forms of what is otherwise
    derived here from the policy."""
    ctx = request.context or _EMPTY_CONTEXT
    c = classification or classify(
        policy, tuple(request.tools or ()), tuple(request.side_effects or ())
    )
    tools = c.tools
    environment = ctx.environment if ctx.environment is not None else request.environment
    if environment:
        env_key, is_production = (
            classifier.environment(environment) if classifier is not None
            else _environment(environment, policy)
        )
        if env_key is None:
            environment = None  # blank or punctuation only: no environment was given
    else:
        env_key, is_production, environment = None, False, None

    if ctx.current_tool:
        call_tool: str | None = normalize_name(ctx.current_tool)
    else:
        call_tool = tools[0] if tools else None

    return Facts(  # positional: keyword arguments cost a microsecond here
        request,  # request
        ctx,  # context
        at,  # at
        bool(request.pro),  # pro
        tenant,  # tenant
        tools,  # tools
        c.side_effects,  # side_effects
        environment,  # environment
        env_key,  # environment_key
        is_production,  # is_production
        c.buckets,  # buckets
        c.write_effects,  # write_effects
        c.sensitive_tools,  # sensitive_tools
        c.base_risk,  # base_risk
        call_tool,  # call_tool
        c,  # classification
    )
