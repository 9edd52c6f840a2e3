"""Approvals and execution tokens: the approval requests of the key's tenant, votes,
break-glass declarations, token consumption (those four through the decision pipeline, like
``/check``) and the JWKS of the token keys."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from stage0.server import tracing
from stage0.server.auth import authenticate, backing_off, counted, request_secret, source_of
from stage0.server.body import STRICT_JSON
from stage0.server.errors import ApiError, refused, request_id, route_of
from stage0.server.jobs import Job
from stage0.server.state import AppState, State
from stage0.store import approval_views as approvals_store
from stage0.store.webhooks import deliveries_for

router = APIRouter(strict_content_type=False)
"""A body without ``Content-Type`` is read as JSON, as on ``/check`` (``server/body.py``)."""
READERS = ("approve", "audit:read")
"""The scopes that read every approval request of the tenant."""


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(max_length=2000)] = ""
    totp: Annotated[str | None, Field(max_length=12, description="RFC 6238 code, when the "
                                      "request needs approver MFA")] = None


class RejectBody(ApproveBody):
    pass


class BreakGlassBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: Annotated[str, Field(min_length=1, max_length=100, description=(
        "The logged `/check` decision that a closed change window or a freeze held back"))]
    reason: Annotated[str, Field(max_length=2000, description=(
        "Why it cannot wait: the incident, the ticket (required; the pack sets the minimum "
        "length)"))]
    totp: Annotated[str | None, Field(max_length=12, description="RFC 6238 code, when the "
                                      "pack's `break_glass.mfa` is on")] = None


class ConsumeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(min_length=1, max_length=8000)]
    action_digest: Annotated[str, Field(min_length=64, max_length=64,
                                        pattern="^[0-9a-f]{64}$")]


async def through_pipeline(request: Request, state: AppState, op: str,
                           payload: dict[str, Any]) -> Response:
    """Queue ``op`` as the calling key (authenticated by the writer, like ``/check``)."""
    rid, _ = request_id(request.headers.get("x-request-id"))
    secret = request_secret(request)
    if not secret:
        raise ApiError(401, "API_KEY_INVALID", "Invalid or missing API key")
    source = source_of(request)
    backing_off(state, source, secret)
    job = Job(secret=secret, raw=orjson.dumps(payload), request=None, invalid=None,
              request_id=rid, client_request_id=False, started=time.perf_counter(),
              op=op, payload=payload)
    trace = tracing.begin(request.headers.get) if tracing.ENABLED else None  # #16 item 2
    outcome = await state.pipeline.answer(job)
    counted(state, source, secret, job, outcome.status)
    if trace is not None:
        tracing.finish_operation(job, outcome, trace, route_of(request))
    if outcome.status != 200:
        content = refused(outcome, route_of(request))
    else:
        content = (outcome.body if isinstance(outcome.body, bytes)
                   else orjson.dumps(outcome.body))
    return Response(content, outcome.status, headers=outcome.headers,
                    media_type="application/json")


@router.get("/v1/approvals", summary="Approval requests of the key's tenant, newest first")
async def list_approval_requests(
    request: Request,
    state: State,
    status: Annotated[str | None,
                      Query(pattern="^(pending|approved|rejected|expired|used)$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    kind: Annotated[str | None, Query(pattern="^(standard|break_glass)$")] = None,
) -> dict[str, Any]:
    key = await authenticate(request, state, *READERS)
    items = await run_in_threadpool(
        lambda: approvals_store.list_approvals(
            state.store, key.tenant_id, status, state.now_us(), limit, kind=kind,
            public_url=state.settings.public_url))
    return {"items": items}


@router.get("/v1/approvals/{approval_id}", summary="One approval request with its votes")
async def get_approval_request(request: Request, state: State,
                               approval_id: str) -> dict[str, Any]:
    key = await authenticate(request, state)
    found = await run_in_threadpool(
        approvals_store.get_approval, state.store, key.tenant_id, approval_id, state.now_us(),
        state.settings.public_url)
    if found is not None and not key.can(*READERS) and found["requested_by"]["key_id"] != key.id:
        found = None  # a requester may follow its own requests only
    if found is None:
        raise ApiError(404, "APPROVAL_NOT_FOUND",
                       f"No approval request `{approval_id}` in this tenant")
    found["webhook_deliveries"] = await run_in_threadpool(
        deliveries_for, state.store, approval_id)
    return found


@router.post("/v1/approvals/{approval_id}/approve", dependencies=[STRICT_JSON],
             summary="Approve, as the principal of the calling key")
async def approve(request: Request, state: State, approval_id: str,
                  body: ApproveBody) -> Response:
    return await through_pipeline(request, state, "approve", {
        "approval_id": approval_id, "reason": body.reason, "totp": body.totp})


@router.post("/v1/approvals/{approval_id}/reject", dependencies=[STRICT_JSON],
             summary="Reject, as the principal of the calling key; ends the request")
async def reject(request: Request, state: State, approval_id: str,
                 body: RejectBody) -> Response:
    return await through_pipeline(request, state, "reject", {
        "approval_id": approval_id, "reason": body.reason, "totp": body.totp})


@router.post("/v1/break-glass", dependencies=[STRICT_JSON],
             summary="Declare a break-glass approval for a decision held by a window or freeze")
async def break_glass(request: Request, state: State, body: BreakGlassBody) -> Response:
    return await through_pipeline(request, state, "break_glass", {
        "request_id": body.request_id, "reason": body.reason, "totp": body.totp})


@router.get("/.well-known/jwks.json", summary="Public keys of execution tokens (JWKS)")
async def jwks(state: State) -> dict[str, Any]:
    return await run_in_threadpool(state.pipeline.keyring.jwks, state.now_us())


@router.post("/v1/tokens/consume", dependencies=[STRICT_JSON],
             summary="Consume an execution token, once")
async def consume(request: Request, state: State, body: ConsumeBody) -> Response:
    return await through_pipeline(request, state, "consume", {
        "token": body.token, "action_digest": body.action_digest})
