"""Loop protection: iterations, elapsed time, repeated calls and cost (CONTRACT section 5).

Counters the client sends are used as given. Any counter it leaves out comes from the run
state kept per tenant and ``run_id``, which records this check atomically first, so a client
cannot reset a counter by omitting it.
"""

from __future__ import annotations

from typing import Any, Literal

from stage0.engine.constraints import Guardrails
from stage0.engine.facts import Facts
from stage0.engine.findings import Findings
from stage0.engine.runstate import RunSnapshot, RunState
from stage0.policy.matching import normalize_name

Source = Literal["client", "run_state"] | None


def _trailing_same(recent: tuple[str, ...] | list[str], tool: str | None) -> int:
    """How many calls in a row ``tool`` would make: this call plus the trailing run of
    ``recent`` equal to it."""
    if tool is None:
        return 0
    n = len(recent)
    if not n or recent[-1] != tool:
        return 1
    if recent.count(tool) == n:  # a run calling one tool over and over: counted in C
        return n + 1
    count = 1  # this call
    for earlier in reversed(recent):
        if earlier != tool:
            break
        count += 1
    return count


def _counters(
    f: Facts, snap: RunSnapshot | None
) -> tuple[int | None, float | None, tuple[str, ...], float | None, dict[str, Source]]:
    """Iteration, elapsed seconds, recent tools and cumulative cost, with where each came from:
    the client's value when it sends one, else the run state's (when the request has a run),
    else unknown. Without a cumulative cost, this step's own cost stands for it."""
    ctx = f.context
    iteration: int | None = ctx.current_iteration
    iteration_source: Source = None
    if iteration is not None:
        iteration_source = "client"
    elif snap is not None:
        iteration, iteration_source = snap.iterations, "run_state"

    elapsed: float | None = ctx.elapsed_seconds
    elapsed_source: Source = None
    if elapsed is not None:
        elapsed_source = "client"
    elif snap is not None:
        elapsed = max(0.0, (f.at - snap.first_seen).total_seconds())
        elapsed_source = "run_state"

    recent: tuple[str, ...] = ()
    recent_source: Source = None
    if ctx.recent_tools is not None:
        recent = tuple(map(normalize_name, ctx.recent_tools))
        recent_source = "client"
    elif snap is not None:
        recent, recent_source = snap.recent_tools, "run_state"

    cost: float | None = ctx.cumulative_cost_usd
    cost_source: Source = None
    if cost is not None:
        cost_source = "client"
    elif snap is not None:
        cost, cost_source = snap.cost_usd, "run_state"
    elif ctx.cost_usd is not None:
        cost, cost_source = ctx.cost_usd, "client"

    return iteration, elapsed, recent, cost, {
        "iteration": iteration_source, "elapsed_seconds": elapsed_source,
        "recent_tools": recent_source, "cost_usd": cost_source}


def _within_limits(
    out: Findings, g: Guardrails, iteration: int | None, elapsed: float | None,
    same_tool: str | None, same: int, cost: float | None,
) -> bool:
    """Add an issue for each limit the run is over; whether it is within all of them."""
    ok = True
    max_iterations, timeout, same_limit, max_cost = (
        g.max_iterations, g.timeout_seconds, g.same_tool_limit, g.max_cost_usd)
    if max_iterations is not None and iteration is not None and iteration > max_iterations:
        ok = False
        out.add(
            "LOOP_ITERATION_LIMIT",
            f"Iteration {iteration} exceeds `max_iterations: {max_iterations}`",
        )
    if timeout is not None and elapsed is not None and elapsed > timeout:
        ok = False
        out.add(
            "LOOP_TIMEOUT",
            f"The run has taken {elapsed:g} s, over `timeout_seconds: {timeout:g}`",
        )
    if same_limit is not None and same > same_limit:
        ok = False
        out.add(
            "LOOP_SAME_TOOL_LIMIT",
            f"`{same_tool}` would be call {same} in a row, over `same_tool_limit: "
            f"{same_limit}`",
        )
    if max_cost is not None and cost is not None and cost > max_cost:
        ok = False
        out.add(
            "COST_LIMIT_EXCEEDED",
            f"The run has cost ${cost:g}, over `max_cost_usd: {max_cost:g}`",
        )
    return ok


def check_loops(
    out: Findings, f: Facts, g: Guardrails, run_state: RunState | None
) -> dict[str, Any] | None:
    """Apply the loop limits; return a cost estimate when a cost is known."""
    ctx = f.context
    run_id = ctx.run_id
    snap: RunSnapshot | None = None
    if run_id is not None and run_state is not None:
        snap = run_state.observe(
            f.tenant, run_id, at=f.at, tool=f.call_tool, cost_usd=ctx.cost_usd or 0.0
        )
    iteration, elapsed, recent, cost, sources = _counters(f, snap)
    tools = f.tools
    if ctx.current_tool or not tools:
        same_tool, same = f.call_tool, _trailing_same(recent, f.call_tool)
    elif recent and recent[-1] in tools:
        # No current_tool: every tool of the call counts, so reordering `tools` cannot hide a
        # repeated call. Only the last recent tool can be repeated (count above 1).
        same_tool = recent[-1]
        same = _trailing_same(recent, same_tool)
    else:
        same, same_tool = 1, max(tools)  # every tool counts 1; ties go to the greatest name
    limited = g.loop_limited  # without a limit (most requests) there is nothing to be over
    ok = not limited or _within_limits(out, g, iteration, elapsed, same_tool, same, cost)
    out.checks["loop"] = {
        "required": limited,
        "satisfied": ok,
        "run_id": run_id,
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
    max_cost = g.max_cost_usd
    return {
        "cumulative_cost_usd": cost,
        "max_cost_usd": max_cost,
        "remaining_usd": None if max_cost is None else max(0.0, max_cost - cost),
        "source": sources["cost_usd"],
    }
