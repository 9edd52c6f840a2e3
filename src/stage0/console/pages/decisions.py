"""The decision explorer (scope ``audit:read``): the tenant's log, filtered, and one record
with its history and its chain check."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stage0.console.web import Auditor, denied, html
from stage0.contract.request import parse_instant
from stage0.policy import normalize_name
from stage0.server.state import AppState, State
from stage0.store import ledger

router = APIRouter(prefix="/console", include_in_schema=False)
FILTERS = ("verdict", "tool", "bucket", "environment", "since", "until", "kind", "cursor")


def search(state: AppState, tenant: str,
           q: dict[str, str]) -> tuple[list[dict[str, Any]], int | None]:
    """The page of records that the filters ``q`` select; ``ValueError`` for a bad filter."""
    verdict = q["verdict"].upper() if q["verdict"] else None
    if verdict not in (None, "ALLOW", "DEFER", "DENY"):
        raise ValueError("verdict is ALLOW, DEFER or DENY")
    since = parse_instant(q["since"]) if q["since"] else None
    until = parse_instant(q["until"]) if q["until"] else None
    before = int(q["cursor"]) if q["cursor"] else None
    return ledger.search(
        state.store, tenant, verdict=verdict,
        tool=normalize_name(q["tool"]) if q["tool"] else None,
        bucket=q["bucket"] or None, environment=q["environment"] or None,
        since=since, until=until, limit=50, before_id=before,
        kind="all" if q["kind"] == "all" else None)


@router.get("/decisions")
async def decisions(request: Request, state: State, session: Auditor) -> Response:
    q = {k: request.query_params.get(k, "").strip() for k in FILTERS}
    error = None
    items: list[dict[str, Any]] = []
    next_cursor: int | None = None
    try:
        items, next_cursor = await run_in_threadpool(search, state, session.key.tenant_id, q)
    except ValueError as exc:
        error = f"Check the filters: {exc}"
    older = None
    if next_cursor is not None:
        older = "?" + urlencode({**{k: v for k, v in q.items() if v},
                                 "cursor": str(next_cursor)})
    policy = state.policy
    context = {"items": items, "q": q, "error": error, "older": older,
               "buckets": [b.name for b in policy.buckets] if policy else []}
    status = 422 if error else 200
    if request.headers.get("hx-target") == "results":
        return html(request, "decisions_results.html", status, session, **context)
    return html(request, "decisions.html", status, session, title="Decision explorer",
                page="decisions", **context)


def history(state: AppState, tenant: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every log record of the same action (its approval and token events), oldest first."""
    if not record["action_digest"]:
        return [record]
    items, _ = ledger.search(state.store, tenant, kind="all", limit=200,
                             action_digest=record["action_digest"])
    return sorted(items, key=lambda r: r["seq"])


@router.get("/decisions/{request_id}")
async def decision_detail(request: Request, state: State, session: Auditor,
                          request_id: str) -> Response:
    tenant = session.key.tenant_id
    record = await run_in_threadpool(ledger.get, state.store, tenant, request_id)
    if record is None:
        return denied(request, session, f"There is no decision `{request_id}` in your tenant.",
                      404, "Not found")
    problems = await run_in_threadpool(ledger.verify_record, state.store, tenant,
                                       record["seq"])
    events = await run_in_threadpool(history, state, tenant, record)
    return html(request, "decision.html", 200, session, title=f"Decision {request_id}",
                page="decisions", record=record, problems=problems, events=events)
