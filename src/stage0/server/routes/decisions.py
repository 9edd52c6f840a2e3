"""The decision log of the key's tenant: ``GET /v1/decisions/{request_id}`` and
``GET /v1/decisions`` (scope ``audit:read``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from stage0.contract.request import parse_instant
from stage0.server.auth import authenticate
from stage0.server.errors import ApiError
from stage0.server.state import State
from stage0.store import ledger

router = APIRouter()


@router.get("/v1/decisions/{request_id}", summary="One logged decision of the key's tenant")
async def get_decision(request: Request, state: State, request_id: str) -> dict[str, Any]:
    key = await authenticate(request, state, "audit:read")
    record = await run_in_threadpool(ledger.get, state.store, key.tenant_id, request_id)
    if record is None:
        raise ApiError(404, "DECISION_NOT_FOUND", f"No decision `{request_id}` in this tenant")
    return record


def _instant(value: str | None) -> datetime | None:
    try:
        return parse_instant(value) if value else None
    except ValueError as exc:
        raise ApiError(422, "REQUEST_INVALID", f"invalid request: {exc}") from None


def _cursor(cursor: str | None) -> int | None:
    try:
        return int(cursor) if cursor else None
    except ValueError:
        raise ApiError(422, "REQUEST_INVALID", "invalid request: `cursor` is not a cursor "
                                               "from a previous page") from None


@router.get("/v1/decisions", summary="Logged decisions of the key's tenant, newest first")
async def list_decisions(
    request: Request,
    state: State,
    verdict: Annotated[str | None, Query(pattern="^(ALLOW|DEFER|DENY|allow|defer|deny)$")]
    = None,
    tool: str | None = None,
    bucket: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    kind: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    key = await authenticate(request, state, "audit:read")
    since_at, until_at = _instant(since), _instant(until)
    before = _cursor(cursor)
    items, next_id = await run_in_threadpool(
        lambda: ledger.search(
            state.store, key.tenant_id, verdict=verdict, tool=tool, bucket=bucket,
            since=since_at, until=until_at, limit=limit, before_id=before, kind=kind,
        )
    )
    return {"items": items, "next_cursor": None if next_id is None else str(next_id)}
