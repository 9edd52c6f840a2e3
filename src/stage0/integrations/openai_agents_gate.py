"""The Stage0 side of one OpenAI Agents SDK function tool: :class:`Stage0Tool`.

It is the tool's ``needs_approval`` (true when Stage0 defers the call with an approval request)
and its ``on_invoke_tool`` (the SDK's own invoker, run only on ALLOW, after the execution
token was verified and consumed). :mod:`stage0.integrations.openai_agents` builds tools with
it; this module holds the decisions.

**A call's first decision can be found again.** The first check of a tool call is sent with a
request id derived from the tool, the model's ``call_id`` and the request body
(:func:`first_request_id`). Stage0 answers a repeated request id with the decision it made
then (an idempotent replay, ``cached: true``), so a run state serialised and resumed in another
process — or by fresh agent objects — finds the very approval its interruption was about,
instead of asking Stage0 plainly (which, once that approval is rejected, expired or used, would
open a new one and interrupt again). The call then ends, once, with the approval's outcome.
This relies on the model's call ids being unique per call (the SDK keys its own approvals by
them; OpenAI's are): a call id repeated with identical arguments in a later run gets a fresh
decision while that run lasts, but a hand-over of such a run would find the older call's
approval, and end the call with it (failing closed).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agents import RunContextWrapper, ToolApprovalItem
from agents.tool_context import ToolContext

from stage0.engine.digest import canonical_json
from stage0.sdk.client import AsyncClient, CheckResult, Client, LocalEngine, StageZeroError
from stage0.sdk.guard import (
    ActionBlocked,
    ActionDeferred,
    ActionDenied,
    approval_ended,
    build_request,
)

Stage0Client = Client | AsyncClient | LocalEngine
"""Any client with ``check``: HTTP (sync or async) or the in-process engine."""

ContextSource = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None
"""A request ``context`` mapping, or a callable given the run's context object (the
``context=`` passed to ``Runner.run``) returning one: actor, run id, ticket…"""

NeedsApproval = Callable[[RunContextWrapper[Any], dict[str, Any], str], Awaitable[bool]]

_DECISION_TTL = 60.0  # seconds a decision taken in needs_approval is reused by the tool call
_NAMESPACE = uuid.UUID("5b7d3c1e-7f0a-4e39-9d55-0c6a1f1b2a10")


def first_request_id(tool: str, call_id: str, body: Mapping[str, Any]) -> str:
    """The request id of a tool call's first check: a UUID (version 5) of the Stage0 tool
    name, the model's call id and the request body (RFC 8785), the same in every process."""
    try:
        encoded = canonical_json(dict(body))
    except (TypeError, ValueError):  # outside RFC 8785's number domain
        encoded = json.dumps(body, sort_keys=True, default=repr).encode()
    return str(uuid.uuid5(_NAMESPACE, f"{tool}\n{call_id}\n{hashlib.sha256(encoded).hexdigest()}"))


def refusal_message(blocked: ActionBlocked, tool: str, *,
                    approval_id: str | None = None) -> str:
    """The tool error the model sees when Stage0 does not allow a call (JSON text).
    ``approval_id``: the approval the call waited for, when it is not the result's own."""
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
    approval = result.approval or {}
    shown = approval_id or approval.get("approval_id")
    if shown:
        payload["approval_id"] = shown
        if approval.get("approval_id") == shown:
            payload["approval_status"] = approval.get("status")
    return json.dumps(payload)


def blocked(result: CheckResult, message: str | None = None) -> ActionBlocked:
    if result.verdict == "DEFER":
        return ActionDeferred(result, message)
    return ActionDenied(result, message)


def arguments_of(raw: str | None) -> dict[str, Any] | None:
    """The tool call's JSON arguments as a mapping; ``None`` when they are not an object."""
    if raw is None or not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def pending_approval(result: CheckResult) -> dict[str, Any] | None:
    """The approval request of a DEFER that a human can settle, else ``None``."""
    approval = result.approval
    if result.verdict == "DEFER" and approval and approval.get("approval_id"):
        return approval
    return None


