"""Stage0 for the OpenAI Agents SDK (``pip install 'stage0-authz[openai-agents]'``).

    payout = stage0_function_tool(create_payout, client=stage0.Client(),
                                  tool="payments.create_payout",
                                  side_effects=["money movement"],
                                  constraints=["approval required"])
    agent = Agent(name="payments", tools=[payout])

Every call of a guarded tool is checked with Stage0 — the model's arguments go into the
request's ``arguments``, hence into the action digest:

- **DEFER with an approval request** becomes the SDK's human-in-the-loop: the tool's
  ``needs_approval`` answers true, the run stops with an interruption (``result.interruptions``).
  Once the Stage0 approval is granted, :func:`resolve_approvals` approves the interruption in
  the :class:`~agents.RunState` and the resumed run re-checks with ``context.approval_id``;
  on ALLOW the tool runs. A rejected, expired or used approval ends the call, once — also after
  the run state was serialised and resumed in another process (the call's first decision is
  found again, see :mod:`stage0.integrations.openai_agents_gate`).
- **ALLOW**: the execution token (if any) is verified offline and consumed, then the tool runs.
- **DENY** (or anything that failed closed, or a DEFER no human can settle): the tool does not
  run; the model gets a tool error carrying the verdict, request id, policy version and issue
  codes.

Approving an interruption in the SDK alone is not enough: the tool itself checks again and
runs only on ALLOW. The core ``stage0`` package never imports this module.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any, overload

from agents import FunctionTool, RunContextWrapper, RunState, ToolApprovalItem, function_tool

from stage0.integrations.openai_agents_gate import (
    ContextSource,
    NeedsApproval,
    Stage0Client,
    Stage0Tool,
    refusal_message,
)


def _stage0_tool(item: ToolApprovalItem) -> Stage0Tool | None:
    for tool in getattr(item.agent, "tools", None) or []:
        if (isinstance(tool, FunctionTool) and tool.name == item.tool_name
                and isinstance(tool.on_invoke_tool, Stage0Tool)):
            return tool.on_invoke_tool
    return None


def guard_function_tool(
    tool: FunctionTool,
    *,
    client: Stage0Client,
    stage0_tool: str | None = None,
    side_effects: Sequence[str] = (),
    constraints: Sequence[str] = (),
    context: ContextSource = None,
    goal: str | None = None,
    success_criteria: Sequence[str] | None = None,
    environment: str | None = None,
) -> FunctionTool:
    """A copy of an SDK ``FunctionTool`` gated by Stage0 (``needs_approval`` and invoker).

    ``stage0_tool`` is the tool name sent to Stage0 (default: the SDK tool's name)."""
    guarded = copy.copy(tool)
    gate = Stage0Tool(client, stage0_tool or tool.name, side_effects=side_effects,
                      constraints=constraints, context=context, goal=goal,
                      success_criteria=success_criteria, environment=environment,
                      inner=guarded.on_invoke_tool)
    guarded.on_invoke_tool = gate
    guarded.needs_approval = gate.needs_approval
    return guarded


@overload
def stage0_function_tool(
    fn: Callable[..., Any], *, client: Stage0Client, tool: str | None = None,
    side_effects: Sequence[str] = (), constraints: Sequence[str] = (),
    context: ContextSource = None, goal: str | None = None,
    success_criteria: Sequence[str] | None = None, environment: str | None = None,
    **function_tool_kwargs: Any,
) -> FunctionTool: ...


@overload
def stage0_function_tool(
    fn: None = None, *, client: Stage0Client, tool: str | None = None,
    side_effects: Sequence[str] = (), constraints: Sequence[str] = (),
    context: ContextSource = None, goal: str | None = None,
    success_criteria: Sequence[str] | None = None, environment: str | None = None,
    **function_tool_kwargs: Any,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def stage0_function_tool(
    fn: Callable[..., Any] | None = None,
    *,
    client: Stage0Client,
    tool: str | None = None,
    side_effects: Sequence[str] = (),
    constraints: Sequence[str] = (),
    context: ContextSource = None,
    goal: str | None = None,
    success_criteria: Sequence[str] | None = None,
    environment: str | None = None,
    **function_tool_kwargs: Any,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """``agents.function_tool`` gated by Stage0; usable as ``@stage0_function_tool(client=...)``.

    ``tool`` is the name sent to Stage0 (default: the SDK tool's name); other keyword arguments
    go to ``agents.function_tool`` (``name_override``, ``description_override``…)."""
    if "needs_approval" in function_tool_kwargs:
        raise TypeError("a Stage0 tool's needs_approval is Stage0's; do not pass one")

    def make(func: Callable[..., Any]) -> FunctionTool:
        return guard_function_tool(
            function_tool(func, **function_tool_kwargs), client=client, stage0_tool=tool,
            side_effects=side_effects, constraints=constraints, context=context, goal=goal,
            success_criteria=success_criteria, environment=environment)

    return make(fn) if fn is not None else make


def stage0_needs_approval(
    *,
    client: Stage0Client,
    tool: str,
    side_effects: Sequence[str] = (),
    constraints: Sequence[str] = (),
    context: ContextSource = None,
    goal: str | None = None,
    success_criteria: Sequence[str] | None = None,
    environment: str | None = None,
) -> NeedsApproval:
    """A ``needs_approval`` policy alone, for a tool you do not wrap: every call that Stage0
    does not ALLOW interrupts the run for a human. Without the Stage0 invoker nothing checks
    again after the SDK approval (no ``approval_id``, no token) — prefer
    :func:`stage0_function_tool` / :func:`guard_function_tool`."""
    return Stage0Tool(client, tool, side_effects=side_effects, constraints=constraints,
                      context=context, goal=goal, success_criteria=success_criteria,
                      environment=environment).needs_approval


async def stage0_approval(item: ToolApprovalItem, state: RunState[Any] | None = None,
                          wait: float | None = None) -> dict[str, Any] | None:
    """The Stage0 approval request behind an SDK interruption (to show the approver), or
    ``None`` if the interruption is not a Stage0 tool's or Stage0 no longer defers it."""
    gate = _stage0_tool(item)
    if gate is None:
        return None
    return await gate.approval_for(item, _run_context(state), wait)


def _run_context(state: RunState[Any] | None) -> Any:
    wrapper = getattr(state, "_context", None)
    return wrapper.context if isinstance(wrapper, RunContextWrapper) else None


async def resolve_approvals(state: RunState[Any], *,
                            wait: float | None = None) -> list[ToolApprovalItem]:
    """Mirror Stage0's approval decisions into ``state``; returns the interruptions still open.

    For each interruption of a Stage0 tool: approved in Stage0 → ``state.approve`` (the resumed
    tool call re-checks with the approval id and runs on ALLOW); rejected, expired or used →
    ``state.reject`` with the reason as the model-visible message; pending → left open (with
    ``wait`` seconds, waited for first). If Stage0 no longer defers the call, the interruption
    is approved and the tool call's own check decides. Other interruptions are left alone."""
    still_open: list[ToolApprovalItem] = []
    run_context = _run_context(state)
    for item in state.get_interruptions():
        gate = _stage0_tool(item)
        if gate is None:
            still_open.append(item)
            continue
        approval = await gate.approval_for(item, run_context, wait)
        status = approval.get("status") if approval else None
        if approval is None or status == "approved":
            state.approve(item)
        elif status == "pending":
            still_open.append(item)
        else:
            state.reject(item, rejection_message=json.dumps({
                "error": "stage0_approval_" + str(status), "tool": gate.tool,
                "approval_id": approval.get("approval_id"),
                "request_id": approval.get("request_id"),
                "policy_version": approval.get("policy_version")}))
    return still_open


__all__ = ["ContextSource", "NeedsApproval", "Stage0Client", "Stage0Tool",
           "guard_function_tool", "refusal_message", "resolve_approvals", "stage0_approval",
           "stage0_function_tool", "stage0_needs_approval"]
