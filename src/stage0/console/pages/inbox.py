"""The approval inbox: the tenant's pending requests, and approving or rejecting one through
the decision pipeline exactly like ``POST /v1/approvals/{id}/approve``, as the session's key."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stage0.console.sessions import Session
from stage0.console.web import SignedIn, check_csrf, denied, form, html
from stage0.server import metrics
from stage0.server.jobs import Job
from stage0.server.state import AppState, State
from stage0.store import approval_views as approvals_store
from stage0.store import ledger

router = APIRouter(prefix="/console", include_in_schema=False)

REFUSALS = {
    "SELF_APPROVAL": "You cannot decide this request: you (or your key) requested it. "
                     "Another approver has to decide.",
    "APPROVER_ROLE_NOT_ELIGIBLE": "You are not eligible to decide this request: your key "
                                  "holds none of the roles it needs.",
    "APPROVER_MFA_REQUIRED": "This request needs a TOTP code from your authenticator app.",
    "APPROVER_MFA_INVALID": "That TOTP code is wrong, or was already used. Wait for the next "
                            "code and try again.",
    "APPROVER_MFA_LOCKED": "Too many wrong TOTP codes: approving is locked for this key for "
                           "a while.",
    "APPROVER_MFA_NOT_ENROLLED": "This request needs approver MFA and your key has no TOTP "
                                 "enrolled.",
    "APPROVER_SCOPE_MISSING": "Your key cannot approve (it lacks the approve scope).",
    "APPROVAL_ALREADY_VOTED": "You have already decided on this request.",
    "APPROVAL_ALREADY_DECIDED": "This request has already been decided.",
    "APPROVAL_EXPIRED": "This request has expired.",
    "APPROVAL_NOT_FOUND": "There is no such approval request in your tenant.",
}
"""What the inbox says for each of the pipeline's refusal codes."""


def card(state: AppState, approval: dict[str, Any], now: int) -> dict[str, Any]:
    """An approval with what the inbox shows beside it."""
    decision = ledger.get(state.store, approval["tenant_id"], approval["request_id"])
    issues = [i for i in (decision or {}).get("response", {}).get("issues", [])
              if i.get("effect") in ("DEFER", "DENY")]
    expires = datetime.fromisoformat(approval["expires_at"].replace("Z", "+00:00"))
    return {**approval, "issues": issues, "seconds_left": expires.timestamp() - now / 1e6}


def pending(state: AppState, tenant: str) -> list[dict[str, Any]]:
    now = state.now_us()
    items = approvals_store.list_approvals(state.store, tenant, "pending", now, 100)
    return [card(state, a, now) for a in items]


async def inbox_context(state: AppState, session: Session) -> dict[str, Any]:
    items = await run_in_threadpool(pending, state, session.key.tenant_id)
    return {"items": items, "can_decide": session.can("approve"), "now": state.now_us() / 1e6}


@router.get("/inbox")
async def inbox(request: Request, state: State, session: SignedIn) -> Response:
    return html(request, "inbox.html", 200, session, title="Approval inbox", page="inbox",
                **await inbox_context(state, session))


@router.get("/inbox/items")
async def inbox_items(request: Request, state: State, session: SignedIn) -> Response:
    return html(request, "inbox_items.html", 200, session,
                **await inbox_context(state, session))


async def vote(state: AppState, session: Session, approval_id: str, op: str,
               fields: dict[str, str]) -> tuple[int, str | None, str | None]:
    """Approve or reject as the session's key: the status, the error and the notice."""
    reason = fields.get("reason", "").strip()[:2000]
    totp = fields.get("totp", "").strip()[:12] or None
    if not session.can("approve"):
        return 403, REFUSALS["APPROVER_SCOPE_MISSING"], None
    if not reason:
        return 422, "Give a reason: it is recorded with your decision.", None
    payload = {"approval_id": approval_id, "reason": reason, "totp": totp}
    job = Job(secret="", raw=orjson.dumps(payload), request=None, invalid=None,
              request_id=str(uuid.uuid4()), client_request_id=False,
              started=time.perf_counter(), op=op, payload=payload, key_id=session.key.id)
    outcome = await state.pipeline.answer(job)
    body = outcome.body if isinstance(outcome.body, dict) else orjson.loads(outcome.body)
    if outcome.status == 200:
        return 200, None, ("Rejected." if op == "reject" else
                           f"Approved ({len(body['approvals'])} of "
                           f"{body['required_approvals']}); the request is now "
                           f"{body['status']}.")
    error = REFUSALS.get(str(body.get("code")), str(body.get("detail")))
    if body.get("code") == "APPROVER_MFA_LOCKED":
        error += f" Try again in {body.get('retry_after_seconds')} s."
    return outcome.status, error, None


async def decide(request: Request, state: AppState, session: Session, approval_id: str,
                 op: str) -> Response:
    fields = await form(request)
    check_csrf(session, request, fields)
    status, error, notice = await vote(state, session, approval_id, op, fields)
    if status in metrics.REFUSAL_STATUSES:  # as the API's refusals (docs/http.md)
        metrics.count_refusal(status, request.scope["route"].path)
    now = state.now_us()
    found = await run_in_threadpool(approvals_store.get_approval, state.store,
                                    session.key.tenant_id, approval_id, now)
    item = None if found is None else await run_in_threadpool(card, state, found, now)
    if request.headers.get("hx-request") == "true":
        # htmx swaps 2xx answers only: the refusal is in the fragment (role=alert)
        return html(request, "approval_card.html", 200, session, item=item,
                    approval_id=approval_id, error=error, notice=notice,
                    can_decide=session.can("approve"), now=now / 1e6)
    context = await inbox_context(state, session)
    return html(request, "inbox.html", status, session, title="Approval inbox", page="inbox",
                error=error, notice=notice, **context)


@router.get("/approvals/{approval_id}")
async def approval_page(request: Request, state: State, session: SignedIn,
                        approval_id: str) -> Response:
    """One approval request (the ``approval_url`` of a DEFER), decided or not."""
    now = state.now_us()
    found = await run_in_threadpool(approvals_store.get_approval, state.store,
                                    session.key.tenant_id, approval_id, now)
    if found is None:
        return denied(request, session, f"There is no approval request `{approval_id}` in "
                      f"tenant `{session.key.tenant_id}`.", 404, "Not found")
    item = await run_in_threadpool(card, state, found, now)
    return html(request, "approval.html", 200, session, title=f"Approval {approval_id}",
                page="inbox", item=item, approval_id=approval_id,
                can_decide=session.can("approve"), now=now / 1e6)


@router.post("/approvals/{approval_id}/approve")
async def console_approve(request: Request, state: State, session: SignedIn,
                          approval_id: str) -> Response:
    return await decide(request, state, session, approval_id, "approve")


@router.post("/approvals/{approval_id}/reject")
async def console_reject(request: Request, state: State, session: SignedIn,
                         approval_id: str) -> Response:
    return await decide(request, state, session, approval_id, "reject")
