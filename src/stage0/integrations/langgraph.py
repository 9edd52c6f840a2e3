"""LangGraph: a tool node that asks Stage0 before any tool runs.

    from langgraph.prebuilt import tools_condition
    from stage0.integrations.langgraph import Stage0ToolNode

    tools = Stage0ToolNode([create_payout, search_invoices], client=stage0.Client(),
                           side_effects={"create_payout": ["money movement"]},
                           constraints={"create_payout": ["approval required"]},
                           environment="production")
    builder.add_node("tools", tools)          # in place of langgraph.prebuilt.ToolNode
    graph = builder.compile(checkpointer=InMemorySaver())   # interrupts need a checkpointer

Every tool call of the latest ``AIMessage`` is checked with its tool name and the call's
arguments (they go into the request's ``arguments``, so into the action digest). Then:

- **ALLOW**: the execution token, when there is one, is verified offline and consumed, and the
  tool runs (through a ``langgraph.prebuilt.ToolNode``, so injected state, ``ToolRuntime`` and
  tools returning ``Command`` behave as usual).
- **DENY** (or the client failing closed): the tool does not run; the call is answered with a
  ``ToolMessage`` with ``status="error"`` naming the verdict, ``request_id``, ``policy_version``
  and issue codes (also in its ``artifact``), which the model can read.
- **DEFER** with an approval request: ``langgraph.types.interrupt`` pauses the graph with the
  approval (``approval_id``, status, the action…). Resume with ``Command(resume=...)``: ``True``,
  ``"approved"`` or ``{"approval_id": "apr_…"}`` checks again with ``context.approval_id`` and
  runs the tool on ALLOW (a still-pending approval interrupts again); ``False``, ``"rejected"``
  or ``{"approved": False}`` gives up and answers the call with an error ``ToolMessage``.
  A DEFER without an approval request (missing evidence) is answered like a DENY.

All calls are decided before any tool runs, and tokens are consumed only after every DEFER is
resolved: a node that is interrupted and later resumed (LangGraph re-runs it from the start)
never runs a tool twice, and never consumes a token for a tool it did not run.

Every check is a LangGraph task (``langgraph.func.task``), so its answer is saved with the
checkpoint: the re-run on resume replays the answers instead of asking again — in another
process too, with any persistent checkpointer. A resume is therefore bound to the approval the
interrupt showed: once that approval is rejected, expired or used, the call ends with an error
``ToolMessage`` (``APPROVAL_REJECTED``, ``APPROVAL_EXPIRED``, ``APPROVAL_TIMED_OUT``,
``APPROVAL_ALREADY_USED``); it never interrupts again for another approval request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.func import task
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, interrupt

from stage0.sdk.client import CheckResult, Client, LocalEngine, StageZeroError
from stage0.sdk.guard import approval_ended, build_request

ContextSource = Mapping[str, Any] | Callable[[ToolCall, RunnableConfig], Mapping[str, Any]]

INTERRUPT_TYPE = "stage0.approval_required"
_GIVE_UP = frozenset({"rejected", "reject", "denied", "deny", "no", "cancel", "cancelled"})


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What Stage0 (and the human, on DEFER) made of one tool call."""

    call: ToolCall
    body: dict[str, Any]
    result: CheckResult
    note: str | None = None  # why a non-ALLOW result stops the call, when not Stage0's reason
    approval_id: str | None = None  # the approval the call waited for, if any


class _Checks:
    """The node's Stage0 checks during one run of the node, each a LangGraph task: LangGraph
    saves its answer with the checkpoint and, when the node runs again on resume, replays it
    (matched by order) instead of calling Stage0 again. ``fresh`` holds the request ids this
    run of the node actually asked about."""

    def __init__(self, client: Client | LocalEngine) -> None:
        self.client = client
        self.fresh: set[str] = set()

        def stage0_check(body: dict[str, Any]) -> dict[str, Any]:
            result = self.client.check(body)
            if result.request_id:
                self.fresh.add(result.request_id)
            return {"body": result.body, "status_code": result.status_code}

        self._task = task(stage0_check)

    def __call__(self, body: dict[str, Any]) -> CheckResult:
        saved = self._task(body).result()
        return CheckResult(saved["body"], saved["status_code"])

    def replayed(self, result: CheckResult) -> bool:
        return result.request_id not in self.fresh


def _messages(state: Any, key: str) -> Sequence[Any]:
    if isinstance(state, list):
        return state
    value = state.get(key, []) if isinstance(state, Mapping) else getattr(state, key, [])
    return value if isinstance(value, list) else []


def _latest_tool_calls(state: Any, key: str) -> list[ToolCall]:
    for message in reversed(_messages(state, key)):
        if isinstance(message, AIMessage):
            return list(message.tool_calls)
    raise ValueError(f"no AIMessage in the state's `{key}`")


