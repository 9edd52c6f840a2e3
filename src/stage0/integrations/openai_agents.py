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
  on ALLOW the tool runs.
- **ALLOW**: the execution token (if any) is verified offline and consumed, then the tool runs.
- **DENY** (or anything that failed closed, or a DEFER no human can settle): the tool does not
  run; the model gets a tool error carrying the verdict, request id, policy version and issue
  codes.

Approving an interruption in the SDK alone is not enough: the tool itself checks again and
runs only on ALLOW. The core ``stage0`` package never imports this module.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

from agents import FunctionTool, RunContextWrapper, RunState, ToolApprovalItem, function_tool
from agents.tool_context import ToolContext

from stage0.sdk.client import AsyncClient, CheckResult, Client, LocalEngine, StageZeroError
from stage0.sdk.guard import ActionBlocked, ActionDeferred, ActionDenied, build_request

Stage0Client = Client | AsyncClient | LocalEngine
"""Any client with ``check``: HTTP (sync or async) or the in-process engine."""

ContextSource = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None
"""A request ``context`` mapping, or a callable given the run's context object (the
``context=`` passed to ``Runner.run``) returning one: actor, run id, ticket…"""

NeedsApproval = Callable[[RunContextWrapper[Any], dict[str, Any], str], Awaitable[bool]]

_DECISION_TTL = 60.0  # seconds a decision taken in needs_approval is reused by the tool call


def refusal_message(blocked: ActionBlocked, tool: str) -> str:
    """The tool error the model sees when Stage0 does not allow a call (JSON text)."""
    result = blocked.result
    payload: dict[str, Any] = {
        "error": "stage0_deferred" if isinstance(blocked, ActionDeferred) else "stage0_denied",
        "tool": tool,
        "verdict": result.verdict,
        "decision": result.decision,
        "message": str(blocked),
        "request_id": result.request_id,
        "policy_version": result.policy_version,
        "issues": result.issue_codes,
    }
    if result.approval:
        payload["approval_id"] = result.approval.get("approval_id")
        payload["approval_status"] = result.approval.get("status")
    return json.dumps(payload)


def _blocked(result: CheckResult, message: str | None = None) -> ActionBlocked:
    if result.verdict == "DEFER":
        return ActionDeferred(result, message)
    return ActionDenied(result, message)


