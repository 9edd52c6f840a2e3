"""``POST /check`` (one handler for the FastAPI route and the ASGI fast path) and
``GET /usage``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stage0.contract import CheckRequest, CheckResponse, RequestValidationError, parse_request
from stage0.contract.request import MAX_BODY_BYTES
from stage0.server import logs, metrics, tracing
from stage0.server.auth import authenticate, counted, secret_of, source_of
from stage0.server.backoff import DETAIL as BACKOFF_DETAIL
from stage0.server.body import is_json_type, unsupported
from stage0.server.errors import refused, request_id
from stage0.server.jobs import Job, error_body
from stage0.server.state import AppState, State
from stage0.store.schema import key_usage
from stage0.store.usage import Counts, Windows

log = logging.getLogger("stage0.server")
router = APIRouter()

CHECK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CheckResponse, "description": "A decision: ALLOW, DEFER or DENY"},
    401: {"description": "Missing, invalid or revoked key"},
    402: {"description": "Pro checks require a paid plan; monthly quota exceeded"},
    409: {"description": "X-Request-Id reused with a different body"},
    415: {"description": "The body is declared as something other than JSON"},
    422: {"description": "The request does not match the contract (never an ALLOW)"},
    429: {"description": "Per-minute or daily limit, or the back-off of failed "
                         "authentications; see retry_after_seconds"},
    503: {"description": "The service cannot decide; the body still says verdict DENY"},
}
REQUEST_SCHEMA = CheckRequest.model_json_schema(ref_template="#/components/schemas/{model}")
REQUEST_DEFS: dict[str, Any] = REQUEST_SCHEMA.pop("$defs", {})
"""The models the hand-written ``/check`` body schema refers to (added to the document)."""

_MISSING_KEY = (401, "Invalid or missing API key")


async def decide_check(state: AppState, header: Callable[[str], str | None], raw: bytes,
                       size: int, source: str = "", *,
                       parse: Callable[[bytes], CheckRequest] = parse_request,
                       route: str = "/check") -> tuple[int, bytes, dict[str, str]]:
    """One ``/check``: the FastAPI route and the ASGI fast path both answer with this.
    ``raw`` holds at most a little more than the size limit; ``size`` is what was sent;
    ``source`` is the client's address (for the back-off of failed authentications).
    Another front door (AuthZEN, ``routes/authzen.py``) passes its own ``parse`` (its body to a
    ``CheckRequest``, or a ``RequestValidationError``) and its ``route`` (the metrics label)."""
    started = time.perf_counter()
    rid, client_rid = request_id(header("x-request-id"))
    if logs.ENABLED:  # #16 item 3: the request id on this request's log lines
        logs.REQUEST_ID.set(rid)
    secret = secret_of(header("x-api-key"), header("authorization"))
    if not secret:
        metrics.count_refusal(401, route)
        return 401, orjson.dumps(error_body(*_MISSING_KEY, rid, code="API_KEY_INVALID")), {
            "x-request-id": rid}
    wait = state.auth.retry_after(source, secret)
    if wait is not None:
        metrics.count_refusal(429, route)
        return 429, orjson.dumps(error_body(429, BACKOFF_DETAIL, rid, code="AUTH_BACKOFF",
                                            retry_after_seconds=wait)), {
            "x-request-id": rid, "retry-after": str(wait)}
    content_type = header("content-type")
    if raw and not is_json_type(content_type):
        status, code, detail = unsupported(str(content_type))
        metrics.count_refusal(status, route)
        return status, orjson.dumps(error_body(status, detail, rid, code=code)), {
            "x-request-id": rid}
    parsed: CheckRequest | None = None
    invalid: RequestValidationError | None = None
    t0 = time.perf_counter()
    try:
        if size > MAX_BODY_BYTES:
            raise RequestValidationError.single(
                "(body)", f"body is {size} bytes; the limit is {MAX_BODY_BYTES}", "too_large")
        parsed = parse(raw)
    except RequestValidationError as exc:
        invalid = exc
        raw = raw[:MAX_BODY_BYTES]
    job = Job(secret=secret, raw=raw, request=parsed, invalid=invalid, request_id=rid,
              client_request_id=client_rid, started=started,
              parse_us=(time.perf_counter() - t0) * 1e6,
              trace=tracing.begin(header, started) if tracing.ENABLED else None)  # #16 item 2
    try:  # redaction and hashing here, not in the writer's turn
        job.logged_request()
    except Exception:  # the writer tries again, and fails this one closed
        log.debug("could not prepare the log's copy of %s", rid, exc_info=True)
    _ = job.input_sha256
    if state.evidence is not None and parsed is not None:  # rollback/ticket references (#15)
        await state.evidence.before(state.packs, job)
    outcome = await state.pipeline.answer(job)
    counted(state, source, secret, job, outcome.status)
    metrics.LATENCY.observe(time.perf_counter() - started)
    if job.trace is not None:  # #16 item 2: the decision's span
        tracing.finish_check(job, outcome, route)
    if outcome.status != 200:  # refusals only pay for the count and the code
        return outcome.status, refused(outcome, route), outcome.headers
    content = outcome.body if isinstance(outcome.body, bytes) else orjson.dumps(outcome.body)
    return 200, content, outcome.headers


@router.post(
    "/check",
    responses=CHECK_RESPONSES,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": REQUEST_SCHEMA}}}},
    summary="Decide one proposed action",
)
async def check(request: Request, state: State) -> Response:
    raw = await request.body()
    status, content, headers = await decide_check(state, request.headers.get, raw, len(raw),
                                                  source_of(request))
    return Response(content, status, headers=headers, media_type="application/json")


def _remaining(quota: int | None, used: int) -> int | None:
    return None if quota is None else max(0, quota - used)


@router.get("/usage", summary="Usage of the calling key in its current windows")
async def usage(request: Request, state: State) -> dict[str, Any]:
    key = await authenticate(request, state)
    now = state.clock()
    windows = Windows.at(now)

    def read() -> Any:
        with state.store.connect() as conn:
            return conn.execute(
                key_usage.select().with_only_columns(
                    key_usage.c.month_key, key_usage.c.month_count, key_usage.c.day_key,
                    key_usage.c.day_count, key_usage.c.minute_key, key_usage.c.minute_count,
                ).where(key_usage.c.key_id == key.id)
            ).first()

    counts = Counts.current(await run_in_threadpool(read), windows)
    return {
        "request_id": request_id(request.headers.get("x-request-id"))[0],
        "api_key_id": key.id,
        "plan": key.plan,
        "month_key": windows.month,
        "monthly_used": counts.month,
        "monthly_quota": key.monthly_quota,
        "monthly_remaining": _remaining(key.monthly_quota, counts.month),
        "day_key": windows.day,
        "daily_used": counts.day,
        "daily_quota": key.daily_quota,
        "daily_remaining": _remaining(key.daily_quota, counts.day),
        "per_minute_limit": key.per_minute,
        "minute_used": counts.minute,
        "minute_remaining": _remaining(key.per_minute, counts.minute),
        "environment": state.settings.environment,
        "source": "stage0-self-hosted",
        "evaluated_at": now.timestamp(),
    }
