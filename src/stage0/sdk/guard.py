"""Enforcement in the caller's runtime: run a tool only on ALLOW, with its token consumed.

    @stage0.guard(tool="payments.create_payout", side_effects=["money movement"],
                  constraints=["approval required"], client=stage0.Client())
    def create_payout(vendor: str, amount: int) -> str: ...

The bound arguments go into the request's ``arguments`` (so into the action digest): an approval
granted for one call does not cover another. On ALLOW with an ``execution_token`` the token is
verified offline against the cached JWKS and consumed before the function runs; DENY raises
:class:`ActionDenied`, DEFER :class:`ActionDeferred` — unless ``wait_for_approval`` is set, in
which case the guard waits for the approval and checks again with its id.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from stage0.sdk.client import AsyncClient, CheckResult, Client, LocalEngine, StageZeroError

P = ParamSpec("P")
R = TypeVar("R")


class ActionBlocked(Exception):
    """Stage0 did not allow the action; carries what the runtime needs to explain it."""

    def __init__(self, result: CheckResult, message: str | None = None) -> None:
        self.result = result
        self.request_id = result.request_id
        self.policy_version = result.policy_version
        self.issues = result.issues
        self.approval = result.approval
        reason = result.body.get("reason") or ", ".join(result.issue_codes)
        where = f" (approve at {result.approval_url})" if result.approval_url else ""
        super().__init__(message or f"{result.verdict}: {reason}{where}")


class ActionDenied(ActionBlocked):
    """DENY (or a failure that failed closed)."""


class ActionDeferred(ActionBlocked):
    """DEFER: evidence or an approval is missing; ``approval`` holds the approval request."""


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return repr(value)


def build_request(tool: str, arguments: Mapping[str, Any], *, goal: str | None,
                  side_effects: list[str], constraints: list[str],
                  context: Mapping[str, Any] | None, success_criteria: list[str] | None,
                  environment: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "goal": goal or f"Run the tool `{tool}` with the given arguments",
        "tools": [tool],
        "side_effects": list(side_effects),
        "constraints": list(constraints),
        "context": {**(context or {}), "current_tool": tool},
        "arguments": _jsonable(dict(arguments)),
    }
    if success_criteria:
        body["success_criteria"] = list(success_criteria)
    if environment:
        body["context"].setdefault("environment", environment)
    return body


def _blocked(result: CheckResult) -> ActionBlocked:
    return ActionDeferred(result) if result.verdict == "DEFER" else ActionDenied(result)


def _with_approval(body: dict[str, Any], approval_id: str) -> dict[str, Any]:
    return {**body, "context": {**body.get("context", {}), "approval_id": approval_id}}


APPROVAL_ENDED = frozenset({"APPROVAL_REJECTED", "APPROVAL_ALREADY_USED", "APPROVAL_EXPIRED",
                            "APPROVAL_TIMED_OUT", "APPROVAL_SCOPE_MISMATCH",
                            "APPROVAL_REQUESTER_MISMATCH"})
"""The codes that say the approval a request named can no longer allow it (for this caller)."""


def approval_ended(result: CheckResult, approval_id: str | None) -> bool:
    """Whether ``result``, the answer to a request naming ``approval_id``, says that approval
    can no longer be used (rejected, used, expired, or for another action). Stage0 may then
    attach a new request for the action; a call waiting for the named one ends instead."""
    if not approval_id or not APPROVAL_ENDED & set(result.issue_codes):
        return False
    return (result.approval or {}).get("approval_id") != approval_id


def _followable(result: CheckResult, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The approval request of a DEFER that the guard may wait for and retry with, else
    ``None``: not when the request named an approval (``context.approval_id``, say a retry in
    another process after a hand-over) that has ended — that call ends here, with the DEFER,
    rather than following the new request Stage0 opened."""
    approval = result.approval
    if result.verdict != "DEFER" or not approval:
        return None
    if approval_ended(result, (body.get("context") or {}).get("approval_id")):
        return None
    return approval