def _resume_approval_id(value: Any, default: str) -> str | None:
    """The approval id to retry with, or None when the resume value says to give up."""
    if value is False or value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in _GIVE_UP:
            return None
        return value if value.startswith("apr_") else default
    if isinstance(value, Mapping):
        if value.get("approved") is False or str(value.get("status", "")).lower() in _GIVE_UP:
            return None
        approval_id = value.get("approval_id")
        return approval_id if isinstance(approval_id, str) and approval_id else default
    return default


class Stage0ToolNode:
    """A graph node that runs the latest ``AIMessage``'s tool calls only when Stage0 allows them.

    ``side_effects`` and ``constraints`` map a tool name to what that tool does and must respect
    (``{"create_payout": ["money movement"]}``); tools not named get none. ``context`` is a
    mapping, or a callable ``(tool_call, config) -> mapping`` evaluated per call (actor, run id
    from ``config["configurable"]["thread_id"]``, ticket…). ``goal``, ``environment`` and
    ``success_criteria`` fill the rest of each request. Other keyword arguments
    (``handle_tool_errors``…) go to the inner ``langgraph.prebuilt.ToolNode`` that runs the
    allowed calls.
    """

    def __init__(
        self,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        client: Client | LocalEngine | None = None,
        side_effects: Mapping[str, Sequence[str]] | None = None,
        constraints: Mapping[str, Sequence[str]] | None = None,
        context: ContextSource | None = None,
        goal: str | None = None,
        environment: str | None = None,
        success_criteria: Sequence[str] | None = None,
        messages_key: str = "messages",
        name: str = "tools",
        **tool_node_kwargs: Any,
    ) -> None:
        self.client = client if client is not None else Client()
        self.side_effects = {k: list(v) for k, v in (side_effects or {}).items()}
        self.constraints = {k: list(v) for k, v in (constraints or {}).items()}
        self.context = context
        self.goal = goal
        self.environment = environment
        self.success_criteria = list(success_criteria) if success_criteria else None
        self.messages_key = messages_key
        self.name = name
        self.tool_node = ToolNode(tools, name=name, messages_key=messages_key,
                                  **tool_node_kwargs)

    @property
    def tools_by_name(self) -> dict[str, BaseTool]:
        return self.tool_node.tools_by_name

    def request_for(self, call: ToolCall, config: RunnableConfig) -> dict[str, Any]:
        """The ``/check`` body for one tool call."""
        name = call["name"]
        ctx = self.context(call, config) if callable(self.context) else self.context
        return build_request(name, call.get("args") or {}, goal=self.goal,
                             side_effects=self.side_effects.get(name, []),
                             constraints=self.constraints.get(name, []), context=ctx,
                             success_criteria=self.success_criteria,
                             environment=self.environment)

    def __call__(self, state: Any, config: RunnableConfig) -> Any:
        calls = _latest_tool_calls(state, self.messages_key)
        unknown = [c for c in calls if c["name"] not in self.tools_by_name]
        check = _Checks(self.client)
        # 1. decide every call before anything runs (LangGraph re-runs this node on resume;
        #    the checks are tasks, so the re-run replays their answers)
        outcomes: list[_Outcome] = []
        for call in calls:
            if call["name"] in self.tools_by_name:
                body = self.request_for(call, config)
                outcomes.append(_Outcome(call, body, check(body)))
        # 2. resolve each DEFER with an approval, in call order (interrupt indices are stable)
        outcomes = [self._refreshed(self._resolve(o, check), check) for o in outcomes]
        # 3. consume the tokens of the allowed calls, then run them (and the unknown ones,
        #    which the inner ToolNode answers with its usual error)
        blocked: list[ToolMessage] = []
        to_run: list[ToolCall] = list(unknown)
        for outcome in outcomes:
            refusal = self._redeem(outcome) if outcome.result.allowed else None
            if outcome.result.allowed and refusal is None:
                to_run.append(outcome.call)
            else:
                blocked.append(self._blocked_message(outcome, refusal))
        ran = self._run(to_run, config) if to_run else {self.messages_key: []}
        return self._merge(calls, blocked, ran)

    def _resolve(self, outcome: _Outcome, check: _Checks) -> _Outcome:
        """Interrupt for a DEFER's approval until the human gives up or Stage0 settles it. The
        re-check names the approval; when Stage0 says it has ended and attaches another
        request (the named one expired), the call ends: it does not wait for an approval
        nobody was shown."""
        waited: str | None = None
        while outcome.result.verdict == "DEFER" and outcome.result.approval:
            own_id = str(outcome.result.approval.get("approval_id", ""))
            if approval_ended(outcome.result, waited):
                return _Outcome(outcome.call, outcome.body, outcome.result,
                                f"approval `{waited}` can no longer be used "
                                f"({', '.join(outcome.result.issue_codes) or 'no reason'}); "
                                "the call ends here", waited)
            answer = interrupt(self._interrupt_payload(outcome))
            approval_id = _resume_approval_id(answer, own_id)
            if not approval_id:
                return _Outcome(outcome.call, outcome.body, outcome.result,
                                f"approval `{own_id}` was not granted (resumed with {answer!r})",
                                own_id)
            body = {**outcome.body,
                    "context": {**outcome.body.get("context", {}), "approval_id": approval_id}}
            outcome = _Outcome(outcome.call, body, check(body), None, approval_id)
            waited = approval_id
        return outcome

    def _refreshed(self, outcome: _Outcome, check: _Checks) -> _Outcome:
        """An ALLOW replayed from an earlier run of the node carries a token signed back then,
        which may have expired while a human decided on another call: unless it used a
        server-side approval (which allows its action once), ask Stage0 again for a fresh one."""
        result = outcome.result
        approval_check = result.body.get("guardrail_checks", {}).get("approval", {})
        if not (result.allowed and result.execution_token and check.replayed(result)
                and not approval_check.get("verified")):
            return outcome
        return _Outcome(outcome.call, outcome.body, self.client.check(outcome.body),
                        outcome.note, outcome.approval_id)

    def _interrupt_payload(self, outcome: _Outcome) -> dict[str, Any]:
        result, approval = outcome.result, outcome.result.approval or {}
        return {
            "type": INTERRUPT_TYPE,
            "tool_call_id": outcome.call.get("id"),
            "tool": outcome.call["name"],
            "arguments": outcome.body.get("arguments", {}),
            "approval_id": approval.get("approval_id"),
            "approval_status": approval.get("status"),
            "approval": approval,
            "verdict": result.verdict,
            "request_id": result.request_id,
            "policy_version": result.policy_version,
            "issues": result.issue_codes,
            "reason": result.body.get("reason"),
        }

    def _redeem(self, outcome: _Outcome) -> tuple[str, str] | None:
        """Verify and consume the execution token: None when fine, else (reason, code)."""
        token, digest = outcome.result.execution_token, outcome.result.action_digest
        if not token or not isinstance(self.client, Client):
            return None
        try:
            self.client.verify_token(token, digest or "")
            self.client.consume_token(token, digest or "")
        except StageZeroError as exc:
            return f"the execution token was refused: {exc}", exc.code or "TOKEN_INVALID"
        return None

    @staticmethod
    def _blocked_message(outcome: _Outcome, refusal: tuple[str, str] | None) -> ToolMessage:
        result = outcome.result
        verdict = "DENY" if refusal else result.verdict
        approval_id = outcome.approval_id or (result.approval or {}).get(
            "approval_id") or outcome.body.get("context", {}).get("approval_id")
        reason = (refusal[0] if refusal else outcome.note or result.body.get("reason")
                  or "not allowed")
        codes = [*result.issue_codes, *([refusal[1]] if refusal else [])]
        content = (f"Stage0 {verdict}: `{outcome.call['name']}` was not run: {reason} "
                   f"(request_id={result.request_id}, policy_version={result.policy_version}, "
                   f"issues={', '.join(codes) or 'none'}"
                   + (f", approval_id={approval_id}" if approval_id else "") + ")")
        artifact = {"verdict": verdict, "decision": result.decision,
                    "request_id": result.request_id, "policy_version": result.policy_version,
                    "issues": codes, "reason": reason, "approval_id": approval_id}
        return ToolMessage(content=content, name=outcome.call["name"],
                           tool_call_id=outcome.call.get("id") or "", status="error",
                           artifact=artifact)

    def _run(self, calls: list[ToolCall], config: RunnableConfig) -> Any:
        # A list of tool calls: the ToolNode reads the graph state from the channels itself.
        return self.tool_node.invoke(calls, config)

    def _merge(self, calls: list[ToolCall], blocked: list[ToolMessage], ran: Any) -> Any:
        order = {c.get("id"): i for i, c in enumerate(calls)}

        def position(message: ToolMessage) -> int:
            return order.get(message.tool_call_id, len(order))

        if isinstance(ran, Mapping):
            messages = [*blocked, *ran.get(self.messages_key, [])]
            return {self.messages_key: sorted(messages, key=position)}
        # some tool returned a Command: the ToolNode answered with a list of updates
        updates: list[Command[Any] | dict[str, Any]] = list(ran)
        return [{self.messages_key: blocked}, *updates] if blocked else updates


__all__ = ["INTERRUPT_TYPE", "Stage0ToolNode"]
