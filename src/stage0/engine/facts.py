"""Facts about one request, derived once: normalised names, environment and buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stage0.contract.request import CheckRequest, Context
from stage0.policy.compiled import CompiledPolicy
from stage0.policy.matching import normalize_name

_EMPTY_CONTEXT = Context()


@dataclass(frozen=True, slots=True)
class Facts:
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
    call_tool: str | None
    """The tool this call runs: ``context.current_tool``, else the first of ``tools``."""


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def derive_facts(
    request: CheckRequest, policy: CompiledPolicy, *, at: datetime, tenant: str
) -> Facts:
    ctx = request.context or _EMPTY_CONTEXT
    tools = _unique([normalize_name(t) for t in request.tools or ()])
    effects = _unique([normalize_name(s) for s in request.side_effects or ()])
    environment = ctx.environment if ctx.environment is not None else request.environment
    env_key = normalize_name(environment) if environment else None

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

    write = [e for e in effects if e in policy.write_class]
    write.extend(b for b in bucket_names if b not in write)

    if ctx.current_tool:
        call_tool: str | None = normalize_name(ctx.current_tool)
    else:
        call_tool = tools[0] if tools else None

    return Facts(
        request=request,
        context=ctx,
        at=at,
        pro=bool(request.pro),
        tenant=tenant,
        tools=tools,
        side_effects=effects,
        environment=environment,
        environment_key=env_key,
        is_production=env_key is not None and env_key in policy.production_environments,
        buckets=bucket_names,
        write_effects=tuple(write),
        sensitive_tools=tuple(sensitive),
        call_tool=call_tool,
    )