def enforce(client: Client | LocalEngine, body: dict[str, Any],
            wait_for_approval: float | None = None) -> CheckResult:
    """Check ``body``; return the ALLOW result (its token verified and consumed) or raise.

    A DEFER whose approval request is already decided (granted since it was first asked) is
    checked again at once with ``context.approval_id``; with ``wait_for_approval`` a pending
    one is waited for first. Stage0 then says what the decision means (ALLOW; DENY for a
    rejection, or for an approval another call already used; DEFER for an expired one). The
    call is re-checked at most once: a rejected, expired or used approval ends it.
    """
    result = client.check(body)
    approval = _followable(result, body)
    if approval:
        approval_id = str(approval["approval_id"])
        status = approval.get("status")
        if status == "pending" and wait_for_approval and isinstance(client, Client):
            try:
                status = client.wait_for_approval(approval_id,
                                                  timeout=wait_for_approval).get("status")
            except StageZeroError as exc:
                raise ActionDeferred(result, str(exc)) from None
        if status != "pending":
            result = client.check(_with_approval(body, approval_id))
    if not result.allowed:
        raise _blocked(result)
    token, digest = result.execution_token, result.action_digest
    if token and isinstance(client, Client):
        try:
            client.verify_token(token, digest or "")
            client.consume_token(token, digest or "")
        except StageZeroError as exc:
            raise ActionDenied(result, f"the execution token was refused: {exc}") from None
    return result


async def enforce_async(client: AsyncClient, body: dict[str, Any],
                        wait_for_approval: float | None = None) -> CheckResult:
    """:func:`enforce` for an :class:`AsyncClient`."""
    result = await client.check(body)
    approval = _followable(result, body)
    if approval:
        approval_id = str(approval["approval_id"])
        status = approval.get("status")
        if status == "pending" and wait_for_approval:
            try:
                status = (await client.wait_for_approval(
                    approval_id, timeout=wait_for_approval)).get("status")
            except StageZeroError as exc:
                raise ActionDeferred(result, str(exc)) from None
        if status != "pending":
            result = await client.check(_with_approval(body, approval_id))
    if not result.allowed:
        raise _blocked(result)
    token, digest = result.execution_token, result.action_digest
    if token:
        try:
            await client.verify_token(token, digest or "")
            await client.consume_token(token, digest or "")
        except StageZeroError as exc:
            raise ActionDenied(result, f"the execution token was refused: {exc}") from None
    return result


def guard(
    tool: str | None = None,
    *,
    side_effects: list[str] | tuple[str, ...] = (),
    constraints: list[str] | tuple[str, ...] = (),
    context: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    client: Client | AsyncClient | LocalEngine | None = None,
    goal: str | None = None,
    success_criteria: list[str] | None = None,
    environment: str | None = None,
    wait_for_approval: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that it runs only when Stage0 allows the call."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        name = tool or fn.__name__
        signature = inspect.signature(fn)

        def body_for(args: Any, kwargs: Any) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            ctx = context() if callable(context) else context
            return build_request(name, bound.arguments, goal=goal,
                                 side_effects=list(side_effects), constraints=list(constraints),
                                 context=ctx, success_criteria=success_criteria,
                                 environment=environment)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                c = client or AsyncClient()
                if not isinstance(c, AsyncClient):
                    raise TypeError("an async function needs an AsyncClient")
                await enforce_async(c, body_for(args, kwargs), wait_for_approval)
                return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]  # same signature as fn

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            c = client or Client()
            if isinstance(c, AsyncClient):
                raise TypeError("a sync function needs a Client or LocalEngine")
            enforce(c, body_for(args, kwargs), wait_for_approval)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


@contextmanager
def guarded(
    tool: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    side_effects: list[str] | tuple[str, ...] = (),
    constraints: list[str] | tuple[str, ...] = (),
    context: Mapping[str, Any] | None = None,
    client: Client | LocalEngine | None = None,
    goal: str | None = None,
    success_criteria: list[str] | None = None,
    environment: str | None = None,
    wait_for_approval: float | None = None,
) -> Iterator[CheckResult]:
    """``with guarded("db.purge", {"table": "t"}, client=c) as decision:`` — the block runs
    only on ALLOW (token consumed); otherwise ActionDenied/ActionDeferred is raised."""
    body = build_request(tool, arguments or {}, goal=goal, side_effects=list(side_effects),
                         constraints=list(constraints), context=context,
                         success_criteria=success_criteria, environment=environment)
    yield enforce(client or Client(), body, wait_for_approval)


__all__ = ["APPROVAL_ENDED", "ActionBlocked", "ActionDeferred", "ActionDenied", "approval_ended",
           "enforce", "enforce_async", "guard", "guarded"]
