"""Loop protection: iterations, elapsed time, repeated calls and cost (CONTRACT section 5).

Counters the client sends are used as given. Any counter it leaves out comes from the run
state kept per tenant and ``run_id``, which records this check atomically first, so a client
cannot reset a counter by omitting it.
"""

from __future__ import annotations

from typing import Any

from stage0.engine.constraints import Guardrails
from stage0.engine.facts import Facts
from stage0.engine.findings import Findings
from stage0.engine.runstate import RunSnapshot, RunState
from stage0.policy.matching import normalize_name


def _trailing_same(recent: tuple[str, ...] | list[str], tool: str | None) -> int:
    if tool is None:
        return 0
    count = 1  # this call
    for earlier in reversed(recent):
        if earlier != tool:
            break
        count += 1
    return count


def check_loops(
    out: Findings, f: Facts, g: Guardrails, run_state: RunState | None
) -> dict[str, Any] | None:
    """Apply the loop limits; return a cost estimate when a cost is known."""
    ctx = f.context
    snap: RunSnapshot | None = None
    if ctx.run_id is not None and run_state is not None:
        snap = run_state.observe(
            f.tenant, ctx.run_id, at=f.at, tool=f.call_tool, cost_usd=ctx.cost_usd or 0.0
        )
    sources: dict[str, str | None] = {}

    iteration: int | None = ctx.current_iteration
    sources["iteration"] = "client" if iteration is not None else None
    if iteration is None and snap is not None:
        iteration, sources["iteration"] = snap.iterations, "run_state"

    elapsed: float | None = ctx.elapsed_seconds
    sources["elapsed_seconds"] = "client" if elapsed is not None else None
    if elapsed is None and snap is not None:
        elapsed = max(0.0, (f.at - snap.first_seen).total_seconds())
        sources["elapsed_seconds"] = "run_state"

    recent: tuple[str, ...] | None = None
    if ctx.recent_tools is not None:
        recent = tuple(normalize_name(t) for t in ctx.recent_tools)
        sources["recent_tools"] = "client"
    elif snap is not None:
        recent, sources["recent_tools"] = snap.recent_tools, "run_state"
    else:
        sources["recent_tools"] = None
    if ctx.current_tool or not f.tools:
        same_tool, same = f.call_tool, _trailing_same(recent or (), f.call_tool)
    else:
        # No current_tool: every tool of the call counts, so reordering `tools` cannot hide a
        # repeated call.
        same, same_tool = max((_trailing_same(recent or (), t), t) for t in f.tools)

    cost: float | None = ctx.cumulative_cost_usd
    sources["cost_usd"] = "client" if cost is not None else None
    if cost is None and snap is not None:
        cost, sources["cost_usd"] = snap.cost_usd, "run_state"
    elif cost is None and ctx.cost_usd is not None:
        cost, sources["cost_usd"] = ctx.cost_usd, "client"

    ok = True
    if g.max_iterations is not None and iteration is not None and iteration > g.max_iterations:
        ok = False
        out.add(
            "LOOP_ITERATION_LIMIT",
            f"Iteration {iteration} exceeds `max_iterations: {g.max_iterations}`",
        )
    if g.timeout_seconds is not None and elapsed is not None and elapsed > g.timeout_seconds:
        ok = False
        out.add(
            "LOOP_TIMEOUT",
            f"The run has taken {elapsed:g} s, over `timeout_seconds: {g.timeout_seconds:g}`",
        )
    if g.same_tool_limit is not None and same > g.same_tool_limit:
        ok = False
        out.add(
            "LOOP_SAME_TOOL_LIMIT",
            f"`{same_tool}` would be call {same} in a row, over `same_tool_limit: "
            f"{g.same_tool_limit}`",
        )
    if g.max_cost_usd is not None and cost is not None and cost > g.max_cost_usd:
        ok = False
        out.add(
            "COST_LIMIT_EXCEEDED",
            f"The run has cost ${cost:g}, over `max_cost_usd: {g.max_cost_usd:g}`",
        )

    out.checks["loop"] = {
        "required": any(
            v is not None
            for v in (g.max_iterations, g.timeout_seconds, g.same_tool_limit, g.max_cost_usd)
        ),
        "satisfied": ok,
        "run_id": ctx.run_id,
        "iteration": iteration,
        "max_iterations": g.max_iterations,
        "elapsed_seconds": elapsed,
        "timeout_seconds": g.timeout_seconds,
        "tool": same_tool,
        "same_tool_count": same,
        "same_tool_limit": g.same_tool_limit,
        "cumulative_cost_usd": cost,
        "max_cost_usd": g.max_cost_usd,
        "sources": sources,
    }
    if cost is None:
        return None
    return {
        "cumulative_cost_usd": cost,
        "max_cost_usd": g.max_cost_usd,
        "remaining_usd": None if g.max_cost_usd is None else max(0.0, g.max_cost_usd - cost),
        "source": sources["cost_usd"],
    }
