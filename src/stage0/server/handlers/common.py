"""What the approval, break-glass and token handlers share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stage0.contract import CheckRequest
from stage0.policy import normalize_name
from stage0.server.jobs import Job, Outcome, error_body
from stage0.store.keys import ApiKey, normalize_principal

if TYPE_CHECKING:
    from stage0.server.writer import Writer

Refuse = Callable[..., Outcome]
"""Log a refused operation and answer it (``refuse(status, code, detail, **extra)``)."""


def refusal(status: int, code: str, detail: str, request_id: str, **extra: Any) -> Outcome:
    """A refused approval, break-glass or token operation: the error shape with its ``code``
    (and ``retry-after`` when the refusal says when to try again). Refusals are counted in
    ``stage0_refused_total`` where they are answered (the HTTP routes, the console), by
    status and route."""
    return Outcome(status, error_body(status, detail, request_id, code=code, **extra),
                   {"retry-after": str(extra["retry_after_seconds"])}
                   if "retry_after_seconds" in extra else {})


def is_requester(key: ApiKey, key_id: object, principal: object, actor: object) -> bool:
    """Whether ``key`` asked for the action (same key, principal or actor): it cannot decide."""
    me = normalize_principal(key.principal or key.id)
    return key.id == key_id or me in {normalize_principal(str(principal) if principal else None),
                                      normalize_principal(str(actor) if actor else None)}


def action_summary(request: CheckRequest, body: Mapping[str, Any]) -> dict[str, Any]:
    """What an approver sees of the action (the inputs of the action digest)."""
    ctx = request.context
    return {
        "goal": request.goal,
        "tools": sorted({normalize_name(t) for t in request.tools or ()}),
        "side_effects": sorted({normalize_name(s) for s in request.side_effects or ()}),
        "arguments": request.arguments or {},
        "environment": body.get("environment"),
        "resource_scope": ctx.resource_scope if ctx is not None else None,
        "target_resources": ctx.target_resources if ctx is not None else None,
    }


def authenticated(writer: Writer, job: Job) -> tuple[ApiKey, datetime] | Outcome:
    """The job's key and the time; or a 401 when there is no key."""
    key = job.key
    if key is None:
        return Outcome(401, error_body(401, "Invalid or missing API key", job.request_id,
                                       code="API_KEY_INVALID"))
    return key, writer.clock()


def to_us(now: datetime) -> int:
    return int(now.timestamp() * 1e6)