class Stage0Tool:
    """The Stage0 side of one function tool: its ``needs_approval`` and its invoker.

    Installed as the tool's ``on_invoke_tool`` (wrapping the SDK's own invoker); also usable
    alone as a ``needs_approval`` policy (``stage0_needs_approval``).
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

    async def _check(self, body: dict[str, Any], request_id: str | None = None) -> CheckResult:
        if isinstance(self.client, AsyncClient):
            return await self.client.check(body, request_id=request_id)
        return await asyncio.to_thread(self.client.check, body, request_id=request_id)

    async def first_decision(self, arguments: Mapping[str, Any], run_context: Any,
                             call_id: str | None, *, replay: bool = True) -> CheckResult:
        """The call's first check, under :func:`first_request_id`: Stage0 replays it when it
        was made before. With ``replay=False`` (a call seen for the first time in a run) a
        replayed answer is an older call that reused the call id: check afresh then."""
        body = self.request(arguments, run_context)
        if not call_id:
            return await self._check(body)
        result = await self._check(body, first_request_id(self.tool, call_id, body))
        if not replay and result.body.get("cached") is True:
            result = await self._check(body)
        return result

    async def decide(self, arguments: Mapping[str, Any], run_context: Any = None,
                     approval_id: str | None = None, call_id: str | None = None,
                     ) -> CheckResult:
        """Check the call: with ``approval_id`` the retry with that approval; else the first
        check (see :meth:`first_decision`), and when it points at an already granted approval,
        the retry with it (which uses the approval up)."""
        if approval_id:
            return await self._check(self.request(arguments, run_context, approval_id))
        result = await self.first_decision(arguments, run_context, call_id, replay=False)
        approval = pending_approval(result)
        if approval and approval.get("status") == "approved":
            result = await self._check(self.request(arguments, run_context,
                                                    str(approval["approval_id"])))
        return result

    async def redeem(self, result: CheckResult) -> None:
        """Verify the ALLOW's execution token offline and consume it; raise if refused."""
        if not result.allowed:
            raise blocked(result)
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
                           if now - v[0] < _DECISION_TTL or pending_approval(v[1])}
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
        result = await self.decide(params, run_context.context, call_id=call_id)
        self._remember(call_id, result)
        if pending_approval(result):
            return True
        return self.inner is None and not result.allowed

    async def __call__(self, ctx: ToolContext[Any], input: str) -> Any:
        """The tool's ``on_invoke_tool``: run the SDK's invoker only on ALLOW.

        After an approval interruption the call is checked again with the approval's id — the
        approval of this call's first decision, found again in another process too. When
        Stage0 then answers with another approval request (the one waited for expired), the
        call ends with the DEFER: it does not start over."""
        assert self.inner is not None, "Stage0Tool is used as an invoker without one to wrap"
        arguments = arguments_of(input)
        cached = self._recall(ctx.tool_call_id, pop=True)
        waited: str | None = None
        try:
            if arguments is None:
                raise ActionDenied(CheckResult({"verdict": "DENY", "decision": "NO_GO",
                                                "issues": []}),
                                   "the tool arguments are not a JSON object")
            if cached is None:  # e.g. a run resumed in another process: find the approval
                cached = await self.first_decision(arguments, ctx.context, ctx.tool_call_id)
                if not pending_approval(cached):  # no approval to follow: decide it now
                    cached = await self.decide(arguments, ctx.context)
            approval = pending_approval(cached)
            if approval:  # the run resumes after an approval interruption
                waited = str(approval["approval_id"])
                cached = await self.decide(arguments, ctx.context, waited)
                if cached.verdict == "DEFER" and approval_ended(cached, waited):
                    raise ActionDeferred(cached, f"approval `{waited}` can no longer be used "
                                                 f"({', '.join(cached.issue_codes)})")
            await self.redeem(cached)
        except ActionBlocked as refused:
            return refusal_message(refused, self.tool, approval_id=waited)
        return await self.inner(ctx, input)

    async def approval_for(self, item: ToolApprovalItem, run_context: Any = None,
                           wait: float | None = None) -> dict[str, Any] | None:
        """The Stage0 approval behind an interruption of this tool (current status), or
        ``None`` when Stage0 does not (or no longer) ask for one. With ``wait`` seconds, waits
        for a pending approval to be decided."""
        cached = self._recall(item.call_id or "")
        approval = pending_approval(cached) if cached else None
        if approval is None:  # e.g. a run resumed in another process: find the first decision
            arguments = arguments_of(item.arguments)
            if arguments is None:
                return None
            result = await self.first_decision(arguments, run_context, item.call_id)
            approval = pending_approval(result)
            if approval is None:
                return None
            if item.call_id:
                self._remember(item.call_id, result)
        return await self.get_approval(str(approval["approval_id"]), wait) or approval


__all__ = ["ContextSource", "NeedsApproval", "Stage0Client", "Stage0Tool", "arguments_of",
           "blocked", "first_request_id", "pending_approval", "refusal_message"]