def _arguments(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _pending_approval(result: CheckResult) -> dict[str, Any] | None:
    """The approval request of a DEFER that a human can settle, else ``None``."""
    approval = result.approval
    if result.verdict == "DEFER" and approval and approval.get("approval_id"):
        return approval
    return None


class Stage0Tool:
    """The Stage0 side of one function tool: its ``needs_approval`` and its invoker.

    Installed as the tool's ``on_invoke_tool`` (wrapping the SDK's own invoker); also usable
    alone as a ``needs_approval`` policy (:func:`stage0_needs_approval`).
    """

    def __init__(
        self,
        client: Stage0Client,
        tool: str,
        *,
        side_effects: Sequence[str] = (),
        constraints: Sequence[str] = (),
        context: ContextSource = None,
        goal: str | None = None,
        success_criteria: Sequence[str] | None = None,
        environment: str | None = None,
        inner: Callable[[ToolContext[Any], str], Awaitable[Any]] | None = None,
    ) -> None:
        self.client = client
        self.tool = tool
        self.side_effects = list(side_effects)
        self.constraints = list(constraints)
        self.context = context
        self.goal = goal
        self.success_criteria = list(success_criteria) if success_criteria else None
        self.environment = environment
        self.inner = inner
        self._decisions: dict[str, tuple[float, CheckResult]] = {}

    # -- requests and client calls (sync clients run in a worker thread) ---------------------

    def request(self, arguments: Mapping[str, Any], run_context: Any = None,
                approval_id: str | None = None) -> dict[str, Any]:
        """The /check body for one call, as :func:`stage0.sdk.guard.build_request` builds it."""
        ctx = self.context(run_context) if callable(self.context) else self.context
        body = build_request(self.tool, arguments, goal=self.goal,
                             side_effects=self.side_effects, constraints=self.constraints,
                             context=ctx, success_criteria=self.success_criteria,
                             environment=self.environment)
        if approval_id:
            body["context"]["approval_id"] = approval_id
        return body

    async def _check(self, body: dict[str, Any]) -> CheckResult:
        if isinstance(self.client, AsyncClient):
            return await self.client.check(body)
        return await asyncio.to_thread(self.client.check, body)

    async def decide(self, arguments: Mapping[str, Any], run_context: Any = None,
                     approval_id: str | None = None) -> CheckResult:
        """Check the call; a DEFER pointing at an already granted approval is re-checked with
        its id (which uses the approval up)."""
        result = await self._check(self.request(arguments, run_context, approval_id))
        approval = _pending_approval(result)
        if approval and approval.get("status") == "approved" \
                and approval["approval_id"] != approval_id:
            result = await self._check(self.request(arguments, run_context,
                                                    str(approval["approval_id"])))
        return result

    async def redeem(self, result: CheckResult) -> None:
        """Verify the ALLOW's execution token offline and consume it; raise if refused."""
        if not result.allowed:
            raise _blocked(result)
        token, digest = result.execution_token, result.action_digest or ""
        if not token or isinstance(self.client, LocalEngine):
            return
        try:
            if isinstance(self.client, AsyncClient):
                await self.client.verify_token(token, digest)
                await self.client.consume_token(token, digest)
            else:
                await asyncio.to_thread(self.client.verify_token, token, digest)
                await asyncio.to_thread(self.client.consume_token, token, digest)
        except StageZeroError as exc:
            raise ActionDenied(result, f"the execution token was refused: {exc}") from None

    async def get_approval(self, approval_id: str,
                           wait: float | None = None) -> dict[str, Any] | None:
        client = self.client
        try:
            if isinstance(client, AsyncClient):
                if wait:
                    return await client.wait_for_approval(approval_id, timeout=wait)
                return await client.get_approval(approval_id)
            if isinstance(client, Client):
                if wait:
                    return await asyncio.to_thread(client.wait_for_approval, approval_id, wait)
                return await asyncio.to_thread(client.approvals.get, approval_id)
        except StageZeroError:
            if wait:  # still pending after `wait` seconds
                return await self.get_approval(approval_id)
            raise
        return None  # LocalEngine: no approvals

    # -- the decision cache between needs_approval and the call ------------------------------

    def _remember(self, call_id: str, result: CheckResult) -> None:
        now = time.monotonic()
        self._decisions = {k: v for k, v in self._decisions.items()
                           if now - v[0] < _DECISION_TTL or _pending_approval(v[1])}
        self._decisions[call_id] = (now, result)

    def _recall(self, call_id: str, pop: bool = False) -> CheckResult | None:
        entry = self._decisions.pop(call_id, None) if pop else self._decisions.get(call_id)
        return entry[1] if entry else None

    # -- the SDK hooks -----------------------------------------------------------------------

    async def needs_approval(self, run_context: RunContextWrapper[Any],
                             params: dict[str, Any], call_id: str) -> bool:
        """The tool's ``needs_approval``: true (interrupt the run) when Stage0 defers the call
        with an approval request. Other refusals reach the tool call, which reports them to the
        model — or, for a tool without the Stage0 invoker, also interrupt (fail closed)."""
        result = await self.decide(params, run_context.context)
        self._remember(call_id, result)
        if _pending_approval(result):
            return True
        return self.inner is None and not result.allowed

    async def __call__(self, ctx: ToolContext[Any], input: str) -> Any:
        """The tool's ``on_invoke_tool``: run the SDK's invoker only on ALLOW."""
        assert self.inner is not None, "Stage0Tool is used as an invoker without one to wrap"
        arguments = _arguments(input)
        cached = self._recall(ctx.tool_call_id, pop=True)
        try:
            if arguments is None:
                raise ActionDenied(CheckResult({"verdict": "DENY", "decision": "NO_GO",
                                                "issues": []}),
                                   "the tool arguments are not a JSON object")
            if cached is None or _pending_approval(cached):
                # No fresh decision, or the run resumes after an approval interruption:
                # check again, with the approval's id when there is one.
                approval = _pending_approval(cached) if cached else None
                cached = await self.decide(arguments, ctx.context,
                                           str(approval["approval_id"]) if approval else None)
            await self.redeem(cached)
        except ActionBlocked as blocked:
            return refusal_message(blocked, self.tool)
        return await self.inner(ctx, input)

    async def approval_for(self, item: ToolApprovalItem, run_context: Any = None,
                           wait: float | None = None) -> dict[str, Any] | None:
        """The Stage0 approval behind an interruption of this tool (current status), or
        ``None`` when Stage0 does not (or no longer) ask for one. With ``wait`` seconds, waits
        for a pending approval to be decided."""
        cached = self._recall(item.call_id or "")
        approval = _pending_approval(cached) if cached else None
        if approval is None:  # e.g. a run resumed in another process: ask again, plainly
            arguments = _arguments(item.arguments)
            if arguments is None:
                return None
            result = await self._check(self.request(arguments, run_context))
            approval = _pending_approval(result)
            if approval is None:
                return None
            if item.call_id:
                self._remember(item.call_id, result)
        return await self.get_approval(str(approval["approval_id"]), wait) or approval


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
